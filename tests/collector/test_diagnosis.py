"""Diagnosis rules on hand-built evidence: each kind, the OONI thresholds at their
boundaries, shared hops, the incident's cause and summary, and --asn-db files."""

from __future__ import annotations

from pathlib import Path

import pytest

from probemesh.collector.asn import Ip2AsnTable, NoAsnDatabase, load_asn_db
from probemesh.collector.diagnosis import (
    AWAITING_CONTROL_PROBE,
    AWAITING_PATH,
    CountryInput,
    Diagnoser,
    Diagnosis,
    Rules,
    askable,
    cause_of,
    http_matches,
)
from probemesh.collector.evidence import EvidenceBook
from probemesh.collector.incidents import DIAGNOSE_EVERY, Event, Incident, IncidentBook
from probemesh.errors import ConfigError
from probemesh.v1 import mesh_pb2 as pb
from tests.collector.mesh_script import ScriptedMesh, result

ORIGIN = "93.184.215.14"
ASNS = Ip2AsnTable(
    [
        (4, int.from_bytes(bytes([93, 184, 215, 0])), int.from_bytes(bytes([93, 184, 215, 255])), 64500),
        (4, int.from_bytes(bytes([93, 184, 216, 0])), int.from_bytes(bytes([93, 184, 216, 255])), 64500),
        (4, int.from_bytes(bytes([151, 101, 1, 0])), int.from_bytes(bytes([151, 101, 1, 255])), 64666),
        (4, int.from_bytes(bytes([203, 0, 113, 0])), int.from_bytes(bytes([203, 0, 113, 255])), 64501),
    ]
)  # fmt: skip
PAGE = pb.HttpEvidence(
    status=200,
    body_length=1000,
    title="Social Home - Welcome Friends",
    header_names=["content-length", "content-type", "date", "x-origin-node"],
)


def evidence(
    addrs: tuple[str, ...] = (ORIGIN,),
    rcode: str = "NOERROR",
    tcp: str = "established",
    http: pb.HttpEvidence | None = PAGE,
    success: bool = False,
    tls: pb.TlsEvidence | None = None,
) -> pb.Evidence:
    ev = pb.Evidence(probe_success=success)
    ev.dns.resolver, ev.dns.rcode = "192.0.2.53", rcode
    ev.dns.addresses.extend(addrs)
    for a in addrs:
        ev.tcp.add(address=a, port=443, outcome=tcp)
    if tls is not None:
        ev.tls.CopyFrom(tls)
    if http is not None and tcp == "established":
        ev.http.CopyFrom(http)
    return ev


CONTROL = [evidence(success=True)]


def kind(seen: pb.Evidence, controls: list[pb.Evidence] = CONTROL, asn: object = ASNS) -> Diagnosis:
    return Rules(asn).against(seen, controls, None)  # type: ignore[arg-type]


def test_dns_consistency_same_address_same_asn_or_tls_for_the_name() -> None:
    assert kind(evidence()).kind == "unknown"  # identical to the control
    # another address of the origin's AS is consistent (OONI's ASN rule)
    assert kind(evidence(addrs=("93.184.216.34",))).kind == "unknown"
    lie = kind(evidence(addrs=("151.101.1.7",)))
    assert lie.kind == "dns" and "151.101.1.7 (AS64666)" in lie.detail
    # without an ASN database the differing address alone decides...
    assert kind(evidence(addrs=("93.184.216.34",)), asn=NoAsnDatabase()).kind == "dns"
    # ...unless it completed a TLS handshake valid for the name
    tls = pb.TlsEvidence(address="93.184.216.34", outcome="ok", name_matches=True)
    assert kind(evidence(addrs=("93.184.216.34",), tls=tls), asn=NoAsnDatabase()).kind == "unknown"


def test_dns_nxdomain_and_bogons() -> None:
    nx = kind(evidence(addrs=(), rcode="NXDOMAIN"))
    assert nx.kind == "dns" and "NXDOMAIN where the control resolves" in nx.detail
    bogon = kind(evidence(addrs=("10.10.34.35",)))
    assert bogon.kind == "dns" and "bogon 10.10.34.35" in bogon.detail


