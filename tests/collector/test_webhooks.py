"""Webhook delivery against a real HTTP receiver: signature, order per incident under
retries, incidents not waiting for each other, 4xx dropped, TLS, the outbox across restarts."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import ssl
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp import web

from probemesh.collector.notify import Notifications
from probemesh.collector.outbound import ClientSettings
from probemesh.collector.outbox import Outbox, Pending
from probemesh.collector.webhooks import WebhookNotifier, sign
from probemesh.httpserver import start_site
from tests.collector.mesh_script import ScriptedMesh
from tests.harness import eventually

SECRET = b"0123456789abcdef-secret"


@dataclass
class Receiver:
    """Answers with answer(delivery id, attempt); keeps the accepted posts."""

    answer: Callable[[str, int], int] = lambda _d, _n: 200
    accepted: list[tuple[str, bytes, dict[str, str]]] = field(default_factory=list)
    attempts: dict[str, int] = field(default_factory=dict)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        delivery = request.headers["X-Probemesh-Delivery"]
        attempt = self.attempts[delivery] = self.attempts.get(delivery, 0) + 1
        status = self.answer(delivery, attempt)
        if status == 200:
            self.accepted.append((delivery, body, dict(request.headers)))
        headers = {"Retry-After": "0"} if status == 429 else {}
        return web.Response(status=status, headers=headers)

    def deliveries(self) -> list[str]:
        return [d for d, _, _ in self.accepted]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/hook", rec.handle)
    runner = await start_site(app, "127.0.0.1:0")
    rec.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    yield rec
    await runner.cleanup()


async def started(
    mesh: ScriptedMesh, receiver: Receiver, outbox: Outbox, **kw: Any
) -> WebhookNotifier:
    notifier = WebhookNotifier(
        [receiver.url],
        SECRET,
        outbox,
        min_backoff=0.01,
        max_backoff=0.05,
        external_url=lambda: "http://s/",
        **kw,
    )
    mesh.monitor.notifications = Notifications(mesh.book, [notifier])
    await notifier.start()
    return notifier


def outage_rounds(mesh: ScriptedMesh, check: str) -> None:
    """A regional outage of one check that opens, spreads, then closes."""
    for failing in ({}, {}, {"DE": "500"}, {"DE": "500"}, {"DE": "500", "BR": "500"}):
        mesh.round(**{check: failing})
        mesh.round(**{check: failing})
    for _ in range(4):
        mesh.round()


async def test_signed_and_in_order_per_incident_despite_retries(
    receiver: Receiver, tmp_path: Path
) -> None:
    # incident 1's first event fails (500, then 429) before it gets through
    receiver.answer = lambda d, n: {1: 500, 2: 429}.get(n, 200) if d == "1-0" else 200
    mesh = ScriptedMesh()
    notifier = await started(mesh, receiver, Outbox(tmp_path))
    outage_rounds(mesh, "web")
    await eventually(lambda: len(receiver.accepted) == 4, "four events of incident 1")
    assert receiver.deliveries() == ["1-0", "1-1", "1-2", "1-3"]
    events = [json.loads(body)["event"]["event"] for _, body, _ in receiver.accepted]
    assert events == ["opened", "down", "recovered", "closed"]
    for _, body, headers in receiver.accepted:
        expected = "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
        assert headers["X-Probemesh-Signature"] == expected == sign(SECRET, body)
        assert headers["Content-Type"] == "application/json"
    doc = json.loads(receiver.accepted[0][1])
    assert doc["incident"]["id"] == 1 and doc["incident"]["countries"] == ["DE"]
    assert doc["incident_url"] == "http://s/#incident-1"
    target = notifier.targets[0]
    # The receiver records a post before its answer reaches the notifier.
    await eventually(lambda: target.sent == 4, "the fourth answer counted")
    assert (target.sent, target.failed, target.queued) == (4, 2, 0)
    await notifier.stop()


async def test_a_stuck_incident_does_not_hold_back_another(
    receiver: Receiver, tmp_path: Path
) -> None:
    release = asyncio.Event()
    receiver.answer = lambda d, _n: 200 if release.is_set() or not d.startswith("1-") else 503
    mesh = ScriptedMesh()
    notifier = await started(mesh, receiver, Outbox(tmp_path))
    outage_rounds(mesh, "web")  # incident 1: its receiver keeps failing
    outage_rounds(mesh, "tcp")  # incident 2
    await eventually(lambda: len(receiver.accepted) == 4, "incident 2's events")
    assert receiver.deliveries() == ["2-0", "2-1", "2-2", "2-3"]
    await eventually(lambda: notifier.targets[0].queued == 4, "incident 1's events waiting")
    release.set()
    await eventually(lambda: len(receiver.accepted) == 8, "incident 1's events")
    assert receiver.deliveries()[4:] == ["1-0", "1-1", "1-2", "1-3"]
    await notifier.stop()


async def test_rejected_events_are_dropped_and_the_rest_continue(
    receiver: Receiver, tmp_path: Path
) -> None:
    receiver.answer = lambda d, _n: 400 if d == "1-1" else 200
    mesh = ScriptedMesh()
    notifier = await started(mesh, receiver, Outbox(tmp_path))
    outage_rounds(mesh, "web")
    await eventually(lambda: len(receiver.accepted) == 3, "the other events")
    assert receiver.deliveries() == ["1-0", "1-2", "1-3"]
    assert notifier.targets[0].dropped["rejected"] == 1
    await notifier.stop()


async def test_https_receiver_verified_against_the_given_ca(tmp_path: Path) -> None:
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    server_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ssl)
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/hook", rec.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ssl)
    await site.start()
    rec.url = f"https://127.0.0.1:{runner.addresses[0][1]}/hook"
    try:
        mesh = ScriptedMesh()
        trusting = WebhookNotifier(
            [rec.url],
            SECRET,
            Outbox(tmp_path / "a"),
            client=ClientSettings(ca_file=tmp_path / "ca.pem"),
        )
        default = WebhookNotifier(
            [rec.url], SECRET, Outbox(tmp_path / "b"), min_backoff=0.01, max_backoff=0.05
        )
        mesh.monitor.notifications = Notifications(mesh.book, [trusting, default])
        await trusting.start()
        await default.start()
        outage_rounds(mesh, "web")
        await eventually(lambda: trusting.targets[0].sent == 4, "delivery over verified TLS")
        await eventually(
            lambda: default.targets[0].failed >= 2, "the untrusted certificate to fail"
        )
        assert default.targets[0].sent == 0
        assert len(rec.accepted) == 4
        await trusting.stop()
        await default.stop()
    finally:
        await runner.cleanup()


async def test_pending_events_survive_a_restart(receiver: Receiver, tmp_path: Path) -> None:
    receiver.answer = lambda _d, _n: 503
    mesh = ScriptedMesh()
    first = await started(mesh, receiver, Outbox(tmp_path), stop_timeout=0.1)
    outage_rounds(mesh, "web")
    await eventually(lambda: receiver.attempts.get("1-0", 0) >= 2, "retries")
    await first.stop()
    families = {m.name: m for m in first.metric_families()}
    assert [s.value for s in families["probemesh_webhook_events_dropped"].samples] == [0, 0, 0]
    assert [p.delivery for p in Outbox(tmp_path).load()] == ["1-0", "1-1", "1-2", "1-3"]

    receiver.answer = lambda _d, _n: 200
    second = WebhookNotifier([receiver.url], SECRET, Outbox(tmp_path))
    await second.start()
    await eventually(lambda: len(receiver.accepted) == 4, "the pending events")
    assert receiver.deliveries() == ["1-0", "1-1", "1-2", "1-3"]
    events = [json.loads(body)["event"]["event"] for _, body, _ in receiver.accepted]
    assert events == ["opened", "down", "recovered", "closed"]
    await second.stop()
    assert Outbox(tmp_path).load() == []  # delivered events leave the outbox


async def test_outbox_drops_events_of_removed_urls_and_expired_ones(
    receiver: Receiver, tmp_path: Path
) -> None:
    outbox = Outbox(tmp_path)
    old = time.time() - 7200
    outbox.add(
        [
            Pending("http://127.0.0.1:1/gone", "1-0", 1, 0, "opened", b"{}", time.time()),
            Pending(receiver.url, "2-0", 2, 0, "opened", b"{}", old),
        ]
    )
    outbox.flush()
    notifier = WebhookNotifier([receiver.url], SECRET, outbox)
    await notifier.start()
    assert notifier.targets[0].dropped["expired"] == 1 and notifier.targets[0].queued == 0
    await notifier.stop()
    assert Outbox(tmp_path).load() == [] and receiver.accepted == []
