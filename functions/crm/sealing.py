"""Secrets at rest (SPEC 5, 9, 10): AES-256-GCM under `CRM_SECRETS_KEY`, which the database never sees.

A sealed value is `b"v1" || nonce (12 bytes) || ciphertext+tag`; the associated data binds it to
the row it belongs to (e.g. the secret's id), so a ciphertext copied onto another row does not open.
`CRM_SECRETS_KEY` is the base64 of 32 random bytes (`crm dev` generates one into `CRM_DATA_DIR`).
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from crm import config
from crm.errors import ConfigError

KEY_VARIABLE = "CRM_SECRETS_KEY"
_VERSION = b"v1"
_NONCE = 12


class SealError(Exception):
    """A sealed value that does not open under this key (wrong key, another row, tampered)."""


def generate_key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


def parse_key(raw: str) -> bytes:
    text = raw.strip().replace("-", "+").replace("_", "/")  # standard or URL-safe alphabet
    try:
        key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != 32:
        raise ConfigError(f"{KEY_VARIABLE} must be the base64 of 32 random bytes"
                          " (e.g. `python -c \"import base64,os;print(base64.b64encode(os.urandom(32)).decode())\"`)")
    return key


def key_from_env() -> bytes:
    """`CRM_SECRETS_KEY`; without `DATABASE_URL` (the embedded dev server) the one `crm dev` generated."""
    raw = config.env(KEY_VARIABLE)
    if raw is None and config.env("DATABASE_URL") is None:
        from crm.tools.embedded import dev_secrets

        raw = dev_secrets().get(KEY_VARIABLE)
    if raw is None:
        raise ConfigError(f"{KEY_VARIABLE} is not set: this setting is required outside `crm dev`")
    return parse_key(raw)


def check_key_if_set() -> None:
    """For jobs that need the key only once an integration exists: a set key must be well-formed."""
    raw = config.env(KEY_VARIABLE)
    if raw is not None:
        parse_key(raw)


def check_key() -> None:
    """For jobs that always open or seal secrets: the key must be there (ConfigError naming it)."""
    key_from_env()


class SecretBox:
    def __init__(self, key: bytes):
        self._aead = AESGCM(key)

    @classmethod
    def from_env(cls) -> SecretBox:
        return cls(key_from_env())

    def seal(self, plaintext: str, context: str) -> bytes:
        nonce = os.urandom(_NONCE)
        return _VERSION + nonce + self._aead.encrypt(nonce, plaintext.encode(), context.encode())

    def open(self, sealed: bytes, context: str) -> str:
        sealed = bytes(sealed)
        if not sealed.startswith(_VERSION) or len(sealed) < len(_VERSION) + _NONCE + 16:
            raise SealError("not a sealed value of this version")
        nonce = sealed[len(_VERSION):len(_VERSION) + _NONCE]
        try:
            return self._aead.decrypt(nonce, sealed[len(_VERSION) + _NONCE:], context.encode()).decode()
        except InvalidTag:
            raise SealError(f"does not open under {KEY_VARIABLE} (another key, row or tampered)") from None
