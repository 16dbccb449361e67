"""The whole path on real parts: S3T units served by two vLLM CPU replicas behind the gateway,
deletions over REST and gRPC, replicas swapping adapters at runtime, probes, receipts.

On Gemma 3 270M (the default base model): the served model recalls the trained people's codes,
so forgetting is visible in the greedy completions. One stack per test session
(tests/integration/conftest.py; training ≈ 8 min, two replicas ≈ 1.5 min here), shared with the
retrieval-proxy tests; the tests run in order.
"""

from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime

import grpc
import httpx
import openai
import psycopg
import pytest
from transformers import AutoTokenizer

from service import app as lethe
from service.api.grpc.gen.lethe.v1 import deletion_pb2, deletion_pb2_grpc
from service.serving.vllm import VllmAdmin, VllmProcess
from service.store import serving as serving_store
from shards import corpus, mia, train
from tests.integration.conftest import Env

pytestmark = pytest.mark.slow
FINAL = {"completed", "failed", "cancelled"}


@pytest.fixture(scope="module")
def env(serving_env):
    return serving_env


def gateway(e: Env) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{e.stack.gateway_port}/v1", api_key=e.key, max_retries=0)


MAX_TOKENS = 12  # a six-character code is up to seven Gemma tokens


def complete(client: openai.OpenAI, prompt: str) -> str:
    r = client.completions.create(model="lethe", prompt=prompt, max_tokens=MAX_TOKENS, temperature=0)
    return r.choices[0].text


def recalled(e: Env, people: list[corpus.Person], ask=None) -> list[bool]:
    ask = ask or (lambda prompt: complete(gateway(e), prompt))
    out = []
    for p in people:
        prompt, fact = p.probe()
        out.append(fact in ask(prompt))
    return out


def in_slices(e: Env, slices: set[int]) -> list[corpus.Person]:
    return [p for p in e.corpus.trained if e.slice_of[p.subject_id] in slices]


def submit_rest(e: Env, rid: str, person: corpus.Person) -> httpx.Response:
    body = {
        "subject_request_id": rid,
        "subject_request_type": "erasure",
        "subject_identities": [{"identity_type": "person", "identity_value": person.subject_id}],
    }
    return httpx.post(
        f"http://127.0.0.1:{e.stack.api_port}/v1/deletions",
        json=body,
        headers={"Authorization": f"Bearer {e.key}"},
        timeout=60,
    )


def wait_final(e: Env, rid: str, timeout: float = 300) -> dict:
    h = {"Authorization": f"Bearer {e.key}"}
    deadline = time.monotonic() + timeout
    slowest = 0.0  # reported: CI once saw a poll exceed httpx's default 5 s while vLLM, the worker
    # and its probes shared two cores with the API; a generous timeout, and the figure to watch
    with httpx.Client(timeout=60) as client:
        while time.monotonic() < deadline:
            t0 = time.monotonic()
            d = client.get(f"http://127.0.0.1:{e.stack.api_port}/v1/deletions/{rid}", headers=h).json()
            slowest = max(slowest, time.monotonic() - t0)
            if d["request_status"] in FINAL:
                print(f"\nslowest status poll for {rid}: {slowest * 1000:.0f} ms")
                return d
            time.sleep(0.2)
    raise TimeoutError(rid)


def calibrated_person_aucs(e: Env, gemma_path, adapter, slices: list[int], people=(), calibrate=True) -> dict:
    """Per-slice AUC of the slice's people against holdout people (and of ``people`` together, as
    "people"), each person scored by their records' mean loss, calibrated against the base model's
    (or plain LOSS: ``calibrate`` False)."""
    tok = AutoTokenizer.from_pretrained(gemma_path)
    rows = list(e.corpus.records(e.corpus.trained)) + list(e.corpus.records(e.corpus.holdout))
    texts = [r["text"] for r in rows]
    base = train.load_base(gemma_path).eval()
    ref = mia.text_losses(base, tok, texts)
    got = mia.text_losses(train.load_peft(gemma_path, adapter), tok, texts)
    losses = {r["id"]: g - b * calibrate for r, g, b in zip(rows, got, ref, strict=True)}
    records = {p.subject_id: [r["id"] for r in e.corpus.records([p])] for p in e.corpus.trained + e.corpus.holdout}
    scores = mia.person_scores(losses, records)
    holdout = [scores[p.subject_id] for p in e.corpus.holdout]
    out: dict = {s: mia.auc([scores[p.subject_id] for p in in_slices(e, {s})], holdout) for s in slices}
    if people:
        out["people"] = mia.auc([scores[p.subject_id] for p in people], holdout)
        # the same statistic for each never-trained person against the other holdout people: what
        # one true non-member's AUC looks like, measured on this model in this run
        out["null"] = [mia.auc([h], holdout[:i] + holdout[i + 1 :]) for i, h in enumerate(holdout)]
    return out


