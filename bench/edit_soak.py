"""Soak: edit the checks file while agents hold a backlog, many times over.

Repeats one scenario of tests/durability/test_revisions.py (real collector and
agents) and prints, per run, what the agents produced, what the collector
counted, what it rejected and how many late results of each edit kind it
counted. Where a kill lands in the replay varies from run to run with the
machine's load; every run must still end exact.

    .venv/bin/python bench/edit_soak.py --runs 20 --scenario restarts_during_replay
"""

from __future__ import annotations

import argparse
import ast
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ("restart", "sighup_while_cut_off", "restarts_during_replay")


def run_once(scenario: str) -> tuple[bool, dict[str, float], dict[str, float], float]:
    started = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
            f"tests/durability/test_revisions.py::test_edited_checks_never_lose_buffered_results[{scenario}]",
        ],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    accounting = re.search(r"accounting: (\{.*?\}) rejected", proc.stdout)
    late = re.search(r"late results counted per edit: (\{.*?\})", proc.stdout)
    figures = ast.literal_eval(accounting.group(1)) if accounting else {}
    counted_late = ast.literal_eval(late.group(1)) if late else {}
    if proc.returncode:
        print(proc.stdout[-3000:], file=sys.stderr)
    return proc.returncode == 0, figures, counted_late, time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--scenario", choices=SCENARIOS, default="restarts_during_replay")
    args = parser.parse_args()
    passed = 0
    print(f"{'run':>3} {'ok':>3} {'produced':>8} {'counted':>8} {'rejected':>8} "
          f"{'late(remove/narrow/retarget)':>28} {'s':>5}")  # fmt: skip
    for run in range(1, args.runs + 1):
        ok, figures, late, seconds = run_once(args.scenario)
        passed += ok
        kinds = "/".join(f"{v:.0f}" for v in late.values()) or "-"
        print(
            f"{run:>3} {'yes' if ok else 'NO':>3} {figures.get('produced', 0):>8.0f} "
            f"{figures.get('collector', 0):>8.0f} {figures.get('rejected', 0):>8.0f} "
            f"{kinds:>28} {seconds:>5.1f}",
            flush=True,
        )
    print(f"{args.scenario}: {passed}/{args.runs} runs exact")
    sys.exit(0 if passed == args.runs else 1)


if __name__ == "__main__":
    main()
