"""The one table mapping database errors to HTTP, exercised with real errors from Postgres."""

import uuid

import flask
import psycopg
import pytest

from crm.db import Database, translate
from crm.errors import CrmError, Problem, Unprocessable
from crm.http import endpoint


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
    assert (err.status, err.code) == (status, code)
    if status == 422:
        assert err.errors


def test_constraint_violations(conn):
    conn.execute("create temp table t (id int primary key, n int constraint n_positive check (n > 0))")
    conn.execute("insert into t values (1, 1)")
    with pytest.raises(psycopg.Error) as dup:
        conn.execute("insert into t values (1, 1)")
    assert (translate(dup.value).status, translate(dup.value).code) == (409, "t_pkey")
    with pytest.raises(psycopg.Error) as chk:
        conn.execute("insert into t values (2, -1)")
    err = translate(chk.value)
    assert (err.status, err.code) == (422, "n_positive")


def test_problem_document_shape():
    doc = Problem(status=422, title="Unprocessable Content", detail="d", code="c").as_dict()
    assert set(doc) == {"type", "title", "status", "detail", "code", "errors"}
    assert CrmError().status == 500


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
