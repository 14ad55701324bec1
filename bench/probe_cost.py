"""CPU per HTTP probe, probemesh vs blackbox_exporter, HTTP/1.1 and HTTP/2, and agent RSS.

Usage: .venv/bin/python bench/probe_cost.py [--probes 2000] [--concurrency 20] [--runs 3]
                                          [--cost-only | --diagnosis-only]

Two local targets run in their own processes: a small HTTP/1.1 server (plain
http://) and nghttpd, a real HTTP/2 server, over TLS (ALPN h2; the module
requires ``valid_http_versions: [HTTP/2.0]`` on both sides, so every counted
success spoke HTTP/2, with a full TLS handshake per probe). For each, both sides
make fresh-connection probes at the same concurrency, in one run:

* blackbox_exporter: driven through its ``/probe`` endpoint; its CPU is read
  from /proc/<pid>/stat (utime + stime), so it includes serving /probe and
  encoding the metrics, which is blackbox's real per-probe cost.
* probemesh: the http probe function run in a worker process exactly as the
  agent's runner runs it (asyncio.timeout + ProbeResult); its CPU is that
  process's time.process_time(). Converting results to protobuf and sending
  them is not included (the collector link is batched; see docs/benchmarks.md).

A third figure isolates the TLS handshake: blackbox's tcp prober with
``tls: true`` against probemesh's tls prober (resolve, connect, full handshake,
certificate metrics; no request), same server. Last, Python's floor: a blocking
loop of bare ``ssl`` handshakes with no event loop and no probe around it,
beside the same loop in Go (bench/handshake_floor.go, run when ``go`` is on PATH).
Every figure is repeated ``--runs`` times (alternating which side goes first)
and printed as median and range. bench/tls_params.py shows that both sides
negotiate the same cipher suite and group with this server.

Diagnosis overhead: the agent's real Scheduler runs 200 HTTP checks (interval
1 s) for 8 s, once with evidence gathering wired (as the agent runs) and once
without, against the succeeding target, then against a closed port (every probe
fails). CPU is the worker's process time per 1,000 probes; "gatherings" counts
evidence reports. Succeeding probes must cost the same either way.

RSS: a process that loads 1,000 checks through the checks-file parser and runs
them with the agent's real Scheduler and runner (interval 60 s against the
local target), measured from /proc/<pid>/status after the first probes ran.
The gRPC link to the collector is not started.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.harness import free_port  # noqa: E402

BLACKBOX = "/usr/bin/prometheus-blackbox-exporter"
NGHTTPD = "/usr/sbin/nghttpd"
TICKS = os.sysconf("SC_CLK_TCK")

TARGET_SERVER = textwrap.dedent(
    """
    import asyncio, sys
    BODY = b"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\nConnection: close\\r\\n\\r\\nok"
    async def handle(reader, writer):
        try:
            while (await reader.readline()) not in (b"\\r\\n", b""):
                pass
            writer.write(BODY)
            await writer.drain()
        finally:
            writer.close()
    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
        print(server.sockets[0].getsockname()[1], flush=True)
        await server.serve_forever()
    asyncio.run(main())
    """
)

WORKER = textwrap.dedent(
    """
    import asyncio, json, sys, time
    from pathlib import Path
    from probemesh.agent import eventloop
    from probemesh.agent.probes import PROBERS
    from probemesh.agent.secrets import SecretFiles
    from probemesh.agent.probes.net import ProbeEnv
    from probemesh.agent.probes.result import ProbeResult, failure_from_exception
    from probemesh.agent.safety import AddressPolicy
    from probemesh.modules import parse_module

    url, total, concurrency = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    section, secrets_dir, prober = json.loads(sys.argv[4]), sys.argv[5], sys.argv[6]
    settings = parse_module("m", {"prober": prober, prober: section}).settings
    env = ProbeEnv(policy=AddressPolicy(allow_private=True), secrets=SecretFiles(Path(secrets_dir)))
    probe = PROBERS[prober]
    failures = {}

    async def one():
        result = ProbeResult()
        try:
            async with asyncio.timeout(5):
                await probe(url, settings, env, result)
        except Exception as exc:
            result.fail(*failure_from_exception(exc))
        if not result.success:
            key = f"{result.reason}: {result.message}"
            failures[key] = failures.get(key, 0) + 1
        return result.success

    async def main():
        await one()  # warm-up: imports, SSL-free path, caches
        remaining = total
        ok = 0
        async def lane():
            nonlocal remaining, ok
            while remaining > 0:
                remaining -= 1
                success = await one()  # not "ok += await": that loses updates
                ok += success
        cpu0, wall0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(lane() for _ in range(concurrency)))
        cpu = time.process_time() - cpu0
        wall = time.perf_counter() - wall0
        print(json.dumps({"cpu": cpu, "wall": wall, "ok": ok, "failures": failures}))

    eventloop.run(main())
    """
)

RSS_WORKER = textwrap.dedent(
    """
    import asyncio, sys
    from probemesh.agent import eventloop
    from probemesh.agent.probes.net import ProbeEnv
    from probemesh.agent.safety import AddressPolicy
    from probemesh.agent.scheduler import Scheduler
    from probemesh.checks import parse_checks

    url, count = sys.argv[1], int(sys.argv[2])
    doc = {
        "modules": {"http_2xx": {"prober": "http", "timeout": "5s",
                                 "http": {"preferred_ip_protocol": "ip4"}}},
        "checks": [{"name": f"check-{i}", "target": f"{url}?i={i}", "module": "http_2xx",
                    "interval": "60s"} for i in range(count)],
    }

    async def main():
        checks = parse_checks(doc)
        produced = []
        scheduler = Scheduler(ProbeEnv(policy=AddressPolicy(allow_private=True)),
                              produced.append, min_interval=1.0, max_concurrency=100)
        scheduler.update(spec.to_proto() for spec in checks.checks.values())
        await asyncio.sleep(6)
        print(len(produced), flush=True)
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                print(int(line.split()[1]) // 1024, flush=True)
        await scheduler.stop()

    eventloop.run(main())
    """
)


DIAG_WORKER = textwrap.dedent(
    """
    import asyncio, json, sys, time
    from probemesh.agent import eventloop
    from probemesh.agent.probes.net import ProbeEnv
    from probemesh.agent.safety import AddressPolicy
    from probemesh.agent.scheduler import Scheduler
    from probemesh.checks import parse_checks

    url, count, seconds, wired = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4] == "1"
    doc = {
        "modules": {"http_2xx": {"prober": "http", "timeout": "2s",
                                 "http": {"preferred_ip_protocol": "ip4"}}},
        "checks": [{"name": f"check-{i}", "target": f"{url}?i={i}", "module": "http_2xx",
                    "interval": "1s"} for i in range(count)],
    }

    async def main():
        checks = parse_checks(doc)
        produced, reports = [], []
        scheduler = Scheduler(ProbeEnv(policy=AddressPolicy(allow_private=True)),
                              produced.append, min_interval=1.0, max_concurrency=100)
        if wired:
            scheduler.on_report = reports.append
        cpu0 = time.process_time()
        scheduler.update(spec.to_proto() for spec in checks.checks.values())
        await asyncio.sleep(seconds)
        await scheduler.stop()  # waits for gatherings in flight, so their CPU counts
        cpu = time.process_time() - cpu0
        ok = sum(r.success for r in produced)
        print(json.dumps({"cpu": cpu, "probes": len(produced), "ok": ok, "reports": len(reports)}))

    eventloop.run(main())
    """
)


def diagnosis_overhead(
    url: str, closed_url: str, checks: int = 200, seconds: float = 8.0, runs: int = 3
) -> None:
    """Print CPU per 1,000 probes with and without evidence gathering, up and down targets.

    Runs alternate off/on, and which goes first, so that load from other
    processes and the target's accumulated TIME_WAIT sockets hit both alike;
    the median of ``runs`` is printed with the range.
    """
    print(
        f"diagnosis overhead: agent Scheduler, {checks} HTTP checks at 1 s, {seconds:g} s, "
        f"median of {runs} alternating runs"
    )
    for label, target in (("target up", url), ("target down (refused)", closed_url)):
        samples: dict[bool, list[dict]] = {False: [], True: []}
        for run in range(runs):
            for wired in (False, True) if run % 2 == 0 else (True, False):
                args = (target, str(checks), str(seconds), "1" if wired else "0")
                out, _ = python(DIAG_WORKER, *args).communicate()
                samples[wired].append(json.loads(out))
        for wired in (False, True):
            per_k = sorted(f["cpu"] / max(f["probes"], 1) * 1000 for f in samples[wired])
            last = samples[wired][-1]
            print(
                f"  {label:22} evidence {'on ' if wired else 'off'}: "
                f"{per_k[len(per_k) // 2]:.3f} CPU s / 1000 probes "
                f"(range {per_k[0]:.3f}-{per_k[-1]:.3f}; last run {last['probes']} probes, "
                f"{last['ok']} ok, {last['reports']} gatherings)"
            )


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def python(code: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True, env=env
    )


async def drive_blackbox(base: str, url: str, total: int, concurrency: int) -> int:
    """Run total /probe requests at the given concurrency; returns successes."""
    query = f"/probe?module=http_2xx&target={url}"
    remaining, ok = total, 0

    async def lane() -> None:
        nonlocal remaining, ok
        while remaining > 0:
            remaining -= 1
            body = await asyncio.to_thread(
                lambda: urllib.request.urlopen(base + query, timeout=10).read()
            )
            ok += b"probe_success 1" in body

    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return ok


def start_blackbox(modules: dict, tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    config = tmp / "blackbox.yml"
    config.write_text(json.dumps({"modules": modules}))
    port = free_port()
    blackbox = subprocess.Popen(
        [BLACKBOX, f"--config.file={config}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(base + "/-/healthy", timeout=1).read()
            break
        except OSError:
            time.sleep(0.05)
    return blackbox, base


def start_nghttpd(tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    """nghttpd over TLS serving one small file; the CA goes to tmp/ca.pem."""
    import trustme

    ca = trustme.CA()
    leaf = ca.issue_cert("localhost")
    ca.cert_pem.write_to_path(str(tmp / "ca.pem"))
    leaf.private_key_pem.write_to_path(str(tmp / "key.pem"))
    leaf.cert_chain_pems[0].write_to_path(str(tmp / "cert.pem"))
    docs = tmp / "htdocs"
    docs.mkdir()
    (docs / "index.html").write_text("ok")
    port = free_port()
    command = [NGHTTPD, "-a", "127.0.0.1", "-d", str(docs), str(port)]
    command += [str(tmp / "key.pem"), str(tmp / "cert.pem")]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    return proc, f"https://localhost:{port}/index.html"


BARE_HANDSHAKES = textwrap.dedent(
    """
    import socket, ssl, sys, time
    host, port = sys.argv[1].rsplit(":", 1)
    total, context = int(sys.argv[2]), ssl.create_default_context(cafile=sys.argv[3])
    context.set_alpn_protocols(["h2", "http/1.1"])
    address = socket.getaddrinfo(host, int(port), socket.AF_INET, socket.SOCK_STREAM)[0][4]
    cpu0 = time.process_time()
    for _ in range(total):
        with socket.create_connection(address) as sock:
            with context.wrap_socket(sock, server_hostname=host):
                pass
    print((time.process_time() - cpu0) / total * 1000)
    """
)


BARE_PROBE_HANDSHAKES = textwrap.dedent(
    """
    import socket, sys, time
    from pathlib import Path
    from probemesh.agent.probes.tlsconn import build_context, new_connection
    from probemesh.modules import TLSConfig
    host, port = sys.argv[1].rsplit(":", 1)
    total = int(sys.argv[2])
    context = build_context(TLSConfig(), Path(sys.argv[3]), None, None, ("h2", "http/1.1"))
    address = socket.getaddrinfo(host, int(port), socket.AF_INET, socket.SOCK_STREAM)[0][4]
    cpu0 = time.process_time()
    for _ in range(total):
        with socket.create_connection(address) as sock:
            new_connection(context, host, sock).do_handshake()
    print((time.process_time() - cpu0) / total * 1000)
    """
)


def bare_handshakes(host: str, ca: Path, total: int, code: str = BARE_HANDSHAKES) -> float:
    """CPU seconds per 1,000 handshakes of a plain blocking loop: Python's TLS floor."""
    out, _ = python(code, host, str(total), str(ca)).communicate()
    return float(out)


