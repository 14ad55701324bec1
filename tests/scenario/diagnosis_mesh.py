"""The diagnosis scenario's network and mesh, shared by its test and its soak.

    country namespaces --bridge-- r1 --veth-- r2 --veth-- origin
    (10.210.0.11+i)      (10.210.0.1)  10.211.0.1/.2   (10.212.0.10, blockpage 10.213.0.20)

r1 holds the collector and two resolvers: an honest one (10.210.0.1) and one
that lies while told to (10.210.0.2). Each country namespace gets its own
resolv.conf through /etc/netns/NAME/ (``ip netns exec`` mounts it). nftables
tables on the routers inject the faults (``Faults``).
"""

from __future__ import annotations

import concurrent.futures
import json
import secrets
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from probemesh.collector.database import open_database
from probemesh.collector.store import Store
from probemesh.collector.tokens import TokenStore
from tests.harness import Proc, stop_all
from tests.scenario.netns import _enter_netns, sh

COUNTRIES = ("UG", "ET", "CN", "NG", "GH", "KE", "DE")
CONTROLS = ("KE", "DE")
BLOCKED = {"UG": "dns", "ET": "tcp_blocking", "CN": "http_diff"}
PATH_LOST = ("NG", "GH")
R1, R1_LIAR = "10.210.0.1", "10.210.0.2"
R2_UP = "10.211.0.2"
ORIGIN, BLOCKPAGE = "10.212.0.10", "10.213.0.20"
PORT, GRPC_PORT, HTTP_PORT = 8080, 7443, 7444
NAME = "social.example"
ASN_TSV = (
    "10.210.0.0\t10.210.0.255\t64510\tZZ\tACCESS-NET\n"
    "10.211.0.0\t10.211.0.255\t64501\tZZ\tTRANSIT-NET\n"
    "10.212.0.0\t10.212.0.255\t64500\tZZ\tORIGIN-NET\n"
    "10.213.0.0\t10.213.0.255\t64666\tZZ\tFILTER-NET\n"
)
SERVERS = str(Path(__file__).with_name("diagnosis_servers.py"))


def ip_of(cc: str) -> str:
    return f"10.210.0.{11 + COUNTRIES.index(cc)}"


