"""The gRPC API on a real server on loopback, a real grpcio stub and real PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from service import app as lethe
from service.api.grpc.gen.lethe.v1 import deletion_pb2, deletion_pb2_grpc, ledger_pb2, ledger_pb2_grpc
from service.core import merkle
from service.ledger.checkpoint import open_note
from service.store.deletions import create_api_key


@pytest.fixture
def grpc_api(empty_db, settings):
    lethe.migrate(empty_db)
    server, port = lethe.grpc_server(empty_db, settings, "127.0.0.1:0")
    server.start()
    keys = {
        "writer": create_api_key(empty_db, ["deletions:write", "deletions:read", "ledger:read"]),
        "reader": create_api_key(empty_db, ["deletions:read"]),
    }
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield channel, keys, empty_db, settings
    channel.close()
    server.stop(grace=1).wait()


def md(key, **extra):
    return [("authorization", f"Bearer {key}"), *extra.items()]


def request(**kw):
    r = deletion_pb2.SubmitDeletionRequest(
        subject_request_id=str(uuid.uuid4()),
        subject_request_type="erasure",
        subject_identities=[deletion_pb2.SubjectIdentity(identity_type="email", identity_value="ada@example.org")],
    )
    for k, v in kw.items():
        if isinstance(v, list):
            getattr(r, k).extend(v)
        else:
            setattr(r, k, v)
    return r


def code_of(call):
    with pytest.raises(grpc.RpcError) as exc:
        call()
    return exc.value.code()


def test_submit_get_list_cancel_and_idempotency(grpc_api):
    channel, keys, _, _ = grpc_api
    stub = deletion_pb2_grpc.DeletionServiceStub(channel)
    req = request()
    resp = stub.SubmitDeletion(req, metadata=md(keys["writer"], **{"idempotency-key": "g-1"}))
    assert resp.created and resp.deletion.status == deletion_pb2.DELETION_STATUS_PENDING
    assert "ada@example.org" not in str(resp)
    replay = stub.SubmitDeletion(req, metadata=md(keys["writer"], **{"idempotency-key": "g-1"}))
    assert not replay.created and replay.deletion.subject_request_id == req.subject_request_id
    other = request()
    assert (
        code_of(lambda: stub.SubmitDeletion(other, metadata=md(keys["writer"], **{"idempotency-key": "g-1"})))
        == grpc.StatusCode.FAILED_PRECONDITION
    )
    got = stub.GetDeletion(
        deletion_pb2.GetDeletionRequest(subject_request_id=req.subject_request_id), metadata=md(keys["reader"])
    )
    assert got == resp.deletion
    listed = stub.ListDeletions(deletion_pb2.ListDeletionsRequest(limit=10), metadata=md(keys["reader"]))
    assert [d.subject_request_id for d in listed.items] == [req.subject_request_id] and not listed.next_cursor
    cancelled = stub.CancelDeletion(
        deletion_pb2.CancelDeletionRequest(subject_request_id=req.subject_request_id), metadata=md(keys["writer"])
    )
    assert cancelled.status == deletion_pb2.DELETION_STATUS_CANCELLED


def test_status_codes_for_bad_input_and_credentials(grpc_api):
    channel, keys, _, _ = grpc_api
    stub = deletion_pb2_grpc.DeletionServiceStub(channel)
    assert code_of(lambda: stub.SubmitDeletion(request())) == grpc.StatusCode.UNAUTHENTICATED
    assert code_of(lambda: stub.SubmitDeletion(request(), metadata=md("lk_x_y"))) == grpc.StatusCode.UNAUTHENTICATED
    assert (
        code_of(lambda: stub.SubmitDeletion(request(), metadata=md(keys["reader"])))
        == grpc.StatusCode.PERMISSION_DENIED
    )
    bad_uuid = request(subject_request_id="nope")
    assert (
        code_of(lambda: stub.SubmitDeletion(bad_uuid, metadata=md(keys["writer"]))) == grpc.StatusCode.INVALID_ARGUMENT
    )
    bad_type = request()
    bad_type.subject_identities[0].identity_type = "passport"
    assert (
        code_of(lambda: stub.SubmitDeletion(bad_type, metadata=md(keys["writer"]))) == grpc.StatusCode.INVALID_ARGUMENT
    )
    missing = deletion_pb2.GetDeletionRequest(subject_request_id=str(uuid.uuid4()))
    assert code_of(lambda: stub.GetDeletion(missing, metadata=md(keys["reader"]))) == grpc.StatusCode.NOT_FOUND
    huge = request(record_ids=["r" * 1000] * 1100)
    assert code_of(lambda: stub.SubmitDeletion(huge, metadata=md(keys["writer"]))) == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_watch_streams_until_completed_and_the_ledger_serves_receipts(grpc_api):
    channel, keys, db, settings = grpc_api
    stub = deletion_pb2_grpc.DeletionServiceStub(channel)
    req = request()
    stub.SubmitDeletion(req, metadata=md(keys["writer"]))
    seen = []
    watcher = threading.Thread(
        target=lambda: seen.extend(
            stub.WatchDeletion(
                deletion_pb2.WatchDeletionRequest(subject_request_id=req.subject_request_id),
                metadata=md(keys["writer"]),
                timeout=120,
            )
        )
    )
    watcher.start()
    env = {**os.environ, "DATABASE_URL": db.url, "LETHE_VAR_DIR": str(settings.var_dir)}
    proc = subprocess.run(
        [sys.executable, "-m", "service", "worker", "--once"], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    watcher.join(60)
    assert seen[0].status == deletion_pb2.DELETION_STATUS_PENDING
    assert seen[-1].status == deletion_pb2.DELETION_STATUS_COMPLETED

    ledger = ledger_pb2_grpc.LedgerServiceStub(channel)
    # nothing was held for the subject: a nothing_found entry (3), then the completion (4)
    found = ledger.GetReceipt(ledger_pb2.GetReceiptRequest(seq=3), metadata=md(keys["writer"]))
    assert found.kind == "deletion.nothing_found"
    receipt = ledger.GetReceipt(ledger_pb2.GetReceiptRequest(seq=4), metadata=md(keys["writer"]))
    assert receipt.kind == "deletion.completed" and json.loads(receipt.body_json)["request"] == req.subject_request_id
    assert json.loads(receipt.body_json)["outcome"] == "nothing_found"
    pem = ledger.GetPublicKey(ledger_pb2.GetPublicKeyRequest(), metadata=md(keys["writer"]))
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    cp = open_note(receipt.checkpoint, pem.key_name, load_pem_public_key(pem.pem.encode()))  # type: ignore[arg-type]
    assert merkle.verify_inclusion(
        3, cp.size, merkle.leaf_hash(receipt.row_hash), list(receipt.inclusion_proof), cp.root
    )
    assert (
        code_of(lambda: ledger.GetCheckpoint(ledger_pb2.GetCheckpointRequest(), metadata=md(keys["reader"])))
        == grpc.StatusCode.PERMISSION_DENIED
    )


def test_health_and_reflection(grpc_api):
    channel, _, _, _ = grpc_api
    health = health_pb2_grpc.HealthStub(channel)
    assert (
        health.Check(health_pb2.HealthCheckRequest(service="lethe.v1.DeletionService")).status
        == health_pb2.HealthCheckResponse.SERVING
    )
    refl = reflection_pb2_grpc.ServerReflectionStub(channel)
    reply = next(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    names = {s.name for s in reply.list_services_response.service}
    assert {"lethe.v1.DeletionService", "lethe.v1.LedgerService", "grpc.health.v1.Health"} <= names