def test_tcp_blocking_and_path() -> None:
    reset = kind(evidence(tcp="refused"))
    assert reset.kind == "tcp_blocking" and "refused while the control connects" in reset.detail
    assert kind(evidence(tcp="timeout")).kind == "tcp_blocking"  # no traceroute: cannot say where
    book = EvidenceBook()
    untraced = evidence(tcp="timeout")
    untraced.path.unavailable_reason = "needs CAP_NET_RAW"
    book.observe("web", "a0", "NG", untraced, 100.0)
    blind = Rules(ASNS).against(untraced, CONTROL, book.paths[("web", "a0")])
    assert blind.kind == "tcp_blocking"
    assert blind.detail.endswith("; path: unavailable (needs CAP_NET_RAW)"), blind.detail
    traced = evidence(tcp="timeout")
    traced.path.available, traced.path.destination = True, ORIGIN
    traced.path.hops.add(ttl=1, address="192.0.2.1", rtt_seconds=0.001)
    traced.path.hops.add(ttl=2, address="203.0.113.1", rtt_seconds=0.002)
    book.observe("web", "a1", "NG", traced, 100.0)
    lost = Rules(ASNS).against(traced, CONTROL, book.paths[("web", "a1")])
    assert (lost.kind, lost.hop, lost.asn) == ("path", "203.0.113.1", 64501)
    assert [h.address for h in lost.path] == ["192.0.2.1", "203.0.113.1"]
    # a traceroute that reached the target does not blame the path
    traced.path.reached = True
    assert Rules(ASNS).against(traced, CONTROL, book.paths[("web", "a1")]).kind == "tcp_blocking"


def test_tls_interference() -> None:
    good = pb.TlsEvidence(address=ORIGIN, outcome="ok", leaf_sha256="aa" * 32, name_matches=True)
    controls = [evidence(success=True, tls=good)]
    failed = pb.TlsEvidence(address=ORIGIN, outcome="failed", error="certificate verify failed")
    assert kind(evidence(tls=failed, http=None), controls).kind == "tls_interference"
    forged = pb.TlsEvidence(address=ORIGIN, outcome="ok", leaf_sha256="bb" * 32)
    assert kind(evidence(tls=forged), controls).kind == "tls_interference"
    # another valid certificate for the name (a CDN edge) is no interference
    other = pb.TlsEvidence(address=ORIGIN, outcome="ok", leaf_sha256="cc" * 32, name_matches=True)
    assert kind(evidence(tls=other), controls).kind == "unknown"


def test_http_diff_uses_oonis_rules_at_their_boundaries() -> None:
    def page(length: int, title: str = "", headers: tuple[str, ...] = ("date",)) -> pb.HttpEvidence:
        return pb.HttpEvidence(status=200, body_length=length, title=title, header_names=headers)

    control = page(1000, "Social Home", ("date", "x-origin-node"))
    assert http_matches(page(701), control)  # proportion 0.701 > 0.7
    assert not http_matches(page(700), control)  # exactly 0.7 is not "more than"
    assert http_matches(page(10, headers=("date", "x-origin-node")), control)  # uncommon header
    assert not http_matches(page(10, headers=("date", "content-length")), control)  # common only
    assert http_matches(page(10, "Social Home!"[:11]), control)  # same title words
    # words under 5 letters are not compared: "Home" alone says nothing
    assert not http_matches(page(10, "Home", ("x-a",)), page(1000, "Home Access", ("x-b",)))
    # identical header name sets match, even with only common names (OONI)
    assert http_matches(page(10, headers=("date",)), page(1000, headers=("date",)))
    assert not http_matches(pb.HttpEvidence(status=403, body_length=1000), control)
    block = pb.HttpEvidence(
        status=200, body_length=100, title="Access Restricted", header_names=["x-filter"]
    )
    diff = kind(evidence(http=block))
    assert diff.kind == "http_diff" and "Access Restricted" in diff.detail


def test_no_control_origin_or_unknown() -> None:
    rules = Rules(NoAsnDatabase())
    down = evidence(http=pb.HttpEvidence(status=500, body_length=20))
    assert rules.no_control(down, None) == Diagnosis("origin", "HTTP 500")
    assert rules.no_control(evidence(tcp="refused"), None).kind == "origin"
    assert rules.no_control(evidence(tcp="timeout"), None).kind == "unknown"


