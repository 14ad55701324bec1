"""``probemesh demo``: the whole mesh on loopback in one process.

A collector, eight agents (BR PH UG DE ZA LT US JP), each bound to its own
127.0.0.x source address, and a demo target that recognises each agent by that
address. About 30 s in, the target starts failing for six countries (HTTP 500
for some, a hang that times out for others) and then recovers them one by one,
like a real regional outage. A live table shows per-country reachability.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from probemesh.agent.link import Identity, LinkSettings
from probemesh.agent.main import Agent, AgentOptions
from probemesh.collector.main import CollectorApp, CollectorOptions
from probemesh.httpserver import parse_listen, start_site

COUNTRIES = ("BR", "PH", "UG", "DE", "ZA", "LT", "US", "JP")
FAILING = {"BR": "500", "PH": "500", "UG": "hang", "DE": "500", "ZA": "hang", "LT": "hang"}
OUTAGE_START = 30.0
RECOVERY_START = 60.0
RECOVERY_STEP = 8.0
CYCLE = 130.0
INTERVAL = 2.0


@dataclass(frozen=True)
class DemoOptions:
    duration: float | None
    http_listen: str
    grpc_listen: str
    live_table: bool
    # Names of the listen options ("http_listen", "grpc_listen") that may move
    # to a free port when their address is taken.
    flexible_ports: frozenset[str] = frozenset()


def available_listen(listen: str, flexible: bool) -> str:
    """listen itself when it can be bound, else (when flexible) the same host on port 0.

    Port 0 lets the collector bind a free port atomically; the caller reads the
    chosen port back from the collector.
    """
    if not flexible:
        return listen
    host, port = parse_listen(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # As the servers bind: a port in TIME_WAIT is free, a listening one is not.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return f"[{host}]:0" if family == socket.AF_INET6 else f"{host}:0"
    return listen


def source_address(index: int) -> str:
    return f"127.0.0.{11 + index}"


class DemoTarget:
    """An HTTP target whose answer depends on the caller's country and the clock."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.country_of = {source_address(i): cc for i, cc in enumerate(COUNTRIES)}

    def failure(self, country: str) -> str:
        t = (time.monotonic() - self.started) % CYCLE
        mode = FAILING.get(country)
        if mode is None or t < OUTAGE_START:
            return ""
        recovered_at = RECOVERY_START + RECOVERY_STEP * list(FAILING).index(country)
        return mode if t < recovered_at else ""

    async def handle(self, request: web.Request) -> web.Response:
        country = self.country_of.get(request.remote or "", "")
        mode = self.failure(country)
        if mode == "500":
            return web.Response(status=500, text="upstream unavailable\n")
        if mode == "hang":
            await asyncio.sleep(INTERVAL * 2)
        return web.Response(text="social home: ok\n")


def reachability_table(app: CollectorApp, elapsed: float) -> Group:
    """Per-country view of the demo check from the collector's outage model, plus incidents."""
    view = app.outage.snapshot.checks.get("social-home")
    state = view.state if view else "unknown"
    title = f"probemesh demo - social-home ({state}) - {elapsed:5.0f}s"
    # A fixed minimum width keeps the title on one line, so frames keep their height.
    table = Table(title=title, min_width=64)
    for column in ("country", "agents up", "state", "reason", "ratio"):
        table.add_column(column)
    styles = {"up": "green", "degraded": "yellow", "down": "bold red", "unknown": "dim"}
    for c in view.countries if view else ():
        ratio = "-" if c.ratio is None else f"{c.ratio:.0%}"
        styled = f"[{styles[c.state]}]{c.state}[/]"
        table.add_row(c.country, f"{c.up}/{c.agents}", styled, c.detail, ratio)
    incidents = app.outage.book.incidents()[:3]
    lines = [f"{'OPEN ' if i.active else 'closed'} #{i.id} {i.summary()}" for i in incidents]
    return Group(table, *(lines or ["no incidents"]))


def demo_checks(target_port: int, interval: float = INTERVAL) -> dict[str, Any]:
    """The demo's checks file: an HTTP check and a TCP check of the demo target."""
    return {
        "modules": {
            "http_2xx": {
                "prober": "http",
                "timeout": "1500ms",
                "http": {"preferred_ip_protocol": "ip4"},
            },
            "tcp_connect": {
                "prober": "tcp",
                "timeout": "1s",
                "tcp": {"preferred_ip_protocol": "ip4"},
            },
        },
        "checks": [
            {
                "name": "social-home",
                "target": f"http://127.0.0.1:{target_port}/",
                "module": "http_2xx",
                "interval": f"{interval:g}s",
            },
            {
                "name": "social-tcp",
                "target": f"127.0.0.1:{target_port}",
                "module": "tcp_connect",
                "interval": "5s",
            },
        ],
    }


