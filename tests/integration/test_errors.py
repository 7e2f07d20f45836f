"""The one table mapping database errors to HTTP, exercised with real errors from Postgres."""

import psycopg
import pytest

from crm.db import translate
from crm.errors import CrmError, Problem


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
