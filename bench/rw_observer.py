"""Watch remote write from outside the collectors: where a result's lag goes.

Run as its own process by ``bench/mesh_scale.py`` (so that neither the busy
load processes nor the driver's /metrics parsing delay what it times):

* a **relay** between the collectors and VictoriaMetrics: every remote-write
  POST is timed on arrival (*posted*) and when VictoriaMetrics answered it
  (*accepted*), and the tracer results in it (``probe_success`` of the traced
  agent x check pairs) are noted with both times;
* a **poller**: one instant query per poll for every tracer series,
  ``timestamp(probe_success{...})``; a timestamp it has not seen before is a
  tracer result that just became queryable (*seen*). The sample's timestamp is
  the probe time, so the lag is seen - probe time, with nothing between;
* a **canary**: every few seconds it writes one sample stamped "now" straight
  to VictoriaMetrics and the same query picks it up: how long the receiver
  itself takes to show a sample it accepted, under the same load. Canaries
  take turns over CANARY_SERIES series, so that two shown by one flush are
  both seen (the query shows each series' latest sample only). The first
  sample of each is not timed: a new series takes VictoriaMetrics longer to
  show (its index), and every tracer series is older than the warm-up.

The driver stops it with SIGTERM; it then writes its report.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import cramjam
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from probemesh.collector.remote_write import HEADERS, encode_requests
from probemesh.remotewrite import remote_pb2

POLL = 0.2  # seconds between two queries
CANARY_EVERY = 2.0
CANARY = "bench_remote_write_canary"
CANARY_SERIES = 8


@dataclass
class ObserverSpec:
    """What the driver hands the observer (as JSON)."""

    port: int
    victoria_url: str
    tracers: list[tuple[str, str]]  # (agent, check)
    out: str


class Observer:
    def __init__(self, spec: ObserverSpec) -> None:
        self.spec = spec
        self.tracers = set(spec.tracers)
        self.agents = {a.encode() for a, _ in spec.tracers}
        # (agent, check, timestamp ms) -> seconds
        self.posted: dict[tuple[str, str, int], float] = {}
        self.accepted: dict[tuple[str, str, int], float] = {}
        self.seen: dict[tuple[str, str, int], float] = {}
        self.latest: dict[tuple[str, str], int] = {}
        self.canaries: dict[tuple[str, int], float] = {}  # (series, ms) -> accepted at
        self.canary_lags: list[float] = []
        self.requests = 0
        self.relay_seconds: list[float] = []  # VictoriaMetrics' answer time per request

    def traced(self, body: bytes) -> list[tuple[str, str, int]]:
        """The tracer results in a snappy-compressed WriteRequest."""
        raw = bytes(cramjam.snappy.decompress_raw(body))
        if not any(agent in raw for agent in self.agents):
            return []
        request = remote_pb2.WriteRequest()
        request.ParseFromString(raw)
        found = []
        for series in request.timeseries:
            labels = {label.name: label.value for label in series.labels}
            if labels.get("__name__") != "probe_success":
                continue
            pair = (labels.get("agent", ""), labels.get("check", ""))
            if pair in self.tracers:
                found += [(*pair, sample.timestamp) for sample in series.samples]
        return found

    async def relay(self, request: web.Request) -> web.Response:
        posted = time.time()
        body = await request.read()
        traced = self.traced(body)
        headers = {k: v for k, v in request.headers.items() if k.lower() in _FORWARDED}
        async with self.session.post(self.write_url, data=body, headers=headers) as answer:
            text = await answer.read()
            status = answer.status
        accepted = time.time()
        self.requests += 1
        self.relay_seconds.append(accepted - posted)
        if 200 <= status < 300:
            for key in traced:
                self.posted.setdefault(key, posted)
                self.accepted.setdefault(key, accepted)
        return web.Response(status=status, body=text)

    async def poll(self) -> None:
        agents = "|".join(sorted({a for a, _ in self.tracers}))
        checks = "|".join(sorted({c for _, c in self.tracers}))
        query = (
            f'timestamp(probe_success{{agent=~"{agents}",check=~"{checks}"}})'
            f' or timestamp({CANARY}{{bench="canary"}})'
        )
        url = f"{self.spec.victoria_url}/api/v1/query?" + urllib.parse.urlencode(
            {"query": query, "nocache": "1"}
        )
        while not self.stopping.is_set():
            started = time.monotonic()
            try:
                async with self.session.get(url) as response:
                    body = await response.json()
            except (aiohttp.ClientError, TimeoutError):
                body = {"data": {"result": []}}
            now = time.time()
            for row in body["data"]["result"]:
                labels = row["metric"]
                stamp = round(float(row["value"][1]) * 1000)
                if labels.get("bench") == "canary":
                    accepted = self.canaries.pop((labels.get("n", ""), stamp), None)
                    if accepted is not None:
                        self.canary_lags.append(now - accepted)
                    continue
                pair = (labels.get("agent", ""), labels.get("check", ""))
                if pair in self.tracers and stamp > self.latest.get(pair, 0):
                    self.latest[pair] = stamp
                    self.seen.setdefault((*pair, stamp), now)
            with contextlib.suppress(TimeoutError):
                delay = max(0.0, POLL - (time.monotonic() - started))
                await asyncio.wait_for(self.stopping.wait(), delay)

    async def canary(self) -> None:
        turn = 0
        while not self.stopping.is_set():
            n = str(turn % CANARY_SERIES)
            turn += 1
            series = {(("__name__", CANARY), ("bench", "canary"), ("n", n)): 1.0}
            stamp = int(time.time() * 1000)
            body = b"".join(b for b, _ in encode_requests(series, stamp))
            async with self.session.post(self.write_url, data=body, headers=HEADERS) as answer:
                if 200 <= answer.status < 300 and turn > CANARY_SERIES:
                    self.canaries[(n, stamp)] = time.time()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), CANARY_EVERY)

    async def run(self) -> None:
        self.stopping = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, self.stopping.set)
        self.write_url = f"{self.spec.victoria_url}/api/v1/write"
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        app = web.Application(client_max_size=64 * 2**20)
        app.router.add_post("/api/v1/write", self.relay)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.spec.port).start()
        await asyncio.to_thread(Path(self.spec.out + ".ready").write_text, "")
        await asyncio.gather(self.poll(), self.canary())
        self.stopped = time.time()
        await runner.cleanup()
        await self.session.close()

    def report(self) -> dict[str, Any]:
        def rows(times: dict[tuple[str, str, int], float]) -> list[list[Any]]:
            return [[a, c, t, at] for (a, c, t), at in times.items()]

        return {
            "posted": rows(self.posted),
            "accepted": rows(self.accepted),
            "seen": rows(self.seen),
            "canary_lags": self.canary_lags,
            # The last few may still be on their way when the observer stops.
            "canaries_unseen": sum(1 for at in self.canaries.values() if at < self.stopped - 10),
            "requests": self.requests,
            "relay_seconds": self.relay_seconds,
        }


_FORWARDED = {"content-encoding", "content-type", "x-prometheus-remote-write-version"}


def observe(path: str) -> None:
    raw = json.loads(Path(path).read_text())
    raw["tracers"] = [tuple(t) for t in raw["tracers"]]
    spec = ObserverSpec(**raw)
    observer = Observer(spec)
    asyncio.run(observer.run())
    Path(spec.out).write_text(json.dumps(observer.report()))


if __name__ == "__main__":
    observe(sys.argv[1])
