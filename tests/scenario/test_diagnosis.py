"""Diagnosis on real networking: countries reach an origin through two routers.

The network is in diagnosis_mesh.py. nftables on the routers inject the
faults, one per country, the way censors and broken networks do:

- UG: its resolver answers the blockpage's address (-> dns);
- ET: r1 answers its SYNs with a TCP reset (-> tcp_blocking);
- CN: r2 DNATs its HTTP to the blockpage server (-> http_diff);
- NG, GH: r2 drops what it would forward for them; their traceroutes stop at
  r2 (-> path, hop 10.211.0.2, AS64501 from the test's ip2asn file);
- then every fault is lifted and the origin answers 500 to everyone (-> origin).

KE and DE are controls: they must stay up with no diagnosis while others fail.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import wait_for
from tests.scenario.diagnosis_mesh import (
    BLOCKED,
    BLOCKPAGE,
    CONTROLS,
    COUNTRIES,
    HTTP_PORT,
    PATH_LOST,
    R1,
    R2_UP,
    Network,
    Scenario,
)
from tests.scenario.netns import netns_problem

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"

pytestmark = [pytest.mark.root, pytest.mark.slow]


@pytest.fixture
def network() -> Iterator[Network]:
    problem = netns_problem()
    if problem:
        pytest.skip(f"diagnosis scenario skipped: {problem}")
    import secrets

    net = Network(f"pd{secrets.token_hex(2)}")
    try:
        net.create()
        yield net
    finally:
        net.destroy()


def _controls_clean(countries: dict[str, dict[str, Any]]) -> None:
    for cc in CONTROLS:
        assert countries[cc]["state"] == "up", countries[cc]
        assert countries[cc]["diagnosis"] is None, countries[cc]


def check_status_page(net: Network, tmp: Path) -> None:
    """Chromium, run inside r1 through a wrapper, shows kinds, the cause and NG's hop list.

    Playwright talks to Chromium over pipes, so the browser can live in another
    network namespace than the test.
    """
    problem = browser_problem()
    if problem:
        print(f"\nstatus page part skipped: {problem}")
        return
    from playwright.sync_api import sync_playwright

    wrapper = tmp / "chromium-in-r1"
    wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {net.ns("r1")} {CHROMIUM} "$@"\n')
    wrapper.chmod(0o755)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(wrapper), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 1400})
            page.goto(f"http://{R1}:{HTTP_PORT}/")
            card = '.check[data-check="social-home"]'
            for cc, kind in {**BLOCKED, "NG": "path", "GH": "path"}.items():
                page.wait_for_selector(
                    f'{card} .tile[data-country="{cc}"] .kind[data-kind="{kind}"]', timeout=10_000
                )
            for cc in CONTROLS:
                assert page.locator(f'{card} .tile[data-country="{cc}"] .kind').count() == 0
            hops = page.locator(f'{card} .diagnosis li[data-country="NG"] .hops li')
            texts = hops.all_inner_texts()
            assert texts[0].startswith(R1) and texts[1].startswith(f"{R2_UP} (AS64501)"), texts
            assert page.locator(".incident .badge.cause").first.inner_text() == "cause: mixed"
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "status-diagnosis.png"), full_page=True)
        finally:
            browser.close()


def browser_problem() -> str | None:
    if not os.access(CHROMIUM, os.X_OK):
        return f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the 'playwright' package is not installed"
    return None


def test_each_fault_gets_its_kind_and_the_incident_its_cause(
    network: Network, tmp_path: Path
) -> None:
    sc = Scenario(network, tmp_path)
    try:
        sc.start()
        wait_for(
            lambda: (cs := sc.countries()) and len(cs) == len(COUNTRIES)
            and all(c["state"] == "up" for c in cs.values()),
            60,
            "every country up",
        )  # fmt: skip
        # Agents may have probed before the servers listened: start from no incident.
        wait_for(lambda: sc.incident() is None, 30, "no open incident")
        assert all(kind is None for kind in sc.kinds().values())

        # blocking, three ways
        for fault in ("lie", "reset", "blockpage"):
            sc.inject(fault)
        wait_for(
            lambda: all(sc.kinds()[cc] == kind for cc, kind in BLOCKED.items()),
            40,
            "UG dns, ET tcp_blocking, CN http_diff",
        )
        countries = sc.countries()
        _controls_clean(countries)
        ug = countries["UG"]["diagnosis"]
        assert BLOCKPAGE in ug["detail"] and "AS64666" in ug["detail"], ug
        assert "refused" in countries["ET"]["diagnosis"]["detail"]
        assert "Access Restricted" in countries["CN"]["diagnosis"]["detail"]
        inc = wait_for(
            lambda: (i := sc.incident()) and i["cause"] == "blocking" and i,
            15,
            "incident cause blocking",
        )
        assert isinstance(inc, dict)
        assert {cc: d["kind"] for cc, d in inc["diagnosis"].items()} == BLOCKED, json.dumps(inc)
        assert "blocked in CN (http_diff), ET (tcp_blocking), UG (dns)" in inc["summary"]
        diagnosed = {
            (cc, e["kind"]) for e in inc["timeline"] if e["event"] == "diagnosed"
            for cc in e["countries"]
        }  # fmt: skip
        assert set(BLOCKED.items()) <= diagnosed
        metrics = sc.get("/metrics")
        assert (
            'probemesh_country_diagnosis{check="social-home",country="UG",kind="dns"} 1.0'
            in metrics
        )

        # a router drops everything it would forward for two countries
        sc.inject("drop")
        wait_for(
            lambda: all(sc.kinds()[cc] == "path" for cc in PATH_LOST),
            40,
            "NG and GH diagnosed as path",
        )
        countries = sc.countries()
        _controls_clean(countries)
        for cc in PATH_LOST:
            d = countries[cc]["diagnosis"]
            assert d["hop"] == R2_UP and d["asn"] == 64501, d
            other = next(c for c in PATH_LOST if c != cc)
            assert f"same AS as {other}" in d["detail"], d
            assert [h["address"] for h in d["path"]][:2] == [R1, R2_UP], d["path"]
        inc = wait_for(
            lambda: (i := sc.incident()) and i["cause"] == "mixed" and i, 15, "cause mixed"
        )
        assert isinstance(inc, dict)
        assert f"path lost after {R2_UP} (AS64501) for GH, NG" in inc["summary"]
        check_status_page(network, tmp_path)

        # every fault lifted, then the origin fails for everyone
        sc.lift_all()
        wait_for(
            lambda: all(c["state"] == "up" for c in sc.countries().values()),
            40,
            "every country up again",
        )
        sc.set_control(fail_500=True)
        wait_for(
            lambda: set(sc.kinds().values()) == {"origin"},
            40,
            "every country diagnosed origin",
        )
        inc = wait_for(
            lambda: (i := sc.incident()) and i["cause"] == "origin" and i, 15, "cause origin"
        )
        assert isinstance(inc, dict)
        assert "origin failing: HTTP 500 from every country" in inc["summary"], json.dumps(inc)
        print(f"\ndiagnosis scenario: {inc['summary']}")
    except BaseException:
        sc.stop()
        print(sc.logs())
        raise
    finally:
        sc.stop()
