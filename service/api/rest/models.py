"""REST request and response bodies (OpenDSR-shaped); converters to and from the core."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from service.core import kb, validation
from service.core.deletions import Deletion, Page, Status, SubmitDeletion
from service.core.records import MAX_SUBJECTS_PER_RECORD


class Identity(BaseModel):
    model_config = ConfigDict(extra="forbid")
    identity_type: Literal["email", "person", "phone", "controller_customer_id"] = Field(examples=["email"])
    identity_value: str = Field(min_length=1, max_length=320, examples=["ada@example.org"])
    identity_format: Literal["raw"] = "raw"


class DeletionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    subject_request_id: uuid.UUID
    subject_request_type: Literal["erasure"]
    subject_identities: list[Identity] = Field(default_factory=list, max_length=32)
    submitted_time: datetime | None = None
    status_callback_urls: list[str] = Field(default_factory=list, max_length=4)
    record_ids: list[str] = Field(default_factory=list, max_length=1000)

    def to_core(self) -> SubmitDeletion:
        return SubmitDeletion(
            subject_request_id=self.subject_request_id,
            subject_identities=[(i.identity_type, i.identity_value) for i in self.subject_identities],
            subject_request_type=self.subject_request_type,
            submitted_time=self.submitted_time,
            status_callback_urls=self.status_callback_urls,
            record_ids=self.record_ids,
        )


class DeletionOut(BaseModel):
    subject_request_id: uuid.UUID
    subject_request_type: str
    request_status: Status
    identity_types: list[str]
    subject_hashes: list[str] = Field(description="Keyed hashes (HMAC-SHA256) of the identities; never the identities.")
    received_time: datetime
    submitted_time: datetime | None
    expected_completion_time: datetime = Field(description="The deadline: received + the configured period.")
    updated_time: datetime | None
    completed_time: datetime | None
    forgotten_time: datetime | None = Field(
        None,
        description="When every routable replica first served weights that never saw the request's records "
        "(before verification and the receipt: completed_time).",
    )
    batch_id: uuid.UUID | None = Field(None, description="The batch of requests this one was applied with.")
    result: dict[str, Any]

    @classmethod
    def from_core(cls, d: Deletion) -> DeletionOut:
        return cls(
            subject_request_id=d.id,
            subject_request_type=d.request_type,
            request_status=d.status,
            identity_types=list(d.identity_types),
            subject_hashes=[h.hex() for h in d.subject_hashes],
            received_time=d.received_time,
            submitted_time=d.submitted_time,
            expected_completion_time=d.deadline,
            updated_time=d.updated_time,
            completed_time=d.completed_time,
            forgotten_time=d.forgotten_time,
            batch_id=d.batch_id,
            result=dict(d.result),
        )


class DeletionList(BaseModel):
    items: list[DeletionOut]
    next_cursor: str | None

    @classmethod
    def from_core(cls, page: Page) -> DeletionList:
        return cls(items=[DeletionOut.from_core(d) for d in page.items], next_cursor=page.next_cursor)


class Problem(BaseModel):
    type: str
    title: str
    status: int
    detail: str


class ReceiptOut(BaseModel):
    seq: int
    kind: str
    body: dict[str, Any]
    created_at: str
    prev_hash: str
    row_hash: str
    leaf_index: int
    tree_size: int
    inclusion_proof: list[str] = Field(description="Base64 SHA-256 node hashes, leaf to root (RFC 6962 PATH).")
    checkpoint: str = Field(description="C2SP signed note covering tree_size.")


class ConsistencyOut(BaseModel):
    old_size: int
    new_size: int
    hashes: list[str]


class CheckpointOut(BaseModel):
    size: int
    root: str
    note: str


class PublicKeyOut(BaseModel):
    pem: str
    key_name: str
    origin: str


# -- knowledge base ----------------------------------------------------------------------------
DOCUMENT_ID = kb.DOCUMENT_ID
NO_NUL = r"^[^\x00]*$"  # PostgreSQL text cannot hold NUL


class DocumentIn(BaseModel):
    """One document; the shape is checked here (422), the meaning by the core (400, by position)."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, max_length=kb.MAX_ID_LENGTH, pattern=DOCUMENT_ID, examples=["faq-0001"])
    subject_ids: list[Annotated[str, Field(min_length=1, max_length=400)]] = Field(
        min_length=1,
        max_length=MAX_SUBJECTS_PER_RECORD,
        examples=[["email:ada@example.org"]],
        description="Identities as 'type:value'; stored only as keyed hashes.",
    )
    text: str = Field(min_length=1, max_length=1 << 20, pattern=NO_NUL)
    source: str = Field(min_length=1, max_length=512, pattern=NO_NUL, examples=["crm-export-2026-01"])
    metadata: dict[str, Any] = Field(default_factory=dict, description="A JSON object of at most 4096 bytes.")

    @field_validator("metadata")
    @classmethod
    def _storable(cls, v: dict[str, Any]) -> dict[str, Any]:
        """What PostgreSQL's jsonb refuses: NUL characters, NaN and Infinity; and deep nesting."""
        if deep := validation.json_depth_problem(v):
            raise ValueError(f"metadata: {deep}")
        try:
            text = json.dumps(v, allow_nan=False)
        except ValueError as e:
            raise ValueError("metadata cannot contain NaN or Infinity") from e
        if "\\u0000" in text:
            raise ValueError("metadata cannot contain NUL characters")
        return v

    def to_core(self) -> kb.NewDocument:
        return kb.NewDocument(self.id, self.subject_ids, self.text, self.source, self.metadata)


class DocumentsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    documents: list[DocumentIn] = Field(
        min_length=1,
        max_length=kb.MAX_DOCUMENTS_PER_CALL,
        description="Added all or nothing; a 400 names each bad document by its 1-based position ('line').",
    )


class AddOut(BaseModel):
    inserted: int
    unchanged: int = Field(description="Documents already stored with the same content, source and subjects.")


class DocumentOut(BaseModel):
    id: str
    source: str
    metadata: dict[str, Any]
    chunks: int
    content_sha256: str
    created_at: datetime
    suppressed: bool = Field(description="Taken out of retrieval by a deletion request.")

    @classmethod
    def from_core(cls, d: kb.DocumentInfo) -> DocumentOut:
        return cls(
            id=d.id,
            source=d.source,
            metadata=d.metadata,
            chunks=d.chunks,
            content_sha256=d.content_sha256,
            created_at=d.created_at,
            suppressed=d.suppressed,
        )


class DocumentWithText(DocumentOut):
    text: str

    @classmethod
    def from_core(cls, d: kb.DocumentInfo) -> DocumentWithText:
        return cls(**DocumentOut.from_core(d).model_dump(), text=d.text or "")


class DocumentList(BaseModel):
    documents: list[DocumentOut]
    next_cursor: str | None

    @classmethod
    def from_core(cls, page: kb.DocumentPage) -> DocumentList:
        return cls(documents=[DocumentOut.from_core(d) for d in page.items], next_cursor=page.next_cursor)
