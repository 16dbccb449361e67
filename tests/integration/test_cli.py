"""The `lethe` command line end to end (real subprocesses, real database)."""

import json
import os
import subprocess
import sys

from service.store.migrate import MIGRATIONS_DIR
from shards import corpus


def lethe(*args, env):
    return subprocess.run(
        [sys.executable, "-m", "service", *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_migrate_ingest_plan_and_simulate(empty_db, settings, tmp_path):
    env = {**os.environ, "DATABASE_URL": empty_db.url, "LETHE_VAR_DIR": str(settings.var_dir)}
    first = lethe("db", "migrate", env=env)
    count = len([p for p in MIGRATIONS_DIR.glob("*.sql") if ".rollback" not in p.name])
    assert first.returncode == 0 and f"applied {count} migration(s)" in first.stderr, first.stderr
    assert "applied 0 migration(s)" in lethe("db", "migrate", env=env).stderr
    paths = corpus.write(corpus.generate(seed=3, trained=8, holdout=2), tmp_path / "c")
    ingest = lethe("corpus", "ingest", str(paths["train"]), env=env)
    assert ingest.returncode == 0 and "32 records added" in ingest.stderr, ingest.stderr
    status = lethe("db", "status", env=env)
    assert "16 subject ids, 32 records" in status.stderr
    plan = lethe("plan", "--subject", "person:P0000", env=env)  # nothing trained yet: an empty plan
    assert plan.returncode == 0 and json.loads(plan.stdout) == {"affected": [], "dead": [], "shards": {}}
    bad = lethe("plan", "--subject", "passport:1", env=env)
    assert bad.returncode == 2 and "unknown identity type" in bad.stderr
    sim = lethe("simulate", "capacity", "-m", "2", "-L", "2", "-B", "2", "--trials", "200", env=env)
    assert sim.returncode == 0 and "closed form 8.3" in sim.stderr, sim.stderr
