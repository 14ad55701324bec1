"""Generate deploy/prometheus/tests/probemesh-rules.test.yml (promtool rule unit tests).

``python tests/prometheus/rules_scenario.py`` rewrites the file; test_rules.py fails when
the committed file differs from what this script generates, then runs
``promtool test rules`` on it.

The scenarios are written as per-agent timelines (which agent succeeds or fails
when) and turned into counter series the way the collector exports them: a
``result="failure"`` series only exists from an agent's first failure on. The
expected alerts (which fire, when, with which value) are stated by hand below.
Only the annotation *wording* is read from the rules file and rendered with a
small subset of Prometheus' template functions, so that rewording an alert does
not mean editing this file, while the labels and values are still checked.

Times are minutes after 08:00 (promtool starts every test at t=0); each test
uses a 30s step, like a check interval of 30s.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES_DIR = ROOT / "deploy" / "prometheus" / "rules"
OUTPUT = ROOT / "deploy" / "prometheus" / "tests" / "probemesh-rules.test.yml"
STEP_S = 30
SEED_COUNTRIES = ["BR", "PH", "UG", "DE", "ZA", "LT", "US", "JP"]
SEED_DOWN = ["BR", "PH", "UG", "DE", "ZA", "LT"]


def minute(hhmm: str) -> int:
    """'08:30' -> 30 (minutes after 08:00)."""
    hours, minutes = (int(x) for x in hhmm.split(":"))
    return (hours - 8) * 60 + minutes


def step(minutes: float) -> int:
    return int(minutes * 60 // STEP_S)


# --- series -------------------------------------------------------------------


def compress(values: list[float | None]) -> str:
    """promtool's expanding notation: runs 'a+bxn', '_' for missing samples."""
    out: list[str] = []
    i = 0
    while i < len(values):
        v = values[i]
        if v is None:
            j = i
            while j + 1 < len(values) and values[j + 1] is None:
                j += 1
            out.append("_" if j == i else f"_x{j - i + 1}")
            i = j + 1
            continue
        if i + 1 < len(values) and values[i + 1] is not None:
            delta = values[i + 1] - v  # type: ignore[operator]
            j = i + 1
            while j + 1 < len(values) and values[j + 1] is not None:
                if values[j + 1] - values[j] != delta:  # type: ignore[operator]
                    break
                j += 1
            out.append(f"{_num(v)}{'+' if delta >= 0 else ''}{_num(delta)}x{j - i}")
            i = j + 1
        else:
            out.append(_num(v))
            i += 1
    return " ".join(out)


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(v)


@dataclass
class Agent:
    """One agent's timeline for one check: failing(t_step) says if it fails then."""

    agent: str
    country: str
    instance: str
    failing: Callable[[int], bool]
    checks: tuple[str, ...] = ("social-home",)


def labels(**kv: str) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in kv.items()) + "}"


def result_series(agents: Iterable[Agent], steps: int) -> list[dict[str, str]]:
    """probemesh_probe_results_total series for the agents, one result per step."""
    series = []
    for a in agents:
        for check in a.checks:
            ok: list[float | None] = []
            bad: list[float | None] = []
            s = f = 0
            seen_failure = False
            for t in range(steps + 1):
                if t > 0:
                    if a.failing(t):
                        f += 1
                        seen_failure = True
                    else:
                        s += 1
                ok.append(s)
                bad.append(f if seen_failure else None)
            common = {"check": check, "agent": a.agent, "country": a.country}
            common |= {"instance": a.instance, "job": "probemesh-collector"}
            series.append(
                {
                    "series": "probemesh_probe_results_total" + labels(**common, result="success"),
                    "values": compress(ok),
                }
            )
            if any(v is not None for v in bad):
                series.append(
                    {
                        "series": "probemesh_probe_results_total"
                        + labels(**common, result="failure"),
                        "values": compress(bad),
                    }
                )
    return series


def gauge(name: str, value_at: Callable[[int], float | None], steps: int, **kv: str) -> dict:
    return {
        "series": name + labels(**kv),
        "values": compress([value_at(t) for t in range(steps + 1)]),
    }


# --- expected annotations ------------------------------------------------------


