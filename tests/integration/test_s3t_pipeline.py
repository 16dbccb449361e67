"""S3T over the database: placement at ingest, training every unit, forgetting, retraining."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest

from service import app as lethe
from service import training
from service.config import Settings
from service.store import deletions as store_deletions
from service.store import s3t as store
from service.store import serving
from service.workflow import training_jobs
from shards import basemodel, corpus
from shards.specs import BaseModelSpec, S3TSpec, TrainConfig

pytestmark = pytest.mark.slow
TINY = BaseModelSpec(
    hidden_size=128, intermediate_size=256, num_layers=4, num_heads=2, vocab_size=400, pretrain_steps=3, batch_size=8
)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return basemodel.build(TINY, tmp_path_factory.mktemp("m"), progress=False).path


@pytest.fixture
def s3t_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "s3t": S3TSpec(shards=2, slices=2, budget=2, workers=2),
            "train": TrainConfig(num_blocks=2, r=4, alpha=8, epochs=1, batch_size=8),
        }
    )


def ingest(db, settings, tmp_path, people=8):
    c = corpus.generate(seed=11, trained=people, holdout=2)
    paths = corpus.write(c, tmp_path / "corpus")
    lethe.migrate(db)
    lethe.ingest(db, settings, paths["train"])
    return c


def trained_with_a_request(db, settings, model, tmp_path, person, record_ids=(), extra=()):
    """Every unit trained, a deletion request for one trained person accepted: (core, admin
    principal, request id)."""
    import uuid

    from service.core.deletions import Principal, Scope, SubmitDeletion

    c = ingest(db, settings, tmp_path)
    if extra:  # more records, e.g. built from the corpus's: (person's records) → lines
        more = tmp_path / "extra.jsonl"
        more.write_text("".join(json.dumps(x) + "\n" for x in extra(list(c.records([c.trained[person]])))))
        lethe.ingest(db, settings, more)
    training_jobs.train_all(db, lethe.training_job(settings, model))
    core = lethe.deletions_core(db, settings)
    admin = Principal("t", frozenset({Scope.ADMIN}))
    rid = uuid.uuid4()
    core.submit(SubmitDeletion(rid, [("person", c.trained[person].subject_id)], record_ids=record_ids), admin)
    return core, admin, rid


def saga(db, settings, **more):
    """The deletion saga's dependencies as the worker builds them (no probes, no retrieval proxy)."""
    from service.workflow.deps import deletion_deps

    graph = lethe.Lethe(settings, db)
    return deletion_deps(db, graph.data_keys, settings.artifacts_dir(), ledger=graph.ledger, **more)


def test_placement_puts_each_subject_in_one_cell_and_balances_cells(empty_db, s3t_settings, tmp_path):
    c = ingest(empty_db, s3t_settings, tmp_path, people=10)
    with psycopg.connect(empty_db.url) as conn:
        rows = conn.execute("SELECT id, shard, slice FROM records").fetchall()
    cell_of_person: dict[str, set] = {}
    for rid, k, s in rows:
        cell_of_person.setdefault(rid.rsplit("-", 1)[0], set()).add((k, s))
    assert all(len(cells) == 1 for cells in cell_of_person.values())
    people_per_cell = Counter(next(iter(cells)) for cells in cell_of_person.values())
    assert sorted(people_per_cell.values()) == [2, 2, 3, 3]  # 10 people over 4 cells
    # A second ingest with another layout is refused: the layout is fixed at first ingest.
    other = s3t_settings.model_copy(update={"s3t": S3TSpec(shards=3, slices=2)})
    more = tmp_path / "more.jsonl"
    more.write_text(json.dumps({"id": "x1", "subject_ids": ["email:x@example.org"], "text": "X."}) + "\n")
    with pytest.raises(Exception, match="fixed at first ingest"):
        lethe.ingest(empty_db, other, more)
    assert len(c.trained) == 10


