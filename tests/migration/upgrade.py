"""The schema as it was before a migration, for the upgrade tests."""

from __future__ import annotations

import shutil
from pathlib import Path

from crm.tools.migrate import versioned_files


def migration_named(suffix: str) -> str:
    """The file name of the one versioned migration ending in `suffix` (numbers change at merges)."""
    return next(f.path.name for f in versioned_files() if f.path.name.endswith(suffix))


def schema_before(tmp_path: Path, migration: str) -> Path:
    """A db directory holding every versioned migration before `migration` and no repeatable file."""
    old = tmp_path / "db"
    (old / "migrations").mkdir(parents=True)
    for sub in ("functions", "policies", "triggers"):
        (old / sub).mkdir()
    for f in versioned_files():
        if f.path.name < migration:
            shutil.copy(f.path, old / "migrations" / f.path.name)
    return old
