"""The newcomer path: `crm dev` with no DATABASE_URL starts the embedded server, migrates, creates
the demo org, answers /healthz, lets a second terminal use the same server, and stops cleanly."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import jwt
import pytest

from tests.helpers import free_port


def newcomer_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "CRM_"))}
    env["CRM_DATA_DIR"] = str(data_dir)
    return env


def start_dev(data_dir: Path, port: int, log: Path) -> subprocess.Popen:
    with log.open("w") as out:  # a file, not a pipe: nothing to drain, nothing left open
        return subprocess.Popen(
            [sys.executable, "-m", "crm.cli", "dev", "--port", str(port), "--no-jobs"],
            env=newcomer_env(data_dir), stdout=out, stderr=subprocess.STDOUT)


def wait_healthy(proc: subprocess.Popen, url: str, log: Path, timeout: float = 60) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if proc.poll() is not None:
            pytest.fail(f"crm dev exited early:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return time.monotonic() - started
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    proc.wait()
    pytest.fail(f"/healthz not 200 within {timeout}s:\n{log.read_text()}")


def stop(proc: subprocess.Popen, log: Path) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    out = log.read_text()
    assert proc.returncode == 0, out
    return out


def test_crm_dev_newcomer_path(tmp_path):
    data_dir = tmp_path / "crm-data"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "dev.log"
    proc = start_dev(data_dir, port, log)
    try:
        took = wait_healthy(proc, url, log)
        assert took < 60
        health = httpx.get(f"{url}/healthz")
        assert health.json()["database"] == "up" and health.headers["X-Request-Id"]
        missing = httpx.get(f"{url}/no/such/route")
        assert missing.status_code == 404
        assert missing.headers["Content-Type"] == "application/problem+json"

        # A second terminal: no DATABASE_URL, same CRM_DATA_DIR → the same embedded server.
        env = newcomer_env(data_dir)
        added = subprocess.run([sys.executable, "-m", "crm.cli", "staff", "add", "--org", "demo",
                                "--email", "manager@demo.test", "--role", "manager"],
                               env=env, capture_output=True, text=True, timeout=60)
        assert added.returncode == 0, added.stderr
        token = subprocess.run([sys.executable, "-m", "crm.cli", "token", "--user", added.stdout.strip()],
                               env=env, capture_output=True, text=True, timeout=60)
        assert token.returncode == 0, token.stderr
        secret = json.loads((data_dir / "secrets.json").read_text())["CRM_JWT_SECRET"]
        claims = jwt.decode(token.stdout.strip(), secret, algorithms=["HS256"], audience="authenticated")
        assert claims["sub"] == added.stdout.strip()
        assert httpx.get(f"{url}/healthz").status_code == 200, "the second terminal stopped the server"
    finally:
        out = stop(proc, log)
    assert "Created organization 'demo'" in out
    assert "curl" in out
    assert not (data_dir / "pgdata" / "postmaster.pid").exists(), "embedded server left running"

    # Second start reuses the data: no new demo org, still healthy.
    proc = start_dev(data_dir, port, log)
    try:
        wait_healthy(proc, url, log)
    finally:
        out = stop(proc, log)
    assert "Created organization" not in out