def test_diagnoser_waits_for_control_marks_local_and_shared_hops() -> None:
    book = EvidenceBook()
    asked: list[tuple[str, pb.EvidenceRequest]] = []
    diagnoser = Diagnoser(book, ASNS, lambda agent, req: asked.append((agent, req)) is None)
    book.observe("web", "ug1", "UG", evidence(addrs=("151.101.1.7",)), 100.0)
    result = diagnoser.diagnose_check(
        "web", [CountryInput("UG", False), CountryInput("ZA", True)], {"ke1": 101.0}, 101.0
    )
    assert result["UG"] == Diagnosis("unknown", "waiting for the control's evidence", waiting=True)
    assert result["ZA"].kind == "local"
    book.observe("web", "ke1", "KE", evidence(success=True), 101.0)
    for agent, cc in (("ng1", "NG"), ("gh1", "GH")):
        traced = evidence(tcp="timeout")
        traced.path.available, traced.path.destination = True, ORIGIN
        traced.path.hops.add(ttl=1, address="203.0.113.1")
        book.observe("web", agent, cc, traced, 101.0)
    failing = [CountryInput(cc, False) for cc in ("UG", "NG", "GH")]
    result = diagnoser.diagnose_check("web", failing, {"ke1": 102.0}, 102.0)
    assert result["UG"].kind == "dns"
    assert result["NG"].kind == result["GH"].kind == "path"
    assert result["NG"].detail.endswith("same AS as GH"), result["NG"].detail
    # evidence older than FAILING_MAX_AGE no longer counts
    assert diagnoser.diagnose_check("web", failing, {"ke1": 1000.0}, 1000.0)["UG"].kind == "unknown"
    # KE's agent failing too (KE not yet confirmed down): no control, the 500s are the origin's
    book.observe("web", "ug1", "UG", evidence(http=pb.HttpEvidence(status=500)), 1000.0)
    assert diagnoser.diagnose_check("web", failing, {}, 1000.0)["UG"] == Diagnosis(
        "origin", "HTTP 500"
    )


def test_cause_of_kinds() -> None:
    assert cause_of(["origin", "origin"]) == "origin"
    assert cause_of(["dns", "tcp_blocking", "tls_interference", "http_diff"]) == "blocking"
    assert cause_of(["path", "path"]) == "path"
    assert cause_of(["dns", "path"]) == "mixed"
    assert cause_of(["unknown"]) == cause_of([]) == "unknown"
    assert cause_of(["origin", "unknown"]) == "mixed"


def test_incident_summary_names_the_cause_and_persists_the_diagnosis() -> None:
    incident = Incident(1, "social-home", 30605.0, "regional", "regional", [], [])
    incident.countries = incident.peak_countries = ["CN", "ET", "GH", "NG", "UG"]
    diagnoses = {
        "UG": Diagnosis("dns", "lie"),
        "ET": Diagnosis("tcp_blocking", "reset"),
        "CN": Diagnosis("http_diff", "blockpage"),
        "NG": Diagnosis("path", "lost", "203.0.113.1", 64500),
        "GH": Diagnosis("path", "lost", "203.0.113.1", 64500),
    }
    assert incident.diagnose(diagnoses, 30610.0)
    assert not incident.diagnose(diagnoses, 30611.0)  # no change, no new event
    assert incident.cause == "mixed"
    assert incident.summary() == (
        "social-home unreachable from 5 countries (CN, ET, GH, NG, UG) since 08:30:05 UTC"
        " - blocked in CN (http_diff), ET (tcp_blocking), UG (dns);"
        " path lost after 203.0.113.1 (AS64500) for GH, NG"
    )
    diagnosed = [(e.countries, e.kind) for e in incident.timeline if e.event == "diagnosed"]
    assert diagnosed == [
        (["UG"], "dns"),
        (["ET"], "tcp_blocking"),
        (["CN"], "http_diff"),
        (["GH", "NG"], "path"),
    ]
    restored = Incident.from_row(incident.to_row())
    assert restored.to_json() == incident.to_json()
    doc = restored.to_json()
    assert doc["cause"] == "mixed"
    assert doc["diagnosis"]["NG"] == {
        "kind": "path",
        "detail": "lost",
        "hop": "203.0.113.1",
        "asn": 64500,
    }
    assert {"at", "event", "countries", "kind"} <= set(doc["timeline"][0])
    assert Event(1.0, "down", ["UG"]).to_json().keys() == {"at", "event", "countries"}


