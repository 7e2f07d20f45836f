import re

import psycopg
import pytest
from psycopg import pq

from crm import queries
from crm.tools import sqlsplit

_PLACEHOLDER = re.compile(r"%\((\w+)\)s|%%")
_TRANSACTION_CONTROL = re.compile(r"(?i)^(begin|commit|rollback)\b")


def _server_side(statement: str) -> str:
    """`%(name)s` → `$n` (one number per name) and `%%` → `%`, as psycopg sends it."""
    numbers: dict[str, int] = {}

    def replace(m: re.Match[str]) -> str:
        if m.group(0) == "%%":
            return "%"
        return f"${numbers.setdefault(m.group(1), len(numbers) + 1)}"

    return _PLACEHOLDER.sub(replace, statement)


def test_every_named_query_prepares_against_the_migrated_schema(conn: psycopg.Connection) -> None:
    """PREPARE (parse, resolve every name, infer every parameter type) each statement of each named
    query in a clone of the template database: a renamed column or a typo fails here, not in prod."""
    loaded = queries.load()
    assert "begin_request" in loaded
    prepared, failures = 0, []
    for name, text in loaded.items():
        statements = [s.sql.strip() for s in sqlsplit.split(text)]
        assert any(statements), f"query {name!r} is empty"
        for statement in statements:
            if _TRANSACTION_CONTROL.match(statement):
                continue
            result = conn.pgconn.prepare(b"", _server_side(statement).encode())
            if result.status != pq.ExecStatus.COMMAND_OK:
                failures.append(f"{name}: {result.error_message.decode().strip()}")
            prepared += 1
    assert not failures, "\n".join(failures)
    assert prepared >= len(loaded)


def test_the_prepare_check_can_fail(conn: psycopg.Connection) -> None:
    result = conn.pgconn.prepare(b"", _server_side("select no_such_column from public.orders"
                                                   " where id = %(id)s").encode())
    assert result.status == pq.ExecStatus.FATAL_ERROR
    assert b"no_such_column" in result.error_message


def test_duplicate_names_in_one_file_are_refused():
    with pytest.raises(ValueError, match="twice"):
        queries.parse("-- a --\nselect 1\n-- a --\nselect 2\n")


def test_unknown_query_names_the_problem():
    with pytest.raises(KeyError, match="no query named"):
        queries.get("no_such_query")
