"""Checks an agent will not run because of its own policy, and how to say so.

An agent refuses a check by policy (agent/safety.py): a target address its
SSRF guard blocks, or an interval under its floor. That is a configuration
problem on one agent, not an outage, so it never counts as a failure: the
collector shows it as "not runnable on agent X: <rule>" instead.

Two sources, the newer winning:
- the agent's policy from its Hello lets the collector predict refusals when it
  assigns checks (interval floor; IP literal or "localhost" targets), so a load
  or reload warns before the first round;
- a result with reason ``policy`` is the agent's own word; only the agent can
  judge a host name, after resolving it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from probemesh.agent.safety import (
    RULE_INTERVAL,
    RULE_PRIVATE,
    AddressPolicy,
    policy_message,
    policy_rule,
)
from probemesh.checks import ChecksFile, CheckSpec
from probemesh.collector.state import AgentInfo, Latest
from probemesh.errors import ConfigError
from probemesh.targets import target_host

NOT_RUNNABLE = "probemesh_check_not_runnable"  # the metric that says so
UNKNOWN_RULE = "policy"  # a refusal message that names no rule this collector knows


@dataclass(frozen=True)
class Refusal:
    """One check an agent refuses to run, and why."""

    check: str
    agent: str
    country: str
    rule: str
    detail: str

    @property
    def text(self) -> str:
        """The operator's line: 'not runnable on agent de-1: interval_floor (...)'."""
        return f"not runnable on agent {self.agent}: {self.rule} ({self.detail})"

    def to_json(self) -> dict[str, str]:
        return {
            "agent": self.agent,
            "country": self.country,
            "rule": self.rule,
            "detail": self.detail,
            "message": self.text,
        }


def rule_and_detail(message: str) -> tuple[str, str]:
    """Split an agent's refusal message "<rule>: <detail>"."""
    rule = policy_rule(message)
    if not rule:
        return UNKNOWN_RULE, message
    return rule, message[len(rule) + 1 :].strip()


def predict(spec: CheckSpec, agent: AgentInfo) -> str | None:
    """The refusal message agent's announced policy gives spec, or None if it may run."""
    if agent.min_interval and spec.interval < agent.min_interval:
        return policy_message(
            RULE_INTERVAL,
            f"interval {spec.interval:g}s is below this agent's floor of "
            f"{agent.min_interval:g}s (--min-interval)",
        )
    if agent.allow_private_targets is None:
        return None  # the agent did not announce its address policy
    try:
        host = target_host(spec.module.prober, spec.target)
    except ConfigError:
        return None
    if host.lower().rstrip(".") == "localhost" and not agent.allow_private_targets:
        return policy_message(
            RULE_PRIVATE,
            "target localhost is loopback; start the agent with --allow-private-targets to allow it",
        )
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None  # a name: only the agent can judge it, after resolving it
    return AddressPolicy(agent.allow_private_targets).refusal(host)


def refused_everywhere(checks: ChecksFile) -> dict[str, str]:
    """check -> refusal message, for checks whose target no agent will ever probe
    (a link-local or cloud-metadata address literal)."""
    out = {}
    for spec in checks.checks.values():
        try:
            host = target_host(spec.module.prober, spec.target)
            ipaddress.ip_address(host.split("%", 1)[0])
        except (ConfigError, ValueError):
            continue
        message = AddressPolicy(allow_private=True).refusal(host)
        if message:
            out[spec.name] = message
    return out


def predicted(specs: Iterable[CheckSpec], agent: AgentInfo) -> dict[str, str]:
    """check -> refusal message, for the checks assigned to agent that it will refuse."""
    out = {}
    for spec in specs:
        message = predict(spec, agent)
        if message:
            out[spec.name] = message
    return out


def not_runnable(
    latest: Mapping[tuple[str, str], Latest],
    agents: Mapping[str, AgentInfo],
    checks: ChecksFile,
) -> dict[str, list[Refusal]]:
    """check -> the agents refusing it now: their latest result says so or, before
    the first result, their announced policy does. Costs one look-up per refusal."""
    out: dict[str, list[Refusal]] = {}
    for agent in agents.values():
        for check, message in agent.refusals.items():
            if check not in agent.assigned or check not in checks.checks:
                continue
            entry = latest.get((check, agent.agent_id))
            if entry is not None:
                if not entry.refused:
                    continue  # it runs now
                message = entry.message
            rule, detail = rule_and_detail(message)
            out.setdefault(check, []).append(
                Refusal(check, agent.agent_id, agent.country, rule, detail)
            )
    for refusals in out.values():
        refusals.sort(key=lambda r: r.agent)
    return out
