"""`crm import` (SPEC 13) against a real database: a messy legacy file, dry run = the real rules,
--apply once per person, a second --apply that changes nothing, CSV/JSON/JSONL, --map, orders with
a minimal snapshot and from a catalog on loopback (404 -> archived_item)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from crm.tools.cli import main
from tests.helpers import CRM_CLI, crm_cli, make_org
from tests.integration.json_server import JsonServer

LONG_NAME = "A" * 10_000
MESSY = [
    # line 1 is the header
    ("legacy_id,full_name,phone,email,status,notes", None),
    ("1,Anna Schmidt,0151 2345 6789,Anna@Example.com,new,first contact", None),
    ("2,Anna Schmidt,+49 151 23456789,,contacted,", None),
    ("3,Anna Schmidt,0049-151-2345-6789,ANNA@EXAMPLE.COM,,", None),
    ("4,anna schmidt,(0151) 234 56 789,,,", None),
    ("5,Anna Schmidt,+4915123456789,anna@example.com,,", None),
    ("", (None, "blank row")),
    (",,,,,", (None, "blank row")),
    ("6,Bob,not a phone,bob@example.com,,", ("phone", "not a valid phone number")),
    ("7,Carl,,carl@@example,,", ("email", "not an email address")),
    ("8,Dora,,dora@example.com,weird,", ("status", "must be one of new, contacted")),
    ("1,Anna Again,0151 2345 6789,,,", ("legacy_id", "1 appears again (first on line 2)")),
    (f"9,{LONG_NAME},,long@example.com,,", ("full_name", "customers_full_name")),
    ("10,Eve,,EVE@example.com,new,", None),
    ("11,Nobody,,,,", ("phone", "give a phone number or an email address")),
    ("abc,Frank,,frank@example.com,,", ("legacy_id", "must be a whole number")),
]
RENEE = b"12,Ren\xe9e,,renee@example.com,,\n"  # Latin-1, not UTF-8: line 17


def messy_csv(tmp_path):
    path = tmp_path / "legacy.csv"
    path.write_bytes(("\n".join(line for line, _ in MESSY) + "\n").encode() + RENEE)
    return path


def expected_bad() -> list[tuple[int, str | None, str]]:
    bad = [(n, want[0], want[1]) for n, (_, want) in enumerate(MESSY, start=1) if want]
    return [*bad, (17, "full_name", "not valid UTF-8 (byte 0xE9")]


def crm_import(monkeypatch, capsys, db_url, *args: str) -> dict:
    monkeypatch.setenv("DATABASE_URL", db_url)
    code = main(["import", *args])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def snapshot_of_db(conn) -> dict:
    """Row counts and the newest row version of everything an import writes."""
    q = {
        "customers": "select count(*) n, max(updated_at)::text t, max(xmin::text::bigint) x from customers",
        "leads": "select count(*) n, max(updated_at)::text t, max(xmin::text::bigint) x from leads",
        "orders": "select count(*) n, max(updated_at)::text t, max(xmin::text::bigint) x from orders",
        "lead_events": "select count(*) n from lead_status_events",
        "order_events": "select count(*) n from order_status_events",
        "outbox": "select count(*) n from private.outbox",
        "activities": "select count(*) n from activities",
    }
    return {k: conn.execute(v).fetchone() for k, v in q.items()}


@pytest.fixture
def org(conn):
    org_id = make_org(conn, country="DE")
    return conn.execute("select id, slug from organizations where id = %s", (org_id,)).fetchone()


def assert_bad_rows(report, expected):
    got = [(b["line"], b["column"], b["reason"]) for b in report["bad_rows"]]
    assert [(line, col) for line, col, _ in got] == [(line, col) for line, col, _ in expected], got
    for (_, _, reason), (_, _, needle) in zip(got, expected, strict=True):
        assert needle in reason, (reason, needle)


def test_messy_file_dry_run_lists_every_bad_row_and_writes_nothing(conn, org, tmp_path, monkeypatch, capsys, db_url):
    before = snapshot_of_db(conn)
    report = crm_import(monkeypatch, capsys, db_url, "leads", str(messy_csv(tmp_path)), "--org", org["slug"])
    assert report["applied"] is False
    assert (report["rows"], report["created"], report["updated"], report["skipped"], report["bad"]) == (16, 6, 0, 0, 10)
    assert report["customers_created"] == 2  # Anna (five ways of writing her number, two of her email) and Eve
    assert_bad_rows(report, expected_bad())
    assert snapshot_of_db(conn) == before


def test_apply_creates_one_customer_per_person_and_a_second_apply_changes_nothing(
        conn, org, tmp_path, monkeypatch, capsys, db_url):
    path = messy_csv(tmp_path)
    report_file = tmp_path / "report.json"
    first = crm_import(monkeypatch, capsys, db_url, "leads", str(path), "--org", org["slug"], "--apply",
                       "--report", str(report_file))
    assert (first["created"], first["bad"], first["customers_created"]) == (6, 10, 2)
    assert "bad_rows" not in first and first["report"] == str(report_file)
    assert_bad_rows(json.loads(report_file.read_text()), expected_bad())

    customers = conn.execute("select full_name, phone_e164, email from customers order by full_name").fetchall()
    assert customers == [
        {"full_name": "Anna Schmidt", "phone_e164": "+4915123456789", "email": "anna@example.com"},
        {"full_name": "Eve", "phone_e164": None, "email": "eve@example.com"}]
    leads = conn.execute("select legacy_id, source::text, status::text, notes from leads order by legacy_id").fetchall()
    assert [(r["legacy_id"], r["source"], r["status"]) for r in leads] == [
        (1, "import", "new"), (2, "import", "contacted"), (3, "import", "new"), (4, "import", "new"),
        (5, "import", "new"), (10, "import", "new")]
    assert leads[0]["notes"] == "first contact"
    # Status events and outbox rows say where the change came from; every lead has its import activity.
    assert conn.execute("select array_agg(distinct note) a from lead_status_events").fetchone()["a"] == ["import"]
    notes = conn.execute("select payload #>> '{data,note}' n, event_type from private.outbox "
                         "where event_type = 'lead.created'").fetchall()
    assert len(notes) == 6 and {r["n"] for r in notes} == {"import"}
    assert conn.execute("select count(*) n from activities where kind = 'import'").fetchone()["n"] == 6

    before = snapshot_of_db(conn)
    second = crm_import(monkeypatch, capsys, db_url, "leads", str(path), "--org", org["slug"], "--apply")
    assert (second["created"], second["updated"], second["skipped"], second["bad"]) == (0, 0, 6, 10)
    assert second["customers_created"] == 0
    assert snapshot_of_db(conn) == before  # row counts, updated_at and row versions all unchanged


def test_a_changed_status_is_an_update_through_the_lead_machine(conn, org, tmp_path, monkeypatch, capsys, db_url):
    path = tmp_path / "a.csv"
    path.write_text("legacy_id,full_name,email,status\n40,Ida,ida@example.com,new\n41,Jo,jo@example.com,new\n")
    crm_import(monkeypatch, capsys, db_url, "leads", str(path), "--org", org["slug"], "--apply")
    path.write_text("legacy_id,full_name,email,status\n40,Ida,ida@example.com,contacted\n41,Jo,jo@example.com,converted\n")
    report = crm_import(monkeypatch, capsys, db_url, "leads", str(path), "--org", org["slug"], "--apply")
    assert (report["updated"], report["bad"]) == (1, 1)
    assert report["bad_rows"] == [{"line": 3, "column": None, "reason": "lead cannot move from new to converted"}]
    events = conn.execute("select l.legacy_id, e.from_status::text f, e.to_status::text t, e.note "
                          "from lead_status_events e join leads l on l.id = e.lead_id "
                          "where e.from_status is not null").fetchall()
    assert events == [{"legacy_id": 40, "f": "new", "t": "contacted", "note": "import"}]


@pytest.mark.parametrize("fmt", ["json", "jsonl"])
def test_json_array_and_json_lines_read_like_csv(conn, org, tmp_path, monkeypatch, capsys, db_url, fmt):
    rows = [{"legacy_id": 1, "full_name": "Anna", "phone": "0151 2345 6789"},
            {"legacy_id": 2, "full_name": "Anna", "phone": "+49 (151) 2345-6789", "email": "ANNA@example.com"},
            {"legacy_id": 3, "full_name": LONG_NAME, "email": "x@example.com"},
            {"legacy_id": 4, "phone": "12"}]
    path = tmp_path / f"leads.{fmt}"
    if fmt == "json":
        path.write_text("[\n" + ",\n".join(json.dumps(r) for r in rows) + "\n]\n")
    else:
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    report = crm_import(monkeypatch, capsys, db_url, "leads", str(path), "--org", org["slug"], "--apply")
    assert (report["created"], report["customers_created"], report["bad"]) == (2, 1, 2)
    first_line = 2 if fmt == "json" else 1
    assert [(b["line"], b["column"]) for b in report["bad_rows"]] == [(first_line + 2, "full_name"),
                                                                      (first_line + 3, "phone")]
    again = crm_import(monkeypatch, capsys, db_url, "leads", str(path), "--org", org["slug"], "--apply")
    assert (again["created"], again["skipped"]) == (0, 2)


def test_map_renames_columns_and_fills_what_a_customer_lacks(conn, org, tmp_path, monkeypatch, capsys, db_url):
    conn.execute("insert into customers (org_id, full_name, phone_e164) "
                 "values (%s, '+4915123456789', '+4915123456789')", (org["id"],))
    path = tmp_path / "kunden.csv"
    path.write_text("Name;Telefon;E-Mail;Stadt;Extra\nAnna Schmidt;0151 2345 6789;anna@example.com;Berlin;x\n"
                    "Otto;030 1234567;otto@example.com;;\n")
    args = ("customers", str(path), "--org", org["slug"], "--map", "Name=full_name", "Telefon=phone",
            "E-Mail=email", "Stadt=city")
    dry = crm_import(monkeypatch, capsys, db_url, *args)
    assert (dry["created"], dry["updated"], dry["ignored_columns"]) == (1, 1, ["Extra"])
    crm_import(monkeypatch, capsys, db_url, *args, "--apply")
    anna = conn.execute("select full_name, email, city from customers where phone_e164 = '+4915123456789'").fetchone()
    assert anna == {"full_name": "Anna Schmidt", "email": "anna@example.com", "city": "Berlin"}
    again = crm_import(monkeypatch, capsys, db_url, *args, "--apply")
    assert (again["created"], again["updated"], again["skipped"]) == (0, 0, 2)


class Catalog(JsonServer):
    """A catalog on loopback: GET /items/{ref} -> the item as JSON, 404 for what it forgot."""

    def __init__(self, items: dict[str, dict]):
        self.items = items
        super().__init__(self.answer)

    def answer(self, path: str, query: dict, auth: str | None) -> tuple[int, dict]:
        item = self.items.get(path.rsplit("/", 1)[-1])
        return (200, item) if item else (404, {"error": "not found"})


ORDERS_CSV = ("legacy_id,full_name,phone,email,external_ref,title,price,currency,status\n"
              "100,Anna,0151 2345 6789,,bike-1,Canyon Spectral,2450.50,EUR,pending_manager\n"
              "101,Anna,+49 151 23456789,anna@example.com,bike-2,Cube Stereo,1999,eur,closed\n"
              "102,Otto,,otto@example.com,bike-3,,100,EUR,\n"
              "103,Otto,,otto@example.com,bike-4,Ghost,10.005,EUR,\n"
              "104,Otto,,otto@example.com,bike-5,Ghost,12,EUR,shipping\n")


def test_orders_get_a_minimal_snapshot_and_are_idempotent(conn, org, tmp_path, monkeypatch, capsys, db_url):
    monkeypatch.delenv("CRM_CATALOG_URL", raising=False)
    path = tmp_path / "orders.csv"
    path.write_text(ORDERS_CSV)
    report = crm_import(monkeypatch, capsys, db_url, "orders", str(path), "--org", org["slug"], "--apply")
    assert (report["created"], report["customers_created"]) == (2, 1), report
    bad = {b["line"]: (b["column"], b["reason"]) for b in report["bad_rows"]}
    assert bad == {4: ("title", "is required for an order without item_snapshot"),
                   5: ("price_amount", "must not have more than cents"),
                   6: ("status", "must be one of pending_manager, under_inspection, deposit_paid, paid_out, "
                                 "shipped, delivered, closed, cancelled")}
    rows = conn.execute("select legacy_id, external_item_ref, item_snapshot s, status::text, price_amount, currency, "
                        "archived_item from orders order by legacy_id").fetchall()
    assert [(r["legacy_id"], r["external_item_ref"], r["status"], r["currency"]) for r in rows] == [
        (100, "bike-1", "pending_manager", "EUR"), (101, "bike-2", "closed", "EUR")]
    assert rows[0]["s"]["title"] == "Canyon Spectral" and rows[0]["s"]["price"] == 2450.5
    assert rows[0]["s"]["external_ref"] == "bike-1" and str(rows[0]["price_amount"]) == "2450.50"
    assert conn.execute("select count(distinct customer_id) n from orders").fetchone()["n"] == 1
    assert conn.execute("select count(*) n from activities where kind = 'import' and order_id is not null"
                        ).fetchone()["n"] == 2
    events = conn.execute("select o.legacy_id, e.to_status::text s, e.change_notes from order_status_events e "
                          "join orders o on o.id = e.order_id order by o.legacy_id").fetchall()
    assert events == [{"legacy_id": 100, "s": "pending_manager", "change_notes": "import"},
                      {"legacy_id": 101, "s": "closed", "change_notes": "import"}]
    before = snapshot_of_db(conn)
    again = crm_import(monkeypatch, capsys, db_url, "orders", str(path), "--org", org["slug"], "--apply")
    assert (again["created"], again["updated"], again["skipped"]) == (0, 0, 2)
    assert snapshot_of_db(conn) == before


def test_an_order_links_to_its_imported_lead(conn, org, tmp_path, monkeypatch, capsys, db_url):
    leads = tmp_path / "leads.csv"
    leads.write_text("legacy_id,email\n500,a@example.com\n")
    crm_import(monkeypatch, capsys, db_url, "leads", str(leads), "--org", org["slug"], "--apply")
    orders = tmp_path / "orders.csv"
    orders.write_text("legacy_id,email,lead_legacy_id,external_ref,title,price,currency\n"
                      "1,a@example.com,500,bike-1,Bike,10,EUR\n2,a@example.com,501,bike-2,Bike,10,EUR\n")
    report = crm_import(monkeypatch, capsys, db_url, "orders", str(orders), "--org", org["slug"], "--apply")
    assert report["created"] == 1 and [(b["line"], b["column"]) for b in report["bad_rows"]] == [(3, "lead_legacy_id")]
    row = conn.execute("select l.legacy_id, o.customer_id = l.customer_id same from orders o "
                       "join leads l on l.id = o.lead_id").fetchone()
    assert row == {"legacy_id": 500, "same": True}


def test_orders_from_the_catalog_and_archived_when_it_forgot_the_item(conn, org, tmp_path, monkeypatch, capsys, db_url):
    catalog = Catalog({"bike-1": {"title": "Canyon Spectral 29", "brand": "Canyon", "price": 2450, "currency": "EUR",
                                  "year": 2022, "images": ["https://img.example/1.jpg"], "external_ref": "other"}})
    monkeypatch.setenv("CRM_CATALOG_URL", catalog.url + "/items/{external_ref}")
    monkeypatch.setenv("CRM_WEBHOOK_ALLOW_LOOPBACK", "1")
    path = tmp_path / "orders.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"legacy_id": 1, "email": "a@example.com", "external_ref": "bike-1"},
        {"legacy_id": 2, "email": "a@example.com", "external_ref": "bike-gone", "title": "Old bike", "price": 300,
         "currency": "EUR"},
        {"legacy_id": 3, "email": "a@example.com", "external_ref": "bike-gone-too"},
    ]) + "\n")
    try:
        report = crm_import(monkeypatch, capsys, db_url, "orders", str(path), "--org", org["slug"], "--apply")
    finally:
        catalog.close()
    assert (report["created"], report["bad"]) == (2, 1)
    assert report["bad_rows"][0]["line"] == 3 and report["bad_rows"][0]["column"] == "title"
    rows = {r["legacy_id"]: r for r in conn.execute(
        "select legacy_id, item_snapshot s, archived_item, price_amount from orders").fetchall()}
    assert rows[1]["s"]["title"] == "Canyon Spectral 29" and rows[1]["s"]["brand"] == "Canyon"
    assert rows[1]["s"]["external_ref"] == "bike-1" and rows[1]["archived_item"] is False
    assert rows[2]["archived_item"] is True and rows[2]["s"]["title"] == "Old bike"
    assert sorted({path.rsplit("/", 1)[-1] for path, _, _ in catalog.requests}) == [
        "bike-1", "bike-gone", "bike-gone-too"]


def test_cli_errors_are_one_line_with_exit_codes(conn, org, tmp_path, db_url):
    good = tmp_path / "a.csv"
    good.write_text("legacy_id,email\n1,a@example.com\n")
    broken = tmp_path / "b.json"
    broken.write_text('[{"legacy_id": 1},\n {"legacy_id": 2,,}]')
    cases = [
        (("import", "leads", str(good), "--org", "nope"), 1, "no organization"),
        (("import", "leads", str(tmp_path / "missing.csv"), "--org", org["slug"]), 2, "no such file"),
        (("import", "leads", str(good), "--org", org["slug"], "--map", "x"), 2, "old=new"),
        (("import", "leads", str(good), "--org", org["slug"], "--map", "x=nothing"), 2, "no column"),
        (("import", "things", str(good), "--org", org["slug"]), 2, "invalid choice"),
        (("import", "leads", str(broken), "--org", org["slug"]), 1, "line 2: not JSON"),
    ]
    for args, code, needle in cases:
        result = crm_cli(*args, DATABASE_URL=db_url)
        assert result.returncode == code, (args, result.stderr)
        lines = [ln for ln in result.stderr.splitlines() if ln.strip() and not ln.startswith("usage:")]
        assert len(lines) == 1 and needle in lines[0], (args, result.stderr)
    ok = crm_cli("import", "leads", str(good), "--org", org["slug"], DATABASE_URL=db_url)
    assert ok.returncode == 0 and ok.stderr == ""  # no progress bar when stderr is not a terminal
    assert json.loads(ok.stdout)["created"] == 1


def test_ctrl_c_leaves_whole_batches_and_a_rerun_resumes(conn, org, tmp_path, db_url):
    import signal
    import time

    rows = 3000
    path = tmp_path / "many.csv"
    path.write_text("legacy_id,full_name,email\n"
                    + "".join(f"{n},Person {n},p{n}@example.com\n" for n in range(1, rows + 1)))
    proc = subprocess.Popen([*CRM_CLI, "import", "leads", str(path), "--org", org["slug"],
                             "--apply"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "DATABASE_URL": db_url})
    deadline = time.monotonic() + 60
    while conn.execute("select count(*) n from leads").fetchone()["n"] == 0:
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, (out, err)
    assert err.strip().count("\n") == 0 and "interrupted" in err and "run the same command again" in err
    done = conn.execute("select count(*) n from leads").fetchone()["n"]
    assert 0 < done < rows and done % 500 == 0  # whole batches only
    # Nothing half-written: every committed lead has its customer and its import activity.
    assert conn.execute("select count(*) n from customers").fetchone()["n"] == done
    assert conn.execute("select count(*) n from activities where kind = 'import'").fetchone()["n"] == done
    rerun = crm_cli("import", "leads", str(path), "--org", org["slug"], "--apply", DATABASE_URL=db_url)
    assert rerun.returncode == 0, rerun.stderr
    report = json.loads(rerun.stdout)
    assert (report["created"], report["skipped"]) == (rows - done, done)
    assert conn.execute("select count(*) n from leads").fetchone()["n"] == rows


def test_a_legacy_id_of_another_organization_is_a_bad_row(conn, org, tmp_path, monkeypatch, capsys, db_url):
    other = conn.execute("select slug from organizations where id = %s", (make_org(conn),)).fetchone()["slug"]
    path = tmp_path / "a.csv"
    path.write_text("legacy_id,email\n77,a@example.com\n")
    crm_import(monkeypatch, capsys, db_url, "leads", str(path), "--org", other, "--apply")
    report = crm_import(monkeypatch, capsys, db_url, "leads", str(path), "--org", org["slug"], "--apply")
    assert report["bad_rows"] == [{"line": 2, "column": "legacy_id",
                                   "reason": "this legacy_id belongs to a lead of another organization"}]
    # The row's customer was rolled back with it (its savepoint): nothing half-written in this org.
    assert conn.execute("select count(*) n from customers where org_id = %s", (org["id"],)).fetchone()["n"] == 0


def test_progress_bar_on_a_terminal(conn, org, tmp_path, db_url):
    import fcntl
    import pty
    import struct
    import termios

    path = tmp_path / "a.csv"
    path.write_text("legacy_id,email\n" + "".join(f"{n},p{n}@example.com\n" for n in range(1, 21)))
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 100-column terminal
    try:
        result = subprocess.run([*CRM_CLI, "import", "leads", str(path), "--org",
                                 org["slug"]], stdout=subprocess.PIPE, stderr=secondary, timeout=60,
                                env={**os.environ, "DATABASE_URL": db_url})
        os.close(secondary)
        secondary = -1
        shown = b""
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(primary)
        if secondary != -1:
            os.close(secondary)
    assert result.returncode == 0
    assert b"import leads" in shown and b"20/20" in shown, shown
    assert json.loads(result.stdout)["created"] == 20  # stdout stays the JSON report


def test_two_imports_of_one_file_at_once_write_each_row_once(conn, org, tmp_path, db_url):
    rows = 1200
    path = tmp_path / "same.csv"
    path.write_text("legacy_id,full_name,phone\n"
                    + "".join(f"{n},Person {n},+49151{n:08d}\n" for n in range(1, rows + 1)))
    args = [*CRM_CLI, "import", "leads", str(path), "--org", org["slug"], "--apply"]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "DATABASE_URL": db_url}) for _ in range(2)]
    reports = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        reports.append(json.loads(out))
    assert sum(r["created"] for r in reports) == rows and sum(r["skipped"] for r in reports) == rows
    assert all(r["bad"] == 0 for r in reports), [r["bad_rows"][:3] for r in reports]
    assert conn.execute("select count(*) n from leads").fetchone()["n"] == rows
    assert conn.execute("select count(*) n from customers").fetchone()["n"] == rows
    assert conn.execute("select count(*) n from activities").fetchone()["n"] == rows


# -- the set-based path: what a batch written in one statement per table must keep --------------

def people_csv(path, rows: int, odd: dict[int, dict[str, str]] | None = None):
    """`rows` leads of as many different people (each row its own phone and email), some overridden."""
    lines = ["legacy_id,full_name,phone,email,city,notes"]
    for n in range(1, rows + 1):
        row = {"legacy_id": str(n), "full_name": f"Person {n}", "phone": f"+49151{n:08d}",
               "email": f"p{n}@example.com", "city": "Berlin", "notes": f"note {n}"}
        row.update((odd or {}).get(n, {}))
        lines.append(",".join(row.values()))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_bad_rows_amid_good_ones_in_one_batch_block_nothing_and_leave_nothing(
        conn, org, tmp_path, monkeypatch, capsys, db_url):
    # Rows the database refuses only when it writes them (CHECKs of customers and leads), in one
    # batch of independent rows: the batch statement fails, its halves are written, the two rows
    # end as bad rows with the database's reasons, every other row is written whole.
    path = people_csv(tmp_path / "batch.csv", 60, {20: {"full_name": LONG_NAME}, 45: {"notes": "n" * 20_001}})
    before = snapshot_of_db(conn)
    dry = crm_import(monkeypatch, capsys, db_url, "leads", str(path), "--org", org["slug"])
    assert snapshot_of_db(conn) == before
    report = crm_import(monkeypatch, capsys, db_url, "leads", str(path), "--org", org["slug"], "--apply")
    for r in (dry, report):
        assert (r["created"], r["bad"], r["customers_created"]) == (58, 2, 58), r
        assert [(b["line"], b["column"]) for b in r["bad_rows"]] == [(21, "full_name"), (46, "notes")]
        assert "customers_full_name" in r["bad_rows"][0]["reason"] and "leads_notes" in r["bad_rows"][1]["reason"]
    counts = conn.execute(
        "select (select count(*) from customers) customers, (select count(*) from leads) leads,"
        " (select count(*) from lead_status_events where note = 'import' and from_status is null) events,"
        " (select count(*) from private.outbox where event_type = 'lead.created'"
        "    and payload #>> '{data,note}' = 'import') lead_created,"
        " (select count(*) from private.outbox where event_type = 'customer.created') customer_created,"
        " (select count(*) from activities where kind = 'import') activities").fetchone()
    assert counts == {"customers": 58, "leads": 58, "events": 58, "lead_created": 58, "customer_created": 58,
                      "activities": 58}
    # The refused rows left nothing: not even the customer the notes row's set statement had made.
    assert conn.execute("select count(*) n from customers where email in ('p20@example.com', 'p45@example.com')"
                        ).fetchone()["n"] == 0
    lead = conn.execute("select l.status::text, l.notes, c.full_name, c.phone_e164, c.city from leads l "
                        "join customers c on c.id = l.customer_id where l.legacy_id = 44").fetchone()
    assert lead == {"status": "new", "notes": "note 44", "full_name": "Person 44", "phone_e164": "+4915100000044",
                    "city": "Berlin"}
    again = crm_import(monkeypatch, capsys, db_url, "leads", str(path), "--org", org["slug"], "--apply")
    assert (again["created"], again["updated"], again["skipped"], again["bad"]) == (0, 0, 58, 2)


def test_a_booking_creating_the_same_customer_during_an_import_meets_it_on_one_row(conn, org, tmp_path, db_url):
    import hashlib
    import secrets
    import time
    import uuid

    import psycopg
    from psycopg.rows import dict_row

    from tests.helpers import acting_as
    from tests.integration.test_booking_sql import CALL

    path = people_csv(tmp_path / "batch.csv", 40, {17: {"phone": "0151 2345 6789", "email": ""}})
    with psycopg.connect(db_url, autocommit=True, row_factory=dict_row) as booker:
        with acting_as(booker, "service_role", commit=True):
            booking = booker.execute(CALL, {
                "org": org["slug"], "order_id": uuid.uuid4(),
                "customer": json.dumps({"full_name": "Anna Booking", "phone": "+4915123456789", "email": None}),
                "snapshot": json.dumps({"external_ref": "ref-1", "title": "Bike"}),
                "hash": hashlib.sha256(secrets.token_bytes(16)).digest(), "key": None,
                "request_hash": hashlib.sha256(b"r").digest(), "client": "192.0.2.1/32", "limit": 0,
                "window": 600}).fetchone()
            # The booking's customer is inserted, not committed: the import's insert of the same
            # phone number waits for it.
            proc = subprocess.Popen([*CRM_CLI, "import", "leads", str(path), "--org",
                                     org["slug"], "--apply"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    env={**os.environ, "DATABASE_URL": db_url})
            deadline = time.monotonic() + 60
            while not conn.execute("select count(*) n from pg_stat_activity where datname = current_database()"
                                   " and wait_event_type = 'Lock'").fetchone()["n"]:
                assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
                time.sleep(0.05)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    report = json.loads(out)
    assert (report["created"], report["bad"], report["customers_created"]) == (40, 0, 39), report
    anna = conn.execute("select id, full_name from customers where phone_e164 = '+4915123456789'").fetchall()
    assert len(anna) == 1 and anna[0]["full_name"] == "Anna Booking"
    lead = conn.execute("select customer_id from leads where legacy_id = 17").fetchone()
    order = conn.execute("select customer_id from orders where id = %s", (booking["order_id"],)).fetchone()
    assert lead["customer_id"] == order["customer_id"] == anna[0]["id"]
    assert conn.execute("select count(*) n from customers").fetchone()["n"] == 40


def test_one_legacy_id_twice_in_one_batch_is_written_as_row_after_row(conn, org):
    # crm import flags a legacy_id seen earlier in the file; a caller of private.import_rows gets the
    # row-by-row result: the first row creates the lead, the second finds it and moves its status.
    rows = [{"line": 2, "legacy_id": "7", "email": "a@example.com", "status": "new"},
            {"line": 3, "legacy_id": "8", "email": "c@example.com"},
            {"line": 4, "legacy_id": " 7", "email": "b@example.com", "status": "contacted"},
            {"line": 5, "legacy_id": "9", "email": "d@example.com"}]
    with conn.transaction():
        conn.execute("set local role service_role")
        result = conn.execute("select line, outcome, customer_created, err_message from "
                              "private.import_rows(%s, 'leads', %s::jsonb)", (org["id"], json.dumps(rows))).fetchall()
    assert [(r["line"], r["outcome"], r["customer_created"]) for r in result] == [
        (2, "created", True), (3, "created", True), (4, "updated", True), (5, "created", True)], result
    lead = conn.execute("select l.status::text, c.email from leads l join customers c on c.id = l.customer_id "
                        "where l.legacy_id = 7").fetchall()
    assert lead == [{"status": "contacted", "email": "a@example.com"}]
    events = conn.execute("select e.from_status::text f, e.to_status::text t, e.note from lead_status_events e "
                          "join leads l on l.id = e.lead_id where l.legacy_id = 7 order by e.id").fetchall()
    assert events == [{"f": None, "t": "new", "note": "import"}, {"f": "new", "t": "contacted", "note": "import"}]
    assert conn.execute("select count(*) n from leads").fetchone()["n"] == 3
