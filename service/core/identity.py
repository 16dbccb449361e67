"""Subject identities → internal subject ids (keyed HMAC); the raw identity is never stored.

Normalised per type before hashing, so one person spelled two ways is one subject: emails
(surrounding space and case), phone numbers (punctuation, ``00`` for ``+``). Opaque ids
(``person``, ``controller_customer_id``) are the controller's keys and are kept byte-exact:
folding them would merge two different people.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import unicodedata

from service.core.errors import InvalidIdentity, InvalidInput
from service.core.validation import IDENTITY_VALUE

# OpenDSR-style identity types accepted at the edge; anything else is rejected.
IDENTITY_TYPES = frozenset({"email", "person", "phone", "controller_customer_id"})
MAX_IDENTITY_LENGTH = IDENTITY_VALUE.max_chars
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+")
_PHONE_PUNCTUATION = re.compile(r"[\s().\-/]")
_PHONE = re.compile(r"\+?[0-9]{3,15}")


def normalise(kind: str, value: str) -> str:
    """The value as hashed: the same for every spelling of one identity of this type."""
    try:
        IDENTITY_VALUE.check(value)
    except InvalidInput as e:
        raise InvalidIdentity(str(e)) from e
    if kind == "email":
        value = unicodedata.normalize("NFC", value.strip()).lower()
        if not _EMAIL.fullmatch(value):
            raise InvalidIdentity("an email identity looks like local@domain")
    elif kind == "phone":
        value = _PHONE_PUNCTUATION.sub("", value)
        value = "+" + value[2:] if value.startswith("00") else value
        if not _PHONE.fullmatch(value):
            raise InvalidIdentity("a phone identity is 3 to 15 digits, optionally after '+' (E.164)")
    return value


def canonical_identity(raw: str) -> str:
    """``type:value`` with the type lower-cased and the value normalised for its type."""
    kind, sep, value = raw.partition(":")
    kind = kind.strip().lower()
    if not sep or not value:
        raise InvalidIdentity("an identity must look like 'type:value'")
    if kind not in IDENTITY_TYPES:
        raise InvalidIdentity(f"unknown identity type {kind!r}; expected one of {sorted(IDENTITY_TYPES)}")
    return f"{kind}:{normalise(kind, value)}"


def subject_hash(key: bytes, raw_identity: str) -> bytes:
    """The internal subject id: HMAC-SHA256 under the server key of the canonical identity."""
    return hmac.new(key, canonical_identity(raw_identity).encode(), hashlib.sha256).digest()


def content_hash(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


def text_key(key: bytes, text: str) -> bytes:
    """A keyed hash of the text as a person reads it (NFKC, case-folded, whitespace collapsed):
    two records with equal keys hold the same personal data, whoever they are filed under."""
    normal = " ".join(unicodedata.normalize("NFKC", text).casefold().split())
    return hmac.new(key, b"text:" + normal.encode("utf-8"), hashlib.sha256).digest()
