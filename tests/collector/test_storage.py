"""The shared storage suite: every test runs on SQLite and on a real PostgreSQL.

The ``database`` fixture (tests/conftest.py) opens a fresh database of each
kind, migrated; these tests hold the two backends to the same behaviour.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from probemesh.collector import tokens as tokens_module
from probemesh.collector.assignments import Span
from probemesh.collector.database import KEYS_PER_STATEMENT, Database, DatabaseError, open_database
from probemesh.collector.incidents import Event, Incident, IncidentBook
from probemesh.collector.migrations import migrate, steps
from probemesh.collector.store import Store
from probemesh.collector.tokens import RevocationWatch, TokenStore
from probemesh.errors import AuthError

# Seconds since the epoch with microseconds: a 4-byte REAL would round it to minutes.
PRECISE = 1764541234.123456
BIG = 3_000_000_000  # above a 32-bit INTEGER


def _url_of(database: Database) -> str | None:
    return getattr(database, "url", None)


def test_steps_exist_in_both_dialects_with_the_same_numbers_and_names() -> None:
    sqlite = [(s.version, s.name) for s in steps("sqlite")]
    postgresql = [(s.version, s.name) for s in steps("postgresql")]
    assert sqlite == postgresql
    assert [v for v, _ in sqlite] == list(range(1, len(sqlite) + 1))


def test_migrations_are_recorded_and_applied_once(database: Database) -> None:
    conn = database.connect()
    rows = conn.execute("SELECT version, name FROM schema_migrations ORDER BY version").fetchall()
    assert [(int(v), n) for v, n in rows] == [(s.version, s.name) for s in steps(database.dialect)]
    assert migrate(conn) == []  # already up to date
    conn.close()


def test_a_newer_schema_is_refused(database: Database, tmp_path: Path) -> None:
    conn = database.connect()
    conn.execute(
        "INSERT INTO schema_migrations(version, name, applied_at) VALUES(?, ?, ?)",
        (9999, "from_the_future", time.time()),
    )
    conn.close()
    with pytest.raises(DatabaseError, match="9999 was applied by a newer probemesh"):
        open_database(_url_of(database), tmp_path / "data")


def test_collectors_starting_together_migrate_once(database: Database, tmp_path: Path) -> None:
    """Eight openers race on a database with no schema: each step is applied exactly once."""
    conn = database.connect()
    with conn.transaction():
        for table in ("schema_migrations", "tokens", "marks", "counters", "histograms"):
            conn.execute(f"DROP TABLE {table}")
        for table in ("revisions", "assignments", "incidents", "leases"):
            conn.execute(f"DROP TABLE {table}")
        for table in ("inputs", "agents", "publishers", "evaluation", "evidence"):
            conn.execute(f"DROP TABLE verdict_{table}")
        conn.execute("DROP TABLE evidence_requests")
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def open_one() -> None:
        try:
            start.wait()
            open_database(_url_of(database), tmp_path / "data")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    rows = conn.execute("SELECT version FROM schema_migrations").fetchall()
    assert sorted(int(v) for (v,) in rows) == [s.version for s in steps(database.dialect)]
    conn.close()


async def test_token_uses_are_written_together_after_a_while(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Streams touch their tokens one at a time; one transaction writes them
    TOUCH_EVERY later, and close_thread writes what is still gathered."""
    monkeypatch.setattr(tokens_module, "TOUCH_EVERY", 0.2)
    db = database.connect()
    tokens = TokenStore(db)
    ids = [tokens.verify(tokens.create(f"vps-de-{i}", "DE")).token_id for i in range(3)]
    transactions = 0
    transaction = db.transaction

    def counting() -> Any:
        nonlocal transactions
        transactions += 1
        return transaction()

    db.transaction = counting  # type: ignore[method-assign]

    async def used() -> dict[str, float | None]:
        """Read in the store's thread, behind any write queued there."""
        return {info.token_id: info.last_used for info in await tokens.in_thread(tokens.list)}

    tokens.touch_later(ids[0])
    tokens.touch_later(ids[1])
    assert set((await used()).values()) == {None}, "nothing is written before TOUCH_EVERY"
    await asyncio.sleep(0.3)
    assert {i for i, at in (await used()).items() if at is not None} == {ids[0], ids[1]}
    assert transactions == 1
    tokens.touch_later(ids[2])
    await tokens.close_thread()
    assert None not in {info.last_used for info in tokens.list()}
    assert transactions == 2