def test_origin_summary() -> None:
    incident = Incident(2, "social-home", 30605.0, "global", "global", ["BR", "DE"], ["BR", "DE"])
    incident.diagnose({cc: Diagnosis("origin", "HTTP 500") for cc in ("BR", "DE")}, 30606.0)
    assert incident.cause == "origin"
    assert "- origin failing: HTTP 500 from every country" in incident.summary()


def test_ip2asn_file_and_errors(tmp_path: Path) -> None:
    tsv = tmp_path / "ip2asn.tsv"
    tsv.write_text(
        "203.0.113.0\t203.0.113.255\t64501\tZZ\tTRANSIT\n"
        "10.0.0.0\t10.255.255.255\t0\tNone\tNot routed\n"
        "2001:db8::\t2001:db8::ffff\t64502\tZZ\tV6\n"
    )
    db = load_asn_db(tsv)
    assert db.asn("203.0.113.9") == 64501
    assert db.asn("2001:db8::1") == 64502
    assert db.asn("10.1.2.3") is None  # AS 0: not routed
    assert db.asn("198.51.100.1") is None and db.asn("not-an-ip") is None
    bad = tmp_path / "bad.tsv"
    bad.write_text("203.0.113.0\t203.0.113.255\tAS-what\n")
    with pytest.raises(ConfigError, match=r"bad.tsv:1: expected range_start"):
        load_asn_db(bad)
    with pytest.raises(ConfigError, match="not a readable MaxMind database"):
        load_asn_db(tsv.rename(tmp_path / "x.mmdb"))


def test_control_refresh_is_validated(tmp_path: Path) -> None:
    from probemesh.checks import load_checks

    path = tmp_path / "checks.yaml"
    base = "modules: {m: {prober: tcp}}\nchecks: [{name: c, target: 'h:1', module: m}]\n"
    path.write_text(base + "outage: {control_refresh: 0.5}\n")
    with pytest.raises(ConfigError, match=r"outage\.control_refresh: must be between 1 and 86400"):
        load_checks(path)
    path.write_text(base + "outage: {control_refresh: 30}\n")
    assert load_checks(path).outage.control_refresh == 30.0


def test_waiting_for_evidence_adds_no_event() -> None:
    """Nothing is recorded before a kind is known, and a recorded kind stands while
    the diagnosis waits for what settles it (a new evaluator's empty evidence, a
    traceroute of a new failure): no diagnosed event, no change of cause."""
    incident = Incident(3, "web", 0.0, "regional", "regional", ["UG"], ["UG"])
    waiting = Diagnosis("unknown", "waiting for the control's evidence", waiting=True)
    assert not incident.diagnose({"UG": waiting}, 1.0)
    assert incident.diagnose({"UG": Diagnosis("dns", "lie")}, 2.0)
    assert not incident.diagnose({"UG": waiting}, 2.5)
    assert (incident.diagnosis["UG"]["kind"], incident.cause) == ("dns", "blocking")
    assert incident.diagnose({"UG": Diagnosis("unknown", "matches the control")}, 3.0)
    assert [e.kind for e in incident.timeline if e.event == "diagnosed"] == ["dns", "unknown"]


def test_a_kind_from_an_earlier_down_period_is_not_kept_while_waiting() -> None:
    """UG was blocked (dns), recovered, and is down again in the same incident:
    while its new diagnosis waits, the old kind is not its current one."""
    incident = Incident(3, "web", 0.0, "regional", "regional", ["UG"], ["UG"])
    waiting = Diagnosis("unknown", "waiting for evidence from the failing agents", waiting=True)
    assert incident.diagnose({"UG": Diagnosis("dns", "lie")}, 1.0)
    IncidentBook._transition(incident, [], "regional", 1.5)  # UG recovers
    IncidentBook._transition(incident, ["UG"], "regional", 1.8)  # and is down again
    assert Incident.from_row(incident.to_row()).past_kinds == {"UG"}  # kept across a restart
    assert incident.diagnose({"UG": waiting}, 2.0)
    assert (incident.diagnosis["UG"]["kind"], incident.cause) == ("unknown", "unknown")
    assert not incident.diagnose({"UG": waiting}, 3.0)
    assert incident.diagnose({"UG": Diagnosis("path", "path lost")}, 4.0)
    assert "UG" not in incident.past_kinds
    assert not incident.diagnose({"UG": waiting}, 5.0)  # this down period's kind stands
    assert incident.diagnosis["UG"]["kind"] == "path"


