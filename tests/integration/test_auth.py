"""Access-token verification as Supabase issues tokens: HS256 secret, and ES256/RS256 via JWKS.

The JWKS is served by a real HTTP server on 127.0.0.1, so fetching, caching and the refresh on
key rotation run exactly as against Supabase's `/.well-known/jwks.json`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from crm import auth
from crm.errors import ConfigError, ServiceUnavailable, Unauthorized
from crm.http import answer_for

SECRET = "test-secret-that-is-long-enough-for-hs256-0123456789"
USER = str(uuid.uuid4())


def claims(**overrides):
    now = int(time.time())
    base = {"sub": USER, "role": "authenticated", "aud": "authenticated", "iat": now, "exp": now + 600,
            "email": "m@example.test"}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def hs_verifier(**kw) -> auth.Verifier:
    return auth.Verifier(auth.VerifierSettings(SECRET, None, None), **kw)


def refused(verifier: auth.Verifier, token: str) -> Unauthorized:
    with pytest.raises(Unauthorized) as info:
        verifier.verify(token)
    answer = answer_for(info.value)
    assert answer.status == 401
    assert answer.headers(info.value)["WWW-Authenticate"].startswith("Bearer")
    assert 'error="invalid_token"' in answer.headers(info.value)["WWW-Authenticate"]
    return info.value


# -- HS256 ------------------------------------------------------------------------------------------

def test_minted_token_verifies_with_its_claims():
    token = auth.mint_token(USER, "m@example.test", SECRET, ttl=60)
    got = hs_verifier().verify(token)
    assert got["sub"] == USER
    assert got["role"] == "authenticated"
    assert got["aud"] == "authenticated"
    assert got["email"] == "m@example.test"


def test_expired_token_is_refused_but_small_clock_skew_is_tolerated():
    late = jwt.encode(claims(exp=int(time.time()) - 10), SECRET, algorithm="HS256")
    assert hs_verifier().verify(late)["sub"] == USER
    expired = jwt.encode(claims(exp=int(time.time()) - auth.LEEWAY_SECONDS - 5), SECRET, algorithm="HS256")
    assert "expired" in refused(hs_verifier(), expired).detail


def test_wrong_secret_is_refused():
    token = auth.mint_token(USER, None, "another-secret-that-is-long-enough-for-hs256-xyz")
    assert "signature" in refused(hs_verifier(), token).detail


@pytest.mark.parametrize("aud", ["anon", "service_role", ["other"], None])
def test_wrong_or_missing_audience_is_refused(aud):
    refused(hs_verifier(), jwt.encode(claims(aud=aud), SECRET, algorithm="HS256"))


def test_missing_exp_is_refused():
    token = jwt.encode(claims(exp=None), SECRET, algorithm="HS256")
    assert "exp" in refused(hs_verifier(), token).detail


@pytest.mark.parametrize("role", ["anon", "service_role", None])
def test_only_signed_in_users_tokens_pass(role):
    refused(hs_verifier(), jwt.encode(claims(role=role), SECRET, algorithm="HS256"))


@pytest.mark.parametrize("sub", ["not-a-uuid", "", 42, None])
def test_subject_must_be_a_user_id(sub):
    refused(hs_verifier(), jwt.encode(claims(sub=sub), SECRET, algorithm="HS256"))


def test_issuer_is_checked_when_configured():
    verifier = auth.Verifier(auth.VerifierSettings(SECRET, None, "https://proj.supabase.co/auth/v1"))
    good = auth.mint_token(USER, None, SECRET, issuer="https://proj.supabase.co/auth/v1")
    assert verifier.verify(good)["sub"] == USER
    refused(verifier, auth.mint_token(USER, None, SECRET, issuer="https://evil.example/auth/v1"))
    refused(verifier, auth.mint_token(USER, None, SECRET))


def b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_alg_none_is_refused():
    unsigned = f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims())}."
    refused(hs_verifier(), unsigned)
    # Same claims, header claiming HS256 but no signature at all.
    refused(hs_verifier(), f"{b64({'alg': 'HS256', 'typ': 'JWT'})}.{b64(claims())}.")


@pytest.mark.parametrize("token", ["", "abc", "a.b", "a.b.c", "...", "x" * 20_000,
                                   "eyJhbGciOiJIUzI1NiJ9.bm90IGpzb24.c2ln"])
def test_malformed_tokens_are_refused(token):
    refused(hs_verifier(), token)


def test_payload_tampering_breaks_the_signature():
    header, _, sig = auth.mint_token(USER, None, SECRET).split(".")
    forged = f"{header}.{b64(claims(sub=str(uuid.uuid4())))}.{sig}"
    refused(hs_verifier(), forged)


@pytest.mark.parametrize("value", [None, "", "   ", "Basic dXNlcjpwdw==", "Bearer", "Bearer a b",
                                   "Token abc.def.ghi"])
def test_authorization_header_must_be_bearer(value):
    with pytest.raises(Unauthorized) as info:
        auth.bearer_token(value)
    assert answer_for(info.value).headers(info.value)["WWW-Authenticate"].startswith("Bearer")


def test_bearer_scheme_is_case_insensitive():
    assert auth.bearer_token("bearer abc.def.ghi") == "abc.def.ghi"
    assert auth.bearer_token("Bearer   abc.def.ghi  ") == "abc.def.ghi"


def test_missing_token_has_no_error_code_in_challenge():
    # RFC 6750 §3.1: a request without credentials gets a bare challenge.
    with pytest.raises(Unauthorized) as info:
        auth.authenticate(None)
    assert "error=" not in answer_for(info.value).headers(info.value)["WWW-Authenticate"]


def test_no_secret_and_no_jwks_is_a_config_error_naming_the_variable(monkeypatch):
    monkeypatch.delenv("CRM_JWT_SECRET", raising=False)
    monkeypatch.delenv("CRM_JWKS_URL", raising=False)
    with pytest.raises(ConfigError, match="CRM_JWT_SECRET"):
        auth.get_verifier()


def test_process_verifier_follows_the_environment(monkeypatch):
    monkeypatch.delenv("CRM_JWKS_URL", raising=False)
    monkeypatch.setenv("CRM_JWT_SECRET", SECRET)
    token = auth.mint_token(USER, None, SECRET)
    assert auth.verify_token(token)["sub"] == USER
    monkeypatch.setenv("CRM_JWT_SECRET", "rotated-secret-that-is-long-enough-for-hs256-0000")
    with pytest.raises(Unauthorized):
        auth.verify_token(token)


# -- JWKS (ES256 / RS256) ---------------------------------------------------------------------------

class KeyServer:
    """A JWKS endpoint on 127.0.0.1 whose key set can be swapped (a rotation) and which counts hits."""

    def __init__(self):
        self.keys: list[dict] = []
        self.hits = 0
        self.status = 200
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                server.hits += 1
                body = json.dumps({"keys": server.keys}).encode()
                self.send_response(server.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/auth/v1/.well-known/jwks.json"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


class SigningKey:
    def __init__(self, kind: str, kid: str | None = None):
        self.kid = kid or f"{kind}-{uuid.uuid4().hex[:8]}"
        if kind == "ec":
            self.private = ec.generate_private_key(ec.SECP256R1())
            self.alg = "ES256"
            self.jwk = ECAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        else:
            self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            self.alg = "RS256"
            self.jwk = RSAAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        self.jwk.update({"kid": self.kid, "alg": self.alg, "use": "sig"})

    def sign(self, payload: dict | None = None, *, kid: str | None = None, alg: str | None = None) -> str:
        return jwt.encode(payload or claims(), self.private, algorithm=alg or self.alg,
                          headers={"kid": kid or self.kid})

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(serialization.Encoding.PEM,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.fixture(scope="module")
def ec_key():
    return SigningKey("ec")


@pytest.fixture(scope="module")
def rsa_key():
    return SigningKey("rsa")


@pytest.fixture
def key_server():
    server = KeyServer()
    yield server
    server.close()


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def jwks_verifier(url: str, *, secret: str | None = None, clock=None, **cache_kw) -> auth.Verifier:
    cache = auth.JwksCache(url, clock=clock or Clock(), **cache_kw)
    return auth.Verifier(auth.VerifierSettings(secret, url, None), jwks=cache)


def test_es256_and_rs256_tokens_from_the_jwks_verify_with_one_fetch(key_server, ec_key, rsa_key):
    key_server.keys = [ec_key.jwk, rsa_key.jwk]
    verifier = jwks_verifier(key_server.url)
    assert verifier.verify(ec_key.sign())["sub"] == USER
    assert verifier.verify(rsa_key.sign())["sub"] == USER
    assert verifier.verify(ec_key.sign())["sub"] == USER
    assert key_server.hits == 1


def test_asymmetric_tokens_are_checked_for_claims_too(key_server, ec_key):
    key_server.keys = [ec_key.jwk]
    verifier = jwks_verifier(key_server.url)
    refused(verifier, ec_key.sign(claims(aud="anon")))
    refused(verifier, ec_key.sign(claims(exp=int(time.time()) - 3600)))
    refused(verifier, ec_key.sign(claims(role="service_role")))


def test_unknown_kid_triggers_one_refresh_and_finds_the_rotated_key(key_server, ec_key):
    clock = Clock()
    key_server.keys = [ec_key.jwk]
    verifier = jwks_verifier(key_server.url, clock=clock, min_refresh_interval=10)
    assert verifier.verify(ec_key.sign())["sub"] == USER
    assert key_server.hits == 1

    rotated = SigningKey("ec")
    key_server.keys = [ec_key.jwk, rotated.jwk]
    clock.now += 11
    assert verifier.verify(rotated.sign())["sub"] == USER
    assert key_server.hits == 2
    assert verifier.verify(rotated.sign())["sub"] == USER
    assert verifier.verify(ec_key.sign())["sub"] == USER
    assert key_server.hits == 2


def test_unknown_kids_do_not_hammer_the_key_server(key_server, ec_key):
    clock = Clock()
    key_server.keys = [ec_key.jwk]
    verifier = jwks_verifier(key_server.url, clock=clock, min_refresh_interval=10)
    stranger = SigningKey("ec")
    clock.now += 60
    assert "unknown key" in refused(verifier, stranger.sign()).detail
    assert key_server.hits == 1
    for _ in range(5):
        refused(verifier, stranger.sign(kid=f"made-up-{uuid.uuid4().hex}"))
    assert key_server.hits == 1
    clock.now += 11
    refused(verifier, stranger.sign())
    assert key_server.hits == 2


def test_forged_token_naming_a_published_kid_is_refused(key_server, ec_key, rsa_key):
    key_server.keys = [ec_key.jwk, rsa_key.jwk]
    verifier = jwks_verifier(key_server.url)
    forger = SigningKey("ec", kid=ec_key.kid)
    assert "signature" in refused(verifier, forger.sign()).detail
    # An ES256 token naming the RSA key's kid: the key, not the token, fixes the algorithm.
    assert "algorithm" in refused(verifier, forger.sign(kid=rsa_key.kid)).detail


def test_public_key_used_as_hmac_secret_is_refused(key_server, rsa_key):
    # The classic algorithm confusion: HS256 "signed" with the published public key.
    key_server.keys = [rsa_key.jwk]
    payload = b64({"alg": "HS256", "typ": "JWT", "kid": rsa_key.kid}) + "." + b64(claims())
    sig = base64.urlsafe_b64encode(hmac.new(rsa_key.public_pem(), payload.encode(), hashlib.sha256)
                                   .digest()).rstrip(b"=").decode()
    confused = f"{payload}.{sig}"
    refused(jwks_verifier(key_server.url), confused)
    refused(jwks_verifier(key_server.url, secret=SECRET), confused)


def test_hs256_and_jwks_together(key_server, ec_key):
    key_server.keys = [ec_key.jwk]
    verifier = jwks_verifier(key_server.url, secret=SECRET)
    assert verifier.verify(auth.mint_token(USER, None, SECRET))["sub"] == USER
    assert verifier.verify(ec_key.sign())["sub"] == USER


def test_asymmetric_tokens_are_refused_without_a_jwks(ec_key):
    refused(hs_verifier(), ec_key.sign())


def test_hs256_tokens_are_refused_with_only_a_jwks(key_server, ec_key):
    key_server.keys = [ec_key.jwk]
    refused(jwks_verifier(key_server.url), auth.mint_token(USER, None, SECRET))


def test_token_without_kid_is_refused(key_server, ec_key):
    key_server.keys = [ec_key.jwk]
    token = jwt.encode(claims(), ec_key.private, algorithm="ES256")
    refused(jwks_verifier(key_server.url), token)


def test_symmetric_keys_in_the_jwks_are_ignored(key_server):
    key = "another-secret-that-is-long-enough-for-hs256-xyz"
    key_server.keys = [{"kty": "oct", "kid": "k1", "k": base64.urlsafe_b64encode(key.encode()).decode()}]
    token = jwt.encode(claims(), key, algorithm="HS256", headers={"kid": "k1"})
    refused(jwks_verifier(key_server.url), token)


def test_unreachable_key_server_is_503_not_401(key_server, ec_key):
    key_server.status = 500
    with pytest.raises(ServiceUnavailable) as info:
        jwks_verifier(key_server.url).verify(ec_key.sign())
    assert answer_for(info.value).status == 503
    assert info.value.code == "jwks_unavailable"
    assert "Retry-After" in answer_for(info.value).headers(info.value)


def test_cached_keys_survive_a_key_server_outage(key_server, ec_key):
    clock = Clock()
    key_server.keys = [ec_key.jwk]
    verifier = jwks_verifier(key_server.url, clock=clock, ttl=60)
    assert verifier.verify(ec_key.sign())["sub"] == USER
    key_server.close()
    clock.now += 120
    assert verifier.verify(ec_key.sign())["sub"] == USER


def test_jwks_url_from_the_environment(monkeypatch, key_server, rsa_key):
    key_server.keys = [rsa_key.jwk]
    monkeypatch.delenv("CRM_JWT_SECRET", raising=False)
    monkeypatch.setenv("CRM_JWKS_URL", key_server.url)
    assert auth.verify_token(rsa_key.sign())["sub"] == USER
