"""The newcomer path: `crm dev` with no DATABASE_URL starts the embedded server, migrates, creates
the demo org, answers /healthz, lets a second terminal use the same server, and stops cleanly."""

import json
import os
import subprocess
from pathlib import Path

import httpx
import jwt
import pytest

from tests.helpers import crm_cli, crm_dev_url, embedded_data_dir, start_crm_dev, stop_crm_dev


def newcomer_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "CRM_"))}
    env["CRM_DATA_DIR"] = str(data_dir)
    return env


def start_dev(data_dir: Path, log: Path) -> subprocess.Popen:
    return start_crm_dev(["--no-jobs"], newcomer_env(data_dir), log)


def wait_healthy(proc: subprocess.Popen, log: Path, timeout: float = 90) -> str:
    """The URL crm dev printed (its own free port), once /healthz answers 200 there."""
    url = crm_dev_url(proc, log, timeout)
    assert httpx.get(f"{url}/healthz", timeout=30).status_code == 200, log.read_text()
    return url


@pytest.fixture
def data_dir():
    """CRM_DATA_DIR: its embedded server must be able to restart (see embedded_data_dir)."""
    with embedded_data_dir("crm-newcomer-") as tmp:
        yield tmp / "crm-data"


def test_crm_dev_newcomer_path(tmp_path, data_dir):
    log = tmp_path / "dev.log"
    proc = start_dev(data_dir, log)
    try:
        url = wait_healthy(proc, log)
        health = httpx.get(f"{url}/healthz")
        assert health.json()["database"] == "up" and health.headers["X-Request-Id"]
        missing = httpx.get(f"{url}/no/such/route")
        assert missing.status_code == 404
        assert missing.headers["Content-Type"] == "application/problem+json"
        assert missing.json()["status"] == 404
        assert missing.headers["X-Request-Id"] and missing.headers["X-Request-Id"] != health.headers["X-Request-Id"]

        # A second terminal: no DATABASE_URL, same CRM_DATA_DIR → the same embedded server.
        env = newcomer_env(data_dir)
        added = crm_cli("staff", "add", "--org", "demo", "--email", "manager@demo.test", "--role", "manager",
                        env=env)
        assert added.returncode == 0, added.stderr
        token = crm_cli("token", "--user", added.stdout.strip(), env=env)
        assert token.returncode == 0, token.stderr
        secret = json.loads((data_dir / "secrets.json").read_text())["CRM_JWT_SECRET"]
        claims = jwt.decode(token.stdout.strip(), secret, algorithms=["HS256"], audience="authenticated")
        assert claims["sub"] == added.stdout.strip()
        assert httpx.get(f"{url}/healthz").status_code == 200, "the second terminal stopped the server"
    finally:
        out = stop_crm_dev(proc, log)
    assert "Created organization 'demo'" in out
    assert "curl" in out
    assert not (data_dir / "pgdata" / "postmaster.pid").exists(), "embedded server left running"

    # Second start reuses the data: no new demo org, still healthy (on a port of its own: the first
    # one may have been taken meanwhile).
    proc = start_dev(data_dir, log)
    try:
        wait_healthy(proc, log)
    finally:
        out = stop_crm_dev(proc, log)
    assert "Created organization" not in out
