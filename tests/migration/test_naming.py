"""Migration files follow the naming rules the runner enforces, and versions are contiguous."""

from crm.tools.migrate import DB_DIR, REPEATABLE_NAME, VERSIONED_NAME, repeatable_files, versioned_files


def test_versioned_files_are_named_and_numbered_contiguously():
    files = versioned_files()
    assert files, "no migrations found"
    for f in files:
        assert VERSIONED_NAME.match(f.name), f.name
    assert [f.version for f in files] == list(range(1, len(files) + 1))


def test_repeatable_files_are_snake_case():
    for f in repeatable_files():
        assert REPEATABLE_NAME.match(f.path.name), f.name


def test_no_transaction_control_inside_files():
    """Each file runs inside the runner's transaction; BEGIN/COMMIT inside would break that."""
    import re

    pattern = re.compile(r"^\s*(begin|commit|rollback)\s*;", re.IGNORECASE | re.MULTILINE)
    for path in sorted(DB_DIR.rglob("*.sql")):
        if path.name == "load.sql":
            continue
        assert not pattern.search(path.read_text()), f"{path} controls its own transaction"
