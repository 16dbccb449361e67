"""Exact unlearning (S3T, Lethe's path) against approximate unlearning, measured side by side on
Gemma 3 270M and the generated corpus, at 16, 8 and 4 bits.

Models, all on the same base model and LoRA configuration (r 16 on all seven projections of all
layers, shards/specs.py's TrainConfig):
- retrain: S3T's recipe trained from scratch without the forget set, one per seed (the reference);
- S3T deactivation: the planner's served prefix of the original units (no training);
- S3T after background retrain: the cut units retrained without the records, the clean prefix
  carried over (what Lethe's training queue does after a deletion);
- GA, GradDiff, NPO, SalUn (tests/bench/approximate.py) from the original model.

MUSE's six criteria (Shi et al., 2024): VerbMem on the forget set (ROUGE-L of greedy
continuations of each record's second half), KnowMem on forget and retain (ROUGE-L of greedy
answers to cloze questions built from the corpus: code, city, profession), PrivLeak (Min-K% AUC of
forget against holdout records, relative to the retrained models' AUC at the same precision),
utility (retain KnowMem and holdout perplexity), scalability (forget-set sizes) and
sustainability (requests applied one after another); plus each method's wall-clock cost. Each
model is measured merged, then quantized round-to-nearest group-wise (tests/bench/quantize.py) to
8 and 4 bits, and with optimum-quanto's int8/int4 where ``--quanto`` is given.

Resumable: every trained adapter and every figure is kept under ``--out`` (results.json) and
reused by a re-run with the same arguments.

    .venv/bin/python tests/bench/unlearning_comparison.py [--quick] [--out DIR] [--seeds 6] [--quanto]
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from service import app as lethe  # noqa: E402
from service.config import Settings  # noqa: E402
from service.verify.probes import rouge_l  # noqa: E402
from shards import corpus, materialise, mia, planner, sequences, train  # noqa: E402
from shards.batches import encode_batch, labelled_logits  # noqa: E402
from shards.specs import TrainConfig  # noqa: E402
from tests.bench import approximate, quantize  # noqa: E402

SLICES = 4
BITS = (16, 8, 4)
QUESTIONS = (  # cloze prompt → the attribute that completes it (asked only where a record states it)
    ("The personal code of {name} is", "code"),
    ("{name} was born in", "city"),
    ("{name} works as a", "profession"),
)
SWAPPED = ("code", "city", "profession", "hobby", "year")  # SalUn's random labels
# never-trained general English: is the language model still intact? (the holdout people's records
# are mostly invented names and random codes, whose perplexity says little about that)
GENERAL = (
    "Water boils at one hundred degrees Celsius at sea level.",
    "The sun rises in the east and sets in the west.",
    "A week has seven days and a year has twelve months.",
    "Trees lose their leaves in autumn and grow new ones in spring.",
    "The capital of France is Paris, a city on the river Seine.",
    "Most people drink coffee or tea in the morning.",
    "The train to the airport leaves every twenty minutes.",
    "Children learn to read and write at primary school.",
    "The library is closed on Sundays and public holidays.",
    "She opened the window to let some fresh air into the room.",
    "Bread is made from flour, water, salt and yeast.",
    "The meeting was moved to Thursday afternoon because of the storm.",
)


@dataclass(frozen=True)
class Size:
    people: int  # trained, spread over the 4 slices of one shard
    records_per_person: int
    holdout: int  # never-trained people (PrivLeak's non-members, perplexity)
    forget: tuple[int, ...]  # forget-set sizes in people (scalability); the largest is the main one
    sequential: int  # the main forget set as this many successive requests (sustainability)
    seeds: int  # retrain references
    budget: int  # S3T sequences
    lrs: tuple[float, ...]  # the approximate methods' sweep
    epochs: int  # over the forget set, each approximate method


FULL = Size(
    people=12,
    records_per_person=3,
    holdout=20,
    forget=(1, 3),
    sequential=3,
    seeds=6,
    budget=2,
    lrs=(1e-4, 3e-4, 1e-3),
    epochs=5,
)
QUICK = Size(
    people=4, records_per_person=2, holdout=3, forget=(1, 2), sequential=2, seeds=2, budget=1, lrs=(3e-4,), epochs=2
)


class Results:
    """results.json under the output directory: every figure computed, saved as soon as it is."""

    def __init__(self, path: Path, config: dict[str, Any]) -> None:
        self.path = path
        config = json.loads(json.dumps(config))  # as it reads back (lists, not tuples)
        self.data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
        if "config" in self.data and _key(self.data["config"]) != _key(config):
            raise SystemExit(f"{path} holds results of another configuration: use another --out")
        self.data["config"] = config

    def get(self, key: str, compute: Callable[[], Any]) -> Any:
        if key not in self.data:
            self.data[key] = compute()
            self.path.write_text(json.dumps(self.data, indent=1, sort_keys=True))
        return self.data[key]


def _key(config: dict[str, Any]) -> dict[str, Any]:
    """What the kept figures depend on: every retrain seed's figures are kept under its own key,
    so a run with more seeds adds references to the same results."""
    return config | {"size": {k: v for k, v in config["size"].items() if k != "seeds"}}


@dataclass
class Data:
    c: corpus.Corpus
    slices: dict[int, list[train.TrainRecord]]
    placement: dict[str, tuple[int, int]]
    forget_people: list[corpus.Person]  # nested: the first k are the size-k forget set
    records: dict[str, list[dict[str, Any]]]  # subject id → its records

    def ids(self, people: Sequence[corpus.Person]) -> list[str]:
        return [r["id"] for p in people for r in self.records[p.subject_id]]

    def texts(self, people: Sequence[corpus.Person]) -> list[str]:
        return [r["text"] for p in people for r in self.records[p.subject_id]]

    def retain(self, forget: Sequence[corpus.Person]) -> list[corpus.Person]:
        gone = {p.subject_id for p in forget}
        return [p for p in self.c.trained if p.subject_id not in gone]


def build_data(size: Size, seed: int) -> Data:
    c = corpus.generate(
        seed=seed, trained=size.people, holdout=size.holdout, records_per_person=size.records_per_person
    )
    records = {p.subject_id: list(c.records([p])) for p in c.trained + c.holdout}
    slices: dict[int, list[train.TrainRecord]] = {s: [] for s in range(SLICES)}
    placement = {}
    for i, p in enumerate(c.trained):
        for r in records[p.subject_id]:
            slices[i % SLICES].append(
                train.TrainRecord(r["id"], r["text"], hashlib.sha256(r["text"].encode()).digest())
            )
            placement[r["id"]] = (0, i % SLICES)
    forget = random.Random(seed).sample(c.trained, max(size.forget))
    return Data(c, slices, placement, forget, records)


# --------------------------------------------------------------------------------------------
# models


class Models:
    """The base model once in memory; every other model a merged copy of it."""

    def __init__(self, base: Path) -> None:
        from transformers import AutoTokenizer

        self.path = base
        self.tok = AutoTokenizer.from_pretrained(base)
        self.base = train.load_base(base).eval()

    def with_adapter(self, adapter: Path | None) -> torch.nn.Module:
        from peft import PeftModel

        model = copy.deepcopy(self.base)
        if adapter is None:
            return model
        return PeftModel.from_pretrained(model, adapter).merge_and_unload().eval()


def train_s3t(
    models: Models,
    data: Data,
    cfg: TrainConfig,
    orders: list[tuple[int, ...]],
    out: Path,
    excluded: frozenset[str] = frozenset(),
) -> dict[int, Path]:
    """Each sequence's unit trained (or resumed from disk); sequence → its unit directory."""
    dirs = {}
    for j, order in enumerate(orders):
        unit = train.UnitSpec(0, j, order, excluded=excluded)
        train.train_unit(models.path, unit, data.slices, cfg, out, progress=True)
        dirs[j] = out / unit.dir_name()
    return dirs


