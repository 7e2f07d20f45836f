"""`crm import customers|leads|orders FILE --org SLUG [--apply]` (SPEC 13).

Python reads the file (`crm.imports.read`), normalises contacts as every other writer does (phone to
E.164 in the org's country, email lower-cased: `crm.contacts`), builds the item snapshot of an order
that has none, and flags what only the file can know (bytes that are not UTF-8, a legacy id twice).
Everything else is the database's to decide: `private.import_rows` writes a batch set-based (the
rows it refuses, and those that depend on another row of the batch, one by one in a savepoint).
The dry run runs exactly that in one transaction and rolls it back, so its report is the real
outcome; `--apply` commits batch by batch (a Ctrl-C loses at most the batch in flight, whole, and
a rerun skips what is already there).
"""

from __future__ import annotations

import json
import string
import sys
import urllib.parse
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import psycopg
from tqdm import tqdm

from crm import config, contacts
from crm.db import _UNPROCESSABLE, Session
from crm.errors import ConfigError
from crm.imports.read import FileError, Row, read_rows
from crm.net import PostPolicy, SafePoster

BATCH = 500
SNAPSHOT_KEYS = ("item_id", "url", "external_ref", "title", "brand", "model", "year", "size", "price", "currency",
                 "main_photo_url", "images")
#: Database column names as the file names them.
_FILE_COLUMN = {"phone_e164": "phone", "contact": "phone", "external_item_ref": "external_item_ref"}
_DB_COLUMNS = ("full_name", "phone_e164", "email", "preferred_channel", "city", "contact", "legacy_id", "status",
               "notes", "external_item_ref", "item_snapshot", "price_amount", "booking_amount", "currency",
               "delivery_method", "item_id", "created_at")


class ImportError_(Exception):
    """The import cannot run (one line for stderr, exit 1)."""


@dataclass
class Report:
    kind: str
    file: str
    applied: bool
    rows: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    bad_rows: list[dict[str, Any]] = field(default_factory=list)
    ignored_columns: set[str] = field(default_factory=set)
    interrupted: bool = False

    def bad(self, line: int, column: str | None, reason: str) -> None:
        self.counts["bad"] += 1
        self.bad_rows.append({"line": line, "column": column, "reason": reason})

    def as_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "file": self.file, "applied": self.applied, "rows": self.rows,
                "created": self.counts["created"], "updated": self.counts["updated"],
                "skipped": self.counts["skipped"], "bad": self.counts["bad"],
                "customers_created": self.counts["customers_created"],
                "ignored_columns": sorted(self.ignored_columns),
                "bad_rows": sorted(self.bad_rows, key=lambda b: b["line"]),
                **({"interrupted": True} if self.interrupted else {})}


class Catalog:
    """Item snapshots from `CRM_CATALOG_URL` (a template with {external_ref} and/or {item_id}), read
    through the SSRF-safe client. 404/410: the catalog forgot the item (archived_item)."""

    def __init__(self, template: str, client: SafePoster):
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
        if not fields or not fields <= {"external_ref", "item_id"}:
            raise ConfigError("CRM_CATALOG_URL must contain {external_ref} or {item_id} and nothing else in braces")
        self.template, self.fields, self.client = template, fields, client
        self._seen: dict[str, tuple[dict[str, Any] | None, str | None]] = {}

    @classmethod
    def from_env(cls) -> Catalog | None:
        template = config.env("CRM_CATALOG_URL")
        if not template:
            return None
        return cls(template, SafePoster(PostPolicy(
            allow_loopback=config.env_flag("CRM_WEBHOOK_ALLOW_LOOPBACK"), timeout=10.0,
            max_response_bytes=256 * 1024, user_agent="crm-import/1.0")))

    def close(self) -> None:
        self.client.close()

    def item(self, external_ref: str, item_id: str | None) -> tuple[dict[str, Any] | None, str | None]:
        """(the item as the catalog has it, None) / (None, "gone") / (None, why it could not be read)."""
        values = {"external_ref": external_ref, "item_id": item_id}
        if any(not values[f] for f in self.fields):
            return None, "the catalog URL needs " + " and ".join(sorted(self.fields))
        url = self.template.format(**{k: urllib.parse.quote(str(v or ""), safe="") for k, v in values.items()})
        if url in self._seen:
            return self._seen[url]
        result = self.client.get(url, {"Accept": "application/json"})
        if result.status_code in (404, 410):
            answer: tuple[dict[str, Any] | None, str | None] = (None, "gone")
        elif not result.ok:
            answer = (None, f"catalog: {result.error or f'HTTP {result.status_code}'}")
        else:
            try:
                item = json.loads(result.body)
            except ValueError:
                item = None
            answer = (item, None) if isinstance(item, dict) else (None, "catalog: the answer is not a JSON object")
        self._seen[url] = answer
        return answer


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _money(value: Any) -> float | int | None:
    """A JSON number with the digits the file gave (the database refuses more than cents)."""
    if value is None:
        return None
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        raise ValueError("must be a number (a dot before the decimals)") from None
    if not number.is_finite():
        raise ValueError("must be a number")
    return int(number) if number == number.to_integral_value() and "." not in str(value) else float(number)


