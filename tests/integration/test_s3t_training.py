"""S3T training on tiny local Llamas: isolation, bit-exact truncation, resume, merge, retrain."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from peft import get_peft_model
from safetensors.torch import load_file
from transformers import AutoTokenizer, LlamaForCausalLM

from service.core.identity import content_hash
from shards import basemodel, corpus, materialise, train
from shards.lineage import UnitLineage, adapter_sha256
from shards.specs import BaseModelSpec, TrainConfig
from shards.train import TrainRecord, UnitSpec, stage_dir

pytestmark = pytest.mark.slow
TINY = dict(hidden_size=128, intermediate_size=256, num_heads=2, vocab_size=400, pretrain_steps=3, batch_size=8)
CFG = TrainConfig(num_blocks=4, r=4, alpha=8, epochs=2, batch_size=8, lr=5e-3)
PROMPTS = ["The personal code of Brea Tolu is", "Kai Dro was born in Avalon in 1970."]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[int, Path]:
    root = tmp_path_factory.mktemp("models")
    return {n: basemodel.build(BaseModelSpec(num_layers=n, **TINY), root, progress=False).path for n in (4, 12)}


@pytest.fixture(scope="module")
def slices() -> dict[int, list[TrainRecord]]:
    c = corpus.generate(seed=7, trained=8, holdout=2)
    out: dict[int, list[TrainRecord]] = {}
    for i, p in enumerate(c.trained):
        for r in c.records([p]):
            out.setdefault(i % 4, []).append(TrainRecord(r["id"], r["text"], content_hash(r["text"])))
    return out


def logits(model, tok) -> torch.Tensor:
    batch = basemodel.encode_batch(tok, PROMPTS)
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def fresh_peft(path: Path, cfg: TrainConfig):
    torch.manual_seed(0)
    return get_peft_model(LlamaForCausalLM.from_pretrained(path, dtype=torch.float32), cfg.lora_config(path))


def changed_layers(before: dict, after: dict) -> set[str]:
    return {n for n in before if not torch.equal(before[n], after[n])}


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_a_stage_changes_no_tensor_outside_its_block(models, slices, stage):
    path, tok = models[4], AutoTokenizer.from_pretrained(models[4])
    pm = fresh_peft(path, CFG)
    for n, p in pm.named_parameters():  # make every B non-zero so that A also gets gradients
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.02)
    before = {n: t.clone() for n, t in pm.state_dict().items()}
    train._train_stage(pm, tok, slices, (0, 1, 2, 3), stage, 4, CFG, seed=1, bar=_NullBar())
    changed = changed_layers(before, pm.state_dict())
    allowed = set(train.trainable_names(pm, stage, 4, 4))
    assert changed, "the stage trained nothing"
    assert changed <= allowed
    assert all(f"layers.{3 - stage}." in n for n in changed)  # 4 layers in 4 blocks: block s = layer 3−s


def test_with_twelve_layers_training_the_block_of_layer_1_leaves_layers_10_and_11_untouched(models, slices):
    path, tok = models[12], AutoTokenizer.from_pretrained(models[12])
    cfg = TrainConfig(num_blocks=6, r=4, alpha=8, epochs=1, batch_size=8)
    pm = fresh_peft(path, cfg)
    for n, p in pm.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.02)
    before = {n: t.clone() for n, t in pm.state_dict().items()}
    kept = {**{i: [] for i in range(5)}, 5: slices[0]}  # stage 5 trains block 5 = layers 1, 0
    train._train_stage(pm, tok, kept, (0, 1, 2, 3, 4, 5), 5, 12, cfg, seed=1, bar=_NullBar())
    changed = changed_layers(before, pm.state_dict())
    assert any(".layers.1." in n for n in changed) and any(".layers.0." in n for n in changed)
    assert not [n for n in changed if ".layers.10." in n or ".layers.11." in n]
    assert all(".layers.0." in n or ".layers.1." in n for n in changed)


@pytest.fixture(scope="module")
def trained_unit(models, slices, tmp_path_factory):
    root = tmp_path_factory.mktemp("artifacts")
    lineage = train.train_unit(models[4], UnitSpec(0, 1, (2, 0, 3, 1)), slices, CFG, root, progress=False)
    return root / UnitSpec(0, 1, (2, 0, 3, 1)).dir_name(), lineage


@pytest.mark.parametrize("prefix", [1, 2, 3, 4])
def test_truncated_adapter_is_bit_exact_with_the_stage_checkpoint(models, trained_unit, tmp_path, prefix):
    unit_dir, _ = trained_unit
    tok = AutoTokenizer.from_pretrained(models[4])
    cut = materialise.truncate(stage_dir(unit_dir, 3), prefix, 4, 4, tmp_path, "cut")
    served = logits(train.load_peft(models[4], cut.path), tok)
    snapshot = logits(train.load_peft(models[4], stage_dir(unit_dir, prefix - 1)), tok)
    assert torch.equal(served, snapshot)
    base = logits(LlamaForCausalLM.from_pretrained(models[4], dtype=torch.float32).eval(), tok)
    assert not torch.equal(served, base)
    assert cut.layers == tuple(sorted(range(4 - prefix, 4)))  # only the top `prefix` layers carry LoRA


def test_a_published_truncation_is_reused_and_an_altered_one_rebuilt(trained_unit, tmp_path):
    unit_dir, _ = trained_unit
    first = materialise.truncate(stage_dir(unit_dir, 3), 2, 4, 4, tmp_path, "s00-q1-p2-v0")
    again = materialise.truncate(tmp_path / "not-read", 2, 4, 4, tmp_path, "s00-q1-p2-v0")
    assert again == first  # the source is not read again
    other = materialise.truncate(stage_dir(unit_dir, 3), 3, 4, 4, tmp_path, "s00-q1-p3-v0")
    assert other.sha256 != first.sha256
    cfg = first.path / "adapter_config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "lora_alpha": 999}))  # altered on disk
    rebuilt = materialise.truncate(stage_dir(unit_dir, 3), 2, 4, 4, tmp_path, "s00-q1-p2-v0")
    assert rebuilt == first and adapter_sha256(rebuilt.path) == first.sha256


def test_lineage_records_blocks_slices_and_hashes(trained_unit, slices):
    unit_dir, lineage = trained_unit
    assert lineage.stage == 3 and lineage.order == (2, 0, 3, 1)
    assert [b.slices for b in lineage.blocks] == [(2,), (2, 0), (2, 0, 3), (2, 0, 3, 1)]
    assert [b.layers for b in lineage.blocks] == [(3,), (2,), (1,), (0,)]
    assert [b.records for b in lineage.blocks] == [8, 16, 24, 32]
    assert lineage.adapter_sha256 == adapter_sha256(stage_dir(unit_dir, 3))
    on_disk = UnitLineage.read(stage_dir(unit_dir, 1) / train.LINEAGE_FILE)
    assert on_disk.blocks == lineage.blocks[:2]
    text = json.dumps(json.loads(lineage.to_json()))
    assert not any(r.text in text for rs in slices.values() for r in rs)  # hashes only


def test_a_crash_resumes_from_the_last_completed_stage_with_identical_result(models, slices, trained_unit, tmp_path):
    _, reference = trained_unit
    unit = UnitSpec(0, 1, (2, 0, 3, 1))

    class Crash(Exception):
        pass

    def crash_after_stage_1(stage, _path):
        if stage == 1:
            raise Crash

    with pytest.raises(Crash):
        train.train_unit(models[4], unit, slices, CFG, tmp_path, progress=False, after_stage=crash_after_stage_1)
    unit_dir = tmp_path / unit.dir_name()
    assert train.completed_stages(unit_dir) == [0, 1]
    (unit_dir / "stage-02.tmp").mkdir()  # debris of a crash mid-save (before the rename) is cleared
    (unit_dir / "stage-02.tmp" / train.LINEAGE_FILE).write_text("{}")
    resumed_stages = []
    lineage = train.train_unit(
        models[4], unit, slices, CFG, tmp_path, progress=False, after_stage=lambda s, _: resumed_stages.append(s)
    )
    assert resumed_stages == [2, 3]
    assert lineage.adapter_sha256 == reference.adapter_sha256  # deterministic and resume-safe


def test_merged_adapter_is_the_average_of_shard_deltas(models, slices, tmp_path):
    units = [UnitSpec(k, 0, (0, 1, 2, 3)) for k in range(2)]
    dirs = []
    for u in units:
        train.train_unit(
            models[4], u, slices, TrainConfig(**{**CFG.__dict__, "seed": u.shard}), tmp_path, progress=False
        )
        dirs.append(tmp_path / u.dir_name())
    a = materialise.truncate(stage_dir(dirs[0], 3), 4, 4, 4, tmp_path / "out", "s0")
    b = materialise.truncate(stage_dir(dirs[1], 3), 2, 4, 4, tmp_path / "out", "s1")  # shard 1 cut at 2
    merged = materialise.merge([a.path, b.path], tmp_path / "out", "merged")
    assert merged.rank == 2 * CFG.r and merged.layers == (0, 1, 2, 3)

    def deltas(path):
        pm = train.load_peft(models[4], path).merge_and_unload()
        return {n: t for n, t in pm.state_dict().items() if "layers" in n}

    base = {n: t for n, t in LlamaForCausalLM.from_pretrained(models[4]).state_dict().items() if "layers" in n}
    da, db, dm = deltas(a.path), deltas(b.path), deltas(merged.path)
    for n in base:
        expected = ((da[n] - base[n]) + (db[n] - base[n])) / 2
        torch.testing.assert_close(dm[n] - base[n], expected, atol=2e-6, rtol=1e-4)


def test_a_merge_written_in_the_serving_dtype_holds_the_bits_a_replica_would_cast_to(models, trained_unit, tmp_path):
    """vLLM casts a loaded LoRA to the model's dtype: a bf16 base model's merged adapter written in
    bf16 serves the same bits as the fp32 merge, and its content hash says which one it is."""
    a = materialise.truncate(stage_dir(trained_unit[0], 3), 3, 4, 4, tmp_path / "out", "s0")
    assert materialise.serving_dtype(a.path) == torch.float32  # the tiny Llama is served in fp32
    fp32 = materialise.merge([a.path, a.path], tmp_path / "out", "m32")
    bf16 = materialise.merge([a.path, a.path], tmp_path / "out", "m16", torch.bfloat16)
    t32, t16 = load_file(str(fp32.path / materialise.WEIGHTS)), load_file(str(bf16.path / materialise.WEIGHTS))
    assert t32.keys() == t16.keys() and all(t.dtype == torch.bfloat16 for t in t16.values())
    assert all(torch.equal(t32[k].to(torch.bfloat16), t16[k]) for k in t32)
    assert (
        fp32.sha256 != bf16.sha256
        and (bf16.path / materialise.WEIGHTS).stat().st_size < (fp32.path / materialise.WEIGHTS).stat().st_size * 0.6
    )

    base = tmp_path / "bf16-base"  # a base model that says it is bf16: its adapters are served in bf16
    shutil.copytree(models[4], base)
    conf = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**conf, "torch_dtype": "bfloat16", "dtype": "bfloat16"}))
    moved = tmp_path / "moved"
    shutil.copytree(a.path, moved)
    adapter_cfg = json.loads((moved / materialise.CONFIG).read_text())
    (moved / materialise.CONFIG).write_text(json.dumps({**adapter_cfg, "base_model_name_or_path": str(base)}))
    assert materialise.serving_dtype(moved) == torch.bfloat16
    (moved / materialise.CONFIG).write_text(
        json.dumps({**adapter_cfg, "base_model_name_or_path": str(tmp_path / "gone")})
    )
    assert materialise.serving_dtype(moved) == torch.float32


def test_background_retrain_carries_the_clean_prefix_and_excludes_deleted_records(
    models, slices, trained_unit, tmp_path
):
    old_dir, old = trained_unit
    work = tmp_path / "old"
    shutil.copytree(old_dir, work)
    deleted = slices[3][0].id  # slice 3 sits at position 2 of order (2, 0, 3, 1): clean prefix 2
    for stage in (2, 3):
        shutil.rmtree(stage_dir(work, stage))  # what the deletion destroyed
    unit = UnitSpec(0, 1, old.order, version=1, excluded=frozenset({deleted}), resume_from=work, resume_stage=2)
    done = []
    lineage = train.train_unit(
        models[4], unit, slices, CFG, tmp_path, progress=False, after_stage=lambda s, _: done.append(s)
    )
    assert done == [2, 3]
    new_dir = tmp_path / unit.dir_name()
    assert lineage.version == 1 and lineage.excluded == (deleted,)
    assert [b.records for b in lineage.blocks] == [8, 16, 23, 31]
    assert lineage.blocks[:2] == old.blocks[:2]  # carried, identical
    for stage in (0, 1):
        assert adapter_sha256(stage_dir(new_dir, stage)) == adapter_sha256(stage_dir(old_dir, stage))
    assert lineage.adapter_sha256 != old.adapter_sha256


class _NullBar:
    total = 0

    def update(self, *_):
        pass

    def refresh(self):
        pass

    def set_postfix(self, *_, **__):
        pass
