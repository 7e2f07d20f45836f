"""Booking intake without a database: validation, normalisation, tokens, client addresses."""

import copy
import datetime
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crm.booking import intake as b
from crm.errors import BadRequest, ConfigError, Unprocessable
from tests.helpers import BOOKING_EXAMPLE as EXAMPLE

ORG = b.Org(uuid.UUID("00000000-0000-4000-8000-000000000001"), "DE", b"k" * 32)


def body(**changes):
    """The SPEC example with `section.field` replaced (None deletes it)."""
    doc = copy.deepcopy(EXAMPLE)
    for path, value in changes.items():
        section, _, name = path.partition("__")
        target = doc[section] if name else doc
        key = name or section
        if value is None:
            target.pop(key, None)
        else:
            target[key] = value
    return doc


def errors_of(doc, country="DE"):
    with pytest.raises(Unprocessable) as exc:
        b.validate(doc, country)
    return {e.field: e.message for e in exc.value.errors}


def test_spec_example_is_normalised():
    doc = body(customer__full_name="  Anna   Schmidt ", customer__email=" Anna@Example.COM ",
               customer__preferred_channel="WhatsApp", item__currency="eur", item__item_id=4711,
               item__url="HTTPS://Listings.EXAMPLE/bike/4711",
               item__images=["https://img.example/1.jpg", "https://img.example/2.jpg",
                             "https://img.example/1.jpg"])
    req = b.validate(doc, "DE")
    assert req.customer.full_name == "Anna Schmidt"
    assert req.customer.phone == "+4915123456789"
    assert req.customer.email == "anna@example.com"
    assert req.customer.preferred_channel == "whatsapp"
    snap = req.snapshot()
    assert snap == {
        "item_id": "4711", "url": "https://listings.example/bike/4711", "external_ref": "listing-4711",
        "title": "Canyon Spectral 29", "brand": "Canyon", "model": "Spectral", "year": 2022, "size": "L",
        "price": 2450, "currency": "EUR", "main_photo_url": "https://img.example/1.jpg",
        "images": ["https://img.example/1.jpg", "https://img.example/2.jpg"],
        "cached_images": [], "images_state": "pending",
    }
    assert req.order_currency == "EUR"


def test_minimal_booking_has_no_images_and_optional_parts_absent():
    req = b.validate({"org": "demo", "customer": {"full_name": "A", "email": "a@b.de"},
                      "item": {"external_ref": "r", "title": "t"}}, "DE")
    assert req.snapshot() == {"external_ref": "r", "title": "t", "images": [], "cached_images": [],
                              "images_state": "none"}
    assert req.booking.amount is None and req.customer.phone is None


def test_every_bad_field_is_reported_at_once():
    doc = {
        "org": "demo",
        "customer": {"full_name": " ", "phone": "12", "email": "x@", "preferred_channel": "fax",
                     "city": 5},
        "item": {"url": "javascript:alert(1)", "year": 1700, "size": True, "price": -1, "currency": "euro",
                 "images": ["https://ok.example/1.jpg", "ftp://x/y.jpg"], "main_photo_url": "nope"},
        "booking": {"amount": "abc", "delivery_method": "drone", "notes": ["x"]},
    }
    assert errors_of(doc) == {
        "customer.full_name": "is required",
        "customer.phone": "is not a valid phone number for country DE",
        "customer.email": "is not a valid email address",
        "customer.preferred_channel": "must be one of: phone, whatsapp, telegram, viber, sms, email",
        "customer.city": "must be a string",
        "item.url": "must be an http or https URL",
        "item.external_ref": "is required",
        "item.title": "is required",
        "item.year": f"must be between 1885 and {datetime.date.today().year + 1}",
        "item.size": "must be a string or a whole number",
        "item.price": "must not be negative",
        "item.currency": "must be a three-letter ISO 4217 code such as EUR",
        "item.main_photo_url": "must be an http or https URL",
        "item.images.1": "must be an http or https URL",
        "booking.amount": "must be a number",
        "booking.delivery_method": "must be one of: pickup, shipping, courier",
        "booking.notes": "must be a string",
    }


