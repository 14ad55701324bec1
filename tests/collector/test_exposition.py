"""The fast /metrics text and the exporter's Metric families must say the same thing.

Both renderings are read with a strict text-format 0.0.4 parser: HELP and TYPE
lines are part of what is compared, and a family's samples must carry names
its TYPE allows (prometheus_client's own parser accepts a counter family named
without _total, which promtool rejects).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cramjam
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from probemesh.checks import parse_checks
from probemesh.collector import exporter as exporter_module
from probemesh.collector.assignments import AssignmentHistory
from probemesh.collector.database import open_database
from probemesh.collector.exporter import AggregateView, BulkView, MeshExporter, RestView
from probemesh.collector.exposition import (
    BUCKET_BOUNDS,
    FAILURE_REASONS,
    FAILURES,
    HEADERS,
    HIST_DURATION,
    HIST_PHASE,
    OUTCOMES,
    REFUSED,
    RESULTS,
)
from probemesh.collector.ingest import REJECT_REASONS, Ingest
from probemesh.collector.limits import SecurityLimits
from probemesh.collector.remote_results import RESULT_FAMILIES
from probemesh.collector.remote_write import RemoteWriter, decode_request, series_from_registry
from probemesh.collector.row_families import RowFamily
from probemesh.collector.samples import REASONS as SAMPLE_REASONS
from probemesh.collector.samples import sample_items
from probemesh.collector.state import AgentInfo, MeshState
from probemesh.collector.store import Store
from probemesh.v1 import mesh_pb2 as pb

Sample = tuple[str, tuple[tuple[str, str], ...], float]
Header = tuple[str, str, str]  # family, type, help

_HELP = re.compile(r"^# HELP ([a-zA-Z_:][a-zA-Z0-9_:]*) (.*)$")
_TYPE = re.compile(r"^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram|summary|untyped)$")
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)')
_SUFFIXES = {
    "counter": ("",),
    "gauge": ("",),
    "untyped": ("",),
    "histogram": ("_bucket", "_count", "_sum"),
    "summary": ("", "_count", "_sum"),
}


@dataclass
class Exposition:
    """A strictly parsed text-format 0.0.4 body."""

    headers: set[Header] = field(default_factory=set)
    samples: set[Sample] = field(default_factory=set)


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


def parse_strict(
    text: str, skip: tuple[str, ...] = ("probemesh_scrape_duration_seconds",)
) -> Exposition:
    """Parse text; fail on anything text format 0.0.4 or promtool would not accept."""
    out = Exposition()
    helps: dict[str, str] = {}
    seen: set[str] = set()
    family = kind = ""
    series: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    assert text.endswith("\n"), "the body must end with a newline"
    for line in text.splitlines():
        if m := _HELP.match(line):
            assert m.group(1) not in helps, f"second HELP for {m.group(1)}"
            helps[m.group(1)] = m.group(2)
            continue
        if m := _TYPE.match(line):
            family, kind = m.groups()
            assert family not in seen, f"family {family} appears twice"
            assert family in helps, f"TYPE {family} without HELP before it"
            assert kind != "counter" or family.endswith("_total"), f"counter {family} lacks _total"
            seen.add(family)
            if family not in skip:
                out.headers.add((family, kind, helps[family]))
            continue
        assert not line.startswith("#"), f"unparsable comment line: {line!r}"
        m = _SAMPLE.match(line)
        assert m, f"unparsable sample line: {line!r}"
        name, raw_labels, value = m.groups()
        assert family and name in {family + s for s in _SUFFIXES[kind]}, (
            f"sample {name} outside its family (current family {family!r} {kind})"
        )
        labels: list[tuple[str, str]] = []
        rest = raw_labels or ""
        while rest:
            lm = _LABEL.match(rest)
            assert lm, f"bad labels in {line!r}"
            labels.append((lm.group(1), _unescape(lm.group(2))))
            rest = rest[lm.end() :]
        key = (name, tuple(sorted(labels)))
        assert len(set(k for k, _ in labels)) == len(labels), f"repeated label in {line!r}"
        assert key not in series, f"duplicate series {line!r}"
        series.add(key)
        if family not in skip:
            out.samples.add((name, key[1], float(value)))
    return out


def samples_of(text: str) -> set[Sample]:
    return parse_strict(text).samples


def apply(ingest: Ingest, agent: AgentInfo, result: pb.Result) -> None:
    """Apply one result as ingest does: its samples go through the sample filter."""
    ingest.state.apply(agent, result, ingest.samples.keep(result.samples))


def build(tmp_path: Path) -> tuple[MeshState, MeshExporter]:
    checks = parse_checks(
        {
            "modules": {"http_2xx": {"prober": "http"}},
            "checks": [
                {"name": "web", "target": 'https://example.org/a"b\\c', "module": "http_2xx"}
            ],
        }
    )
    state = MeshState()
    store = Store(open_database(None, tmp_path))
    ingest = Ingest(state, store, AssignmentHistory(store, checks.digest))
    exporter = MeshExporter(state, ingest, lambda: checks, lambda: 2)
    state.configured = frozenset(checks.checks)
    for agent_id, success in (("a-br", True), ("a-de", False)):
        agent = state.agents[agent_id] = AgentInfo(agent_id, agent_id[-2:].upper(), region="r 1")
        agent.assigned = {"web": checks.checks["web"].target}
        if success:  # a clock estimate and adjusted results
            agent.clock.offset, agent.clock.rtt, agent.clock.skewed = 12.5, 0.02, True
            agent.clock_corrected, agent.clock_clamped = 7, 1
        else:  # results clamped, but no estimate: no offset series
            agent.clock_clamped = 2
        apply(
            ingest,
            agent,
            pb.Result(
                check="web", timestamp=1.0, success=success, duration_seconds=0.25,
                reason=0 if success else pb.FAILURE_REASON_TIMEOUT,
                samples=[
                    pb.Sample(name="probe_http_status_code", value=200 if success else 0),
                    pb.Sample(name="probe_http_duration_seconds", labels={"phase": "connect"}, value=0.01),
                    pb.Sample(name="probe_tls_version_info", labels={"version": "TLS 1.3"}, value=1),
                    pb.Sample(name="not_in_catalog", value=1),
                ],
                http_phase_seconds=[0.0, 0.01, 0.0, 0.1, 0.0],
            ),
        )  # fmt: skip
    return state, exporter


class Reference:
    """The exporter's families with its per-pair counters and histograms built
    as prometheus_client's own CounterMetricFamily and HistogramMetricFamily,
    not as the row families it yields: the independent reference the /metrics
    text and remote write's encoding of the rows are checked against."""

    def __init__(self, exporter: MeshExporter, names: set[str] | None = None) -> None:
        self.exporter, self.names = exporter, names

    def collect(self) -> Iterator[Metric]:
        clocks = False
        for family in self.exporter.collect():
            if self.names is not None and family.name not in self.names:
                continue
            if family.name == "probemesh_probe_results":
                yield from self._counters()
            elif family.name == HIST_DURATION:
                yield from self._histograms()
            elif family.name == "probemesh_agent_connected":
                yield from self._agents()
            elif family.name.startswith("probemesh_agent_clock_"):
                if not clocks:  # the three families at the first of them
                    clocks = True
                    yield from self._clocks()
            elif not isinstance(family, RowFamily):
                yield family

    def _counters(self) -> Iterator[Metric]:
        labels = ["check", "agent", "country"]
        results = CounterMetricFamily(
            "probemesh_probe_results", HEADERS[RESULTS][1], labels=[*labels, "result"]
        )
        failures = CounterMetricFamily(
            "probemesh_probe_failures", HEADERS[FAILURES][1], labels=[*labels, "reason"]
        )
        refused = CounterMetricFamily("probemesh_probe_refused", HEADERS[REFUSED][1], labels=labels)
        for tally in self.exporter._exported_tallies():
            base = [tally.check, tally.agent, tally.country]
            for outcome, count in zip(OUTCOMES, (tally.success, tally.failure), strict=True):
                results.add_metric([*base, outcome], count)
            for reason in FAILURE_REASONS:
                failures.add_metric([*base, reason], tally.reasons.get(reason, 0))
            if tally.refused:
                refused.add_metric(base, tally.refused)
        yield results
        yield failures
        if refused.samples:
            yield refused

    def _agents(self) -> Iterator[Metric]:
        labels = ["agent", "country"]
        connected = GaugeMetricFamily(
            "probemesh_agent_connected", "1 while the agent has a live stream", labels=labels
        )
        last_seen = GaugeMetricFamily(
            "probemesh_agent_last_seen_timestamp_seconds",
            "Last time the agent sent anything",
            labels=labels,
        )
        info = GaugeMetricFamily(
            "probemesh_agent_info",
            "Agent metadata (always 1)",
            labels=[*labels, "region", "version"],
        )
        for agent in self.exporter.state.agents.values():
            key = [agent.agent_id, agent.country]
            connected.add_metric(key, 1.0 if agent.connected else 0.0)
            last_seen.add_metric(key, agent.last_seen)
            info.add_metric([*key, agent.region, agent.version], 1.0)
        yield from (connected, last_seen, info)

    def _clocks(self) -> Iterator[Metric]:
        labels = ["agent", "country"]
        offset = GaugeMetricFamily(
            "probemesh_agent_clock_offset_seconds",
            "Agent clock minus collector clock, estimated NTP-style from echoed heartbeats",
            labels=labels,
        )
        skewed = GaugeMetricFamily(
            "probemesh_agent_clock_skewed",
            "1 when the agent clock offset exceeds --clock-skew-threshold (a fleet problem)",
            labels=labels,
        )
        adjusted = CounterMetricFamily(
            "probemesh_agent_clock_adjusted_results",
            "Results whose time was moved onto the collector clock: corrected by the offset, "
            "or clamped to arrival time because it was in the future",
            labels=[*labels, "adjustment"],
        )
        for agent in self.exporter.state.agents.values():
            key = [agent.agent_id, agent.country]
            if agent.clock.offset is not None:
                offset.add_metric(key, agent.clock.offset)
                skewed.add_metric(key, float(agent.clock.skewed))
            if agent.clock_corrected or agent.clock_clamped:
                adjusted.add_metric([*key, "corrected"], agent.clock_corrected)
                adjusted.add_metric([*key, "clamped"], agent.clock_clamped)
        yield from (family for family in (offset, skewed, adjusted) if family.samples)

    def _histograms(self) -> Iterator[Metric]:
        duration = HistogramMetricFamily(
            HIST_DURATION, HEADERS[HIST_DURATION][1], labels=["check", "country"]
        )
        phase = HistogramMetricFamily(
            HIST_PHASE, HEADERS[HIST_PHASE][1], labels=["check", "country", "phase"]
        )
        for key, hist in self.exporter.state.histograms.items():
            if key[1] not in self.exporter._targets:
                continue
            cumulative, running = [], 0
            for bound, count in zip(BUCKET_BOUNDS, hist.counts, strict=True):
                running += count
                cumulative.append((bound, running))
            family = duration if key[0] == "duration" else phase
            family.add_metric(list(key[1:]), cumulative, hist.total)
        yield duration
        yield phase


