"""Incidents reach people through the real Alertmanager and signed webhooks.

A collector and four agents (CLI processes; DE, US and two in JP, each on its
own 127.0.0.x source address) probe two paths of a loopback target that fails
chosen paths for chosen source addresses. Two Alertmanagers receive every
alert: ``a`` on plain HTTP, ``b`` behind TLS with client certificates and basic
auth. Both route to a recording receiver, which also takes the collector's
webhooks and refuses the first try of each with 503. The scenario, in order:

1. DE fails ``web``: a regional outage. Each Alertmanager sends one firing
   notification, with the labels and annotations the docs promise.
2. ``a`` restarts mid-incident: within one re-send it holds the alert again,
   and it does not notify a second time (its notification log survived).
3. ``a`` stops, DE recovers and the incident closes while ``a`` is down; once
   ``a`` is back, the re-sent resolved alert gives the resolved notification.
4. One JP agent fails everything while the other JP agent does not: a local
   problem. It gives a ProbemeshAgentLocalProblem (severity info) and no
   incident notification.

Webhooks: every event of the incident arrives signed, in timeline order, after
a retry each.
"""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from probemesh.collector.notify import diagnosis_text
from tests.alerting.receivers import ALERTMANAGER, Alertmanager, Post, Recorder
from tests.harness import http_get, scrape, total, wait_for
from tests.prometheus.mesh import Collector, Mesh

pytestmark = [
    pytest.mark.skipif(
        ALERTMANAGER is None,
        reason="prometheus-alertmanager not installed (Debian package prometheus-alertmanager; "
        "scripts/test.sh installs it)",
    ),
    pytest.mark.slow,
]

bcrypt = pytest.importorskip("bcrypt", reason="the bcrypt package (a test dependency) is missing")

AGENTS = [
    ("de-1", "DE", "127.0.0.2"),
    ("us-1", "US", "127.0.0.3"),
    ("jp-1", "JP", "127.0.0.4"),
    ("jp-2", "JP", "127.0.0.5"),
]
SECRET = b"webhook-secret-for-the-test-0123"
EXTERNAL_URL = "https://status.example.test/mesh/"


class Target:
    """HTTP 200 on every path, 500 on a path for the source addresses listed under it."""

    def __init__(self) -> None:
        self.failing: dict[str, set[str]] = {}
        target = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                down = self.client_address[0] in target.failing.get(self.path, set())
                self.send_response(500 if down else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def checks_yaml(target: Target) -> str:
    return f"""
modules:
  http_2xx: {{prober: http, timeout: 1s, http: {{preferred_ip_protocol: ip4}}}}
outage: {{evaluate_every: 0.25}}
checks:
  - {{name: web, target: "{target.url}/web", module: http_2xx, interval: 500ms}}
  - {{name: api, target: "{target.url}/api", module: http_2xx, interval: 500ms}}
"""


def notifications(recorder: Recorder, path: str, alertname: str, status: str) -> list[dict]:
    """Alerts of that name and status in the notifications Alertmanager posted to path."""
    return [
        alert
        for post in recorder.under(path)
        for alert in post.json()["alerts"]
        if alert["labels"]["alertname"] == alertname and alert["status"] == status
    ]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[dict[str, Any]]:
    recorder = Recorder()
    recorder.flaky_prefix = "/hook"
    target = Target()
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    cert = ca.issue_cert("127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "am-cert.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "am-key.pem"))
    password = "correct horse battery staple"
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    client = ca.issue_cert("probemesh-collector")  # Alertmanager b wants a client certificate
    client.cert_chain_pems[0].write_to_path(str(tmp_path / "client-cert.pem"))
    client.private_key_pem.write_to_path(str(tmp_path / "client-key.pem"))
    test_ssl = ssl.create_default_context()
    ca.configure_trust(test_ssl)
    client.configure_cert(test_ssl)
    am_a = Alertmanager(tmp_path, "am-a", f"{recorder.url}/am/a")
    am_b = Alertmanager(
        tmp_path,
        "am-b",
        f"{recorder.url}/am/b",
        web_config=f"""
tls_server_config:
  cert_file: {tmp_path / "am-cert.pem"}
  key_file: {tmp_path / "am-key.pem"}
  client_auth_type: RequireAndVerifyClientCert
  client_ca_file: {ca_file}
basic_auth_users:
  probemesh: "{hashed}"
""",
        ssl_context=test_ssl,
        basic_auth=("probemesh", password),
    )
    (tmp_path / "am-auth").write_text(f"# Alertmanager b's user\nbasic probemesh:{password}\n")
    (tmp_path / "webhook-secret").write_bytes(SECRET + b"\n")
    mesh = Mesh(tmp_path)
    try:
        am_a.start()
        am_b.start()
        collector = mesh.collector(
            "c1",
            checks_yaml(target),
            "--alertmanager-url", am_a.url,
            "--alertmanager-url", am_b.url,
            "--alertmanager-resend", "1s",
            "--alertmanager-auth", str(tmp_path / "am-auth"),
            "--alertmanager-ca", str(ca_file),
            "--alertmanager-cert", str(tmp_path / "client-cert.pem"),
            "--alertmanager-key", str(tmp_path / "client-key.pem"),
            "--alertmanager-local-problems",
            "--external-url", EXTERNAL_URL,
            "--external-label", "collector=c1",
            "--webhook-url", f"{recorder.url}/hook",
            "--webhook-secret-file", str(tmp_path / "webhook-secret"),
        )  # fmt: skip
        for agent_id, country, source in AGENTS:
            mesh.agent(collector, agent_id, country, "--source-address", source)
        yield {
            "recorder": recorder, "target": target, "am_a": am_a, "am_b": am_b,
            "mesh": mesh, "collector": collector,
        }  # fmt: skip
    except BaseException:
        print(mesh.logs())
        for am in (am_a, am_b):
            if am.log_path.exists():
                print(f"--- {am.name} ---\n{am.log_path.read_text()[-3000:]}")
        raise
    finally:
        mesh.close()
        am_a.stop()
        am_b.stop()
        target.close()
        recorder.close()


