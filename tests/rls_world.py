"""What every RLS-matrix module starts from: one migrated database for the module, an organization
with a staff member per role, a member of another organization, and one matrix cell run as
PostgREST runs it. Each module keeps its own literal matrix and the rows it seeds."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from tests.helpers import acting_as, make_org, make_staff, rows_reached

#: actor -> staff role in the seeded organization (anon and service_role have no user)
ONE_PER_ROLE = {role: role for role in ("viewer", "agent", "manager", "admin")}


@dataclass
class StaffedOrg:
    conn: psycopg.Connection  # autocommit, dict rows, the migrations owner
    org: uuid.UUID
    users: dict[str, uuid.UUID | None]  # actor -> auth user (None: anon, service_role)

    def base(self) -> dict[str, Any]:
        """The fields, to build a module's World (a subclass) from: `World(**s.base(), …)`."""
        return {f.name: getattr(self, f.name) for f in fields(StaffedOrg)}


@contextmanager
def staffed_org(clone_database: Callable[[], str], *, outsider: tuple[str, str] = ("outsider", "admin"),
                members: Mapping[str, str] = ONE_PER_ROLE) -> Iterator[StaffedOrg]:
    """A fresh database with an organization, its `members` (actor -> role) and `outsider`
    (actor, role) on the staff of a second organization."""
    with psycopg.connect(clone_database(), autocommit=True, row_factory=dict_row) as conn:
        org, other = make_org(conn), make_org(conn)
        users: dict[str, uuid.UUID | None] = {
            "anon": None, "service_role": None, outsider[0]: make_staff(conn, other, outsider[1]),
            **{actor: make_staff(conn, org, role) for actor, role in members.items()},
        }
        yield StaffedOrg(conn, org, users)


def make_customer(conn: psycopg.Connection, org: uuid.UUID) -> uuid.UUID:
    return conn.execute(
        "insert into public.customers (org_id, full_name, phone_e164) values (%s, 'Anna', '+4915100000001')"
        " returning id", (org,)).fetchone()["id"]


def matrix_cells(cases: list[tuple[str, str, str, str]]) -> pytest.MarkDecorator:
    """Parametrizes a test over (table, action, actor, expected), one id per cell."""
    return pytest.mark.parametrize(("table", "action", "actor", "expected"), cases,
                                   ids=[f"{t}-{a}-{r}" for t, a, r, _ in cases])


def assert_cell(world: StaffedOrg, table: str, action: str, actor: str, expected: str,
                statement: tuple[str, Any]) -> None:
    """One cell: `expected` rows reached (1 / 0), or refused with an error (E)."""
    sql, params = statement
    reached = rows_reached(world.conn, actor, world.users[actor], sql, params, expected)
    assert expected == "E" or reached == int(expected), f"{actor} {action} on {table}"


def column_cases(cases: list[tuple[str, str]]) -> pytest.MarkDecorator:
    """Parametrizes a test over (sql, column): writes naming a column without a grant."""
    return pytest.mark.parametrize(("sql", "column"), cases, ids=[f"{i}-{c}" for i, (_, c) in enumerate(cases)])


def assert_admin_lacks_grant(world: StaffedOrg, sql: str, params: Any) -> None:
    """Even the org's admin is refused (permission denied): the column has no grant."""
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"):
        with acting_as(world.conn, "authenticated", world.users["admin"]) as c:
            c.execute(sql, params)