def test_train_forget_retrain(empty_db, s3t_settings, tiny_model, tmp_path):
    c = ingest(empty_db, s3t_settings, tmp_path)
    job = lethe.training_job(s3t_settings, tiny_model)
    assert training_jobs.train_all(empty_db, job) == [(k, j, 0) for k in range(2) for j in range(2)]
    assert training_jobs.train_all(empty_db, job) == []  # complete: nothing to do
    with psycopg.connect(empty_db.url) as conn:
        units = store.live_units(conn)
        assert [(u.version, u.depth) for u in units] == [(0, 2)] * 4
        lineages = conn.execute("SELECT path, lineage FROM s3t_artifacts ORDER BY id").fetchall()
    for path, lineage in lineages:  # the same lineage in PostgreSQL and beside the files
        assert json.loads((Path(path) / "lineage.json").read_text()) == lineage

    victim = c.trained[0]
    ids = lethe.resolve_records(empty_db, s3t_settings, [], [f"email:{victim.email.upper()}"])
    assert ids == sorted(f"{victim.subject_id}-r{i}" for i in range(4))
    with psycopg.connect(empty_db.url) as conn:
        shard, sl = store.placement(conn)[ids[0]]
    keys = lethe.data_keys(s3t_settings)
    with psycopg.connect(empty_db.url) as conn:
        key_ids = [r[0] for r in conn.execute("SELECT key_id FROM records WHERE id = ANY(%s)", (ids,))]
    assert all(keys.get(k) is not None for k in key_ids) and len(key_ids) == 4
    p = training.forget(empty_db, ids, purge=keys)
    assert p.affected == {shard}
    orders = training.orders_for(s3t_settings.s3t)
    expected_cut = {j: o.index(sl) for j, o in enumerate(orders)}
    assert dict(p.shards[shard].tainted) == expected_cut
    assert p.shards[shard].prefix == max(expected_cut.values())
    for seq, cut in expected_cut.items():  # tainted stages gone from disk in every sequence
        unit_dir = job.artifacts / f"shard-{shard:02d}/seq-{seq:02d}/v000"
        left = sorted(d.name for d in unit_dir.iterdir()) if unit_dir.exists() else []
        assert left == [f"stage-{i:02d}" for i in range(cut)]
    with psycopg.connect(empty_db.url) as conn:
        assert store.purged(conn, ids) == 4
        assert not store.record_texts(conn, keys, ids)
        live = {(u.shard, u.sequence): u.depth for u in store.live_units(conn)}
    assert {s: live[(shard, s)] for s in expected_cut} == expected_cut
    assert all(live[(1 - shard, s)] == 2 for s in range(2))  # the other shard is untouched

    assert all(keys.get(k) is None for k in key_ids)  # shredded: the ciphertext's keys are gone
    again = training.forget(empty_db, ids, purge=keys)  # idempotent: nothing more to cut
    assert not again.affected and again.shards[shard].prefix == p.shards[shard].prefix

    served = training.served_adapters(empty_db, again, tmp_path / "served")
    assert served[1 - shard] is not None
    assert (served[shard] is None) == (again.shards[shard].prefix == 0)

    retrained = training_jobs.train_all(empty_db, job)
    assert retrained == [(shard, s, 1) for s in sorted(expected_cut)]
    with psycopg.connect(empty_db.url) as conn:
        units = {(u.shard, u.sequence): u for u in store.live_units(conn)}
    for s in range(2):
        u = units[(shard, s)]
        assert (u.version, u.depth) == (1, 2) and u.excluded == frozenset(ids)
        assert not (job.artifacts / f"shard-{shard:02d}/seq-{s:02d}/v000").exists()  # superseded version deleted
    assert training.plan_for(empty_db, []).shards[shard].prefix == 2


