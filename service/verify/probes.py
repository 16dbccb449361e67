"""Probes of the served model after a deletion (design.md §7).

- Membership: LOSS, zlib, Min-K% and Min-K%++ AUC of the deleted subject's records against
  holdout people's records (never trained), and the reference-calibrated LOSS (the base model's
  loss subtracted). Scored through a routable replica, from vLLM's prompt log-probabilities of
  the served adapter(s) and of the base model (``ReplicaScorer``; vLLM 0.32 needs
  service/serving/vllm_plugin.py for LoRA requests); with no replica, or where the replicas'
  vLLM is not patched (``probes_via_replicas`` off), with transformers + peft on the served
  files, whose content hash every replica acknowledged (``LocalScorer``).
- VerbMem: ROUGE-L F1 of each replica's greedy continuation of the first half of a deleted
  record against its true second half, through the replicas themselves.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

import httpx

from service.serving.vllm import BASE_NAME, MAX_LOGPROBS

AUC_LIMIT = 0.65  # above this a dropped record still looks like a member
Z_POWER = 1.645  # one-sided 5 %: the smallest AUC the test tells apart from chance
Z_FAIL = 2.576  # one-sided 0.5 %: an AUC this far above chance is a membership signal (several attacks: strict)


@dataclass(frozen=True)
class ProbeConfig:
    base_model: Path
    holdout_texts: tuple[str, ...]  # records of people never trained on
    via_replicas: bool = True  # score through a replica's vLLM (else transformers on the served files)
    # the base model's scores of the holdout texts do not change between deletions: scored once per
    # worker and scorer kind (vLLM's and transformers' numerics differ in the last digits)
    base_scores: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict, compare=False, repr=False)


class Scorer(Protocol):
    """Scores (mia.token_scores) of texts under each served part and under the base model."""

    where: str

    def parts(self) -> list[str]: ...

    def scores(self, part: str | None, texts: Sequence[str], *, moments: bool = True) -> list[dict[str, float]]:
        """``moments`` off: Min-K%++ is not needed (the base model's scores only calibrate LOSS)."""
        ...


class LocalScorer:
    """transformers + peft on the served directory's files (``None``: the base model is served)."""

    where = "transformers on the served files"

    def __init__(self, base_model: Path, served_dir: Path | None) -> None:
        from shards import served

        self.base_model = base_model
        self.paths = {p.key: p.path for p in served.parts(served_dir, check=False)} if served_dir else {}

    @cached_property
    def tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.base_model)

    def parts(self) -> list[str]:
        return list(self.paths)

    def scores(self, part: str | None, texts: Sequence[str], *, moments: bool = True) -> list[dict[str, float]]:
        from shards import mia, train

        if part is None:  # any causal LM (a Llama class on Gemma's weights scored garbage)
            model = train.load_base(self.base_model).eval()
        else:
            model = train.load_peft(self.base_model, self.paths[part])
        return mia.text_scores(model, self.tokenizer, texts)


MAX_MOMENTS_VOCAB = 65_536  # vocabularies whose Min-K%++ moments the top MAX_LOGPROBS estimate


class ReplicaScorer:
    """vLLM's prompt log-probabilities from one replica: each served adapter by its name there, the
    base model by its served name. Texts are sent as token ids framed as in training (<s> text
    </s>); Min-K%++'s per-position moments come from the top ``MAX_LOGPROBS`` log-probabilities
    (mia.moments_from_top), so it is an estimate; the other scores are exact."""

    def __init__(
        self, replica_id: str, url: str, names: dict[str, str], base_model: Path, concurrency: int = 8
    ) -> None:
        from transformers import AutoTokenizer

        self.url, self.names, self.concurrency = url, names, concurrency
        self.tokenizer = AutoTokenizer.from_pretrained(base_model)
        self.vocab_size = int(json.loads((base_model / "config.json").read_text())["vocab_size"])
        self.where = f"vLLM prompt log-probabilities on {replica_id}"

    def parts(self) -> list[str]:
        return list(self.names)

    def scores(self, part: str | None, texts: Sequence[str], *, moments: bool = True) -> list[dict[str, float]]:
        from shards import mia
        from shards.batches import encode_batch

        model = BASE_NAME if part is None else self.names[part]
        # Min-K%++'s moments from the top 100 of a 262k vocabulary (Gemma) were off by 143 against
        # the full-vocabulary figure (0.34 on a 2k one): beyond MAX_MOMENTS_VOCAB it is not reported
        moments = moments and self.vocab_size <= MAX_MOMENTS_VOCAB
        ids = [encode_batch(self.tokenizer, [t])["input_ids"][0].tolist() for t in texts]
        with httpx.Client(base_url=self.url, timeout=120) as client, ThreadPoolExecutor(self.concurrency) as pool:
            top_k = MAX_LOGPROBS if moments else 0
            rows = list(pool.map(lambda seq: prompt_logprobs(client, model, seq, top_k), ids))
        out = []
        for text, seq, row in zip(texts, ids, rows, strict=True):
            actual, z = [], []
            for token, position in zip(seq[1:], row[1:], strict=True):
                lp = position[str(token)]["logprob"]
                actual.append(lp)
                if moments:
                    top = [v["logprob"] for v in position.values() if v.get("rank", top_k + 1) <= top_k]
                    mu, sigma = mia.moments_from_top(top, self.vocab_size)
                    z.append((lp - mu) / sigma)
            scores = mia.token_scores(text, actual, z or actual)
            if not moments:
                del scores["min_k_pp"]
            out.append(scores)
        return out


