"""Ledger entries, their canonical encoding and the hash chain (pure: no SQL).

row_hash(n) = SHA-256(row_hash(n−1) ‖ canonical(entry n)), with 32 zero bytes before the first
entry. The canonical form is JSON with sorted keys, no whitespace, UTF-8; it holds the sequence
number, the kind, the body and the time, so reordering, editing or deleting any row breaks the
chain at that row. Bodies carry hashes and identifiers only, never personal data.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

GENESIS = bytes(32)


@dataclass(frozen=True)
class Entry:
    seq: int
    kind: str
    body: Mapping[str, Any]
    created_at: str  # ISO 8601, UTC, as stored
    prev_hash: bytes
    row_hash: bytes

    def to_dict(self) -> dict[str, Any]:
        """The entry as JSON values (hashes in hex): receipts and exports."""
        return {
            "seq": self.seq,
            "kind": self.kind,
            "body": self.body,
            "created_at": self.created_at,
            "prev_hash": self.prev_hash.hex(),
            "row_hash": self.row_hash.hex(),
        }


def canonical(seq: int, kind: str, body: Mapping[str, Any], created_at: str) -> bytes:
    doc = {"seq": seq, "kind": kind, "body": body, "created_at": created_at}
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def chain_hash(prev_hash: bytes, seq: int, kind: str, body: Mapping[str, Any], created_at: str) -> bytes:
    return hashlib.sha256(prev_hash + canonical(seq, kind, body, created_at)).digest()


@dataclass(frozen=True)
class ChainError:
    seq: int
    reason: str


def first_break(entries: Iterable[Entry]) -> ChainError | None:
    """The first entry whose position, link or hash is wrong; None if the chain holds."""
    expected_seq, prev = 1, GENESIS
    for e in entries:
        if e.seq != expected_seq:
            return ChainError(expected_seq, f"entry {expected_seq} is missing or out of order (found seq {e.seq})")
        if e.prev_hash != prev:
            return ChainError(e.seq, "prev_hash does not link to the previous entry")
        if chain_hash(prev, e.seq, e.kind, e.body, e.created_at) != e.row_hash:
            return ChainError(e.seq, "row_hash does not match the entry's content")
        expected_seq, prev = expected_seq + 1, e.row_hash
    return None
