"""Agent leases: one collector at a time applies an agent's results.

Several collectors share one database, and an agent fails over between them,
so the same result may reach two collectors (sent to A, unacked when A died or
was cut off, resent to B). Dedupe by sequence marks is exact only when one
collector at a time owns an agent's marks and counters. The lease is that
ownership: a row per agent naming its holder and an epoch.

- A stream's set-up takes the agent's lease unconditionally (epoch + 1) and
  loads the agent's marks and counters from the database in the same
  transaction: the newest stream is the one the agent uses, and whatever the
  previous holder committed is what the new one continues from.
- Ingest fences every group of batches: it locks the lease rows of the agents
  involved, checks it still holds each at the epoch of the stream the batch
  came on, applies only those batches in memory and commits marks and
  counters in that same transaction. A collector that lost the lease can
  therefore neither count nor commit, and the new holder's take waits for
  the lock, so it loads what the old holder committed last.
- A collector that finds its lease taken closes the agent's stream with
  ABORTED (at its next batch, or within a second from the poll of recent takes).

A database one collector owns (SQLite, locked by that collector at start)
keeps its leases in that collector's memory: there is nobody to fence.

The epoch, not a clock, decides: nothing expires, and a collector that comes
back after a pause finds its epoch stale at its first commit.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.metrics_core import Metric

from probemesh import __version__
from probemesh.collector.state import CounterKey

log = logging.getLogger(__name__)

POLL_WINDOW = 10.0
"""Seconds of recent takes each poll reads: the takes since the last poll, with
room for clocks that differ between collectors. A take the poll misses still
fences the stream at its next batch."""


def default_collector_id(grpc_listen: str) -> str:
    """hostname:grpc-port-xxxxxx, with a random suffix per start: a restarted
    collector is a new holder, whose memory owes nothing to the previous one."""
    port = grpc_listen.rpartition(":")[2]
    host = f"{socket.gethostname()}:{port}" if port else socket.gethostname()
    return f"{host}-{os.urandom(3).hex()}"


@dataclass(frozen=True)
class AgentRows:
    """An agent's dedupe mark and counters as committed in the database."""

    mark: int = 0
    ranges: list[list[int]] = field(default_factory=list)
    counters: dict[CounterKey, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Takeover:
    """A lease just taken: its epoch, who held it before, and the agent's rows."""

    epoch: int
    previous: str | None  # None: the agent's first lease
    rows: AgentRows | None  # None: memory already holds the agent's committed rows


@dataclass(frozen=True)
class LeaseRow:
    """One lease as the database has it."""

    holder: str
    epoch: int


class LeaseBook:
    """The leases this collector holds (agent -> epoch) and its lease metrics.

    Written by ingest only (take and fence): the epoch here is the one the
    in-memory marks and counters of the agent are valid for.
    """

    def __init__(self, holder: str) -> None:
        self.holder = holder
        self.epochs: dict[str, int] = {}
        self.takeovers_total = 0  # leases taken from another collector
        self.lost_total = 0  # leases another collector took from this one
        self.fenced_batches_total = 0  # batches refused because their stream's lease was gone

    def holds(self, agent_id: str, row: LeaseRow | None) -> bool:
        """The database row says this collector still holds the agent at our epoch."""
        epoch = self.epochs.get(agent_id)
        return epoch is not None and row == LeaseRow(self.holder, epoch)

    def took(self, agent_id: str, takeover: Takeover) -> None:
        self.epochs[agent_id] = takeover.epoch
        if takeover.previous not in (None, self.holder):
            self.takeovers_total += 1
            log.info(
                "took over agent %s from collector %s (lease epoch %d)",
                agent_id, takeover.previous, takeover.epoch,
            )  # fmt: skip

    def lose(self, agent_id: str, row: LeaseRow | None) -> bool:
        """Forget a lease another collector took; True the first time."""
        if self.epochs.pop(agent_id, None) is None:
            return False
        self.lost_total += 1
        log.info(
            "collector %s took over agent %s (lease epoch %s)",
            row.holder if row else "?", agent_id, row.epoch if row else "?",
        )  # fmt: skip
        return True

    def metric_families(self) -> Iterator[Metric]:
        info = InfoMetricFamily(
            "probemesh_collector", "This collector process", labels=["collector_id", "version"]
        )
        info.add_metric([self.holder, __version__], {})
        yield info
        yield GaugeMetricFamily(
            "probemesh_agent_leases",
            "Agents whose lease this collector holds (it alone applies their results)",
            value=len(self.epochs),
        )
        yield CounterMetricFamily(
            "probemesh_lease_takeovers",
            "Agent leases this collector took from another collector",
            value=self.takeovers_total,
        )
        yield CounterMetricFamily(
            "probemesh_lease_lost",
            "Agent leases another collector took from this one (the stream is closed)",
            value=self.lost_total,
        )
        yield CounterMetricFamily(
            "probemesh_lease_fenced_batches",
            "Result batches not applied because their stream no longer held the agent's lease",
            value=self.fenced_batches_total,
        )


def stream_taken_message(agent_id: str, row: LeaseRow | None) -> str:
    """The ABORTED status message of a stream whose lease another collector took."""
    by = f"collector {row.holder}" if row is not None else "another collector"
    return f"{by} took over agent {agent_id}; this stream is closed"
