"""The agent's durable result queue: SQLite in WAL mode in --state-dir.

A result is persisted here before it is ever sent and deleted only once the
collector acknowledges it. Sequence numbers are assigned inside the insert
transaction, so they stay monotonic across restarts. The queue is bounded by
count and age; overflow or expiry deletes the oldest results and counts each
one, so loss is visible, never silent.

Exact accounting needs one more rule: a result that was *sent* but not yet
acknowledged may already be counted by the collector (it applied the batch, the
Ack was lost). Dropping it would count it twice, once as applied and once as
dropped. So the link records each batch's range in the ``sent`` table before
writing it, and overflow and expiry drop only unsent results; sent ones are only
dropped past a hard ceiling of twice the bound (logged, and only reachable when
a collector takes batches but never acknowledges them). The bound thus counts
results not in flight; the in-flight window adds at most window x batch rows.
See docs/durability.md.

Every method blocks on SQLite. The agent calls them through ``in_thread``, in
the queue's one worker thread, so a slow disk never stalls the event loop that
times probes, and the operations stay in the order they were issued.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import ParamSpec, TypeVar

from probemesh.errors import StateError

log = logging.getLogger(__name__)
P = ParamSpec("P")
T = TypeVar("T")

DEFAULT_MAX_RESULTS = 1_000_000
DEFAULT_MAX_AGE = 7 * 86400.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    seq INTEGER PRIMARY KEY, ts REAL NOT NULL, payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS sent (first INTEGER PRIMARY KEY, last INTEGER NOT NULL);
"""
_COUNTERS = ("last_seq", "produced", "acked", "dropped")


@dataclass
class QueueCounters:
    """Lifetime totals, persisted with the rows they describe."""

    last_seq: int = 0
    produced: int = 0
    acked: int = 0
    dropped: int = 0


