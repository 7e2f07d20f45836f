"""Split a SQL file into statements, so a failing migration names the statement that failed.

Hand-written rather than a dependency because it needs exactly Postgres's lexical rules for the
few constructs that can hide a `;` (comments, quoted strings and identifiers, E'' escapes,
dollar quoting) and nothing else; sqlparse mis-splits some dollar-quoted bodies and is far slower.
SQL-standard `begin atomic … end` bodies are not supported: write functions with `as $$ … $$`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_DOLLAR_TAG = re.compile(r"\$([A-Za-z_][A-Za-z_0-9]*)?\$")


@dataclass(frozen=True)
class Statement:
    sql: str
    line: int  # 1-based line of the statement's first character in the file

    @property
    def summary(self) -> str:
        for text_line in self.sql.splitlines():
            text_line = text_line.strip()
            if text_line and not text_line.startswith("--"):
                return text_line if len(text_line) <= 100 else text_line[:97] + "..."
        return self.sql[:100]


def split(text: str) -> list[Statement]:
    statements: list[Statement] = []
    i, n = 0, len(text)
    significant_start: int | None = None  # first non-blank, non-comment character of the statement

    def emit(end: int) -> None:
        nonlocal significant_start
        if significant_start is not None:
            body = text[significant_start:end].strip()
            if body:
                statements.append(Statement(body, text.count("\n", 0, significant_start) + 1))
        significant_start = None

    while i < n:
        ch = text[i]
        if ch == "-" and text.startswith("--", i):
            end = text.find("\n", i)
            i = n if end == -1 else end + 1
            continue
        if ch == "/" and text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
            if depth:
                raise ValueError(f"unterminated /* comment starting on line {text.count(chr(10), 0, i) + 1}")
            continue
        if ch.isspace():
            i += 1
            continue
        if significant_start is None:
            significant_start = i
        if ch == ";":
            emit(i)
            i += 1
            continue
        if ch == "'":
            escapes = i > 0 and text[i - 1] in "eE" and (i < 2 or not (text[i - 2].isalnum() or text[i - 2] == "_"))
            i = _skip_quoted(text, i, "'", backslash=escapes)
            continue
        if ch == '"':
            i = _skip_quoted(text, i, '"', backslash=False)
            continue
        if ch == "$":
            m = _DOLLAR_TAG.match(text, i)
            # `$1` parameters and identifiers containing `$` are not quotes.
            if m and not (i > 0 and (text[i - 1].isalnum() or text[i - 1] == "_")):
                tag = m.group(0)
                close = text.find(tag, m.end())
                if close == -1:
                    raise ValueError(f"unterminated {tag} quote starting on line {text.count(chr(10), 0, i) + 1}")
                i = close + len(tag)
                continue
        i += 1
    emit(n)
    return statements


def _skip_quoted(text: str, i: int, quote: str, *, backslash: bool) -> int:
    n = len(text)
    j = i + 1
    while j < n:
        c = text[j]
        if backslash and c == "\\":
            j += 2
            continue
        if c == quote:
            if j + 1 < n and text[j + 1] == quote:
                j += 2
                continue
            return j + 1
        j += 1
    raise ValueError(f"unterminated {quote} quote starting on line {text.count(chr(10), 0, i) + 1}")
