"""The assignment history: which checks each agent was sent, at which revisions.

An agent that is cut off keeps probing what it was last sent, buffers the
results and replays them later, possibly after the checks file changed and the
collector restarted. Each result names the revision it ran under, so the
collector judges it against what it sent then, not against what the file says
now. This module keeps that record, persisted next to the marks so that it
survives restarts, and the checks revision itself, which never goes back.

A span says: agent A was sent check C (with this target and module) in every
Checks message from revision ``first`` to ``last``. A span closes when the
agent is sent a set without C, or with C changed. Results named after a closed
span can only come from the agent's buffer, which drops results older than its
``--queue-max-age`` (announced in Hello); so a closed span is kept that long
after it closed, plus a margin, and then pruned.

The collector holds this history for every check x agent, and agents sent
the same checks at the same revisions have equal histories: a span is never
changed but replaced, and a check's spans are one tuple, shared by every
agent whose spans of the check are equal while the latest is open.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass, replace
from typing import Protocol

from probemesh.agent.queue import DEFAULT_MAX_AGE
from probemesh.checks import CheckSpec

log = logging.getLogger(__name__)

# Kept beyond an agent's queue max age: clock skew (the collector accepts
# timestamps up to 5 minutes ahead) and results the agent sent but that were
# never acknowledged, which it keeps past the age bound until they are.
PRUNE_MARGIN = 3600.0
# A longer announced age is capped: the history must stay bounded.
MAX_ANNOUNCED_AGE = 366 * 86400.0


@dataclass(frozen=True, slots=True)
class Span:
    """Check ``check`` was sent to one agent, unchanged, from revision first to last."""

    check: str
    target: str
    module: str
    first: int
    last: int
    closed_at: float | None = None  # when the agent was sent a set without it
    expires_at: float | None = None  # closed_at + the agent's queue max age + margin


class AssignmentStore(Protocol):
    """What the history needs from the collector's database (SQLite or another engine)."""

    def load_revision(self) -> tuple[int, str] | None:
        """The newest revision and the digest of its checks file, if any."""
        ...

    def save_revision(self, revision: int, digest: str, created_at: float) -> None: ...

    def load_spans(self) -> dict[str, list[Span]]:
        """Every retained span, by agent id."""
        ...

    def save_spans(self, agent_id: str, spans: Iterable[Span]) -> None:
        """Insert or update spans (keyed by agent, check and first revision)."""
        ...

    def prune_spans(self, now: float) -> int:
        """Delete spans whose expires_at has passed, and revisions none refers to."""
        ...


def announced_max_age(seconds: float) -> float:
    """An agent's queue max age as the history uses it (0: the agent default)."""
    if not seconds or not math.isfinite(seconds) or seconds < 0:
        return DEFAULT_MAX_AGE
    return min(seconds, MAX_ANNOUNCED_AGE)