class DurableQueue:
    """Append, read in order, acknowledge; all state on disk."""

    def __init__(
        self,
        path: Path,
        max_results: int = DEFAULT_MAX_RESULTS,
        max_age: float = DEFAULT_MAX_AGE,
    ) -> None:
        self.max_results = max_results
        self.max_age = max_age
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL: a power cut may lose the last commits, a process crash cannot.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise StateError(f"{path}: cannot open result queue: {exc}") from None
        self.counters = self._load_counters()
        # Dropped from memory while the disk refused writes; saved with the next append.
        self.unsaved_dropped = 0
        self.depth = 0
        self._floor = 0
        self._sent: list[tuple[int, int]] = []
        self._reload_depth()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="result-queue")

    async def in_thread(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a blocking method of this queue in its worker thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, lambda: fn(*args, **kwargs))

    def _load_counters(self) -> QueueCounters:
        values = dict(self._db.execute("SELECT name, value FROM counters").fetchall())
        return QueueCounters(**{name: int(values.get(name, 0)) for name in _COUNTERS})

    def _save_counters(self) -> None:
        self._db.executemany(
            "INSERT INTO counters(name, value) VALUES(?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value=excluded.value",
            [(name, getattr(self.counters, name)) for name in _COUNTERS],
        )

    @property
    def last_seq(self) -> int:
        return self.counters.last_seq

    @property
    def floor_seq(self) -> int:
        """Lowest sequence number still held (last_seq + 1 when empty)."""
        return self._floor if self.depth else self.counters.last_seq + 1

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """One write transaction; on any error roll back and reload the in-memory view."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            self.counters = self._load_counters()
            self._reload_depth()
            raise

    def append(self, payloads: Sequence[tuple[float, bytes]]) -> tuple[int, int]:
        """Persist (timestamp, serialized Result) pairs; return their seq range."""
        if not payloads:
            return self.last_seq + 1, self.last_seq
        first = self.counters.last_seq + 1
        rows = [(first + i, ts, blob) for i, (ts, blob) in enumerate(payloads)]
        with self._transaction():
            self._db.executemany("INSERT INTO results(seq, ts, payload) VALUES(?, ?, ?)", rows)
            self.counters.last_seq = rows[-1][0]
            self.counters.produced += len(rows)
            if self.depth == 0:
                self._floor = first
            self.depth += len(rows)
            self._enforce_bounds()
            self.counters.dropped += self.unsaved_dropped
            self._save_counters()
        self.unsaved_dropped = 0
        return first, self.counters.last_seq

    @property
    def dropped_total(self) -> int:
        """Dropped results, including those dropped in memory while the disk failed."""
        return self.counters.dropped + self.unsaved_dropped

    def _enforce_bounds(self) -> None:
        """Drop the oldest rows beyond the bounds, counting each (inside a transaction)."""
        dropped = 0
        if self.depth > self.max_results:
            # The bound applies to results not in flight; in-flight ones wait
            # for their Ack (or the hard ceiling below).
            spans = self._unsent_spans()
            excess = self.depth - self.max_results - self._count_sent()
            if excess > 0:
                dropped += self._drop_oldest(excess, spans)
            hard = self.depth - dropped - 2 * self.max_results
            if hard > 0:  # sent but never acknowledged, beyond the ceiling
                log.warning(
                    "queue: dropping %d sent, unacknowledged results (a collector may count them)",
                    hard,
                )
                dropped += self._drop_oldest(hard, [(0, 2**62)])
        oldest = time.time() - self.max_age
        head = self._db.execute("SELECT ts FROM results ORDER BY seq LIMIT 1").fetchone()
        if head and head[0] < oldest:  # scan only when something has expired
            # In-flight results wait for their Ack, as with the count bound.
            for lo, hi in self._unsent_spans():
                dropped += self._db.execute(
                    "DELETE FROM results WHERE ts < ? AND seq BETWEEN ? AND ?", (oldest, lo, hi)
                ).rowcount
        if dropped:
            self.counters.dropped += dropped
            self.depth -= dropped
            self._reload_floor()

    def _unsent_spans(self) -> list[tuple[int, int]]:
        """Inclusive seq spans outside every sent-but-unacknowledged range, ascending."""
        spans: list[tuple[int, int]] = []
        lo = 0
        for first, last in sorted(self._sent):
            if first > lo:
                spans.append((lo, first - 1))
            lo = max(lo, last + 1)
        spans.append((lo, 2**62))
        return spans

    def _count_sent(self) -> int:
        """Rows on disk inside sent-but-unacknowledged ranges."""
        count = 0
        lo = 0
        for first, last in sorted(self._sent):
            first = max(first, lo)
            if last >= first:
                count += self._db.execute(
                    "SELECT COUNT(*) FROM results WHERE seq BETWEEN ? AND ?", (first, last)
                ).fetchone()[0]
            lo = max(lo, last + 1)
        return count

    def _drop_oldest(self, count: int, spans: list[tuple[int, int]]) -> int:
        """Delete up to count of the oldest rows inside spans; return how many went."""
        dropped = 0
        for lo, hi in spans:
            need = count - dropped
            if need <= 0:
                break
            cut = self._db.execute(
                "SELECT seq FROM results WHERE seq BETWEEN ? AND ? ORDER BY seq LIMIT 1 OFFSET ?",
                (lo, hi, need - 1),
            ).fetchone()
            upper = cut[0] if cut else hi
            dropped += self._db.execute(
                "DELETE FROM results WHERE seq BETWEEN ? AND ?", (lo, upper)
            ).rowcount
        return dropped

    def mark_sent(self, first: int, last: int) -> None:
        """Record that first..last is about to be written to a collector.

        Must be called before the write: once a batch may have been applied,
        overflow must not drop (and count) its results as lost.
        """
        self._db.execute("INSERT OR REPLACE INTO sent(first, last) VALUES(?, ?)", (first, last))
        self._sent = sorted([r for r in self._sent if r[0] != first] + [(first, last)])

    def _reload_depth(self) -> None:
        """Recount from disk; at open and after a failed transaction (COUNT is O(n))."""
        self.depth = self._db.execute("SELECT COUNT(*) FROM results").fetchone()[0]
        rows = self._db.execute("SELECT first, last FROM sent ORDER BY first").fetchall()
        self._sent = [(int(a), int(b)) for a, b in rows]
        self._reload_floor()

    def _reload_floor(self) -> None:
        row = self._db.execute("SELECT MIN(seq) FROM results").fetchone()
        self._floor = row[0] or self.counters.last_seq + 1
        if self._sent and self._sent[0][1] < self._floor:  # ranges whose rows are all gone
            self._db.execute("DELETE FROM sent WHERE last < ?", (self._floor,))
            self._sent = [r for r in self._sent if r[1] >= self._floor]

    def read(self, after: int, before: int | None, limit: int) -> list[tuple[int, bytes]]:
        """Up to limit contiguous rows with after < seq (< before); stops at a gap."""
        if before is None:
            rows = self._db.execute(
                "SELECT seq, payload FROM results WHERE seq > ? ORDER BY seq LIMIT ?",
                (after, limit),
            ).fetchall()
        else:
            rows = self._db.execute(
                "SELECT seq, payload FROM results WHERE seq > ? AND seq < ? ORDER BY seq LIMIT ?",
                (after, before, limit),
            ).fetchall()
        for i in range(1, len(rows)):
            if rows[i][0] != rows[i - 1][0] + 1:
                return rows[:i]
        return rows

    def ack(self, upto: int, batches: Sequence[tuple[int, int]] = ()) -> int:
        """Delete seq <= upto and each batch's first..last; return how many rows went."""
        above = [(first, last) for first, last in batches if last >= first > upto]
        with self._transaction():
            gone = self._db.execute("DELETE FROM results WHERE seq <= ?", (upto,)).rowcount
            for first, last in above:
                gone += self._db.execute(
                    "DELETE FROM results WHERE seq BETWEEN ? AND ?", (first, last)
                ).rowcount
            self.counters.acked += gone
            self._save_counters()
            if self._sent:
                self._db.execute("DELETE FROM sent WHERE last <= ?", (upto,))
                self._db.executemany(
                    "DELETE FROM sent WHERE first >= ? AND last <= ?",
                    [(first, last) for first, last in batches if last >= first],
                )
        self.depth -= gone
        if self._sent:
            self._sent = [
                (a, b)
                for a, b in self._sent
                if b > upto and not any(a >= first and b <= last for first, last in batches)
            ]
        self._reload_floor()
        return gone

    def close(self) -> None:
        """Finish what the worker thread holds, then close the database."""
        self._thread.shutdown()
        self._db.close()
