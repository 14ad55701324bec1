"""blackbox_exporter module syntax: one settings dataclass per prober, validated at load.

A user's ``blackbox.yml`` modules load unchanged. Unknown fields are errors that
name the module and the field; regexes are compiled here, once (``validate``
warms the ``cached_property`` that holds them), so the probe hot path never
parses anything. The agent rebuilds the same dataclasses from the JSON the
collector sends (``Check.settings_json``), through the same validation.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import PurePosixPath
from typing import Any

import dns.rcode
import dns.rdataclass
import dns.rdatatype

from probemesh.durations import parse_duration
from probemesh.errors import ConfigError, ModuleError
from probemesh.strict import build

IP_PROTOCOLS = ("ip4", "ip6")
TLS_VERSIONS = ("TLS10", "TLS11", "TLS12", "TLS13")
# Go's units.Base2Bytes suffixes, as blackbox's body_size_limit accepts them.
_SIZE_UNITS = {"": 1, "B": 1, "KB": 1 << 10, "KIB": 1 << 10, "MB": 1 << 20, "MIB": 1 << 20}
_SIZE_UNITS |= {"GB": 1 << 30, "GIB": 1 << 30}
# Settings that blackbox (through Prometheus' http_client_config) accepts but
# probemesh does not implement: a clear load error beats probing differently.
UNSUPPORTED_FIELDS: dict[str, tuple[str, ...]] = {
    "http": (
        "oauth2",
        "proxy_url",
        "no_proxy",
        "proxy_from_environment",
        "proxy_connect_header",
        "authorization",
        "body_file",
        "use_proxy_dns",
        "skip_resolve_phase_with_proxy",
    ),
}
MAX_ICMP_PACKETS = 100


def _compile_all(patterns: tuple[str, ...], where: str) -> tuple[re.Pattern[str], ...]:
    compiled = []
    for i, pattern in enumerate(patterns):
        try:
            compiled.append(re.compile(pattern))
        except re.error as exc:
            raise ConfigError(f"{where}[{i}]: invalid regexp {pattern!r}: {exc}") from None
    return tuple(compiled)


def _check_ip_protocol(value: str, where: str) -> None:
    if value not in IP_PROTOCOLS:
        raise ConfigError(f"{where}.preferred_ip_protocol: must be ip4 or ip6, got {value!r}")


def _check_source_ip(value: str, where: str) -> None:
    if value:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ConfigError(
                f"{where}.source_ip_address: {value!r} is not an IP address"
            ) from None


def file_name_problem(name: str) -> str:
    """Why name cannot name a file in an agent's --secrets-dir, or "" when it can.

    Pushed settings name files relative to that directory: the agent refuses
    absolute paths and ``..`` (and, when probing, symlinks leading out), so the
    collector refuses them at load too rather than shipping checks that fail.
    """
    if not name:
        return "is empty"
    if "\x00" in name:
        return "contains a NUL byte"
    path = PurePosixPath(name)
    if path.is_absolute():
        return "is an absolute path; name a file relative to the agent's --secrets-dir"
    if ".." in path.parts:
        return "climbs out with '..'; name a file inside the agent's --secrets-dir"
    return ""


def _check_file_name(value: str, where: str) -> None:
    if value:
        problem = file_name_problem(value)
        if problem:
            raise ConfigError(f"{where}: {value!r} {problem}")


def parse_size(value: str, where: str) -> int:
    """Bytes for a Go Base2Bytes size ("512KB", "1MiB", "1048576"); 0 means no limit."""
    match = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", value)
    unit = match.group(2).upper() if match else ""
    if not match or unit not in _SIZE_UNITS:
        raise ConfigError(f"{where}: invalid size {value!r} (use e.g. 1048576, 512KB, 1MiB)")
    return int(match.group(1)) * _SIZE_UNITS[unit]


@dataclass(frozen=True)
class TLSConfig:
    """blackbox/Prometheus tls_config."""

    insecure_skip_verify: bool = False
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    server_name: str = ""
    min_version: str = ""
    max_version: str = ""

    def validate(self, where: str) -> None:
        for name in ("min_version", "max_version"):
            value = getattr(self, name)
            if value and value not in TLS_VERSIONS:
                raise ConfigError(f"{where}.{name}: must be one of {', '.join(TLS_VERSIONS)}")
        if bool(self.cert_file) != bool(self.key_file):
            raise ConfigError(f"{where}: cert_file and key_file must be set together")
        for name in ("ca_file", "cert_file", "key_file"):
            _check_file_name(getattr(self, name), f"{where}.{name}")


@dataclass(frozen=True)
class BasicAuth:
    """http_client_config basic_auth; password_file is read at probe time (rotation)."""

    username: str = ""
    password: str = ""
    password_file: str = ""

    def validate(self, where: str) -> None:
        if self.password and self.password_file:
            raise ConfigError(f"{where}: at most one of password and password_file")
        _check_file_name(self.password_file, f"{where}.password_file")


@dataclass(frozen=True)
class HeaderMatch:
    """One fail_if_header_(not_)matches rule."""

    header: str
    regexp: str
    allow_missing: bool = False

    def validate(self, where: str) -> None:
        if not self.header:
            raise ConfigError(f"{where}.header: must be set")
        if not self.regexp:
            raise ConfigError(f"{where}.regexp: must be set")
        _compile_all((self.regexp,), f"{where}.regexp")

    @cached_property
    def pattern(self) -> re.Pattern[str]:
        return re.compile(self.regexp)


@dataclass(frozen=True)
class HTTPSettings:
    """The ``http`` section of a blackbox module (http_client_config inlined)."""

    valid_status_codes: tuple[int, ...] = ()
    valid_http_versions: tuple[str, ...] = ()
    method: str = "GET"
    headers: dict[str, str] = field(default_factory=dict)
    body: str = ""
    follow_redirects: bool = True
    no_follow_redirects: bool | None = None
    fail_if_ssl: bool = False
    fail_if_not_ssl: bool = False
    fail_if_body_matches_regexp: tuple[str, ...] = ()
    fail_if_body_not_matches_regexp: tuple[str, ...] = ()
    fail_if_header_matches: tuple[HeaderMatch, ...] = ()
    fail_if_header_not_matches: tuple[HeaderMatch, ...] = ()
    tls_config: TLSConfig = field(default_factory=TLSConfig)
    basic_auth: BasicAuth | None = None
    bearer_token: str = ""
    bearer_token_file: str = ""
    body_size_limit: str = ""
    preferred_ip_protocol: str = "ip6"
    ip_protocol_fallback: bool = True
    enable_http2: bool = True
    compression: str = ""

    def validate(self, where: str) -> None:
        for i, code in enumerate(self.valid_status_codes):
            if not 100 <= code <= 599:
                raise ConfigError(f"{where}.valid_status_codes[{i}]: {code} is not an HTTP status")
        for i, version in enumerate(self.valid_http_versions):
            if version not in ("HTTP/1.0", "HTTP/1.1", "HTTP/2.0"):
                # blackbox compares with Go's resp.Proto, so "HTTP/2" would never match.
                hint = ' (HTTP/2 responses report "HTTP/2.0")' if version == "HTTP/2" else ""
                raise ConfigError(
                    f"{where}.valid_http_versions[{i}]: unknown version {version!r}{hint}"
                )
        if not re.fullmatch(r"[A-Z]+", self.method):
            raise ConfigError(f"{where}.method: {self.method!r} is not an HTTP method")
        _compile_all(self.fail_if_body_matches_regexp, f"{where}.fail_if_body_matches_regexp")
        _compile_all(
            self.fail_if_body_not_matches_regexp, f"{where}.fail_if_body_not_matches_regexp"
        )
        _check_ip_protocol(self.preferred_ip_protocol, where)
        if self.compression not in ("", "identity", "gzip", "deflate"):
            raise ConfigError(f"{where}.compression: unsupported {self.compression!r}")
        if self.bearer_token and self.bearer_token_file:
            raise ConfigError(f"{where}: at most one of bearer_token and bearer_token_file")
        if self.basic_auth and (self.bearer_token or self.bearer_token_file):
            raise ConfigError(f"{where}: at most one of basic_auth and bearer_token")
        _check_file_name(self.bearer_token_file, f"{where}.bearer_token_file")
        if self.body_size_limit:
            parse_size(self.body_size_limit, f"{where}.body_size_limit")
        self.body_patterns  # noqa: B018 - compile once, at load

    @property
    def follows_redirects(self) -> bool:
        """blackbox honours the deprecated no_follow_redirects when it is set."""
        if self.no_follow_redirects is not None:
            return not self.no_follow_redirects
        return self.follow_redirects

    @cached_property
    def body_patterns(self) -> tuple[tuple[re.Pattern[str], ...], tuple[re.Pattern[str], ...]]:
        """(fail_if_body_matches, fail_if_body_not_matches), compiled."""
        return (
            _compile_all(self.fail_if_body_matches_regexp, "fail_if_body_matches_regexp"),
            _compile_all(self.fail_if_body_not_matches_regexp, "fail_if_body_not_matches_regexp"),
        )

    @cached_property
    def body_limit(self) -> int:
        """body_size_limit in bytes; 0 means no limit (the probe still caps memory)."""
        return parse_size(self.body_size_limit, "body_size_limit") if self.body_size_limit else 0


@dataclass(frozen=True)
class QueryResponse:
    """One step of a tcp query_response dialogue."""

    expect: str = ""
    send: str = ""
    starttls: bool = False

    def validate(self, where: str) -> None:
        if self.expect:
            _compile_all((self.expect,), f"{where}.expect")

    @cached_property
    def pattern(self) -> re.Pattern[str] | None:
        return re.compile(self.expect) if self.expect else None


@dataclass(frozen=True)
class TCPSettings:
    """The ``tcp`` section of a blackbox module."""

    query_response: tuple[QueryResponse, ...] = ()
    tls: bool = False
    tls_config: TLSConfig = field(default_factory=TLSConfig)
    preferred_ip_protocol: str = "ip6"
    ip_protocol_fallback: bool = True
    source_ip_address: str = ""

    def validate(self, where: str) -> None:
        _check_ip_protocol(self.preferred_ip_protocol, where)
        _check_source_ip(self.source_ip_address, where)


@dataclass(frozen=True)
class RRValidator:
    """validate_answer_rrs / validate_authority_rrs / validate_additional_rrs."""

    fail_if_matches_regexp: tuple[str, ...] = ()
    fail_if_all_match_regexp: tuple[str, ...] = ()
    fail_if_not_matches_regexp: tuple[str, ...] = ()
    fail_if_none_matches_regexp: tuple[str, ...] = ()

    def validate(self, where: str) -> None:
        for name in (
            "fail_if_matches_regexp",
            "fail_if_all_match_regexp",
            "fail_if_not_matches_regexp",
            "fail_if_none_matches_regexp",
        ):
            _compile_all(getattr(self, name), f"{where}.{name}")
        self.patterns  # noqa: B018 - compile once, at load

    @cached_property
    def patterns(self) -> tuple[tuple[re.Pattern[str], ...], ...]:
        """The four lists compiled, in field order."""
        return (
            _compile_all(self.fail_if_matches_regexp, ""),
            _compile_all(self.fail_if_all_match_regexp, ""),
            _compile_all(self.fail_if_not_matches_regexp, ""),
            _compile_all(self.fail_if_none_matches_regexp, ""),
        )


@dataclass(frozen=True)
class DNSSettings:
    """The ``dns`` section of a blackbox module; the target is the server to ask."""

    query_name: str = ""
    query_type: str = "ANY"
    query_class: str = "IN"
    valid_rcodes: tuple[str, ...] = ("NOERROR",)
    recursion_desired: bool = True
    transport_protocol: str = "udp"
    dns_over_tls: bool = False
    tls_config: TLSConfig = field(default_factory=TLSConfig)
    preferred_ip_protocol: str = "ip6"
    ip_protocol_fallback: bool = True
    source_ip_address: str = ""
    validate_answer_rrs: RRValidator = field(default_factory=RRValidator)
    validate_authority_rrs: RRValidator = field(default_factory=RRValidator)
    validate_additional_rrs: RRValidator = field(default_factory=RRValidator)

    def validate(self, where: str) -> None:
        if not self.query_name:
            raise ConfigError(f"{where}.query_name: must be set for a dns module")
        try:
            dns.rdatatype.from_text(self.query_type)
        except Exception:
            raise ConfigError(f"{where}.query_type: unknown type {self.query_type!r}") from None
        try:
            dns.rdataclass.from_text(self.query_class)
        except Exception:
            raise ConfigError(f"{where}.query_class: unknown class {self.query_class!r}") from None
        for i, rcode in enumerate(self.valid_rcodes):
            try:
                dns.rcode.from_text(rcode)
            except Exception:
                raise ConfigError(f"{where}.valid_rcodes[{i}]: unknown rcode {rcode!r}") from None
        if self.transport_protocol not in ("udp", "tcp"):
            raise ConfigError(f"{where}.transport_protocol: must be udp or tcp")
        if self.dns_over_tls and self.transport_protocol != "tcp":
            raise ConfigError(f"{where}.dns_over_tls: needs transport_protocol: tcp")
        _check_ip_protocol(self.preferred_ip_protocol, where)
        _check_source_ip(self.source_ip_address, where)

    @cached_property
    def rdtype(self) -> dns.rdatatype.RdataType:
        return dns.rdatatype.from_text(self.query_type)

    @cached_property
    def rdclass(self) -> dns.rdataclass.RdataClass:
        return dns.rdataclass.from_text(self.query_class)

    @cached_property
    def rcodes(self) -> frozenset[dns.rcode.Rcode]:
        return frozenset(dns.rcode.from_text(r) for r in self.valid_rcodes)


@dataclass(frozen=True)
class ICMPSettings:
    """The ``icmp`` section; ``packets`` and ``reply_timeout`` are probemesh's own.

    blackbox sends one request and waits for the module timeout.
    """

    preferred_ip_protocol: str = "ip6"
    ip_protocol_fallback: bool = True
    source_ip_address: str = ""
    payload_size: int = 0
    dont_fragment: bool = False
    ttl: int = 64
    packets: int = 3
    reply_timeout: str = "1s"

    def validate(self, where: str) -> None:
        parse_duration(self.reply_timeout, f"{where}.reply_timeout")
        _check_ip_protocol(self.preferred_ip_protocol, where)
        _check_source_ip(self.source_ip_address, where)
        if not 0 <= self.payload_size <= 65000:
            raise ConfigError(f"{where}.payload_size: must be 0-65000, got {self.payload_size}")
        if not 1 <= self.ttl <= 255:
            raise ConfigError(f"{where}.ttl: must be 1-255, got {self.ttl}")
        if not 1 <= self.packets <= MAX_ICMP_PACKETS:
            raise ConfigError(f"{where}.packets: must be 1-{MAX_ICMP_PACKETS}, got {self.packets}")

    @cached_property
    def reply_wait(self) -> float:
        """Seconds to wait for replies after the last request; later ones count as lost."""
        return parse_duration(self.reply_timeout, "reply_timeout")


@dataclass(frozen=True)
class GRPCSettings:
    """The ``grpc`` section: a grpc.health.v1 Check of ``service``."""

    service: str = ""
    tls: bool = False
    tls_config: TLSConfig = field(default_factory=TLSConfig)
    preferred_ip_protocol: str = "ip6"
    ip_protocol_fallback: bool = True

    def validate(self, where: str) -> None:
        _check_ip_protocol(self.preferred_ip_protocol, where)
        tls = self.tls_config
        for name in ("insecure_skip_verify", "min_version", "max_version"):
            if getattr(tls, name):
                raise ConfigError(
                    f"{where}.tls_config.{name}: not supported by probemesh's gRPC client"
                )


@dataclass(frozen=True)
class TLSSettings:
    """The ``tls`` section of probemesh's own tls prober: connect and handshake only."""

    tls_config: TLSConfig = field(default_factory=TLSConfig)
    preferred_ip_protocol: str = "ip6"
    ip_protocol_fallback: bool = True
    source_ip_address: str = ""

    def validate(self, where: str) -> None:
        _check_ip_protocol(self.preferred_ip_protocol, where)
        _check_source_ip(self.source_ip_address, where)


