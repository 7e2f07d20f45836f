"""The migration runner behind `crm db migrate` and `crm db status`.

- Versioned files `db/migrations/NNNN_snake_name.sql`: applied once, in order, each in its own
  transaction, recorded with a SHA-256 checksum in `private.schema_migrations`. Editing one after
  it was applied is refused (`migrate`) and reported (`status`, exit 1).
- Repeatable files `db/functions/*.sql`, `db/policies/*.sql`, then `db/triggers/*.sql`, in name
  order: applied after the versioned ones and re-applied whenever their checksum changes
  (`private.schema_repeatables`), and all of them after any versioned migration (which may have
  dropped what they define).
- A session advisory lock serialises concurrent migrators: the second waits, then finds nothing.
- A failing file rolls back whole; the error names the file, line and statement.

`db/load.sql` lists the same files in the same order for DBAs applying them with psql alone.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import psycopg
from psycopg.rows import tuple_row

from crm import ROOT, config, queries
from crm.tools.sqlsplit import split

DB_DIR = ROOT / "db"
REPEATABLE_DIRS = ("functions", "policies", "triggers")
VERSIONED_NAME = re.compile(r"^(\d{4})_[a-z0-9]+(?:_[a-z0-9]+)*\.sql$")
REPEATABLE_NAME = re.compile(r"^[a-z0-9]+(?:_[a-z0-9]+)*\.sql$")
LOCK_KEY = 4_242_001  # pg_advisory_lock key for migrations

#: Checksums an applied migration may carry besides its file's current one. Released migrations are
#: never edited; the exceptions below were corrected because they could not apply where they must
#: (the first 0001 commented on and granted on Supabase's own `auth` objects, which Supabase's
#: non-superuser `postgres` may not do). A database migrated with the earlier text has the same
#: schema for everything ours relies on, so it is "applied", not "edited": `crm db status` stays
#: clean and `crm db migrate` goes on. Only ever add entries for such equivalent corrections.
EQUIVALENT_EARLIER_CHECKSUMS: dict[str, frozenset[str]] = {
    "0001_supabase_bootstrap.sql": frozenset({
        "9f45bf775333007c6d5230bf691077c0cc12cdd817854ac899a1f86494c8707e",  # main before issue 9
    }),
}


class MigrationError(Exception):
    pass


@dataclass(frozen=True)
class SqlFile:
    path: Path
    name: str  # versioned: file name; repeatable: "policies/x.sql"
    version: int | None

    @property
    def text(self) -> str:
        return self.path.read_text(encoding="utf-8")

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class Entry:
    file: SqlFile | None
    name: str
    kind: str  # "migration" | "repeatable"
    state: str  # applied | pending | changed | edited | missing
    checksum: str
    recorded_checksum: str | None

    @property
    def needs_apply(self) -> bool:
        return self.state in ("pending", "changed")


def versioned_files(db_dir: Path = DB_DIR) -> list[SqlFile]:
    files: list[SqlFile] = []
    seen: dict[int, str] = {}
    for path in sorted((db_dir / "migrations").glob("*.sql")):
        m = VERSIONED_NAME.match(path.name)
        if not m:
            raise MigrationError(f"{path.name}: migration files are named NNNN_snake_case_name.sql")
        version = int(m.group(1))
        if version in seen:
            raise MigrationError(f"{path.name}: version {version:04d} is also used by {seen[version]}")
        seen[version] = path.name
        files.append(SqlFile(path, path.name, version))
    return files


def repeatable_files(db_dir: Path = DB_DIR) -> list[SqlFile]:
    files: list[SqlFile] = []
    for sub in REPEATABLE_DIRS:
        for path in sorted((db_dir / sub).glob("*.sql")):
            if not REPEATABLE_NAME.match(path.name):
                raise MigrationError(f"{sub}/{path.name}: repeatable files are named snake_case.sql")
            files.append(SqlFile(path, f"{sub}/{path.name}", None))
    return files


def all_files(db_dir: Path = DB_DIR) -> list[SqlFile]:
    """Every file in the order it is applied (also the order of `db/load.sql`)."""
    return versioned_files(db_dir) + repeatable_files(db_dir)


def _short(checksum: str | None) -> str:
    return checksum[:12] if checksum else "-"


class Migrator:
    def __init__(self, conn: psycopg.Connection, db_dir: Path = DB_DIR,
                 log: Callable[[str], None] = lambda _msg: None):
        if not conn.autocommit:
            raise ValueError("the migrator needs an autocommit connection")
        self.conn = conn
        self.db_dir = db_dir
        self.log = log

    def _q(self, query: str, params: dict | None = None) -> psycopg.Cursor:
        """Run the named query `query` (crm/tools/sql/migrate.sql)."""
        return self.conn.cursor(row_factory=tuple_row).execute(queries.get(query), params)

    # -- state ---------------------------------------------------------------------------------
    def _tracking_exists(self) -> bool:
        row = self._q("migrate_tracking_exists").fetchone()
        return bool(row and row[0])

    def _ensure_tracking(self) -> None:
        with self.conn.transaction():
            for stmt in split(queries.get("migrate_tracking_ddl")):
                self.conn.execute(stmt.sql)

    def plan(self) -> list[Entry]:
        applied: dict[int, tuple[str, str]] = {}
        repeat: dict[str, str] = {}
        if self._tracking_exists():
            for version, name, checksum in self._q("migrate_applied_migrations"):
                applied[version] = (name, checksum)
            for path, checksum in self._q("migrate_applied_repeatables"):
                repeat[path] = checksum

        entries: list[Entry] = []
        files = versioned_files(self.db_dir)
        on_disk = {f.version for f in files}
        for version, (name, checksum) in sorted(applied.items()):
            if version not in on_disk:
                entries.append(Entry(None, name, "migration", "missing", "", checksum))
        for f in files:
            checksum = f.checksum
            if f.version in applied:
                recorded_name, recorded = applied[f.version]
                accepted = {checksum} | EQUIVALENT_EARLIER_CHECKSUMS.get(f.name, frozenset())
                state = "applied" if recorded in accepted and recorded_name == f.name else "edited"
                entries.append(Entry(f, f.name, "migration", state, checksum, recorded))
            else:
                entries.append(Entry(f, f.name, "migration", "pending", checksum, None))
        for f in repeatable_files(self.db_dir):
            checksum = f.checksum
            recorded = repeat.get(f.name)
            state = "pending" if recorded is None else ("applied" if recorded == checksum else "changed")
            entries.append(Entry(f, f.name, "repeatable", state, checksum, recorded))
        return entries

    # -- actions -------------------------------------------------------------------------------
    def migrate(self, *, dry_run: bool = False) -> list[Entry]:
        """Apply what is pending; returns the entries applied (or, with dry_run, to be applied).

        Callers that take the connection from `DATABASE_URL` call `refuse_transaction_pooler()` first."""
        self._q("migrate_lock", {"key": LOCK_KEY})
        try:
            if not dry_run:
                self._ensure_tracking()
            entries = self.plan()
            broken = [e for e in entries if e.state in ("edited", "missing")]
            if broken:
                names = ", ".join(f"{e.name} ({e.state})" for e in broken)
                raise MigrationError(
                    f"refusing to migrate: applied migrations were changed after release: {names}; "
                    "add a new migration instead")
            if any(e.kind == "migration" and e.state == "pending" for e in entries):
                # A migration may drop or recreate what a repeatable file defines (a table's
                # policies and triggers go with it): re-apply them all; they are idempotent.
                entries = [replace(e, state="changed") if e.kind == "repeatable" and e.state == "applied" else e
                           for e in entries]
            todo = [e for e in entries if e.needs_apply]
            for entry in todo:
                verb = "re-apply" if entry.state == "changed" else "apply"
                if dry_run:
                    self.log(f"would {verb} {entry.kind} {entry.name} ({_short(entry.checksum)})")
                    continue
                ms = self._apply(entry)
                self.log(f"{verb.replace('apply', 'applied')} {entry.kind} {entry.name} in {ms} ms")
            if not todo:
                self.log("nothing to apply: the database is up to date")
            return todo
        finally:
            self._q("migrate_unlock", {"key": LOCK_KEY})

    def _apply(self, entry: Entry) -> int:
        assert entry.file is not None
        text = entry.file.text
        try:
            statements = split(text)
        except ValueError as exc:
            raise MigrationError(f"{entry.name}: {exc}") from exc
        started = self._q("migrate_clock").fetchone()[0]
        try:
            with self.conn.transaction():
                for stmt in statements:
                    try:
                        self.conn.execute(stmt.sql)
                    except psycopg.Error as exc:
                        message = (exc.diag.message_primary or str(exc)).strip()
                        raise MigrationError(
                            f"{entry.name}, line {stmt.line}: {message} (statement: {stmt.summary})"
                        ) from exc
                ms = self._q("migrate_elapsed_ms", {"started": started}).fetchone()[0]
                if entry.kind == "migration":
                    self._q("migrate_record_migration", {"version": entry.file.version, "name": entry.name,
                                                         "checksum": entry.checksum, "duration_ms": ms})
                else:
                    self._q("migrate_record_repeatable", {"path": entry.name, "checksum": entry.checksum,
                                                          "duration_ms": ms})
        except MigrationError:
            raise
        except psycopg.Error as exc:
            raise MigrationError(f"{entry.name}: {exc}") from exc
        return ms


POOLER_REFUSAL = ("refusing to migrate through a transaction pooler (CRM_DB_POOLER=transaction): migrations need"
                  " a session for their lock and DDL; use the direct connection (on Supabase the database URL"
                  " on port 5432, not the pooler on 6543)")


def refuse_transaction_pooler() -> None:
    if config.transaction_pooler():
        raise MigrationError(POOLER_REFUSAL)


def status_lines(entries: list[Entry]) -> list[str]:
    lines = []
    for e in entries:
        detail = f"sha256:{_short(e.checksum)}"
        if e.recorded_checksum and e.recorded_checksum != e.checksum:
            detail += f" (applied as sha256:{_short(e.recorded_checksum)}"
            detail += ", an equivalent earlier text)" if e.state == "applied" else ")"
        lines.append(f"{e.state:<8} {e.kind:<10} {e.name:<48} {detail}")
    return lines


def load_sql_lines(db_dir: Path = DB_DIR) -> list[str]:
    """The `\\ir` lines `db/load.sql` must contain, in order."""
    return [f"\\ir {f.path.relative_to(db_dir).as_posix()}" for f in all_files(db_dir)]


LOAD_SQL_HEADER = """\
-- Apply the whole schema with psql alone, in the order `crm db migrate` uses:
--   psql "$DATABASE_URL" -v ON_ERROR_STOP=1 --single-transaction -f db/load.sql
-- Versioned migrations first (in number order), then the repeatable files: db/functions/,
-- db/policies/, then db/triggers/, each in name order. Regenerate with `python -m crm.tools.migrate`;
-- tests/migration/test_load_sql.py keeps it in step.
\\set ON_ERROR_STOP on
"""


def write_load_sql(db_dir: Path = DB_DIR) -> Path:
    path = db_dir / "load.sql"
    path.write_text(LOAD_SQL_HEADER + "\n".join(load_sql_lines(db_dir)) + "\n")
    return path


if __name__ == "__main__":
    print(f"wrote {write_load_sql()}")
