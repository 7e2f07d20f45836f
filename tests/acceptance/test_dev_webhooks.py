"""`crm dev` runs the webhook worker: an endpoint added from a second terminal receives a booking's
events, signed with its secret, within a second or two (README "Webhooks out")."""

from __future__ import annotations

import json
import os

import httpx

from tests.helpers import BOOKING_EXAMPLE, crm_cli, crm_dev_url, start_crm_dev, stop_crm_dev
from tests.integration.webhook_receiver import Receiver


def test_crm_dev_delivers_a_booking_signed(tmp_path, db_url):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "CRM_"))}
    env.update(DATABASE_URL=db_url, CRM_DATA_DIR=str(tmp_path / "crm-data"))
    log = tmp_path / "dev.log"
    proc = start_crm_dev([], env, log)
    try:
        url = crm_dev_url(proc, log)
        with Receiver() as rx:
            # A second terminal, configured only by what crm dev left in CRM_DATA_DIR.
            added = crm_cli("webhooks", "add", "--org", "demo", "--url", rx.url + "/hook", env=env)
            assert added.returncode == 0, added.stderr
            secret = json.loads(added.stdout)["secret"]
            booked = httpx.post(f"{url}/booking", json=BOOKING_EXAMPLE, timeout=30)
            assert booked.status_code == 201, booked.text
            rx.wait_for(lambda r: len(r.requests) >= 3, timeout=15)
            types = sorted(r.verify(secret)["type"] for r in rx.requests)
            assert types == ["customer.created", "lead.created", "order.created"]
    finally:
        stop_crm_dev(proc, log)
    assert "CRM_SECRETS_KEY" in (tmp_path / "crm-data" / "secrets.json").read_text()
