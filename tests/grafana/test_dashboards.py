"""The Grafana dashboards: structure, and every panel query against a real mesh.

The live test starts a real Prometheus (scraping one collector and the agents,
receiving remote write from a second collector, with the shipped rules loaded)
and real collectors and agents through the CLI, some checks up and some down.
Every panel query of every dashboard must parse and return at least one series
for some value of the check variable.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.prometheus.mesh import Mesh, Targets
from tests.prometheus.promserver import (
    MISSING_REASON,
    PROMETHEUS,
    ROOT,
    RULE_FILES,
    Prometheus,
    run_prometheus,
)

GRAFANA = ROOT / "grafana"
DASHBOARD_FILES = sorted((GRAFANA / "dashboards").glob("*.json"))
DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
BUILTIN_VARIABLES = {"__rate_interval", "__interval", "__range", "__range_s"}
VARIABLE_REF = re.compile(r"\$\{?(\w+)")


def load(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # collapsed rows


def test_the_four_dashboards_exist() -> None:
    titles = {load(p)["title"] for p in DASHBOARD_FILES}
    assert titles == {
        "probemesh / Mesh overview",
        "probemesh / Check detail",
        "probemesh / Agent fleet",
        "probemesh / Collector",
    }


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.stem)
def test_dashboard_structure(path: Path) -> None:
    dash = load(path)
    assert dash["id"] is None
    assert dash["uid"].startswith("probemesh-")
    assert "probemesh" in dash["tags"]
    assert [i["name"] for i in dash["__inputs"]] == ["DS_PROMETHEUS"]
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    for var in variables.values():
        if var["type"] == "query":
            assert var["datasource"] == DATASOURCE, var["name"]
    ids = [p["id"] for p in panels(dash)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    occupied: set[tuple[int, int]] = set()
    for panel in panels(dash):
        where = f"{path.name}: panel {panel['id']} {panel['title']!r}"
        assert panel.get("description", "").strip(), f"{where} has no description"
        assert panel["datasource"] == DATASOURCE, where
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["y"] >= 0 and grid["w"] > 0 and grid["h"] > 0, where
        assert grid["x"] + grid["w"] <= 24, where
        cells = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & occupied, f"{where} overlaps another panel"
        occupied |= cells
        assert panel["targets"], where
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, where
            for name in VARIABLE_REF.findall(target["expr"]):
                if name.isdigit():
                    continue  # a regex back-reference such as $1
                assert name in variables or name in BUILTIN_VARIABLES, f"{where}: ${name}"
    for annotation in dash["annotations"]["list"]:
        if "expr" in annotation:
            assert annotation["datasource"] == DATASOURCE
    # No hard-coded datasource anywhere: every datasource uid is the variable.
    text = path.read_text()
    uids = set(re.findall(r'"uid":\s*"([^"]*)"', text)) - {dash["uid"], "-- Grafana --"}
    assert uids == {"${DS_PROMETHEUS}"}, uids


def test_dashboard_variables() -> None:
    wanted = {
        "probemesh-mesh-overview": {"DS_PROMETHEUS", "check", "country"},
        "probemesh-check-detail": {"DS_PROMETHEUS", "check", "country", "agent"},
        "probemesh-agent-fleet": {"DS_PROMETHEUS", "country", "agent"},
        "probemesh-collector": {"DS_PROMETHEUS"},
    }
    for path in DASHBOARD_FILES:
        names = {v["name"] for v in load(path)["templating"]["list"]}
        assert names == wanted[path.stem], path.name


def test_mesh_overview_has_geomap_by_country_code() -> None:
    dash = load(GRAFANA / "dashboards" / "probemesh-mesh-overview.json")
    geomap = next(p for p in panels(dash) if p["type"] == "geomap")
    layer = geomap["options"]["layers"][0]
    assert layer["location"] == {
        "mode": "lookup",
        "lookup": "country",
        "gazetteer": "public/gazetteer/countries.json",
    }
    assert "$check" in geomap["targets"][0]["expr"]
    kinds = {p["type"] for p in panels(dash)}
    assert {"geomap", "table", "timeseries", "stat"} <= kinds
    assert any(a.get("name") == "Outages" for a in dash["annotations"]["list"])


def test_provisioning_points_at_the_dashboards() -> None:
    provider = yaml.safe_load(
        (GRAFANA / "provisioning" / "dashboards" / "probemesh.yml").read_text()
    )
    assert provider["apiVersion"] == 1
    assert provider["providers"][0]["type"] == "file"
    datasource = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "probemesh.yml").read_text()
    )
    assert datasource["datasources"][0]["type"] == "prometheus"


# --- live: every panel query returns data -----------------------------------------------

IS_ROOT = os.geteuid() == 0
ICMP_REASON = "ICMP probes need root (raw sockets); ICMP panels are not required to have data"

CHECKS = """
modules:
  http_2xx: {{prober: http, timeout: 1s}}
  https_2xx: {{prober: http, timeout: 1s, http: {{tls_config: {{ca_file: "{ca}"}}}}}}
  dns_a: {{prober: dns, timeout: 1s, dns: {{query_name: probemesh.test, query_type: A,
           preferred_ip_protocol: ip4}}}}
  ping: {{prober: icmp, timeout: 1s, icmp: {{preferred_ip_protocol: ip4, packets: 1}}}}
