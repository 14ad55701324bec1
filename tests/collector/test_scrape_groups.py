"""/metrics?collect[]=G / exclude[]=G: groups of families in or out, 400s, and
histogram text rendered only once a scrape reads it."""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

from probemesh.collector import exporter as exporter_module
from probemesh.collector.exporter import MeshExporter, RestView
from probemesh.collector.http import collector_metrics
from probemesh.collector.row_families import RowFamily
from probemesh.collector.work_lane import WorkLane, run_steps
from probemesh.v1 import mesh_pb2 as pb
from tests.collector.test_exposition import apply, build
from tests.harness import free_port

# Every family the state of build() and its extra source below put on /metrics,
# by the group it belongs to (written out, not derived from scrape_groups).
FAMILIES = {
    "probes": {
        "probe_success", "probe_duration_seconds", "probe_http_status_code",
        "probe_http_duration_seconds", "probe_tls_version_info", "probemesh_check_not_runnable",
        "probemesh_probe_results_total", "probemesh_probe_failures_total",
        "probemesh_probe_refused_total",
    },
    "histograms": {"probemesh_probe_duration_seconds", "probemesh_probe_phase_duration_seconds"},
    "outages": {
        "probemesh_outage", "probemesh_country_reachability_ratio", "probemesh_country_diagnosis",
    },
    "agents": {
        "probemesh_agent_connected", "probemesh_agent_last_seen_timestamp_seconds",
        "probemesh_agent_info", "probemesh_agent_local_problem",
        "probemesh_agent_clock_offset_seconds", "probemesh_agent_clock_skewed",
        "probemesh_agent_clock_adjusted_results_total",
    },
    "collector": {
        "probemesh_ingest_results_total", "probemesh_ingest_batches_total",
        "probemesh_duplicate_results_total", "probemesh_ingest_rejected_total",
        "probemesh_ingest_queue_depth", "probemesh_active_streams",
        "probemesh_scrape_duration_seconds", "probemesh_evaluator",
        "probemesh_outage_round_seconds", "probemesh_event_loop_lag_seconds",
    },
}  # fmt: skip
_FAMILY = re.compile(r"^# TYPE (\S+) ")
Get = Callable[..., Awaitable[tuple[int, str]]]  # GET /metrics + its query: status, body


def verdict_families() -> Iterator[Metric]:
    """The names the outage monitor and loop lag export, one series each."""
    for name, labels, values in (
        ("probemesh_evaluator", [], []),
        ("probemesh_outage_round_seconds", ["part"], ["publish"]),
        ("probemesh_outage", ["check", "scope"], ["web", "global"]),
        ("probemesh_country_reachability_ratio", ["check", "country"], ["web", "DE"]),
        ("probemesh_country_diagnosis", ["check", "country", "kind"], ["web", "DE", "dns"]),
        ("probemesh_agent_local_problem", ["agent", "country"], ["a-de", "DE"]),
        ("probemesh_event_loop_lag_seconds", [], []),
    ):
        family = GaugeMetricFamily(name, "help", labels=labels)
        family.add_metric(values, 1.0)
        yield family


def exporter_with_verdicts(tmp_path: Path) -> MeshExporter:
    state, exporter = build(tmp_path)
    exporter.extra.append(verdict_families)
    refused = pb.Result(check="web", timestamp=2.0, reason=pb.FAILURE_REASON_POLICY,
                        message="blocked_address: 10.0.0.1")  # fmt: skip
    apply(exporter.ingest, state.agents["a-br"], refused)
    return exporter


@pytest.fixture
async def scrape(tmp_path: Path) -> AsyncIterator[tuple[MeshExporter, Get]]:
    """The exporter behind the real handler on a loopback port, and a GET of /metrics?query."""
    exporter = exporter_with_verdicts(tmp_path)
    rest = CollectorRegistry(auto_describe=False)
    rest.register(RestView(exporter))
    app = web.Application()
    app.router.add_get("/metrics", collector_metrics(exporter, rest, WorkLane()))
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    async with aiohttp.ClientSession() as session:

        async def get(query: str = "") -> tuple[int, str]:
            url = f"http://127.0.0.1:{port}/metrics{query}"
            async with session.get(url) as response:
                return response.status, await response.text()

        try:
            yield exporter, get
        finally:
            await runner.cleanup()


def lines(body: str) -> Counter[str]:
    """The body's lines but the render time, which differs between two scrapes."""
    return Counter(
        line for line in body.splitlines() if not line.startswith("probemesh_scrape_duration")
    )


def ordered_lines(body: str) -> list[str]:
    return [line for line in body.splitlines() if not line.startswith("probemesh_scrape_duration")]


def families(body: str) -> set[str]:
    return {m[1] for line in body.splitlines() if (m := _FAMILY.match(line))}


