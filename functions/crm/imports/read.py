"""Legacy files as rows with their line numbers: CSV with a header, a JSON array, or JSON lines.

A file is read as bytes and decoded as UTF-8 with `surrogateescape`, so bytes that are not UTF-8
survive as markers: the row holding them is a bad row naming its line and column, never a crash.
Column names are ours (`--map old=new` renames others); unknown columns are reported and ignored.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: What each kind reads; a lead or order row carries its customer in full_name, phone and email.
CUSTOMER_COLUMNS = ("full_name", "phone", "email", "preferred_channel", "city")
COLUMNS = {
    "customers": CUSTOMER_COLUMNS,
    "leads": ("legacy_id", *CUSTOMER_COLUMNS, "status", "external_item_ref", "notes", "created_at"),
    "orders": ("legacy_id", *CUSTOMER_COLUMNS, "lead_legacy_id", "status", "external_ref", "item_id", "title",
               "brand", "model", "year", "size", "url", "images", "price", "currency", "price_amount",
               "booking_amount", "delivery_method", "item_snapshot", "created_at"),
}
_SURROGATE = re.compile("[\udc80-\udcff]")


class FileError(Exception):
    """The file as a whole cannot be read (one line for stderr)."""


@dataclass
class Row:
    line: int
    values: dict[str, Any]
    problems: list[tuple[str | None, str]] = field(default_factory=list)


def detect_format(path: Path, text: str) -> str:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    head = text.lstrip("\ufeff \t\r\n")[:1]
    if suffix == ".json":
        return "json" if head == "[" else "jsonl"
    return {"[": "json", "{": "jsonl"}.get(head, "csv")


def parse_map(pairs: list[str], kind: str) -> dict[str, str]:
    """`old=new` pairs; ValueError (a usage error) for a malformed pair or a column we do not have."""
    mapping: dict[str, str] = {}
    for pair in pairs:
        old, sep, new = pair.partition("=")
        old, new = old.strip(), new.strip()
        if not sep or not old or not new:
            raise ValueError(f"--map takes old=new, got {pair!r}")
        if new not in COLUMNS[kind]:
            raise ValueError(f"--map {pair}: {kind} have no column {new!r} (they have {', '.join(COLUMNS[kind])})")
        mapping[old] = new
    return mapping


def _bad_bytes(value: str) -> str | None:
    match = _SURROGATE.search(value)
    if match is None:
        return None
    return f"not valid UTF-8 (byte 0x{ord(match.group()) - 0xDC00:02X} at character {match.start() + 1})"


def _row(line: int, raw: dict[str, Any], mapping: dict[str, str], known: tuple[str, ...],
         ignored: set[str]) -> Row:
    row = Row(line, {})
    for key, value in raw.items():
        name = mapping.get(key, key)
        if isinstance(name, str):
            name = name.strip()
        if name not in known:
            if value not in (None, ""):
                ignored.add(str(key))
            continue
        bad = _bad_bytes(value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))
        if bad:  # also inside a JSON value's lists and objects: the database could not even store it
            row.problems.append((name, bad))
            continue
        if isinstance(value, str):
            value = value.strip()
            if value == "":
                value = None
        row.values[name] = value
    if not row.problems and all(v in (None, "", [], {}) for v in row.values.values()):
        row.problems.append((None, "blank row"))
    return row


def read_rows(path: Path, kind: str, mapping: dict[str, str], ignored: set[str]) -> Iterator[Row]:
    """Every data row of the file, in order. FileError when the file as a whole is unreadable."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise FileError(f"cannot read {path}: {exc.strerror or exc}") from None
    text = data.decode("utf-8", "surrogateescape").removeprefix("\ufeff")
    fmt = detect_format(path, text)
    known = COLUMNS[kind]
    if fmt == "csv":
        yield from _csv_rows(text, mapping, known, ignored)
    elif fmt == "jsonl":
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except ValueError as exc:
                yield Row(number, {}, [(None, f"not JSON: {exc.msg}")])
                continue
            if not isinstance(value, dict):
                yield Row(number, {}, [(None, "a JSON line must be an object")])
                continue
            yield _row(number, value, mapping, known, ignored)
    else:
        yield from _json_array_rows(text, mapping, known, ignored)


def _csv_rows(text: str, mapping: dict[str, str], known: tuple[str, ...], ignored: set[str]) -> Iterator[Row]:
    first = text.split("\n", 1)[0]
    delimiter = max(",;\t", key=first.count)  # the header's separator (a comma unless another is more frequent)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        raise FileError("the file is empty: a CSV file starts with a header row") from None
    except csv.Error as exc:
        raise FileError(f"line 1: not CSV: {exc}") from None
    names = [h.strip() for h in header]
    for position, name in enumerate(names, start=1):
        bad = _bad_bytes(name)
        if bad:
            raise FileError(f"line 1, column {position}: the header is {bad}")
    if not any(mapping.get(n, n) in known for n in names):
        raise FileError(f"line 1: the header names none of the columns {', '.join(known)} (use --map old=new)")
    start = reader.line_num + 1
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield Row(start, {}, [(None, f"not CSV: {exc}")])
            start = reader.line_num + 1
            continue
        line, start = start, reader.line_num + 1
        if not cells:
            yield Row(line, {}, [(None, "blank row")])
            continue
        if len(cells) > len(names):
            yield Row(line, {}, [(None, f"{len(cells)} fields, the header has {len(names)}")])
            continue
        yield _row(line, dict(zip(names, cells, strict=False)), mapping, known, ignored)


def _json_array_rows(text: str, mapping: dict[str, str], known: tuple[str, ...], ignored: set[str]) -> Iterator[Row]:
    """Elements of a top-level array one by one, each with the line it starts on."""
    decoder = json.JSONDecoder()
    ws = re.compile(r"[ \t\r\n]*")
    pos = ws.match(text, 0).end()
    if text[pos:pos + 1] != "[":
        raise FileError("line 1: a JSON file holds an array of objects")
    pos = ws.match(text, pos + 1).end()
    line, counted = 1, 0
    if text[pos:pos + 1] == "]":
        return
    while True:
        line += text.count("\n", counted, pos)
        counted = pos
        try:
            value, end = decoder.raw_decode(text, pos)
        except ValueError as exc:
            raise FileError(f"line {line}: not JSON: {exc.msg}") from None
        if isinstance(value, dict):
            yield _row(line, value, mapping, known, ignored)
        else:
            yield Row(line, {}, [(None, "each element of the array must be an object")])
        pos = ws.match(text, end).end()
        if text[pos:pos + 1] == ",":
            pos = ws.match(text, pos + 1).end()
            continue
        if text[pos:pos + 1] == "]":
            return
        line += text.count("\n", counted, pos)
        raise FileError(f"line {line}: expected , or ] in the JSON array")
