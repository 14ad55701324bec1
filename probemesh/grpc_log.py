"""gRPC core's own log: quiet by default, TLS handshake failures as lines an operator can act on.

gRPC core (C) writes to file descriptor 2 on its own, bypassing Python's
logging. Left alone it prints several lines for every failed TLS handshake
(SSL_ERROR_SSL ...), one per connection attempt of a misconfigured agent. The
collector instead routes that descriptor through a pipe: handshake failures
become one warning per cause a minute, with its count and what the agent must
do; every other line of gRPC core is dropped unless --log-level debug. gRPC core
does not report the peer's address with a handshake failure, so the agent's
own log (which names what to do too) tells the agents apart.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time

log = logging.getLogger("probemesh.collector.tls")

LOG_EVERY = 60.0
_CORE_LINE = re.compile(r"[IWEF]\d{4} \d\d:\d\d:\d\d")  # absl's prefix: I1130 19:13:56
_HANDSHAKE = re.compile(r"Handshake failed with (?:fatal )?error (\w+): (.*)")
_CAUSES = (
    (
        "PEER_DID_NOT_RETURN_A_CERTIFICATE",
        "client sent no certificate (mTLS: the agent needs --tls-cert/--tls-key)",
    ),
    ("WRONG_VERSION_NUMBER", "plaintext client on a TLS port (the agent needs --tls-ca)"),
    ("HTTP_REQUEST", "plaintext HTTP client on the gRPC TLS port"),
    ("CERTIFICATE_VERIFY_FAILED", "client certificate not signed by --tls-client-ca, or expired"),
    (
        "TLSV1_ALERT_UNKNOWN_CA",
        "the client does not trust our certificate (its --tls-ca does not sign it)",
    ),
    ("SSLV3_ALERT_BAD_CERTIFICATE", "the client rejected our certificate"),
    ("SSLV3_ALERT_CERTIFICATE_EXPIRED", "the client says our certificate expired"),
    ("UNSUPPORTED_PROTOCOL", "client offered a TLS version below 1.2"),
    ("NO_SHARED_CIPHER", "no cipher in common with the client"),
)


# Set on import, which must precede grpc's: gRPC core reads GRPC_VERBOSITY
# once, when it loads, and logs handshake failures at INFO. So INFO, which the
# bridge then filters; an operator's own GRPC_VERBOSITY wins.
os.environ.setdefault("GRPC_VERBOSITY", "INFO")


def cause_of(line: str) -> str | None:
    """The operator's words for a gRPC core handshake failure line, or None."""
    match = _HANDSHAKE.search(line)
    if match is None:
        return None
    detail = match.group(2)
    for needle, cause in _CAUSES:
        if needle in detail:
            return cause
    return detail.split(": Invalid certificate verification context")[0].strip()


class HandshakeLog:
    """One warning per cause per LOG_EVERY seconds, with how many were left out."""

    def __init__(self, every: float = LOG_EVERY) -> None:
        self.every = every
        self._last: dict[str, tuple[float, int]] = {}

    def failed(self, cause: str) -> None:
        now = time.monotonic()
        logged_at, left_out = self._last.get(cause, (-self.every, 0))
        if now - logged_at < self.every:
            self._last[cause] = (logged_at, left_out + 1)
            return
        self._last[cause] = (now, 0)
        more = f" ({left_out} more in the last {self.every:g}s)" if left_out else ""
        log.warning("TLS handshake with an agent failed: %s%s", cause, more)


class CoreLogBridge:
    """Routes file descriptor 2 through a pipe read by a daemon thread.

    Python's own stderr (and every logging handler on it) moves to a duplicate
    of the original descriptor first, so only gRPC core's writes go through the
    pipe. Needs GRPC_VERBOSITY=INFO: gRPC logs handshake failures at INFO.
    """

    def __init__(self) -> None:
        self.handshakes = HandshakeLog()
        # Only a server's handshake failures are agents' (the collector sets it);
        # a client's are its own connection errors, which it reports itself.
        self.report_handshakes = False
        self._original: int | None = None

    def start(self) -> None:
        sys.stderr.flush()
        original = self._original = os.dup(2)
        stream = os.fdopen(original, "w", buffering=1, encoding="utf-8", errors="replace")
        for handler in logging.root.handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream in (
                sys.stderr,
                sys.__stderr__,
            ):
                handler.setStream(stream)
        sys.stderr = stream
        read_end, write_end = os.pipe()
        os.dup2(write_end, 2)
        os.close(write_end)
        threading.Thread(
            target=self._pump, args=(read_end,), name="grpc-core-log", daemon=True
        ).start()

    def stop(self) -> None:
        """Give descriptor 2 back (before an exec: the new image has no reader)."""
        if self._original is not None:
            sys.stderr.flush()
            os.dup2(self._original, 2)
            self._original = None

    def _pump(self, fd: int) -> None:
        with os.fdopen(fd, "r", encoding="utf-8", errors="replace") as lines:
            for line in lines:
                self.handle(line.rstrip("\n"))

    def handle(self, line: str) -> None:
        """Translate one line written to descriptor 2 by anything but Python."""
        cause = cause_of(line)
        if cause is not None:
            if self.report_handshakes:
                self.handshakes.failed(cause)
            else:
                log.debug("gRPC core: %s", line)
        elif not _CORE_LINE.match(line):
            sys.stderr.write(line + "\n")  # not gRPC core's: pass it on untouched
        elif line[0] in "EF":
            log.error("gRPC core: %s", line)
        else:
            log.debug("gRPC core: %s", line)


# The process's one bridge: the CLI starts it, the collector command turns on
# handshake reports (a process has one descriptor 2, so one bridge).
BRIDGE = CoreLogBridge()
