"""What a replica serves: one PEFT adapter directory, or a routing table of shard adapters.

A routing table is a directory ``routing.json`` + ``shard-KK/`` (one clean adapter per live
shard). Its content hash is the sha256 of the canonical manifest, which names every part's own
content hash, so checking the parts against the manifest and hashing the manifest checks the
whole. Light to import (no torch): reconcilers use it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from shards.lineage import adapter_sha256

ROUTING_FILE = "routing.json"
ROUTING_FORMAT = "lethe-routing/1"


@dataclass(frozen=True)
class Part:
    key: str  # "" for a lone adapter, "s<k>" for shard k of a routing table
    path: Path
    sha256: str


def is_routing(served_dir: Path) -> bool:
    return (served_dir / ROUTING_FILE).is_file()


def manifest_sha256(manifest: Mapping[str, object]) -> str:
    return hashlib.sha256(json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def parts(served_dir: Path, *, check: bool = True) -> list[Part]:
    """The adapters ``served_dir`` serves, in routing order; ``check`` re-hashes each part against
    the manifest (raises ValueError on a mismatch)."""
    if not is_routing(served_dir):
        return [Part("", served_dir, adapter_sha256(served_dir) if check else "")]
    manifest = json.loads((served_dir / ROUTING_FILE).read_text())
    if manifest.get("format") != ROUTING_FORMAT:
        raise ValueError(f"{served_dir}: unknown routing format {manifest.get('format')!r}")
    out = []
    for entry in manifest["shards"]:
        path = served_dir / entry["dir"]
        if path.parent != served_dir:
            raise ValueError(f"{served_dir}: part {entry['dir']!r} is outside the table")
        if check and adapter_sha256(path) != entry["sha256"]:
            raise ValueError(f"{served_dir}: shard {entry['shard']} does not match its content hash")
        out.append(Part(f"s{entry['shard']}", path, entry["sha256"]))
    return out


def served_sha256(served_dir: Path) -> str:
    """Content hash of what ``served_dir`` serves (an adapter's, or a checked routing table's)."""
    if not is_routing(served_dir):
        return adapter_sha256(served_dir)
    parts(served_dir)  # every part matches the manifest
    return manifest_sha256(json.loads((served_dir / ROUTING_FILE).read_text()))


def pick(names: list[str] | tuple[str, ...], key: str) -> str:
    """The adapter one request goes to: stable for a key (same prompt or user, same shard, on every
    replica and gateway), spread evenly across keys."""
    if len(names) == 1:
        return names[0]
    return names[int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % len(names)]