def go_handshakes(host: str, ca: Path, total: int) -> tuple[float, str] | None:
    """bench/handshake_floor.go's CPU seconds per 1,000 handshakes and Go's version.

    None when no Go toolchain is installed.
    """
    go = shutil.which("go")
    if go is None:
        return None
    source = str(ROOT / "bench" / "handshake_floor.go")
    out = subprocess.run(
        [go, "run", source, host, str(total), str(ca)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "GO111MODULE": "off"},
    ).stdout
    return float(out.split()[0]), out.split("(")[-1].rstrip(")\n")


def run_worker(
    url: str, probes: int, concurrency: int, section: dict, tmp: Path, prober: str
) -> dict:
    args = (url, str(probes), str(concurrency), json.dumps(section), str(tmp), prober)
    out, _ = python(WORKER, *args).communicate()
    return json.loads(out)


def measure(
    kind: Kind, url: str, tmp: Path, probes: int, concurrency: int, blackbox_first: bool
) -> dict[str, float]:
    """CPU seconds per 1,000 probes on both sides, plus successes and throughput.

    The two sides run one after the other; callers alternate which goes first
    so that load from other processes on the machine hits both alike.
    """
    section = kind.section
    blackbox_section = json.loads(json.dumps(section))
    if "tls_config" in section:
        blackbox_section["tls_config"]["ca_file"] = str(tmp / section["tls_config"]["ca_file"])
    blackbox_section.update(kind.blackbox_extra)
    module = {
        "prober": kind.blackbox_prober,
        "timeout": "5s",
        kind.blackbox_prober: blackbox_section,
    }
    if not blackbox_first:
        pm = run_worker(url, probes, concurrency, section, tmp, kind.prober)
    blackbox, base = start_blackbox({"http_2xx": module}, tmp)
    try:
        asyncio.run(drive_blackbox(base, url, 50, concurrency))  # warm-up
        cpu0, wall0 = cpu_seconds(blackbox.pid), time.perf_counter()
        bb_ok = asyncio.run(drive_blackbox(base, url, probes, concurrency))
        bb_cpu, bb_wall = cpu_seconds(blackbox.pid) - cpu0, time.perf_counter() - wall0
    finally:
        blackbox.terminate()
        blackbox.wait()
    if blackbox_first:
        pm = run_worker(url, probes, concurrency, section, tmp, kind.prober)
    if pm["failures"]:
        print(f"probemesh {kind.label} failures:", pm["failures"])
    return {
        "bb": bb_cpu / probes * 1000,
        "pm": pm["cpu"] / probes * 1000,
        "bb_ok": bb_ok,
        "pm_ok": pm["ok"],
        "bb_rate": probes / bb_wall,
        "pm_rate": probes / pm["wall"],
    }


