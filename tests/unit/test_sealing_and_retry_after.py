"""Secrets at rest (AES-GCM under CRM_SECRETS_KEY) and Retry-After parsing."""

from __future__ import annotations

import base64
import email.utils

import pytest

from crm.errors import ConfigError
from crm.net import PostResult
from crm.sealing import SealError, SecretBox, generate_key, parse_key


def test_seal_round_trip_bound_to_its_row():
    box = SecretBox(parse_key(generate_key()))
    sealed = box.seal("whsec_abc", "webhook_secret:e1:s1")
    assert b"whsec_abc" not in sealed and sealed.startswith(b"v1")
    assert box.open(sealed, "webhook_secret:e1:s1") == "whsec_abc"
    assert box.seal("whsec_abc", "webhook_secret:e1:s1") != sealed  # a fresh nonce every time
    with pytest.raises(SealError):
        box.open(sealed, "webhook_secret:e2:s1")  # copied onto another row
    with pytest.raises(SealError):
        SecretBox(parse_key(generate_key())).open(sealed, "webhook_secret:e1:s1")  # another key
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(SealError):
        box.open(tampered, "webhook_secret:e1:s1")
    with pytest.raises(SealError):
        box.open(b"v1short", "x")


def test_key_forms():
    raw = bytes(range(32))
    assert parse_key(base64.b64encode(raw).decode()) == raw
    assert parse_key(base64.urlsafe_b64encode(raw).decode().rstrip("=")) == raw
    for bad in ("", "not base64!", base64.b64encode(b"short").decode()):
        with pytest.raises(ConfigError, match="CRM_SECRETS_KEY"):
            parse_key(bad)


@pytest.mark.parametrize(("header", "expected"), [
    ("7", 7.0), (" 120 ", 120.0), ("", None), ("soon", None), ("-3", None)])
def test_retry_after_seconds(header, expected):
    assert PostResult(429, 1, headers={"retry-after": header}).retry_after() == expected


def test_retry_after_http_date():
    now = 1_700_000_000.0
    header = email.utils.formatdate(now + 30, usegmt=True)
    assert PostResult(503, 1, headers={"retry-after": header}).retry_after(now=now) == pytest.approx(30, abs=1)
    past = email.utils.formatdate(now - 30, usegmt=True)
    assert PostResult(503, 1, headers={"retry-after": past}).retry_after(now=now) == 0.0
