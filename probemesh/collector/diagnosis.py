"""Why a check fails in a country, and where: one ``kind`` per failing country.

The failing agents' evidence (agent/evidence.py) is compared with a control:
the latest evidence of agents of the same check in countries where it
succeeds. The rules follow OONI web_connectivity's published analysis; the
thresholds and their anchors are listed in docs/outages.md. In order:

1. ``local``: every fresh agent of the country has a local problem.
2. No control succeeds anywhere: an answer from the target (HTTP status, TLS
   failure, refusal, NXDOMAIN) is ``origin``; a traceroute that stops before
   the target is ``path``; anything else ``unknown``.
3. DNS inconsistent with the control (an error where the control resolves, or
   addresses that differ from the control's with no shared ASN, no TLS
   handshake valid for the name, or that are bogons): ``dns``.
4. Every connect refused or reset while the control connects: ``tcp_blocking``;
   every connect timing out or unreachable: ``path`` when the traceroute
   stops at a hop before the target, ``tcp_blocking`` when it reaches the
   target or the agent cannot trace, and ``unknown`` until a traceroute taken
   since the failure began arrives (one from before says nothing of it).
5. The handshake fails, or presents another certificate not valid for the
   name, while the control's handshake completes: ``tls_interference``.
6. A response that does not match the control's (status, then body length
   proportion > 0.7, uncommon header names, title words): ``http_diff``.
7. A traceroute that stops before the target: ``path``; otherwise ``unknown``.

The evaluator asks agents for evidence (EvidenceRequest) when a country of a
check is failing: failing agents whose evidence is missing or old, and a few
control agents whose control evidence is older than ``control_refresh``.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from probemesh.collector.asn import AsnLookup
from probemesh.collector.evidence import EvidenceBook, Observed
from probemesh.collector.state import AgentInfo, Latest
from probemesh.v1 import mesh_pb2 as pb

KINDS = (
    "origin",
    "dns",
    "tcp_blocking",
    "tls_interference",
    "http_diff",
    "path",
    "local",
    "unknown",
)
BLOCKING = frozenset({"dns", "tcp_blocking", "tls_interference", "http_diff"})
# OONI web_connectivity: bodies "match" when the shorter is more than 70% of the longer.
BODY_PROPORTION = 0.7
# OONI web_connectivity: only title words of at least 5 characters are compared.
TITLE_WORD_MIN = 5
# OONI web_connectivity's list of header names too common to tell servers apart,
# plus the framing and hop-by-hop ones (any HTTP/1.1 server sends those).
COMMON_HEADERS = frozenset(
    {
        "date", "content-type", "server", "cache-control", "vary", "set-cookie", "location",
        "expires", "x-powered-by", "content-encoding", "last-modified", "accept-ranges",
        "pragma", "x-frame-options", "etag", "x-content-type-options", "age", "via", "p3p",
        "x-xss-protection", "content-language", "cf-ray", "strict-transport-security", "link",
        "x-varnish", "content-length", "connection", "keep-alive", "transfer-encoding",
    }
)  # fmt: skip
EVIDENCE_FEATURE = "evidence"  # protocol feature: the agent reports and answers for evidence
FAILING_MAX_AGE = 300.0  # failing evidence older than this is asked for again
PATH_MAX_AGE = 900.0  # a traceroute older than this no longer explains a failure
CONTROL_AGENTS = 5  # control agents asked per check (distinct countries first)
_CONNECT_FAILED = frozenset({"refused", "reset", "timeout", "unreachable"})


AWAITING_CONTROL_PROBE = "waiting for a control probe that started after the failure"
"""A diagnosis that the controls' next successful probes settle, not evidence:
the outage round works it out again every round until they do."""
AWAITING_PATH = "waiting for a traceroute taken since the failure began"
"""Connects time out: blocked here, or a path lost further on. The agent's
next evidence report with a traceroute settles it (an evidence change)."""


@dataclass(frozen=True)
class PathHop:
    """One TTL of the last traceroute, as shown on the status page."""

    ttl: int
    address: str
    rtt_seconds: float
    asn: int | None


@dataclass(frozen=True)
class Diagnosis:
    """One failing country's kind, with where it happens when that is known."""

    kind: str
    detail: str
    hop: str | None = None
    asn: int | None = None
    path: tuple[PathHop, ...] = ()
    # unknown only until what settles it arrives (evidence, a control's probe,
    # a traceroute): an incident keeps the kind it recorded meanwhile
    waiting: bool = False

    def to_json(self, with_path: bool = False) -> dict[str, object]:
        body: dict[str, object] = {
            "kind": self.kind,
            "detail": self.detail,
            "hop": self.hop,
            "asn": self.asn,
        }
        if with_path:
            body["path"] = [
                {
                    "ttl": h.ttl,
                    "address": h.address or None,
                    "rtt_seconds": h.rtt_seconds,
                    "asn": h.asn,
                }
                for h in self.path
            ]
        return body


