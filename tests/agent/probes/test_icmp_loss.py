"""ICMP loss, RTT and jitter checked against losses and delays we inject ourselves (root).

Each test gets its own network namespace (``pmi<hex>``, deleted in the fixture's
finalizer) with only ``lo`` up, adds an nftables table there and runs the probe
inside it (``ip netns exec NS python -c PROBER``), which prints the result as
JSON. The nftables rules carry a ``counter``, so the number of packets the
kernel really dropped is known and the probe's figures can be checked against
it exactly, not only against the share the rule aims at:

- requests dropped at ``output`` (``numgen random mod 2``, about half): the
  kernel refuses those sends with EPERM; they count as sent and lost.
- replies dropped at ``input`` (``numgen inc mod 4``, exactly one in four).
- everything dropped (requests or replies), and nothing dropped.

RTT and jitter go through ``tests.netem.DelayLine`` (two namespaces joined by a
userspace delay line): a constant 25 ms each way must show up as min and average
RTT of 50-54 ms, with jitter under 2 ms.

Root only (CI runs as root); skipped with the reason otherwise. About 6 s in all.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.netem import B_IP, DelayLine

ROOT = Path(__file__).resolve().parents[3]
PACKETS = 40
# Back-to-back requests on loopback are all answered within a few ms; 0.5 s is ample.
SECTION = {"packets": PACKETS, "preferred_ip_protocol": "ip4", "reply_timeout": "0.5s"}

# Runs inside the namespace: N probes one after the other, printed as a JSON list.
PROBER = """
import asyncio, json, sys
from tests.agent.probes.probe_helpers import run

async def main():
    out = []
    for _ in range(int(sys.argv[4])):
        result = await run(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), module_timeout=5.0)
        out.append({
            "success": result.success and result.reason is None,
            "reason": result.reason.value if result.reason else None,
            "message": result.message,
            "samples": {name: value for name, labels, value in result.samples if not labels},
        })
    print(json.dumps(out))

