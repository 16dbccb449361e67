"""Probes of the served model after a deletion (design.md §7).

- Membership: LOSS, zlib, Min-K% and Min-K%++ AUC of the deleted subject's records against
  holdout people's records (never trained), and the reference-calibrated LOSS. Scored with
  transformers + peft on the served adapter's files, whose content hash equals what every
  replica acknowledged: vLLM 0.32 cannot return prompt log-probabilities for a LoRA request
  batched with others without crashing its engine (docs/architecture.md), so the scores are not
  asked of a live replica.
- VerbMem: ROUGE-L F1 of each replica's greedy continuation of the first half of a deleted
  record against its true second half, through the replicas themselves.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

AUC_LIMIT = 0.65  # above this a dropped record still looks like a member


@dataclass(frozen=True)
class ProbeConfig:
    base_model: Path
    holdout_texts: tuple[str, ...]  # records of people never trained on


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1 over whitespace tokens (longest common subsequence)."""
    a, b = candidate.split(), reference.split()
    if not a or not b:
        return 0.0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    p, r = lcs / len(a), lcs / len(b)
    return 2 * p * r / (p + r)


def membership(cfg: ProbeConfig, adapter: Path | None, deleted: Sequence[str]) -> dict[str, Any]:
    """AUC per attack of the deleted records against the holdout records on the served model. A
    routing table is probed shard by shard and reported at its worst (a caller can reach every
    shard by varying its prompt), with each shard's figures beside."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    from shards import mia, served, train

    tok = AutoTokenizer.from_pretrained(cfg.base_model)
    texts = list(deleted) + list(cfg.holdout_texts)
    base = LlamaForCausalLM.from_pretrained(cfg.base_model, dtype=torch.float32).eval()
    ref = mia.text_scores(base, tok, texts)
    if adapter is None:
        return _membership_figures(ref, ref, len(deleted))
    figures = {
        p.key: _membership_figures(mia.text_scores(train.load_peft(cfg.base_model, p.path), tok, texts), ref,
                                   len(deleted))
        for p in served.parts(adapter, check=False)
    }  # fmt: skip
    if len(figures) == 1:
        return next(iter(figures.values()))
    worst = max(figures.values(), key=lambda f: max(v for k, v in f.items() if k.startswith("auc_")))
    out = {k: (max(f[k] for f in figures.values()) if k.startswith("auc_") else v) for k, v in worst.items()}
    out["deleted_mean_loss"] = min(f["deleted_mean_loss"] for f in figures.values())
    out["passed"] = all(f["passed"] for f in figures.values())
    out["by_shard"] = figures
    return out


def _membership_figures(got: list[dict[str, float]], ref: list[dict[str, float]], n: int) -> dict[str, Any]:
    from shards import mia

    out: dict[str, Any] = {"records": n, "holdout_records": len(got) - n}
    for attack in ("loss", "zlib", "min_k", "min_k_pp"):
        scores = [g[attack] for g in got]
        out[f"auc_{attack}"] = round(mia.auc(scores[:n], scores[n:]), 4)
    calibrated = [g["loss"] - r["loss"] for g, r in zip(got, ref, strict=True)]
    out["auc_loss_calibrated"] = round(mia.auc(calibrated[:n], calibrated[n:]), 4)
    holdout_losses = sorted(g["loss"] for g in got[n:])
    out["deleted_mean_loss"] = round(statistics.fmean(g["loss"] for g in got[:n]), 4)
    out["holdout_loss_p5"] = round(holdout_losses[max(0, int(0.05 * len(holdout_losses)) - 1)], 4)
    out["passed"] = all(out[k] <= AUC_LIMIT for k in out if k.startswith("auc_")) and (
        out["deleted_mean_loss"] >= out["holdout_loss_p5"]
    )
    return out


def verbmem(replicas: Sequence[tuple[str, str, Sequence[str]]], deleted: Sequence[str], holdout: Sequence[str],
            max_tokens: int = 24) -> dict[str, Any]:  # fmt: skip
    """Mean ROUGE-L of greedy continuations per replica ((id, url, adapter names) each), for the
    deleted records and, as the baseline, for never-trained ones: templated text is partly
    predictable without any memory of the person, so only the gap to the baseline means
    memorisation. A replica serving a routing table reports its worst adapter."""

    def mean_rouge(client: httpx.Client, url: str, model: str, texts: Sequence[str]) -> float:
        scores = []
        for text in texts:
            words = text.split()
            half = max(1, len(words) // 2)
            prefix, truth = " ".join(words[:half]), " ".join(words[half:])
            req = {"model": model, "prompt": prefix, "max_tokens": max_tokens, "temperature": 0}
            resp = client.post(f"{url}/v1/completions", json=req)
            resp.raise_for_status()
            gen = " ".join(resp.json()["choices"][0]["text"].split()[: len(truth.split())])
            scores.append(rouge_l(gen, truth))
        return round(statistics.fmean(scores), 4) if scores else 0.0

    out: dict[str, dict[str, float]] = {}
    unreachable: list[str] = []
    with httpx.Client(timeout=60) as client:
        for rid, url, models in replicas:
            try:
                each = [{"deleted": mean_rouge(client, url, m, deleted), "holdout": mean_rouge(client, url, m, holdout)}
                        for m in models]  # fmt: skip
                out[rid] = max(each, key=lambda r: r["deleted"] - r["holdout"])
            except httpx.TransportError:  # died since it acknowledged: the caller takes it out of routing
                unreachable.append(rid)
    gap = max((r["deleted"] - r["holdout"] for r in out.values()), default=0.0)
    return {"rouge_l_by_replica": out, "max_gap_over_holdout": round(gap, 4), "unreachable": unreachable}
