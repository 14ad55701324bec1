"""The sample filter's encoded fast path gives exactly what judging every sample gives.

Each case runs one stream of results through two filters: one takes every
result through keep_result (templates), the other through keep (the samples
read one by one). Kept samples and refusal counts must be the same, whatever
the results hold, including bytes made to look like an admitted template.
"""

from __future__ import annotations

import math
import random
import struct

import pytest

from probemesh.collector.samples import SampleFilter
from probemesh.v1 import mesh_pb2 as pb

PHASES = ("resolve", "connect", "tls", "processing", "transfer")


def http_samples(rng: random.Random, zero_redirects: bool = True) -> list[pb.Sample]:
    samples = [
        pb.Sample(name="probe_http_duration_seconds", labels={"phase": p}, value=rng.random())
        for p in PHASES
    ]
    samples += [
        pb.Sample(name="probe_http_status_code", value=rng.choice([200, 404, 0])),
        pb.Sample(name="probe_http_content_length", value=rng.randint(0, 5000)),
        pb.Sample(name="probe_http_redirects", value=0 if zero_redirects else 1),
        pb.Sample(name="probe_http_ssl", value=rng.choice([0.0, 1.0, -0.0])),
    ]
    return samples


def result(samples: list[pb.Sample], *, revision: int = 1, message: str = "",
           phases: int = 5, check: str = "web") -> pb.Result:  # fmt: skip
    return pb.Result(
        check=check, target="http://a/", timestamp=1_700_000_000.5, success=not message,
        duration_seconds=0.25, reason=0 if not message else pb.FAILURE_REASON_TIMEOUT,
        message=message, samples=samples, http_phase_seconds=[0.01] * phases, revision=revision,
    )  # fmt: skip


def same_through_both(results: list[pb.Result], max_samples: int = 64) -> SampleFilter:
    fast, slow = SampleFilter(max_samples), SampleFilter(max_samples)
    for r in results:
        got = fast.keep_result(r, r.check, r.revision)
        want = slow.keep(r.samples)
        assert got[0] == want[0], r
        assert got[1] == want[1] or (  # NaN values compare unequal: compare the bits
            [struct.pack("d", v) for v in memoryview(got[1]).cast("d")]
            == [struct.pack("d", v) for v in memoryview(want[1]).cast("d")]
        )
    assert fast.rejected == slow.rejected
    return fast


def test_varied_results_match_the_sample_by_sample_judgement() -> None:
    rng = random.Random(7)
    results = []
    for i in range(400):
        samples = http_samples(rng, zero_redirects=rng.random() < 0.8)
        kind = i % 10
        if kind == 1:
            samples[2].value = rng.choice([math.nan, math.inf, -math.inf])
        elif kind == 2:
            samples[0].labels["phase"] = "bogus"  # refused label value
        elif kind == 3:
            samples.append(pb.Sample(name="probe_unknown", value=1))
        elif kind == 4:
            samples.reverse()
        elif kind == 5:
            samples.append(pb.Sample(name="probe_http_ssl", value=1))  # duplicate series
        elif kind == 6:
            samples = samples[:4]
        message = "" if rng.random() < 0.7 else "probe timed out"
        revision = rng.choice([0, 1, 300, 1 << 40])
        results.append(result(samples, revision=revision, message=message,
                              phases=rng.choice([0, 5, 20])))  # fmt: skip
    same_through_both(results)
    same_through_both(results, max_samples=6)


def test_a_repeated_shape_is_admitted_from_its_encoding(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(3)
    fast = SampleFilter()
    first = result(http_samples(rng))
    fast.keep_result(first, "web", 1)
    judged: list[object] = []
    keep = fast.keep
    monkeypatch.setattr(fast, "keep", lambda samples: judged.append(samples) or keep(samples))
    for _ in range(50):
        r = result(http_samples(rng))
        r.samples[6].value = rng.randint(1, 5000)  # content length: never 0 here
        r.samples[8].value = 1.0  # ssl
        r.samples[5].value = 200
        first_shape = fast.keep_result(r, "web", 1)
        assert first_shape[0] == keep(r.samples)[0]
    assert len(judged) <= 2, f"{len(judged)} of 50 same-shape results judged sample by sample"


def encoded_section(samples: list[pb.Sample]) -> bytes:
    return pb.Result(samples=samples).SerializeToString()


def varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes([*out, value])


def test_bytes_made_to_look_like_a_template_are_judged() -> None:
    # Values whose 8 bytes are ASCII, so that the samples' encoding is valid text.
    (ascii_value,) = struct.unpack("<d", b"\x10\x20\x30\x40\x11\x21\x31\x41")
    admitted = http_samples(random.Random(11))
    for sample in admitted:
        sample.value = ascii_value
    section = encoded_section(admitted)
    results = [result(admitted)] * 3
    # The admitted samples' bytes inside the failure message, the real sample refused.
    results.append(
        result([pb.Sample(name="probe_unknown", value=1.0)], message=section.decode("ascii"))
    )
    # A refused sample whose label key ends with the bytes the first admitted sample's
    # encoding has before its label value, followed by the rest of the admitted
    # samples: the last bytes of the refused one read as the first admitted one.
    first = encoded_section(admitted[:1])
    crafted_key = "x" + first[: first.index(b"\x12\x07resolve")].decode("ascii")
    refused = pb.Sample(
        name="probe_http_duration_seconds", labels={crafted_key: "resolve"}, value=ascii_value
    )
    crafted = [refused, *admitted[1:]]
    results.append(result(crafted))
    # The admitted samples again, after an unknown field made of sample bytes.
    tricked = result(admitted)
    tricked_bytes = tricked.SerializeToString() + b"\xfa\x01" + varint(len(section)) + section
    results.append(pb.Result.FromString(tricked_bytes))
    results.append(result(admitted[:-1]))  # one sample fewer
    results.append(result([*admitted, pb.Sample(name="probe_http_version", value=2)]))
    same_through_both(results)


def test_more_encodings_than_templates_are_learnt_only_now_and_then(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from probemesh.collector import sample_templates

    learnt: list[object] = []
    learn = sample_templates.learn
    monkeypatch.setattr(
        sample_templates, "learn", lambda *args: learnt.append(args) or learn(*args)
    )
    rng = random.Random(5)
    results = []
    for i in range(640):
        samples = http_samples(rng)
        for bit, index in enumerate((5, 6, 7)):  # 8 encodings: which of three values are 0
            samples[index].value = 0.0 if i >> bit & 1 else 7.0
        results.append(result(samples))
    same_through_both(results)
    # Each of the 640 misses a template (8 encodings, 4 kept); learning is the rare case.
    assert len(learnt) <= 640 // 16, f"{len(learnt)} templates learnt for 640 results"
