"""The rules every string that crosses an edge must meet, one table for REST and gRPC alike.

Transports parse shapes (JSON, protobuf); the core checks meaning with these rules, so the same
input gets the same answer on either transport. A value breaking a rule is the client's fault
(``InvalidInput``: 400 / INVALID_ARGUMENT), never a server fault: PostgreSQL cannot store NUL
or a lone surrogate, and a control character in an id or URL is nobody's legitimate data.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from service.core.errors import InvalidInput

# In names, ids and URLs: C0 and C1 control characters (NUL included) and lone surrogates (not
# encodable as UTF-8). In free text (documents, records): NUL and lone surrogates only.
_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_FORBIDDEN_IN_TEXT = re.compile(r"[\x00\ud800-\udfff]")
IDENTIFIER = r"[A-Za-z0-9][A-Za-z0-9._:\-]*"  # record and document ids, as ingested


@dataclass(frozen=True)
class TextRule:
    field: str
    max_chars: int
    pattern: str | None = None  # the whole value must match
    min_chars: int = 1
    free_text: bool = False  # line breaks, tabs and the like allowed

    def check(self, value: object) -> str:
        if not isinstance(value, str):
            raise InvalidInput(f"{self.field}: a string is expected")
        if not self.min_chars <= len(value) <= self.max_chars:
            raise InvalidInput(f"{self.field}: {self.min_chars}..{self.max_chars} characters expected")
        bad = (_FORBIDDEN_IN_TEXT if self.free_text else _FORBIDDEN).search(value)
        if bad:
            what = "NUL and lone surrogates are" if self.free_text else "control characters and lone surrogates are"
            raise InvalidInput(f"{self.field}: {what} not allowed (U+{ord(bad.group()):04X} at position {bad.start()})")
        if self.pattern is not None and not re.fullmatch(self.pattern, value):
            raise InvalidInput(f"{self.field}: must match {self.pattern}")
        return value


RECORD_ID = TextRule("record_ids[]", 256, IDENTIFIER)
DOCUMENT_ID = TextRule("id", 256, IDENTIFIER)
IDENTITY_VALUE = TextRule("subject_identities[].identity_value", 320)
CALLBACK_URL = TextRule("status_callback_urls[]", 2048)
IDEMPOTENCY_KEY = TextRule("Idempotency-Key", 255, r"[\x21-\x7e]+")  # visible ASCII, as HTTP headers carry
CURSOR = TextRule("cursor", 64, r"[0-9a-f]{32}")
SOURCE = TextRule("source", 512)
TEXT = TextRule("text", 1 << 20, free_text=True)  # bytes are limited separately (max_record_bytes)


def problem(rule: TextRule, value: object) -> str | None:
    """What is wrong with ``value`` under ``rule``, or None (for checks that collect every problem)."""
    try:
        rule.check(value)
    except InvalidInput as e:
        return str(e)
    return None


def storable_json(text: str) -> str | None:
    """What PostgreSQL's jsonb refuses in a JSON document's text, or None."""
    if "\\u0000" in text:
        return "NUL characters are not allowed"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "lone surrogates are not allowed"
    return None


def callback_url(value: object) -> str:
    url = CALLBACK_URL.check(value)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises on a port that is not a number or out of range)
    except ValueError as e:
        raise InvalidInput(f"{CALLBACK_URL.field}: not a URL ({e})") from e
    if parts.scheme not in ("http", "https") or not parts.hostname or " " in url:
        raise InvalidInput(f"{CALLBACK_URL.field}: an absolute http(s) URL with a host is expected")
    return url


MAX_JSON_DEPTH = 32


def json_depth_problem(value: object, most: int = MAX_JSON_DEPTH) -> str | None:
    """Nesting deeper than ``most`` (counted without recursion: a hostile document is deep)."""
    todo: list[tuple[object, int]] = [(value, 1)]
    while todo:
        v, depth = todo.pop()
        if isinstance(v, dict | list):
            if depth > most:
                return f"nested deeper than {most} levels"
            todo.extend((x, depth + 1) for x in (v.values() if isinstance(v, dict) else v))
    return None


def page_size(limit: int, most: int) -> int:
    if not 1 <= limit <= most:
        raise InvalidInput(f"limit must be within 1..{most}")
    return limit
