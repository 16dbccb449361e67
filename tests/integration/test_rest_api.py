"""The REST API on a real uvicorn server on loopback, a real httpx client and real PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import psycopg
import pytest

from service import app as lethe
from service.store.deletions import create_api_key
from tests.integration.servers import serve

EMAIL = "ada.lovelace@example.org"


@pytest.fixture
def api(empty_db, settings):
    lethe.migrate(empty_db)
    server, port = serve(lethe.rest_app(empty_db, settings))
    keys = {
        "writer": create_api_key(empty_db, ["deletions:write", "deletions:read"]),
        "reader": create_api_key(empty_db, ["deletions:read"]),
        "admin": create_api_key(empty_db, ["admin"]),
    }
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        yield client, keys, empty_db, settings
    server.should_exit = True


def auth(key):
    return {"Authorization": f"Bearer {key}"}


def body(**kw):
    doc = {
        "subject_request_id": str(uuid.uuid4()),
        "subject_request_type": "erasure",
        "subject_identities": [{"identity_type": "email", "identity_value": EMAIL}],
    }
    doc.update(kw)
    return doc


def ledger_size(db):
    with psycopg.connect(db.url) as conn:
        return conn.execute("SELECT count(*) FROM ledger_entries").fetchone()[0]


def is_problem(resp, status):
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    doc = resp.json()
    assert doc["status"] == status and doc["title"] and doc["type"].startswith("https://")
    return doc


def test_submit_get_list_and_the_ledger(api):
    client, keys, db, _ = api
    b = body(submitted_time="2026-11-29T10:00:00Z")
    r = client.post("/v1/deletions", json=b, headers=auth(keys["writer"]))
    assert r.status_code == 201, r.text
    d = r.json()
    assert d["subject_request_id"] == b["subject_request_id"] and d["request_status"] == "pending"
    assert d["identity_types"] == ["email"] and EMAIL not in r.text
    assert d["expected_completion_time"] > d["received_time"]
    assert client.get(f"/v1/deletions/{d['subject_request_id']}", headers=auth(keys["reader"])).json() == d
    with psycopg.connect(db.url) as conn:
        kinds = [r[0] for r in conn.execute("SELECT kind FROM ledger_entries ORDER BY seq")]
        jobs = conn.execute("SELECT args FROM procrastinate_jobs").fetchall()
        everything = json.dumps(
            conn.execute("SELECT json_agg(t) FROM (SELECT * FROM deletion_requests) t").fetchone()[0], default=str
        )
        ledger_text = json.dumps([r[0] for r in conn.execute("SELECT body FROM ledger_entries")])
    assert kinds == ["deletion.submitted"]
    assert [j[0]["deletion_id"] for j in jobs] == [d["subject_request_id"]]  # enqueued with the request
    assert EMAIL not in everything and EMAIL not in ledger_text
    for _ in range(3):
        client.post("/v1/deletions", json=body(), headers=auth(keys["writer"]))
    page1 = client.get("/v1/deletions?limit=3", headers=auth(keys["reader"])).json()
    page2 = client.get(f"/v1/deletions?limit=3&cursor={page1['next_cursor']}", headers=auth(keys["reader"])).json()
    ids = [x["subject_request_id"] for x in page1["items"] + page2["items"]]
    assert len(ids) == len(set(ids)) == 4 and page2["next_cursor"] is None


def test_authentication_and_scopes(api):
    client, keys, db, _ = api
    is_problem(client.post("/v1/deletions", json=body()), 401)
    is_problem(client.get("/v1/deletions", headers=auth("lk_0000000000000000_wrong")), 401)
    is_problem(client.post("/v1/deletions", json=body(), headers=auth(keys["reader"])), 403)
    assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200
    assert ledger_size(db) == 0


def test_idempotency_key_replays_and_rejects_a_different_body(api):
    client, keys, db, _ = api
    b = body()
    h = {**auth(keys["writer"]), "Idempotency-Key": "k-1"}
    first = client.post("/v1/deletions", json=b, headers=h)
    again = client.post("/v1/deletions", json=b, headers=h)
    assert (first.status_code, again.status_code) == (201, 200) and first.json() == again.json()
    before = ledger_size(db)
    other = client.post("/v1/deletions", json=body(), headers=h)
    assert is_problem(other, 422)["title"] == "Idempotency-Key reused"
    same_id_other_body = client.post("/v1/deletions", json={**b, "record_ids": ["x"]}, headers=auth(keys["writer"]))
    is_problem(same_id_other_body, 409)
    # the same request with the email spelled otherwise (case, spaces) is the same request: a replay
    respelled = {**b, "subject_identities": [{"identity_type": "email", "identity_value": f"  {EMAIL.upper()} "}]}
    for headers in (h, auth(keys["writer"])):
        replay = client.post("/v1/deletions", json=respelled, headers=headers)
        assert replay.status_code == 200 and replay.json() == first.json(), replay.text
    assert ledger_size(db) == before == 1


def test_identities_are_normalised_per_type_and_opaque_ids_kept_exact(api):
    client, keys, _, _ = api

    def submit(kind: str, value: str) -> httpx.Response:
        ids = [{"identity_type": kind, "identity_value": value}]
        return client.post("/v1/deletions", json=body(subject_identities=ids), headers=auth(keys["writer"]))

    def hashes(kind: str, value: str) -> list[str]:
        r = submit(kind, value)
        assert r.status_code == 201, r.text
        return r.json()["subject_hashes"]

    assert hashes("email", "Ada@Example.org") == hashes("email", " ada@example.org ")
    assert hashes("phone", "+44 (20) 7946-0018") == hashes("phone", "0044 20 7946 0018")
    assert hashes("person", "P-1") != hashes("person", "p-1")  # two customers, not one
    assert hashes("controller_customer_id", "AbC") != hashes("controller_customer_id", "abc")
    assert is_problem(submit("email", "x"), 400)["detail"].startswith("an email identity")


def test_concurrent_duplicates_are_accepted_once(api):
    """Requests that race (and may share one group-commit transaction) still get one request, one
    ledger entry and one job: the first is created, the others replay it or are refused."""
    client, keys, db, _ = api
    b, other = body(), body()
    keyed = {**auth(keys["writer"]), "Idempotency-Key": "k-race"}
    posts = [(b, auth(keys["writer"]))] * 6 + [(other, keyed)] * 6 + [({**other, "record_ids": ["x"]}, keyed)] * 2

    def post(item):
        doc, headers = item
        with httpx.Client(base_url=client.base_url, timeout=30) as c:
            return c.post("/v1/deletions", json=doc, headers=headers)

    with ThreadPoolExecutor(len(posts)) as pool:
        got = list(pool.map(post, posts))
    by_id = got[:6]
    assert sorted(r.status_code for r in by_id) == [200] * 5 + [201]
    assert len({json.dumps(r.json(), sort_keys=True) for r in by_id}) == 1
    # whichever body took the key first was created; the same body replays it, the other gets 422
    raced = got[6:]
    assert [r.status_code for r in raced].count(201) == 1 and {r.status_code for r in raced} <= {200, 201, 422}
    assert len({json.dumps(r.json(), sort_keys=True) for r in raced if r.status_code in (200, 201)}) == 1
    with psycopg.connect(db.url) as conn:
        assert conn.execute("SELECT count(*) FROM deletion_requests").fetchone()[0] == 2
        assert conn.execute("SELECT count(*) FROM procrastinate_jobs").fetchone()[0] == 2
    assert ledger_size(db) == 2


@pytest.mark.parametrize(
    ("content", "status"),
    [
        (b'{"subject_request_id": ', 422),  # malformed JSON
        (json.dumps({**body(), "extra": 1}).encode(), 422),  # unknown field
        (json.dumps(body(subject_request_id="not-a-uuid")).encode(), 422),
        (json.dumps(body(subject_identities=[{"identity_type": "passport", "identity_value": "X1"}])).encode(), 422),
        (json.dumps(body(subject_request_type="access")).encode(), 422),
        (json.dumps(body(subject_identities=[])).encode(), 400),
        (json.dumps(body(record_ids=["r" * 100] * 20000)).encode(), 413),  # over 1 MiB
    ],
)
def test_bad_input_gets_problem_json_and_writes_nothing(api, content, status):
    client, keys, db, _ = api
    r = client.post(
        "/v1/deletions", content=content, headers={**auth(keys["writer"]), "content-type": "application/json"}
    )
    is_problem(r, status)
    assert ledger_size(db) == 0
    is_problem(client.get("/v1/deletions/not-a-uuid", headers=auth(keys["reader"])), 422)
    is_problem(client.get(f"/v1/deletions/{uuid.uuid4()}", headers=auth(keys["reader"])), 404)


def test_cancel_only_while_pending_and_the_worker_completes_the_rest(api):
    client, keys, db, settings = api
    a, b = body(), body(subject_identities=[{"identity_type": "email", "identity_value": "bob@example.org"}])
    for x in (a, b):
        assert client.post("/v1/deletions", json=x, headers=auth(keys["writer"])).status_code == 201
    r = client.post(f"/v1/deletions/{a['subject_request_id']}/cancel", headers=auth(keys["writer"]))
    assert r.status_code == 200 and r.json()["request_status"] == "cancelled"
    env = {**os.environ, "DATABASE_URL": db.url, "LETHE_VAR_DIR": str(settings.var_dir), "LETHE_LOG_FORMAT": "json"}
    proc = subprocess.run(
        [sys.executable, "-m", "service", "worker", "--once"], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the worker logs each step it starts and ends, as JSON: ids, step, duration; never an identity
    events = [json.loads(ln) for ln in proc.stderr.splitlines() if ln.startswith("{")]
    mine = [e for e in events if e.get("request_id") == b["subject_request_id"]]
    assert [(e["message"], e["step"]) for e in mine if e["message"] == "step ended"][:2] == [
        ("step ended", "claim"),
        ("step ended", "resolve"),
    ]
    assert all(isinstance(e["seconds"], float) for e in mine if e["message"] == "step ended")
    assert {e["message"] for e in mine} == {"step started", "step ended"}
    assert EMAIL not in proc.stderr and "bob@example.org" not in proc.stderr
    done = client.get(f"/v1/deletions/{b['subject_request_id']}", headers=auth(keys["reader"])).json()
    assert done["request_status"] == "completed", done
    # nobody held anything of bob: completed as "nothing found", provable by a ledger entry of its own
    assert done["result"]["outcome"] == "nothing_found" and done["result"]["methods"] == []
    still = client.get(f"/v1/deletions/{a['subject_request_id']}", headers=auth(keys["reader"])).json()
    assert still["request_status"] == "cancelled"
    late = client.post(f"/v1/deletions/{b['subject_request_id']}/cancel", headers=auth(keys["writer"]))
    is_problem(late, 409)
    with psycopg.connect(db.url) as conn:
        kinds = [r[0] for r in conn.execute("SELECT kind FROM ledger_entries ORDER BY seq")]
    assert kinds == [
        "deletion.submitted",
        "deletion.submitted",
        "deletion.cancelled",
        "deletion.in_progress",
        "deletion.nothing_found",
        "deletion.completed",
    ]
    verify = subprocess.run(
        [sys.executable, "-m", "service", "ledger", "verify"], env=env, capture_output=True, text=True, timeout=120
    )
    assert verify.returncode == 0 and "ledger OK" in verify.stderr, verify.stderr
    metrics = client.get("/metrics").text
    assert 'lethe_deletion_requests_total{status="completed"} 1.0' in metrics
    assert 'lethe_deletion_requests_total{status="cancelled"} 1.0' in metrics
    assert "lethe_time_to_forget_seconds_count 1.0" in metrics and "lethe_ledger_entries_total 6.0" in metrics
    assert 'lethe_deletion_stage_seconds_count{stage="resolve"} 1.0' in metrics
    assert 'lethe_jobs_pending{queue="deletions"} 0.0' in metrics
    assert EMAIL not in metrics and b["subject_request_id"] not in metrics