def test_tokens_create_verify_list_revoke(database: Database) -> None:
    tokens = TokenStore(database.connect())
    secret = tokens.create("vps-de-1", "DE")
    other = tokens.create("vps-br-1", "BR")
    binding = tokens.verify(secret)
    assert (binding.agent_id, binding.country) == ("vps-de-1", "DE")
    with pytest.raises(AuthError, match="unknown token"):
        tokens.verify(secret[:-1] + ("A" if secret[-1] != "A" else "B"))
    tokens.touch({binding.token_id: time.time()})
    listed = {info.agent_id: info for info in tokens.list()}
    assert set(listed) == {"vps-de-1", "vps-br-1"}
    assert listed["vps-de-1"].last_used is not None
    assert listed["vps-br-1"].last_used is None
    assert tokens.revoke("vps-de-1") == 1
    assert tokens.revoke("vps-de-1") == 0  # already revoked
    with pytest.raises(AuthError, match="revoked"):
        tokens.verify(secret)
    other_id = tokens.verify(other).token_id
    assert tokens.inactive({binding.token_id, other_id, "gone"}) == {binding.token_id, "gone"}


def test_inactive_asks_in_chunks_not_per_token(database: Database) -> None:
    """The per-second revocation check of every live stream's token costs a
    few statements, not one per token, and still names each revoked or gone one."""
    db = database.connect()
    tokens = TokenStore(db)
    count = 2 * KEYS_PER_STATEMENT + 7
    for i in range(count):
        tokens.create(f"vps-{i}", "DE")
    ids = {info.token_id for info in tokens.list()}
    revoked = {info.token_id for info in tokens.list() if info.agent_id in ("vps-3", "vps-900")}
    assert tokens.revoke("vps-3") == 1 and tokens.revoke("vps-900") == 1
    statements = 0
    execute = db.execute

    def counting(sql: str, params: Any = ()) -> Any:
        nonlocal statements
        statements += 1
        return execute(sql, params)

    db.execute = counting  # type: ignore[method-assign]
    assert tokens.inactive(ids | {"gone"}) == revoked | {"gone"}
    assert statements == 3


