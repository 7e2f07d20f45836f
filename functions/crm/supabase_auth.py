"""Users through Supabase Auth's admin API (SPEC §4 `crm staff add`).

On Supabase, `auth.users` belongs to Supabase Auth: it assigns ids and fills the columns it needs
(`aud`, `role`, `instance_id`, identities, …). So when `SUPABASE_URL` + `SUPABASE_SERVICE_ROLE_KEY`
are set, users are created through its admin API (`POST /auth/v1/admin/users`) with the `supabase`
client; elsewhere the CLI inserts the row itself with an explicit id.
"""

from __future__ import annotations

import httpx

from crm import config
from crm.errors import ConfigError

PAGE_SIZE = 200
MAX_PAGES = 500  # 100k users: a bound, so a misbehaving endpoint cannot loop forever


class AuthAdminError(Exception):
    pass


def configured() -> bool:
    return bool(config.env("SUPABASE_URL"))


class AuthAdmin:
    def __init__(self, url: str, service_role_key: str, *, timeout: float = 15.0):
        import supabase
        from supabase import ClientOptions

        self.http = httpx.Client(timeout=timeout, trust_env=False)
        options = ClientOptions(httpx_client=self.http, auto_refresh_token=False, persist_session=False)
        try:
            self.admin = supabase.create_client(url, service_role_key, options=options).auth.admin
        except supabase.SupabaseException as exc:
            self.http.close()
            raise ConfigError(f"SUPABASE_URL / SUPABASE_SERVICE_ROLE_KEY: {exc.message}") from None

    @classmethod
    def from_env(cls) -> AuthAdmin:
        return cls(config.require("SUPABASE_URL"), config.require("SUPABASE_SERVICE_ROLE_KEY"))

    def close(self) -> None:
        self.http.close()

    def find_by_email(self, email: str) -> str | None:
        wanted = email.lower()
        for page in range(1, MAX_PAGES + 1):
            users = self._call(lambda p=page: self.admin.list_users(page=p, per_page=PAGE_SIZE))
            for user in users:
                if (user.email or "").lower() == wanted:
                    return str(user.id)
            if len(users) < PAGE_SIZE:
                return None
        return None

    def ensure_user(self, email: str) -> str:
        """The id of the user with this email, created (email confirmed, no password) if absent."""
        existing = self.find_by_email(email)
        if existing:
            return existing
        from supabase_auth.errors import AuthApiError

        try:
            response = self.admin.create_user({"email": email, "email_confirm": True})
        except AuthApiError as exc:
            if exc.status == 422 and (exc.code == "email_exists" or "already" in exc.message.lower()):
                # Created concurrently since we looked.
                found = self.find_by_email(email)
                if found:
                    return found
            raise AuthAdminError(f"Supabase Auth refused to create {email}: {exc.message}") from exc
        except httpx.HTTPError as exc:
            raise AuthAdminError(f"Supabase Auth is unreachable: {exc}") from exc
        if response.user is None:
            raise AuthAdminError(f"Supabase Auth created no user for {email}")
        return str(response.user.id)

    def _call(self, fn):
        from supabase_auth.errors import AuthError

        try:
            return fn()
        except AuthError as exc:
            raise AuthAdminError(f"Supabase Auth: {exc.message}") from exc
        except httpx.HTTPError as exc:
            raise AuthAdminError(f"Supabase Auth is unreachable: {exc}") from exc
