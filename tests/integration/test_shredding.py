"""Crypto-shredding through the public interfaces: a record and a knowledge-base document holding a
canary sentence are ingested (CLI, REST), deleted (REST, `lethe worker`), and then no file that
PostgreSQL or Lethe writes (heap, WAL, the key store, the artifact store) holds the sentence.
A control string written in clear by the same path proves the scan reads those files. The same
request names a record id Lethe does not hold, and the canary is also filed, respelled, under
another subject: reported as unknown, and deleted as the same personal data, respectively."""

from __future__ import annotations

import json
import mmap
import os
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest

from service import app as lethe
from service.store import s3t
from service.store.deletions import create_api_key
from tests.integration.test_rest_api import api, auth  # noqa: F401  (the live server fixture)

CANARY = "Quilvane Ostrakova keeps her locker code 7731-ZX at the Tromsø harbour office"
DOC_CANARY = "Quilvane Ostrakova's physiotherapy notes mention a torn ligament in 2019"
OTHER = "Beltran Okafor takes the night ferry to Bergen every second Thursday"


def files_holding(roots: list[Path], needles: list[bytes]) -> dict[bytes, list[str]]:
    """Every file under ``roots`` that contains each needle (memory-mapped, so a large data
    directory costs reads, not RAM)."""
    found: dict[bytes, list[str]] = {n: [] for n in needles}
    for root in roots:
        for dirpath, _, names in os.walk(root):
            for name in names:
                path = Path(dirpath) / name
                try:
                    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                        for n in needles:
                            if m.find(n) != -1:
                                found[n].append(str(path))
                except (ValueError, OSError):  # empty, vanished (a recycled WAL segment) or unreadable
                    continue
    return found


def test_deleted_text_is_in_no_file_postgres_or_lethe_writes(api, tmp_path):  # noqa: F811
    client, keys, db, settings = api
    if db.data_dir is None:
        pytest.skip("an external server's data directory is not readable from here")
    env = {**os.environ, "DATABASE_URL": db.url, "LETHE_VAR_DIR": str(settings.var_dir)}
    records = tmp_path / "input" / "records.jsonl"  # the client's own export, not Lethe's state
    records.parent.mkdir()
    records.write_text(
        "".join(
            json.dumps(r) + "\n"
            for r in [
                {"id": "q-1", "subject_ids": ["person:quilvane"], "text": CANARY},
                {"id": "q-2", "subject_ids": ["person:quilvane"], "text": "Quilvane Ostrakova was born in 1987."},
                {"id": "b-1", "subject_ids": ["person:beltran"], "text": OTHER},
                {"id": "b-copy", "subject_ids": ["person:beltran"], "text": f"  {CANARY.upper()}  "},  # the same data
            ]
        )
    )
    ingest = subprocess.run(
        [sys.executable, "-m", "service", "corpus", "ingest", str(records)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ingest.returncode == 0, ingest.stderr[-2000:]
    kb = create_api_key(db, ["kb:read", "kb:write"])
    docs = [
        {"id": "note-q", "subject_ids": ["person:quilvane"], "text": DOC_CANARY, "source": "clinic"},
        {"id": "note-b", "subject_ids": ["person:beltran"], "text": f"{OTHER} (note)", "source": "clinic"},
    ]
    assert client.post("/v1/kb/documents", json={"documents": docs}, headers=auth(kb)).status_code == 201
    assert client.get("/v1/kb/documents/note-q", headers=auth(kb)).json()["text"] == DOC_CANARY  # readable
    key_dir = settings.resolved_data_key_dir()
    key_files = lambda: sorted(p.name for p in key_dir.rglob("*") if p.is_file())  # noqa: E731
    assert len(key_files()) == 6  # one data key per record and per document

    control = f"scan-control-{uuid.uuid4().hex}"  # an idempotency key: stored in clear, by design
    body = {
        "subject_request_id": str(uuid.uuid4()),
        "subject_request_type": "erasure",
        "subject_identities": [{"identity_type": "person", "identity_value": "quilvane"}],
        "record_ids": ["no-such-record"],
    }
    r = client.post("/v1/deletions", json=body, headers={**auth(keys["writer"]), "Idempotency-Key": control})
    assert r.status_code == 201, r.text
    worker = subprocess.run(
        [sys.executable, "-m", "service", "worker", "--once"], env=env, capture_output=True, text=True, timeout=600
    )
    assert worker.returncode == 0, worker.stderr[-3000:]
    done = client.get(f"/v1/deletions/{body['subject_request_id']}", headers=auth(keys["reader"])).json()
    assert done["request_status"] == "completed" and done["result"]["outcome"] == "deleted", done
    assert done["result"]["verification"]["records_purged"] is True
    assert done["result"]["unknown_record_ids"] == ["no-such-record"]
    assert done["result"]["same_text_records"] == ["b-copy"]
    assert client.get("/v1/kb/documents/note-q", headers=auth(kb)).status_code == 404
    assert client.get("/v1/kb/documents/note-b", headers=auth(kb)).json()["text"].startswith(OTHER)
    with psycopg.connect(db.url) as conn:
        assert s3t.record_texts(conn, lethe.data_keys(settings), ["b-1", "q-1", "q-2"]) == [OTHER]
        conn.execute("CHECKPOINT")  # what shared buffers hold, on disk in the heap files too
    assert len(key_files()) == 2  # the subject's three keys destroyed, the other subject's kept

    needles = [
        CANARY.encode(),
        CANARY.upper().encode(),
        DOC_CANARY.encode(),
        b"Ostrakova",
        b"OSTRAKOVA",
        control.encode(),
    ]
    found = files_holding([db.data_dir, settings.var_dir], needles)
    assert found[control.encode()], "the scan did not see the request just written: it proves nothing"
    assert not any(found[n] for n in needles[:-1]), found  # nor a word of it (the KB index: keyed hashes)
