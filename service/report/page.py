"""The report as one self-contained HTML page: inline CSS and SVG, no script, nothing fetched (its
Content-Security-Policy says so to the browser too)."""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Sequence
from typing import Any

from service.report import plots

SECTIONS = ("request", "timeline", "plan", "proof", "equivalence", "probes", "ledger")
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"
ATTACKS = ("loss", "loss_calibrated", "zlib", "min_k", "min_k_pp")
STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#1d2733;background:#f6f7f9}
main{max-width:1040px;margin:0 auto;padding:24px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:0 0 10px}
section{background:#fff;border:1px solid #dde2e8;border-radius:6px;padding:16px 20px;margin:16px 0}
table{border-collapse:collapse;margin:6px 0 10px}td,th{border-bottom:1px solid #e6e9ee;padding:3px 10px 3px 0;
text-align:left;vertical-align:top}th{font-weight:600;color:#4a5868}code{font-size:12px}
.ok{color:#1e7d32;font-weight:600}.bad{color:#b3261e;font-weight:600}.meh{color:#a15c00;font-weight:600}
.verdict{display:inline-block;padding:2px 10px;border-radius:10px;color:#fff;font-weight:600}
.passed{background:#1e7d32}.failed{background:#b3261e}.inconclusive{background:#a15c00}.none{background:#777}
.note{color:#56616d;font-size:13px}figure{margin:8px 0}svg{max-width:100%;height:auto}
"""


def e(value: object) -> str:
    return html.escape(str(value), quote=True)


def digest(value: str | None, missing: str = "—") -> str:
    """A hash as its first 16 hex digits, in code type (the full one is in the JSON twin)."""
    return f"<code>{e((value or missing)[:16])}</code>"


def flag(ok: bool | None, yes: str = "yes", no: str = "no") -> str:
    if ok is None:
        return '<span class="meh">not checked</span>'
    return f'<span class="ok">{yes}</span>' if ok else f'<span class="bad">{no}</span>'


def table(head: Sequence[str], rows: Iterable[Sequence[object]], raw: bool = False) -> str:
    """``raw``: the cells are HTML already (built here from escaped parts)."""
    body = "".join("<tr>" + "".join(f"<td>{c if raw else e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return "<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + f"</tr>{body}</table>"


def section(name: str, title: str, body: str) -> str:
    return f'<section id="{name}"><h2>{e(title)}</h2>{body}</section>'


def render(report: dict[str, Any]) -> str:
    req = report["request"]
    verdict = req.get("verdict") or "none"
    parts = [
        section("request", "Request", _request(req)),
        section("timeline", "Timeline", _timeline(report["timeline"])),
        section("plan", "Plan", _plan(report.get("plan"))),
        section("proof", "Structural proof", _proof(report["proof"])),
        section("equivalence", "Equivalence", _equivalence(report["equivalence"])),
        section("probes", "Probes", _probes(report["probes"])),
    ]
    if report.get("kb"):
        parts.append(section("kb", "Knowledge base", _kb(report["kb"])))
    parts.append(section("ledger", "Ledger", _ledger(report["ledger"])))
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{e(CSP)}">'
        f"<title>Lethe deletion report {e(req['id'])}</title><style>{STYLE}</style></head><body><main>"
        f"<h1>Deletion {e(req['id'])}</h1>"
        f'<p>status <b>{e(req["status"])}</b> · verdict <span class="verdict {e(verdict)}">{e(verdict)}</span>'
        + (f' <span class="note">{e(req["reason"])}</span>' if req.get("reason") else "")
        + "</p>"
        + "".join(parts)
        + '<p class="note">This page holds hashes, counts, times and figures only: no identity, no record, '
        "no record id, no fact about the person.</p></main></body></html>"
    )


def _request(req: dict[str, Any]) -> str:
    rows = [
        ("type", req["type"]),
        ("outcome", req.get("outcome") or "—"),
        ("methods", ", ".join(req.get("methods") or []) or "—"),
        ("identity types", ", ".join(req["identity_types"])),
        ("subject hashes (keyed, first 16 hex)", ", ".join(req["subject_hashes"])),
        (
            "record ids named / unknown / same text elsewhere",
            _slash(req, "record_ids_named", "unknown_records", "same_text_records"),
        ),
        ("batch", req.get("batch_id") or "—"),
        ("received", req["received"]),
        ("forgotten (every routable replica serves clean weights)", req.get("forgotten") or "—"),
        ("completed (verified, receipt)", req.get("completed") or "—"),
        ("deadline", req["deadline"]),
    ]
    return table(("", ""), rows)


def _slash(d: dict[str, Any], *keys: str) -> str:
    return " / ".join(str(d.get(k, 0)) for k in keys)


def _timeline(t: dict[str, Any]) -> str:
    stages = [(s["stage"], float(s["seconds"])) for s in t["stages"]]
    out = table(
        ("milestone", "at", "seconds after received"),
        [(m["milestone"], m["at"], m["seconds"]) for m in t["milestones"]],
    )
    if not stages:
        return out + '<p class="note">No step times recorded (the request has not run).</p>'
    out += f"<figure>{plots.waterfall(stages)}</figure>"
    return out + table(("stage", "seconds"), [(k, f"{v:.4f}") for k, v in stages])


def _plan(p: dict[str, Any] | None) -> str:
    if p is None:
        return '<p class="note">No plan: the request named no training records, or has not run.</p>'
    full = p.get("full_depth")
    before = p.get("depth_before") or {}
    rows = []
    for shard, s in sorted(p["served"].items(), key=lambda kv: int(kv[0])):
        cuts = ", ".join(f"sequence {q}: from block {b}" for q, b in sorted(s.get("cuts", {}).items())) or "none"
        was = before.get(shard, "—")
        was = f"{full} (as trained)" if was is None else was
        rows.append((shard, s["sequence"], s["version"], was, f"{s['prefix']} of {full}", cuts))
    head = ("shard", "sequence served", "version", "depth before", "depth after", "blocks destroyed")
    out = table(head, rows)
    out += table(
        ("", ""),
        [
            ("training records deleted", p["records"]),
            ("shards holding them", ", ".join(map(str, p["affected_shards"])) or "none"),
            ("shards with no clean block (base model for them)", ", ".join(map(str, p["dead_shards"])) or "none"),
            ("retrained in the background", ", ".join(p["retrain_queued"]) or "nothing"),
            ("knowledge-base documents", p.get("documents", 0)),
        ],
    )
    return out


def _proof(p: dict[str, Any]) -> str:
    now = p["now"]
    out = (
        f"<p>At completion: no live block's lineage held a deleted record: {flag(p.get('at_completion'))}. "
        f"Now: {flag(now['excludes'])} ({now['records']} record(s) of the request in {now['cells']} "
        "(shard, slice) cell(s), checked against every block served now).</p>"
    )
    rows = [
        (
            *(e(b.get(k, "—")) for k in ("shard", "sequence", "version", "block")),
            e(", ".join(map(str, b.get("slices", [])))),
            e(b.get("records", "—")),
            digest(b.get("records_sha256")),
            flag(b.get("holds_deleted", 1) == 0, "0", e(b.get("holds_deleted", "lineage missing"))),
        )
        for b in now["blocks"]
    ]
    head = ("shard", "sequence", "version", "block", "slices", "records", "records sha256", "deleted records held")
    if rows:
        out += table(head, rows, raw=True)
    else:
        out += '<p class="note">No adapter block is served (the base model): nothing to hold a record.</p>'
    return out


def _equivalence(q: dict[str, Any]) -> str:
    at = q.get("at_completion")
    out = ""
    if at:
        out += (
            f"<p>At completion: generation {e(at['generation'])}, clean adapter "
            f"{digest(at.get('served_sha256'), 'base model')}.</p>"
        )
        out += table(("replica", "served it"), [(k, flag(v)) for k, v in sorted(at["replicas"].items())], raw=True)
    now = q["now"]
    out += f"<p>Now: generation {e(now['generation'])}, {digest(now['served_sha256'], 'base model')}.</p>"
    rows = [
        (
            e(r["id"]),
            flag(r["routable"]),
            digest(r["serving_sha256"]),
            e(r["acked_generation"]),
            flag(r["matches"]),
        )
        for r in now["replicas"]
    ]
    return out + table(
        ("replica", "routable", "serving sha256", "acknowledged generation", "serves the published adapter"),
        rows,
        raw=True,
    )


def _probes(p: dict[str, Any]) -> str:
    m, scores, vm = p.get("membership"), p.get("scores"), p.get("verbmem")
    if not m and not vm:
        return f'<p class="note">No probe ran: {e(p.get("skipped") or "the worker has no probe configuration")}.</p>'
    v = p.get("verdict") or "none"
    out = f'<p>Verdict <span class="verdict {e(v)}">{e(v)}</span>'
    out += (f' <span class="note">{e(p["reason"])}</span>' if p.get("reason") else "") + "</p>"
    if p.get("scope"):
        scope = p["scope"]
        others = len(scope.get("batches", [scope["batch"]])) - 1  # batches verified with it
        joined = f" and {others} other batch{'es' if others > 1 else ''}" if others else ""
        out += f'<p class="note">Scored with its batch {e(scope["batch"])}{e(joined)}'
        out += f" ({e(scope['records'])} records).</p>"
    if p.get("sample"):
        out += f'<p class="note">A spread sample of {e(p["sample"]["records"])} of {e(p["sample"]["of"])} records.</p>'
    if m:
        out += _membership(m, (scores or {}).get("membership"))
    if vm:
        out += "<h3>VerbMem</h3>"
        out += f"<figure>{plots.verbmem(vm['rouge_l_by_replica'])}</figure>"
        out += (
            f"<p>Largest gap over never-trained records: {e(vm['max_gap_over_holdout'])} (ROUGE-L of greedy "
            "continuations of each record's first half). The weights served before the deletion were destroyed "
            "by it: the never-trained records are the baseline a model without the person's data reaches.</p>"
        )
    return out


def _membership(m: dict[str, Any], scores: dict[str, Any] | None) -> str:
    out = "<h3>Membership inference</h3>"
    aucs = [(k.removeprefix("auc_"), m[k]) for k in sorted(m) if k.startswith("auc_")]
    out += table(
        ("", ""),
        [
            ("deleted records / holdout records", f"{m.get('records')} / {m.get('holdout_records')}"),
            ("smallest AUC this test tells from chance", m.get("min_detectable_auc")),
            ("verdict", m.get("verdict")),
            ("scored with", m.get("scored_with")),
        ],
    )
    if not scores:
        return (
            out
            + table(("attack", "AUC"), aucs)
            + '<p class="note">Per-record scores were not kept for this request.</p>'
        )
    attacks = [a for a in ATTACKS if a in scores["deleted"] and scores["deleted"][a] and scores["holdout"].get(a)]
    svg, figures = plots.rocs(scores, attacks)
    rows = [
        (a, figures[a]["auc"], f"[{figures[a]['interval'][0]:.2f}, {figures[a]['interval'][1]:.2f}]") for a in attacks
    ]
    out += table(("attack", "AUC", "95 % interval"), rows)
    out += f'<figure class="roc">{svg}</figure>'
    shown = [a for a in ("loss", "loss_calibrated") if a in attacks]
    out += f'<figure class="distributions">{plots.distributions(scores, shown)}</figure>'
    return out


def _kb(kb: dict[str, Any]) -> str:
    rows = [(k, json.dumps(v, sort_keys=True)) for k, v in sorted(kb.items())]
    return table(("check", "result"), rows)


def _ledger(led: dict[str, Any]) -> str:
    cp = led.get("checkpoint")
    out = ""
    if cp:
        out += (
            f"<p>Newest signed checkpoint: {e(cp['size'])} entries, root {digest(cp['root'])}, "
            f"key {e(cp['key_name'])} ({e(cp['origin'])}); signature valid: {flag(cp['signature_ok'])}.</p>"
        )
    rows = [
        (
            e(x["seq"]),
            e(x["kind"]),
            e(x["created_at"]),
            digest(x["row_hash"]),
            flag(x["chain_ok"]),
            flag(x["inclusion_ok"]),
        )
        for x in led["entries"]
    ]
    head = ("seq", "kind", "at", "row hash", "chain hash recomputed", "included in the checkpoint")
    return out + table(head, rows, raw=True)
