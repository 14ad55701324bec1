"""Prometheus export through one custom Collector.

State lives in plain structures (MeshState, Ingest); collect() snapshots them
into metric families on every scrape instead of calling labels().set() per
result. Only series of configured checks and known agents are exported; the
samples are those ingest's SampleFilter kept. The exporter reads the state
and never writes it: what changed comes from its own ChangeFeed.
A check removed from the file keeps its counters and histograms exported while
results buffered before the edit still arrive (MeshState.lingering); they
expire after --series-ttl without one, as a gone agent's gauges do.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from itertools import accumulate

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from probemesh.catalog import PROBE_METRICS
from probemesh.checks import ChecksFile, CheckSpec
from probemesh.collector import exposition
from probemesh.collector.ingest import Ingest
from probemesh.collector.limits import SecurityLimits, SeriesGuard
from probemesh.collector.row_families import Column, Row, RowFamily
from probemesh.collector.runnable import rule_and_detail
from probemesh.collector.samples import sample_items
from probemesh.collector.scrape_groups import AGENTS, ALL, HISTOGRAMS, PROBES
from probemesh.collector.state import Histogram, Latest, MeshState, Tally
from probemesh.collector.work_lane import Steps

BASE_LABELS = ["check", "target", "agent", "country", "region"]
PIECE_BYTES = 1 << 19  # the size of a streamed piece of /metrics
BULK_TALLIES = 1000  # pairs per counter family in a remote-write snapshot (collect_bulk)
HISTOGRAMS_READ_HORIZON = 180.0
"""Seconds after the last scrape that read the histograms during which their
text is still pre-rendered every second: three of Prometheus's default 1 min
scrape intervals (twelve of the 15 s the shipped job uses), so a scraper at
any usual interval that missed a scrape or two keeps it on, and a collector
scraped only for its health stops rendering them three minutes after its
last full scrape."""
_AGENT_FAMILIES = (
    ("probemesh_agent_connected", "1 while the agent has a live stream"),
    ("probemesh_agent_last_seen_timestamp_seconds", "Last time the agent sent anything"),
    ("probemesh_agent_info", "Agent metadata (always 1)"),
)


_AGENT_KEY = ("agent", "country")
_CLOCK_OFFSET = (
    "probemesh_agent_clock_offset_seconds",
    "Agent clock minus collector clock, estimated NTP-style from echoed heartbeats",
)
_CLOCK_SKEWED = (
    "probemesh_agent_clock_skewed",
    "1 when the agent clock offset exceeds --clock-skew-threshold (a fleet problem)",
)
_CLOCK_ADJUSTED = (
    "probemesh_agent_clock_adjusted_results",
    "Results whose time was moved onto the collector clock: corrected by the offset, "
    "or clamped to arrival time because it was in the future",
)
_ADJUSTED_COLUMNS = tuple(
    Column(f"{_CLOCK_ADJUSTED[0]}_total", "adjustment", a) for a in ("corrected", "clamped")
)

_RESULT_COLUMNS = tuple(
    Column("probemesh_probe_results_total", "result", o) for o in exposition.OUTCOMES
)
_FAILURE_COLUMNS = tuple(
    Column("probemesh_probe_failures_total", "reason", r) for r in exposition.FAILURE_REASONS
)
_REFUSED_COLUMNS = (Column("probemesh_probe_refused_total"),)
_HISTOGRAMS = (
    ("duration", exposition.HIST_DURATION, ("check", "country")),
    ("phase", exposition.HIST_PHASE, ("check", "country", "phase")),
)


def _histogram_columns(name: str) -> list[Column]:
    """A histogram's cumulative buckets, then _count and _sum (prometheus_client's order)."""
    buckets = [Column(f"{name}_bucket", "le", bound) for bound in exposition.BUCKET_BOUNDS]
    return [*buckets, Column(f"{name}_count"), Column(f"{name}_sum")]


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
        stream_rejected: Mapping[str, int] | None = None,
    ) -> None:
        self.state = state
        self.ingest = ingest
        self.checks = checks
        self.active_streams = active_streams
        self.extra = list(extra)
        self.last_render_seconds = 0.0
        self.histograms_read = float("-inf")  # time.monotonic() of the last scrape reading them
        self.piece_bytes = PIECE_BYTES
        # Every series of probemesh_ingest_rejected_total has one owner, the
        # module that refuses: the servicer (streams), ingest (results and
        # samples) and this exporter's series guard (cardinality).
        self.rejected: Counter[str] = Counter({"cardinality": 0})
        self._rejections = [
            stream_rejected or {}, ingest.rejected, ingest.samples.rejected, self.rejected,
        ]  # fmt: skip
        self.feed = state.feed()
        self.configure(limits or SecurityLimits())

    def configure(self, limits: SecurityLimits) -> None:
        """Apply the series budget (series per agent and overall)."""
        self.guard = SeriesGuard(limits, self.rejected)
        self._reset()

    def _reset(self) -> None:
        """Forget every rendered line; the next prerender renders the whole state."""
        self.text = exposition.FamilyText((exposition.HIST_DURATION, exposition.HIST_PHASE))
        # histograms whose text is out of date: rendered by a pre-render that wants them
        self._due: dict[tuple[str, ...], Histogram] = {}
        self.feed.tallies.update(self.state.tallies.values())
        # pair -> the latest result its gauges show; present = admitted by the guard
        self._rendered: dict[tuple[str, str], Latest] = {}
        # exported check -> target its lines were rendered with ("" for a lingering check)
        self._targets: dict[str, str] = {}
        self._checks: ChecksFile | None = None
        self._lingering_version = -1
        self._released = self.guard.released

    def collect(self) -> Iterator[Metric]:
        """Every family as Metric objects (remote write, tests)."""
        self.prerender(histograms=False)
        yield from self._probe_families()
        yield from self._counter_rows(self._exported_tallies())
        yield from self._histogram_rows()
        yield from self._agent_families()
        yield from self.collect_rest()

    def collect_aggregates(self) -> Iterator[Metric]:
        """The families remote write snapshots every interval: agent gauges and
        the small ones. Not the per-result probe gauges (journaled result by
        result) nor the bulk ones (collect_bulk): building them every interval
        cost seconds of event loop at tens of thousands of pairs."""
        self.prerender(histograms=False)
        yield from self._agent_families()
        yield from self.collect_rest()

    def collect_bulk(self) -> Iterator[Metric]:
        """The result, failure and refusal counters of every check x agent pair
        and the per check x country histograms: most of a snapshot's series.

        Row families (row_families.py), which remote write encodes without a
        Sample per series. The counters come as several families of each
        name, BULK_TALLIES pairs each, built as the reader gets to them, so
        a snapshot never holds every pair's rows at once.
        """
        self.prerender(histograms=False)
        tallies = self._exported_tallies()
        for start in range(0, len(tallies), BULK_TALLIES):
            yield from self._counter_rows(tallies[start : start + BULK_TALLIES])
        yield from self._histogram_rows()

    def collect_rest(self) -> Iterator[Metric]:
        """The families that are few series: outages and the collector's own."""
        for source in self.extra:
            yield from source()
        yield from self._self_families()

    def render_bulk(self, suffix: bytes = b"", groups: frozenset[str] = ALL) -> bytes:
        """Probe gauges, counters, histograms and agent gauges as one exposition body.

        For tests and tools; /metrics streams the same text (render_batches).
        """
        return b"".join(list(self.render_batches(suffix, groups=groups)))

    def render_batches(
        self, suffix: bytes = b"", size: int | None = None, groups: frozenset[str] = ALL
    ) -> Iterator[bytes]:
        """The body of the families in groups (scrape_groups), in pieces of about
        size bytes (piece_bytes by default).

        Everything is taken at the first step (the cached chunks, a snapshot of
        the counts), so the body is one snapshot however slowly the client
        reads; after that only one piece at a time is built. A large mesh's
        body is hundreds of MB: held whole (and copied again into the
        transport's buffer) it would double the collector's memory at every
        scrape. Small parts (a header, a family of a few lines) are sent
        together: each piece costs the handler a turn of the event loop.
        last_render_seconds is the time spent building the pieces of the last
        body with the probes (a scrape of the collector's health alone would
        hide what the probes cost).
        """
        size = size or self.piece_bytes
        parts = self._pieces(suffix, size, groups)
        spent = 0.0
        held: list[bytes] = []
        held_bytes = 0
        while True:
            started = time.perf_counter()
            part = next(parts, None)
            piece = None
            if part is None or (held and held_bytes + len(part) > size):
                piece, held, held_bytes = b"".join(held), [], 0
            if part is not None:
                held.append(part)
                held_bytes += len(part)
            spent += time.perf_counter() - started
            if piece:
                yield piece
            if part is None:
                break
        if PROBES in groups:
            self.last_render_seconds = spent

    def _pieces(self, suffix: bytes, size: int, groups: frozenset[str]) -> Iterator[bytes]:
        """Whatever changed since the last prerender is admitted (and the
        histograms rendered) first, so the text is current; then the gauges,
        the cached histograms, the counters, the agents and suffix, of the
        groups asked for.

        A histogram family's chunks are one histogram each, so its first chunk
        sizes its pieces.
        """
        if HISTOGRAMS in groups:
            self.histograms_read = time.monotonic()
        self.prerender(histograms=HISTOGRAMS in groups)
        gauges = rows = None
        if PROBES in groups:
            rendered = self._rendered
            targets = {c: exposition.escape(target) for c, target in self._targets.items()}
            gauges = exposition.GaugeRows(list(rendered), list(rendered.values()), targets)
            rows = exposition.counter_rows(self._exported_tallies())
        families = self.text.snapshot() if HISTOGRAMS in groups else []
        tail = (self._agent_text() if AGENTS in groups else b"") + suffix
        if gauges is not None:
            yield from exposition.gauge_pieces(gauges, size)
        while families:
            header, chunks = families.pop(0)
            yield header
            step = max(size // len(chunks[0]), 1)
            for start in range(0, len(chunks), step):
                yield b"".join(chunks[start : start + step])
            del chunks  # this family's old chunks may go as the cache replaces them
        if rows is not None:
            yield from exposition.counter_pieces(rows, max(size // 1024, 1))  # a row is ~1 KB
        yield tail

    @property
    def pre_rendering(self) -> bool:
        """A scrape read the histograms within HISTOGRAMS_READ_HORIZON: keep their
        text current every second, so the next such scrape has little left to do."""
        return time.monotonic() - self.histograms_read < HISTOGRAMS_READ_HORIZON

    def prerender(self, budget: float | None = None, histograms: bool = True) -> int:
        """Admit the pairs whose result changed since the last call and, with
        histograms, render the text of every histogram they changed since it was
        last rendered; return how many tallies and histograms that was.

        With a budget (seconds), stop once it is spent and leave the rest for the
        next call, so a burst of changes never stalls the event loop for long.

        Run between scrapes (the collector calls it every second), so admission
        follows the data, not the scrapes, and a scrape has little left to do.
        Admission is never left for later: the cardinality refusals and the
        counters remote write exports follow it. Histogram text is only read by
        /metrics; without histograms, what changed waits for a call with them.
        """
        state = self.state
        feed = self.feed
        checks = self.checks()
        if checks is not self._checks or state.lingering_version != self._lingering_version:
            self._resync(checks)
        specs = checks.checks
        if feed.removed:
            removed, feed.removed = feed.removed, set()
            for pair in removed:
                self._drop_latest(pair)
            self._retain(specs)
            for pair in removed:
                tally = state.tallies.get(pair)
                if tally is not None:
                    self._render_tally(tally, specs)
        changed, feed.tallies = feed.tallies, set()
        if self.guard.released != self._released and self.guard.refused:
            self._released = self.guard.released
            changed.update(state.tallies[p] for p in self.guard.refused if p in state.tallies)
        due = self._due
        deadline = time.perf_counter() + budget if budget is not None else None
        pending = list(changed)
        done = 0
        exported = self._targets
        for tally in pending:
            self._render_tally(tally, specs)
            if tally.check in exported:
                due.update(zip(tally.hist_keys, tally.hists, strict=True))
            done += 1
            if deadline is not None and done % 16 == 0 and time.perf_counter() > deadline:
                feed.tallies.update(pending[done:])  # the next call goes on
                return done
        if histograms:
            done += self._render_due(deadline)
        return done

    def prerender_steps(self, histograms: bool, until: float | None = None) -> Steps[None]:
        """prerender in 1 ms slices, for the work lane (ingest and the API keep
        flowing), until nothing is left or, with until, time.monotonic() passes it."""
        while True:
            self.prerender(budget=0.001, histograms=histograms)
            if not (self.behind or (histograms and self._due)):
                return
            if until is not None and time.monotonic() > until:
                return
            yield

    def _render_due(self, deadline: float | None) -> int:
        """Render the due histograms, up to deadline (perf_counter) when given, in
        the order they fell due (a histogram's first rendering gives it its place
        in the text)."""
        due = self._due
        done = 0
        for key, hist in due.items():
            self._render_histogram(key, hist)
            done += 1
            if deadline is not None and done % 16 == 0 and time.perf_counter() > deadline:
                break
        if done == len(due):
            due.clear()
        else:
            for key in list(itertools.islice(due, done)):
                del due[key]
        return done

    def _resync(self, checks: ChecksFile) -> None:
        """A (re)loaded checks file or a change in the lingering checks: re-render
        the pairs of added, removed, re-targeted, lingering or expired checks."""
        targets = dict.fromkeys(self.state.lingering, "")
        targets.update((name, spec.target) for name, spec in checks.checks.items())
        stale = {name for name in self._targets.keys() | targets.keys()
                 if self._targets.get(name) != targets.get(name)}  # fmt: skip
        self._checks, self._targets = checks, targets
        self._lingering_version = self.state.lingering_version
        if not stale:
            return
        state = self.state
        for pair in [p for p in self._rendered if p[0] in stale]:
            self._drop_latest(pair)
        self._retain(checks.checks)
        for pair, tally in state.tallies.items():
            if pair[0] in stale:
                self._render_tally(tally, checks.checks)
        self._due.update((key, hist) for key, hist in state.histograms.items() if key[1] in stale)

    def _retain(self, specs: Mapping[str, CheckSpec]) -> None:
        """Release the guard budget of pairs no longer exported (expired agent or check)."""
        self.guard.retain({pair for pair in self.state.latest if pair[0] in specs})

    def _render_tally(self, tally: Tally, specs: Mapping[str, CheckSpec]) -> None:
        """Admit (or drop) the gauges of one check x agent's latest result; its
        gauges and counters are rendered at each scrape (_pieces)."""
        pair = tally.pair
        spec = specs.get(tally.check)
        latest = tally.latest
        if spec is None:  # check gone, or lingering: counters only, no gauges
            self._drop_latest(pair)
        elif latest is not None and self._rendered.get(pair) is not latest:
            if self.guard.admit(pair, 2 + len(latest.series)):
                self._rendered[pair] = latest
            else:
                self._drop_latest(pair)

    def _drop_latest(self, pair: tuple[str, str]) -> None:
        self._rendered.pop(pair, None)

    def _render_histogram(self, key: tuple[str, ...], hist: Histogram) -> None:
        name = exposition.HIST_DURATION if key[0] == "duration" else exposition.HIST_PHASE
        if key[1] in self._targets:
            self.text.put(name, key, exposition.histogram_lines(key, hist))
        else:
            self.text.drop(name, key)

    def _agent_text(self) -> bytes:
        """The agent gauges; one line each per agent, rendered at every scrape."""
        connected, last_seen, info = [], [], []
        escape = exposition.escape
        for agent in self.state.agents.values():
            key = f'agent="{escape(agent.agent_id)}",country="{escape(agent.country)}"'
            connected.append(f"probemesh_agent_connected{{{key}}} {float(agent.connected)!r}\n")
            last_seen.append(
                f"probemesh_agent_last_seen_timestamp_seconds{{{key}}} {float(agent.last_seen)!r}\n"
            )
            info.append(
                f'probemesh_agent_info{{{key},region="{escape(agent.region)}",'
                f'version="{escape(agent.version)}"}} 1.0\n'
            )
        parts = []
        for (name, help_text), lines in zip(
            _AGENT_FAMILIES, (connected, last_seen, info), strict=True
        ):
            if lines:
                parts.append(f"# HELP {name} {help_text}\n# TYPE {name} gauge\n")
                parts.extend(lines)
        for family in self._clock_families():
            if family.rows:
                # text format 0.0.4 names a counter family as its samples: with _total
                name = f"{family.name}_total" if family.type == "counter" else family.name
                parts.append(f"# HELP {name} {family.documentation}\n# TYPE {name} {family.type}\n")
                parts.extend(_row_lines(family))
        return "".join(parts).encode()

    def _clock_families(self) -> list[RowFamily]:
        """The clock families, a row per agent; agents without an estimate (an agent
        that does not answer clock probes) have no offset series."""
        offsets: list[Row] = []
        skewed: list[Row] = []
        adjusted: list[Row] = []
        for agent in self.state.agents.values():
            key = (agent.agent_id, agent.country)
            clock = agent.clock
            if clock.offset is not None:
                offsets.append((key, (clock.offset,)))
                skewed.append((key, (1.0 if clock.skewed else 0.0,)))
            if agent.clock_corrected or agent.clock_clamped:
                adjusted.append((key, (float(agent.clock_corrected), float(agent.clock_clamped))))
        return [
            RowFamily(*_CLOCK_OFFSET, "gauge", _AGENT_KEY, (Column(_CLOCK_OFFSET[0]),), offsets),
            RowFamily(*_CLOCK_SKEWED, "gauge", _AGENT_KEY, (Column(_CLOCK_SKEWED[0]),), skewed),
            RowFamily(*_CLOCK_ADJUSTED, "counter", _AGENT_KEY, _ADJUSTED_COLUMNS, adjusted),
        ]

    def _admitted(self) -> Iterator[tuple[tuple[str, str], Latest, CheckSpec]]:
        """Latest results the series guard admitted, as rendered by the last prerender."""
        specs = self.checks().checks
        latest = self.state.latest
        for pair in self._rendered:
            yield pair, latest[pair], specs[pair[0]]

    def _exported_tallies(self) -> list[Tally]:
        """Tallies whose counters are exported: check exported, pair not refused.

        A list comprehension: every scrape runs it over every pair.
        """
        checks = self._targets
        refused = self.guard.refused
        return [
            tally
            for pair, tally in self.state.tallies.items()
            if pair[0] in checks and pair not in refused
        ]

    def _probe_families(self) -> Iterator[Metric]:
        headers = exposition.HEADERS
        success = GaugeMetricFamily(
            exposition.SUCCESS, headers[exposition.SUCCESS][1], labels=BASE_LABELS
        )
        duration = GaugeMetricFamily(
            exposition.DURATION, headers[exposition.DURATION][1], labels=BASE_LABELS
        )
        not_runnable = GaugeMetricFamily(
            exposition.NOT_RUNNABLE,
            headers[exposition.NOT_RUNNABLE][1],
            labels=[*BASE_LABELS, "rule"],
        )
        families: dict[str, GaugeMetricFamily] = {}
        for (check, agent), latest, spec in self._admitted():
            base = [check, spec.target, agent, latest.country, latest.region]
            if latest.refused:
                not_runnable.add_metric([*base, rule_and_detail(latest.message)[0]], 1.0)
                continue
            success.add_metric(base, 1.0 if latest.success else 0.0)
            duration.add_metric(base, latest.duration)
            for name, labels, value in sample_items(latest.samples):
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
        if not_runnable.samples:  # the text exposition leaves an empty family out too
            yield not_runnable

    def _counter_rows(self, tallies: list[Tally]) -> Iterator[RowFamily]:
        """The result, failure and refusal counters of tallies, as row families."""
        headers = exposition.HEADERS
        labels = ("check", "agent", "country")
        results: list[Row] = []
        failures: list[Row] = []
        refused: list[Row] = []
        for tally in tallies:
            base = (tally.check, tally.agent, tally.country)
            reasons = tally.reasons
            results.append((base, (tally.success, tally.failure)))
            failures.append((base, [reasons.get(r, 0) for r in exposition.FAILURE_REASONS]))
            if tally.refused:
                refused.append((base, (tally.refused,)))
        yield RowFamily(
            "probemesh_probe_results", headers[exposition.RESULTS][1], "counter",
            labels, _RESULT_COLUMNS, results,
        )  # fmt: skip
        yield RowFamily(
            "probemesh_probe_failures", headers[exposition.FAILURES][1], "counter",
            labels, _FAILURE_COLUMNS, failures,
        )  # fmt: skip
        if refused:  # the text exposition leaves an empty family out too
            yield RowFamily(
                "probemesh_probe_refused", headers[exposition.REFUSED][1], "counter",
                labels, _REFUSED_COLUMNS, refused,
            )  # fmt: skip

    def _histogram_rows(self) -> Iterator[RowFamily]:
        """The per check x country histograms of exported checks, as row families."""
        checks = self._targets
        rows: dict[str, list[Row]] = {"duration": [], "phase": []}
        for key, hist in self.state.histograms.items():
            if key[1] in checks:
                counts = list(accumulate(hist.counts))
                kind = "duration" if key[0] == "duration" else "phase"
                rows[kind].append((key[1:], [*counts, counts[-1], hist.total]))
        headers = exposition.HEADERS
        for kind, name, labels in _HISTOGRAMS:
            yield RowFamily(
                name, headers[name][1], "histogram", labels, _histogram_columns(name), rows[kind]
            )

    def _agent_families(self) -> Iterator[Metric]:
        connected: list[Row] = []
        last_seen: list[Row] = []
        info: list[Row] = []
        for agent in self.state.agents.values():
            key = (agent.agent_id, agent.country)
            connected.append((key, (1.0 if agent.connected else 0.0,)))
            last_seen.append((key, (agent.last_seen,)))
            info.append(((*key, agent.region, agent.version), (1.0,)))
        for (name, help_text), extra, agent_rows in zip(
            _AGENT_FAMILIES,
            ((), (), ("region", "version")),
            (connected, last_seen, info),
            strict=True,
        ):
            labels = ("agent", "country", *extra)
            yield RowFamily(name, help_text, "gauge", labels, (Column(name),), agent_rows)
        yield from (family for family in self._clock_families() if family.rows)

    def rejections(self) -> dict[str, int]:
        """Refusals by reason, read from each owner's counter (their reasons are disjoint)."""
        merged: Counter[str] = Counter()
        for owner in self._rejections:
            merged.update(owner)
        return dict(merged)

    @property
    def behind(self) -> bool:
        """Changes are waiting for the next prerender."""
        return bool(self.feed.tallies or self.feed.removed)

    def _self_families(self) -> Iterator[Metric]:
        ingest = self.ingest
        yield CounterMetricFamily(
            "probemesh_ingest_results",
            "Results applied by this collector process",
            value=ingest.results_total,
        )
        yield CounterMetricFamily(
            "probemesh_ingest_batches",
            "Result batches applied by this collector process",
            value=ingest.batches_total,
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
        for reason, count in sorted(self.rejections().items()):
            rejected.add_metric([reason], count)
        yield rejected
        yield GaugeMetricFamily(
            "probemesh_ingest_queue_depth",
            "Batches waiting to be applied",
            value=ingest.queue.qsize(),
        )
        yield GaugeMetricFamily(
            "probemesh_active_streams", "Connected agent streams", value=self.active_streams()
        )
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
        self.exporter.prerender(histograms=False)  # the rejection counters then match the text
        return self.exporter.collect_rest()


class AggregateView(Collector):
    """The families remote write snapshots every interval (collect_aggregates)."""

    def __init__(self, exporter: MeshExporter) -> None:
        self.exporter = exporter

    def collect(self) -> Iterator[Metric]:
        return self.exporter.collect_aggregates()


class BulkView(Collector):
    """The per-pair counters and the histograms, which remote write snapshots
    less often (collect_bulk)."""

    def __init__(self, exporter: MeshExporter) -> None:
        self.exporter = exporter

    def collect(self) -> Iterator[Metric]:
        return self.exporter.collect_bulk()


def _row_lines(family: RowFamily) -> Iterator[str]:
    """A row family's series as text exposition lines."""
    escape = exposition.escape
    for values, numbers in family.rows:
        base = ",".join(f'{k}="{escape(v)}"' for k, v in zip(family.labels, values, strict=True))
        for column, number in zip(family.columns, numbers, strict=True):
            own = f',{column.label}="{escape(column.value)}"' if column.label is not None else ""
            yield f"{column.sample}{{{base}{own}}} {float(number)!r}\n"
