"""Servable adapters from trained units: truncation at a clean prefix, and aggregation over shards.

- ``truncate``: a PEFT adapter directory holding only the blocks before the prefix
  (``layers_to_transform`` lists their layers; the other layers carry no LoRA at all), so what
  is served cannot contain a deactivated block, whatever the loader does with absent modules.
- ``merge``: the average of the live shards' deltas as one LoRA: ΔW = Σₖ sₖ·Bₖ·Aₖ / m is exactly
  a rank m·r LoRA with A = [A₁; …; A_m] and B = [s₁B₁/m, …, s_mB_m/m] at scaling 1.
- ``routing``: the alternative that sends each request to one live shard's adapter: a directory
  of the live shards' adapters and a manifest (shards.served), hashed as a whole.

Every output directory is new and named by its content hash: never changed in place. A process
keeps what it wrote or read and hashed (``_Verified``), so a deletion that cuts one shard neither
re-reads nor re-hashes the other shards' adapters; a file changed on disk since is read again.
"""

from __future__ import annotations

import json
import shutil
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from shards import blocks, served
from shards.lineage import adapter_digest

WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"


@dataclass(frozen=True)
class Materialised:
    path: Path
    sha256: str
    layers: tuple[int, ...]
    rank: int


Stamp = tuple[int, ...]


def _stamp(adapter_dir: Path) -> Stamp:
    """Identity of an adapter's two files as they are now: any rewrite, replacement or touch changes
    it (inode, size, modification and change times)."""
    out: list[int] = []
    for f in (WEIGHTS, CONFIG):
        st = (adapter_dir / f).stat()
        out += [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
    return tuple(out)


class _Verified:
    """Adapters this process has read or written, with their tensors and content hash, while their
    files are unchanged (least recently used first out)."""

    def __init__(self, size: int = 12) -> None:
        self.size = size
        self.lock = threading.Lock()
        self.items: OrderedDict[Path, tuple[Stamp, dict[str, torch.Tensor], dict[str, Any], str | None]] = OrderedDict()

    def get(self, adapter_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], str | None] | None:
        """Tensors, config and content hash (None: not hashed yet) if the files are as they were."""
        key = adapter_dir.resolve()
        try:
            stamp = _stamp(key)
        except OSError:
            return None
        with self.lock:
            hit = self.items.get(key)
            if hit is None or hit[0] != stamp:
                return None
            self.items.move_to_end(key)
            return hit[1], hit[2], hit[3]

    def put(self, adapter_dir: Path, tensors: dict[str, torch.Tensor], cfg: dict[str, Any], digest: str | None) -> None:
        key = adapter_dir.resolve()
        with self.lock:
            self.items[key] = (_stamp(key), tensors, cfg, digest)
            self.items.move_to_end(key)
            while len(self.items) > self.size:
                self.items.popitem(last=False)


_verified = _Verified()
_HASHER = ThreadPoolExecutor(1, thread_name_prefix="materialise-hash")


class _LastMerge:
    """Each module's merged pair from the last merge, with the tensors it was made of: a deletion
    that cuts one shard's block leaves every other block's modules as they were. An input is the
    same if it is the same object (held here, so alive: an identity cannot be reused) or has the
    same bits (a cut shard's part is read from an earlier stage's file, whose frozen blocks hold
    the same bits); inputs are never modified."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pairs: dict[tuple[str, Any], tuple[tuple[Any, ...], torch.Tensor, torch.Tensor]] = {}

    def get(self, mod: str, context: Any, inputs: tuple[Any, ...]) -> tuple[torch.Tensor, torch.Tensor] | None:
        with self.lock:
            hit = self.pairs.get((mod, context))
        if hit is None or len(hit[0]) != len(inputs) or not all(map(_same, hit[0], inputs)):
            return None
        return hit[1], hit[2]

    def replace(self, made: dict[tuple[str, Any], tuple[tuple[Any, ...], torch.Tensor, torch.Tensor]]) -> None:
        with self.lock:
            self.pairs = made


_last_merge = _LastMerge()


def _same(x: torch.Tensor | None, y: torch.Tensor | None) -> bool:
    if x is y:
        return True
    if x is None or y is None or x.dtype != y.dtype or x.shape != y.shape:
        return False
    return torch.equal(x.contiguous().view(torch.uint8), y.contiguous().view(torch.uint8))  # bits, not values


def forget_memory() -> None:
    """Drop what this process remembers (it then reads and hashes as a restarted worker does)."""
    with _verified.lock:
        _verified.items.clear()
    _last_merge.replace({})


def _read(adapter_dir: Path, *, hashed: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, Any], str | None]:
    """An adapter's tensors, config and (``hashed``) content hash, read once while its files are
    unchanged (callers never modify the tensors: they are shared)."""
    hit = _verified.get(adapter_dir)
    if hit is not None and (hit[2] is not None or not hashed):
        return hit
    tensors = load_file(str(adapter_dir / WEIGHTS))
    cfg = json.loads((adapter_dir / CONFIG).read_text())
    digest = adapter_digest(tensors, cfg) if hashed else None
    _verified.put(adapter_dir, tensors, cfg, digest)
    return tensors, cfg, digest


def _scaling(cfg: dict[str, Any]) -> float:
    r, alpha = float(cfg["r"]), float(cfg["lora_alpha"])
    return alpha / (r**0.5) if cfg.get("use_rslora") else alpha / r


def _publish(
    tensors: dict[str, torch.Tensor], cfg: dict[str, Any], out_root: Path, prefix: str, *, remember: bool = True
) -> Materialised:
    """Write to a temporary directory while hashing in memory (the writer runs outside the GIL),
    then rename to ``<prefix>-<hash12>`` (idempotent). ``remember``: keep the tensors for the next
    merge (a shard's part)."""
    out_root.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous() for k, v in sorted(tensors.items())}
    tmp = out_root / f".tmp-{prefix}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    hashing = _HASHER.submit(adapter_digest, tensors, cfg)
    save_file(tensors, str(tmp / WEIGHTS), metadata={"format": "pt"})
    (tmp / CONFIG).write_text(json.dumps(cfg, indent=1, sort_keys=True))
    digest = hashing.result()
    final = out_root / f"{prefix}-{digest[:12]}"
    if final.exists():
        shutil.rmtree(tmp)
    else:
        tmp.rename(final)
        if remember:
            _verified.put(final, tensors, json.loads(json.dumps(cfg)), digest)
    layers = tuple(cfg.get("layers_to_transform") or ())
    return Materialised(final, digest, layers, cfg["r"])


