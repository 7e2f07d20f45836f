"""Shared code of the booking → CRM functions and the `crm` CLI.

Each deployable HTTP function lives in its own folder (`functions/booking/main.py`, …) and stays
thin; everything they share — configuration, the database connector, error mapping, problem
responses — lives here, in one place.
"""

from pathlib import Path

#: Repository root (this package is installed in editable mode from `functions/crm`).
ROOT = Path(__file__).resolve().parents[2]
