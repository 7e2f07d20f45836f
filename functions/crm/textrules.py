"""The text rule set, mirrored from the database (`hidden.text_normalize`, `hidden.text_problem`,
`hidden.text_max` in db/migrations): what is refused, what is collapsed, how long each kind may be.

The database holds these rules for every writer (CHECKs and normalising triggers); this module
applies the same ones early so a caller gets a field error naming the field.
tests/integration/test_text_rules.py feeds one corpus of nasty strings to both and asserts they agree.
"""

from __future__ import annotations

import re
import unicodedata

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

