"""The /metrics figures read from PostgreSQL at scrape time (service/metrics.py), on a real
database holding requests, replicas, S3T artifacts and ledger entries; and `promtool check
metrics` on the REST API's and the gateway's exposition."""

from __future__ import annotations

import re
import shutil
import subprocess
import uuid
from datetime import UTC, datetime, timedelta

import prometheus_client
import psycopg
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from psycopg.types.json import Jsonb

from service import app as lethe
from service.gateway.app import create_gateway
from service.store import ledger as ledger_store
from service.store.deletions import Authenticator
from tests.deploy.test_monitoring import alerts, dashboard_exprs

HOUR = timedelta(hours=1)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def value(text: str, name: str, **labels: str) -> float:
    return samples(text)[(name, tuple(sorted(labels.items())))]


def add_request(
    conn: psycopg.Connection,
    status: str,
    age: timedelta,
    deadline_in: timedelta,
    result: dict | None = None,
    took: timedelta | None = None,
) -> str:
    now = datetime.now(UTC)
    rid = str(uuid.uuid4())
    conn.execute(
        """INSERT INTO deletion_requests (id, request_type, subject_hashes, identity_types, record_ids, received_time,
               deadline, status, callback_urls, updated_time, completed_time, result, fingerprint, created_by)
           VALUES (%s, 'erasure', %s, '{person}', '{}', %s, %s, %s, '{}', %s, %s, %s, 'f', 'test')""",
        (
            rid,
            [bytes(32)],
            now - age,
            now + deadline_in,
            status,
            now,
            now - age + took if took is not None else None,
            Jsonb(result or {}),
        ),
    )
    return rid


def add_unit(conn: psycopg.Connection, shard: int, sequence: int, live: int, destroyed: int, version: int = 0) -> None:
    conn.execute(
        "INSERT INTO s3t_units (shard, sequence, slice_order) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
        (shard, sequence, [0, 1, 2, 3]),
    )
    for stage in range(live + destroyed):
        conn.execute(
            """INSERT INTO s3t_artifacts (shard, sequence, version, stage, path, adapter_sha256, lineage, destroyed_at)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s)""",
            (
                shard,
                sequence,
                version,
                stage,
                f"/a/{shard}/{sequence}/{version}/{stage}",
                "0" * 64,
                Jsonb({"excluded": []}),
                None if stage < live else datetime.now(UTC),
            ),
        )


@pytest.fixture
def db(empty_db):
    lethe.migrate(empty_db)
    return empty_db


