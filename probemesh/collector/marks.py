"""Per-agent applied-sequence bookkeeping, for exact dedupe.

Replay interleaves backlog and live batches, so batches may be applied out of
order. Each agent keeps a contiguous mark (every seq <= mark is applied) plus
the few disjoint ranges applied above it; the agent's floor_seq lets the mark
skip results the agent dropped and will never send.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_RANGES = 4096


@dataclass
class AppliedSeqs:
    """What has been applied for one agent."""

    mark: int = 0
    ranges: list[list[int]] = field(default_factory=list)  # sorted, disjoint, all > mark + 1

    def is_applied(self, seq: int) -> bool:
        if seq <= self.mark:
            return True
        for first, last in self.ranges:
            if first <= seq <= last:
                return True
            if first > seq:
                return False
        return False

    def add(self, first: int, last: int) -> None:
        """Record first..last as applied and advance the mark where contiguous."""
        if last <= self.mark:
            return
        first = max(first, self.mark + 1)
        merged: list[list[int]] = []
        placed = False
        for lo, hi in self.ranges:
            if hi + 1 < first:
                merged.append([lo, hi])
            elif last + 1 < lo:
                if not placed:
                    merged.append([first, last])
                    placed = True
                merged.append([lo, hi])
            else:
                first, last = min(first, lo), max(last, hi)
        if not placed:
            merged.append([first, last])
        merged.sort()
        self.ranges = merged
        self._advance()

    def raise_floor(self, floor_seq: int) -> None:
        """The agent no longer holds anything below floor_seq: stop waiting for it."""
        if floor_seq - 1 > self.mark:
            self.mark = floor_seq - 1
            self.ranges = [r for r in self.ranges if r[1] > self.mark]
            self._advance()

    def _advance(self) -> None:
        while self.ranges and self.ranges[0][0] <= self.mark + 1:
            self.mark = max(self.mark, self.ranges.pop(0)[1])
        if len(self.ranges) > MAX_RANGES:  # cannot happen with a well-behaved agent
            self.ranges = self.ranges[-MAX_RANGES:]