def test_fast_text_matches_metric_families(tmp_path: Path) -> None:
    _, exporter = build(tmp_path)
    full = CollectorRegistry()
    full.register(Reference(exporter))  # type: ignore[arg-type]
    reference = parse_strict(generate_latest(full).decode())
    rest = CollectorRegistry(auto_describe=False)
    rest.register(RestView(exporter))
    served = parse_strict(exporter.render_bulk(generate_latest(rest)).decode())
    assert served.headers == reference.headers
    fast = served.samples
    assert fast == reference.samples
    kinds = {family: kind for family, kind, _ in served.headers}
    assert kinds["probemesh_probe_results_total"] == "counter"
    assert kinds["probemesh_ingest_rejected_total"] == "counter"
    assert kinds["probemesh_probe_duration_seconds"] == "histogram"
    names = {name for name, _, _ in fast}
    assert {"probe_success", "probe_http_status_code", "probemesh_probe_results_total"} <= names
    assert "not_in_catalog" not in names
    target = {dict(labels).get("target") for name, labels, _ in fast if name == "probe_success"}
    assert target == {'https://example.org/a"b\\c'}


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool not installed (Debian package prometheus)"
)
def test_promtool_accepts_the_fast_text_with_adjusted_clocks(tmp_path: Path) -> None:
    """Every family, the clock counter of an agent whose results were moved
    onto the collector's clock included (the lint wants a counter's HELP and
    TYPE named with _total in text format 0.0.4)."""
    _, exporter = build(tmp_path)
    rest = CollectorRegistry(auto_describe=False)
    rest.register(RestView(exporter))
    body = exporter.render_bulk(generate_latest(rest))
    assert b"probemesh_agent_clock_adjusted_results_total{" in body
    checked = subprocess.run(
        ["promtool", "check", "metrics"], input=body, capture_output=True, timeout=60
    )
    assert (checked.returncode, checked.stdout + checked.stderr) == (0, b"")


