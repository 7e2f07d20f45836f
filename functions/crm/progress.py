"""Progress bars of long jobs on a terminal (SPEC 8): tqdm on stderr, nothing when not asked for."""

from __future__ import annotations

import sys

from tqdm import tqdm

#: `backfill-images [█████     ] 120/240 [00:40<00:40, 3.0orders/s], BK-9K5UEA33`
KNOWN_TOTAL = "{desc} [{bar:30}] {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}]{postfix}"


def progress_bar(enabled: bool, label: str, total: int | None = None, unit: str = "it") -> tqdm:
    """A bar for `label`; `enabled` False (no terminal, a scheduler, a test) draws nothing.
    Step it with `bar.update()`, name the item with `bar.set_postfix_str(note, refresh=False)`."""
    return tqdm(total=total, desc=label, unit=unit, file=sys.stderr, disable=not enabled, dynamic_ncols=True,
                bar_format=KNOWN_TOTAL if total is not None else None)
