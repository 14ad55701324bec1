"""TCP probe: connect, optional TLS, and blackbox's query_response dialogue.

Each ``expect`` reads lines until one matches (EOF without a match fails the
probe with reason ``validation``); ``send`` may reference the match's groups
with Go's template syntax (``$1``, ``${name}``) and is sent with a trailing
newline; ``starttls`` upgrades the connection in place.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re

from probemesh.agent.probes.net import (
    ProbeEnv,
    client_context,
    connect,
    record_tls,
    resolve,
    ssl_peer,
)
from probemesh.agent.probes.result import ProbeFailure, ProbeResult, Reason
from probemesh.modules import TCPSettings
from probemesh.targets import split_host_port

_GO_TEMPLATE = re.compile(r"\$(?:(\$)|\{(\w+)\}|(\w+))")


async def probe(target: str, settings: TCPSettings, env: ProbeEnv, result: ProbeResult) -> None:
    """Connect to host:port and run the query_response steps."""
    host, port = split_host_port(target)
    regex_failed = False
    try:
        await _dialogue(host, port, settings, env, result)
    except _NoMatch as exc:
        regex_failed = True
        raise ProbeFailure(Reason.VALIDATION, str(exc)) from None
    finally:
        result.add("probe_failed_due_to_regex", 1 if regex_failed else 0)


class _NoMatch(Exception):
    """An expect step saw EOF before a matching line."""


async def _dialogue(
    host: str, port: int, settings: TCPSettings, env: ProbeEnv, result: ProbeResult
) -> None:
    resolved = await resolve(
        host, settings.preferred_ip_protocol, settings.ip_protocol_fallback, env, result
    )
    if settings.source_ip_address:
        env = dataclasses.replace(env, source_address=settings.source_ip_address)
    sock = await connect(resolved, port, env)
    reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 16)
    server_name = settings.tls_config.server_name or host
    try:
        if settings.tls:
            await writer.start_tls(
                client_context(settings.tls_config, env.secrets), server_hostname=server_name
            )
            record_tls(ssl_peer(writer.get_extra_info("ssl_object")), result)
        for i, step in enumerate(settings.query_response):
            send = step.send
            if step.pattern is not None:
                match = await _expect(reader, step.pattern)
                if match is None:
                    raise _NoMatch(f"query_response[{i}]: no line matched {step.expect!r}")
                send = expand(send, match)
            if send:
                writer.write(send.encode() + b"\n")
                await writer.drain()
            if step.starttls:
                context = client_context(settings.tls_config, env.secrets)
                await writer.start_tls(context, server_hostname=server_name)
                record_tls(ssl_peer(writer.get_extra_info("ssl_object")), result)
        result.success = True
    finally:
        writer.transport.abort()


async def _expect(reader: asyncio.StreamReader, pattern: re.Pattern[str]) -> re.Match[str] | None:
    """Read lines until one matches pattern, or None when the peer closes first."""
    while True:
        line = await reader.readline()
        if not line:
            return None
        match = pattern.search(line.rstrip(b"\r\n").decode("utf-8", "replace"))
        if match:
            return match


def expand(template: str, match: re.Match[str]) -> str:
    """Go's Regexp.Expand: $1, ${1}, $name, ${name}; unknown groups expand to ''."""

    def one(ref: re.Match[str]) -> str:
        if ref.group(1):
            return "$"
        name = ref.group(2) or ref.group(3)
        try:
            return match.group(int(name) if name.isdigit() else name) or ""
        except IndexError:  # no such group
            return ""

    return _GO_TEMPLATE.sub(one, template)
