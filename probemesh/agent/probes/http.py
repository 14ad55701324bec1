"""HTTP(S) probe with blackbox_exporter's phases, summed over redirects.

A small HTTP/1.1 client on a fresh socket per hop gives exact phase boundaries
(resolve, connect, tls, processing, transfer) at a fraction of a general-purpose
client's CPU. HTTP/2 is not spoken; see docs/probes.md.

Blackbox behaviours kept on purpose: every base gauge is emitted even when the
probe fails early (status code 0 and so on); checks run in blackbox's order
(status, header regexes, body regexes, body read, HTTP version, SSL); redirects
follow Go's net/http rules; TLS metrics describe the final response only.
"""

from __future__ import annotations

import asyncio
import base64
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import SplitResult, urljoin, urlsplit

from probemesh.agent.probes.net import ProbeEnv, client_context, connect, record_tls, resolve
from probemesh.agent.probes.result import ProbeFailure, ProbeResult, Reason
from probemesh.modules import HTTPSettings

MAX_REDIRECTS = 10
# Memory cap for bodies kept for regex matching; bodies are otherwise counted
# and dropped as they stream in, whatever their size.
MAX_KEPT_BODY = 10 * 1024 * 1024
_READ_SIZE = 1 << 16
_REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
_VERSIONS = {"HTTP/1.0": 1.0, "HTTP/1.1": 1.1}
USER_AGENT = "probemesh"


@dataclass
class _Response:
    """The parts of a response the checks need."""

    version: str
    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""
    body_length: int = 0
    tls_samples: list = field(default_factory=list)

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
    first_host = urlsplit(target).hostname
    redirects = 0
    hop: list[_Response] = []  # the current hop's response, once its headers arrived
    completed = False
    try:
        while True:
            hop.clear()
            await _round_trip(
                url, method, body, settings, env, result, phases, first_host, redirects == 0, hop
            )
            location = hop[0].header("location")
            if hop[0].status not in _REDIRECT_CODES or location is None:
                break
            # Go's CheckRedirect counts the redirect even when it refuses it.
            redirects += 1
            if not settings.follows_redirects or redirects > MAX_REDIRECTS:
                break
            url = urljoin(url, location)
            if hop[0].status in (301, 302, 303):
                body = ""
                if method not in ("GET", "HEAD"):
                    method = "GET"
        completed = True
    finally:
        _record(hop[0] if hop else None, redirects, phases, result)
        if not completed:
            result.add("probe_failed_due_to_regex", 0)
    _validate(hop[0], settings, result)


def _record(
    response: _Response | None, redirects: int, phases: dict[str, float], result: ProbeResult
) -> None:
    """Emit the gauges blackbox always registers, with zeros when there was no response."""
    for phase, seconds in phases.items():
        result.add("probe_http_duration_seconds", seconds, phase=phase)
    result.add("probe_http_redirects", redirects)
    is_tls = bool(response and response.tls_samples)
    result.add("probe_http_ssl", 1 if is_tls else 0)
    if response is None:
        for name in ("status_code", "content_length", "uncompressed_body_length", "version"):
            result.add(f"probe_http_{name}", 0)
        return
    result.samples.extend(response.tls_samples)
    result.add("probe_http_status_code", response.status)
    length = response.header("content-length")
    result.add("probe_http_content_length", int(length) if length and length.isdigit() else -1)
    result.add("probe_http_uncompressed_body_length", response.body_length)
    result.add("probe_http_version", _VERSIONS.get(response.version, 0.0))


def _validate(response: _Response, settings: HTTPSettings, result: ProbeResult) -> None:
    """Apply blackbox's response checks in its order; the first failure wins."""
    valid = settings.valid_status_codes
    status_ok = (response.status in valid) if valid else 200 <= response.status < 300
    # Like blackbox, regexes are only evaluated once the status passed.
    regex_failure = _regex_failure(response, settings) if status_ok else ""
    result.add("probe_failed_due_to_regex", 1 if regex_failure else 0)
    if not status_ok:
        result.fail(Reason.HTTP_STATUS, f"HTTP status {response.status} is not valid")
    elif regex_failure:
        result.fail(Reason.VALIDATION, regex_failure)
    elif settings.valid_http_versions and response.version not in {
        "HTTP/2.0" if v == "HTTP/2" else v for v in settings.valid_http_versions
    }:
        result.fail(Reason.VALIDATION, f"HTTP version {response.version} is not valid")
    elif settings.fail_if_ssl and response.tls_samples:
        result.fail(Reason.VALIDATION, "final response used TLS and fail_if_ssl is set")
    elif settings.fail_if_not_ssl and not response.tls_samples:
        result.fail(Reason.VALIDATION, "final response was not TLS and fail_if_not_ssl is set")
    else:
        result.success = True


