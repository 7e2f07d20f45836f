"""The migration runner against a real Postgres: order, checksums, repeatables, rollback, locking."""

import threading
from pathlib import Path

import psycopg
import pytest

from crm.tools.migrate import MigrationError, Migrator
from tests.helpers import crm_cli


def write(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def db_dir(tmp_path: Path) -> Path:
    root = tmp_path / "db"
    for sub in ("migrations", "policies", "triggers"):
        (root / sub).mkdir(parents=True)
    write(root, "migrations/0001_first.sql", "create table t1 (id int primary key);")
    write(root, "migrations/0002_second.sql",
          "create table t2 (id int primary key references t1 (id) on delete cascade);\n"
          "insert into t1 values (1);")
    write(root, "triggers/t1.sql",
          "create or replace function f_t1() returns int language sql immutable as $$ select 1 $$;")
    write(root, "policies/a.sql", "create or replace view v_t1 as select id from t1;")
    return root


def migrator(url: str, db_dir: Path, log=None) -> tuple[Migrator, psycopg.Connection]:
    conn = psycopg.connect(url, autocommit=True)
    return Migrator(conn, db_dir, log=log or (lambda m: None)), conn


def applied(url: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute("select version, name from private.schema_migrations order by version").fetchall()


def test_applies_in_order_then_nothing(fresh_database, db_dir):
    url = fresh_database()
    m, conn = migrator(url, db_dir)
    with conn:
        done = m.migrate()
        assert [e.name for e in done] == ["0001_first.sql", "0002_second.sql", "policies/a.sql", "triggers/t1.sql"]
        assert m.migrate() == []
        assert {e.state for e in m.plan()} == {"applied"}
    assert applied(url) == [(1, "0001_first.sql"), (2, "0002_second.sql")]


def test_dry_run_changes_nothing(fresh_database, db_dir):
    url = fresh_database()
    lines: list[str] = []
    m, conn = migrator(url, db_dir, lines.append)
    with conn:
        planned = m.migrate(dry_run=True)
        assert len(planned) == 4 and all(line.startswith("would apply") for line in lines)
        assert conn.execute("select to_regclass('public.t1')").fetchone()[0] is None


def test_changed_repeatable_is_reapplied_and_edited_migration_refused(fresh_database, db_dir):
    url = fresh_database()
    m, conn = migrator(url, db_dir)
    with conn:
        m.migrate()
        write(db_dir, "triggers/t1.sql",
              "create or replace function f_t1() returns int language sql immutable as $$ select 2 $$;")
        states = {e.name: e.state for e in m.plan()}
        assert states["triggers/t1.sql"] == "changed"
        assert [e.name for e in m.migrate()] == ["triggers/t1.sql"]
        assert conn.execute("select f_t1()").fetchone()[0] == 2

        write(db_dir, "migrations/0001_first.sql", "create table t1 (id bigint primary key);")
        assert {e.name: e.state for e in m.plan()}["0001_first.sql"] == "edited"
        write(db_dir, "migrations/0003_third.sql", "create table t3 ();")
        with pytest.raises(MigrationError, match="0001_first.sql"):
            m.migrate()
        assert conn.execute("select to_regclass('public.t3')").fetchone()[0] is None


def test_failed_file_rolls_back_whole_and_names_the_statement(fresh_database, db_dir):
    url = fresh_database()
    write(db_dir, "migrations/0003_broken.sql",
          "create table t3 (id int);\n\ninsert into t3 values (1);\nselect * from no_such_table;\n")
    m, conn = migrator(url, db_dir)
    with conn:
        with pytest.raises(MigrationError) as info:
            m.migrate()
        message = str(info.value)
        assert "0003_broken.sql" in message and "line 4" in message
        assert "no_such_table" in message
        # 0001 and 0002 committed; nothing of 0003 remains, and it is still pending.
        assert conn.execute("select to_regclass('public.t3')").fetchone()[0] is None
        assert {e.name: e.state for e in m.plan()}["0003_broken.sql"] == "pending"
    assert applied(url) == [(1, "0001_first.sql"), (2, "0002_second.sql")]


def test_concurrent_migrators_apply_once(fresh_database, db_dir):
    url = fresh_database()
    write(db_dir, "migrations/0003_slow.sql", "select pg_sleep(0.5);\ncreate table t3 (id int);")
    results: dict[int, list] = {}
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            m, conn = migrator(url, db_dir)
            with conn:
                results[i] = [e.name for e in m.migrate()]
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    applied_lists = sorted(results.values(), key=len)
    assert applied_lists[0] == [] and applied_lists[1] == []
    assert len(applied_lists[2]) == 5
    assert applied(url) == [(1, "0001_first.sql"), (2, "0002_second.sql"), (3, "0003_slow.sql")]


def test_bad_file_names_are_refused(fresh_database, db_dir):
    write(db_dir, "migrations/3_bad-name.sql", "select 1;")
    m, conn = migrator(fresh_database(), db_dir)
    with conn, pytest.raises(MigrationError, match="NNNN_snake_case_name"):
        m.plan()


def test_cli_status_exits_1_naming_an_edited_migration(fresh_database, tmp_path, monkeypatch):
    """Through the real CLI against the real db/ files: migrate twice, then tamper with a record."""
    url = fresh_database("cli")
    first = crm_cli("db", "migrate", DATABASE_URL=url, timeout=120)
    assert first.returncode == 0, first.stderr
    assert "applied migration 0001_supabase_bootstrap.sql" in first.stdout
    second = crm_cli("db", "migrate", DATABASE_URL=url, timeout=120)
    assert second.returncode == 0 and "nothing to apply" in second.stdout
    status = crm_cli("db", "status", DATABASE_URL=url, timeout=120)
    assert status.returncode == 0 and "pending" not in status.stdout
    # Simulate an edit of a released file: the recorded checksum no longer matches the file.
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("update private.schema_migrations set checksum = 'x' where version = 2")
    status = crm_cli("db", "status", DATABASE_URL=url, timeout=120)
    assert status.returncode == 1
    assert "0002_organizations_staff.sql" in status.stderr and len(status.stderr.strip().splitlines()) == 1
    refused = crm_cli("db", "migrate", DATABASE_URL=url, timeout=120)
    assert refused.returncode == 1 and "0002_organizations_staff.sql" in refused.stderr


def test_new_migration_reapplies_every_repeatable(fresh_database, db_dir):
    """A migration that recreates a table drops its views/triggers; the repeatables put them back."""
    url = fresh_database()
    m, conn = migrator(url, db_dir)
    with conn:
        m.migrate()
        write(db_dir, "migrations/0003_recreate.sql",
              "drop view v_t1;\ndrop table t2;\ndrop table t1;\ncreate table t1 (id int primary key, extra text);")
        done = [e.name for e in m.migrate()]
        assert done == ["0003_recreate.sql", "policies/a.sql", "triggers/t1.sql"]
        assert conn.execute("select to_regclass('public.v_t1')").fetchone()[0] is not None