def test_a_retrain_while_a_deletion_is_verified_never_trains_on_its_records(
    empty_db, s3t_settings, tiny_model, tmp_path
):
    """The workflow cuts first and purges only after its probes have read the text: in between, a
    background retrain (another batch's, on another worker) must already leave the records out,
    and every plan must count them deleted; the probes can still read them."""
    c = ingest(empty_db, s3t_settings, tmp_path)
    job = lethe.training_job(s3t_settings, tiny_model)
    training_jobs.train_all(empty_db, job)
    victim = c.trained[0]
    ids = lethe.resolve_records(empty_db, s3t_settings, [], [f"email:{victim.email}"])
    keys = lethe.data_keys(s3t_settings)
    (shard,) = training.forget(empty_db, ids).affected  # cut, not purged (the probes come first)
    with psycopg.connect(empty_db.url) as conn:
        assert store.purged(conn, ids) == 0 and len(store.record_texts(conn, keys, ids)) == len(ids)
        assert set(ids) <= store.deleted_records(conn)
        cells = store.records_by_cell(conn, keys, shard)
    assert not {rid for recs in cells.values() for rid, _, _ in recs} & set(ids)
    assert all(u.excluded == frozenset(ids) for u in training.pending_units(empty_db, job) if u.shard == shard)
    retrained = training_jobs.train_all(empty_db, job)
    assert retrained and all(k == shard for k, _, _ in retrained)
    with psycopg.connect(empty_db.url) as conn:
        units = [u for u in store.live_units(conn) if u.shard == shard]
    assert all(u.excluded == frozenset(ids) for u in units)
    assert not training.plan_for(empty_db, []).affected  # nothing live saw them


def test_a_deletion_request_cuts_applies_the_clean_adapter_and_records_it(empty_db, s3t_settings, tiny_model, tmp_path):
    from service.core.deletions import Status
    from service.workflow import steps

    core, admin, rid = trained_with_a_request(
        empty_db, s3t_settings, tiny_model, tmp_path, person=1, record_ids=["no-such-record"]
    )
    deps = saga(empty_db, s3t_settings, retrain_delay=600.0)
    assert steps.run(deps, rid) is Status.COMPLETED
    done = core.get(rid, admin)
    # an id nobody holds is reported as unknown, not a failure of the deletion of what is held
    assert done.result["outcome"] == "deleted" and done.result["unknown_record_ids"] == ["no-such-record"]
    (shard,) = done.result["plan"]["affected_shards"]
    change = done.result["apply"]["adapters"][str(shard)]
    assert change["before"] == {"adapter": None, "sha256": None}
    prefix = done.result["plan"]["served"][str(shard)]["prefix"]
    with psycopg.connect(empty_db.url) as conn:
        desired = store.desired(conn)
        applied = conn.execute(
            "SELECT body FROM ledger_entries WHERE kind = 'deletion.applied' AND body->>'request' = %s", (str(rid),)
        ).fetchone()[0]
    assert desired[shard] == (change["after"]["adapter"], change["after"]["sha256"])
    assert applied["adapters"][str(shard)] == change
    if prefix:  # the served adapter holds only the clean top blocks (2 layers a block here)
        cfg = json.loads(
            (s3t_settings.artifacts_dir() / "served" / change["after"]["adapter"] / "adapter_config.json").read_text()
        )
        assert cfg["layers_to_transform"] == sorted(range(4 - 2 * prefix, 4))
    else:
        assert change["after"] == {"adapter": None, "sha256": None}
    assert done.result["verification"]["lineage_excludes_deleted"] is True
    # the background retrain is queued with the completion; training workers restore the depth
    queued = done.result["plan"]["retrain_queued"]
    assert queued == [f"{shard}/{s}" for s in range(2)]  # both sequences saw the deleted slice
    # the result names every sequence's cut (first block destroyed), the served one's at its prefix
    cuts = done.result["plan"]["served"][str(shard)]["cuts"]
    assert sorted(cuts) == ["0", "1"] and all(0 <= b < 2 for b in cuts.values())
    assert cuts[str(done.result["plan"]["served"][str(shard)]["sequence"])] == prefix
    with psycopg.connect(empty_db.url) as conn:
        jobs = conn.execute(
            "SELECT args, scheduled_at > now() + interval '500 seconds' FROM procrastinate_jobs"
            " WHERE queue_name = 'training' AND status = 'todo'"
        ).fetchall()
        assert sorted(f"{a['shard']}/{a['sequence']}" for a, _ in jobs) == queued
        assert all(later for _, later in jobs)  # debounced: after the burst, not at once
    job = lethe.training_job(s3t_settings, tiny_model)
    # an operator's `lethe train` (train_all) does not wait for the debounce
    assert training_jobs.train_all(empty_db, job) == [(shard, s, 1) for s in range(2)]
    # the restored depth is served by one rollout the retrained units queued (deletion lane)
    with psycopg.connect(empty_db.url) as conn:
        (restores,) = conn.execute(
            "SELECT count(*) FROM procrastinate_jobs WHERE task_name = 'restore_depth' AND status = 'todo'"
        ).fetchone()
        before = serving.served(conn)
    assert restores == 1
    from service.workflow import restore

    out = restore.restore(deps)
    assert before is not None and out.served.generation == before.generation + 1
    m = out.shards[shard]
    assert m is not None and training.plan_for(empty_db, []).shards[shard].prefix == 2  # full depth again
    with psycopg.connect(empty_db.url) as conn:
        assert store.desired(conn)[shard] == (m.path.name, m.sha256)
    assert restore.restore(deps).served.generation == out.served.generation  # nothing new: no new generation
    with psycopg.connect(empty_db.url) as conn:
        states = conn.execute(
            "SELECT status, count(*) FROM procrastinate_jobs WHERE queue_name = 'training'"
            " AND args->>'shard' = %s GROUP BY 1",
            (str(shard),),
        ).fetchall()
    assert dict(states)["succeeded"] >= 2 and "todo" not in dict(states)


