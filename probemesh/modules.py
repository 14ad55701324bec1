"""blackbox_exporter module syntax: one settings dataclass per prober, validated at load.

A user's ``blackbox.yml`` modules load unchanged. Unknown fields are errors that
name the module and the field; regexes are compiled here, once, so the probe hot
path never parses anything. The agent rebuilds the same dataclasses from the
JSON the collector sends (``Check.settings_json``), through the same validation.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from probemesh.durations import parse_duration
from probemesh.errors import ConfigError, ModuleError
from probemesh.strict import build

IP_PROTOCOLS = ("ip4", "ip6")
TLS_VERSIONS = ("TLS10", "TLS11", "TLS12", "TLS13")


def _compile_all(patterns: tuple[str, ...], where: str) -> None:
    for i, pattern in enumerate(patterns):
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ConfigError(f"{where}[{i}]: invalid regexp {pattern!r}: {exc}") from None


def _check_ip_protocol(value: str, where: str) -> None:
    if value not in IP_PROTOCOLS:
        raise ConfigError(f"{where}.preferred_ip_protocol: must be ip4 or ip6, got {value!r}")


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


@dataclass(frozen=True)
class HeaderMatch:
    """One fail_if_header_(not_)matches rule."""

    header: str
    regexp: str
    allow_missing: bool = False

    def validate(self, where: str) -> None:
        _compile_all((self.regexp,), f"{where}.regexp")


@dataclass(frozen=True)
class HTTPSettings:
    """The ``http`` section of a blackbox module."""

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
    preferred_ip_protocol: str = "ip6"
    ip_protocol_fallback: bool = True
    enable_http2: bool = True
    compression: str = ""

    def validate(self, where: str) -> None:
        for i, code in enumerate(self.valid_status_codes):
            if not 100 <= code <= 599:
                raise ConfigError(f"{where}.valid_status_codes[{i}]: {code} is not an HTTP status")
        for i, version in enumerate(self.valid_http_versions):
            if version not in ("HTTP/1.0", "HTTP/1.1", "HTTP/2.0", "HTTP/2"):
                raise ConfigError(f"{where}.valid_http_versions[{i}]: unknown version {version!r}")
        if not re.fullmatch(r"[A-Z]+", self.method):
            raise ConfigError(f"{where}.method: {self.method!r} is not an HTTP method")
        _compile_all(self.fail_if_body_matches_regexp, f"{where}.fail_if_body_matches_regexp")
        _compile_all(
            self.fail_if_body_not_matches_regexp, f"{where}.fail_if_body_not_matches_regexp"
        )
        _check_ip_protocol(self.preferred_ip_protocol, where)
        if self.compression not in ("", "identity", "gzip", "deflate"):
            raise ConfigError(f"{where}.compression: unsupported {self.compression!r}")

    @property
    def follows_redirects(self) -> bool:
        """blackbox honours the deprecated no_follow_redirects when it is set."""
        if self.no_follow_redirects is not None:
            return not self.no_follow_redirects
        return self.follow_redirects


@dataclass(frozen=True)
class QueryResponse:
    """One step of a tcp query_response dialogue."""

    expect: str = ""
    send: str = ""
    starttls: bool = False

    def validate(self, where: str) -> None:
        if self.expect:
            _compile_all((self.expect,), f"{where}.expect")


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


# Prober name -> (section key in the module, settings class). The probe suite
# registers every prober here; the agent has a matching probe function.
PROBER_SETTINGS: dict[str, tuple[str, type]] = {
    "http": ("http", HTTPSettings),
    "tcp": ("tcp", TCPSettings),
}


@dataclass(frozen=True)
class Module:
    """A validated blackbox module."""

    name: str
    prober: str
    timeout: float
    settings: Any

    def settings_json(self) -> str:
        """The prober section as JSON, for Check.settings_json."""
        return json.dumps(asdict(self.settings), sort_keys=True, separators=(",", ":"))


def parse_module(name: str, raw: object) -> Module:
    """Validate one blackbox module mapping; errors name the module and field."""
    where = f"module {name}"
    if not isinstance(raw, dict):
        raise ModuleError(f"{where}: expected a mapping")
    prober = raw.get("prober")
    if prober not in PROBER_SETTINGS:
        raise ModuleError(
            f"{where}.prober: unknown prober {prober!r} (known: {', '.join(sorted(PROBER_SETTINGS))})"
        )
    section, cls = PROBER_SETTINGS[prober]
    sections = {key for key, _ in PROBER_SETTINGS.values()}
    for key in raw:
        if key in ("prober", "timeout", section):
            continue
        if key in sections:
            raise ModuleError(f"{where}.{key}: section does not apply to prober {prober!r}")
        raise ModuleError(f"{where}: unknown field {key!r}")
    timeout = parse_duration(raw.get("timeout", "5s"), f"{where}.timeout")
    try:
        settings = build(cls, raw.get(section), f"{where}.{section}")
    except ModuleError:
        raise
    except ConfigError as exc:
        raise ModuleError(str(exc)) from None
    return Module(name=name, prober=prober, timeout=timeout, settings=settings)


def settings_from_json(prober: str, text: str) -> Any:
    """Rebuild a prober's settings from Check.settings_json (agent side)."""
    if prober not in PROBER_SETTINGS:
        raise ModuleError(f"unsupported prober {prober!r}")
    section, cls = PROBER_SETTINGS[prober]
    try:
        data = json.loads(text) if text else {}
    except json.JSONDecodeError as exc:
        raise ModuleError(f"{section}: settings are not JSON: {exc}") from None
    return build(cls, data, section)
