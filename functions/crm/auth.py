"""Supabase-compatible access tokens: minted by `crm token`, verified by the staff functions.

Supabase signs access tokens either with the project's shared secret (HS256, `CRM_JWT_SECRET`) or,
on projects with asymmetric signing keys, with ES256/RS256 keys published as a JWKS
(`CRM_JWKS_URL`). Verification picks the key family from configuration, never from the token:
an HS256 token is checked only against the secret, an asymmetric one only against a published key
whose own `alg`/type fixes the algorithm, so no token can steer which algorithm a key is used with.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import jwt

from crm import config
from crm.errors import ConfigError, InvalidToken, ServiceUnavailable, Unauthorized

log = logging.getLogger("crm.auth")

AUDIENCE = "authenticated"
LEEWAY_SECONDS = 30
MAX_TOKEN_CHARS = 16 * 1024
ASYMMETRIC_ALGORITHMS = frozenset({"ES256", "RS256"})
JWKS_MAX_BYTES = 256 * 1024
_BEARER = re.compile(r"^Bearer[ \t]+([A-Za-z0-9._~+/=-]+)[ \t]*$", re.IGNORECASE)


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


def invalid_token(detail: str) -> InvalidToken:
    """A refused token (RFC 6750's `error="invalid_token"`, so clients know to refresh the session)."""
    return InvalidToken(detail)


def bearer_token(authorization: str | None) -> str:
    """The token of an `Authorization: Bearer …` header; `Unauthorized` when absent or of another scheme."""
    if not authorization or not authorization.strip():
        raise Unauthorized("An Authorization: Bearer <access token> header is required.",
                           code="missing_token")
    match = _BEARER.match(authorization.strip())
    if match is None:
        raise invalid_token("The Authorization header must be 'Bearer <access token>'.")
    return match.group(1)


class JwksUnavailable(ServiceUnavailable):
    """The key set cannot be fetched: an outage, not the caller's fault (so not `Unauthorized`)."""

    def __init__(self, detail: str = "The token signing keys cannot be fetched; try again shortly."):
        super().__init__(detail, code="jwks_unavailable")


class JwksCache:
    """The signing keys at a JWKS URL, fetched with httpx and kept in memory.

    Keys are re-fetched when the cache is older than `ttl` and when a token names an unknown
    `kid` (a key rotation), but at most once per `min_refresh_interval`: a stream of tokens with
    made-up kids, or a key server that is down, must not turn into a stream of requests to it.
    """

    def __init__(self, url: str, *, ttl: float = 600.0, min_refresh_interval: float = 10.0,
                 timeout: float = 3.0, clock: Callable[[], float] = time.monotonic):
        self.url = url
        self.ttl = ttl
        self.min_refresh_interval = min_refresh_interval
        self.timeout = timeout
        self.clock = clock
        self.fetches = 0
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._lock = threading.Lock()

    def key(self, kid: str) -> jwt.PyJWK:
        with self._lock:
            now = self.clock()
            stale = self._fetched_at is None or now - self._fetched_at >= self.ttl
            if (stale or kid not in self._keys) and self._may_fetch(now):
                try:
                    self._refresh(now)
                except JwksUnavailable:
                    if self._fetched_at is None or kid not in self._keys:
                        raise
                    log.warning("JWKS refresh from %s failed; using the cached keys", self.url)
            if self._fetched_at is None:
                raise JwksUnavailable()
            found = self._keys.get(kid)
        if found is None:
            raise invalid_token("The token is signed with an unknown key.")
        return found

    def _may_fetch(self, now: float) -> bool:
        return self._attempted_at is None or now - self._attempted_at >= self.min_refresh_interval

    def _refresh(self, now: float) -> None:
        self.fetches += 1
        self._attempted_at = now
        try:
            with httpx.Client(timeout=self.timeout, follow_redirects=False) as client, \
                    client.stream("GET", self.url, headers={"Accept": "application/json"}) as resp:
                if resp.status_code != 200:
                    raise JwksUnavailable(f"The token signing keys answered HTTP {resp.status_code}.")
                body = bytearray()
                for chunk in resp.iter_bytes():
                    body += chunk
                    if len(body) > JWKS_MAX_BYTES:
                        raise JwksUnavailable("The token signing key set is too large.")
            document = json.loads(bytes(body))
        except httpx.HTTPError as exc:
            log.warning("cannot fetch JWKS from %s: %s", self.url, exc)
            raise JwksUnavailable() from exc
        except (ValueError, RecursionError) as exc:
            raise JwksUnavailable("The token signing key set is not valid JSON.") from exc
        self._keys = _parse_jwks(document)
        self._fetched_at = now


def _parse_jwks(document: Any) -> dict[str, jwt.PyJWK]:
    """Signature keys by kid; symmetric, unsupported and kid-less keys are skipped."""
    entries = document.get("keys") if isinstance(document, Mapping) else None
    if not isinstance(entries, list):
        raise JwksUnavailable("The token signing key set has no 'keys' list.")
    keys: dict[str, jwt.PyJWK] = {}
    for entry in entries:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("kid"), str):
            continue
        if entry.get("use", "sig") != "sig" or entry.get("kty") not in ("EC", "RSA"):
            continue
        try:
            key = jwt.PyJWK(dict(entry))
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError) as exc:
            log.warning("skipping JWKS key %s: %s", entry.get("kid"), exc)
            continue
        if key.algorithm_name in ASYMMETRIC_ALGORITHMS:
            keys[entry["kid"]] = key
    return keys


