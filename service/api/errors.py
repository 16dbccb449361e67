"""The one table from core errors to HTTP status (RFC 9457 problem types) and gRPC status codes."""

from __future__ import annotations

from dataclasses import dataclass

from service.core import errors


@dataclass(frozen=True)
class Mapping:
    http: int
    grpc: str  # grpc.StatusCode member name (kept as text: this module imports no transport)
    title: str


# Most specific first: the first matching class wins.
TABLE: list[tuple[type[errors.LetheError], Mapping]] = [
    (errors.PayloadTooLarge, Mapping(413, "RESOURCE_EXHAUSTED", "Payload too large")),
    (errors.IdempotencyKeyReused, Mapping(422, "FAILED_PRECONDITION", "Idempotency-Key reused")),
    (errors.InvalidInput, Mapping(400, "INVALID_ARGUMENT", "Invalid input")),
    (errors.NotFound, Mapping(404, "NOT_FOUND", "Not found")),
    (errors.NotCancellable, Mapping(409, "FAILED_PRECONDITION", "Not cancellable")),
    (errors.IdempotencyInProgress, Mapping(409, "ABORTED", "Request in progress")),
    (errors.Conflict, Mapping(409, "ALREADY_EXISTS", "Conflict")),
    (errors.Unauthenticated, Mapping(401, "UNAUTHENTICATED", "Unauthenticated")),
    (errors.PermissionDenied, Mapping(403, "PERMISSION_DENIED", "Permission denied")),
    (errors.UpstreamTimeout, Mapping(504, "DEADLINE_EXCEEDED", "Upstream timeout")),
    (errors.UpstreamError, Mapping(502, "UNAVAILABLE", "Bad upstream")),
]
INTERNAL = Mapping(500, "INTERNAL", "Internal error")


def lookup(exc: BaseException) -> Mapping:
    for cls, mapping in TABLE:
        if isinstance(exc, cls):
            return mapping
    return INTERNAL


def problem_type(mapping: Mapping) -> str:
    return "https://lethe.dev/problems/" + mapping.title.lower().replace(" ", "-")
