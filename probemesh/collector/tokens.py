"""Agent tokens: random, shown once, stored only as SHA-256 hashes, revocable.

A token looks like ``pm_<id>_<secret>``. The id (not secret) finds the row; the
secret's hash is compared in constant time. Each token is bound to one agent id
and one country at creation, so a stolen token cannot pose as anyone else.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

from probemesh.collector.database import Connection
from probemesh.errors import AuthError, ConfigError
from probemesh.identity import agent_id_problem, country_problem

log = logging.getLogger(__name__)
TOUCH_EVERY = 5.0
"""Seconds the last uses of tokens gather before one transaction writes them
all: a fleet's streams touch their tokens every minute, and a reconnecting
fleet all at once, which would be a commit each (a third of a PostgreSQL
mesh's commits in the mesh benchmark)."""
FULL_CHECK_EVERY = 60.0
"""Seconds between two checks of every live stream's token (RevocationWatch)."""
P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True)
class TokenBinding:
    """What a valid token proves."""

    token_id: str
    agent_id: str
    country: str


@dataclass(frozen=True)
class TokenInfo:
    """A row of ``probemesh token list``."""

    token_id: str
    agent_id: str
    country: str
    created_at: float
    last_used: float | None
    revoked_at: float | None


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenStore:
    """Create, verify, list and revoke tokens in the collector database."""

    def __init__(self, db: Connection, worker: Executor | None = None) -> None:
        self.db = db
        self._given = worker
        self._thread: ThreadPoolExecutor | None = None
        self._touched: dict[str, float] = {}  # token id -> last use, not yet written
        self._touch_timer: asyncio.TimerHandle | None = None

    def _worker(self) -> Executor:
        """One thread for the token queries (the collector hands the thread of
        its database): a slow or locked disk holds up a connecting agent, never
        the event loop, and one thread keeps the queries on the connection in order."""
        if self._given is not None:
            return self._given
        if self._thread is None:
            self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokens")
        return self._thread

    async def in_thread(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a blocking method of this store in its database thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._worker(), lambda: fn(*args, **kwargs))

    def touch_later(self, token_id: str) -> None:
        """Record a token's use, written with the others of the next TOUCH_EVERY
        seconds in the database thread, without waiting for it.

        last_used is informational: a locked database delays or loses one
        write (logged), never the agent's connection.
        """
        self._touched[token_id] = time.time()
        if self._touch_timer is None:
            loop = asyncio.get_running_loop()
            self._touch_timer = loop.call_later(TOUCH_EVERY, self._write_touched)

    def _write_touched(self) -> None:
        touched, self._touched, self._touch_timer = self._touched, {}, None
        if touched:
            self._worker().submit(self.touch, touched).add_done_callback(_log_failure)

    async def close_thread(self) -> None:
        """Write the last uses gathered so far and let queued token writes
        finish (before the database closes)."""
        if self._touch_timer is not None:
            self._touch_timer.cancel()
            self._write_touched()
        if self._thread is not None:
            thread, self._thread = self._thread, None
            await asyncio.to_thread(thread.shutdown)

    def create(self, agent_id: str, country: str) -> str:
        """Return a new token for agent_id/country; only its hash is kept."""
        if problem := agent_id_problem(agent_id):
            raise ConfigError(f"--agent-id: {problem}")
        if problem := country_problem(country):
            raise ConfigError(f"--country: {problem}")
        token_id = secrets.token_hex(4)
        token = f"pm_{token_id}_{secrets.token_urlsafe(32)}"
        self.db.execute(
            "INSERT INTO tokens(token_id, hash, agent_id, country, created_at) VALUES(?, ?, ?, ?, ?)",
            (token_id, _hash(token), agent_id, country, time.time()),
        )
        return token

    def verify(self, token: str) -> TokenBinding:
        """Return the binding of a valid, unrevoked token; AuthError otherwise."""
        parts = token.split("_")
        if len(parts) < 3 or parts[0] != "pm":
            raise AuthError("malformed token")
        row = self.db.execute(
            "SELECT hash, agent_id, country, revoked_at FROM tokens WHERE token_id = ?", (parts[1],)
        ).fetchone()
        if row is None or not hmac.compare_digest(row[0], _hash(token)):
            raise AuthError("unknown token")
        if row[3] is not None:
            raise AuthError("token revoked")
        return TokenBinding(parts[1], row[1], row[2])

    def inactive(self, token_ids: set[str]) -> set[str]:
        """The token ids among token_ids that are revoked or gone.

        A few statements of many ids each, not one per token: asked about
        thousands of streams' tokens, a statement each would keep the
        database thread (lease takes, token checks of connecting agents) busy.
        """
        revoked_at = self.db.rows_by_key(
            "SELECT token_id, revoked_at FROM tokens WHERE token_id IN ({})", sorted(token_ids)
        )
        return {t for t in token_ids if t not in revoked_at or revoked_at[t] is not None}

    def tally(self) -> tuple[int, int]:
        """How many tokens there are, and how many of them are revoked: one
        row, which changes whenever a token is revoked or created."""
        total, revoked = self.db.execute(
            "SELECT count(*), count(revoked_at) FROM tokens"
        ).fetchone()
        return int(total), int(revoked)

    def touch(self, used: Mapping[str, float]) -> None:
        """Set the last use of tokens (token id -> time), in one transaction."""
        with self.db.transaction() as db:
            db.executemany(
                "UPDATE tokens SET last_used = ? WHERE token_id = ?",
                [(at, token_id) for token_id, at in sorted(used.items())],
            )

    def list(self) -> list[TokenInfo]:
        rows = self.db.execute(
            "SELECT token_id, agent_id, country, created_at, last_used, revoked_at FROM tokens "
            "ORDER BY agent_id, created_at"
        ).fetchall()
        return [TokenInfo(*row) for row in rows]

    def revoke(self, selector: str) -> int:
        """Revoke by token id or agent id; return how many tokens were revoked."""
        cur = self.db.execute(
            "UPDATE tokens SET revoked_at = ? WHERE (token_id = ? OR agent_id = ?) AND revoked_at IS NULL",
            (time.time(), selector, selector),
        )
        return cur.rowcount


def _log_failure(future: Future[None]) -> None:
    exc = future.exception()
    if exc is not None:
        log.warning("could not record the last use of tokens: %s", exc)


class RevocationWatch:
    """The live streams whose tokens were revoked or deleted, for a poll every second.

    A question about every live token is a few statements of thousands of ids
    each at a large mesh; the watch asks it only when the tokens' tally
    changed (a revocation), or every ``full_every`` seconds (a row deleted by
    hand while another was created keeps the tally). Otherwise it asks only
    about the tokens of streams opened since the last poll: their admission
    may have read a token revoked just before that poll.
    """

    def __init__(self, tokens: TokenStore, full_every: float = FULL_CHECK_EVERY) -> None:
        self.tokens = tokens
        self.full_every = full_every
        self._tally: tuple[int, int] | None = None
        self._since = -math.inf  # the last poll's time: streams opened since are new
        self._next_full = -math.inf

    def inactive(self, streams: Iterable[tuple[float, str]], now: float) -> set[str]:
        """The token ids of streams ((opened, token id), on the clock of now,
        listed at now) that are revoked or gone; runs on the tokens' thread.

        A poll that fails changes nothing: the next one asks again."""
        tally = self.tokens.tally()
        full = tally != self._tally or now >= self._next_full
        asked = {token for opened, token in streams if full or opened >= self._since}
        found = self.tokens.inactive(asked) if asked else set()
        self._tally, self._since = tally, now
        if full:
            self._next_full = now + self.full_every
        return found