class Network:
    """The namespaces, links and nftables tables of the scenario; destroy() removes them all."""

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix or f"pd{secrets.token_hex(2)}"
        self.namespaces: list[str] = []
        self.etc_dirs: list[Path] = []

    def ns(self, name: str) -> str:
        return f"{self.prefix}{name.lower()}"

    def run(self, name: str, *args: str, stdin: str | None = None) -> None:
        sh("ip", "netns", "exec", self.ns(name), *args, stdin=stdin)

    def add(self, name: str) -> str:
        ns = self.ns(name)
        sh("ip", "netns", "add", ns)
        self.namespaces.append(ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        self.run(name, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
        return ns

    def link(self, a: str, a_if: str, a_ip: str, b: str, b_if: str, b_ip: str) -> None:
        sh("ip", "-n", self.ns(a), "link", "add", a_if, "type", "veth", "peer", "name", b_if,
           "netns", self.ns(b))  # fmt: skip
        for side, ifname, ip in ((a, a_if, a_ip), (b, b_if, b_ip)):
            if ip:
                sh("ip", "-n", self.ns(side), "addr", "add", ip, "dev", ifname)
            sh("ip", "-n", self.ns(side), "link", "set", ifname, "up")

    def create(self) -> None:
        for name in ("r1", "r2", "origin", *COUNTRIES):
            self.add(name)
        r1, r2 = self.ns("r1"), self.ns("r2")
        sh("ip", "-n", r1, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", r1, "addr", "add", f"{R1}/24", "dev", "br0")
        sh("ip", "-n", r1, "addr", "add", f"{R1_LIAR}/24", "dev", "br0")
        sh("ip", "-n", r1, "link", "set", "br0", "up")
        for cc in COUNTRIES:
            self.link(cc, "eth0", f"{ip_of(cc)}/24", "r1", f"v{cc.lower()}", "")
            sh("ip", "-n", r1, "link", "set", f"v{cc.lower()}", "master", "br0")
            sh("ip", "-n", self.ns(cc), "route", "add", "default", "via", R1)
            etc = Path("/etc/netns") / self.ns(cc)
            etc.mkdir(parents=True, exist_ok=True)
            self.etc_dirs.append(etc)
            resolver = R1_LIAR if cc == "UG" else R1
            (etc / "resolv.conf").write_text(f"nameserver {resolver}\noptions timeout:1\n")
        self.link("r1", "up0", "10.211.0.1/30", "r2", "dn0", f"{R2_UP}/30")
        self.link("r2", "or0", "10.212.0.1/24", "origin", "eth0", f"{ORIGIN}/24")
        sh("ip", "-n", self.ns("origin"), "addr", "add", f"{BLOCKPAGE}/32", "dev", "eth0")
        sh("ip", "-n", self.ns("origin"), "route", "add", "default", "via", "10.212.0.1")
        sh("ip", "-n", r1, "route", "add", "10.212.0.0/23", "via", R2_UP)
        sh("ip", "-n", r2, "route", "add", "10.210.0.0/24", "via", "10.211.0.1")
        sh("ip", "-n", r2, "route", "add", "10.213.0.0/24", "via", ORIGIN)
        for router in ("r1", "r2"):
            self.run(router, "sysctl", "-qw", "net.ipv4.ip_forward=1")

    def nft(self, router: str, table: str, rules: str) -> None:
        self.run(router, "nft", "-f", "-", stdin=f"table ip {table} {{\n{rules}\n}}\n")

    def unnft(self, router: str, table: str) -> None:
        sh("ip", "netns", "exec", self.ns(router), "nft", "delete", "table", "ip", table,
           check=False)  # fmt: skip

    def destroy(self) -> None:
        for ns in reversed(self.namespaces):
            sh("ip", "netns", "delete", ns, check=False)
        self.namespaces.clear()
        for etc in self.etc_dirs:
            shutil.rmtree(etc, ignore_errors=True)
        self.etc_dirs.clear()


class Scenario:
    def __init__(self, net: Network, tmp: Path) -> None:
        self.net = net
        self.tmp = tmp
        self.control = tmp / "control.json"
        self.set_control()
        self.procs: list[Proc] = []
        self.servers: list[subprocess.Popen[bytes]] = []
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    def set_control(self, **flags: bool) -> None:
        tmp = self.control.with_suffix(".tmp")
        tmp.write_text(json.dumps(flags))
        tmp.replace(self.control)

    def server(self, where: str, *args: str) -> None:
        log = (self.tmp / f"server-{where}-{len(self.servers)}.log").open("ab")
        self.servers.append(
            subprocess.Popen(
                ["ip", "netns", "exec", self.net.ns(where), sys.executable, SERVERS, *args],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )

    def start(self) -> None:
        tmp, control = self.tmp, str(self.control)
        self.server("r1", "dns", "--listen", R1, "--answer", ORIGIN)
        self.server("r1", "dns", "--listen", R1_LIAR, "--answer", ORIGIN, "--lie", BLOCKPAGE,
                    "--control", control)  # fmt: skip
        self.server("origin", "origin", "--listen", f"{ORIGIN}:{PORT}", "--control", control)
        self.server("origin", "blockpage", "--listen", f"{BLOCKPAGE}:{PORT}")
        checks = {
            "modules": {
                "http_home": {
                    "prober": "http",
                    "timeout": "1s",
                    "http": {
                        "preferred_ip_protocol": "ip4",
                        "fail_if_body_not_matches_regexp": ["Social Home"],
                    },
                }
            },
            "checks": [
                {
                    "name": "social-home",
                    "target": f"http://{NAME}:{PORT}/",
                    "module": "http_home",
                    "interval": "2s",
                }
            ],
            "outage": {"control_refresh": 5},
        }
        (tmp / "checks.yaml").write_text(yaml.safe_dump(checks))
        (tmp / "asn.tsv").write_text(ASN_TSV)
        data = tmp / "collector"
        store = Store(open_database(None, data))
        tokens = {cc: TokenStore(store.db).create(f"agent-{cc.lower()}", cc) for cc in COUNTRIES}
        store.close()
        r1 = ["ip", "netns", "exec", self.net.ns("r1")]
        self.procs.append(
            Proc(
                ["collector", "--checks", str(tmp / "checks.yaml"),
                 "--grpc-listen", f"{R1}:{GRPC_PORT}", "--http-listen", f"{R1}:{HTTP_PORT}",
                 "--data-dir", str(data), "--asn-db", str(tmp / "asn.tsv"), "--insecure"],
                tmp / "collector.log",
                prefix=r1,
            ).start()
        )  # fmt: skip
        for cc in COUNTRIES:
            agent_id = f"agent-{cc.lower()}"
            self.procs.append(
                Proc(
                    ["agent", "--collector", f"{R1}:{GRPC_PORT}", "--agent-id", agent_id,
                     "--country", cc, "--token", tokens[cc], "--state-dir", str(tmp / agent_id),
                     "--allow-private-targets", "--min-interval", "1s", "--insecure"],
                    tmp / f"{agent_id}.log",
                    prefix=["ip", "netns", "exec", self.net.ns(cc)],
                    env={"PROBEMESH_EVIDENCE_EVERY": "10", "PROBEMESH_TRACEROUTE_EVERY": "10"},
                ).start()
            )  # fmt: skip

    def inject(self, fault: str) -> None:
        """One fault: lie (UG's resolver), reset (ET), blockpage (CN), drop (NG, GH)."""
        net = self.net
        if fault == "lie":
            self.set_control(lie=True)
        elif fault == "reset":
            net.nft(
                "r1",
                "pm_reset",
                "chain c_fwd { type filter hook forward priority 0;\n"
                f"  ip saddr {ip_of('ET')} tcp dport {PORT} reject with tcp reset\n}}",
            )
        elif fault == "blockpage":
            net.nft(
                "r2",
                "pm_blockpage",
                "chain c_pre { type nat hook prerouting priority -100;\n"
                f"  ip saddr {ip_of('CN')} ip daddr {ORIGIN} tcp dport {PORT} "
                f"dnat to {BLOCKPAGE}:{PORT}\n}}",
            )
        elif fault == "drop":
            net.nft(
                "r2",
                "pm_drop",
                "chain c_fwd { type filter hook forward priority 0;\n"
                f"  ip saddr {{ {ip_of('NG')}, {ip_of('GH')} }} drop\n}}",
            )
        else:
            raise ValueError(fault)  # fmt: skip

    def lift_all(self) -> None:
        """Every fault gone and the origin healthy."""
        self.set_control()
        for router, table in (("r1", "pm_reset"), ("r2", "pm_blockpage"), ("r2", "pm_drop")):
            self.net.unnft(router, table)

    def get(self, path: str) -> str:
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(
                1, initializer=_enter_netns, initargs=(self.net.ns("r1"),)
            )

        def fetch() -> str:
            with urllib.request.urlopen(f"http://{R1}:{HTTP_PORT}{path}", timeout=3) as resp:
                return str(resp.read().decode())

        return str(self._pool.submit(fetch).result(10))

    def countries(self) -> dict[str, dict[str, Any]]:
        doc = json.loads(self.get("/api/v1/reachability"))
        [check] = [c for c in doc["checks"] if c["check"] == "social-home"]
        return {c["country"]: c for c in check["countries"]}

    def incident(self) -> dict[str, Any] | None:
        active = json.loads(self.get("/api/v1/incidents?active=true"))["incidents"]
        return active[0] if active else None

    def kinds(self) -> dict[str, str | None]:
        return {cc: (c["diagnosis"] or {}).get("kind") for cc, c in self.countries().items()}

    def stop(self) -> None:
        stop_all(self.procs[1:], timeout=10)  # the agents drain to the collector: it goes last
        stop_all(self.procs[:1], timeout=10)
        for server in self.servers:
            server.terminate()
            server.wait(10)
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.log_path.name}\n{p.log_path.read_text()[-1500:]}"
            for p in self.procs
            if p.log_path.exists()
        )
