"""The agent's bearer token and what it does when a collector refuses it.

The token file is read again on every connection attempt, so an operator who
writes a new token (after a revocation or a rotation) needs no restart. A
refused token is not a network blip: retrying every few seconds only fills the
logs and the collector's, so refusals back off on their own, growing schedule
and log one line per minute at most.
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path

import grpc

from probemesh.timefmt import rfc3339

log = logging.getLogger(__name__)

REFUSED_BASE = 5.0  # seconds before the first retry after a refusal
REFUSED_CAP = 300.0  # longest wait between two attempts with a refused token
LOG_WINDOW = 60.0  # one log line per window while the token stays refused
REFUSED_CODES = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}


class TokenUnavailable(Exception):
    """The token file cannot be read or is empty."""


class TokenSource:
    """The token given on the command line, or the --token-file's content now."""

    def __init__(self, token: str = "", path: Path | None = None) -> None:
        self.token = token
        self.path = path

    def get(self) -> str:
        if self.path is None:
            return self.token
        try:
            token = self.path.read_text().strip()
        except OSError as exc:
            raise TokenUnavailable(
                f"cannot read --token-file {self.path}: {exc.strerror}"
            ) from None
        if not token:
            raise TokenUnavailable(f"--token-file {self.path} is empty")
        return token

    def how_to_replace(self) -> str:
        if self.path is not None:
            return f"write a new token to {self.path} (read again before every attempt)"
        return "restart the agent with a new --token (or use --token-file: it is re-read)"


def refusal_hint(code: grpc.StatusCode, details: str, source: TokenSource) -> str:
    """What the operator should do about a collector's refusal of this agent."""
    if "certificate does not name agent" in details:
        return (
            "the client certificate does not match the agent id: give --tls-cert/--tls-key "
            "for a certificate whose CN or SAN names this agent"
        )
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return (
            "the token belongs to another agent id or country: fix --agent-id/--country or "
            + source.how_to_replace()
        )
    if "revoked" in details:
        return "the token was revoked: create one with 'probemesh token create' and " + (
            source.how_to_replace()
        )
    return (
        "the collector does not know this token (another collector's or data dir's, or "
        "mistyped): create one with 'probemesh token create' and " + source.how_to_replace()
    )


class RefusedBackoff:
    """Delays and log lines while collectors refuse the agent's token or identity."""

    def __init__(self, source: TokenSource) -> None:
        self.source = source
        self.attempts = 0
        self.since = 0.0
        self._logged_at = 0.0
        self._suppressed = 0

    @property
    def refused(self) -> bool:
        return self.attempts > 0

    def accepted(self) -> None:
        if self.attempts:
            log.info("collector accepted the token after %d refused attempts", self.attempts)
        self.attempts = 0
        self._suppressed = 0

    def on_refusal(
        self, address: str, code: grpc.StatusCode, details: str, hint: str = ""
    ) -> float:
        """Note one refused attempt; return how long to wait before the next one."""
        now = time.monotonic()
        if not self.attempts:
            self.since = time.time()
            self._logged_at = 0.0
        self.attempts += 1
        ceiling = min(REFUSED_CAP, REFUSED_BASE * 2 ** (self.attempts - 1))
        delay = random.uniform(ceiling / 2, ceiling)
        if now - self._logged_at >= LOG_WINDOW or self.attempts == 1:
            more = f", {self._suppressed} more since the last line" if self._suppressed else ""
            log.error(
                "collector %s refused this agent (%s: %s; attempt %d, refused since %s%s): %s; "
                "next attempt in %.0fs",
                address, code.name, details, self.attempts, rfc3339(self.since), more,
                hint or refusal_hint(code, details, self.source), delay,
            )  # fmt: skip
            self._logged_at = now
            self._suppressed = 0
        else:
            self._suppressed += 1
        return delay


def transport_hint(details: str, tls: bool, client_cert: bool) -> str:
    """What to do about a connection failure, judged from gRPC's details and our
    own settings: gRPC reports a TLS mismatch only as "Socket closed"."""
    text = details.lower()
    if "connection refused" in text:
        return "nothing listens there: is the collector running, and is --collector right?"
    if "certificate_verify_failed" in text or "certificate verify failed" in text:
        return (
            "the collector's certificate is not signed by --tls-ca or has expired: "
            "give the CA that signed it"
        )
    if "peer name" in text or "hostname" in text or "subject alternative" in text:
        return "the collector's certificate does not name this address: give --tls-server-name"
    if "wrong_version_number" in text or "http_request" in text or "packet_length" in text:
        return "the collector speaks plaintext on this port: drop --tls-ca, or fix the port"
    closed = "socket closed" in text or "connection reset" in text or "handshake" in text
    if closed and not tls:
        return "the collector speaks TLS: give --tls-ca (and --tls-cert/--tls-key for mTLS)"
    if closed and not client_cert:
        return "the collector requires a client certificate: give --tls-cert/--tls-key"
    return ""
