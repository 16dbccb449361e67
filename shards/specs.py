"""Specs of the base model, the S3T layout and S3T training.

Light to import (no torch), so settings can hold them. All are fixed before any deletion:
hyper-parameters and placement must never depend on what is deleted later.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# Bump when the build procedure changes in a way that changes the weights.
BUILDER_VERSION = 2  # 2: every other pre-training step on 12-sentence documents
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class BaseModelSpec:
    """Shape and pre-training budget of the local Llama (settings: ``LETHE_MODEL__<FIELD>``)."""

    hidden_size: int = 256
    intermediate_size: int = 688
    num_layers: int = 8
    num_heads: int = 4
    vocab_size: int = 2000
    max_position: int = 256
    pretrain_steps: int = 1000
    batch_size: int = 32
    lr: float = 3e-3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError("hidden_size must be divisible by num_heads")
        if self.hidden_size // self.num_heads != 64:
            raise ValueError("head_dim (hidden_size / num_heads) must be 64: vLLM CPU rejects other sizes")

    def key(self) -> str:
        blob = json.dumps({"builder": BUILDER_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class S3TSpec:
    """Layout of S3T (settings: ``LETHE_S3T__<FIELD>``): m shards × L slices, B sequences a shard."""

    shards: int = 1
    slices: int = 4
    budget: int = 2
    prior: tuple[float, ...] | None = None  # a known deletion prior over slices → BMS; None → cyclic
    workers: int = 0  # parallel training processes; 0 → as the cores allow

    def __post_init__(self) -> None:
        if self.shards < 1 or self.slices < 1 or self.budget < 1:
            raise ValueError("shards, slices and budget must be positive")
        if self.prior is not None and len(self.prior) != self.slices:
            raise ValueError("prior must give one probability per slice")


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of S3T training (settings: ``LETHE_TRAIN__<FIELD>``); num_blocks = L."""

    num_blocks: int = 4
    r: int = 16
    alpha: int = 32
    target_modules: tuple[str, ...] = DEFAULT_TARGETS
    use_rslora: bool = False
    epochs: int = 12  # at most, a stage; it stops earlier once it recalls what it saw (stop_recall)
    min_epochs: int = 4
    check_every: int = 2  # epochs between recall checks after min_epochs
    stop_recall: float = 1.0  # share of the stage's records recalled greedily that ends it; > 1: never
    newest_repeat: int = 3  # the newest slice's records appear this many times an epoch
    lr: float = 2e-3
    warmup_ratio: float = 0.05  # of each stage's steps
    min_lr_ratio: float = 0.1  # cosine decay floor, as a fraction of lr
    max_grad_norm: float = 1.0
    batch_size: int = 8
    bf16: bool = True  # autocast on CPUs with AVX512-BF16 (or GPUs); fp32 master weights either way
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_blocks < 1 or self.r < 1 or self.epochs < 0 or self.batch_size < 1:
            raise ValueError("num_blocks, r and batch_size must be positive, epochs non-negative")
        if self.min_epochs < 1 or self.check_every < 1 or self.newest_repeat < 1:
            raise ValueError("min_epochs, check_every and newest_repeat must be positive")

    def lora_config(self, base_model: Path) -> Any:
        """The PEFT config of a unit's adapter: every block's layers; stages freeze all but one."""
        from peft import LoraConfig

        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            target_modules=list(self.target_modules),
            lora_dropout=0.0,
            bias="none",
            use_rslora=self.use_rslora,
            task_type="CAUSAL_LM",
            base_model_name_or_path=str(base_model),
        )
