"""TCP probe: connect, optional TLS, and blackbox's query_response dialogue."""

from __future__ import annotations

import asyncio
import re

from probemesh.agent.probes.net import ProbeEnv, client_context, connect, record_tls, resolve
from probemesh.agent.probes.result import ProbeFailure, ProbeResult, Reason
from probemesh.modules import TCPSettings
from probemesh.targets import split_host_port


async def probe(target: str, settings: TCPSettings, env: ProbeEnv, result: ProbeResult) -> None:
    """Connect to host:port and run the query_response steps."""
    host, port = split_host_port(target)
    resolved = await resolve(host, settings.preferred_ip_protocol, settings.ip_protocol_fallback, env, result)
    if settings.source_ip_address:
        env = ProbeEnv(settings.source_ip_address, env.policy)
    sock = await connect(resolved, port, env)
    reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 16)
    server_name = settings.tls_config.server_name or host
    try:
        if settings.tls:
            await writer.start_tls(client_context(settings.tls_config), server_hostname=server_name)
            record_tls(writer.get_extra_info("ssl_object"), result)
        regex_failed = False
        for step in settings.query_response:
            if step.expect:
                if not await _expect(reader, step.expect):
                    regex_failed = True
                    break
            if step.send:
                writer.write(step.send.encode() + b"\n")
                await writer.drain()
            if step.starttls:
                await writer.start_tls(client_context(settings.tls_config), server_hostname=server_name)
                record_tls(writer.get_extra_info("ssl_object"), result)
        if settings.query_response:
            result.add("probe_failed_due_to_regex", 1 if regex_failed else 0)
        if regex_failed:
            raise ProbeFailure(Reason.VALIDATION, "query_response: expected pattern not received")
        result.success = True
    finally:
        writer.transport.abort()


async def _expect(reader: asyncio.StreamReader, pattern: str) -> bool:
    """Read lines until one matches pattern (True) or the peer closes (False)."""
    regex = re.compile(pattern)
    while True:
        line = await reader.readline()
        if not line:
            return False
        if regex.search(line.decode("utf-8", "replace")):
            return True
