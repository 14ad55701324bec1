"""Abuse limits of the collector: per-agent rate limit and the series guard.

The collector faces the internet, and an agent's token can leak. Whatever a
token holder sends, these bounds keep the collector's CPU, memory and the
number of series on /metrics finite. Every refusal is counted in
``probemesh_ingest_rejected_total{reason}``; see docs/security.md.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class SecurityLimits:
    """The security knobs of one collector; every field has a CLI flag."""

    # Results per second per agent (token bucket); 0 disables the limit.
    rate_limit: float = 20_000.0
    # Bucket size: results an agent may send at once after being quiet.
    rate_burst: float = 200_000.0
    # A batch that overdraws the bucket by at most this many seconds of refill
    # is delayed (backpressure) instead of refused. 0 (the default) refuses at
    # once: delaying would shape a flood to the rate forever without the
    # sender ever hearing RESOURCE_EXHAUSTED.
    rate_max_delay: float = 0.0
    # Exported probe series (label sets) per agent and over all agents.
    max_series_per_agent: int = 50_000
    max_series: int = 5_000_000
    # Samples one result may carry; extra ones are dropped as "cardinality".
    max_samples_per_result: int = 64
    # With mTLS: the client certificate's CN or a SAN must equal the agent id.
    require_cert_identity: bool = True


class TokenBucket:
    """Classic token bucket in results per second; may run into short debt.

    A batch that does not fit is refused, unless it fits within ``max_delay``
    seconds of refill: then it is admitted and the caller waits out the debt.
    The collector refuses with RESOURCE_EXHAUSTED; the agent keeps the
    results on disk, backs off and replays them, and the bucket refills
    meanwhile (docs/security.md).
    """

    __slots__ = ("burst", "clock", "rate", "stamp", "tokens")

    def __init__(
        self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.tokens = burst
        self.stamp = clock()

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def take(self, n: int, max_delay: float) -> float | None:
        """Consume n tokens; return the seconds to wait (0 if none), or None if refused."""
        self._refill()
        after = self.tokens - n
        if after >= 0:
            self.tokens = after
            return 0.0
        wait = -after / self.rate
        if wait > max_delay:
            return None
        self.tokens = after
        return wait


class RateLimiter:
    """One token bucket per agent id (agents are bounded by the token table)."""

    def __init__(self, rate: float, burst: float, max_delay: float) -> None:
        self.rate = rate
        self.burst = burst
        self.max_delay = max_delay
        self.buckets: dict[str, TokenBucket] = {}

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def take(self, agent_id: str, n: int) -> float | None:
        """Seconds the caller must wait before applying n results, or None: refuse."""
        if not self.enabled:
            return 0.0
        bucket = self.buckets.get(agent_id)
        if bucket is None:
            bucket = self.buckets[agent_id] = TokenBucket(self.rate, self.burst)
        return bucket.take(n, self.max_delay)

    def forget(self, agent_id: str) -> None:
        self.buckets.pop(agent_id, None)


class SeriesGuard:
    """Admits (check, agent) pairs to /metrics while the series budget lasts.

    A pair is the unit of admission: all its series (probe gauges, samples and
    counters) are exported or none is. Admission is sticky, so a series never
    flaps in and out of /metrics between scrapes; refused pairs are counted
    once per pair in ``rejected["cardinality"]`` (by series refused) and
    retried when budget frees up (``released`` moves: an agent or a check
    expired, or a pair shrank), so they appear as soon as they fit.
    """

    def __init__(self, limits: SecurityLimits, rejected: Counter[str]) -> None:
        self.per_agent = limits.max_series_per_agent
        self.total = limits.max_series
        self.rejected = rejected
        self.admitted: dict[tuple[str, str], int] = {}  # pair -> series it was admitted with
        self.agent_series: Counter[str] = Counter()
        self.series = 0
        self.refused: set[tuple[str, str]] = set()
        self.released = 0  # bumped whenever budget is given back

    def admit(self, pair: tuple[str, str], series: int) -> bool:
        """True when pair may export `series` series (its current count)."""
        known = self.admitted.get(pair)
        if known is not None:
            extra = series - known
            if extra <= 0 or self._fits(pair[1], extra):
                self._account(pair, extra)
                return True
            self._refuse(pair, series)  # grew beyond the budget
            return False
        if self._fits(pair[1], series):
            self._account(pair, series)
            self.refused.discard(pair)
            return True
        self._refuse(pair, series)
        return False

    def _refuse(self, pair: tuple[str, str], series: int) -> None:
        if pair not in self.refused and len(self.refused) < 1_000_000:
            self.refused.add(pair)
            self.rejected["cardinality"] += series

    def _fits(self, agent: str, series: int) -> bool:
        return (
            self.agent_series[agent] + series <= self.per_agent
            and self.series + series <= self.total
        )

    def _account(self, pair: tuple[str, str], delta: int) -> None:
        self.admitted[pair] = self.admitted.get(pair, 0) + delta
        self.agent_series[pair[1]] += delta
        self.series += delta
        if delta < 0:
            self.released += 1

    def retain(self, live: set[tuple[str, str]]) -> None:
        """Release the budget of pairs no longer present (expired agent or check)."""
        for pair in [p for p in self.admitted if p not in live]:
            count = self.admitted.pop(pair)
            self.agent_series[pair[1]] -= count
            if self.agent_series[pair[1]] <= 0:
                del self.agent_series[pair[1]]
            self.series -= count
            self.released += 1
        self.refused &= live
