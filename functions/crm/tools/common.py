"""What the `crm` CLI and `crm dev` share: their two failures and the database they talk to."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from crm import config
from crm.db import direct as connect  # the tools' connection: psycopg's own, its errors by crm.db's table

__all__ = ["CliError", "UsageError", "connect", "database_url"]


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