def _load_alerts() -> dict[str, dict[str, str]]:
    doc = yaml.safe_load((RULES_DIR / "probemesh-alerts.rules.yml").read_text())
    return {
        rule["alert"]: rule.get("annotations", {})
        for group in doc["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }


def _humanize(v: float) -> str:
    if v == 0 or math.isinf(v) or math.isnan(v):
        return f"{v:.4g}"
    prefix = ""
    if abs(v) >= 1:
        for p in ["k", "M", "G", "T", "P", "E", "Z", "Y"]:
            if abs(v) < 1000:
                break
            prefix, v = p, v / 1000
    else:
        for p in ["m", "u", "n", "p", "f", "a", "z", "y"]:
            if abs(v) >= 1:
                break
            prefix, v = p, v * 1000
    return f"{v:.4g}{prefix}"


def _humanize_duration(v: float) -> str:
    if abs(v) >= 1:
        sign = "-" if v < 0 else ""
        secs = int(abs(v))
        d, h, m, s = secs // 86400, secs // 3600 % 24, secs // 60 % 60, secs % 60
        if d:
            return f"{sign}{d}d {h}h {m}m {s}s"
        if h:
            return f"{sign}{h}h {m}m {s}s"
        if m:
            return f"{sign}{m}m {s}s"
        return f"{sign}{abs(v):.4g}s"
    raise NotImplementedError("sub-second durations are not used by the rules")


def _humanize_timestamp(v: float) -> str:
    return dt.datetime.fromtimestamp(v, dt.UTC).strftime("%Y-%m-%d %H:%M:%S +0000 UTC")


_FUNCS: dict[str, Callable[[float], str]] = {
    "humanize": _humanize,
    "humanizePercentage": lambda v: f"{v * 100:.4g}%",
    "humanizeDuration": _humanize_duration,
    "humanizeTimestamp": _humanize_timestamp,
}
_ACTION = re.compile(r"\{\{\s*(.*?)\s*\}\}")


def render(template: str, labels: dict[str, str], value: float) -> str:
    """Render the subset of Go templates the alert annotations use."""

    def one(m: re.Match[str]) -> str:
        expr = m.group(1)
        if expr.startswith("or "):
            for name in expr[3:].split():
                got = labels.get(name.removeprefix("$labels."), "")
                if got:
                    return got
            return ""
        if expr.startswith("$labels."):
            return labels.get(expr.removeprefix("$labels."), "")
        if expr == "$value":
            return _num(value)
        head, _, func = (x.strip() for x in expr.partition("|"))
        if head == "$value" and func in _FUNCS:
            return _FUNCS[func](value)
        raise ValueError(f"template action not supported by rules_scenario.py: {expr!r}")

    return _ACTION.sub(one, template)


ALERTS = _load_alerts()


def alert(name: str, value: float, **lbls: str) -> dict[str, Any]:
    """An expected firing alert with its rendered annotations."""
    annotations = {k: render(v, lbls, value) for k, v in ALERTS[name].items()}
    severity = {"ProbeCheckRegionalOutage": "critical", "ProbeCheckGlobalOutage": "critical"}
    return {
        "exp_labels": {**lbls, "severity": severity.get(name, "warning")},
        "exp_annotations": annotations,
    }


@dataclass
class Case:
    name: str
    minutes: int
    input_series: list[dict[str, str]] = field(default_factory=list)
    alert_rule_test: list[dict[str, Any]] = field(default_factory=list)
    promql_expr_test: list[dict[str, Any]] = field(default_factory=list)

    def expect(self, at: str, name: str, *alerts: dict[str, Any]) -> None:
        self.alert_rule_test.append(
            {"eval_time": f"{minute(at)}m", "alertname": name, "exp_alerts": list(alerts)}
        )

    def expect_value(self, at: str, expr: str, samples: dict[str, float]) -> None:
        """expr is a recorded series name with an optional {selector}."""
        name = expr.partition("{")[0]
        self.promql_expr_test.append(
            {
                "expr": expr,
                "eval_time": f"{minute(at)}m",
                "exp_samples": [{"labels": name + k, "value": v} for k, v in samples.items()],
            }
        )

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"interval": f"{STEP_S}s", "name": self.name}
        out["input_series"] = self.input_series
        if self.alert_rule_test:
            out["alert_rule_test"] = self.alert_rule_test
        if self.promql_expr_test:
            out["promql_expr_test"] = self.promql_expr_test
        return out


def fleet_gauges(agents: list[Agent], steps: int) -> list[dict[str, str]]:
    out = []
    for a in agents:
        kv = {"agent": a.agent, "country": a.country, "instance": a.instance}
        kv["job"] = "probemesh-collector"
        out.append(gauge("probemesh_agent_connected", lambda t: 1, steps, **kv))
        out.append(gauge("probemesh_agent_local_problem", lambda t: 0, steps, **kv))
    return out


# --- scenarios ----------------------------------------------------------------


def seed_scenario() -> Case:
    """The demo's seed: 6 of 8 countries down at 08:30, back one by one from 10:00."""
    end = minute("11:00")
    recover = {c: minute("10:00") + 5 * i for i, c in enumerate(SEED_DOWN)}
    agents = []
    for country in SEED_COUNTRIES:
        for n, instance in ((1, "collector-a:7444"), (2, "collector-b:7444")):

            def failing(t: int, c: str = country) -> bool:
                return c in recover and step(minute("08:30")) < t <= step(recover[c])

            agents.append(Agent(f"{country.lower()}-{n}", country, instance, failing))
    test = Case("seed scenario: regional outage 08:30, recovery from 10:00", end)
    test.input_series = result_series(agents, step(end)) + fleet_gauges(agents, step(end))

    def down(*countries: str) -> list[dict[str, Any]]:
        return [
            alert("ProbeCheckDownInCountry", 1, check="social-home", country=c)
            for c in sorted(countries)
        ]

    regional = "ProbeCheckRegionalOutage"
    for at in ("08:29", "08:31"):  # before the outage; then only pending (for: 1m)
        test.expect(at, "ProbeCheckDownInCountry")
        test.expect(at, regional)
    test.expect("08:34", "ProbeCheckDownInCountry", *down(*SEED_DOWN))
    test.expect("08:34", regional, alert(regional, 6, check="social-home"))
    test.expect("08:34", "ProbeCheckGlobalOutage")
    test.expect("09:59", regional, alert(regional, 6, check="social-home"))
    test.expect("10:04", "ProbeCheckDownInCountry", *down(*SEED_DOWN[1:]))
    test.expect("10:04", regional, alert(regional, 5, check="social-home"))
    test.expect("10:24", "ProbeCheckDownInCountry", *down("LT"))
    test.expect("10:24", regional, alert(regional, 1, check="social-home"))
    test.expect("10:30", "ProbeCheckDownInCountry")
    test.expect("10:30", regional)
    test.expect("10:30", "ProbeCheckGlobalOutage")
    for at in ("08:34", "10:30"):
        test.expect(at, "ProbeAgentLocalProblem")
        test.expect(at, "ProbeAgentDisconnected")
    # The verdict series behind the alerts, across both collectors.
    test.expect_value(
        "08:34",
        "check:probemesh_countries_down:count",
        {'{check="social-home"}': 6},
    )
    test.expect_value(
        "08:34",
        "check:probemesh_outage_scope:level",
        {'{check="social-home"}': 1},
    )
    test.expect_value(
        "08:34",
        'check_country:probemesh_country_state:level{country=~"BR|US"}',
        {'{check="social-home",country="BR"}': 2, '{check="social-home",country="US"}': 0},
    )
    test.expect_value(
        "09:00",
        'check_country:probemesh_probe_success:ratio_rate5m{country=~"DE|JP"}',
        {'{check="social-home",country="DE"}': 0, '{check="social-home",country="JP"}': 1},
    )
    test.expect_value(
        "09:00",
        "check:probemesh_probe_success:ratio_rate5m",
        {'{check="social-home"}': 0.25},
    )
    return test


def global_scenario() -> Case:
    """Every country down at 08:10: a global outage, not a regional one."""
    end = minute("08:30")
    agents = [
        Agent(f"{c.lower()}-1", c, "collector-a:7444", lambda t: t > step(10))
        for c in ("US", "DE", "JP")
    ]
    test = Case("global outage: every country down", end)
    test.input_series = result_series(agents, step(end)) + fleet_gauges(agents, step(end))
    test.expect(
        "08:15", "ProbeCheckGlobalOutage", alert("ProbeCheckGlobalOutage", 1, check="social-home")
    )
    test.expect("08:15", "ProbeCheckRegionalOutage")
    test.expect_value("08:15", "check:probemesh_outage_scope:level", {'{check="social-home"}': 2})
    return test


def local_problem_scenario(flagged: bool) -> Case:
    """jp-1, JP's only agent, fails every check from 08:10 while US and DE see them up.

    With the collector's local-problem flag (from 08:12) no check alert fires and
    ProbeAgentLocalProblem does; without it (the control) JP looks down.
    """
    end = minute("08:30")
    checks = ("social-home", "api")
    agents = [
        Agent("us-1", "US", "collector-a:7444", lambda t: False, checks),
        Agent("us-2", "US", "collector-b:7444", lambda t: False, checks),
        Agent("de-1", "DE", "collector-b:7444", lambda t: False, checks),
        Agent("jp-1", "JP", "collector-a:7444", lambda t: t > step(10), checks),
    ]
    name = "local problem: jp-1 fails everything" + ("" if flagged else " (control, no flag)")
    test = Case(name, end)
    test.input_series = result_series(agents, step(end))
    for a in agents:
        kv = {"agent": a.agent, "country": a.country, "instance": a.instance}
        kv["job"] = "probemesh-collector"
        test.input_series.append(gauge("probemesh_agent_connected", lambda t: 1, step(end), **kv))
        flag_from = step(12) if flagged and a.agent == "jp-1" else step(end) + 1

        def flag(t: int, since: int = flag_from) -> float:
            return 1 if t >= since else 0

        test.input_series.append(gauge("probemesh_agent_local_problem", flag, step(end), **kv))
    if flagged:
        for at in ("08:12", "08:20", "08:30"):
            test.expect(at, "ProbeCheckDownInCountry")
            test.expect(at, "ProbeCheckRegionalOutage")
            test.expect(at, "ProbeCheckGlobalOutage")
        test.expect("08:16", "ProbeAgentLocalProblem")
        test.expect(
            "08:20",
            "ProbeAgentLocalProblem",
            alert("ProbeAgentLocalProblem", 1, agent="jp-1", country="JP"),
        )
        # JP has no countable agent left: it drops out of the verdicts.
        test.expect_value(
            "08:20",
            "check:probemesh_countries_reporting:count",
            {'{check="api"}': 2, '{check="social-home"}': 2},
        )
    else:
        test.expect(
            "08:20",
            "ProbeCheckDownInCountry",
            *(alert("ProbeCheckDownInCountry", 1, check=c, country="JP") for c in sorted(checks)),
        )
        test.expect(
            "08:20",
            "ProbeCheckRegionalOutage",
            *(alert("ProbeCheckRegionalOutage", 1, check=c) for c in sorted(checks)),
        )
        test.expect("08:20", "ProbeAgentLocalProblem")
    return test


def fleet_scenario() -> Case:
    """Agent disconnects, agent fail-over, certificate and collector alerts."""
    end = minute("08:40")
    job = "probemesh-collector"
    a, b = "collector-a:7444", "collector-b:7444"
    s: list[dict[str, str]] = []
    # lt-1 loses its stream at 08:10; collector-a expires its series at 08:20.
    s.append(
        gauge(
            "probemesh_agent_connected",
            lambda t: (1 if t <= step(10) else 0) if t <= step(20) else None,
            step(end),
            agent="lt-1",
            country="LT",
            instance=a,
            job=job,
        )
    )
    s.append(
        gauge(
            "probemesh_agent_last_seen_timestamp_seconds",
            lambda t: (t * STEP_S if t <= step(10) else 600) if t <= step(20) else None,
            step(end),
            agent="lt-1",
            country="LT",
            instance=a,
            job=job,
        )
    )
    # de-1 fails over from collector-a to collector-b at 08:10: no alert.
    s.append(
        gauge(
            "probemesh_agent_connected",
            lambda t: 1 if t <= step(10) else 0,
            step(end),
            agent="de-1",
            country="DE",
            instance=a,
            job=job,
        )
    )
    s.append(
        gauge(
            "probemesh_agent_connected",
            lambda t: None if t <= step(10) else 1,
            step(end),
            agent="de-1",
            country="DE",
            instance=b,
            job=job,
        )
    )
    for inst in (a, b):
        s.append(
            gauge(
                "probemesh_agent_last_seen_timestamp_seconds",
                lambda t: t * STEP_S,
                step(end),
                agent="de-1",
                country="DE",
                instance=inst,
                job=job,
            )
        )
    # A certificate that expires 10 days after the start, seen by two agents.
    for agent in ("de-1", "lt-1"):
        s.append(
            gauge(
                "probe_ssl_earliest_cert_expiry",
                lambda t: 10 * 86400,
                step(end),
                check="shop",
                target="https://shop.example/",
                agent=agent,
                country=agent[:2].upper(),
                instance=a,
                job=job,
            )
        )
    # collector-b rejects 5 batches per 30s (bad tokens) the whole time.
    s.append(
        gauge(
            "probemesh_ingest_rejected_total",
            lambda t: 5 * t,
            step(end),
            reason="unauthenticated",
            instance=b,
            job=job,
        )
    )
    # collector-a (remote-writing as collector="eu-1") drops samples: receiver full.
    s.append(
        gauge(
            "probemesh_remote_write_dropped_samples_total",
            lambda t: 0 if t <= step(10) else 100 * (t - step(10)),
            step(end),
            collector="eu-1",
            reason="journal_full",
        )
    )
    # za-1's clock runs 5 s behind from 08:10 (flagged by collector-a); us-1 is
    # 0.3 s off, within the threshold: no alert.
    for agent, country, offset in (("za-1", "ZA", -5.0), ("us-1", "US", 0.3)):
        s.append(
            gauge(
                "probemesh_agent_clock_offset_seconds",
                lambda t, o=offset: o if t > step(10) else 0.0,
                step(end),
                agent=agent,
                country=country,
                instance=a,
                job=job,
            )
        )
        s.append(
            gauge(
                "probemesh_agent_clock_skewed",
                lambda t, o=offset: 1.0 if t > step(10) and abs(o) > 1 else 0.0,
                step(end),
                agent=agent,
                country=country,
                instance=a,
                job=job,
            )
        )
    test = Case("fleet, certificate and collector alerts", end)
    test.input_series = s
    test.expect("08:15", "ProbeAgentClockSkew")
    test.expect(
        "08:30",
        "ProbeAgentClockSkew",
        alert("ProbeAgentClockSkew", -5.0, agent="za-1", country="ZA"),
    )
    test.expect("08:14", "ProbeAgentDisconnected")
    for at in ("08:16", "08:30"):
        test.expect(
            at,
            "ProbeAgentDisconnected",
            alert("ProbeAgentDisconnected", 600, agent="lt-1", country="LT"),
        )
    test.expect("08:10", "ProbeCertificateExpiringSoon")
    test.expect(
        "08:30",
        "ProbeCertificateExpiringSoon",
        alert(
            "ProbeCertificateExpiringSoon",
            10 * 86400 - 30 * 60,
            check="shop",
            target="https://shop.example/",
        ),
    )
    test.expect("08:05", "ProbemeshCollectorRejecting")
    test.expect(
        "08:20",
        "ProbemeshCollectorRejecting",
        alert(
            "ProbemeshCollectorRejecting",
            5 / STEP_S,
            instance=b,
            job=job,
            reason="unauthenticated",
        ),
    )
    test.expect("08:15", "ProbemeshRemoteWriteDropping")
    test.expect(
        "08:30",
        "ProbemeshRemoteWriteDropping",
        alert(
            "ProbemeshRemoteWriteDropping", 100 / STEP_S, collector="eu-1", reason="journal_full"
        ),
    )
    return test


def not_runnable_scenario() -> Case:
    """de-1 refuses lan-db by policy from 08:00: a configuration alert, no check alert."""
    end = minute("08:30")
    kv = {"check": "lan-db", "agent": "de-1", "country": "DE"}
    kv |= {"instance": "collector-a:7444", "job": "probemesh-collector"}
    s = [
        gauge("probemesh_check_not_runnable", lambda t: 1, step(end), **kv, rule="private_target"),
        # Refusals move no counter: the collector exports them at zero.
        gauge("probemesh_probe_results_total", lambda t: 0, step(end), **kv, result="success"),
        gauge("probemesh_probe_results_total", lambda t: 0, step(end), **kv, result="failure"),
        gauge(
            "probemesh_agent_local_problem",
            lambda t: 0,
            step(end),
            **{k: kv[k] for k in ("agent", "country", "instance", "job")},
        ),
    ]
    test = Case("a check refused by policy is not an outage", end, s)
    for name in ("ProbeCheckDownInCountry", "ProbeCheckGlobalOutage", "ProbeCheckRegionalOutage"):
        test.expect("08:20", name)
    test.expect("08:05", "ProbeCheckNotRunnable")
    test.expect(
        "08:20",
        "ProbeCheckNotRunnable",
        alert("ProbeCheckNotRunnable", 1, check="lan-db", agent="de-1", country="DE",
              rule="private_target"),
    )  # fmt: skip
    return test


def generate() -> str:
    tests = [
        seed_scenario(),
        global_scenario(),
        local_problem_scenario(flagged=True),
        local_problem_scenario(flagged=False),
        fleet_scenario(),
        not_runnable_scenario(),
    ]
    doc = {
        "rule_files": [
            "../rules/probemesh-recording.rules.yml",
            "../rules/probemesh-alerts.rules.yml",
        ],
        "evaluation_interval": f"{STEP_S}s",
        "tests": [t.as_dict() for t in tests],
    }
    header = (
        "# GENERATED by tests/prometheus/rules_scenario.py -- do not edit; run\n"
        "#   python tests/prometheus/rules_scenario.py\n"
        "# Run the tests with: promtool test rules deploy/prometheus/tests/*.test.yml\n"
    )
    return header + yaml.safe_dump(doc, sort_keys=False, width=100)


if __name__ == "__main__":
    OUTPUT.write_text(generate())
    sys.exit(0)
