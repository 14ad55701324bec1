"""The fast /metrics text and the exporter's Metric families must say the same thing."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from probemesh.checks import parse_checks
from probemesh.collector.exporter import MeshExporter, RestView
from probemesh.collector.ingest import Ingest
from probemesh.collector.state import AgentInfo, MeshState
from probemesh.collector.store import Store
from probemesh.v1 import mesh_pb2 as pb


def samples_of(text: str) -> set[tuple[str, tuple[tuple[str, str], ...], float]]:
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
            "checks": [{"name": "web", "target": 'https://example.org/a"b\\c', "module": "http_2xx"}],
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
    state, exporter = build(tmp_path)
    full = CollectorRegistry()
    full.register(exporter)
    reference = samples_of(generate_latest(full).decode())
    rest = CollectorRegistry(auto_describe=False)
    rest.register(RestView(exporter))
    fast = samples_of(exporter.render_bulk() + generate_latest(rest).decode())
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
    state.apply(agent, pb.Result(check="web", timestamp=1.5, success=False, duration_seconds=9.0,
                                 reason=pb.FAILURE_REASON_DNS))  # late: counted, not latest
    exporter.prerender()
    assert not state.unrendered and not state.unrendered_tallies
    text = exporter.render_bulk()
    assert 'probe_success{check="web",target="https://example.org/a\\"b\\\\c",agent="a-de"' in text
    parsed = samples_of(text)
    success = {dict(lab)["agent"]: v for n, lab, v in parsed if n == "probe_success"}
    assert success == {"a-br": 1.0, "a-de": 1.0}
    failures = {dict(lab)["reason"]: v for n, lab, v in parsed
                if n == "probemesh_probe_failures_total" and dict(lab)["agent"] == "a-de"}  # fmt: skip
    assert failures == {"timeout": 1.0, "dns": 1.0}
