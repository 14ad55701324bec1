"""HTTP client settings for what the collector posts out (Alertmanager, webhooks)."""

from __future__ import annotations

import math
import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from probemesh import __version__
from probemesh.errors import ConfigError

USER_AGENT = f"probemesh/{__version__}"


@dataclass(frozen=True)
class ClientSettings:
    """TLS trust, client certificate, credentials and timeout of one kind of receiver."""

    ca_file: Path | None = None  # verify the receiver against this bundle (default: system CAs)
    cert_file: Path | None = None  # client certificate for mutual TLS
    key_file: Path | None = None
    authorization: str | None = None  # Authorization header value
    timeout: float = 10.0

    def ssl_context(self) -> ssl.SSLContext:
        try:
            context = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
            if self.cert_file:
                context.load_cert_chain(
                    str(self.cert_file), str(self.key_file) if self.key_file else None
                )
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"TLS files for outgoing requests: {exc}") from None
        return context

    def session(self) -> aiohttp.ClientSession:
        headers = {"User-Agent": USER_AGENT}
        if self.authorization:
            headers["Authorization"] = self.authorization
        return aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            headers=headers,
            connector=aiohttp.TCPConnector(ssl=self.ssl_context()),
        )


def check_url(url: str, option: str) -> str:
    """An absolute http(s) URL with a host, else ConfigError naming the option."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{option}: {url!r} is not an http:// or https:// URL")
    return url


def redact(url: str) -> str:
    """The URL without user info, query or fragment: safe for logs and metric labels."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header in its delta-seconds form, else None."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None
