"""The report's figures, drawn by matplotlib as inline SVG (no pyplot: no global state, safe in a
server's threads). Text stays text (svg.fonttype none): the page names no font to fetch."""

from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure

matplotlib.rcParams.update({"svg.fonttype": "none", "font.size": 9})
NO_METADATA = {"Date": None, "Creator": None, "Format": None, "Type": None}

DELETED, HOLDOUT = "#c0392b", "#2c7fb8"
Z95 = 1.96


def _svg(fig: Figure, name: str) -> str:
    """The figure as inline SVG, its element ids prefixed with ``name``: unique on a page that
    inlines several figures (matplotlib numbers them from 1 in each)."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata=NO_METADATA)
    text = buf.getvalue()
    text = text[text.index("<svg") :]  # inline: without the XML prolog and doctype
    text = re.sub(r'\bid="', f'id="{name}-', text)
    return text.replace("url(#", f"url(#{name}-").replace('href="#', f'href="#{name}-')


def roc(members: Sequence[float], nonmembers: Sequence[float]) -> tuple[list[float], list[float]]:
    """ROC points (false positive rate, true positive rate) of "lower score = member"."""
    thresholds = sorted(set(members) | set(nonmembers))
    fpr, tpr = [0.0], [0.0]
    for t in thresholds:
        fpr.append(sum(x <= t for x in nonmembers) / len(nonmembers))
        tpr.append(sum(x <= t for x in members) / len(members))
    return fpr, tpr


def auc_interval(auc: float, n: int, m: int) -> tuple[float, float]:
    """95 % interval of an AUC of ``n`` members against ``m`` non-members (Hanley & McNeil, 1982)."""
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    var = (auc * (1 - auc) + (n - 1) * (q1 - auc * auc) + (m - 1) * (q2 - auc * auc)) / (n * m)
    se = math.sqrt(max(var, 0.0))
    return max(0.0, auc - Z95 * se), min(1.0, auc + Z95 * se)


def waterfall(stages: Sequence[tuple[str, float]]) -> str:
    """Each stage as a bar from where the one before it ended (seconds since accepted)."""
    fig = Figure(figsize=(7, 0.3 * len(stages) + 0.9))
    ax = fig.add_subplot()
    start = 0.0
    for i, (name, secs) in enumerate(stages):
        ax.barh(i, max(secs, 1e-4), left=start, color="#7f8c8d" if name.endswith("queued") else "#34495e")
        ax.text(start + secs, i, f" {secs * 1000:.0f} ms" if secs < 10 else f" {secs:.1f} s", va="center")
        start += secs
    ax.set_yticks(range(len(stages)), [n for n, _ in stages])
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the request started its steps")
    ax.set_xlim(0, start * 1.25 or 1)
    ax.spines[["top", "right"]].set_visible(False)
    return _svg(fig, "waterfall")


def distributions(scores: dict[str, dict[str, list[float]]], attacks: Sequence[str]) -> str:
    """Histograms of each attack's per-record score: the deleted records against holdout records."""
    fig = Figure(figsize=(3.2 * len(attacks), 2.6))
    for i, attack in enumerate(attacks):
        ax = fig.add_subplot(1, len(attacks), i + 1)
        got, ref = scores["deleted"][attack], scores["holdout"][attack]
        lo, hi = min(got + ref), max(got + ref)
        bins = [lo + (hi - lo) * k / 20 for k in range(21)] if hi > lo else 10
        ax.hist(ref, bins=bins, density=True, alpha=0.55, color=HOLDOUT, label=f"holdout ({len(ref)})")
        ax.hist(got, bins=bins, density=True, alpha=0.55, color=DELETED, label=f"deleted ({len(got)})")
        ax.set_title(attack.replace("_", " "))
        ax.set_xlabel("score (lower: more member-like)")
        ax.set_yticks([])
        ax.spines[["top", "right", "left"]].set_visible(False)
        if i == 0:
            ax.legend(frameon=False)
    return _svg(fig, "distributions")


def rocs(scores: dict[str, dict[str, list[float]]], attacks: Sequence[str]) -> tuple[str, dict[str, Any]]:
    """ROC curves of every attack, with AUC and its 95 % interval (also returned, per attack)."""
    fig = Figure(figsize=(4.2, 4.0))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls="--", color="#999999", lw=1, label="chance")
    figures = {}
    for attack in attacks:
        got, ref = scores["deleted"][attack], scores["holdout"][attack]
        x, y = roc(got, ref)
        a = float(np.trapezoid(y, x))  # the Mann-Whitney AUC, ties counting half
        lo, hi = auc_interval(a, len(got), len(ref))
        figures[attack] = {"auc": round(a, 4), "interval": [round(lo, 4), round(hi, 4)]}
        ax.plot(x, y, label=f"{attack.replace('_', ' ')}: {a:.2f} [{lo:.2f}, {hi:.2f}]")
    ax.set_xlabel("false positive rate (holdout records called members)")
    ax.set_ylabel("true positive rate (deleted records called members)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_aspect("equal")
    ax.legend(frameon=False, fontsize=7, loc="lower right", title="AUC [95 % interval]", title_fontsize=7)
    return _svg(fig, "roc"), figures


def verbmem(by_replica: dict[str, dict[str, float]]) -> str:
    """ROUGE-L of greedy continuations per replica: the deleted records against never-trained ones."""
    groups = sorted(by_replica.items())
    fig = Figure(figsize=(1.4 * len(groups) + 2.2, 2.6))
    ax = fig.add_subplot()
    for i, (_, r) in enumerate(groups):
        ax.bar(i - 0.18, r["deleted"], 0.36, color=DELETED, label="deleted records" if i == 0 else None)
        ax.bar(i + 0.18, r["holdout"], 0.36, color=HOLDOUT, label="never-trained records" if i == 0 else None)
    ax.set_xticks(range(len(groups)), [n for n, _ in groups])
    ax.set_ylim(0, 1)
    ax.set_ylabel("ROUGE-L F1")
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(frameon=False, fontsize=7)
    return _svg(fig, "verbmem")