async def start_mesh(
    root: Path, checks: dict[str, Any], grpc_listen: str, http_listen: str, stop: asyncio.Event
) -> tuple[CollectorApp, list[asyncio.Task[None]]]:
    """A collector and one in-process agent per country, each on its own source address.

    Returns the collector and the tasks that end once stop is set: the agents
    first, so they drain to a live collector, then the collector (the first task).
    """
    checks_path = root / "checks.yaml"
    checks_path.write_text(yaml.safe_dump(checks))
    collector = CollectorApp(
        CollectorOptions(checks_path, grpc_listen, http_listen, root / "collector")
    )
    collector_stop = asyncio.Event()
    tasks = [asyncio.create_task(collector.run(collector_stop))]
    while not collector.ready and not tasks[0].done():  # noqa: ASYNC110 - set by run()
        await asyncio.sleep(0.05)
    if tasks[0].done():
        await tasks[0]  # re-raise the start-up error (e.g. port in use)
    for i, cc in enumerate(COUNTRIES):
        agent_id = f"demo-{cc.lower()}"
        agent = Agent(
            AgentOptions(
                collectors=[f"127.0.0.1:{collector.grpc_port}"],
                identity=Identity(agent_id, cc),
                token=collector.tokens.create(agent_id, cc),
                state_dir=root / agent_id,
                source_address=source_address(i),
                allow_private_targets=True,
                min_interval=1.0,
                link=LinkSettings(),
            )
        )
        tasks.append(asyncio.create_task(agent.run(stop)))

    async def stop_collector_after_agents(agents: list[asyncio.Task[None]]) -> None:
        await stop.wait()
        await asyncio.gather(*agents, return_exceptions=True)
        collector_stop.set()

    tasks.append(asyncio.create_task(stop_collector_after_agents(tasks[1:])))
    return collector, tasks


async def run_demo(options: DemoOptions) -> None:
    console = Console()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    with tempfile.TemporaryDirectory(prefix="probemesh-demo-") as tmp:
        target = DemoTarget()
        target_app = web.Application()
        target_app.router.add_get("/", target.handle)
        target_runner = await start_site(target_app, "127.0.0.1:0")
        target_port = target_runner.addresses[0][1]
        grpc_listen = available_listen(options.grpc_listen, "grpc_listen" in options.flexible_ports)
        http_listen = available_listen(options.http_listen, "http_listen" in options.flexible_ports)
        collector, tasks = await start_mesh(
            Path(tmp), demo_checks(target_port), grpc_listen, http_listen, stop
        )
        for wanted, used, port in (
            (options.grpc_listen, grpc_listen, collector.grpc_port),
            (options.http_listen, http_listen, collector.http_port),
        ):
            if used != wanted:
                console.print(f"{wanted} is in use; using port {port} instead")
        http_host = parse_listen(http_listen)[0]
        http_host = f"[{http_host}]" if ":" in http_host else http_host
        base = f"http://{http_host}:{collector.http_port}"
        console.print(f"metrics: {base}/metrics\nstatus page: {base}/")
        console.print(
            "Outage starts ~30 s in for BR PH UG DE ZA LT, then recovers country by country. "
            "Ctrl-C stops."
        )
        started = time.monotonic()
        deadline = started + options.duration if options.duration else None
        with contextlib.ExitStack() as stack:
            # The alternate screen is redrawn whole each second, so log lines or a
            # resized terminal never leave stale rows; the last frame is printed on exit.
            live = (
                stack.enter_context(Live(console=console, auto_refresh=False, screen=True))
                if options.live_table
                else None
            )
            while not stop.is_set():
                if deadline and time.monotonic() >= deadline:
                    stop.set()
                    break
                if live is not None:
                    header = f"metrics: {base}/metrics   status page: {base}/   (Ctrl-C stops)"
                    live.update(
                        Group(header, reachability_table(collector, time.monotonic() - started)),
                        refresh=True,
                    )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)
        console.print(reachability_table(collector, time.monotonic() - started))
        await asyncio.gather(*tasks[1:], return_exceptions=True)
        await tasks[0]
        await target_runner.cleanup()
    console.print("demo stopped")
