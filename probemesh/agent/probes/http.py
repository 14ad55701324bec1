"""HTTP(S) probe with blackbox_exporter's phases, summed over redirects.

A small HTTP/1.1 client on a fresh socket per hop gives exact phase boundaries
(resolve, connect, tls, processing, transfer) at a fraction of a general-purpose
client's CPU. HTTP/2 is not spoken; see docs/probes.md.
"""

from __future__ import annotations

import asyncio
import re
import time
import zlib
from urllib.parse import urljoin, urlsplit

from probemesh.agent.probes.net import ProbeEnv, client_context, connect, record_tls, resolve
from probemesh.agent.probes.result import ProbeFailure, ProbeResult, Reason
from probemesh.modules import HTTPSettings

MAX_REDIRECTS = 10
MAX_BODY_BYTES = 10 * 1024 * 1024
_REDIRECT_CODES = {301, 302, 303, 307, 308}
_VERSIONS = {"HTTP/1.0": 1.0, "HTTP/1.1": 1.1}
USER_AGENT = "probemesh"


class _Response:
    """The parts of a response the checks need."""

    def __init__(self, version: str, status: int, headers: list[tuple[str, str]], body: bytes):
        self.version = version
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name: str) -> str | None:
        lname = name.lower()
        for key, value in self.headers:
            if key.lower() == lname:
                return value
        return None


async def probe(target: str, settings: HTTPSettings, env: ProbeEnv, result: ProbeResult) -> None:
    """Probe target, filling result with blackbox samples and at most one failure reason."""
    phases = dict.fromkeys(("resolve", "connect", "tls", "processing", "transfer"), 0.0)
    url, method, body = target, settings.method, settings.body
    redirects = 0
    response: _Response | None = None
    is_tls = False
    try:
        while True:
            response, is_tls = await _round_trip(url, method, body, settings, env, result, phases, redirects == 0)
            location = response.header("location")
            if response.status in _REDIRECT_CODES and location and settings.follows_redirects:
                redirects += 1
                if redirects > MAX_REDIRECTS:
                    raise ProbeFailure(Reason.OTHER, f"stopped after {MAX_REDIRECTS} redirects")
                url = urljoin(url, location)
                if response.status == 303 or (response.status in (301, 302) and method == "POST"):
                    method, body = "GET", ""
                continue
            break
    finally:
        for phase, seconds in phases.items():
            result.add("probe_http_duration_seconds", seconds, phase=phase)
        result.add("probe_http_redirects", redirects)
        if response is not None:
            _record_response(response, is_tls, result)
    _validate(response, is_tls, settings, result)


def _record_response(response: _Response, is_tls: bool, result: ProbeResult) -> None:
    result.add("probe_http_status_code", response.status)
    length = response.header("content-length")
    result.add("probe_http_content_length", int(length) if length and length.isdigit() else -1)
    result.add("probe_http_uncompressed_body_length", len(response.body))
    result.add("probe_http_version", _VERSIONS.get(response.version, 0.0))
    result.add("probe_http_ssl", 1 if is_tls else 0)


def _validate(response: _Response | None, is_tls: bool, settings: HTTPSettings, result: ProbeResult) -> None:
    """Apply blackbox's response checks in its order; the first failure wins."""
    assert response is not None
    valid = settings.valid_status_codes
    if (response.status not in valid) if valid else not 200 <= response.status < 300:
        result.fail(Reason.HTTP_STATUS, f"HTTP status {response.status} is not valid")
        return
    if settings.valid_http_versions:
        allowed = {v.replace("HTTP/2", "HTTP/2.0").replace("2.0.0", "2.0") for v in settings.valid_http_versions}
        if response.version not in allowed:
            result.fail(Reason.VALIDATION, f"HTTP version {response.version} is not valid")
            return
    if settings.fail_if_ssl and is_tls:
        result.fail(Reason.VALIDATION, "final response used TLS and fail_if_ssl is set")
        return
    if settings.fail_if_not_ssl and not is_tls:
        result.fail(Reason.VALIDATION, "final response was not TLS and fail_if_not_ssl is set")
        return
    regex_failed = _regex_failure(response, settings)
    result.add("probe_failed_due_to_regex", 1 if regex_failed else 0)
    if regex_failed:
        result.fail(Reason.VALIDATION, regex_failed)
        return
    result.success = True


