"""Each deployable function runs alone under functions-framework, as it would be deployed."""

import os
import tempfile
from pathlib import Path

import httpx
import pytest

from crm import ROOT
from crm.sealing import generate_key
from tests.helpers import assert_refuses_to_start, first_answer, start_function

FUNCTIONS = sorted(p.parent.name for p in (ROOT / "functions").glob("*/main.py"))


def function_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "CRM_"))}
    env.update({"CRM_JWT_SECRET": "standalone-test-secret-of-32-bytes!!", "CRM_CRON_SECRET": "cron-secret",
                "CRM_PUBLIC_URL": "https://crm.example.com", "CRM_SECRETS_KEY": generate_key(),
                "CRM_STORAGE_DIR": str(Path(tempfile.gettempdir()) / "crm-standalone-media")})
    env.update(extra)
    return env


@pytest.mark.parametrize("folder", FUNCTIONS)
def test_function_runs_alone_and_answers_healthz(folder, db_url, tmp_path):
    log = tmp_path / "ff.log"
    proc, url = start_function(folder, function_env(DATABASE_URL=db_url), log)
    try:
        resp = first_answer(proc, log, lambda: httpx.get(f"{url}/healthz", timeout=2))
        assert resp.status_code == 200, resp.text
        assert resp.headers["X-Request-Id"]
    finally:
        proc.terminate()
        proc.wait(timeout=15)


@pytest.mark.parametrize("folder", FUNCTIONS)
def test_missing_database_url_is_a_startup_error_naming_it(folder, tmp_path):
    log = tmp_path / "ff.log"
    proc, _ = start_function(folder, function_env(), log)
    assert_refuses_to_start(proc, log, "DATABASE_URL")


def test_webhooks_without_secrets_key_is_a_startup_error_naming_it(db_url, tmp_path):
    log = tmp_path / "ff.log"
    env = function_env(DATABASE_URL=db_url)
    env.pop("CRM_SECRETS_KEY")
    proc, _ = start_function("webhooks", env, log)
    assert_refuses_to_start(proc, log, "CRM_SECRETS_KEY")
