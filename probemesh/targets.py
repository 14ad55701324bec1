"""Target syntax per prober, shared by load-time validation and the probes.

http/https: a URL. tcp, tls, grpc: host:port. dns: a server, host[:port]
(port 53 by default). icmp: a host. IPv6 literals use brackets: [::1]:443.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

import idna

from probemesh.errors import ConfigError

# Characters Go's url.URL keeps unescaped in a path it re-encodes (encodePath).
_PATH_SAFE = "/;,:=@&$+-_.~"
# A path Go sends as written: printable ASCII, valid escapes, no space or quote-like bytes.
_VALID_RAW_PATH = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/\[\]]|%[0-9A-Fa-f]{2})*")


@dataclass(frozen=True)
class HttpURL:
    """An http(s) URL as Go's net/http puts it on the wire.

    ``host`` is the ASCII (punycode) name to resolve and verify, ``authority``
    the Host header value, ``request_target`` the escaped path plus the query.
    """

    scheme: str
    host: str
    port: int
    authority: str
    request_target: str

    @property
    def is_tls(self) -> bool:
        return self.scheme == "https"

    @property
    def origin(self) -> str:
        """host:port, the unit Go compares when deciding to forward credentials."""
        return f"{self.host}:{self.port}"


def ascii_host(host: str, where: str) -> str:
    """The host as sent on the wire: IDNA 2008 with UTS 46 mapping for non-ASCII names.

    ASCII names pass unchanged, as in Go, which converts only non-ASCII hosts.
    """
    if host.isascii():
        return host
    try:
        return idna.encode(host, uts46=True).decode("ascii")
    except idna.IDNAError as exc:
        raise ConfigError(
            f"{where}: host {host!r} is not a valid internationalised name: {exc}"
        ) from None


@functools.lru_cache(maxsize=4096)
def parse_http_url(url: str) -> HttpURL:
    """Validate and encode an http(s) URL; ConfigError names the problem.

    Cached: every probe of a check parses the same target (IDNA, escaping), and
    the result is immutable.

    The path is percent-encoded like Go's ``URL.EscapedPath``: kept as written
    when it is validly encoded ASCII, otherwise decoded and re-encoded (so
    non-ASCII becomes UTF-8 escapes). The query goes out as written, as in Go.
    """
    where = f"target {url!r}"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise ConfigError(f"{where}: control character in URL")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{where}: expected an http:// or https:// URL")
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"{where}: port out of range 1-65535") from None
    netloc = parts.netloc.rpartition("@")[2]
    literal = netloc.startswith("[")
    # urlsplit lower-cases hostname; Go sends the name as written.
    written = netloc[1 : netloc.index("]")] if literal else netloc.partition(":")[0]
    host = ascii_host(written, where)
    authority = f"[{host}]" if literal else host
    if port is not None:
        authority += f":{port}"
    path = parts.path or "/"
    if not _VALID_RAW_PATH.fullmatch(path):
        path = quote(unquote(path), safe=_PATH_SAFE)
    if parts.query or url.split("#", 1)[0].endswith("?"):
        path += "?" + parts.query
    default = 443 if parts.scheme == "https" else 80
    return HttpURL(parts.scheme, host, port or default, authority, path)


def split_host_port(target: str, default_port: int | None = None) -> tuple[str, int]:
    """Split "host:port" / "[v6]:port"; raise ConfigError naming the problem."""
    host, sep, port_text = target.rpartition(":")
    if target.startswith("[") and "]" in target:
        close = target.index("]")
        host = target[1:close]
        rest = target[close + 1 :]
        sep, port_text = (":", rest[1:]) if rest.startswith(":") else ("", "")
    elif not sep or ":" in host:  # no port, or a bare IPv6 literal
        host, port_text = target, ""
    if not host:
        raise ConfigError(f"target {target!r}: missing host")
    if not port_text:
        if default_port is None:
            raise ConfigError(f"target {target!r}: missing port (use host:port)")
        return host, default_port
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ConfigError(f"target {target!r}: port {port_text!r} out of range 1-65535")
    return host, int(port_text)


def target_host(prober: str, target: str) -> str:
    """The host a probe will resolve, after validating the target for its prober."""
    if prober == "http":
        return parse_http_url(target).host
    if prober == "icmp":
        if not target or "/" in target or " " in target:
            raise ConfigError(f"target {target!r}: expected a host name or IP address")
        return target.strip("[]")
    if prober == "dns":
        return split_host_port(target, 53)[0]
    return split_host_port(target)[0]
