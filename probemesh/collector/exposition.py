"""Fast text exposition of the large families: probe gauges, result counters, histograms.

A mesh of 1,000 agents x 100 checks exports about three million probe lines;
building prometheus_client Metric objects for them takes a minute. Instead a
scrape renders the text itself, from templates in comprehensions, a piece at
a time from one snapshot taken when it begins:

- the probe gauges of every admitted latest result (``gauge_pieces``): about
  18 lines per HTTP check x agent, two thirds of the text;
- the result counters of every exported tally (``counter_rows``,
  ``counter_pieces``): ten lines per pair.

Neither is cached. Cached text cost about 2.3 KB (gauges) and 1.1 KB
(counters) per pair, and was rendered again each time a result changed it,
so with a check every 30-60 s and a scrape every 15 s rendering at each
scrape costs about as much CPU. Only the histograms (per check x country, a
few lines per pair at most) are cached, in per-family lists indexed by the
owner's slot (``FamilyText``).

The exporter's collect() still yields the same data as Metric families (remote
write, tests) from the same validated samples, and a test checks the two
renderings agree.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable, Hashable, Iterator, Mapping
from typing import NamedTuple

from probemesh.catalog import PROBE_METRICS
from probemesh.collector.runnable import NOT_RUNNABLE, rule_and_detail
from probemesh.collector.samples import SeriesKey
from probemesh.collector.state import (
    DURATION_BUCKETS,
    POLICY_REASON,
    REASON_NAMES,
    Histogram,
    Latest,
    Tally,
)
from probemesh.v1 import mesh_pb2 as pb

SUCCESS = "probe_success"
DURATION = "probe_duration_seconds"
RESULTS = "probemesh_probe_results_total"
FAILURES = "probemesh_probe_failures_total"
REFUSED = "probemesh_probe_refused_total"
HIST_DURATION = "probemesh_probe_duration_seconds"
HIST_PHASE = "probemesh_probe_phase_duration_seconds"
BUCKET_BOUNDS = [*(f"{b:g}" for b in DURATION_BUCKETS), "+Inf"]
OUTCOMES = ("success", "failure")
FAILURE_REASONS = tuple(
    name
    for value, name in sorted(REASON_NAMES.items())
    if value not in (pb.FAILURE_REASON_UNSPECIFIED, pb.FAILURE_REASON_POLICY)
)
"""Every reason label of probemesh_probe_failures_total. A pair's counters are
exported for each outcome and reason from its first result on, at 0 where
nothing was counted yet, so a dashboard shows 0 rather than "No data"."""

HEADERS = {
    SUCCESS: ("gauge", "Displays whether or not the probe was a success"),
    DURATION: ("gauge", "Returns how long the probe took to complete in seconds"),
    **{name: ("gauge", spec.help) for name, spec in PROBE_METRICS.items()},
    RESULTS: (
        "counter",
        "Probe results applied, by outcome; counts every result exactly once, late ones included",
    ),
    FAILURES: ("counter", "Failed probe results by failure reason"),
    REFUSED: (
        "counter",
        "Results the agent refused by its own policy (no probe ran); with "
        "probemesh_probe_results_total they count every result the agent produced",
    ),
    NOT_RUNNABLE: (
        "gauge",
        "1 while the agent refuses the check by its own policy (rule: blocked_address, "
        "private_target, interval_floor): a configuration problem, not an outage",
    ),
    HIST_DURATION: (
        "histogram",
        "Total probe duration per check and country, every result counted",
    ),
    HIST_PHASE: (
        "histogram",
        "HTTP phase durations of successful probes per check and country",
    ),
}


def escape(value: str) -> str:
    """Escape a label value for the text format."""
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return value


def header(name: str) -> bytes:
    """The HELP and TYPE lines of a family.

    Text format 0.0.4 names a counter's family with its _total suffix, the
    name its samples carry; promtool reports a counter without help text otherwise.
    """
    kind, help_text = HEADERS[name]
    return f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n".encode()


_HEADERS = {name: header(name) for name in HEADERS}


class FamilyText:
    """Rendered chunks per family, each family a list indexed by the owner's slot.

    An owner key (a check x agent pair, a histogram key) gets one slot when
    its first chunk is put and gives it back when its last is dropped; every
    family is a list of chunks by slot, None where the owner has no lines in
    it. One dict entry per owner and 8 bytes per family and owner: a dict per
    family cost one entry (about 50 bytes at 100,000 owners) per family and
    owner.
    """

    def __init__(self, order: tuple[str, ...]) -> None:
        self.families: dict[str, list[bytes | None]] = {name: [] for name in order}
        self.slots: dict[Hashable, int] = {}
        self._held = bytearray()  # by slot: how many families hold a chunk of its owner
        self._free: list[int] = []

    def put(self, name: str, key: Hashable, chunk: bytes) -> None:
        """Set (or, when empty, remove) the chunk of key in family name."""
        if not chunk:
            self.drop(name, key)
            return
        slot = self.slots.get(key)
        if slot is None:
            slot = self.slots[key] = self._free.pop() if self._free else len(self._held)
            if slot == len(self._held):
                self._held.append(0)
        chunks = self.families.get(name)
        if chunks is None:
            chunks = self.families[name] = []
        if slot >= len(chunks):
            chunks.extend([None] * (slot + 1 - len(chunks)))
        if chunks[slot] is None:
            self._held[slot] += 1
        chunks[slot] = chunk

    def drop(self, name: str, key: Hashable) -> None:
        slot = self.slots.get(key)
        chunks = self.families.get(name)
        if slot is None or chunks is None or slot >= len(chunks) or chunks[slot] is None:
            return
        chunks[slot] = None
        self._held[slot] -= 1
        if not self._held[slot]:
            del self.slots[key]
            self._free.append(slot)

    def snapshot(self) -> list[tuple[bytes, list[bytes]]]:
        """Every non-empty family's header and chunks as of now (filtered in C).

        The chunks are immutable, so the lists stay this scrape's text while
        the families change; joining them is left to the caller, a piece at a
        time (the body is hundreds of megabytes for a large mesh).
        """
        out = []
        for name, chunks in self.families.items():
            present = list(filter(None, chunks))
            if present:
                out.append((_HEADERS[name], present))
        return out


class GaugeRows(NamedTuple):
    """The latest results a scrape exports, column by column (no tuple per pair)."""

    pairs: list[tuple[str, str]]  # (check, agent)
    latest: list[Latest]  # never mutated: a newer result replaces the object
    targets: Mapping[str, str]  # check -> its target, escaped


_VALUE = struct.Struct("d")
_LINE_BYTES = 200  # about one gauge line, to size pieces


@functools.lru_cache(maxsize=1024)
def _shape_plan(keys: tuple[SeriesKey, ...]) -> dict[str, list[tuple[int, str]]]:
    """Per family of a sample shape: each line's value offset and extra labels."""
    plan: dict[str, list[tuple[int, str]]] = {}
    for index, (name, labels) in enumerate(keys):
        extra = "".join(f',{k}="{escape(v)}"' for k, v in labels)
        plan.setdefault(name, []).append((8 * index, extra))
    return plan


