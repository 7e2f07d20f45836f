"""Rules a direct PostgREST write must not bypass: first-party images only, assignees are staff."""

import json

import psycopg
import pytest

from tests.helpers import acting_as, make_org, make_staff

SNAPSHOT = {"external_ref": "listing-1", "title": "Bike", "images": ["https://img.example/1.jpg"],
            "cached_images": ["https://tracker.example/pixel.gif"], "images_state": "cached"}


@pytest.fixture
def shop(conn):
    org = make_org(conn)
    other = make_org(conn)
    manager = make_staff(conn, org, "manager")
    outsider = make_staff(conn, other, "manager")
    customer = conn.execute("insert into public.customers (org_id, full_name, email) values (%s, 'A', 'a@b.c')"
                            " returning id", (org,)).fetchone()["id"]
    return {"org": org, "manager": manager, "outsider": outsider, "customer": customer}


def insert_order(c, shop, **extra):
    cols = {"org_id": shop["org"], "customer_id": shop["customer"], "external_item_ref": "listing-1",
            "item_snapshot": json.dumps(SNAPSHOT), **extra}
    names = ", ".join(cols)
    marks = ", ".join(["%s"] * len(cols))
    return c.execute(f"insert into public.orders ({names}) values ({marks}) returning id, item_snapshot",
                     tuple(cols.values())).fetchone()


def test_api_caller_cannot_plant_cached_images(conn, shop):
    with acting_as(conn, "authenticated", shop["manager"]) as c:
        order = insert_order(c, shop)
        assert order["item_snapshot"]["cached_images"] == []
        assert order["item_snapshot"]["images_state"] == "pending"
        card = c.execute("select display_image_url from public.order_cards where id = %s", (order["id"],)).fetchone()
        assert card["display_image_url"] is None
        with pytest.raises(psycopg.Error) as refused:
            c.execute("update public.orders set item_snapshot = jsonb_set(item_snapshot, '{cached_images}',"
                      " '[\"https://tracker.example/x.gif\"]') where id = %s", (order["id"],))
        assert refused.value.sqlstate in ("42501", "PT422")  # no column grant; the trigger backs it up


def test_service_jobs_may_write_cached_images_and_cards_show_them_when_cached(conn, shop):
    order = insert_order(conn, shop)  # as the owner: a trusted import keeps what it was given
    conn.execute("update public.orders set item_snapshot = item_snapshot || '{\"images_state\": \"failed\"}'"
                 " where id = %s", (order["id"],))
    with acting_as(conn, "authenticated", shop["manager"]) as c:
        card = c.execute("select display_image_url from public.order_cards where id = %s", (order["id"],)).fetchone()
    assert card["display_image_url"] is None, "only images the cache finished (cached/partial) are shown"
    with acting_as(conn, "service_role") as c:
        c.execute("update public.orders set item_snapshot = item_snapshot"
                  " || '{\"cached_images\": [\"http://127.0.0.1/media/a.webp\"], \"images_state\": \"cached\"}'"
                  " where id = %s", (order["id"],))
        card = c.execute("select display_image_url from public.order_cards where id = %s", (order["id"],)).fetchone()
    assert card["display_image_url"] == "http://127.0.0.1/media/a.webp"


@pytest.mark.parametrize(
    ("table", "column"),
    [("leads", "assigned_to"), ("orders", "assigned_manager"), ("tasks", "assignee")],
)
def test_assignee_must_be_staff_of_the_same_org_for_every_writer(conn, shop, table, column):
    lead = conn.execute("insert into public.leads (org_id, customer_id, source) values (%s, %s, 'manual')"
                        " returning id", (shop["org"],  shop["customer"])).fetchone()["id"]
    order = insert_order(conn, shop)["id"]
    task = conn.execute("insert into public.tasks (org_id, lead_id, title) values (%s, %s, 't') returning id",
                        (shop["org"], lead)).fetchone()["id"]
    row_id = {"leads": lead, "orders": order, "tasks": task}[table]
    with acting_as(conn, "authenticated", shop["manager"]) as c:
        c.execute(f"update public.{table} set {column} = %s where id = %s", (shop["manager"], row_id))
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            c.execute(f"update public.{table} set {column} = %s where id = %s", (shop["outsider"], row_id))
    # Removing someone from the organization unassigns them.
    conn.execute(f"update public.{table} set {column} = %s where id = %s", (shop["manager"], row_id))
    conn.execute("delete from public.staff where org_id = %s and user_id = %s", (shop["org"], shop["manager"]))
    assert conn.execute(f"select {column} from public.{table} where id = %s", (row_id,)).fetchone()[column] is None


def test_full_notes_refuse_a_new_note_on_the_note_field(conn, shop):
    lead = conn.execute("insert into public.leads (org_id, customer_id, source, notes) values (%s, %s, 'manual', %s)"
                        " returning id", (shop["org"], shop["customer"], "x" * 19_990)).fetchone()["id"]
    with acting_as(conn, "authenticated", shop["manager"]) as c, pytest.raises(psycopg.Error) as refused:
        c.execute("select public.update_lead(%s, note => %s)", (lead, "n" * 50))
    assert refused.value.sqlstate == "PT422"
    assert (refused.value.diag.message_detail, refused.value.diag.message_hint) == ("notes_full", "note")
