"""A worker SIGKILLed inside each workflow step in turn: after a restart every request completes
exactly once, its records are purged, and the ledger verifies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import psycopg
import pytest

from service import app as lethe
from service.core.deletions import Principal, Scope, Status, SubmitDeletion
from service.store import s3t
from service.workflow.runner import STALLED_AFTER_SECONDS
from service.workflow.steps import STEPS
from shards import corpus

pytestmark = pytest.mark.slow


def worker(env, crash_at=None):
    env = {**env, **({"LETHE_CRASH_AT": crash_at} if crash_at else {})}
    return subprocess.run(
        [sys.executable, "-m", "service", "worker", "--once"], env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize("step", STEPS)
def test_a_batch_killed_in_a_step_is_resumed_and_every_request_completes_once(empty_db, settings, tmp_path, step):
    """Three requests applied as one batch (two subjects, and a third naming one of them again plus
    a record of the first: subjects that share records), one more cancelled before the batch
    started: after the kill and a restart each of the three completed exactly once, in the same
    batch, forgotten before completed; the cancelled one was never claimed."""
    c = corpus.generate(seed=21, trained=4, holdout=1)
    lethe.migrate(empty_db)
    lethe.ingest(empty_db, settings, corpus.write(c, tmp_path / "c")["train"])
    a, b, spared = c.trained[0], c.trained[1], c.trained[2]
    core = lethe.deletions_core(empty_db, settings)
    admin = Principal("test", frozenset({Scope.ADMIN}))
    shared_record = str(next(iter(c.records([a])))["id"])
    asks = [
        SubmitDeletion(uuid.uuid4(), [("email", a.email)]),
        SubmitDeletion(uuid.uuid4(), [("email", b.email)]),
        SubmitDeletion(uuid.uuid4(), [("email", b.email)], record_ids=[shared_record]),
    ]
    rids = [core.submit(cmd, admin)[0].id for cmd in asks]
    cancelled = core.submit(SubmitDeletion(uuid.uuid4(), [("email", spared.email)]), admin)[0].id
    core.cancel(cancelled, admin)
    env = {**os.environ, "DATABASE_URL": empty_db.url, "LETHE_VAR_DIR": str(settings.var_dir)}

    crashed = worker(env, crash_at=step)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    time.sleep(STALLED_AFTER_SECONDS + 0.5)  # the dead worker's heartbeat goes stale
    resumed = worker(env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    done = [core.get(rid, admin) for rid in rids]
    assert [d.status for d in done] == [Status.COMPLETED] * 3
    assert len({d.batch_id for d in done}) == 1 and done[0].batch_id is not None
    assert all(d.forgotten_time is not None and d.completed_time and d.forgotten_time <= d.completed_time for d in done)
    assert {d.result["batch"]["id"] for d in done} == {str(done[0].batch_id)}
    assert all(set(d.result["stage_seconds"]) >= set(STEPS) - {"complete"} for d in done)
    assert core.get(cancelled, admin).status is Status.CANCELLED and core.get(cancelled, admin).batch_id is None
    with psycopg.connect(empty_db.url) as conn:
        for rid in rids:
            kinds = [
                k
                for (k,) in conn.execute(
                    "SELECT kind FROM ledger_entries WHERE body->>'request' = %s ORDER BY seq", (str(rid),)
                )
            ]
            assert kinds == ["deletion.submitted", "deletion.in_progress", "deletion.forgotten", "deletion.completed"]
        ids = [
            r[0]
            for r in conn.execute(
                "SELECT id FROM records WHERE id LIKE ANY(%s)", ([f"{a.subject_id}-%", f"{b.subject_id}-%"],)
            )
        ]
        texts = (s3t.purged(conn, ids), len(ids))
        kept = [r[0] for r in conn.execute("SELECT id FROM records WHERE id LIKE %s", (f"{spared.subject_id}-%",))]
        assert s3t.purged(conn, kept) == 0
    assert texts == (8, 8)
    assert lethe.ledger(empty_db, settings).verify().ok
