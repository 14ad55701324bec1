"""gRPC core's own log: quiet by default, TLS handshake failures as lines an operator can act on.

gRPC core (C) writes to file descriptor 2 on its own, bypassing Python's
logging. Left alone it prints several lines for every failed TLS handshake
(SSL_ERROR_SSL ...), one per connection attempt of a misconfigured agent. The
CLI instead routes that descriptor through a pipe. In the collector, a failed
handshake becomes one warning per peer address and cause a minute, with what
the agent must do; every other line of gRPC core is dropped unless --log-level
debug (errors are kept).

gRPC core names the peer of a failed handshake only in its "handshaker" trace,
so that trace is on by default: its block for a failed handshake carries the
cause and ``endpoint_peer_address``. Without it (an operator's own GRPC_TRACE),
the line names the cause alone.
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
# The rest of a multi-line gRPC core message (status source locations, args).
_CONTINUATION = re.compile(r"=== Source Location Trace|src/core/|\s|$")
_SSL_FAILURE = "Handshake failed with"  # ssl_transport_security.cc, one line
_FAILED_BLOCK = re.compile(r"CallNextHandshakerLocked: error=(?!OK\b)")  # handshaker trace
_PEER = re.compile(r"endpoint_peer_address=(?:ipv4:|ipv6:)?([^,}\s]+)")
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


# Set on import, which must precede grpc's: gRPC core reads its log settings
# once, when it loads, and logs handshake failures at INFO. So INFO and the
# handshaker trace, which the bridge then filters; an operator's own
# GRPC_VERBOSITY and GRPC_TRACE win.
os.environ.setdefault("GRPC_VERBOSITY", "INFO")
os.environ.setdefault("GRPC_TRACE", "handshaker")


def cause_of(text: str) -> str:
    """The operator's words for a TLS handshake failure gRPC core describes in text."""
    for needle, cause in _CAUSES:
        if needle in text:
            return cause
    detail = text.rsplit("SSL_ERROR_SSL: ", 1)[-1]
    return detail.split(": Invalid certificate verification context")[0].strip()[:200]


class HandshakeLog:
    """One warning per peer host and cause per LOG_EVERY seconds, with how many were left out."""

    def __init__(self, every: float = LOG_EVERY) -> None:
        self.every = every
        self._last: dict[tuple[str, str], tuple[float, int]] = {}

    def failed(self, peer: str, cause: str) -> None:
        now = time.monotonic()
        host = peer.rpartition(":")[0] or peer
        key = (host, cause)
        logged_at, left_out = self._last.get(key, (-self.every, 0))
        if now - logged_at < self.every:
            self._last[key] = (logged_at, left_out + 1)
            return
        if len(self._last) >= 10_000:  # bounded: many peers cannot grow it forever
            self._last = {k: v for k, v in self._last.items() if now - v[0] < self.every}
        self._last[key] = (now, 0)
        more = f" ({left_out} more from {host} in the last {self.every:g}s)" if left_out else ""
        who = f"with {peer}" if peer else "with an agent"
        log.warning("TLS handshake %s failed: %s%s", who, cause, more)


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
        self._pending: str | None = None  # cause of an ssl line awaiting its trace block
        self._block: str | None = None  # cause of a trace block awaiting its peer line

    def start(self) -> None:
        """Take over descriptor 2; without one (a daemon started with it closed),
        gRPC core's lines have nowhere to go anyway and nothing changes."""
        if sys.stderr is None:  # Python found no descriptor 2 at start
            return
        sys.stderr.flush()
        try:
            original = self._original = os.dup(2)
        except OSError:
            return
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
            sys.stderr.flush()  # ours: start() set it
            os.dup2(self._original, 2)
            self._original = None

    def _pump(self, fd: int) -> None:
        """Read until the process ends. A line that fails to translate is dropped,
        never the reader: gRPC threads would block on a full pipe without it."""
        with os.fdopen(fd, "r", encoding="utf-8", errors="replace") as lines:
            for line in lines:
                try:
                    self.handle(line.rstrip("\n"))
                except Exception:  # a bad line is dropped, never the reader
                    continue

    def handle(self, line: str) -> None:
        """Translate one line written to descriptor 2 by anything but Python.

        A failed handshake shows as the ssl line (cause), then, with the
        handshaker trace, a multi-line block whose last line names the peer.
        """
        if self._block is not None:
            peer = _PEER.search(line)
            if peer is not None:
                self._report(peer.group(1), self._block)
                self._block = None
                return
            if not _CORE_LINE.match(line):
                return  # the block's middle lines
            self._report("", self._block)  # a block without a peer
            self._block = None
        if _FAILED_BLOCK.search(line):
            self._pending = None  # the block says it all, peer included
            self._block = cause_of(line)
            return
        if self._pending is not None and _CORE_LINE.match(line):
            self._report("", self._pending)  # no trace block followed the ssl line
            self._pending = None
        if _SSL_FAILURE in line:
            self._pending = cause_of(line)
        elif _CONTINUATION.match(line):
            log.debug("gRPC core: %s", line)
        elif not _CORE_LINE.match(line):
            sys.stderr.write(line + "\n")  # not gRPC core's: pass it on untouched
        elif line[0] in "EF":
            log.error("gRPC core: %s", line)
        else:
            log.debug("gRPC core: %s", line)

    def _report(self, peer: str, cause: str) -> None:
        if self.report_handshakes:
            self.handshakes.failed(peer, cause)
        else:
            log.debug("gRPC core: TLS handshake failed: %s", cause)


# The process's one bridge: the CLI starts it, the collector command turns on
# handshake reports (a process has one descriptor 2, so one bridge).
BRIDGE = CoreLogBridge()