@dataclass(frozen=True)
class VerifierSettings:
    secret: str | None
    jwks_url: str | None
    issuer: str | None

    @classmethod
    def from_env(cls) -> VerifierSettings:
        return cls(config.env("CRM_JWT_SECRET"), config.env("CRM_JWKS_URL"), config.env("CRM_JWT_ISSUER"))


class Verifier:
    """Checks a Supabase access token and returns its claims, or raises `Unauthorized`."""

    def __init__(self, settings: VerifierSettings, *, jwks: JwksCache | None = None):
        if not settings.secret and not settings.jwks_url:
            raise ConfigError("CRM_JWT_SECRET is not set (nor CRM_JWKS_URL): one is required to verify "
                              "access tokens outside `crm dev`")
        self.settings = settings
        self.jwks = jwks or (JwksCache(settings.jwks_url) if settings.jwks_url else None)

    def verify(self, token: str) -> dict[str, Any]:
        if not token or len(token) > MAX_TOKEN_CHARS:
            raise invalid_token("The access token is empty or too long.")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise invalid_token("The access token is malformed.") from None
        alg = header.get("alg")
        if not isinstance(alg, str):
            raise invalid_token("The access token's algorithm is malformed.")
        key: Any
        if alg == "HS256":
            if not self.settings.secret:
                raise invalid_token("HS256 access tokens are not accepted here.")
            key, algorithm = self.settings.secret, "HS256"
        elif alg in ASYMMETRIC_ALGORITHMS:
            kid = header.get("kid")
            if self.jwks is None:
                raise invalid_token(f"{alg} access tokens are not accepted here.")
            if not isinstance(kid, str) or not kid:
                raise invalid_token("The access token names no signing key (kid).")
            jwk = self.jwks.key(kid)
            if jwk.algorithm_name != alg:
                raise invalid_token("The access token's algorithm does not match its signing key.")
            key, algorithm = jwk.key, jwk.algorithm_name
        else:
            raise invalid_token(f"Access tokens signed with {alg!r} are not accepted.")
        try:
            claims = jwt.decode(
                token, key, algorithms=[algorithm], audience=AUDIENCE, issuer=self.settings.issuer,
                leeway=LEEWAY_SECONDS, options={"require": ["exp", "sub", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise invalid_token("The access token has expired.") from None
        except jwt.InvalidAudienceError:
            raise invalid_token(f"The access token's audience is not {AUDIENCE!r}.") from None
        except jwt.InvalidIssuerError:
            raise invalid_token("The access token's issuer is not accepted.") from None
        except jwt.MissingRequiredClaimError as exc:
            raise invalid_token(f"The access token has no {exc.claim!r} claim.") from None
        except jwt.InvalidSignatureError:
            raise invalid_token("The access token's signature is not valid.") from None
        except jwt.PyJWTError as exc:
            raise invalid_token(f"The access token is not valid: {exc}.") from None
        return _checked_claims(claims)


def _checked_claims(claims: dict[str, Any]) -> dict[str, Any]:
    # Only signed-in users act on leads; `anon` and `service_role` keys are not access tokens.
    if claims.get("role") != "authenticated":
        raise invalid_token("The access token is not a signed-in user's token (role).")
    sub = claims.get("sub")
    try:
        claims["sub"] = str(uuid.UUID(sub)) if isinstance(sub, str) else None
    except ValueError:
        claims["sub"] = None
    if claims["sub"] is None:
        raise invalid_token("The access token's subject is not a user id.")
    return claims


_verifier: Verifier | None = None
_verifier_lock = threading.Lock()


def get_verifier() -> Verifier:
    """The process verifier, rebuilt when the settings change (keeps the JWKS cache otherwise)."""
    global _verifier
    settings = VerifierSettings.from_env()
    with _verifier_lock:
        if _verifier is None or _verifier.settings != settings:
            _verifier = Verifier(settings)
        return _verifier


def verify_token(token: str) -> dict[str, Any]:
    """The verified claims of a Supabase access token; `InvalidToken` for any bad token."""
    return get_verifier().verify(token)


def authenticate(authorization: str | None) -> dict[str, Any]:
    """Claims of the caller behind an `Authorization` header."""
    return verify_token(bearer_token(authorization))