# Prober name -> (section key in the module, settings class). The probe suite
# registers every prober here; the agent has a matching probe function.
PROBER_SETTINGS: dict[str, tuple[str, type]] = {
    "http": ("http", HTTPSettings),
    "tcp": ("tcp", TCPSettings),
    "dns": ("dns", DNSSettings),
    "icmp": ("icmp", ICMPSettings),
    "grpc": ("grpc", GRPCSettings),
    "tls": ("tls", TLSSettings),
}


@dataclass(frozen=True)
class Module:
    """A validated blackbox module."""

    name: str
    prober: str
    timeout: float
    settings: Any

    @cached_property
    def file_settings(self) -> tuple[str, ...]:
        """The settings that name files (e.g. "tls_config.ca_file"), which an agent reads
        from its --secrets-dir. Computed once: every stream set-up asks for each check."""
        found: list[str] = []

        def walk(node: object, prefix: str) -> None:
            if isinstance(node, dict):
                for key, value in node.items():
                    if key.endswith("_file") and value:
                        found.append(prefix + key)
                    else:
                        walk(value, f"{prefix}{key}.")

        walk(asdict(self.settings), "")
        return tuple(found)

    def settings_json(self) -> str:
        """The prober section as JSON, for Check.settings_json."""
        return json.dumps(asdict(self.settings), sort_keys=True, separators=(",", ":"))


