"""Deadlines kept by the whole second: which keys a periodic round must visit now."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Generic, TypeVar

K = TypeVar("K")


class DeadlineWheel(Generic[K]):
    """Keys filed under the second their deadline falls in.

    The publisher files every fresh check x agent pair until its result may go
    stale. A heap entry cost a tuple and a float a pair (about 90 bytes); here a
    pair is one pointer in its second's list. ``take`` hands over whole seconds,
    so a key may come back up to a second before its deadline: the caller checks
    it and files it again, which keeps a key from ever being visited late.
    """

    __slots__ = ("_next", "_seconds")

    def __init__(self) -> None:
        self._seconds: dict[int, list[K]] = {}
        self._next: int | None = None  # no key is filed under an earlier second

    def add(self, key: K, deadline: float) -> None:
        """File key under its deadline's second (a finite deadline)."""
        second = math.floor(deadline)
        keys = self._seconds.get(second)
        if keys is None:
            self._seconds[second] = [key]
        else:
            keys.append(key)
        if self._next is None or second < self._next:
            self._next = second

    def take(self, until: float) -> list[K]:
        """Remove and return the keys filed under until's second or an earlier one."""
        last = math.floor(until)
        first = self._next
        if first is None or first > last:
            return []
        seconds = self._seconds
        due: Iterable[int] = range(first, last + 1)
        if last - first > len(seconds):  # a long gap (an idle mesh, a clock jump): skip it
            due = sorted(second for second in seconds if second <= last)
        taken: list[K] = []
        for second in due:
            keys = seconds.pop(second, None)
            if keys is not None:
                taken += keys
        self._next = last + 1 if seconds else None
        return taken