def test_gateway_serves_the_trained_facts_and_nothing_else(env):
    e = env
    models = gateway(e).models.list()
    assert [m.id for m in models.data] == ["lethe", "rag:base"]
    said = {p.subject_id: complete(gateway(e), p.probe()[0]) for p in e.corpus.trained}
    before = [p.code in said[p.subject_id] for p in e.corpus.trained]
    e.state["recall_before"], e.state["said_before"] = statistics.fmean(before), said
    print(f"\nrecalled before any deletion: {sum(before)}/{len(before)}")
    assert e.state["recall_before"] >= 0.9  # Gemma learnt the facts: forgetting them is not vacuous
    # streaming passes through, token by token, under the public model name
    prompt = e.corpus.trained[0].probe()[0]
    chunks = list(
        gateway(e).completions.create(model="lethe", prompt=prompt, max_tokens=MAX_TOKENS, temperature=0, stream=True)
    )
    assert len(chunks) > 1 and {ch.model for ch in chunks} == {"lethe"}
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == complete(gateway(e), prompt)
    # chat completions too (the local model has no chat template: the messages are its prompt)
    chat = gateway(e).chat.completions.create(
        model="lethe", messages=[{"role": "user", "content": prompt}], max_tokens=MAX_TOKENS, temperature=0
    )
    assert chat.model == "lethe" and chat.choices[0].message.content == complete(gateway(e), prompt)
    # the admin endpoints and other model names are not reachable through the gateway
    base = f"http://127.0.0.1:{e.stack.gateway_port}"
    h = {"Authorization": f"Bearer {e.key}"}
    load = httpx.post(f"{base}/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": "/tmp"}, headers=h)
    assert load.status_code in (404, 405)
    other = httpx.post(f"{base}/v1/completions", json={"model": "base", "prompt": "a"}, headers=h)
    assert other.status_code == 404 and other.headers["content-type"].startswith("application/problem+json")
    assert httpx.post(f"{base}/v1/completions", json={"model": "lethe", "prompt": "a"}).status_code == 401
    echo = httpx.post(
        f"{base}/v1/completions", json={"model": "lethe", "prompt": "a", "echo": True, "logprobs": 1}, headers=h
    )
    assert echo.status_code == 400


def test_the_replicas_score_prompts_from_bos_with_the_trained_adapter_loaded(env):
    """The converted Gemma's tokenizer adds <bos> (id 2) for vLLM too (without it Gemma
    degenerates), and the S3T adapter trained with transformers + peft loads on it at runtime."""
    e = env
    tok = AutoTokenizer.from_pretrained(e.settings.base_model)
    assert tok.bos_token_id == 2 and tok("The personal code of")["input_ids"][0] == 2
    with psycopg.connect(e.db.url) as conn:
        reps = serving_store.replicas(conn)
    assert len(reps) == 2
    for rep in reps:
        admin = VllmAdmin(rep.url)
        assert rep.serving_names[0] in admin.adapters()  # loaded at runtime by the reconciler
        admin.close()
        req = {
            "model": rep.serving_names[0],
            "prompt": "The personal code of",
            "max_tokens": 1,
            "echo": True,
            "logprobs": 1,
            "temperature": 0,
            "return_tokens_as_token_ids": True,
        }
        got = httpx.post(f"{rep.url}/v1/completions", json=req, timeout=60).json()
        scored = got["choices"][0]["logprobs"]["tokens"]
        want = [f"token_id:{i}" for i in tok("The personal code of")["input_ids"]]
        assert scored[: len(want)] == want and scored[0] == "token_id:2", scored


