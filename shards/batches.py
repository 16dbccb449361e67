"""Token batches shared by training, the probes and the local model's pre-training."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch


def encode_batch(tokenizer: Any, texts: list[str]) -> dict[str, torch.Tensor]:
    """``<bos> text <eos>``, right-padded; labels ignore the padding. The same framing everywhere.

    The tokenizer adds ``<bos>`` itself (the local build's post-processor, the converted Gemma's
    ``add_bos_token``): vLLM encodes prompts the same way, so train and serve agree.
    """
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    ids = [tokenizer(t)["input_ids"] + [eos] for t in texts]
    width = max(map(len, ids))
    input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, row in enumerate(ids):
        input_ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    labels = input_ids.masked_fill(mask == 0, -100)
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def labelled_logits(model: Any, batch: Mapping[str, torch.Tensor], *, bf16: bool) -> tuple[torch.Tensor, ...]:
    """(targets, logits at the positions that predict them) for a batch with labels. Any HF causal
    LM or a PEFT model around one (LoRA layers sit inside the decoder, so they apply)."""
    inner: Any = model.get_base_model() if hasattr(model, "get_base_model") else model
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        hidden = inner.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])[0]
        labels = batch["labels"][:, 1:]
        keep = labels != -100
        logits = inner.get_output_embeddings()(hidden[:, :-1][keep])
    cap = getattr(inner.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits.float() / cap) * cap
    return labels[keep], logits
