"""Diagnosis on real networking: countries reach an origin through two routers.

    country namespaces --bridge-- r1 --veth-- r2 --veth-- origin
    (10.210.0.11+i)      (10.210.0.1)  10.211.0.1/.2   (10.212.0.10, blockpage 10.213.0.20)

r1 holds the collector and two resolvers: an honest one (10.210.0.1) and one
that lies while told to (10.210.0.2). Each country namespace gets its own
resolv.conf through /etc/netns/NAME/ (``ip netns exec`` mounts it). nftables on
the routers inject the faults, one per country, the way censors and broken
networks do:

- UG: its resolver answers the blockpage's address (-> dns);
- ET: r1 answers its SYNs with a TCP reset (-> tcp_blocking);
- CN: r2 DNATs its HTTP to the blockpage server (-> http_diff);
- NG, GH: r2 drops what it would forward for them; their traceroutes stop at
  r2 (-> path, hop 10.211.0.2, AS64501 from the test's ip2asn file);
- then every fault is lifted and the origin answers 500 to everyone (-> origin).

KE and DE are controls: they must stay up with no diagnosis while others fail.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from probemesh.collector.store import Store
from probemesh.collector.tokens import TokenStore
from tests.harness import Proc, wait_for
from tests.scenario.netns import _enter_netns, netns_problem, sh

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
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"

pytestmark = [pytest.mark.root, pytest.mark.slow]


def ip_of(cc: str) -> str:
    return f"10.210.0.{11 + COUNTRIES.index(cc)}"


class Network:
    """The namespaces, links and nftables tables of the scenario; destroy() removes them all."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
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


@pytest.fixture
def network() -> Iterator[Network]:
    problem = netns_problem()
    if problem:
        pytest.skip(f"diagnosis scenario skipped: {problem}")
    import secrets

    net = Network(f"pd{secrets.token_hex(2)}")
    try:
        net.create()
        yield net
    finally:
        net.destroy()


class Scenario:
    def __init__(self, net: Network, tmp: Path) -> None:
        self.net = net
        self.tmp = tmp
        self.control = tmp / "control.json"
        self.set_control()
        self.procs: list[Proc] = []
        self.servers: list[subprocess.Popen[bytes]] = []
        self._pool: Any = None

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
        store = Store(data)
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

    def get(self, path: str) -> str:
        import concurrent.futures
        import urllib.request

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
        for proc in reversed(self.procs):
            proc.stop(timeout=10)
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


def _controls_clean(countries: dict[str, dict[str, Any]]) -> None:
    for cc in CONTROLS:
        assert countries[cc]["state"] == "up", countries[cc]
        assert countries[cc]["diagnosis"] is None, countries[cc]


def check_status_page(net: Network, tmp: Path) -> None:
    """Chromium, run inside r1 through a wrapper, shows kinds, the cause and NG's hop list.

    Playwright talks to Chromium over pipes, so the browser can live in another
    network namespace than the test.
    """
    problem = browser_problem()
    if problem:
        print(f"\nstatus page part skipped: {problem}")
        return
    from playwright.sync_api import sync_playwright

    wrapper = tmp / "chromium-in-r1"
    wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {net.ns("r1")} {CHROMIUM} "$@"\n')
    wrapper.chmod(0o755)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(wrapper), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 1400})
            page.goto(f"http://{R1}:{HTTP_PORT}/")
            card = '.check[data-check="social-home"]'
            for cc, kind in {**BLOCKED, "NG": "path", "GH": "path"}.items():
                page.wait_for_selector(
                    f'{card} .tile[data-country="{cc}"] .kind[data-kind="{kind}"]', timeout=10_000
                )
            for cc in CONTROLS:
                assert page.locator(f'{card} .tile[data-country="{cc}"] .kind').count() == 0
            hops = page.locator(f'{card} .diagnosis li[data-country="NG"] .hops li')
            texts = hops.all_inner_texts()
            assert texts[0].startswith(R1) and texts[1].startswith(f"{R2_UP} (AS64501)"), texts
            assert page.locator(".incident .badge.cause").first.inner_text() == "cause: mixed"
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "status-diagnosis.png"), full_page=True)
        finally:
            browser.close()


def browser_problem() -> str | None:
    if not os.access(CHROMIUM, os.X_OK):
        return f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the 'playwright' package is not installed"
    return None