def test_deletions_by_deadline_window_age_and_verification_failures(db, settings):
    with psycopg.connect(db.url) as conn:
        assert value(scrape(db, settings), "lethe_deletion_oldest_pending_age_seconds") == 0  # nothing open yet
        ids = [
            add_request(conn, "pending", 2 * HOUR, -HOUR),  # overdue
            add_request(conn, "in_progress", 3 * HOUR, 5 * HOUR),  # < 1 day left
            add_request(conn, "pending", HOUR, timedelta(days=3)),  # < 7 days
            add_request(conn, "pending", timedelta(minutes=1), timedelta(days=29)),  # ≥ 7 days
            add_request(conn, "pending", timedelta(minutes=2), timedelta(days=30)),
            add_request(
                conn, "completed", HOUR, timedelta(days=29), {"stage_seconds": {"cut": 0.2}}, timedelta(seconds=4)
            ),
            add_request(conn, "cancelled", HOUR, timedelta(days=29)),
            # failed verification: one replica not on the published adapter, records not purged
            add_request(
                conn,
                "failed",
                HOUR,
                timedelta(days=29),
                {
                    "verification": {
                        "lineage_excludes_deleted": True,
                        "records_purged": False,
                        "equivalence": {"replicas": {"replica-0": True, "replica-1": False}},
                    }
                },
                timedelta(seconds=9),
            ),
            # the closed-model path: a leak found by the probes
            add_request(
                conn,
                "failed",
                HOUR,
                timedelta(days=29),
                {
                    "verification": {
                        "lineage_excludes_deleted": True,
                        "records_purged": True,
                        "equivalence": {"replicas": {}},
                        "kb": {"documents_deleted": True, "leakage": {"passed": False}},
                    }
                },
                timedelta(seconds=9),
            ),
        ]
        conn.commit()
    text = scrape(db, settings)
    windows = {
        w: value(text, "lethe_deletion_open_requests", deadline_window=w)
        for w in ("overdue", "lt_1d", "lt_7d", "ge_7d")
    }
    assert windows == {"overdue": 1, "lt_1d": 1, "lt_7d": 1, "ge_7d": 2}
    assert 3 * 3600 - 60 < value(text, "lethe_deletion_oldest_pending_age_seconds") < 3 * 3600 + 60
    assert -3600 - 60 < value(text, "lethe_oldest_pending_deadline_seconds") < -3600 + 60
    assert value(text, "lethe_deletion_requests_total", status="pending") == 4
    assert value(text, "lethe_deletion_requests_total", status="failed") == 2
    failures = {
        c: value(text, "lethe_deletion_verification_failures_total", check=c)
        for c in ("lineage", "equivalence", "records_purged", "kb")
    }
    assert failures == {"lineage": 0, "equivalence": 1, "records_purged": 1, "kb": 1}
    assert value(text, "lethe_time_to_forget_seconds_count") == 1
    assert value(text, "lethe_time_to_forget_seconds_bucket", le="5") == 1
    assert value(text, "lethe_time_to_forget_seconds_bucket", le="2.5") == 0
    assert not any(i in text for i in ids)


def test_serving_generation_replicas_and_heartbeats(db, settings):
    text = scrape(db, settings)
    assert "lethe_served_generation " not in text and "lethe_replica_routable{" not in text
    with psycopg.connect(db.url) as conn:
        conn.execute("INSERT INTO served_model (generation, aggregation) VALUES (7, 'single')")
        conn.execute(
            """INSERT INTO replicas (id, url, routable, acked_generation, heartbeat_at) VALUES
               ('replica-0', 'http://10.0.0.1:8000', true, 7, now() - interval '3 seconds'),
               ('replica-1', 'http://10.0.0.2:8000', false, 6, now() - interval '10 minutes'),
               ('replica-2', 'http://10.0.0.3:8000', false, NULL, now())"""
        )
    text = scrape(db, settings)
    assert value(text, "lethe_served_generation") == 7
    acked = {
        r: value(text, "lethe_replica_acknowledged_generation", replica=r)
        for r in ("replica-0", "replica-1", "replica-2")
    }
    assert acked == {"replica-0": 7, "replica-1": 6, "replica-2": 0}
    assert value(text, "lethe_replica_routable", replica="replica-0") == 1
    assert value(text, "lethe_replica_routable", replica="replica-1") == 0
    assert 2 <= value(text, "lethe_replica_heartbeat_age_seconds", replica="replica-0") < 60
    assert 590 < value(text, "lethe_replica_heartbeat_age_seconds", replica="replica-1") < 700
    assert "10.0.0.1" not in text  # replicas' internal addresses stay internal


def test_shard_depth_dead_shards_and_untrained_ones(db, settings):
    assert "lethe_shard_depth" not in scrape(db, settings)  # no layout yet
    with psycopg.connect(db.url) as conn:
        conn.execute("INSERT INTO s3t_layout (shards, slices) VALUES (3, 4)")
        add_unit(conn, 0, 0, live=1, destroyed=3)  # shard 0: its best sequence keeps 3 slices
        add_unit(conn, 0, 1, live=3, destroyed=1)
        add_unit(conn, 1, 0, live=0, destroyed=4)  # shard 1: every sequence cut at its first slice: dead
        add_unit(conn, 1, 1, live=0, destroyed=2, version=1)
        add_unit(conn, 2, 0, live=0, destroyed=0)  # shard 2: not trained yet, left out
    text = scrape(db, settings)
    assert value(text, "lethe_shard_slices") == 4 and value(text, "lethe_shards") == 3
    assert value(text, "lethe_shard_depth", shard="0") == 3
    assert value(text, "lethe_shard_depth", shard="1") == 0
    assert ("lethe_shard_depth", (("shard", "2"),)) not in samples(text)
    assert value(text, "lethe_shards_dead") == 1


