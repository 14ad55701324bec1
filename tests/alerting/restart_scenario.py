"""One incident against a real Alertmanager that restarts at a chosen phase of it.

Shared by tests/alerting/test_restart_phases.py (one run per phase) and
bench/alertmanager_restart.py (the soak: many runs with random offsets). The
incident is handed straight to an AlertmanagerNotifier (resend 0.5 s), as the
evaluation hook would, so every timing is under the scenario's control:

* ``before``: the incident closes, then Alertmanager restarts;
* ``down``: Alertmanager stops, the incident closes while it is down, it starts;
* ``after``: Alertmanager restarts, then the incident closes.

``offset`` (seconds, below one resend) shifts the stop against the notifier's
re-send cycle. Whatever the phase, people must get exactly one firing and one
resolved notification.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

from probemesh.collector.alertmanager import AlertmanagerNotifier
from probemesh.collector.incidents import Event, Incident
from probemesh.collector.notify import Evaluation
from tests.alerting.receivers import Alertmanager, Recorder

RESEND = 0.5
PHASES = ("before", "down", "after")


@dataclass
class Outcome:
    phase: str
    offset: float
    firing: int  # firing notifications for the incident's alert
    resolved: int  # resolved notifications
    resolved_after: float  # seconds from the incident's close to the resolved notification


def _count(recorder: Recorder, status: str) -> int:
    return sum(
        1
        for post in recorder.under("/am")
        for alert in post.json()["alerts"]
        if alert["labels"].get("check") == "web" and alert["status"] == status
    )


async def _until(predicate: object, what: str, seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds}s waiting for {what}")
        await asyncio.sleep(0.02)


async def run(root: Path, phase: str, offset: float, settle: float = 1.5) -> Outcome:
    """Run the scenario once in root (a fresh directory); see the module docstring."""
    recorder = Recorder()
    am = Alertmanager(root, "am", f"{recorder.url}/am")
    await asyncio.to_thread(am.start)
    notifier = AlertmanagerNotifier([am.url], resend=RESEND)
    await notifier.start()
    now = time.time()
    incident = Incident(1, "web", now, "regional", "regional", ["DE"], ["DE"])
    incident.timeline.append(Event(now, "opened", ["DE"]))
    try:
        notifier.notify(Evaluation(now, [incident], [], [(incident, 0, incident.timeline[0])], []))
        await _until(lambda: _count(recorder, "firing"), "the firing notification")

        async def close() -> float:
            at = time.time()
            incident.ended_at = at
            incident.countries = []
            incident.timeline.append(Event(at, "closed", []))
            notifier.notify(
                Evaluation(at, [], [incident], [(incident, 1, incident.timeline[-1])], [])
            )
            return at

        async def restart(down_for: float) -> None:
            await asyncio.sleep(offset)
            await asyncio.to_thread(am.stop)
            await asyncio.sleep(down_for)
            await asyncio.to_thread(am.start)

        if phase == "before":
            closed_at = await close()
            await _until(lambda: _count(recorder, "resolved"), "the resolved notification")
            resolved_after = time.time() - closed_at
            await restart(RESEND)
        elif phase == "down":
            await asyncio.sleep(offset)
            await asyncio.to_thread(am.stop)
            closed_at = await close()
            await asyncio.sleep(RESEND)
            await asyncio.to_thread(am.start)
        else:
            await restart(RESEND)
            closed_at = await close()
        await _until(lambda: _count(recorder, "resolved"), "the resolved notification")
        if phase != "before":
            resolved_after = time.time() - closed_at
        await asyncio.sleep(settle)  # a duplicate would arrive within group_interval
        return Outcome(
            phase, offset, _count(recorder, "firing"), _count(recorder, "resolved"), resolved_after
        )
    finally:
        await notifier.stop()
        await asyncio.to_thread(am.stop)
        recorder.close()
