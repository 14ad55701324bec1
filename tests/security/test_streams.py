"""Tokens, identity, limits and cardinality on the real Connect stream.

A raw client plays the attacker against a collector process; every refusal
must carry the right status code and show up in
probemesh_ingest_rejected_total{reason}.
"""

from __future__ import annotations

import grpc
import pytest

from tests.harness import Mesh, http_get, run_cli, total, wait_for
from tests.security import rawstream as raw
from tests.security.conftest import N_CHECKS


def _target(mesh: Mesh) -> str:
    return f"127.0.0.1:{mesh.grpc_port}"


def _rejected(mesh: Mesh, reason: str) -> float:
    return total(mesh.metrics(), "probemesh_ingest_rejected_total", reason=reason)


def test_missing_token_is_unauthenticated(limited_mesh: Mesh) -> None:
    out = raw.connect(_target(limited_mesh), [raw.hello("a1", "BR")], token=None)
    assert out.code == grpc.StatusCode.UNAUTHENTICATED, out
    assert out.messages == []


def test_wrong_tokens_are_unauthenticated(limited_mesh: Mesh) -> None:
    real = limited_mesh.token("wrong1", "BR")
    token_id = real.split("_")[1]
    for bad in (
        "garbage",
        "pm_x_y",
        f"pm_{token_id}_not-the-secret",
        real[:-1] + ("A" if real[-1] != "A" else "B"),
    ):
        out = raw.connect(_target(limited_mesh), [raw.hello("wrong1", "BR")], token=bad)
        assert out.code == grpc.StatusCode.UNAUTHENTICATED, (bad, out)
        assert out.messages == [], "nothing may be sent before authentication"


def test_identity_mismatch_is_permission_denied(limited_mesh: Mesh) -> None:
    token = limited_mesh.token("ident1", "BR")
    for agent, country in (("someone-else", "BR"), ("ident1", "DE")):
        out = raw.connect(_target(limited_mesh), [raw.hello(agent, country)], token=token)
        assert out.code == grpc.StatusCode.PERMISSION_DENIED, out
    ok = raw.connect(_target(limited_mesh), [raw.hello("ident1", "BR")], token=token)
    assert ok.code == grpc.StatusCode.OK, ok
    assert ok.kinds()[:2] == ["welcome", "checks"]


def test_revoked_token_is_refused_and_live_stream_cut(limited_mesh: Mesh) -> None:
    mesh = limited_mesh
    token = mesh.token("rev1", "BR")
    agent = mesh.start_agent("rev1", "BR", token=token)
    wait_for(
        lambda: total(mesh.metrics(), "probemesh_agent_connected", agent="rev1") == 1,
        20,
        "rev1 connected",
    )
    run_cli("token", "revoke", "--data-dir", str(mesh.data_dir), "rev1")
    # The housekeeping loop runs every second: the live stream must end within seconds.
    wait_for(
        lambda: total(mesh.metrics(), "probemesh_agent_connected", agent="rev1") == 0,
        5,
        "revoked stream cut",
    )
    wait_for(lambda: "UNAUTHENTICATED" in agent.log(), 10, "agent logs UNAUTHENTICATED")
    out = raw.connect(_target(mesh), [raw.hello("rev1", "BR")], token=token)
    assert out.code == grpc.StatusCode.UNAUTHENTICATED and "revoked" in out.details
    agent.stop()
    for log in (agent.log(), mesh.collector.log() if mesh.collector else ""):
        assert token not in log
        assert token.split("_", 2)[2] not in log, "the token's secret leaked into a log"


def test_second_stream_replaces_first(limited_mesh: Mesh) -> None:
    import threading

    token = limited_mesh.token("dup1", "BR")
    first: list[raw.Outcome] = []
    thread = threading.Thread(
        target=lambda: first.append(
            raw.connect(
                _target(limited_mesh), [raw.hello("dup1", "BR")], token=token, linger=4, timeout=8
            )
        )
    )
    thread.start()
    wait_for(
        lambda: total(limited_mesh.metrics(), "probemesh_agent_connected", agent="dup1") == 1,
        5,
        "dup1",
    )
    second = raw.connect(_target(limited_mesh), [raw.hello("dup1", "BR")], token=token)
    thread.join(10)
    assert first and first[0].code == grpc.StatusCode.ABORTED, first
    assert "replaced" in first[0].details
    assert second.code == grpc.StatusCode.OK


def test_never_assigned_and_invalid_results_are_rejected(limited_mesh: Mesh) -> None:
    """A result is judged by the revision it names (1: this collector never reloads);
    an untagged one (revision 0, an agent that does not tag) by the current assignment."""
    mesh = limited_mesh
    token = mesh.token("val1", "BR")
    reasons = ("not_assigned", "invalid_value", "invalid_timestamp")
    before = {r: _rejected(mesh, r) for r in reasons}
    bad = [
        raw.result("not-a-check"),
        raw.result("not-a-check", revision=1),
        raw.result("c00", revision=1),  # valid: assigned at revision 1
        raw.result("c00"),  # valid: assigned now
        raw.result("c00", duration_seconds=float("nan")),
        raw.result("c00", duration_seconds=-1.0),
        raw.result("c00", duration_seconds=float("inf")),
        raw.result("c00", timestamp=float("nan")),
        raw.result("c00", timestamp=4e9),
        raw.result("c00", success=False, reason=99),
    ]
    out = raw.connect(_target(mesh), [raw.hello("val1", "BR"), raw.batch(1, bad)], token=token)
    assert out.code == grpc.StatusCode.OK and "ack" in out.kinds(), (
        "a batch of bad results is still acked"
    )
    after = {r: _rejected(mesh, r) for r in before}
    assert after["not_assigned"] - before["not_assigned"] == 2
    assert after["invalid_value"] - before["invalid_value"] == 4
    assert after["invalid_timestamp"] - before["invalid_timestamp"] == 2
    assert total(mesh.metrics(), "probemesh_probe_results_total", agent="val1") == 2
    assert total(mesh.metrics(), "probemesh_ingest_rejected_total", reason="unknown_check") == 0