def test_a_debounced_retrain_waits_for_the_last_cut_but_never_past_its_cap(empty_db):
    """Each deletion that queues retraining postpones every queued retrain to ``delay`` after it
    (a burst retrains once, after it), but a job is never pushed past its cap from its own
    queueing; a refused duplicate still postpones."""
    lethe.migrate(empty_db)
    with psycopg.connect(empty_db.url) as conn:
        assert training_jobs.enqueue(conn, [(0, 0)], delay=30) == 1
        first = _scheduled(conn)
        assert 25 < first[(0, 0)] <= 31
        assert training_jobs.enqueue(conn, [(1, 0)], delay=30) == 1  # a later cut: both wait for it
        conn.execute("UPDATE procrastinate_jobs SET scheduled_at = now() + interval '5 seconds'")  # time passes
        assert training_jobs.enqueue(conn, [(1, 0)], delay=30) == 0  # already queued: postponed only
        assert all(29 < s <= 31 for s in _scheduled(conn).values())
        conn.execute(  # (0, 0) was queued long ago: its cap (10 × 30 s after) is 5 s from now
            "UPDATE procrastinate_events SET at = now() - interval '295 seconds' WHERE type = 'deferred'"
            " AND job_id = (SELECT id FROM procrastinate_jobs WHERE args->>'shard' = '0')"
        )
        conn.execute("UPDATE procrastinate_jobs SET scheduled_at = now() + interval '5 seconds'")
        assert training_jobs.enqueue(conn, [(2, 0)], delay=30) == 1
        later = _scheduled(conn)
        assert 4 < later[(0, 0)] <= 6  # at its cap: not postponed again
        assert 29 < later[(1, 0)] <= 31 and 29 < later[(2, 0)] <= 31
        assert training_jobs.enqueue(conn, [(1, 0)], delay=0) == 0  # no delay: nothing postponed
        assert _scheduled(conn) == pytest.approx(later, abs=2)


def _scheduled(conn) -> dict[tuple[int, int], float]:
    rows = conn.execute(
        "SELECT args, extract(epoch FROM scheduled_at - now()) FROM procrastinate_jobs"
        " WHERE task_name = 'train_unit' AND status = 'todo'"
    )
    return {(a["shard"], a["sequence"]): float(s) for a, s in rows}


