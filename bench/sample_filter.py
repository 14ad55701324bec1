"""CPU per result of ingest's hot path, in isolation: decoding, the sample filter, applying.

Decodes ``--batches`` 1,000-result batches of the 10-sample HTTP results
bench/ingest.py sends, then times (thread CPU time, best of ``--passes``):

* the sample filter reading every result's samples (``SampleFilter.keep``),
* the filter matching each result's encoding first (``keep_result``, what ingest uses),
* ``Ingest._apply_batch`` over the batches (validation, filter, counters, latest).

    .venv/bin/python bench/sample_filter.py
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.ingest import CHECKS, payloads
from probemesh.collector.assignments import AssignmentHistory
from probemesh.collector.database import open_database
from probemesh.collector.ingest import Ingest, _Item
from probemesh.collector.samples import SampleFilter
from probemesh.collector.sessions import Session
from probemesh.collector.state import AgentInfo, MeshState
from probemesh.collector.store import Store
from probemesh.v1 import mesh_pb2 as pb
from probemesh.wire import encode_batch


def best(passes: int, run: Callable[[], None]) -> float:
    """Fewest thread CPU seconds of passes runs."""
    times = []
    for _ in range(passes):
        started = time.thread_time()
        run()
        times.append(time.thread_time() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--passes", type=int, default=5)
    args = parser.parse_args()
    raw = payloads(1000)
    encoded = [encode_batch(1 + i * 1000, 1, raw) for i in range(args.batches)]
    n = args.batches * 1000
    batches: list[pb.ResultBatch] = []

    def decode() -> None:
        batches[:] = [pb.AgentMessage.FromString(e).results for e in encoded]

    decoding = best(args.passes, decode)
    results = [r for b in batches for r in b.results]

    def read_samples() -> None:
        keep = SampleFilter().keep
        for r in results:
            keep(r.samples)

    def match_encoding() -> None:
        keep = SampleFilter().keep_result
        for r in results:
            keep(r, r.check, r.revision)

    with tempfile.TemporaryDirectory() as tmp:
        store = Store(open_database(None, Path(tmp)))
        state = MeshState()
        ingest = Ingest(state, store, AssignmentHistory(store, "bench"))
        agent = AgentInfo("bench-1", "DE")
        agent.assigned = {f"c{i}": "http://127.0.0.1/" for i in range(CHECKS)}
        agent.revision = 1
        state.agents[agent.agent_id] = agent
        session = Session(agent, "token", 0)

        def apply() -> None:
            ingest.marks.clear()
            for batch in batches:
                for _ in ingest._apply_batch(_Item(session, batch), None, [], []):
                    pass

        applying = best(args.passes, apply)
        store.close()
    print(f"{n:,} results, thread CPU per result, best of {args.passes}:")
    print(f"  decode (1,000-result batches)        {decoding / n * 1e6:6.2f} µs")
    print(
        f"  sample filter, reading the samples   {best(args.passes, read_samples) / n * 1e6:6.2f} µs"
    )
    print(
        f"  sample filter, matching the encoding {best(args.passes, match_encoding) / n * 1e6:6.2f} µs"
    )
    print(f"  _apply_batch (what ingest runs)      {applying / n * 1e6:6.2f} µs")


if __name__ == "__main__":
    main()