def is_bogon(address: str) -> bool:
    """Addresses no public name should resolve to (private, loopback, reserved, ...)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return True
    return not ip.is_global


def _words(title: str) -> set[str]:
    return {w.lower() for w in title.split() if len(w) >= TITLE_WORD_MIN}


def http_matches(seen: pb.HttpEvidence, control: pb.HttpEvidence) -> bool:
    """OONI's HTTP comparison: the status must match, then the body length, headers or title."""
    if seen.status != control.status:
        return False
    if (
        seen.body_length > 0
        and control.body_length > 0
        and not (seen.body_truncated or control.body_truncated)
    ):
        short, long_ = sorted((seen.body_length, control.body_length))
        if short / long_ > BODY_PROPORTION:
            return True
    ours, theirs = set(seen.header_names), set(control.header_names)
    if ours and theirs and (ours == theirs or (ours & theirs) - COMMON_HEADERS):
        return True
    a, b = _words(seen.title), _words(control.title)
    return bool(a or b) and a == b


def _lost_path(path: pb.PathEvidence) -> str | None:
    """The last answering hop of a traceroute that stopped before the target, or None."""
    if not path.available or path.reached:
        return None
    answered = [h.address for h in path.hops if h.address and h.address != path.destination]
    return answered[-1] if answered else None


def _path_of(failure: Observed, latest: Observed | None, now: float) -> Observed | None:
    """The agent's traceroute that speaks of this failure, or None: one that came
    since the failure was first reported, younger than PATH_MAX_AGE, with
    evidence whose connects failed as this failure's do. A traceroute from
    before (an agent traces a check at most every few minutes), or from while
    the connects still succeeded (the same failure, another way), reached a
    target that was then reachable, or stopped where the path was then lost.
    One that says the agent cannot trace counts: it is not waited for again."""
    if latest is None or latest.received < failure.since or now - latest.received > PATH_MAX_AGE:
        return None
    if _connects_failed(latest.evidence) != _connects_failed(failure.evidence):
        return None
    return latest


def _connects_failed(seen: pb.Evidence) -> bool:
    return bool(seen.tcp) and all(t.outcome in _CONNECT_FAILED for t in seen.tcp)


def _path_note(path: Observed | None) -> str:
    """'; path: unavailable (why)' when the agent could not trace, so readers know why no hop."""
    if path is None or path.evidence.path.available:
        return ""
    return f"; path: unavailable ({path.evidence.path.unavailable_reason})"


def _describe_http(h: pb.HttpEvidence) -> str:
    title = f", title {h.title[:60]!r}" if h.title else ""
    return f"HTTP {h.status}, {h.body_length} bytes{title}"


