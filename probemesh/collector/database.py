"""The collector's shared-state database: SQLite in --data-dir, or PostgreSQL (--database).

This module owns every difference between the two dialects: how to connect,
the placeholders (code writes ``?``; PostgreSQL gets ``%s``), how a write
transaction starts (SQLite's ``BEGIN IMMEDIATE`` takes the write lock up front,
PostgreSQL's ``BEGIN`` relies on row locks), row locks themselves and advisory
locks. Everyone else writes portable SQL: ``INSERT ... ON CONFLICT(...) DO
UPDATE SET x=excluded.x`` means the same on both engines.

Statements run in threads (the collector's database thread, the ingest commit
thread), never on the event loop. A ``Connection`` is used by one thread at a
time; whoever needs a session of its own (a long-held lock) opens another.

Driver errors surface as ``DatabaseError``, whose message never holds the
password of a PostgreSQL URL.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import sqlite3
import threading
import urllib.parse
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from prometheus_client.core import CounterMetricFamily, Metric

from probemesh.errors import ConfigError, StateError

SQLITE_FILE = "collector.sqlite3"
POSTGRES_SCHEMES = ("postgresql://", "postgres://")
CONNECT_TIMEOUT = 10  # seconds; a URL's own connect_timeout wins
ERROR_KINDS = ("connect", "statement")
KEYS_PER_STATEMENT = 500  # parameters of one IN list (SQLite's old bound is 999)


class DatabaseError(StateError):
    """A statement or connection failed; the message holds no password."""


class Rows(Protocol):
    """What a statement returns (a DB-API cursor of either driver)."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Connection:
    """One session with the database, used by one thread at a time."""

    dialect = ""

    def __init__(self, database: Database) -> None:
        self.database = database

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Rows:
        raise NotImplementedError

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        raise NotImplementedError

    def transaction(self) -> contextlib.AbstractContextManager[Connection]:
        """A write transaction: committed on exit, rolled back on an exception."""
        raise NotImplementedError

    def for_update(self, select: str) -> str:
        """select, locking the rows it reads until the transaction ends."""
        return select

    def rows_by_key(self, select: str, keys: list[str], lock: bool = False) -> dict[str, Any]:
        """Rows whose first column is one of keys (sorted), a few statements of
        KEYS_PER_STATEMENT keys each; with lock, locked in key order until the
        transaction ends: transactions that lock in key order never deadlock.

        select has one ``{}`` for the placeholders; the value is the row's rest
        (one column: the value itself).
        """
        found: dict[str, Any] = {}
        for first in range(0, len(keys), KEYS_PER_STATEMENT):
            chunk = keys[first : first + KEYS_PER_STATEMENT]
            statement = select.format(", ".join("?" * len(chunk))) + " ORDER BY 1"
            if lock:
                statement = self.for_update(statement)
            for key, *rest in self.execute(statement, chunk).fetchall():
                found[key] = rest[0] if len(rest) == 1 else tuple(rest)
        return found

    def advisory_xact_lock(self, key: int) -> None:
        """Wait for an exclusive lock on key, held until the transaction ends.

        SQLite needs none: its write transactions already exclude each other.
        """

    def try_advisory_lock(self, key: int) -> bool:
        """Take a session lock on key if no other session holds it; True if held now.

        Held until this connection closes or drops (then the next call, on a
        reopened connection, competes again). SQLite: always True, since one
        collector owns a SQLite file.
        """
        return True

    def close(self) -> None:
        raise NotImplementedError


class Database:
    """Where the shared state lives; opens connections to it, counts what failed."""

    dialect = ""
    # Several collectors may write at once, kept apart by row locks (PostgreSQL);
    # False: one collector owns the database (a SQLite file), whose write lock
    # covers the whole file and is not held while ingest works in memory.
    shared = False

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.errors: dict[str, int] = dict.fromkeys(ERROR_KINDS, 0)

    def failed(self, kind: str) -> None:
        """Count a failure (connections report them from their threads)."""
        with self._lock:
            self.errors[kind] += 1

    def metric_families(self) -> Iterator[Metric]:
        errors = CounterMetricFamily(
            "probemesh_database_errors",
            "Failures of the collector database: connect (a connection could not be opened) "
            "or statement (a statement or transaction failed; its work is done again later)",
            labels=["kind"],
        )
        for kind, count in self.errors.items():
            errors.add_metric([kind], count)
        yield errors

    @property
    def display(self) -> str:
        """The database as logs and errors may show it (no password)."""
        raise NotImplementedError

    def claim(self) -> None:
        """Claim the database for this collector process, if it is one collector's alone."""

    def release(self) -> None:
        """Give back what claim took."""

    def connect(self) -> Connection:
        raise NotImplementedError


