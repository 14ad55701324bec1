"""What reaches notifiers, on scripted rounds: new timeline events in order, and the
Alertmanager alert set (labels, annotations, scope changes, resolution, local problems)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from probemesh.collector.alertmanager import RESOLVED_RETENTION, AlertmanagerNotifier
from probemesh.collector.database import open_database
from probemesh.collector.incidents import IncidentBook
from probemesh.collector.notify import Evaluation, Notifications, diagnosis_text
from probemesh.timefmt import rfc3339
from tests.collector.mesh_script import COUNTRIES, ScriptedMesh

SIX = {"BR": "500", "PH": "500", "DE": "500", "UG": "timeout", "ZA": "timeout", "LT": "timeout"}
EVERYONE = dict.fromkeys(COUNTRIES, "500")


class Recorder:
    """A notifier that keeps every Evaluation it is handed."""

    def __init__(self) -> None:
        self.evaluations: list[Evaluation] = []

    def notify(self, evaluation: Evaluation) -> None:
        self.evaluations.append(evaluation)

    def stand_by(self) -> None:
        pass

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def metric_families(self) -> list[Any]:
        return []

    def events(self) -> list[tuple[int, int, str, list[str]]]:
        return [
            (incident.id, index, event.event, event.countries)
            for ev in self.evaluations
            for incident, index, event in ev.events
        ]


def wire(mesh: ScriptedMesh, *notifiers: Any) -> None:
    mesh.monitor.notifications = Notifications(mesh.book, list(notifiers))


def test_events_reach_notifiers_once_and_in_order() -> None:
    mesh = ScriptedMesh()
    recorder = Recorder()
    wire(mesh, recorder)
    mesh.round()
    mesh.round()
    mesh.round(web=SIX)
    mesh.round(web=SIX)
    assert recorder.events() == [(1, 0, "opened", ["BR", "DE", "LT", "PH", "UG", "ZA"])]
    assert [i.id for i in recorder.evaluations[-1].active] == [1]
    mesh.round(web=EVERYONE)
    mesh.round(web=EVERYONE)
    for _ in range(4):
        mesh.round()
    assert [e[2] for e in recorder.events()] == ["opened", "down", "global", "recovered", "closed"]
    assert [e[1] for e in recorder.events()] == list(range(5))
    [closing] = [ev for ev in recorder.evaluations if ev.closed]
    assert [i.id for i in closing.closed] == [1] and closing.active == []
    mesh.round()
    assert recorder.evaluations[-1].events == [] and recorder.evaluations[-1].closed == []


def test_a_restarted_collector_does_not_notify_past_events_again(tmp_path: Path) -> None:
    mesh = ScriptedMesh(book=IncidentBook(open_database(None, tmp_path)))
    mesh.round()
    mesh.round()
    mesh.round(web=SIX)
    mesh.round(web=SIX)
    mesh.book.close()
    restarted = ScriptedMesh(book=IncidentBook(open_database(None, tmp_path)), start=mesh.now)
    recorder = Recorder()
    wire(restarted, recorder)
    for _ in range(8):
        restarted.round()
    assert [e[2] for e in recorder.events()] == ["recovered", "closed"]
    assert recorder.events()[0][1] == 1  # the timeline index continues
    restarted.book.close()


def test_alert_labels_annotations_and_scope_changes() -> None:
    mesh = ScriptedMesh()
    notifier = AlertmanagerNotifier(
        ["http://127.0.0.1:1"],
        resend=60,
        external_labels={"collector": "eu-1", "severity": "ignored"},
        external_url=lambda: "https://status.example.org/mesh/",
        clock=lambda: mesh.now,
    )
    wire(mesh, notifier)
    mesh.round()
    mesh.round()
    assert notifier.payload() == []
    mesh.round(web={"DE": "500", "BR": "500"})
    mesh.round(web={"DE": "500", "BR": "500"})
    [alert] = notifier.payload()
    assert alert["labels"] == {
        "alertname": "ProbemeshIncident",
        "check": "web",
        "scope": "regional",
        "severity": "warning",
        "collector": "eu-1",
    }
    annotations = alert["annotations"]
    assert annotations["summary"].startswith("web unreachable from 2 countries (BR, DE)")
    assert annotations["countries"] == "BR, DE"
    assert annotations["started_at"] == "2027-01-15T08:00:40Z" == alert["startsAt"]
    assert annotations["incident_id"] == "1"
    assert alert["generatorURL"] == "https://status.example.org/mesh/#incident-1"
    assert alert["endsAt"] == "2027-01-15T08:04:40Z"  # now + 4 x resend: expires if we die
    assert notifier.targets[0].queued == 1

    mesh.round(web=EVERYONE)
    mesh.round(web=EVERYONE)  # global: the regional alert resolves, a critical one fires
    by_scope = {a["labels"]["scope"]: a for a in notifier.payload()}
    assert by_scope["global"]["labels"]["severity"] == "critical"
    assert by_scope["global"]["startsAt"] == "2027-01-15T08:01:00Z"
    assert by_scope["global"]["annotations"]["started_at"] == "2027-01-15T08:00:40Z"
    assert by_scope["regional"]["endsAt"] == "2027-01-15T08:01:00Z"

    for _ in range(4):
        mesh.round()
    resolved = notifier.payload()
    assert {a["labels"]["scope"] for a in resolved} == {"regional", "global"}
    assert all(a["endsAt"] <= "2027-01-15T08:01:40Z" for a in resolved), resolved
    # resolved alerts are re-sent for a while, then forgotten
    mesh.now += RESOLVED_RETENTION
    mesh.round()
    assert notifier.payload() == []


def test_local_problem_alert_only_when_asked() -> None:
    mesh = ScriptedMesh()
    quiet = AlertmanagerNotifier(["http://127.0.0.1:1"], clock=lambda: mesh.now)
    loud = AlertmanagerNotifier(
        ["http://127.0.0.1:1"], local_problem_alerts=True, clock=lambda: mesh.now
    )
    wire(mesh, quiet, loud)
    mesh.round()
    mesh.round()
    for _ in range(3):  # the UG agent fails both checks, everyone else sees them up
        mesh.round(web={"UG": "timeout"}, tcp={"UG": "timeout"})
    assert "a-ug" in mesh.monitor.snapshot.local_problems
    assert quiet.payload() == [] and mesh.book.incidents() == []
    [alert] = loud.payload()
    assert alert["labels"] == {
        "alertname": "ProbemeshAgentLocalProblem",
        "agent": "a-ug",
        "country": "UG",
        "severity": "info",
    }
    for _ in range(3):
        mesh.round()
    [cleared] = loud.payload()  # resolved when the flag cleared, at or before now
    assert cleared["labels"]["agent"] == "a-ug"
    assert cleared["startsAt"] <= cleared["endsAt"] <= rfc3339(mesh.now)


def test_diagnosis_text_reads_what_is_there() -> None:
    assert diagnosis_text({}) == ""
    assert diagnosis_text({"diagnosis": None}) == ""
    doc = {"diagnosis": {"DE": {"kind": "dns", "detail": "NXDOMAIN"}, "BR": {"kind": "origin"}}}
    assert diagnosis_text(doc) == "BR: origin; DE: dns (NXDOMAIN)"
