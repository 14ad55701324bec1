"""DNS probe: ask the target server one question over UDP, TCP or DNS-over-TLS.

The exchange is hand-rolled on a fresh socket (dnspython only builds and parses
messages) so the phases match blackbox's: ``resolve`` is the lookup of the
server's own name, ``connect`` the socket setup (the TCP/TLS handshake; next to
nothing for UDP) and ``request`` the query round trip.

Answers are checked like blackbox: rcode first, then the answer, authority and
additional sections, each RR rendered as miekg/dns does
(``name<TAB>ttl<TAB>class<TAB>type<TAB>rdata``) so users' regexes keep working.
A bad rcode or RR fails with reason ``validation``; ``dns`` is kept for failing
to resolve the server's own name.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import struct
import time

import dns.exception
import dns.flags
import dns.message
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from probemesh.agent.probes.net import ProbeEnv, Resolved, client_context, connect, resolve
from probemesh.agent.probes.result import ProbeFailure, ProbeResult, Reason
from probemesh.modules import DNSSettings, RRValidator
from probemesh.targets import split_host_port

_MAX_UDP = 65535


async def probe(target: str, settings: DNSSettings, env: ProbeEnv, result: ProbeResult) -> None:
    """Send settings.query_name to the server at target and validate the response."""
    host, port = split_host_port(target, 853 if settings.dns_over_tls else 53)
    if settings.source_ip_address:
        env = dataclasses.replace(env, source_address=settings.source_ip_address)
    phases = dict.fromkeys(("resolve", "connect", "request"), 0.0)
    response: dns.message.Message | None = None
    try:
        start = time.perf_counter()
        resolved = await resolve(
            host, settings.preferred_ip_protocol, settings.ip_protocol_fallback, env, result
        )
        phases["resolve"] = time.perf_counter() - start
        query = dns.message.make_query(settings.query_name, settings.rdtype, settings.rdclass)
        if not settings.recursion_desired:
            query.flags &= ~dns.flags.RD
        if settings.transport_protocol == "udp":
            response = await _exchange_udp(query, resolved, port, env, phases)
        else:
            response = await _exchange_tcp(query, resolved, port, host, settings, env, phases)
    finally:
        for phase, seconds in phases.items():
            result.add("probe_dns_duration_seconds", seconds, phase=phase)
        sections = (response.answer, response.authority, response.additional) if response else ()
        counts = [_count(s) for s in sections] or [0, 0, 0]
        result.add("probe_dns_answer_rrs", counts[0])
        result.add("probe_dns_authority_rrs", counts[1])
        result.add("probe_dns_additional_rrs", counts[2])
        result.add("probe_dns_query_succeeded", 1 if response is not None else 0)
    if settings.rdtype == dns.rdatatype.SOA:
        serials = [rd.serial for rrset in response.answer for rd in rrset if hasattr(rd, "serial")]
        result.add("probe_dns_serial", serials[-1] if serials else 0)
    _validate(response, settings, result)


def _validate(response: dns.message.Message, settings: DNSSettings, result: ProbeResult) -> None:
    rcode = response.rcode()
    if rcode not in settings.rcodes:
        result.fail(Reason.VALIDATION, f"rcode {dns.rcode.to_text(rcode)} is not valid")
        return
    for name, section, validator in (
        ("answer", response.answer, settings.validate_answer_rrs),
        ("authority", response.authority, settings.validate_authority_rrs),
        ("additional", response.additional, settings.validate_additional_rrs),
    ):
        problem = rr_problem(_rr_lines(section), validator)
        if problem:
            result.fail(Reason.VALIDATION, f"{name} RRs: {problem}")
            return
    result.success = True


def rr_problem(lines: list[str], validator: RRValidator) -> str:
    """blackbox's validRRs: why the RRs fail the validator, or '' when they pass."""
    matches, all_match, not_matches, none_matches = validator.patterns
    if not lines and not_matches:
        return "fail_if_not_matches_regexp is set but there are no RRs"
    if not lines and none_matches:
        return "fail_if_none_matches_regexp is set but there are no RRs"
    for pattern in matches:
        if any(pattern.search(line) for line in lines):
            return f"an RR matched {pattern.pattern!r}"
    for pattern in not_matches:
        if not all(pattern.search(line) for line in lines):
            return f"an RR did not match {pattern.pattern!r}"
    # Despite its name, blackbox fails this one unless *every* RR matches
    # every regexp (PR #552: "pass if all records match"); kept for parity.
    if not all(p.search(line) for p in all_match for line in lines):
        return "not every RR matched fail_if_all_match_regexp"
    if none_matches and not any(p.search(line) for p in none_matches for line in lines):
        return "no RR matched fail_if_none_matches_regexp"
    return ""


def _rr_lines(section: list[dns.rrset.RRset]) -> list[str]:
    """One line per RR, formatted like miekg/dns RR.String()."""
    lines: list[str] = []
    for rrset in section:
        head = (
            f"{rrset.name.to_text()}\t{rrset.ttl}\t{dns.rdataclass.to_text(rrset.rdclass)}\t"
            f"{dns.rdatatype.to_text(rrset.rdtype)}\t"
        )
        lines.extend(head + rdata.to_text() for rdata in rrset)
    return lines


def _count(section: list[dns.rrset.RRset]) -> int:
    return sum(len(rrset) for rrset in section)


async def _exchange_udp(
    query: dns.message.Message,
    server: Resolved,
    port: int,
    env: ProbeEnv,
    phases: dict[str, float],
) -> dns.message.Message:
    """One UDP exchange; datagrams that do not answer our query are ignored."""
    loop = asyncio.get_running_loop()
    start = time.perf_counter()
    sock = socket.socket(server.family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        if env.source_address:
            sock.bind((env.source_address, 0))
        await loop.sock_connect(sock, (server.address, port))
        sent_at = time.perf_counter()
        phases["connect"] = sent_at - start
        await loop.sock_sendall(sock, query.to_wire())
        try:
            while True:
                wire = await loop.sock_recv(sock, _MAX_UDP)
                response = _parse(wire, query)
                if response is not None:
                    return response
        finally:
            phases["request"] = time.perf_counter() - sent_at
    finally:
        sock.close()


async def _exchange_tcp(
    query: dns.message.Message,
    server: Resolved,
    port: int,
    host: str,
    settings: DNSSettings,
    env: ProbeEnv,
    phases: dict[str, float],
) -> dns.message.Message:
    """One length-prefixed exchange over TCP, or TLS when dns_over_tls is set."""
    start = time.perf_counter()
    sock = await connect(server, port, env)
    reader, writer = await asyncio.open_connection(sock=sock)
    try:
        if settings.dns_over_tls:
            name = settings.tls_config.server_name or host
            await writer.start_tls(
                client_context(settings.tls_config, env.secrets), server_hostname=name
            )
        sent_at = time.perf_counter()
        phases["connect"] = sent_at - start
        try:
            wire = query.to_wire()
            writer.write(struct.pack("!H", len(wire)) + wire)
            (length,) = struct.unpack("!H", await reader.readexactly(2))
            response = _parse(await reader.readexactly(length), query)
        finally:
            phases["request"] = time.perf_counter() - sent_at
        if response is None:
            raise ProbeFailure(Reason.OTHER, "DNS response does not answer the query")
        return response
    finally:
        writer.transport.abort()


def _parse(wire: bytes, query: dns.message.Message) -> dns.message.Message | None:
    """The parsed response when it answers query, else None."""
    try:
        response = dns.message.from_wire(wire)
    except dns.exception.DNSException:
        return None
    return response if query.is_response(response) else None
