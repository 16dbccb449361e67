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
