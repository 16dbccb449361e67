"""The ledger against real PostgreSQL: chain, checkpoints, proofs, append-only, tamper detection."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from service import app as lethe
from service.core import merkle
from service.ledger.checkpoint import open_note
from service.ledger.verify import export_lines, read_export, verify
from service.store import ledger as store


@pytest.fixture
def ledger(empty_db, settings):
    lethe.migrate(empty_db)
    return lethe.ledger(empty_db, settings.model_copy(update={"ledger_checkpoint_every": 4}))


def fill(ledger, n=10):
    for i in range(n):
        ledger.append([("deletion.submitted", {"request": f"r{i}", "subject_hash": f"{i:064x}"})])


def superuser(db):
    """A superuser connection with the append-only triggers switched off, as an attacker would."""
    conn = psycopg.connect(db.url, autocommit=True)
    conn.execute("SET session_replication_role = replica")
    return conn


def test_entries_chain_and_checkpoints_verify_with_proofs(ledger):
    fill(ledger, 10)
    with ledger.db.connect() as conn:
        assert [e.seq for e in store.entries(conn)] == list(range(1, 11))
        cps = store.checkpoints(conn)
    assert [s for s, _, _ in cps] == [4, 8]  # every 4 entries
    report = ledger.verify()
    assert report.ok and report.entries == 10 and report.checkpoints == 2
    receipt = ledger.receipt(7)  # signs a checkpoint of size 10 first
    cp = open_note(receipt.checkpoint_note, ledger.key_name, ledger.key.public_key())
    assert cp.size == 10
    assert merkle.verify_inclusion(6, 10, merkle.leaf_hash(receipt.entry.row_hash), receipt.inclusion_proof, cp.root)
    d = receipt.to_dict()
    assert d["leaf_index"] == 6 and len(d["inclusion_proof"]) == len(receipt.inclusion_proof)
    old_root = cps[0][1]
    assert merkle.verify_consistency(4, 10, old_root, cp.root, ledger.consistency_proof(4, 10))
    assert not merkle.verify_consistency(
        4, 10, base64.b64decode(b"A" * 43 + b"="), cp.root, ledger.consistency_proof(4, 10)
    )


def test_concurrent_appends_stay_gap_free_and_linear(ledger):
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: ledger.append([("k", {"i": i}), ("k", {"i": i, "second": True})]), range(40)))
    with ledger.db.connect() as conn:
        seqs = [e.seq for e in store.entries(conn)]
    assert seqs == list(range(1, 81))
    assert ledger.verify().ok


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE ledger_entries SET kind = 'x' WHERE seq = 1",
        "DELETE FROM ledger_entries WHERE seq = 1",
        "TRUNCATE ledger_entries",
        "UPDATE ledger_checkpoints SET note = 'x'",
    ],
)
def test_the_application_role_cannot_change_the_ledger(ledger, statement):
    fill(ledger, 4)
    with ledger.db.connect(autocommit=True) as conn:
        conn.execute("SET ROLE lethe_app")
        assert conn.execute("SELECT count(*) FROM ledger_entries").fetchone()[0] == 4  # it may read and insert
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(statement)
    # The owner (and any superuser with triggers on) is stopped by the triggers.
    with (
        ledger.db.connect(autocommit=True) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"),
    ):
        conn.execute(statement)


@pytest.mark.parametrize(
    ("tamper", "first_bad"),
    [
        ('UPDATE ledger_entries SET body = \'{"request": "forged"}\' WHERE seq = 6', 6),
        ("DELETE FROM ledger_entries WHERE seq = 5", 5),
        (
            "UPDATE ledger_entries SET seq = 1000 WHERE seq = 3; UPDATE ledger_entries SET seq = 3 WHERE seq = 7;"
            " UPDATE ledger_entries SET seq = 7 WHERE seq = 1000",
            3,
        ),
        ("TRUNCATE ledger_entries", 1),
        ("DELETE FROM ledger_entries WHERE seq > 8", 9),
    ],
)
def test_superuser_tampering_is_detected_and_the_first_bad_entry_named(ledger, empty_db, settings, tamper, first_bad):
    fill(ledger, 10)
    ledger.checkpoint()
    with superuser(empty_db) as conn:
        for statement in tamper.split(";"):
            conn.execute(statement)
    report = ledger.verify()
    assert not report.ok and report.first_bad_seq == first_bad, report
    env = {**os.environ, "DATABASE_URL": empty_db.url, "LETHE_VAR_DIR": str(settings.var_dir)}
    proc = subprocess.run(
        [sys.executable, "-m", "service", "ledger", "verify"], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 1 and f"seq {first_bad}" in proc.stderr, proc.stderr


def test_a_consistently_rehashed_rewrite_is_caught_by_the_signed_checkpoints(ledger, empty_db):
    fill(ledger, 10)
    ledger.checkpoint()  # sizes 4, 8, 10 are signed
    with ledger.db.connect() as conn:
        entries = list(store.entries(conn))
    from service.core.chain import chain_hash

    prev = entries[5].prev_hash  # rewrite entry 6 and re-chain everything after it
    with superuser(empty_db) as conn:
        for e in entries[5:]:
            body = {**e.body, "request": "forged"} if e.seq == 6 else e.body
            h = chain_hash(prev, e.seq, e.kind, body, e.created_at)
            conn.execute(
                "UPDATE ledger_entries SET body = %s, prev_hash = %s, row_hash = %s WHERE seq = %s",
                (psycopg.types.json.Jsonb(body), prev, h, e.seq),
            )
            prev = h
    report = ledger.verify()
    assert not report.ok and report.first_bad_seq == 5 and "checkpoint 8" in report.reason  # after the last good (4)


def test_export_verifies_offline_and_an_edited_export_fails(ledger, tmp_path):
    fill(ledger, 6)
    ledger.checkpoint()
    with ledger.db.connect() as conn:
        lines = list(export_lines(store.entries(conn), store.checkpoints(conn)))
    path = tmp_path / "ledger.jsonl"
    path.write_text("\n".join(lines) + "\n")
    entries, cps = read_export(path)
    assert verify(entries, cps, ledger.key.public_key(), ledger.key_name).ok
    path.write_text("\n".join(lines).replace('"r2"', '"rX"') + "\n")
    entries, cps = read_export(path)
    report = verify(entries, cps, ledger.key.public_key(), ledger.key_name)
    assert report.first_bad_seq == 3


def test_a_rotated_signing_key_keeps_earlier_checkpoints_verifiable(empty_db, settings, tmp_path):
    """Rotation as docs/operations.md describes it: a new key under a new name, the old public key
    kept as a retired key. Checkpoints before and after verify, in the database and offline (CLI);
    without the retired key, the first old checkpoint is reported."""
    from service.ledger.checkpoint import load_or_create_signing_key, public_pem

    lethe.migrate(empty_db)
    old = settings.model_copy(
        update={
            "ledger_checkpoint_every": 4,
            "ledger_key_file": tmp_path / "old.pem",
            "ledger_key_name": "lethe-ledger-2026",
        }
    )
    fill(lethe.ledger(empty_db, old), 8)
    (tmp_path / "old.pub.pem").write_text(public_pem(load_or_create_signing_key(tmp_path / "old.pem")))
    new = old.model_copy(
        update={
            "ledger_key_file": tmp_path / "new.pem",
            "ledger_key_name": "lethe-ledger-2027",
            "ledger_retired_keys": {"lethe-ledger-2026": tmp_path / "old.pub.pem"},
        }
    )
    rotated = lethe.ledger(empty_db, new)
    fill(rotated, 4)
    with empty_db.connect() as conn:
        notes = [note for _, _, note in store.checkpoints(conn)]
    assert [n.rsplit("\u2014 ", 1)[1].split(" ")[0] for n in notes] == ["lethe-ledger-2026"] * 2 + ["lethe-ledger-2027"]
    report = rotated.verify()
    assert report.ok and report.checkpoints == 3
    forgot = lethe.ledger(empty_db, new.model_copy(update={"ledger_retired_keys": {}})).verify()
    assert not forgot.ok and forgot.reason.startswith("checkpoint 4: no signature by")

    export = tmp_path / "ledger.jsonl"
    env = {
        **os.environ,
        "DATABASE_URL": empty_db.url,
        "LETHE_VAR_DIR": str(tmp_path / "var"),
        "LETHE_LEDGER_KEY_FILE": str(tmp_path / "new.pem"),
        "LETHE_LEDGER_KEY_NAME": "lethe-ledger-2027",
    }
    cli = [sys.executable, "-m", "service", "ledger"]
    subprocess.run([*cli, "export", str(export)], env=env, check=True, capture_output=True)
    offline = subprocess.run([*cli, "verify", "--file", str(export)], env=env, capture_output=True, text=True)
    assert offline.returncode == 1 and "no signature by" in offline.stderr
    env["LETHE_LEDGER_RETIRED_KEYS"] = json.dumps({"lethe-ledger-2026": str(tmp_path / "old.pub.pem")})
    offline = subprocess.run([*cli, "verify", "--file", str(export)], env=env, capture_output=True, text=True)
    assert offline.returncode == 0, offline.stderr
    assert "12 entries, 3 signed checkpoints" in offline.stderr
    pub = subprocess.run([*cli, "public-key"], env=env, capture_output=True, text=True, check=True).stdout
    assert pub == public_pem(load_or_create_signing_key(tmp_path / "new.pem"))


def test_a_quiet_ledger_is_signed_once_its_oldest_unsigned_entry_is_old_enough(empty_db, settings):
    """Without a first checkpoint and with fewer than `every` entries, the entries still get signed
    within max_age (the worker calls maybe_checkpoint periodically): no entry stays unsigned."""
    lethe.migrate(empty_db)
    ledger = lethe.ledger(empty_db, settings.model_copy(update={"ledger_checkpoint_seconds": 0.5}))
    fill(ledger, 2)
    with empty_db.connect() as conn:
        assert store.checkpoints(conn) == []  # fresh entries: not yet
    time.sleep(0.6)
    ledger.maybe_checkpoint()
    with empty_db.connect() as conn:
        assert [size for size, _, _ in store.checkpoints(conn)] == [2]
