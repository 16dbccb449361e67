"""The spec of the locally built base model: light to import (no torch), so settings can hold it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

# Bump when the build procedure changes in a way that changes the weights.
BUILDER_VERSION = 1


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