class Rules:
    """Applies the rules to one failing agent's evidence against the control."""

    def __init__(self, asn: AsnLookup) -> None:
        self.asn = asn

    def path_diagnosis(self, path: Observed | None, detail_prefix: str = "") -> Diagnosis | None:
        if path is None:
            return None
        hop = _lost_path(path.evidence.path)
        if hop is None:
            return None
        asn = self.asn.asn(hop)
        where = f"{hop} (AS{asn})" if asn else hop
        return Diagnosis(
            "path", f"{detail_prefix}path lost after {where}", hop, asn, self.hops(path)
        )

    def hops(self, path: Observed | None) -> tuple[PathHop, ...]:
        if path is None:
            return ()
        return tuple(
            PathHop(h.ttl, h.address, h.rtt_seconds, self.asn.asn(h.address) if h.address else None)
            for h in path.evidence.path.hops
        )

    def no_control(self, seen: pb.Evidence, path: Observed | None) -> Diagnosis:
        """Nobody succeeds: the target's own answers point at the origin."""
        answer = _target_answer(seen)
        if answer:
            return Diagnosis("origin", answer, path=self.hops(path))
        lost = self.path_diagnosis(path)
        if lost is not None:
            return lost
        return Diagnosis(
            "unknown", "no country reaches the target and the evidence does not say why"
        )

    def against(
        self,
        seen: pb.Evidence,
        controls: list[pb.Evidence],
        path: Observed | None,
        awaiting_path: bool = False,
    ) -> Diagnosis:
        """Compare one failing agent's evidence with the controls'. path: the
        agent's traceroute of this failure (or the note that it cannot trace);
        awaiting_path: none yet, and one will come."""
        hops = self.hops(path)
        verdict = self._dns(seen, controls)
        if verdict:
            return Diagnosis("dns", verdict, path=hops)
        control_connects = any(t.outcome == "established" for c in controls for t in c.tcp)
        tried = list(seen.tcp)
        if tried and control_connects and all(t.outcome in _CONNECT_FAILED for t in tried):
            first = tried[0]
            if first.outcome in ("refused", "reset"):
                return Diagnosis(
                    "tcp_blocking",
                    f"connect to {first.address}:{first.port} {first.outcome} "
                    "while the control connects",
                    path=hops,
                )
            lost = self.path_diagnosis(path)
            if lost is not None:
                return lost
            code = f" (ICMP code {first.icmp_code})" if first.outcome == "unreachable" else ""
            failed = f"connect to {first.address}:{first.port} {first.outcome}{code}"
            if awaiting_path:  # blocking here, or a path lost further on: the traceroute tells
                return Diagnosis(
                    "unknown", f"{failed} while the control connects; {AWAITING_PATH}", waiting=True
                )
            return Diagnosis(
                "tcp_blocking",
                f"{failed} while the control connects{_path_note(path)}",
                path=hops,
            )
        if any(t.outcome == "reset" for t in tried) and control_connects:
            reset = next(t for t in tried if t.outcome == "reset")
            return Diagnosis(
                "tcp_blocking",
                f"connection to {reset.address}:{reset.port} reset after connect "
                "while the control's completes",
                path=hops,
            )
        verdict = self._tls(seen, controls)
        if verdict:
            return Diagnosis("tls_interference", verdict, path=hops)
        controls_http = [c.http for c in controls if c.HasField("http") and c.http.status > 0]
        if (
            seen.HasField("http")
            and seen.http.status > 0
            and controls_http
            and not any(http_matches(seen.http, c) for c in controls_http)
        ):
            return Diagnosis(
                "http_diff",
                f"{_describe_http(seen.http)} where the control sees "
                f"{_describe_http(controls_http[0])}",
                path=hops,
            )
        lost = self.path_diagnosis(path)
        if lost is not None:
            return lost
        if seen.HasField("http") and not seen.http.status and controls_http:
            return Diagnosis(
                "unknown",
                f"no HTTP response ({seen.http.error}) where the control gets HTTP "
                f"{controls_http[0].status}",
                path=hops,
            )
        return Diagnosis("unknown", "the evidence matches the control's", path=hops)

    def _dns(self, seen: pb.Evidence, controls: list[pb.Evidence]) -> str:
        if not seen.HasField("dns"):
            return ""
        control_addrs = {a for c in controls if c.HasField("dns") for a in c.dns.addresses}
        if not control_addrs:
            return ""
        dns = seen.dns
        resolver = f"resolver {dns.resolver}" if dns.resolver else "the resolver"
        if not dns.addresses:
            return f"{resolver} answered {dns.rcode or 'nothing'} where the control resolves"
        differing = [a for a in dns.addresses if a not in control_addrs]
        if not differing:
            return ""
        control_bogons = any(is_bogon(a) for a in control_addrs)
        bogons = [a for a in differing if is_bogon(a)]
        if bogons and not control_bogons:
            return f"{resolver} answered bogon {bogons[0]} where the control resolves {sorted(control_addrs)[0]}"
        tls = seen.tls
        if tls.outcome == "ok" and tls.name_matches:
            differing = [a for a in differing if a != tls.address]
        control_asns = {n for n in (self.asn.asn(a) for a in control_addrs) if n}
        if control_asns:
            differing = [a for a in differing if self.asn.asn(a) not in control_asns]
        if not differing:
            return ""
        asn = self.asn.asn(differing[0])
        as_text = f" (AS{asn})" if asn else ""
        return (
            f"{resolver} answered {differing[0]}{as_text} where the control resolves "
            f"{', '.join(sorted(control_addrs)[:3])}"
        )

    @staticmethod
    def _tls(seen: pb.Evidence, controls: list[pb.Evidence]) -> str:
        if not seen.HasField("tls"):
            return ""
        good = [c.tls for c in controls if c.HasField("tls") and c.tls.outcome == "ok"]
        if not good:
            return ""
        tls = seen.tls
        if tls.outcome != "ok":
            return f"TLS handshake failed ({tls.error}) while the control's completes"
        leaves = {c.leaf_sha256 for c in good if c.leaf_sha256}
        if tls.leaf_sha256 and leaves and tls.leaf_sha256 not in leaves and not tls.name_matches:
            return (
                f"certificate {tls.leaf_sha256[:16]}... is not valid for {tls.server_name} "
                "and differs from the control's"
            )
        return ""


