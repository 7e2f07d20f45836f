"""One text rule set (issue 10 finding 6): the database's and crm.textrules agree on every string.

The database holds the rules for every writer (hidden.text_normalize / text_problem / text_max,
used by CHECKs and normalising triggers); Python applies the same ones early for field errors. One
corpus of nasty strings, plus generated ones, goes to both; they must agree on what is stored and
on what is refused.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.rows import dict_row

from crm import textrules
from crm.booking import intake as booking
from crm.errors import Unprocessable
from crm.leads import patch as leads
from tests.helpers import BOOKING_EXAMPLE, acting_as, make_org, make_staff

CORPUS = [
    "", " ", "Anna Schmidt", "  Anna   Schmidt  ", "Anna\tSchmidt", "Anna\nSchmidt", "Anna\r\nSchmidt",
    "Anna\u00a0Schmidt", "Anna\u2003\u2003Schmidt", "Anna\u3000Schmidt", "Anna\u2028Schmidt", "Anna\u2029",
    "\u200b", "\u200b\u200b\u200b", "\u200d\ufeff", "\u00ad", "\u2060", "\u3164", "\u115f\u1160", " \u200b ",
    "\u200e", "\u061c", "\ufe0f", "A\u200bnna", "Ann\u00e9", "Anne\u0301", "\u0041\u030a", "\u212b",
    "Иванов", "Щукина", "李小龙", "😀", "👩‍👩‍👧", "a\u0085b", "a\u0080b", "a\u009fb", "a\u0001b", "a\u001fb",
    "a\u007fb", "a\u000bb", "a\u000cb", "a\u001cb", "\u202egnp.exe", "a\u202ab", "a\u202db", "a\u2066b",
    "a\u2069b", "x" * 199, "x" * 200, "x" * 201, "é" * 200, "e\u0301" * 150, "line one\n\nline two  \n",
    "\n\n  indented\n\ttabbed\t\n", "trailing\u00a0\u00a0\nnext", "a\r\rb", "a\u000b\u000cb",
    "\t", "\n", "x" * 2001, "x\n" * 1000, "<script>alert(1)</script>", "Robert'); drop table customers;--",
    "%s %(x)s {0}", "\\x00", "\u0000", "\ud800", "a\udfffb",
]
KINDS = sorted(textrules.LIMITS)


@pytest.fixture(scope="module")
def sql(clone_database) -> Iterator[psycopg.Connection]:
    with psycopg.connect(clone_database(), autocommit=True, row_factory=dict_row) as conn:
        yield conn


def database_says(conn: psycopg.Connection, values: list[str], kind: str) -> list[tuple[str, str | None]]:
    rows = conn.execute(
        "select n.normalized, hidden.text_problem(n.normalized, %(kind)s) as problem"
        "  from unnest(%(values)s::text[]) with ordinality v(value, i)"
        "  cross join lateral (select hidden.text_normalize(v.value, %(kind)s) as normalized) n order by v.i",
        {"values": values, "kind": kind}).fetchall()
    return [(r["normalized"], r["problem"]) for r in rows]


def python_says(values: list[str], kind: str) -> list[tuple[str, str | None]]:
    out = []
    for value in values:
        normalized = textrules.normalize(value, kind)
        out.append((normalized, textrules.problem(normalized, kind) if normalized else None))
    return out


def storable(value: str) -> bool:
    return "\x00" not in value and not any("\ud800" <= ch <= "\udfff" for ch in value)


@pytest.mark.parametrize("kind", KINDS)
def test_the_corpus_gets_the_same_verdict_from_both(sql, kind: str) -> None:
    values = [v for v in CORPUS if storable(v)]
    db = [(n, p if n else None) for n, p in database_says(sql, values, kind)]
    assert python_says(values, kind) == db
    # What the database cannot even hold, Python refuses.
    for value in CORPUS:
        if not storable(value):
            assert textrules.problem(textrules.normalize(value, kind), kind) == "invalid_characters", repr(value)


ALPHABET = st.sampled_from(list(
    "aZ09 .-'\t\n\r\u000b\u000c\u00a0\u1680\u2000\u200a\u2028\u2029\u202f\u205f\u3000"
    "\u00ad\u034f\u061c\u115f\u180e\u200b\u200c\u200d\u200e\u200f\u2060\u2064\u3164\ufe0f\ufeff"
    "\u0001\u0008\u000e\u001f\u007f\u0080\u0085\u009f\u202a\u202e\u2066\u2069"
    "éÅ\u0301\u030a\u212bЖж李😀"))


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(st.text(ALPHABET, max_size=12), min_size=1, max_size=20),
       kind=st.sampled_from(["name", "note"]))
def test_generated_strings_get_the_same_verdict_from_both(sql, values: list[str], kind: str) -> None:
    db = [(n, p if n else None) for n, p in database_says(sql, values, kind)]
    assert python_says(values, kind) == db


def test_limits_and_multiline_kinds_are_the_databases(sql) -> None:
    rows = sql.execute("select k, hidden.text_max(k) as max, hidden.text_multiline(k) as multi"
                       " from unnest(%s::text[]) k", (KINDS,)).fetchall()
    assert {r["k"]: r["max"] for r in rows} == textrules.LIMITS
    assert {r["k"] for r in rows if r["multi"]} == textrules.MULTILINE


# -- every writer, every endpoint: the same rules ------------------------------------------------
NASTY = [("a\u0085b", "invalid_characters"), ("pay \u202egnp.exe", "invalid_characters"),
         ("\u200b\u200b", "blank")]


@pytest.mark.parametrize(("note", "code"), NASTY)
def test_patch_leads_refuses_what_booking_refuses(note: str, code: str) -> None:
    """PATCH /leads accepted U+0085 and U+202E in notes that booking refused."""
    with pytest.raises(Unprocessable) as patch:
        leads.parse_patch({"note": note})
    assert patch.value.errors[0].field == "note"
    doc = {**BOOKING_EXAMPLE, "booking": {**BOOKING_EXAMPLE["booking"], "notes": note}}
    with pytest.raises(Unprocessable) as book:
        booking.validate(doc, "DE")
    assert [e.field for e in book.value.errors] == ["booking.notes"]


@pytest.mark.parametrize(("name", "code"), NASTY)
def test_a_name_of_only_invisible_or_forbidden_characters_is_refused_at_intake(name: str, code: str) -> None:
    doc = {**BOOKING_EXAMPLE, "customer": {**BOOKING_EXAMPLE["customer"], "full_name": name}}
    with pytest.raises(Unprocessable) as book:
        booking.validate(doc, "DE")
    assert [e.field for e in book.value.errors] == ["customer.full_name"]


@pytest.fixture(scope="module")
def shop(sql):
    org = make_org(sql)
    manager = make_staff(sql, org, "manager")
    customer = sql.execute("insert into public.customers (org_id, full_name, email) values (%s, 'Anna', %s)"
                           " returning id", (org, "anna@example.com")).fetchone()["id"]
    lead = sql.execute("insert into public.leads (org_id, customer_id, source) values (%s, %s, 'manual')"
                       " returning id", (org, customer)).fetchone()["id"]
    return {"org": org, "manager": manager, "customer": customer, "lead": lead}


@pytest.mark.parametrize(("note", "code"), NASTY)
def test_update_lead_through_postgrest_refuses_them_too(sql, shop, note: str, code: str) -> None:
    with pytest.raises(psycopg.Error) as refused, acting_as(sql, "authenticated", shop["manager"]) as c:
        c.execute("select public.update_lead(%s, note => %s)", (shop["lead"], note))
    assert (refused.value.sqlstate, refused.value.diag.message_detail, refused.value.diag.message_hint) == (
        "PT422", code, "note")


@pytest.mark.parametrize(("sql_text", "value"), [
    ("update public.customers set full_name = %(v)s where id = %(customer)s", "\u200b\u200b"),
    ("update public.customers set full_name = %(v)s where id = %(customer)s", "Anna \u202eevil"),
    ("update public.customers set city = %(v)s where id = %(customer)s", "c" * 101),
    ("update public.leads set notes = %(v)s where id = %(lead)s", "a\u0085b"),
    ("insert into public.tasks (org_id, lead_id, title) values (%(org)s, %(lead)s, %(v)s)", "\u2066x\u2069"),
])
def test_direct_writes_are_checked(sql, shop, sql_text: str, value: str) -> None:
    with pytest.raises(psycopg.errors.CheckViolation), acting_as(sql, "authenticated", shop["manager"]) as c:
        c.execute(sql_text, {**shop, "v": value})


def test_direct_writes_are_stored_normalised(sql, shop) -> None:
    with acting_as(sql, "authenticated", shop["manager"]) as c:
        name = c.execute("update public.customers set full_name = %s where id = %s returning full_name",
                         ("  Anna \u00a0  Schmidt\n", shop["customer"])).fetchone()["full_name"]
        notes = c.execute("update public.leads set notes = %s where id = %s returning notes",
                          ("  first line   \r\nsecond\t \n\n", shop["lead"])).fetchone()["notes"]
    assert name == "Anna Schmidt"
    assert notes == "first line\nsecond"
