"""Incident lifecycle on scripted rounds: timeline, scope, reasons, summary, persistence, API."""

from __future__ import annotations

import re
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from probemesh.collector.api import add_outage_routes
from probemesh.collector.database import open_database
from probemesh.collector.incidents import IncidentBook
from tests.collector.mesh_script import COUNTRIES, ScriptedMesh

SIX = {"BR": "500", "PH": "500", "DE": "500", "UG": "timeout", "ZA": "timeout", "LT": "timeout"}
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def events(incident_json: dict) -> list[tuple[str, list[str]]]:
    return [(e["event"], e["countries"]) for e in incident_json["timeline"]]


def run_outage(mesh: ScriptedMesh) -> None:
    """Six countries fail, then everyone, then progressive recovery."""
    mesh.round()
    mesh.round()
    mesh.round(web=SIX)
    mesh.round(web=SIX)  # confirmed: regional incident opens


def test_regional_then_global_then_progressive_recovery() -> None:
    mesh = ScriptedMesh()
    run_outage(mesh)
    [incident] = mesh.book.incidents(active_only=True)
    doc = incident.to_json()
    assert doc["scope"] == "regional"
    assert doc["countries"] == ["BR", "DE", "LT", "PH", "UG", "ZA"]
    assert doc["reason"] == "http_status" and doc["reason_detail"] == "HTTP 500"
    assert doc["country_reasons"]["UG"] == {"reason": "timeout", "detail": "timeout"}
    assert doc["country_reasons"]["BR"] == {"reason": "http_status", "detail": "HTTP 500"}
    assert doc["summary"] == (
        "web unreachable from 6 countries (BR, DE, LT, PH, UG, ZA) since 08:00:40 UTC"
        " - HTTP 500 (BR, DE, PH), timeout (LT, UG, ZA)"
    )
    everyone = {**dict.fromkeys(COUNTRIES, "500"), **SIX}
    mesh.round(web=everyone)
    mesh.round(web=everyone)  # US and JP confirmed down: global
    doc = mesh.book.incidents(active_only=True)[0].to_json()
    assert doc["scope"] == "global" and doc["peak_scope"] == "global"
    assert doc["peak_countries"] == sorted(COUNTRIES)
    # progressive recovery: US+JP, then BR+PH+DE, then the rest
    mesh.round(web=SIX)
    mesh.round(web=SIX)
    mesh.round(web={"UG": "timeout", "ZA": "timeout", "LT": "timeout"})
    mesh.round(web={"UG": "timeout", "ZA": "timeout", "LT": "timeout"})
    doc = mesh.book.incidents(active_only=True)[0].to_json()
    assert doc["scope"] == "regional"
    assert doc["countries"] == ["LT", "UG", "ZA"]
    assert doc["summary"].endswith("; partially recovered 08:01:40 (5/8)"), doc["summary"]
    mesh.round()
    mesh.round()  # all confirmed up: check ok, incident still open
    assert mesh.view().state == "ok"
    assert len(mesh.book.incidents(active_only=True)) == 1
    mesh.round()
    mesh.round()  # ok for 2 intervals: closed
    assert mesh.book.incidents(active_only=True) == []
    [closed] = mesh.book.incidents()
    doc = closed.to_json()
    assert events(doc) == [
        ("opened", ["BR", "DE", "LT", "PH", "UG", "ZA"]),
        ("down", ["JP", "US"]),
        ("global", sorted(COUNTRIES)),
        ("recovered", ["JP", "US"]),
        ("regional", ["BR", "DE", "LT", "PH", "UG", "ZA"]),
        ("recovered", ["BR", "DE", "PH"]),
        ("recovered", ["LT", "UG", "ZA"]),
        ("closed", []),
    ]
    times = [e["at"] for e in doc["timeline"]]
    assert times == sorted(times) and all(RFC3339.match(t) for t in times)
    assert doc["started_at"] == "2027-01-15T08:00:40Z"
    assert doc["ended_at"] == "2027-01-15T08:02:20Z"
    assert doc["countries"] == []
    assert doc["summary"].endswith("(global); recovered 08:02:00"), doc["summary"]


def test_relapse_before_close_stays_one_incident() -> None:
    mesh = ScriptedMesh()
    run_outage(mesh)
    mesh.round()
    mesh.round()  # ok, but not yet for 2 rounds
    mesh.round(web={"DE": "500"})
    mesh.round(web={"DE": "500"})
    [incident] = mesh.book.incidents()
    assert incident.active and incident.countries == ["DE"]
    assert [e.event for e in incident.timeline][-2:] == ["recovered", "down"]


def test_unknown_does_not_close_an_incident() -> None:
    mesh = ScriptedMesh()
    run_outage(mesh)
    for _ in range(5):  # every agent goes silent: no verdict
        mesh.round(silent=COUNTRIES)
    assert mesh.view().state == "unknown"
    assert len(mesh.book.incidents(active_only=True)) == 1


def test_incidents_survive_a_restart(tmp_path: Path) -> None:
    mesh = ScriptedMesh(book=IncidentBook(open_database(None, tmp_path)))
    run_outage(mesh)
    mesh.round(web={"UG": "timeout"})
    mesh.round(web={"UG": "timeout"})
    before = mesh.book.incidents()[0].to_json()
    mesh.book.close()

    restarted = ScriptedMesh(book=IncidentBook(open_database(None, tmp_path)), start=mesh.now)
    [incident] = restarted.book.incidents(active_only=True)
    assert incident.to_json() == before
    for _ in range(6):
        restarted.round()
    assert restarted.book.incidents(active_only=True) == []
    assert restarted.book.incidents()[0].timeline[-1].event == "closed"
    restarted.book.close()
    again = IncidentBook(open_database(None, tmp_path))
    [closed] = again.incidents()
    assert closed.ended_at is not None and closed.id == before["id"]
    # new incidents get new ids
    third = ScriptedMesh(book=again, start=restarted.now)
    run_outage(third)
    assert [i.id for i in again.incidents()] == [before["id"] + 1, before["id"]]
    again.close()


async def test_api_documents() -> None:
    mesh = ScriptedMesh()
    run_outage(mesh)
    app = web.Application()
    add_outage_routes(app, mesh.monitor, mesh.state)
    async with TestClient(TestServer(app)) as client:
        resp = await client.get("/api/v1/reachability")
        assert resp.status == 200
        body = await resp.json()
        web_check = next(c for c in body["checks"] if c["check"] == "web")
        assert web_check["state"] == "regional_outage"
        br = next(c for c in web_check["countries"] if c["country"] == "BR")
        assert {k: br[k] for k in ("agents", "up", "ratio", "state")} == {
            "agents": 1,
            "up": 0,
            "ratio": 0.0,
            "state": "down",
        }
        resp = await client.get("/api/v1/incidents?active=true")
        [inc] = (await resp.json())["incidents"]
        assert set(inc) >= {
            "id",
            "check",
            "scope",
            "countries",
            "peak_countries",
            "started_at",
            "ended_at",
            "reason",
            "summary",
            "timeline",
        }
        assert inc["ended_at"] is None and RFC3339.match(inc["started_at"])
        assert (await client.get("/api/v1/incidents?active=maybe")).status == 400
        page = await client.get("/")
        assert page.status == 200 and "probemesh" in await page.text()
        for asset in ("/static/app.js", "/static/style.css"):
            assert (await client.get(asset)).status == 200
        status = await (await client.get("/api/v1/status")).json()
        assert status["incidents"][0]["id"] == inc["id"] and len(status["agents"]) == 8