def test_the_same_text_filed_under_another_subject_is_deleted_too(empty_db, s3t_settings, tiny_model, tmp_path):
    """A record of the deleted person copied under another subject's id (case and spacing changed)
    is the same personal data: cut from every live block, purged, listed in the result."""
    from service.core.deletions import Status
    from service.workflow import steps

    def copy(records):
        text = records[0]["text"]
        return [{"id": "copy-1", "subject_ids": ["person:someone-else"], "text": "  " + text.upper() + " "}]

    core, admin, rid = trained_with_a_request(empty_db, s3t_settings, tiny_model, tmp_path, person=1, extra=copy)
    assert training.plan_for(empty_db, ["copy-1"]).affected  # trained on, before the deletion
    assert steps.run(saga(empty_db, s3t_settings), rid) is Status.COMPLETED
    done = core.get(rid, admin)
    assert done.result["same_text_records"] == ["copy-1"]
    assert not training.plan_for(empty_db, ["copy-1"]).affected  # no live block holds it any more
    with psycopg.connect(empty_db.url) as conn:
        assert store.purged(conn, ["copy-1"]) == 1
        body = conn.execute("SELECT body FROM ledger_entries WHERE kind = 'deletion.completed'").fetchone()[0]
    assert body["same_text"] == 1 and "copy-1" not in json.dumps(body)


def test_with_a_routing_table_a_deletion_serves_every_live_shards_clean_adapter(
    empty_db, s3t_settings, tiny_model, tmp_path, monkeypatch
):
    from service.core.deletions import Status
    from service.store import serving
    from service.verify.probes import ProbeConfig
    from service.workflow import steps
    from shards import served

    core, admin, rid = trained_with_a_request(empty_db, s3t_settings, tiny_model, tmp_path, person=2)
    c = corpus.generate(seed=11, trained=8, holdout=2)  # as ingested
    holdout = tuple(str(r["text"]) for r in c.records(c.holdout))
    deps = saga(empty_db, s3t_settings, aggregation="routing", probes=ProbeConfig(tiny_model, holdout))
    assert steps.run(deps, rid) is Status.COMPLETED
    done = core.get(rid, admin)
    with empty_db.connect() as conn:
        want = serving.served(conn)
    assert want is not None and want.aggregation == "routing" and want.adapter_path is not None
    assert done.result["apply"]["rollout"]["aggregation"] == "routing"
    assert done.result["verification"]["equivalence"]["served_sha256"] == want.adapter_sha256
    clean = training.served_adapters(empty_db, training.plan_for(empty_db, []), tmp_path / "check")
    # one part per live shard, each exactly that shard's clean adapter (the cut one truncated)
    table = {p.key: p.sha256 for p in served.parts(Path(want.adapter_path))}
    assert table == {f"s{k}": m.sha256 for k, m in clean.items() if m is not None} and len(table) == 2
    assert served.served_sha256(Path(want.adapter_path)) == want.adapter_sha256
    # the probes score every part and report the worst one
    membership = done.result["verification"]["membership"]
    assert set(membership["by_shard"]) == set(table)
    for attack in ("auc_loss", "auc_zlib", "auc_min_k", "auc_min_k_pp", "auc_loss_calibrated"):
        assert membership[attack] == max(f[attack] for f in membership["by_shard"].values())
    verdicts = {f["verdict"] for f in membership["by_shard"].values()}
    assert membership["verdict"] == (
        "failed" if "failed" in verdicts else "passed" if verdicts == {"passed"} else "inconclusive"
    )
    assert membership["verdict"] == "passed" or membership["reason"]
    assert done.result["verification"]["verdict"] in ("passed", "inconclusive"), done.result["verification"]


def _stage_files(stage_dir: Path) -> dict[str, tuple[int, str]]:
    return {f.name: (f.stat().st_mtime_ns, hashlib.sha256(f.read_bytes()).hexdigest()) for f in stage_dir.iterdir()}