def test_malformed_org_is_listed_with_the_other_fields():
    with pytest.raises(Unprocessable) as exc:
        b.validate(body(customer__email="broken"), None, org_valid=False)
    assert [e.field for e in exc.value.errors] == ["org", "customer.email"]


@pytest.mark.parametrize("value", [None, "", 5, "Not a slug!", "-demo", "a" * 64])
def test_parse_org_refuses_what_is_neither_slug_nor_id(value):
    assert b.parse_org(value) is None


def test_parse_org_accepts_slug_any_case_and_uuid():
    assert b.parse_org(" Demo ") == (None, "demo")
    assert b.parse_org(str(ORG.id).upper()) == (ORG.id, None)


@pytest.mark.parametrize("doc, field", [
    ([1, 2], "body"),
    ("text", "body"),
    ({"org": "demo"}, "customer"),
    ({"org": "demo", "customer": [], "item": {}}, "customer"),
    (body(customer__phone=None, customer__email=None), "customer.phone"),
    (body(customer__phone="", customer__email="   "), "customer.phone"),
    (body(item__price=10, item__currency=None, booking=None), "item.currency"),
    (body(booking__currency="USD"), "booking.currency"),
    (body(item__currency=None, item__price=None, booking__currency=None), "booking.currency"),
    (body(item__images="https://img.example/1.jpg"), "item.images"),
    (body(item__images=[f"https://img.example/{i}.jpg" for i in range(21)]), "item.images"),
    (body(item__images=[f"https://img.example/{i}.jpg" for i in range(20)],
          item__main_photo_url="https://img.example/main.jpg"), "item.images"),
    (body(item__external_ref="x" * 201), "item.external_ref"),
    (body(item__url="https://" + "a" * 2050 + ".example/"), "item.url"),
    (body(item__url="https://user:pw@img.example/"), "item.url"),
    (body(item__url="https:///path-only"), "item.url"),
    (body(item__url="https://img.example:99999/"), "item.url"),
    (body(item__year=2022.5), "item.year"),
    (body(item__year=False), "item.year"),
    (body(item__price=float("inf")), "item.price"),
    (body(item__price=10**11), "item.price"),
    (body(item__price="1e400"), "item.price"),
    (body(customer__phone="+49 30 1"), "customer.phone"),
    (body(customer__phone="x" * 41), "customer.phone"),
    (body(customer__phone=["0151"]), "customer.phone"),
    (body(customer__email="a@b"), "customer.email"),
    (body(customer__email="a b@example.com"), "customer.email"),
    (body(customer__email="a\n@b.com"), "customer.email"),  # `$` would match before a trailing newline
    (body(customer__email="a@b\n.com"), "customer.email"),
    (body(customer__email="a@" + "b" * 250 + ".de"), "customer.email"),
    (body(customer__full_name="Anna\x00"), "customer.full_name"),
    (body(customer__full_name="Anna\ud800"), "customer.full_name"),
    (body(item__title="\x1b[31mred"), "item.title"),
    (body(customer__preferred_channel=1), "customer.preferred_channel"),
])
def test_bad_field_is_named(doc, field):
    assert field in errors_of(doc)


def test_free_text_is_cut_at_its_cap_but_identifiers_are_not():
    req = b.validate(body(item__title="T" * 1000, customer__city="C" * 500,
                          booking__notes="line one  \n\n  line two\t" + "n" * 3000), "DE")
    assert len(req.item.title) == 300 and len(req.customer.city) == 100
    assert req.booking.notes.startswith("line one\n\n  line two") and len(req.booking.notes) == 2000


