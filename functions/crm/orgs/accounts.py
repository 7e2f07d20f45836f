"""Create organizations and add staff, on a connection the caller owns (SPEC §4).

The CLI and `crm dev` call these; they raise `AccountError` (and `supabase_auth.AuthAdminError`,
`ConfigError` when Supabase Auth is configured but unusable) and leave the reporting to the caller.
"""

from __future__ import annotations

import psycopg

from crm import queries, supabase_auth

ROLES = ("admin", "manager", "agent", "viewer")


class AccountError(Exception):
    """A refusal, worded for the operator."""


class InvalidEmail(AccountError):
    """The email address given is not one (a usage error on the command line)."""


class UnknownOrganization(AccountError):
    pass


def create_org(conn: psycopg.Connection, slug: str, name: str, country: str) -> str:
    row = conn.execute(queries.get("create_organization"),
                       {"slug": slug, "name": name, "country": country.upper()}).fetchone()
    return str(row["id"])


def any_organization(conn: psycopg.Connection) -> bool:
    return bool(conn.execute(queries.get("any_organization")).fetchone()["found"])


def add_staff(conn: psycopg.Connection, org: str, email: str, role: str) -> str:
    """Add the user with that email (created if needed) to the org `org` (slug); returns the user id."""
    email = email.strip()
    if "@" not in email:
        raise InvalidEmail(f"not an email address: {email!r}")
    if not conn.execute(queries.get("organization_exists"), {"org": org}).fetchone()["found"]:
        raise UnknownOrganization(f"no organization with slug {org!r}")
    user = conn.execute(queries.get("find_user_by_email"), {"email": email}).fetchone()
    if user is not None:
        user_id = str(user["id"])
    elif supabase_auth.configured():
        # Supabase Auth owns auth.users there: it assigns the id and fills what it needs.
        admin = supabase_auth.AuthAdmin.from_env()
        try:
            user_id = admin.ensure_user(email.lower())
        finally:
            admin.close()
    else:
        # auth.users.id has no default on Supabase (nor in our stand-in): the id is explicit.
        user_id = str(conn.execute(queries.get("create_user"), {"email": email.lower()}).fetchone()["id"])
    row = conn.execute(queries.get("add_staff"),
                       {"org": org, "user_id": user_id, "role": role}).fetchone()
    if row is None:
        raise UnknownOrganization(f"no organization with slug {org!r}")
    return user_id


def user_email(conn: psycopg.Connection, user_id: str) -> str | None:
    """The email of the user with that id; None when there is none. A malformed id raises
    psycopg.errors.InvalidTextRepresentation (`InvalidInput` once it leaves `crm.db.direct`)."""
    row = conn.execute(queries.get("user_email"), {"user_id": user_id}).fetchone()
    return None if row is None else row["email"]


def staff_user_id(conn: psycopg.Connection, org: str, email: str) -> str | None:
    row = conn.execute(queries.get("staff_user_by_email"), {"org": org, "email": email}).fetchone()
    return None if row is None else str(row["user_id"])
