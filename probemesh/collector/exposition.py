"""Fast text exposition of the large families: probe gauges, result counters, histograms.

A mesh of 1,000 agents x 100 checks exports about two million probe lines;
building prometheus_client Metric objects for them takes a minute, and even
grouping cached per-series text at scrape time takes over a second. Instead
each series owner (a latest result, a tally, a histogram) renders its lines
once when it changed, into a per-family ordered dict keyed by the owner
(``FamilyText``); a scrape is one C-level ``b"".join`` per family. Replacing
a key keeps its place, so the order is stable between scrapes.

The exporter's collect() still yields the same data as Metric families (remote
write, tests) from the same validated samples, and a test checks the two
renderings agree.
"""

from __future__ import annotations

from collections.abc import Hashable

from probemesh.catalog import PROBE_METRICS
from probemesh.collector.runnable import NOT_RUNNABLE, rule_and_detail
from probemesh.collector.state import DURATION_BUCKETS, REASON_NAMES, Histogram, Latest, Tally
from probemesh.v1 import mesh_pb2 as pb

SUCCESS = "probe_success"
DURATION = "probe_duration_seconds"
RESULTS = "probemesh_probe_results_total"
FAILURES = "probemesh_probe_failures_total"
REFUSED = "probemesh_probe_refused_total"
HIST_DURATION = "probemesh_probe_duration_seconds"
HIST_PHASE = "probemesh_probe_phase_duration_seconds"
BUCKET_BOUNDS = [*(f"{b:g}" for b in DURATION_BUCKETS), "+Inf"]
COUNTERS = (RESULTS, FAILURES, REFUSED)
"""The counter families of one check x agent, in tally_lines' order."""
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


class FamilyText:
    """Rendered lines per family, each family an ordered dict of owner key -> chunk."""

    def __init__(self, order: tuple[str, ...]) -> None:
        self.families: dict[str, dict[Hashable, bytes]] = {name: {} for name in order}
        self.headers = {name: header(name) for name in HEADERS}

    def family(self, name: str) -> dict[Hashable, bytes]:
        chunks = self.families.get(name)
        if chunks is None:
            chunks = self.families[name] = {}
        return chunks

    def put(self, name: str, key: Hashable, chunk: bytes) -> None:
        """Set (or, when empty, remove) the chunk of key in family name."""
        if chunk:
            self.family(name)[key] = chunk
        else:
            self.drop(name, key)

    def drop(self, name: str, key: Hashable) -> None:
        chunks = self.families.get(name)
        if chunks:
            chunks.pop(key, None)

    def render(self, parts: list[bytes]) -> list[bytes]:
        """Append every non-empty family's chunks under its header, for one b"".join.

        One join of all chunks: the body is hundreds of megabytes for a large
        mesh, and each extra copy of it costs about as much as the join.
        list.extend keeps the per-chunk work in C.
        """
        for name, chunks in self.families.items():
            if chunks:
                parts.append(self.headers[name])
                parts.extend(chunks.values())
        return parts


def latest_lines(latest: Latest, base: str) -> dict[str, bytes]:
    """The lines one latest result contributes, per family; base is its label prefix.

    A check refused by policy ran no probe: it gets a not-runnable line and no
    probe_* gauge, so no probe_success=0 looks like an outage.
    """
    if latest.refused:
        rule = rule_and_detail(latest.message)[0]
        return {NOT_RUNNABLE: f'{NOT_RUNNABLE}{{{base},rule="{rule}"}} 1.0\n'.encode()}
    out = {
        SUCCESS: f"{SUCCESS}{{{base}}} {'1.0' if latest.success else '0.0'}\n",
        DURATION: f"{DURATION}{{{base}}} {latest.duration!r}\n",
    }
    keys, values = latest.samples
    for (name, labels), value in zip(keys, memoryview(values).cast("d"), strict=True):
        if labels:
            extra = "".join(f',{k}="{escape(v)}"' for k, v in labels)
            line = f"{name}{{{base}{extra}}} {value!r}\n"
        else:
            line = f"{name}{{{base}}} {value!r}\n"
        previous = out.get(name)
        out[name] = line if previous is None else previous + line
    return {name: text.encode() for name, text in out.items()}


def tally_counts(tally: Tally) -> tuple[tuple[int, int], list[tuple[str, int]]]:
    """((success, failure), [(reason, count)]) of one check x agent, zeros included."""
    reasons = tally.reasons
    failures = [(reason, reasons.get(reason, 0)) for reason in FAILURE_REASONS]
    return (tally.success, tally.failure), failures


def tally_lines(tally: Tally) -> tuple[bytes, bytes, bytes]:
    """The counter lines of one check x agent: (results, failures, refused).

    The refused line exists once the agent refused the check: a pair that never
    was refused would otherwise export a zero for every check on every agent.
    """
    base = f'check="{tally.check}",agent="{tally.agent}",country="{tally.country}"'
    outcomes, reasons = tally_counts(tally)
    results = "".join(
        f'{RESULTS}{{{base},result="{outcome}"}} {float(count)!r}\n'
        for outcome, count in zip(OUTCOMES, outcomes, strict=True)
    )
    failures = "".join(
        f'{FAILURES}{{{base},reason="{reason}"}} {float(count)!r}\n' for reason, count in reasons
    )
    refused = f"{REFUSED}{{{base}}} {float(tally.refused)!r}\n" if tally.refused else ""
    return results.encode(), failures.encode(), refused.encode()


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