def gauge_pieces(rows: GaugeRows, size: int) -> Iterator[bytes]:
    """The probe gauge families of rows, about size bytes a piece.

    Rendered at each scrape, family after family as the text format needs:
    cached, the lines cost about 2.3 KB per HTTP check x agent, and were
    rendered again each time a result replaced them. Each pair's label set is
    formatted once per scrape, during the first family, and kept for the rest.

    A check refused by policy ran no probe: it gets a not-runnable line and no
    probe_* gauge, so no probe_success=0 looks like an outage.
    """
    pairs, latest, targets = rows
    per = max(size // _LINE_BYTES, 1)
    bases: list[str] = []
    live: list[int] = []
    refused: list[int] = []
    shapes: dict[int, list[int]] = {}  # id of a shape's keys -> its pairs
    keys_of: dict[int, tuple[SeriesKey, ...]] = {}
    success_lines = 0  # live pairs whose success line is out
    for start in range(0, len(latest), per):
        end = min(start + per, len(latest))
        bases += [
            f'check="{check}",target="{targets[check]}",agent="{agent}",'
            f'country="{lat.country}",region="{escape(lat.region)}"'
            for (check, agent), lat in zip(pairs[start:end], latest[start:end], strict=True)
        ]
        for index in range(start, end):
            lat = latest[index]
            if lat.reason == POLICY_REASON:
                refused.append(index)
                continue
            live.append(index)
            keys = lat.series
            if keys:
                shape = shapes.get(id(keys))
                if shape is None:
                    shape = shapes[id(keys)] = []
                    keys_of[id(keys)] = keys
                shape.append(index)
        text = "".join([
            f"{SUCCESS}{{{bases[i]}}} {'1.0' if latest[i].success else '0.0'}\n"
            for i in live[success_lines:]
        ])  # fmt: skip
        if text:
            yield (b"" if success_lines else _HEADERS[SUCCESS]) + text.encode()
        success_lines = len(live)
    yield from _parts(DURATION, live, per, lambda part: "".join([
        f"{DURATION}{{{bases[i]}}} {latest[i].duration!r}\n" for i in part
    ]))  # fmt: skip
    families: dict[str, list[tuple[list[tuple[int, str]], list[int]]]] = {}
    for shape_id, members in shapes.items():
        for name, lines in _shape_plan(keys_of[shape_id]).items():
            families.setdefault(name, []).append((lines, members))
    unpack = _VALUE.unpack_from
    for name, groups in families.items():
        yield _HEADERS[name]
        for lines, members in groups:
            step = max(per // len(lines), 1)
            for start in range(0, len(members), step):
                yield "".join([
                    f"{name}{{{bases[i]}{extra}}} {unpack(latest[i].values, offset)[0]!r}\n"
                    for i in members[start : start + step]
                    for offset, extra in lines
                ]).encode()  # fmt: skip
    yield from _parts(NOT_RUNNABLE, refused, per, lambda part: "".join([
        f'{NOT_RUNNABLE}{{{bases[i]},rule="{rule_and_detail(latest[i].message)[0]}"}} 1.0\n'
        for i in part
    ]))  # fmt: skip


def _parts(
    name: str, indices: list[int], per: int, render: Callable[[list[int]], str]
) -> Iterator[bytes]:
    """Family name's header, then render's text of indices, per at a time."""
    if indices:
        yield _HEADERS[name]
    for start in range(0, len(indices), per):
        yield render(indices[start : start + per]).encode()


class CounterRows(NamedTuple):
    """The counts of a scrape's exported tallies, column by column.

    Columns, not a tuple per tally: a snapshot of 100,000 tuples made the
    garbage collector run while it held the event loop.
    """

    tallies: list[Tally]  # their check, agent and country never change
    success: list[int]
    failure: list[int]
    refused: list[int]
    reasons: list[dict[str, int] | None]  # a copy for tallies that ever failed


# base.join(_ZERO_FAILURES): the failure lines of a pair that never failed, in one call
_ZERO_FAILURES = [
    f"{FAILURES}{{",
    *(f',reason="{reason}"}} 0.0\n{FAILURES}{{' for reason in FAILURE_REASONS[:-1]),
    f',reason="{FAILURE_REASONS[-1]}"}} 0.0\n',
]


def counter_rows(tallies: list[Tally]) -> CounterRows:
    """The tallies' counts as of now, for a scrape to render a slice at a time."""
    return CounterRows(
        tallies,
        [t.success for t in tallies],
        [t.failure for t in tallies],
        [t.refused for t in tallies],
        [t.reasons.copy() if t.reasons else None for t in tallies],
    )


def counter_pieces(rows: CounterRows, per_piece: int) -> Iterator[bytes]:
    """The counter families of rows, each under its header, per_piece tallies at a time.

    The refused line exists once the agent refused the check: a pair that never
    was refused would otherwise export a zero for every check on every agent.
    """
    tallies = rows.tallies
    slices = [slice(start, start + per_piece) for start in range(0, len(tallies), per_piece)]
    if tallies:
        yield header(RESULTS)
    for part in slices:
        yield _results_text(tallies[part], rows.success[part], rows.failure[part]).encode()
    if tallies:
        yield header(FAILURES)
    for part in slices:
        yield _failures_text(tallies[part], rows.reasons[part]).encode()
    refused = [i for i, count in enumerate(rows.refused) if count]
    if refused:
        yield header(REFUSED)
    for start in range(0, len(refused), per_piece):
        picked = refused[start : start + per_piece]
        yield _refused_text(
            [tallies[i] for i in picked], [rows.refused[i] for i in picked]
        ).encode()


# The renderers below run for every exported pair at every scrape: one
# comprehension each, the labels formatted inline (a call per row costs more).


def _results_text(tallies: list[Tally], ok: list[int], failed: list[int]) -> str:
    return "".join([
        f'{RESULTS}{{check="{t.check}",agent="{t.agent}",country="{t.country}",result="success"}} {float(s)!r}\n'
        f'{RESULTS}{{check="{t.check}",agent="{t.agent}",country="{t.country}",result="failure"}} {float(f)!r}\n'
        for t, s, f in zip(tallies, ok, failed, strict=True)
    ])  # fmt: skip


def _failures_text(tallies: list[Tally], reasons: list[dict[str, int] | None]) -> str:
    return "".join([
        _failure_lines(f'check="{t.check}",agent="{t.agent}",country="{t.country}"', counts)
        if counts
        else f'check="{t.check}",agent="{t.agent}",country="{t.country}"'.join(_ZERO_FAILURES)
        for t, counts in zip(tallies, reasons, strict=True)
    ])  # fmt: skip


def _failure_lines(base: str, reasons: Mapping[str, int]) -> str:
    return "".join([
        f'{FAILURES}{{{base},reason="{reason}"}} {float(reasons.get(reason, 0))!r}\n'
        for reason in FAILURE_REASONS
    ])  # fmt: skip


def _refused_text(tallies: list[Tally], refused: list[int]) -> str:
    return "".join([
        f'{REFUSED}{{check="{t.check}",agent="{t.agent}",country="{t.country}"}} {float(n)!r}\n'
        for t, n in zip(tallies, refused, strict=True)
    ])  # fmt: skip


def histogram_lines(key: tuple[str, ...], hist: Histogram) -> bytes:
    """Cumulative buckets, count and sum of ("duration", check, country[, phase])."""
    name = HIST_DURATION if key[0] == "duration" else HIST_PHASE
    labels = f'check="{key[1]}",country="{key[2]}"'
    if len(key) > 3:
        labels += f',phase="{key[3]}"'
    lines = []
    running = 0
    for bound, count in zip(BUCKET_BOUNDS, hist.counts, strict=True):
        running += count
        lines.append(f'{name}_bucket{{{labels},le="{bound}"}} {float(running)!r}\n')
    lines.append(f"{name}_count{{{labels}}} {float(running)!r}\n")
    lines.append(f"{name}_sum{{{labels}}} {hist.total!r}\n")
    return "".join(lines).encode()
