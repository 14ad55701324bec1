"""A userspace netem: two network namespaces joined by a Python delay line.

Why this exists: the test kernel has no ``sch_netem`` (``tc qdisc add ... netem``
answers "Specified qdisc kind is unknown"), and a userspace TCP proxy cannot
delay a TCP handshake: the kernel answers the SYN before ``accept()`` returns,
so a proxy's delay lands in the HTTP ``processing`` phase, never in ``connect``.
To delay the handshake itself, the delay has to sit *on the wire*.

So the wire is ours. ``DelayLine`` creates two namespaces, A and B, each with
one TAP interface opened by this process through ``/dev/net/tun``; after
``ip link set TAP netns NS`` the file descriptor keeps working. A forwarder
thread copies Ethernet frames between the two descriptors and holds each frame
for ``delay`` seconds (one way), in order, like ``netem delay`` without jitter.
A TCP handshake seen from A then takes 2 x delay longer, and so does every
request/response round trip.

Addresses: A is 10.213.0.1/24, B is 10.213.0.2/24, on the TAPs only; nothing
is routed anywhere else. Neighbour entries are static (no ARP on the measured
path) and IPv6 is off inside both namespaces (no DAD or router solicitations
in the delay line). Namespace names carry a per-run random part. ``close()``
stops the thread, closes the TAP descriptors (which deletes the TAPs) and
deletes the namespaces; it is idempotent and safe after a partial ``start()``.

Usage (root only; see ``netem_problem``)::

    with DelayLine() as line:
        server = subprocess.Popen([*line.exec_in("b"), sys.executable, ...])
        line.delay = 0.040          # 40 ms each way, 80 ms per round trip
        subprocess.run([*line.exec_in("a"), sys.executable, ...])
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import os
import secrets
import select
import shutil
import struct
import subprocess
import threading
import time
from types import TracebackType

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
_MAX_FRAME = 65536

A_IP = "10.213.0.1"
B_IP = "10.213.0.2"
_MACS = {"a": "02:00:0a:d5:00:01", "b": "02:00:0a:d5:00:02"}
_IPS = {"a": A_IP, "b": B_IP}


def netem_problem() -> str | None:
    """Why a DelayLine cannot be built here, or None."""
    if os.geteuid() != 0:
        return "needs root for network namespaces and TAP devices (CI runs as root)"
    if shutil.which("ip") is None:
        return "needs the 'ip' command (iproute2)"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun for TAP devices"
    return None


def _sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=check, timeout=30)


def _open_tap(name: str) -> int:
    """A non-blocking TAP device without packet-info headers: reads and writes are frames."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), IFF_TAP | IFF_NO_PI))
    except BaseException:
        os.close(fd)
        raise
    return fd


class DelayLine:
    """Namespaces A and B joined by a frame forwarder with a settable one-way delay."""

    def __init__(self, delay: float = 0.0) -> None:
        self.prefix = f"pmnx{secrets.token_hex(3)}"
        #: One-way delay in seconds, applied to frames read after it is set.
        self.delay = delay
        #: Frames forwarded per direction ("ab": A to B, "ba": B to A).
        self.frames = {"ab": 0, "ba": 0}
        self._fds: dict[str, int] = {}
        self._namespaces: list[str] = []
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = -1, -1
        self._stopping = False
        self.error: BaseException | None = None

    def ns(self, side: str) -> str:
        """The namespace name of side "a" or "b"."""
        return f"{self.prefix}{side}"

    def exec_in(self, side: str) -> list[str]:
        """Command prefix that runs a program inside side's namespace."""
        return ["ip", "netns", "exec", self.ns(side)]

    def start(self) -> DelayLine:
        """Create namespaces and TAPs, address them, and start forwarding."""
        try:
            for side in ("a", "b"):
                ns = tap = self.ns(side)  # each TAP is named like its namespace
                _sh("ip", "netns", "add", ns)
                self._namespaces.append(ns)
                for scope in ("all", "default"):
                    sysctl = f"net.ipv6.conf.{scope}.disable_ipv6=1"
                    _sh("ip", "netns", "exec", ns, "sysctl", "-qw", sysctl)
                _sh("ip", "-n", ns, "link", "set", "lo", "up")
                self._fds[side] = _open_tap(tap)
                _sh("ip", "link", "set", tap, "netns", ns)
                _sh("ip", "-n", ns, "link", "set", tap, "address", _MACS[side])
                _sh("ip", "-n", ns, "addr", "add", f"{_IPS[side]}/24", "dev", tap)
                _sh("ip", "-n", ns, "link", "set", tap, "up")
            for side, peer in (("a", "b"), ("b", "a")):
                neighbour = [_IPS[peer], "lladdr", _MACS[peer], "dev", self.ns(side)]
                _sh("ip", "-n", self.ns(side), "neigh", "replace", *neighbour, "nud", "permanent")
            self._wake_r, self._wake_w = os.pipe()
            self._thread = threading.Thread(target=self._run, name="delay-line", daemon=True)
            self._thread.start()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Stop forwarding, close the TAPs and delete the namespaces; idempotent."""
        self._stopping = True
        if self._wake_w >= 0:
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"x")
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        for fd in (*self._fds.values(), self._wake_r, self._wake_w):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._fds.clear()
        self._wake_r = self._wake_w = -1
        for ns in reversed(self._namespaces):
            _sh("ip", "netns", "delete", ns, check=False)
        self._namespaces.clear()

    def __enter__(self) -> DelayLine:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _run(self) -> None:
        """Forward frames; each waits in a FIFO until its due time (read time + delay)."""
        fd_a, fd_b = self._fds["a"], self._fds["b"]
        # (source fd, destination fd, counter key, queue of (due, frame))
        links = [
            (fd_a, fd_b, "ab", collections.deque[tuple[float, bytes]]()),
            (fd_b, fd_a, "ba", collections.deque[tuple[float, bytes]]()),
        ]
        try:
            while not self._stopping:
                now = time.monotonic()
                for _, dst, key, queue in links:
                    while queue and queue[0][0] <= now:
                        frame = queue.popleft()[1]
                        with contextlib.suppress(BlockingIOError, OSError):
                            os.write(dst, frame)  # a full device drops, like a wire
                        self.frames[key] += 1
                dues = [queue[0][0] for *_, queue in links if queue]
                timeout = max(0.0, min(dues) - time.monotonic()) if dues else None
                # select() takes microseconds; epoll would round up to whole milliseconds.
                readable, _, _ = select.select([fd_a, fd_b, self._wake_r], [], [], timeout)
                now = time.monotonic()
                for src, _, _, queue in links:
                    if src not in readable:
                        continue
                    while True:
                        try:
                            frame = os.read(src, _MAX_FRAME)
                        except BlockingIOError:
                            break
                        queue.append((now + self.delay, frame))
        except BaseException as exc:  # surfaced by the test through .error
            self.error = exc
