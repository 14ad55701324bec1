"""One log line per event an operator acts on: a stream opened, ended or refused.

Refusals repeat as fast as a misconfigured agent retries, so each agent (or,
before it is known, its token id or address) gets at most one refusal line a
minute, with a count of the ones left out.
"""

from __future__ import annotations

import logging
import time

import grpc

log = logging.getLogger("probemesh.collector.streams")

REFUSAL_LOG_EVERY = 60.0
_MAX_KEYS = 10_000  # bounded: hostile peers cannot grow the table forever


def transport(context: grpc.aio.ServicerContext) -> str:
    """plaintext, TLS or mTLS (TLS with a verified client certificate)."""
    auth = context.auth_context() or {}
    kind = b"".join(auth.get("transport_security_type", ()))
    if kind != b"ssl":
        return "plaintext"
    return "mTLS" if auth.get("x509_pem_cert") else "TLS"


def peer(context: grpc.aio.ServicerContext) -> str:
    """The peer's address without gRPC's scheme prefix: 127.0.0.1:40000, [::1]:40000."""
    address = context.peer() or "unknown"
    scheme, _, rest = address.partition(":")
    if scheme == "ipv4":
        return rest
    if scheme == "ipv6":
        host, _, port = rest.rpartition(":")
        return f"{host}:{port}" if host.startswith("[") else f"[{host}]:{port}"
    return address


class RefusalLog:
    """Logs refused streams, at most once per key per REFUSAL_LOG_EVERY seconds."""

    def __init__(self, every: float = REFUSAL_LOG_EVERY) -> None:
        self.every = every
        self._last: dict[str, tuple[float, int]] = {}  # key -> (logged at, left out since)

    def refused(self, key: str, address: str, reason: str, details: str) -> None:
        now = time.monotonic()
        logged_at, left_out = self._last.get(key, (-self.every, 0))
        if now - logged_at < self.every:
            self._last[key] = (logged_at, left_out + 1)
            return
        if len(self._last) >= _MAX_KEYS:
            self._last = {k: v for k, v in self._last.items() if now - v[0] < self.every}
        self._last[key] = (now, 0)
        more = f" ({left_out} more refused in the last {self.every:g}s)" if left_out else ""
        log.warning("refused stream of %s from %s: %s: %s%s", key, address, reason, details, more)