@pytest.mark.parametrize("waiting_first", [True, False])
def test_an_unknown_waits_only_if_every_agents_unknown_waits(waiting_first: bool) -> None:
    """Two NG agents: one's connects time out (its traceroute pending), the other's
    evidence matches the control's. The country's unknown is settled, whichever
    agent's evidence the book holds first."""
    book = EvidenceBook()
    diagnoser = Diagnoser(book, ASNS)
    book.observe("web", "ke1", "KE", evidence(success=True), 10.0)
    reports = [("ng1", evidence(tcp="timeout")), ("ng2", evidence())]
    for agent, seen in reports if waiting_first else reports[::-1]:
        book.observe("web", agent, "NG", seen, 100.0)
    result = diagnoser.diagnose_check("web", [CountryInput("NG", False)], {"ke1": 101.0}, 101.0)
    assert result["NG"].kind == "unknown" and not result["NG"].waiting, result["NG"]


def _mmdb_value(value: object) -> bytes:
    """One MaxMind DB data-section value (the few types the test file needs)."""
    if isinstance(value, str):
        raw = value.encode()
        assert len(raw) < 29
        return bytes([(2 << 5) | len(raw)]) + raw
    if isinstance(value, dict):
        return bytes([(7 << 5) | len(value)]) + b"".join(
            _mmdb_value(k) + _mmdb_value(v) for k, v in value.items()
        )
    if isinstance(value, list):  # array: extended type 11
        return bytes([len(value), 11 - 7]) + b"".join(_mmdb_value(v) for v in value)
    kind, number = value if isinstance(value, tuple) else ("u32", value)
    assert isinstance(number, int)
    raw = number.to_bytes(8, "big").lstrip(b"\0")
    if kind == "u64":  # extended type 9
        return bytes([len(raw), 9 - 7]) + raw
    return bytes([({"u16": 5, "u32": 6}[kind] << 5) | len(raw)]) + raw


def write_mmdb(path: Path, prefix: str, bits: int, asn: int) -> None:
    """A one-network IPv4 MaxMind ASN database: a search tree of `bits` nodes, 24-bit records."""
    import ipaddress

    network = int(ipaddress.ip_address(prefix))
    nodes, empty = bits, bits
    data = _mmdb_value({"autonomous_system_number": asn})
    pointer = nodes + 16  # data offset 0, after the 16-byte separator
    tree = b""
    for depth in range(bits):
        bit = (network >> (31 - depth)) & 1
        follow = pointer if depth == bits - 1 else depth + 1
        left, right = (empty, follow) if bit else (follow, empty)
        tree += left.to_bytes(3, "big") + right.to_bytes(3, "big")
    metadata = {
        "node_count": nodes,
        "record_size": ("u16", 24),
        "ip_version": ("u16", 4),
        "database_type": "GeoLite2-ASN",
        "languages": ["en"],
        "binary_format_major_version": ("u16", 2),
        "binary_format_minor_version": ("u16", 0),
        "build_epoch": ("u64", 1),
        "description": {"en": "test"},
    }
    path.write_bytes(tree + b"\0" * 16 + data + b"\xab\xcd\xefMaxMind.com" + _mmdb_value(metadata))


def test_maxmind_asn_file(tmp_path: Path) -> None:
    path = tmp_path / "asn.mmdb"
    write_mmdb(path, "203.0.113.0", 24, 64501)
    db = load_asn_db(path)
    assert db.asn("203.0.113.77") == 64501
    assert db.asn("203.0.114.1") is None
    assert db.asn("2001:db8::1") is None  # an IPv4-only database


