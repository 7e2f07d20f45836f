"""Reconciliation of the warehouse caches (SPEC 11) against a warehouse on loopback
(tests/fake_warehouse.py), with webhooks delivered through the real webhooks function."""

from __future__ import annotations

import json
import threading
import uuid
from datetime import UTC, datetime

import httpx
import pytest

from crm.sealing import SecretBox, parse_key
from crm.wms.client import ClientPolicy, WarehouseClient, WarehouseError
from crm.wms.reconcile import INVENTORY, WMS_ORDERS, Reconciler, Settings
from tests.fake_warehouse import FakeWarehouse
from tests.helpers import LiveServer, function_app, make_org
from tests.integration.test_payments import make_order
from tests.integration.test_webhooks_in import (
    KEY,
    _env,  # noqa: F401 — the same settings (autouse)
    create_integration,
    slug_of,
    wms_post,
)
from tests.rls_world import make_customer

API_KEY = "wms-api-key-" + uuid.uuid4().hex
T0 = "2026-01-01T00:00:00+00:00"
T1 = "2026-01-01T06:00:00+00:00"
T2 = "2026-02-01T00:00:00+00:00"


@pytest.fixture
def warehouse():
    with FakeWarehouse(API_KEY) as w:
        yield w


@pytest.fixture
def wms(conn, warehouse):
    org = make_org(conn)
    conn.execute("set crm.webhook_allow_loopback = 'on'")
    integ = create_integration(conn, org, "wms", {"base_url": warehouse.url}, {"api_key": API_KEY})
    return {"org": org, "slug": slug_of(conn, org), "id": integ["id"], "secret": integ["secrets"]["webhook_secret"]}


def reconciler(database, page_size=500, **kw) -> Reconciler:
    return Reconciler(database, box=SecretBox(parse_key(KEY)),
                      settings=Settings(page_size=page_size, allow_loopback=True, **kw),
                      policy=ClientPolicy(timeout=10, backoff=(0.05, 0.1, 0.2)))


def item(i: int | str, updated_at: str = T0, **changes) -> dict:
    n = i if isinstance(i, int) else 7
    sku = f"SKU-{i:05d}" if isinstance(i, int) else i
    return {"sku": sku, "name": f"Part {n}", "attributes": {"bin": f"B{n % 50}", "color": "black"},
            "available": n % 17, "reserved": n % 3, "total": n % 17 + n % 3, "unit": "pcs",
            "updated_at": updated_at, **changes}


def cache(conn, org) -> dict[str, dict]:
    rows = conn.execute("select sku, name, attributes, available, reserved, total, unit, source_updated_at"
                        " from public.inventory_items where org_id = %s", (org,)).fetchall()
    return {r["sku"]: r for r in rows}


def assert_cache_is_source(conn, org, warehouse) -> None:
    rows = cache(conn, org)
    assert set(rows) == set(warehouse.inventory.rows)
    for sku in rows:
        src, got = warehouse.inventory.get(sku), rows[sku]
        assert (got["name"], got["attributes"], got["available"], got["reserved"], got["total"], got["unit"]) == (
            src["name"], src["attributes"], src["available"], src["reserved"], src["total"], src["unit"]), sku
        assert got["source_updated_at"] == datetime.fromisoformat(src["updated_at"]), sku


def report(conn, run_id) -> dict:
    return conn.execute("select * from public.sync_run_reports where id = %s", (run_id,)).fetchone()


