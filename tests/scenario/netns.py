"""Network namespaces for the scenario tests: a hub and one namespace per agent.

Every namespace name starts with a per-run prefix; ``Topology.destroy`` removes
the nftables tables and namespaces it created, whatever happened before.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import os
import secrets
import subprocess
import urllib.request
from dataclasses import dataclass, field

CLONE_NEWNET = 0x40000000
HUB_IP = "10.200.0.1"


def sh(
    *args: str, check: bool = True, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args), input=stdin, capture_output=True, text=True, check=check, timeout=30
    )


def netns_problem() -> str | None:
    """Why namespace tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces (CI runs as root)"
    for tool in ("ip", "nft"):
        if sh("which", tool, check=False).returncode != 0:
            return f"needs the {tool!r} command (iproute2 / nftables)"
    return None


@dataclass
class Topology:
    """hub <-> bridge <-> agent namespaces; agent i has 10.200.0.(11+i)."""

    agents: int
    prefix: str = field(default_factory=lambda: f"pm{secrets.token_hex(2)}")
    created: list[str] = field(default_factory=list)
    nft_tables: list[tuple[str, str]] = field(default_factory=list)  # (namespace, table)
    _pool: concurrent.futures.ThreadPoolExecutor | None = None

    @property
    def hub(self) -> str:
        return f"{self.prefix}hub"

    def ns(self, i: int) -> str:
        return f"{self.prefix}a{i}"

    @staticmethod
    def ip_of(i: int) -> str:
        return f"10.200.0.{11 + i}"

    def create(self) -> None:
        hub = self.hub
        sh("ip", "netns", "add", hub)
        self.created.append(hub)
        sh("ip", "-n", hub, "link", "set", "lo", "up")
        sh("ip", "-n", hub, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", hub, "addr", "add", f"{HUB_IP}/24", "dev", "br0")
        sh("ip", "-n", hub, "link", "set", "br0", "up")
        for i in range(self.agents):
            ns = self.ns(i)
            sh("ip", "netns", "add", ns)
            self.created.append(ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh(
                "ip",
                "-n",
                ns,
                "link",
                "add",
                "eth0",
                "type",
                "veth",
                "peer",
                "name",
                f"v{i}",
                "netns",
                hub,
            )
            sh("ip", "-n", ns, "addr", "add", f"{self.ip_of(i)}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", hub, "link", "set", f"v{i}", "master", "br0")
            sh("ip", "-n", hub, "link", "set", f"v{i}", "up")

    def exec_prefix(self, ns: str) -> list[str]:
        return ["ip", "netns", "exec", ns]

    def add_hub_address(self, ip: str) -> None:
        """A second address on the hub's bridge, e.g. for a target apart from the collector."""
        sh("ip", "-n", self.hub, "addr", "add", f"{ip}/24", "dev", "br0")

    def drop(self, i: int, port: int | None, host: str = HUB_IP) -> None:
        """nftables in agent i's namespace drops its packets to host (to one TCP port,
        or every packet when port is None): timeouts."""
        ns, table = self.ns(i), f"{self.prefix}drop"
        match = f"ip daddr {host}" + (f" tcp dport {port}" if port is not None else "")
        rules = (
            f"table inet {table} {{\n"
            "  chain out {\n"
            "    type filter hook output priority 0;\n"
            f"    {match} drop\n"
            "  }\n"
            "}\n"
        )
        sh("ip", "netns", "exec", ns, "nft", "-f", "-", stdin=rules)
        self.nft_tables.append((ns, table))

    def undrop(self, i: int) -> None:
        ns, table = self.ns(i), f"{self.prefix}drop"
        sh("ip", "netns", "exec", ns, "nft", "delete", "table", "inet", table, check=False)
        self.nft_tables = [t for t in self.nft_tables if t != (ns, table)]

    def hub_get(self, url: str, timeout: float = 3.0) -> str:
        """HTTP GET from inside the hub namespace (a worker thread joined to it)."""
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(
                1, initializer=_enter_netns, initargs=(self.hub,)
            )

        def get() -> str:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                return str(resp.read().decode())

        return self._pool.submit(get).result(timeout + 5)

    def destroy(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        for ns, table in self.nft_tables:
            sh("ip", "netns", "exec", ns, "nft", "delete", "table", "inet", table, check=False)
        self.nft_tables.clear()
        for ns in reversed(self.created):
            sh("ip", "netns", "delete", ns, check=False)
        self.created.clear()


def _enter_netns(name: str) -> None:
    """Move the calling thread (only) into the named network namespace."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns({name}): {os.strerror(errno)}")
    finally:
        os.close(fd)
