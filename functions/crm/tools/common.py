"""What the `crm` CLI and `crm dev` share: their two failures and the database they talk to."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import psycopg
from psycopg.rows import dict_row

from crm import config


class CliError(Exception):
    """A failure to report as one line on stderr with exit code 1."""


class UsageError(Exception):
    """A usage error to report with exit code 2."""


@contextlib.contextmanager
def database_url() -> Iterator[str]:
    """`DATABASE_URL`, else the embedded server of `CRM_DATA_DIR` (started if needed)."""
    url = config.env("DATABASE_URL")
    if url:
        yield url
        return
    from crm.tools.embedded import EmbeddedPostgres

    server = EmbeddedPostgres()
    try:
        yield server.start()
    finally:
        server.stop()


@contextlib.contextmanager
def connect(url: str, *, autocommit: bool = False) -> Iterator[psycopg.Connection]:
    try:
        # Behind a transaction pooler a prepared statement may be gone in the next transaction.
        prepare = {"prepare_threshold": None} if config.transaction_pooler() else {}
        conn = psycopg.connect(url, autocommit=autocommit, row_factory=dict_row, connect_timeout=5, **prepare)
    except psycopg.OperationalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "connection failed"
        raise CliError(f"cannot connect to the database: {first}") from exc
    with conn:
        yield conn


def one_line(exc: BaseException) -> str:
    if isinstance(exc, psycopg.Error) and exc.diag.message_primary:
        return exc.diag.message_primary
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
