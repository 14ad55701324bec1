"""What a probe returns, and the one place exceptions become failure reasons.

A failed probe is data: probes return ProbeResult(success=False, reason=...).
Inside a probe, ``raise ProbeFailure(reason, msg)`` or let a socket/TLS/DNS error
escape into ``failure_from_exception``; the runner turns either into a result.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl
from dataclasses import dataclass, field
from enum import StrEnum

import dns.exception


class Reason(StrEnum):
    """The fixed set of failure reasons (the `reason` label values of probemesh_probe_failures_total); values are label values."""

    DNS = "dns"
    CONNECT = "connect"
    REFUSED = "refused"
    TIMEOUT = "timeout"
    TLS = "tls"
    HTTP_STATUS = "http_status"
    VALIDATION = "validation"
    OTHER = "other"
    # The agent's own policy refused the check (see agent/safety.py): a
    # configuration problem, never an outage.
    POLICY = "policy"


class ProbeFailure(Exception):
    """Raised inside a probe to stop it with one failure reason."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


Sample = tuple[str, dict[str, str], float]


@dataclass
class ProbeResult:
    """The outcome of one probe plus its blackbox metrics."""

    success: bool = False
    reason: Reason | None = None
    message: str = ""
    samples: list[Sample] = field(default_factory=list)

    def add(self, name: str, value: float, **labels: str) -> None:
        """Record one blackbox metric sample."""
        self.samples.append((name, labels, float(value)))

    def fail(self, reason: Reason, message: str) -> ProbeResult:
        """Mark the probe failed (first reason wins) and return self."""
        if self.reason is None:
            self.reason, self.message = reason, message
        self.success = False
        return self


# A reset after the handshake is no refusal (the port was open): it is "connect".
_REFUSED = {errno.ECONNREFUSED}
_UNREACHABLE = {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL, errno.ENETDOWN}


def failure_from_exception(exc: BaseException) -> tuple[Reason, str]:
    """Map an exception raised while probing to exactly one failure reason."""
    if isinstance(exc, ProbeFailure):
        return exc.reason, exc.message
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return Reason.TIMEOUT, "probe timed out"
    if isinstance(exc, socket.gaierror | dns.exception.DNSException):
        return Reason.DNS, f"name resolution failed: {exc}"
    if isinstance(exc, ssl.SSLError | ssl.CertificateError):
        return Reason.TLS, f"TLS failed: {getattr(exc, 'reason', None) or exc}"
    if isinstance(exc, ConnectionRefusedError):
        return Reason.REFUSED, "connection refused"
    if isinstance(exc, OSError):
        if exc.errno in _REFUSED:
            return Reason.REFUSED, f"connection refused: {exc.strerror}"
        if exc.errno == errno.ETIMEDOUT:
            return Reason.TIMEOUT, "connection timed out"
        if exc.errno in _UNREACHABLE:
            return Reason.CONNECT, f"connect failed: {exc.strerror}"
        return Reason.CONNECT, f"connection error: {exc.strerror or exc}"
    return Reason.OTHER, f"{type(exc).__name__}: {exc}"
