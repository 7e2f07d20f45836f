import pytest

from crm.tools.sqlsplit import split


def test_splits_on_top_level_semicolons_only():
    text = """
-- a comment; with a semicolon
create table a (x text default 'it''s; fine');
/* block; /* nested; */ still comment */
create function f() returns text language sql as $$ select 'a;b' $$;
create function g() returns text language plpgsql as $body$
begin
  return $x$;$x$;
end
$body$;
select E'back\\'slash;', "weird;ident" from a;
select 1
"""
    stmts = split(text)
    assert [s.sql.split()[0:2] for s in stmts] == [
        ["create", "table"], ["create", "function"], ["create", "function"], ["select", "E'back\\'slash;',"],
        ["select", "1"],
    ]
    assert stmts[0].line == 3
    assert stmts[1].line == 5
    assert stmts[-1].line == 12


def test_empty_statements_and_comments_are_dropped():
    assert split(";;  -- only a comment\n/* and this */ ;") == []


def test_positional_parameters_are_not_dollar_quotes():
    stmts = split("prepare p as select $1 + $2; select 2;")
    assert len(stmts) == 2


@pytest.mark.parametrize("text", ["select 'open", "select $$ open", "/* open", 'select "open'])
def test_unterminated_quotes_are_errors(text):
    with pytest.raises(ValueError, match="unterminated"):
        split(text)


def test_summary_is_the_first_code_line():
    (stmt,) = split("-- why\ncreate table t (\n  x int\n);")
    assert stmt.summary == "create table t ("
