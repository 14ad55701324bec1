"""The status page in headless Chromium: a check every agent refuses by policy.

The demo mesh (eight in-process agents, interval floor 1 s) plus a check every
500 ms: each agent refuses it (interval_floor). The page must say "not runnable
on agent X: interval_floor (...)" for every agent, show no incident, and its
banner must call it a configuration problem, not an outage.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest
from aiohttp import web

from probemesh.demo import COUNTRIES, demo_checks, start_mesh
from probemesh.httpserver import start_site
from tests.browser.test_status_page import CHROMIUM, CHROMIUM_ARGS
from tests.harness import free_port

playwright_api = pytest.importorskip(
    "playwright.async_api",
    reason="status page test skipped: the 'playwright' package is not installed",
)
pytestmark = pytest.mark.slow


async def test_page_says_not_runnable_and_no_incident(tmp_path: Path) -> None:
    if not (os.access(CHROMIUM, os.X_OK) or shutil.which("chromium")):
        pytest.skip(
            f"status page test skipped: no Chromium at {CHROMIUM} (apt-get install chromium)"
        )

    async def ok(_request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    target_app = web.Application()
    target_app.router.add_get("/", ok)
    target_runner = await start_site(target_app, "127.0.0.1:0")
    port = target_runner.addresses[0][1]
    checks = demo_checks(port, 2.0)
    checks["checks"] = [c for c in checks["checks"] if c["name"] == "social-home"]
    checks["checks"].append(
        {
            "name": "too-fast",
            "target": f"http://127.0.0.1:{port}/",
            "module": "http_2xx",
            "interval": "500ms",
        }
    )
    http_port = free_port()
    stop = asyncio.Event()
    collector, tasks = await start_mesh(
        tmp_path, checks, "127.0.0.1:0", f"127.0.0.1:{http_port}", stop
    )
    try:
        async with playwright_api.async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page(viewport={"width": 1200, "height": 900})
                await page.goto(f"http://127.0.0.1:{http_port}/")
                card = '.check[data-check="too-fast"]'
                await page.wait_for_function(
                    f"() => document.querySelectorAll('{card} .not-runnable"
                    f'[data-rule="interval_floor"]\').length === {len(COUNTRIES)}',
                    timeout=30_000,
                )
                await page.wait_for_selector(
                    '.check[data-check="social-home"][data-state="ok"]', timeout=30_000
                )
                await asyncio.sleep(2.5)  # more rounds of refusals than an incident needs
                line = page.locator(f'{card} .not-runnable[data-agent="demo-br"]')
                text = await line.text_content() or ""
                assert text.startswith(
                    "not runnable on agent demo-br: interval_floor (interval 0.5s"
                )
                assert await page.locator(card).get_attribute("data-state") == "unknown"
                assert await page.locator(".incident").count() == 0
                assert collector.outage.book.incidents() == []
                banner = await page.locator("#overall").text_content() or ""
                assert banner.startswith("All runnable checks OK"), banner
                assert "1 check not runnable on some agents (configuration)" in banner
            finally:
                await browser.close()
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await target_runner.cleanup()
