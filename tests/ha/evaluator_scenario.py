"""The evaluator failover scenario: three real collectors on a real PostgreSQL, real agents,
a real outage, and the evaluator SIGKILLed in the middle of it.

The target answers HTTP 500 to the agents of one country (told apart by their
loopback source address) while the scenario says so. The incident that outage
opens must keep its id when the evaluator dies, another collector must take
over within 10 s, the incident must close once the target recovers, and
every collector must serve the same reachability and incidents. Used by
tests/ha/test_evaluator_failover.py and bench/evaluator_failover_soak.py.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.harness import (
    Proc,
    create_token,
    free_port,
    http_get,
    scrape,
    stop_all,
    total,
    wait_for,
)

TAKEOVER_LIMIT = 10.0  # seconds from the evaluator's death to a new evaluator
AGENTS = {  # agent -> (country, loopback source address)
    "br-1": ("BR", "127.0.0.11"),
    "br-2": ("BR", "127.0.0.12"),
    "de-1": ("DE", "127.0.0.21"),
    "us-1": ("US", "127.0.0.31"),
    "jp-1": ("JP", "127.0.0.41"),
}
FAST = {"PROBEMESH_LINK_BACKOFF_CAP": "1"}


class CountryTarget:
    """An HTTP target that answers 500 to the source addresses in ``failing``, else 200."""

    def __init__(self) -> None:
        self.failing: set[str] = set()
        target = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status = 500 if self.client_address[0] in target.failing else 200
                with contextlib.suppress(OSError):  # a probe that timed out has hung up
                    self.send_response(status)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Collector:
    def __init__(self, root: Path, name: str) -> None:
        self.name = name
        self.root = root
        self.grpc_port = free_port()
        self.http_port = free_port()
        self.proc: Proc | None = None

    def start(self, checks: Path, database: str, prefix: list[str] | None = None) -> None:
        """prefix wraps the command (e.g. a clock set off by libfaketime)."""
        args = [
            "collector", "--checks", str(checks), "--database", database,
            "--grpc-listen", f"127.0.0.1:{self.grpc_port}",
            "--http-listen", f"127.0.0.1:{self.http_port}",
            "--data-dir", str(self.root / self.name),
        ]  # fmt: skip
        log = self.root / f"{self.name}.log"
        self.proc = Proc(args, log, env=FAST, prefix=prefix or []).start()

    def get(self, path: str) -> Any:
        return json.loads(http_get(f"http://127.0.0.1:{self.http_port}{path}"))

    def evaluator(self) -> float:
        return total(scrape(f"http://127.0.0.1:{self.http_port}/metrics"), "probemesh_evaluator")

    def metrics(self) -> Any:
        return scrape(f"http://127.0.0.1:{self.http_port}/metrics")


def write_checks(tmp_path: Path, target: CountryTarget) -> Path:
    """One check of the target, every second."""
    checks = tmp_path / "checks.yaml"
    checks.write_text(
        "modules:\n  http_2xx: {prober: http, timeout: 1s}\n"
        f'checks:\n  - {{name: web, target: "http://127.0.0.1:{target.port}/", '
        "module: http_2xx, interval: 1s}\n"
    )
    return checks


def start_agent(tmp_path: Path, postgres_url: str, agent: str, collectors: list[Collector]) -> Proc:
    """An agent of AGENTS, probing from its source address, listing these collectors."""
    country, source = AGENTS[agent]
    token = create_token(agent, country, tmp_path, postgres_url)
    addresses = ",".join(f"127.0.0.1:{c.grpc_port}" for c in collectors)
    args = [
        "agent", "--collector", addresses, "--agent-id", agent,
        "--country", country, "--state-dir", str(tmp_path / agent),
        "--allow-private-targets", "--min-interval", "100ms", "--source-address", source,
    ]  # fmt: skip
    return Proc(args, tmp_path / f"{agent}.log", env={"PROBEMESH_TOKEN": token, **FAST}).start()


def log_tails(exc: AssertionError, procs: list[tuple[str, Proc | None]]) -> AssertionError:
    """exc with what each process logged last: a rare failure shows its cause."""
    tails = "\n".join(f"--- {name}:\n{proc.log(15)}" for name, proc in procs if proc)
    return AssertionError(f"{exc}\n{tails}")


def _incidents(c: Collector) -> list[dict[str, Any]]:
    return list(c.get("/api/v1/incidents")["incidents"])


def _same_view(
    collectors: list[Collector], served: dict[str, dict[int, dict[str, Any]]]
) -> dict[str, Any] | None:
    """The status document of the newest evaluation every collector has served
    (recorded in served across calls), once they all have one, else None.

    A follower takes the evaluator's latest evaluation once a round of its own,
    so at any one moment the two may be an evaluation apart, and stay so for
    as long as their rounds keep that phase: each must be compared with the
    other's document of the same evaluation, not with its current one."""
    for c in collectors:
        doc = c.get("/api/v1/status")
        served.setdefault(c.name, {})[doc["evaluation"]] = doc
    common = set.intersection(*(set(served.get(c.name, {})) for c in collectors))
    if not common:
        return None
    docs = [served[c.name][max(common)] for c in collectors]
    views = [(d["checks"], d["incidents"], d["generated_at"]) for d in docs]
    assert all(v == views[0] for v in views), views
    return docs[0]