def test_remote_write_views_are_every_family_but_the_journaled_ones(tmp_path: Path) -> None:
    """Remote write's snapshots read AggregateView (every interval) and
    BulkView (less often): between them, the full set of families less
    exactly those written result by result from the journal, each once."""
    _, exporter = build(tmp_path)
    full = [family.name for family in exporter.collect()]
    aggregates = [family.name for family in AggregateView(exporter).collect()]
    bulk = [family.name for family in BulkView(exporter).collect()]
    assert sorted(aggregates + bulk) == sorted(set(full) - RESULT_FAMILIES)
    assert {"probe_success", "probe_http_status_code"} <= set(full) - set(aggregates)
    assert set(bulk) == {
        "probemesh_probe_results", "probemesh_probe_failures",
        "probemesh_probe_duration_seconds", "probemesh_probe_phase_duration_seconds",
    }  # fmt: skip


def test_bulk_counters_come_in_parts_that_add_up_to_the_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """collect_bulk builds the counter families BULK_TALLIES pairs at a time;
    remote write reads the same series from the parts as from whole families,
    and describes each family once."""
    _, exporter = build(tmp_path)
    monkeypatch.setattr(exporter_module, "BULK_TALLIES", 1)
    names = [family.name for family in BulkView(exporter).collect()]
    assert names.count("probemesh_probe_results") == 2  # two pairs, one a part
    bulk = CollectorRegistry()
    bulk.register(BulkView(exporter))
    parts, metadata = series_from_registry(bulk)

    class Whole:
        def collect(self) -> Iterator[Metric]:
            return (f for f in exporter.collect() if f.name in set(names))

    whole = CollectorRegistry()
    whole.register(Whole())  # type: ignore[arg-type]
    expected, expected_metadata = series_from_registry(whole)
    assert parts == expected
    results = [k for k in parts if ("__name__", "probemesh_probe_results_total") in k]
    assert len(results) == 4  # both pairs, success and failure
    assert [m.metric_family_name for m in metadata] == [
        m.metric_family_name for m in expected_metadata
    ]