@pytest.mark.parametrize("field", ["queue_max_age_seconds", "ack_hold_seconds"])
def test_hello_with_an_invalid_duration_is_refused(limited_mesh: Mesh, field: str) -> None:
    mesh = limited_mesh
    token = mesh.token("age1", "BR")
    for seconds in (float("nan"), float("inf"), -1.0):
        hello = raw.hello("age1", "BR", **{field: seconds})
        out = raw.connect(_target(mesh), [hello], token=token)
        assert out.code == grpc.StatusCode.INVALID_ARGUMENT, (seconds, out)
        assert field in out.details


def test_batch_and_message_size_limits(limited_mesh: Mesh) -> None:
    mesh = limited_mesh
    token = mesh.token("size1", "BR")
    too_many = raw.batch(1, [raw.result("c00") for _ in range(1001)])
    out = raw.connect(_target(mesh), [raw.hello("size1", "BR"), too_many], token=token)
    assert out.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "exceeds" in out.details, out
    before = _rejected(mesh, "message_too_large")
    big = raw.batch(1, [raw.result("c00", success=False, reason=8, message="x" * 70_000)])
    out = raw.connect(_target(mesh), [raw.hello("size1", "BR"), big], token=token)
    assert out.code == grpc.StatusCode.RESOURCE_EXHAUSTED, out
    assert _rejected(mesh, "message_too_large") == before + 1
    huge = raw.batch(1, [raw.result("c00", success=False, reason=8, message="x" * 200_000)])
    out = raw.connect(_target(mesh), [raw.hello("size1", "BR"), huge], token=token)
    assert out.code == grpc.StatusCode.RESOURCE_EXHAUSTED, (
        "gRPC core cuts messages over twice the limit"
    )


def test_rate_limit_answers_resource_exhausted(limited_mesh: Mesh) -> None:
    mesh = limited_mesh
    token = mesh.token("flood1", "BR")
    before = _rejected(mesh, "rate_limited")
    batches = [
        raw.batch(1 + i * 1000, [raw.result(f"c{j % 10:02d}") for j in range(1000)])
        for i in range(40)
    ]
    out = raw.connect(_target(mesh), [raw.hello("flood1", "BR"), *batches], token=token, timeout=20)
    assert out.code == grpc.StatusCode.RESOURCE_EXHAUSTED, out
    assert "rate limit" in out.details
    refused = _rejected(mesh, "rate_limited") - before
    assert refused >= 1000
    # 20,000 burst + about 1,000/s refill for the few seconds the flood lasted;
    # batches admitted before the refusal are still applied (asynchronously).
    applied = wait_for(
        lambda: (
            (n := total(mesh.metrics(), "probemesh_probe_results_total", agent="flood1")) >= 20_000
            and n
        ),
        10,
        "admitted batches applied",
    )
    assert isinstance(applied, float) and applied <= 27_000, applied
    # The bucket is per agent and survives reconnecting: a new stream is still limited.
    again = raw.connect(
        _target(mesh), [raw.hello("flood1", "BR"), *batches[30:]], token=token, timeout=20
    )
    assert again.code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_cardinality_attack_is_refused(limited_mesh: Mesh) -> None:
    mesh = limited_mesh
    token = mesh.token("card1", "BR")
    before_unknown = _rejected(mesh, "not_assigned")
    before_card = _rejected(mesh, "cardinality")
    # 10,000 distinct check names, then every assigned check with 10,000 distinct label values.
    names = [raw.result(f"attack-{i}") for i in range(10_000)]
    labelled = [
        raw.result(
            f"c{i % N_CHECKS:02d}",
            samples=[{"name": "probe_http_duration_seconds", "labels": {"phase": f"p{i}"},
                      "value": 1.0},
                     {"name": f"probe_custom_{i}", "value": 1.0}],
        )
        for i in range(10_000)
    ]  # fmt: skip
    messages = [raw.batch(1 + k * 1000, names[k * 1000 : (k + 1) * 1000]) for k in range(10)]
    messages += [raw.batch(10_001 + k * 250, labelled[k * 250 : (k + 1) * 250]) for k in range(40)]
    out = raw.connect(_target(mesh), [raw.hello("card1", "BR"), *messages], token=token, timeout=20)
    assert out.code == grpc.StatusCode.OK, out
    assert _rejected(mesh, "not_assigned") - before_unknown == 10_000
    page = http_get(mesh.metrics_url)
    assert "attack-" not in page and "probe_custom_" not in page and 'phase="p' not in page
    samples = mesh.metrics()
    exported = sum(
        1 for (n, lab), _ in samples.items() if n == "probe_success" and ("agent", "card1") in lab
    )
    # --max-series-per-agent 40: each check costs 2 series (success, duration) here.
    assert exported == 20, exported
    assert _rejected(mesh, "cardinality") - before_card == 2 * (N_CHECKS - 20)
    assert len(page) < 400_000, f"/metrics grew to {len(page)} bytes"
