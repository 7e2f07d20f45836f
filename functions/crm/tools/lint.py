"""The security lint behind `crm db lint` (SPEC 6.7), modelled on Supabase's splinter lints.

Each check is one catalog query (the named queries `lint_*`, crm/tools/sql/lint.sql) returning
finding lines `<lint_name>: <object>`; `run_lint` runs them all and returns every finding, sorted.
An empty list means the schema passes. The queries read the catalogs only, so the lint is safe on a
production database.

Schemas checked for exposure are ours (`public`, `hidden`, `private` and any other non-platform
schema); objects that belong to an extension are the extension's business and are skipped.
"""

from __future__ import annotations

import re

import psycopg
from psycopg.rows import tuple_row

from crm import queries

# The only thing anon may touch at all.
ANON_ALLOWLIST = frozenset({"function public.track_order(text)"})

# Schemas managed by the platform (Supabase or our bootstrap), not by our migrations.
PLATFORM_SCHEMAS = (
    "pg_catalog", "information_schema", "pg_toast", "auth", "extensions", "storage", "graphql",
    "graphql_public", "realtime", "supabase_functions", "supabase_migrations", "vault", "pgsodium",
    "pgsodium_masks", "net", "cron", "pgbouncer", "_realtime", "_analytics", "pgtle", "topology",
)

# History is never deleted through the API (SPEC 6.6): tables of this list (where they exist) must
# give no API role DELETE or TRUNCATE and have no delete policy.
HISTORY_TABLES = (
    "public.customers", "public.leads", "public.orders", "public.lead_status_events",
    "public.order_status_events", "public.activities", "public.payments", "public.webhook_deliveries",
    "private.webhook_deliveries", "private.inbound_events",
)
API_ROLES = ("anon", "authenticated", "service_role")

# Columns that hold personal data: commented 'personal: …', or named like contact data (unless
# commented 'not personal: …'). Each must be scrubbed by erase_customer, i.e. listed by
# hidden.erased_columns() (kept next to it, db/triggers/erasure.sql). Generated columns follow
# their sources.
PERSONAL_NAME = r"(^|_)(phone|email|e_mail|full_name|first_name|last_name|address|city)(_|$)"

# Calls that must be wrapped in `(select …)` inside a policy, so they run once per statement.
_INITPLAN_CALL = re.compile(r"\b(auth\.(?:uid|jwt|role)|hidden\.[a-z_][a-z0-9_]*)\s*\(", re.IGNORECASE)

_SUBSELECT = re.compile(r"\s*select\b", re.IGNORECASE)

#: The checks, each the named query `lint_<check>` (crm/tools/sql/lint.sql) returning finding objects.
_CHECKS = (
    "rls_disabled_in_public", "function_search_path_mutable", "security_definer_view", "anon_privilege",
    "private_schema_privilege", "anon_policy_on_contact_data", "multiple_permissive_policies",
    "unindexed_foreign_keys", "history_delete_privilege", "history_delete_policy", "personal_data_not_erased",
    "rls_policy_always_true",
)


def _initplan_findings(conn: psycopg.Connection) -> list[str]:
    """Policies calling auth.* / hidden.* per row instead of once per statement via `(select …)`."""
    findings = []
    with conn.cursor(row_factory=tuple_row) as cur:
        for schema, table, policy, qual, check in cur.execute(queries.get("lint_policy_expressions")):
            for expression in (qual, check):
                if any(not _wrapped_in_select(expression, m.start()) for m in _INITPLAN_CALL.finditer(expression)):
                    findings.append(f'auth_rls_initplan: {schema}.{table} policy "{policy}"')
                    break
    return findings


def _wrapped_in_select(expression: str, call_start: int) -> bool:
    """True when some parenthesis enclosing the call opens a sub-select.

    pg_get_expr deparses `(select auth.uid())` as `( SELECT auth.uid() AS uid)`; string literals in
    policies do not hold parentheses in practice, so plain counting is enough here.
    """
    depth = 0
    for i in range(call_start - 1, -1, -1):
        char = expression[i]
        if char == ")":
            depth += 1
        elif char == "(":
            if depth:
                depth -= 1
            elif _SUBSELECT.match(expression, i + 1):
                return True
    return False


def _erased_columns(cur: psycopg.Cursor) -> list[str]:
    """What erase_customer scrubs (hidden.erased_columns()), or nothing when it does not exist."""
    (exists,) = cur.execute(queries.get("lint_erased_columns_exists")).fetchone()
    if not exists:
        return []
    (columns,) = cur.execute(queries.get("lint_erased_columns")).fetchone()
    return list(columns or [])


def run_lint(conn: psycopg.Connection) -> list[str]:
    """Every finding as `<lint_name>: <object>`; empty when the schema passes."""
    findings: list[str] = []
    with conn.cursor(row_factory=tuple_row) as cur:
        params = {"platform": list(PLATFORM_SCHEMAS), "history": list(HISTORY_TABLES),
                  "api_roles": list(API_ROLES), "personal_name": PERSONAL_NAME,
                  "erased": _erased_columns(cur)}
        for name in _CHECKS:
            for (obj,) in cur.execute(queries.get(f"lint_{name}"), params):
                if name == "anon_privilege" and obj in ANON_ALLOWLIST:
                    continue
                findings.append(f"{name}: {obj}")
    findings.extend(_initplan_findings(conn))
    return sorted(findings)