checks:
  - {{name: web-up, target: "{http}/ok", module: http_2xx, interval: 1s}}
  - {{name: web-down, target: "{http}/fail", module: http_2xx, interval: 1s}}
  - {{name: web-mixed, target: "{http}/mixed", module: http_2xx, interval: 1s}}
  - {{name: secure, target: "{https}/ok", module: https_2xx, interval: 1s}}
  - {{name: dns, target: "{dns}", module: dns_a, interval: 1s}}
"""
ICMP_CHECK = '  - {name: ping, target: "127.0.0.1", module: ping, interval: 1s}\n'


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Prometheus, list[str]]]:
    if PROMETHEUS is None:
        pytest.skip(MISSING_REASON)
    root = tmp_path_factory.mktemp("dashboards")
    targets = Targets(root, failing_sources={"127.0.0.3"})
    mesh = Mesh(root)
    checks = CHECKS.format(
        ca=targets.ca_file.name,
        http=targets.http_url,
        https=targets.https_url,
        dns=targets.dns_target,
    ) + (ICMP_CHECK if IS_ROOT else "")
    names = re.findall(r"name: ([\w.-]+), target", checks)
    try:
        c1 = mesh.collector("c1", checks)
        for agent_id, country, source in (
            ("de-1", "DE", "127.0.0.2"),
            ("de-2", "DE", "127.0.0.3"),
            ("us-1", "US", "127.0.0.4"),
        ):
            mesh.agent(c1, agent_id, country, "--source-address", source)
        # An agent with a wrong token: the collector rejects it (unauthenticated).
        rogue = mesh.agent(c1, "br-1", "BR")
        rogue.args[rogue.args.index("--token") + 1] = "pm_wrong_token"
        rogue.stop()
        rogue.start()
        with run_prometheus(
            root / "prometheus",
            scrape_targets={
                "probemesh-collector": [c1.http_address],
                "probemesh-agent": [mesh.agent_metrics[a] for a in ("de-1", "de-2", "us-1")],
            },
            rule_files=RULE_FILES,
            remote_write_receiver=True,
        ) as prom:
            # A second collector, not scraped: it remote-writes (mixed topology).
            c2 = mesh.collector(
                "c2",
                checks,
                "--remote-write-url", f"{prom.url}/api/v1/write",
                "--remote-write-interval", "1s",
                "--external-label", "collector=c2",
            )  # fmt: skip
            mesh.agent(c2, "jp-1", "JP", "--source-address", "127.0.0.5")
            try:
                prom.wait_for("check:probemesh_outage_scope:level > 0", timeout=60)
                prom.wait_for('max by (check) (probemesh_outage{check="web-down"}) > 0', 60)
                prom.wait_for('check_country:probemesh_probe_success:ratio_rate5m{country="JP"}')
                # rate() needs two scrapes after the first rejection.
                prom.wait_for("rate(probemesh_ingest_rejected_total[30s])", timeout=60)
                prom.wait_for("check_country_phase:probemesh_probe_phase_duration_seconds:p95_5m")
                prom.wait_for("rate(probemesh_agent_results_acked_total[30s]) > 0", count=3)
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{mesh.logs()}") from None
            try:
                yield prom, names
            finally:
                mesh.close()  # while Prometheus is up: a stopping collector drains to it
    finally:
        mesh.close()
        targets.close()


def substitute(expr: str, check: str) -> str:
    for name, value in (
        ("__rate_interval", "30s"),
        ("__interval", "15s"),
        ("__range", "5m"),
        ("check", check),
        ("country", ".*"),
        ("agent", ".*"),
    ):
        expr = expr.replace("${" + name + "}", value).replace("$" + name, value)
    return expr


def all_queries() -> list[tuple[str, str, str]]:
    out = []
    for path in DASHBOARD_FILES:
        dash = load(path)
        for panel in panels(dash):
            for target in panel["targets"]:
                out.append((path.stem, f"{panel['title']} [{target['refId']}]", target["expr"]))
    return out


def test_every_panel_query_returns_data(live: tuple[Prometheus, list[str]]) -> None:
    prom, checks = live
    empty = []
    skipped = []
    queries = all_queries()
    assert len(queries) > 30
    for dashboard, panel, expr in queries:
        found = False
        for check in checks if "$check" in expr else checks[:1]:
            # query() raises on a parse or execution error: every query must be valid.
            if prom.query(substitute(expr, check)):
                found = True
                break
        if not found:
            if "probe_icmp" in expr and not IS_ROOT:
                skipped.append(f"{dashboard}: {panel}")
                continue
            empty.append(f"{dashboard}: {panel}: {expr}")
    if skipped:
        print(f"not required ({ICMP_REASON}): {skipped}")
    assert not empty, "panel queries without data:\n" + "\n".join(empty)


def test_variable_and_annotation_queries_work(live: tuple[Prometheus, list[str]]) -> None:
    prom, checks = live
    for path in DASHBOARD_FILES:
        dash = load(path)
        for var in dash["templating"]["list"]:
            if var["type"] != "query":
                continue
            m = re.fullmatch(r"label_values\((.*), (\w+)\)", var["definition"])
            assert m, var["definition"]
            selector = substitute(m.group(1), checks[0])
            values = prom.api(f"label/{m.group(2)}/values", **{"match[]": selector})
            assert values, f"{path.name}: variable {var['name']} has no values"
        for annotation in dash["annotations"]["list"]:
            if "expr" in annotation:
                prom.query(substitute(annotation["expr"], "web-down"))  # must parse
    assert set(prom.api("label/check/values")) >= set(checks)


def test_diagnosis_panel_shows_the_kinds(live: tuple[Prometheus, list[str]]) -> None:
    """The diagnosis table's query on the live mesh: web-down answers HTTP 500 to every
    country (origin); web-mixed fails for one DE agent while US succeeds (http_diff)."""
    prom, _ = live
    dash = load(GRAFANA / "dashboards" / "probemesh-check-detail.json")
    [panel] = [p for p in panels(dash) if p["title"] == "Diagnosis per failing country"]
    expr = panel["targets"][0]["expr"]

    def kinds(check: str) -> dict[str, str]:
        return {
            s["metric"]["country"]: s["metric"]["kind"] for s in prom.query(substitute(expr, check))
        }

    def settled() -> bool:
        down = kinds("web-down")
        return {"DE", "US"} <= set(down) and set(down.values()) == {"origin"}

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (
        settled() and kinds("web-mixed") == {"DE": "http_diff"}
    ):
        time.sleep(0.5)
    assert settled(), kinds("web-down")  # JP, behind a second collector, is there too
    assert kinds("web-mixed") == {"DE": "http_diff"}
    assert kinds("web-up") == {}  # no diagnosis while every country is up