def parse_module(name: str, raw: object) -> Module:
    """Validate one blackbox module mapping; errors name the module and field."""
    where = f"module {name}"
    if not isinstance(raw, dict):
        raise ModuleError(f"{where}: expected a mapping")
    prober = raw.get("prober")
    if not isinstance(prober, str) or prober not in PROBER_SETTINGS:
        known = ", ".join(sorted(PROBER_SETTINGS))
        raise ModuleError(f"{where}.prober: unknown prober {prober!r} (known: {known})")
    section, cls = PROBER_SETTINGS[prober]
    sections = {key for key, _ in PROBER_SETTINGS.values()}
    for key in raw:
        if key in ("prober", "timeout", section):
            continue
        if key in sections:
            raise ModuleError(f"{where}.{key}: section does not apply to prober {prober!r}")
        raise ModuleError(f"{where}: unknown field {key!r}")
    try:
        timeout = parse_duration(raw.get("timeout", "5s"), f"{where}.timeout")
    except ConfigError as exc:
        raise ModuleError(str(exc)) from None
    body = raw.get(section)
    if isinstance(body, dict):
        for key in UNSUPPORTED_FIELDS.get(section, ()):
            if key in body:
                raise ModuleError(
                    f"{where}.{section}.{key}: blackbox option not supported by probemesh "
                    "(see docs/probes.md)"
                )
    try:
        settings: Any = build(cls, body, f"{where}.{section}")
    except ModuleError:
        raise
    except ConfigError as exc:
        raise ModuleError(str(exc)) from None
    return Module(name=name, prober=prober, timeout=timeout, settings=settings)


def settings_from_json(prober: str, text: str) -> Any:
    """Rebuild a prober's settings from Check.settings_json (agent side)."""
    if not isinstance(prober, str) or prober not in PROBER_SETTINGS:
        raise ModuleError(f"unsupported prober {prober!r}")
    section, cls = PROBER_SETTINGS[prober]
    try:
        data = json.loads(text) if text else {}
    except json.JSONDecodeError as exc:
        raise ModuleError(f"{section}: settings are not JSON: {exc}") from None
    return build(cls, data, section)
