"""Measure the same benchmark on two source trees in one run (--baseline, --tree).

A benchmark that imports this module before probemesh imports probemesh from
the tree named after ``--tree`` when there is one, else from this checkout. With
``--baseline DIR`` it runs itself once per tree, each in its own process, so
two versions of the code are measured side by side on the same host and load.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

TREE = Path(__file__).resolve().parent.parent
if "--tree" in sys.argv:
    TREE = Path(sys.argv[sys.argv.index("--tree") + 1]).resolve()
sys.path.insert(0, str(TREE))


def measure_trees(
    script: str, baseline: Path | None, argv: list[str]
) -> list[tuple[str, dict[str, Any], float, float]]:
    """Run script with argv and --tree for the baseline (if any), then this tree;
    each child prints its figures as JSON. Returns (label, figures, load average
    before, after) per tree, baseline first."""
    runs = []
    for label, tree in (("baseline", baseline), ("this tree", Path(__file__).parent.parent)):
        if tree is None:
            continue
        before = os.getloadavg()[0]
        child = subprocess.run(
            [sys.executable, script, "--tree", str(tree), *argv],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        runs.append((label, json.loads(child.stdout), before, os.getloadavg()[0]))
    return runs