def prompt_logprobs(client: httpx.Client, model: str, ids: list[int], top_k: int) -> list[dict[str, Any]]:
    """Per prompt position: token id → {logprob, rank}, the actual token and the ``top_k`` first."""
    req = {"model": model, "prompt": ids, "max_tokens": 1, "temperature": 0, "prompt_logprobs": top_k}
    resp = client.post("/v1/completions", json=req)
    resp.raise_for_status()
    return list(resp.json()["choices"][0]["prompt_logprobs"])


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


def sample(texts: Sequence[str], limit: int) -> list[str]:
    """At most ``limit`` of ``texts``, spread evenly over them in their order (a batch's records
    come member by member: every member is represented), the same on every run."""
    if len(texts) <= limit:
        return list(texts)
    step = len(texts) / limit
    return [texts[int(i * step)] for i in range(limit)]


def _base_scores(cfg: ProbeConfig, scorer: Scorer, texts: Sequence[str], *, moments: bool) -> list[dict[str, float]]:
    """The base model's scores of ``texts``; the holdout texts' from ``cfg.base_scores`` once known."""
    kind, holdout, cache = f"{type(scorer).__name__}:{moments}", set(cfg.holdout_texts), cfg.base_scores
    todo = [t for t in dict.fromkeys(texts) if t not in holdout or (kind, t) not in cache]
    fresh = dict(zip(todo, scorer.scores(None, todo, moments=moments), strict=True)) if todo else {}
    cache.update({(kind, t): v for t, v in fresh.items() if t in holdout})
    return [fresh[t] if t in fresh else cache[(kind, t)] for t in texts]


def membership(cfg: ProbeConfig, scorer: Scorer, deleted: Sequence[str]) -> dict[str, Any]:
    """AUC per attack of the deleted records against the holdout records on the served model. A
    routing table is probed part by part and reported at its worst (a caller can reach every
    shard by varying its prompt), with each part's figures beside."""
    texts = list(deleted) + list(cfg.holdout_texts)
    n = len(deleted)
    if not scorer.parts():  # the base model is served
        ref = _base_scores(cfg, scorer, texts, moments=True)
        return {**_membership_figures(ref, ref, n), "scored_with": scorer.where}
    ref = _base_scores(cfg, scorer, texts, moments=False)
    figures = {p: _membership_figures(scorer.scores(p, texts), ref, n) for p in scorer.parts()}
    if len(figures) == 1:
        return {**next(iter(figures.values())), "scored_with": scorer.where}
    worst = max(figures.values(), key=lambda f: max(v for k, v in f.items() if k.startswith("auc_")))
    out = {k: (max(f[k] for f in figures.values()) if k.startswith("auc_") else v) for k, v in worst.items()}
    out["deleted_mean_loss"] = min(f["deleted_mean_loss"] for f in figures.values())
    verdicts = {f["verdict"] for f in figures.values()}
    out["verdict"] = "failed" if "failed" in verdicts else "passed" if verdicts == {"passed"} else "inconclusive"
    out.pop("reason", None)
    reasons = [f["reason"] for f in figures.values() if f["verdict"] == out["verdict"] and "reason" in f]
    if reasons:
        out["reason"] = reasons[0]
    out["by_shard"] = figures
    out["scored_with"] = scorer.where
    return out


def _membership_figures(got: list[dict[str, float]], ref: list[dict[str, float]], n: int) -> dict[str, Any]:
    from shards import mia

    out: dict[str, Any] = {"records": n, "holdout_records": len(got) - n}
    # each record's score per attack, numbers only and in no record's order of ids (the report
    # plots their distributions and ROC curves; the workflow keeps them out of the ledger)
    scores: dict[str, dict[str, list[float]]] = {"deleted": {}, "holdout": {}}
    for attack in ("loss", "zlib", "min_k", "min_k_pp"):
        if not all(attack in g for g in got):  # Min-K%++ is left out where it cannot be estimated
            continue
        values = [g[attack] for g in got]
        out[f"auc_{attack}"] = round(mia.auc(values[:n], values[n:]), 4)
        scores["deleted"][attack], scores["holdout"][attack] = _rounded(values[:n]), _rounded(values[n:])
    calibrated = [g["loss"] - r["loss"] for g, r in zip(got, ref, strict=True)]
    out["auc_loss_calibrated"] = round(mia.auc(calibrated[:n], calibrated[n:]), 4)
    scores["deleted"]["loss_calibrated"] = _rounded(calibrated[:n])
    scores["holdout"]["loss_calibrated"] = _rounded(calibrated[n:])
    out[SCORES] = scores
    holdout_losses = sorted(g["loss"] for g in got[n:])
    out["deleted_mean_loss"] = round(statistics.fmean(g["loss"] for g in got[:n]), 4)
    out["holdout_loss_p5"] = round(holdout_losses[max(0, int(0.05 * len(holdout_losses)) - 1)], 4)
    out.update(verdict(max(v for k, v in out.items() if k.startswith("auc_")), n, len(got) - n))
    return out