def test_10000_items_into_an_empty_cache_then_one_run_heals_exactly_the_drift(conn, database, warehouse, wms):
    for i in range(10_000):
        warehouse.inventory.put(item(i))
    first = reconciler(database).run(INVENTORY)
    [run] = first["runs"]
    assert run["status"] == "succeeded", run
    counts = (run["pages"], run["records_checked"], run["records_synced"], run["records_failed"])
    assert counts == (20, 10_000, 10_000, 0)
    assert run["discrepancies"] == {"missing": 10_000, "stale": 0, "extra": 0, "invalid": 0, "newer_in_cache": 0}
    stored = report(conn, run["id"])
    assert len(stored["discrepancies"]["items"]) == 500 and stored["discrepancies"]["truncated"] is True
    assert_cache_is_source(conn, wms["org"], warehouse)

    # Drift: 30 items change at the source, 5 disappear, 7 appear.
    for i in range(30):
        warehouse.inventory.put(item(i, T2, available=100 + i, **({"name": f"Renamed {i}"} if 10 <= i < 15 else {})))
    removed = [f"SKU-{i:05d}" for i in range(9990, 9995)]
    for sku in removed:
        warehouse.inventory.remove(sku)
    added = [f"SKU-NEW-{i}" for i in range(7)]
    for sku in added:
        warehouse.inventory.put(item(sku, T2))
    # Webhooks, out of order: items 0-9 arrive in their new version, then an older one (ignored), and
    # an old update of an unchanged item (ignored: the cache is newer).
    with LiveServer(function_app("webhooks")) as live, httpx.Client(base_url=live.url, timeout=30) as client:
        def event(items, at):
            return {"type": "inventory.updated", "timestamp": at, "data": {"items": items}}
        fresh = [warehouse.inventory.get(f"SKU-{i:05d}") for i in range(10)]
        assert wms_post(client, wms, event(fresh, T2)).status_code == 200
        assert wms_post(client, wms, event([item(i, T1, available=999) for i in range(10)], T1)).status_code == 200
        assert wms_post(client, wms, event([item(500, "2025-12-01T00:00:00+00:00", available=999)],
                                           "2025-12-01T00:00:00+00:00")).status_code == 200
    assert cache(conn, wms["org"])["SKU-00003"]["available"] == 103
    assert cache(conn, wms["org"])["SKU-00500"]["available"] == 500 % 17

    [run] = reconciler(database).run(INVENTORY)["runs"]
    assert run["status"] == "succeeded", run
    assert run["discrepancies"] == {"missing": 7, "stale": 20, "extra": 5, "invalid": 0, "newer_in_cache": 0}
    assert (run["records_checked"], run["records_synced"], run["records_failed"]) == (10_002, 32, 0)
    d = report(conn, run["id"])["discrepancies"]
    assert d["truncated"] is False
    assert d["fields"] == {"available": 20, "updated_at": 20, "name": 5}
    kinds = {(x["key"], x["kind"]) for x in d["items"]}
    assert kinds == ({(f"SKU-{i:05d}", "stale") for i in range(10, 30)} | {(s, "missing") for s in added}
                     | {(s, "extra") for s in removed})
    one = next(x for x in d["items"] if x["key"] == "SKU-00012")
    assert one["fields"] == {"available": {"cache": 12, "source": 112},
                             "name": {"cache": "Part 12", "source": "Renamed 12"},
                             "updated_at": {"cache": "2026-01-01T00:00:00+00:00",
                                            "source": "2026-02-01T00:00:00+00:00"}}
    assert_cache_is_source(conn, wms["org"], warehouse)

    [again] = reconciler(database).run(INVENTORY)["runs"]
    assert again["discrepancies"] == {"missing": 0, "stale": 0, "extra": 0, "invalid": 0, "newer_in_cache": 0}
    assert again["records_synced"] == 0
    assert conn.execute("select count(*) as n from private.sync_run_seen").fetchone()["n"] == 0
    # Every request carried the integration's key.
    assert {auth for _, _, auth in warehouse.requests} == {f"Bearer {API_KEY}"}


