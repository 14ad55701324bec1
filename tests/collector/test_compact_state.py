"""The compact per-pair forms render exactly what the result said.

Kept samples are stored as a shared key tuple and packed doubles; these tests
build the expected exposition lines straight from the protobuf samples (the
value's own repr, the labels as sent) and compare them byte for byte.
"""

from __future__ import annotations

import math

from probemesh.collector.exposition import (
    FAILURE_REASONS,
    FAILURES,
    REFUSED,
    RESULTS,
    SUCCESS,
    FamilyText,
    GaugeRows,
    counter_pieces,
    counter_rows,
    escape,
    gauge_pieces,
    header,
)
from probemesh.collector.samples import NO_SAMPLES, SampleFilter, sample_items
from probemesh.collector.state import NO_REASONS, AgentInfo, MeshState
from probemesh.v1 import mesh_pb2 as pb

# Values whose text a lossy or single-precision store would change.
AWKWARD = [
    0.1, 0.30000000000000004, 1e-300, 5e-324, -0.0, 1.7976931348623157e308,
    1.8e9, 123456789.123456789, 2.0**53 + 1, -7.25, 0.0,
]  # fmt: skip
BASE = 'check="web",target="https://x.test/?q=\\"1\\"",agent="a",country="DE",region="eu"'
TARGETS = {"web": 'https://x.test/?q=\\"1\\"'}


def awkward_samples() -> list[pb.Sample]:
    phases = ("resolve", "connect", "tls", "processing", "transfer")
    samples = [
        pb.Sample(name="probe_http_duration_seconds", labels={"phase": phase}, value=value)
        for phase, value in zip(phases, AWKWARD, strict=False)
    ]
    names = ("probe_http_status_code", "probe_http_content_length", "probe_http_redirects",
             "probe_http_ssl", "probe_ip_protocol", "probe_ssl_earliest_cert_expiry")  # fmt: skip
    samples += [
        pb.Sample(name=name, value=value) for name, value in zip(names, AWKWARD[5:], strict=True)
    ]
    samples.append(pb.Sample(name="probe_tls_version_info", labels={"version": "TLS 1.3"}, value=1))
    return samples


def expected_lines(samples: list[pb.Sample]) -> dict[str, bytes]:
    """Each family's lines as the text format writes the protobuf values."""
    out: dict[str, str] = {}
    for sample in samples:
        extra = "".join(f',{k}="{escape(v)}"' for k, v in sorted(sample.labels.items()))
        out[sample.name] = out.get(sample.name, "") + (
            f"{sample.name}{{{BASE}{extra}}} {sample.value!r}\n"
        )
    return {name: text.encode() for name, text in out.items()}


def test_kept_samples_keep_every_value_bit_for_bit() -> None:
    samples = awkward_samples()
    filter_ = SampleFilter()
    for _ in range(2):  # the second time through the known-shape path
        kept = filter_.keep(samples)
        items = list(sample_items(kept))
        assert [name for name, _, _ in items] == [s.name for s in samples]
        for (_, _, value), sample in zip(items, samples, strict=True):
            assert value == sample.value and math.copysign(1, value) == math.copysign(
                1, sample.value
            ), "-0.0 keeps its sign"
            assert value.hex() == float(sample.value).hex()


def families(body: bytes) -> dict[str, bytes]:
    """Each family's sample lines in body, which must hold each family once."""
    out: dict[str, bytes] = {}
    name = ""
    for line in body.splitlines(keepends=True):
        if line.startswith(b"# TYPE "):
            name = line.split()[2].decode()
            assert name not in out, f"{name} twice"
            out[name] = b""
        elif not line.startswith(b"#"):
            out[name] += line
    return out


def test_latest_renders_exactly_as_the_result_was_sent() -> None:
    state = MeshState()
    agent = state.agents["a"] = AgentInfo("a", "DE", region="eu")
    filter_ = SampleFilter()
    samples = awkward_samples()
    result = pb.Result(check="web", timestamp=1.0, success=True, duration_seconds=0.1,
                       samples=samples)  # fmt: skip
    state.apply(agent, result, filter_.keep(samples))
    rows = GaugeRows([("web", "a")], [state.latest[("web", "a")]], TARGETS)
    lines = families(b"".join(gauge_pieces(rows, 1 << 19)))
    assert lines.pop("probe_success") == f"probe_success{{{BASE}}} 1.0\n".encode()
    assert lines.pop("probe_duration_seconds") == f"probe_duration_seconds{{{BASE}}} 0.1\n".encode()
    assert lines == expected_lines(samples)