@dataclass(frozen=True)
class Kind:
    """One side-by-side figure: blackbox's module and probemesh's prober for the same work."""

    label: str
    prober: str  # probemesh's
    section: dict
    blackbox_prober: str
    blackbox_extra: dict = field(default_factory=dict)


def spread(values: list[float]) -> str:
    """Median and range, as the docs quote them."""
    ordered = sorted(values)
    return f"{ordered[len(ordered) // 2]:.3f} (range {ordered[0]:.3f}-{ordered[-1]:.3f})"


def report(label: str, runs: list[dict[str, float]], probes: int) -> None:
    print(
        f"{label}: {len(runs)} runs of {probes} probes per side, alternating which side goes first"
    )
    for side, name in (("bb", "blackbox_exporter"), ("pm", "probemesh")):
        ok = "/".join(str(int(r[f"{side}_ok"])) for r in runs)
        rate = sum(r[f"{side}_rate"] for r in runs) / len(runs)
        print(
            f"  {name + ':':19}{spread([r[side] for r in runs])} CPU s / 1000 probes "
            f"({ok} ok, ~{rate:.0f} probes/s wall)"
        )
    ratios = [r["pm"] / r["bb"] for r in runs]
    print(f"  ratio probemesh / blackbox, per run: {spread(ratios)} (target <= 1.0x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probes", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--checks", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3, help="side-by-side runs per protocol")
    parser.add_argument(
        "--diagnosis-only", action="store_true", help="only the diagnosis overhead figures"
    )
    parser.add_argument(
        "--cost-only", action="store_true", help="only the side-by-side CPU figures"
    )
    args = parser.parse_args()

    target = python(TARGET_SERVER)
    assert target.stdout is not None
    url = f"http://127.0.0.1:{int(target.stdout.readline())}/"
    if not args.cost_only:
        diagnosis_overhead(url, f"http://127.0.0.1:{free_port()}/")
    if args.diagnosis_only:
        target.terminate()
        target.wait()
        return
    ip4 = {"preferred_ip_protocol": "ip4"}
    h2 = {**ip4, "valid_http_versions": ["HTTP/2.0"], "tls_config": {"ca_file": "ca.pem"}}
    tls_only = {"preferred_ip_protocol": "ip4", "tls_config": {"ca_file": "ca.pem"}}
    with tempfile.TemporaryDirectory() as tmp:
        nghttpd, h2_url = start_nghttpd(Path(tmp))
        host = h2_url.split("/")[2]
        kinds = (
            (Kind("HTTP/1.1", "http", ip4, "http"), url),
            (Kind("HTTP/2 (TLS)", "http", h2, "http"), h2_url),
            # The handshake's share: connect + TLS, no request. blackbox's tcp
            # prober with tls: true against probemesh's tls prober, same server.
            (Kind("TLS connect only", "tls", tls_only, "tcp", {"tls": True}), host),
        )
        figures: dict[str, list[dict[str, float]]] = {kind.label: [] for kind, _ in kinds}
        try:
            for run in range(args.runs):
                for kind, target_url in kinds:
                    figures[kind.label].append(
                        measure(
                            kind, target_url, Path(tmp), args.probes, args.concurrency, run % 2 == 0
                        )
                    )
            floor = [bare_handshakes(host, Path(tmp) / "ca.pem", args.probes) for _ in range(3)]
            probe_floor = [
                bare_handshakes(host, Path(tmp) / "ca.pem", args.probes, BARE_PROBE_HANDSHAKES)
                for _ in range(3)
            ]
            go_floor = [go_handshakes(host, Path(tmp) / "ca.pem", args.probes) for _ in range(3)]
        finally:
            nghttpd.terminate()
            nghttpd.wait()

    print(f"concurrency {args.concurrency}, fresh connection per probe")
    for label, runs in figures.items():
        report(label, runs, args.probes)
    print(
        f"Python's floor: {args.probes} blocking ssl handshakes in a loop, no event loop, "
        f"same server: {spread(floor)} CPU s / 1000"
    )
    print(
        "the probes' TLS (pyOpenSSL on cryptography's OpenSSL), the same loop: "
        f"{spread(probe_floor)} CPU s / 1000"
    )
    go_runs = [run for run in go_floor if run is not None]
    if not go_runs:
        print("Go's floor: skipped (no `go` on PATH; Debian package golang-go)")
    else:
        print(
            f"Go's floor ({go_runs[0][1]}): the same loop in bench/handshake_floor.go, "
            f"20 goroutines: {spread([run[0] for run in go_runs])} CPU s / 1000"
        )
    if not args.cost_only:
        rss_proc = python(RSS_WORKER, url, str(args.checks))
        rss_out, _ = rss_proc.communicate()
        produced, rss_mb = (int(x) for x in rss_out.split())
        print(
            f"agent-equivalent RSS with {args.checks} checks scheduled "
            f"({produced} probes run in 6 s): {rss_mb} MB (target <= 80 MB)"
        )
    target.terminate()
    target.wait()


if __name__ == "__main__":
    main()
