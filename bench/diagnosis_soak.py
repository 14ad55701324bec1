"""Soak of the diagnosis race: N repetitions of the fault cases on real namespaces.

The diagnosis depends on timing: which arrives first, a failing agent's
evidence or the control's, where in the probe cycle a fault lands, and which
evidence is still around from the previous case. One mesh (the network of
tests/scenario/diagnosis_mesh.py: 7 countries, two routers, an origin) runs
every repetition; each one waits a random part of the probe interval, injects
the four faults (lying resolver for UG, TCP reset for ET, blockpage DNAT for CN,
router drop for NG and GH) in a random order with random gaps, waits for the
diagnoses, lifts the faults, then makes the origin answer 500 to everyone.

Per repetition it records whether every country reached its kind (and the
controls KE, DE stayed up with no diagnosis) and kept it for --hold seconds
while the agents refresh their evidence, the time to get there, and every
wrong kind seen on the way (a kind other than the final one and other than
`unknown`, which only says "not decided yet"). Prints one line per repetition
and the counts (and the detail of each wrong kind the first time it shows); exits
1 on any wrong final kind. Needs root.

    .venv/bin/python bench/diagnosis_soak.py --reps 20
"""

from __future__ import annotations

import argparse
import random
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.scenario.diagnosis_mesh import BLOCKED, CONTROLS, COUNTRIES, Network, Scenario
from tests.scenario.netns import netns_problem

INTERVAL = 2.0
EXPECTED = {**BLOCKED, "NG": "path", "GH": "path"}
FAULTS = ("lie", "reset", "blockpage", "drop")


def watch(
    sc: Scenario, expected: dict[str, str], timeout: float
) -> tuple[bool, float, Counter[str]]:
    """Poll until every country has its expected kind; (reached, seconds, wrong kinds seen)."""
    start = time.monotonic()
    wrong: Counter[str] = Counter()
    while time.monotonic() - start < timeout:
        countries = sc.countries()
        kinds = {cc: (c["diagnosis"] or {}).get("kind") for cc, c in countries.items()}
        for cc, kind in kinds.items():
            if kind not in (None, "unknown", expected.get(cc)):
                if not wrong[f"{cc}:{kind}"]:
                    print(
                        f"  first {cc}:{kind}: {countries[cc]['diagnosis']['detail']}", flush=True
                    )
                wrong[f"{cc}:{kind}"] += 1
        controls_ok = all(
            countries[cc]["state"] == "up" and countries[cc]["diagnosis"] is None
            for cc in CONTROLS
            if cc not in expected
        )
        if controls_ok and all(kinds.get(cc) == kind for cc, kind in expected.items()):
            return True, time.monotonic() - start, wrong
        time.sleep(0.25)
    return False, time.monotonic() - start, wrong


def hold(sc: Scenario, expected: dict[str, str], seconds: float) -> Counter[str]:
    """Poll for seconds while the faults stay: every poll where a country has left
    the kind it reached (refreshed evidence must not undo a diagnosis)."""
    relapses: Counter[str] = Counter()
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        for cc, c in sc.countries().items():
            kind = (c["diagnosis"] or {}).get("kind")
            if cc in expected and kind != expected[cc]:
                relapses[f"{cc}:{kind}"] += 1
        time.sleep(0.25)
    return relapses


def wait_all_up(sc: Scenario, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            countries = sc.countries()
        except OSError:  # the collector is still starting
            time.sleep(0.5)
            continue
        if countries and all(
            c["state"] == "up" and c["diagnosis"] is None for c in countries.values()
        ):
            return True
        time.sleep(0.5)
    return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--hold", type=float, default=12.0,
        help="seconds the faults stay once every kind is reached, longer than the "
             "agents' evidence refresh (10 s here)",
    )  # fmt: skip
    args = parser.parse_args()
    problem = netns_problem()
    if problem:
        print(f"diagnosis soak skipped: {problem}")
        return 0
    # SIGTERM unwinds like Ctrl-C, so the namespaces and processes are removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    rng = random.Random(args.seed)
    net = Network()
    results: Counter[str] = Counter()
    times: dict[str, list[float]] = {"blocking+path": [], "origin": []}
    wrong_total: Counter[str] = Counter()
    relapses_total: Counter[str] = Counter()
    with tempfile.TemporaryDirectory() as tmp:
        sc = Scenario(net, Path(tmp))
        try:
            net.create()
            sc.start()
            if not wait_all_up(sc, 90):
                print("mesh never came up\n" + sc.logs())
                return 1
            for rep in range(1, args.reps + 1):
                time.sleep(rng.uniform(0, INTERVAL))
                order = rng.sample(FAULTS, len(FAULTS))
                for fault in order:
                    sc.inject(fault)
                    time.sleep(rng.uniform(0, 1.0))
                ok, took, wrong = watch(sc, EXPECTED, 60)
                relapses = hold(sc, EXPECTED, args.hold) if ok else Counter()
                relapses_total.update(relapses)
                results[f"blocking+path {'ok' if ok else 'FAILED'}"] += 1
                if ok:
                    results[f"kinds held {'ok' if not relapses else 'FAILED'}"] += 1
                times["blocking+path"].append(took)
                wrong_total.update(wrong)
                sc.lift_all()
                up = wait_all_up(sc)
                time.sleep(rng.uniform(0, INTERVAL))
                sc.set_control(fail_500=True)
                ok_origin, took_origin, wrong_o = watch(sc, dict.fromkeys(COUNTRIES, "origin"), 60)
                results[f"origin {'ok' if ok_origin else 'FAILED'}"] += 1
                times["origin"].append(took_origin)
                wrong_total.update(wrong_o)
                sc.lift_all()
                up = wait_all_up(sc) and up
                results[f"recovered {'ok' if up else 'FAILED'}"] += 1
                print(
                    f"rep {rep:2}: order {','.join(order):27} blocking+path "
                    f"{'ok' if ok else 'FAILED'} {took:5.1f}s, origin "
                    f"{'ok' if ok_origin else 'FAILED'} {took_origin:5.1f}s, "
                    f"transient wrong kinds {dict(wrong) | dict(wrong_o) or '-'}, "
                    f"relapses {dict(relapses) or '-'}",
                    flush=True,
                )
        finally:
            sc.stop()
            net.destroy()
    print(
        f"\n{args.reps} repetitions: " + ", ".join(f"{k}: {v}" for k, v in sorted(results.items()))
    )
    for name, values in times.items():
        if values:
            print(
                f"time to every kind, {name}: median {statistics.median(values):.1f}s, "
                f"max {max(values):.1f}s"
            )
    print(f"transient wrong kinds (polls at 0.25 s): {dict(wrong_total) or 'none'}")
    print(
        f"relapses once reached, over {args.hold:g} s with the faults on (polls at 0.25 s): "
        f"{dict(relapses_total) or 'none'}"
    )
    return 1 if any("FAILED" in k for k in results) else 0


if __name__ == "__main__":
    sys.exit(main())
