"""Materialised adapters: the hash computed in memory is the hash of the files written, and what a
process remembers is used only while the files are unchanged."""

from __future__ import annotations

import json
import os
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
    materialise._verified.items.clear()
    yield
    materialise._verified.items.clear()


@settings(max_examples=15, deadline=None)
@given(
    layers=st.integers(2, 5),
    rank=st.integers(1, 4),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
    prefixes=st.lists(st.integers(1, 2), min_size=1, max_size=3),
    serve=st.sampled_from([None, torch.bfloat16, torch.float32]),
)
def test_the_hash_made_in_memory_is_the_hash_of_the_files_written(
    tmp_path_factory, layers, rank, dtype, prefixes, serve
):
    root = tmp_path_factory.mktemp("m")
    parts = []
    for i, prefix in enumerate(prefixes):
        unit = write_adapter(root, layers, rank, dtype, seed=i)
        t = materialise.truncate(unit, prefix, layers, 2, root / "out", f"s{i:02d}-p{prefix}")
        assert t.sha256 == adapter_sha256(t.path) and t.path.name.endswith(t.sha256[:12])
        parts.append(t.path)
    merged = materialise.merge(parts, root / "out", "merged", serve)
    assert merged.sha256 == adapter_sha256(merged.path) and merged.path.name.endswith(merged.sha256[:12])
    materialise._verified.items.clear()  # another process builds the same bytes and the same name
    again = materialise.merge(parts, root / "out", "merged", serve)
    assert again == merged


def test_a_reused_part_is_neither_read_nor_hashed_again(tmp_path, monkeypatch):
    unit = write_adapter(tmp_path, 4, 2, torch.float32, seed=0)
    first = materialise.truncate(unit, 1, 4, 2, tmp_path / "out", "s00-p1")

    def no(*_a, **_k):
        raise AssertionError("read or hashed again")

    monkeypatch.setattr(materialise, "adapter_sha256", no)
    monkeypatch.setattr(materialise, "load_file", no)
    assert materialise.truncate(tmp_path / "gone", 1, 4, 2, tmp_path / "out", "s00-p1") == first
    merged = materialise.merge([first.path], tmp_path / "out", "merged")
    assert merged.sha256 != first.sha256  # rank and scaling differ: a new adapter, built from memory


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
