"""The two tables: database errors to the project's exceptions (crm.db), exceptions to HTTP (crm.http),
exercised with real errors from Postgres."""

import importlib
import pkgutil
import re
import uuid

import flask
import httpx
import psycopg
import pytest

from crm import ROOT
from crm.auth import JwksUnavailable
from crm.db import SQLSTATE_ERRORS, Database, direct, translate
from crm.errors import (
    ApiKeyRefused,
    CrmError,
    DatabaseUnavailable,
    InvalidToken,
    Problem,
    ServiceUnavailable,
    Unauthorized,
    Unprocessable,
)
from crm.http import PROBLEMS, answer_for, endpoint
from tests.helpers import LiveServer


@pytest.mark.parametrize(
    ("statement", "status", "code"),
    [
        ("do $$ begin raise sqlstate 'PT409' using message = 'order cannot move from a to b',"
         " detail = 'invalid_transition'; end $$", 409, "invalid_transition"),
        ("do $$ begin raise sqlstate 'PT404' using message = 'no such lead'; end $$", 404, "pt404"),
        ("do $$ begin raise sqlstate 'PT422' using message = 'bad', detail = 'x', hint = 'assigned_to'; end $$",
         422, "x"),
        ("select 'nope'::uuid", 422, "invalid_input"),
        ("select 1/0", 422, "invalid_input"),
        ("select * from no_such_table", 500, "internal_error"),
    ],
)
def test_translate_real_errors(conn, statement, status, code):
    with pytest.raises(psycopg.Error) as info:
        conn.execute(statement)
    err = translate(info.value)
    assert (answer_for(err).status, err.code) == (status, code)
    if status == 422:
        assert err.errors


def test_constraint_violations(conn):
    conn.execute("create temp table t (id int primary key, n int constraint n_positive check (n > 0))")
    conn.execute("insert into t values (1, 1)")
    with pytest.raises(psycopg.Error) as dup:
        conn.execute("insert into t values (1, 1)")
    assert (answer_for(translate(dup.value)).status, translate(dup.value).code) == (409, "t_pkey")
    with pytest.raises(psycopg.Error) as chk:
        conn.execute("insert into t values (2, -1)")
    err = translate(chk.value)
    assert (answer_for(err).status, err.code) == (422, "n_positive")


def test_problem_document_shape():
    doc = Problem(status=422, title="Unprocessable Content", detail="d", code="c").as_dict()
    assert set(doc) == {"type", "title", "status", "detail", "code", "errors"}
    assert answer_for(CrmError()).status == 500


def _constraint(conn: psycopg.Connection, table: str, references: str) -> str:
    return conn.execute("select conname from pg_constraint where contype = 'f' and conrelid = %s::regclass"
                        " and confrelid = %s::regclass", (table, references)).fetchone()["conname"]


def test_foreign_key_and_not_null_violations_are_422_naming_the_constraint(database: Database, conn) -> None:
    """SPEC 6.2, through what the functions run: a named query in a session, wrap_exceptions, and the
    handler wrapper that turns it into problem+json."""
    with database.owner() as s:
        s.fetch_one("create_organization", {"slug": "fk-test", "name": "FK Test", "country": "DE"})

    with pytest.raises(Unprocessable) as fk, database.owner() as s:
        s.fetch_one("add_staff", {"user_id": uuid.uuid4(), "role": "agent", "org": "fk-test"})
    assert fk.value.code == _constraint(conn, "public.staff", "auth.users")
    assert fk.value.errors and fk.value.errors[0].message == "refers to something that does not exist"

    with pytest.raises(Unprocessable) as not_null, database.owner() as s:
        s.fetch_one("create_organization", {"slug": "no-name", "name": None, "country": "DE"})
    assert not_null.value.code == "organizations_name_not_null"
    assert [(e.field, e.message) for e in not_null.value.errors] == [("name", "is required")]

    @endpoint
    def handler(request: flask.Request) -> flask.Response:
        with database.owner() as s:
            if request.path.endswith("/fk"):
                s.fetch_one("add_staff", {"user_id": uuid.uuid4(), "role": "agent", "org": "fk-test"})
            else:
                s.fetch_one("create_organization", {"slug": "no-name", "name": None, "country": "DE"})
        return flask.Response(status=204)

    app = flask.Flask(__name__)
    app.add_url_rule("/<kind>", view_func=lambda kind: handler(flask.request), methods=["POST"])
    client = app.test_client()
    for path, code in (("/fk", fk.value.code), ("/not-null", "organizations_name_not_null")):
        resp = client.post(path)
        assert resp.status_code == 422 and resp.mimetype == "application/problem+json"
        assert resp.json["code"] == code and resp.json["status"] == 422 and resp.json["errors"]
        assert resp.headers["X-Request-Id"]