def test_whitespace_controls_collapse_in_single_line_fields_and_notes_keep_lines():
    req = b.validate(body(customer__full_name="Anna\tSchmidt\r\n", booking__notes="a\r\nb\tc"), "DE")
    assert req.customer.full_name == "Anna Schmidt"
    assert req.booking.notes == "a\nb\tc"


def test_main_photo_leads_the_gallery_and_images_are_deduplicated():
    req = b.validate(body(item__main_photo_url="https://img.example/2.jpg",
                          item__images=["https://img.example/1.jpg", "https://IMG.example/2.jpg", "",
                                        "https://img.example/1.jpg"]), "DE")
    assert req.item.images == ["https://img.example/2.jpg", "https://img.example/1.jpg"]
    assert req.snapshot()["main_photo_url"] == "https://img.example/2.jpg"


def test_numbers_are_sane_and_exact():
    req = b.validate(body(item__price="2450.50", booking__amount=99.9, item__year="2020", item__size=56),
                     "DE")
    assert str(req.item.price) == "2450.50" and str(req.booking.amount) == "99.90"
    assert req.item.year == 2020 and req.item.size == "56"
    assert req.snapshot()["price"] == 2450.5
    assert str(b.validate(body(item__price="2450.000"), "DE").item.price) == "2450.00"


@pytest.mark.parametrize(("field", "value"), [("item__price", 2450.005), ("item__price", "2450.505"),
                                              ("booking__amount", 99.999), ("booking__amount", "0.001")])
def test_more_than_two_decimals_is_refused_not_rounded(field, value):
    """Issue 10 finding 6: 2450.005 was silently rounded."""
    assert errors_of(body(**{field: value}), "DE") == {field.replace("__", "."): "must have at most 2 decimals"}


def test_phone_is_parsed_in_the_org_country():
    assert b.validate(body(customer__phone="030 1234567"), "DE").customer.phone == "+49301234567"
    assert b.validate(body(customer__phone="(415) 555-2671"), "US").customer.phone == "+14155552671"
    assert b.validate(body(customer__phone="+44 20 7946 0958"), "DE").customer.phone == "+442079460958"
    assert "customer.phone" in errors_of(body(customer__phone="0151 2345"), "DE")
    assert "customer.phone" in errors_of(body(customer__phone="0151 2345 6789"), "US")


def test_email_domain_is_normalised_and_local_part_must_be_ascii():
    assert "customer.email" in errors_of(body(customer__email="Jörg@example.de"))
    assert b.validate(body(customer__email="joerg@Bücher.DE"), "DE").customer.email == "joerg@xn--bcher-kva.de"


def test_extra_fields_are_ignored():
    req = b.validate(body(customer__nickname="x", extra={"a": 1}), "DE")
    assert req.customer.full_name == "Anna Schmidt"


def test_tracking_token_is_derived_from_the_order_id():
    order, other = uuid.uuid4(), uuid.uuid4()
    one = b.tracking_token(ORG, order)
    assert one == b.tracking_token(ORG, order)
    assert one != b.tracking_token(ORG, other)
    assert one != b.tracking_token(b.Org(ORG.id, "DE", b"x" * 32), order)
    assert one != b.tracking_token(b.Org(uuid.uuid4(), "DE", ORG.token_secret), order)
    assert len(one) == 43 and set(one) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert len(b.token_hash(one)) == 32


def test_params_carry_the_order_id_and_its_token_hash():
    doc = body()
    req = b.validate(doc, "DE")
    order = uuid.uuid4()
    params = b.create_booking_params(req, ORG, order_id=order, key="k", body_hash=b.request_hash(doc),
                                     client="127.0.0.1/32", limit=b.RateLimit(0, 600))
    assert params["order_id"] == order
    assert params["tracking_token_hash"] == b.token_hash(b.tracking_token(ORG, order))