def _target_answer(seen: pb.Evidence) -> str:
    """A description of the target's own answer, when the evidence holds one."""
    if seen.HasField("http") and seen.http.status > 0:
        return f"HTTP {seen.http.status}"
    if seen.HasField("tls") and seen.tls.outcome == "failed":
        return f"TLS failed ({seen.tls.error})"
    if any(t.outcome == "refused" for t in seen.tcp):
        return "connection refused"
    if (
        seen.HasField("dns")
        and seen.dns.rcode in ("NXDOMAIN", "SERVFAIL")
        and not seen.dns.addresses
    ):
        return f"DNS {seen.dns.rcode}"
    return ""


@dataclass(frozen=True)
class CountryInput:
    """What the diagnoser needs to know about one failing country."""

    country: str
    local_only: bool  # every fresh agent has a local problem


class Diagnoser:
    """Diagnoses the failing countries of every check; asks agents for evidence."""

    def __init__(
        self,
        book: EvidenceBook,
        asn: AsnLookup,
        request: Callable[[str, pb.EvidenceRequest], bool] | None = None,
    ) -> None:
        self.book = book
        self.rules = Rules(asn)
        self.request = request
        # check -> when the failure of its latest-starting failing country began, as
        # diagnose_check last worked it out: ask's controls must have reported since
        self.began: dict[str, float] = {}

    def diagnose_check(
        self,
        check: str,
        failing: Iterable[CountryInput],
        control_agents: Mapping[str, float],
        now: float,
    ) -> dict[str, Diagnosis]:
        """One Diagnosis per failing country of check.

        ``control_agents`` maps the agents in up countries whose latest probe
        succeeded to that probe's time. Only a success that started after the
        failing country's failure was first reported counts (evidence refreshed
        while that failure goes on keeps the time): a country still counted up
        (its verdict waits for a second round) may just not have probed since
        the failure began, and an origin failing everywhere must not look like
        a difference between countries. Until one does, the kind is unknown.
        """
        book = self.book
        failing_evidence: dict[str, list[Observed]] = {}
        for key, o in book.failing.items():
            if key[0] != check or now - o.received > FAILING_MAX_AGE:
                continue
            if book.failure_over(key, o):
                continue
            failing_evidence.setdefault(o.country, []).append(o)
        out: dict[str, Diagnosis] = {}
        began = 0.0
        for country in failing:
            observed = failing_evidence.get(country.country, [])
            if country.local_only or not observed:
                out[country.country] = self._country(check, country, observed, [], now)
                continue
            since = min(o.since for o in observed)
            began = max(began, since)
            fresh = [a for a, at in control_agents.items() if at >= since]
            controls = [
                book.control[(check, a)].evidence for a in fresh if (check, a) in book.control
            ]
            if control_agents and not fresh:
                out[country.country] = Diagnosis("unknown", AWAITING_CONTROL_PROBE, waiting=True)
            elif fresh and not controls:
                out[country.country] = Diagnosis(
                    "unknown", "waiting for the control's evidence", waiting=True
                )
            else:
                out[country.country] = self._country(check, country, observed, controls, now)
        _note_shared_hops(out)
        self.began[check] = began
        return out

    def _country(
        self,
        check: str,
        country: CountryInput,
        observed: list[Observed],
        controls: list[pb.Evidence],
        now: float,
    ) -> Diagnosis:
        if country.local_only:
            return Diagnosis(
                "local", "every agent here has a local problem (it fails nearly every check)"
            )
        if not observed:
            return Diagnosis(
                "unknown", "waiting for evidence from the failing agents", waiting=True
            )
        verdicts = []
        for o in observed:
            latest = self.book.paths.get((check, o.agent))
            path = _path_of(o, latest, now)
            if controls:
                awaiting = path is None  # every failing agent traces (or says it cannot)
                verdicts.append(self.rules.against(o.evidence, controls, path, awaiting))
            else:
                verdicts.append(self.rules.no_control(o.evidence, path))
        counts = Counter(v.kind for v in verdicts)
        kind = min(counts, key=lambda k: (-counts[k], KINDS.index(k)))
        same = [v for v in verdicts if v.kind == kind]
        # unknown waits only if every agent's unknown does, whatever the agents' order
        return next((v for v in same if not v.waiting), same[0])

    def ask(
        self,
        check: str,
        candidates: Mapping[str, tuple[str, bool]],
        failing_countries: set[str],
        up_countries: set[str],
        control_refresh: float,
        now: float,
    ) -> None:
        """Ask failing agents without fresh evidence, and a few controls, for evidence.

        candidates: the agents that can be asked (connected, and answering
        requests), each with its country and whether its latest probe succeeded.
        A control is asked again when its evidence is older than
        ``control_refresh`` or than the failure (``began``, from this check's
        diagnose_check): its answer is a success since the failure began, which
        is all a mesh's evaluator knows of an agent another collector serves.
        """
        if self.request is None:
            return
        book = self.book
        retry = min(control_refresh, 30.0)
        began = self.began.get(check, 0.0)
        controls_asked: set[str] = set()
        for agent_id, (country, success) in sorted(candidates.items()):
            key = (check, agent_id)
            asked = book.requested.get(key)
            if country in failing_countries and not success:
                have = book.failing.get(key)
                if (
                    have is not None
                    and now - have.received <= FAILING_MAX_AGE / 2
                    and not book.failure_over(key, have)
                ):
                    continue
                if asked is not None and now - asked < retry:
                    continue
                if self.request(agent_id, pb.EvidenceRequest(check=check, path=True)):
                    book.requested[key] = now
            elif country in up_countries and success:
                if country in controls_asked or len(controls_asked) >= CONTROL_AGENTS:
                    continue
                controls_asked.add(country)
                have = book.control.get(key)
                if (
                    have is not None
                    and now - have.received <= control_refresh
                    and have.received >= began
                ):
                    continue
                if asked is not None and now - asked < retry:
                    continue
                if self.request(agent_id, pb.EvidenceRequest(check=check, path=False)):
                    book.requested[key] = now


