"""Unit tests of the token bucket and the series guard."""

from __future__ import annotations

from collections import Counter

from probemesh.collector.limits import SecurityLimits, SeriesGuard, TokenBucket


def test_token_bucket_refuses_then_refills() -> None:
    now = [0.0]
    bucket = TokenBucket(rate=10, burst=20, clock=lambda: now[0])
    assert bucket.take(20, 0) == 0.0
    assert bucket.take(1, 0) is None, "empty bucket refuses"
    now[0] += 1.0
    assert bucket.take(10, 0) == 0.0
    assert bucket.take(5, 1.0) == 0.5, "a small overdraft waits when max_delay allows"
    now[0] += 100
    assert bucket.take(25, 0) is None, "never more than the burst at once"


def test_series_guard_caps_per_agent_and_total() -> None:
    rejected: Counter[str] = Counter()
    guard = SeriesGuard(SecurityLimits(max_series_per_agent=10, max_series=15), rejected)
    assert all(guard.admit((f"c{i}", "a"), 2) for i in range(5))
    assert not guard.admit(("c5", "a"), 2)
    assert rejected["cardinality"] == 2
    assert not guard.admit(("c5", "a"), 2), "a refused pair is counted once"
    assert rejected["cardinality"] == 2
    assert guard.admit(("c0", "b"), 4)
    assert not guard.admit(("c1", "b"), 2), "overall cap of 15"
    guard.retain({("c0", "a"), ("c0", "b"), ("c5", "a"), ("c1", "b")})
    assert guard.admit(("c5", "a"), 2), "expired pairs free their budget"
    assert guard.admit(("c0", "a"), 2), "admitted pairs stay admitted"
