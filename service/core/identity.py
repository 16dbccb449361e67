"""Subject identities → internal subject ids (keyed HMAC); the raw identity is never stored."""

from __future__ import annotations

import hashlib
import hmac

from service.core.errors import InvalidIdentity

# OpenDSR-style identity types accepted at the edge; anything else is rejected.
IDENTITY_TYPES = frozenset({"email", "person", "phone", "controller_customer_id"})
MAX_IDENTITY_LENGTH = 320


def canonical_identity(raw: str) -> str:
    """``type:value`` with the type lower-cased and the value normalised for its type."""
    kind, sep, value = raw.partition(":")
    kind, value = kind.strip().lower(), value.strip()
    if not sep or not value:
        raise InvalidIdentity("an identity must look like 'type:value'")
    if kind not in IDENTITY_TYPES:
        raise InvalidIdentity(f"unknown identity type {kind!r}; expected one of {sorted(IDENTITY_TYPES)}")
    if len(value) > MAX_IDENTITY_LENGTH:
        raise InvalidIdentity(f"identity value longer than {MAX_IDENTITY_LENGTH} characters")
    if kind in ("email", "person"):
        value = value.lower()
    elif kind == "phone":
        value = "".join(ch for ch in value if ch.isdigit() or ch == "+")
    return f"{kind}:{value}"


def subject_hash(key: bytes, raw_identity: str) -> bytes:
    """The internal subject id: HMAC-SHA256 under the server key of the canonical identity."""
    return hmac.new(key, canonical_identity(raw_identity).encode(), hashlib.sha256).digest()


def content_hash(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()
