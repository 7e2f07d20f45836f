"""Named SQL queries, loaded from every `.sql` file of the `crm` package (procrastinate's habit).

Each capability package keeps its own (`crm/booking/queries.sql`, `crm/outbox/queries.sql`, …),
the platform's are in `crm/sql/`, the tools' in `crm/tools/sql/`. The files read as the data-access
API, one per concern: each query starts with a `-- name --` header line and uses `%(param)s`
placeholders. Python never builds SQL from strings. Names are unique across all files.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

_HEADER = re.compile(r"^-- ([a-z_][a-z0-9_]*) --$", re.MULTILINE)


def parse(text: str) -> dict[str, str]:
    parts = _HEADER.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        queries[name] = body.strip()
    return queries


PACKAGE_DIR = Path(__file__).parent


def files(package_dir: Path = PACKAGE_DIR) -> list[Path]:
    """Every `.sql` file under the package, in path order."""
    return sorted(package_dir.rglob("*.sql"))


@cache
def load() -> dict[str, str]:
    queries: dict[str, str] = {}
    for path in files():
        for name, sql in parse(path.read_text(encoding="utf-8")).items():
            if name in queries:
                where = path.relative_to(PACKAGE_DIR)
                raise ValueError(f"query {name!r} in crm/{where} is already defined in another file")
            queries[name] = sql
    return queries


def get(name: str) -> str:
    try:
        return load()[name]
    except KeyError:
        raise KeyError(f"no query named {name!r} in the .sql files of the crm package") from None
