"""Signed webhooks: one JSON post per incident event.

Events are the incident timeline's: ``opened``, ``down``, ``recovered``,
``global``, ``regional``, ``diagnosed`` and ``closed``. Each post's body is::

    {"version": 1, "delivery": "42-3", "event": {"at", "event", "countries"},
     "incident": {...the /api/v1/incidents document...},
     "incident_url": "https://status.example.org/#incident-42",
     "external_labels": {...}}

and carries ``X-Probemesh-Signature: sha256=<hex HMAC-SHA256 of the raw body>``
with the secret of ``--webhook-secret-file``, plus ``X-Probemesh-Event`` and
``X-Probemesh-Delivery`` (incident id and the event's index in its timeline:
stable across retries, so a receiver can drop duplicates).

Delivery: each URL keeps one FIFO per incident and one task drains it, so the
events of an incident arrive in timeline order while incidents do not wait for
each other. 2xx is delivered; 5xx, 429 (``Retry-After`` honoured), timeouts
and connection errors are retried with exponential backoff until the event is
``max_age`` old; other 4xx answers mean the receiver will never take it. Such
events, and those beyond ``max_queue`` waiting per URL, are dropped and counted
by reason; loss is visible, never silent. Pending events are also written to
the outbox in --data-dir (``outbox.py``), so a restarted collector resumes them.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import hmac
import json
import logging
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from probemesh.collector.alertmanager import incident_link
from probemesh.collector.notify import Evaluation
from probemesh.collector.outbound import ClientSettings, parse_retry_after, redact
from probemesh.collector.outbox import Outbox, Pending
from probemesh.errors import ConfigError

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Probemesh-Signature"
DROP_REASONS = ("rejected", "expired", "queue_full")


def sign(secret: bytes, body: bytes) -> str:
    """The signature header value of a body: sha256=<hex HMAC-SHA256>."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def load_secret(path: str) -> bytes:
    """The webhook secret: the file's content without surrounding whitespace."""
    try:
        secret = Path(path).read_bytes().strip()
    except OSError as exc:
        raise ConfigError(f"--webhook-secret-file: cannot read {path}: {exc.strerror}") from None
    if len(secret) < 16:
        raise ConfigError(f"--webhook-secret-file: {path}: the secret must be at least 16 bytes")
    return secret


@dataclass
class _Target:
    """One webhook URL: a queue per incident and what happened to its posts."""

    url: str
    label: str
    queues: dict[int, collections.deque[Pending]] = field(default_factory=dict)
    workers: dict[int, asyncio.Task[None]] = field(default_factory=dict)
    sent: int = 0
    failed: int = 0  # attempts
    dropped: collections.Counter[str] = field(default_factory=collections.Counter)

    @property
    def queued(self) -> int:
        return sum(len(q) for q in self.queues.values())


