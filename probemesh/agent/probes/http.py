"""HTTP(S) probe with blackbox_exporter's phases, summed over redirects.

Each hop runs on a fresh socket that this module times itself, giving exact
phase boundaries (resolve, connect, tls, processing, transfer). Over TLS the
probe offers ALPN ``h2`` unless ``enable_http2: false``, and speaks HTTP/2
(``http2``) when the server picks it, HTTP/1.1 (``httpwire``) otherwise, as
Go's transport does; plain http:// is always HTTP/1.1 (no h2c, like Go).

Blackbox behaviours kept on purpose: every base gauge is emitted even when the
probe fails early (status code 0 and so on); checks run in blackbox's order
(status, header regexes, body regexes, body read, HTTP version, SSL); redirects
follow Go's net/http rules (method and body, sensitive headers, Host, Referer);
bearer_token and basic_auth are added to every request, redirected ones
included, as Prometheus' round trippers do; TLS metrics describe the final
response only.
"""

from __future__ import annotations

import asyncio
import base64
import time
from urllib.parse import urljoin, urlsplit

from probemesh.agent.probes.cookies import CookieJar
from probemesh.agent.probes.http2 import exchange_h2
from probemesh.agent.probes.httpwire import MAX_HEADER_BYTES, Request, Response, exchange_h1
from probemesh.agent.probes.net import ProbeEnv, connect, probe_context, record_tls, resolve
from probemesh.agent.probes.result import ProbeFailure, ProbeResult, Reason
from probemesh.agent.probes.tlsconn import TLSConnection
from probemesh.agent.secrets import SecretFiles
from probemesh.errors import ConfigError
from probemesh.modules import HTTPSettings
from probemesh.targets import parse_http_url

MAX_REDIRECTS = 10
_REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
_VERSIONS = {"HTTP/1.0": 1.0, "HTTP/1.1": 1.1, "HTTP/2.0": 2.0}
# Go drops these on a redirect to another host (shouldCopyHeaderOnRedirect).
_SENSITIVE = frozenset({"authorization", "www-authenticate", "cookie", "cookie2"})
_ALPN_H2 = ("h2", "http/1.1")
USER_AGENT = "probemesh"


async def probe(target: str, settings: HTTPSettings, env: ProbeEnv, result: ProbeResult) -> None:
    """Probe target, filling result with blackbox samples and at most one failure reason."""
    phases = dict.fromkeys(("resolve", "connect", "tls", "processing", "transfer"), 0.0)
    redirects = 0
    hop: list[Response] = []  # the current hop's response, once its head arrived
    completed = False
    try:
        request = _first_request(target, settings)
        auth = _authorization(settings, env.secrets)
        first_host = request.url.host
        jar = CookieJar()
        while True:
            hop.clear()
            await _round_trip(
                request, auth, jar, settings, env, result, phases, first_host, redirects == 0, hop
            )
            set_cookies = [v for k, v in hop[0].headers if k.lower() == "set-cookie"]
            if set_cookies:
                jar.store(request.url, set_cookies)
            location = hop[0].header("location")
            if hop[0].status not in _REDIRECT_CODES or location is None:
                break
            # Go's CheckRedirect counts the redirect even when it refuses it.
            redirects += 1
            if not settings.follows_redirects or redirects > MAX_REDIRECTS:
                break
            request = _redirected(request, hop[0].status, location, jar.names())
        completed = True
    finally:
        _record(hop[0] if hop else None, redirects, phases, result)
        if not completed:
            result.add("probe_failed_due_to_regex", 0)
    _validate(hop[0], settings, result)


def _first_request(target: str, settings: HTTPSettings) -> Request:
    """The first hop: user headers replace defaults; a Host header sets the Host."""
    try:
        url = parse_http_url(target)
    except ConfigError as exc:
        raise ProbeFailure(Reason.OTHER, str(exc)) from None
    headers = {"user-agent": ("User-Agent", USER_AGENT)}
    host = url.authority
    for key, value in settings.headers.items():
        name = _canonical(key)
        if name == "Host":
            host = value
        else:
            headers[name.lower()] = (name, value)
    body = settings.body.encode()
    return Request(url, target, settings.method, body, tuple(headers.values()), host)


def _canonical(name: str) -> str:
    """Go's CanonicalHeaderKey: "x-custom-header" -> "X-Custom-Header"."""
    if not name.isascii() or any(c in name for c in " :\r\n"):
        return name
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


def _redirected(request: Request, status: int, location: str, jar_names: set[str]) -> Request:
    """The next hop after a redirect, built by Go's net/http rules.

    301/302/303 turn into GET without a body (HEAD stays HEAD). Authorization,
    Cookie and the other sensitive headers from ``headers:`` are dropped once a
    redirect leaves the host (and stay dropped). A custom Host header follows
    only relative redirects. Referer names the previous URL, except from https
    to http. Cookies from ``headers:`` that a response has set since are left to
    the jar, as Go does.
    """
    # Go reads header values as UTF-8; the head was decoded as latin-1.
    location = location.encode("latin-1").decode("utf-8", "replace")
    text = urljoin(request.text, location)
    try:
        url = parse_http_url(text)
    except ConfigError as exc:
        raise ProbeFailure(Reason.OTHER, f"cannot follow redirect: {exc}") from None
    method, body = request.method, request.body
    if status in (301, 302, 303):
        body = b""
        if method != "HEAD":
            method = "GET"
    same_site = _is_domain_or_subdomain(url.origin.lower(), request.url.origin.lower())
    headers = [
        (name, value)
        for name, value in request.headers
        if name.lower() != "referer" and (same_site or name.lower() not in _SENSITIVE)
    ]
    if jar_names:
        headers = [_without_cookies(h, jar_names) if h[0] == "Cookie" else h for h in headers]
        headers = [h for h in headers if h[1] or h[0] != "Cookie"]
    if not (request.url.is_tls and not url.is_tls):
        parts = urlsplit(request.text)
        referer = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
        headers.append(("Referer", referer))
    custom_host = request.host != request.url.authority
    relative = not urlsplit(location).scheme
    host = request.host if custom_host and relative else url.authority
    return Request(url, text, method, body, tuple(headers), host)