SCORES = "scores"  # the per-record scores' key in a membership figure


def _rounded(values: Sequence[float]) -> list[float]:
    return sorted(round(v, 4) for v in values)


def split_scores(verification: dict[str, Any]) -> dict[str, Any]:
    """Take the per-record scores out of a verification (in place): {"membership": …, "by_shard":
    {shard: …}}, empty without a membership probe."""
    m = verification.get("membership")
    if not isinstance(m, dict):
        return {}
    out: dict[str, Any] = {}
    if SCORES in m:
        out["membership"] = m.pop(SCORES)
    by_shard = {k: f.pop(SCORES) for k, f in (m.get("by_shard") or {}).items() if SCORES in f}
    if by_shard:
        out["by_shard"] = by_shard
    return out


def verdict(auc: float, n: int, m: int) -> dict[str, Any]:
    """Passed, failed or inconclusive, for the highest AUC of ``n`` deleted records against ``m``
    holdout ones. Under no membership the AUC is 0.5 ± se (Mann-Whitney, normal approximation):
    with few records se is wide: the test has power only if the smallest AUC it tells from chance
    is under the limit. Without power the verdict is inconclusive whatever the AUC (with a handful
    of records, text features alone can order them all above the holdout); with power, an AUC
    over the limit and beyond chance is a failure, one over the limit within chance inconclusive."""
    se = ((n + m + 1) / (12 * n * m)) ** 0.5
    detectable = round(0.5 + Z_POWER * se, 4)
    out: dict[str, Any] = {"min_detectable_auc": detectable}
    if detectable > AUC_LIMIT:
        return {
            **out,
            "verdict": "inconclusive",
            "reason": f"too few records for the test to have power: {n} "
            f"deleted against {m} holdout records detect only AUC >= {detectable:.2f} (limit {AUC_LIMIT}; "
            f"observed {auc:.2f})",
        }
    if auc <= AUC_LIMIT:
        return {**out, "verdict": "passed"}
    if (auc - 0.5) / se > Z_FAIL:
        return {
            **out,
            "verdict": "failed",
            "reason": f"AUC {auc:.2f} is above {AUC_LIMIT} and beyond chance "
            f"for {n} records (z = {(auc - 0.5) / se:.1f})",
        }
    return {
        **out,
        "verdict": "inconclusive",
        "reason": f"AUC {auc:.2f} is above {AUC_LIMIT} but within chance for {n} records",
    }


def verbmem(
    replicas: Sequence[tuple[str, str, Sequence[str]]],
    deleted: Sequence[str],
    holdout: Sequence[str],
    max_tokens: int = 24,
    concurrency: int = 8,
) -> dict[str, Any]:
    """Mean ROUGE-L of greedy continuations per replica ((id, url, adapter names) each), for the
    deleted records and, as the baseline, for never-trained ones: templated text is partly
    predictable without any memory of the person, so only the gap to the baseline means
    memorisation. A replica serving a routing table reports its worst adapter."""

    def rouge(client: httpx.Client, url: str, model: str, text: str) -> float:
        words = text.split()
        half = max(1, len(words) // 2)
        prefix, truth = " ".join(words[:half]), " ".join(words[half:])
        req = {"model": model, "prompt": prefix, "max_tokens": max_tokens, "temperature": 0}
        resp = client.post(f"{url}/v1/completions", json=req)
        resp.raise_for_status()
        return rouge_l(" ".join(resp.json()["choices"][0]["text"].split()[: len(truth.split())]), truth)

    def mean_rouge(client: httpx.Client, url: str, model: str, texts: Sequence[str]) -> float:
        with ThreadPoolExecutor(concurrency) as pool:  # vLLM batches them
            scores = list(pool.map(lambda t: rouge(client, url, model, t), texts))
        return round(statistics.fmean(scores), 4) if scores else 0.0

    out: dict[str, dict[str, float]] = {}
    unreachable: list[str] = []
    with httpx.Client(timeout=60) as client:
        for rid, url, models in replicas:
            try:
                each = [
                    {"deleted": mean_rouge(client, url, m, deleted), "holdout": mean_rouge(client, url, m, holdout)}
                    for m in models
                ]
                out[rid] = max(each, key=lambda r: r["deleted"] - r["holdout"])
            except httpx.TransportError:  # died since it acknowledged: the caller takes it out of routing
                unreachable.append(rid)
    gap = max((r["deleted"] - r["holdout"] for r in out.values()), default=0.0)
    return {"rouge_l_by_replica": out, "max_gap_over_holdout": round(gap, 4), "unreachable": unreachable}
