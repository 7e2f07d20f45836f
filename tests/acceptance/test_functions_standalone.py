"""Each deployable function runs alone under functions-framework, as it would be deployed."""

import os
from pathlib import Path

import pytest

from crm import ROOT
from crm.sealing import generate_key
from tests.helpers import assert_refuses_to_start, serve_function, start_function

FUNCTIONS = sorted(p.parent.name for p in (ROOT / "functions").glob("*/main.py"))


def function_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "CRM_", "SUPABASE_"))}
    env.update({"CRM_JWT_SECRET": "standalone-test-secret-of-32-bytes!!", "CRM_CRON_SECRET": "cron-secret",
                "CRM_PUBLIC_URL": "https://crm.example.com", "CRM_STORAGE_DIR": str(tmp_path / "media"),
                "CRM_SECRETS_KEY": generate_key()})
    env.update(extra)
    return env


@pytest.mark.parametrize("folder", FUNCTIONS)
def test_function_runs_alone_and_answers_healthz(folder, db_url, tmp_path):
    log = tmp_path / "ff.log"
    proc, url, resp = serve_function(folder, function_env(tmp_path, DATABASE_URL=db_url), log)
    try:
        assert resp.status_code == 200, resp.text
        assert resp.headers["X-Request-Id"]
    finally:
        proc.terminate()
        proc.wait(timeout=15)


@pytest.mark.parametrize("folder", FUNCTIONS)
def test_missing_database_url_is_a_startup_error_naming_it(folder, tmp_path):
    log = tmp_path / "ff.log"
    proc, _ = start_function(folder, function_env(tmp_path), log)
    assert_refuses_to_start(proc, log, "DATABASE_URL")


def test_webhooks_without_secrets_key_is_a_startup_error_naming_it(db_url, tmp_path):
    log = tmp_path / "ff.log"
    env = function_env(tmp_path, DATABASE_URL=db_url)
    env.pop("CRM_SECRETS_KEY")
    proc, _ = start_function("webhooks", env, log)
    assert_refuses_to_start(proc, log, "CRM_SECRETS_KEY")