def test_gauges_rendered_at_scrape_time_group_every_family_in_every_slicing() -> None:
    """Pairs of several shapes, a refused one among them: each family's lines come
    together under one header, whatever the piece size, and say what each result said."""
    state = MeshState()
    filter_ = SampleFilter()
    http = awkward_samples()
    dns = [pb.Sample(name="probe_dns_lookup_time_seconds", value=0.25),
           pb.Sample(name="probe_ip_protocol", value=6)]  # fmt: skip
    expected: dict[str, list[str]] = {}
    pairs = []
    for index in range(7):
        agent = state.agents[f"a{index}"] = AgentInfo(f"a{index}", "BR", region='s"p')
        samples = (http, dns, [])[index % 3]
        if index == 4:
            result = pb.Result(check="web", timestamp=1.0, reason=pb.FAILURE_REASON_POLICY,
                               message="private_target: 10.0.0.1 is private")  # fmt: skip
        else:
            result = pb.Result(check="web", timestamp=1.0, success=index % 2 == 0,
                               duration_seconds=index / 3, samples=samples)  # fmt: skip
        state.apply(agent, result, filter_.keep(list(result.samples)))
        pairs.append(("web", f"a{index}"))
        base = BASE.replace('agent="a"', f'agent="a{index}"').replace(
            'country="DE",region="eu"', 'country="BR",region="s\\"p"'
        )
        if index == 4:
            expected.setdefault("probemesh_check_not_runnable", []).append(
                f'probemesh_check_not_runnable{{{base},rule="private_target"}} 1.0\n'
            )
            continue
        expected.setdefault("probe_success", []).append(
            f"probe_success{{{base}}} {float(index % 2 == 0)!r}\n"
        )
        expected.setdefault("probe_duration_seconds", []).append(
            f"probe_duration_seconds{{{base}}} {index / 3!r}\n"
        )
        for sample in samples:
            extra = "".join(f',{k}="{escape(v)}"' for k, v in sorted(sample.labels.items()))
            expected.setdefault(sample.name, []).append(
                f"{sample.name}{{{base}{extra}}} {sample.value!r}\n"
            )
    rows = GaugeRows(pairs, [state.latest[p] for p in pairs], TARGETS)
    for size in (1, 300, 1000, 1 << 19):
        body = b"".join(gauge_pieces(rows, size))
        got = {name: sorted(text.decode().splitlines(keepends=True))
               for name, text in families(body).items()}  # fmt: skip
        assert got == {name: sorted(lines) for name, lines in expected.items()}
        for name in got:
            assert body.count(header(name)) == 1
    assert b"".join(gauge_pieces(GaugeRows([], [], {}), 100)) == b"", "nothing: no families"


def test_results_of_one_shape_share_their_keys_and_differ_in_values() -> None:
    """Two pairs whose results have one shape hold one key tuple; each keeps its own values."""
    state = MeshState()
    agent = state.agents["a"] = AgentInfo("a", "DE")
    filter_ = SampleFilter()
    for check, value in (("one", 200.0), ("two", 503.0)):
        samples = [pb.Sample(name="probe_http_status_code", value=value)]
        result = pb.Result(check=check, timestamp=1.0, success=True, duration_seconds=0.1,
                           samples=samples)  # fmt: skip
        state.apply(agent, result, filter_.keep(samples))
    one, two = state.latest[("one", "a")].samples, state.latest[("two", "a")].samples
    assert one[0] is two[0]
    assert [v for _, _, v in sample_items(one)] == [200.0]
    assert [v for _, _, v in sample_items(two)] == [503.0]