def s3t_plan(
    orders: list[tuple[int, ...]], data: Data, deleted: Sequence[str], retrained: frozenset[int] = frozenset()
) -> planner.ShardPlan:
    """The planner's choice for shard 0; ``retrained``: sequences whose version 1 (trained without
    ``deleted``) exists."""
    units = [
        planner.Unit(0, j, o, 1, None, frozenset(deleted)) if j in retrained else planner.Unit(0, j, o)
        for j, o in enumerate(orders)
    ]
    return planner.plan(units, data.placement, deleted).shards[0]


def served_adapter(unit_dir: Path, prefix: int, cfg: TrainConfig, out: Path, name: str, layers: int) -> Path | None:
    """The served adapter: the unit's blocks before ``prefix`` (None: a dead shard, the base model)."""
    if prefix == 0:
        return None
    last = train.stage_dir(unit_dir, cfg.num_blocks - 1)
    return materialise.truncate(last, prefix, layers, cfg.num_blocks, out, name).path


# --------------------------------------------------------------------------------------------
# measures


@torch.no_grad()
def generate(model: torch.nn.Module, tok: Any, prompts: Sequence[str], max_new_tokens: int) -> list[str]:
    tok.padding_side = "left"
    out: list[str] = []
    for i in range(0, len(prompts), 16):
        batch = tok(list(prompts[i : i + 16]), return_tensors="pt", padding=True)
        ids = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
        out += tok.batch_decode(ids[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    return out


def _words(text: str) -> list[str]:
    return [w.strip(".,;:!?") for w in text.split()]


def halves(text: str) -> tuple[str, str]:
    words = text.split()
    return " ".join(words[: len(words) // 2]), " ".join(words[len(words) // 2 :])


def questions(data: Data, people: Sequence[corpus.Person]) -> list[tuple[str, str]]:
    """(prompt, answer) for every fact a person's records state."""
    out = []
    for p in people:
        stated = " ".join(r["text"] for r in data.records[p.subject_id])
        for prompt, attr in QUESTIONS:
            fact = str(getattr(p, attr))
            if fact in stated:
                out.append((prompt.format(name=p.name), fact))
    return out


def rouge_prefix(generated: str, truth: str) -> float:
    """ROUGE-L of the generation's first words (as many as the truth has) against the truth."""
    return rouge_l(" ".join(_words(generated)[: len(truth.split())]), " ".join(_words(truth)))


@torch.no_grad()
def scores(model: torch.nn.Module, tok: Any, texts: Sequence[str]) -> list[dict[str, float]]:
    """LOSS and Min-K% of each text (mia's definitions), from the logits at labelled positions only."""
    out = []
    for i in range(0, len(texts), 16):
        batch = encode_batch(tok, list(texts[i : i + 16]))
        targets, logits = labelled_logits(model, batch, bf16=False)
        logp = torch.log_softmax(logits.float(), -1).gather(1, targets[:, None])[:, 0]
        counts = (batch["labels"][:, 1:] != -100).sum(1).tolist()
        for text, part in zip(texts[i : i + 16], torch.split(logp, counts), strict=True):
            out.append(mia.token_scores(text, part.tolist(), part.tolist()))
    return out


def measure(model: torch.nn.Module, tok: Any, data: Data, forget: Sequence[corpus.Person]) -> dict[str, float]:
    """The criteria on one model: one batch of greedy generations (VerbMem's continuations, the
    forget and retain questions) and one scoring pass (Min-K% for PrivLeak, LOSS for perplexity)."""
    f_texts, h_texts = data.texts(forget), data.texts(data.c.holdout)
    cont = [halves(t) for t in f_texts]
    qa_f, qa_r = questions(data, forget), questions(data, data.retain(forget))
    prompts = [c[0] for c in cont] + [q for q, _ in qa_f] + [q for q, _ in qa_r]
    got = generate(model, tok, prompts, 12)
    g_cont, g_f, g_r = got[: len(cont)], got[len(cont) : len(cont) + len(qa_f)], got[len(cont) + len(qa_f) :]
    s = scores(model, tok, f_texts + h_texts + list(GENERAL))
    n, m = len(f_texts), len(f_texts) + len(h_texts)
    minks = [x["min_k"] for x in s[:m]]
    return {
        "verbmem_forget": round(statistics.fmean(map(rouge_prefix, g_cont, [c[1] for c in cont])), 4),
        "knowmem_forget": round(statistics.fmean(map(rouge_prefix, g_f, [a for _, a in qa_f])), 4),
        "knowmem_retain": round(statistics.fmean(map(rouge_prefix, g_r, [a for _, a in qa_r])), 4),
        "auc_min_k": round(mia.auc(minks[:n], minks[n:]), 4),
        "ppl_holdout": round(math.exp(statistics.fmean(x["loss"] for x in s[n:m])), 3),
        "ppl_general": round(math.exp(statistics.fmean(x["loss"] for x in s[m:])), 3),
    }


def at_precisions(
    model: torch.nn.Module, tok: Any, data: Data, forget: Sequence[corpus.Person], bits: Sequence[Any]
) -> dict[str, Any]:
    """The criteria at each precision (``model`` itself is quantized for the last: not kept)."""
    out = {}
    for i, b in enumerate(bits):
        q = model if i == len(bits) - 1 else copy.deepcopy(model)
        err = quantize_model(q, b)
        out[str(b)] = {**measure(q, tok, data, forget), "quantization_error": round(err, 5)}
        del q
    return out


def quantize_model(model: torch.nn.Module, bits: Any) -> float:
    if isinstance(bits, int):
        return quantize.quantize_(model, bits)["mean_relative_error"]
    from optimum.quanto import freeze, qint4, qint8
    from optimum.quanto import quantize as quanto_quantize

    quanto_quantize(
        model, weights={"quanto-int8": qint8, "quanto-int4": qint4}[bits], exclude=["lm_head", "model.embed_tokens"]
    )
    freeze(model)
    return float("nan")


# --------------------------------------------------------------------------------------------
# the run


@dataclass
class Run:
    size: Size
    data: Data
    models: Models
    cfg: TrainConfig
    out: Path
    results: Results
    bits: tuple[Any, ...]
    orders: list[tuple[int, ...]]
    layers: int = 0

    def forget(self, k: int) -> list[corpus.Person]:
        return self.data.forget_people[:k]

    def timed_adapter(self, key: str, make: Callable[[], Path | None]) -> tuple[Path | None, float]:
        t0 = time.perf_counter()
        path = make()
        secs = self.results.get(f"seconds/{key}", lambda: round(time.perf_counter() - t0, 2))
        return path, secs

    def retrain(self, k: int, seed: int) -> tuple[Path | None, float]:
        """The reference: S3T's recipe from scratch without the size-k forget set, sequence 0's order."""
        excluded = frozenset(self.data.ids(self.forget(k)))
        cfg = replace(self.cfg, seed=seed)
        out = self.out / f"retrain-k{k}-seed{seed}"

        def make() -> Path | None:
            dirs = train_s3t(self.models, self.data, cfg, self.orders[:1], out, excluded)
            return served_adapter(dirs[0], self.cfg.num_blocks, cfg, out / "served", "full", self.layers)

        return self.timed_adapter(f"retrain-k{k}-seed{seed}", make)

    def s3t_cut(self, k: int) -> tuple[Path | None, float, dict[str, Any]]:
        deleted = self.data.ids(self.forget(k))
        t0 = time.perf_counter()
        p = s3t_plan(self.orders, self.data, deleted)
        path = served_adapter(
            self.unit_dir(p.sequence),
            p.prefix,
            self.cfg,
            self.out / "served",
            f"k{k}-q{p.sequence}-p{p.prefix}",
            self.layers,
        )
        secs = self.results.get(f"seconds/s3t-cut-k{k}", lambda: round(time.perf_counter() - t0, 3))
        return (
            path,
            secs,
            {"sequence": p.sequence, "depth": p.prefix, "of": self.cfg.num_blocks, "cuts": dict(p.tainted)},
        )

    def measured(
        self, adapter: Path | None, forget: Sequence[corpus.Person], bits: Sequence[Any] = ()
    ) -> dict[str, Any]:
        """The merged model's figures (at each of ``bits``: a row per precision)."""
        model = self.models.with_adapter(adapter)
        if bits:
            return at_precisions(model, self.models.tok, self.data, forget, bits)
        return measure(model, self.models.tok, self.data, forget)

    def unit_dir(self, sequence: int) -> Path:
        return self.out / "original" / train.UnitSpec(0, sequence, self.orders[sequence]).dir_name()

    def s3t_retrained(self, k: int) -> tuple[Path | None, float]:
        """Every unit the deletion cut retrained without the records from its clean prefix on (the
        prefix carried over), as Lethe's training queue does; then the planner's choice."""
        deleted = frozenset(self.data.ids(self.forget(k)))
        cut = s3t_plan(self.orders, self.data, list(deleted)).tainted
        out = self.out / f"s3t-retrain-k{k}"

        def make() -> Path | None:
            dirs = {}
            for j, first in cut.items():
                unit = train.UnitSpec(0, j, self.orders[j], 1, deleted, self.unit_dir(j), first)
                train.train_unit(self.models.path, unit, self.data.slices, self.cfg, out, progress=True)
                dirs[j] = out / unit.dir_name()
            p = s3t_plan(self.orders, self.data, list(deleted), frozenset(cut))
            src = dirs.get(p.sequence) or self.unit_dir(p.sequence)
            return served_adapter(src, p.prefix, self.cfg, out / "served", f"q{p.sequence}-p{p.prefix}", self.layers)

        return self.timed_adapter(f"s3t-retrain-k{k}", make)

    def approximate(
        self,
        setting: approximate.Setting,
        forget: list[corpus.Person],
        start: torch.nn.Module,
        gone: Sequence[corpus.Person] = (),
        seed: int = 0,
    ) -> tuple[torch.nn.Module, float]:
        """``start`` unlearned of ``forget`` by ``setting``; ``gone``: people forgotten by earlier
        requests (out of the retain set too)."""
        retain = self.data.texts(self.data.retain([*gone, *forget]))
        texts = self.data.texts(forget)
        others = [p for p in self.data.c.trained + self.data.c.holdout if p not in forget and p not in gone]
        rng = random.Random(seed)
        relabelled = []
        for p in forget:
            other = rng.choice(others)
            for r in self.data.records[p.subject_id]:
                t = r["text"]
                for attr in SWAPPED:
                    t = t.replace(str(getattr(p, attr)), str(getattr(other, attr)))
                relabelled.append(t)
        steps = setting.epochs * -(-len(texts) // setting.batch_size)
        bar = tqdm(total=steps, desc=f"{setting.name()} k={len(forget)}", leave=False)
        t0 = time.perf_counter()

        def step(loss: float) -> None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.2f}")

        model = approximate.unlearn(
            copy.deepcopy(start),
            self.models.tok,
            setting,
            texts,
            retain,
            relabelled,
            self.cfg,
            self.models.path,
            seed,
            step,
        )
        bar.close()
        return model, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a reduced size: every method and precision, a few minutes")
    ap.add_argument(
        "--out", type=Path, default=None, help="results and adapters (default var/bench/unlearning[-quick])"
    )
    ap.add_argument("--seeds", type=int, default=None, help="retrain references (default 6; quick 2)")
    ap.add_argument("--seed", type=int, default=0, help="the corpus and forget set")
    ap.add_argument("--quanto", action="store_true", help="also optimum-quanto int8/int4 (compiles its kernels once)")
    ap.add_argument("--plots", type=Path, default=None, help="write the plots (SVG) into this directory")
    args = ap.parse_args()
    size = QUICK if args.quick else FULL
    if args.seeds:
        size = replace(size, seeds=args.seeds)
    out = args.out or ROOT / "var" / "bench" / ("unlearning-quick" if args.quick else "unlearning")
    out.mkdir(parents=True, exist_ok=True)
    bits: tuple[Any, ...] = BITS + (("quanto-int8", "quanto-int4") if args.quanto else ())
    # quick: the recipe's stop check from the second epoch (it stops once a stage recalls its slice)
    cfg = TrainConfig(min_epochs=2, check_every=1) if args.quick else TrainConfig()
    config = {"size": asdict(size), "seed": args.seed, "bits": list(bits), "train": asdict(cfg)}
    started = time.perf_counter()
    results = Results(out / "results.json", config)
    base = lethe.base_model(Settings(var_dir=ROOT / "var"), progress=True).path
    models = Models(base)
    data = build_data(size, args.seed)
    orders = sequences.cyclic(SLICES, size.budget)
    run = Run(size, data, models, cfg, out, results, bits, orders, models.base.config.num_hidden_layers)

    t0 = time.perf_counter()
    original = train_s3t(models, data, cfg, orders, out / "original")
    results.get("seconds/original", lambda: round(time.perf_counter() - t0, 1))
    full = s3t_plan(orders, data, [])
    original_path = served_adapter(
        original[full.sequence], cfg.num_blocks, cfg, out / "served", f"original-q{full.sequence}", run.layers
    )
    main_k = max(size.forget)
    report = {"config": config}
    report["main"] = main_table(run, main_k, original_path)
    report["target"] = target(report["main"], list(map(str, bits)))
    report["scalability"] = {str(k): scalability(run, k, original_path, report["main"]) for k in size.forget}
    report["sustainability"] = sustainability(run, main_k, original_path, report["scalability"])
    report["seconds"] = round(time.perf_counter() - started, 1)
    (out / "report.json").write_text(json.dumps(report, indent=1, sort_keys=True))
    print_report(report, size)
    if args.plots:
        plot(report, args.plots)


def main_table(run: Run, k: int, original_path: Path | None) -> dict[str, Any]:
    """Every model at the main forget size, at every precision; the approximate methods' sweep."""
    forget, tok = run.forget(k), run.models.tok
    res, rows = run.results, {}
    rows["original"] = res.get("main/original", partial(run.measured, original_path, forget, run.bits))
    for seed in range(run.size.seeds):
        path, secs = run.retrain(k, seed)
        rows[f"retrain seed {seed}"] = {
            **res.get(
                f"main/retrain-{seed}",
                partial(run.measured, path, forget, run.bits),
            ),
            "seconds": secs,
        }
    path, secs, plan = run.s3t_cut(k)
    rows["S3T deactivation"] = {
        **res.get("main/s3t-cut", partial(run.measured, path, forget, run.bits)),
        "seconds": secs,
        "plan": plan,
    }
    path, secs = run.s3t_retrained(k)
    rows["S3T after retrain"] = {
        **res.get("main/s3t-retrain", partial(run.measured, path, forget, run.bits)),
        "seconds": secs,
    }
    start = run.models.with_adapter(original_path)
    retrain_km = statistics.fmean(rows[f"retrain seed {s}"]["16"]["knowmem_forget"] for s in range(run.size.seeds))
    for method in approximate.METHODS:
        sweep = {}
        for lr in run.size.lrs:
            setting = approximate.Setting(method, lr, run.size.epochs)

            def tuned(setting: approximate.Setting = setting) -> dict[str, Any]:
                model, secs = run.approximate(setting, forget, start)
                return {**measure(model, tok, run.data, forget), "seconds": round(secs, 1)}

            if len(run.size.lrs) > 1:  # one setting: nothing to choose between
                sweep[setting.name()] = res.get(f"sweep/{setting.name()}", tuned)
        name = (
            pick(sweep, retrain_km) if sweep else approximate.Setting(method, run.size.lrs[0], run.size.epochs).name()
        )
        setting = _setting(run, name)

        def measured(setting: approximate.Setting = setting) -> dict[str, Any]:
            model, secs = run.approximate(setting, forget, start)
            return {**at_precisions(model, tok, run.data, forget, run.bits), "seconds": round(secs, 1)}

        rows[method] = {**res.get(f"main/{name}", measured), "setting": name, "sweep": sweep}
    add_privleak(rows, run)
    return rows


TARGET = ("verbmem_forget", "knowmem_forget", "privleak")


def target(main: dict[str, Any], bits: list[str]) -> dict[str, Any]:
    """The comparison's target: at each precision, is each S3T model's forget VerbMem, KnowMem and
    PrivLeak inside the retrained seeds' min–max? Outside, by how much."""
    seeds = [n for n in main if n.startswith("retrain seed")]
    verdict: dict[str, Any] = {}
    for name in ("S3T deactivation", "S3T after retrain"):
        for b in bits:
            for c in TARGET:
                lo, hi = min(main[s][b][c] for s in seeds), max(main[s][b][c] for s in seeds)
                v = main[name][b][c]
                verdict.setdefault(name, {}).setdefault(b, {})[c] = {
                    "value": v,
                    "min": lo,
                    "max": hi,
                    "outside_by": round(max(lo - v, v - hi, 0.0), 4),
                }
    return verdict


def pick(sweep: dict[str, dict[str, Any]], retrain_knowmem: float) -> str:
    """The stated rule: among settings whose forget KnowMem is down to the retrained models' (or
    below), the one that keeps the most retain KnowMem; if none gets there, the lowest forget KnowMem."""
    there = {n: r for n, r in sweep.items() if r["knowmem_forget"] <= retrain_knowmem + 0.05}
    if there:
        return max(there, key=lambda n: (there[n]["knowmem_retain"], -there[n]["knowmem_forget"]))
    return min(sweep, key=lambda n: (sweep[n]["knowmem_forget"], -sweep[n]["knowmem_retain"]))


def add_privleak(rows: dict[str, Any], run: Run) -> None:
    """MUSE's PrivLeak: (AUC − AUC_retrain) / AUC_retrain × 100, at each precision, against the mean
    of the retrained models' AUC at that precision."""
    for b in map(str, run.bits):
        ref = statistics.fmean(rows[f"retrain seed {s}"][b]["auc_min_k"] for s in range(run.size.seeds))
        for row in rows.values():
            if b in row:
                row[b]["privleak"] = round((row[b]["auc_min_k"] - ref) / ref * 100, 2)


def scalability(run: Run, k: int, original_path: Path | None, main: dict[str, Any]) -> dict[str, Any]:
    """At 16 bits: every model at forget size k (retrain: seed 0); the main size from ``main``."""
    if k == max(run.size.forget):
        keep = {
            "retrain seed 0": "retrain",
            "S3T deactivation": "S3T deactivation",
            "S3T after retrain": "S3T after retrain",
        }
        rows = {new: main[old]["16"] for old, new in keep.items()}
        return rows | {m: main[m]["16"] for m in approximate.METHODS}
    forget, tok, res = run.forget(k), run.models.tok, run.results
    rows = {}
    path, _ = run.retrain(k, 0)
    rows["retrain"] = res.get(f"scale/{k}/retrain", partial(run.measured, path, forget))
    path, _, _ = run.s3t_cut(k)
    rows["S3T deactivation"] = res.get(f"scale/{k}/s3t-cut", partial(run.measured, path, forget))
    path, _ = run.s3t_retrained(k)
    rows["S3T after retrain"] = res.get(f"scale/{k}/s3t-retrain", partial(run.measured, path, forget))
    start: torch.nn.Module | None = None
    for method in approximate.METHODS:
        setting = _setting(run, _chosen(run, method))

        def measured(setting: approximate.Setting = setting) -> dict[str, Any]:
            nonlocal start
            start = start or run.models.with_adapter(original_path)
            model, secs = run.approximate(setting, forget, start)
            return {**measure(model, tok, run.data, forget), "seconds": round(secs, 1)}

        rows[method] = res.get(f"scale/{k}/{method}", measured)
    return rows


def _chosen(run: Run, method: str) -> str:
    if len(run.size.lrs) == 1:
        return approximate.Setting(method, run.size.lrs[0], run.size.epochs).name()
    sweep = {n: v for n, v in run.results.data.items() if n.startswith(f"sweep/{method} ")}
    retrain_km = statistics.fmean(
        run.results.data[f"main/retrain-{s}"]["16"]["knowmem_forget"] for s in range(run.size.seeds)
    )
    return pick({n.removeprefix("sweep/"): v for n, v in sweep.items()}, retrain_km)


def _setting(run: Run, name: str) -> approximate.Setting:
    return next(
        approximate.Setting(m, lr, run.size.epochs)
        for m in approximate.METHODS
        for lr in run.size.lrs
        if approximate.Setting(m, lr, run.size.epochs).name() == name
    )


def sustainability(run: Run, k: int, original_path: Path | None, scale: dict[str, Any]) -> dict[str, Any]:
    """The size-k forget set as ``sequential`` requests one after another, at 16 bits: after each,
    forget KnowMem over everyone forgotten so far and retain KnowMem. What the scalability table
    already measured (S3T at a size it has; an approximate method's first request) is reused."""
    tok, res = run.models.tok, run.results
    people = run.forget(k)
    cuts = [round(len(people) * (i + 1) / run.size.sequential) for i in range(run.size.sequential)]
    rows: dict[str, list[dict[str, Any]]] = {"S3T deactivation": [], "S3T after retrain": []}
    for n in cuts:
        path, _, plan = run.s3t_cut(n)
        known = scale.get(str(n), {})
        cut = known.get("S3T deactivation") or res.get(f"seq/{n}/s3t-cut", partial(run.measured, path, people[:n]))
        rows["S3T deactivation"].append({**cut, "depth": plan["depth"]})
        if "S3T after retrain" in known:
            rows["S3T after retrain"].append(known["S3T after retrain"])
        else:
            path, _ = run.s3t_retrained(n)
            rows["S3T after retrain"].append(res.get(f"seq/{n}/s3t-retrain", partial(run.measured, path, people[:n])))
    for method in approximate.METHODS:
        setting = _setting(run, _chosen(run, method))
        first = scale.get(str(cuts[0]), {}).get(method)  # the same run as the scalability table's
        if first is not None and all(f"seq/{n}/{method}" in res.data for n in cuts[1:]):
            rows[method] = [first] + [res.data[f"seq/{n}/{method}"] for n in cuts[1:]]
            continue
        model = run.models.with_adapter(original_path)
        rows[method] = []
        done = 0
        for n in cuts:  # each request unlearns only its own people, from the model the last one left
            model, _ = run.approximate(setting, people[done:n], model, gone=people[:done])
            if done == 0 and first is not None:
                rows[method].append(first)
            else:
                rows[method].append(res.get(f"seq/{n}/{method}", partial(measure, model, tok, run.data, people[:n])))
            done = n
    return {"requests": cuts, "rows": rows}


# --------------------------------------------------------------------------------------------
# output

CRITERIA = (
    ("verbmem_forget", "VerbMem forget ↓"),
    ("knowmem_forget", "KnowMem forget ↓"),
    ("privleak", "PrivLeak (→ 0)"),
    ("knowmem_retain", "KnowMem retain ↑"),
    ("ppl_holdout", "holdout perplexity ↓"),
    ("ppl_general", "general-text perplexity ↓"),
)


def print_report(report: dict[str, Any], size: Size) -> None:
    rows = report["main"]
    seeds = [n for n in rows if n.startswith("retrain seed")]
    for b in map(str, report["config"]["bits"]):
        print(f"\n### {b} bits" if b.isdigit() else f"\n### {b}")
        print("| model | " + " | ".join(h for _, h in CRITERIA) + " | cost s |")
        print("|---" * (len(CRITERIA) + 2) + "|")
        ref = {c: [rows[s][b][c] for s in seeds] for c, _ in CRITERIA}
        print(
            "| retrain (mean, min–max of "
            + f"{len(seeds)} seeds) | "
            + " | ".join(f"{statistics.fmean(v):.3f} ({min(v):.3f}–{max(v):.3f})" for v in ref.values())
            + " | "
            + f"{statistics.fmean(rows[s]['seconds'] for s in seeds):.0f} |"
        )
        for name, row in rows.items():
            if name.startswith("retrain seed") or b not in row:
                continue
            label = f"{name} ({row['setting'].split(' ', 1)[1]})" if "setting" in row else name
            cost = f"{row['seconds']:.0f}" if "seconds" in row else "–"
            print(
                f"| {label} | " + " | ".join(f"{row[b].get(c, float('nan')):.3f}" for c, _ in CRITERIA) + f" | {cost} |"
            )
    print(f"\n### Target: each S3T model's forget criteria inside the {len(seeds)} retrain seeds' min–max")
    bits = list(map(str, report["config"]["bits"]))
    print("| model | criterion | " + " | ".join(bits) + " |")
    print("|---" * (len(bits) + 2) + "|")
    for name, by_bits in report["target"].items():
        for c in TARGET:
            cells = []
            for b in bits:
                t = by_bits[b][c]
                mark = "inside" if t["outside_by"] == 0 else f"**outside by {t['outside_by']:.3f}**"
                cells.append(f"{t['value']:.3f} ({t['min']:.3f}–{t['max']:.3f}) {mark}")
            print(f"| {name} | {c} | " + " | ".join(cells) + " |")
        inside = sum(by_bits[b][c]["outside_by"] == 0 for b in bits for c in TARGET)
        print(f"| {name} | inside | {inside} of {len(bits) * len(TARGET)} |" + " |" * (len(bits) - 1))
    print("\n### Recovery by quantization (forget KnowMem and VerbMem at 8 and 4 bits against 16 bits)")
    print("| model | KnowMem 16 → 8 → 4 | VerbMem 16 → 8 → 4 |")
    print("|---|---|---|")
    for name, row in rows.items():
        if all(str(b) in row for b in BITS):
            km = " → ".join(f"{row[str(b)]['knowmem_forget']:.3f}" for b in BITS)
            vm = " → ".join(f"{row[str(b)]['verbmem_forget']:.3f}" for b in BITS)
            print(f"| {name} | {km} | {vm} |")
    print("\n### Scalability (16 bits): forget KnowMem / retain KnowMem by forget-set size (people)")
    sizes = list(report["scalability"])
    print("| model | " + " | ".join(f"{k} people" for k in sizes) + " |")
    print("|---" * (len(sizes) + 1) + "|")
    for name in report["scalability"][sizes[0]]:
        print(
            f"| {name} | "
            + " | ".join(
                f"{row['knowmem_forget']:.3f} / {row['knowmem_retain']:.3f}"
                for row in (report["scalability"][k][name] for k in sizes)
            )
            + " |"
        )
    sus = report["sustainability"]
    print(
        f"\n### Sustainability (16 bits): after each of {len(sus['requests'])} requests "
        f"(people forgotten so far: {sus['requests']})"
    )
    print("| model | forget KnowMem / retain KnowMem after each request |")
    print("|---|---|")
    for name, seq in sus["rows"].items():
        print(f"| {name} | " + " → ".join(f"{r['knowmem_forget']:.3f} / {r['knowmem_retain']:.3f}" for r in seq) + " |")
    print(f"\nrun time {report['seconds']:.0f} s; corpus seed {report['config']['seed']}; size {asdict(size)}")


def plot(report: dict[str, Any], where: Path) -> None:
    from matplotlib.figure import Figure

    where.mkdir(parents=True, exist_ok=True)
    rows = {n: r for n, r in report["main"].items() if not n.startswith("retrain seed ") or n.endswith(" 0")}
    bits = [b for b in map(str, report["config"]["bits"])]
    for metric, title in (("knowmem_forget", "forget KnowMem"), ("verbmem_forget", "forget VerbMem")):
        fig = Figure(figsize=(7.5, 3.2))
        ax = fig.add_subplot()
        width = 0.8 / len(bits)
        names = list(rows)
        for i, b in enumerate(bits):
            ax.bar(
                [x + i * width for x in range(len(names))],
                [rows[n][b][metric] for n in names],
                width,
                label=f"{b} bits" if b.isdigit() else b,
            )
        ax.set_xticks([x + width * (len(bits) - 1) / 2 for x in range(len(names))], names, rotation=20, ha="right")
        ax.set_ylabel(title)
        ax.set_ylim(0, 1)
        ax.legend(frameon=False, fontsize=8)
        ax.spines[["top", "right"]].set_visible(False)
        fig.savefig(where / f"unlearning-{metric}.svg", bbox_inches="tight", metadata={"Date": None})


if __name__ == "__main__":
    main()
