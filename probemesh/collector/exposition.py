"""Fast text exposition of the per-series families (probe gauges and result counters).

A mesh of 1,000 agents x 100 checks exports about two million probe lines;
building prometheus_client Metric objects for them takes a minute. Instead each
latest result and each tally renders its own lines once, when it changed, and a
scrape only joins cached strings grouped by family. The exporter's collect()
still yields the same data as Metric families (remote write, tests) from the
same validated samples, and a test checks the two renderings agree.
"""

from __future__ import annotations

from collections.abc import Iterable

from probemesh.catalog import PROBE_METRICS
from probemesh.collector.state import Latest, Tally

SUCCESS = "probe_success"
DURATION = "probe_duration_seconds"
RESULTS = "probemesh_probe_results_total"
FAILURES = "probemesh_probe_failures_total"

HEADERS = {
    SUCCESS: ("gauge", "Displays whether or not the probe was a success"),
    DURATION: ("gauge", "Returns how long the probe took to complete in seconds"),
    **{name: ("gauge", spec.help) for name, spec in PROBE_METRICS.items()},
    RESULTS: (
        "counter",
        "Probe results applied, by outcome; counts every result exactly once, late ones included",
    ),
    FAILURES: ("counter", "Failed probe results by failure reason"),
}


def escape(value: str) -> str:
    """Escape a label value for the text format."""
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return value


def number(value: float) -> str:
    """A sample value; repr round-trips and Prometheus parses it (NaN/Inf never get here)."""
    return repr(float(value))


def latest_lines(latest: Latest, base: str) -> dict[str, str]:
    """The lines one latest result contributes, per family; base is its label prefix."""
    assert latest.samples is not None
    result = latest.result
    out = {
        SUCCESS: f"{SUCCESS}{{{base}}} {'1.0' if result.success else '0.0'}\n",
        DURATION: f"{DURATION}{{{base}}} {result.duration_seconds!r}\n",
    }
    for name, labels, value in latest.samples:
        if labels:
            extra = "".join(f',{k}="{escape(v)}"' for k, v in labels)
            line = f"{name}{{{base}{extra}}} {value!r}\n"
        else:
            line = f"{name}{{{base}}} {value!r}\n"
        previous = out.get(name)
        out[name] = line if previous is None else previous + line
    return out


def tally_lines(tally: Tally) -> dict[str, str]:
    """The counter lines of one check x agent."""
    base = f'check="{tally.check}",agent="{tally.agent}",country="{tally.country}"'
    results = ""
    if tally.success:
        results += f'{RESULTS}{{{base},result="success"}} {number(tally.success)}\n'
    if tally.failure:
        results += f'{RESULTS}{{{base},result="failure"}} {number(tally.failure)}\n'
    failures = "".join(
        f'{FAILURES}{{{base},reason="{reason}"}} {number(count)}\n' for reason, count in tally.reasons.items()
    )
    return {RESULTS: results, FAILURES: failures}


def join(chunks: Iterable[dict[str, str]]) -> str:
    """Group per-entry chunks by family, each family under its HELP/TYPE header."""
    grouped: dict[str, list[str]] = {}
    for entry in chunks:
        for name, text in entry.items():
            if text:
                bucket = grouped.get(name)
                if bucket is None:
                    bucket = grouped[name] = []
                bucket.append(text)
    parts = []
    for name, texts in grouped.items():
        kind, help_text = HEADERS[name]
        family = name.removesuffix("_total") if kind == "counter" else name
        parts.append(f"# HELP {family} {help_text}\n# TYPE {family} {kind}\n")
        parts.extend(texts)
    return "".join(parts)