class SqliteDatabase(Database):
    """A SQLite file in WAL mode: one collector, the embedded default."""

    dialect = "sqlite"

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self._claim: int | None = None

    @property
    def display(self) -> str:
        return str(self.path)

    def claim(self) -> None:
        """Lock the file for this collector: a second collector on it fails to start.

        The collector keeps leases and dedupe marks of a SQLite database in
        memory (it alone writes them), which two collectors would corrupt.
        The lock is the kernel's: it goes with the process, however it ends.
        """
        lock = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise StateError(
                f"{self.path}: another collector is using this database; a SQLite database "
                "belongs to one collector (several collectors share PostgreSQL: --database)"
            ) from None
        self._claim = fd

    def release(self) -> None:
        if self._claim is not None:
            os.close(self._claim)
            self._claim = None

    def connect(self) -> Connection:
        return SqliteConnection(self)


class SqliteConnection(Connection):
    dialect = "sqlite"

    def __init__(self, database: SqliteDatabase) -> None:
        super().__init__(database)
        path = database.path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA busy_timeout=5000")
        except (OSError, sqlite3.Error) as exc:
            database.failed("connect")
            raise DatabaseError(f"{path}: cannot open the collector database: {exc}") from None
        self.raw = db

    def _error(self, exc: sqlite3.Error) -> DatabaseError:
        self.database.failed("statement")
        return DatabaseError(f"{self.database.display}: {exc}")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Rows:
        try:
            return self.raw.execute(sql, params)
        except sqlite3.Error as exc:
            raise self._error(exc) from exc

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        try:
            self.raw.executemany(sql, rows)
        except sqlite3.Error as exc:
            raise self._error(exc) from exc

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Connection]:
        self.execute("BEGIN IMMEDIATE")
        try:
            yield self
        except BaseException:
            if self.raw.in_transaction:  # some errors (a full disk) have rolled it back already
                self.raw.execute("ROLLBACK")
            raise
        self.execute("COMMIT")

    def close(self) -> None:
        self.raw.close()


class PostgresDatabase(Database):
    """A PostgreSQL database that several collectors share (libpq URL)."""

    dialect = "postgresql"
    shared = True

    def __init__(self, url: str) -> None:
        import psycopg.conninfo

        super().__init__()
        self.url = url
        self.secrets = {_password(url)}
        try:
            params = psycopg.conninfo.conninfo_to_dict(url)
        except psycopg.Error as exc:
            raise ConfigError(
                f"--database: not a valid PostgreSQL URL: {self.scrub(str(exc))}"
            ) from None
        self.secrets.add(str(params.get("password") or ""))
        self.extra: dict[str, Any] = {"application_name": "probemesh-collector"}
        if "connect_timeout" not in params:
            self.extra["connect_timeout"] = CONNECT_TIMEOUT

    @property
    def display(self) -> str:
        return _redact_url(self.url)

    def scrub(self, text: str) -> str:
        """text on one line, without the URL's password wherever a driver message quotes it."""
        text = " ".join(text.replace(self.url, self.display).split())
        for secret in self.secrets:
            if secret:
                text = text.replace(secret, "***")
        return text

    def connect(self) -> Connection:
        return PostgresConnection(self)


