"""Knowledge-base documents over REST (real uvicorn + httpx) and gRPC (real server + stubs), on
real PostgreSQL + pgvector and the real embedding model: the same core behind both edges."""

from __future__ import annotations

import json

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from service.api.grpc.gen.lethe.v1 import kb_pb2, kb_pb2_grpc
from service.store.deletions import create_api_key
from tests.integration.test_grpc_api import code_of, grpc_api, md  # noqa: F401  (the live server fixture)
from tests.integration.test_rest_api import api, auth, is_problem  # noqa: F401  (the live server fixture)

TEXT = "Ada Lovelace wrote the first published program. She worked with Charles Babbage on the Analytical Engine."


def doc(i: int, **kw):
    d = {
        "id": f"doc-{i}",
        "subject_ids": [f"email:person{i}@example.org"],
        "text": f"{TEXT} Note {i}.",
        "source": "crm",
        "metadata": {"page": i, "tags": ["a", "b"]},
    }
    d.update(kw)
    return d


def kb_keys(db):
    return {
        "rw": create_api_key(db, ["kb:read", "kb:write"]),
        "ro": create_api_key(db, ["kb:read"]),
        "none": create_api_key(db, ["deletions:read"]),
    }


def stored(db) -> int:
    with psycopg.connect(db.url) as conn:
        row = conn.execute("SELECT (SELECT count(*) FROM kb_documents) + (SELECT count(*) FROM kb_chunks)").fetchone()
    assert row is not None
    return int(row[0])


# -- REST ----------------------------------------------------------------------------------------
def test_rest_add_list_get_delete(api):  # noqa: F811
    client, _, db, _ = api
    k = kb_keys(db)
    r = client.post("/v1/kb/documents", json={"documents": [doc(1), doc(2), doc(3)]}, headers=auth(k["rw"]))
    assert r.status_code == 201, r.text
    assert r.json() == {"inserted": 3, "unchanged": 0}
    again = client.post("/v1/kb/documents", json={"documents": [doc(1)]}, headers=auth(k["rw"]))
    assert again.status_code == 201 and again.json() == {"inserted": 0, "unchanged": 1}

    page1 = client.get("/v1/kb/documents?limit=2", headers=auth(k["ro"]))
    assert page1.status_code == 200, page1.text
    p1 = page1.json()
    assert [d["id"] for d in p1["documents"]] == ["doc-1", "doc-2"] and p1["next_cursor"] == "doc-2"
    first = p1["documents"][0]
    assert set(first) == {"id", "source", "metadata", "chunks", "content_sha256", "created_at", "suppressed"}
    assert first["metadata"] == {"page": 1, "tags": ["a", "b"]} and first["source"] == "crm"
    assert first["chunks"] >= 1 and len(first["content_sha256"]) == 64 and first["suppressed"] is False
    assert "person1@example.org" not in page1.text
    p2 = client.get(f"/v1/kb/documents?limit=2&cursor={p1['next_cursor']}", headers=auth(k["ro"])).json()
    assert [d["id"] for d in p2["documents"]] == ["doc-3"] and p2["next_cursor"] is None

    got = client.get("/v1/kb/documents/doc-1", headers=auth(k["ro"]))
    assert got.status_code == 200, got.text
    assert got.json() == {**first, "text": doc(1)["text"]}

    gone = client.delete("/v1/kb/documents/doc-1", headers=auth(k["rw"]))
    assert gone.status_code == 204 and gone.content == b""
    is_problem(client.get("/v1/kb/documents/doc-1", headers=auth(k["ro"])), 404)
    is_problem(client.delete("/v1/kb/documents/doc-1", headers=auth(k["rw"])), 404)
    left = client.get("/v1/kb/documents", headers=auth(k["ro"])).json()
    assert [d["id"] for d in left["documents"]] == ["doc-2", "doc-3"]


