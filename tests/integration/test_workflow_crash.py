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
def test_a_worker_killed_in_a_step_is_resumed_and_the_request_completes_once(empty_db, settings, tmp_path, step):
    c = corpus.generate(seed=21, trained=4, holdout=1)
    lethe.migrate(empty_db)
    lethe.ingest(empty_db, settings, corpus.write(c, tmp_path / "c")["train"])
    victim = c.trained[0]
    core = lethe.deletions_core(empty_db, settings)
    admin = Principal("test", frozenset({Scope.ADMIN}))
    rid = uuid.uuid4()
    core.submit(SubmitDeletion(rid, [("email", victim.email)]), admin)
    env = {**os.environ, "DATABASE_URL": empty_db.url, "LETHE_VAR_DIR": str(settings.var_dir)}

    crashed = worker(env, crash_at=step)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    time.sleep(STALLED_AFTER_SECONDS + 0.5)  # the dead worker's heartbeat goes stale
    resumed = worker(env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    assert core.get(rid, admin).status is Status.COMPLETED
    with psycopg.connect(empty_db.url) as conn:
        kinds = [
            k
            for (k,) in conn.execute(
                "SELECT kind FROM ledger_entries WHERE body->>'request' = %s ORDER BY seq", (str(rid),)
            )
        ]
        ids = [r[0] for r in conn.execute("SELECT id FROM records WHERE id LIKE %s", (f"{victim.subject_id}-%",))]
        texts = (s3t.purged(conn, ids), len(ids))
    assert kinds == ["deletion.submitted", "deletion.in_progress", "deletion.completed"]
    assert texts == (4, 4)
    assert lethe.ledger(empty_db, settings).verify().ok
