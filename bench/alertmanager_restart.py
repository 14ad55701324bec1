"""Soak: an Alertmanager restart at a random phase of an incident, many times.

Each run starts a real Alertmanager (Debian prometheus-alertmanager) and a
recording receiver, opens one incident through the AlertmanagerNotifier
(resend 0.5 s), restarts Alertmanager before, during or after the incident
closes, shifted by a random offset within the re-send cycle, and counts the
notifications people got. The promise: exactly one firing and one resolved
notification every time (tests/alerting/restart_scenario.py has the phases).

    .venv/bin/python bench/alertmanager_restart.py --runs 24
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.alerting import restart_scenario


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=24)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    counts: collections.Counter[tuple[str, str]] = collections.Counter()
    delays: dict[str, list[float]] = collections.defaultdict(list)
    for n in range(args.runs):
        phase = restart_scenario.PHASES[n % len(restart_scenario.PHASES)]
        offset = rng.uniform(0, restart_scenario.RESEND)
        with tempfile.TemporaryDirectory(prefix="probemesh-am-soak-") as root:
            outcome = await restart_scenario.run(Path(root), phase, offset, settle=1.0)
        verdict = "ok" if (outcome.firing, outcome.resolved) == (1, 1) else "WRONG"
        counts[(phase, verdict)] += 1
        delays[phase].append(outcome.resolved_after)
        print(
            f"run {n + 1:3d} phase={phase:6s} offset={offset:.2f}s firing={outcome.firing} "
            f"resolved={outcome.resolved} resolved_after={outcome.resolved_after:.2f}s {verdict}",
            flush=True,
        )
    print()
    print("phase   ok  wrong  close -> resolved notification (median, max)")
    for phase in restart_scenario.PHASES:
        d = sorted(delays[phase])
        print(
            f"{phase:6s} {counts[(phase, 'ok')]:3d}  {counts[(phase, 'WRONG')]:5d}  "
            f"{d[len(d) // 2]:.2f}s, {d[-1]:.2f}s"
        )
    return 0 if not any(v == "WRONG" for _, v in counts) else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
