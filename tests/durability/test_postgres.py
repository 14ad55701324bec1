"""A real collector on a real PostgreSQL, with real agents: a SIGKILL and a restart
lose no result, count none twice, and continue counters and marks exactly.

The database is the throwaway cluster of tests/postgres.py; the collector keeps
nothing of this in --data-dir (no collector.sqlite3 appears there).
"""

from __future__ import annotations

import json
import time

import psycopg

from tests.durability.common import (
    AgentRef,
    assert_disk_matches,
    assert_exact_accounting,
    checks_yaml,
    collector_total,
    quiesce,
)
from tests.durability.conftest import StartAgent
from tests.harness import Mesh, total, wait_for
from tests.postgres import PostgresCluster


def test_collector_on_postgresql_survives_sigkill_and_restart(
    mesh: Mesh, start_agent: StartAgent, targets: tuple[str, str], postgres_url: str
) -> None:
    mesh.database = postgres_url
    mesh.start_collector()
    agents: list[AgentRef] = [start_agent("pg-br", "BR"), start_agent("pg-de", "DE")]
    streaming(mesh, agents)
    for stop in ("kill", "stop"):
        time.sleep(1.5)  # batches in flight, marks and counters being committed
        assert mesh.collector is not None
        getattr(mesh.collector, stop)()
        # What survives is what was committed (a SIGKILL loses results applied in
        # memory but not committed: unacked, the agents send them again).
        before = stored_results(postgres_url)
        assert before > 0
        mesh.start_collector()
        # Counters continue from the database, not from zero.
        assert collector_total(mesh) >= before, (stop, before, mesh.collector.log(40))

        def grew(before: float = before) -> bool:
            return collector_total(mesh) > before

        wait_for(grew, 20, f"ingest after the collector's {stop}")
    assert_stored_exactly(mesh, agents, targets, postgres_url)


def test_collector_rides_out_a_database_outage(
    mesh: Mesh,
    start_agent: StartAgent,
    targets: tuple[str, str],
    postgres_cluster: PostgresCluster,
    postgres_url: str,
) -> None:
    """PostgreSQL refuses every connection for a while: the collector stays up, refuses new
    streams with UNAVAILABLE (the agent retries), holds Acks while commits fail, and
    resumes on its own once the database is back, with exact counts.

    Batches whose commit failed stay unacked; their streams end with UNAVAILABLE
    and the agent sends them again on a new stream.
    """
    mesh.database = postgres_url
    dbname = postgres_url.rsplit("/", 1)[1]
    mesh.start_collector()
    first = start_agent("pg-br", "BR")
    streaming(mesh, [first])
    late_token = mesh.token("pg-de", "DE")  # created before the outage
    with psycopg.connect(postgres_cluster.url(), autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS false')
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (dbname,)
        )
        second = start_agent("pg-de", "DE", token=late_token)
        wait_for(
            lambda: total(mesh.metrics(), "probemesh_ingest_rejected_total", reason="database"),
            20,
            "a stream refused while the database is down",
        )
        acked = total(first.metrics(), "probemesh_agent_results_acked_total")
        time.sleep(2.0)
        # No commit, no Ack: the agent keeps its results.
        assert total(first.metrics(), "probemesh_agent_results_acked_total") == acked
        assert mesh.collector is not None and mesh.collector.alive()
        admin.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS true')
    streaming(mesh, [first, second])
    wait_for(
        lambda: total(first.metrics(), "probemesh_agent_results_acked_total") > acked,
        20,
        "Acks after the database came back",
    )
    errors = {
        kind: total(mesh.metrics(), "probemesh_database_errors_total", kind=kind)
        for kind in ("connect", "statement")
    }
    assert errors["connect"] > 0 and errors["statement"] > 0, errors
    log = mesh.collector.log()
    assert "could not persist" in log, log[-3000:]
    assert postgres_cluster.password not in log
    assert_stored_exactly(mesh, [first, second], targets, postgres_url)


def streaming(mesh: Mesh, agents: list[AgentRef]) -> None:
    for agent in agents:
        wait_for(
            lambda a=agent: total(
                mesh.metrics(), "probemesh_probe_results_total", agent=a.agent_id
            ),  # type: ignore[misc]
            20,
            f"results from {agent.agent_id}",
        )


def assert_stored_exactly(
    mesh: Mesh, agents: list[AgentRef], targets: tuple[str, str], postgres_url: str
) -> None:
    """Quiesce, then: exact accounting on /metrics, and PostgreSQL holds the same marks and counts."""
    quiesce(mesh, checks_yaml(*targets, countries="AQ"), agents)
    figures = assert_exact_accounting(mesh, agents)
    assert figures["produced"] > 200, "the rate was too low to prove anything"
    produced = {
        a.agent_id: total(a.metrics(), "probemesh_agent_results_produced_total") for a in agents
    }
    mesh.stop()
    assert_disk_matches(agents, figures)
    assert not (mesh.data_dir / "collector.sqlite3").exists()
    with psycopg.connect(postgres_url) as conn:
        marks = dict(conn.execute("SELECT agent_id, mark FROM marks").fetchall())
    # Every result applied, none dropped: each agent's mark is its last sequence number.
    assert marks == {agent: int(n) for agent, n in produced.items()}
    # The persisted counters are what /metrics showed last.
    assert stored_results(postgres_url) == figures["collector"], figures


def stored_results(postgres_url: str) -> int:
    """The results (and policy refusals) counted in the database's committed counters."""
    with psycopg.connect(postgres_url) as conn:
        counted = conn.execute("SELECT key, value FROM counters").fetchall()
    return sum(value for key, value in counted if json.loads(key)[0] in ("results", "refused"))