def _published(out_root: Path, prefix: str) -> Materialised | None:
    """The one directory ``_publish`` made for ``prefix``, if it is there and intact."""
    found = sorted(out_root.glob(f"{prefix}-*")) if out_root.exists() else []
    if len(found) != 1 or not (found[0] / WEIGHTS).exists() or not (found[0] / CONFIG).exists():
        return None
    _, cfg, digest = _read(found[0], hashed=True)
    assert digest is not None
    if not found[0].name.endswith(f"-{digest[:12]}"):  # altered since: built again, in its place
        shutil.rmtree(found[0])
        return None
    return Materialised(found[0], digest, tuple(cfg.get("layers_to_transform") or ()), cfg["r"])


def truncate(
    adapter_dir: Path, prefix: int, num_layers: int, num_blocks: int, out_root: Path, name: str
) -> Materialised:
    """The adapter with blocks ≥ ``prefix`` removed. ``prefix`` must be ≥ 1 (0 means a dead shard).

    ``name`` must say which unit version and prefix it is: a directory already published under it
    is reused (a version's blocks before a prefix never change), so a deletion that cuts one shard
    rebuilds only that shard's adapter, not every live shard's."""
    if not 1 <= prefix <= num_blocks:
        raise ValueError(f"prefix must be in 1..{num_blocks}; a shard at 0 serves no adapter")
    if (done := _published(out_root, name)) is not None:
        _share(done, adapter_dir, prefix, num_layers, num_blocks)
        return done
    tensors, cfg, _ = _read(adapter_dir)
    kept = _kept(tensors, prefix, num_layers, num_blocks)
    layers = sorted({blocks.layer_of(k) for k in kept} - {None})  # type: ignore[type-var]
    cfg = {**cfg, "layers_to_transform": layers, "layers_pattern": "layers"}
    return _publish(kept, cfg, out_root, name)


def _kept(tensors: dict[str, torch.Tensor], prefix: int, num_layers: int, num_blocks: int) -> dict[str, torch.Tensor]:
    return {
        k: v
        for k, v in tensors.items()
        if (b := blocks.block_of_param(k, num_layers, num_blocks)) is not None and b < prefix
    }


def remember(adapter_dir: Path) -> None:
    """Read a unit's adapter into this process's memory (a starting worker, before ``truncate``)."""
    _read(adapter_dir)


def _share(part: Materialised, unit_dir: Path, prefix: int, num_layers: int, num_blocks: int) -> None:
    """A published part read from disk holds its own copies of the unit's tensors: once the unit
    is in memory too and the part's content hash checks out on the unit's tensors, keep the unit's
    (one copy, and the merge recognises the modules a later cut of this shard leaves unchanged)."""
    unit, held = _verified.get(unit_dir), _verified.get(part.path)
    if unit is None or held is None:
        return
    kept = _kept(unit[0], prefix, num_layers, num_blocks)
    if kept.keys() == held[0].keys() and all(kept[k] is held[0][k] for k in kept):
        return  # shared already
    if adapter_digest(kept, held[1]) == part.sha256:
        _verified.put(part.path, kept, held[1], part.sha256)


