"""Soak: run test files again and again on a loaded host and count each test's failures.

Usage: .venv/bin/python bench/flaky_soak.py [--runs 20] [--hogs 2] [--tree DIR] PYTEST_ARGS...
e.g.   .venv/bin/python bench/flaky_soak.py --runs 10 --hogs 2 -- \
           tests/agent/probes/test_http_probe.py -k transfer_phase

CI runs the suite in two pytest workers on two cores, so a test shares the
host with another test file and its processes. A test that waits for a
fixed time instead of for its condition, or races its own set-up, passes
alone and fails there. --hogs starts that many busy Python processes (as
many as the cores: the other worker and its collectors) for the whole soak.
Each run is a fresh pytest process (its own event loops, imports and
temporary dirs), as each CI session is. --tree runs the tests of another
checkout (e.g. a `git archive` of main) with its own probemesh on
PYTHONPATH, for a before/after under the same load.

Prints one line per run and then, per test, passes, failures and the
median and largest duration.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOG = "while True: pass"


def outcomes(junit: Path) -> dict[str, tuple[str, float]]:
    """Each test case's outcome (passed, failed, error, skipped) and seconds;
    prints the message of each failure."""
    found: dict[str, tuple[str, float]] = {}
    for case in ET.parse(junit).iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        kinds = {child.tag: child for child in case}
        outcome = next((k for k in ("failure", "error", "skipped") if k in kinds), "passed")
        if outcome in ("failure", "error"):
            print(f"    {name}: {(kinds[outcome].get('message') or '')[:500]}")
        found[name] = ({"failure": "failed"}.get(outcome, outcome), float(case.get("time", 0)))
    return found


def run_once(tree: Path, args: list[str], junit: Path) -> tuple[int, float]:
    env = dict(os.environ, PYTHONPATH=str(tree))
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly"]
    started = time.monotonic()
    done = subprocess.run(
        [*command, f"--junitxml={junit}", *args],
        cwd=tree,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=False,
    )
    return done.returncode, time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--hogs", type=int, default=0, help="busy processes beside the tests")
    parser.add_argument("--tree", type=Path, default=ROOT, help="checkout whose tests run")
    parser.add_argument("pytest_args", nargs="+")
    opts = parser.parse_args()
    hogs = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(opts.hogs)]
    results: dict[str, list[tuple[str, float]]] = defaultdict(list)
    try:
        with tempfile.TemporaryDirectory(prefix="flaky-soak-") as tmp:
            for n in range(opts.runs):
                junit = Path(tmp) / f"run{n}.xml"
                code, seconds = run_once(opts.tree.resolve(), opts.pytest_args, junit)
                print(f"run {n + 1}/{opts.runs}: exit {code}, {seconds:.1f} s, "
                      f"load {os.getloadavg()[0]:.2f}", flush=True)  # fmt: skip
                if junit.exists():
                    for name, outcome in outcomes(junit).items():
                        results[name].append(outcome)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    print(f"\n{'passed':>6} {'failed':>6} {'median s':>8} {'max s':>7}  test")
    for name, seen in sorted(results.items()):
        times = [t for _, t in seen]
        passed = sum(o == "passed" for o, _ in seen)
        bad = sum(o in ("failed", "error") for o, _ in seen)
        print(f"{passed:6d} {bad:6d} {statistics.median(times):8.2f} {max(times):7.2f}  {name}")


if __name__ == "__main__":
    main()
