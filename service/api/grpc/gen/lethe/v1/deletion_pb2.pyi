import datetime

from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DeletionStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DELETION_STATUS_UNSPECIFIED: _ClassVar[DeletionStatus]
    DELETION_STATUS_PENDING: _ClassVar[DeletionStatus]
    DELETION_STATUS_IN_PROGRESS: _ClassVar[DeletionStatus]
    DELETION_STATUS_COMPLETED: _ClassVar[DeletionStatus]
    DELETION_STATUS_CANCELLED: _ClassVar[DeletionStatus]
    DELETION_STATUS_FAILED: _ClassVar[DeletionStatus]
DELETION_STATUS_UNSPECIFIED: DeletionStatus
DELETION_STATUS_PENDING: DeletionStatus
DELETION_STATUS_IN_PROGRESS: DeletionStatus
DELETION_STATUS_COMPLETED: DeletionStatus
DELETION_STATUS_CANCELLED: DeletionStatus
DELETION_STATUS_FAILED: DeletionStatus

class SubjectIdentity(_message.Message):
    __slots__ = ("identity_type", "identity_value")
    IDENTITY_TYPE_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_VALUE_FIELD_NUMBER: _ClassVar[int]
    identity_type: str
    identity_value: str
    def __init__(self, identity_type: _Optional[str] = ..., identity_value: _Optional[str] = ...) -> None: ...

class SubmitDeletionRequest(_message.Message):
    __slots__ = ("subject_request_id", "subject_request_type", "subject_identities", "submitted_time", "status_callback_urls", "record_ids")
    SUBJECT_REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_REQUEST_TYPE_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_IDENTITIES_FIELD_NUMBER: _ClassVar[int]
    SUBMITTED_TIME_FIELD_NUMBER: _ClassVar[int]
    STATUS_CALLBACK_URLS_FIELD_NUMBER: _ClassVar[int]
    RECORD_IDS_FIELD_NUMBER: _ClassVar[int]
    subject_request_id: str
    subject_request_type: str
    subject_identities: _containers.RepeatedCompositeFieldContainer[SubjectIdentity]
    submitted_time: _timestamp_pb2.Timestamp
    status_callback_urls: _containers.RepeatedScalarFieldContainer[str]
    record_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, subject_request_id: _Optional[str] = ..., subject_request_type: _Optional[str] = ..., subject_identities: _Optional[_Iterable[_Union[SubjectIdentity, _Mapping]]] = ..., submitted_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., status_callback_urls: _Optional[_Iterable[str]] = ..., record_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class SubmitDeletionResponse(_message.Message):
    __slots__ = ("deletion", "created")
    DELETION_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    deletion: Deletion
    created: bool
    def __init__(self, deletion: _Optional[_Union[Deletion, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class Deletion(_message.Message):
    __slots__ = ("subject_request_id", "subject_request_type", "status", "identity_types", "subject_hashes", "received_time", "submitted_time", "expected_completion_time", "updated_time", "completed_time", "result", "forgotten_time", "batch_id")
    SUBJECT_REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_REQUEST_TYPE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_TYPES_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_HASHES_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_TIME_FIELD_NUMBER: _ClassVar[int]
    SUBMITTED_TIME_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_COMPLETION_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATED_TIME_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_TIME_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    FORGOTTEN_TIME_FIELD_NUMBER: _ClassVar[int]
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    subject_request_id: str
    subject_request_type: str
    status: DeletionStatus
    identity_types: _containers.RepeatedScalarFieldContainer[str]
    subject_hashes: _containers.RepeatedScalarFieldContainer[str]
    received_time: _timestamp_pb2.Timestamp
    submitted_time: _timestamp_pb2.Timestamp
    expected_completion_time: _timestamp_pb2.Timestamp
    updated_time: _timestamp_pb2.Timestamp
    completed_time: _timestamp_pb2.Timestamp
    result: _struct_pb2.Struct
    forgotten_time: _timestamp_pb2.Timestamp
    batch_id: str
    def __init__(self, subject_request_id: _Optional[str] = ..., subject_request_type: _Optional[str] = ..., status: _Optional[_Union[DeletionStatus, str]] = ..., identity_types: _Optional[_Iterable[str]] = ..., subject_hashes: _Optional[_Iterable[str]] = ..., received_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., submitted_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expected_completion_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., completed_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., result: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., forgotten_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., batch_id: _Optional[str] = ...) -> None: ...

class GetDeletionRequest(_message.Message):
    __slots__ = ("subject_request_id",)
    SUBJECT_REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    subject_request_id: str
    def __init__(self, subject_request_id: _Optional[str] = ...) -> None: ...

class GetDeletionReportRequest(_message.Message):
    __slots__ = ("subject_request_id",)
    SUBJECT_REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    subject_request_id: str
    def __init__(self, subject_request_id: _Optional[str] = ...) -> None: ...

class DeletionReport(_message.Message):
    __slots__ = ("report",)
    REPORT_FIELD_NUMBER: _ClassVar[int]
    report: _struct_pb2.Struct
    def __init__(self, report: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class CancelDeletionRequest(_message.Message):
    __slots__ = ("subject_request_id",)
    SUBJECT_REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    subject_request_id: str
    def __init__(self, subject_request_id: _Optional[str] = ...) -> None: ...

class ListDeletionsRequest(_message.Message):
    __slots__ = ("status", "cursor", "limit")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    status: DeletionStatus
    cursor: str
    limit: int
    def __init__(self, status: _Optional[_Union[DeletionStatus, str]] = ..., cursor: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class ListDeletionsResponse(_message.Message):
    __slots__ = ("items", "next_cursor")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    NEXT_CURSOR_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Deletion]
    next_cursor: str
    def __init__(self, items: _Optional[_Iterable[_Union[Deletion, _Mapping]]] = ..., next_cursor: _Optional[str] = ...) -> None: ...

class WatchDeletionRequest(_message.Message):
    __slots__ = ("subject_request_id",)
    SUBJECT_REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    subject_request_id: str
    def __init__(self, subject_request_id: _Optional[str] = ...) -> None: ...
