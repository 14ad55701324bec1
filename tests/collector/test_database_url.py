"""--database: the URL's errors name the flag and never show the password; tokens on PostgreSQL.

Runs the real CLI against the throwaway PostgreSQL of tests/postgres.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from probemesh.collector.database import DatabaseError, open_database
from probemesh.errors import ConfigError
from tests.harness import free_port, run_cli, wait_for
from tests.postgres import PostgresCluster

SECRET = "hunter2-do-not-print"


def test_another_scheme_is_refused_without_its_password(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        open_database(f"mysql://probemesh:{SECRET}@127.0.0.1/mesh", tmp_path)
    assert "--database" in str(caught.value)
    assert "is not a postgresql:// URL" in str(caught.value)
    assert SECRET not in str(caught.value)


def test_a_malformed_url_is_refused_without_its_password(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        open_database(f"postgresql://probemesh:{SECRET}@[::1/mesh", tmp_path)
    assert "--database" in str(caught.value)
    assert SECRET not in str(caught.value)


def test_a_wrong_password_names_the_flag_not_the_password(
    postgres_cluster: PostgresCluster, postgres_url: str, tmp_path: Path
) -> None:
    dbname = postgres_url.rsplit("/", 1)[1]
    with pytest.raises(DatabaseError) as caught:
        open_database(postgres_cluster.url(dbname, password=SECRET), tmp_path)
    message = str(caught.value)
    assert message.startswith("--database postgresql://probemesh:***@127.0.0.1:")
    assert "cannot connect" in message
    assert "password authentication failed" in message
    assert SECRET not in message


def test_cli_errors_name_the_flag_and_hide_the_password(
    postgres_cluster: PostgresCluster, tmp_path: Path
) -> None:
    nobody = f"postgresql://probemesh:{SECRET}@127.0.0.1:{free_port()}/mesh"
    listed = run_cli("token", "list", "--database", nobody, check=False)
    assert listed.returncode == 1
    assert "--database postgresql://probemesh:***@127.0.0.1:" in listed.stderr
    assert "cannot connect" in listed.stderr
    wrong = postgres_cluster.url("postgres", password=SECRET)
    created = run_cli(
        "token", "create", "--database", wrong, "--agent-id", "vps-de-1", "--country", "DE",
        check=False,
    )  # fmt: skip
    assert created.returncode == 1
    assert "password authentication failed" in created.stderr
    other = run_cli("token", "list", "--database", f"sqlite://:{SECRET}@x/y", check=False)
    assert other.returncode == 2
    assert "--database" in other.stderr
    checks = tmp_path / "checks.yml"
    checks.write_text("modules: {}\nchecks: []\n")
    collector = run_cli(
        "collector", "--checks", str(checks), "--data-dir", str(tmp_path / "data"),
        "--grpc-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--database", nobody,
        check=False,
    )  # fmt: skip
    assert collector.returncode == 1
    assert "--database postgresql://probemesh:***@127.0.0.1:" in collector.stderr
    for run in (listed, created, other, collector):
        assert SECRET not in run.stdout + run.stderr


def test_token_commands_on_postgresql(postgres_url: str, tmp_path: Path) -> None:
    """Tokens made with --database are in PostgreSQL, not in a --data-dir SQLite file."""
    data_dir = tmp_path / "data"
    created = run_cli(
        "token", "create", "--database", postgres_url, "--data-dir", str(data_dir),
        "--agent-id", "vps-de-1", "--country", "DE",
    )  # fmt: skip
    token = created.stdout.strip()
    assert token.startswith("pm_")
    assert not (data_dir / "collector.sqlite3").exists()
    from probemesh.collector.tokens import TokenStore

    store = TokenStore(open_database(postgres_url, tmp_path).connect())
    assert store.verify(token).agent_id == "vps-de-1"
    listed = run_cli("token", "list", "--database", postgres_url).stdout
    assert "vps-de-1" in listed and "active" in listed
    assert (
        "revoked 1 token(s)"
        in run_cli("token", "revoke", "--database", postgres_url, "vps-de-1").stdout
    )
    assert "revoked" in run_cli("token", "list", "--database", postgres_url).stdout.splitlines()[1]
    assert (
        run_cli("token", "list", "--data-dir", str(data_dir)).stdout.count("\n") == 1
    )  # header only


def test_a_dropped_connection_is_opened_again(postgres_url: str, tmp_path: Path) -> None:
    """A server-side disconnect fails the statement that sees it; the next one reconnects."""
    from probemesh.collector.store import Store

    store = Store(open_database(postgres_url, tmp_path))

    def commit(mark: int) -> None:  # one ingest commit, as the fenced transaction
        store.begin_fence(["vps-1"])
        store.commit_fenced([("vps-1", mark, [])], [], [])

    commit(1)
    admin = open_database(postgres_url, tmp_path, migrate=False).connect()
    killed = admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
    ).fetchall()
    assert len(killed) == 2  # the store's two connections
    with pytest.raises(DatabaseError):
        commit(2)
    commit(3)
    with pytest.raises(DatabaseError):
        store.load_marks()
    assert store.load_marks() == {"vps-1": (3, [])}
    assert store.database.errors == {"connect": 0, "statement": 2}
    store.close()
    admin.close()


def test_one_session_at_a_time_holds_an_advisory_lock(postgres_url: str, tmp_path: Path) -> None:
    database = open_database(postgres_url, tmp_path)
    first, second = database.connect(), database.connect()
    assert first.try_advisory_lock(42)
    assert not second.try_advisory_lock(42)
    first.close()  # the lock goes with the session, once its server process has ended
    wait_for(lambda: second.try_advisory_lock(42), 10, "the lock after its session closed")
    second.close()
