from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FailureReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FAILURE_REASON_UNSPECIFIED: _ClassVar[FailureReason]
    FAILURE_REASON_DNS: _ClassVar[FailureReason]
    FAILURE_REASON_CONNECT: _ClassVar[FailureReason]
    FAILURE_REASON_REFUSED: _ClassVar[FailureReason]
    FAILURE_REASON_TIMEOUT: _ClassVar[FailureReason]
    FAILURE_REASON_TLS: _ClassVar[FailureReason]
    FAILURE_REASON_HTTP_STATUS: _ClassVar[FailureReason]
    FAILURE_REASON_VALIDATION: _ClassVar[FailureReason]
    FAILURE_REASON_OTHER: _ClassVar[FailureReason]
FAILURE_REASON_UNSPECIFIED: FailureReason
FAILURE_REASON_DNS: FailureReason
FAILURE_REASON_CONNECT: FailureReason
FAILURE_REASON_REFUSED: FailureReason
FAILURE_REASON_TIMEOUT: FailureReason
FAILURE_REASON_TLS: FailureReason
FAILURE_REASON_HTTP_STATUS: FailureReason
FAILURE_REASON_VALIDATION: FailureReason
FAILURE_REASON_OTHER: FailureReason

class AgentMessage(_message.Message):
    __slots__ = ("hello", "results", "heartbeat")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    results: ResultBatch
    heartbeat: Heartbeat
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., results: _Optional[_Union[ResultBatch, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ...) -> None: ...

class CollectorMessage(_message.Message):
    __slots__ = ("welcome", "checks", "ack", "heartbeat")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    CHECKS_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    checks: Checks
    ack: Ack
    heartbeat: Heartbeat
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ..., checks: _Optional[_Union[Checks, _Mapping]] = ..., ack: _Optional[_Union[Ack, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("agent_id", "country", "region", "city", "asn", "version", "capabilities", "last_seq", "secrets_dir_configured")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    COUNTRY_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    CITY_FIELD_NUMBER: _ClassVar[int]
    ASN_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    SECRETS_DIR_CONFIGURED_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    country: str
    region: str
    city: str
    asn: int
    version: str
    capabilities: _containers.RepeatedScalarFieldContainer[str]
    last_seq: int
    secrets_dir_configured: bool
    def __init__(self, agent_id: _Optional[str] = ..., country: _Optional[str] = ..., region: _Optional[str] = ..., city: _Optional[str] = ..., asn: _Optional[int] = ..., version: _Optional[str] = ..., capabilities: _Optional[_Iterable[str]] = ..., last_seq: _Optional[int] = ..., secrets_dir_configured: _Optional[bool] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("collector_version", "acked_seq", "heartbeat_interval_seconds", "max_batch_results", "max_message_bytes")
    COLLECTOR_VERSION_FIELD_NUMBER: _ClassVar[int]
    ACKED_SEQ_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_RESULTS_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    collector_version: str
    acked_seq: int
    heartbeat_interval_seconds: int
    max_batch_results: int
    max_message_bytes: int
    def __init__(self, collector_version: _Optional[str] = ..., acked_seq: _Optional[int] = ..., heartbeat_interval_seconds: _Optional[int] = ..., max_batch_results: _Optional[int] = ..., max_message_bytes: _Optional[int] = ...) -> None: ...

class Checks(_message.Message):
    __slots__ = ("revision", "checks")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    CHECKS_FIELD_NUMBER: _ClassVar[int]
    revision: int
    checks: _containers.RepeatedCompositeFieldContainer[Check]
    def __init__(self, revision: _Optional[int] = ..., checks: _Optional[_Iterable[_Union[Check, _Mapping]]] = ...) -> None: ...

class Check(_message.Message):
    __slots__ = ("name", "target", "prober", "interval_seconds", "timeout_seconds", "settings_json", "module")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    PROBER_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_JSON_FIELD_NUMBER: _ClassVar[int]
    MODULE_FIELD_NUMBER: _ClassVar[int]
    name: str
    target: str
    prober: str
    interval_seconds: float
    timeout_seconds: float
    settings_json: str
    module: str
    def __init__(self, name: _Optional[str] = ..., target: _Optional[str] = ..., prober: _Optional[str] = ..., interval_seconds: _Optional[float] = ..., timeout_seconds: _Optional[float] = ..., settings_json: _Optional[str] = ..., module: _Optional[str] = ...) -> None: ...

class ResultBatch(_message.Message):
    __slots__ = ("first_seq", "last_seq", "results", "floor_seq")
    FIRST_SEQ_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    FLOOR_SEQ_FIELD_NUMBER: _ClassVar[int]
    first_seq: int
    last_seq: int
    results: _containers.RepeatedCompositeFieldContainer[Result]
    floor_seq: int
    def __init__(self, first_seq: _Optional[int] = ..., last_seq: _Optional[int] = ..., results: _Optional[_Iterable[_Union[Result, _Mapping]]] = ..., floor_seq: _Optional[int] = ...) -> None: ...

class Result(_message.Message):
    __slots__ = ("check", "target", "timestamp", "success", "duration_seconds", "reason", "message", "samples", "http_phase_seconds")
    CHECK_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    DURATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    HTTP_PHASE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    check: str
    target: str
    timestamp: float
    success: bool
    duration_seconds: float
    reason: FailureReason
    message: str
    samples: _containers.RepeatedCompositeFieldContainer[Sample]
    http_phase_seconds: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, check: _Optional[str] = ..., target: _Optional[str] = ..., timestamp: _Optional[float] = ..., success: _Optional[bool] = ..., duration_seconds: _Optional[float] = ..., reason: _Optional[_Union[FailureReason, str]] = ..., message: _Optional[str] = ..., samples: _Optional[_Iterable[_Union[Sample, _Mapping]]] = ..., http_phase_seconds: _Optional[_Iterable[float]] = ...) -> None: ...

class Sample(_message.Message):
    __slots__ = ("name", "labels", "value")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    labels: _containers.ScalarMap[str, str]
    value: float
    def __init__(self, name: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., value: _Optional[float] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("seq", "first_seq", "last_seq")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEQ_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    seq: int
    first_seq: int
    last_seq: int
    def __init__(self, seq: _Optional[int] = ..., first_seq: _Optional[int] = ..., last_seq: _Optional[int] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("timestamp",)
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    timestamp: float
    def __init__(self, timestamp: _Optional[float] = ...) -> None: ...
