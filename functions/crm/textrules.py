"""The text rule set, mirrored from the database (`hidden.text_normalize`, `hidden.text_problem`,
`hidden.text_max` in db/migrations): what is refused, what is collapsed, how long each kind may be.

The database holds these rules for every writer (CHECKs and normalising triggers); this module
applies the same ones early so a caller gets a field error naming the field.
tests/integration/test_text_rules.py feeds one corpus of nasty strings to both and asserts they agree.

Below the rules, the field types every request body uses them through (pydantic: `text(kind)`,
`identifier(kind)`, `choice(options)`, `Name`, `Notes`, …) and `field_errors`, the 422's list of
bad fields. Contact fields (phone, email, the customer block) are in `crm.contacts`.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Annotated, Any

from pydantic import BeforeValidator, ValidationError
from pydantic_core import PydanticCustomError

from crm.errors import FieldError

#: Length caps per kind (characters), as `hidden.text_max`.
LIMITS = {
    "name": 200, "city": 100, "title": 300, "label": 100, "item_id": 100, "size": 20,
    "external_ref": 200, "note": 2000, "notes": 20000, "description": 20000,
}
MULTILINE = frozenset({"note", "notes", "description"})

_WS = "\t\n\x0b\x0c\r \xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_HORIZONTAL_WS = "\t \xa0\u1680\u2000-\u200a\u202f\u205f\u3000"
_INVISIBLE = ("\xad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u2060-\u2064"
              "\u206a-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0")
# C0/C1 controls other than whitespace, bidi embeddings/overrides/isolates; lone surrogates and NUL
# (which the database cannot even store).
_FORBIDDEN = re.compile("[\x00-\x08\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_VISIBLE = re.compile(f"[^{_WS}{_INVISIBLE}]")
_WS_RUN = re.compile(f"[{_WS}]+")
_LINE_BREAK = re.compile("[\x0b\x0c\r\u2028\u2029]")
_TRAILING = re.compile(f"[{_HORIZONTAL_WS}]+(?=\n|\\Z)")
_ENDS = re.compile(f"^[{_WS}]+|[{_WS}]+\\Z")

MESSAGES = {
    "invalid_characters": "must not contain control characters or bidi overrides",
    "blank": "must contain visible characters",
    "too_long": "must be at most {limit} characters",
}


def normalize(value: str, kind: str) -> str:
    """The stored form: NFC, whitespace collapsed (single-line) or line ends tidied (multiline)."""
    value = unicodedata.normalize("NFC", value)
    if kind in MULTILINE:
        value = _LINE_BREAK.sub("\n", value.replace("\r\n", "\n"))
        return _ENDS.sub("", _TRAILING.sub("", value))
    return _WS_RUN.sub(" ", value).strip(" ")


def problem(value: str, kind: str) -> str | None:
    """Why a (normalised) text of that kind is refused, or None: as `hidden.text_problem`."""
    if _FORBIDDEN.search(value):
        return "invalid_characters"
    if not _VISIBLE.search(value):
        return "blank"
    if len(value) > LIMITS[kind]:
        return "too_long"
    return None


def message(code: str, kind: str) -> str:
    return MESSAGES[code].format(limit=LIMITS[kind])


# -- field types ----------------------------------------------------------------------------------
# Each takes the raw JSON value and returns the normalised one or raises with a message written for
# the person who built the form. Strings are trimmed; free text is cut at its cap (a 10 KiB title is
# still a booking), identifiers, URLs and contact data are refused when too long (cutting them would
# store something else).


def fail(kind: str, message: str) -> PydanticCustomError:
    """A field error of `kind` (its code) with a message for the person who built the form."""
    return PydanticCustomError(kind, message)


def clean(value: Any, kind: str) -> str:
    """The text in its stored form, or a field error when the text rules refuse it."""
    if not isinstance(value, str):
        raise fail("wrong_type", "must be a string")
    cleaned = normalize(value, kind)
    if cleaned and (code := problem(cleaned, kind)) and code != "too_long":
        raise fail(code, message(code, kind))
    return cleaned


def text(kind: str):
    """Free text of a kind: normalised, cut at the kind's cap (a 10 KiB title is still a booking),
    '' → None; refused when the text rules refuse it (controls, bidi overrides, nothing visible)."""

    def check(value: Any) -> str | None:
        if value is None:
            return None
        cleaned = normalize(clean(value, kind)[:LIMITS[kind]], kind)
        return cleaned or None

    return BeforeValidator(check)


def identifier(kind: str):
    """Catalog ids and sizes: a string or a whole number, refused when longer than the kind's cap."""

    def check(value: Any) -> str | None:
        if value is None:
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise fail("wrong_type", "must be a string or a whole number")
        cleaned = clean(value, kind)
        if cleaned and problem(cleaned, kind) == "too_long":
            raise fail("too_long", message("too_long", kind))
        return cleaned or None

    return BeforeValidator(check)


def choice(options: tuple[str, ...]):
    """One of `options`, case-insensitive; '' → None."""

    def check(value: Any) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str):
            raise fail("wrong_type", f"must be one of: {', '.join(options)}")
        picked = value.strip().lower()
        if not picked:
            return None
        if picked not in options:
            raise fail("choice_invalid", f"must be one of: {', '.join(options)}")
        return picked

    return BeforeValidator(check)


Name = Annotated[str | None, text("name")]
City = Annotated[str | None, text("city")]
Title = Annotated[str | None, text("title")]
Label = Annotated[str | None, text("label")]
Notes = Annotated[str | None, text("note")]


_MESSAGES = {
    "missing": "is required",
    "model_type": "must be an object",
    "model_attributes_type": "must be an object",
    "dict_type": "must be an object",
    "string_type": "must be a string",
    "list_type": "must be a list",
}


def field_errors(exc: ValidationError) -> list[FieldError]:
    """Pydantic's errors as `{field: "customer.phone", message}`, one per bad field, in body order.

    Checks spanning several fields are raised by their model with the field's name (relative to
    that model) in the error's context, so they point at a field too.
    """
    out: list[FieldError] = []
    seen: set[str] = set()
    for err in exc.errors(include_url=False):
        loc = [str(part) for part in err["loc"]]
        extra = (err.get("ctx") or {}).get("field")
        if extra:
            loc += str(extra).split(".")
        path = ".".join(loc) or "body"
        if path in seen:
            continue
        seen.add(path)
        out.append(FieldError(path, _MESSAGES.get(err["type"], err["msg"])))
    return out
