"""Contact fields as every writer normalises them before `private.find_or_create_customer`: phone
numbers to E.164 in the organization's country, emails trimmed and lower-cased, names cleaned.

Two strictnesses of the same rules. `phone_e164`, `email`, `name` are lenient: a provider's odd
value (an anonymous caller, a mistyped form field) becomes None and the event (webhooks in, imports,
pulls) goes on with what is usable. `parse_phone`, `parse_email` and the `CustomerIn` block are
strict: a request (the booking intake, the machine API) gets a field error naming the bad field.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Annotated, Any

import phonenumbers
from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from crm.textrules import City, Name, choice, clean, fail

CHANNELS = ("phone", "whatsapp", "telegram", "viber", "sms", "email")
EMAIL_LOCAL = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+\Z")
DOMAIN_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")

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


def parse_phone(value: Any, country: str | None) -> str | None:
    """E.164, read in `country` (the org's default) unless the number carries its own prefix;
    without a country a local number is returned as given (the caller reports the missing org)."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise fail("wrong_type", "must be a phone number string")
    raw = clean(value, "label")
    if not raw:
        return None
    if len(raw) > 40:
        raise fail("phone_invalid", "is not a valid phone number")
    try:
        number = phonenumbers.parse(raw, country)
    except phonenumbers.NumberParseException as exc:
        if country is None and exc.error_type == exc.INVALID_COUNTRY_CODE:
            return raw  # a local number cannot be judged without the org, which is reported
        number = None
    if number is None or not phonenumbers.is_valid_number(number):
        where = f" for country {country}" if country else ""
        raise fail("phone_invalid", f"is not a valid phone number{where}")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def parse_email(value: Any) -> str | None:
    """Trimmed and lower-cased (stored so, unique per org); IDN domains in their ASCII form."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise fail("wrong_type", "must be an email address")
    value = value.strip()
    if not value:
        return None
    if len(value) > 254 or value.count("@") != 1:
        raise fail("email_invalid", "is not a valid email address")
    local, domain = value.rsplit("@", 1)
    try:
        domain = domain.rstrip(".").encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise fail("email_invalid", "has an invalid domain") from None
    labels = domain.split(".")
    if (not local or len(local) > 64 or not EMAIL_LOCAL.match(local) or local.startswith(".")
            or local.endswith(".") or ".." in local or len(labels) < 2
            or not all(DOMAIN_LABEL.match(label) for label in labels) or labels[-1].isdigit()):
        raise fail("email_invalid", "is not a valid email address")
    address = f"{local}@{domain}".lower()
    if len(address) > 254:
        raise fail("email_invalid", "is not a valid email address")
    return address


Email = Annotated[str | None, BeforeValidator(parse_email)]


class CustomerIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    full_name: Name
    phone: str | None = None
    email: Email = None
    preferred_channel: Annotated[str | None, choice(CHANNELS)] = None
    city: City = None

    @field_validator("full_name")
    @classmethod
    def _name_required(cls, value: str | None) -> str:
        if not value:
            raise fail("required", "is required")
        return value

    @field_validator("phone", mode="before")
    @classmethod
    def _phone(cls, value: Any, info: ValidationInfo) -> str | None:
        """E.164, parsed in the org's default country (`context["country"]`)."""
        return parse_phone(value, (info.context or {}).get("country"))

    @model_validator(mode="after")
    def _contact_required(self) -> CustomerIn:
        if self.phone is None and self.email is None:
            raise PydanticCustomError("contact_required", "give a phone number or an email address",
                                      {"field": "phone"})
        return self