def _without_cookies(header: tuple[str, str], names: set[str]) -> tuple[str, str]:
    pairs = [p.strip() for p in header[1].split(";")]
    return header[0], "; ".join(p for p in pairs if p and p.split("=", 1)[0] not in names)


def _is_domain_or_subdomain(sub: str, parent: str) -> bool:
    return sub == parent or sub.endswith("." + parent)


def _authorization(settings: HTTPSettings, secrets: SecretFiles) -> str:
    """The Authorization value from basic_auth or bearer_token; files are re-read each probe."""
    if settings.basic_auth:
        auth = settings.basic_auth
        password = auth.password
        if auth.password_file:
            password = secrets.read_text("basic_auth.password_file", auth.password_file)
        pair = f"{auth.username}:{password}".encode()
        return "Basic " + base64.b64encode(pair).decode()
    token = settings.bearer_token
    if settings.bearer_token_file:
        token = secrets.read_text("bearer_token_file", settings.bearer_token_file)
    return f"Bearer {token}" if token else ""


def _record(
    response: Response | None, redirects: int, phases: dict[str, float], result: ProbeResult
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
    result.add("probe_http_content_length", response.content_length)
    result.add("probe_http_uncompressed_body_length", response.body_length)
    result.add("probe_http_version", _VERSIONS.get(response.version, 0.0))


def _validate(response: Response, settings: HTTPSettings, result: ProbeResult) -> None:
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
    elif settings.valid_http_versions and response.version not in settings.valid_http_versions:
        result.fail(Reason.VALIDATION, f"HTTP version {response.version} is not valid")
    elif settings.fail_if_ssl and response.tls_samples:
        result.fail(Reason.VALIDATION, "final response used TLS and fail_if_ssl is set")
    elif settings.fail_if_not_ssl and not response.tls_samples:
        result.fail(Reason.VALIDATION, "final response was not TLS and fail_if_not_ssl is set")
    else:
        result.success = True


def _regex_failure(response: Response, settings: HTTPSettings) -> str:
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
    request: Request,
    auth: str,
    jar: CookieJar,
    settings: HTTPSettings,
    env: ProbeEnv,
    result: ProbeResult,
    phases: dict[str, float],
    first_host: str,
    first: bool,
    hop: list[Response],
) -> None:
    """One request on a fresh connection; adds this hop's time to each phase."""
    url = request.url
    headers = request.headers
    if auth and not any(name.lower() == "authorization" for name, _ in headers):
        # Prometheus' round trippers add credentials unless the request has some.
        headers = (*headers, ("Authorization", auth))
    if jar.cookies and (cookies := jar.header_value(url)):
        # Go's client appends the jar's cookies to any Cookie header given.
        given = [value for name, value in headers if name == "Cookie"]
        headers = tuple(h for h in headers if h[0] != "Cookie")
        headers = (*headers, ("Cookie", "; ".join([*given, cookies])))
    if headers is not request.headers:
        request = Request(url, request.text, request.method, request.body, headers, request.host)
    start = time.perf_counter()
    # blackbox reports the resolve metrics of the first hop only.
    scratch = result if first else ProbeResult()
    resolved = await resolve(
        url.host, settings.preferred_ip_protocol, settings.ip_protocol_fallback, env, scratch
    )
    resolved_at = time.perf_counter()
    phases["resolve"] += resolved_at - start
    sock = await connect(resolved, url.port, env)
    connected_at = time.perf_counter()
    phases["connect"] += connected_at - resolved_at
    ready_at = connected_at
    first_byte: list[float] = []
    tls: TLSConnection | None = None
    writer: asyncio.StreamWriter | None = None
    try:
        tls_samples: list = []
        if url.is_tls:
            # Like blackbox, server_name applies to the target's host only.
            name = settings.tls_config.server_name if url.host == first_host else ""
            alpn = _ALPN_H2 if settings.enable_http2 else ()
            context = probe_context(settings.tls_config, env.secrets, alpn)
            tls = TLSConnection(sock, context, name or url.host)
            await tls.handshake()
            ready_at = time.perf_counter()
            phases["tls"] += ready_at - connected_at
            sink = ProbeResult()
            record_tls(tls.peer(), sink)
            tls_samples = sink.samples
            if tls.alpn == "h2":
                await exchange_h2(tls, request, settings, tls_samples, hop.append, first_byte)
            else:
                reader = tls.stream_reader(MAX_HEADER_BYTES + 1)
                await exchange_h1(
                    reader, tls, request, settings, tls_samples, hop.append, first_byte
                )
        else:
            reader, writer = await asyncio.open_connection(sock=sock, limit=MAX_HEADER_BYTES + 1)
            await exchange_h1(
                reader, writer, request, settings, tls_samples, hop.append, first_byte
            )
    finally:
        # Like Go's trace: a response that started counts its processing and
        # transfer time even when reading it failed.
        if first_byte:
            phases["processing"] += first_byte[0] - ready_at
            phases["transfer"] += time.perf_counter() - first_byte[0]
        if tls is not None:
            tls.close()
        elif writer is not None:
            writer.transport.abort()
        else:
            sock.close()