class PostgresConnection(Connection):
    """An autocommit psycopg connection: statements outside transaction() commit alone.

    A connection the server dropped (a restart, a failover) is opened again
    by the next statement outside a transaction; the statement that saw the
    loss fails with DatabaseError.
    """

    dialect = "postgresql"

    def __init__(self, database: PostgresDatabase) -> None:
        super().__init__(database)
        self.pg = database
        self.raw = self._open()
        self._in_transaction = False

    def _open(self) -> Any:
        import psycopg

        try:
            return psycopg.connect(self.pg.url, autocommit=True, **self.pg.extra)
        except psycopg.Error as exc:
            self.pg.failed("connect")
            raise DatabaseError(
                f"--database {self.pg.display}: cannot connect: {self.pg.scrub(str(exc))}"
            ) from None

    def _live(self) -> Any:
        if self.raw.closed and not self._in_transaction:
            self.raw = self._open()
        return self.raw

    def _error(self, exc: Exception) -> DatabaseError:
        self.pg.failed("statement")
        return DatabaseError(f"{self.pg.display}: {self.pg.scrub(str(exc))}")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Rows:
        import psycopg

        try:
            return self._live().execute(_pg_sql(sql), params or None)  # type: ignore[no-any-return]
        except psycopg.Error as exc:
            raise self._error(exc) from exc

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        import psycopg

        try:
            with self._live().cursor() as cur:
                cur.executemany(_pg_sql(sql), list(rows))
        except psycopg.Error as exc:
            raise self._error(exc) from exc

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Connection]:
        import psycopg

        try:
            tx = self._live().transaction()
            tx.__enter__()
        except psycopg.Error as exc:
            raise self._error(exc) from exc
        self._in_transaction = True
        try:
            yield self
        except BaseException as exc:
            self._in_transaction = False
            with contextlib.suppress(psycopg.Error):  # a dropped connection has rolled back
                tx.__exit__(type(exc), exc, exc.__traceback__)
            raise
        self._in_transaction = False
        try:
            tx.__exit__(None, None, None)
        except psycopg.Error as exc:
            raise self._error(exc) from exc

    def for_update(self, select: str) -> str:
        return f"{select} FOR UPDATE"

    def advisory_xact_lock(self, key: int) -> None:
        self.execute("SELECT pg_advisory_xact_lock(?)", (key,))

    def try_advisory_lock(self, key: int) -> bool:
        return bool(self.execute("SELECT pg_try_advisory_lock(?)", (key,)).fetchone()[0])

    def close(self) -> None:
        self.raw.close()


def check_url(url: str) -> PostgresDatabase:
    """The PostgreSQL database a --database URL names (not connected yet); ConfigError otherwise."""
    if not url.startswith(POSTGRES_SCHEMES):
        raise ConfigError(
            f"--database: {_redact_url(url)!r} is not a postgresql:// URL "
            "(leave --database unset for SQLite in --data-dir)"
        )
    return PostgresDatabase(url)


def open_database(url: str | None, data_dir: Path, migrate: bool = True) -> Database:
    """The database --database names (SQLite in data_dir without one), schema brought up to date.

    ConfigError for a URL of another kind; DatabaseError when it cannot be
    reached or its schema is newer than this code.
    """
    database: Database = SqliteDatabase(data_dir / SQLITE_FILE) if not url else check_url(url)
    if migrate:
        from probemesh.collector.migrations import migrate as run_migrations

        conn = database.connect()
        try:
            run_migrations(conn)
        finally:
            conn.close()
    return database


@functools.lru_cache(maxsize=256)
def _pg_sql(sql: str) -> str:
    """A statement written with ``?`` placeholders in psycopg's ``%s`` form."""
    return sql.replace("%", "%%").replace("?", "%s")


def _password(url: str) -> str:
    try:
        return urllib.parse.urlsplit(url).password or ""
    except ValueError:
        return ""


def _redact_url(url: str) -> str:
    """url with its password (in the authority or the query) replaced by ***."""
    try:
        parts = urllib.parse.urlsplit(url)
        netloc = parts.netloc
        if parts.password is not None:
            userinfo, _, hosts = netloc.rpartition("@")
            user = userinfo.partition(":")[0]
            netloc = f"{user}:***@{hosts}"
        query = "&".join(
            f"{key}=***" if key == "password" else f"{key}={value}"
            for key, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        )
        return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, ""))
    except ValueError:
        return "(an unparsable URL)"