def _regex_failure(response: _Response, settings: HTTPSettings) -> str:
    """The first failing header/body regex rule (blackbox order), or an empty string."""
    for rule in settings.fail_if_header_matches:
        value = response.header(rule.header)
        if value is not None and rule.pattern.search(value):
            return f"header {rule.header} matched regexp {rule.regexp!r}"
    for rule in settings.fail_if_header_not_matches:
        value = response.header(rule.header)
        if value is None:
            if not rule.allow_missing:
                return f"header {rule.header} is missing"
        elif not rule.pattern.search(value):
            return f"header {rule.header} did not match regexp {rule.regexp!r}"
    must_not, must = settings.body_patterns
    if not (must_not or must):
        return ""
    text = response.body.decode("utf-8", "replace")
    for pattern in must_not:
        if pattern.search(text):
            return f"body matched regexp {pattern.pattern!r}"
    for pattern in must:
        if not pattern.search(text):
            return f"body did not match regexp {pattern.pattern!r}"
    return ""


async def _round_trip(
    url: str,
    method: str,
    body: str,
    settings: HTTPSettings,
    env: ProbeEnv,
    result: ProbeResult,
    phases: dict[str, float],
    first_host: str | None,
    first: bool,
    hop: list[_Response],
) -> None:
    """One request on a fresh connection; adds this hop's time to each phase."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ProbeFailure(Reason.OTHER, f"cannot follow redirect to {url!r}")
    is_tls = parts.scheme == "https"
    host = parts.hostname
    port = parts.port or (443 if is_tls else 80)
    start = time.perf_counter()
    # blackbox reports the resolve metrics of the first hop only.
    scratch = result if first else ProbeResult()
    resolved = await resolve(
        host, settings.preferred_ip_protocol, settings.ip_protocol_fallback, env, scratch
    )
    resolved_at = time.perf_counter()
    phases["resolve"] += resolved_at - start
    sock = await connect(resolved, port, env)
    connected_at = time.perf_counter()
    phases["connect"] += connected_at - resolved_at
    reader, writer = await asyncio.open_connection(sock=sock, limit=_READ_SIZE)
    try:
        ready_at = connected_at
        tls_samples: list = []
        if is_tls:
            # Like blackbox, server_name applies to the target's host only.
            name = settings.tls_config.server_name if host == first_host else ""
            await writer.start_tls(
                client_context(settings.tls_config), server_hostname=name or host
            )
            ready_at = time.perf_counter()
            phases["tls"] += ready_at - connected_at
            sink = ProbeResult()
            record_tls(writer.get_extra_info("ssl_object"), sink)
            tls_samples = sink.samples
        writer.write(_request(method, parts, body, settings))
        status_line = await reader.readline()
        first_byte_at = time.perf_counter()
        phases["processing"] += first_byte_at - ready_at
        await _read_response(status_line, reader, method, settings, tls_samples, hop)
        phases["transfer"] += time.perf_counter() - first_byte_at
    finally:
        writer.transport.abort()


def _request(method: str, parts: SplitResult, body: str, settings: HTTPSettings) -> bytes:
    """Serialise the request; user headers replace defaults case-insensitively."""
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    headers = {
        "host": ("Host", parts.netloc.rsplit("@", 1)[-1]),
        "user-agent": ("User-Agent", USER_AGENT),
        "connection": ("Connection", "close"),
    }
    if settings.compression:
        headers["accept-encoding"] = ("Accept-Encoding", settings.compression)
    auth = _authorization(settings)
    if auth:
        headers["authorization"] = ("Authorization", auth)
    for key, value in settings.headers.items():
        headers[key.lower()] = (key, value)
    payload = body.encode()
    if payload or method in ("POST", "PUT", "PATCH"):
        headers["content-length"] = ("Content-Length", str(len(payload)))
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.values())
    return head.encode("latin-1") + b"\r\n" + payload


def _authorization(settings: HTTPSettings) -> str:
    """The Authorization value from basic_auth or bearer_token; files are re-read each probe."""
    if settings.basic_auth:
        auth = settings.basic_auth
        password = auth.password
        if auth.password_file:
            password = _read_secret(auth.password_file)
        pair = f"{auth.username}:{password}".encode()
        return "Basic " + base64.b64encode(pair).decode()
    token = settings.bearer_token
    if settings.bearer_token_file:
        token = _read_secret(settings.bearer_token_file)
    return f"Bearer {token}" if token else ""


def _read_secret(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise ProbeFailure(Reason.OTHER, f"cannot read {path}: {exc.strerror}") from None


async def _read_response(
    status_line: bytes,
    reader: asyncio.StreamReader,
    method: str,
    settings: HTTPSettings,
    tls_samples: list,
    hop: list[_Response],
) -> None:
    """Parse the response into hop[0] as soon as its headers are in, then read the body."""
    parts = status_line.decode("latin-1").rstrip("\r\n").split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        if not status_line and tls_samples:
            # TLS 1.3 servers reject a client certificate after the handshake, by closing.
            raise ProbeFailure(
                Reason.TLS,
                "server closed the TLS connection without a response "
                "(client certificate rejected?)",
            )
        if not status_line:
            raise ProbeFailure(Reason.CONNECT, "server closed the connection without a response")
        raise ProbeFailure(Reason.OTHER, f"malformed HTTP status line {status_line[:80]!r}")
    response = _Response(parts[0], int(parts[1]), [])
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        response.headers.append((name.strip(), value.strip()))
    response.tls_samples = tls_samples
    hop.append(response)
    status = response.status
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        return
    body = _BodySink(response, settings)
    encoding = (response.header("transfer-encoding") or "").lower()
    length = response.header("content-length")
    if "chunked" in encoding:
        await _read_chunked(reader, body)
    elif length is not None and length.isdigit():
        remaining = int(length)
        while remaining:
            data = await reader.read(min(remaining, _READ_SIZE))
            if not data:
                raise ProbeFailure(Reason.OTHER, "connection closed before the end of the body")
            remaining -= len(data)
            body.feed(data)
    else:
        while data := await reader.read(_READ_SIZE):
            body.feed(data)
    body.finish()


class _BodySink:
    """Counts (and decompresses) the body as it streams; keeps it only for regexes."""

    def __init__(self, response: _Response, settings: HTTPSettings) -> None:
        self.response = response
        self.limit = settings.body_limit
        must_not, must = settings.body_patterns
        self.keep = bool(must_not or must)
        self.chunks: list[bytes] = []
        content_encoding = (response.header("content-encoding") or "").lower()
        self.decoder = None
        if settings.compression and content_encoding in ("gzip", "deflate"):
            wbits = 16 + zlib.MAX_WBITS if content_encoding == "gzip" else zlib.MAX_WBITS
            self.decoder = zlib.decompressobj(wbits)

    def feed(self, data: bytes) -> None:
        if self.decoder is not None:
            try:
                data = self.decoder.decompress(data)
            except zlib.error as exc:
                raise ProbeFailure(Reason.VALIDATION, f"cannot decompress body: {exc}") from None
        self.response.body_length += len(data)
        if self.limit and self.response.body_length > self.limit:
            raise ProbeFailure(Reason.VALIDATION, f"body exceeds body_size_limit ({self.limit})")
        if self.keep:
            if self.response.body_length > MAX_KEPT_BODY:
                raise ProbeFailure(
                    Reason.OTHER, f"body larger than {MAX_KEPT_BODY} bytes; cannot match regexps"
                )
            self.chunks.append(data)

    def finish(self) -> None:
        if self.decoder is not None:
            self.feed(b"")
            tail = self.decoder.flush()
            self.decoder = None
            if tail:
                self.feed(tail)
        self.response.body = b"".join(self.chunks)


async def _read_chunked(reader: asyncio.StreamReader, body: _BodySink) -> None:
    while True:
        size_line = await reader.readline()
        try:
            size = int(size_line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise ProbeFailure(Reason.OTHER, "malformed chunked encoding") from None
        if size == 0:
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return
        while size:
            data = await reader.read(min(size, _READ_SIZE))
            if not data:
                raise ProbeFailure(Reason.OTHER, "connection closed inside a chunk")
            size -= len(data)
            body.feed(data)
        await reader.readline()
