"""Send incidents to Alertmanager as alerts, the way Prometheus does.

Each open incident is one firing alert::

    alertname="ProbemeshIncident", check, scope="regional|global",
    severity="warning" (regional) | "critical" (global), plus the external labels

with the annotations ``summary``, ``countries``, ``peak_countries``,
``started_at``, ``incident_id`` and, where the incident has them, ``cause`` and
``diagnosis``; ``generatorURL`` points at the incident on the status page.
The scope is a label, so that routes can page on global outages only: when an
incident changes scope, the alert of the old scope resolves and one of the new
scope fires. With ``local_problem_alerts``, every agent flagged with a local
problem is a ``ProbemeshAgentLocalProblem`` alert (``severity="info"``).

Delivery follows Prometheus' notifier, whose behaviour Alertmanager is built
for:

* every alert goes to every Alertmanager given (they deduplicate among
  themselves; load balancing would break their grouping);
* the whole set of current alerts is posted to ``/api/v2/alerts`` whenever it
  changes and again every ``resend`` seconds, so an Alertmanager that restarts
  (its alerts live in memory) has them all back within one ``resend``;
* a firing alert carries ``endsAt`` = now + 4 x ``resend``: if the collector
  stops for good, Alertmanager resolves the alert on its own;
* a resolved alert (``endsAt`` = the close time) is re-sent for 15 minutes,
  so an Alertmanager that was down when the incident closed still resolves it;
* one task per Alertmanager posts with a timeout; a failed post is retried
  with backoff (at most every ``resend``). Nothing here waits on the network
  from the evaluation: :meth:`AlertmanagerNotifier.notify` only swaps the set.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from probemesh.collector.incidents import Incident
from probemesh.collector.notify import Evaluation, LocalProblem, diagnosis_text
from probemesh.collector.outbound import ClientSettings, redact
from probemesh.timefmt import rfc3339

log = logging.getLogger(__name__)

INCIDENT_ALERT = "ProbemeshIncident"
LOCAL_PROBLEM_ALERT = "ProbemeshAgentLocalProblem"
SEVERITY = {"regional": "warning", "global": "critical"}
RESOLVED_RETENTION = 15 * 60.0  # seconds a resolved alert keeps being re-sent
ENDS_AFTER_RESENDS = 4  # a firing alert's endsAt, in resend intervals from now
MIN_BACKOFF = 0.5

LabelKey = tuple[tuple[str, str], ...]


def alerts_url(base: str) -> str:
    """The v2 alerts endpoint under an Alertmanager base URL (route prefix kept)."""
    base = base.rstrip("/")
    return base if base.endswith("/api/v2/alerts") else f"{base}/api/v2/alerts"


def incident_link(external_url: str, incident_id: int) -> str:
    return f"{external_url.rstrip('/')}/#incident-{incident_id}"


@dataclass
class _Alert:
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: float
    generator_url: str
    ended_at: float | None = None  # set once resolved

    def payload(self, now: float, resend: float) -> dict[str, Any]:
        ends = self.ended_at if self.ended_at is not None else now + ENDS_AFTER_RESENDS * resend
        return {
            "labels": self.labels,
            "annotations": self.annotations,
            "startsAt": rfc3339(self.starts_at),
            "endsAt": rfc3339(max(ends, self.starts_at)),
            "generatorURL": self.generator_url,
        }


@dataclass
class _Target:
    """One Alertmanager: where to post and what happened to the posts."""

    url: str
    label: str
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    queued: int = 0  # alerts of the current set not yet posted here
    sent: int = 0
    failed: int = 0


class AlertmanagerNotifier:
    """Keeps the current alert set and posts it to every Alertmanager; see the module docstring."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        resend: float = 60.0,
        external_labels: Mapping[str, str] | None = None,
        external_url: Callable[[], str] = lambda: "http://localhost/",
        client: ClientSettings | None = None,
        local_problem_alerts: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.targets = [_Target(alerts_url(u), redact(alerts_url(u))) for u in urls]
        self.resend = resend
        self.external_labels = dict(external_labels or {})
        self.external_url = external_url
        self.client = client or ClientSettings()
        self.local_problem_alerts = local_problem_alerts
        self.clock = clock
        self.alerts: dict[LabelKey, _Alert] = {}
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def _labels(self, own: dict[str, str]) -> dict[str, str]:
        """Own labels plus the external labels they do not already have (as Prometheus does)."""
        return {**self.external_labels, **own}

    def _incident_alert(self, incident: Incident) -> _Alert:
        doc = incident.to_json()
        scope = incident.scope
        scope_events = [e.at for e in incident.timeline if e.event == scope]
        annotations = {
            "summary": doc["summary"],
            "countries": ", ".join(doc["countries"]),
            "peak_countries": ", ".join(doc["peak_countries"]),
            "started_at": doc["started_at"],
            "incident_id": str(incident.id),
        }
        cause = doc.get("cause")
        if isinstance(cause, str) and cause:
            annotations["cause"] = cause
        diagnosis = diagnosis_text(doc)
        if diagnosis:
            annotations["diagnosis"] = diagnosis
        own = {
            "alertname": INCIDENT_ALERT,
            "check": incident.check,
            "scope": scope,
            "severity": SEVERITY.get(scope, "warning"),
        }
        return _Alert(
            self._labels(own),
            annotations,
            scope_events[-1] if scope_events else incident.started_at,
            incident_link(self.external_url(), incident.id),
        )

    def _local_problem_alert(self, problem: LocalProblem) -> _Alert:
        own = {
            "alertname": LOCAL_PROBLEM_ALERT,
            "agent": problem.agent,
            "country": problem.country,
            "severity": "info",
        }
        summary = (
            f"agent {problem.agent} ({problem.country}) fails nearly every check it probes "
            "while other agents see those checks up; its results are left out of outage verdicts"
        )
        annotations = {"summary": summary, "started_at": rfc3339(problem.since) or ""}
        return _Alert(
            self._labels(own), annotations, problem.since, self.external_url().rstrip("/") + "/"
        )

    def notify(self, evaluation: Evaluation) -> None:
        """Recompute the alert set; wake the senders when it changed."""
        now = evaluation.at
        firing = [self._incident_alert(i) for i in evaluation.active]
        if self.local_problem_alerts:
            firing += [self._local_problem_alert(p) for p in evaluation.local_problems]
        current = {tuple(sorted(a.labels.items())): a for a in firing}
        changed = bool(evaluation.events)
        for key, alert in self.alerts.items():
            if key in current:
                continue
            if alert.ended_at is None:
                alert.ended_at = now
                changed = True
            if now - alert.ended_at < RESOLVED_RETENTION:
                current[key] = alert
        changed = changed or any(
            key not in self.alerts or self.alerts[key].ended_at is not None
            for key, alert in current.items()
            if alert.ended_at is None
        )
        self.alerts = current
        if changed:
            for target in self.targets:
                target.queued = len(current)
                target.wake.set()

    def stand_by(self) -> None:
        """The new evaluator posts the set now; re-sending ours would revive what it resolved."""
        self.alerts = {}

    def payload(self) -> list[dict[str, Any]]:
        now = self.clock()
        return [a.payload(now, self.resend) for a in self.alerts.values()]

    async def start(self) -> None:
        if self._tasks or not self.targets:
            return
        self._session = self.client.session()
        self._tasks = [
            asyncio.create_task(self._run(t), name=f"alertmanager {t.label}") for t in self.targets
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _run(self, target: _Target) -> None:
        """Post the set on every change and every resend; after a failure retry with backoff."""
        backoff = MIN_BACKOFF
        delay = self.resend
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(target.wake.wait(), delay)
            target.wake.clear()
            alerts = self.payload()
            if not alerts:
                target.queued = 0
                delay = self.resend
                continue
            target.queued = len(alerts)
            if await self._post(target, alerts):
                target.queued = 0
                backoff, delay = MIN_BACKOFF, self.resend
            else:
                delay = min(backoff, self.resend) * random.uniform(0.8, 1.0)
                backoff = min(backoff * 2, self.resend)

    async def _post(self, target: _Target, alerts: list[dict[str, Any]]) -> bool:
        assert self._session is not None
        try:
            async with self._session.post(target.url, json=alerts) as response:
                if 200 <= response.status < 300:
                    target.sent += len(alerts)
                    return True
                problem = f"HTTP {response.status}: {(await response.text())[:200].strip()}"
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            problem = f"{type(exc).__name__}: {exc}"
        target.failed += len(alerts)
        log.warning("posting %d alerts to %s failed: %s", len(alerts), target.label, problem)
        return False

    def metric_families(self) -> Iterator[Metric]:
        labels = ["alertmanager"]
        sent = CounterMetricFamily(
            "probemesh_alertmanager_alerts_sent",
            "Alerts posted to this Alertmanager and accepted (each re-send counts)",
            labels=labels,
        )
        failed = CounterMetricFamily(
            "probemesh_alertmanager_alerts_failed",
            "Alerts in posts to this Alertmanager that failed (error, timeout or non-2xx)",
            labels=labels,
        )
        queued = GaugeMetricFamily(
            "probemesh_alertmanager_queue_length",
            "Alerts of the current set waiting to be posted to this Alertmanager",
            labels=labels,
        )
        for target in self.targets:
            sent.add_metric([target.label], target.sent)
            failed.add_metric([target.label], target.failed)
            queued.add_metric([target.label], target.queued)
        active = GaugeMetricFamily(
            "probemesh_alertmanager_alerts",
            "Alerts in the set posted to Alertmanager, by state",
            labels=["state"],
        )
        states = [a.ended_at is None for a in self.alerts.values()]
        active.add_metric(["firing"], sum(states))
        active.add_metric(["resolved"], len(states) - sum(states))
        yield from (sent, failed, queued, active)