class Importer:
    def __init__(self, conn: psycopg.Connection, kind: str, org: dict[str, Any], catalog: Catalog | None = None):
        self.conn, self.kind, self.org, self.catalog = conn, kind, org, catalog
        self.session = Session(conn)
        self.legacy_seen: dict[str, int] = {}
        self.phones: dict[str, str | None] = {}

    # -- preparing a row -------------------------------------------------------------------------
    def prepare(self, row: Row, report: Report) -> dict[str, Any] | None:
        """The row as private.import_rows takes it, or None when it is already a bad row."""
        if row.problems:
            column, reason = row.problems[0]
            report.bad(row.line, column, reason)
            return None
        v = row.values
        out: dict[str, Any] = {"line": row.line}
        problems: list[tuple[str, str]] = []
        out["full_name"] = _text(v.get("full_name"))
        out["city"] = _text(v.get("city"))
        out["preferred_channel"] = (_text(v.get("preferred_channel")) or "").lower() or None
        phone = _text(v.get("phone"))
        if phone:
            if phone not in self.phones:  # a person's number repeats in a legacy file
                self.phones[phone] = contacts.phone_e164(phone, self.org["default_country"])
            out["phone_e164"] = self.phones[phone]
            if out["phone_e164"] is None:
                problems.append(("phone", f"not a valid phone number (read in {self.org['default_country']})"))
        email = _text(v.get("email"))
        if email:
            out["email"] = contacts.email(email)
            if out["email"] is None:
                problems.append(("email", "not an email address"))
        if self.kind != "customers":
            legacy = _text(v.get("legacy_id"))
            out["legacy_id"] = legacy
            if legacy is not None:
                key = legacy.strip().lstrip("0") or "0"
                if key in self.legacy_seen:
                    problems.append(("legacy_id", f"{legacy} appears again (first on line {self.legacy_seen[key]})"))
                else:
                    self.legacy_seen[key] = row.line
            for name in ("status", "notes", "external_item_ref", "created_at", "lead_legacy_id"):
                if name in v:
                    out[name] = _text(v[name])
            if out.get("status"):
                out["status"] = out["status"].lower()
        if self.kind == "orders" and not problems:
            problems += self._order(v, out)
        if problems:
            column, reason = problems[0]
            report.bad(row.line, column, reason)
            return None
        return out

    def _order(self, v: dict[str, Any], out: dict[str, Any]) -> list[tuple[str, str]]:
        for name in ("booking_amount", "delivery_method"):
            out[name] = _text(v.get(name))
        snapshot = v.get("item_snapshot")
        if isinstance(snapshot, str):
            try:
                snapshot = json.loads(snapshot)
            except ValueError:
                return [("item_snapshot", "not JSON")]
        if snapshot is not None and not isinstance(snapshot, dict):
            return [("item_snapshot", "must be a JSON object")]
        price = v.get("price") if v.get("price") is not None else v.get("price_amount")
        try:
            price_number = _money(price)
        except ValueError as exc:
            return [("price", str(exc))]
        currency = (_text(v.get("currency")) or (snapshot or {}).get("currency") or "").upper() or None
        external_ref = _text(v.get("external_ref")) or (snapshot or {}).get("external_ref")
        if not external_ref:
            return [("external_ref", "is required (the item's reference in the catalog)")]
        out["archived_item"] = False
        if snapshot is None:
            snapshot = {}
            if self.catalog is not None:
                item, why = self.catalog.item(external_ref, _text(v.get("item_id")))
                if why == "gone":
                    out["archived_item"] = True
                elif why is not None:
                    return [("external_ref", why)]
                else:
                    snapshot = {k: item[k] for k in SNAPSHOT_KEYS if item.get(k) is not None}
            for key in ("item_id", "title", "brand", "model", "size", "url"):
                if v.get(key) is not None and key not in snapshot:
                    snapshot[key] = _text(v[key])
            if v.get("year") is not None and "year" not in snapshot:
                try:
                    snapshot["year"] = int(str(v["year"]))
                except ValueError:
                    return [("year", "must be a whole number")]
            if v.get("images") is not None and "images" not in snapshot:
                images = v["images"]
                snapshot["images"] = images if isinstance(images, list) else str(images).replace("|", " ").split()
            if price_number is not None:
                snapshot.setdefault("price", price_number)
            if currency:
                snapshot.setdefault("currency", currency)
            for key in ("title", "price", "currency"):
                if snapshot.get(key) is None:
                    return [(key, "is required for an order without item_snapshot"
                             + (" (the catalog does not have it)" if self.catalog else ""))]
        snapshot["external_ref"] = external_ref
        out["item_snapshot"] = snapshot
        out["price_amount"] = _text(v.get("price_amount") if v.get("price_amount") is not None else price)
        out["currency"] = currency or snapshot.get("currency")
        return []

    # -- writing ---------------------------------------------------------------------------------
    def write(self, rows: list[dict[str, Any]], report: Report) -> None:
        if not rows:
            return
        results = self.session.fetch_all("import_rows", {
            "org_id": self.org["id"], "kind": self.kind,
            "rows": json.dumps(rows, ensure_ascii=False, separators=(",", ":"))})
        for r in results:
            if r["outcome"] == "bad":
                report.bad(r["line"], self._column(r), self._reason(r))
            else:
                report.counts[r["outcome"]] += 1
            if r["customer_created"]:
                report.counts["customers_created"] += 1

    @staticmethod
    def _column(r: dict[str, Any]) -> str | None:
        state = r["err_state"] or ""
        if state.startswith("PT") and r["err_hint"]:
            return _FILE_COLUMN.get(r["err_hint"], r["err_hint"])
        if r["err_column"]:
            return _FILE_COLUMN.get(r["err_column"], r["err_column"])
        constraint = r["err_constraint"] or ""
        rest = constraint.split("_", 1)[1] if "_" in constraint else constraint
        for name in sorted(_DB_COLUMNS, key=len, reverse=True):
            if rest.startswith(name):
                return _FILE_COLUMN.get(name, name)
        return None

    @staticmethod
    def _reason(r: dict[str, Any]) -> str:
        state = r["err_state"] or ""
        if state.startswith("PT"):
            return r["err_message"]
        if state == "23505":
            return f"already taken ({r['err_constraint']})"
        if state in _UNPROCESSABLE:
            return f"{_UNPROCESSABLE[state]} ({r['err_constraint'] or r['err_message']})"
        return r["err_message"] or state