# -- the two tables: SQLSTATE → exception (crm.db), exception → HTTP answer (crm.http) -------------

def _all_crm_error_classes() -> set[type[CrmError]]:
    """Every CrmError subclass, at any depth, once every crm module is imported."""
    import crm

    for info in pkgutil.walk_packages(crm.__path__, "crm."):
        importlib.import_module(info.name)
    found, todo = set(), [CrmError]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub not in found:
                found.add(sub)
                todo.append(sub)
    return found


def _unmapped(classes) -> list[str]:
    """Classes that would answer the catch-all 500 only because nothing lists them or an ancestor."""
    return sorted(f"{c.__module__}.{c.__qualname__}" for c in classes
                  if c not in PROBLEMS and answer_for(c) is PROBLEMS[CrmError])


def test_every_exception_class_in_crm_is_in_the_http_table():
    classes = {c for c in _all_crm_error_classes() if c.__module__.startswith("crm.")}
    assert {DatabaseUnavailable, JwksUnavailable, InvalidToken, ApiKeyRefused} <= classes
    assert _unmapped(classes) == []

    class Unlisted(CrmError):  # the check does fail on a class nobody mapped
        pass

    assert _unmapped({Unlisted}) == [f"{__name__}.{Unlisted.__qualname__}"]


def test_grandchildren_answer_as_their_nearest_listed_ancestor():
    class StaleSession(InvalidToken):  # CrmError → Unauthorized → InvalidToken → here
        pass

    class ReplicaLagging(DatabaseUnavailable):  # CrmError → ServiceUnavailable → DatabaseUnavailable → here
        pass

    err = StaleSession("the session was ended elsewhere")
    assert (answer_for(err).status, answer_for(err).headers(err)) == (
        401, {"WWW-Authenticate": 'Bearer realm="crm", error="invalid_token"'})
    lag = ReplicaLagging()
    assert (answer_for(lag).status, answer_for(lag).headers(lag)) == (503, {"Retry-After": "5"})
    # The key set's outage is an outage like the database's, but not the database's.
    jwks = JwksUnavailable()
    assert isinstance(jwks, ServiceUnavailable) and not isinstance(jwks, DatabaseUnavailable)
    assert (answer_for(jwks).status, answer_for(jwks).headers(jwks), jwks.code) == (
        503, {"Retry-After": "5"}, "jwks_unavailable")


def test_each_pt_code_maps_to_the_class_http_answers_with_that_status():
    """PostgREST answers PT<nnn> with nnn; the functions must too, through both tables."""
    pt = {state: cls for state, cls in SQLSTATE_ERRORS.items() if state.startswith("PT")}
    assert pt and all(answer_for(cls).status == int(state[2:]) for state, cls in pt.items()), pt
    raised = set()
    for path in (ROOT / "db").rglob("*.sql"):
        raised |= set(re.findall(r"sqlstate\s+'(PT\d{3})'", path.read_text(encoding="utf-8"), re.IGNORECASE))
    assert raised and raised <= set(pt), sorted(raised - set(pt))


def test_pt401_from_sql_keeps_its_challenge_over_http(db_url):
    """Authentication refused by SQL answers like authentication refused in Python: 401 with
    `WWW-Authenticate`, through the connector's table and the HTTP layer's, on a real socket."""

    @endpoint
    def handler(request: flask.Request) -> flask.Response:
        if request.path.endswith("/python"):
            raise Unauthorized("Sign in first.", code="missing_token")
        with direct(db_url) as conn:
            conn.execute("do $$ begin raise sqlstate 'PT401' using message = 'the session has ended',"
                         " detail = 'session_ended'; end $$")
        return flask.Response(status=204)

    app = flask.Flask(__name__)
    app.add_url_rule("/<kind>", view_func=lambda kind: handler(flask.request), methods=["GET"])
    with LiveServer(app) as live, httpx.Client(base_url=live.url, timeout=30) as client:
        for path, code in (("/sql", "session_ended"), ("/python", "missing_token")):
            resp = client.get(path)
            assert resp.status_code == 401 and resp.headers["content-type"].startswith("application/problem+json")
            assert (resp.json()["code"], resp.json()["type"]) == (code, f"/problems/{code}")
            assert resp.headers["WWW-Authenticate"] == 'Bearer realm="crm"', path