@pytest.mark.parametrize("control_first", [True, False])
@pytest.mark.parametrize("gap", [0.0, 0.5, 90.0])
def test_arrival_order_does_not_change_the_verdict(control_first: bool, gap: float) -> None:
    """Evidence and control evidence race; whichever lands first, and however far
    apart (within the failing evidence's 300 s life), the final kinds are the same."""
    book = EvidenceBook()
    diagnoser = Diagnoser(book, ASNS)
    reports = [
        ("ke1", "KE", evidence(success=True)),
        ("ug1", "UG", evidence(addrs=("151.101.1.7",))),
        ("et1", "ET", evidence(tcp="refused")),
    ]
    if not control_first:
        reports.reverse()
    at = 100.0
    for agent, country, ev in reports:
        book.observe("web", agent, country, ev, at)
        at += gap
    failing = [CountryInput("UG", False), CountryInput("ET", False)]
    result = diagnoser.diagnose_check("web", failing, {"ke1": at}, at)
    assert {cc: d.kind for cc, d in result.items()} == {"UG": "dns", "ET": "tcp_blocking"}
    # a control whose last success started before the failure was seen proves nothing yet
    stale = diagnoser.diagnose_check("web", failing, {"ke1": 99.0}, at)
    assert {d.kind for d in stale.values()} == {"unknown"}


def test_requests_go_to_agents_that_announced_evidence() -> None:
    from probemesh.collector.samples import NO_SAMPLES
    from probemesh.collector.state import AgentInfo, Latest

    asked: list[tuple[str, bool]] = []
    diagnoser = Diagnoser(EvidenceBook(), ASNS, lambda a, r: asked.append((a, r.path)) is None)
    agents = {
        "ug1": AgentInfo("ug1", "UG", connected=True, features=("evidence",)),
        "ke1": AgentInfo("ke1", "KE", connected=True, features=("evidence",)),
        "ke2": AgentInfo("ke2", "KE", connected=True, features=("clock_echo",)),  # older agent
        "de1": AgentInfo("de1", "DE", connected=False, features=("evidence",)),
    }
    latest = {
        "ug1": Latest(False, "timeout", "", 1.0, 1.0, "UG", "", *NO_SAMPLES, ""),
        "ke2": Latest(True, "", "", 0.1, 1.0, "KE", "", *NO_SAMPLES, ""),
        "ke1": Latest(True, "", "", 0.1, 1.0, "KE", "", *NO_SAMPLES, ""),
        "de1": Latest(True, "", "", 0.1, 1.0, "DE", "", *NO_SAMPLES, ""),
    }
    candidates = askable(latest, agents)
    assert candidates == {"ug1": ("UG", False), "ke1": ("KE", True)}
    diagnoser.ask("web", candidates, {"UG"}, {"KE", "DE"}, 300.0, 10.0)
    assert sorted(asked) == [("ke1", False), ("ug1", True)]
    diagnoser.ask("web", candidates, {"UG"}, {"KE", "DE"}, 300.0, 20.0)
    assert len(asked) == 2  # asked 10 s ago, no answer yet: not again before 30 s
    diagnoser.ask("web", candidates, {"UG"}, {"KE", "DE"}, 300.0, 41.0)
    assert len(asked) == 4


def test_failing_evidence_from_an_earlier_failure_is_not_used() -> None:
    """UG failed (a lie), recovered (its control evidence is newer), fails again: until
    new evidence arrives its kind is unknown, not the old failure's."""
    book = EvidenceBook()
    diagnoser = Diagnoser(book, ASNS)
    book.observe("web", "ug1", "UG", evidence(addrs=("151.101.1.7",)), 100.0)
    book.observe("web", "ke1", "KE", evidence(success=True), 100.0)
    failing = [CountryInput("UG", False)]
    assert diagnoser.diagnose_check("web", failing, {"ke1": 150.0}, 150.0)["UG"].kind == "dns"
    book.observe("web", "ug1", "UG", evidence(success=True), 160.0)  # asked as a control
    result = diagnoser.diagnose_check("web", failing, {"ke1": 170.0}, 170.0)
    assert result["UG"] == Diagnosis(
        "unknown", "waiting for evidence from the failing agents", waiting=True
    )
    book.observe("web", "ug1", "UG", evidence(tcp="refused"), 171.0)
    assert (
        diagnoser.diagnose_check("web", failing, {"ke1": 172.0}, 172.0)["UG"].kind == "tcp_blocking"
    )


def traceroute(ev: pb.Evidence, lost_after: str = "", unavailable: str = "") -> pb.Evidence:
    """ev with a traceroute: lost after that hop, else reaching the target."""
    if unavailable:
        ev.path.unavailable_reason = unavailable
        return ev
    ev.path.available, ev.path.destination = True, ORIGIN
    ev.path.hops.add(ttl=1, address="192.0.2.1")
    if lost_after:
        ev.path.hops.add(ttl=2, address=lost_after)
    else:
        ev.path.reached = True
        ev.path.hops.add(ttl=2, address=ORIGIN)
    return ev


