"""TLS probe (probemesh's own, no blackbox equivalent): connect and handshake, no HTTP.

For services where only the certificate matters (SMTPS, LDAPS, a load balancer's
port). Emits the same certificate metrics as blackbox's http/tcp probes plus
probe_tls_duration_seconds{phase=resolve|connect|handshake}. A certificate that
fails verification fails the probe with reason ``tls``.
"""

from __future__ import annotations

import dataclasses
import time

from probemesh.agent.probes.net import ProbeEnv, connect, probe_context, record_tls, resolve
from probemesh.agent.probes.result import ProbeResult
from probemesh.agent.probes.tlsconn import TLSConnection
from probemesh.modules import TLSSettings
from probemesh.targets import split_host_port


async def probe(target: str, settings: TLSSettings, env: ProbeEnv, result: ProbeResult) -> None:
    """Handshake with host:port and record the certificate chain's expiry and identity."""
    host, port = split_host_port(target)
    if settings.source_ip_address:
        env = dataclasses.replace(env, source_address=settings.source_ip_address)
    phases = dict.fromkeys(("resolve", "connect", "handshake"), 0.0)
    conn: TLSConnection | None = None
    try:
        start = time.perf_counter()
        resolved = await resolve(
            host, settings.preferred_ip_protocol, settings.ip_protocol_fallback, env, result
        )
        resolved_at = time.perf_counter()
        phases["resolve"] = resolved_at - start
        sock = await connect(resolved, port, env)
        connected_at = time.perf_counter()
        phases["connect"] = connected_at - resolved_at
        try:
            server_name = settings.tls_config.server_name or host
            context = probe_context(settings.tls_config, env.secrets)
            conn = TLSConnection(sock, context, server_name)
        except BaseException:
            sock.close()
            raise
        await conn.handshake()
        phases["handshake"] = time.perf_counter() - connected_at
        record_tls(conn.peer(), result)
        result.success = True
    finally:
        if conn is not None:
            conn.close()
        for phase, seconds in phases.items():
            result.add("probe_tls_duration_seconds", seconds, phase=phase)
