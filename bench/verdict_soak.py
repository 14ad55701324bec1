"""Soak of the lost-uplink race: N repetitions of each case on real namespaces.

Four agents (BR, DE, JP, UG) in their own network namespaces probe three HTTP
checks (2 s interval, 1 s timeout) on one target host. Each repetition
restarts the agents (every check gets a new random phase) and cuts at a random
moment in the probe cycle:

- lost_uplink: nftables drops every packet from UG to the target host for
  --uplink-seconds, then the rule goes. Every incident is a false one.
- regional: nftables drops UG's packets to one check's port (a real outage of
  one service seen from one country with one agent). Exactly that incident,
  with UG its only country, must open.

Prints one line per repetition and the counts; exits 1 if any false incident
opened or any real one was missed. Needs root (namespaces, nftables).

    .venv/bin/python bench/verdict_soak.py --reps 20
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.scenario.netns import Topology, netns_problem
from tests.scenario.verdict_mesh import (
    COUNTRIES,
    DETECTION_BOUND,
    INTERVAL,
    Rep,
    VerdictMesh,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=20, help="repetitions of each case (20)")
    parser.add_argument("--uplink-seconds", type=float, default=20.0, help="cut length (20)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (random)")
    args = parser.parse_args()
    problem = netns_problem()
    if problem:
        print(f"verdict soak cannot run: {problem}", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    print(f"seed {seed}; interval {INTERVAL:g}s; detection bound {DETECTION_BOUND:g}s")
    topo = Topology(len(COUNTRIES))
    started = time.monotonic()
    reps: list[Rep] = []
    with tempfile.TemporaryDirectory(prefix="verdict-soak-") as tmp:
        vm = VerdictMesh(topo, Path(tmp), random.Random(seed))
        try:
            topo.create()
            vm.start()
            for n in range(args.reps):
                for rep in (vm.lost_uplink(args.uplink_seconds), vm.regional("home")):
                    reps.append(rep)
                    latency = "-" if rep.latency is None else f"{rep.latency:.1f}s"
                    print(
                        f"rep {n + 1:2d} {rep.case:11s} false={rep.false_incidents} "
                        f"found={rep.found if rep.case == 'regional' else '-'} "
                        f"latency={latency} UG states={sorted(rep.states)}",
                        flush=True,
                    )
                    for incident in rep.new_incidents:
                        print(f"         incident: {incident['summary']}", flush=True)
        except BaseException:
            print(vm.logs(), file=sys.stderr)
            raise
        finally:
            vm.stop()
            topo.destroy()
    lost = [r for r in reps if r.case == "lost_uplink"]
    real = [r for r in reps if r.case == "regional"]
    latencies = [r.latency for r in real if r.latency is not None]
    false_lost = sum(r.false_incidents for r in lost)
    false_real = sum(r.false_incidents for r in real)
    found = sum(r.found for r in real)
    flagged = sum("local_problem" in r.states for r in lost)
    print(
        f"\nlost_uplink: {false_lost} false incidents in {len(lost)} runs; flagged {flagged}/{len(lost)}"
    )
    print(f"regional:    {found}/{len(real)} real incidents found; {false_real} false incidents")
    if latencies:
        print(
            f"detection latency: median {statistics.median(latencies):.1f}s, "
            f"max {max(latencies):.1f}s (bound {DETECTION_BOUND:g}s)"
        )
    print(f"took {time.monotonic() - started:.0f}s")
    return 0 if false_lost == false_real == 0 and found == len(real) else 1


if __name__ == "__main__":
    raise SystemExit(main())