def test_two_training_workers_share_a_run_and_a_killed_workers_unit_resumes_from_its_last_stage(
    empty_db, s3t_settings, tiny_model, tmp_path
):
    """Two `lethe worker --queue training` processes drain one run's jobs; each unit is trained
    once. One worker is SIGKILLed once a unit of its has finished stage 0: the other takes the
    stalled job over and resumes the unit at stage 1 (stage 0's files are kept, not retrained)."""
    from service.serve import settings_env
    from service.workflow import training_jobs
    from shards.train import LINEAGE_FILE, stage_dir

    # stages of a fixed length (no early stop, no recall checks: seconds each), so the window
    # between stage 0 and stage 1 is wide on any machine
    slow = replace(s3t_settings.train, epochs=60, stop_recall=2.0)
    s = s3t_settings.model_copy(update={"base_model": tiny_model, "train": slow})
    ingest(empty_db, s, tmp_path)
    job = lethe.training_job(s, tiny_model)
    units = training.pending_units(empty_db, job)
    assert len(units) == 4
    with empty_db.connect() as conn:
        assert training_jobs.enqueue(conn, [(u.shard, u.sequence) for u in units]) == 4
        assert training_jobs.enqueue(conn, [(u.shard, u.sequence) for u in units]) == 0  # queued once

    # two workers on this machine share its cores, one thread each (as train_all's workers do):
    # oversubscribed OpenMP threads make a tiny model's steps orders of magnitude slower
    env = {**os.environ, **settings_env(s), "DATABASE_URL": empty_db.url, "OMP_NUM_THREADS": "1"}
    logs = [tmp_path / f"worker-{i}.log" for i in range(2)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "service", "worker", "--queue", "training", "--once"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log.open("wb"),
        )
        for log in logs
    ]
    owner = re.compile(r"training unit shard=(\d+) sequence=(\d+) in pid (\d+)")
    try:
        victim, kept = None, {}
        deadline = time.monotonic() + 300
        while victim is None and time.monotonic() < deadline and any(p.poll() is None for p in procs):
            for u in units:
                unit_dir = job.artifacts / u.dir_name()
                if (stage_dir(unit_dir, 0) / LINEAGE_FILE).exists() and not stage_dir(unit_dir, 1).exists():
                    pids = {(int(a), int(b)): int(p) for log in logs for a, b, p in owner.findall(log.read_text())}
                    pid = pids.get((u.shard, u.sequence))
                    proc = next((p for p in procs if p.pid == pid and p.poll() is None), None)
                    if proc is not None:
                        kept = _stage_files(stage_dir(unit_dir, 0))
                        proc.kill()
                        victim = (u, proc)
                        break
            time.sleep(0.02)
        assert victim is not None, "no unit was caught between its stages: " + "\n".join(
            f"worker {p.pid} exit {p.poll()}: {log.read_text()[-1500:]}" for p, log in zip(procs, logs, strict=True)
        )
        unit, killed = victim
        survivor = next(p for p in procs if p is not killed)
        assert survivor.wait(300) == 0, logs[procs.index(survivor)].read_text()[-2000:]
    finally:
        for p in procs:
            p.kill()
            p.wait()

    assert training.pending_units(empty_db, job) == []
    with psycopg.connect(empty_db.url) as conn:
        live = [(u.shard, u.sequence, u.version, u.depth) for u in store.live_units(conn)]
        stages = conn.execute("SELECT shard, sequence, version, stage FROM s3t_artifacts ORDER BY 1, 2, 3, 4")
        stages = stages.fetchall()
        jobs = conn.execute(
            "SELECT j.args, j.status, count(*) FILTER (WHERE e.type = 'started') FROM procrastinate_jobs j"
            " JOIN procrastinate_events e ON e.job_id = j.id WHERE j.queue_name = 'training' GROUP BY j.id"
        ).fetchall()
    assert live == [(k, j, 0, 2) for k in range(2) for j in range(2)]
    assert stages == [(k, j, 0, st) for k in range(2) for j in range(2) for st in range(2)]  # each published once
    started = {(a["shard"], a["sequence"]): (status, n) for a, status, n in jobs}
    assert len(jobs) == 4 and all(status == "succeeded" for status, _ in started.values())
    assert {key: n for key, (_, n) in started.items()} == {
        (u.shard, u.sequence): 2 if (u.shard, u.sequence) == (unit.shard, unit.sequence) else 1 for u in units
    }
    # resumed at stage 1: stage 0 is the very file the killed worker wrote
    assert _stage_files(stage_dir(job.artifacts / unit.dir_name(), 0)) == kept
    took_over = owner.findall(logs[procs.index(survivor)].read_text())
    assert (str(unit.shard), str(unit.sequence), str(survivor.pid)) in took_over