def test_bulk_snapshot_requests_are_those_of_the_metric_families(tmp_path: Path) -> None:
    """Remote write encodes the bulk view's row families without Sample
    objects; its requests are byte for byte those of the same data as
    prometheus_client families (collect()): the same series in the same
    order, the same values, the same metadata. External labels sort between
    the pairs' own (collector) and after them (zone); one pair has refusals."""
    state, exporter = build(tmp_path)
    agent = state.agents["a-br"]
    apply(exporter.ingest, agent, pb.Result(
        check="web", timestamp=2.0, success=False, duration_seconds=0.0001,
        reason=pb.FAILURE_REASON_POLICY, message="private target",
    ))  # fmt: skip
    bulk = CollectorRegistry()
    bulk.register(BulkView(exporter))
    names = {family.name for family in BulkView(exporter).collect()}
    assert "probemesh_probe_refused" in names

    whole = CollectorRegistry()
    whole.register(Reference(exporter, names))  # type: ignore[arg-type]
    labels = {"collector": "eu-1", "zone": "z", "country": "XX"}
    bodies = []
    for registry in (bulk, whole):
        writer = RemoteWriter(registry, "http://127.0.0.1:9/", external_labels=labels)
        writer._clock = FixedClock()
        writer.snapshot()
        bodies.append([decompress(p.body) for p in writer._snapshots])
    assert bodies[0] == bodies[1]
    request = decode_request(writer._snapshots[0].body)
    sample_names = {label.value for ts in request.timeseries for label in ts.labels
                    if label.name == "__name__"}  # fmt: skip
    assert len(sample_names) == 3 + 2 * 3  # the counters; each histogram's _bucket, _count, _sum
    assert len(request.timeseries) == 2 * (2 + len(FAILURE_REASONS)) + 1 + 7 * (
        len(BUCKET_BOUNDS) + 2
    )  # two pairs, one refusal; BR's duration and 5 phases, DE's duration


