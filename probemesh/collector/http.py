"""The collector's HTTP side: /metrics, health, readiness and the JSON API."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from probemesh import __version__
from probemesh.collector import scrape_groups
from probemesh.collector.api import add_outage_routes, agents_json
from probemesh.collector.exporter import MeshExporter
from probemesh.collector.httpauth import auth_middleware
from probemesh.collector.work_lane import WorkLane
from probemesh.httpserver import Handler

if TYPE_CHECKING:
    from probemesh.collector.main import CollectorApp

log = logging.getLogger(__name__)


def build_http_app(app: CollectorApp) -> web.Application:
    """One aiohttp application for everything the collector serves over HTTP."""
    http = web.Application(middlewares=[auth_middleware(app.options.http_auth)])

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_request: web.Request) -> web.Response:
        if app.ready:
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "starting"}, status=503)

    async def agents(_request: web.Request) -> web.Response:
        return web.json_response(
            {"agents": agents_json(app.state, app.outage.snapshot, app.outage.fleet)}
        )

    http.router.add_get("/metrics", collector_metrics(app.exporter, app.metrics_registry, app.lane))
    http.router.add_get("/healthz", healthz)
    http.router.add_get("/readyz", readyz)

    async def collector(_request: web.Request) -> web.Response:
        return web.json_response(
            {
                "collector_id": app.leases.holder,
                "version": __version__,
                "evaluator": app.outage.is_evaluator,  # it evaluates the mesh and notifies
            }
        )

    http.router.add_get("/api/v1/agents", agents)
    http.router.add_get("/api/v1/collector", collector)
    add_outage_routes(http, app.outage, app.state)
    return http


def collector_metrics(
    exporter: MeshExporter, rest: CollectorRegistry, lane: WorkLane | None = None
) -> Handler:
    """/metrics: the bulk families from cached text, the rest (rest) through prometheus_client.

    ``collect[]`` / ``exclude[]`` select groups of families (scrape_groups); a
    parameter or group it does not know is answered 400, naming it.

    The body is streamed a piece at a time (chunked transfer encoding), never
    held whole: see MeshExporter.render_batches. The handler yields to the
    event loop after each piece (a write into a socket with room returns
    without yielding), so a scrape of a large mesh never holds ingest for the
    whole body; the pieces come from one snapshot, so what runs meanwhile
    does not change them. Histograms left unrendered while no scrape read
    them are rendered first, in the lane's slices.
    """

    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            groups = scrape_groups.selection(request.query.items())
        except scrape_groups.SelectionError as exc:
            return web.Response(status=400, text=f"{exc}\n")
        response = web.StreamResponse(headers={"Content-Type": CONTENT_TYPE_LATEST})
        if request.method == "HEAD":  # headers only: a streamed body would be sent anyway
            await response.prepare(request)
            await response.write_eof()
            return response
        if lane is not None and scrape_groups.HISTOGRAMS in groups:
            await lane.run(exporter.prerender_steps(histograms=True))
        suffix = generate_latest(scrape_groups.selected(rest, groups))
        pieces = exporter.render_batches(suffix, groups=groups)
        first = next(pieces)  # the snapshot: taken before anything is sent
        await response.prepare(request)
        try:
            await response.write(first)
            for piece in pieces:
                await asyncio.sleep(0)
                await response.write(piece)
            await response.write_eof()
        except ConnectionResetError:  # the scraper went away (its timeout): nothing to answer
            log.debug("/metrics client disconnected mid-body")
        return response

    return handle
