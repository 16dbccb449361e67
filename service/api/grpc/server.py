"""The gRPC edge: servicers that convert, call the same core as REST, convert back.

Errors are translated once, by ``_translated``, through the table in service.api.errors.
Credentials come as ``authorization: Bearer <key>`` metadata; Idempotency-Key as
``idempotency-key``. Standard health checking and reflection are served.
"""

from __future__ import annotations

import functools
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent import futures
from datetime import UTC, datetime
from typing import Any, TypeVar

import grpc
from google.protobuf import struct_pb2, timestamp_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.trace import SpanKind

from service import tracing
from service.api import errors as error_table
from service.api.grpc.gen.lethe.v1 import (
    deletion_pb2,
    deletion_pb2_grpc,
    kb_pb2,
    kb_pb2_grpc,
    ledger_pb2,
    ledger_pb2_grpc,
)
from service.core import errors, validation
from service.core.deletions import Deletion, Deletions, Principal, Scope, Status, SubmitDeletion
from service.core.kb import DocumentInfo, KnowledgeBase, NewDocument
from service.core.reports import Reports
from service.ledger.log import Ledger

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])
STATUS_TO_PB = {s: getattr(deletion_pb2, f"DELETION_STATUS_{s.name}") for s in Status}
PB_TO_STATUS = {v: k for k, v in STATUS_TO_PB.items()}
MAX_MESSAGE = 1 << 20


def _translated(method: F) -> F:
    """Domain errors → their status code; anything else is a server fault: INTERNAL, logged,
    with no detail sent (it could hold a request's data)."""

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        with tracing.tracer.start_as_current_span(f"grpc {method.__name__}", kind=SpanKind.SERVER):
            try:
                return method(self, request, context)
            except errors.LetheError as e:
                context.abort(getattr(grpc.StatusCode, error_table.lookup(e).grpc), str(e))
            except Exception:
                if context.code() is not None:  # context.abort's own exception: already answered
                    raise
                log.exception("gRPC %s failed", method.__name__)
                context.abort(grpc.StatusCode.INTERNAL, "internal error")

    return wrapper  # type: ignore[return-value]


class _Undecodable:
    """Stands for a request message that did not parse (e.g. a string field that is not UTF-8)."""

    def __init__(self, error: Exception) -> None:
        self.error = error


class RejectUndecodable(grpc.ServerInterceptor):  # type: ignore[misc]  # grpc ships no type hints
    """A message that does not parse is the client's fault: INVALID_ARGUMENT, not grpcio's
    INTERNAL ("Exception deserializing request")."""

    def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        parse = handler.request_deserializer

        def deserialize(data: bytes) -> Any:
            try:
                return parse(data)
            except Exception as e:  # protobuf's DecodeError, or anything a parser raises on bad bytes
                return _Undecodable(e)

        def guard(behavior: Callable[..., Any]) -> Callable[..., Any]:
            def run(request: Any, context: grpc.ServicerContext) -> Any:
                if isinstance(request, _Undecodable):
                    context.abort(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        "the request message does not parse (every string field must be valid UTF-8)",
                    )
                return behavior(request, context)

            return run

        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                guard(handler.unary_unary), deserialize, handler.response_serializer
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                guard(handler.unary_stream), deserialize, handler.response_serializer
            )
        return handler  # streaming requests: none in Lethe's services


def _ts(dt: datetime | None) -> timestamp_pb2.Timestamp | None:
    if dt is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(dt)
    return ts


def _datetime(ts: timestamp_pb2.Timestamp) -> datetime:
    try:
        when: datetime = ts.ToDatetime(tzinfo=UTC)
        return when
    except (ValueError, OverflowError) as e:
        raise errors.InvalidInput("submitted_time is out of range") from e


def _status(value: int) -> Status | None:
    """The list filter: unspecified (0) is none; an unknown enum number is refused, not ignored."""
    if value == 0:
        return None
    if value not in PB_TO_STATUS:
        raise errors.InvalidInput(f"unknown status {value}")
    return PB_TO_STATUS[value]


