"""The `crm` CLI as scripts use it: ids on stdout, one-line errors on stderr, exit codes 0/1/2."""

import os
import subprocess
import sys
import uuid

import jwt
import pytest

from tests.helpers import refused_port


def crm(*args: str, url: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "crm.cli", *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "DATABASE_URL": url, **env})


def test_org_staff_token_round_trip(db_url, conn):
    org = crm("org", "create", "acme", "--name", "Acme Bikes", "--country", "at", url=db_url)
    assert org.returncode == 0, org.stderr
    org_id = uuid.UUID(org.stdout.strip())
    row = conn.execute("select slug, name, default_country from organizations where id = %s", (org_id,)).fetchone()
    assert row == {"slug": "acme", "name": "Acme Bikes", "default_country": "AT"}

    added = crm("staff", "add", "--org", "acme", "--email", "Boss@Acme.test", "--role", "manager", url=db_url)
    assert added.returncode == 0, added.stderr
    user_id = uuid.UUID(added.stdout.strip())
    again = crm("staff", "add", "--org", "acme", "--email", "boss@acme.test", "--role", "admin", url=db_url)
    assert uuid.UUID(again.stdout.strip()) == user_id
    assert conn.execute("select role::text from staff where user_id = %s", (user_id,)).fetchone()["role"] == "admin"

    secret = "s3cret-for-tests-at-least-32-bytes-long"
    token = crm("token", "--user", str(user_id), "--ttl", "120", url=db_url, CRM_JWT_SECRET=secret)
    assert token.returncode == 0, token.stderr
    claims = jwt.decode(token.stdout.strip(), secret, algorithms=["HS256"], audience="authenticated")
    assert claims["sub"] == str(user_id)
    assert claims["role"] == "authenticated" and claims["email"] == "boss@acme.test"
    assert 100 <= claims["exp"] - claims["iat"] <= 120


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (("org", "create", "Bad Slug!", "--name", "x"), 1, "invalid organization"),
        (("staff", "add", "--org", "nope", "--email", "a@b.c", "--role", "agent"), 1, "no organization"),
        (("staff", "add", "--org", "nope", "--email", "a@b.c", "--role", "owner"), 2, "invalid choice"),
        (("token", "--user", "not-a-uuid"), 2, "not a uuid"),
        (("token", "--user", str(uuid.uuid4())), 1, "no user"),
        (("jobs", "run", "no-such-job"), 2, "unknown job"),
        (("org",), 2, "required"),
    ],
)
def test_errors_are_one_line_with_exit_codes(db_url, args, code, needle):
    result = crm(*args, url=db_url, CRM_JWT_SECRET="x")
    assert result.returncode == code, result.stderr
    assert result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("usage:")]
    assert len(lines) == 1 and needle in lines[0], result.stderr


def test_duplicate_org_is_a_clear_error(db_url):
    assert crm("org", "create", "twice", "--name", "One", url=db_url).returncode == 0
    result = crm("org", "create", "twice", "--name", "Two", url=db_url)
    assert result.returncode == 1 and "already exists" in result.stderr


def test_unreachable_database_is_one_line(tmp_path):
    with refused_port() as port:
        result = crm("db", "status", url=f"postgresql://postgres@127.0.0.1:{port}/none")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "cannot connect" in result.stderr
