"""A throwaway PostgreSQL cluster for the tests, and the fixtures that hand it out.

The cluster is the Debian package's own server (initdb and pg_ctl from
/usr/lib/postgresql/<version>/bin), run as the ``postgres`` OS user because
initdb refuses root. Its data directory and socket live in a temp dir, it
listens on 127.0.0.1 on a free port, and password authentication
(scram-sha-256) is on, as in production. It is stopped and removed when the
test session ends.

Durability settings (fsync, synchronous_commit) are off for the tests: they
crash collectors, never the database server, and a loaded CI machine should not
wait on the disk for what a crash of the server alone would prove. Benchmarks
start it with ``durable=True``, as a production server runs.

Fixtures: ``postgres_cluster`` (one per session) and ``postgres_url`` (a fresh,
empty database per test; CREATE DATABASE copies a template in milliseconds).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import free_port

USER = "probemesh"


def bin_dir() -> Path | None:
    """The newest installed PostgreSQL's bin directory, if any."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4])
    )
    return Path(found[-1]).parent if found else None


def unavailable() -> str | None:
    """Why no cluster can be started here, or None."""
    if bin_dir() is None:
        return (
            "PostgreSQL is not installed (scripts/test.sh installs the Debian package postgresql)"
        )
    if os.geteuid() != 0:
        return "starting PostgreSQL needs root: the server runs as the postgres OS user"
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return "no postgres OS user (the Debian package postgresql creates it)"
    return None


class PostgresCluster:
    """One server on 127.0.0.1:<free port>, its files in a temp dir."""

    def __init__(self, durable: bool = False) -> None:
        self.durable = durable
        found = bin_dir()
        assert found is not None, unavailable()
        self.bin = found
        self.owner = pwd.getpwnam("postgres")
        self.root = Path(tempfile.mkdtemp(prefix="probemesh-pg-"))
        os.chown(self.root, self.owner.pw_uid, self.owner.pw_gid)
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.password = secrets.token_urlsafe(18)
        self.port = 0
        self._databases = 0

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            args,
            user=self.owner.pw_uid,
            group=self.owner.pw_gid,
            extra_groups=[],
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def start(self) -> None:
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        os.chown(pwfile, self.owner.pw_uid, self.owner.pw_gid)
        done = self._run(
            str(self.bin / "initdb"),
            "--pgdata",
            str(self.data),
            "--username",
            USER,
            "--pwfile",
            str(pwfile),
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--no-locale",  # whatever locales the machine has generated
            "--no-sync",
        )
        pwfile.unlink()
        if done.returncode:
            raise RuntimeError(f"initdb failed: {done.stderr[-2000:]}")
        for _ in range(3):  # the free port may be taken before the server binds it
            self.port = free_port()
            settings = (
                f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} "
                "-c max_connections=200"
            )
            if not self.durable:
                settings += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            started = self._run(
                str(self.bin / "pg_ctl"),
                "--pgdata",
                str(self.data),
                "--log",
                str(self.log),
                "--wait",
                "--timeout=60",
                "-o",
                settings,
                "start",
            )
            if started.returncode == 0:
                return
        raise RuntimeError(f"PostgreSQL did not start: {self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return "(no server log)"

    def url(self, dbname: str = "postgres", password: str | None = None) -> str:
        secret = self.password if password is None else password
        return f"postgresql://{USER}:{secret}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self) -> str:
        """A new empty database; returns its URL."""
        import psycopg

        self._databases += 1
        name = f"test_{self._databases}_{secrets.token_hex(3)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return self.url(name)

    def stop(self) -> None:
        if self.port:
            self._run(
                str(self.bin / "pg_ctl"), "--pgdata", str(self.data), "-m", "immediate", "stop"
            )
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    cluster = PostgresCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def postgres_url(postgres_cluster: PostgresCluster) -> str:
    """The URL (password included) of a fresh database on the session's cluster."""
    return postgres_cluster.create_database()