class FixedClock:
    def time(self) -> float:
        return 1_700_000_000.0

    def monotonic(self) -> float:
        return 0.0


def decompress(body: bytes) -> bytes:
    return bytes(cramjam.snappy.decompress_raw(body))


def test_prerendered_lines_follow_new_results(tmp_path: Path) -> None:
    state, exporter = build(tmp_path)
    exporter.render_bulk()
    agent = state.agents["a-de"]
    state.apply(agent, pb.Result(check="web", timestamp=2.0, success=True, duration_seconds=0.5))
    state.apply(
        agent,
        pb.Result(
            check="web",
            timestamp=1.5,
            success=False,
            duration_seconds=9.0,
            reason=pb.FAILURE_REASON_DNS,
        ),
    )  # late: counted, not latest
    exporter.prerender()
    assert not exporter.behind
    text = exporter.render_bulk().decode()
    assert 'probe_success{check="web",target="https://example.org/a\\"b\\\\c",agent="a-de"' in text
    parsed = samples_of(text)
    success = {dict(lab)["agent"]: v for n, lab, v in parsed if n == "probe_success"}
    assert success == {"a-br": 1.0, "a-de": 1.0}
    failures = {dict(lab)["reason"]: v for n, lab, v in parsed
                if n == "probemesh_probe_failures_total" and dict(lab)["agent"] == "a-de"}  # fmt: skip
    assert failures == {**dict.fromkeys(FAILURE_REASONS, 0.0), "timeout": 1.0, "dns": 1.0}


def fast_and_reference(exporter: MeshExporter) -> tuple[set[Sample], set[Sample]]:
    """(/metrics text as served, collect() rendered by prometheus_client) as sample sets."""
    rest = CollectorRegistry(auto_describe=False)
    rest.register(RestView(exporter))
    fast = samples_of(exporter.render_bulk(generate_latest(rest)).decode())
    full = CollectorRegistry()
    full.register(Reference(exporter))  # type: ignore[arg-type]
    return fast, samples_of(generate_latest(full).decode())


def agents_of(samples: set[Sample], name: str) -> set[str]:
    return {dict(labels)["agent"] for n, labels, _ in samples if n == name}


def test_histograms_are_cached_text_and_follow_observations(tmp_path: Path) -> None:
    state, exporter = build(tmp_path)
    fast, reference = fast_and_reference(exporter)
    assert fast == reference
    count = 'probemesh_probe_duration_seconds_count{check="web",country="DE"}'
    assert f"{count} 1.0\n" in exporter.render_bulk().decode()
    phase = {dict(lab)["phase"] for n, lab, _ in fast if n.startswith("probemesh_probe_phase")}
    assert phase == {"resolve", "connect", "tls", "processing", "transfer"}
    state.apply(state.agents["a-de"], pb.Result(check="web", timestamp=3.0, duration_seconds=7.0))
    assert f"{count} 2.0\n" in exporter.render_bulk().decode()
    fast, reference = fast_and_reference(exporter)
    assert fast == reference