def test_a_traceroute_from_before_the_failure_does_not_judge_it() -> None:
    """NG's agent traced the check during an earlier failure (the origin's 500s:
    the path reached the target), recovered, and now its connects time out. Its
    agent traces a check at most every few minutes, so the first evidence of
    the new failure comes without a traceroute: the old one says nothing of
    this failure. The kind is unknown until one taken since arrives, not
    tcp_blocking (a block in NG) for a path lost further on."""
    book = EvidenceBook()
    diagnoser = Diagnoser(book, ASNS)
    book.observe("web", "ke1", "KE", evidence(success=True), 10.0)
    book.observe("web", "ng1", "NG", traceroute(evidence(http=pb.HttpEvidence(status=500))), 100.0)
    book.recover("web", "ng1", 150.0)
    book.observe("web", "ng1", "NG", evidence(tcp="timeout"), 200.0)
    failing = [CountryInput("NG", False)]
    waiting = diagnoser.diagnose_check("web", failing, {"ke1": 201.0}, 201.0)["NG"]
    assert waiting.kind == "unknown" and waiting.detail.endswith(AWAITING_PATH), waiting
    assert "timeout while the control connects" in waiting.detail
    book.observe("web", "ng1", "NG", traceroute(evidence(tcp="timeout"), "203.0.113.1"), 210.0)
    lost = diagnoser.diagnose_check("web", failing, {"ke1": 211.0}, 211.0)["NG"]
    assert (lost.kind, lost.hop) == ("path", "203.0.113.1")
    # a traceroute of this failure that reaches the target: a block in NG
    book.observe("web", "ng1", "NG", traceroute(evidence(tcp="timeout")), 220.0)
    assert diagnoser.diagnose_check("web", failing, {"ke1": 221.0}, 221.0)["NG"].kind == (
        "tcp_blocking"
    )


def test_a_traceroute_from_while_the_connects_succeeded_does_not_judge_timeouts() -> None:
    """The same failure, another way: NG's agent saw the origin's 500s (its
    traceroute reached the target), then its connects time out without a
    success in between. That traceroute says nothing of the timeouts."""
    book = EvidenceBook()
    diagnoser = Diagnoser(book, ASNS)
    book.observe("web", "ke1", "KE", evidence(success=True), 10.0)
    book.observe("web", "ng1", "NG", traceroute(evidence(http=pb.HttpEvidence(status=500))), 100.0)
    book.observe("web", "ng1", "NG", evidence(tcp="timeout"), 200.0)
    failing = [CountryInput("NG", False)]
    waiting = diagnoser.diagnose_check("web", failing, {"ke1": 201.0}, 201.0)["NG"]
    assert waiting.waiting and waiting.detail.endswith(AWAITING_PATH), waiting
    book.observe("web", "ng1", "NG", traceroute(evidence(tcp="timeout"), "203.0.113.1"), 230.0)
    assert diagnoser.diagnose_check("web", failing, {"ke1": 231.0}, 231.0)["NG"].kind == "path"


def test_an_agent_that_cannot_trace_is_not_waited_for() -> None:
    book = EvidenceBook()
    diagnoser = Diagnoser(book, ASNS)
    book.observe("web", "ke1", "KE", evidence(success=True), 10.0)
    cannot = traceroute(evidence(tcp="timeout"), unavailable="needs CAP_NET_RAW")
    book.observe("web", "ng1", "NG", cannot, 200.0)
    blocked = diagnoser.diagnose_check("web", [CountryInput("NG", False)], {"ke1": 201.0}, 201.0)
    assert blocked["NG"].kind == "tcp_blocking"
    assert blocked["NG"].detail.endswith("; path: unavailable (needs CAP_NET_RAW)")


def test_a_recovery_report_retires_failing_evidence() -> None:
    """An agent that recovered without being asked as a control says so; when it fails
    again its old evidence (another failure) is not used while the new one is gathered."""
    book = EvidenceBook()
    diagnoser = Diagnoser(book, ASNS)
    book.observe("web", "ke1", "KE", evidence(success=True), 10.0)
    book.observe("web", "gh1", "GH", evidence(http=pb.HttpEvidence(status=500)), 100.0)
    failing = [CountryInput("GH", False)]
    assert diagnoser.diagnose_check("web", failing, {"ke1": 101.0}, 101.0)["GH"].kind == "http_diff"
    book.recover("web", "gh1", 110.0)
    waiting = diagnoser.diagnose_check("web", failing, {"ke1": 120.0}, 120.0)["GH"]
    assert waiting == Diagnosis(
        "unknown", "waiting for evidence from the failing agents", waiting=True
    )


