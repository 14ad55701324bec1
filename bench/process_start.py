"""What a probemesh process costs to start, with and without its bytecode cache.

The test suite starts hundreds of collectors and agents. Where
PYTHONDONTWRITEBYTECODE is set (many container images set it) and nothing
wrote probemesh's ``__pycache__``, each of them compiles every probemesh
module it imports from source. This starts a collector (until /readyz
answers) and an agent (until its /metrics answers) --runs times from a copy
of the package without a cache, then again after compileall wrote one, and
prints the CPU (user + system) and wall time of each start.

    .venv/bin/python bench/process_start.py --runs 5
"""

from __future__ import annotations

import argparse
import compileall
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import probemesh

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.harness import create_token, free_port


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def start(args: list[str], url: str, env: dict[str, str], log: Path) -> tuple[float, float]:
    """CPU and wall seconds from exec to url answering 200; the process is then stopped."""
    cpu, wall = children_cpu(), time.monotonic()
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "probemesh", *args],
            env=env,
            cwd=env["PYTHONPATH"],
            stdout=out,
            stderr=out,
        )
    try:
        while not answers(url):
            if proc.poll() is not None or time.monotonic() - wall > 30:
                raise SystemExit(f"{args[0]} did not start: see {log}")
            time.sleep(0.02)
        ready = time.monotonic() - wall
        # The process's CPU is counted once it is reaped: SIGKILL, so no shutdown work counts.
        proc.kill()
        proc.wait()
        return children_cpu() - cpu, ready
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def measure(root: Path, env: dict[str, str], runs: int) -> dict[str, list[tuple[float, float]]]:
    grpc, http = free_port(), free_port()
    data = root / "data"
    checks = root / "checks.yaml"
    checks.write_text("modules: {}\nchecks: []\n")
    token = create_token("agent-1", "DE", data)
    collector = [
        "collector", "--checks", str(checks), "--data-dir", str(data),
        "--grpc-listen", f"127.0.0.1:{grpc}", "--http-listen", f"127.0.0.1:{http}",
    ]  # fmt: skip
    metrics = free_port()
    agent = [
        "agent", "--collector", f"127.0.0.1:{grpc}", "--agent-id", "agent-1", "--country", "DE",
        "--token", token, "--state-dir", str(root / "agent"), "--insecure",
        "--metrics-listen", f"127.0.0.1:{metrics}",
    ]  # fmt: skip
    out: dict[str, list[tuple[float, float]]] = {"collector": [], "agent": []}
    for _ in range(runs):
        out["collector"].append(
            start(collector, f"http://127.0.0.1:{http}/readyz", env, root / "collector.log")
        )
        out["agent"].append(
            start(agent, f"http://127.0.0.1:{metrics}/metrics", env, root / "agent.log")
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="probemesh-start-") as tmp:
        root = Path(tmp)
        copy = root / "src"
        shutil.copytree(
            Path(probemesh.__file__).parent,
            copy / "probemesh",
            ignore=shutil.ignore_patterns("__pycache__"),
        )
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(copy)}
        cases = {}
        for case in ("no cache", "cache"):
            if case == "cache":
                compileall.compile_dir(copy, quiet=1)
            run_root = root / case.replace(" ", "-")
            run_root.mkdir()
            cases[case] = measure(run_root, env, args.runs)
    print(f"{args.runs} starts each; median (min-max) to ready")
    for case, by_kind in cases.items():
        for kind, figures in by_kind.items():
            cpu = [c for c, _ in figures]
            wall = [w for _, w in figures]
            print(
                f"{case:>9} {kind:>9}: CPU {statistics.median(cpu):.2f} s "
                f"({min(cpu):.2f}-{max(cpu):.2f}), wall {statistics.median(wall):.2f} s "
                f"({min(wall):.2f}-{max(wall):.2f})"
            )


if __name__ == "__main__":
    main()