def test_expired_agent_and_removed_check_lose_their_lines(tmp_path: Path) -> None:
    state, exporter = build(tmp_path)
    exporter.render_bulk()
    state.forget_agent("a-de")
    fast, reference = fast_and_reference(exporter)
    assert fast == reference
    assert agents_of(fast, "probe_success") == {"a-br"}
    assert agents_of(fast, "probe_http_status_code") == {"a-br"}
    assert "a-de" in agents_of(fast, "probemesh_probe_results_total"), "counters stay"
    assert exporter.guard.series == exporter.guard.admitted[("web", "a-br")], "budget released"

    reloaded = parse_checks({"modules": {"http_2xx": {"prober": "http"}},
                             "checks": [{"name": "api", "target": "https://example.org/",
                                         "module": "http_2xx"}]})  # fmt: skip
    exporter.checks = lambda: reloaded
    state.configured = frozenset(reloaded.checks)
    state.forget_checks({"api": "https://example.org/"}, {"web"}, now=100.0)
    fast, reference = fast_and_reference(exporter)
    assert fast == reference
    assert {n for n, labels, _ in fast if ("check", "web") in labels} == {
        "probemesh_probe_results_total",
        "probemesh_probe_failures_total",
        "probemesh_probe_duration_seconds_bucket",
        "probemesh_probe_duration_seconds_sum",
        "probemesh_probe_duration_seconds_count",
        "probemesh_probe_phase_duration_seconds_bucket",
        "probemesh_probe_phase_duration_seconds_sum",
        "probemesh_probe_phase_duration_seconds_count",
    }, "a removed check keeps its counters and histograms, no gauges, while it lingers"
    assert exporter.guard.series == 0
    state.expire_lingering(horizon=200.0)  # --series-ttl passed with no late result
    fast, reference = fast_and_reference(exporter)
    assert fast == reference
    assert not {n for n, labels, _ in fast if ("check", "web") in labels}, (
        "nothing of a removed check once it stopped lingering"
    )


def test_reload_with_a_new_target_rerenders_its_lines(tmp_path: Path) -> None:
    state, exporter = build(tmp_path)
    exporter.render_bulk()
    moved = parse_checks({"modules": {"http_2xx": {"prober": "http"}},
                          "checks": [{"name": "web", "target": "https://example.net/",
                                      "module": "http_2xx"}]})  # fmt: skip
    exporter.checks = lambda: moved
    state.forget_checks({"web": "https://example.net/"}, set(), now=100.0)
    fast, reference = fast_and_reference(exporter)
    assert fast == reference
    assert not [lab for n, lab, _ in fast if n == "probe_success"], (
        "the latest results ran against the old target: no gauge claims the new one"
    )
    agent = state.agents["a-br"]
    agent.assigned = {"web": "https://example.net/"}
    state.apply(agent, pb.Result(check="web", timestamp=0.5, success=True, duration_seconds=0.1))
    fast, reference = fast_and_reference(exporter)
    assert fast == reference
    targets = {dict(lab).get("target") for n, lab, _ in fast if n == "probe_success"}
    assert targets == {"https://example.net/"}


def test_guard_refusal_removes_every_line_of_the_pair_until_budget_frees(tmp_path: Path) -> None:
    state, exporter = build(tmp_path)
    # a-br's pair exports 5 series (success, duration, 3 samples); room for one pair only
    exporter.configure(SecurityLimits(max_series_per_agent=100, max_series=6))
    fast, reference = fast_and_reference(exporter)
    assert fast == reference
    admitted = agents_of(fast, "probe_success")
    assert len(admitted) == 1
    assert agents_of(fast, "probemesh_probe_results_total") == admitted, "refused: no counters"
    assert exporter.rejections()["cardinality"] == 5
    refused = ({"a-br", "a-de"} - admitted).pop()
    state.apply(state.agents[refused], pb.Result(check="web", timestamp=5.0, duration_seconds=1))
    fast, _ = fast_and_reference(exporter)
    assert agents_of(fast, "probe_success") == admitted, "still refused, counted once"
    assert exporter.rejections()["cardinality"] == 5
    state.forget_agent(admitted.pop())
    fast, reference = fast_and_reference(exporter)
    assert fast == reference
    assert agents_of(fast, "probe_success") == {refused}, "admitted once budget freed"


