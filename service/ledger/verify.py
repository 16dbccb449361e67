"""Offline verification of a ledger: chain, checkpoints (roots and signatures), from any source."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from service.core import merkle
from service.core.chain import Entry, first_break
from service.ledger.checkpoint import open_note_by


@dataclass(frozen=True)
class Report:
    entries: int
    checkpoints: int
    first_bad_seq: int | None = None
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.first_bad_seq is None and not self.reason


def verify(
    entries: Iterable[Entry],
    checkpoints: Sequence[tuple[int, bytes, str]],
    public: Ed25519PublicKey,
    key_name: str,
    retired: Sequence[tuple[str, Ed25519PublicKey]] = (),
) -> Report:
    """Recompute the chain and every checkpoint's root; check every checkpoint signature (by the
    signing key, or by a ``retired`` (name, public key) for checkpoints signed before a rotation)."""
    listed = list(entries)
    broken = first_break(listed)
    if broken is not None:
        return Report(len(listed), len(checkpoints), broken.seq, broken.reason)
    leaves = [merkle.leaf_hash(e.row_hash) for e in listed]
    verified = 0  # entries covered by the last checkpoint that matched
    for size, root, note in sorted(checkpoints):
        try:
            cp = open_note_by(note, [(key_name, public), *retired])
        except ValueError as e:
            return Report(len(listed), len(checkpoints), None, f"checkpoint {size}: {e}")
        if (cp.size, cp.root) != (size, root):
            return Report(len(listed), len(checkpoints), None, f"checkpoint {size}: stored root differs from its note")
        if size > len(leaves):
            return Report(len(listed), len(checkpoints), len(leaves) + 1, f"checkpoint {size} covers missing entries")
        if merkle.root(leaves[:size]) != root:
            # The chain was rewritten consistently: the first changed entry lies after the last
            # checkpoint that still matches.
            return Report(
                len(listed),
                len(checkpoints),
                verified + 1,
                f"entries {verified + 1}..{size} differ from the signed checkpoint {size}",
            )
        verified = size
    return Report(len(listed), len(checkpoints))


def export_lines(entries: Iterable[Entry], checkpoints: Iterable[tuple[int, bytes, str]]) -> Iterator[str]:
    for e in entries:
        yield json.dumps({"type": "entry", **e.to_dict()}, sort_keys=True)
    for size, root, note in checkpoints:
        yield json.dumps({"type": "checkpoint", "size": size, "root": base64.b64encode(root).decode(), "note": note})


def read_export(path: Path) -> tuple[list[Entry], list[tuple[int, bytes, str]]]:
    entries: list[Entry] = []
    cps: list[tuple[int, bytes, str]] = []
    for line in path.read_text().splitlines():
        d = json.loads(line)
        if d["type"] == "entry":
            entries.append(
                Entry(
                    d["seq"],
                    d["kind"],
                    d["body"],
                    d["created_at"],
                    bytes.fromhex(d["prev_hash"]),
                    bytes.fromhex(d["row_hash"]),
                )
            )
        else:
            cps.append((d["size"], base64.b64decode(d["root"]), d["note"]))
    return entries, cps
