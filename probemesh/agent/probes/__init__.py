"""One module per prober, each exposing the same coroutine shape:

    async def probe(target: str, settings, env: ProbeEnv, result: ProbeResult) -> None

Like blackbox_exporter's ``ProbeFn``, a probe fills a sink it is handed rather
than building one, so the runner keeps every sample recorded before a timeout
cancels the probe. The runner owns the timeout and the total duration.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from probemesh.agent.probes import dns, grpc, http, icmp, tcp, tls
from probemesh.agent.probes.net import ProbeEnv
from probemesh.agent.probes.result import ProbeResult

ProbeFn = Callable[[str, Any, ProbeEnv, ProbeResult], Awaitable[None]]

PROBERS: dict[str, ProbeFn] = {
    "http": http.probe,
    "tcp": tcp.probe,
    "dns": dns.probe,
    "icmp": icmp.probe,
    "grpc": grpc.probe,
    "tls": tls.probe,
}
