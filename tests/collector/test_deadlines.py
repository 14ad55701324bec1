"""DeadlineWheel: keys come back in the round their deadline's second is reached, never later."""

from __future__ import annotations

import random

import pytest

from probemesh.collector.deadlines import DeadlineWheel


def test_keys_come_back_by_their_second_and_once() -> None:
    wheel: DeadlineWheel[str] = DeadlineWheel()
    wheel.add("a", 10.2)
    wheel.add("b", 10.9)
    wheel.add("c", 12.0)
    assert wheel.take(9.999) == []
    assert sorted(wheel.take(10.0)) == ["a", "b"]  # the whole second, b a little early
    assert wheel.take(11.5) == []
    assert wheel.take(12.0) == ["c"]
    assert wheel.take(1e9) == [], "each key came back once"


def test_a_key_filed_in_the_past_comes_back_at_the_next_take() -> None:
    wheel: DeadlineWheel[str] = DeadlineWheel()
    wheel.add("late", 100.0)
    assert wheel.take(101.0) == ["late"]
    wheel.add("behind", 50.5)  # behind the seconds already taken
    wheel.add("again", 101.7)  # the current second, filed again by the caller
    assert sorted(wheel.take(101.2)) == ["again", "behind"]


@pytest.mark.parametrize("gap", [1.0, 3.0, 10_000.0, 1e7])
def test_no_key_is_ever_late_whatever_the_steps_between_takes(gap: float) -> None:
    """Against a plain list: every key whose deadline has passed is taken, at most a
    second early, over jumps both short (every second) and long (an idle mesh)."""
    rng = random.Random(7)
    wheel: DeadlineWheel[int] = DeadlineWheel()
    pending: dict[int, float] = {}
    now = 1000.0
    for key in range(3000):
        if rng.random() < 0.3:
            now += rng.uniform(0, gap)
            taken = wheel.take(now)
            for k in taken:
                assert pending[k] < int(now) + 1  # never more than a second early
                del pending[k]
            assert all(deadline >= int(now) + 1 for deadline in pending.values())  # none late
        deadline = now + rng.uniform(-5, 120)
        pending[key] = deadline
        wheel.add(key, deadline)
    assert sorted(wheel.take(now + 1e9)) == sorted(pending)