def _uuid(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError as e:
        raise errors.InvalidInput("subject_request_id must be a UUID") from e


def to_pb(d: Deletion) -> deletion_pb2.Deletion:
    result = struct_pb2.Struct()
    result.update(json.loads(json.dumps(d.result, default=str)))
    return deletion_pb2.Deletion(
        subject_request_id=str(d.id),
        subject_request_type=d.request_type,
        status=STATUS_TO_PB[d.status],
        identity_types=list(d.identity_types),
        subject_hashes=[h.hex() for h in d.subject_hashes],
        received_time=_ts(d.received_time),
        submitted_time=_ts(d.submitted_time),
        expected_completion_time=_ts(d.deadline),
        updated_time=_ts(d.updated_time),
        completed_time=_ts(d.completed_time),
        result=result,
        forgotten_time=_ts(d.forgotten_time),
        batch_id=str(d.batch_id) if d.batch_id else "",
    )


class _Edge:
    def __init__(self, authenticate: Callable[[str | None], Principal]) -> None:
        self.authenticate = authenticate

    def principal(self, context: grpc.ServicerContext) -> Principal:
        md = dict(context.invocation_metadata())
        token = md.get("authorization")
        return self.authenticate(token.removeprefix("Bearer ").strip() if isinstance(token, str) else None)


class DeletionServicer(_Edge, deletion_pb2_grpc.DeletionServiceServicer):
    def __init__(
        self,
        core: Deletions,
        authenticate: Callable[[str | None], Principal],
        poll: float = 0.5,
        reports: Reports | None = None,
    ) -> None:
        super().__init__(authenticate)
        self.core, self.poll, self.reports = core, poll, reports

    @_translated
    def GetDeletionReport(self, request: Any, context: grpc.ServicerContext) -> deletion_pb2.DeletionReport:
        if self.reports is None:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "this server has no report source")
        assert self.reports is not None
        doc = self.reports.get(_uuid(request.subject_request_id), self.principal(context))
        out = deletion_pb2.DeletionReport()
        out.report.update(doc)
        return out

    @_translated
    def SubmitDeletion(self, request: Any, context: grpc.ServicerContext) -> deletion_pb2.SubmitDeletionResponse:
        who = self.principal(context)
        key = dict(context.invocation_metadata()).get("idempotency-key")
        cmd = SubmitDeletion(
            subject_request_id=_uuid(request.subject_request_id),
            subject_identities=[(i.identity_type, i.identity_value) for i in request.subject_identities],
            subject_request_type=request.subject_request_type,
            submitted_time=_datetime(request.submitted_time) if request.HasField("submitted_time") else None,
            status_callback_urls=list(request.status_callback_urls),
            record_ids=list(request.record_ids),
        )
        d, created = self.core.submit(cmd, who, key if isinstance(key, str) else None)
        return deletion_pb2.SubmitDeletionResponse(deletion=to_pb(d), created=created)

    @_translated
    def GetDeletion(self, request: Any, context: grpc.ServicerContext) -> deletion_pb2.Deletion:
        return to_pb(self.core.get(_uuid(request.subject_request_id), self.principal(context)))

    @_translated
    def CancelDeletion(self, request: Any, context: grpc.ServicerContext) -> deletion_pb2.Deletion:
        return to_pb(self.core.cancel(_uuid(request.subject_request_id), self.principal(context)))

    @_translated
    def ListDeletions(self, request: Any, context: grpc.ServicerContext) -> deletion_pb2.ListDeletionsResponse:
        who = self.principal(context)
        page = self.core.list(who, _status(request.status), request.cursor or None, request.limit or 50)
        return deletion_pb2.ListDeletionsResponse(
            items=[to_pb(d) for d in page.items], next_cursor=page.next_cursor or ""
        )

    def WatchDeletion(self, request: Any, context: grpc.ServicerContext) -> Iterator[deletion_pb2.Deletion]:
        try:
            who, rid = self.principal(context), _uuid(request.subject_request_id)
            last = None
            while context.is_active():
                d = self.core.get(rid, who)
                if d != last:
                    yield to_pb(d)
                    last = d
                if d.status.final:
                    return
                time.sleep(self.poll)
        except errors.LetheError as e:
            context.abort(getattr(grpc.StatusCode, error_table.lookup(e).grpc), str(e))


class LedgerServicer(_Edge, ledger_pb2_grpc.LedgerServiceServicer):
    def __init__(self, ledger: Ledger, authenticate: Callable[[str | None], Principal]) -> None:
        super().__init__(authenticate)
        self.ledger = ledger

    def _allowed(self, context: grpc.ServicerContext) -> None:
        self.principal(context).require(Scope.LEDGER_READ)

    @_translated
    def GetReceipt(self, request: Any, context: grpc.ServicerContext) -> ledger_pb2.Receipt:
        self._allowed(context)
        r = self.ledger.receipt(request.seq)
        e = r.entry
        return ledger_pb2.Receipt(
            seq=e.seq,
            kind=e.kind,
            body_json=json.dumps(e.body, sort_keys=True),
            created_at=e.created_at,
            prev_hash=e.prev_hash,
            row_hash=e.row_hash,
            tree_size=r.tree_size,
            inclusion_proof=r.inclusion_proof,
            checkpoint=r.checkpoint_note,
        )

    @_translated
    def GetInclusionProof(self, request: Any, context: grpc.ServicerContext) -> ledger_pb2.InclusionProof:
        self._allowed(context)
        r = self.ledger.receipt(request.seq)
        return ledger_pb2.InclusionProof(
            leaf_index=request.seq - 1, tree_size=r.tree_size, hashes=r.inclusion_proof, checkpoint=r.checkpoint_note
        )

    @_translated
    def GetConsistencyProof(self, request: Any, context: grpc.ServicerContext) -> ledger_pb2.ConsistencyProof:
        self._allowed(context)
        proof = self.ledger.consistency_proof(request.old_size, request.new_size)
        return ledger_pb2.ConsistencyProof(old_size=request.old_size, new_size=request.new_size, hashes=proof)

    @_translated
    def GetCheckpoint(self, request: Any, context: grpc.ServicerContext) -> ledger_pb2.Checkpoint:
        self._allowed(context)
        size, root, note = self.ledger.latest_checkpoint()
        return ledger_pb2.Checkpoint(size=size, root=root, note=note)

    @_translated
    def GetPublicKey(self, request: Any, context: grpc.ServicerContext) -> ledger_pb2.PublicKey:
        self._allowed(context)
        return ledger_pb2.PublicKey(
            pem=self.ledger.public_key_pem, key_name=self.ledger.key_name, origin=self.ledger.origin
        )