class WebhookNotifier:
    """Posts every incident event to every webhook URL; see the module docstring."""

    def __init__(
        self,
        urls: Sequence[str],
        secret: bytes,
        outbox: Outbox,
        *,
        external_labels: Mapping[str, str] | None = None,
        external_url: Callable[[], str] = lambda: "http://localhost/",
        client: ClientSettings | None = None,
        min_backoff: float = 0.5,
        max_backoff: float = 60.0,
        max_age: float = 3600.0,
        max_queue: int = 10_000,
        stop_timeout: float = 3.0,
    ) -> None:
        self.targets = [_Target(u, redact(u)) for u in urls]
        self.secret = secret
        self.external_labels = dict(external_labels or {})
        self.external_url = external_url
        self.client = client or ClientSettings()
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.max_age = max_age
        self.max_queue = max_queue
        self.stop_timeout = stop_timeout
        self.outbox = outbox
        self._session: aiohttp.ClientSession | None = None
        self._outbox_writer: asyncio.Task[None] | None = None

    def stand_by(self) -> None:
        """Nothing to drop: each event is posted once, and those queued were ours to send."""

    def notify(self, evaluation: Evaluation) -> None:
        """Queue one post per new timeline event, per URL."""
        for incident, index, event in evaluation.events:
            doc = {
                "version": 1,
                "delivery": f"{incident.id}-{index}",
                "event": event.to_json(),
                "incident": incident.to_json(),
                "incident_url": incident_link(self.external_url(), incident.id),
                "external_labels": self.external_labels,
            }
            body = json.dumps(doc, separators=(",", ":")).encode()
            now = time.time()
            items = [
                Pending(t.url, str(doc["delivery"]), incident.id, index, event.event, body, now)
                for t in self.targets
            ]
            queued = [
                item for t, item in zip(self.targets, items, strict=True) if self._enqueue(t, item)
            ]
            if queued:
                self.outbox.add(queued)

    def _enqueue(self, target: _Target, item: Pending) -> bool:
        if target.queued >= self.max_queue:
            self._drop(target, item, "queue_full")
            return False
        target.queues.setdefault(item.incident, collections.deque()).append(item)
        if self._session is not None and item.incident not in target.workers:
            self._spawn(target, item.incident)
        return True

    def _spawn(self, target: _Target, incident: int) -> None:
        target.workers[incident] = asyncio.create_task(
            self._drain(target, incident), name=f"webhook {target.label} incident {incident}"
        )

    def _drop(self, target: _Target, item: Pending, reason: str) -> None:
        target.dropped[reason] += 1
        self.outbox.remove(item)
        log.warning(
            "webhook %s: dropped event %s of incident %d (%s)",
            target.label,
            item.event,
            item.incident,
            reason,
        )

    async def start(self) -> None:
        """Resume the outbox's pending events (before any new one), then deliver."""
        if self._session is not None or not self.targets:
            return
        self._resume(self.outbox.load())
        self._outbox_writer = asyncio.create_task(self.outbox.run(), name="webhook outbox")
        self._session = self.client.session()
        for target in self.targets:
            for incident in list(target.queues):
                self._spawn(target, incident)

    def _resume(self, pending: list[Pending]) -> None:
        by_url = {t.url: t for t in self.targets}
        for item in pending:
            target = by_url.get(item.url)
            if target is None:  # that URL is no longer configured
                log.warning("webhook outbox: dropping %s for %s", item.delivery, redact(item.url))
                self.outbox.remove(item)
            elif time.time() - item.created >= self.max_age:
                self._drop(target, item, "expired")
            else:
                target.queues.setdefault(item.incident, collections.deque()).append(item)
        if pending:
            log.info("webhook outbox: %d events pending from before the restart", len(pending))

    async def stop(self) -> None:
        """Give queued events ``stop_timeout`` seconds; the rest stay in the outbox."""
        if self._session is None:
            return
        workers = [w for t in self.targets for w in t.workers.values()]
        if workers:
            await asyncio.wait(workers, timeout=self.stop_timeout)
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        for target in self.targets:
            target.queues.clear()
        if self._outbox_writer is not None:
            self._outbox_writer.cancel()
            await asyncio.gather(self._outbox_writer, return_exceptions=True)
            self._outbox_writer = None
        self.outbox.flush()  # a writer cancelled before it first ran left its queue
        self.outbox.close()
        await self._session.close()
        self._session = None

    async def _drain(self, target: _Target, incident: int) -> None:
        queue = target.queues[incident]
        try:
            while queue:
                if await self._deliver(target, queue[0]) != "retry":
                    queue.popleft()
        finally:
            if not queue:
                target.queues.pop(incident, None)
            target.workers.pop(incident, None)

    async def _deliver(self, target: _Target, item: Pending) -> str:
        """Post one event, retrying recoverable failures; "sent" or a drop reason."""
        assert self._session is not None
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(self.secret, item.body),
            "X-Probemesh-Event": item.event,
            "X-Probemesh-Delivery": item.delivery,
        }
        backoff = self.min_backoff
        while True:
            wait: float | None = None
            try:
                async with self._session.post(target.url, data=item.body, headers=headers) as r:
                    if 200 <= r.status < 300:
                        target.sent += 1
                        self.outbox.remove(item)
                        return "sent"
                    detail = (await r.text())[:200].strip()
                    problem = f"HTTP {r.status}: {detail}"
                    if r.status == 429:
                        wait = parse_retry_after(r.headers.get("Retry-After"))
                    elif r.status < 500:
                        target.failed += 1
                        log.error(
                            "webhook %s rejected %s: %s", target.label, item.delivery, problem
                        )
                        self._drop(target, item, "rejected")
                        return "rejected"
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            target.failed += 1
            if time.time() - item.created >= self.max_age:
                self._drop(target, item, "expired")
                return "expired"
            delay = wait if wait is not None else backoff
            delay = min(delay, self.max_backoff) * random.uniform(0.8, 1.0)
            log.info(
                "webhook %s: %s failed (%s); retry in %.1fs",
                target.label,
                item.delivery,
                problem,
                delay,
            )
            await asyncio.sleep(delay)
            backoff = min(backoff * 2, self.max_backoff)

    def metric_families(self) -> Iterator[Metric]:
        labels = ["webhook"]
        sent = CounterMetricFamily(
            "probemesh_webhook_events_sent", "Incident events delivered (2xx)", labels=labels
        )
        failed = CounterMetricFamily(
            "probemesh_webhook_attempts_failed",
            "Posts that failed (error, timeout or non-2xx); retried unless dropped",
            labels=labels,
        )
        dropped = CounterMetricFamily(
            "probemesh_webhook_events_dropped",
            "Incident events given up on, by reason",
            labels=["webhook", "reason"],
        )
        queued = GaugeMetricFamily(
            "probemesh_webhook_queue_length",
            "Incident events waiting to be delivered (the one in flight included)",
            labels=labels,
        )
        for target in self.targets:
            sent.add_metric([target.label], target.sent)
            failed.add_metric([target.label], target.failed)
            queued.add_metric([target.label], target.queued)
            for reason in DROP_REASONS:
                dropped.add_metric([target.label, reason], target.dropped[reason])
        yield from (sent, failed, dropped, queued)
