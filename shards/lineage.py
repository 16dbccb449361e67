"""Lineage of S3T artifacts: what every block was trained on, and content hashes of adapters.

A block's lineage is its ordered slice ids and the sha256 over the sorted content hashes of the
records it was trained on; it names no record text. The same JSON is kept beside the files and
in PostgreSQL.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from safetensors import safe_open


@dataclass(frozen=True)
class BlockLineage:
    block: int  # 0 = top
    layers: tuple[int, ...]
    slices: tuple[int, ...]  # σ₀..σ_block, in training order
    records_sha256: str
    records: int


@dataclass(frozen=True)
class UnitLineage:
    shard: int
    sequence: int
    order: tuple[int, ...]
    version: int
    stage: int  # last completed stage: blocks 0..stage are trained
    blocks: tuple[BlockLineage, ...]
    excluded: tuple[str, ...]  # record ids left out of this version (deleted before it was trained)
    adapter_sha256: str
    config: dict[str, Any]

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, indent=1)

    def write(self, path: Path) -> None:
        path.write_text(self.to_json())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> UnitLineage:
        blocks = tuple(
            BlockLineage(b["block"], tuple(b["layers"]), tuple(b["slices"]), b["records_sha256"], b["records"])
            for b in d["blocks"]
        )
        return cls(
            d["shard"],
            d["sequence"],
            tuple(d["order"]),
            d["version"],
            d["stage"],
            blocks,
            tuple(d["excluded"]),
            d["adapter_sha256"],
            d["config"],
        )

    @classmethod
    def read(cls, path: Path) -> UnitLineage:
        return cls.from_dict(json.loads(path.read_text()))


def records_sha256(content_hashes: Iterable[bytes]) -> str:
    h = hashlib.sha256()
    for c in sorted(content_hashes):
        h.update(c)
    return h.hexdigest()


def tensors_sha256(path: Path) -> str:
    """sha256 over a safetensors file's tensors in name order (independent of file layout)."""
    with safe_open(str(path), framework="pt") as st:
        return tensors_digest((name, st.get_tensor(name)) for name in sorted(st.keys()))


def tensors_digest(named: Iterable[tuple[str, Any]]) -> str:
    """``tensors_sha256`` of tensors in memory, given in name order: the hash of the file they are
    saved to, without reading it back."""
    import torch  # safe_open's "pt" framework loads it anyway; not at import (reconcilers import this)

    h = hashlib.sha256()
    for name, tensor in named:
        t = tensor.contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())  # raw bytes: any dtype (bf16 too), no copy
    return h.hexdigest()


def adapter_sha256(adapter_dir: Path) -> str:
    """Content hash of a PEFT adapter: its tensors plus the config fields that change its output."""
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    return _with_config(cfg, tensors_sha256(adapter_dir / "adapter_model.safetensors"))


def adapter_digest(tensors: Mapping[str, Any], cfg: Mapping[str, Any]) -> str:
    """``adapter_sha256`` of an adapter in memory (``cfg`` as it is written to JSON)."""
    return _with_config(json.loads(json.dumps(cfg)), tensors_digest(sorted(tensors.items())))


def _with_config(cfg: Mapping[str, Any], tensors_hex: str) -> str:
    keys = ("r", "lora_alpha", "use_rslora", "target_modules", "layers_to_transform", "rank_pattern", "alpha_pattern")
    meaning = {k: (sorted(cfg[k]) if isinstance(cfg.get(k), list) else cfg.get(k)) for k in keys}
    h = hashlib.sha256(json.dumps(meaning, sort_keys=True).encode())
    h.update(tensors_hex.encode())
    return h.hexdigest()