def _new_documents(docs: Any) -> list[NewDocument]:
    """Proto → core. Metadata travels as a JSON string, which only this edge reads: its problems
    are reported like the core's own, every bad document by its 1-based position."""
    problems: list[tuple[int, str]] = []
    out: list[NewDocument] = []
    for n, d in enumerate(docs, start=1):
        try:
            metadata = json.loads(d.metadata_json) if d.metadata_json else {}
        except json.JSONDecodeError as e:
            problems.append((n, f"metadata_json: not valid JSON ({e.msg} at column {e.colno})"))
            continue
        except RecursionError:
            problems.append((n, f"metadata_json: nested deeper than {validation.MAX_JSON_DEPTH} levels"))
            continue
        if not isinstance(metadata, dict):
            problems.append((n, "metadata_json: must be a JSON object"))
            continue
        out.append(NewDocument(d.id, list(d.subject_ids), d.text, d.source, metadata))
    if problems:
        raise errors.InvalidCorpus(problems)
    return out


def document_pb(d: DocumentInfo) -> kb_pb2.Document:
    return kb_pb2.Document(
        id=d.id,
        source=d.source,
        metadata_json=json.dumps(d.metadata, sort_keys=True),
        chunks=d.chunks,
        content_sha256=d.content_sha256,
        created_at=_ts(d.created_at),
        suppressed=d.suppressed,
        text=d.text,
    )


class KnowledgeBaseServicer(_Edge, kb_pb2_grpc.KnowledgeBaseServiceServicer):
    def __init__(self, core: KnowledgeBase, authenticate: Callable[[str | None], Principal]) -> None:
        super().__init__(authenticate)
        self.core = core

    @_translated
    def AddDocuments(self, request: Any, context: grpc.ServicerContext) -> kb_pb2.AddDocumentsResponse:
        who = self.principal(context)
        r = self.core.add(_new_documents(request.documents), who)
        return kb_pb2.AddDocumentsResponse(inserted=r.inserted, unchanged=r.unchanged)

    @_translated
    def ListDocuments(self, request: Any, context: grpc.ServicerContext) -> kb_pb2.ListDocumentsResponse:
        who = self.principal(context)
        cursor = request.cursor or None
        page = self.core.list(who, cursor, request.limit or 50)
        return kb_pb2.ListDocumentsResponse(
            documents=[document_pb(d) for d in page.items], next_cursor=page.next_cursor or ""
        )

    @_translated
    def GetDocument(self, request: Any, context: grpc.ServicerContext) -> kb_pb2.Document:
        who = self.principal(context)
        return document_pb(self.core.get(request.id, who))

    @_translated
    def DeleteDocument(self, request: Any, context: grpc.ServicerContext) -> kb_pb2.DeleteDocumentResponse:
        who = self.principal(context)
        self.core.delete(request.id, who)
        return kb_pb2.DeleteDocumentResponse()


def build_server(
    core: Deletions,
    ledger: Ledger,
    authenticate: Callable[[str | None], Principal],
    address: str,
    credentials: grpc.ServerCredentials | None = None,
    kb: KnowledgeBase | None = None,
    reports: Reports | None = None,
) -> tuple[grpc.Server, int]:
    """A started-ready (not started) server bound to ``address``; returns it and the bound port.
    ``kb``: the knowledge-base core; without it KnowledgeBaseService is not served."""
    opts = [("grpc.max_receive_message_length", MAX_MESSAGE)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), options=opts, interceptors=[RejectUndecodable()])
    deletion_pb2_grpc.add_DeletionServiceServicer_to_server(
        DeletionServicer(core, authenticate, reports=reports), server
    )
    ledger_pb2_grpc.add_LedgerServiceServicer_to_server(LedgerServicer(ledger, authenticate), server)
    names = [
        deletion_pb2.DESCRIPTOR.services_by_name["DeletionService"].full_name,
        ledger_pb2.DESCRIPTOR.services_by_name["LedgerService"].full_name,
    ]
    if kb is not None:
        kb_pb2_grpc.add_KnowledgeBaseServiceServicer_to_server(KnowledgeBaseServicer(kb, authenticate), server)
        names.append(kb_pb2.DESCRIPTOR.services_by_name["KnowledgeBaseService"].full_name)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", *names):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection((*names, reflection.SERVICE_NAME, health.SERVICE_NAME), server)
    port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    return server, port
