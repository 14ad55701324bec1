"""The status page in headless Chromium during a loopback outage.

A collector, eight in-process agents on their own 127.0.0.x source addresses
and a target that fails for six countries (HTTP 500 for three, a hang that
times out for three). The page must show those countries down and the
incident summary; screenshots go to artifacts/. Prints the detection latency
(target fails -> incident opens) and the page update delay (incident opens
-> page shows it).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path

import pytest
from aiohttp import web

from probemesh.demo import COUNTRIES, demo_checks, source_address, start_mesh
from probemesh.httpserver import start_site
from tests.harness import free_port

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
FAILING = {"BR": "500", "PH": "500", "DE": "500", "UG": "hang", "ZA": "hang", "LT": "hang"}
INTERVAL = 2.0
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"

playwright_api = pytest.importorskip(
    "playwright.async_api",
    reason="status page test skipped: the 'playwright' package is not installed",
)
pytestmark = pytest.mark.slow


class Target:
    def __init__(self) -> None:
        self.failing: dict[str, str] = {}
        self.country_of = {source_address(i): cc for i, cc in enumerate(COUNTRIES)}

    async def handle(self, request: web.Request) -> web.Response:
        mode = self.failing.get(self.country_of.get(request.remote or "", ""), "")
        if mode == "500":
            return web.Response(status=500, text="upstream unavailable\n")
        if mode == "hang":
            await asyncio.sleep(INTERVAL * 2)
        return web.Response(text="ok\n")


async def test_status_page_shows_the_outage(tmp_path: Path) -> None:
    if not (os.access(CHROMIUM, os.X_OK) or shutil.which("chromium")):
        pytest.skip(
            f"status page test skipped: no Chromium at {CHROMIUM} (apt-get install chromium)"
        )
    target = Target()
    target_app = web.Application()
    target_app.router.add_get("/", target.handle)
    target_runner = await start_site(target_app, "127.0.0.1:0")
    port = target_runner.addresses[0][1]
    http_port = free_port()
    stop = asyncio.Event()
    collector, tasks = await start_mesh(
        tmp_path, demo_checks(port, INTERVAL), "127.0.0.1:0", f"127.0.0.1:{http_port}", stop
    )
    try:
        async with playwright_api.async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page(viewport={"width": 1200, "height": 900})
                await page.goto(f"http://127.0.0.1:{http_port}/")
                await page.wait_for_selector(
                    '.check[data-check="social-home"][data-state="ok"]', timeout=30_000
                )
                assert await page.locator(".incident").count() == 0

                failed_at = time.time()
                target.failing = dict(FAILING)
                while "social-home" not in collector.outage.book.active:
                    assert time.time() - failed_at < 20, "no incident opened"
                    await asyncio.sleep(0.02)
                opened_at = collector.outage.book.active["social-home"].started_at
                await page.wait_for_selector(
                    '#incidents .incident[data-check="social-home"] .summary', timeout=10_000
                )
                shown_at = time.time()
                detection, page_delay = opened_at - failed_at, shown_at - opened_at

                for cc in FAILING:
                    tile = f'.tile[data-country="{cc}"][data-state="down"]'
                    await page.wait_for_selector(
                        f'.check[data-check="social-home"] {tile}',
                        timeout=20_000,
                    )
                summary = page.locator('#incidents .incident[data-check="social-home"] .summary')
                await page.wait_for_function(
                    "() => document.querySelector('#incidents .incident .summary')"
                    ".textContent.includes('6 countries')",
                    timeout=10_000,
                )
                # The 500s differ from what US and JP get (http_diff); the hangs leave
                # no response to compare, so they stay undiagnosed with their reason.
                await page.wait_for_function(
                    "() => document.querySelector('#incidents .incident .summary')"
                    ".textContent.includes('blocked in BR (http_diff), DE (http_diff), PH (http_diff)')",
                    timeout=15_000,
                )
                text = await summary.text_content() or ""
                assert "social-home unreachable from 6 countries (BR, DE, LT, PH, UG, ZA)" in text
                assert "undiagnosed: LT (timeout), UG (timeout), ZA (timeout)" in text
                for cc in ("US", "JP"):
                    tile = page.locator(
                        f'.check[data-check="social-home"] .tile[data-country="{cc}"]'
                    )
                    assert await tile.get_attribute("data-state") == "up"
                assert await page.locator("#map circle.down").count() == 6
                assert await page.locator("#overall").text_content() == "1 active incident"
                ARTIFACTS.mkdir(exist_ok=True)
                await page.screenshot(
                    path=str(ARTIFACTS / "status-page-desktop.png"), full_page=True
                )
                await page.set_viewport_size({"width": 390, "height": 844})
                await page.screenshot(path=str(ARTIFACTS / "status-page-phone.png"), full_page=True)
                width = await page.evaluate("document.documentElement.scrollWidth")
                assert width <= 400, f"page scrolls sideways on a phone ({width}px)"
            finally:
                await browser.close()
        print(
            f"\nstatus page: detection latency {detection:.2f}s (interval {INTERVAL:g}s, "
            f"target <= {2 * INTERVAL + 1:g}s); page update delay {page_delay:.2f}s (target <= 2s)"
        )
        assert detection <= 2 * INTERVAL + 1 + 0.5, f"detection took {detection:.2f}s"
        assert page_delay <= 2.0, f"page showed the incident {page_delay:.2f}s after it opened"
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await target_runner.cleanup()