def _regex_failure(response: _Response, settings: HTTPSettings) -> str:
    """The first failing body/header regex rule, or an empty string."""
    text = response.body.decode("utf-8", "replace")
    for pattern in settings.fail_if_body_matches_regexp:
        if re.search(pattern, text):
            return f"body matched regexp {pattern!r}"
    for pattern in settings.fail_if_body_not_matches_regexp:
        if not re.search(pattern, text):
            return f"body did not match regexp {pattern!r}"
    for rule in settings.fail_if_header_matches:
        value = response.header(rule.header)
        if value is not None and re.search(rule.regexp, value):
            return f"header {rule.header} matched regexp {rule.regexp!r}"
    for rule in settings.fail_if_header_not_matches:
        value = response.header(rule.header)
        if value is None:
            if not rule.allow_missing:
                return f"header {rule.header} is missing"
        elif not re.search(rule.regexp, value):
            return f"header {rule.header} did not match regexp {rule.regexp!r}"
    return ""


async def _round_trip(
    url: str,
    method: str,
    body: str,
    settings: HTTPSettings,
    env: ProbeEnv,
    result: ProbeResult,
    phases: dict[str, float],
    first: bool,
) -> tuple[_Response, bool]:
    """One request on a fresh connection; adds this hop's time to each phase."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ProbeFailure(Reason.OTHER, f"cannot follow redirect to {url!r}")
    is_tls = parts.scheme == "https"
    host = parts.hostname
    port = parts.port or (443 if is_tls else 80)
    start = time.perf_counter()
    scratch = result if first else ProbeResult()
    resolved = await resolve(host, settings.preferred_ip_protocol, settings.ip_protocol_fallback, env, scratch)
    resolved_at = time.perf_counter()
    phases["resolve"] += resolved_at - start
    sock = await connect(resolved, port, env)
    connected_at = time.perf_counter()
    phases["connect"] += connected_at - resolved_at
    reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 16)
    try:
        ready_at = connected_at
        if is_tls:
            server_name = settings.tls_config.server_name or host
            await writer.start_tls(client_context(settings.tls_config), server_hostname=server_name)
            ready_at = time.perf_counter()
            phases["tls"] += ready_at - connected_at
            ssl_object = writer.get_extra_info("ssl_object")
            if ssl_object is not None:
                record_tls(ssl_object, result)
        writer.write(_request(method, parts, body, settings))
        status_line = await reader.readline()
        first_byte_at = time.perf_counter()
        phases["processing"] += first_byte_at - ready_at
        response = await _read_response(status_line, reader, method, settings.compression)
        phases["transfer"] += time.perf_counter() - first_byte_at
        return response, is_tls
    finally:
        writer.transport.abort()


def _request(method: str, parts, body: str, settings: HTTPSettings) -> bytes:  # type: ignore[no-untyped-def]
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    headers = {"Host": parts.netloc.rsplit("@", 1)[-1], "User-Agent": USER_AGENT, "Connection": "close"}
    if settings.compression:
        headers["Accept-Encoding"] = settings.compression
    headers.update(settings.headers)
    payload = body.encode()
    if payload or method in ("POST", "PUT", "PATCH"):
        headers["Content-Length"] = str(len(payload))
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return head.encode("latin-1") + b"\r\n" + payload


async def _read_response(
    status_line: bytes, reader: asyncio.StreamReader, method: str, compression: str
) -> _Response:
    parts = status_line.decode("latin-1").rstrip("\r\n").split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise ProbeFailure(Reason.OTHER, f"malformed HTTP status line {status_line[:80]!r}")
    version, status = parts[0], int(parts[1])
    headers: list[tuple[str, str]] = []
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers.append((name.strip(), value.strip()))
    response = _Response(version, status, headers, b"")
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        return response
    encoding = (response.header("transfer-encoding") or "").lower()
    length = response.header("content-length")
    if "chunked" in encoding:
        body = await _read_chunked(reader)
    elif length is not None and length.isdigit():
        if int(length) > MAX_BODY_BYTES:
            raise ProbeFailure(Reason.OTHER, f"response body larger than {MAX_BODY_BYTES} bytes")
        body = await reader.readexactly(int(length))
    else:
        body = await reader.read(MAX_BODY_BYTES)
    content_encoding = (response.header("content-encoding") or "").lower()
    if compression and content_encoding in ("gzip", "deflate"):
        try:
            body = zlib.decompress(body, 16 + zlib.MAX_WBITS if content_encoding == "gzip" else zlib.MAX_WBITS)
        except zlib.error as exc:
            raise ProbeFailure(Reason.VALIDATION, f"cannot decompress body: {exc}") from None
    response.body = body
    return response


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while True:
        size_line = await reader.readline()
        try:
            size = int(size_line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise ProbeFailure(Reason.OTHER, "malformed chunked encoding") from None
        if size == 0:
            await reader.readline()
            return b"".join(chunks)
        total += size
        if total > MAX_BODY_BYTES:
            raise ProbeFailure(Reason.OTHER, f"response body larger than {MAX_BODY_BYTES} bytes")
        chunks.append(await reader.readexactly(size))
        await reader.readline()
