"""The `crm` CLI as scripts use it: ids on stdout, one-line errors on stderr, exit codes 0/1/2."""

import json
import uuid

import jwt
import pytest
from psycopg.types.json import Jsonb

from tests.helpers import crm_cli, make_org, refused_port
from tests.integration.image_fixtures import ImageServer, encoded, two_tone


def test_org_staff_token_round_trip(db_url, conn):
    org = crm_cli("org", "create", "acme", "--name", "Acme Bikes", "--country", "at", DATABASE_URL=db_url)
    assert org.returncode == 0, org.stderr
    org_id = uuid.UUID(org.stdout.strip())
    row = conn.execute("select slug, name, default_country from organizations where id = %s", (org_id,)).fetchone()
    assert row == {"slug": "acme", "name": "Acme Bikes", "default_country": "AT"}

    added = crm_cli("staff", "add", "--org", "acme", "--email", "Boss@Acme.test", "--role", "manager",
                    DATABASE_URL=db_url)
    assert added.returncode == 0, added.stderr
    user_id = uuid.UUID(added.stdout.strip())
    again = crm_cli("staff", "add", "--org", "acme", "--email", "boss@acme.test", "--role", "admin",
                    DATABASE_URL=db_url)
    assert uuid.UUID(again.stdout.strip()) == user_id
    assert conn.execute("select role::text from staff where user_id = %s", (user_id,)).fetchone()["role"] == "admin"

    secret = "s3cret-for-tests-at-least-32-bytes-long"
    token = crm_cli("token", "--user", str(user_id), "--ttl", "120", DATABASE_URL=db_url, CRM_JWT_SECRET=secret)
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
    result = crm_cli(*args, DATABASE_URL=db_url, CRM_JWT_SECRET="x")
    assert result.returncode == code, result.stderr
    assert result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("usage:")]
    assert len(lines) == 1 and needle in lines[0], result.stderr


def test_duplicate_org_is_a_clear_error(db_url):
    assert crm_cli("org", "create", "twice", "--name", "One", DATABASE_URL=db_url).returncode == 0
    result = crm_cli("org", "create", "twice", "--name", "Two", DATABASE_URL=db_url)
    assert result.returncode == 1 and "already exists" in result.stderr


def test_unreachable_database_is_one_line(tmp_path):
    with refused_port() as port:
        result = crm_cli("db", "status", DATABASE_URL=f"postgresql://postgres@127.0.0.1:{port}/none")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "cannot connect" in result.stderr


def test_a_database_outage_is_one_line_naming_the_database_whichever_path_met_it():
    """A direct connection (`org create`, `webhooks retry`) and the pool (`jobs run`) meet the outage
    as the same exception class (`DatabaseUnavailable`, from the connector's table): one line, exit 1."""
    with refused_port() as port:
        url = f"postgresql://postgres@127.0.0.1:{port}/none"
        direct = [crm_cli("org", "create", "acme", "--name", "Acme", DATABASE_URL=url),
                  crm_cli("webhooks", "retry", str(uuid.uuid4()), DATABASE_URL=url)]
        pooled = crm_cli("jobs", "run", "purge-booking-state", DATABASE_URL=url)
    for result in direct:
        assert (result.returncode, result.stdout) == (1, ""), result.stderr
        assert result.stderr.count("\n") == 1, result.stderr
        assert result.stderr.startswith("crm: error: cannot connect to the database: "), result.stderr
    assert (pooled.returncode, pooled.stdout) == (1, ""), pooled.stderr
    lines = [line for line in pooled.stderr.splitlines() if line.startswith("crm:")]
    assert lines == ["crm: error: The database is not answering; try again shortly."], pooled.stderr
    assert "Traceback" not in pooled.stderr


def test_database_errors_reach_the_cli_as_the_projects_exceptions(db_url):
    """What `crm.db.direct` raises is the connector's table's class, and the CLI's line and exit code
    follow from that class alone."""
    from crm.db import direct
    from crm.errors import DatabaseError, InvalidInput
    from crm.tools.cli import error_line, exit_code

    for statement, cls, line in (
        ("select * from no_such_table", DatabaseError, 'crm: error: database: relation "no_such_table" does not exist'),
        ("select 'nope'::uuid", InvalidInput, 'crm: error: invalid input syntax for type uuid: "nope"'),
    ):
        with pytest.raises(cls) as info, direct(db_url) as conn:
            conn.execute(statement)
        assert (error_line(info.value), exit_code(info.value)) == (line, 1)