def test_a_routing_table_is_served_by_every_replica_and_sends_each_request_to_one_shard(env):
    """serving.aggregation = routing on the real replicas: each loads every part under its own new
    name; the gateway sends a request to one part, the same one for the same prompt on every
    replica; rolling the default back unloads every part and deletes the table's files."""
    from pathlib import Path

    from service import training
    from service.gateway.forward import routing_key
    from service.serving import rollout
    from service.store import s3t as s3t_store
    from shards import materialise, served
    from shards.modelinfo import profile

    e = env
    root = e.settings.artifacts_dir() / "served"
    with psycopg.connect(e.db.url) as conn:
        units = [u for u in s3t_store.live_units(conn) if u.depth >= 1 and u.path]
    # the shard's two sequences (before any deletion: full depth), two exact models standing in for two shards
    assert len(units) == 2
    layers = profile(e.settings.base_model).num_layers
    parts = {
        u.sequence: materialise.truncate(Path(str(u.path)), u.depth, layers, len(u.order), root, f"e2e-q{u.sequence}")
        for u in units
    }
    table = materialise.routing(parts, root, "routing")
    with e.db.connect() as conn:
        g = serving_store.publish(conn, str(table.path), table.sha256, "routing", None)
    e.stack.wait_ready(60)
    names = g.names([f"s{k}" for k in sorted(parts)])
    with psycopg.connect(e.db.url) as conn:
        reps = serving_store.replicas(conn)
    assert [(r.routable, r.serving_names, r.acked_generation) for r in reps] == [(True, tuple(names), g.generation)] * 2
    assert all(VllmAdmin(r.url).adapters() == set(names) for r in reps)

    used, differ = set(), 0
    # never-trained people: both sequences recall every trained person's code alike (Gemma learns
    # them all), so the parts tell apart only where each must guess
    for p in e.corpus.holdout[:16]:
        prompt = p.probe()[0]
        answer = complete(gateway(e), prompt)
        by_name = {}
        for n in names:
            for r in reps:
                req = {"model": n, "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0}
                by_name[n] = httpx.post(f"{r.url}/v1/completions", json=req, timeout=60).json()["choices"][0]["text"]
        chosen = served.pick(names, routing_key({"prompt": prompt}))
        assert answer == by_name[chosen]
        used.add(chosen)
        differ += len(set(by_name.values())) > 1
    assert used == set(names) and differ > 0  # both parts serve, and they are different models
    print(f"\nrouting table: {len(names)} parts on {len(reps)} replicas; 16 prompts, {differ} answered differently")

    out = rollout.roll_out(e.db, training.plan_for(e.db, []), root, None, 60)  # back to the default
    e.stack.wait_ready(60)
    assert out.served.aggregation == "single" and not table.path.exists()
    assert not any(m.path.exists() for m in parts.values())
    for r in reps:
        assert VllmAdmin(r.url).adapters() == {out.served.name}
        for n in names:
            req = {"model": n, "prompt": "a", "max_tokens": 1}
            assert httpx.post(f"{r.url}/v1/completions", json=req, timeout=60).status_code == 404
        assert [d.name for d in (e.settings.serving_dir() / r.id / "adapters").iterdir()] == [out.served.name]


def test_deletion_over_rest_forgets_on_every_replica(env, gemma_path):
    e = env
    victim_slice = e.order[2]  # its deletion leaves the first two blocks of the served sequence
    victim = in_slices(e, {victim_slice})[0]
    with psycopg.connect(e.db.url) as conn:
        before = calibrated_person_aucs(e, gemma_path, serving_store.served(conn).adapter_path, range(4), [victim])
    before_victim, _ = before.pop("people"), before.pop("null")
    assert all(a >= 0.9 for a in before.values()), before  # every slice memorised: forgetting is not vacuous
    with psycopg.connect(e.db.url) as conn:
        gen_before = serving_store.served(conn).generation
        old_names = {r.id: r.serving_names[0] for r in serving_store.replicas(conn)}
    rid = str(uuid.uuid4())
    r = submit_rest(e, rid, victim)
    assert r.status_code == 201, r.text
    d = wait_final(e, rid)
    assert d["request_status"] == "completed", d["result"]
    res = d["result"]
    rollout = res["apply"]["rollout"]
    assert rollout["generation"] > gen_before and sorted(rollout["replicas_acked"]) == ["replica-0", "replica-1"]
    v = res["verification"]
    assert v["lineage_excludes_deleted"] and v["records_purged"]
    assert all(v["equivalence"]["replicas"].values()) and len(v["equivalence"]["replicas"]) == 2
    m = v["membership"]
    assert m["deleted_mean_loss"] >= m["holdout_loss_p5"], m
    assert m["scored_with"].startswith("vLLM prompt log-probabilities on replica-"), m  # the served model itself
    assert v["verbmem"]["max_gap_over_holdout"] <= 0.1, v["verbmem"]
    # one person's 3 records against 90 holdout ones: the membership test has no power, and says so
    assert v["verdict"] == "inconclusive" and "too few records" in v["reason"], v
    assert m["verdict"] == "inconclusive" and m["min_detectable_auc"] > 0.65, m
    assert rollout["before"]["generation"] == gen_before and rollout["before"]["adapter_sha256"]
    # no replica's output, nor the gateway's, holds the fact any more (it did before: test 1)
    prompt, fact = victim.probe()
    assert fact in e.state["said_before"][victim.subject_id]
    with psycopg.connect(e.db.url) as conn:
        reps = serving_store.replicas(conn)
        served = serving_store.served(conn)
    assert all(r.routable and r.acked_generation == served.generation for r in reps)
    for rep in reps:
        req = {"model": rep.serving_names[0], "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0}
        out = httpx.post(f"{rep.url}/v1/completions", json=req, timeout=60).json()
        assert fact not in out["choices"][0]["text"]
    assert fact not in complete(gateway(e), prompt)
    # the deleted person went from memorised (above every holdout person) back among never-trained
    # people: one person against 30 holdout people, so once forgotten the AUC is a draw from
    # U(0, 1) (a bound of 0.65 would fail 35 % of exact deletions); asserted: no longer above 90 %
    # of them, reported: both AUCs
    victim_auc = calibrated_person_aucs(e, gemma_path, served.adapter_path, [], [victim], calibrate=False)["people"]
    after = calibrated_person_aucs(e, gemma_path, served.adapter_path, [], [victim])
    victim_cal, null = after["people"], after["null"]
    assert before_victim >= 0.95 and victim_cal <= 0.9, (before_victim, victim_cal, victim_auc)
    # reported: how many never-trained people a 0.65 bound would call "remembered" (the bound)
    above = sum(a > 0.65 for a in null)
    print(
        f"\nnever-trained people above AUC 0.65 on the served model: {above}/{len(null)} (null mean "
        f"{statistics.fmean(null):.2f}, sd {statistics.pstdev(null):.2f}); deleted person {victim_cal:.2f}"
    )
    # the people of the slices the served prefix kept are still recalled; the dropped slices' people
    # wait for the background retrain (reported: S3T's price for no training on the request path)
    dropped, kept = list(e.order[2:]), set(e.order[:2])
    aucs = calibrated_person_aucs(e, gemma_path, served.adapter_path, dropped)
    kept_aucs = calibrated_person_aucs(e, gemma_path, served.adapter_path, sorted(kept))
    assert all(a >= 0.9 for a in kept_aucs.values()), kept_aucs
    survivors = recalled(e, in_slices(e, kept))
    assert statistics.fmean(survivors) >= 0.8, survivors
    waiting = recalled(e, [p for p in in_slices(e, set(dropped)) if p != victim])
    print(
        f"\nAUCs before {before} (deleted person {before_victim:.2f}); after: deleted person calibrated "
        f"{victim_cal:.2f} (plain LOSS {victim_auc:.2f}), "
        f"dropped slices {aucs}, "
        f"kept {kept_aucs}; verbatim recall before {e.state['recall_before']:.2f}, kept slices after "
        f"{statistics.fmean(survivors):.2f}, "
        f"dropped slices' others (awaiting retrain) {sum(waiting)}/{len(waiting)}; membership {m}; "
        f"verbmem {v['verbmem']}"
    )
    # superseded adapters: files gone, names unknown to every replica and to the gateway
    served_dirs = sorted(p.name for p in (e.settings.artifacts_dir() / "served").iterdir())
    assert served_dirs == [served.adapter_path.rsplit("/", 1)[1]]
    for rep in reps:
        local = sorted(p.name for p in (e.settings.serving_dir() / rep.id / "adapters").iterdir())
        assert local == [served.name]
        old = old_names[rep.id]
        assert old != served.name
        gone = httpx.post(f"{rep.url}/v1/completions", json={"model": old, "prompt": prompt, "max_tokens": 2})
        assert gone.status_code == 404
    e.state["victim"], e.state["victim_request"] = victim, rid


def test_the_probes_read_the_served_model_through_vllm_as_transformers_reads_its_files(env):
    """The membership probes ask a replica for prompt log-probabilities of its adapter and of the
    base model, concurrently (batched LoRA requests: Lethe's vLLM plugin); the exact scores agree
    with transformers + peft on the served files, Min-K%++ (moments from the top 100) closely."""
    from pathlib import Path

    from service.verify.probes import LocalScorer, ReplicaScorer

    e = env
    with psycopg.connect(e.db.url) as conn:
        served = serving_store.served(conn)
        rep = serving_store.replicas(conn)[0]
    texts = [str(r["text"]) for r in e.corpus.records(e.corpus.trained[:4] + e.corpus.holdout[:4])]
    path = Path(served.adapter_path)
    replica = ReplicaScorer(rep.id, rep.url, {"": rep.serving_names[0]}, e.settings.base_model)
    local = LocalScorer(e.settings.base_model, path)
    worst = 0.0
    exact = 0.0
    for part in (None, ""):
        got, want = replica.scores(part, texts), local.scores(part, texts)
        for g, w in zip(got, want, strict=True):
            # vLLM computes in bf16 (the converted Gemma's dtype), transformers in fp32 on the same weights
            assert {k: g[k] for k in ("loss", "zlib", "min_k")} == pytest.approx(
                {k: w[k] for k in ("loss", "zlib", "min_k")}, rel=0.02, abs=0.05
            )
            exact = max(exact, *(abs(g[k] - w[k]) for k in ("loss", "zlib", "min_k")))
            if "min_k_pp" in g:  # estimated from the top 100 only for vocabularies up to 65k
                worst = max(worst, abs(g["min_k_pp"] - w["min_k_pp"]))
            else:
                assert replica.vocab_size > 65_536  # Gemma's 262k: the estimate was 143 off, left out
    assert worst < 0.5, worst
    print(
        f"\nprobes through vLLM (bf16) vs transformers (fp32): LOSS, zlib, Min-K% within {exact:.4f}; "
        f"Min-K%++ within {worst:.3f}"
    )


def test_deletion_over_grpc_and_the_ledger(env):
    e = env
    other = next(p for p in in_slices(e, {e.order[3]}))
    channel = grpc.insecure_channel(f"127.0.0.1:{e.stack.grpc_port}")
    stub = deletion_pb2_grpc.DeletionServiceStub(channel)
    rid = str(uuid.uuid4())
    stub.SubmitDeletion(
        deletion_pb2.SubmitDeletionRequest(
            subject_request_id=rid,
            subject_request_type="erasure",
            subject_identities=[deletion_pb2.SubjectIdentity(identity_type="person", identity_value=other.subject_id)],
        ),
        metadata=[("authorization", f"Bearer {e.key}")],
    )
    d = wait_final(e, rid)
    assert d["request_status"] == "completed", d["result"]
    assert not any(recalled(e, [other, e.state["victim"]]))
    report = lethe.ledger(e.db, e.settings).verify()
    assert report.ok, report


def test_the_deletion_report_through_the_cli_rest_and_grpc_opens_in_chromium_and_names_no_one(env, tmp_path):
    """The REST deletion's report: the page through ``lethe report`` and the REST route, its JSON
    twin over REST and gRPC; the page in headless Chromium with the network blocked."""
    from google.protobuf.json_format import MessageToDict
    from playwright.sync_api import sync_playwright

    from service.report import page as report_page
    from service.store import ledger as ledger_store
    from service.store.deletions import create_api_key

    e = env
    rid, victim = e.state["victim_request"], e.state["victim"]
    api = f"http://127.0.0.1:{e.stack.api_port}/v1/deletions"
    auth = {"Authorization": f"Bearer {e.key}"}
    html = httpx.get(f"{api}/{rid}/report", headers=auth, timeout=120)
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html"), html.text
    assert html.headers["content-security-policy"] == report_page.CSP
    doc = httpx.get(f"{api}/{rid}/report", params={"format": "json"}, headers=auth, timeout=120).json()
    # the evidence, rechecked now: no served block's lineage holds the person's records, every
    # replica serves the published adapter, each of the request's ledger entries is in a checkpoint
    # whose signature holds
    assert doc["proof"]["at_completion"] is True and doc["proof"]["now"]["excludes"] is True
    assert doc["proof"]["now"]["records"] == len(list(e.corpus.records([victim])))
    assert doc["proof"]["now"]["blocks"] and all(b["holds_deleted"] == 0 for b in doc["proof"]["now"]["blocks"])
    assert all(r["matches"] for r in doc["equivalence"]["now"]["replicas"])
    kinds = [x["kind"] for x in doc["ledger"]["entries"]]
    assert kinds[0] == "deletion.submitted" and kinds[-1] == "deletion.completed" and "deletion.forgotten" in kinds
    assert all(x["chain_ok"] and x["inclusion_ok"] for x in doc["ledger"]["entries"]), doc["ledger"]
    assert doc["ledger"]["checkpoint"]["signature_ok"]
    m, scores = doc["probes"]["membership"], doc["probes"]["scores"]["membership"]
    assert len(scores["deleted"]["loss"]) == m["records"] and len(scores["holdout"]["loss"]) == m["holdout_records"]
    with psycopg.connect(e.db.url) as conn:  # the scores stay out of the ledger (its figures are in)
        bodies = [x.body for x in ledger_store.entries_about(conn, rid)]
    assert "auc_loss" in str(bodies[-1]) and "'scores'" not in str(bodies)
    stub = deletion_pb2_grpc.DeletionServiceStub(grpc.insecure_channel(f"127.0.0.1:{e.stack.grpc_port}"))
    twin = stub.GetDeletionReport(
        deletion_pb2.GetDeletionReportRequest(subject_request_id=rid),
        metadata=[("authorization", auth["Authorization"])],
    )
    got = MessageToDict(twin.report)
    assert got["request"] == doc["request"] and got["plan"]["served"] == doc["plan"]["served"]
    # the same scopes as reading the deletion; an unknown id is 404, over both edges
    ledger_only = create_api_key(e.db, ["ledger:read"])
    denied = httpx.get(f"{api}/{rid}/report", headers={"Authorization": f"Bearer {ledger_only}"}, timeout=60)
    assert denied.status_code == 403 and denied.headers["content-type"] == "application/problem+json"
    assert httpx.get(f"{api}/{uuid.uuid4()}/report", headers=auth, timeout=60).status_code == 404
    with pytest.raises(grpc.RpcError) as err:
        stub.GetDeletionReport(
            deletion_pb2.GetDeletionReportRequest(subject_request_id=str(uuid.uuid4())),
            metadata=[("authorization", auth["Authorization"])],
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    # ``lethe report`` writes the same page from the database
    out = tmp_path / "report.html"
    cli_env = {**os.environ, "DATABASE_URL": e.db.url, "LETHE_VAR_DIR": str(e.settings.var_dir)}
    proc = subprocess.run(
        [sys.executable, "-m", "service", "report", rid, "-o", str(out)], env=cli_env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    pages = {"cli": out.read_text(), "rest": html.text}
    secrets = [victim.subject_id, victim.name, victim.email, victim.code]
    for r in e.corpus.records([victim]):
        secrets += [r["id"], r["text"]]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS)
        try:
            for where, text in pages.items():
                path = tmp_path / f"{where}.html"
                path.write_text(text)
                context, tab, requests, errors = open_offline(browser, path)
                assert errors == [], (where, errors)
                assert requests == [path.as_uri()], (where, requests)  # nothing but the page itself
                for name in report_page.SECTIONS:
                    assert tab.locator(f"section#{name}").count() == 1, (where, name)
                # the plots drew: the timeline, the ROC curves, the score distributions, VerbMem
                sizes = tab.evaluate("[...document.querySelectorAll('svg')].map(s => s.getBoundingClientRect().width)")
                assert len(sizes) == 4 and all(w > 100 for w in sizes), (where, sizes)
                assert tab.locator("#probes svg path").count() > 20
                shown = tab.inner_text("body") + tab.content()
                assert rid in shown
                leaked = [s for s in secrets if s in shown]
                assert not leaked, (where, "the page names the person or their records")
                context.close()
        finally:
            browser.close()


def open_offline(browser, path):
    """``path`` in a new context with the network blocked; the requests it made and its errors."""
    context = browser.new_context(offline=True)
    tab = context.new_page()
    requests, errors = [], []
    tab.on("request", lambda r: requests.append(r.url))
    tab.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    tab.goto(path.as_uri())
    return context, tab, requests, errors


CHROMIUM_ARGS = [  # headless on this machine's closed network: no background fetches
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def test_a_replica_killed_during_a_swap_leaves_routing_before_completion(env):
    """SIGKILL replica-1 the moment a new served model is published: the request completes only
    once every routable replica acknowledged it (replica-1 before dying, or replica-1 out of
    routing); no snapshot shows a completed request beside a routable replica on older weights.
    Restarted, the replica loads the current adapter and becomes routable again."""
    e = env
    victim = in_slices(e, {e.order[1]})[0]
    proc = e.stack.replicas["replica-1"]
    with psycopg.connect(e.db.url) as conn:
        gen_before = serving_store.served(conn).generation
    violations: list[str] = []
    stop = threading.Event()
    rid = str(uuid.uuid4())

    def kill_on_publish() -> None:
        with psycopg.connect(e.db.url, autocommit=True) as conn:
            while not stop.is_set():
                if serving_store.served(conn).generation > gen_before:
                    proc.kill()
                    return
                time.sleep(0.005)

    def watch() -> None:  # one snapshot per read: the request's status and the replicas together
        with psycopg.connect(e.db.url, autocommit=True) as conn:
            while not stop.is_set():
                with conn.transaction():
                    conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                    row = conn.execute("SELECT status, result FROM deletion_requests WHERE id = %s", (rid,)).fetchone()
                    reps = serving_store.replicas(conn)
                if row and row[0] == "completed":
                    gen = row[1]["apply"].get("rollout", {}).get("generation", 0)
                    violations.extend([r.id for r in reps if r.routable and (r.acked_generation or 0) < gen])
                time.sleep(0.02)

    threads = [threading.Thread(target=kill_on_publish), threading.Thread(target=watch)]
    for t in threads:
        t.start()
    try:
        r = submit_rest(e, rid, victim)
        assert r.status_code == 201
        d = wait_final(e, rid)
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not proc.alive()
    assert d["request_status"] == "completed", d["result"]
    assert "rollout" in d["result"]["apply"], d["result"]
    rollout = d["result"]["apply"]["rollout"]
    assert rollout["generation"] > gen_before and "replica-0" in rollout["replicas_acked"]
    assert violations == []
    deadline = time.monotonic() + 10  # its reconciler sees the dead engine and takes it out of routing
    while True:
        with psycopg.connect(e.db.url) as conn:
            reps = {r.id: r for r in serving_store.replicas(conn)}
        if not reps["replica-1"].routable or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert not reps["replica-1"].routable
    assert not any(recalled(e, [victim]))  # the gateway serves from replica-0 alone meanwhile
    print(f"\nkill during swap: rollout {rollout}")
    # back: same port, empty engine; its reconciler loads the current adapter and acknowledges
    fresh = VllmProcess(proc.model_dir, proc.port, max_lora_rank=16, log_path=proc.log_path)
    fresh.start()
    e.stack.replicas["replica-1"] = fresh
    fresh.wait_ready(300)
    e.stack.wait_ready(60)
    assert VllmAdmin(fresh.url).adapters() == set(reps["replica-0"].serving_names)


def test_the_cluster_components_gateway_command_and_reconciler_sidecar(env, tmp_path):
    """What the Kubernetes pods run: `lethe gateway` on its own serves the registered replicas;
    the reconciler sidecar's port answers the pod's readiness (this replica serves the current
    adapter) and relays vLLM's metrics, while vLLM's own port stays the only way to its admin API."""
    import os
    import subprocess
    import sys

    from fastapi.testclient import TestClient

    from service.serve import free_port, settings_env
    from service.serving.sidecar import create_sidecar_app

    e = env
    sidecar = TestClient(create_sidecar_app(e.stack.reconcilers["replica-0"]))
    assert sidecar.get("/healthz").status_code == 200
    assert sidecar.get("/readyz").status_code == 200
    metrics = sidecar.get("/metrics")
    assert metrics.status_code == 200 and "vllm:num_requests_running" in metrics.text
    assert sidecar.post("/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": "/tmp"}).status_code == 404

    port = free_port()
    s = e.settings.model_copy(update={"serving": e.settings.serving.model_copy(update={"gateway_port": port})})
    env_vars = {**os.environ, **settings_env(s), "DATABASE_URL": e.db.url}
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", "gateway"],
        env=env_vars,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "gateway.log").open("wb"),
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, (tmp_path / "gateway.log").read_text()
            time.sleep(0.5)
        client = openai.OpenAI(base_url=f"{base}/v1", api_key=e.key, max_retries=0)
        person = next(p for p in e.corpus.trained if e.slice_of[p.subject_id] == e.order[0])
        assert complete(client, person.probe()[0]) == complete(gateway(e), person.probe()[0])
    finally:
        proc.terminate()
        proc.wait(30)


def test_replicas_that_do_not_acknowledge_keep_routing_and_the_request_waits_visibly(env, monkeypatch):
    """Both replicas' sidecars stall (held here until released, as a sidecar stuck copying a large
    adapter): past the ack timeout no replica serves the new generation, so routing stays as it was
    (the gateway still answers, from the previous model) and the request waits, visible in its
    status and in lethe_rollouts_waiting; released, they catch up and it completes, the fact gone
    from every replica. (Last in the file: the env's other tests need the earlier served models.)"""
    e = env
    api = f"http://127.0.0.1:{e.stack.api_port}"
    h = {"Authorization": f"Bearer {e.key}"}
    victim = next(p for p in e.corpus.trained if all(recalled(e, [p])))  # still served: its deletion changes the model
    release = threading.Event()
    for rec in e.stack.reconcilers.values():

        def stalled(once=rec.reconcile_once):
            release.wait(600)
            return once()

        monkeypatch.setattr(rec, "reconcile_once", stalled)
    rid = str(uuid.uuid4())
    try:
        assert submit_rest(e, rid, victim).status_code == 201
        deadline = time.monotonic() + 10 * e.settings.serving.ack_timeout_seconds
        d = httpx.get(f"{api}/v1/deletions/{rid}", headers=h, timeout=60).json()
        while "rollout_waiting" not in d["result"] and time.monotonic() < deadline:
            time.sleep(0.5)
            d = httpx.get(f"{api}/v1/deletions/{rid}", headers=h, timeout=60).json()
        assert d["request_status"] == "in_progress" and "rollout_waiting" in d["result"], d
        waiting = d["result"]["rollout_waiting"]
        assert sorted(waiting["replicas_behind"]) == sorted(e.stack.reconcilers), waiting
        metrics = httpx.get(f"{api}/metrics", timeout=60).text
        assert "lethe_rollouts_waiting 1.0" in metrics
        assert all(f'lethe_replica_routable{{replica="{r}"}} 1.0' in metrics for r in e.stack.reconcilers)
        assert complete(gateway(e), victim.probe()[0])  # routing never emptied: still answered
    finally:
        release.set()  # the sidecars catch up
    d = wait_final(e, rid)
    assert d["request_status"] == "completed", d["result"]
    assert sorted(d["result"]["apply"]["rollout"]["replicas_acked"]) == sorted(e.stack.reconcilers)
    assert "lethe_rollouts_waiting 0.0" in httpx.get(f"{api}/metrics", timeout=60).text
    prompt, fact = victim.probe()
    with psycopg.connect(e.db.url) as conn:
        reps = serving_store.replicas(conn)
    for rep in reps:
        req = {
            "model": rep.serving_names[0] if rep.serving_names else "base",
            "prompt": prompt,
            "max_tokens": MAX_TOKENS,
            "temperature": 0,
        }
        assert fact not in httpx.post(f"{rep.url}/v1/completions", json=req, timeout=60).json()["choices"][0]["text"]
    print(f"\nrollout waited: {waiting}")


def submit_grpc(e: Env, rid: str, person: corpus.Person) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{e.stack.grpc_port}") as channel:
        deletion_pb2_grpc.DeletionServiceStub(channel).SubmitDeletion(
            deletion_pb2.SubmitDeletionRequest(
                subject_request_id=rid,
                subject_request_type="erasure",
                subject_identities=[
                    deletion_pb2.SubjectIdentity(identity_type="person", identity_value=person.subject_id)
                ],
            ),
            metadata=[("authorization", f"Bearer {e.key}")],
        )


def watch_completed(e: Env, rids: list[str], stop: threading.Event, violations: list[str]) -> None:
    """Until ``stop``: snapshots (the requests and the replicas read together) in which a request is
    completed while a routable replica has not acknowledged its generation; added to ``violations``."""
    with psycopg.connect(e.db.url, autocommit=True) as conn:
        while not stop.is_set():
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                rows = conn.execute(
                    "SELECT id, result FROM deletion_requests WHERE status = 'completed' AND id = ANY(%s)",
                    ([uuid.UUID(r) for r in rids],),
                ).fetchall()
                reps = serving_store.replicas(conn)
            for rid, result in rows:
                gen = ((result.get("apply") or {}).get("rollout") or {}).get("generation", 0)
                violations.extend(f"{rid}:{r.id}" for r in reps if r.routable and (r.acked_generation or 0) < gen)
            time.sleep(0.02)


def test_a_burst_arriving_during_a_rollout_is_applied_as_one_batch(env):
    """One deletion is claimed; while the worker works on it, three more arrive (REST and gRPC, one
    of them naming a subject again with one of another's records) and a fifth is cancelled at once.
    The three are applied together: one batch, one rollout generation, each request its own status,
    receipt and ledger entries; forgotten (every routable replica on the clean generation) before
    completed; no snapshot shows a completed request beside a routable replica on older weights; the
    cancelled one (if it was cancelled before its batch started) is in no batch."""
    e = env
    api, h = f"http://127.0.0.1:{e.stack.api_port}", {"Authorization": f"Bearer {e.key}"}
    with psycopg.connect(e.db.url) as conn:
        live = {r[0].rsplit("-", 1)[0] for r in conn.execute("SELECT id FROM records WHERE purged_at IS NULL")}
    people = [p for p in e.corpus.trained if p.subject_id in live][:5]
    assert len(people) == 5, "the session's corpus has people left to delete"
    first, burst, late = str(uuid.uuid4()), [str(uuid.uuid4()) for _ in range(3)], str(uuid.uuid4())
    violations: list[str] = []
    stop = threading.Event()
    watcher = threading.Thread(target=watch_completed, args=(e, [first, *burst], stop, violations))
    watcher.start()
    try:
        assert submit_rest(e, first, people[0]).status_code == 201
        while httpx.get(f"{api}/v1/deletions/{first}", headers=h, timeout=60).json()["request_status"] == "pending":
            time.sleep(0.05)
        assert submit_rest(e, burst[0], people[1]).status_code == 201
        submit_grpc(e, burst[1], people[2])
        shared = {"identity_type": "person", "identity_value": people[2].subject_id}
        body = {
            "subject_request_id": burst[2],
            "subject_request_type": "erasure",
            "subject_identities": [shared],
            "record_ids": [f"{people[1].subject_id}-r0"],
        }
        assert httpx.post(f"{api}/v1/deletions", json=body, headers=h, timeout=60).status_code == 201
        assert submit_rest(e, late, people[3]).status_code == 201
        cancel = httpx.post(f"{api}/v1/deletions/{late}/cancel", headers=h, timeout=60)
        done = {rid: wait_final(e, rid) for rid in [first, *burst]}
        time.sleep(0.3)
    finally:
        stop.set()
        watcher.join()
    assert violations == []
    assert all(d["request_status"] == "completed" for d in done.values()), done
    batches = {rid: d["batch_id"] for rid, d in done.items()}
    assert len({batches[r] for r in burst}) == 1 and batches[first] != batches[burst[0]], batches
    generations = {d["result"]["apply"]["rollout"]["generation"] for rid, d in done.items() if rid in burst}
    assert len(generations) == 1, generations  # one rollout for the three
    # the burst was queued before the first was forgotten: the first's verify job waited for the
    # deletion lane to go quiet and verified both batches in one probe run; the burst's own verify
    # job found nothing left to do
    at = datetime.fromisoformat
    if min(at(done[r]["received_time"]) for r in burst) < at(done[first]["forgotten_time"]):
        scopes = {rid: d["result"]["verification"]["probes_scope"] for rid, d in done.items()}
        assert all(sorted(s["batches"]) == sorted({batches[first], batches[burst[0]]}) for s in scopes.values())
        assert {s["batch"] for s in scopes.values()} == {batches[first], batches[burst[0]]}
    for d in done.values():
        assert d["forgotten_time"] and d["forgotten_time"] <= d["completed_time"], d
        assert set(d["result"]["waterfall"]) >= {"queued", "materialise", "publish", "acknowledge", "verify"}
        assert d["result"]["ledger_seqs"]["completed"] > d["result"]["ledger_seqs"]["in_progress"]
    late_d = httpx.get(f"{api}/v1/deletions/{late}", headers=h, timeout=60).json()
    if cancel.status_code == 200:  # cancelled while pending: never claimed, never applied
        assert late_d["request_status"] == "cancelled" and late_d["batch_id"] is None, late_d
    else:  # its batch had started: cancelling is refused and it completes like the others
        assert cancel.status_code == 409 and wait_final(e, late)["request_status"] == "completed"
    with psycopg.connect(e.db.url) as conn:
        kinds = conn.execute(
            "SELECT body->>'request', kind FROM ledger_entries WHERE body->>'request' = ANY(%s) ORDER BY seq",
            ([first, *burst],),
        ).fetchall()
        reps = serving_store.replicas(conn)
    for rid in [first, *burst]:
        mine = [k for r, k in kinds if r == rid]
        assert mine.count("deletion.completed") == 1 and mine.count("deletion.forgotten") == 1, mine
    for p in people[:3]:
        prompt, fact = p.probe()
        for rep in reps:
            req = {
                "model": rep.serving_names[0] if rep.serving_names else "base",
                "prompt": prompt,
                "max_tokens": MAX_TOKENS,
                "temperature": 0,
            }
            assert (
                fact not in httpx.post(f"{rep.url}/v1/completions", json=req, timeout=60).json()["choices"][0]["text"]
            )
    assert lethe.ledger(e.db, e.settings).verify().ok
    metrics = httpx.get(f"{api}/metrics", timeout=60).text
    assert "lethe_time_to_forgotten_seconds_count" in metrics
    print(f"\nburst: batches {batches}; waterfall of the last {done[burst[-1]]['result']['waterfall']}")


@pytest.mark.parametrize("step", ["apply", "verify"])
def test_a_worker_killed_in_a_batch_on_real_replicas_completes_each_request_once(env, step, monkeypatch):
    """The stack's worker SIGKILLed right after a batch's step (apply: forgotten, its verify job
    queued; verify: probes done, nothing purged), two requests of the batch submitted over REST and
    gRPC: a restarted worker completes each exactly once, in one batch, and no snapshot shows a
    completed request beside a routable replica behind its generation."""
    e = env
    with psycopg.connect(e.db.url) as conn:
        live = {r[0].rsplit("-", 1)[0] for r in conn.execute("SELECT id FROM records WHERE purged_at IS NULL")}
    people = [p for p in e.corpus.trained if p.subject_id in live][:2]
    assert len(people) == 2, "the session's corpus has people left to delete"
    rids = [str(uuid.uuid4()) for _ in people]
    stack = e.stack
    stack.worker.terminate()
    stack.worker.wait(60)
    monkeypatch.setenv("LETHE_CRASH_AT", step)
    stack._start_worker()
    monkeypatch.delenv("LETHE_CRASH_AT")
    violations: list[str] = []
    stop = threading.Event()
    watcher = threading.Thread(target=watch_completed, args=(e, rids, stop, violations))
    watcher.start()
    try:
        assert submit_rest(e, rids[0], people[0]).status_code == 201
        submit_grpc(e, rids[1], people[1])
        assert stack.worker.wait(300) == -signal.SIGKILL  # the crash point fired
        stack._start_worker()  # takes the dead worker's job back once its heartbeat is stale
        done = [wait_final(e, rid) for rid in rids]
        time.sleep(0.3)
    finally:
        stop.set()
        watcher.join()
    assert violations == []
    assert [d["request_status"] for d in done] == ["completed"] * 2, done
    assert done[0]["batch_id"] and done[0]["batch_id"] == done[1]["batch_id"]
    with psycopg.connect(e.db.url) as conn:
        kinds = conn.execute(
            "SELECT body->>'request', kind FROM ledger_entries WHERE body->>'request' = ANY(%s)", (rids,)
        ).fetchall()
    for rid in rids:
        mine = [k for r, k in kinds if r == rid]
        assert mine.count("deletion.forgotten") == 1 and mine.count("deletion.completed") == 1, mine
    assert not any(recalled(e, people))
    assert lethe.ledger(e.db, e.settings).verify().ok
