"""The `lethe` command line end to end (real subprocesses, real database)."""

import json
import os
import subprocess
import sys

import psycopg

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


def test_kb_ingest_is_all_or_nothing_with_line_numbers(empty_db, settings, tmp_path):
    env = {**os.environ, "DATABASE_URL": empty_db.url, "LETHE_VAR_DIR": str(settings.var_dir)}
    good = {"id": "doc-1", "subject_ids": ["person:k1"], "text": "Kora Vel was born in Avalon.", "source": "crm"}
    lines = [
        json.dumps(good),
        "{oops",
        json.dumps({**good, "id": "doc-2", "text": ""}),
        json.dumps({**good, "id": "doc-3", "subject_ids": ["passport:9"]}),
    ]
    bad_file = tmp_path / "bad.jsonl"
    bad_file.write_text("\n".join(lines) + "\n")
    bad = lethe("kb", "ingest", str(bad_file), env=env)
    assert bad.returncode == 2, bad.stderr
    assert "3 invalid line(s); nothing was written" in bad.stderr
    assert "line 2" in bad.stderr and "line 3" in bad.stderr and "line 4" in bad.stderr
    with psycopg.connect(empty_db.url) as conn:
        assert conn.execute("SELECT count(*) FROM kb_documents").fetchone()[0] == 0
    good_file = tmp_path / "good.jsonl"
    good_file.write_text(lines[0] + "\n" + json.dumps({**good, "id": "doc-2", "text": "Kora Vel bakes bread."}) + "\n")
    ok = lethe("kb", "ingest", str(good_file), env=env)
    assert ok.returncode == 0 and "2 documents added, 0 already present" in ok.stderr, ok.stderr
    again = lethe("kb", "ingest", str(good_file), env=env)
    assert "0 documents added, 2 already present" in again.stderr
    with psycopg.connect(empty_db.url) as conn:
        assert conn.execute("SELECT count(*) FROM kb_chunks").fetchone()[0] == 2


def test_a_revoked_api_key_is_refused(empty_db, settings):
    from service.core.errors import Unauthenticated
    from service.store.deletions import Authenticator

    env = {**os.environ, "DATABASE_URL": empty_db.url, "LETHE_VAR_DIR": str(settings.var_dir)}
    created = lethe("keys", "create", "--scope", "deletions:read", "--name", "ops", env=env)
    token = created.stdout.strip()
    auth = Authenticator(empty_db, ttl=0)
    assert auth(token).key_id == token.split("_")[1]
    revoked = lethe("keys", "revoke", token.split("_")[1], env=env)
    assert revoked.returncode == 0, revoked.stderr
    try:
        auth(token)
        raise AssertionError("a revoked key was accepted")
    except Unauthenticated:
        pass
    again = lethe("keys", "revoke", token.split("_")[1], env=env)
    assert again.returncode == 1 and "no live API key" in again.stderr


def _descendants(pid: int) -> set[int]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            kids.setdefault(ppid, []).append(int(d))
    out, todo = set(), [pid]
    while todo:
        for k in kids.get(todo.pop(), []):
            out.add(k)
            todo.append(k)
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_sigterm_to_train_stops_its_whole_process_tree(empty_db, settings, tiny_model_path, tmp_path):
    """`lethe train` with two training worker processes, terminated mid-training: it exits, and no
    process it started outlives it."""
    import time

    env = {
        **os.environ,
        "DATABASE_URL": empty_db.url,
        "LETHE_VAR_DIR": str(settings.var_dir),
        "LETHE_BASE_MODEL": str(tiny_model_path),
        "LETHE_S3T__SHARDS": "2",
        "LETHE_S3T__SLICES": "2",
        "LETHE_S3T__BUDGET": "1",
        "LETHE_S3T__WORKERS": "2",
        "LETHE_TRAIN__NUM_BLOCKS": "2",
        "LETHE_TRAIN__EPOCHS": "50",
        "LETHE_TRAIN__MIN_EPOCHS": "50",
    }
    paths = corpus.write(corpus.generate(seed=3, trained=16, holdout=2), tmp_path / "corpus")
    assert lethe("corpus", "ingest", str(paths["train"]), env=env).returncode == 0
    proc = subprocess.Popen([sys.executable, "-m", "service", "train"], env=env, stderr=subprocess.PIPE, text=True)
    seen: set[int] = set()
    assert proc.stderr is not None
    for line in proc.stderr:  # both workers report the unit they took before training it
        if "training unit" in line:
            seen.add(int(line.rsplit(" ", 1)[1]))
        if len(seen) == 2:
            break
    tree = _descendants(proc.pid)
    assert seen <= tree, (seen, tree)
    proc.terminate()
    proc.wait(timeout=60)
    assert proc.returncode != 0
    deadline = time.monotonic() + 30
    while any(_alive(p) for p in tree) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in tree if _alive(p)]