def test_the_revocation_watch_names_each_revoked_or_deleted_live_token(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every live token is asked about when the tally changes or the full check
    is due; in between only the tokens of streams opened since the last poll,
    which may have been admitted just before their token was revoked."""
    tokens = TokenStore(database.connect())
    a, b, c, d = (
        tokens.verify(tokens.create(agent, "DE")).token_id
        for agent in ("vps-1", "vps-2", "vps-3", "vps-4")
    )
    watch = RevocationWatch(tokens, full_every=60)
    assert watch.inactive([(0, a)], now=1) == set()
    tokens.revoke("vps-2")  # its stream, admitted just before, is not live yet
    assert watch.inactive([(0, a)], now=2) == set()
    assert watch.inactive([(0, a), (2.5, b)], now=3) == {b}
    # The same token's new stream replaces a cut one after the poll that cut it.
    tokens.revoke("vps-1")
    assert watch.inactive([(0, a)], now=4) == {a}
    assert watch.inactive([(4.5, a)], now=5) == {a}
    # A poll that fails leaves the watch as it was: the next one asks again.
    tokens.revoke("vps-4")

    def failing(asked: set[str]) -> set[str]:
        raise DatabaseError("connection lost")

    with monkeypatch.context() as patch:
        patch.setattr(tokens, "inactive", failing)
        with pytest.raises(DatabaseError):
            watch.inactive([(0, d)], now=6)
    assert watch.inactive([(0, d)], now=7) == {d}
    # A row deleted while another is created keeps the tally: the full check finds it.
    tokens.create("vps-5", "DE")
    database.connect().execute("DELETE FROM tokens WHERE token_id = ?", (c,))
    assert watch.inactive([(0, c)], now=8) == set()
    assert watch.inactive([(0, c)], now=66) == set()
    assert watch.inactive([(0, c)], now=67) == {c}


def test_a_token_is_seen_by_every_connection(database: Database) -> None:
    """Another collector (another connection) verifies a token the moment it is created."""
    secret = TokenStore(database.connect()).create("vps-de-1", "DE")
    assert TokenStore(database.connect()).verify(secret).agent_id == "vps-de-1"


def commit(
    store: Store,
    marks: list[tuple[str, int, list[list[int]]]],
    counters: object,
    histograms: list[tuple[tuple[str, ...], list[float]]],
) -> dict[tuple[str, ...], list[float]]:
    """One ingest commit: the fenced transaction, opened and committed."""
    store.begin_fence([agent for agent, _, _ in marks])
    return store.commit_fenced(marks, counters, histograms)  # type: ignore[arg-type]


def test_marks_counters_histograms_round_trip(database: Database) -> None:
    store = Store(database)
    commit(
        store,
        [("vps-1", BIG, [[BIG + 5, BIG + 9]]), ("vps-2", 7, [])],
        [(("results", "web", "vps-1", "DE", "success"), BIG),
         (("results", "web", "vps-2", "BR", "failure"), 3)],
        [(("duration", "web", "DE"), [0.25, 1.5, PRECISE])],
    )  # fmt: skip
    stored = commit(  # upserts; histogram deltas add up
        store,
        [("vps-2", 8, [[10, 11]])],
        [(("results", "web", "vps-2", "BR", "failure"), 4)],
        [(("duration", "web", "DE"), [1, 0, 0.5])],
    )
    assert stored == {("duration", "web", "DE"): [1.25, 1.5, PRECISE + 0.5]}
    store.close()
    reopened = Store(database)
    assert reopened.load_marks() == {"vps-1": (BIG, [[BIG + 5, BIG + 9]]), "vps-2": (8, [[10, 11]])}
    assert reopened.load_counters() == {
        ("results", "web", "vps-1", "DE", "success"): BIG,
        ("results", "web", "vps-2", "BR", "failure"): 4,
    }
    assert reopened.load_histograms() == {("duration", "web", "DE"): [1.25, 1.5, PRECISE + 0.5]}
    reopened.close()


def test_a_failed_commit_writes_nothing(database: Database) -> None:
    """Marks, counters and histograms are one transaction: a failure midway leaves none of them."""
    store = Store(database)
    key = ("results", "web", "vps-1", "DE", "success")
    commit(store, [("vps-1", 5, [])], [(key, 5)], [])

    def counters_then_failure():  # type: ignore[no-untyped-def]
        yield (key, 9)
        raise RuntimeError("the process died mid-commit")

    with pytest.raises(RuntimeError):
        commit(store, [("vps-1", 9, [])], counters_then_failure(), [])
    assert store.load_marks() == {"vps-1": (5, [])}
    assert store.load_counters() == {key: 5}
    # The connection is usable after the rollback.
    commit(store, [("vps-1", 10, [])], [], [])
    assert store.load_marks()["vps-1"][0] == 10
    store.close()


def test_histogram_deltas_add_to_an_earlier_runs_rows_and_never_to_a_failed_commit(
    database: Database,
) -> None:
    """A commit adds to what is stored: rows an earlier run committed, and not
    what a failed commit would have written."""
    key = ("duration", "web", "DE")
    earlier = Store(database)
    commit(earlier, [], [], [(key, [1.0, 0.5])])
    earlier.close()
    store = Store(database)
    assert commit(store, [], [], [(key, [2.0, 0.25])]) == {key: [3.0, 0.75]}

    def counters_then_failure():  # type: ignore[no-untyped-def]
        yield (("results", "web", "vps-1", "DE", "success"), 1)
        raise RuntimeError("the process died mid-commit")

    with pytest.raises(RuntimeError):
        commit(store, [("vps-1", 1, [])], counters_then_failure(), [(key, [5.0, 5.0])])
    assert commit(store, [], [], [(key, [1.0, 0.25])]) == {key: [4.0, 1.0]}
    store.close()
    assert Store(database).load_histograms() == {key: [4.0, 1.0]}


def test_commits_adding_the_same_new_histogram_rows_wait_instead_of_deadlocking(
    postgres_url: str, tmp_path: Path
) -> None:
    """Two collectors' commits add the same new histogram rows (every collector's
    first results), each in its own order, while a third transaction still
    holds one of them: the first has added b and waits for z, the second has
    added a and waits for b. Once z is free the first would wait for a, held by
    the second, and PostgreSQL would abort one of them as a deadlock; rows
    created and locked in key order make the second wait for the first instead."""
    database = open_database(postgres_url, tmp_path / "data")
    first, second = Store(database), Store(database)
    a, b, z = (("duration", "web", country) for country in ("AT", "BE", "ZA"))
    watcher = database.connect()

    def waiting() -> int:
        row = watcher.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE wait_event_type = 'Lock' AND datname = current_database()"
        ).fetchone()
        return int(row[0])

    failures: list[BaseException] = []

    def run(store: Store, histograms: list[tuple[tuple[str, ...], list[float]]]) -> None:
        try:
            commit(store, [], [], histograms)
        except BaseException as exc:
            failures.append(exc)

    threads = [
        threading.Thread(target=run, args=(first, [(b, [1.0]), (z, [1.0]), (a, [1.0])])),
        threading.Thread(target=run, args=(second, [(a, [2.0]), (b, [2.0])])),
    ]
    with database.connect().transaction() as third:
        third.execute("INSERT INTO histograms(key, state) VALUES(?, ?)", (json.dumps(z), "[4.0]"))
        for count, thread in enumerate(threads, 1):
            thread.start()
            deadline = time.monotonic() + 10
            while waiting() < count:  # the first waits for the third, the second for the first
                assert time.monotonic() < deadline, "the commits never waited for each other"
                time.sleep(0.02)
    for thread in threads:
        thread.join(30)
    assert failures == []
    assert first.load_histograms() == {a: [3.0], b: [3.0], z: [5.0]}
    first.close()
    second.close()


def test_revisions_and_assignment_spans(database: Database) -> None:
    store = Store(database)
    assert store.load_revision() is None
    store.save_revision(1, "digest-a", PRECISE)
    store.save_revision(2, "digest-b", PRECISE)
    store.save_revision(2, "digest-b", PRECISE)  # a second collector, same file: no error
    assert store.load_revision() == (2, "digest-b")
    kept = Span("web", "https://a.example/", "http_2xx", 1, 2)
    expired = Span("dns", "a.example", "dns_a", 1, 1, closed_at=PRECISE, expires_at=PRECISE + 60)
    store.save_spans("vps-1", [kept, expired])
    store.save_spans("vps-1", [Span("web", "https://a.example/", "http_2xx", 1, 3)])  # upsert
    loaded = store.load_spans()
    assert sorted(loaded["vps-1"], key=lambda s: s.check) == [
        expired,
        Span("web", "https://a.example/", "http_2xx", 1, 3),
    ]
    assert store.prune_spans(PRECISE + 61) == 1
    assert [s.check for s in store.load_spans()["vps-1"]] == ["web"]
    store.close()


def test_incidents_persist_and_resume(database: Database) -> None:
    book = IncidentBook(database)
    open_one = Incident(1, "web", PRECISE, "regional", "regional", ["BR"], ["BR"])
    open_one.timeline.append(Event(PRECISE, "opened", ["BR"]))
    closed = Incident(2, "dns", PRECISE - 100, "global", "global", [], ["DE", "JP"])
    closed.ended_at = PRECISE - 10
    book.save([open_one.to_row(), closed.to_row()])
    book.close()
    resumed = IncidentBook(database)
    assert list(resumed.active) == ["web"]
    assert resumed.active["web"].started_at == PRECISE
    assert resumed.active["web"].timeline[0].event == "opened"
    assert [i.id for i in resumed.closed] == [2]
    assert resumed.closed[0].peak_countries == ["DE", "JP"]
    assert resumed.next_id == 3
    resumed.close()


def test_a_sqlite_file_from_before_migrations_is_adopted_with_its_data(tmp_path: Path) -> None:
    """A collector.sqlite3 written before schema_migrations existed keeps every row."""
    import sqlite3

    path = tmp_path / "collector.sqlite3"
    old = sqlite3.connect(path)
    old.executescript(
        """
        CREATE TABLE tokens (token_id TEXT PRIMARY KEY, hash TEXT NOT NULL,
            agent_id TEXT NOT NULL, country TEXT NOT NULL, created_at REAL NOT NULL,
            last_used REAL, revoked_at REAL);
        CREATE TABLE marks (agent_id TEXT PRIMARY KEY, mark INTEGER NOT NULL, ranges TEXT NOT NULL);
        CREATE TABLE counters (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
        CREATE TABLE incidents (id INTEGER PRIMARY KEY, check_name TEXT NOT NULL,
            started_at REAL NOT NULL, ended_at REAL, data TEXT NOT NULL);
        INSERT INTO marks VALUES ('vps-1', 41, '[]');
        INSERT INTO counters VALUES ('["results", "web", "vps-1", "DE", "success"]', 41);
        """
    )
    old.commit()
    old.close()
    database = open_database(None, tmp_path)
    store = Store(database)
    assert store.load_marks() == {"vps-1": (41, [])}
    assert store.load_counters() == {("results", "web", "vps-1", "DE", "success"): 41}
    store.save_revision(1, "digest", PRECISE)  # the tables it lacked now exist
    rows = store.db.execute("SELECT version FROM schema_migrations").fetchall()
    assert [int(v) for (v,) in rows] == [s.version for s in steps("sqlite")]
    store.close()


def test_a_failed_statement_is_counted_and_names_the_database(database: Database) -> None:
    conn = database.connect()
    with pytest.raises(DatabaseError) as caught:
        conn.execute("SELECT * FROM no_such_table")
    assert "no_such_table" in str(caught.value)
    assert database.errors == {"connect": 0, "statement": 1}
    with pytest.raises(DatabaseError), conn.transaction():
        conn.execute("INSERT INTO marks(agent_id, mark, ranges) VALUES(?, ?, ?)", ("a", 1, "[]"))
        conn.execute("INSERT INTO marks(agent_id, mark, ranges) VALUES(?, ?, ?)", ("a", 2, "[]"))
    assert conn.execute("SELECT COUNT(*) FROM marks").fetchone()[0] == 0  # rolled back whole
    assert database.errors["statement"] == 2
    conn.close()
