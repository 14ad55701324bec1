"""Outage detection on real networking: 8 agents in 8 network namespaces.

The hub namespace holds the target and the collector; each agent namespace
is joined to the hub's bridge by a veth pair. The target answers HTTP 500 to
BR, PH and DE (it decides by source address); nftables in the UG, ZA and LT
namespaces drop packets to the target (timeouts). Then US and JP fail too
(global), and everything recovers in steps until the incident closes.

Prints the measured detection latency (target fails -> incident open).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from probemesh.collector.database import open_database
from probemesh.collector.store import Store
from probemesh.collector.tokens import TokenStore
from tests.harness import Proc, stop_all, wait_for
from tests.scenario.netns import HUB_IP, Topology, netns_problem

COUNTRIES = ("BR", "PH", "UG", "DE", "ZA", "LT", "US", "JP")
HTTP_500 = ("BR", "PH", "DE")
DROPPED = ("UG", "ZA", "LT")
INTERVAL = 2.0
TARGET_PORT, CONTROL_PORT = 8080, 8081
GRPC_PORT, HTTP_PORT = 7443, 7444

pytestmark = [pytest.mark.root, pytest.mark.slow]


@pytest.fixture
def topology() -> Iterator[Topology]:
    problem = netns_problem()
    if problem:
        pytest.skip(f"netns scenario skipped: {problem}")
    topo = Topology(len(COUNTRIES))
    try:
        topo.create()
        yield topo
    finally:
        topo.destroy()


class Scenario:
    def __init__(self, topo: Topology, tmp: Path) -> None:
        self.topo = topo
        self.tmp = tmp
        self.control = tmp / "control.json"
        self.procs: list[Proc] = []
        self.target: subprocess.Popen[bytes] | None = None
        self.set_500(())

    def set_500(self, countries: tuple[str, ...]) -> None:
        ips = [self.topo.ip_of(COUNTRIES.index(cc)) for cc in countries]
        tmp = self.control.with_suffix(".tmp")
        tmp.write_text(json.dumps({"fail_500": ips}))
        tmp.replace(self.control)

    def start(self) -> None:
        topo, tmp = self.topo, self.tmp
        hub = topo.exec_prefix(topo.hub)
        with (tmp / "target.log").open("ab") as log:
            self.target = subprocess.Popen(
                [
                    *hub,
                    sys.executable,
                    str(Path(__file__).with_name("target.py")),
                    "--host",
                    HUB_IP,
                    "--ports",
                    f"{TARGET_PORT},{CONTROL_PORT}",
                    "--control",
                    str(self.control),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        checks = {
            "modules": {
                "http_2xx": {"prober": "http", "timeout": "1s"},
                "tcp_connect": {"prober": "tcp", "timeout": "1s"},
            },
            "checks": [
                {
                    "name": "social-home",
                    "target": f"http://{HUB_IP}:{TARGET_PORT}/",
                    "module": "http_2xx",
                    "interval": f"{INTERVAL:g}s",
                },
                {
                    "name": "control-tcp",
                    "target": f"{HUB_IP}:{CONTROL_PORT}",
                    "module": "tcp_connect",
                    "interval": f"{INTERVAL:g}s",
                },
            ],
        }
        (tmp / "checks.yaml").write_text(yaml.safe_dump(checks))
        data = tmp / "collector"
        store = Store(open_database(None, data))
        tokens = {cc: TokenStore(store.db).create(f"agent-{cc.lower()}", cc) for cc in COUNTRIES}
        store.close()
        collector = Proc(
            [
                "collector",
                "--checks",
                str(tmp / "checks.yaml"),
                "--grpc-listen",
                f"{HUB_IP}:{GRPC_PORT}",
                "--http-listen",
                f"{HUB_IP}:{HTTP_PORT}",
                "--data-dir",
                str(data),
                "--insecure",
            ],
            tmp / "collector.log",
            prefix=hub,
        ).start()
        self.procs.append(collector)
        for i, cc in enumerate(COUNTRIES):
            agent_id = f"agent-{cc.lower()}"
            self.procs.append(
                Proc(
                    [
                        "agent",
                        "--collector",
                        f"{HUB_IP}:{GRPC_PORT}",
                        "--agent-id",
                        agent_id,
                        "--country",
                        cc,
                        "--token",
                        tokens[cc],
                        "--state-dir",
                        str(tmp / agent_id),
                        "--allow-private-targets",
                        "--min-interval",
                        "1s",
                        "--insecure",
                    ],
                    tmp / f"{agent_id}.log",
                    prefix=topo.exec_prefix(topo.ns(i)),
                ).start()
            )

    def api(self, path: str) -> Any:
        return json.loads(self.topo.hub_get(f"http://{HUB_IP}:{HTTP_PORT}{path}"))

    def check(self) -> dict[str, Any]:
        doc = self.api("/api/v1/reachability")
        return next(c for c in doc["checks"] if c["check"] == "social-home")

    def incident(self) -> dict[str, Any] | None:
        active = self.api("/api/v1/incidents?active=true")["incidents"]
        return active[0] if active else None

    def stop(self) -> None:
        stop_all(self.procs[1:], timeout=10)  # the agents drain to the collector: it goes last
        stop_all(self.procs[:1], timeout=10)
        if self.target is not None and self.target.poll() is None:
            self.target.terminate()
            self.target.wait(10)

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.log_path.name}\n{p.log_path.read_text()[-1500:]}"
            for p in self.procs
            if p.log_path.exists()
        )


def test_regional_global_and_progressive_recovery(topology: Topology, tmp_path: Path) -> None:
    sc = Scenario(topology, tmp_path)
    try:
        sc.start()
        wait_for(
            lambda: sc.check()["state"] == "ok" and len(sc.check()["countries"]) == 8,
            40,
            "all 8 countries up",
        )
        assert sc.incident() is None

        # six countries fail: three by HTTP 500, three by dropped packets
        failed_at = time.time()
        sc.set_500(HTTP_500)
        for cc in DROPPED:
            topology.drop(COUNTRIES.index(cc), TARGET_PORT)
        first_seen = wait_for(sc.incident, 15, "an incident to open")
        detection = time.time() - failed_at
        inc = wait_for(
            lambda: (i := sc.incident()) and len(i["countries"]) == 6 and i,
            15,
            "the incident to cover the six countries",
        )
        assert isinstance(inc, dict) and isinstance(first_seen, dict)
        assert inc["scope"] == "regional"
        assert inc["countries"] == sorted(HTTP_500 + DROPPED)
        assert set(inc["timeline"][0]["countries"]) <= set(HTTP_500 + DROPPED)
        for cc in HTTP_500:
            assert inc["country_reasons"][cc] == {"reason": "http_status", "detail": "HTTP 500"}
        for cc in DROPPED:
            assert inc["country_reasons"][cc]["reason"] == "timeout"
        assert "unreachable from 6 countries (BR, DE, LT, PH, UG, ZA)" in inc["summary"]
        # Once US and JP's evidence arrives as the control, the summary names the
        # diagnosis: a 500 only some countries get is http_diff; connects dropped on
        # the agents' own side (no hop ever answers) are tcp_blocking.
        inc = wait_for(
            lambda: (i := sc.incident()) and len(i["diagnosis"]) == 6 and i,
            15,
            "the six countries diagnosed",
        )
        assert isinstance(inc, dict)
        kinds = {cc: d["kind"] for cc, d in inc["diagnosis"].items()}
        assert kinds == {
            **dict.fromkeys(HTTP_500, "http_diff"),
            **dict.fromkeys(DROPPED, "tcp_blocking"),
        }
        assert inc["cause"] == "blocking"
        assert "blocked in BR (http_diff), DE (http_diff), LT (tcp_blocking)" in inc["summary"]
        states = {c["country"]: c["state"] for c in sc.check()["countries"]}
        assert states["US"] == states["JP"] == "up"
        agents = sc.api("/api/v1/agents")["agents"]
        assert not any(a["local_problem"] for a in agents), (
            "country outages flagged as local problems"
        )

        # the rest fails too: global
        sc.set_500((*HTTP_500, "US", "JP"))
        wait_for(lambda: (i := sc.incident()) and i["scope"] == "global", 15, "scope global")

        # progressive recovery
        sc.set_500(HTTP_500)
        wait_for(lambda: (i := sc.incident()) and i["scope"] == "regional", 15, "back to regional")
        sc.set_500(())
        wait_for(
            lambda: (i := sc.incident()) and i["countries"] == sorted(DROPPED),
            15,
            "HTTP 500 countries recovered",
        )
        for cc in DROPPED:
            topology.undrop(COUNTRIES.index(cc))
        wait_for(lambda: sc.incident() is None, 20, "the incident to close")
        [closed] = sc.api("/api/v1/incidents")["incidents"]
        kinds = [(e["event"], e["countries"]) for e in closed["timeline"]]
        names = [k for k, _ in kinds]
        assert names[0] == "opened" and names[-1] == "closed"
        assert names.index("global") < names.index("regional")
        recovered_at = {cc: n for n, (k, cs) in enumerate(kinds) if k == "recovered" for cc in cs}
        down_at = {cc: n for n, (k, cs) in enumerate(kinds) if k in ("opened", "down") for cc in cs}
        assert set(recovered_at) == set(down_at) == set(COUNTRIES)
        assert max(down_at[cc] for cc in HTTP_500 + DROPPED) < min(down_at["US"], down_at["JP"])
        last_us_jp = max(recovered_at["US"], recovered_at["JP"])
        assert last_us_jp < min(recovered_at[cc] for cc in HTTP_500)
        assert max(recovered_at[cc] for cc in HTTP_500) < min(recovered_at[cc] for cc in DROPPED)
        assert closed["peak_countries"] == sorted(COUNTRIES)
        assert closed["ended_at"] is not None and closed["peak_scope"] == "global"
        print(
            f"\nnetns scenario: detection latency {detection:.1f}s "
            f"(interval {INTERVAL:g}s, bound {2 * INTERVAL + 1:g}s + probe timeout 1s); "
            f"summary: {closed['summary']}"
        )
        assert detection <= 2 * INTERVAL + 1 + 1.0 + 1.0, f"detection took {detection:.1f}s"
    except BaseException:
        sc.stop()
        print(sc.logs())
        raise
    finally:
        sc.stop()
