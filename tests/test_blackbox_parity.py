"""Side by side with the real blackbox_exporter: same targets, same modules, same verdicts.

The Debian prometheus-blackbox-exporter binary runs on a loopback port with a
generated config; every target is a loopback server of this test. For each
(module, target) pair probe_success and every shared metric must agree;
timing metrics are left out (they differ run to run). Deliberate differences
are listed in docs/probes.md and excluded here by name.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import shutil
import socket
import ssl
import struct
import subprocess
import time
import urllib.parse
import urllib.request
import zlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import trustme
import yaml
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from probemesh.agent.probes.result import Reason
from tests.agent.probes import cert_fixtures
from tests.agent.probes.probe_helpers import (
    Zone,
    dns_server,
    read_request,
    response,
    run,
    serve,
    server_context,
)
from tests.agent.probes.test_tls_verification import _cert, _key, _key_pem, _pem
from tests.harness import free_port

# The trustme fixtures of the probe tests, made available to this module.
ca = cert_fixtures.ca
ca_file = cert_fixtures.ca_file
secrets_dir = cert_fixtures.secrets_dir
localhost_cert = cert_fixtures.localhost_cert
expired_cert = cert_fixtures.expired_cert

BLACKBOX = shutil.which("prometheus-blackbox-exporter") or "/usr/bin/prometheus-blackbox-exporter"
SHARED = (
    "probe_success",
    "probe_http_status_code",
    "probe_http_redirects",
    "probe_http_ssl",
    "probe_http_version",
    "probe_http_content_length",
    "probe_http_uncompressed_body_length",
    "probe_failed_due_to_regex",
    "probe_ip_protocol",
    "probe_ssl_earliest_cert_expiry",
    "probe_ssl_last_chain_expiry_timestamp_seconds",
    "probe_tls_version_info",
    "probe_dns_answer_rrs",
    "probe_dns_authority_rrs",
    "probe_dns_additional_rrs",
    "probe_dns_serial",
    "probe_grpc_status_code",
    "probe_grpc_healthcheck_response",
    "probe_grpc_ssl",
)
# Deliberate (docs/probes.md): Python's gRPC client does not expose the peer certificate.
GRPC_ONLY_BLACKBOX = ("probe_ssl_earliest_cert_expiry", "probe_tls_version_info")

pytestmark = pytest.mark.skipif(
    not os.access(BLACKBOX, os.X_OK), reason=f"blackbox_exporter not installed at {BLACKBOX}"
)


@pytest.fixture
def blackbox(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A running exporter: (config path to fill then reload, base URL)."""
    config = tmp_path / "blackbox.yml"
    config.write_text("modules: {}\n")
    port = free_port()
    proc = subprocess.Popen(
        [BLACKBOX, f"--config.file={config}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                urllib.request.urlopen(f"{base}/-/healthy", timeout=1).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"blackbox_exporter did not start: {proc.stderr}") from None
                time.sleep(0.05)
        yield config, base
    finally:
        proc.terminate()
        proc.wait(5)


def blackbox_probe(base: str, module: str, target: str) -> dict[tuple[str, tuple], float]:
    query = urllib.parse.urlencode({"module": module, "target": target})
    text = urllib.request.urlopen(f"{base}/probe?{query}", timeout=10).read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def with_absolute_files(modules: dict[str, Any], secrets_dir: Path) -> dict[str, Any]:
    """The modules as blackbox reads them: probemesh names files inside the agent's
    secrets dir, blackbox opens paths."""

    def fix(node: Any) -> Any:
        if isinstance(node, dict):
            return {
                k: str(secrets_dir / v) if k.endswith("_file") else fix(v) for k, v in node.items()
            }
        return [fix(v) for v in node] if isinstance(node, list) else node

    return fix(modules)


def ours(result: Any) -> dict[tuple[str, tuple], float]:
    samples = {(n, tuple(sorted(labels.items()))): v for n, labels, v in result.samples}
    samples[("probe_success", ())] = 1.0 if result.success and result.reason is None else 0.0
    return samples


def shared(samples: dict[tuple[str, tuple], float]) -> dict[tuple[str, tuple], float]:
    return {key: v for key, v in samples.items() if key[0] in SHARED}


async def http_routes(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    _, path, _ = await read_request(reader)
    if path == "/ok":
        writer.write(response(200, b"all good here"))
    elif path == "/missing":
        writer.write(response(404, b"nope"))
    elif path == "/hop1":
        writer.write(response(302, headers={"Location": "/hop2"}))
    elif path == "/hop2":
        writer.write(response(307, headers={"Location": "/ok"}))
    elif path == "/chunked":
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        writer.write(b"4\r\nabcd\r\n3\r\nefg\r\n0\r\n\r\n")
    elif path == "/error":
        writer.write(response(503, b"down for maintenance"))
    else:
        writer.write(response(500))


async def dns_tcp_only(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """DNS over TCP with nothing on UDP: a prober that falls back to UDP fails here."""
    zone = Zone()
    while True:
        try:
            (length,) = struct.unpack("!H", await reader.readexactly(2))
        except asyncio.IncompleteReadError:
            return
        reply = zone.answer(await reader.readexactly(length))
        writer.write(struct.pack("!H", len(reply)) + reply)
        await writer.drain()


async def health_server(
    credentials: grpc.ServerCredentials | None = None,
) -> AsyncIterator[int]:
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    await servicer.set("sick", health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.start()
    try:
        yield port
    finally:
        await server.stop(None)


async def test_same_verdicts_and_metrics_as_blackbox(
    blackbox: tuple[Path, str],
    ca_file: str,
    localhost_cert: trustme.LeafCert,
    expired_cert: trustme.LeafCert,
    secrets_dir: Path,
) -> None:
    config, base = blackbox
    ip4 = {"preferred_ip_protocol": "ip4"}
    tls = {**ip4, "tls_config": {"ca_file": ca_file}}
    modules: dict[str, dict[str, Any]] = {
        "http_2xx": {"prober": "http", "timeout": "2s", "http": ip4},
        "http_404": {
            "prober": "http",
            "timeout": "2s",
            "http": {**ip4, "valid_status_codes": [404]},
        },
        "http_noredir": {
            "prober": "http",
            "timeout": "2s",
            "http": {**ip4, "no_follow_redirects": True},
        },
        "http_regex": {
            "prober": "http",
            "timeout": "2s",
            "http": {**ip4, "fail_if_body_not_matches_regexp": ["good"]},
        },
        "http_header": {
            "prober": "http",
            "timeout": "2s",
            "http": {
                **ip4,
                "fail_if_header_not_matches": [{"header": "Content-Length", "regexp": "^1"}],
            },
        },
        "https": {"prober": "http", "timeout": "2s", "http": tls},
        "https_notssl": {
            "prober": "http",
            "timeout": "2s",
            "http": {**ip4, "fail_if_not_ssl": True},
        },
        "tcp_banner": {
            "prober": "tcp",
            "timeout": "2s",
            "tcp": {**ip4, "query_response": [{"expect": "^220 ready"}]},
        },
        "tcp_tls": {"prober": "tcp", "timeout": "2s", "tcp": {**tls, "tls": True}},
        "dns_a": {
            "prober": "dns",
            "timeout": "2s",
            "dns": {**ip4, "query_name": "example.test", "query_type": "A"},
        },
        "dns_tcp_txt": {
            "prober": "dns",
            "timeout": "2s",
            "dns": {
                **ip4,
                "query_name": "example.test",
                "query_type": "TXT",
                "transport_protocol": "tcp",
                "validate_answer_rrs": {"fail_if_none_matches_regexp": ["spf1"]},
            },
        },
        "dns_soa": {
            "prober": "dns",
            "timeout": "2s",
            "dns": {**ip4, "query_name": "example.test", "query_type": "SOA"},
        },
        "dns_nx": {
            "prober": "dns",
            "timeout": "2s",
            "dns": {**ip4, "query_name": "missing.test", "query_type": "A"},
        },
        "dns_all": {
            "prober": "dns",
            "timeout": "2s",
            "dns": {
                **ip4,
                "query_name": "example.test",
                "query_type": "A",
                "validate_answer_rrs": {"fail_if_all_match_regexp": [r"192\.0\.2\.1$"]},
            },
        },
        "dns_tcp_a": {
            "prober": "dns",
            "timeout": "2s",
            "dns": {
                **ip4,
                "query_name": "example.test",
                "query_type": "A",
                "transport_protocol": "tcp",
                "valid_rcodes": ["NOERROR"],
            },
        },
        "dns_tcp_nx": {
            "prober": "dns",
            "timeout": "2s",
            "dns": {
                **ip4,
                "query_name": "missing.test",
                "query_type": "A",
                "transport_protocol": "tcp",
            },
        },
        "dns_tcp_soa": {
            "prober": "dns",
            "timeout": "2s",
            "dns": {
                **ip4,
                "query_name": "example.test",
                "query_type": "SOA",
                "transport_protocol": "tcp",
            },
        },
        "grpc": {"prober": "grpc", "timeout": "2s", "grpc": ip4},
        "grpc_sick": {"prober": "grpc", "timeout": "2s", "grpc": {**ip4, "service": "sick"}},
        "grpc_tls": {"prober": "grpc", "timeout": "2s", "grpc": {**tls, "tls": True}},
        "grpc_tls_sick": {
            "prober": "grpc",
            "timeout": "2s",
            "grpc": {**tls, "tls": True, "service": "sick"},
        },
        # No ca_file: the test CA is not trusted, the handshake must fail on both sides.
        "grpc_tls_untrusted": {"prober": "grpc", "timeout": "2s", "grpc": {**ip4, "tls": True}},
    }
    if os.geteuid() == 0:
        modules["icmp"] = {"prober": "icmp", "timeout": "2s", "icmp": ip4}
    config.write_text(yaml.safe_dump({"modules": with_absolute_files(modules, secrets_dir)}))
    await asyncio.to_thread(
        urllib.request.urlopen, urllib.request.Request(f"{base}/-/reload", method="POST")
    )

    async def banner(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 ready\r\n")
        await writer.drain()

    async with (
        serve(http_routes) as http_port,
        serve(http_routes, server_context(localhost_cert)) as https_port,
        serve(http_routes, server_context(expired_cert)) as expired_port,
        serve(banner) as banner_port,
        serve(banner, server_context(localhost_cert)) as tls_banner_port,
        dns_server(Zone()) as dns_port,
        serve(dns_tcp_only) as dns_tcp_port,
    ):
        closed_port = free_port()
        h = f"http://127.0.0.1:{http_port}"
        cases = [
            ("http_2xx", f"{h}/ok"),
            ("http_2xx", f"{h}/missing"),
            ("http_2xx", f"{h}/hop1"),
            ("http_2xx", f"{h}/chunked"),
            ("http_2xx", f"{h}/error"),
            ("http_2xx", f"http://127.0.0.1:{closed_port}/"),
            ("http_404", f"{h}/missing"),
            ("http_noredir", f"{h}/hop1"),
            ("http_regex", f"{h}/ok"),
            ("http_regex", f"{h}/error"),
            ("http_header", f"{h}/ok"),
            ("http_header", f"{h}/missing"),
            ("https", f"https://localhost:{https_port}/ok"),
            ("https", f"https://localhost:{expired_port}/ok"),
            ("https_notssl", f"{h}/ok"),
            ("tcp_banner", f"127.0.0.1:{banner_port}"),
            ("tcp_banner", f"127.0.0.1:{closed_port}"),
            ("tcp_tls", f"localhost:{tls_banner_port}"),
            ("dns_a", f"127.0.0.1:{dns_port}"),
            ("dns_tcp_txt", f"127.0.0.1:{dns_port}"),
            ("dns_soa", f"127.0.0.1:{dns_port}"),
            ("dns_nx", f"127.0.0.1:{dns_port}"),
            ("dns_all", f"127.0.0.1:{dns_port}"),
            ("dns_tcp_a", f"127.0.0.1:{dns_tcp_port}"),
            ("dns_tcp_txt", f"127.0.0.1:{dns_tcp_port}"),
            ("dns_tcp_nx", f"127.0.0.1:{dns_tcp_port}"),
            ("dns_tcp_soa", f"127.0.0.1:{dns_tcp_port}"),
        ]
        if "icmp" in modules:
            cases.append(("icmp", "127.0.0.1"))
        mismatches: list[str] = []
        successes: dict[tuple[str, str], float] = {}

        async def compare(module: str, target: str, skip: tuple[str, ...] = ()) -> None:
            theirs = shared(await asyncio.to_thread(blackbox_probe, base, module, target))
            prober = modules[module]["prober"]
            section = modules[module][prober]
            mine = shared(ours(await run(prober, target, section, secrets=secrets_dir)))
            theirs = {k: v for k, v in theirs.items() if k[0] not in skip}
            successes[(module, target)] = theirs.get(("probe_success", ()), -1.0)
            if theirs != mine:
                diff = {k: (theirs.get(k), mine.get(k)) for k in theirs.keys() | mine.keys()}
                diff = {k: v for k, v in diff.items() if v[0] != v[1]}
                mismatches.append(f"{module} {target}: (blackbox, probemesh) {diff}")

        for module, target in cases:
            await compare(module, target)
        async for grpc_port in health_server():
            for module in ("grpc", "grpc_sick"):
                await compare(module, f"127.0.0.1:{grpc_port}", GRPC_ONLY_BLACKBOX)
        key = localhost_cert.private_key_pem.bytes()
        chain = b"".join(pem.bytes() for pem in localhost_cert.cert_chain_pems)
        async for grpc_port in health_server(grpc.ssl_server_credentials([(key, chain)])):
            for module in ("grpc_tls", "grpc_tls_sick", "grpc_tls_untrusted", "grpc"):
                await compare(module, f"localhost:{grpc_port}", GRPC_ONLY_BLACKBOX)
    assert not mismatches, "\n".join(mismatches)
    # Equal verdicts could both be failures for a reason of the test's own making: pin them.
    expect_success = {
        "dns_tcp_a",
        "dns_tcp_txt",
        "dns_tcp_soa",
        "grpc_tls",
        "icmp",
    }
    for (module, target), success in successes.items():
        if module in expect_success:
            assert success == 1.0, f"{module} {target} failed on both sides"
    # NXDOMAIN is not in the default valid_rcodes (NOERROR); the others are refusals.
    assert successes[("dns_tcp_nx", f"127.0.0.1:{dns_tcp_port}")] == 0.0
    for module in ("grpc_tls_sick", "grpc_tls_untrusted", "grpc"):
        assert successes[(module, f"localhost:{grpc_port}")] == 0.0


class Recorder:
    """An HTTP/1.1 server whose routes exercise Go's net/http semantics; records every request."""

    def __init__(self) -> None:
        self.requests: list[tuple[int, bytes, dict[str, str]]] = []
        self.other_port = 0  # the cross-host redirect lands on localhost:other_port

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = await reader.readline()
        headers: dict[str, str] = {}
        while (raw := await reader.readline()) not in (b"\r\n", b""):
            key, _, val = raw.decode("utf-8", "replace").partition(":")
            headers[key.strip().lower()] = val.strip()
        port = writer.get_extra_info("sockname")[1]
        self.requests.append((port, line, headers))
        path = line.split(b" ")[1].decode("latin-1") if line.count(b" ") >= 2 else ""
        if path == "/cookie-check" and "probe=1" in headers.get("cookie", ""):
            path = "/land"
        writer.write(self.route(path))
        await writer.drain()

    def route(self, path: str) -> bytes:
        if path == "/early":
            hints = b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
            return hints + response(200, b"ok")
        if path == "/continue":
            return b"HTTP/1.1 100 Continue\r\n\r\n" + response(200, b"ok")
        if path == "/cross-host":
            return response(302, headers={"Location": f"http://localhost:{self.other_port}/land"})
        if path == "/same-host":
            return response(302, headers={"Location": "/land"})
        if path == "/cookie-check":
            # Sites that redirect through a cookie check answer only with the cookie.
            cookie = "probe=1; Path=/; HttpOnly"
            return response(302, headers={"Set-Cookie": cookie, "Location": "/cookie-check"})
        if path == "/cookies":
            cookies = [
                "c=2; Path=/",  # replaces the c=1 given in headers:
                "deep=1; Path=/deep",  # not sent to /land
                "secure=1; Secure",  # not sent over http
                "gone=1; Max-Age=0",
            ]
            head = "HTTP/1.1 302 Found\r\nContent-Length: 0\r\nLocation: /land\r\n"
            return (head + "".join(f"Set-Cookie: {c}\r\n" for c in cookies) + "\r\n").encode()
        if path == "/cookie-cross-host":
            location = f"http://localhost:{self.other_port}/land"
            return response(302, headers={"Set-Cookie": "s=1; Path=/", "Location": location})
        if path == "/gzip":
            body = gzip.compress(b"hello from a gzipped body")
            return response(200, body, {"Content-Encoding": "gzip"})
        if path == "/gzip-unlabelled":
            return response(200, gzip.compress(b"hello from a gzipped body"))
        if path == "/raw-deflate":
            packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
            body = packer.compress(b"hello deflated") + packer.flush()
            return response(200, body, {"Content-Encoding": "deflate"})
        if path == "/bomb":
            return response(200, BOMB, {"Content-Encoding": "gzip"})
        if path == "/arabic-status":
            return "HTTP/1.1 ٢٠٠ OK\r\nContent-Length: 2\r\n\r\nok".encode()
        if path == "/arabic-length":
            return "HTTP/1.1 200 OK\r\nContent-Length: ٢\r\n\r\nok".encode()
        if path == "/truncated-chunk":
            return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nabc"
        if path == "/huge-header":
            return b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (11 << 20) + b"\r\n\r\n"
        if path == "/long-header":
            return (
                b"HTTP/1.1 200 OK\r\nX-Big: "
                + b"a" * (1 << 20)
                + b"\r\nContent-Length: 2\r\n\r\nok"
            )
        if path == "/no-colon":
            return b"HTTP/1.1 200 OK\r\nthis is no header\r\nContent-Length: 2\r\n\r\nok"
        return response(200, b"landed")


BOMB = gzip.compress(b"a" * 300_000)
HEADERS_FOLLOWED = (
    "authorization",
    "cookie",
    "www-authenticate",
    "proxy-authorization",
    "x-custom",
)


async def test_http_semantics_match_blackbox(blackbox: tuple[Path, str]) -> None:
    """Go's net/http semantics, side by side, with the request heads each side sent.

    Observed with blackbox_exporter 0.23: 1xx responses are skipped; on a
    redirect to another host Authorization, Cookie and Www-Authenticate from
    ``headers:`` are dropped (Proxy-Authorization and others are kept), while
    bearer_token and basic_auth are sent again; a custom Host header follows
    a relative redirect only; Referer names the previous URL; cookies set by a
    response go with the following hops (host-only, path, Secure, Max-Age=0,
    replacing a same-named one from ``headers:``). ``compression``
    unset sends no Accept-Encoding and decodes nothing; set, it decodes the
    body whatever Content-Encoding says (deflate being raw DEFLATE) and
    body_size_limit bounds the decoded bytes. A non-ASCII path is sent
    percent-encoded, the query as written. Malformed status codes and
    Content-Length fail before any response (status 0); a truncated chunk fails
    after it; a 1 MiB header line is fine (Go's limit is 10 MiB of headers).
    """
    config, base = blackbox
    ip4 = {"preferred_ip_protocol": "ip4"}
    user_headers = {
        "Authorization": "Custom abc",
        "Cookie": "c=1",
        "Www-Authenticate": "w",
        "Proxy-Authorization": "p",
        "X-Custom": "y",
        "Host": "custom.example",
    }

    def http(**settings: Any) -> dict[str, Any]:
        return {"prober": "http", "timeout": "3s", "http": {**ip4, **settings}}

    modules = {
        "plain": http(),
        "headers": http(headers=user_headers),
        "bearer": http(bearer_token="sekrit"),
        "basic": http(basic_auth={"username": "u", "password": "pw"}),
        "regex": http(fail_if_body_not_matches_regexp=["hello"]),
        "gzip": http(compression="gzip", fail_if_body_not_matches_regexp=["hello"]),
        "deflate": http(compression="deflate"),
        "gzip_limited": http(compression="gzip", body_size_limit="64KB"),
        "gzip_unlimited": http(compression="gzip"),
        "raw_limited": http(body_size_limit="64KB"),
    }
    config.write_text(yaml.safe_dump({"modules": modules}))
    await asyncio.to_thread(
        urllib.request.urlopen, urllib.request.Request(f"{base}/-/reload", method="POST")
    )
    recorder = Recorder()
    async with serve(recorder.handle) as port, serve(recorder.handle) as other_port:
        recorder.other_port = other_port
        h = f"http://127.0.0.1:{port}"
        cases = [
            ("plain", f"{h}/early"),
            ("plain", f"{h}/continue"),
            ("headers", f"{h}/cross-host"),
            ("headers", f"{h}/same-host"),
            ("bearer", f"{h}/cross-host"),
            ("basic", f"{h}/cross-host"),
            ("plain", f"{h}/cookie-check"),
            ("headers", f"{h}/cookies"),
            ("plain", f"{h}/cookie-cross-host"),
            ("regex", f"{h}/gzip"),
            ("gzip", f"{h}/gzip"),
            ("gzip", f"{h}/gzip-unlabelled"),
            ("gzip", f"{h}/land"),
            ("deflate", f"{h}/raw-deflate"),
            ("gzip_limited", f"{h}/bomb"),
            ("gzip_unlimited", f"{h}/bomb"),
            ("raw_limited", f"{h}/bomb"),
            ("plain", f"{h}/bücher/a b?q=ü&r=%41"),
            ("plain", f"{h}/a%2Fb/!(x)/ü"),
            ("plain", f"{h}/arabic-status"),
            ("plain", f"{h}/arabic-length"),
            ("plain", f"{h}/truncated-chunk"),
            ("plain", f"{h}/long-header"),
            ("plain", f"{h}/huge-header"),
            ("plain", f"{h}/no-colon"),
        ]
        mismatches: list[str] = []
        verdicts: dict[tuple[str, str], float] = {}
        for module, target in cases:
            recorder.requests.clear()
            theirs = shared(await asyncio.to_thread(blackbox_probe, base, module, target))
            their_requests = list(recorder.requests)
            recorder.requests.clear()
            result = await run("http", target, modules[module]["http"], module_timeout=3)
            mine = shared(ours(result))
            my_requests = list(recorder.requests)
            verdicts[(module, target)] = theirs.get(("probe_success", ()), -1.0)
            if theirs != mine:
                diff = {k: (theirs.get(k), mine.get(k)) for k in theirs.keys() | mine.keys()}
                diff = {k: v for k, v in diff.items() if v[0] != v[1]}
                mismatches.append(
                    f"{module} {target}: (blackbox, probemesh) {diff} {result.message}"
                )
            if result.reason == Reason.OTHER:
                mismatches.append(f"{module} {target}: reason other: {result.message}")
            sent = [_sent(r, port) for r in their_requests], [_sent(r, port) for r in my_requests]
            if sent[0] != sent[1]:
                mismatches.append(f"{module} {target}: requests (blackbox, probemesh) {sent}")
    assert not mismatches, "\n".join(mismatches)
    # Pin the verdicts that show the semantics, so equal failures cannot hide a broken server.
    for module, path, success in [
        ("plain", "/early", 1.0),
        ("plain", "/continue", 1.0),
        ("headers", "/cross-host", 1.0),
        ("plain", "/cookie-check", 1.0),
        ("gzip", "/gzip", 1.0),
        ("regex", "/gzip", 0.0),
        ("gzip_limited", "/bomb", 0.0),
        ("plain", "/long-header", 1.0),
        ("plain", "/arabic-status", 0.0),
    ]:
        assert verdicts[(module, f"{h}{path}")] == success, (module, path)


def _sent(request: tuple[int, bytes, dict[str, str]], first_port: int) -> tuple:
    """What matters of one recorded request: server, request line, the followed headers."""
    port, line, headers = request
    kept = {k: v for k, v in headers.items() if k in (*HEADERS_FOLLOWED, "host", "referer")}
    kept.pop("accept-encoding", None)
    return ("first" if port == first_port else "other", line, sorted(kept.items()))


NGHTTPD = shutil.which("nghttpd") or "/usr/sbin/nghttpd"


@pytest.fixture
def nghttpd(tmp_path: Path, localhost_cert: trustme.LeafCert) -> Iterator[tuple[int, int]]:
    """nghttpd (a real HTTP/2 server) over TLS and in cleartext: (tls port, cleartext port)."""
    if not os.access(NGHTTPD, os.X_OK):
        pytest.skip(f"nghttpd not installed at {NGHTTPD} (Debian nghttp2-server)")
    docs = tmp_path / "htdocs"
    docs.mkdir()
    (docs / "index.html").write_text("hello over HTTP/2\n")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    localhost_cert.private_key_pem.write_to_path(str(key))
    localhost_cert.cert_chain_pems[0].write_to_path(str(cert))
    tls_port, plain_port = free_port(), free_port()
    procs = [
        subprocess.Popen(
            [NGHTTPD, "-a", "127.0.0.1", "-d", str(docs), str(tls_port), str(key), str(cert)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
        subprocess.Popen(
            [NGHTTPD, "-a", "127.0.0.1", "-d", str(docs), "--no-tls", str(plain_port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
    ]
    try:
        for port in (tls_port, plain_port):
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError("nghttpd did not start") from None
                    time.sleep(0.05)
        yield tls_port, plain_port
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(5)


async def test_http2_matches_blackbox(
    blackbox: tuple[Path, str],
    nghttpd: tuple[int, int],
    ca_file: str,
    secrets_dir: Path,
) -> None:
    """HTTP/2 against nghttpd, side by side.

    Observed with blackbox_exporter 0.23: over TLS it negotiates h2 by ALPN and
    reports probe_http_version 2; ``enable_http2: false`` offers no ALPN and
    speaks HTTP/1.1, which an h2-only server refuses; a cleartext http:// target
    gets HTTP/1.1 too (Go never tries h2c), which nghttpd without TLS refuses.
    """
    config, base = blackbox
    tls = {"preferred_ip_protocol": "ip4", "tls_config": {"ca_file": ca_file}}
    modules: dict[str, dict[str, Any]] = {
        "h2_default": tls,
        "h2_only": {**tls, "valid_http_versions": ["HTTP/2.0"]},
        "h1_only": {**tls, "valid_http_versions": ["HTTP/1.1"]},
        "h2_off": {**tls, "enable_http2": False},
        "h2_head": {**tls, "method": "HEAD"},
        "h2_regex": {**tls, "fail_if_body_not_matches_regexp": ["over HTTP/2"]},
        "h2_post": {**tls, "method": "POST", "body": "x" * 100_000},
    }
    theirs_config = {
        name: {"prober": "http", "timeout": "3s", "http": section}
        for name, section in modules.items()
    }
    config.write_text(yaml.safe_dump({"modules": with_absolute_files(theirs_config, secrets_dir)}))
    await asyncio.to_thread(
        urllib.request.urlopen, urllib.request.Request(f"{base}/-/reload", method="POST")
    )
    tls_port, plain_port = nghttpd
    h = f"https://localhost:{tls_port}"
    cases = [(name, f"{h}/index.html") for name in modules]
    cases += [("h2_default", f"{h}/missing"), ("h2_default", f"http://127.0.0.1:{plain_port}/")]
    mismatches: list[str] = []
    verdicts: dict[tuple[str, str], float] = {}
    for module, target in cases:
        theirs = shared(await asyncio.to_thread(blackbox_probe, base, module, target))
        result = await run("http", target, modules[module], module_timeout=3, secrets=secrets_dir)
        mine = shared(ours(result))
        verdicts[(module, target)] = theirs.get(("probe_success", ()), -1.0)
        if theirs != mine:
            diff = {k: (theirs.get(k), mine.get(k)) for k in theirs.keys() | mine.keys()}
            diff = {k: v for k, v in diff.items() if v[0] != v[1]}
            mismatches.append(f"{module} {target}: (blackbox, probemesh) {diff} {result.message}")
        if result.reason == Reason.OTHER:
            mismatches.append(f"{module} {target}: reason other: {result.message}")
    assert not mismatches, "\n".join(mismatches)
    index = f"{h}/index.html"
    for module in ("h2_default", "h2_only", "h2_head", "h2_regex", "h2_post"):
        assert verdicts[(module, index)] == 1.0, module
    for module in ("h1_only", "h2_off"):
        assert verdicts[(module, index)] == 0.0, module
    assert verdicts[("h2_default", f"http://127.0.0.1:{plain_port}/")] == 0.0


async def test_a_name_only_in_the_subject_cn_fails_as_in_blackbox(
    blackbox: tuple[Path, str], tmp_path: Path
) -> None:
    """A certificate without SAN whose CN names the host: Go (since 1.15) refuses
    it as a legacy Common Name certificate, and so do the http and tcp probes."""
    root_key = _key()
    root = _cert("parity root", root_key, None, root_key, ca=True)
    leaf_key = _key()
    leaf = _cert("localhost", leaf_key, root, root_key, ca=False)
    (tmp_path / "ca.pem").write_bytes(_pem(root))
    (tmp_path / "leaf.pem").write_bytes(_pem(leaf))
    (tmp_path / "leaf.key").write_bytes(_key_pem(leaf_key))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(tmp_path / "leaf.pem", tmp_path / "leaf.key")
    tls = {"preferred_ip_protocol": "ip4", "tls_config": {"ca_file": "ca.pem"}}
    modules: dict[str, tuple[str, dict[str, Any]]] = {
        "cn_http": ("http", tls),
        "cn_tcp": ("tcp", {**tls, "tls": True}),
    }
    config, base = blackbox
    theirs_config = {
        name: {"prober": prober, "timeout": "2s", prober: section}
        for name, (prober, section) in modules.items()
    }
    config.write_text(yaml.safe_dump({"modules": with_absolute_files(theirs_config, tmp_path)}))
    await asyncio.to_thread(
        urllib.request.urlopen, urllib.request.Request(f"{base}/-/reload", method="POST")
    )
    async with serve(http_routes, server) as port:
        for module, (prober, section) in modules.items():
            target = f"https://localhost:{port}/" if prober == "http" else f"localhost:{port}"
            theirs = shared(await asyncio.to_thread(blackbox_probe, base, module, target))
            result = await run(prober, target, section, module_timeout=2, secrets=tmp_path)
            assert theirs[("probe_success", ())] == 0.0, module
            assert shared(ours(result)) == theirs, module
            assert result.reason == Reason.TLS, (module, result.message)
