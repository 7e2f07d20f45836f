"""The warehouse client reads a reconciliation page's `next_cursor` from the end of the body without
parsing the items (`tail_cursor`); whatever it answers agrees with parsing the whole document."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crm.wms.client import tail_cursor

TRICKY = st.lists(st.sampled_from(['"', "\\", ",", ":", "}", "{", " ", "n", "u", "l", "x", "é", "next_cursor", "null"]),
                  max_size=6).map("".join)
VALUES = st.recursive(st.none() | st.booleans() | st.integers() | TRICKY,
                      lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TRICKY, inner, max_size=3),
                      max_leaves=8)


@given(items=st.lists(st.dictionaries(TRICKY, VALUES, max_size=4), max_size=4),
       cursor=st.none() | TRICKY, last=st.booleans(), spaces=st.booleans())
def test_what_the_tail_reads_is_what_the_document_says(items, cursor, last, spaces):
    members = [("items", items), ("next_cursor", cursor)]
    doc = dict(members if last else members[::-1])
    body = json.dumps(doc, ensure_ascii=False, **({"indent": 1} if spaces else {"separators": (",", ":")}))
    found, value = tail_cursor(body.encode() + (b"\n" if spaces else b""))
    assert found == last  # found exactly when next_cursor is the last member
    if found:
        assert value == cursor


@pytest.mark.parametrize("body", [
    b'{"items":[{"note":"\\",\\"next_cursor\\":\\"evil"}],"x":"\\",\\"next_cursor\\":\\"evil"}',
    b'{"items":[],"next_cursor":5}',
    b'{"items":[],"xnext_cursor":"a"}',
    b'[1, "next_cursor", "a"]',
    b'',
    b'{"items":[],"next_cursor":"unterminated}',
])
def test_anything_else_is_left_to_the_parser(body):
    assert tail_cursor(body) == (False, None)