def api(collector: Collector, path: str) -> Any:
    return json.loads(http_get(f"http://{collector.http_address}{path}"))


def states(collector: Collector) -> dict[str, str]:
    return {c["check"]: c["state"] for c in api(collector, "/api/v1/reachability")["checks"]}


def verify_signature(post: Post) -> None:
    expected = "sha256=" + hmac.new(SECRET, post.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(post.headers["X-Probemesh-Signature"], expected), post.headers


def test_incident_alerts_and_webhooks_end_to_end(world: dict[str, Any]) -> None:
    recorder: Recorder = world["recorder"]
    target: Target = world["target"]
    am_a: Alertmanager = world["am_a"]
    am_b: Alertmanager = world["am_b"]
    collector: Collector = world["collector"]

    def reporting() -> bool:
        checks = api(collector, "/api/v1/reachability")["checks"]
        return len(checks) == 2 and all(
            c["state"] == "ok" and {x["country"] for x in c["countries"]} == {"DE", "US", "JP"}
            for c in checks
        )

    wait_for(reporting, 60, "four agents reporting both checks up")

    # 1. a regional outage: one firing notification per Alertmanager
    target.failing["/web"] = {"127.0.0.2"}
    for path in ("/am/a", "/am/b"):
        wait_for(
            lambda p=path: notifications(recorder, p, "ProbemeshIncident", "firing"),
            30,
            f"a firing ProbemeshIncident notification at {path}",
        )
    [incident] = api(collector, "/api/v1/incidents")["incidents"]
    assert incident["scope"] == "regional" and incident["countries"] == ["DE"]
    for path in ("/am/a", "/am/b"):
        [alert] = notifications(recorder, path, "ProbemeshIncident", "firing")
        assert alert["labels"] == {
            "alertname": "ProbemeshIncident",
            "check": "web",
            "scope": "regional",
            "severity": "warning",
            "collector": "c1",
        }
        annotations = alert["annotations"]
        assert annotations["summary"].startswith("web unreachable from 1 country (DE) since ")
        assert "HTTP 500" in annotations["summary"]
        assert annotations["countries"] == "DE"
        assert annotations["started_at"] == incident["started_at"]
        assert annotations["incident_id"] == str(incident["id"])
        assert alert["generatorURL"] == f"{EXTERNAL_URL}#incident-{incident['id']}"
        assert annotations["cause"] in ("origin", "blocking", "path", "mixed", "unknown")

    # 2. Alertmanager a restarts mid-incident: the re-send gives it the alert back
    am_a.stop()
    am_a.start()
    wait_for(
        lambda: any(a["labels"].get("check") == "web" for a in am_a.alerts()),
        15,
        "the re-sent alert in the restarted Alertmanager",
    )
    time.sleep(1.5)  # longer than group_wait + group_interval: a duplicate would be here
    assert len(notifications(recorder, "/am/a", "ProbemeshIncident", "firing")) == 1

    # 3. the incident closes while Alertmanager a is down; it still learns of it
    am_a.stop()
    target.failing["/web"] = set()
    wait_for(
        lambda: api(collector, "/api/v1/incidents")["incidents"][0]["ended_at"],
        30,
        "the incident to close",
    )
    wait_for(
        lambda: notifications(recorder, "/am/b", "ProbemeshIncident", "resolved"),
        15,
        "the resolved notification from Alertmanager b",
    )
    assert notifications(recorder, "/am/a", "ProbemeshIncident", "resolved") == []
    am_a.start()
    wait_for(
        lambda: notifications(recorder, "/am/a", "ProbemeshIncident", "resolved"),
        15,
        "the resolved notification from the restarted Alertmanager a",
    )
    [resolved] = notifications(recorder, "/am/a", "ProbemeshIncident", "resolved")
    assert resolved["labels"]["check"] == "web" and resolved["labels"]["scope"] == "regional"
    [closed] = api(collector, "/api/v1/incidents")["incidents"]
    assert resolved["endsAt"].startswith(closed["ended_at"].removesuffix("Z"))
    assert resolved["annotations"]["cause"] == closed["cause"]
    assert resolved["annotations"].get("diagnosis", "") == diagnosis_text(closed)

    # 4. a local problem: an info alert, no incident
    incident_notifications = len(recorder.under("/am/a"))
    target.failing["/web"] = target.failing["/api"] = {"127.0.0.4"}
    wait_for(
        lambda: notifications(recorder, "/am/a", "ProbemeshAgentLocalProblem", "firing"),
        30,
        "a ProbemeshAgentLocalProblem notification",
    )
    [local] = notifications(recorder, "/am/a", "ProbemeshAgentLocalProblem", "firing")
    assert local["labels"] == {
        "alertname": "ProbemeshAgentLocalProblem",
        "agent": "jp-1",
        "country": "JP",
        "severity": "info",
        "collector": "c1",
    }
    time.sleep(1.5)  # an incident alert would have been grouped and sent by now
    later = recorder.under("/am/a")[incident_notifications:]
    assert [a["labels"]["alertname"] for post in later for a in post.json()["alerts"]] == [
        "ProbemeshAgentLocalProblem"
    ]
    assert len(api(collector, "/api/v1/incidents")["incidents"]) == 1
    assert set(states(collector).values()) == {"ok"}

    # webhooks: signed, in order, each after one refused try
    hooks = recorder.under("/hook")
    for post in hooks:
        verify_signature(post)
    docs = [post.json() for post in hooks]
    # every timeline event (diagnosed ones included), in the timeline's order
    assert [d["event"] for d in docs] == closed["timeline"]
    events = [d["event"]["event"] for d in docs]
    assert events[0] == "opened" and events[-1] == "closed" and "recovered" in events
    assert [d["delivery"] for d in docs] == [f"{incident['id']}-{n}" for n in range(len(docs))]
    assert [post.headers["X-Probemesh-Event"] for post in hooks] == events
    assert all(d["incident"]["id"] == incident["id"] for d in docs)
    assert docs[0]["incident"]["ended_at"] is None and docs[-1]["incident"]["ended_at"]
    assert docs[0]["incident_url"] == f"{EXTERNAL_URL}#incident-{incident['id']}"
    assert docs[0]["external_labels"] == {"collector": "c1"}
    assert sorted(p.headers["X-Probemesh-Delivery"] for p in recorder.refused) == sorted(
        d["delivery"] for d in docs
    )

    samples = scrape(f"http://{collector.http_address}/metrics")
    assert total(samples, "probemesh_webhook_events_sent_total") == len(docs)
    assert total(samples, "probemesh_webhook_attempts_failed_total") == len(docs)
    assert total(samples, "probemesh_webhook_queue_length") == 0
    a_label = f"{am_a.url}/api/v2/alerts"
    assert total(samples, "probemesh_alertmanager_alerts_failed_total", alertmanager=a_label) > 0
    assert total(samples, "probemesh_alertmanager_alerts_sent_total", alertmanager=a_label) > 0
    b_label = f"{am_b.url}/api/v2/alerts"
    assert total(samples, "probemesh_alertmanager_alerts_failed_total", alertmanager=b_label) == 0
