"""Build the small local Llama that stands in for a hub model (design.md §8).

A byte-level BPE tokenizer is trained with ``tokenizers`` on generated sentences, then a Llama
(head_dim 64, which vLLM CPU requires) is pre-trained on sentences, and every other step on
12-sentence documents, about *fresh random people at every step*: trained on one fixed set it
would memorise those names and be over-confident on new ones, which distorts every membership
test later. Deterministic by seed; cached under a directory named by the hash of its spec,
written atomically.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from tqdm.auto import tqdm
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from shards.batches import encode_batch
from shards.corpus import random_documents, random_sentences
from shards.specs import BUILDER_VERSION, BaseModelSpec

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>")
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
TOKENIZER_SENTENCES = 40_000
DOC_SENTENCES = 12  # ≈ 200 tokens: a retrieval prompt (constraint, two chunks, question) fits
BUILD_INFO = "lethe-build.json"


@dataclass(frozen=True)
class BuiltModel:
    path: Path
    parameters: int
    weights_sha256: str
    final_loss: float | None
    reused: bool


def build(spec: BaseModelSpec, models_dir: Path, *, progress: bool = True) -> BuiltModel:
    """Return the model for ``spec``, building it unless a finished build is cached."""
    final = models_dir / f"llama-{spec.key()}"
    if (final / BUILD_INFO).exists():
        return _describe(final, reused=True)
    models_dir.mkdir(parents=True, exist_ok=True)
    tmp = models_dir / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    started = time.perf_counter()
    with _deterministic(spec.seed):
        tokenizer = train_tokenizer(spec)
        model = LlamaForCausalLM(_llama_config(spec)).float()
        loss = pretrain(model, tokenizer, spec, progress=progress)
    model.generation_config = GenerationConfig(bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    info = {
        "spec": asdict(spec),
        "builder": BUILDER_VERSION,
        "final_loss": loss,
        "build_seconds": round(time.perf_counter() - started, 1),
        "weights_sha256": weights_sha256(tmp),
    }
    (tmp / BUILD_INFO).write_text(json.dumps(info, indent=2, sort_keys=True))
    if final.exists():  # a concurrent build finished first; both are identical
        shutil.rmtree(tmp)
    else:
        tmp.rename(final)
    return _describe(final, reused=False)


def describe(path: Path, *, reused: bool = True) -> BuiltModel:
    """Facts about any Hugging Face model directory (the local build, the converted Gemma, yours)."""
    return _describe(path, reused=reused)


def _describe(path: Path, reused: bool) -> BuiltModel:
    # the local build's record, or the converted Gemma's (both hold the weights' hash: 0.5 GB to hash)
    info_file = next((f for f in (path / BUILD_INFO, path / "lethe-convert.json") if f.exists()), None)
    info = json.loads(info_file.read_text()) if info_file else {}
    return BuiltModel(
        path=path,
        parameters=parameter_count(path),
        weights_sha256=info.get("weights_sha256") or weights_sha256(path),
        final_loss=info.get("final_loss"),
        reused=reused,
    )


def weights_sha256(path: Path) -> str:
    """sha256 over every safetensors file of a model directory, in name order."""
    h = hashlib.sha256()
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no safetensors files in {path}")
    for f in files:
        h.update(f.name.encode())
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def parameter_count(path: Path) -> int:
    from safetensors import safe_open

    total = 0
    for f in sorted(path.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            for name in st.keys():  # noqa: SIM118 (safe_open is not a mapping)
                total += math.prod(st.get_slice(name).get_shape())
    return total


def train_tokenizer(spec: BaseModelSpec) -> PreTrainedTokenizerFast:
    sentences = random_sentences(random.Random(f"tokenizer:{spec.seed}"))
    corpus = [next(sentences) for _ in range(TOKENIZER_SENTENCES)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    # Every encoding starts with <s>, in transformers and in vLLM alike.
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", BOS_ID)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", model_max_length=spec.max_position
    )


def _llama_config(spec: BaseModelSpec) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=spec.vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads,
        max_position_embeddings=spec.max_position,
        tie_word_embeddings=False,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
        dtype="float32",
    )


def pretrain(
    model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, spec: BaseModelSpec, *, progress: bool = True
) -> float:
    """Language-model pre-training on an endless stream of sentences about fresh random people."""
    sentences = random_sentences(random.Random(f"pretrain:{spec.seed}"))
    documents = random_documents(random.Random(f"pretrain-docs:{spec.seed}"), DOC_SENTENCES)
    docs_per_step = max(1, spec.batch_size // DOC_SENTENCES)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=0.01)
    warmup = max(1, spec.pretrain_steps // 20)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, spec.pretrain_steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    model.train()
    ema: float | None = None
    bar = tqdm(range(spec.pretrain_steps), desc="pre-training base model", disable=not progress, unit="step")
    for step in bar:
        # every other step: a few long documents (as many tokens as a step of sentences), so that
        # positions up to the context length are trained, not only those of one sentence
        texts = (
            [next(documents) for _ in range(docs_per_step)]
            if step % 2
            else [next(sentences) for _ in range(spec.batch_size)]
        )
        batch = encode_batch(tokenizer, texts)
        loss = model(**batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        bar.set_postfix(loss=f"{ema:.3f}")
    model.eval()
    return round(ema or float("nan"), 4)


@contextlib.contextmanager
def _deterministic(seed: int) -> Iterator[None]:
    """Seeded RNGs and deterministic kernels for the duration of a build."""
    previous = torch.are_deterministic_algorithms_enabled()
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)
