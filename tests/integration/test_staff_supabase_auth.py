"""`crm staff add` with SUPABASE_URL + SUPABASE_SERVICE_ROLE_KEY creates users through Supabase Auth's
admin API (SPEC §4), here a local stand-in that, like Supabase Auth, writes `auth.users` itself."""

import datetime
import json
import uuid

import psycopg
import werkzeug

from crm.supabase_auth import AuthAdmin
from tests.helpers import LiveServer, crm_cli, make_org

SERVICE_KEY = "eyJhbGciOiJIUzI1NiJ9.eyJyb2xlIjoic2VydmljZV9yb2xlIn0.c2lnbmF0dXJl"


class AuthStandIn:
    """POST /auth/v1/admin/users and GET /auth/v1/admin/users, as Supabase Auth answers them."""

    def __init__(self, db_url: str):
        self.db_url = db_url
        self.calls: list[tuple[str, str, str | None]] = []

    def user_json(self, row) -> dict:
        return {"id": str(row[0]), "aud": "authenticated", "role": "authenticated", "email": row[1],
                "app_metadata": {"provider": "email"}, "user_metadata": {}, "identities": [],
                "created_at": row[2].isoformat(), "updated_at": row[2].isoformat()}

    def __call__(self, environ, start_response):
        request = werkzeug.Request(environ)
        self.calls.append((request.method, request.path, request.headers.get("Authorization")))
        if request.headers.get("Authorization") != f"Bearer {SERVICE_KEY}":
            return self.send(start_response, 401, {"code": 401, "msg": "invalid JWT"})
        with psycopg.connect(self.db_url, autocommit=True) as conn:
            if request.method == "POST" and request.path == "/auth/v1/admin/users":
                email = request.get_json()["email"]
                if conn.execute("select 1 from auth.users where email = %s", (email,)).fetchone():
                    return self.send(start_response, 422, {
                        "code": 422, "error_code": "email_exists",
                        "msg": "A user with this email address has already been registered"})
                row = conn.execute("insert into auth.users (id, email, created_at) values (%s, %s, %s)"
                                   " returning id, email, created_at",
                                   (uuid.uuid4(), email, datetime.datetime.now(datetime.UTC))).fetchone()
                return self.send(start_response, 200, self.user_json(row))
            if request.method == "GET" and request.path == "/auth/v1/admin/users":
                page, per_page = int(request.args.get("page", 1)), int(request.args.get("per_page", 50))
                rows = conn.execute("select id, email, coalesce(created_at, now()) from auth.users"
                                    " order by id limit %s offset %s",
                                    (per_page, (page - 1) * per_page)).fetchall()
                users = [self.user_json(r) for r in rows]
                return self.send(start_response, 200, {"users": users, "aud": "authenticated"})
        return self.send(start_response, 404, {"code": 404, "msg": "not found"})

    @staticmethod
    def send(start_response, status: int, body: dict):
        start_response(f"{status} X", [("Content-Type", "application/json")])
        return [json.dumps(body).encode()]


def test_staff_add_creates_the_user_through_the_admin_api_and_reuses_it(db_url, conn):
    make_org(conn, "acme")
    stand_in = AuthStandIn(db_url)
    with LiveServer(stand_in) as auth:
        env = {"SUPABASE_URL": auth.url, "SUPABASE_SERVICE_ROLE_KEY": SERVICE_KEY}
        first = crm_cli("staff", "add", "--org", "acme", "--email", "Boss@Acme.test", "--role", "manager",
                        DATABASE_URL=db_url, **env)
        assert first.returncode == 0, first.stderr
        user_id = first.stdout.strip()
        assert ("POST", "/auth/v1/admin/users", f"Bearer {SERVICE_KEY}") in stand_in.calls
        assert conn.execute("select email from auth.users where id = %s", (user_id,)).fetchone()["email"] == (
            "boss@acme.test")
        assert conn.execute("select role::text from staff where user_id = %s", (user_id,)).fetchone()["role"] == (
            "manager")

        posts = sum(1 for c in stand_in.calls if c[0] == "POST")
        again = crm_cli("staff", "add", "--org", "acme", "--email", "boss@acme.test", "--role", "admin",
                        DATABASE_URL=db_url, **env)
        assert again.returncode == 0, again.stderr
        assert again.stdout.strip() == user_id
        assert sum(1 for c in stand_in.calls if c[0] == "POST") == posts  # reused, not created twice


def test_an_existing_auth_user_is_found_by_listing_users_not_created_again(db_url, conn):
    make_org(conn, "acme")
    stand_in = AuthStandIn(db_url)
    existing = uuid.uuid4()
    with LiveServer(stand_in) as auth:
        admin = AuthAdmin(auth.url, SERVICE_KEY)
        try:
            conn.execute("insert into auth.users (id, email) values (%s, 'late@acme.test')", (existing,))
            assert admin.ensure_user("Late@Acme.test") == str(existing)
            assert not [c for c in stand_in.calls if c[0] == "POST"]
        finally:
            admin.close()


def test_staff_add_with_a_wrong_service_key_is_one_line(db_url, conn):
    make_org(conn, "acme")
    with LiveServer(AuthStandIn(db_url)) as auth:
        result = crm_cli("staff", "add", "--org", "acme", "--email", "x@acme.test", "--role", "agent",
                         DATABASE_URL=db_url, SUPABASE_URL=auth.url, SUPABASE_SERVICE_ROLE_KEY=SERVICE_KEY + "x")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "Supabase Auth" in result.stderr, result.stderr
    assert conn.execute("select count(*) as n from staff").fetchone()["n"] == 0


def test_staff_add_without_supabase_inserts_an_explicit_id(db_url, conn):
    make_org(conn, "acme")
    result = crm_cli("staff", "add", "--org", "acme", "--email", "solo@acme.test", "--role", "agent",
                     DATABASE_URL=db_url)
    assert result.returncode == 0, result.stderr
    assert uuid.UUID(result.stdout.strip())
