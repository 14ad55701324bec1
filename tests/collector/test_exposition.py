"""The fast /metrics text and the exporter's Metric families must say the same thing."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from probemesh.checks import parse_checks
from probemesh.collector.exporter import MeshExporter, RestView
from probemesh.collector.ingest import Ingest
from probemesh.collector.limits import SecurityLimits
from probemesh.collector.state import AgentInfo, MeshState
from probemesh.collector.store import Store
from probemesh.v1 import mesh_pb2 as pb

Sample = tuple[str, tuple[tuple[str, str], ...], float]


def samples_of(text: str) -> set[Sample]:
    out = set()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if family.name in ("probemesh_scrape_duration_seconds",):
                continue
            out.add((sample.name, tuple(sorted(sample.labels.items())), sample.value))
    return out


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
    exporter = MeshExporter(state, Ingest(state, Store(tmp_path)), lambda: checks, lambda: 2)
    for agent_id, success in (("a-br", True), ("a-de", False)):
        agent = state.agents[agent_id] = AgentInfo(agent_id, agent_id[-2:].upper(), region="r 1")
        agent.ever_assigned = {"web"}
        state.apply(
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


def test_fast_text_matches_metric_families(tmp_path: Path) -> None:
    _, exporter = build(tmp_path)
    full = CollectorRegistry()
    full.register(exporter)
    reference = samples_of(generate_latest(full).decode())
    rest = CollectorRegistry(auto_describe=False)
    rest.register(RestView(exporter))
    fast = samples_of(exporter.render_bulk().decode() + generate_latest(rest).decode())
    assert fast == reference
    names = {name for name, _, _ in fast}
    assert {"probe_success", "probe_http_status_code", "probemesh_probe_results_total"} <= names
    assert "not_in_catalog" not in names
    target = {dict(labels).get("target") for name, labels, _ in fast if name == "probe_success"}
    assert target == {'https://example.org/a"b\\c'}


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
    assert not state.unrendered
    text = exporter.render_bulk().decode()
    assert 'probe_success{check="web",target="https://example.org/a\\"b\\\\c",agent="a-de"' in text
    parsed = samples_of(text)
    success = {dict(lab)["agent"]: v for n, lab, v in parsed if n == "probe_success"}
    assert success == {"a-br": 1.0, "a-de": 1.0}
    failures = {dict(lab)["reason"]: v for n, lab, v in parsed
                if n == "probemesh_probe_failures_total" and dict(lab)["agent"] == "a-de"}  # fmt: skip
    assert failures == {"timeout": 1.0, "dns": 1.0}


def fast_and_reference(exporter: MeshExporter) -> tuple[set[Sample], set[Sample]]:
    """(/metrics text as served, collect() rendered by prometheus_client) as sample sets."""
    rest = CollectorRegistry(auto_describe=False)
    rest.register(RestView(exporter))
    fast = samples_of(exporter.render_bulk(generate_latest(rest)).decode())
    full = CollectorRegistry()
    full.register(exporter)
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
    state.forget_checks(set(reloaded.checks))
    fast, reference = fast_and_reference(exporter)
    assert fast == reference
    assert not {n for n, labels, _ in fast if ("check", "web") in labels}, (
        "nothing of a removed check"
    )
    assert exporter.guard.series == 0


def test_reload_with_a_new_target_rerenders_its_lines(tmp_path: Path) -> None:
    _, exporter = build(tmp_path)
    exporter.render_bulk()
    moved = parse_checks({"modules": {"http_2xx": {"prober": "http"}},
                          "checks": [{"name": "web", "target": "https://example.net/",
                                      "module": "http_2xx"}]})  # fmt: skip
    exporter.checks = lambda: moved
    fast, reference = fast_and_reference(exporter)
    assert fast == reference
    targets = {dict(lab).get("target") for n, lab, _ in fast if n == "probe_http_status_code"}
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
    assert exporter.ingest.rejected["cardinality"] == 5
    refused = ({"a-br", "a-de"} - admitted).pop()
    state.apply(state.agents[refused], pb.Result(check="web", timestamp=5.0, duration_seconds=1))
    fast, _ = fast_and_reference(exporter)
    assert agents_of(fast, "probe_success") == admitted, "still refused, counted once"
    assert exporter.ingest.rejected["cardinality"] == 5
    state.forget_agent(admitted.pop())
    fast, reference = fast_and_reference(exporter)
    assert fast == reference
    assert agents_of(fast, "probe_success") == {refused}, "admitted once budget freed"
