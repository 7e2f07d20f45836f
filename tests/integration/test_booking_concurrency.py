"""Concurrent bookings over HTTP: one key never makes two orders, one phone never two customers."""

import copy
import threading
import uuid

import httpx
import pytest

from tests.helpers import LiveServer, function_app, make_org

N = 20

BODY = {
    "customer": {"full_name": "Anna Schmidt", "phone": "0151 2345 6789"},
    "item": {"external_ref": "listing-4711", "title": "Canyon Spectral 29", "price": 2450, "currency": "EUR",
             "images": ["https://img.example/4711/1.jpg"]},
}


@pytest.fixture
def live(database):
    with LiveServer(function_app("booking")) as server:
        yield server.url


def at_once(url: str, requests: list[tuple[dict, dict]]) -> list[httpx.Response]:
    """Send every request at the same moment, each from its own client (connection)."""
    barrier = threading.Barrier(len(requests))
    results: list[httpx.Response | BaseException] = [None] * len(requests)  # type: ignore[list-item]

    def send(i: int, body: dict, headers: dict) -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            barrier.wait()
            try:
                results[i] = client.post("/", json=body, headers=headers)
            except BaseException as exc:
                results[i] = exc

    threads = [threading.Thread(target=send, args=(i, b, h)) for i, (b, h) in enumerate(requests)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results  # type: ignore[return-value]


def count(conn, table: str, org) -> int:
    return conn.execute(f"select count(*) as n from public.{table} where org_id = %s", (org,)).fetchone()["n"]


def test_concurrent_replays_of_one_key_make_one_order(live, conn):
    org = make_org(conn)
    body = {**copy.deepcopy(BODY), "org": str(org)}
    key = {"Idempotency-Key": str(uuid.uuid4())}
    responses = at_once(live, [(body, key)] * N)
    assert [r.status_code for r in responses] == [201] * N, [r.text for r in responses if r.status_code != 201]
    assert len({r.text for r in responses}) == 1, "every replay must answer the first response"
    assert sum(r.headers.get("Idempotent-Replayed") == "true" for r in responses) == N - 1
    assert (count(conn, "orders", org), count(conn, "leads", org), count(conn, "customers", org)) == (1, 1, 1)


def test_concurrent_first_bookings_of_one_phone_make_one_customer(live, conn):
    org = make_org(conn)
    requests = []
    for i in range(N):
        body = {**copy.deepcopy(BODY), "org": str(org)}
        # The same person, typed differently, some with an email too.
        body["customer"]["phone"] = ["0151 2345 6789", "+49 151 23456789", "015123456789"][i % 3]
        if i % 2:
            body["customer"]["email"] = "anna@example.com"
        requests.append((body, {}))
    responses = at_once(live, requests)
    assert [r.status_code for r in responses] == [201] * N, [r.text for r in responses if r.status_code != 201]
    assert all("customer_id" not in r.json() for r in responses)  # never told to the public (SPEC 7.1)
    customers = {row["customer_id"] for row in conn.execute(
        "select customer_id from public.orders where id = any (%s)",
        ([uuid.UUID(r.json()["order_id"]) for r in responses],))}
    assert len(customers) == 1
    assert len({r.json()["order_code"] for r in responses}) == N
    assert (count(conn, "customers", org), count(conn, "leads", org), count(conn, "orders", org)) == (1, N, N)
    created = conn.execute("select count(*) as n from private.outbox where org_id = %s"
                           " and event_type = 'customer.created'", (org,)).fetchone()["n"]
    assert created == 1