def test_jobs_run_cache_images_prints_its_summary_and_honours_limit(db_url, conn, tmp_path):
    """`crm jobs run NAME` as an operator or a cron line runs it: one job once, JSON on stdout."""
    org = make_org(conn)
    customer = conn.execute("insert into public.customers (org_id, full_name, email)"
                            " values (%s, 'Anna', 'anna@example.test') returning id", (org,)).fetchone()["id"]
    media = tmp_path / "media"
    env = {"CRM_IMAGE_ALLOW_LOOPBACK": "1", "CRM_STORAGE_DIR": str(media), "CRM_DATA_DIR": str(tmp_path / "data"),
           "CRM_PUBLIC_URL": "https://crm.example.com"}
    with ImageServer() as images:
        orders = []
        for i in range(2):
            url = images.add(f"/{i}.jpg", encoded(two_tone((60 + i, 40)), "JPEG"), "image/jpeg")
            orders.append(conn.execute(
                "insert into public.orders (org_id, customer_id, external_item_ref, item_snapshot)"
                " values (%s, %s, %s, %s) returning id",
                (org, customer, f"listing-{i}", Jsonb({"external_ref": f"listing-{i}", "title": "Bike",
                                                       "images": [url], "images_state": "pending"}))
            ).fetchone()["id"])
        first = crm_cli("jobs", "run", "cache-images", "--limit", "1", DATABASE_URL=db_url, **env)
        second = crm_cli("jobs", "run", "cache-images", DATABASE_URL=db_url, **env)
        third = crm_cli("jobs", "run", "cache-images", DATABASE_URL=db_url, **env)
    for result in (first, second, third):
        assert result.returncode == 0, result.stderr
    assert json.loads(first.stdout) == {"job": "cache-images", "orders": 1, "cached": 1, "images_cached": 1,
                                        "images_failed": 0, "images_retrying": 0}
    assert json.loads(second.stdout)["orders"] == 1
    assert json.loads(third.stdout) == {"job": "cache-images", "orders": 0}
    states = conn.execute("select item_snapshot from public.orders where id = any(%s)", (orders,)).fetchall()
    cached = [s["item_snapshot"]["cached_images"][0] for s in states]
    assert all(u.startswith("https://crm.example.com/media/") for u in cached)
    assert all((media / u.rsplit("/", 1)[1]).is_file() for u in cached)


def test_jobs_run_backfill_images_dry_run_report_then_apply(db_url, conn, tmp_path):
    org = make_org(conn)
    customer = conn.execute("insert into public.customers (org_id, full_name, email)"
                            " values (%s, 'Anna', 'anna@example.test') returning id", (org,)).fetchone()["id"]
    env = {"CRM_IMAGE_ALLOW_LOOPBACK": "1", "CRM_STORAGE_DIR": str(tmp_path / "media"),
           "CRM_DATA_DIR": str(tmp_path / "data"), "CRM_PUBLIC_URL": "https://crm.example.com"}
    with ImageServer() as images:
        url = images.add("/legacy.jpg", encoded(two_tone(), "JPEG"), "image/jpeg")
        order = conn.execute(  # as an older system left it: no images_state at all
            "insert into public.orders (org_id, customer_id, external_item_ref, item_snapshot)"
            " values (%s, %s, 'listing-old', %s) returning id",
            (org, customer, Jsonb({"external_ref": "listing-old", "title": "Bike", "images": [url]}))
        ).fetchone()["id"]
        report = tmp_path / "plan.json"
        dry = crm_cli("jobs", "run", "backfill-images", "--report", str(report), DATABASE_URL=db_url, **env)
        assert dry.returncode == 0, dry.stderr
        assert images.seen == []  # a dry run downloads nothing
        applied = crm_cli("jobs", "run", "backfill-images", "--apply", DATABASE_URL=db_url, **env)
        assert applied.returncode == 0, applied.stderr
    summary = json.loads(dry.stdout)
    assert (summary["mode"], summary["orders"], summary["report"]) == ("dry_run", 1, str(report))
    assert [e["order_id"] for e in json.loads(report.read_text())["orders"]] == [str(order)]
    assert (json.loads(applied.stdout)["mode"], json.loads(applied.stdout)["cached"]) == ("apply", 1)
    snapshot = conn.execute("select item_snapshot from public.orders where id = %s", (order,)).fetchone()
    assert snapshot["item_snapshot"]["images_state"] == "cached"


def test_jobs_run_purge_booking_state_deletes_only_what_expired(db_url, conn):
    org = make_org(conn)
    for key, age in (("old-key", "25 hours"), ("fresh-key", "1 hour")):
        conn.execute("insert into private.idempotency_keys (org_id, key, request_hash, created_at)"
                     " values (%s, %s, %s, now() - %s::interval)", (org, key, b"\0" * 32, age))
    conn.execute("insert into private.booking_rate_counters (client, window_start, hits)"
                 " values ('192.0.2.1', now() - interval '3 days', 5), ('192.0.2.2', now(), 1)")
    result = crm_cli("jobs", "run", "purge-booking-state", DATABASE_URL=db_url)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"job": "purge-booking-state", "idempotency_keys": 1, "rate_counters": 1}
    assert [r["key"] for r in conn.execute("select key from private.idempotency_keys")] == ["fresh-key"]
    assert [str(r["client"]) for r in conn.execute("select client from private.booking_rate_counters")] == [
        "192.0.2.2"]


def test_jobs_run_refuses_options_the_job_does_not_take_and_checks_only_its_own_settings(db_url):
    refused = crm_cli("jobs", "run", "purge-booking-state", "--apply", DATABASE_URL=db_url)
    assert refused.returncode == 2 and "purge-booking-state: apply" in refused.stderr
    assert crm_cli("jobs", "run", "cache-images", "--limit", "0", DATABASE_URL=db_url).returncode == 2
    # A malformed image setting stops the image job, naming it, and no other job.
    bad = crm_cli("jobs", "run", "cache-images", DATABASE_URL=db_url, CRM_IMAGE_TIMEOUT="soon")
    assert bad.returncode == 1 and "CRM_IMAGE_TIMEOUT" in bad.stderr
    fine = crm_cli("jobs", "run", "purge-booking-state", DATABASE_URL=db_url, CRM_IMAGE_TIMEOUT="soon")
    assert fine.returncode == 0, fine.stderr
