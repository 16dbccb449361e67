"""Materialised adapters: the hash computed in memory is the hash of the files written, and what a
process remembers is used only while the files are unchanged."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from shards import materialise
from shards.lineage import adapter_sha256

MODULES = {"self_attn.q_proj": (8, 6), "mlp.down_proj": (6, 8)}


def write_adapter(
    root: Path, layers: int, rank: int, dtype: torch.dtype, seed: int, shapes: dict[str, tuple[int, int]] = MODULES
) -> Path:
    """A PEFT-shaped LoRA adapter directory over ``layers`` layers (``shapes``: module → in, out)."""
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(layers):
        for mod, (n_in, n_out) in shapes.items():
            name = f"base_model.model.model.layers.{layer}.{mod}"
            tensors[f"{name}.lora_A.weight"] = torch.randn(rank, n_in, generator=g).to(dtype)
            tensors[f"{name}.lora_B.weight"] = torch.randn(n_out, rank, generator=g).to(dtype)
    d = root / f"unit-{seed}"
    d.mkdir(parents=True)
    save_file(tensors, str(d / materialise.WEIGHTS))
    targets = sorted(m.rsplit(".", 1)[-1] for m in shapes)
    cfg = {"r": rank, "lora_alpha": 2 * rank, "target_modules": targets, "use_rslora": False}
    (d / materialise.CONFIG).write_text(json.dumps(cfg))
    return d


@pytest.fixture(autouse=True)
def forget_between_tests():
    forget_all()
    yield
    forget_all()


def forget_all() -> None:
    materialise.forget_memory()


@settings(max_examples=15, deadline=None)
@given(
    layers=st.integers(2, 5),
    rank=st.integers(1, 4),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
    rounds=st.lists(st.lists(st.integers(0, 2), min_size=3, max_size=3), min_size=1, max_size=4),
    serve=st.sampled_from([None, torch.bfloat16, torch.float32]),
)
def test_a_warm_worker_publishes_what_a_fresh_process_would(tmp_path_factory, layers, rank, dtype, rounds, serve):
    """Rounds of cuts (each shard's prefix; 0: dead): the hash made in memory is the hash of the
    files written, and the merge a worker makes from what it remembers is the merge a fresh
    process makes from the files."""
    root = tmp_path_factory.mktemp("m")
    units = [write_adapter(root, layers, rank, dtype, seed=k) for k in range(3)]
    for n, prefixes in enumerate(rounds):
        parts = []
        for k, prefix in enumerate(prefixes):
            if prefix == 0:
                continue
            t = materialise.truncate(units[k], prefix, layers, 2, root / "out", f"s{k:02d}-p{prefix}")
            assert t.sha256 == adapter_sha256(t.path) and t.path.name.endswith(t.sha256[:12])
            parts.append(t.path)
        if not parts:
            continue
        merged = materialise.merge(parts, root / "out", f"merged{n}", serve)
        assert merged.sha256 == adapter_sha256(merged.path) and merged.path.name.endswith(merged.sha256[:12])
        warm = (materialise._verified.items.copy(), materialise._last_merge.pairs)
        forget_all()
        cold = materialise.merge(parts, root / "cold", f"merged{n}", serve)
        assert cold.sha256 == merged.sha256
        materialise._verified.items, materialise._last_merge.pairs = warm  # the worker goes on


@pytest.mark.parametrize("earlier_stage", [False, True])
def test_a_cut_remerges_only_the_modules_of_the_cut_block(tmp_path, earlier_stage):
    units = [write_adapter(tmp_path, 4, 2, torch.float32, seed=k) for k in range(2)]
    parts = [materialise.truncate(u, 2, 4, 2, tmp_path / "out", f"s{k:02d}-p2") for k, u in enumerate(units)]
    materialise.merge([p.path for p in parts], tmp_path / "out", "m1", torch.bfloat16)
    before = dict(materialise._last_merge.pairs)
    source = units[1]
    if earlier_stage:  # the cut unit's deepest live stage is now an earlier file: the same bits, other objects
        source = tmp_path / "stage-00"
        shutil.copytree(units[1], source)
    cut = materialise.truncate(source, 1, 4, 2, tmp_path / "out", "s01-p1")  # shard 1 loses layers 0-1
    materialise.merge([parts[0].path, cut.path], tmp_path / "out", "m2", torch.bfloat16)
    after = materialise._last_merge.pairs
    assert before.keys() == after.keys()
    same = {k[0] for k in after if after[k][1] is before[k][1] and after[k][2] is before[k][2]}
    assert same == {f"base_model.model.model.layers.{i}.{m}" for i in (2, 3) for m in MODULES}


def test_a_reused_part_is_neither_read_nor_hashed_again(tmp_path, monkeypatch):
    unit = write_adapter(tmp_path, 4, 2, torch.float32, seed=0)
    first = materialise.truncate(unit, 1, 4, 2, tmp_path / "out", "s00-p1")
    calls: list[str] = []
    read, digest = materialise.load_file, materialise.adapter_digest
    monkeypatch.setattr(materialise, "load_file", lambda *a, **k: calls.append("read") or read(*a, **k))
    monkeypatch.setattr(materialise, "adapter_digest", lambda *a, **k: calls.append("hash") or digest(*a, **k))
    assert materialise.truncate(tmp_path / "gone", 1, 4, 2, tmp_path / "out", "s00-p1") == first
    assert calls == []
    merged = materialise.merge([first.path], tmp_path / "out", "merged")
    assert calls == ["hash"]  # the merged adapter's, from memory: the part was not read again
    assert merged.sha256 == adapter_sha256(merged.path) != first.sha256


def test_a_part_changed_on_disk_is_hashed_again_and_rebuilt(tmp_path):
    unit = write_adapter(tmp_path, 4, 2, torch.float32, seed=0)
    first = materialise.truncate(unit, 2, 4, 2, tmp_path / "out", "s00-p2")
    weights = first.path / materialise.WEIGHTS
    tensors = load_file(str(weights))
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 1  # same size, other bytes, a new file in its place
    save_file(tensors, str(tmp_path / "altered"))
    os.replace(tmp_path / "altered", weights)
    rebuilt = materialise.truncate(unit, 2, 4, 2, tmp_path / "out", "s00-p2")
    assert rebuilt == first and adapter_sha256(rebuilt.path) == first.sha256
    merged = materialise.merge([rebuilt.path], tmp_path / "out", "merged")
    torch.testing.assert_close(
        load_file(str(merged.path / materialise.WEIGHTS))[name], load_file(str(unit / materialise.WEIGHTS))[name]
    )


def test_what_a_process_remembers_is_bounded(tmp_path):
    for i in range(materialise._verified.size + 3):
        unit = write_adapter(tmp_path, 2, 1, torch.float32, seed=i)
        materialise.truncate(unit, 1, 2, 2, tmp_path / "out", f"s{i:02d}-p1")
    assert len(materialise._verified.items) == materialise._verified.size


def test_a_restarted_worker_shares_the_published_parts_with_the_units(tmp_path):
    units = [write_adapter(tmp_path, 4, 2, torch.float32, seed=k) for k in range(2)]
    for k, u in enumerate(units):
        materialise.truncate(u, 2, 4, 2, tmp_path / "out", f"s{k:02d}-p2")
    forget_all()  # restarted: the parts are on disk, nothing in memory
    for u in units:
        materialise.remember(u)
    parts = [materialise.truncate(u, 2, 4, 2, tmp_path / "out", f"s{k:02d}-p2") for k, u in enumerate(units)]
    for u, part in zip(units, parts, strict=True):
        unit_t, part_t = materialise._verified.get(u)[0], materialise._verified.get(part.path)[0]
        assert part_t.keys() == unit_t.keys() and all(part_t[k] is unit_t[k] for k in part_t)
    materialise.merge([p.path for p in parts], tmp_path / "out", "m1", torch.bfloat16)
    before = dict(materialise._last_merge.pairs)
    cut = materialise.truncate(units[0], 1, 4, 2, tmp_path / "out", "s00-p1")
    materialise.merge([cut.path, parts[1].path], tmp_path / "out", "m2", torch.bfloat16)
    after = materialise._last_merge.pairs
    same = {k[0] for k in after if after[k][1] is before[k][1]}
    assert same == {f"base_model.model.model.layers.{i}.{m}" for i in (2, 3) for m in MODULES}