asyncio.run(main())
"""


def _problem() -> str | None:
    if os.geteuid() != 0:
        return "needs root for a network namespace and nftables (CI runs as root)"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"needs the '{tool}' command"
    return None


def _sh(*args: str, stdin: str | None = None) -> str:
    done = subprocess.run(
        list(args), input=stdin, capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, f"{' '.join(args)}: {done.stderr.strip()}"
    return done.stdout


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh namespace with only lo (up); always deleted afterwards."""
    problem = _problem()
    if problem:
        pytest.skip(f"ICMP loss tests skipped: {problem}")
    name = f"pmi{secrets.token_hex(4)}"
    _sh("ip", "netns", "add", name)
    try:
        _sh("ip", "-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)


def drop(ns: str, hook: str, icmp_type: str, selector: str = "") -> None:
    """One counted drop rule for icmp_type at hook; selector narrows it (e.g. numgen)."""
    ruleset = (
        "table inet pm {\n"
        f"  chain c {{ type filter hook {hook} priority 0; policy accept;\n"
        f"    icmp type {icmp_type} {selector} counter drop\n"
        "  }\n"
        "}\n"
    )
    _sh("ip", "netns", "exec", ns, "nft", "-f", "-", stdin=ruleset)


def dropped(ns: str) -> int:
    """Packets the drop rule has dropped so far (its counter)."""
    listing = json.loads(_sh("ip", "netns", "exec", ns, "nft", "-j", "list", "table", "inet", "pm"))
    for item in listing["nftables"]:
        for expr in item.get("rule", {}).get("expr", []):
            if "counter" in expr:
                return int(expr["counter"]["packets"])
    raise AssertionError(f"no counter in {listing}")


def probe_in(
    exec_prefix: list[str], target: str, section: dict[str, Any] = SECTION, rounds: int = 1
) -> list[dict[str, Any]]:
    """Run rounds icmp probes with exec_prefix (e.g. ip netns exec NS); results as dicts."""
    args = ["icmp", target, json.dumps(section), str(rounds)]
    done = subprocess.run(
        [*exec_prefix, sys.executable, "-c", PROBER, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    out: list[dict[str, Any]] = json.loads(done.stdout)
    return out


def in_ns(ns: str) -> list[str]:
    return ["ip", "netns", "exec", ns]


def check_counts(result: dict[str, Any], packets: int = PACKETS) -> tuple[int, int, float]:
    """(sent, received, loss ratio), checked for consistency with each other."""
    samples = result["samples"]
    sent = int(samples["probe_icmp_packets_sent"])
    received = int(samples["probe_icmp_packets_received"])
    loss = samples["probe_icmp_packet_loss_ratio"]
    assert sent == packets, result
    assert loss == pytest.approx((sent - received) / sent), result
    return sent, received, loss


@pytest.mark.root
def test_no_drop_no_loss(netns: str) -> None:
    result = probe_in(in_ns(netns), "127.0.0.1")[0]
    sent, received, loss = check_counts(result)
    assert result["success"], result
    assert (received, loss) == (sent, 0.0)
    samples = result["samples"]
    rtts = [samples[f"probe_icmp_rtt_{k}_seconds"] for k in ("min", "avg", "max")]
    assert 0 < rtts[0] <= rtts[1] <= rtts[2] < 0.5, rtts
    assert 0 <= samples["probe_icmp_jitter_seconds"] <= rtts[2] - rtts[0]


@pytest.mark.root
def test_half_of_requests_dropped_at_output(netns: str) -> None:
    """About half the requests dropped: loss in 0.2-0.8, and exactly what the kernel dropped.

    A request dropped by an output rule makes sendto() fail with EPERM; the probe
    counts it as sent and lost (as ping(8) does) and keeps going. P(loss outside
    0.2-0.8) for Binomial(40, 0.5) is about 4e-5.
    """
    drop(netns, "output", "echo-request", "numgen random mod 2 == 0")
    result = probe_in(in_ns(netns), "127.0.0.1")[0]
    sent, received, loss = check_counts(result)
    lost = dropped(netns)
    print(f"\nicmp random 50% request drop: sent {sent} received {received} loss {loss:.3f}")
    assert 0.2 <= loss <= 0.8, result
    assert received + lost == sent, (received, lost, sent)
    assert result["success"], result
    assert result["samples"]["probe_icmp_rtt_avg_seconds"] > 0


@pytest.mark.root
def test_one_reply_in_four_dropped_at_input(netns: str) -> None:
    """numgen inc mod 4 drops exactly every fourth reply: loss is exactly 0.25."""
    drop(netns, "input", "echo-reply", "numgen inc mod 4 == 0")
    result = probe_in(in_ns(netns), "127.0.0.1")[0]
    sent, received, loss = check_counts(result)
    assert dropped(netns) == sent // 4
    assert (received, loss) == (sent - sent // 4, 0.25), result
    assert result["success"], result


@pytest.mark.root
@pytest.mark.parametrize(
    ("hook", "icmp_type", "reason"),
    [
        # Every sendto() refused: nothing left the host, like an unreachable route.
        ("output", "echo-request", "connect"),
        # Requests out, no reply back: the ordinary "no echo reply".
        ("input", "echo-reply", "timeout"),
    ],
)
def test_everything_dropped_fails(netns: str, hook: str, icmp_type: str, reason: str) -> None:
    drop(netns, hook, icmp_type)
    result = probe_in(in_ns(netns), "127.0.0.1")[0]
    sent, received, loss = check_counts(result)
    assert not result["success"]
    assert result["reason"] == reason, result
    assert (received, loss) == (0, 1.0)
    assert dropped(netns) == sent
    assert "probe_icmp_rtt_avg_seconds" not in result["samples"]
    assert "probe_icmp_jitter_seconds" not in result["samples"]


ONE_WAY = 0.025
TOLERANCE = 0.004
JITTER_MAX = 0.002
ROUNDS = 5
# Fewer than the loss tests: enough for stable medians, quick with 10 ms spacing.
DELAY_PACKETS = 10
STATS = ("rtt_min", "rtt_avg", "rtt_max", "jitter")


def medians(results: list[dict[str, Any]]) -> dict[str, float]:
    """Per statistic, the median over rounds (one preempted round cannot swing it)."""
    for result in results:
        assert result["success"], result
        assert check_counts(result, DELAY_PACKETS)[2] == 0.0, result
    return {
        k: statistics.median(r["samples"][f"probe_icmp_{k}_seconds"] for r in results)
        for k in STATS
    }


@pytest.mark.root
def test_constant_delay_is_the_rtt_with_no_jitter(delay_line: DelayLine) -> None:
    """A constant 25 ms each way: min and avg RTT within 50-54 ms, jitter under 2 ms.

    Probe in namespace A, kernel echo replies from B, every frame held ONE_WAY by
    the delay line. Requests go 10 ms apart and the line holds each one the same
    time, so consecutive RTTs differ only by the probe's own per-reply handling.
    Medians of ROUNDS probes. The bounds are absolute; the no-delay baseline is
    printed for comparison, not subtracted. Max gets twice the slack: one reply
    may wait while the event loop handles another.
    """
    section = {**SECTION, "packets": DELAY_PACKETS}
    delay_line.delay = 0.0
    base = medians(probe_in(delay_line.exec_in("a"), B_IP, section, ROUNDS))
    delay_line.delay = ONE_WAY
    delayed = medians(probe_in(delay_line.exec_in("a"), B_IP, section, ROUNDS))
    assert delay_line.error is None, delay_line.error
    frames = 2 * ROUNDS * DELAY_PACKETS
    assert delay_line.frames["ab"] >= frames, "traffic bypassed the delay line"
    figures = ", ".join(f"{k} {base[k] * 1e3:.2f} -> {delayed[k] * 1e3:.2f} ms" for k in STATS)
    print(f"\nicmp through delay line, {ONE_WAY * 1000:.0f} ms each way: {figures}")
    # Nothing beats the wire: below 2 x ONE_WAY the probe would be misreading time.
    assert 2 * ONE_WAY <= delayed["rtt_min"] <= 2 * ONE_WAY + TOLERANCE, figures
    assert delayed["rtt_min"] <= delayed["rtt_avg"] <= 2 * ONE_WAY + TOLERANCE, figures
    assert delayed["rtt_avg"] <= delayed["rtt_max"] <= 2 * ONE_WAY + 2 * TOLERANCE, figures
    assert delayed["jitter"] <= JITTER_MAX, figures
