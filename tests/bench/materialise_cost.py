"""What a rollout's materialise step costs: one shard cut, the served merged adapter rebuilt.

Adapters of Gemma 3 270M's LoRA shape (r 16 on the seven projections of 18 layers, fp32 as trained,
4 blocks), random weights (the cost does not depend on them), m shards. Each round cuts one
shard's prefix by one block and materialises what the rollout serves: every live shard's
truncated adapter (the uncut ones already published; the cut one from its deepest live stage's
file, as the planner names it) and their merge in bf16. "Cold": a process
that remembers nothing (every part read and hashed from disk, as a restarted worker does);
"warm": the worker that built the last rollout.

    .venv/bin/python tests/bench/materialise_cost.py [--shards 4 --rounds 6]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from shards import materialise  # noqa: E402
from tests.unit.test_materialise import write_adapter  # noqa: E402

GEMMA = {  # projection: (in, out) for Gemma 3 270M
    "self_attn.q_proj": (640, 1024),
    "self_attn.k_proj": (640, 256),
    "self_attn.v_proj": (640, 256),
    "self_attn.o_proj": (1024, 640),
    "mlp.gate_proj": (640, 2048),
    "mlp.up_proj": (640, 2048),
    "mlp.down_proj": (2048, 640),
}
LAYERS, BLOCKS = 18, 4


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=6)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="lethe-mat-"))
    units = [write_adapter(root, LAYERS, 16, torch.float32, k, GEMMA) for k in range(args.shards)]
    # a unit's deepest live stage after a cut is an earlier stage's file (the frozen blocks' bits)
    stages = [[shutil.copytree(u, root / f"{u.name}-stage-{i}") for i in range(BLOCKS)] for u in units]
    times: dict[str, list[float]] = {"cold": [], "warm": []}
    for mode in ("cold", "warm"):
        out = root / mode
        prefix = [BLOCKS] * args.shards
        materialise.forget_memory()
        build(stages, prefix, out, "r0")  # the rollout before the first deletion
        for r in range(args.rounds):
            prefix[r % args.shards] = max(1, prefix[r % args.shards] - 1)
            if mode == "cold":
                materialise.forget_memory()
            t = time.perf_counter()
            build(stages, prefix, out, f"r{r + 1}")
            times[mode].append(time.perf_counter() - t)
    mb = sum(f.stat().st_size for f in (root / "warm").glob("merged-*/*.safetensors")) / 2**20 / (args.rounds + 1)
    print(f"\n{args.shards} shards, Gemma 3 270M LoRA shape (r 16, 18 layers), merged bf16 ≈ {mb:.0f} MB")
    print("\n| worker | materialise p50 s | max s | × warm (p50) |\n|---|---:|---:|---:|")
    warm = statistics.median(times["warm"])
    for mode, ts in times.items():
        print(f"| {mode} | {statistics.median(ts):.3f} | {max(ts):.3f} | {statistics.median(ts) / warm:.1f} |")


def build(stages: list[list[Path]], prefix: list[int], out: Path, name: str) -> materialise.Materialised:
    parts = [
        materialise.truncate(st[p - 1], p, LAYERS, BLOCKS, out, f"s{k:02d}-p{p}-v0")
        for k, (st, p) in enumerate(zip(stages, prefix, strict=True))
    ]
    return materialise.merge([p.path for p in parts], out, f"merged-{name}", torch.bfloat16)


if __name__ == "__main__":
    main()
