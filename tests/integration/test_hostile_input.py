"""Hostile input over both transports, fired among valid requests: every valid request succeeds,
every hostile one gets a 4xx (problem+json) or its gRPC code, none a server fault, and the ledger
still verifies. Real uvicorn and gRPC servers on loopback, real PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor

import grpc
import httpx
import psycopg
import pytest
from google.protobuf import timestamp_pb2

from service import app as lethe
from service.api.grpc.gen.lethe.v1 import (
    deletion_pb2,
    deletion_pb2_grpc,
    kb_pb2,
    kb_pb2_grpc,
    ledger_pb2,
    ledger_pb2_grpc,
)
from service.store.deletions import create_api_key
from tests.integration.servers import serve

SERVER_FAULTS = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}


@pytest.fixture
def edges(empty_db, settings):
    lethe.migrate(empty_db)
    rest, port = serve(lethe.rest_app(empty_db, settings))
    server, gport = lethe.grpc_server(empty_db, settings, "127.0.0.1:0")
    server.start()
    key = create_api_key(empty_db, ["admin"])
    channel = grpc.insecure_channel(f"127.0.0.1:{gport}", options=[("grpc.max_send_message_length", 8 << 20)])
    with httpx.Client(
        base_url=f"http://127.0.0.1:{port}", timeout=60, headers={"Authorization": f"Bearer {key}"}
    ) as client:
        yield client, channel, key, empty_db, settings
    channel.close()
    server.stop(grace=1).wait()
    rest.should_exit = True


def deletion(**kw) -> dict:
    doc = {
        "subject_request_id": str(uuid.uuid4()),
        "subject_request_type": "erasure",
        "subject_identities": [{"identity_type": "email", "identity_value": "ada@example.org"}],
    }
    doc.update(kw)
    return doc


def raw(doc: object) -> bytes:
    """JSON as a hostile client sends it: lone surrogates and NUL as escapes (json.dumps writes them)."""
    return json.dumps(doc).encode()


def ident(value: str, kind: str = "email") -> list[dict]:
    return [{"identity_type": kind, "identity_value": value}]


# (name, method, path, body bytes or None, extra headers)
REST_HOSTILE = [
    ("NUL in record_ids", "POST", "/v1/deletions", raw(deletion(record_ids=["a\x00b"])), {}),
    ("lone surrogate in record_ids", "POST", "/v1/deletions", raw(deletion(record_ids=["\udfff"])), {}),
    ("SQL in record_ids", "POST", "/v1/deletions", raw(deletion(record_ids=["x'; DROP TABLE records; --"])), {}),
    ("NUL in a callback URL", "POST", "/v1/deletions", raw(deletion(status_callback_urls=["https://a.b/\x00"])), {}),
    (
        "lone surrogate in a callback URL",
        "POST",
        "/v1/deletions",
        raw(deletion(status_callback_urls=["https://a.b/\udfff"])),
        {},
    ),
    ("callback URL without a host", "POST", "/v1/deletions", raw(deletion(status_callback_urls=["https:///x"])), {}),
    (
        "callback URL with a bad port",
        "POST",
        "/v1/deletions",
        raw(deletion(status_callback_urls=["https://a.b:99999/"])),
        {},
    ),
    ("javascript: callback", "POST", "/v1/deletions", raw(deletion(status_callback_urls=["javascript:alert(1)"])), {}),
    ("NUL in an identity", "POST", "/v1/deletions", raw(deletion(subject_identities=ident("a\x00@b.c"))), {}),
    (
        "lone surrogate in an identity",
        "POST",
        "/v1/deletions",
        raw(deletion(subject_identities=ident("\ud800", "person"))),
        {},
    ),
    (
        "control character in an opaque id",
        "POST",
        "/v1/deletions",
        raw(deletion(subject_identities=ident("id\x1b[31m", "controller_customer_id"))),
        {},
    ),
    ("unknown identity type", "POST", "/v1/deletions", raw(deletion(subject_identities=ident("X1", "passport"))), {}),
    (
        "10 000 identities",
        "POST",
        "/v1/deletions",
        raw(
            deletion(subject_identities=[{"identity_type": "person", "identity_value": f"p{i}"} for i in range(10_000)])
        ),
        {},
    ),
    ("a body over 1 MiB", "POST", "/v1/deletions", raw(deletion(record_ids=["r" * 200] * 6000)), {}),
    ("invalid UTF-8", "POST", "/v1/deletions", b'{"subject_request_id": "\xff\xfe"}', {}),
    ("deeply nested JSON", "POST", "/v1/deletions", b"[" * 100_000 + b"]" * 100_000, {}),
    (
        "nested JSON in a field",
        "POST",
        "/v1/deletions",
        raw(deletion(record_ids=json.loads("[" * 500 + "]" * 500))),
        {},
    ),
    ("not JSON", "POST", "/v1/deletions", b"subject_request_id=1", {}),
    ("unknown request type", "POST", "/v1/deletions", raw(deletion(subject_request_type="rectification")), {}),
    ("year 99999", "POST", "/v1/deletions", raw(deletion(submitted_time="99999-01-01T00:00:00Z")), {}),
    ("idempotency key not ASCII", "POST", "/v1/deletions", raw(deletion()), {"Idempotency-Key": b"k\xe9y"}),
    ("idempotency key of 300 characters", "POST", "/v1/deletions", raw(deletion()), {"Idempotency-Key": "k" * 300}),
    ("negative page size", "GET", "/v1/deletions?limit=-1", None, {}),
    ("huge page size", "GET", "/v1/deletions?limit=100000000000000000000", None, {}),
    ("garbage cursor", "GET", "/v1/deletions?cursor=zz%27%3B--", None, {}),
    ("NUL in a cursor", "GET", "/v1/deletions?cursor=%00", None, {}),
    ("unknown status filter", "GET", "/v1/deletions?status=erased", None, {}),
    ("not a UUID", "GET", "/v1/deletions/1%27%20OR%201=1", None, {}),
    ("negative receipt", "GET", "/v1/ledger/entries/-1/receipt", None, {}),
    ("huge receipt", "GET", "/v1/ledger/entries/99999999999999999999/receipt", None, {}),
    (
        "KB text with a lone surrogate",
        "POST",
        "/v1/kb/documents",
        raw({"documents": [{"id": "d1", "subject_ids": ["email:a@b.c"], "text": "x\udfff", "source": "s"}]}),
        {},
    ),
    (
        "KB metadata with a lone surrogate",
        "POST",
        "/v1/kb/documents",
        raw(
            {
                "documents": [
                    {
                        "id": "d2",
                        "subject_ids": ["email:a@b.c"],
                        "text": "x",
                        "source": "s",
                        "metadata": {"k": "\udfff"},
                    }
                ]
            }
        ),
        {},
    ),
    (
        "KB id with a newline",
        "POST",
        "/v1/kb/documents",
        raw({"documents": [{"id": "d3\n", "subject_ids": ["email:a@b.c"], "text": "x", "source": "s"}]}),
        {},
    ),
    ("KB document id with NUL", "GET", "/v1/kb/documents/d%00", None, {}),
]


def grpc_hostile(channel: grpc.Channel, key: str) -> list[tuple[str, object]]:
    """(name, a call raising RpcError) for each hostile gRPC input."""
    stub = deletion_pb2_grpc.DeletionServiceStub(channel)
    kb = kb_pb2_grpc.KnowledgeBaseServiceStub(channel)
    ledger = ledger_pb2_grpc.LedgerServiceStub(channel)
    md = [("authorization", f"Bearer {key}")]

    def submit(**kw) -> deletion_pb2.SubmitDeletionRequest:
        r = deletion_pb2.SubmitDeletionRequest(subject_request_id=str(uuid.uuid4()), subject_request_type="erasure")
        r.subject_identities.add(identity_type="email", identity_value="ada@example.org")
        for k, v in kw.items():
            if isinstance(v, list):
                getattr(r, k).extend(v)
            elif isinstance(v, timestamp_pb2.Timestamp):
                getattr(r, k).CopyFrom(v)
            else:
                setattr(r, k, v)
        return r

    # a string field that is not UTF-8: a valid message's bytes with its value swapped for bad bytes
    good = submit(record_ids=["AAAA"]).SerializeToString()
    bad_utf8 = good.replace(b"AAAA", b"\xff\xfe\xfd\xfc")
    raw_submit = channel.unary_unary(
        "/lethe.v1.DeletionService/SubmitDeletion", request_serializer=None, response_deserializer=None
    )
    many = submit()
    for i in range(10_000):
        many.subject_identities.add(identity_type="person", identity_value=f"p{i}")
    far = timestamp_pb2.Timestamp(seconds=2**62)
    return [
        ("NUL in record_ids", lambda: stub.SubmitDeletion(submit(record_ids=["a\x00b"]), metadata=md)),
        (
            "SQL in record_ids",
            lambda: stub.SubmitDeletion(submit(record_ids=["x'; DROP TABLE records;--"]), metadata=md),
        ),
        (
            "NUL in a callback URL",
            lambda: stub.SubmitDeletion(submit(status_callback_urls=["https://a/\x00"]), metadata=md),
        ),
        ("invalid UTF-8 in a string field", lambda: raw_submit(bad_utf8, metadata=md)),
        ("garbage bytes", lambda: raw_submit(b"\xff" * 64, metadata=md)),
        ("10 000 identities", lambda: stub.SubmitDeletion(many, metadata=md)),
        ("a message over 1 MiB", lambda: stub.SubmitDeletion(submit(record_ids=["r" * 250] * 5000), metadata=md)),
        (
            "unknown identity type",
            lambda: stub.SubmitDeletion(
                submit(subject_identities=[deletion_pb2.SubjectIdentity(identity_type="passport", identity_value="X")]),
                metadata=md,
            ),
        ),
        ("not a UUID", lambda: stub.SubmitDeletion(submit(subject_request_id="1 OR 1=1"), metadata=md)),
        ("timestamp out of range", lambda: stub.SubmitDeletion(submit(submitted_time=far), metadata=md)),
        (
            "idempotency key of 300 characters",
            lambda: stub.SubmitDeletion(submit(), metadata=[*md, ("idempotency-key", "k" * 300)]),
        ),
        ("unknown status enum", lambda: stub.ListDeletions(deletion_pb2.ListDeletionsRequest(status=99), metadata=md)),
        ("negative page size", lambda: stub.ListDeletions(deletion_pb2.ListDeletionsRequest(limit=-5), metadata=md)),
        ("huge page size", lambda: stub.ListDeletions(deletion_pb2.ListDeletionsRequest(limit=2**31 - 1), metadata=md)),
        ("garbage cursor", lambda: stub.ListDeletions(deletion_pb2.ListDeletionsRequest(cursor="zz'--"), metadata=md)),
        ("negative receipt", lambda: ledger.GetReceipt(ledger_pb2.GetReceiptRequest(seq=-1), metadata=md)),
        ("KB id with NUL", lambda: kb.GetDocument(kb_pb2.GetDocumentRequest(id="d\x00"), metadata=md)),
        (
            "KB text with NUL",
            lambda: kb.AddDocuments(
                kb_pb2.AddDocumentsRequest(
                    documents=[kb_pb2.NewDocument(id="d", subject_ids=["email:a@b.c"], text="x\x00", source="s")]
                ),
                metadata=md,
            ),
        ),
        (
            "KB metadata nested 10 000 deep",
            lambda: kb.AddDocuments(
                kb_pb2.AddDocumentsRequest(
                    documents=[
                        kb_pb2.NewDocument(
                            id="d",
                            subject_ids=["email:a@b.c"],
                            text="x",
                            source="s",
                            metadata_json='{"a":' * 10_000 + "1" + "}" * 10_000,
                        )
                    ]
                ),
                metadata=md,
            ),
        ),
    ]


def test_hostile_input_among_valid_requests(edges):
    client, channel, key, db, settings = edges
    stub = deletion_pb2_grpc.DeletionServiceStub(channel)
    md = [("authorization", f"Bearer {key}")]

    def valid_rest(i: int) -> tuple[str, int]:
        b = deletion(
            subject_identities=ident(f"'; DROP TABLE deletion_requests; -- {i}", "person"),
            record_ids=[f"rec-{i}"],
            status_callback_urls=["https://example.org/hook"],
        )
        r = client.post("/v1/deletions", json=b, headers={"Idempotency-Key": f"valid-{i}"})
        return f"valid REST {i}", r.status_code

    def valid_grpc(i: int) -> tuple[str, object]:
        r = deletion_pb2.SubmitDeletionRequest(subject_request_id=str(uuid.uuid4()), subject_request_type="erasure")
        r.subject_identities.add(identity_type="email", identity_value=f"user{i}@example.org")
        return f"valid gRPC {i}", stub.SubmitDeletion(r, metadata=md).created

    def hostile_rest(case: tuple) -> tuple[str, int, str]:
        name, method, path, body, headers = case
        h = {"content-type": "application/json", **headers}
        r = client.request(method, path, content=body, headers=h)
        return name, r.status_code, r.headers.get("content-type", "")

    def hostile_grpc(case: tuple) -> tuple[str, grpc.StatusCode | None]:
        name, call = case
        try:
            call()
        except grpc.RpcError as e:
            return name, e.code()
        return name, None

    gcases = grpc_hostile(channel, key)
    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(valid_rest, i) for i in range(40)]
        futures += [pool.submit(hostile_rest, c) for c in REST_HOSTILE]
        futures += [pool.submit(valid_grpc, i) for i in range(20)]
        futures += [pool.submit(hostile_grpc, c) for c in gcases]
        futures += [pool.submit(valid_rest, i) for i in range(40, 60)]
        results = [f.result() for f in futures]

    valid = [r for r in results if r[0].startswith("valid")]
    assert len(valid) == 80
    assert all(ok in (201, True) for _, ok in valid), [r for r in valid if r[1] not in (201, True)]
    rest = {r[0]: r for r in results if len(r) == 3}
    for name, status, ctype in rest.values():
        assert 400 <= status < 500, (name, status)
        assert ctype.startswith("application/problem+json"), (name, ctype)
    grpc_codes = {r[0]: r[1] for r in results if len(r) == 2 and not r[0].startswith("valid")}
    assert len(grpc_codes) == len(gcases)
    for name, code in grpc_codes.items():
        assert code is not None and code not in SERVER_FAULTS and code != grpc.StatusCode.OK, (name, code)
    assert grpc_codes["a message over 1 MiB"] == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert grpc_codes["unknown status enum"] == grpc.StatusCode.INVALID_ARGUMENT
    assert grpc_codes["invalid UTF-8 in a string field"] == grpc.StatusCode.INVALID_ARGUMENT
    assert rest["a body over 1 MiB"][1] == 413
    # only the valid requests were stored, each once, and the ledger chain verifies
    with psycopg.connect(db.url) as conn:
        stored = conn.execute("SELECT count(*) FROM deletion_requests").fetchone()[0]
        entries = conn.execute("SELECT count(*) FROM ledger_entries").fetchone()[0]
    assert stored == entries == 80
    env = {**os.environ, "DATABASE_URL": db.url, "LETHE_VAR_DIR": str(settings.var_dir)}
    verify = subprocess.run(
        [sys.executable, "-m", "service", "ledger", "verify"], env=env, capture_output=True, text=True, timeout=120
    )
    assert verify.returncode == 0 and "ledger OK" in verify.stderr, verify.stderr


def test_one_bad_row_does_not_sink_its_group_commit(empty_db, settings):
    """The store's group commit: a row PostgreSQL refuses (past the edge's checks) fails alone."""
    from concurrent.futures import wait

    from service.core.deletions import Principal, SubmitDeletion

    lethe.migrate(empty_db)
    core = lethe.deletions_core(empty_db, settings)
    who = Principal("k", frozenset({"admin"}))
    good = [SubmitDeletion(uuid.uuid4(), [("email", f"u{i}@example.org")]) for i in range(30)]
    bad = SubmitDeletion(uuid.uuid4(), [("email", "bad@example.org")])
    # a NUL in the idempotency key's principal reaches PostgreSQL only through a broken caller: simulate one
    futures = [core.accept(c, who) for c in good[:15]]
    futures.append(core.accept(bad, Principal("k\x00", frozenset({"admin"})), "key-1"))
    futures += [core.accept(c, who) for c in good[15:]]
    wait(futures, timeout=120)
    assert all(f.result()[1] for f in futures[:15] + futures[16:])
    with pytest.raises(psycopg.DataError):
        futures[15].result()
    with psycopg.connect(empty_db.url) as conn:
        assert conn.execute("SELECT count(*) FROM deletion_requests").fetchone()[0] == 30


def test_grpc_fuzz_finds_no_server_fault(edges):
    """Hypothesis over the request messages' fields (any text, NUL and controls included; any
    int32; lists past the limits): every answer is OK or a client-error code, never UNKNOWN or
    INTERNAL."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    _, channel, key, _, _ = edges
    stub = deletion_pb2_grpc.DeletionServiceStub(channel)
    kb = kb_pb2_grpc.KnowledgeBaseServiceStub(channel)
    md = [("authorization", f"Bearer {key}")]
    text = st.text(max_size=300)
    ids = st.lists(st.sampled_from(["email", "phone", "person", "controller_customer_id"]) | text, max_size=3)

    def call(f) -> None:
        try:
            f()
        except grpc.RpcError as e:
            assert e.code() not in SERVER_FAULTS, (e.code(), e.details())

    @settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(
        rid=st.uuids().map(str) | text,
        kind=text,
        types=ids,
        values=st.lists(text, max_size=3),
        records=st.lists(text, max_size=5),
        urls=st.lists(text, max_size=3),
        limit=st.integers(-(2**31), 2**31 - 1),
        status=st.integers(-(2**31), 2**31 - 1),
        cursor=text,
        doc=st.tuples(text, text, text, text),
    )
    def fuzz(rid, kind, types, values, records, urls, limit, status, cursor, doc) -> None:
        r = deletion_pb2.SubmitDeletionRequest(
            subject_request_id=rid, subject_request_type=kind, record_ids=records, status_callback_urls=urls
        )
        for t, v in zip(types, values, strict=False):
            r.subject_identities.add(identity_type=t, identity_value=v)
        call(lambda: stub.SubmitDeletion(r, metadata=md))
        call(
            lambda: stub.ListDeletions(
                deletion_pb2.ListDeletionsRequest(status=status, cursor=cursor, limit=limit), metadata=md
            )
        )
        call(lambda: stub.GetDeletion(deletion_pb2.GetDeletionRequest(subject_request_id=rid), metadata=md))
        new = kb_pb2.NewDocument(id=doc[0], subject_ids=[doc[1]], text=doc[2], source="fuzz", metadata_json=doc[3])
        call(lambda: kb.AddDocuments(kb_pb2.AddDocumentsRequest(documents=[new]), metadata=md))
        call(lambda: kb.ListDocuments(kb_pb2.ListDocumentsRequest(cursor=cursor, limit=limit), metadata=md))

    fuzz()
