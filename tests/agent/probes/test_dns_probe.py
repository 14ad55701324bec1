"""DNS probe against an in-process authoritative server on loopback (UDP and TCP)."""

from __future__ import annotations

import pytest

from probemesh.agent.probes.result import Reason
from tests.agent.probes.probe_helpers import Zone, dns_server, run, value


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_answer_and_phases(transport: str) -> None:
    zone = Zone()
    async with dns_server(zone) as port:
        result = await run(
            "dns",
            f"127.0.0.1:{port}",
            {"query_name": "example.test", "query_type": "A", "transport_protocol": transport},
        )
    assert result.success, result.message
    assert value(result, "probe_dns_answer_rrs") == 2
    assert value(result, "probe_dns_authority_rrs") == 0
    assert value(result, "probe_dns_additional_rrs") == 1
    assert value(result, "probe_dns_query_succeeded") == 1
    for phase in ("resolve", "connect", "request"):
        assert value(result, "probe_dns_duration_seconds", phase=phase) >= 0
    assert value(result, "probe_dns_duration_seconds", phase="request") > 0
    assert zone.last_rd is True


async def test_soa_serial_and_recursion_flag() -> None:
    zone = Zone()
    async with dns_server(zone) as port:
        result = await run(
            "dns",
            f"127.0.0.1:{port}",
            {"query_name": "example.test", "query_type": "SOA", "recursion_desired": False},
        )
    assert result.success, result.message
    assert value(result, "probe_dns_serial") == 2024010101
    assert zone.last_rd is False


async def test_rcode_validation() -> None:
    async with dns_server(Zone()) as port:
        target = f"127.0.0.1:{port}"
        nx = await run("dns", target, {"query_name": "missing.test", "query_type": "A"})
        allowed = await run(
            "dns",
            target,
            {"query_name": "missing.test", "query_type": "A", "valid_rcodes": ["NXDOMAIN"]},
        )
    assert nx.reason == Reason.VALIDATION and "NXDOMAIN" in nx.message
    assert value(nx, "probe_dns_query_succeeded") == 1
    assert allowed.success


@pytest.mark.parametrize(
    ("validator", "ok"),
    [
        ({"fail_if_matches_regexp": [r"192\.0\.2\.2"]}, False),
        ({"fail_if_matches_regexp": [r"198\.51"]}, True),
        ({"fail_if_not_matches_regexp": [r"192\.0\.2\.1"]}, False),  # .2 does not match
        ({"fail_if_not_matches_regexp": [r"^example\.test\.\t300\tIN\tA\t"]}, True),
        ({"fail_if_all_match_regexp": [r"192\.0\.2\."]}, True),  # blackbox: passes if all match
        ({"fail_if_all_match_regexp": [r"192\.0\.2\.1"]}, False),
        ({"fail_if_none_matches_regexp": [r"192\.0\.2\.2$"]}, True),
        ({"fail_if_none_matches_regexp": [r"203\.0\.113"]}, False),
    ],
)
async def test_answer_validators(validator: dict[str, list[str]], ok: bool) -> None:
    async with dns_server(Zone()) as port:
        result = await run(
            "dns",
            f"127.0.0.1:{port}",
            {"query_name": "example.test", "query_type": "A", "validate_answer_rrs": validator},
        )
    assert result.success is ok, result.message
    if not ok:
        assert result.reason == Reason.VALIDATION


async def test_authority_validator_on_nodata() -> None:
    async with dns_server(Zone()) as port:
        result = await run(
            "dns",
            f"127.0.0.1:{port}",
            {
                "query_name": "example.test",
                "query_type": "MX",
                "validate_answer_rrs": {"fail_if_not_matches_regexp": ["MX"]},
            },
        )
    assert result.reason == Reason.VALIDATION
    assert value(result, "probe_dns_authority_rrs") == 1


async def test_no_server_times_out_and_dead_tcp_is_refused() -> None:
    async with dns_server(Zone()) as port:
        pass
    udp = await run("dns", f"127.0.0.1:{port}", {"query_name": "example.test"}, module_timeout=0.3)
    # A closed UDP port answers with ICMP port unreachable (reported as refused), but the
    # kernel rate-limits those messages, so a silent drop (timeout) is legitimate too.
    assert udp.reason in (Reason.REFUSED, Reason.TIMEOUT)
    assert value(udp, "probe_dns_query_succeeded") == 0
    tcp = await run(
        "dns", f"127.0.0.1:{port}", {"query_name": "example.test", "transport_protocol": "tcp"}
    )
    assert tcp.reason == Reason.REFUSED
    unresolvable = await run("dns", "ns.nonexistent.invalid", {"query_name": "example.test"})
    assert unresolvable.reason == Reason.DNS