class AssignmentHistory:
    """The persistent checks revision and every agent's assignment spans."""

    def __init__(
        self,
        store: AssignmentStore,
        digest: str,
        now: float | None = None,
        writer: Executor | None = None,
    ) -> None:
        self.store = store
        # The collector hands its database thread: writes then never hold up the
        # event loop, and one thread keeps them in order. Without one they run inline.
        self.writer = writer
        # agent -> check -> spans; read only: a change replaces the agent's map (see _share_map)
        self.spans: dict[str, dict[str, tuple[Span, ...]]] = {}
        self._shared: dict[tuple[Span, ...], tuple[Span, ...]] = {}  # see _share
        self._shared_maps: dict[
            frozenset[tuple[str, tuple[Span, ...]]], dict[str, tuple[Span, ...]]
        ] = {}
        # Agents whose last span write failed or was cancelled: memory is ahead
        # of the database, so their next record() writes all their spans again.
        self._unsaved: set[str] = set()
        for agent_id, spans in store.load_spans().items():
            by_check: dict[str, tuple[Span, ...]] = {}
            for span in sorted(spans, key=lambda s: s.first):
                by_check[span.check] = (*by_check.get(span.check, ()), span)
            for check, history in by_check.items():
                by_check[check] = self._share(history)
            self.spans[agent_id] = self._share_map(by_check)
        loaded = store.load_revision()
        self.revision = 0
        self.digest = ""
        if loaded is not None:
            self.revision, self.digest = loaded
        self.new_revision(digest, now)
        self._oldest = self._compute_oldest()

    def new_revision(self, digest: str, now: float | None = None) -> int:
        """The revision of a checks file with this digest: the same one if unchanged.

        A changed file gets a number above every revision ever issued, whether
        it changed on reload or while the collector was down.
        """
        if digest != self.digest or not self.revision:
            self.revision += 1
            self.digest = digest
            self._write(
                self.store.save_revision, self.revision, digest, time.time() if now is None else now
            )
        return self.revision

    def _write(self, fn: Callable[..., object], *args: object) -> Future[object]:
        """Run a store write in the writer thread (inline without one); failures are logged."""
        if self.writer is None:
            done: Future[object] = Future()
            done.set_result(fn(*args))
            return done
        future = self.writer.submit(fn, *args)
        future.add_done_callback(_log_failure)
        return future

    def record(
        self,
        agent_id: str,
        revision: int,
        specs: Sequence[CheckSpec],
        max_age: float,
        now: float | None = None,
    ) -> Future[object] | None:
        """The agent is being sent specs at revision: extend, close and open spans.

        Returns the write of the changed spans (None if nothing changed): the
        caller sends the message only once it is done, so no result can name a
        revision the history does not know.
        """
        now = time.time() if now is None else now
        current = dict(self.spans.get(agent_id, {}))
        wanted = {spec.name: spec for spec in specs}
        changed: list[Span] = []
        for check, spans in list(current.items()):
            span = spans[-1]
            if span.closed_at is not None:
                continue
            spec = wanted.get(check)
            if spec is not None and (spec.target, spec.module.name) == (span.target, span.module):
                del wanted[check]
                if revision <= span.last:
                    continue
                span = replace(span, last=revision)
            else:
                expires_at = now + announced_max_age(max_age) + PRUNE_MARGIN
                span = replace(span, closed_at=now, expires_at=expires_at)
            current[check] = self._share((*spans[:-1], span))
            changed.append(span)
        for spec in wanted.values():
            span = Span(spec.name, spec.target, spec.module.name, revision, revision)
            current[spec.name] = self._share((*current.get(spec.name, ()), span))
            changed.append(span)
        if changed:
            self.spans[agent_id] = self._share_map(current)
        if agent_id in self._unsaved:
            self._unsaved.discard(agent_id)
            changed = [span for spans in current.values() for span in spans]
        if not changed:
            return None
        self._oldest = min(self._oldest or revision, revision)
        future = self._write(self.store.save_spans, agent_id, changed)
        future.add_done_callback(lambda done: self._note_unsaved(agent_id, done))
        return future

    def _share(self, spans: tuple[Span, ...]) -> tuple[Span, ...]:
        """The one tuple of these spans that every agent with them holds (while the
        latest is open: a closed span carries its agent's own times)."""
        if spans[-1].closed_at is not None:
            return spans
        return self._shared.setdefault(spans, spans)

    def _share_map(self, by_check: dict[str, tuple[Span, ...]]) -> dict[str, tuple[Span, ...]]:
        """The one map of these checks' spans that every agent with them holds.

        Agents sent the same checks at the same revisions have equal maps: one
        per agent cost about 30 bytes a check x agent. Nothing changes a map in
        place; an agent whose spans change gets another. A map with a closed
        span (which carries its agent's own times) is the agent's alone.
        """
        if any(len(spans) > 1 or spans[0].closed_at is not None for spans in by_check.values()):
            return by_check
        return self._shared_maps.setdefault(frozenset(by_check.items()), by_check)

    def _note_unsaved(self, agent_id: str, write: Future[object]) -> None:
        """Remember an agent whose spans did not reach the database (from the writer thread)."""
        if write.cancelled() or write.exception() is not None:
            self._unsaved.add(agent_id)

    def target_of(
        self, agent_id: str, check: str, revision: int, target: str, assigned: Mapping[str, str]
    ) -> str | None:
        """The target a result ran against, or None when its check was not assigned.

        A revision this collector issued and still holds is judged exactly:
        was the check sent to this agent at that revision. A result without a
        revision (an agent that does not tag), or naming one this collector
        never issued, is judged by the agent's current assignment, or any
        retained span with the target the result names.
        """
        spans = self.spans.get(agent_id, {}).get(check, ())
        if revision and self._oldest <= revision <= self.revision:
            for span in spans:
                if span.first <= revision <= span.last:
                    return span.target
            return None
        for span in spans:
            if span.target == target:
                return target
        return assigned.get(check)

    def knows(self, agent_id: str, check: str) -> bool:
        """Whether any retained span assigned check to the agent."""
        return bool(self.spans.get(agent_id, {}).get(check))

    def prune(self, now: float | None = None) -> int:
        """Forget spans closed longer than their agent's queue max age (plus margin) ago."""
        now = time.time() if now is None else now
        removed = 0
        for agent_id, held_map in list(self.spans.items()):
            by_check = dict(held_map)
            for check, spans in held_map.items():
                kept = tuple(s for s in spans if s.expires_at is None or s.expires_at >= now)
                if len(kept) == len(spans):
                    continue
                removed += len(spans) - len(kept)
                if kept:
                    by_check[check] = self._share(kept)
                else:
                    del by_check[check]
            if not by_check:
                del self.spans[agent_id]
            elif by_check != held_map:
                self.spans[agent_id] = self._share_map(by_check)
        if removed:
            self._write(self.store.prune_spans, now)
            self._oldest = self._compute_oldest()
        # forget the shared tuples and maps no agent holds any more (older revisions)
        maps = {id(by): by for by in self.spans.values()}
        self._shared_maps = {k: by for k, by in self._shared_maps.items() if id(by) in maps}
        held = {id(t) for by in maps.values() for t in by.values()}
        self._shared = {t: t for t in self._shared if id(t) in held}
        return removed

    def span_count(self) -> int:
        return sum(len(spans) for by in self.spans.values() for spans in by.values())

    def _compute_oldest(self) -> int:
        firsts = [s.first for by in self.spans.values() for spans in by.values() for s in spans]
        return min(firsts, default=self.revision)


def _log_failure(future: Future[object]) -> None:
    if future.cancelled():  # its stream ended first: the agent never got these Checks
        return
    exc = future.exception()
    if exc is not None:
        log.error("could not write the assignment history: %s", exc)
