"""The webhook outbox: events not yet delivered, kept in --data-dir across restarts.

A file of its own (``webhooks.sqlite3``), so its writes never wait for the
collector database's locks. Every write runs in a worker thread, one at a time
and in the order asked, through :meth:`Outbox.run`; the event loop only queues
them. An event is written when it is queued and deleted once it is delivered
or given up on, so a restarted collector resumes what was pending, in order.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from probemesh.errors import StateError

log = logging.getLogger(__name__)

FILE_NAME = "webhooks.sqlite3"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    url TEXT NOT NULL,
    delivery TEXT NOT NULL,
    incident INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    event TEXT NOT NULL,
    body BLOB NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (url, delivery)
);
"""


@dataclass(frozen=True)
class Pending:
    """One event waiting for one URL."""

    url: str
    delivery: str
    incident: int
    seq: int
    event: str
    body: bytes
    created: float  # Unix time it was queued


class Outbox:
    """Pending webhook events in SQLite; see the module docstring."""

    def __init__(self, data_dir: Path) -> None:
        path = data_dir / FILE_NAME
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StateError(f"{path}: cannot open the webhook outbox: {exc}") from None
        self._ops: asyncio.Queue[tuple[str, list[Pending]]] = asyncio.Queue()

    def load(self) -> list[Pending]:
        """Everything pending, per URL and incident in timeline order."""
        rows = self.db.execute(
            "SELECT url, delivery, incident, seq, event, body, created FROM outbox "
            "ORDER BY url, incident, seq"
        ).fetchall()
        return [Pending(*row) for row in rows]

    def add(self, items: Iterable[Pending]) -> None:
        self._ops.put_nowait(("add", list(items)))

    def remove(self, item: Pending) -> None:
        self._ops.put_nowait(("remove", [item]))

    @property
    def backlog(self) -> int:
        return self._ops.qsize()

    def _write(self, op: str, items: list[Pending]) -> None:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            if op == "add":
                db.executemany(
                    "INSERT OR REPLACE INTO outbox VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [
                        (i.url, i.delivery, i.incident, i.seq, i.event, i.body, i.created)
                        for i in items
                    ],
                )
            else:
                db.executemany(
                    "DELETE FROM outbox WHERE url = ? AND delivery = ?",
                    [(i.url, i.delivery) for i in items],
                )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    async def run(self) -> None:
        """Apply the queued writes in order until cancelled, then the rest."""
        current: asyncio.Future[None] | None = None
        try:
            while True:
                op, items = await self._ops.get()
                current = asyncio.ensure_future(asyncio.to_thread(self._apply, op, items))
                await asyncio.shield(current)
                current = None
        finally:
            if current is not None:  # cancelling does not stop the thread: let it finish
                await asyncio.gather(current, return_exceptions=True)
            self.flush()

    def flush(self) -> None:
        """Apply every queued write now, in this thread."""
        while not self._ops.empty():
            self._apply(*self._ops.get_nowait())

    def _apply(self, op: str, items: list[Pending]) -> None:
        try:
            self._write(op, items)
        except sqlite3.Error:  # the events are still queued in memory; only a restart loses them
            log.exception("webhook outbox: cannot %s %d events", op, len(items))

    def close(self) -> None:
        self.db.close()
