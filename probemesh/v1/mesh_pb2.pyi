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
    FAILURE_REASON_POLICY: _ClassVar[FailureReason]
FAILURE_REASON_UNSPECIFIED: FailureReason
FAILURE_REASON_DNS: FailureReason
FAILURE_REASON_CONNECT: FailureReason
FAILURE_REASON_REFUSED: FailureReason
FAILURE_REASON_TIMEOUT: FailureReason
FAILURE_REASON_TLS: FailureReason
FAILURE_REASON_HTTP_STATUS: FailureReason
FAILURE_REASON_VALIDATION: FailureReason
FAILURE_REASON_OTHER: FailureReason
FAILURE_REASON_POLICY: FailureReason

class AgentMessage(_message.Message):
    __slots__ = ("hello", "results", "heartbeat", "evidence")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    results: ResultBatch
    heartbeat: Heartbeat
    evidence: EvidenceReport
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., results: _Optional[_Union[ResultBatch, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., evidence: _Optional[_Union[EvidenceReport, _Mapping]] = ...) -> None: ...

class CollectorMessage(_message.Message):
    __slots__ = ("welcome", "checks", "ack", "heartbeat", "evidence_request")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    CHECKS_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_REQUEST_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    checks: Checks
    ack: Ack
    heartbeat: Heartbeat
    evidence_request: EvidenceRequest
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ..., checks: _Optional[_Union[Checks, _Mapping]] = ..., ack: _Optional[_Union[Ack, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., evidence_request: _Optional[_Union[EvidenceRequest, _Mapping]] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("agent_id", "country", "region", "city", "asn", "version", "capabilities", "last_seq", "min_interval_seconds", "allow_private_targets", "secrets_dir_configured", "features", "queue_max_age_seconds", "ack_hold_seconds")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    COUNTRY_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    CITY_FIELD_NUMBER: _ClassVar[int]
    ASN_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    MIN_INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ALLOW_PRIVATE_TARGETS_FIELD_NUMBER: _ClassVar[int]
    SECRETS_DIR_CONFIGURED_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    QUEUE_MAX_AGE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ACK_HOLD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    country: str
    region: str
    city: str
    asn: int
    version: str
    capabilities: _containers.RepeatedScalarFieldContainer[str]
    last_seq: int
    min_interval_seconds: float
    allow_private_targets: bool
    secrets_dir_configured: bool
    features: _containers.RepeatedScalarFieldContainer[str]
    queue_max_age_seconds: float
    ack_hold_seconds: float
    def __init__(self, agent_id: _Optional[str] = ..., country: _Optional[str] = ..., region: _Optional[str] = ..., city: _Optional[str] = ..., asn: _Optional[int] = ..., version: _Optional[str] = ..., capabilities: _Optional[_Iterable[str]] = ..., last_seq: _Optional[int] = ..., min_interval_seconds: _Optional[float] = ..., allow_private_targets: _Optional[bool] = ..., secrets_dir_configured: _Optional[bool] = ..., features: _Optional[_Iterable[str]] = ..., queue_max_age_seconds: _Optional[float] = ..., ack_hold_seconds: _Optional[float] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("collector_version", "acked_seq", "heartbeat_interval_seconds", "max_batch_results", "max_message_bytes", "collector_time", "features")
    COLLECTOR_VERSION_FIELD_NUMBER: _ClassVar[int]
    ACKED_SEQ_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_RESULTS_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    COLLECTOR_TIME_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    collector_version: str
    acked_seq: int
    heartbeat_interval_seconds: int
    max_batch_results: int
    max_message_bytes: int
    collector_time: float
    features: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, collector_version: _Optional[str] = ..., acked_seq: _Optional[int] = ..., heartbeat_interval_seconds: _Optional[int] = ..., max_batch_results: _Optional[int] = ..., max_message_bytes: _Optional[int] = ..., collector_time: _Optional[float] = ..., features: _Optional[_Iterable[str]] = ...) -> None: ...

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
    __slots__ = ("check", "target", "timestamp", "success", "duration_seconds", "reason", "message", "samples", "http_phase_seconds", "revision")
    CHECK_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    DURATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    HTTP_PHASE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    check: str
    target: str
    timestamp: float
    success: bool
    duration_seconds: float
    reason: FailureReason
    message: str
    samples: _containers.RepeatedCompositeFieldContainer[Sample]
    http_phase_seconds: _containers.RepeatedScalarFieldContainer[float]
    revision: int
    def __init__(self, check: _Optional[str] = ..., target: _Optional[str] = ..., timestamp: _Optional[float] = ..., success: _Optional[bool] = ..., duration_seconds: _Optional[float] = ..., reason: _Optional[_Union[FailureReason, str]] = ..., message: _Optional[str] = ..., samples: _Optional[_Iterable[_Union[Sample, _Mapping]]] = ..., http_phase_seconds: _Optional[_Iterable[float]] = ..., revision: _Optional[int] = ...) -> None: ...

class Evidence(_message.Message):
    __slots__ = ("timestamp", "probe_success", "dns", "tcp", "tls", "http", "path")
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    PROBE_SUCCESS_FIELD_NUMBER: _ClassVar[int]
    DNS_FIELD_NUMBER: _ClassVar[int]
    TCP_FIELD_NUMBER: _ClassVar[int]
    TLS_FIELD_NUMBER: _ClassVar[int]
    HTTP_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    timestamp: float
    probe_success: bool
    dns: DnsEvidence
    tcp: _containers.RepeatedCompositeFieldContainer[TcpEvidence]
    tls: TlsEvidence
    http: HttpEvidence
    path: PathEvidence
    def __init__(self, timestamp: _Optional[float] = ..., probe_success: _Optional[bool] = ..., dns: _Optional[_Union[DnsEvidence, _Mapping]] = ..., tcp: _Optional[_Iterable[_Union[TcpEvidence, _Mapping]]] = ..., tls: _Optional[_Union[TlsEvidence, _Mapping]] = ..., http: _Optional[_Union[HttpEvidence, _Mapping]] = ..., path: _Optional[_Union[PathEvidence, _Mapping]] = ...) -> None: ...

class DnsEvidence(_message.Message):
    __slots__ = ("resolver", "rcode", "addresses", "error")
    RESOLVER_FIELD_NUMBER: _ClassVar[int]
    RCODE_FIELD_NUMBER: _ClassVar[int]
    ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    resolver: str
    rcode: str
    addresses: _containers.RepeatedScalarFieldContainer[str]
    error: str
    def __init__(self, resolver: _Optional[str] = ..., rcode: _Optional[str] = ..., addresses: _Optional[_Iterable[str]] = ..., error: _Optional[str] = ...) -> None: ...

class TcpEvidence(_message.Message):
    __slots__ = ("address", "port", "outcome", "icmp_code", "seconds")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    ICMP_CODE_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    address: str
    port: int
    outcome: str
    icmp_code: int
    seconds: float
    def __init__(self, address: _Optional[str] = ..., port: _Optional[int] = ..., outcome: _Optional[str] = ..., icmp_code: _Optional[int] = ..., seconds: _Optional[float] = ...) -> None: ...

class TlsEvidence(_message.Message):
    __slots__ = ("address", "outcome", "error", "leaf_sha256", "name_matches", "issuer", "server_name")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    LEAF_SHA256_FIELD_NUMBER: _ClassVar[int]
    NAME_MATCHES_FIELD_NUMBER: _ClassVar[int]
    ISSUER_FIELD_NUMBER: _ClassVar[int]
    SERVER_NAME_FIELD_NUMBER: _ClassVar[int]
    address: str
    outcome: str
    error: str
    leaf_sha256: str
    name_matches: bool
    issuer: str
    server_name: str
    def __init__(self, address: _Optional[str] = ..., outcome: _Optional[str] = ..., error: _Optional[str] = ..., leaf_sha256: _Optional[str] = ..., name_matches: _Optional[bool] = ..., issuer: _Optional[str] = ..., server_name: _Optional[str] = ...) -> None: ...

class HttpEvidence(_message.Message):
    __slots__ = ("status", "body_length", "title", "header_names", "error", "body_truncated")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    BODY_LENGTH_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    HEADER_NAMES_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    BODY_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    status: int
    body_length: int
    title: str
    header_names: _containers.RepeatedScalarFieldContainer[str]
    error: str
    body_truncated: bool
    def __init__(self, status: _Optional[int] = ..., body_length: _Optional[int] = ..., title: _Optional[str] = ..., header_names: _Optional[_Iterable[str]] = ..., error: _Optional[str] = ..., body_truncated: _Optional[bool] = ...) -> None: ...

class PathEvidence(_message.Message):
    __slots__ = ("available", "unavailable_reason", "destination", "protocol", "hops", "reached")
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    UNAVAILABLE_REASON_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    HOPS_FIELD_NUMBER: _ClassVar[int]
    REACHED_FIELD_NUMBER: _ClassVar[int]
    available: bool
    unavailable_reason: str
    destination: str
    protocol: str
    hops: _containers.RepeatedCompositeFieldContainer[Hop]
    reached: bool
    def __init__(self, available: _Optional[bool] = ..., unavailable_reason: _Optional[str] = ..., destination: _Optional[str] = ..., protocol: _Optional[str] = ..., hops: _Optional[_Iterable[_Union[Hop, _Mapping]]] = ..., reached: _Optional[bool] = ...) -> None: ...

class Hop(_message.Message):
    __slots__ = ("ttl", "address", "rtt_seconds")
    TTL_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    RTT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ttl: int
    address: str
    rtt_seconds: float
    def __init__(self, ttl: _Optional[int] = ..., address: _Optional[str] = ..., rtt_seconds: _Optional[float] = ...) -> None: ...

class EvidenceRequest(_message.Message):
    __slots__ = ("check", "path")
    CHECK_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    check: str
    path: bool
    def __init__(self, check: _Optional[str] = ..., path: _Optional[bool] = ...) -> None: ...

class EvidenceReport(_message.Message):
    __slots__ = ("check", "evidence", "recovered")
    CHECK_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    RECOVERED_FIELD_NUMBER: _ClassVar[int]
    check: str
    evidence: Evidence
    recovered: bool
    def __init__(self, check: _Optional[str] = ..., evidence: _Optional[_Union[Evidence, _Mapping]] = ..., recovered: _Optional[bool] = ...) -> None: ...

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
    __slots__ = ("seq", "first_seq", "last_seq", "more")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEQ_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    seq: int
    first_seq: int
    last_seq: int
    more: _containers.RepeatedCompositeFieldContainer[AckedBatch]
    def __init__(self, seq: _Optional[int] = ..., first_seq: _Optional[int] = ..., last_seq: _Optional[int] = ..., more: _Optional[_Iterable[_Union[AckedBatch, _Mapping]]] = ...) -> None: ...

class AckedBatch(_message.Message):
    __slots__ = ("first_seq", "last_seq")
    FIRST_SEQ_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    first_seq: int
    last_seq: int
    def __init__(self, first_seq: _Optional[int] = ..., last_seq: _Optional[int] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("timestamp", "echo_timestamp", "echo_held_seconds", "ack_now")
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    ECHO_TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    ECHO_HELD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ACK_NOW_FIELD_NUMBER: _ClassVar[int]
    timestamp: float
    echo_timestamp: float
    echo_held_seconds: float
    ack_now: bool
    def __init__(self, timestamp: _Optional[float] = ..., echo_timestamp: _Optional[float] = ..., echo_held_seconds: _Optional[float] = ..., ack_now: _Optional[bool] = ...) -> None: ...
