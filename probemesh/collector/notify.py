"""The one hook through which incidents reach people (Alertmanager, webhooks).

Whoever evaluates incidents calls :meth:`Notifications.observe` right after
each evaluation. It compares the incident book with what it saw last time and
hands every notifier one :class:`Evaluation`: the open incidents, those closed
by this evaluation, the timeline events added since the previous one (in
order), and the agents flagged with a local problem. Notifiers only queue work
there; their own tasks do the network I/O, so a slow or dead receiver never
delays an evaluation.

Because notifications follow evaluations, where several collectors share one
database only the elected evaluator, which alone evaluates incidents, sends.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client.core import Metric

from probemesh.collector.incidents import Event, Incident, IncidentBook
from probemesh.collector.reachability import Snapshot

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LocalProblem:
    """An agent flagged with a local problem, and since when (as seen by this process)."""

    agent: str
    country: str
    since: float


@dataclass(frozen=True)
class Evaluation:
    """What one evaluation changed, as notifiers need it."""

    at: float
    active: Sequence[Incident]
    closed: Sequence[Incident]  # closed by this evaluation
    events: Sequence[tuple[Incident, int, Event]]  # (incident, index in its timeline, event)
    local_problems: Sequence[LocalProblem]


class Notifier(Protocol):
    """A destination for incidents; notify() must only queue, never wait."""

    def notify(self, evaluation: Evaluation) -> None: ...

    def stand_by(self) -> None:
        """This collector stopped evaluating: drop what it would re-send on its own."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def metric_families(self) -> Iterable[Metric]: ...


class Notifications:
    """Turns successive states of the incident book into Evaluations for the notifiers."""

    def __init__(self, book: IncidentBook, notifiers: Sequence[Notifier]) -> None:
        self.notifiers = list(notifiers)
        self._local_since: dict[str, float] = {}
        self.resume(book)

    def resume(self, book: IncidentBook) -> None:
        """Take the book as notified: incidents loaded at start, or from the database when
        this collector becomes the evaluator, had their events sent by whoever recorded them."""
        self._seen = {i.id: len(i.timeline) for i in book.active.values()}
        self._open = {i.id: i for i in book.active.values()}

    def observe(self, book: IncidentBook, snapshot: Snapshot) -> None:
        """Call after every evaluation of ``book``; never blocks."""
        if not self.notifiers:
            return
        active = list(book.active.values())
        now_open = {i.id: i for i in active}
        closed = [i for id_, i in self._open.items() if id_ not in now_open]
        events: list[tuple[Incident, int, Event]] = []
        for incident in sorted(active + closed, key=lambda i: i.id):
            start = self._seen.get(incident.id, 0)
            events.extend(
                (incident, index, event)
                for index, event in enumerate(incident.timeline[start:], start)
            )
            self._seen[incident.id] = len(incident.timeline)
        for incident in closed:
            del self._seen[incident.id]
        self._open = now_open
        flagged = snapshot.local_problems
        self._local_since = {a: self._local_since.get(a, snapshot.at) for a in flagged}
        evaluation = Evaluation(
            at=snapshot.at,
            active=active,
            closed=closed,
            events=events,
            local_problems=[
                LocalProblem(a, snapshot.agents[a].country, since)
                for a, since in sorted(self._local_since.items())
            ],
        )
        for notifier in self.notifiers:
            try:
                notifier.notify(evaluation)
            except Exception:  # a bug in one notifier must not stop evaluations
                log.exception("notifier %s failed", type(notifier).__name__)

    def stand_by(self) -> None:
        """Another collector evaluates now and notifies: stop re-sending our last view."""
        for notifier in self.notifiers:
            notifier.stand_by()

    async def start(self) -> None:
        for notifier in self.notifiers:
            await notifier.start()

    async def stop(self) -> None:
        for notifier in self.notifiers:
            await notifier.stop()

    def metric_families(self) -> Iterator[Metric]:
        for notifier in self.notifiers:
            yield from notifier.metric_families()


def diagnosis_text(doc: Mapping[str, Any]) -> str:
    """'BR: dns (NXDOMAIN); DE: tcp_blocking' from an incident's per-country diagnosis."""
    diagnosis = doc.get("diagnosis")
    if not isinstance(diagnosis, Mapping):
        return ""
    parts = []
    for country, item in sorted(diagnosis.items()):
        if not isinstance(item, Mapping) or not item.get("kind"):
            continue
        detail = item.get("detail")
        parts.append(f"{country}: {item['kind']}" + (f" ({detail})" if detail else ""))
    return "; ".join(parts)
