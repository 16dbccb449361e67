"""Domain errors. Each transport maps them once; the docstring is the default message."""

from __future__ import annotations


class LetheError(Exception):
    """Lethe error."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class InvalidInput(LetheError):
    """The input is invalid."""


class InvalidIdentity(InvalidInput):
    """The subject identity is invalid."""


class InvalidCorpus(InvalidInput):
    """The corpus file is invalid; nothing was written."""

    def __init__(self, errors: list[tuple[int, str]]) -> None:
        self.errors = errors
        shown = "\n".join(f"  line {n}: {msg}" for n, msg in errors[:20])
        more = f"\n  … and {len(errors) - 20} more" if len(errors) > 20 else ""
        super().__init__(f"{len(errors)} invalid line(s); nothing was written:\n{shown}{more}")


class NotFound(LetheError):
    """No such resource."""


class Conflict(LetheError):
    """The request conflicts with the resource's current state."""


class NotCancellable(Conflict):
    """Only a pending deletion request can be cancelled."""


class IdempotencyKeyReused(InvalidInput):
    """This Idempotency-Key was already used with a different request body."""


class IdempotencyInProgress(Conflict):
    """A request with this Idempotency-Key is still being processed; retry later."""


class Unauthenticated(LetheError):
    """Missing or invalid credentials."""


class PermissionDenied(LetheError):
    """The credentials lack the scope this operation needs."""


class PayloadTooLarge(InvalidInput):
    """The request body is too large."""


class UpstreamTimeout(LetheError):
    """The upstream model did not answer in time."""


class UpstreamError(LetheError):
    """The upstream model failed or could not be reached."""