def test_batches_forgotten_before_a_verify_run_are_verified_with_it_unless_their_own_job_holds_them(
    empty_db, s3t_settings, tiny_model, tmp_path, monkeypatch
):
    """Requests applied as batches of one: the first batch's verify run takes the second along
    (one verification: the same verify step for both, each completed once); the third, whose own
    verify job holds its lock, and the fourth, whose verify job failed, are left to their jobs.
    A batch that breaks the run it joined is dropped from it: the run's own batch still completes.
    The deletion jobs a verify job waits on to gather are those due or running."""
    import uuid

    from service.core.deletions import Status, SubmitDeletion
    from service.store import jobs
    from service.workflow import steps

    core, admin, first = trained_with_a_request(empty_db, s3t_settings, tiny_model, tmp_path, person=0)
    c = corpus.generate(seed=11, trained=8, holdout=2)
    deps = saga(empty_db, s3t_settings)
    assert steps.apply(deps, first) is Status.IN_PROGRESS  # forgotten, its verify job queued

    def applied_alone(person: int) -> uuid.UUID:
        rid = uuid.uuid4()
        core.submit(SubmitDeletion(rid, [("person", c.trained[person].subject_id)]), admin)
        assert steps.apply(deps, rid) is Status.IN_PROGRESS
        return rid

    rids = [first, *(applied_alone(p) for p in (1, 2, 3))]
    batch = [core.get(r, admin).batch_id for r in rids]
    assert len(set(batch)) == 4 and all(core.get(r, admin).forgotten_time for r in rids)
    with psycopg.connect(empty_db.url) as conn:
        assert store_deletions.forgotten_batches(conn) == batch
        assert jobs.queued(conn, "process_deletion") == 4  # their jobs: no worker ran them here
        jobs.postpone(conn, "process_deletion", 60, 600)
        assert jobs.queued(conn, "process_deletion") == 0  # scheduled for later: not waited on
        conn.execute(  # the fourth batch's verify job failed for good
            "UPDATE procrastinate_jobs SET status = 'failed' WHERE task_name = 'verify_batch'"
            " AND args->>'batch_id' = %s",
            (str(batch[3]),),
        )

    with serving.advisory_lock(empty_db.url, steps._batch_key(batch[2])):  # its verify job runs
        steps._verify_batch(deps, batch[0])
    done = [core.get(r, admin) for r in rids]
    assert [d.status for d in done] == [Status.COMPLETED] * 2 + [Status.IN_PROGRESS] * 2
    assert done[0].result["waterfall"]["verify"] == done[1].result["waterfall"]["verify"]  # one run
    assert all(d.result["verification"]["lineage_excludes_deleted"] for d in done[:2])
    steps._verify_batch(deps, batch[1])  # its own job: nothing left
    for b in batch[2:]:
        steps._verify_batch(deps, b)

    rids += [applied_alone(p) for p in (4, 5)]  # the second breaks any run it is in
    broken = core.get(rids[5], admin).batch_id
    real = steps._resumed

    def resumed(deps, d):
        if d.batch_id == broken:
            raise ValueError("a result the verify half cannot read")
        return real(deps, d)

    monkeypatch.setattr(steps, "_resumed", resumed)
    steps._verify_batch(deps, core.get(rids[4], admin).batch_id)
    assert [core.get(r, admin).status for r in rids[4:]] == [Status.COMPLETED, Status.IN_PROGRESS]
    with pytest.raises(ValueError):
        steps._verify_batch(deps, broken)  # its own job fails (and is retried)
    monkeypatch.setattr(steps, "_resumed", real)
    steps._verify_batch(deps, broken)
    assert [core.get(r, admin).status for r in rids] == [Status.COMPLETED] * 6
    with psycopg.connect(empty_db.url) as conn:
        assert store_deletions.forgotten_batches(conn) == []
        for rid in rids:
            kinds = [
                k
                for (k,) in conn.execute(
                    "SELECT kind FROM ledger_entries WHERE body->>'request' = %s ORDER BY seq", (str(rid),)
                )
            ]
            assert kinds.count("deletion.completed") == 1 and kinds.count("deletion.forgotten") == 1, kinds
    assert lethe.ledger(empty_db, s3t_settings).verify().ok