def test_rest_scopes_bad_batches_and_unknown_ids(api):  # noqa: F811
    client, keys, db, _ = api
    k = kb_keys(db)
    body = {"documents": [doc(1)]}
    is_problem(client.post("/v1/kb/documents", json=body), 401)
    is_problem(client.post("/v1/kb/documents", json=body, headers=auth(k["ro"])), 403)
    is_problem(client.get("/v1/kb/documents", headers=auth(k["none"])), 403)
    is_problem(client.get("/v1/kb/documents/doc-1", headers=auth(keys["writer"])), 403)
    is_problem(client.delete("/v1/kb/documents/doc-1", headers=auth(k["ro"])), 403)

    # the second document's identity is not 'type:value', the fourth repeats an id: 400 naming both, nothing written
    bad = {"documents": [doc(1), doc(2, subject_ids=["nobody"]), doc(3), doc(4, id="doc-1")]}
    p = is_problem(client.post("/v1/kb/documents", json=bad, headers=auth(k["rw"])), 400)
    assert "nothing was written" in p["detail"] and "line 2: subject_ids" in p["detail"]
    assert "line 4: id: 'doc-1' already used on line 1" in p["detail"] and "line 3" not in p["detail"]
    assert client.get("/v1/kb/documents", headers=auth(k["ro"])).json() == {"documents": [], "next_cursor": None}
    assert stored(db) == 0

    # shape problems are the request model's (422); the batch limit is 500
    is_problem(client.post("/v1/kb/documents", json={"documents": []}, headers=auth(k["rw"])), 422)
    is_problem(client.post("/v1/kb/documents", json={"documents": [doc(1, id="-bad id")]}, headers=auth(k["rw"])), 422)
    is_problem(client.post("/v1/kb/documents", json={"documents": [doc(1, text="a\x00b")]}, headers=auth(k["rw"])), 422)
    is_problem(
        client.post("/v1/kb/documents", json={"documents": [doc(1, metadata={"x": "\x00"})]}, headers=auth(k["rw"])),
        422,
    )
    many = {
        "documents": [{"id": f"d{i}", "subject_ids": ["email:a@b.c"], "text": "t", "source": "s"} for i in range(501)]
    }
    is_problem(client.post("/v1/kb/documents", json=many, headers=auth(k["rw"])), 422)
    is_problem(client.get("/v1/kb/documents?limit=0", headers=auth(k["ro"])), 422)
    assert stored(db) == 0

    is_problem(client.get("/v1/kb/documents/no-such-doc", headers=auth(k["ro"])), 404)
    is_problem(client.delete("/v1/kb/documents/no-such-doc", headers=auth(k["rw"])), 404)


def test_rest_openapi_documents_the_kb_routes(api):  # noqa: F811
    client = api[0]
    paths = client.get("/openapi.json").json()["paths"]
    assert set(paths["/v1/kb/documents"]) == {"get", "post"}
    assert set(paths["/v1/kb/documents/{document_id}"]) == {"get", "delete"}


# -- gRPC ----------------------------------------------------------------------------------------
def new_doc(i: int, **kw) -> kb_pb2.NewDocument:
    d = doc(i)
    fields = {
        "id": d["id"],
        "subject_ids": d["subject_ids"],
        "text": d["text"],
        "source": d["source"],
        "metadata_json": json.dumps(d["metadata"]),
        **kw,
    }
    return kb_pb2.NewDocument(**fields)


def test_grpc_add_list_get_delete(grpc_api):  # noqa: F811
    channel, _, db, _ = grpc_api
    k = kb_keys(db)
    stub = kb_pb2_grpc.KnowledgeBaseServiceStub(channel)
    added = stub.AddDocuments(
        kb_pb2.AddDocumentsRequest(documents=[new_doc(1), new_doc(2), new_doc(3)]), metadata=md(k["rw"])
    )
    assert (added.inserted, added.unchanged) == (3, 0)
    again = stub.AddDocuments(kb_pb2.AddDocumentsRequest(documents=[new_doc(2)]), metadata=md(k["rw"]))
    assert (again.inserted, again.unchanged) == (0, 1)

    page1 = stub.ListDocuments(kb_pb2.ListDocumentsRequest(limit=2), metadata=md(k["ro"]))
    assert [d.id for d in page1.documents] == ["doc-1", "doc-2"] and page1.next_cursor == "doc-2"
    first = page1.documents[0]
    assert not first.HasField("text") and first.chunks >= 1 and len(first.content_sha256) == 64
    assert json.loads(first.metadata_json) == {"page": 1, "tags": ["a", "b"]} and not first.suppressed
    assert first.created_at.seconds > 0
    page2 = stub.ListDocuments(kb_pb2.ListDocumentsRequest(cursor=page1.next_cursor, limit=2), metadata=md(k["ro"]))
    assert [d.id for d in page2.documents] == ["doc-3"] and page2.next_cursor == ""

    got = stub.GetDocument(kb_pb2.GetDocumentRequest(id="doc-1"), metadata=md(k["ro"]))
    assert got.text == doc(1)["text"]
    got.ClearField("text")
    assert got == first

    stub.DeleteDocument(kb_pb2.DeleteDocumentRequest(id="doc-1"), metadata=md(k["rw"]))
    listed = stub.ListDocuments(kb_pb2.ListDocumentsRequest(), metadata=md(k["ro"]))
    assert [d.id for d in listed.documents] == ["doc-2", "doc-3"]


