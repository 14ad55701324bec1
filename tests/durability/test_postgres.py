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


def test_collector_on_postgresql_survives_sigkill_and_restart(
    mesh: Mesh, start_agent: StartAgent, targets: tuple[str, str], postgres_url: str
) -> None:
    mesh.database = postgres_url
    mesh.start_collector()
    agents: list[AgentRef] = [start_agent("pg-br", "BR"), start_agent("pg-de", "DE")]
    for agent in agents:
        wait_for(
            lambda a=agent: total(
                mesh.metrics(), "probemesh_probe_results_total", agent=a.agent_id
            ),  # type: ignore[misc]
            20,
            f"results from {agent.agent_id}",
        )
    for stop in ("kill", "stop"):
        time.sleep(1.5)  # batches in flight, marks and counters being committed
        assert mesh.collector is not None
        before = collector_total(mesh)
        getattr(mesh.collector, stop)()
        mesh.start_collector()
        # Counters continue from the database: never below what was scraped before.
        assert collector_total(mesh) >= before, (stop, before, mesh.collector.log(40))

        def grew(before: float = before) -> bool:
            return collector_total(mesh) > before

        wait_for(grew, 20, f"ingest after the collector's {stop}")
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
        counted = conn.execute("SELECT key, value FROM counters").fetchall()
    # Every result applied, none dropped: each agent's mark is its last sequence number.
    assert marks == {agent: int(n) for agent, n in produced.items()}
    # The persisted counters are what /metrics showed last (results and policy refusals).
    stored = sum(value for key, value in counted if json.loads(key)[0] in ("results", "refused"))
    assert stored == figures["collector"], (counted[:5], figures)