def test_each_fault_gets_its_kind_and_the_incident_its_cause(
    network: Network, tmp_path: Path
) -> None:
    sc = Scenario(network, tmp_path)
    try:
        sc.start()
        wait_for(
            lambda: (cs := sc.countries()) and len(cs) == len(COUNTRIES)
            and all(c["state"] == "up" for c in cs.values()),
            60,
            "every country up",
        )  # fmt: skip
        # Agents may have probed before the servers listened: start from no incident.
        wait_for(lambda: sc.incident() is None, 30, "no open incident")
        assert all(kind is None for kind in sc.kinds().values())

        # blocking, three ways
        sc.set_control(lie=True)
        network.nft(
            "r1",
            "pm_reset",
            "chain c_fwd { type filter hook forward priority 0;\n"
            f"  ip saddr {ip_of('ET')} tcp dport {PORT} reject with tcp reset\n}}",
        )
        network.nft("r2", "pm_blockpage", "chain c_pre { type nat hook prerouting priority -100;\n"
                    f"  ip saddr {ip_of('CN')} ip daddr {ORIGIN} tcp dport {PORT} "
                    f"dnat to {BLOCKPAGE}:{PORT}\n}}")  # fmt: skip
        wait_for(
            lambda: all(sc.kinds()[cc] == kind for cc, kind in BLOCKED.items()),
            40,
            "UG dns, ET tcp_blocking, CN http_diff",
        )
        countries = sc.countries()
        _controls_clean(countries)
        ug = countries["UG"]["diagnosis"]
        assert BLOCKPAGE in ug["detail"] and "AS64666" in ug["detail"], ug
        assert "refused" in countries["ET"]["diagnosis"]["detail"]
        assert "Access Restricted" in countries["CN"]["diagnosis"]["detail"]
        inc = wait_for(
            lambda: (i := sc.incident()) and i["cause"] == "blocking" and i,
            15,
            "incident cause blocking",
        )
        assert isinstance(inc, dict)
        assert {cc: d["kind"] for cc, d in inc["diagnosis"].items()} == BLOCKED, json.dumps(inc)
        assert "blocked in CN (http_diff), ET (tcp_blocking), UG (dns)" in inc["summary"]
        diagnosed = {
            (cc, e["kind"]) for e in inc["timeline"] if e["event"] == "diagnosed"
            for cc in e["countries"]
        }  # fmt: skip
        assert set(BLOCKED.items()) <= diagnosed
        metrics = sc.get("/metrics")
        assert (
            'probemesh_country_diagnosis{check="social-home",country="UG",kind="dns"} 1.0'
            in metrics
        )

        # a router drops everything it would forward for two countries
        network.nft("r2", "pm_drop", "chain c_fwd { type filter hook forward priority 0;\n"
                    f"  ip saddr {{ {ip_of('NG')}, {ip_of('GH')} }} drop\n}}")  # fmt: skip
        wait_for(
            lambda: all(sc.kinds()[cc] == "path" for cc in PATH_LOST),
            40,
            "NG and GH diagnosed as path",
        )
        countries = sc.countries()
        _controls_clean(countries)
        for cc in PATH_LOST:
            d = countries[cc]["diagnosis"]
            assert d["hop"] == R2_UP and d["asn"] == 64501, d
            other = next(c for c in PATH_LOST if c != cc)
            assert f"same AS as {other}" in d["detail"], d
            assert [h["address"] for h in d["path"]][:2] == [R1, R2_UP], d["path"]
        inc = wait_for(
            lambda: (i := sc.incident()) and i["cause"] == "mixed" and i, 15, "cause mixed"
        )
        assert isinstance(inc, dict)
        assert f"path lost after {R2_UP} (AS64501) for GH, NG" in inc["summary"]
        check_status_page(network, tmp_path)

        # every fault lifted, then the origin fails for everyone
        sc.set_control()
        for router, table in (("r1", "pm_reset"), ("r2", "pm_blockpage"), ("r2", "pm_drop")):
            network.unnft(router, table)
        wait_for(
            lambda: all(c["state"] == "up" for c in sc.countries().values()),
            40,
            "every country up again",
        )
        sc.set_control(fail_500=True)
        wait_for(
            lambda: set(sc.kinds().values()) == {"origin"},
            40,
            "every country diagnosed origin",
        )
        inc = wait_for(
            lambda: (i := sc.incident()) and i["cause"] == "origin" and i, 15, "cause origin"
        )
        assert isinstance(inc, dict)
        assert "origin failing: HTTP 500 from every country" in inc["summary"], json.dumps(inc)
        print(f"\ndiagnosis scenario: {inc['summary']}")
    except BaseException:
        sc.stop()
        print(sc.logs())
        raise
    finally:
        sc.stop()