def test_ledger_unsigned_entries_and_their_age(db, settings):
    ledger = lethe.ledger(db, settings)
    text = scrape(db, settings)
    assert value(text, "lethe_ledger_entries_total") == 0 and value(text, "lethe_ledger_unsigned_entries") == 0
    assert value(text, "lethe_ledger_oldest_unsigned_entry_age_seconds") == 0
    assert "lethe_ledger_checkpoint_age_seconds" not in text
    ledger.append([("test.one", {"n": 1}), ("test.two", {"n": 2})])
    ledger.checkpoint()
    with psycopg.connect(db.url) as conn:
        ledger_store.append(conn, [("test.three", {"n": 3})])
    text = scrape(db, settings)
    assert value(text, "lethe_ledger_entries_total") == 3 and value(text, "lethe_ledger_unsigned_entries") == 1
    assert 0 <= value(text, "lethe_ledger_oldest_unsigned_entry_age_seconds") < 30
    assert 0 <= value(text, "lethe_ledger_checkpoint_age_seconds") < 30
    ledger.checkpoint()
    text = scrape(db, settings)
    assert value(text, "lethe_ledger_unsigned_entries") == 0
    assert value(text, "lethe_ledger_oldest_unsigned_entry_age_seconds") == 0


def scrape(db, settings) -> str:
    with TestClient(lethe.rest_app(db, settings)) as client:
        r = client.get("/metrics")
    assert r.status_code == 200
    return r.text


def promtool_check(text: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [shutil.which("promtool") or "promtool", "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_promtool_finds_nothing_to_lint_in_either_exposition(db, settings):
    with psycopg.connect(db.url) as conn:  # every family present, labelled ones with samples
        conn.execute("INSERT INTO s3t_layout (shards, slices) VALUES (1, 4)")
        add_unit(conn, 0, 0, live=2, destroyed=2)
        conn.execute("INSERT INTO served_model (generation, aggregation) VALUES (1, 'single')")
        conn.execute("INSERT INTO replicas (id, url, routable, acked_generation) VALUES ('r0', 'http://x', true, 1)")
        add_request(conn, "pending", HOUR, timedelta(days=2))
        add_request(conn, "completed", HOUR, timedelta(days=29), {"stage_seconds": {"cut": 0.2}}, timedelta(seconds=4))
    lethe.ledger(db, settings).append([("test.one", {})])
    lethe.ledger(db, settings).checkpoint()
    rest = scrape(db, settings)
    assert "lethe_shard_depth{" in rest and "lethe_replica_routable{" in rest
    gateway = create_gateway(None, Authenticator(db))
    with TestClient(gateway) as client:
        gw = client.get("/metrics")
    assert gw.status_code == 200 and gw.headers["content-type"] == prometheus_client.CONTENT_TYPE_LATEST
    assert "lethe_rag_gate_blocks_total" in gw.text
    for text in (rest, gw.text):
        out = promtool_check(text)
        assert (out.returncode, out.stdout + out.stderr) == (0, ""), text
    # every lethe_* series the alerts and the dashboard name is one these endpoints expose
    exposed = set()
    for kind_line in re.findall(r"^# TYPE (\S+) (\S+)$", rest + gw.text, flags=re.M):
        name, kind = kind_line
        exposed |= {name + s for s in ("_bucket", "_count", "_sum")} if kind == "histogram" else {name}
    named = set(re.findall(r"\blethe_[a-z0-9_]+", "\n".join([a["expr"] for a in alerts()] + dashboard_exprs())))
    assert named and named <= exposed, named - exposed