@pytest.mark.parametrize("refreshed_at", [106.0, 160.0, 299.0])
def test_evidence_refreshed_during_the_same_failure_keeps_its_kind(refreshed_at: float) -> None:
    """A failing agent sends fresh evidence every minute while its failure goes
    on. A control that succeeded after the failure began still counts, so the
    kind does not turn unknown (and back, each change an incident event) at
    every refresh while the controls wait for their next probe."""
    book = EvidenceBook()
    diagnoser = Diagnoser(book, ASNS)
    book.observe("web", "ke1", "KE", evidence(success=True), 10.0)
    book.observe("web", "et1", "ET", evidence(tcp="refused"), 100.0)
    failing = [CountryInput("ET", False)]
    controls = {"ke1": 105.0}  # the control's last success started after the failure began
    assert diagnoser.diagnose_check("web", failing, controls, 106.0)["ET"].kind == "tcp_blocking"
    book.observe("web", "et1", "ET", evidence(tcp="refused"), refreshed_at)
    now = refreshed_at + 1.0
    assert diagnoser.diagnose_check("web", failing, controls, now)["ET"].kind == "tcp_blocking"


def test_a_checks_diagnosis_is_worked_out_again_when_its_inputs_change() -> None:
    """Each round reuses a needy check's diagnosis until its evidence or its
    countries change, or it is DIAGNOSE_EVERY seconds old: working it out is a
    pass over the check's agents, every round for every failing check."""
    mesh = ScriptedMesh()
    book = EvidenceBook()
    diagnoser = mesh.monitor.diagnoser = Diagnoser(book, ASNS)
    worked_out: list[str] = []
    real = diagnoser.diagnose_check

    def counting(check: str, *args: object) -> dict[str, Diagnosis]:
        worked_out.append(check)
        return real(check, *args)  # type: ignore[arg-type]

    diagnoser.diagnose_check = counting  # type: ignore[method-assign]
    for _ in range(5):
        mesh.round(web={"UG": "timeout"})
    assert mesh.country_states()["UG"] == "down"
    assert worked_out[-1:] == ["web"]
    assert mesh.monitor.diagnoses["web"]["UG"].kind == "unknown"

    def again(seconds: float) -> list[str]:
        worked_out.clear()
        mesh.now += seconds
        mesh.monitor.evaluate()
        return list(worked_out)

    assert again(1.0) == []  # nothing changed
    # evidence arrives: at once; the controls' latest probes started before
    # UG's failure was reported, so every round until one probes again
    book.observe("web", "a-ug", "UG", evidence(addrs=("151.101.1.7",)), mesh.now)
    book.observe("web", "a-de", "DE", evidence(success=True), mesh.now)
    assert again(1.0) == ["web"]
    assert mesh.monitor.diagnoses["web"]["UG"].detail == AWAITING_CONTROL_PROBE
    assert again(1.0) == ["web"]
    mesh.state.apply(mesh.state.agents["a-de"], result("web", mesh.now + 0.5, ""))
    assert again(1.0) == ["web"]
    assert mesh.monitor.diagnoses["web"]["UG"].kind == "dns"
    assert again(1.0) == []
    assert mesh.monitor.diagnoses["web"]["UG"].kind == "dns"  # the same answer, kept
    assert again(DIAGNOSE_EVERY) == ["web"]  # evidence ages: worked out again in time
    assert again(-60.0) == ["web"]  # the clock stepped back: not kept until it comes back
    assert again(1.0) == []
    book.forget_agent("a-de")  # the control's evidence goes with its agent
    assert again(1.0) == ["web"]
    assert mesh.monitor.diagnoses["web"]["UG"].kind == "unknown"
    book.recover("web", "a-ug", mesh.now)
    assert again(0.5) == ["web"]
    # UG recovers: no longer failing, nothing to diagnose from the next round on
    mesh.round()
    while mesh.country_states().get("UG") != "up":
        mesh.round()
    assert "web" not in mesh.monitor.diagnoses
