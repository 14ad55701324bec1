"""What one HTTP exchange sends and receives, and the HTTP/1.1 exchange itself.

The request and response types are shared by HTTP/1.1 (here) and HTTP/2
(``http2``), so the http probe's redirect and validation logic does not care
which protocol the server chose. Parsing follows Go's net/http, whose verdicts
blackbox_exporter reports: a malformed status line, header or length is a
failed probe with a reason that says what was wrong, never an exception.
"""

from __future__ import annotations

import asyncio
import re
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from probemesh.agent.probes.result import ProbeFailure, Reason
from probemesh.modules import HTTPSettings
from probemesh.targets import HttpURL

# Go's http.Transport default MaxResponseHeaderBytes.
MAX_HEADER_BYTES = 10 << 20
# Go gives up after this many 1xx responses before the final one.
MAX_INFORMATIONAL = 5
# Memory cap for bodies kept for regex matching; bodies are otherwise counted
# and dropped as they stream in, whatever their size.
MAX_KEPT_BODY = 10 * 1024 * 1024
READ_SIZE = 1 << 16
_STATUS_LINE = re.compile(rb"HTTP/(\d)\.(\d) (\d{3})(?: .*)?\r?\n", re.ASCII | re.DOTALL)
_DIGITS = re.compile(r"[0-9]+", re.ASCII)
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[^\r\n]*)?\r?\n")


@dataclass(frozen=True)
class Request:
    """One hop of a probe: the URL, method, body and headers to send (Host excluded)."""

    url: HttpURL
    text: str  # the URL as written, to resolve relative redirects against
    method: str
    body: bytes
    headers: tuple[tuple[str, str], ...]
    host: str  # the Host header (HTTP/1.1) or :authority (HTTP/2)


@dataclass
class Response:
    """The parts of a final response the checks need."""

    version: str
    status: int
    headers: list[tuple[str, str]]
    content_length: int = -1
    body: bytes = b""
    body_length: int = 0
    tls_samples: list = field(default_factory=list)

    def header(self, name: str) -> str | None:
        lname = name.lower()
        for key, value in self.headers:
            if key.lower() == lname:
                return value
        return None


def malformed(what: str) -> ProbeFailure:
    """The failure for a response that breaks the protocol."""
    return ProbeFailure(Reason.VALIDATION, f"malformed HTTP response: {what}")


def content_length(values: list[str]) -> int:
    """Go's parseContentLength over every Content-Length header: -1 when absent."""
    if not values:
        return -1
    first = values[0].strip()
    if any(v.strip() != first for v in values[1:]):
        raise malformed(f"conflicting Content-Length headers {values[:2]!r}")
    if not _DIGITS.fullmatch(first) or len(first) > 18:
        raise malformed(f"bad Content-Length {first[:40]!r}")
    return int(first)


class BodySink:
    """Counts (and, with ``compression``, decodes) the body as it streams.

    Like blackbox: with ``compression`` unset nothing is decoded, whatever the
    server's Content-Encoding; with it set the body is decoded with that
    algorithm (deflate meaning raw DEFLATE, as Go's flate reader), whatever
    the server says. ``body_size_limit`` bounds the bytes the checks read,
    decoded ones when decoding, and decoding works in bounded steps so a
    small body cannot balloon in memory.
    """

    def __init__(self, response: Response, settings: HTTPSettings) -> None:
        self.response = response
        self.limit = settings.body_limit
        must_not, must = settings.body_patterns
        self.keep = bool(must_not or must)
        self.chunks: list[bytes] = []
        self.decoder: zlib._Decompress | None = None
        self.compression = settings.compression
        if settings.compression == "gzip":
            self.decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif settings.compression == "deflate":
            self.decoder = zlib.decompressobj(-zlib.MAX_WBITS)

    def feed(self, data: bytes) -> None:
        if self.decoder is None:
            self._count(data)
            return
        while data:
            try:
                out = self.decoder.decompress(data, READ_SIZE)
            except zlib.error as exc:
                raise ProbeFailure(
                    Reason.VALIDATION, f"cannot decompress body ({self.compression}): {exc}"
                ) from None
            self._count(out)
            data = self.decoder.unconsumed_tail
            if self.decoder.eof:
                return  # Go's readers stop at the end of the stream

    def _count(self, data: bytes) -> None:
        response = self.response
        if self.limit and response.body_length + len(data) > self.limit:
            response.body_length = self.limit
            raise ProbeFailure(
                Reason.VALIDATION, f"body exceeds body_size_limit ({self.limit} bytes)"
            )
        response.body_length += len(data)
        if self.keep:
            if response.body_length > MAX_KEPT_BODY:
                raise ProbeFailure(
                    Reason.OTHER, f"body larger than {MAX_KEPT_BODY} bytes; cannot match regexps"
                )
            self.chunks.append(data)

    def finish(self) -> None:
        if self.decoder is not None and not self.decoder.eof:
            raise ProbeFailure(
                Reason.VALIDATION, f"cannot decompress body ({self.compression}): unexpected end"
            )
        self.response.body = b"".join(self.chunks)


def h1_request(request: Request) -> bytes:
    """Serialise an HTTP/1.1 request the way Go's transport does (Connection: close)."""
    head = [f"{request.method} {request.url.request_target} HTTP/1.1", f"Host: {request.host}"]
    head += [f"{name}: {value}" for name, value in request.headers]
    if request.body or request.method in ("POST", "PUT", "PATCH"):
        head.append(f"Content-Length: {len(request.body)}")
    head.append("Connection: close\r\n\r\n")
    return "\r\n".join(head).encode("utf-8") + request.body


