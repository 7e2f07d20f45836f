"""Named SQL queries, loaded from `crm/sql/*.sql` (procrastinate's habit).

The files read as the data-access API, one per concern: each query starts with a `-- name --`
header line and uses `%(param)s` placeholders. Python never builds SQL from strings. Names are
unique across all files.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

_HEADER = re.compile(r"^-- ([a-z_][a-z0-9_]*) --$", re.MULTILINE)


def parse(text: str) -> dict[str, str]:
    parts = _HEADER.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        queries[name] = body.strip()
    return queries


SQL_DIR = Path(__file__).with_name("sql")


@cache
def load() -> dict[str, str]:
    queries: dict[str, str] = {}
    for path in sorted(SQL_DIR.glob("*.sql")):
        for name, sql in parse(path.read_text(encoding="utf-8")).items():
            if name in queries:
                raise ValueError(f"query {name!r} in {path.name} is already defined in another file")
            queries[name] = sql
    return queries


def get(name: str) -> str:
    try:
        return load()[name]
    except KeyError:
        raise KeyError(f"no query named {name!r} in crm/sql/*.sql") from None
