import pytest

from crm import queries


def test_every_named_query_parses_and_names_are_unique():
    loaded = queries.load()
    assert "begin_request" in loaded
    assert all(sql.strip() for sql in loaded.values())


def test_duplicate_names_in_one_file_are_refused():
    with pytest.raises(ValueError, match="twice"):
        queries.parse("-- a --\nselect 1\n-- a --\nselect 2\n")


def test_unknown_query_names_the_problem():
    with pytest.raises(KeyError, match="no query named"):
        queries.get("no_such_query")
