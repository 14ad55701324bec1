"""DurableQueue: sequence numbers, bounds, acks and the accounting invariant.

Every test ends with produced == acked + dropped + depth, the identity the
agent's /metrics and the end-to-end durability tests rely on.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from probemesh.agent.queue import DurableQueue


def rows(n: int, ts: float | None = None) -> list[tuple[float, bytes]]:
    now = time.time() if ts is None else ts
    return [(now, f"r{i}".encode()) for i in range(n)]


def balanced(q: DurableQueue) -> None:
    c = q.counters
    assert c.produced == c.acked + c.dropped + q.depth
    on_disk = q._db.execute("SELECT COUNT(*) FROM results").fetchone()[0]
    assert on_disk == q.depth


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "results.sqlite3"


def test_seq_monotonic_across_reopen(path: Path) -> None:
    q = DurableQueue(path)
    assert q.append(rows(3)) == (1, 3)
    assert q.floor_seq == 1
    q.ack(3)
    assert q.depth == 0 and q.floor_seq == 4
    q.close()
    q = DurableQueue(path)
    assert q.last_seq == 3 and q.floor_seq == 4
    assert q.append(rows(2)) == (4, 5)
    assert [s for s, _ in q.read(0, None, 10)] == [4, 5]
    assert q.counters.produced == 5 and q.counters.acked == 3
    balanced(q)


def test_empty_append_is_noop(path: Path) -> None:
    q = DurableQueue(path)
    assert q.append([]) == (1, 0)
    assert q.counters.produced == 0 and q.depth == 0
    balanced(q)


def test_read_stops_at_gap_and_respects_before(path: Path) -> None:
    q = DurableQueue(path)
    q.append(rows(10))
    q.ack(0, [(4, 5)])  # an out-of-order batch acked above the mark: a gap at 4..5
    assert [s for s, _ in q.read(0, None, 100)] == [1, 2, 3]
    assert [s for s, _ in q.read(3, None, 100)] == [6, 7, 8, 9, 10]
    assert [s for s, _ in q.read(5, 9, 100)] == [6, 7, 8]
    assert [s for s, _ in q.read(5, None, 2)] == [6, 7]
    assert q.floor_seq == 1
    balanced(q)


def test_ack_counts_only_rows_present(path: Path) -> None:
    q = DurableQueue(path)
    q.append(rows(10))
    assert q.ack(0, [(6, 10)]) == 5
    assert q.ack(8) == 5  # 1..5; 6..8 already gone
    assert q.ack(8) == 0  # a repeated Ack changes nothing
    assert q.ack(3, [(6, 10)]) == 0
    assert q.depth == 0 and q.counters.acked == 10
    balanced(q)


def test_one_ack_deletes_every_batch_it_answers(path: Path) -> None:
    """A held Ack answers several batches, above the mark and not contiguous."""
    q = DurableQueue(path)
    q.append(rows(10))
    for first, last in ((1, 2), (4, 5), (8, 9)):
        q.mark_sent(first, last)
    assert q.ack(2, [(1, 2), (4, 5), (8, 9)]) == 6
    assert [s for s, _ in q.read(0, None, 100)] == [3]
    assert [s for s, _ in q.read(5, None, 100)] == [6, 7]
    assert q.depth == 4 and q.counters.acked == 6
    assert q._sent == [] and q._db.execute("SELECT count(*) FROM sent").fetchone()[0] == 0
    balanced(q)


def test_overflow_drops_oldest_and_counts(path: Path) -> None:
    q = DurableQueue(path, max_results=50)
    for _ in range(7):
        q.append(rows(20))
    assert q.depth == 50
    assert q.counters.dropped == 90
    assert q.floor_seq == 91
    assert [s for s, _ in q.read(0, None, 1)] == [91]
    balanced(q)


def test_overflow_spares_sent_unacked_rows(path: Path) -> None:
    """A sent batch may already be applied: dropping it would count it twice."""
    q = DurableQueue(path, max_results=50)
    q.append(rows(40))
    q.mark_sent(1, 40)
    q.append(rows(60))  # 60 unsent > 50: the 10 oldest unsent go, not 1..40
    assert q.depth == 90 and q.counters.dropped == 10
    assert [s for s, _ in q.read(0, None, 100)] == list(range(1, 41))
    assert [s for s, _ in q.read(40, None, 100)] == list(range(51, 101))
    assert q.floor_seq == 1
    q.ack(0, [(1, 40)])
    assert q.floor_seq == 51
    q.append(rows(50))  # no longer protected: the oldest go first again
    assert [s for s, _ in q.read(0, None, 1)] == [101]
    assert q.counters.dropped == 60
    balanced(q)


def test_sent_ranges_survive_reopen_and_are_pruned(path: Path) -> None:
    q = DurableQueue(path, max_results=20)
    q.append(rows(10))
    q.mark_sent(1, 10)
    q.close()
    q = DurableQueue(path, max_results=20)
    q.append(rows(30))  # 30 unsent > 20: drop 11..20 only
    assert [s for s, _ in q.read(0, None, 100)] == list(range(1, 11))  # stops at the gap
    assert [s for s, _ in q.read(10, None, 1)] == [21]
    q.ack(10)
    assert q._db.execute("SELECT COUNT(*) FROM sent").fetchone()[0] == 0
    q.append(rows(1))
    assert q.depth == 20 and q.floor_seq == 22
    balanced(q)


def test_hard_ceiling_drops_even_sent_rows(path: Path) -> None:
    """A collector that takes batches but never acks cannot grow the queue forever."""
    q = DurableQueue(path, max_results=10)
    q.append(rows(10))
    q.mark_sent(1, 10)
    q.append(rows(10))
    q.mark_sent(11, 20)
    assert q.depth == 20 and q.counters.dropped == 0
    q.append(rows(5))  # 25 > 2 x 10: the oldest go even though sent
    assert q.depth == 20 and q.counters.dropped == 5
    assert q.floor_seq == 6
    q.append(rows(10))
    assert q.depth == 20 and q.counters.dropped == 15
    balanced(q)


def test_age_bound(path: Path) -> None:
    q = DurableQueue(path, max_age=60)
    q.append(rows(5, ts=time.time() - 3600))
    q.append(rows(3))
    assert q.depth == 3 and q.counters.dropped == 5
    assert q.floor_seq == 6
    balanced(q)


def test_failed_append_rolls_back(path: Path) -> None:
    q = DurableQueue(path)
    q.append(rows(3))
    q._db.execute(
        "CREATE TRIGGER boom BEFORE INSERT ON results WHEN NEW.seq = 5 "
        "BEGIN SELECT RAISE(ABORT, 'x'); END"
    )
    with pytest.raises(sqlite3.IntegrityError):
        q.append(rows(3))
    assert q.last_seq == 3 and q.depth == 3 and q.counters.produced == 3
    q._db.execute("DROP TRIGGER boom")
    assert q.append(rows(1)) == (4, 4)
    balanced(q)


def test_counters_durable_without_close(path: Path) -> None:
    """A crash (no close) keeps every committed append and ack."""
    q = DurableQueue(path)
    q.append(rows(100))
    q.ack(40)
    # no close: a second connection sees exactly the committed state
    other = DurableQueue(path)
    assert other.counters.produced == 100 and other.counters.acked == 40
    assert other.depth == 60 and other.floor_seq == 41
    balanced(other)
