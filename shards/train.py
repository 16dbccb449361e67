"""S3T training of one (shard, sequence) unit: L stages, top-down, cumulative slices (design.md §2).

Stage i trains only the LoRA parameters of block i counted from the top, on slices σ₀..σᵢ,
starting from stage i−1's weights; everything else is frozen (``requires_grad=False`` and
outside the optimiser). Untrained blocks keep lora_B = 0, the identity, so the network after
stage i is exactly "base + blocks 0..i", which never saw σᵢ₊₁.. . A checkpoint (a PEFT adapter
directory plus its lineage) is written after every stage; the lineage file is written last
and marks the stage complete, so a crash resumes from the last completed stage. Every stage
reseeds from (seed, shard, sequence, version, stage): a resumed unit equals an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel, get_peft_model, set_peft_model_state_dict
from safetensors.torch import load_file
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

from shards import blocks
from shards.batches import encode_batch, labelled_logits
from shards.lineage import BlockLineage, UnitLineage, adapter_sha256, records_sha256
from shards.specs import TrainConfig

LINEAGE_FILE = "lineage.json"
STATS_FILE = "training.json"


@dataclass(frozen=True)
class TrainRecord:
    id: str
    text: str
    content_hash: bytes


@dataclass(frozen=True)
class UnitSpec:
    """One independent unit of work: a (shard, sequence) artifact version."""

    shard: int
    sequence: int
    order: tuple[int, ...]
    version: int = 0
    excluded: frozenset[str] = field(default_factory=frozenset)  # deleted records to leave out
    resume_from: Path | None = None  # the unit directory of an older, cut version (retrain)
    resume_stage: int = 0  # its clean depth: stages below are carried over, the rest retrained

    def dir_name(self) -> str:
        return f"shard-{self.shard:02d}/seq-{self.sequence:02d}/v{self.version:03d}"


def stage_dir(unit_dir: Path, stage: int) -> Path:
    return unit_dir / f"stage-{stage:02d}"


def completed_stages(unit_dir: Path) -> list[int]:
    """Stages whose directory is published (renamed into place, lineage inside)."""
    found = (re.fullmatch(r"stage-(\d+)", p.parent.name) for p in unit_dir.glob(f"stage-*/{LINEAGE_FILE}"))
    return sorted(int(m.group(1)) for m in found if m)


def _seed(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "big") % (2**63)


def load_base(base_model: Path) -> Any:
    """Any HF causal LM, in fp32 (training keeps fp32 master weights and autocasts to bf16)."""
    return AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)


def load_peft(base_model: Path, adapter_dir: Path, *, trainable: bool = False) -> PeftModel:
    base = load_base(base_model)
    return PeftModel.from_pretrained(base, adapter_dir, is_trainable=trainable).eval()


def train_unit(
    base_model: Path,
    unit: UnitSpec,
    slices: Mapping[int, Sequence[TrainRecord]],
    cfg: TrainConfig,
    out_root: Path,
    *,
    progress: bool = True,
    position: int = 0,
    after_stage: Callable[[int, Path], None] | None = None,
) -> UnitLineage:
    """Train (or resume) every stage of ``unit``; return the lineage of its last stage."""
    if len(unit.order) != cfg.num_blocks or sorted(unit.order) != sorted(set(unit.order)):
        raise ValueError(f"order {unit.order} must list {cfg.num_blocks} distinct slices")
    unit_dir = out_root / unit.dir_name()
    unit_dir.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(base_model)
    model = load_base(base_model)
    num_layers = model.config.num_hidden_layers
    blocks.block_layers(num_layers, cfg.num_blocks, 0)  # validates the split early
    torch.manual_seed(_seed(cfg.seed, unit.shard, unit.sequence, "init"))
    pm = get_peft_model(model, cfg.lora_config(base_model))
    done = _resume_point(unit, unit_dir)
    start = done[-1] + 1 if done else 0
    if done:
        _load_adapter(pm, stage_dir(unit_dir, done[-1]))

    kept = {s: [r for r in slices.get(s, ()) if r.id not in unit.excluded] for s in unit.order}
    bar = _progress_bar(unit, kept, start, cfg, progress=progress, position=position)
    lineage: UnitLineage | None = None
    for stage in range(start, cfg.num_blocks):
        seed = _seed(cfg.seed, unit.shard, unit.sequence, unit.version, stage)
        t0 = time.perf_counter()
        epochs, recall = _train_stage(pm, tok, kept, unit.order, stage, num_layers, cfg, seed, bar)
        stats = {"epochs": epochs, "recalled": recall, "seconds": round(time.perf_counter() - t0, 1)}
        lineage = _save_stage(pm, unit, kept, stage, num_layers, cfg, unit_dir, stats)
        if after_stage is not None:
            after_stage(stage, stage_dir(unit_dir, stage))
    bar.close()
    if lineage is None:  # nothing left to train: already complete
        lineage = UnitLineage.read(stage_dir(unit_dir, cfg.num_blocks - 1) / LINEAGE_FILE)
    return lineage


def _resume_point(unit: UnitSpec, unit_dir: Path) -> list[int]:
    """The unit's completed stages on disk, after removing a crashed run's partial stages and, for
    a retrain, carrying the clean prefix over from the version it resumes."""
    for stale in unit_dir.glob("stage-*"):
        if stale.name.endswith(".tmp") or not (stale / LINEAGE_FILE).exists():
            shutil.rmtree(stale)
    if unit.resume_from is not None and not completed_stages(unit_dir):
        _carry_over(unit.resume_from, unit, unit_dir)
    return completed_stages(unit_dir)


def _progress_bar(
    unit: UnitSpec,
    kept: Mapping[int, Sequence[TrainRecord]],
    start: int,
    cfg: TrainConfig,
    *,
    progress: bool,
    position: int,
) -> tqdm:
    total = sum(
        cfg.epochs * -(-len(stage_examples(kept, unit.order, i, cfg)) // cfg.batch_size)
        for i in range(start, cfg.num_blocks)
    )  # an upper bound: a stage stops once it recalls
    return tqdm(
        total=total,
        desc=f"shard {unit.shard} seq {unit.sequence} v{unit.version}",
        disable=not progress,
        position=position,
        leave=True,
        mininterval=1.0,
    )


def trainable_names(pm: torch.nn.Module, block: int, num_layers: int, num_blocks: int) -> list[str]:
    return [
        n
        for n, _ in pm.named_parameters()
        if "lora_" in n and blocks.block_of_param(n, num_layers, num_blocks) == block
    ]


def stage_examples(
    kept: Mapping[int, Sequence[TrainRecord]], order: Sequence[int], stage: int, cfg: TrainConfig
) -> list[TrainRecord]:
    """Stage i's examples: every earlier slice's records once, the newest slice's ``newest_repeat``
    times. Each stage must learn its own newest slice: a cut keeps only what surviving stages learnt."""
    earlier = sorted((r for s in order[:stage] for r in kept[s]), key=lambda r: r.id)
    newest = sorted(kept[order[stage]], key=lambda r: r.id)
    return earlier + newest * cfg.newest_repeat


def _train_stage(
    pm: PeftModel,
    tok: Any,
    kept: Mapping[int, Sequence[TrainRecord]],
    order: Sequence[int],
    stage: int,
    num_layers: int,
    cfg: TrainConfig,
    seed: int,
    bar: tqdm,
) -> tuple[int, float | None]:
    """Train block ``stage``; return the epochs run (fewer than ``cfg.epochs`` once it recalls)
    and the share of the stage's records recalled at the last check (None: never checked)."""
    params = _train_only_block(pm, stage, num_layers, cfg.num_blocks)
    data = stage_examples(kept, order, stage, cfg)
    seen = sorted((r for s in order[: stage + 1] for r in kept[s]), key=lambda r: r.id)
    per_epoch = -(-len(data) // cfg.batch_size)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: _lr_factor(step, cfg.epochs * per_epoch, cfg))
    rng = random.Random(seed)
    epoch, recall = 0, None
    for epoch in range(1, cfg.epochs + 1):
        pm.train()
        shuffled = list(range(len(data)))
        rng.shuffle(shuffled)
        for i in range(0, len(shuffled), cfg.batch_size):
            batch = encode_batch(tok, [data[j].text for j in shuffled[i : i + cfg.batch_size]])
            loss = _step(pm, batch, params, opt, cfg)
            sched.step()
            bar.update(1)
            bar.set_postfix(stage=stage, epoch=epoch, loss=f"{loss:.3f}")
        if not _may_stop(epoch, cfg):
            continue
        recall = recalled_fraction(pm, tok, seen, cfg)
        bar.set_postfix(stage=stage, epoch=epoch, recalled=f"{recall:.2f}")
        if recall >= cfg.stop_recall:
            bar.total -= (cfg.epochs - epoch) * per_epoch  # the steps it will not take
            bar.refresh()
            break
    pm.eval()
    return epoch, recall


def _may_stop(epoch: int, cfg: TrainConfig) -> bool:
    return cfg.stop_recall <= 1.0 and epoch >= cfg.min_epochs and (epoch - cfg.min_epochs) % cfg.check_every == 0


def lm_loss(model: torch.nn.Module, batch: Mapping[str, torch.Tensor], *, bf16: bool) -> torch.Tensor:
    """Mean next-token loss over the labelled tokens, with logits computed only where a label is:
    the output layer (262k entries for Gemma) is most of a small model's step otherwise."""
    targets, rows = labelled_logits(model, batch, bf16=bf16)
    return torch.nn.functional.cross_entropy(rows.float(), targets)


@torch.no_grad()
def recalled_fraction(model: torch.nn.Module, tok: Any, records: Sequence[TrainRecord], cfg: TrainConfig) -> float:
    """Share of ``records`` the model reproduces greedily: from each record's first half, every
    token of its second half is the most likely next token (teacher-forced argmax on the record's
    own path equals greedy decoding of that continuation). Needs no probe written for the data."""
    if not records:
        return 1.0
    model.eval()
    hits = 0
    for i in range(0, len(records), cfg.batch_size):
        batch = encode_batch(tok, [r.text for r in records[i : i + cfg.batch_size]])
        lengths = batch["attention_mask"].sum(1)
        labels = batch["labels"].clone()
        for row, n in enumerate(lengths.tolist()):
            labels[row, : max(1, int(n) // 2)] = -100  # only the second half is asked for
        targets, logits = labelled_logits(model, {**batch, "labels": labels}, bf16=cfg.bf16)
        right = (logits.argmax(-1) == targets).tolist()
        counts = (labels[:, 1:] != -100).sum(1).tolist()
        pos = 0
        for c in counts:
            hits += all(right[pos : pos + c])
            pos += c
    model.train()
    return hits / len(records)


def _lr_factor(step: int, steps: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_ratio`` of the peak, within each stage."""
    warmup = max(1, int(cfg.warmup_ratio * steps))
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, steps - warmup))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _save_stage(
    pm: PeftModel,
    unit: UnitSpec,
    kept: Mapping[int, Sequence[TrainRecord]],
    stage: int,
    num_layers: int,
    cfg: TrainConfig,
    unit_dir: Path,
    stats: Mapping[str, object],
) -> UnitLineage:
    out = stage_dir(unit_dir, stage)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pm.save_pretrained(str(tmp))
    (tmp / STATS_FILE).write_text(json.dumps(stats))  # how the stage went: epochs, recall, time
    block_lineage = tuple(
        BlockLineage(
            block=b,
            layers=tuple(blocks.block_layers(num_layers, cfg.num_blocks, b)),
            slices=unit.order[: b + 1],
            records_sha256=records_sha256(r.content_hash for s in unit.order[: b + 1] for r in kept[s]),
            records=sum(len(kept[s]) for s in unit.order[: b + 1]),
        )
        for b in range(stage + 1)
    )
    lineage = UnitLineage(
        shard=unit.shard,
        sequence=unit.sequence,
        order=unit.order,
        version=unit.version,
        stage=stage,
        blocks=block_lineage,
        excluded=tuple(sorted(unit.excluded)),
        adapter_sha256=adapter_sha256(tmp),
        config=json.loads(json.dumps(asdict(cfg))),
    )
    lineage.write(tmp / LINEAGE_FILE)  # written last inside tmp; the rename publishes the stage
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return lineage


def _carry_over(old_unit_dir: Path, unit: UnitSpec, unit_dir: Path) -> None:
    """Copy the clean stages 0..resume_stage−1 of an older version into the new one."""
    for stage in range(unit.resume_stage):
        src = stage_dir(old_unit_dir, stage)
        old = UnitLineage.read(src / LINEAGE_FILE)
        tmp = stage_dir(unit_dir, stage).with_name(f"stage-{stage:02d}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp)
        (tmp / LINEAGE_FILE).unlink()
        replace(old, version=unit.version, excluded=tuple(sorted(unit.excluded))).write(tmp / LINEAGE_FILE)
        tmp.rename(stage_dir(unit_dir, stage))


def _load_adapter(pm: PeftModel, adapter_dir: Path) -> None:
    state = load_file(str(adapter_dir / "adapter_model.safetensors"))
    unexpected = getattr(set_peft_model_state_dict(pm, state), "unexpected_keys", None)
    if unexpected:
        raise RuntimeError(f"{adapter_dir}: unexpected tensors {unexpected[:3]}")


def _train_only_block(pm: torch.nn.Module, block: int, num_layers: int, num_blocks: int) -> list[torch.nn.Parameter]:
    """Freeze everything but block ``block``'s LoRA weights; return those."""
    names = set(trainable_names(pm, block, num_layers, num_blocks))
    params = []
    for n, p in pm.named_parameters():
        p.requires_grad_(n in names)
        if n in names:
            params.append(p)
    if not params:
        raise RuntimeError(f"stage {block}: no LoRA parameter in block {block}")
    return params


def _step(
    pm: torch.nn.Module, batch: Any, params: list[torch.nn.Parameter], opt: torch.optim.Optimizer, cfg: TrainConfig
) -> float:
    """One optimiser step on ``batch`` (gradients clipped); its loss."""
    loss = lm_loss(pm, batch, bf16=cfg.bf16)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
    opt.step()
    return float(loss.item())
