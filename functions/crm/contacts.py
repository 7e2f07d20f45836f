"""Contact fields as every inbound source normalises them before `private.find_or_create_customer`:
phone numbers to E.164 in the organization's country, emails trimmed and lower-cased, names cleaned.

Lenient by design: a provider's odd value (an anonymous caller, a mistyped form field) becomes None
and the event goes on with what is usable; the booking intake reports bad fields to its caller instead.
"""

from __future__ import annotations

import re
import unicodedata

import phonenumbers

_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s.]+(\.[^@\s.]+)+$")


def phone_e164(raw: object, country: str | None) -> str | None:
    """`raw` as E.164 (`+4915123456789`), read in `country` (ISO alpha-2) unless it carries its own
    prefix (`+49…`, `0049…`); None when it is not a valid number."""
    if not isinstance(raw, str) or not raw.strip() or len(raw) > 40:
        return None
    try:
        number = phonenumbers.parse(raw.strip(), (country or "").upper() or None)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def email(raw: object) -> str | None:
    """Trimmed and lower-cased, as stored (unique per org); None when it does not look like an address."""
    if not isinstance(raw, str):
        return None
    value = raw.strip().lower()
    if len(value) > 254 or not _EMAIL.match(value):
        return None
    return value


def name(raw: object, limit: int = 200) -> str | None:
    """Visible text only (no control or format characters), whitespace collapsed, at most `limit`."""
    if not isinstance(raw, str):
        return None
    visible = "".join(ch for ch in unicodedata.normalize("NFC", raw)
                      if not unicodedata.category(ch).startswith("C"))
    value = " ".join(visible.split())[:limit].strip()
    return value or None