def test_grpc_scopes_bad_batches_and_unknown_ids(grpc_api):  # noqa: F811
    channel, _, db, _ = grpc_api
    k = kb_keys(db)
    stub = kb_pb2_grpc.KnowledgeBaseServiceStub(channel)
    one = kb_pb2.AddDocumentsRequest(documents=[new_doc(1)])
    assert code_of(lambda: stub.AddDocuments(one)) == grpc.StatusCode.UNAUTHENTICATED
    assert code_of(lambda: stub.AddDocuments(one, metadata=md(k["ro"]))) == grpc.StatusCode.PERMISSION_DENIED
    listing = kb_pb2.ListDocumentsRequest()
    assert code_of(lambda: stub.ListDocuments(listing, metadata=md(k["none"]))) == grpc.StatusCode.PERMISSION_DENIED
    missing_get = kb_pb2.GetDocumentRequest(id="doc-1")
    assert code_of(lambda: stub.GetDocument(missing_get, metadata=md(k["none"]))) == grpc.StatusCode.PERMISSION_DENIED
    missing_del = kb_pb2.DeleteDocumentRequest(id="doc-1")
    assert code_of(lambda: stub.DeleteDocument(missing_del, metadata=md(k["ro"]))) == grpc.StatusCode.PERMISSION_DENIED

    bad = kb_pb2.AddDocumentsRequest(documents=[new_doc(1), new_doc(2, subject_ids=["nobody"]), new_doc(3)])
    with pytest.raises(grpc.RpcError) as exc:
        stub.AddDocuments(bad, metadata=md(k["rw"]))
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "line 2: subject_ids" in exc.value.details() and "line 3" not in exc.value.details()
    bad_json = kb_pb2.AddDocumentsRequest(documents=[new_doc(1), new_doc(2, metadata_json="{nope")])
    with pytest.raises(grpc.RpcError) as exc:
        stub.AddDocuments(bad_json, metadata=md(k["rw"]))
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "line 2: metadata_json" in exc.value.details()
    for req in (kb_pb2.AddDocumentsRequest(), kb_pb2.AddDocumentsRequest(documents=[new_doc(1, text="a\x00b")])):
        assert code_of(lambda r=req: stub.AddDocuments(r, metadata=md(k["rw"]))) == grpc.StatusCode.INVALID_ARGUMENT
    assert stub.ListDocuments(listing, metadata=md(k["ro"])).documents == []
    assert stored(db) == 0

    assert code_of(lambda: stub.GetDocument(missing_get, metadata=md(k["ro"]))) == grpc.StatusCode.NOT_FOUND
    assert code_of(lambda: stub.DeleteDocument(missing_del, metadata=md(k["rw"]))) == grpc.StatusCode.NOT_FOUND
    bad_id = kb_pb2.GetDocumentRequest(id="a\x00b")
    assert code_of(lambda: stub.GetDocument(bad_id, metadata=md(k["ro"]))) == grpc.StatusCode.INVALID_ARGUMENT


def test_grpc_serves_health_and_reflection_for_the_kb(grpc_api):  # noqa: F811
    channel = grpc_api[0]
    name = "lethe.v1.KnowledgeBaseService"
    health = health_pb2_grpc.HealthStub(channel)
    assert health.Check(health_pb2.HealthCheckRequest(service=name)).status == health_pb2.HealthCheckResponse.SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(channel)
    reply = next(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    assert name in {s.name for s in reply.list_services_response.service}