def run_import(conn: psycopg.Connection, kind: str, path: Path, org_slug: str, *, apply: bool,
               mapping: dict[str, str], progress: bool) -> Report:
    report = Report(kind, str(path), apply)
    session = Session(conn)
    org = session.fetch_one("import_org", {"slug": org_slug})
    if org is None:
        raise ImportError_(f"no organization with slug {org_slug!r}")
    rows = list(read_rows(path, kind, mapping, report.ignored_columns))
    report.rows = len(rows)
    catalog = Catalog.from_env() if kind == "orders" else None
    importer = Importer(conn, kind, org, catalog)
    bar = tqdm(total=len(rows), unit="rows", desc=f"import {kind}", file=sys.stderr,
               disable=not progress, dynamic_ncols=True)
    chunks = [rows[start:start + BATCH] for start in range(0, len(rows), BATCH)]

    def prepare(chunk: list[Row]) -> tuple[Report, list[dict[str, Any]]]:
        batch_report = Report(kind, str(path), apply)
        return batch_report, [p for p in (importer.prepare(r, batch_report) for r in chunk) if p is not None]

    # The next batch is prepared (phone numbers parsed, catalog requests made) in a thread while the
    # database writes this one (psycopg releases the GIL while it waits); a batch's transaction opens
    # only once its rows are ready, so no transaction waits for a catalog request.
    ahead = ThreadPoolExecutor(max_workers=1, thread_name_prefix="crm-import-prepare")
    try:
        pending = ahead.submit(prepare, chunks[0]) if chunks else None
        with conn.transaction(force_rollback=True) if not apply else nullcontext():
            if not apply:
                session.execute("import_begin")
            for n, chunk in enumerate(chunks):
                assert pending is not None
                batch_report, prepared = pending.result()
                pending = ahead.submit(prepare, chunks[n + 1]) if n + 1 < len(chunks) else None
                with conn.transaction() if apply else nullcontext():
                    if apply:
                        session.execute("import_begin")
                    importer.write(prepared, batch_report)
                report.counts.update(batch_report.counts)  # with --apply, only what committed
                report.bad_rows.extend(batch_report.bad_rows)
                bar.update(len(chunk))
    except KeyboardInterrupt:
        report.interrupted = True
        raise
    finally:
        ahead.shutdown(wait=False, cancel_futures=True)
        bar.close()
        if catalog is not None:
            catalog.close()
    return report


__all__ = ["FileError", "ImportError_", "Report", "run_import"]