class ByteWriter(Protocol):
    """Where a request goes: an asyncio StreamWriter, or the probe's TLS connection."""

    def write(self, data: bytes) -> None: ...


async def exchange_h1(
    reader: asyncio.StreamReader,
    writer: ByteWriter,
    request: Request,
    settings: HTTPSettings,
    tls_samples: list,
    on_response: Callable[[Response], None],
    first_byte: list[float],
) -> None:
    """Send request and read the response.

    The time the first response byte arrived is appended to first_byte.
    on_response gets the final response once its head is parsed, before the
    body is read, so a failure while reading the body keeps the status.
    """
    writer.write(h1_request(request))
    budget = MAX_HEADER_BYTES
    for _ in range(MAX_INFORMATIONAL + 1):
        line = await _line(reader, budget, "status line", _HEADERS_TOO_LONG)
        if not first_byte:
            first_byte.append(time.perf_counter())
        budget -= len(line)
        response, budget = await _head(line, reader, budget, bool(tls_samples))
        if not 100 <= response.status < 200 or response.status == 101:
            break
        budget = MAX_HEADER_BYTES  # 1xx responses are skipped, as in Go
    else:
        raise malformed(f"more than {MAX_INFORMATIONAL} 1xx responses")
    chunked = "chunked" in (response.header("transfer-encoding") or "").lower()
    lengths = [v for k, v in response.headers if k.lower() == "content-length"]
    length = -1 if chunked else content_length(lengths)
    response.content_length = length
    response.tls_samples = tls_samples
    on_response(response)
    status = response.status
    if request.method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        return
    body = BodySink(response, settings)
    if chunked:
        await _read_chunked(reader, body)
    elif length >= 0:
        remaining = length
        while remaining:
            data = await reader.read(min(remaining, READ_SIZE))
            if not data:
                raise ProbeFailure(Reason.CONNECT, "connection closed before the end of the body")
            remaining -= len(data)
            body.feed(data)
    else:
        while data := await reader.read(READ_SIZE):
            body.feed(data)
    body.finish()


_HEADERS_TOO_LONG = f"response headers exceed {MAX_HEADER_BYTES} bytes"


async def _line(reader: asyncio.StreamReader, budget: int, what: str, too_long: str) -> bytes:
    """One line, at most budget bytes; b"" at a clean end of stream."""
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return b""
        raise ProbeFailure(Reason.CONNECT, f"connection closed inside the {what}") from None
    except asyncio.LimitOverrunError:
        raise malformed(too_long) from None
    if len(line) > budget:
        raise malformed(too_long)
    return line


async def _head(
    status_line: bytes, reader: asyncio.StreamReader, budget: int, is_tls: bool
) -> tuple[Response, int]:
    """Parse a status line and its headers; returns the response and the header budget left."""
    match = _STATUS_LINE.fullmatch(status_line)
    if match is None:
        if not status_line and is_tls:
            # TLS 1.3 servers reject a client certificate after the handshake, by closing.
            raise ProbeFailure(
                Reason.TLS,
                "server closed the TLS connection without a response "
                "(client certificate rejected?)",
            )
        if not status_line:
            raise ProbeFailure(Reason.CONNECT, "server closed the connection without a response")
        raise malformed(f"bad status line {status_line[:80]!r}")
    major, minor, code = match.groups()
    response = Response(f"HTTP/{major.decode()}.{minor.decode()}", int(code), [])
    while True:
        line = await _line(reader, budget, "response headers", _HEADERS_TOO_LONG)
        budget -= len(line)
        if line in (b"\r\n", b"\n"):
            return response, budget
        if not line:
            raise ProbeFailure(Reason.CONNECT, "connection closed inside the response headers")
        name, colon, value = line.decode("latin-1").partition(":")
        if not colon or not name or name != name.strip():
            raise malformed(f"bad header line {line[:80]!r}")
        response.headers.append((name, value.strip()))


async def _read_chunked(reader: asyncio.StreamReader, body: BodySink) -> None:
    while True:
        size_line = await _line(reader, 4096, "chunked body", "chunk size line too long")
        match = _CHUNK_SIZE.fullmatch(size_line)
        if match is None:
            if not size_line:
                raise ProbeFailure(Reason.CONNECT, "connection closed inside the chunked body")
            raise malformed(f"bad chunk size line {size_line[:40]!r}")
        size = int(match.group(1), 16)
        if size == 0:
            while True:
                line = await _line(reader, MAX_HEADER_BYTES, "trailers", _HEADERS_TOO_LONG)
                if not line:
                    raise ProbeFailure(Reason.CONNECT, "connection closed inside the trailers")
                if line in (b"\r\n", b"\n"):
                    return
        while size:
            data = await reader.read(min(size, READ_SIZE))
            if not data:
                raise ProbeFailure(Reason.CONNECT, "connection closed inside a chunk")
            size -= len(data)
            body.feed(data)
        try:
            end = await reader.readexactly(1)
            if end == b"\r":
                end = await reader.readexactly(1)
        except asyncio.IncompleteReadError:
            raise ProbeFailure(
                Reason.CONNECT, "connection closed inside the chunked body"
            ) from None
        if end != b"\n":
            raise malformed("chunk data longer than its declared size")
