"""Membership scores computed with transformers (training side; serving-side probes go through vLLM).

LOSS attack: a text's mean token negative log-likelihood; lower means "more member-like".
AUC = Pr[member scores as more member-like than non-member], ties counting half; a model that
never saw the members sits near 0.5. Scores are aggregated per person (mean over a person's
records) because chance level is wide with few people (design.md §8).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from shards.basemodel import encode_batch


@torch.no_grad()
def text_losses(model: torch.nn.Module, tokenizer: object, texts: Sequence[str], batch_size: int = 64) -> list[float]:
    """Mean token NLL of each text, framed as in training (<s> text </s>)."""
    model.eval()
    out: list[float] = []
    for i in range(0, len(texts), batch_size):
        batch = encode_batch(tokenizer, list(texts[i : i + batch_size]))  # type: ignore[arg-type]
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        labels = batch["labels"][:, 1:]
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")
        mask = (labels != -100).float()
        out += (nll.sum(1) / mask.sum(1)).tolist()
    return out


def person_scores(losses: Mapping[str, float], records_of: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """Mean record loss per person (person → record ids)."""
    return {p: sum(losses[r] for r in rs) / len(rs) for p, rs in records_of.items() if rs}


def auc(members: Sequence[float], nonmembers: Sequence[float]) -> float:
    """LOSS-attack AUC: the probability that a member's loss is below a non-member's (ties: half)."""
    if not members or not nonmembers:
        raise ValueError("need at least one member and one non-member")
    wins = sum((m < n) + 0.5 * (m == n) for m in members for n in nonmembers)
    return wins / (len(members) * len(nonmembers))


def calibrated(losses: Mapping[str, float], reference: Mapping[str, float]) -> dict[str, float]:
    """Reference-calibrated LOSS: a text's loss minus the base model's loss on it.

    Subtracting what the base model already finds easy or hard (common words, rare syllables)
    leaves what the adapter learnt about that text, which separates members far better when
    few people are scored (design.md §8).
    """
    return {k: losses[k] - reference[k] for k in losses}