def askable(
    latest: Mapping[str, Latest], agents: Mapping[str, AgentInfo]
) -> dict[str, tuple[str, bool]]:
    """Diagnoser.ask's candidates among the agents connected here: an older agent,
    without the evidence feature, would ignore a request."""
    out = {}
    for agent_id, entry in latest.items():
        info = agents.get(agent_id)
        if info is not None and info.connected and EVIDENCE_FEATURE in info.features:
            out[agent_id] = (entry.country, entry.success)
    return out


def _note_shared_hops(diagnoses: dict[str, Diagnosis]) -> None:
    """Say so when several countries lose the path at the same hop or AS."""
    groups: dict[str, list[str]] = {}
    for country, d in diagnoses.items():
        if d.kind == "path" and d.hop:
            groups.setdefault(f"AS{d.asn}" if d.asn else d.hop, []).append(country)
    for where, countries in groups.items():
        if len(countries) < 2:
            continue
        for country in countries:
            d = diagnoses[country]
            others = ", ".join(sorted(c for c in countries if c != country))
            what = "AS" if where.startswith("AS") else "hop"
            diagnoses[country] = Diagnosis(
                d.kind, f"{d.detail}; same {what} as {others}", d.hop, d.asn, d.path
            )


def cause_of(kinds: Iterable[str]) -> str:
    """An incident's cause from its down countries' kinds."""
    found = set(kinds)
    if not found or found == {"unknown"}:
        return "unknown"
    if found == {"origin"}:
        return "origin"
    if found <= BLOCKING:
        return "blocking"
    if found == {"path"}:
        return "path"
    return "mixed"
