"""Supabase-compatible access tokens: minted by `crm token`, verified by the staff functions."""

from __future__ import annotations

import time
import uuid
from typing import Any

import jwt

AUDIENCE = "authenticated"
LEEWAY_SECONDS = 30


def mint_token(user_id: uuid.UUID | str, email: str | None, secret: str, *, ttl: int = 3600,
               issuer: str | None = None) -> str:
    """A JWT shaped like a Supabase access token (HS256, `role`/`aud` = authenticated)."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": str(user_id),
        "role": "authenticated",
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + ttl,
        "email": email or "",
        "app_metadata": {},
        "user_metadata": {},
        "is_anonymous": False,
        "session_id": str(uuid.uuid4()),
    }
    if issuer:
        claims["iss"] = issuer
    return jwt.encode(claims, secret, algorithm="HS256")