async def test_each_group_alone_and_left_out(scrape: tuple[MeshExporter, Get]) -> None:
    _, get = scrape
    status, whole = await get()
    assert status == 200
    assert families(whole) == set().union(*FAMILIES.values())
    parts: Counter[str] = Counter()
    for group, names in FAMILIES.items():
        status, alone = await get(f"?collect[]={group}")
        assert status == 200
        assert families(alone) == names, group
        parts += lines(alone)
        status, without = await get(f"?exclude%5B%5D={group}")
        assert status == 200
        assert families(without) == set().union(*FAMILIES.values()) - names, group
        assert lines(without) + lines(alone) == lines(whole), group
    assert parts == lines(whole), "the groups split the body, every line in one of them"
    _, two = await get("?collect[]=agents&collect[]=outages")
    assert families(two) == FAMILIES["agents"] | FAMILIES["outages"]


async def test_no_parameter_is_the_whole_body(scrape: tuple[MeshExporter, Get]) -> None:
    exporter, get = scrape
    _, body = await get()
    rest = CollectorRegistry(auto_describe=False)
    rest.register(RestView(exporter))
    assert lines(body) == lines(exporter.render_bulk(generate_latest(rest)).decode())
    seconds = exporter.last_render_seconds
    await get("?collect[]=collector")
    assert exporter.last_render_seconds == seconds, "a health scrape is not a render of the probes"


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("?collect[]=probe", "'probe'"),
        ("?exclude[]=", "''"),
        ("?collect[]=probes,agents", "'probes,agents'"),
        ("?name[]=probe_success", "'name[]'"),
        ("?collect[]=probes&exclude[]=agents", "collect[] and exclude[]"),
    ],
)
async def test_a_bad_parameter_is_400_naming_it(
    scrape: tuple[MeshExporter, Get], query: str, named: str
) -> None:
    _, get = scrape
    status, body = await get(query)
    assert status == 400
    assert named in body
    status, body = await get("?collect[]=collector")
    assert status == 200 and "probemesh_ingest_results_total" in body


def newer_results(exporter: MeshExporter, timestamp: float) -> None:
    for agent_id, duration in (("a-br", 0.5), ("a-de", 20.0)):
        result = pb.Result(
            check="web", timestamp=timestamp, success=True, duration_seconds=duration,
            http_phase_seconds=[0.0, 0.02, 0.0, 0.3, 0.0],
        )  # fmt: skip
        apply(exporter.ingest, exporter.state.agents[agent_id], result)


def housekeeping(exporter: MeshExporter) -> None:
    """What the collector runs every second (CollectorApp._housekeeping)."""
    run_steps(exporter.prerender_steps(exporter.pre_rendering, time.monotonic() + 0.8))


def histogram_text(exporter: MeshExporter) -> list[tuple[bytes, list[bytes]]]:
    return exporter.text.snapshot()


def test_histograms_wait_for_a_scrape_that_reads_them(tmp_path: Path) -> None:
    """Unread for HISTOGRAMS_READ_HORIZON, the histograms' text is not rendered
    every second; the next scrape still equals one with the pre-render on."""
    _, lazy = build(tmp_path / "lazy")
    _, eager = build(tmp_path / "eager")
    lazy.render_bulk()  # both read once, then lazy's readers go quiet
    eager.render_bulk()
    lazy.histograms_read -= exporter_module.HISTOGRAMS_READ_HORIZON + 1
    assert eager.pre_rendering and not lazy.pre_rendering
    before = histogram_text(lazy)
    for second in range(2, 12):
        newer_results(lazy, float(second))
        newer_results(eager, float(second))
        housekeeping(lazy)
        housekeeping(eager)
        lazy.render_bulk(groups=frozenset({"collector", "probes"}))  # a health scrape
    assert histogram_text(lazy) == before, "nothing rendered while no scrape read them"
    assert histogram_text(eager) != before
    assert not lazy.pre_rendering
    quiet, pre_rendered = lazy.render_bulk().decode(), eager.render_bulk().decode()
    assert ordered_lines(quiet) == ordered_lines(pre_rendered)
    assert lazy.pre_rendering, "a scrape that reads them turns the pre-render on again"


def test_remote_write_snapshots_do_not_need_the_histogram_text(tmp_path: Path) -> None:
    _, exporter = build(tmp_path)
    exporter.render_bulk()
    exporter.histograms_read = float("-inf")  # then no scrape reads them
    newer_results(exporter, 2.0)
    housekeeping(exporter)
    rows = {
        family.name: family.rows
        for family in exporter.collect_bulk()
        if isinstance(family, RowFamily) and family.name.startswith("probemesh_probe_duration")
    }
    counts = {labels: values[-2] for labels, values in rows["probemesh_probe_duration_seconds"]}
    assert counts == {("web", "BR"): 2, ("web", "DE"): 2}
    assert b'_count{check="web",country="DE"} 1.0\n' in b"".join(
        b"".join(chunks) for _, chunks in histogram_text(exporter)
    ), "the text still shows the first result"
