"""ICMP probe to loopback (needs root or a ping socket) and gRPC health probe against grpc.aio."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import trustme
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from probemesh.agent.probes.result import Reason
from tests.agent.probes.probe_helpers import run, value


def _ping_allowed() -> bool:
    if os.geteuid() == 0:
        return True
    try:
        with open("/proc/sys/net/ipv4/ping_group_range") as f:
            low, high = map(int, f.read().split())
    except OSError:
        return False
    return any(low <= gid <= high for gid in [*os.getgroups(), os.getgid()])


needs_icmp = pytest.mark.skipif(
    not _ping_allowed(),
    reason="ICMP needs root/CAP_NET_RAW or this group in net.ipv4.ping_group_range",
)


@needs_icmp
@pytest.mark.parametrize(("target", "family"), [("127.0.0.1", 4), ("::1", 6)])
async def test_icmp_loopback(target: str, family: int) -> None:
    result = await run("icmp", target, {"packets": 4})
    assert result.success, result.message
    assert value(result, "probe_ip_protocol") == family
    assert value(result, "probe_icmp_packets_sent") == 4
    assert value(result, "probe_icmp_packets_received") == 4
    assert value(result, "probe_icmp_packet_loss_ratio") == 0
    low = value(result, "probe_icmp_rtt_min_seconds")
    high = value(result, "probe_icmp_rtt_max_seconds")
    assert 0 < low <= value(result, "probe_icmp_rtt_avg_seconds") <= high < 0.1
    assert value(result, "probe_icmp_jitter_seconds") >= 0
    for phase in ("resolve", "setup", "rtt"):
        assert value(result, "probe_icmp_duration_seconds", phase=phase) >= 0


@needs_icmp
async def test_icmp_unanswered_counts_as_loss() -> None:
    # 127.0.0.1 answers; an IPv4-only target probed as ip6 without fallback cannot resolve.
    result = await run(
        "icmp", "127.0.0.1", {"preferred_ip_protocol": "ip6", "ip_protocol_fallback": False}
    )
    assert result.reason == Reason.DNS


@contextlib.asynccontextmanager
async def health_server(
    credentials: grpc.ServerCredentials | None = None,
) -> AsyncIterator[tuple[int, health.aio.HealthServicer]]:
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    try:
        yield port, servicer
    finally:
        await server.stop(None)


async def test_grpc_health_statuses() -> None:
    async with health_server() as (port, servicer):
        await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        await servicer.set("db", health_pb2.HealthCheckResponse.NOT_SERVING)
        target = f"127.0.0.1:{port}"
        ok = await run("grpc", target)
        down = await run("grpc", target, {"service": "db"})
        unknown = await run("grpc", target, {"service": "nope"})
    assert ok.success, ok.message
    assert value(ok, "probe_grpc_healthcheck_response", serving_status="SERVING") == 1
    assert value(ok, "probe_grpc_healthcheck_response", serving_status="NOT_SERVING") == 0
    assert value(ok, "probe_grpc_status_code") == 0
    assert value(ok, "probe_grpc_ssl") == 0
    assert value(ok, "probe_grpc_duration_seconds", phase="check") > 0
    assert down.reason == Reason.VALIDATION
    assert value(down, "probe_grpc_healthcheck_response", serving_status="NOT_SERVING") == 1
    assert unknown.reason == Reason.VALIDATION
    assert value(unknown, "probe_grpc_status_code") == grpc.StatusCode.NOT_FOUND.value[0]


async def test_grpc_refused() -> None:
    async with health_server() as (port, _):
        pass
    result = await run("grpc", f"127.0.0.1:{port}")
    assert result.reason in (Reason.REFUSED, Reason.CONNECT), result.message
    assert value(result, "probe_grpc_status_code") == grpc.StatusCode.UNAVAILABLE.value[0]


async def test_grpc_tls(
    ca_file: str, localhost_cert: trustme.LeafCert, ca: trustme.CA, secrets_dir: Path
) -> None:
    key = localhost_cert.private_key_pem.bytes()
    chain = b"".join(pem.bytes() for pem in localhost_cert.cert_chain_pems)
    credentials = grpc.ssl_server_credentials([(key, chain)])
    async with health_server(credentials) as (port, servicer):
        await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        ok = await run(
            "grpc",
            f"localhost:{port}",
            {"tls": True, "tls_config": {"ca_file": ca_file}},
            secrets=secrets_dir,
        )
        untrusted = await run("grpc", f"localhost:{port}", {"tls": True})
        plain = await run("grpc", f"localhost:{port}")
    assert ok.success, ok.message
    assert value(ok, "probe_grpc_ssl") == 1
    assert untrusted.reason == Reason.TLS, untrusted.message
    assert not plain.success