def test_a_run_that_fails_after_the_cut_still_rolls_the_clean_model_out_when_retried(
    empty_db, s3t_settings, tiny_model, tmp_path, monkeypatch
):
    """The cut is made, then the rollout fails (a crash, a replica error): the retried job finds
    nothing left to cut but must still publish the clean adapter before it completes."""
    from service.core.deletions import Status
    from service.serving import rollout
    from service.store import serving as serving_store
    from service.workflow import steps

    core, admin, rid = trained_with_a_request(empty_db, s3t_settings, tiny_model, tmp_path, person=2)
    real = rollout.roll_out

    def broken(*args, **kwargs):
        raise OSError("replica unreachable")

    monkeypatch.setattr(rollout, "roll_out", broken)
    with pytest.raises(OSError):
        steps.run(saga(empty_db, s3t_settings), rid)
    assert core.get(rid, admin).status is Status.IN_PROGRESS
    assert not training.plan_for(empty_db, []).affected  # the cut is made: nothing left to cut
    monkeypatch.setattr(rollout, "roll_out", real)
    assert steps.run(saga(empty_db, s3t_settings), rid) is Status.COMPLETED
    done = core.get(rid, admin)
    (shard,) = done.result["plan"]["affected_shards"]
    after = done.result["apply"]["adapters"][str(shard)]["after"]
    with psycopg.connect(empty_db.url) as conn:
        served = serving_store.served(conn)
        applied = conn.execute(
            "SELECT count(*) FROM ledger_entries WHERE kind = 'deletion.applied' AND body->>'request' = %s", (str(rid),)
        ).fetchone()[0]
    assert done.result["apply"]["rollout"]["generation"] == served.generation
    assert after["sha256"] is None or served.adapter_sha256 is not None
    assert applied == 1


def test_a_started_worker_has_read_the_served_parts_so_its_first_deletion_reads_only_the_cut_shard(
    empty_db, s3t_settings, tiny_model, tmp_path, monkeypatch
):
    from service.core.deletions import Status
    from service.workflow import steps
    from shards import materialise

    core, admin, rid = trained_with_a_request(empty_db, s3t_settings, tiny_model, tmp_path, person=1)
    deps = saga(empty_db, s3t_settings, retrain_delay=600.0)
    served = s3t_settings.artifacts_dir() / "served"
    materialise.forget_memory()  # a worker process starting
    with serving.rollout_lock(empty_db.url):  # another worker's rollout in flight: no wait, nothing read
        deps.engine.warm()
    assert not materialise._verified.items
    deps.engine.warm()
    parts = {p.parent for p in served.glob("s*/adapter_model.safetensors")}
    assert len(parts) == 2 and all(materialise._verified.get(p) for p in parts)
    reads: list[Path] = []
    load = materialise.load_file
    monkeypatch.setattr(materialise, "load_file", lambda f, *a: reads.append(Path(f).parent) or load(f, *a))
    assert steps.run(deps, rid) is Status.COMPLETED
    (cut,) = core.get(rid, admin).result["plan"]["affected_shards"]
    assert not [r for r in reads if r.is_relative_to(served)]  # no published part read again
    assert all(f"shard-{cut:02d}" in str(r) for r in reads)  # at most the cut shard's unit
