"""The ledger as the service uses it: append, checkpoint, prove, verify.

Checkpoints are taken every ``every`` entries or when the newest one is older than
``max_age_seconds`` (``maybe_checkpoint``); a receipt is an entry with an inclusion proof
against a signed checkpoint that covers it.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from service.core import errors, merkle
from service.core.chain import Entry, chain_hash
from service.ledger.checkpoint import Checkpoint, open_note_by, public_pem, sign
from service.ledger.verify import Report, verify
from service.store import ledger as store
from service.store.database import DatabaseInfo


@dataclass(frozen=True)
class Receipt:
    entry: Entry
    checkpoint_note: str
    tree_size: int
    inclusion_proof: list[bytes]

    def to_dict(self) -> dict[str, Any]:
        e = self.entry
        return {
            "entry": e.to_dict(),
            "leaf_index": e.seq - 1,
            "tree_size": self.tree_size,
            "inclusion_proof": [base64.b64encode(p).decode() for p in self.inclusion_proof],
            "checkpoint": self.checkpoint_note,
        }


class Ledger:
    def __init__(
        self,
        db: DatabaseInfo,
        key: Ed25519PrivateKey,
        origin: str,
        key_name: str,
        every: int = 100,
        max_age_seconds: float = 60.0,
        retired: Sequence[tuple[str, Ed25519PublicKey]] = (),
    ) -> None:
        """``retired``: (name, public key) of earlier signing keys, whose checkpoints still verify."""
        self.db, self.key, self.origin, self.key_name = db, key, origin, key_name
        self.every, self.max_age_seconds, self.retired = every, max_age_seconds, tuple(retired)

    @property
    def public_key_pem(self) -> str:
        return public_pem(self.key)

    def append(self, items: Sequence[tuple[str, Mapping[str, Any]]]) -> list[Entry]:
        with self.db.connect() as conn:
            out = store.append(conn, items)
        self.maybe_checkpoint()
        return out

    def checkpoint(self) -> tuple[int, bytes, str] | None:
        """Sign the current tree head if it grew since the last checkpoint."""
        with self.db.connect() as conn:
            size = store.size(conn)
            last = store.latest_checkpoint(conn)
            if size == 0 or (last and last[0] >= size):
                return (last[0], last[1], last[2]) if last else None
            root = merkle.root(store.leaf_hashes(conn, size))
            note = sign(Checkpoint(self.origin, size, root), self.key_name, self.key)
            store.add_checkpoint(conn, size, root, note)
            return size, root, note

    def maybe_checkpoint(self) -> None:
        """Sign when ``every`` entries are unsigned, or when the oldest unsigned one is older than
        ``max_age_seconds`` (the worker calls this periodically, so a quiet ledger gets signed too)."""
        with self.db.connect() as conn:
            size = store.size(conn)
            last = store.latest_checkpoint(conn)
            covered = last[0] if last else 0
            age = store.unsigned_age_seconds(conn, covered)
        if size - covered >= self.every or (age is not None and age >= self.max_age_seconds):
            self.checkpoint()

    def receipt(self, seq: int) -> Receipt:
        """An entry with its inclusion proof against the newest checkpoint (one is signed if needed)."""
        cp = self.checkpoint()
        with self.db.connect() as conn:
            entry = store.entry(conn, seq)
            if cp is None or entry is None or cp[0] < seq:
                raise errors.NotFound(f"no ledger entry {seq}")
            proof = merkle.inclusion_proof(seq - 1, store.leaf_hashes(conn, cp[0]))
        return Receipt(entry, cp[2], cp[0], proof)

    def proofs_about(self, request_id: str) -> dict[str, Any]:
        """A request's entries, each checked as a verifier would: its chain hash recomputed, its
        inclusion proof against the newest checkpoint, whose signature is checked with the
        public key (or a retired one)."""
        cp = self.checkpoint()
        with self.db.connect() as conn:
            entries = store.entries_about(conn, request_id)
            leaves = store.leaf_hashes(conn, cp[0]) if cp else []
        signed: Checkpoint | None = None
        if cp is not None:
            try:
                signed = open_note_by(cp[2], [(self.key_name, self.key.public_key()), *self.retired])
            except ValueError:
                signed = None
        rows = []
        for e in entries:
            chained = chain_hash(e.prev_hash, e.seq, e.kind, e.body, e.created_at) == e.row_hash
            included = None
            if cp is not None and signed is not None and e.seq <= cp[0]:
                proof = merkle.inclusion_proof(e.seq - 1, leaves)
                included = merkle.verify_inclusion(e.seq - 1, cp[0], merkle.leaf_hash(e.row_hash), proof, signed.root)
            rows.append(
                {
                    "seq": e.seq,
                    "kind": e.kind,
                    "created_at": e.created_at,
                    "row_hash": e.row_hash.hex(),
                    "chain_ok": chained,
                    "inclusion_ok": included,
                }
            )
        checkpoint = None
        if cp is not None:
            checkpoint = {
                "size": cp[0],
                "root": cp[1].hex(),
                "key_name": self.key_name,
                "origin": self.origin,
                "signature_ok": signed is not None and signed.root == cp[1] and signed.size == cp[0],
            }
        return {"entries": rows, "checkpoint": checkpoint}

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        with self.db.connect() as conn:
            if not 1 <= old_size <= new_size <= store.size(conn):
                raise errors.InvalidInput("need 1 <= old_size <= new_size <= the ledger's size")
            return merkle.consistency_proof(old_size, store.leaf_hashes(conn, new_size))

    def latest_checkpoint(self) -> tuple[int, bytes, str]:
        cp = self.checkpoint()
        if cp is None:
            raise errors.NotFound("the ledger is empty")
        return cp

    def verify(self) -> Report:
        with self.db.connect() as conn:
            return verify(
                list(store.entries(conn)), store.checkpoints(conn), self.key.public_key(), self.key_name, self.retired
            )