def test_tallies_share_what_they_can_and_write_only_their_own() -> None:
    state = MeshState()
    agent = state.agents["a"] = AgentInfo("a", "DE")
    for check, reason in (("ok", 0), ("down", pb.FAILURE_REASON_TIMEOUT), ("late", 0)):
        result = pb.Result(check=check, timestamp=1.0, success=not reason, duration_seconds=0.1,
                           reason=reason, http_phase_seconds=[0.01] * 5)  # fmt: skip
        state.apply(agent, result, NO_SAMPLES)
    other = state.agents["b"] = AgentInfo("b", "DE")
    state.apply(other, pb.Result(check="ok", timestamp=1.0, success=True, duration_seconds=0.1,
                                 http_phase_seconds=[0.01] * 5), NO_SAMPLES)  # fmt: skip
    state.restore({("failures", "late", "a", "DE", "connect"): 2}, {})
    ok, down, late = (state.tallies[(c, "a")] for c in ("ok", "down", "late"))
    assert NO_REASONS == {}, "the shared empty reasons were never written"
    assert ok.reasons is NO_REASONS
    assert down.reasons == {"timeout": 1} and late.reasons == {"connect": 2}
    assert ok.phase_hists is state.tallies[("ok", "b")].phase_hists, "one per check and country"
    for pair, tally in state.tallies.items():
        assert tally.pair is pair
        latest_key = next(k for k in state.latest if k == pair)
        assert latest_key is pair, "the latest results are keyed by the tally's tuple"
    state.adopt_counters("a", {})
    assert down.reasons is NO_REASONS and NO_REASONS == {}


def expected_counters(rows: list[tuple[str, str, str, int, int, int, dict[str, int]]]) -> bytes:
    """The counter families as the text format writes them, straight from the counts."""
    results, failures, refused = [], [], []
    for check, agent, country, success, failure, refusals, reasons in rows:
        base = f'check="{check}",agent="{agent}",country="{country}"'
        for outcome, count in (("success", success), ("failure", failure)):
            results.append(f'{RESULTS}{{{base},result="{outcome}"}} {float(count)!r}\n')
        for reason in FAILURE_REASONS:
            failures.append(
                f'{FAILURES}{{{base},reason="{reason}"}} {float(reasons.get(reason, 0))!r}\n'
            )
        if refusals:
            refused.append(f"{REFUSED}{{{base}}} {float(refusals)!r}\n")
    text = (
        header(RESULTS) + "".join(results).encode() + header(FAILURES) + "".join(failures).encode()
    )
    return text + (header(REFUSED) + "".join(refused).encode() if refused else b"")


def test_counters_rendered_at_scrape_time_are_the_counts_in_every_slicing() -> None:
    """Counters are rendered from a snapshot of the tallies, a slice at a time."""
    state = MeshState()
    counts = [
        ("web", "a-1", "DE", 0, 0, 0, {}),
        ("web", "a-2", "BR", 3, 2, 0, {"timeout": 1, "http_status": 1}),
        ("dns", "a-1", "DE", 2**53 + 1, 7, 4, {"connect": 7}),
        ("dns", "a-2", "BR", 10**17, 0, 1, {}),
    ]
    for check, agent, country, success, failure, refusals, reasons in counts:
        tally = state.tally(check, agent, country)
        tally.success, tally.failure, tally.refused = success, failure, refusals
        for reason, count in reasons.items():
            tally.own_reasons()[reason] = count
    rows = counter_rows(list(state.tallies.values()))
    state.tallies[("web", "a-1")].success = 99  # after the snapshot: not in this scrape
    state.tallies[("web", "a-2")].own_reasons()["timeout"] = 99
    for per_piece in (1, 2, 3, 100):
        assert b"".join(counter_pieces(rows, per_piece)) == expected_counters(counts)
    assert b"".join(counter_pieces(counter_rows([]), 10)) == b"", "no tallies: no families"


def test_family_text_gives_each_owner_one_slot_and_reuses_freed_ones() -> None:
    text = FamilyText((SUCCESS,))
    text.put(SUCCESS, "a", b"a1\n")
    text.put(SUCCESS, "b", b"b1\n")
    text.put("probe_http_ssl", "b", b"b2\n")
    text.put(SUCCESS, "a", b"a3\n")  # replaced in place: the order stays
    assert [(h.split(b"\n")[1], c) for h, c in text.snapshot()] == [
        (b"# TYPE probe_success gauge", [b"a3\n", b"b1\n"]),
        (b"# TYPE probe_http_ssl gauge", [b"b2\n"]),
    ]
    text.drop(SUCCESS, "b")
    assert "b" in text.slots, "b still has a line in another family"
    text.drop("probe_http_ssl", "b")
    text.drop("probe_http_ssl", "b")  # twice: nothing more happens
    assert set(text.slots) == {"a"}
    text.put(SUCCESS, "c", b"c1\n")
    assert text.slots["c"] == 1, "c takes b's freed slot"
    assert len(text.families[SUCCESS]) == 2
    text.put(SUCCESS, "a", b"")  # an empty chunk removes
    assert [c for _, c in text.snapshot()] == [[b"c1\n"]]
    assert set(text.slots) == {"c"}
