"""Small aiohttp helpers shared by the agent and the collector."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from probemesh.errors import ConfigError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def metrics_handler(registry: CollectorRegistry) -> Handler:
    """A /metrics handler rendering the registry in the text exposition format."""

    async def handle(_request: web.Request) -> web.Response:
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    return handle


async def start_site(app: web.Application, listen: str) -> web.AppRunner:
    """Start app on host:port; ConfigError when the address is bad or taken."""
    host, port = parse_listen(listen)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, reuse_address=True).start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(f"cannot listen on {listen}: {exc.strerror}") from None
    return runner


def parse_listen(listen: str) -> tuple[str, int]:
    """host:port to listen on; port 0 picks a free port."""
    host, sep, port = listen.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"listen address {listen!r}: expected HOST:PORT with a port 0-65535")
    return host, int(port)
