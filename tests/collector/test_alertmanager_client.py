"""Posting alerts over real sockets: credentials in the --api-auth syntax (checked by the
collector's own auth middleware), every instance served, a slow one never blocking."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from aiohttp import web

from probemesh.collector.alertmanager import AlertmanagerNotifier
from probemesh.collector.httpauth import (
    HttpAuth,
    auth_middleware,
    parse_client_authorization,
    parse_credentials,
)
from probemesh.collector.notify import Notifications
from probemesh.collector.outbound import ClientSettings
from probemesh.errors import ConfigError
from probemesh.httpserver import start_site
from tests.collector.mesh_script import ScriptedMesh
from tests.harness import eventually, free_port


class FakeAlertmanager:
    """An HTTP endpoint at /api/v2/alerts that records posts; optional auth and delay."""

    def __init__(self, credentials: str | None = None, delay: float = 0.0) -> None:
        auth = HttpAuth(api=parse_credentials(credentials, "test") if credentials else None)
        self.app = web.Application(middlewares=[auth_middleware(auth)])
        self.app.router.add_post("/prefix/api/v2/alerts", self.handle)
        self.posts: list[list[dict[str, Any]]] = []
        self.delay = delay
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        await asyncio.sleep(self.delay)
        self.posts.append(await request.json())
        return web.Response(status=200)

    async def __aenter__(self) -> FakeAlertmanager:
        self.runner = await start_site(self.app, "127.0.0.1:0")
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}/prefix/"
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.runner.cleanup()


def open_incident(mesh: ScriptedMesh) -> None:
    for failing in ({}, {}, {"DE": "500"}, {"DE": "500"}):
        mesh.round(web=failing)


@pytest.mark.parametrize(
    "credentials",
    ["bearer 0123456789abcdef0123456789", "# the collector's user\nbasic probemesh:s3cret pass"],
)
async def test_credentials_in_the_api_auth_syntax(credentials: str) -> None:
    async with FakeAlertmanager(credentials) as am:
        mesh = ScriptedMesh()
        good = AlertmanagerNotifier(
            [am.url],
            client=ClientSettings(authorization=parse_client_authorization(credentials, "t")),
        )
        anonymous = AlertmanagerNotifier([am.url])
        mesh.monitor.notifications = Notifications(mesh.book, [good, anonymous])
        await good.start()
        await anonymous.start()
        open_incident(mesh)
        await eventually(lambda: good.targets[0].sent == 1, "the authenticated post")
        await eventually(lambda: anonymous.targets[0].failed >= 1, "the anonymous post to fail")
        assert anonymous.targets[0].sent == 0 and anonymous.targets[0].queued == 1
        [[alert]] = am.posts
        assert alert["labels"]["check"] == "web"
        await good.stop()
        await anonymous.stop()


def test_client_credentials_errors() -> None:
    with pytest.raises(ConfigError, match="exactly one"):
        parse_client_authorization("bearer 0123456789abcdef\nbearer 0123456789abcdefg", "f")
    with pytest.raises(ConfigError, match="not sha256"):
        parse_client_authorization("basic u:sha256:" + "0" * 64, "f")
    with pytest.raises(ConfigError, match="f:2: bearer tokens must be at least 16"):
        parse_client_authorization("# c\nbearer short", "f")
    assert parse_client_authorization("basic al:ice:pw", "f") == "Basic YWw6aWNlOnB3"


async def test_every_instance_gets_alerts_and_a_slow_or_dead_one_blocks_nothing() -> None:
    dead = f"http://127.0.0.1:{free_port()}/"
    async with FakeAlertmanager() as fast, FakeAlertmanager(delay=2) as slow:
        mesh = ScriptedMesh()
        notifier = AlertmanagerNotifier(
            [dead, slow.url, fast.url], resend=0.2, client=ClientSettings(timeout=0.3)
        )
        mesh.monitor.notifications = Notifications(mesh.book, [notifier])
        await notifier.start()
        started = time.monotonic()
        open_incident(mesh)
        assert time.monotonic() - started < 0.5  # evaluations never wait for the network
        dead_t, slow_t, fast_t = notifier.targets
        await eventually(lambda: slow_t.failed >= 1, "the post to the slow instance to time out")
        # The instance has a post before the notifier has its answer: wait for both.
        await eventually(
            lambda: len(fast.posts) >= 3 and fast_t.sent >= 3, "re-sends to the healthy instance"
        )
        assert dead_t.failed >= 1 and fast_t.failed == 0
        assert dead_t.queued == slow_t.queued == 1 and fast_t.sent >= 3
        await notifier.stop()
