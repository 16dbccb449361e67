"""Training records as the core sees them, and all-or-nothing parsing of a JSONL corpus."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service.core import validation
from service.core.errors import InvalidCorpus, InvalidIdentity
from service.core.identity import content_hash, subject_hash, text_key

MAX_SUBJECTS_PER_RECORD = 16
M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class Record:
    """A record ready to store: the identities are already keyed hashes."""

    id: str
    subject_hashes: tuple[bytes, ...]
    text: str
    content_hash: bytes
    line: int = 0  # where it came from, for error messages
    text_key: bytes | None = None  # identity.text_key: the same text under another id


class _RecordLine(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    id: str = Field(min_length=1, max_length=validation.RECORD_ID.max_chars, pattern=f"^{validation.IDENTIFIER}$")
    subject_ids: list[str] = Field(min_length=1, max_length=MAX_SUBJECTS_PER_RECORD)
    text: str = Field(min_length=1)


def parse_line(model: type[M], raw: object) -> M | str:
    """One JSONL line (text, or already parsed) validated by ``model``; or what is wrong with it."""
    try:
        return model.model_validate(json.loads(raw) if isinstance(raw, str) else raw)
    except json.JSONDecodeError as e:
        return f"not valid JSON ({e.msg} at column {e.colno})"
    except ValidationError as e:
        return "; ".join(f"{'.'.join(map(str, d['loc'])) or 'line'}: {d['msg']}" for d in e.errors())


def parse_records(lines: Iterable[str], key: bytes, max_text_bytes: int) -> list[Record]:
    """Parse every line; on any error raise :class:`InvalidCorpus` listing them all by line number."""
    errors: list[tuple[int, str]] = []
    records: list[Record] = []
    seen: dict[str, int] = {}
    for n, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        line = parse_line(_RecordLine, raw)
        if isinstance(line, str):
            errors.append((n, line))
            continue
        bad = validation.problem(validation.TEXT, line.text)
        if bad is None and len(line.text.encode()) > max_text_bytes:
            bad = f"text: longer than {max_text_bytes} bytes"
        if bad:
            errors.append((n, bad))
            continue
        if line.id in seen:
            errors.append((n, f"id: {line.id!r} already used on line {seen[line.id]}"))
            continue
        try:
            hashes = tuple(sorted({subject_hash(key, s) for s in line.subject_ids}))
        except InvalidIdentity as e:
            errors.append((n, f"subject_ids: {e}"))
            continue
        seen[line.id] = n
        records.append(Record(line.id, hashes, line.text, content_hash(line.text), n, text_key(key, line.text)))
    if errors:
        raise InvalidCorpus(errors)
    return records
