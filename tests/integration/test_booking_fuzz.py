"""Random JSON thrown at `POST /booking` over HTTP: always a well-formed answer, never a 5xx."""

import copy
import json
import uuid

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import LiveServer, function_app, make_org

VALID = {
    "customer": {"full_name": "Anna Schmidt", "phone": "0151 2345 6789", "email": "anna@example.com",
                 "preferred_channel": "whatsapp", "city": "Berlin"},
    "item": {"item_id": "4711", "url": "https://listings.example/bike/4711", "external_ref": "listing-4711",
             "title": "Canyon Spectral 29", "brand": "Canyon", "model": "Spectral", "year": 2022, "size": "L",
             "price": 2450, "currency": "EUR", "images": ["https://img.example/4711/1.jpg"],
             "main_photo_url": "https://img.example/4711/0.jpg"},
    "booking": {"amount": 100, "currency": "EUR", "delivery_method": "pickup", "notes": "after 5pm"},
}

scalars = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
           | st.text() | st.sampled_from(["", " ", "\x00", "\ud800", "+4915123456789", "https://x.example/a.jpg",
                                          "http://[::1]/", "EUR", "a@b.de", "1e400", "-0", "9" * 40]))
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=10,
)
PATHS = [(section, name) for section in VALID for name in VALID[section]]


@st.composite
def bodies(draw, org: str):
    """Mostly the valid booking with a few fields replaced, so requests reach the database too."""
    kind = draw(st.sampled_from(["mutated", "mutated", "mutated", "random", "sections"]))
    if kind == "random":
        return draw(json_values)
    doc = {"org": draw(st.sampled_from([org, org, org, "unknown-org", str(uuid.uuid4())])), **copy.deepcopy(VALID)}
    if kind == "sections":
        doc[draw(st.sampled_from(["org", "customer", "item", "booking"]))] = draw(json_values)
        return doc
    for section, name in draw(st.lists(st.sampled_from(PATHS), max_size=3, unique=True)):
        doc[section][name] = draw(json_values | st.text(max_size=30))
    return doc


def test_random_json_never_gets_a_5xx(database, conn, monkeypatch):
    monkeypatch.setenv("CRM_BOOKING_RATE_LIMIT", "0")  # let every valid body reach create_booking
    org = make_org(conn)
    statuses: dict[int, int] = {}
    with LiveServer(function_app("booking")) as live, httpx.Client(base_url=live.url, timeout=15) as http:

        # derandomize: the same 250 examples every run (and under pytest-randomly's seeds), so the
        # mix asserted below is a property of this generator, not of luck.
        @settings(max_examples=250, deadline=None, database=None, derandomize=True,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
        @given(doc=bodies(str(org)), key=st.none() | st.sampled_from(["k1", "k2"]))
        def check(doc, key):
            raw = json.dumps(doc, ensure_ascii=True).encode()
            resp = http.post("/", content=raw, headers={"Content-Type": "application/json",
                                                        **({"Idempotency-Key": key} if key else {})})
            statuses[resp.status_code] = statuses.get(resp.status_code, 0) + 1
            assert resp.status_code < 500, resp.text
            assert resp.headers["X-Request-Id"]
            problem_or_booking = resp.json()
            if resp.status_code == 201:
                assert problem_or_booking["status"] == "pending_manager"
            else:
                assert problem_or_booking["status"] == resp.status_code
                if resp.status_code == 422:
                    assert problem_or_booking["errors"]

        check()
    # The generator must exercise both paths: accepted bookings and refused ones.
    assert statuses.get(201, 0) > 10 and statuses.get(422, 0) > 10, statuses
