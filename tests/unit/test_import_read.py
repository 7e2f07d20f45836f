"""crm.imports.read: line numbers as an editor shows them, formats, --map, bytes that are not UTF-8."""

from __future__ import annotations

import pytest

from crm.imports.read import FileError, parse_map, read_rows


def rows(tmp_path, name: str, data: bytes, kind: str = "leads", mapping=None):
    path = tmp_path / name
    path.write_bytes(data)
    ignored: set[str] = set()
    return [(r.line, r.values, r.problems) for r in read_rows(path, kind, mapping or {}, ignored)], ignored


def test_csv_lines_count_quoted_newlines_and_a_bom(tmp_path):
    got, _ = rows(tmp_path, "a.csv", '\ufefflegacy_id,notes\n1,"two\nlines"\n2,x\n'.encode())
    assert [(line, v) for line, v, _ in got] == [(2, {"legacy_id": "1", "notes": "two\nlines"}),
                                                 (4, {"legacy_id": "2", "notes": "x"})]


def test_csv_separator_from_the_header_and_unknown_columns(tmp_path):
    got, ignored = rows(tmp_path, "a.csv", b"legacy_id;email;Farbe\n1;a@example.com;rot\n")
    assert got == [(2, {"legacy_id": "1", "email": "a@example.com"}, [])]
    assert ignored == {"Farbe"}


def test_csv_too_many_fields_and_bad_bytes_are_bad_rows(tmp_path):
    got, _ = rows(tmp_path, "a.csv", b"legacy_id,full_name\n1,a,b\n2,J\xf6rg\n3,ok\n")
    assert [(line, problems) for line, _, problems in got] == [
        (2, [(None, "3 fields, the header has 2")]),
        (3, [("full_name", "not valid UTF-8 (byte 0xF6 at character 2)")]),
        (4, [])]


def test_json_array_elements_carry_their_first_line(tmp_path):
    got, _ = rows(tmp_path, "a.json", b'[\n  {"legacy_id": 1},\n\n  {"legacy_id": 2,\n   "email": "x"},\n  7\n]')
    assert [(line, problems) for line, _, problems in got] == [
        (2, []), (4, []), (6, [(None, "each element of the array must be an object")])]


def test_broken_json_array_is_a_file_error_naming_the_line(tmp_path):
    with pytest.raises(FileError, match="line 3: not JSON"):
        rows(tmp_path, "a.json", b'[{"legacy_id": 1},\n{"legacy_id": 2},\n{"legacy_id": }]')


def test_json_lines_and_detection_without_an_extension(tmp_path):
    got, _ = rows(tmp_path, "export", b'{"legacy_id": 1}\nnot json\n\n[1]\n')
    assert [(line, problems[:1]) for line, _, problems in got] == [
        (1, []), (2, [(None, "not JSON: Expecting value")]), (4, [(None, "a JSON line must be an object")])]


def test_header_without_our_columns_and_empty_file(tmp_path):
    with pytest.raises(FileError, match="none of the columns"):
        rows(tmp_path, "a.csv", b"Name,Telefon\nA,1\n")
    with pytest.raises(FileError, match="empty"):
        rows(tmp_path, "b.csv", b"")
    got, _ = rows(tmp_path, "c.csv", b"Name,Telefon\nA,0151 2345 6789\n", mapping={"Name": "full_name",
                                                                                 "Telefon": "phone"})
    assert got == [(2, {"full_name": "A", "phone": "0151 2345 6789"}, [])]


def test_parse_map():
    assert parse_map(["Telefon=phone", " Name = full_name "], "customers") == {"Telefon": "phone",
                                                                               "Name": "full_name"}
    for bad in (["Telefon"], ["=phone"], ["Telefon="]):
        with pytest.raises(ValueError, match="old=new"):
            parse_map(bad, "customers")
    with pytest.raises(ValueError, match="no column 'legacy_id'"):
        parse_map(["id=legacy_id"], "customers")
