"""Run one probe: the runner owns the timeout and the total duration.

Probes never sleep or start timers; the runner wraps them in asyncio.timeout,
turns any escaped exception into exactly one failure reason, and builds the
wire Result stamped with the agent's probe start time.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from probemesh.agent.probes import PROBERS
from probemesh.agent.probes.net import ProbeEnv
from probemesh.agent.probes.result import ProbeResult, Reason, failure_from_exception
from probemesh.agent.safety import RULE_INTERVAL, policy_message
from probemesh.catalog import HTTP_PHASE_METRIC, HTTP_PHASE_ORDER
from probemesh.errors import ConfigError
from probemesh.modules import settings_from_json
from probemesh.v1 import mesh_pb2 as pb

_REASON_TO_PB = {
    reason: pb.FailureReason.Value(f"FAILURE_REASON_{reason.name}") for reason in Reason
}


@dataclass(frozen=True)
class PreparedCheck:
    """A check from the collector with its settings parsed once.

    ``refusal`` is set when the agent will not run the check; each round then
    reports it with ``refusal_reason``: ``policy`` for the interval floor,
    ``other`` for bad settings or an unknown prober.
    """

    check: pb.Check
    settings: Any
    interval: float
    refusal: str = ""
    refusal_reason: Reason = Reason.OTHER

    @property
    def name(self) -> str:
        return self.check.name


def prepare(check: pb.Check, min_interval: float) -> PreparedCheck:
    """Parse a Check's settings; never raises, so one bad check cannot stop the others."""
    interval = check.interval_seconds
    if check.prober not in PROBERS:
        return PreparedCheck(
            check, None, max(interval, min_interval), f"agent cannot run prober {check.prober!r}"
        )
    if not interval >= min_interval:
        return PreparedCheck(
            check,
            None,
            min_interval,
            policy_message(
                RULE_INTERVAL,
                f"interval {interval:g}s is below this agent's floor of {min_interval:g}s "
                "(--min-interval); check refused",
            ),
            Reason.POLICY,
        )
    try:
        settings = settings_from_json(check.prober, check.settings_json)
    except ConfigError as exc:
        return PreparedCheck(check, None, interval, f"invalid settings: {exc}")
    return PreparedCheck(check, settings, interval)


async def run_probe(prepared: PreparedCheck, env: ProbeEnv) -> pb.Result:
    """Probe once and return the wire result; failures are data, not exceptions."""
    check = prepared.check
    started = time.time()
    t0 = time.perf_counter()
    result = ProbeResult()
    if prepared.refusal:
        result.fail(prepared.refusal_reason, prepared.refusal)
    else:
        try:
            async with asyncio.timeout(check.timeout_seconds or None):
                await PROBERS[check.prober](check.target, prepared.settings, env, result)
        except Exception as exc:  # every escaped error is a failure reason, by design
            reason, message = failure_from_exception(exc)
            result.fail(reason, message)
    duration = time.perf_counter() - t0
    return to_proto(check, started, duration, result)


def to_proto(check: pb.Check, started: float, duration: float, result: ProbeResult) -> pb.Result:
    """Build the wire Result for one probe."""
    success = result.success and result.reason is None
    phases = {
        labels.get("phase"): value
        for name, labels, value in result.samples
        if name == HTTP_PHASE_METRIC
    }
    return pb.Result(
        check=check.name,
        target=check.target,
        timestamp=started,
        success=success,
        duration_seconds=duration,
        reason=pb.FAILURE_REASON_UNSPECIFIED
        if success
        else _REASON_TO_PB[result.reason or Reason.OTHER],
        message="" if success else result.message[:512],
        samples=[pb.Sample(name=n, labels=labels, value=v) for n, labels, v in result.samples],
        http_phase_seconds=[phases.get(p, 0.0) for p in HTTP_PHASE_ORDER] if phases else [],
    )
