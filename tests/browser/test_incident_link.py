"""The link alerts and webhooks carry, <external-url>/#incident-ID, in headless Chromium:
the page outlines that incident, also when it is older than the page's own list."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest

from probemesh.collector.database import open_database
from probemesh.collector.incidents import Event, Incident, IncidentBook
from probemesh.collector.main import CollectorApp, CollectorOptions
from tests.browser.test_status_page import CHROMIUM, CHROMIUM_ARGS
from tests.harness import eventually

playwright_api = pytest.importorskip(
    "playwright.async_api",
    reason="incident link test skipped: the 'playwright' package is not installed",
)

CLOSED = 12  # more than the status page lists (the 10 most recent closed ones)
T0 = 1_800_000_000.0


def seed_incidents(data_dir: Path) -> None:
    book = IncidentBook(open_database(None, data_dir))
    rows = []
    for n in range(1, CLOSED + 1):
        start = T0 + n * 600
        incident = Incident(
            n, "web", start, "regional", "regional", [], ["DE"], ended_at=start + 60
        )
        incident.timeline += [Event(start, "opened", ["DE"]), Event(start + 60, "closed", [])]
        rows.append(incident.to_row())
    book.save(rows)
    book.close()


async def test_incident_links_outline_the_incident(tmp_path: Path) -> None:
    if not (os.access(CHROMIUM, os.X_OK) or shutil.which("chromium")):
        pytest.skip(f"incident link test skipped: no Chromium at {CHROMIUM}")
    seed_incidents(tmp_path / "data")
    checks = tmp_path / "checks.yml"
    checks.write_text("modules: {http_2xx: {prober: http}}\nchecks: []\n")
    app = CollectorApp(
        CollectorOptions(
            checks, grpc_listen="127.0.0.1:0", http_listen="127.0.0.1:0", data_dir=tmp_path / "data"
        )
    )
    stop = asyncio.Event()
    running = asyncio.create_task(app.run(stop))
    try:
        await eventually(lambda: app.ready, "the collector to serve", seconds=20)
        base = f"http://127.0.0.1:{app.http_port}/"
        async with playwright_api.async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page()
                for incident_id in (CLOSED, 1):  # listed, and older than the list
                    await page.goto(f"{base}#incident-{incident_id}")
                    await page.wait_for_selector(f"#incident-{incident_id}.focus", timeout=15_000)
                    assert await page.locator(".incident.focus").count() == 1
                await page.goto(f"{base}#incident-999")  # unknown: the page still works
                await page.wait_for_selector(f"#incident-{CLOSED}", timeout=15_000)
                assert await page.locator(".incident.focus").count() == 0
            finally:
                await browser.close()
    finally:
        stop.set()
        await running