def test_request_hash_ignores_key_order_and_spacing_only():
    assert b.request_hash({"a": 1, "b": [1, 2]}) == b.request_hash({"b": [1, 2], "a": 1})
    assert b.request_hash({"a": 1}) != b.request_hash({"a": 2})
    assert b.request_hash({"a": "\ud800"}) != b.request_hash({"a": "x"})


@pytest.mark.parametrize("raw", ["", " leading", "x" * 256, "ключ", "tab\there"])
def test_malformed_idempotency_key_is_400(raw):
    with pytest.raises(BadRequest):
        b.idempotency_key(raw)


def test_idempotency_key_passes_through():
    assert b.idempotency_key(None) is None
    assert b.idempotency_key("3f2c-ÿ"[:4]) == "3f2c"


def test_client_network(monkeypatch):
    monkeypatch.delenv("CRM_TRUSTED_PROXIES", raising=False)
    assert b.client_network("203.0.113.9", "198.51.100.1") == "203.0.113.9/32"
    assert b.client_network("2001:db8:1:2:3:4:5:6", None) == "2001:db8:1:2::/64"
    assert b.client_network("::ffff:203.0.113.9", None) == "203.0.113.9/32"
    assert b.client_network(None, None) == "0.0.0.0/32"
    monkeypatch.setenv("CRM_TRUSTED_PROXIES", "1")
    # The client may send any X-Forwarded-For; only the entry our proxy appended counts.
    assert b.client_network("10.0.0.2", "1.1.1.1, 198.51.100.7") == "198.51.100.7/32"
    assert b.client_network("10.0.0.2", "garbage") == "10.0.0.2/32"
    assert b.client_network("10.0.0.2", None) == "10.0.0.2/32"
    monkeypatch.setenv("CRM_TRUSTED_PROXIES", "2")
    assert b.client_network("10.0.0.2", "1.1.1.1, 198.51.100.7, 10.0.0.9") == "198.51.100.7/32"
    assert b.client_network("10.0.0.2", "198.51.100.7") == "10.0.0.2/32"


@pytest.mark.parametrize(("name", "value"), [("CRM_TRUSTED_PROXIES", "one"), ("CRM_TRUSTED_PROXIES", "-1"),
                                             ("CRM_BOOKING_RATE_LIMIT", "30/min"),
                                             ("CRM_BOOKING_RATE_WINDOW", "10m")])
def test_malformed_abuse_settings_are_config_errors_naming_them(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=name):
        b.trusted_proxies()
        b.RateLimit.from_env()


def test_rate_limit_settings(monkeypatch):
    monkeypatch.delenv("CRM_BOOKING_RATE_LIMIT", raising=False)
    monkeypatch.delenv("CRM_BOOKING_RATE_WINDOW", raising=False)
    assert b.RateLimit.from_env() == b.RateLimit(30, 600)
    monkeypatch.setenv("CRM_BOOKING_RATE_LIMIT", "0")
    monkeypatch.setenv("CRM_BOOKING_RATE_WINDOW", "999999")
    assert b.RateLimit.from_env() == b.RateLimit(0, 86_400)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


def mutated_bodies():
    """The example with some fields replaced by arbitrary JSON: gets past the shape checks."""
    paths = [(section, name) for section in ("customer", "item", "booking") for name in EXAMPLE[section]]
    return st.dictionaries(st.sampled_from(paths), json_values, max_size=5).map(
        lambda changes: body(**{f"{s}__{n}": v for (s, n), v in changes.items()}))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(json_values, mutated_bodies()))
def test_arbitrary_json_is_accepted_or_refused_with_fields(doc):
    try:
        req = b.validate(doc, "DE")
    except Unprocessable as exc:
        assert exc.errors and all(e.field and e.message for e in exc.errors)
        return
    b.create_booking_params(req, ORG, order_id=uuid.uuid4(), key=None, body_hash=b.request_hash(doc),
                            client="127.0.0.1/32", limit=b.RateLimit(0, 600))
