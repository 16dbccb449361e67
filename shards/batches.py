"""Token batches shared by training, the probes and the local model's pre-training."""

from __future__ import annotations

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
