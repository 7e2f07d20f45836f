"""Configuration from environment variables only (SPEC §5).

Deployed functions read what they need lazily and fail with a `ConfigError` naming the missing
variable; `crm dev` fills every variable before anything reads it.
"""

from __future__ import annotations

import os
from pathlib import Path

from crm.errors import ConfigError


def env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name, "").strip()
    return value if value else default


def require(name: str) -> str:
    value = env(name)
    if value is None:
        raise ConfigError(f"{name} is not set: this setting is required outside `crm dev`")
    return value


def env_int(name: str, default: int) -> int:
    raw = env(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None


def env_flag(name: str) -> bool:
    return (env(name) or "").lower() in {"1", "true", "yes", "on"}


def data_dir() -> Path:
    """`CRM_DATA_DIR`: where `crm dev` keeps the embedded database, secrets and local images."""
    return Path(env("CRM_DATA_DIR", ".crm")).expanduser().resolve()


def database_url() -> str:
    return require("DATABASE_URL")


POOLER_MODES = ("transaction", "session")


def pooler_mode() -> str | None:
    """`CRM_DB_POOLER`: `transaction` when `DATABASE_URL` is a transaction-mode pooler (Supabase's port
    6543, PgBouncer `pool_mode=transaction`). Then each transaction may run on another server
    connection: no prepared statements and nothing session-level (session `set`, advisory locks,
    `LISTEN`/`NOTIFY` waits, temporary tables). `session` (or unset) means a session per client."""
    value = (env("CRM_DB_POOLER") or "").lower()
    if not value:
        return None
    if value not in POOLER_MODES:
        raise ConfigError(f"CRM_DB_POOLER must be one of {', '.join(POOLER_MODES)}, got {value!r}")
    return value


def transaction_pooler() -> bool:
    """True behind a transaction-mode pooler: code that needs a session (e.g. `LISTEN`) must not run."""
    return pooler_mode() == "transaction"
