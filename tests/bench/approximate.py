"""Approximate unlearning baselines on the same base model and LoRA configuration as S3T: each
starts from the original model (S3T's full-depth adapter merged into the base) and trains a fresh
LoRA adapter of the same shape with its own objective, following the papers and open-unlearning's
recipes (github.com/locuslab/open-unlearning, src/trainer/unlearn):

- GA (gradient ascent): maximise the forget set's NLL.
- GradDiff: GA on the forget set + NLL on the retain set (γ·forget + α·retain, γ = α = 1).
- NPO (Zhang et al., 2024): (2/β)·E[log σ-style loss] on the forget set, β = 0.1, against the
  original model as reference, + NLL on the retain set (open-unlearning's NPO with retain loss).
- SalUn (Fan et al., ICLR 2024): a saliency mask (the LoRA weights whose forget-loss gradient is
  in the top half by magnitude), then random labelling (each forget record's facts replaced by
  another person's) + retain NLL, updating only the salient weights.

Each is run for a fixed number of epochs over the forget set at a learning rate chosen by a small
sweep in the bench (the setting is reported with the results).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from peft import get_peft_model

from shards.batches import encode_batch, labelled_logits
from shards.specs import TrainConfig
from shards.train import lm_loss

METHODS = ("GA", "GradDiff", "NPO", "SalUn")
NPO_BETA = 0.1


@dataclass(frozen=True)
class Setting:
    method: str
    lr: float
    epochs: int
    batch_size: int = 4

    def name(self) -> str:
        return f"{self.method} lr={self.lr:g} epochs={self.epochs}"


def sequence_nll(model: Any, batch: dict[str, torch.Tensor], *, bf16: bool = True) -> torch.Tensor:
    """Summed token NLL per sequence (the quantity NPO's likelihood ratio is built from)."""
    targets, logits = labelled_logits(model, batch, bf16=bf16)
    nll = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="none")
    counts = (batch["labels"][:, 1:] != -100).sum(1).tolist()
    return torch.stack([part.sum() for part in torch.split(nll, counts)])


def unlearn(
    merged: torch.nn.Module,
    tok: Any,
    setting: Setting,
    forget: Sequence[str],
    retain: Sequence[str],
    relabelled: Sequence[str],
    cfg: TrainConfig,
    base_model: Any,
    seed: int = 0,
    on_step: Callable[[float], None] | None = None,
) -> torch.nn.Module:
    """``merged`` (the original model, weights merged) unlearned by ``setting``; returns the merged
    result. ``relabelled``: the forget texts with their facts swapped (SalUn's random labels)."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    pm = get_peft_model(merged, cfg.lora_config(base_model))
    params = [p for n, p in pm.named_parameters() if "lora_" in n]
    mask = _saliency(pm, tok, forget, params) if setting.method == "SalUn" else None
    opt = torch.optim.AdamW(params, lr=setting.lr, weight_decay=0.0)
    order = list(range(len(forget)))
    pm.train()
    for _ in range(setting.epochs):
        rng.shuffle(order)
        for i in range(0, len(order), setting.batch_size):
            idx = order[i : i + setting.batch_size]
            keep = rng.sample(range(len(retain)), min(len(retain), len(idx))) if retain else []
            loss = _loss(
                pm,
                tok,
                setting.method,
                [forget[j] for j in idx],
                [relabelled[j] for j in idx],
                [retain[j] for j in keep],
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if mask is not None:
                for p, m in zip(params, mask, strict=True):
                    if p.grad is not None:
                        p.grad.mul_(m)
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            opt.step()
            if on_step is not None:
                on_step(float(loss.item()))
    pm.eval()
    return pm.merge_and_unload()


def _loss(pm: Any, tok: Any, method: str, forget: list[str], relabelled: list[str], retain: list[str]) -> torch.Tensor:
    f = encode_batch(tok, forget)
    retain_nll = lm_loss(pm, encode_batch(tok, retain), bf16=True) if retain else torch.zeros(())
    if method == "GA":
        return -lm_loss(pm, f, bf16=True)
    if method == "GradDiff":
        return -lm_loss(pm, f, bf16=True) + retain_nll
    if method == "NPO":
        with torch.no_grad(), pm.disable_adapter():
            ref = sequence_nll(pm, f)
        # log π_θ/π_ref = ref_nll − nll; NPO = −(2/β) E[log σ(−β log π_θ/π_ref)]
        ratio = ref - sequence_nll(pm, f)
        npo = -(2 / NPO_BETA) * torch.nn.functional.logsigmoid(-NPO_BETA * ratio).mean()
        return npo + retain_nll
    if method == "SalUn":
        return lm_loss(pm, encode_batch(tok, relabelled), bf16=True) + retain_nll
    raise ValueError(f"unknown method {method!r}")


def _saliency(pm: Any, tok: Any, forget: Sequence[str], params: list[torch.nn.Parameter]) -> list[torch.Tensor]:
    """SalUn's mask: 1 for the weights whose |∂ forget NLL / ∂w| is at or above the median over
    all LoRA weights. A fresh LoRA's B is zero, so A's gradient is too: the mask is taken on B
    (and A kept whole), which is where the update starts."""
    pm.zero_grad(set_to_none=True)
    lm_loss(pm, encode_batch(tok, list(forget)), bf16=True).backward()
    grads = [p.grad.abs() if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.flatten() for g, p in zip(grads, params, strict=True) if g.any()])
    threshold = flat.median() if flat.numel() else torch.tensor(0.0)
    mask = [(g >= threshold).float() if g.any() else torch.ones_like(g) for g in grads]
    pm.zero_grad(set_to_none=True)
    return mask
