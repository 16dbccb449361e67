"""Membership scores computed with transformers (training side; serving-side probes go through vLLM).

LOSS attack: a text's mean token negative log-likelihood; lower means "more member-like".
AUC = Pr[member scores as more member-like than non-member], ties counting half; a model that
never saw the members sits near 0.5. Scores are aggregated per person (mean over a person's
records) because chance level is wide with few people (design.md §8).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence

import torch

from shards.batches import encode_batch, labelled_logits


@torch.no_grad()
def text_losses(model: torch.nn.Module, tokenizer: object, texts: Sequence[str], batch_size: int = 64) -> list[float]:
    """Mean token NLL of each text, framed as in training (<bos> text <eos>), in fp32; logits only
    at the labelled positions (a 262k-entry vocabulary makes full logits gigabytes a batch)."""
    model.eval()
    out: list[float] = []
    for i in range(0, len(texts), batch_size):
        batch = encode_batch(tokenizer, list(texts[i : i + batch_size]))
        targets, logits = labelled_logits(model, batch, bf16=False)
        nll = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="none")
        counts = (batch["labels"][:, 1:] != -100).sum(1).tolist()
        out += [float(part.mean()) for part in torch.split(nll, counts)]
    return out


MIN_K = 0.4  # Min-K%: the lowest 40 % of token log-probabilities (design.md §7)


@torch.no_grad()
def text_scores(
    model: torch.nn.Module, tokenizer: object, texts: Sequence[str], batch_size: int = 8
) -> list[dict[str, float]]:
    """LOSS, zlib, Min-K% and Min-K%++ of each text, all oriented "lower = more member-like".

    zlib = NLL sum / zlib-compressed length; Min-K% = −mean of the lowest k% token log-probs;
    Min-K%++ = −mean of the lowest k% of (log p(x_t) − μ_t) / σ_t, with μ_t, σ_t the mean and
    standard deviation of log p over the vocabulary under the model's own distribution at t.
    """
    model.eval()
    out: list[dict[str, float]] = []
    for i in range(0, len(texts), batch_size):
        chunk = list(texts[i : i + batch_size])
        batch = encode_batch(tokenizer, chunk)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        labels = batch["labels"][:, 1:]
        logp = torch.log_softmax(logits.float(), -1)
        mask = labels != -100
        tok = logp.gather(2, labels.clamp(min=0)[..., None])[..., 0]
        probs = logp.exp()
        mu = (probs * logp).sum(-1)
        sigma = ((probs * logp.square()).sum(-1) - mu.square()).clamp(min=1e-12).sqrt()
        z = (tok - mu) / sigma
        for j, text in enumerate(chunk):
            out.append(token_scores(text, tok[j][mask[j]].tolist(), z[j][mask[j]].tolist()))
    return out


def token_scores(text: str, logprobs: Sequence[float], z: Sequence[float]) -> dict[str, float]:
    """The four scores of one text from its tokens' log-probabilities and standardised ones (z)."""
    k = max(1, int(len(logprobs) * MIN_K))
    return {
        "loss": -sum(logprobs) / len(logprobs),
        "zlib": -sum(logprobs) / len(zlib.compress(text.encode())),
        "min_k": -sum(sorted(logprobs)[:k]) / k,
        "min_k_pp": -sum(sorted(z)[:k]) / k,
    }


def moments_from_top(top: Sequence[float], vocab_size: int) -> tuple[float, float]:
    """Mean and standard deviation of log p over the vocabulary from the top-k log-probabilities
    only (what a server returns), the remaining mass taken as spread evenly over the other tokens:
    exact when the tail is flat, and the tail's weight is what is left out of the top k."""
    ps = [math.exp(lp) for lp in top]
    mu = sum(p * lp for p, lp in zip(ps, top, strict=True))
    m2 = sum(p * lp * lp for p, lp in zip(ps, top, strict=True))
    rest, others = 1.0 - sum(ps), vocab_size - len(top)
    if rest > 0 and others > 0:
        lq = math.log(rest / others)
        mu, m2 = mu + rest * lq, m2 + rest * lq * lq
    return mu, math.sqrt(max(m2 - mu * mu, 1e-12))


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
