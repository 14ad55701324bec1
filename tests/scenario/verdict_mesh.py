"""The lost-uplink race on real networking, shared by the CI test and bench/verdict_soak.py.

Four agents (BR, DE, JP, UG), each in its own network namespace, run three
HTTP checks against one target host (one port per check) on the hub, apart
from the collector's address. Every repetition restarts the agents, so each
check of each agent gets a new random phase, and cuts at a random moment:

- ``lost_uplink``: nftables in UG's namespace drops every packet to the
  target host for a while, then the rule goes. Any incident is a false one.
- ``regional``: nftables drops UG's packets to one check's port only, as a
  real outage of that service seen from UG alone. An incident for that check,
  with UG as its only country, must open.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from probemesh.collector.database import open_database
from probemesh.collector.store import Store
from probemesh.collector.tokens import TokenStore
from tests.harness import Proc, stop_all, wait_for
from tests.scenario.netns import HUB_IP, Topology

COUNTRIES = ("BR", "DE", "JP", "UG")
LOST = COUNTRIES.index("UG")
LOST_AGENT = "agent-ug"
TARGET_IP = "10.200.0.2"
CHECKS = {"home": 8080, "api": 8081, "static": 8082}
INTERVAL = 2.0
TIMEOUT = 1.0
GRPC_PORT, HTTP_PORT = 7443, 7444
# confirm_rounds (2) probes after the cut, one extra interval of suspect hold,
# the probe timeout and one evaluation period
DETECTION_BOUND = 3 * INTERVAL + TIMEOUT + 0.5


@dataclass
class Rep:
    """What one repetition saw."""

    case: str
    new_incidents: list[dict[str, Any]] = field(default_factory=list)
    states: set[str] = field(default_factory=set)  # the cut agent's verdicts during the cut
    latency: float | None = None  # cut -> the expected incident is open (regional only)

    @property
    def found(self) -> bool:
        """regional: exactly the expected incident opened."""
        return self.latency is not None and len(self.new_incidents) == 1

    @property
    def false_incidents(self) -> int:
        if self.case == "regional":
            return len(self.new_incidents) - (1 if self.found else 0)
        return len(self.new_incidents)


class VerdictMesh:
    """Collector, target and agents in a Topology of len(COUNTRIES) agents."""

    def __init__(self, topo: Topology, tmp: Path, rng: random.Random) -> None:
        self.topo = topo
        self.tmp = tmp
        self.rng = rng
        self.collector: Proc | None = None
        self.agents: list[Proc] = []
        self.target: subprocess.Popen[bytes] | None = None
        self.tokens: dict[str, str] = {}
        self.restarts = 0

    def start(self) -> None:
        topo, tmp = self.topo, self.tmp
        topo.add_hub_address(TARGET_IP)
        hub = topo.exec_prefix(topo.hub)
        control = tmp / "control.json"
        control.write_text(json.dumps({"fail_500": []}))
        with (tmp / "target.log").open("ab") as log:
            self.target = subprocess.Popen(
                [
                    *hub,
                    sys.executable,
                    str(Path(__file__).with_name("target.py")),
                    "--host",
                    TARGET_IP,
                    "--ports",
                    ",".join(str(p) for p in CHECKS.values()),
                    "--control",
                    str(control),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        doc = {
            "modules": {"http_2xx": {"prober": "http", "timeout": f"{TIMEOUT:g}s"}},
            "checks": [
                {
                    "name": name,
                    "target": f"http://{TARGET_IP}:{port}/",
                    "module": "http_2xx",
                    "interval": f"{INTERVAL:g}s",
                }
                for name, port in CHECKS.items()
            ],
            "outage": {"evaluate_every": 0.5},
        }
        (tmp / "checks.yaml").write_text(yaml.safe_dump(doc))
        data = tmp / "collector"
        store = Store(open_database(None, data))
        self.tokens = {
            cc: TokenStore(store.db).create(f"agent-{cc.lower()}", cc) for cc in COUNTRIES
        }
        store.close()
        self.collector = Proc(
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
        self.start_agents()

    def start_agents(self) -> None:
        """(Re)start every agent: each check's first probe lands at a new random phase."""
        for proc in self.agents:  # all at once: each takes a moment to flush and exit
            proc.signal(signal.SIGTERM)
        for proc in self.agents:
            proc.stop(timeout=10)
        self.agents = []
        self.restarts += 1
        for i, cc in enumerate(COUNTRIES):
            agent_id = f"agent-{cc.lower()}"
            self.agents.append(
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
                        self.tokens[cc],
                        "--state-dir",
                        str(self.tmp / agent_id),
                        "--allow-private-targets",
                        "--min-interval",
                        "1s",
                        "--insecure",
                    ],
                    self.tmp / f"{agent_id}.{self.restarts}.log",
                    prefix=self.topo.exec_prefix(self.topo.ns(i)),
                ).start()
            )

    def api(self, path: str) -> Any:
        return json.loads(self.topo.hub_get(f"http://{HUB_IP}:{HTTP_PORT}{path}"))

    def incidents(self) -> list[dict[str, Any]]:
        return list(self.api("/api/v1/incidents")["incidents"])

    def healthy(self) -> bool:
        """Every check ok with all four countries up, every agent connected and unflagged."""
        status = self.api("/api/v1/status")
        if status["incidents"] and any(i["ended_at"] is None for i in status["incidents"]):
            return False
        for check in status["checks"]:
            states = {c["country"]: c["state"] for c in check["countries"]}
            if check["state"] != "ok" or states != dict.fromkeys(COUNTRIES, "up"):
                return False
        agents = status["agents"]
        return len(agents) == len(COUNTRIES) and all(
            a["connected"] and not a["local_problem"] and not a["suspect"] for a in agents
        )

    def lost_agent_state(self) -> str:
        for agent in self.api("/api/v1/agents")["agents"]:
            if agent["agent"] == LOST_AGENT:
                return (
                    "local_problem"
                    if agent["local_problem"]
                    else ("suspect" if agent["suspect"] else "ok")
                )
        return "missing"

    def prepare(self) -> set[int]:
        """New phases, a healthy mesh, and the incident ids that exist before the cut."""
        self.start_agents()
        wait_for(self.healthy, 60, "every check ok and every agent unflagged")
        time.sleep(self.rng.uniform(0, INTERVAL))  # the cut lands anywhere in the cycle
        return {i["id"] for i in self.incidents()}

    def lost_uplink(self, seconds: float) -> Rep:
        rep = Rep("lost_uplink")
        before = self.prepare()
        self.topo.drop(LOST, None, host=TARGET_IP)
        try:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                rep.states.add(self.lost_agent_state())
                time.sleep(0.2)
        finally:
            self.topo.undrop(LOST)
        wait_for(self.healthy, 60, "the mesh to recover")
        time.sleep(INTERVAL)  # every verdict is settled up: nothing may open from here
        rep.new_incidents = [i for i in self.incidents() if i["id"] not in before]
        return rep

    def regional(self, check: str = "home") -> Rep:
        rep = Rep("regional")
        before = self.prepare()
        self.topo.drop(LOST, CHECKS[check], host=TARGET_IP)
        cut_at = time.monotonic()
        try:
            deadline = cut_at + DETECTION_BOUND + 10
            while time.monotonic() < deadline:
                rep.states.add(self.lost_agent_state())
                opened = [
                    i
                    for i in self.incidents()
                    if i["id"] not in before and i["check"] == check and i["ended_at"] is None
                ]
                if opened and opened[0]["peak_countries"] == ["UG"]:
                    rep.latency = time.monotonic() - cut_at
                    break
                time.sleep(0.1)
        finally:
            self.topo.undrop(LOST)
        wait_for(self.healthy, 60, "the incident to close")
        rep.new_incidents = [i for i in self.incidents() if i["id"] not in before]
        return rep

    def stop(self) -> None:
        stop_all(self.agents, timeout=10)  # they drain to the collector: it goes last
        stop_all([self.collector], timeout=10)
        if self.target is not None and self.target.poll() is None:
            self.target.terminate()
            self.target.wait(10)

    def logs(self) -> str:
        procs = [*self.agents, *([self.collector] if self.collector else [])]
        return "\n".join(
            f"--- {p.log_path.name}\n{p.log_path.read_text()[-1500:]}"
            for p in procs
            if p.log_path.exists()
        )