@pytest.mark.parametrize("order", ["reversed", "overlapping"])
def test_a_source_not_in_key_order_is_reconciled_exactly(conn, database, warehouse, wms, order):
    # Pages by key range only help a source that pages in key order: "reversed" lists the keys by
    # their reversed text (every page spans nearly the whole key space: compared key by key),
    # "overlapping" moves every third key one page later (each page's range overlaps the next).
    n = 2000
    warehouse.inventory.order = {"reversed": lambda k: k[::-1],
                                 "overlapping": lambda k: (int(k[4:9]) // 100 + (int(k[4:9]) % 3 == 0), k)}[order]
    for i in range(n):
        warehouse.inventory.put(item(i))
    [fill] = reconciler(database, page_size=100).run(INVENTORY)["runs"]
    assert fill["status"] == "succeeded", fill
    assert fill["discrepancies"] == {"missing": n, "stale": 0, "extra": 0, "invalid": 0, "newer_in_cache": 0}
    assert_cache_is_source(conn, wms["org"], warehouse)

    changed, removed = list(range(0, n, 97)), [f"SKU-{i:05d}" for i in range(5, n, 211)]
    for i in changed:
        warehouse.inventory.put(item(i, T2, available=500 + i))
    for sku in removed:
        warehouse.inventory.remove(sku)
    added = [f"SKU-{i:05d}" for i in range(n, n + 250, 50)] + ["SKU-00100a", "SKU-01999z"]
    for sku in added:
        warehouse.inventory.put(item(sku, T2))
    [run] = reconciler(database, page_size=100).run(INVENTORY)["runs"]
    assert run["status"] == "succeeded", run
    assert run["discrepancies"] == {"missing": len(added), "stale": len(changed), "extra": len(removed),
                                    "invalid": 0, "newer_in_cache": 0}
    d = report(conn, run["id"])["discrepancies"]
    assert {(x["key"], x["kind"]) for x in d["items"]} == (
        {(f"SKU-{i:05d}", "stale") for i in changed} | {(s, "missing") for s in added}
        | {(s, "extra") for s in removed})
    assert_cache_is_source(conn, wms["org"], warehouse)
    [again] = reconciler(database, page_size=100).run(INVENTORY)["runs"]
    assert again["discrepancies"] == {"missing": 0, "stale": 0, "extra": 0, "invalid": 0, "newer_in_cache": 0}
    assert conn.execute("select count(*) as n from private.sync_run_seen").fetchone()["n"] == 0


@pytest.mark.parametrize("ordered", [True, False])
def test_wms_orders_in_or_out_of_key_order_are_reconciled_exactly(conn, database, warehouse, wms, ordered):
    def order(n: int, status: str, at: str = T0) -> dict:
        return {"wms_order_id": f"W-{n:04d}", "crm_customer_id": None, "crm_order_id": None, "status": status,
                "lines": [], "shipment": None, "updated_at": at}

    if not ordered:
        warehouse.orders.order = lambda k: k[::-1]
    for n in range(0, 600, 2):
        warehouse.orders.put(order(n, "created"))
    [fill] = reconciler(database, page_size=50).run(WMS_ORDERS)["runs"]
    assert fill["discrepancies"] == {"missing": 300, "stale": 0, "extra": 0, "invalid": 0, "newer_in_cache": 0}
    for n in range(0, 600, 58):
        warehouse.orders.put(order(n, "picking", T2))
    gone = [f"W-{n:04d}" for n in (0, 2, 300, 302, 598)]
    for k in gone:
        warehouse.orders.remove(k)
    for n in (1, 301, 599, 700):
        warehouse.orders.put(order(n, "created", T2))
    [run] = reconciler(database, page_size=50, full_pass_hours=0).run(WMS_ORDERS)["runs"]
    assert run["status"] == "succeeded", run
    stale = [f"W-{n:04d}" for n in range(0, 600, 58) if f"W-{n:04d}" not in gone]
    assert run["discrepancies"] == {"missing": 4, "stale": len(stale), "extra": len(gone), "invalid": 0,
                                    "newer_in_cache": 0}
    rows = {r["wms_order_id"]: r["status"]
            for r in conn.execute("select wms_order_id, status from public.wms_orders where org_id = %s",
                                  (wms["org"],)).fetchall()}
    assert set(rows) == set(warehouse.orders.rows)
    assert all(rows[k] == warehouse.orders.get(k)["status"] for k in rows)


@pytest.mark.parametrize("in_flight", [1, 2])
def test_a_source_failing_on_page_3_fails_the_run_keeps_the_cache_consistent_and_the_next_run_completes(
        conn, database, warehouse, wms, in_flight):
    for i in range(2000):
        warehouse.inventory.put(item(i))
    assert reconciler(database).run(INVENTORY)["runs"][0]["status"] == "succeeded"
    for i in (10, 600, 1600):  # pages 1, 2 and 4 (500 a page)
        warehouse.inventory.put(item(i, T2, available=1000))
    warehouse.inventory.remove("SKU-01999")  # extra: judged only by a complete pass
    warehouse.fail_page = 3

    [run] = reconciler(database, pages_in_flight=in_flight).run(INVENTORY)["runs"]
    assert run["status"] == "failed"
    assert run["failed_at"]["page"] == 3 and run["failed_at"]["cursor"]
    assert "page 3" in run["error"] and "HTTP 500" in run["error"]
    assert (run["pages"], run["records_checked"], run["records_synced"]) == (2, 1000, 2)
    rows = cache(conn, wms["org"])
    assert (rows["SKU-00010"]["available"], rows["SKU-00600"]["available"]) == (1000, 1000)  # healed
    assert rows["SKU-01600"]["available"] == 1600 % 17  # not reached: as it was
    assert "SKU-01999" in rows  # no extra removed by an incomplete pass
    assert conn.execute("select count(*) as n from private.sync_run_seen").fetchone()["n"] == 0
    stored = report(conn, run["id"])
    assert stored["status"] == "failed" and stored["completed_at"] is not None

    warehouse.fail_page = None
    [run] = reconciler(database).run(INVENTORY)["runs"]
    assert run["status"] == "succeeded"
    assert run["discrepancies"] == {"missing": 0, "stale": 1, "extra": 1, "invalid": 0, "newer_in_cache": 0}
    assert_cache_is_source(conn, wms["org"], warehouse)



def test_a_page_that_is_not_json_fails_the_run_there_and_changes_nothing_of_it(conn, database, warehouse, wms):
    for i in range(1000):
        warehouse.inventory.put(item(i))
    warehouse.broken_page = 2  # its end looks like a last page: the client cannot tell, the database can
    [run] = reconciler(database).run(INVENTORY)["runs"]
    assert run["status"] == "failed" and run["failed_at"]["page"] == 2 and run["failed_at"]["cursor"]
    assert "page 2" in run["error"] and "json" in run["error"].lower()
    assert (run["pages"], run["records_checked"]) == (1, 500)
    assert len(cache(conn, wms["org"])) == 500

def test_two_runs_at_once_never_interleave(conn, database, warehouse, wms):
    for i in range(600):
        warehouse.inventory.put(item(i))
    warehouse.delay = 0.15
    results: list[dict] = []
    barrier = threading.Barrier(2)

    def go() -> None:
        barrier.wait()
        results.extend(reconciler(database, page_size=100).run(INVENTORY)["runs"])

    threads = [threading.Thread(target=go) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(r["status"] for r in results) == ["skipped", "succeeded"]
    assert conn.execute("select count(*) as n from private.sync_runs").fetchone()["n"] == 1
    assert len(cache(conn, wms["org"])) == 600


def test_an_abandoned_run_is_failed_after_its_lease_and_the_next_one_goes(conn, database, warehouse, wms):
    warehouse.inventory.put(item(1))
    stale = conn.execute("select * from private.sync_run_start(%s, 'inventory')", (wms["id"],)).fetchone()
    conn.execute("update private.sync_runs set heartbeat_at = now() - interval '1 hour' where id = %s", (stale["id"],))
    [run] = reconciler(database).run(INVENTORY)["runs"]
    assert run["status"] == "succeeded"
    old = report(conn, stale["id"])
    assert old["status"] == "failed" and old["error"].startswith("abandoned")
    # The abandoned run's worker, coming back, is told it no longer owns the run.
    with pytest.raises(Exception, match="no longer running"):
        conn.execute("select private.sync_run_page(%s, '{\"items\": []}', null)", (stale["id"],))


def test_malformed_items_are_counted_failed_and_the_rest_is_healed(conn, database, warehouse, wms):
    warehouse.inventory.put(item(1))
    warehouse.inventory.put(item(2, available="lots"))
    warehouse.inventory.put(item(3, updated_at="last tuesday-ish"))
    warehouse.inventory.put(item(4))
    [run] = reconciler(database).run(INVENTORY)["runs"]
    assert run["status"] == "succeeded"
    assert (run["records_checked"], run["records_synced"], run["records_failed"]) == (4, 2, 2)
    assert run["discrepancies"]["invalid"] == 2
    assert set(cache(conn, wms["org"])) == {"SKU-00001", "SKU-00004"}
    invalid = [x for x in report(conn, run["id"])["discrepancies"]["items"] if x["kind"] == "invalid"]
    assert {x["key"] for x in invalid} == {"SKU-00002", "SKU-00003"} and all(x["error"] for x in invalid)


def test_wms_orders_are_reconciled_and_our_order_learns_the_warehouse_id(conn, database, warehouse, wms):
    org = wms["org"]
    customer = make_customer(conn, org)
    order = make_order(conn, org, customer)
    conn.execute("insert into public.wms_orders (org_id, wms_order_id, status, source_updated_at, cached_at)"
                 " values (%s, 'W-GONE', 'created', %s, now() - interval '1 day'),"
                 " (%s, 'W-1', 'created', %s, now() - interval '1 day')", (org, T0, org, T0))
    warehouse.orders.put({"wms_order_id": "W-1", "crm_customer_id": str(customer), "crm_order_id": str(order),
                          "status": "picking", "lines": [{"sku": "SKU-1", "qty": 2}], "shipment": None,
                          "updated_at": T1})
    warehouse.orders.put({"wms_order_id": "W-2", "crm_customer_id": None, "crm_order_id": None,
                          "status": "created", "lines": [], "shipment": None, "updated_at": T1})
    [run] = reconciler(database).run(WMS_ORDERS)["runs"]
    assert run["status"] == "succeeded", run
    assert run["discrepancies"] == {"missing": 1, "stale": 1, "extra": 1, "invalid": 0, "newer_in_cache": 0}
    rows = {r["wms_order_id"]: r for r in conn.execute("select * from public.wms_orders where org_id = %s",
                                                         (org,)).fetchall()}
    assert set(rows) == {"W-1", "W-2"}
    assert (rows["W-1"]["status"], rows["W-1"]["lines"], rows["W-1"]["crm_order_id"]) == (
        "picking", [{"sku": "SKU-1", "qty": 2}], order)
    linked = conn.execute("select wms_order_id from public.orders where id = %s", (order,)).fetchone()
    assert linked["wms_order_id"] == "W-1"
    stale = next(x for x in report(conn, run["id"])["discrepancies"]["items"] if x["key"] == "W-1")
    assert set(stale["fields"]) == {"crm_customer_id", "crm_order_id", "status", "lines", "updated_at"}


def test_integration_without_base_url_or_with_a_wrong_key_is_a_failed_run_saying_why(conn, database, warehouse):
    org = make_org(conn)
    create_integration(conn, org, "wms", {}, {"api_key": API_KEY})
    [run] = reconciler(database).run(INVENTORY)["runs"]
    assert run["status"] == "failed" and "base_url" in run["error"]

    other = make_org(conn)
    conn.execute("set crm.webhook_allow_loopback = 'on'")
    create_integration(conn, other, "wms", {"base_url": warehouse.url}, {"api_key": "not-the-right-key"})
    runs = {str(r["org_id"]): r for r in reconciler(database).run(INVENTORY)["runs"]}
    assert runs[str(other)]["status"] == "failed" and "HTTP 401" in runs[str(other)]["error"]
    assert "not-the-right-key" not in json.dumps(runs, default=str)


# -- the client -------------------------------------------------------------------------------------
def test_client_honours_retry_after_bounded_and_retries_a_bounded_number_of_times(warehouse):
    warehouse.inventory.put(item(1))
    waits: list[float] = []
    policy = ClientPolicy(timeout=5, max_attempts=3, backoff=(0.01, 0.02), max_retry_after=5)
    with WarehouseClient(warehouse.url, API_KEY, allow_loopback=True, policy=policy, sleep=waits.append) as c:
        warehouse.throttle = 2
        [page] = list(c.inventory(limit=10))
        assert [x["sku"] for x in page.items] == ["SKU-00001"] and waits == [1.0, 1.0]

        warehouse.throttle = 5
        with pytest.raises(WarehouseError, match="page 1 .*HTTP 429"):
            list(c.inventory(limit=10))
        assert len(warehouse.requests) == 3 + 3  # three attempts each time, never more
    long_wait = ClientPolicy(timeout=5, max_attempts=3, max_retry_after=0.5)
    warehouse.throttle = 1
    with WarehouseClient(warehouse.url, API_KEY, allow_loopback=True, policy=long_wait, sleep=waits.append) as c:
        with pytest.raises(WarehouseError, match="longer than we wait"):
            list(c.inventory(limit=10))


def test_client_refuses_loopback_unless_allowed_and_never_shows_the_key(warehouse):
    with WarehouseClient(warehouse.url, API_KEY, policy=ClientPolicy(max_attempts=2)) as c:
        with pytest.raises(WarehouseError) as info:
            list(c.inventory(limit=10))
    assert API_KEY not in str(info.value)
    assert warehouse.requests == []


def test_wms_orders_between_full_passes_ask_only_for_what_changed(conn, database, warehouse, wms):
    def order(n: int, status: str, at: str) -> dict:
        return {"wms_order_id": f"W-{n}", "crm_customer_id": None, "crm_order_id": None, "status": status,
                "lines": [], "shipment": None, "updated_at": at}

    for n in range(5):
        warehouse.orders.put(order(n, "created", T0))
    [full] = reconciler(database).run(WMS_ORDERS)["runs"]
    assert full["status"] == "succeeded" and full["updated_since"] is None and full["records_checked"] == 5

    now = datetime.now(UTC).isoformat()
    warehouse.orders.put(order(1, "picking", now))
    warehouse.orders.remove("W-4")
    warehouse.requests.clear()
    [run] = reconciler(database).run(WMS_ORDERS)["runs"]
    assert run["status"] == "succeeded" and run["updated_since"] is not None
    [(_, query, _)] = warehouse.requests
    assert query["updated_since"] == [run["updated_since"].isoformat()]
    assert run["records_checked"] == 1
    assert run["discrepancies"] == {"missing": 0, "stale": 1, "extra": 0, "invalid": 0, "newer_in_cache": 0}
    statuses = {r["wms_order_id"]: r["status"]
                for r in conn.execute("select wms_order_id, status from public.wms_orders").fetchall()}
    assert statuses["W-1"] == "picking" and "W-4" in statuses  # extras wait for the next full pass

    [again] = reconciler(database, full_pass_hours=0).run(WMS_ORDERS)["runs"]
    assert again["updated_since"] is None and again["discrepancies"]["extra"] == 1


def test_both_jobs_are_registered_and_need_no_key_without_integrations(database, monkeypatch):
    from crm import jobs

    monkeypatch.delenv("CRM_SECRETS_KEY")
    registry = jobs.load_all()
    for name in ("reconcile-inventory", "reconcile-wms-orders"):
        assert registry[name].every_seconds
        assert registry[name].fn(database, {"progress": False}) == {"job": name, "runs": [], "failed": 0,
                                                                     "skipped": 0}


def test_pages_applied_side_by_side_in_any_order_report_the_first_500_discrepancies_in_page_order(conn, wms):
    # Three pages of 300 missing items each, keys in the opposite order of the pages, applied 3, 1, 2
    # (as two appliers may): the report keeps page 1's 300 and page 2's first 200, by key.
    pages = {n: [item(f"SKU-{letter}-{i:03d}") for i in range(300)] for n, letter in ((1, "C"), (2, "B"), (3, "A"))}
    run = conn.execute("select * from private.sync_run_start(%s, 'inventory')", (wms["id"],)).fetchone()
    for n in (3, 1, 2):
        page = json.dumps({"items": pages[n], "next_cursor": None})
        got = conn.execute("select private.sync_run_page(%s, %s, %s, %s) as r",
                           (run["id"], page, f"cursor-{n}", n)).fetchone()["r"]
        assert (got["checked"], got["synced"], got["counts"]["missing"]) == (300, 300, 300)
    done = conn.execute("select * from private.sync_run_finish(%s)", (run["id"],)).fetchone()
    assert done["status"] == "succeeded" and (done["pages"], done["records_checked"], done["records_synced"]) == (
        3, 900, 900)
    assert done["last_cursor"] == "cursor-3"
    d = done["discrepancies"]
    assert d["counts"] == {"missing": 900, "stale": 0, "extra": 0, "invalid": 0, "newer_in_cache": 0}
    assert d["truncated"] is True
    assert [x["key"] for x in d["items"]] == ([f"SKU-C-{i:03d}" for i in range(300)]
                                              + [f"SKU-B-{i:03d}" for i in range(200)])
    assert conn.execute("select count(*) as n from private.sync_run_seen").fetchone()["n"] == 0
    assert len(cache(conn, wms["org"])) == 900


def test_a_running_run_keeps_its_counts_on_its_row_and_its_items_until_it_ends(conn, wms):
    run = conn.execute("select * from private.sync_run_start(%s, 'inventory')", (wms["id"],)).fetchone()
    page = json.dumps({"items": [item(1), item(2, available="lots")]})
    conn.execute("select private.sync_run_page(%s, %s, null)", (run["id"], page))
    now = report(conn, run["id"])
    assert now["status"] == "running" and now["discrepancies"]["counts"]["missing"] == 1
    assert now["discrepancies"]["counts"]["invalid"] == 1 and now["discrepancies"]["items"] == []
    failed = conn.execute("select * from private.sync_run_fail(%s, 'stopped', 2, 'c2')", (run["id"],)).fetchone()
    assert failed["failed_at"] == {"page": 2, "cursor": "c2"}
    assert {(x["key"], x["kind"]) for x in failed["discrepancies"]["items"]} == {
        ("SKU-00001", "missing"), ("SKU-00002", "invalid")}
    assert failed["discrepancies"]["truncated"] is False


# -- retention ----------------------------------------------------------------------------------------
def test_old_runs_are_purged_but_never_a_running_one_the_last_success_or_the_last_full_pass(conn, wms):
    def run(days_ago: float, status: str, since: bool = False) -> str:
        return str(conn.execute(
            "insert into private.sync_runs (org_id, integration_id, sync_type, status, started_at, completed_at,"
            " updated_since) values (%s, %s, 'inventory', %s, now() - make_interval(secs => %s * 86400),"
            " case when %s <> 'running' then now() end, case when %s then now() - interval '30 days' end)"
            " returning id", (wms["org"], wms["id"], status, days_ago, status, since)).fetchone()["id"])

    def left(kind: str = "inventory") -> set[str]:
        return {str(r["id"]) for r in conn.execute(
            "select id from private.sync_runs where integration_id = %s and sync_type = %s",
            (wms["id"], kind)).fetchall()}

    def purge(keep: int, max_age: str | None = None) -> int:
        return conn.execute("select private.sync_runs_purge(%s, 'inventory', %s, %s) as n",
                            (wms["id"], keep, max_age)).fetchone()["n"]

    full = run(10, "succeeded")  # the last successful full pass
    changes = run(9, "succeeded", since=True)
    run(8, "failed")
    last_success = run(7, "succeeded", since=True)
    recent = run(2, "failed")
    newest = run(1, "failed")
    running = run(40, "running")  # a lost worker's: the next start fails it, no purge deletes it
    conn.execute("insert into private.sync_runs (org_id, integration_id, sync_type, status, completed_at)"
                 " values (%s, %s, 'wms_orders', 'failed', now())", (wms["org"], wms["id"]))  # another kind

    assert purge(3) == 2  # the newest three (running, newest, recent) and the two the next start reads
    assert left() == {running, newest, recent, last_success, full}
    assert changes not in left() and len(left("wms_orders")) == 1  # the other kind is not counted
    assert purge(10, "36 hours") == 1  # by age: `recent` (2 days) goes, the anchors and `running` stay
    assert left() == {running, newest, last_success, full}
    assert purge(1, "1 hour") == 1  # `newest` too: what stays is what must
    assert left() == {running, last_success, full}
    with pytest.raises(Exception, match="keep must be at least 1"):
        purge(0)


def test_each_start_purges_the_integrations_runs_beyond_keep_runs(conn, database, warehouse, wms):
    warehouse.inventory.put(item(1))
    ids = [reconciler(database, keep_runs=2).run(INVENTORY)["runs"][0]["id"] for _ in range(4)]
    kept = {str(r["id"]) for r in conn.execute("select id from private.sync_runs").fetchall()}
    assert kept == {str(ids[2]), str(ids[3])}
