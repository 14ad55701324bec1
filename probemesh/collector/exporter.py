"""Prometheus export through one custom Collector.

State lives in plain structures (MeshState, Ingest); collect() snapshots them
into metric families on every scrape instead of calling labels().set() per
result. Only series of configured checks and known agents are exported, and a
probe sample reaches /metrics only if the catalog admits its name and labels.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from probemesh.catalog import PROBE_METRICS
from probemesh.checks import CheckSpec, ChecksFile
from probemesh.collector import exposition
from probemesh.collector.ingest import Ingest
from probemesh.collector.limits import SecurityLimits, SeriesGuard
from probemesh.collector.state import DURATION_BUCKETS, Latest, MeshState, Tally

BASE_LABELS = ["check", "target", "agent", "country", "region"]
_BUCKET_BOUNDS = [*(f"{b:g}" for b in DURATION_BUCKETS), "+Inf"]


class MeshExporter(Collector):
    """Builds every probemesh family from the collector's state at scrape time."""

    def __init__(
        self,
        state: MeshState,
        ingest: Ingest,
        checks: Callable[[], ChecksFile],
        active_streams: Callable[[], int],
        extra: Iterable[Callable[[], Iterable[Metric]]] = (),
        limits: SecurityLimits | None = None,
    ) -> None:
        self.state = state
        self.ingest = ingest
        self.checks = checks
        self.active_streams = active_streams
        self.extra = list(extra)
        self.last_render_seconds = 0.0
        self.rejected_samples: Counter[str] = Counter()
        # (name, labels) -> admitted by the catalog; the same few keys recur in every result
        self._verdicts: dict[tuple[str, tuple[tuple[str, str], ...]], bool] = {}
        self.configure(limits or SecurityLimits())

    def configure(self, limits: SecurityLimits) -> None:
        """Apply the cardinality limits (series per agent, overall, samples per result)."""
        self.max_samples = limits.max_samples_per_result
        self.guard = SeriesGuard(limits, self.ingest.rejected)

    def collect(self) -> Iterator[Metric]:
        """Every family as Metric objects (remote write, tests)."""
        yield from self._probe_families()
        yield from self._counter_families()
        yield from self.collect_rest()

    def collect_rest(self) -> Iterator[Metric]:
        """The families that are few series: histograms, agents, outages, self."""
        yield from self._histogram_families()
        yield from self._agent_families()
        for source in self.extra:
            yield from source()
        yield from self._self_families()

    def render_bulk(self) -> str:
        """Probe gauges and result counters as exposition text, from cached lines."""
        started = time.perf_counter()
        chunks: list[dict[str, str]] = []
        for pair, latest, spec, _ in self._admitted():
            chunks.append(latest.lines or self._render_latest(pair, latest, spec))
        for tally in self._exported_tallies():
            if tally.lines is None:
                tally.lines = exposition.tally_lines(tally)
            chunks.append(tally.lines)
        text = exposition.join(chunks)
        self.last_render_seconds = time.perf_counter() - started
        return text

    def _render_latest(self, pair: tuple[str, str], latest: Latest, spec: CheckSpec) -> dict[str, str]:
        self._validated(latest)
        base = (
            f'check="{pair[0]}",target="{exposition.escape(spec.target)}",agent="{pair[1]}",'
            f'country="{latest.country}",region="{exposition.escape(latest.region)}"'
        )
        latest.lines = exposition.latest_lines(latest, base)
        return latest.lines

    def prerender(self) -> int:
        """Render what changed since the last call, so a scrape mostly joins cached text.

        Run between scrapes (the collector calls it every half second): the CPU
        is the same, but a scrape of a large mesh no longer waits for it.
        """
        state = self.state
        checks = self.checks().checks
        keys, state.unrendered = state.unrendered, set()
        for pair in keys:
            latest = state.latest.get(pair)
            spec = checks.get(pair[0])
            if latest is not None and spec is not None and latest.lines is None:
                self._render_latest(pair, latest, spec)
        tallies, state.unrendered_tallies = state.unrendered_tallies, set()
        for tally in tallies:
            if tally.lines is None:
                tally.lines = exposition.tally_lines(tally)
        return len(keys) + len(tallies)

    def _admitted(self) -> Iterator[tuple[tuple[str, str], Latest, CheckSpec, list[tuple[str, tuple[tuple[str, str], ...], float]]]]:
        """Latest results of configured checks that the series guard admits."""
        checks = self.checks().checks
        guard = self.guard
        live: set[tuple[str, str]] = set()
        for pair, latest in self.state.latest.items():
            spec = checks.get(pair[0])
            if spec is None:
                continue
            live.add(pair)
            samples = self._validated(latest)
            if guard.admit(pair, 2 + len(samples)):
                yield pair, latest, spec, samples
        guard.retain(live)

    def _exported_tallies(self) -> Iterator[Tally]:
        checks = self.checks().checks
        refused = self.guard.refused
        for pair, tally in self.state.tallies.items():
            if pair[0] in checks and not (refused and pair in refused):
                yield tally

    def _validated(self, latest: Latest) -> list[tuple[str, tuple[tuple[str, str], ...], float]]:
        """The latest result's samples the catalog admits; computed once per result.

        A repeated name+labels keeps its first value (a duplicate series would
        spoil the whole exposition) and samples beyond max_samples are dropped
        as "cardinality".
        """
        if latest.samples is not None:
            return latest.samples
        kept: list[tuple[str, tuple[tuple[str, str], ...], float]] = []
        seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
        rejected = self.ingest.rejected
        verdicts = self._verdicts
        for sample in latest.result.samples:
            name = sample.name
            labels = tuple(sorted(sample.labels.items())) if sample.labels else ()
            key = (name, labels)
            ok = verdicts.get(key)
            if ok is None:
                spec = PROBE_METRICS.get(name)
                ok = spec is not None and spec.labels_ok(dict(labels))
                if len(verdicts) < 100_000:  # bounded: hostile label values are not cached forever
                    verdicts[key] = ok
            value = sample.value
            if not ok or not math.isfinite(value):
                rejected["invalid_sample"] += 1
                continue
            if key in seen:
                rejected["duplicate_sample"] += 1
                continue
            if len(kept) >= self.max_samples:
                rejected["cardinality"] += 1
                continue
            seen.add(key)
            kept.append((name, labels, value))
        latest.samples = kept
        return kept
    def _probe_families(self) -> Iterator[Metric]:
        headers = exposition.HEADERS
        success = GaugeMetricFamily(exposition.SUCCESS, headers[exposition.SUCCESS][1], labels=BASE_LABELS)
        duration = GaugeMetricFamily(exposition.DURATION, headers[exposition.DURATION][1], labels=BASE_LABELS)
        families: dict[str, GaugeMetricFamily] = {}
        for (check, agent), latest, spec, samples in self._admitted():
            base = [check, spec.target, agent, latest.country, latest.region]
            result = latest.result
            success.add_metric(base, 1.0 if result.success else 0.0)
            duration.add_metric(base, result.duration_seconds)
            for name, labels, value in samples:
                family = families.get(name)
                if family is None:
                    keys = [k for k, _ in labels]
                    family = families[name] = GaugeMetricFamily(
                        name, PROBE_METRICS[name].help, labels=BASE_LABELS + keys
                    )
                family.add_metric(base + [v for _, v in labels], value)
        yield success
        yield duration
        yield from families.values()

    def _counter_families(self) -> Iterator[Metric]:
        headers = exposition.HEADERS
        results = CounterMetricFamily(
            "probemesh_probe_results",
            headers[exposition.RESULTS][1],
            labels=["check", "agent", "country", "result"],
        )
        failures = CounterMetricFamily(
            "probemesh_probe_failures",
            headers[exposition.FAILURES][1],
            labels=["check", "agent", "country", "reason"],
        )
        for tally in self._exported_tallies():
            for key, value in tally.counters():
                (results if key[0] == "results" else failures).add_metric(list(key[1:]), value)
        yield results
        yield failures

    def _histogram_families(self) -> Iterator[Metric]:
        duration = HistogramMetricFamily(
            "probemesh_probe_duration_seconds",
            "Total probe duration per check and country, every result counted",
            labels=["check", "country"],
        )
        phase = HistogramMetricFamily(
            "probemesh_probe_phase_duration_seconds",
            "HTTP phase durations of successful probes per check and country",
            labels=["check", "country", "phase"],
        )
        checks = self.checks().checks
        for key, hist in self.state.histograms.items():
            if key[1] not in checks:
                continue
            cumulative, running = [], 0
            for bound, count in zip(_BUCKET_BOUNDS, hist.counts, strict=True):
                running += count
                cumulative.append((bound, running))
            family = duration if key[0] == "duration" else phase
            family.add_metric(list(key[1:]), cumulative, hist.total)
        yield duration
        yield phase

    def _agent_families(self) -> Iterator[Metric]:
        labels = ["agent", "country"]
        connected = GaugeMetricFamily("probemesh_agent_connected", "1 while the agent has a live stream", labels=labels)
        last_seen = GaugeMetricFamily(
            "probemesh_agent_last_seen_timestamp_seconds", "Last time the agent sent anything", labels=labels
        )
        local = GaugeMetricFamily(
            "probemesh_agent_local_problem",
            "1 when the agent fails nearly everything while others see the same targets up",
            labels=labels,
        )
        info = GaugeMetricFamily(
            "probemesh_agent_info", "Agent metadata (always 1)", labels=[*labels, "region", "version"]
        )
        for agent in self.state.agents.values():
            key = [agent.agent_id, agent.country]
            connected.add_metric(key, 1.0 if agent.connected else 0.0)
            last_seen.add_metric(key, agent.last_seen)
            local.add_metric(key, 1.0 if agent.local_problem else 0.0)
            info.add_metric([*key, agent.region, agent.version], 1.0)
        yield from (connected, last_seen, local, info)

    def _self_families(self) -> Iterator[Metric]:
        ingest = self.ingest
        yield CounterMetricFamily(
            "probemesh_ingest_results", "Results applied by this collector process", value=ingest.results_total
        )
        yield CounterMetricFamily(
            "probemesh_ingest_batches", "Result batches applied by this collector process", value=ingest.batches_total
        )
        yield CounterMetricFamily(
            "probemesh_duplicate_results",
            "Results received again after a reconnect and skipped by dedupe",
            value=ingest.duplicates_total,
        )
        rejected = CounterMetricFamily(
            "probemesh_ingest_rejected",
            "Batches, results, samples or streams refused, by reason",
            labels=["reason"],
        )
        for reason, count in sorted(ingest.rejected.items()):
            rejected.add_metric([reason], count)
        yield rejected
        yield GaugeMetricFamily(
            "probemesh_ingest_queue_depth", "Batches waiting to be applied", value=ingest.queue.qsize()
        )
        yield GaugeMetricFamily("probemesh_active_streams", "Connected agent streams", value=self.active_streams())
        yield GaugeMetricFamily(
            "probemesh_scrape_duration_seconds",
            "Time the previous /metrics render took",
            value=self.last_render_seconds,
        )


class RestView(Collector):
    """The exporter's small families only; /metrics renders the bulk ones itself."""

    def __init__(self, exporter: MeshExporter) -> None:
        self.exporter = exporter

    def collect(self) -> Iterator[Metric]:
        return self.exporter.collect_rest()
