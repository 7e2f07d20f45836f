"""`crm db lint`: the real schema passes; each deliberately bad object is caught by its lint."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from psycopg.rows import dict_row

from crm.tools.cli import main as crm_main
from crm.tools.lint import run_lint


@pytest.fixture(scope="module")
def lint_conn(clone_database) -> Iterator[psycopg.Connection]:
    # dict_row like the shared fixtures: run_lint must not depend on the caller's row factory.
    with psycopg.connect(clone_database(), autocommit=True, row_factory=dict_row) as conn:
        yield conn


def test_the_real_schema_passes(lint_conn: psycopg.Connection) -> None:
    assert run_lint(lint_conn) == []


def test_cli_exits_zero_on_the_real_schema(db_url: str, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("DATABASE_URL", db_url)
    assert crm_main(["db", "lint"]) == 0
    assert "no findings" in capsys.readouterr().out


BAD_OBJECTS = [
    ("create table public.bad (id int primary key)",
     "rls_disabled_in_public: public.bad"),
    ("create function hidden.bad() returns int language sql security definer as 'select 1'",
     "function_search_path_mutable: hidden.bad()"),
    ("create function public.bad(x int) returns int language sql security definer as 'select x';"
     " revoke all on function public.bad(int) from anon, public",
     "function_search_path_mutable: public.bad(integer)"),
    ("create view public.bad as select id from public.orders",
     "security_definer_view: public.bad"),
    ("grant select on public.customers to anon",
     "anon_privilege: table public.customers"),
    ("grant update (city) on public.customers to anon",
     "anon_privilege: table public.customers"),
    ("grant usage on sequence public.order_status_events_id_seq to anon",
     "anon_privilege: sequence public.order_status_events_id_seq"),
    ("grant execute on function public.search_customers(uuid, text, integer) to anon",
     "anon_privilege: function public.search_customers(uuid, text, integer)"),
    ("create function public.leaky() returns int language sql set search_path = '' as 'select 1';"
     " grant execute on function public.leaky() to public",
     "anon_privilege: function public.leaky()"),
    ("grant usage on schema private to authenticated",
     "private_schema_privilege: authenticated on schema private"),
    ("grant select on private.outbox to authenticated",
     "private_schema_privilege: authenticated on table private.outbox"),
    ("create policy \"Anyone reads customers\" on public.customers for select to anon using (true)",
     'anon_policy_on_contact_data: public.customers policy "Anyone reads customers"'),
    ("create table public.people (id int, mobile_phone text); alter table public.people enable row level security;"
     " revoke all on public.people from anon;"
     " create policy \"Everyone reads people\" on public.people for select using (id > 0)",
     'anon_policy_on_contact_data: public.people policy "Everyone reads people"'),
    ("create policy \"Per row\" on public.tasks for select to authenticated"
     " using (assignee = auth.uid() and org_id = any ((select hidden.staff_org_ids())::uuid[]))",
     'auth_rls_initplan: public.tasks policy "Per row"'),
    ("create policy \"Per row helper\" on public.tasks for select to authenticated"
     " using (org_id = any (hidden.staff_org_ids()))",
     'auth_rls_initplan: public.tasks policy "Per row helper"'),
    ("create policy \"Second reader\" on public.shipments for select to authenticated using (false)",
     'multiple_permissive_policies: public.shipments (authenticated, select): "Second reader", '
     '"Staff read shipments of their organization"'),
    ("create table public.child (id int primary key, task_id uuid references public.tasks (id) on delete cascade);"
     " alter table public.child enable row level security; revoke all on public.child from anon",
     "unindexed_foreign_keys: public.child (task_id) child_task_id_fkey"),
    ("create policy \"Open door\" on public.tasks as restrictive for delete to authenticated using (true)",
     'rls_policy_always_true: public.tasks policy "Open door" (delete)'),
    # History is never deleted through the API (SPEC 6.6), not even by service_role.
    ("grant delete on public.customers to authenticated",
     "history_delete_privilege: authenticated may delete from public.customers"),
    ("grant truncate on public.order_status_events to service_role",
     "history_delete_privilege: service_role may delete from public.order_status_events"),
    ("grant delete on public.leads to anon",
     "history_delete_privilege: anon may delete from public.leads"),
    ("create policy \"Managers delete orders\" on public.orders for delete to authenticated"
     " using (org_id = any ((select hidden.staff_org_ids('manager'))::uuid[]))",
     'history_delete_policy: public.orders policy "Managers delete orders" (delete)'),
    # Personal data that erase_customer (hidden.erased_columns()) leaves behind.
    ("alter table public.shipments add column recipient_phone text",
     "personal_data_not_erased: public.shipments.recipient_phone"),
    ("comment on column public.tasks.title is 'personal: may name the customer'",
     "personal_data_not_erased: public.tasks.title"),
    ("create or replace function hidden.erased_columns() returns text[] language sql immutable"
     " set search_path = '' as $$ select array['public.customers.full_name'] $$",
     "personal_data_not_erased: public.customers.email"),
    ("drop function hidden.erased_columns() cascade",
     "personal_data_not_erased: public.leads.notes"),
]


@pytest.mark.parametrize(("ddl", "finding"), BAD_OBJECTS, ids=[f.split(":")[0] + f"-{i}" for i, (_, f) in
                                                               enumerate(BAD_OBJECTS)])
def test_bad_object_is_caught(lint_conn: psycopg.Connection, ddl: str, finding: str) -> None:
    with lint_conn.transaction(force_rollback=True):
        for statement in ddl.split(";"):
            lint_conn.execute(statement)
        findings = run_lint(lint_conn)
    assert finding in findings, findings


@pytest.mark.parametrize(("ddl", "finding"), BAD_OBJECTS, ids=[f.split(":")[0] + f"-{i}" for i, (_, f) in
                                                               enumerate(BAD_OBJECTS)])
def test_cli_exits_one_naming_the_object(clone_database, monkeypatch: pytest.MonkeyPatch, capsys,
                                         ddl: str, finding: str) -> None:
    """Every check fires through `crm db lint` itself: exit 1, the finding on stdout, one stderr line."""
    url = clone_database()
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in ddl.split(";"):
            conn.execute(statement)
    monkeypatch.setenv("DATABASE_URL", url)
    assert crm_main(["db", "lint"]) == 1
    out, err = capsys.readouterr()
    assert finding in out.splitlines(), out
    assert err.count("\n") == 1 and "security lint finding" in err


def test_every_check_is_shown_to_fire() -> None:
    from crm.tools import lint

    shown = {finding.split(":")[0] for _, finding in BAD_OBJECTS}
    assert shown == set(lint._CHECKS) | {"auth_rls_initplan"}


def test_declared_not_personal_and_erased_columns_pass(lint_conn: psycopg.Connection) -> None:
    with lint_conn.transaction(force_rollback=True):
        lint_conn.execute("alter table public.shipments add column sender_email text")
        lint_conn.execute("comment on column public.shipments.sender_email is 'not personal: the shop address'")
        assert run_lint(lint_conn) == []


def test_indexed_foreign_key_and_wrapped_calls_pass(lint_conn: psycopg.Connection) -> None:
    with lint_conn.transaction(force_rollback=True):
        lint_conn.execute("create table public.child (id int primary key, task_id uuid references public.tasks (id)"
                          " on delete cascade)")
        lint_conn.execute("create index on public.child (task_id, id)")
        lint_conn.execute("alter table public.child enable row level security")
        lint_conn.execute("revoke all on public.child from anon")
        lint_conn.execute("create policy \"Own rows\" on public.child for select to authenticated"
                          " using (id = (select (auth.jwt() ->> 'n')::int))")
        assert run_lint(lint_conn) == []
