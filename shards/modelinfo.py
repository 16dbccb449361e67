"""What Lethe needs to know about a base model, read from its directory (no torch import).

One code path for any Hugging Face causal LM: the block layout comes from its layer count, the
LoRA targets from the projections its layers have, the serving dtype from its weights, the
context from its config. A directory that is not a usable causal LM is one ``BaseModelError``
naming what is wrong.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

# The seven projections of a Llama/Gemma/Mistral/Qwen decoder layer (the reference S3T recipe).
KNOWN_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_TEXT_CONFIG_KEYS = ("text_config",)


class BaseModelError(RuntimeError):
    """The configured base model cannot be used; the message says why, in one line."""


@dataclass(frozen=True)
class ModelProfile:
    path: Path
    model_type: str
    architecture: str
    num_layers: int
    hidden_size: int
    context_length: int
    dtype: str  # the weights' dtype: vLLM serves it as such ("bfloat16" or "float32")
    has_chat_template: bool

    @property
    def is_tiny_local(self) -> bool:
        return (self.path / "lethe-build.json").exists()


def profile(path: Path) -> ModelProfile:
    """Read and check ``path``; raise ``BaseModelError`` when it cannot serve as a base model."""
    path = Path(path)
    if not path.is_dir():
        raise BaseModelError(f"base model {path}: no such directory")
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise BaseModelError(f"base model {path}: no config.json (not a Hugging Face model directory)")
    try:
        cfg = json.loads(cfg_file.read_text())
    except (OSError, ValueError) as e:
        raise BaseModelError(f"base model {path}: config.json is not readable JSON ({e})") from e
    archs = cfg.get("architectures") or []
    arch = next((a for a in archs if a.endswith("ForCausalLM")), None)
    if arch is None:
        raise BaseModelError(f"base model {path}: not a causal language model (architectures {archs or 'unset'})")
    text = next((cfg[k] for k in _TEXT_CONFIG_KEYS if isinstance(cfg.get(k), dict)), cfg)
    layers = text.get("num_hidden_layers")
    if not isinstance(layers, int) or layers < 1:
        raise BaseModelError(f"base model {path}: config.json has no num_hidden_layers")
    if not any(path.glob("*.safetensors")):
        raise BaseModelError(f"base model {path}: no *.safetensors weights")
    if not (path / "tokenizer.json").exists() and not (path / "tokenizer.model").exists():
        raise BaseModelError(f"base model {path}: no tokenizer (tokenizer.json)")
    dtype = str(text.get("dtype") or text.get("torch_dtype") or cfg.get("dtype") or "float32")
    tok_cfg = path / "tokenizer_config.json"
    chat = (path / "chat_template.jinja").exists() or (
        tok_cfg.exists() and "chat_template" in json.loads(tok_cfg.read_text())
    )
    return ModelProfile(
        path=path,
        model_type=str(text.get("model_type") or cfg.get("model_type") or "unknown"),
        architecture=arch,
        num_layers=layers,
        hidden_size=int(text.get("hidden_size") or 0),
        context_length=int(text.get("max_position_embeddings") or 2048),
        dtype="bfloat16" if dtype in ("bfloat16", "bf16") else "float32",
        has_chat_template=chat,
    )