def serving_dtype(adapter_dir: Path) -> torch.dtype:
    """The dtype vLLM serves the adapter's base model in (and casts a loaded LoRA's weights to);
    float32 when the base model cannot be read."""
    from shards.modelinfo import BaseModelError, profile

    base = json.loads((adapter_dir / CONFIG).read_text()).get("base_model_name_or_path")
    try:
        dtype = profile(Path(base)).dtype if base else "float32"
    except BaseModelError:
        dtype = "float32"
    return torch.bfloat16 if dtype == "bfloat16" else torch.float32


def merge(adapters: Sequence[Path], out_root: Path, name: str, dtype: torch.dtype | None = None) -> Materialised:
    """One LoRA equal to the average of the given (already truncated) shard adapters' deltas.

    ``dtype``: the tensors' dtype on disk (default: as trained). Written in the dtype the replicas
    cast to when loading (``serving_dtype``), the served weights are the same bits at half the
    bytes to write, hash, hash again on every replica and load."""
    if not adapters:
        raise ValueError("nothing to merge: every shard is dead")
    loaded = [_read(a) for a in adapters]
    m = len(loaded)
    ranks = {cfg["r"] for _, cfg, _ in loaded}
    if len(ranks) != 1:
        raise ValueError(f"shard adapters differ in rank: {sorted(ranks)}")
    r = ranks.pop()
    modules = sorted({k.rsplit(".lora_", 1)[0] for t, _, _ in loaded for k in t})
    # the scalings, their number and the dtype are the context; the parts' tensors the inputs
    context = (tuple(_scaling(cfg) / m for _, cfg, _ in loaded), str(dtype))
    merged: dict[str, torch.Tensor] = {}
    made: dict[tuple[str, Any], tuple[tuple[Any, ...], torch.Tensor, torch.Tensor]] = {}
    for mod in modules:
        ka, kb = f"{mod}.lora_A.weight", f"{mod}.lora_B.weight"
        inputs = tuple(x for t, _, _ in loaded for x in (t.get(ka), t.get(kb)))
        if (pair := _last_merge.get(mod, context, inputs)) is None:
            pair = _merge_module(ka, kb, [t for t, _, _ in loaded], context[0], dtype)
        merged[ka], merged[kb] = pair
        made[(mod, context)] = (inputs, *pair)
    _last_merge.replace(made)
    base_cfg = loaded[0][1]
    layers = sorted({blocks.layer_of(k) for k in merged} - {None})  # type: ignore[type-var]
    cfg = {
        **base_cfg,
        "r": m * r,
        "lora_alpha": m * r,
        "use_rslora": False,
        "layers_to_transform": layers,
        "layers_pattern": "layers",
    }
    return _publish(merged, cfg, out_root, name, remember=False)


def _merge_module(
    ka: str, kb: str, parts: list[dict[str, torch.Tensor]], scales: tuple[float, ...], dtype: torch.dtype | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One module's A = [A₁; …; A_m] and B = [s₁B₁, …, s_mB_m]."""
    ref_a = next(t[ka] for t in parts if ka in t)
    ref_b = next(t[kb] for t in parts if kb in t)
    a_parts, b_parts = [], []
    for t, scale in zip(parts, scales, strict=True):
        if ka in t:
            a_parts.append(t[ka])
            b_parts.append(t[kb] * scale)
        else:  # this shard has no LoRA on the module (truncated there): a zero slot keeps ranks aligned
            a_parts.append(torch.zeros_like(ref_a))
            b_parts.append(torch.zeros_like(ref_b))
    return (
        torch.cat(a_parts, dim=0).to(dtype or a_parts[0].dtype),
        torch.cat(b_parts, dim=1).to(dtype or b_parts[0].dtype),
    )


def routing(adapters: Mapping[int, Materialised], out_root: Path, name: str) -> Materialised:
    """A routing table over the live shards' (already truncated) adapters, as one new directory."""
    if not adapters:
        raise ValueError("nothing to route to: every shard is dead")
    entries = [{"shard": k, "dir": f"shard-{k:02d}", "sha256": m.sha256} for k, m in sorted(adapters.items())]
    manifest = {"format": served.ROUTING_FORMAT, "rule": "sha256(user or prompt) mod len(shards)", "shards": entries}
    digest = served.manifest_sha256(manifest)
    out_root.mkdir(parents=True, exist_ok=True)
    final = out_root / f"{name}-{digest[:12]}"
    if not final.exists():
        tmp = out_root / f".tmp-{name}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for e, (_, m) in zip(entries, sorted(adapters.items()), strict=True):
            shutil.copytree(m.path, tmp / str(e["dir"]))
        (tmp / served.ROUTING_FILE).write_text(json.dumps(manifest, indent=1, sort_keys=True))
        tmp.rename(final)
    layers = tuple(sorted({x for m in adapters.values() for x in m.layers}))
    return Materialised(final, digest, layers, max(m.rank for m in adapters.values()))