def test_known_counters_start_at_zero(tmp_path: Path) -> None:
    _, exporter = build(tmp_path)
    fast, reference = fast_and_reference(exporter)
    assert fast == reference
    failures = {dict(lab)["reason"]: v for n, lab, v in fast
                if n == "probemesh_probe_failures_total" and dict(lab)["agent"] == "a-br"}  # fmt: skip
    assert failures == dict.fromkeys(FAILURE_REASONS, 0.0), "a pair exports every reason"
    results = {dict(lab)["result"]: v for n, lab, v in fast
               if n == "probemesh_probe_results_total" and dict(lab)["agent"] == "a-br"}  # fmt: skip
    assert results == {"success": 1.0, "failure": 0.0}
    rejected = {dict(lab)["reason"]: v for n, lab, v in fast
                if n == "probemesh_ingest_rejected_total"}  # fmt: skip
    # The servicer's reasons join these on a running collector (tests/prometheus/test_promtool.py).
    assert set(rejected) == {*REJECT_REASONS, *SAMPLE_REASONS, "cardinality"}
    assert rejected["invalid_sample"] == 2.0, "one not_in_catalog sample per result"
    assert {r for r, v in rejected.items() if v} == {"invalid_sample"}


@pytest.mark.parametrize("late", [True, False], ids=["late", "replaced"])
def test_refused_samples_count_at_ingest_even_if_never_rendered(tmp_path: Path, late: bool) -> None:
    state, exporter = build(tmp_path)
    exporter.render_bulk()
    agent = state.agents["a-br"]
    bad = [pb.Sample(name="probe_http_status_code", value=float("nan")),
           pb.Sample(name="probe_http_duration_seconds", labels={"phase": "bogus"}, value=1),
           pb.Sample(name="probe_http_redirects", value=0),
           pb.Sample(name="probe_http_redirects", value=1)]  # fmt: skip
    apply(exporter.ingest, agent, pb.Result(check="web", timestamp=0.5 if late else 2.0,
                                            success=True, duration_seconds=0.1, samples=bad))  # fmt: skip
    if not late:  # replaced by a newer result before any scrape saw it
        apply(exporter.ingest, agent, pb.Result(check="web", timestamp=3.0, duration_seconds=0.1))
    assert exporter.rejections()["invalid_sample"] == 2 + 2
    assert exporter.rejections()["duplicate_sample"] == 1
    fast, reference = fast_and_reference(exporter)
    assert fast == reference
    rejected = {dict(lab)["reason"]: v for n, lab, v in fast
                if n == "probemesh_ingest_rejected_total"}  # fmt: skip
    assert (rejected["invalid_sample"], rejected["duplicate_sample"]) == (4.0, 1.0)


def test_too_many_samples_are_refused_at_ingest(tmp_path: Path) -> None:
    state, exporter = build(tmp_path)
    exporter.ingest.configure(SecurityLimits(max_samples_per_result=1))
    samples = [pb.Sample(name="probe_http_status_code", value=200),
               pb.Sample(name="probe_http_redirects", value=0)]  # fmt: skip
    apply(exporter.ingest, state.agents["a-br"],
          pb.Result(check="web", timestamp=4.0, success=True, duration_seconds=0.1, samples=samples))  # fmt: skip
    assert exporter.rejections()["too_many_samples"] == 1
    kept = state.latest[("web", "a-br")].samples
    assert list(sample_items(kept)) == [("probe_http_status_code", (), 200.0)]


def test_exporter_reads_state_without_writing_it(tmp_path: Path) -> None:
    state, exporter = build(tmp_path)
    other = state.feed()  # a second reader of the changes
    latest = state.latest[("web", "a-br")]
    series, values = latest.series, latest.values
    exporter.render_bulk()
    assert latest.series is series and latest.values is values, (
        "the exporter never writes samples back"
    )
    assert other.tallies == set(state.tallies.values()), "the exporter drains only its own feed"
    state.forget_agent("a-de")
    fast, reference = fast_and_reference(exporter)
    assert fast == reference
    assert agents_of(fast, "probe_success") == {"a-br"}
    assert other.removed == {("web", "a-de")}, "removals stay for every other reader"
