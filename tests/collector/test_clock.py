"""The NTP-style clock estimate: offset and round trip from one echo, min-delay filter."""

from __future__ import annotations

import math

import pytest

from probemesh.collector.clock import SAMPLES, ClockEstimate


def echo(
    offset: float, out: float, back: float, held: float = 0.01, at: float = 1000.0
) -> tuple[float, float, float, float]:
    """(t1, t2, t3, t4) for an agent clock `offset` ahead, with one-way delays out and back."""
    t1 = at
    t2 = t1 + out + offset
    t3 = t2 + held
    t4 = t3 - offset + back
    return t1, t2, t3, t4


def test_symmetric_round_trip_gives_the_exact_offset() -> None:
    clock = ClockEstimate()
    assert clock.add(*echo(5.0, 0.02, 0.02), threshold=1.0)
    assert clock.offset == pytest.approx(5.0)
    assert clock.rtt == pytest.approx(0.04)
    assert clock.skewed and clock.correction == pytest.approx(5.0)


def test_asymmetry_errs_by_half_of_it_and_the_shortest_round_trip_wins() -> None:
    clock = ClockEstimate()
    clock.add(*echo(-5.0, 0.30, 0.02), threshold=1.0)  # queued on the way out
    assert clock.offset == pytest.approx(-5.0 + 0.14)  # off by (0.30 - 0.02) / 2
    clock.add(*echo(-5.0, 0.01, 0.01, at=1010.0), threshold=1.0)
    assert clock.offset == pytest.approx(-5.0) and clock.rtt == pytest.approx(0.02)
    for i in range(SAMPLES):  # the good sample ages out of the window
        clock.add(*echo(-5.0, 0.05, 0.05, at=1020.0 + i), threshold=1.0)
    assert clock.rtt == pytest.approx(0.10)


def test_a_clock_that_steps_is_followed_at_the_next_sample() -> None:
    """The old best sample (a short round trip) would win for SAMPLES more
    samples; it cannot be right any more once a sample's bound misses it."""
    clock = ClockEstimate()
    clock.add(*echo(5.0, 0.01, 0.01), threshold=1.0)
    for i in range(SAMPLES - 1):
        clock.add(*echo(5.0, 0.05, 0.03, at=1060.0 * (i + 1)), threshold=1.0)
    assert clock.offset == pytest.approx(5.0) and clock.rtt == pytest.approx(0.02)
    clock.add(*echo(0.0, 0.05, 0.05, at=9000.0), threshold=1.0)  # the clock was set right
    assert clock.offset == pytest.approx(0.0) and clock.rtt == pytest.approx(0.1)
    assert not clock.skewed and clock.correction == 0.0 and len(clock.samples) == 1


def test_within_the_threshold_nothing_is_corrected() -> None:
    clock = ClockEstimate()
    clock.add(*echo(0.4, 0.01, 0.01), threshold=1.0)
    assert clock.offset == pytest.approx(0.4)
    assert not clock.skewed and clock.correction == 0.0


@pytest.mark.parametrize(
    "sample",
    [
        (1000.0, 1000.0, 1000.0, 999.0),  # answered before it was asked: negative round trip
        (1000.0, math.nan, 1000.0, 1000.1),
        (1000.0, 1000.0, math.inf, 1000.1),
    ],
)
def test_impossible_samples_change_nothing(sample: tuple[float, float, float, float]) -> None:
    clock = ClockEstimate()
    assert not clock.add(*sample, threshold=1.0)
    assert clock.offset is None and not clock.samples