def run_failover(tmp_path: Path, postgres_url: str, kill_delay: float = 0.0) -> float:
    """Run the scenario (assertions fail it); kill the evaluator kill_delay seconds after
    every collector shows the incident. Returns the seconds until a new evaluator."""
    target = CountryTarget()
    checks = write_checks(tmp_path, target)
    collectors = [Collector(tmp_path, f"c{i}") for i in range(3)]
    agents: list[Proc] = []
    try:
        for c in collectors:
            c.start(checks, postgres_url)
        for c in collectors:
            wait_for(lambda c=c: http_get(f"http://127.0.0.1:{c.http_port}/readyz"), 30, c.name)
        for i, agent in enumerate(AGENTS):
            order = collectors[i % 3 :] + collectors[: i % 3]  # spread over the collectors
            agents.append(start_agent(tmp_path, postgres_url, agent, order))

        def all_up() -> bool:
            for c in collectors:
                [web] = c.get("/api/v1/reachability")["checks"]
                states = {x["country"]: x["state"] for x in web["countries"]}
                if states != {"BR": "up", "DE": "up", "US": "up", "JP": "up"}:
                    return False
            return True

        wait_for(all_up, 60, "every collector: every country up")
        evaluators = [c for c in collectors if c.evaluator() == 1.0]
        assert len(evaluators) == 1
        [evaluator] = evaluators
        assert [c.get("/api/v1/collector")["evaluator"] for c in collectors] == [
            c is evaluator for c in collectors
        ]
        for c in collectors:  # outage and ratio gauges come from the evaluator alone
            exported = total(c.metrics(), "probemesh_country_reachability_ratio", check="web")
            assert (exported > 0) == (c is evaluator)

        target.failing = {source for country, source in AGENTS.values() if country == "BR"}

        def opened() -> int | None:
            found = {json.dumps(_incidents(c)) for c in collectors}
            if len(found) != 1:
                return None
            incidents = json.loads(found.pop())
            if len(incidents) == 1 and incidents[0]["countries"] == ["BR"]:
                return int(incidents[0]["id"])
            return None

        incident_id = wait_for(opened, 30, "one incident for BR, the same on every collector")
        time.sleep(kill_delay)
        assert evaluator.proc is not None
        evaluator.proc.kill()
        killed_at = time.monotonic()
        survivors = [c for c in collectors if c is not evaluator]
        wait_for(
            lambda: sum(c.evaluator() for c in survivors) == 1.0, TAKEOVER_LIMIT, "a new evaluator"
        )
        takeover = time.monotonic() - killed_at
        assert takeover < TAKEOVER_LIMIT
        [successor] = [c for c in survivors if c.evaluator() == 1.0]
        time.sleep(3.0)  # several evaluations of the new evaluator during the outage
        for c in survivors:
            [incident] = _incidents(c)
            assert incident["id"] == incident_id and incident["ended_at"] is None
            assert incident["countries"] == ["BR"]
        assert total(successor.metrics(), "probemesh_outage", check="web", scope="regional") == 1

        target.failing = set()

        def closed() -> bool:
            for c in survivors:
                incidents = _incidents(c)
                if len(incidents) != 1 or incidents[0]["ended_at"] is None:
                    return False
                assert incidents[0]["id"] == incident_id
            return True

        wait_for(closed, 30, "the incident closed, with its id, on every collector")
        [incident] = _incidents(survivors[0])
        events = [e["event"] for e in incident["timeline"]]
        assert events[0] == "opened" and events[-1] == "closed"
        served: dict[str, dict[int, dict[str, Any]]] = {}
        doc = wait_for(lambda: _same_view(survivors, served), 10, "the same evaluation everywhere")
        assert doc["checks"][0]["state"] == "ok"

        def same_fleet() -> bool:
            lists = [c.get("/api/v1/agents")["agents"] for c in survivors]
            connected = {a["agent"] for a in lists[0] if a["connected"]}
            return all(x == lists[0] for x in lists) and connected == set(AGENTS)

        wait_for(same_fleet, 30, "every collector lists every agent, connected")
        return takeover
    except AssertionError as exc:
        logs = [(c.name, c.proc) for c in collectors] + list(zip(AGENTS, agents, strict=False))
        raise log_tails(exc, logs) from None
    finally:
        stop_all(agents)
        stop_all(c.proc for c in collectors)
        target.close()
