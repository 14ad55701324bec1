"""HTTP probe on real loopback servers: phases, redirects, TLS, auth, every failure reason."""

from __future__ import annotations

import asyncio
import base64
import datetime
import gzip
import ssl
import time
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import trustme

from probemesh.agent.probes.result import Reason
from tests.agent.probes.probe_helpers import (
    Handler,
    has,
    read_request,
    response,
    run,
    serve,
    server_context,
    value,
    write_pair,
)

PHASES = ("resolve", "connect", "tls", "processing", "transfer")


async def ok_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    writer.write(response(200, b"hello probemesh", {"X-Kind": "test"}))


async def test_success_emits_blackbox_gauges() -> None:
    async with serve(ok_handler) as port:
        result = await run("http", f"http://127.0.0.1:{port}/")
    assert result.success, result.message
    assert value(result, "probe_http_status_code") == 200
    assert value(result, "probe_http_content_length") == 15
    assert value(result, "probe_http_uncompressed_body_length") == 15
    assert value(result, "probe_http_version") == 1.1
    assert value(result, "probe_http_ssl") == 0
    assert value(result, "probe_http_redirects") == 0
    assert value(result, "probe_failed_due_to_regex") == 0
    assert value(result, "probe_ip_protocol") == 4
    for phase in PHASES:
        assert value(result, "probe_http_duration_seconds", phase=phase) >= 0
    assert value(result, "probe_http_duration_seconds", phase="tls") == 0


async def test_redirect_chain_sums_phases_and_switches_post_to_get() -> None:
    seen: list[tuple[str, str]] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        method, path, _ = await read_request(reader)
        seen.append((method, path))
        if path == "/a":
            writer.write(response(302, headers={"Location": "/b"}))
        elif path == "/b":
            await asyncio.sleep(0.05)  # processing time on the second hop
            writer.write(response(301, headers={"Location": f"http://127.0.0.1:{port}/c"}))
        else:
            writer.write(response(200, b"done"))

    async with serve(handler) as port:
        result = await run("http", f"http://127.0.0.1:{port}/a", {"method": "POST", "body": "x"})
    assert result.success, result.message
    assert seen == [("POST", "/a"), ("GET", "/b"), ("GET", "/c")]
    assert value(result, "probe_http_redirects") == 2
    assert value(result, "probe_http_status_code") == 200
    # The second hop's 50 ms wait is processing time. One loop runs both ends, so
    # the server may start waiting a moment before the probe stamps its request sent.
    assert value(result, "probe_http_duration_seconds", phase="processing") >= 0.045


async def test_no_follow_redirects_counts_the_redirect_and_fails_on_status() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(response(302, headers={"Location": "/elsewhere"}))

    async with serve(handler) as port:
        result = await run("http", f"http://127.0.0.1:{port}/", {"no_follow_redirects": True})
    assert result.reason == Reason.HTTP_STATUS
    assert value(result, "probe_http_redirects") == 1  # as blackbox's CheckRedirect counts it
    assert value(result, "probe_http_status_code") == 302


async def test_slow_body_lands_in_transfer_phase() -> None:
    """The headers come at once, the body in 0.18 s: the probe's first byte
    splits them. It reads the headers a moment after they were sent, and what a
    busy host adds to that moment moves from transfer to processing, so the
    bounds are on the two together and on the body's own time as the server saw it.
    """
    body: list[float] = []  # seconds from the headers written to the last chunk written

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        started = time.perf_counter()
        for _ in range(3):
            await writer.drain()
            await asyncio.sleep(0.06)
            writer.write(b"5\r\nhello\r\n")
        writer.write(b"0\r\n\r\n")
        body.append(time.perf_counter() - started)

    async with serve(handler) as port:
        result = await run("http", f"http://127.0.0.1:{port}/")
    assert result.success, result.message
    transfer = value(result, "probe_http_duration_seconds", phase="transfer")
    processing = value(result, "probe_http_duration_seconds", phase="processing")
    assert processing < 0.05
    assert transfer + processing >= 0.18  # the body's sleeps, all after the request
    assert transfer < body[0] + 0.3  # nothing after the last chunk (a wait for the close)
    assert value(result, "probe_http_uncompressed_body_length") == 15
    assert value(result, "probe_http_content_length") == -1


async def test_status_mismatch_and_explicit_valid_codes() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(response(404, b"missing"))

    async with serve(handler) as port:
        failed = await run("http", f"http://127.0.0.1:{port}/")
        allowed = await run("http", f"http://127.0.0.1:{port}/", {"valid_status_codes": [404]})
    assert failed.reason == Reason.HTTP_STATUS and not failed.success
    assert value(failed, "probe_http_status_code") == 404
    assert allowed.success, allowed.message


async def test_regexes_fail_with_validation() -> None:
    async with serve(ok_handler) as port:
        url = f"http://127.0.0.1:{port}/"
        body_hit = await run("http", url, {"fail_if_body_matches_regexp": ["probe.esh"]})
        body_miss = await run("http", url, {"fail_if_body_not_matches_regexp": ["^absent"]})
        header = await run(
            "http", url, {"fail_if_header_not_matches": [{"header": "X-Kind", "regexp": "prod"}]}
        )
        fine = await run("http", url, {"fail_if_body_not_matches_regexp": ["hello"]})
    for result in (body_hit, body_miss, header):
        assert result.reason == Reason.VALIDATION, result.message
        assert value(result, "probe_failed_due_to_regex") == 1
    assert fine.success and value(fine, "probe_failed_due_to_regex") == 0


async def test_refused_dns_and_timeout_reasons() -> None:
    async with serve(ok_handler) as port:
        pass  # closed: nothing listens on port any more
    refused = await run("http", f"http://127.0.0.1:{port}/")
    assert refused.reason == Reason.REFUSED
    assert value(refused, "probe_http_status_code") == 0  # blackbox still reports the gauge

    unresolvable = await run("http", "http://nonexistent.invalid/")
    assert unresolvable.reason == Reason.DNS
    assert value(unresolvable, "probe_http_status_code") == 0

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(5)

    async with serve(silent) as port:
        started = time.perf_counter()
        timed_out = await run("http", f"http://127.0.0.1:{port}/", module_timeout=0.3)
    assert timed_out.reason == Reason.TIMEOUT
    assert time.perf_counter() - started < 1
    assert value(timed_out, "probe_http_duration_seconds", phase="processing") == 0


async def test_tls_success_records_chain_expiry(
    ca: trustme.CA, ca_file: str, localhost_cert: trustme.LeafCert, secrets_dir: Path
) -> None:
    async with serve(ok_handler, server_context(localhost_cert)) as port:
        result = await run(
            "http",
            f"https://localhost:{port}/",
            {"tls_config": {"ca_file": ca_file}},
            secrets=secrets_dir,
        )
    assert result.success, result.message
    assert value(result, "probe_http_ssl") == 1
    assert value(result, "probe_http_duration_seconds", phase="tls") > 0
    assert has(result, "probe_tls_version_info")
    expiry = value(result, "probe_ssl_earliest_cert_expiry")
    assert abs(expiry - datetime.datetime(3000, 1, 1, tzinfo=datetime.UTC).timestamp()) < 86400


async def test_earliest_expiry_covers_the_intermediate(
    ca: trustme.CA, ca_file: str, secrets_dir: Path
) -> None:
    """The leaf outlives its intermediate: the earliest expiry must be the intermediate's."""
    intermediate = ca.create_child_ca()
    leaf_expiry = datetime.datetime(3100, 1, 1, tzinfo=datetime.UTC)
    cert = intermediate.issue_cert("localhost", not_after=leaf_expiry)
    async with serve(ok_handler, server_context(cert)) as port:
        result = await run(
            "http",
            f"https://localhost:{port}/",
            {"tls_config": {"ca_file": ca_file}},
            secrets=secrets_dir,
        )
    assert result.success, result.message
    earliest = value(result, "probe_ssl_earliest_cert_expiry")
    assert earliest < leaf_expiry.timestamp() - 86400 * 365
    assert value(result, "probe_ssl_last_chain_expiry_timestamp_seconds") == earliest


async def test_expired_and_wrong_host_certificates_fail_with_tls(
    ca_file: str,
    expired_cert: trustme.LeafCert,
    other_host_cert: trustme.LeafCert,
    secrets_dir: Path,
) -> None:
    settings = {"tls_config": {"ca_file": ca_file}}
    for cert in (expired_cert, other_host_cert):
        async with serve(ok_handler, server_context(cert)) as port:
            result = await run("http", f"https://localhost:{port}/", settings, secrets=secrets_dir)
        assert result.reason == Reason.TLS, result.message
    async with serve(ok_handler, server_context(expired_cert)) as port:
        skipped = await run(
            "http",
            f"https://localhost:{port}/",
            {"tls_config": {"insecure_skip_verify": True}},
        )
    assert skipped.success, skipped.message
    assert not has(skipped, "probe_ssl_last_chain_expiry_timestamp_seconds")


async def test_client_certificate(
    ca: trustme.CA, ca_file: str, localhost_cert: trustme.LeafCert, secrets_dir: Path
) -> None:
    client_ca = trustme.CA()
    cert_file, key_file = write_pair(client_ca.issue_cert("probe@probemesh"), secrets_dir)
    context = server_context(localhost_cert, client_ca=client_ca)
    async with serve(ok_handler, context) as port:
        url = f"https://localhost:{port}/"
        without = await run("http", url, {"tls_config": {"ca_file": ca_file}}, secrets=secrets_dir)
        with_cert = await run(
            "http",
            url,
            {"tls_config": {"ca_file": ca_file, "cert_file": cert_file, "key_file": key_file}},
            secrets=secrets_dir,
        )
    assert without.reason == Reason.TLS, without.message
    assert with_cert.success, with_cert.message


async def test_fail_if_ssl_and_not_ssl() -> None:
    async with serve(ok_handler) as port:
        result = await run("http", f"http://127.0.0.1:{port}/", {"fail_if_not_ssl": True})
    assert result.reason == Reason.VALIDATION


async def test_basic_auth_and_bearer_token(tmp_path: Path) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _, _, headers = await read_request(reader)
        good = {"Basic " + base64.b64encode(b"probe:s3cret").decode(), "Bearer tok"}
        writer.write(response(200 if headers.get("authorization") in good else 401))

    token_file = tmp_path / "token"
    token_file.write_text("tok\n")
    async with serve(handler) as port:
        url = f"http://127.0.0.1:{port}/"
        basic = await run("http", url, {"basic_auth": {"username": "probe", "password": "s3cret"}})
        bearer = await run("http", url, {"bearer_token_file": "token"}, secrets=tmp_path)
        none = await run("http", url)
    assert basic.success and bearer.success
    assert none.reason == Reason.HTTP_STATUS


async def test_body_size_limit_and_compression() -> None:
    payload = b"a" * 5000

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _, _, headers = await read_request(reader)
        if headers.get("accept-encoding") == "gzip":
            writer.write(response(200, gzip.compress(payload), {"Content-Encoding": "gzip"}))
        else:
            writer.write(response(200, payload))

    async with serve(handler) as port:
        url = f"http://127.0.0.1:{port}/"
        limited = await run("http", url, {"body_size_limit": "1KB"})
        # Like blackbox, compression only decodes: asking for gzip is the module's job.
        gzip_headers = {"Accept-Encoding": "gzip"}
        compressed = await run("http", url, {"compression": "gzip", "headers": gzip_headers})
    assert limited.reason == Reason.VALIDATION
    assert compressed.success, compressed.message
    assert value(compressed, "probe_http_uncompressed_body_length") == 5000
    assert value(compressed, "probe_http_content_length") < 5000


async def test_headers_replace_defaults_case_insensitively() -> None:
    seen: dict[str, str] = {}

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _, _, headers = await read_request(reader)
        seen.update(headers)
        writer.write(response(200))

    async with serve(handler) as port:
        result = await run(
            "http", f"http://127.0.0.1:{port}/", {"headers": {"host": "example.org", "X-A": "1"}}
        )
    assert result.success
    assert seen["host"] == "example.org" and seen["x-a"] == "1"


def test_tls_reason_for_ssl_errors() -> None:
    from probemesh.agent.probes.result import failure_from_exception

    assert failure_from_exception(ssl.SSLError("boom"))[0] == Reason.TLS


async def test_ca_rotation_is_picked_up_at_the_next_probe(
    ca: trustme.CA, localhost_cert: trustme.LeafCert, tmp_path: Path
) -> None:
    """The CA file is re-read when it changes (mtime at use), without a restart."""
    (tmp_path / "ca.pem").write_bytes(trustme.CA().cert_pem.bytes())  # not the server's CA
    settings = {"tls_config": {"ca_file": "ca.pem"}}
    async with serve(ok_handler, server_context(localhost_cert)) as port:
        url = f"https://localhost:{port}/"
        before = await run("http", url, settings, secrets=tmp_path)
        (tmp_path / "ca.pem").write_bytes(ca.cert_pem.bytes())
        after = await run("http", url, settings, secrets=tmp_path)
    assert before.reason == Reason.TLS, before.message
    assert after.success, after.message


async def test_ca_behind_a_swapped_symlink(
    ca: trustme.CA, localhost_cert: trustme.LeafCert, tmp_path: Path
) -> None:
    """A cached context follows a symlink swap (Kubernetes-style rotation) in either direction.

    Swapped to another file inside the dir, the new CA is used at the next
    probe; swapped to a file outside, the probe is refused and nothing is read.
    """
    secrets = tmp_path / "secrets"
    (secrets / "v1").mkdir(parents=True)
    (secrets / "v2").mkdir()
    (secrets / "v1" / "ca.pem").write_bytes(trustme.CA().cert_pem.bytes())  # not the server's CA
    (secrets / "v2" / "ca.pem").write_bytes(ca.cert_pem.bytes())
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "ca.pem").write_bytes(ca.cert_pem.bytes())
    (secrets / "data").symlink_to("v1")
    settings = {"tls_config": {"ca_file": "data/ca.pem"}}

    def swap(target: str | Path) -> None:
        (secrets / "data.new").symlink_to(target)
        (secrets / "data.new").replace(secrets / "data")

    async with serve(ok_handler, server_context(localhost_cert)) as port:
        url = f"https://localhost:{port}/"
        results = [await run("http", url, settings, secrets=secrets)]
        swap("v2")
        results.append(await run("http", url, settings, secrets=secrets))
        results.append(await run("http", url, settings, secrets=secrets))
        swap(tmp_path / "outside")
        results.append(await run("http", url, settings, secrets=secrets))
    assert results[0].reason == Reason.TLS, results[0].message
    assert results[1].success and results[2].success, (results[1].message, results[2].message)
    assert results[3].reason == Reason.OTHER
    assert "leads out of the agent's --secrets-dir" in results[3].message


HOLD = 0.15


async def h2_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """An HTTP/2 server (h2 library) holding its response head, then its body, HOLD seconds."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    conn.initiate_connection()
    writer.write(conn.data_to_send())
    while data := await reader.read(65536):
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                await asyncio.sleep(HOLD)
                conn.send_headers(event.stream_id, [(":status", "200"), ("content-length", "5")])
                writer.write(conn.data_to_send())
                await writer.drain()
                await asyncio.sleep(HOLD)
                conn.send_data(event.stream_id, b"hello", end_stream=True)
        writer.write(conn.data_to_send())
        await writer.drain()


async def test_http2_phases_are_honest(
    ca_file: str, localhost_cert: trustme.LeafCert, secrets_dir: Path
) -> None:
    """Over ALPN h2 the held head lands in processing and the held body in transfer."""
    context = server_context(localhost_cert)
    context.set_alpn_protocols(["h2"])
    async with serve(h2_server, context) as port:
        result = await run(
            "http",
            f"https://localhost:{port}/",
            {"tls_config": {"ca_file": ca_file}, "valid_http_versions": ["HTTP/2.0"]},
            secrets=secrets_dir,
        )
    assert result.success, result.message
    assert value(result, "probe_http_version") == 2.0
    phase = {p: value(result, "probe_http_duration_seconds", phase=p) for p in PHASES}
    assert phase["tls"] > 0
    # Each hold lands in its own phase: a misplaced boundary would show 0 or 2 x HOLD.
    # The server's sleeps may end up to a millisecond early (uvloop's timer resolution).
    assert HOLD - 0.002 <= phase["processing"] < 2 * HOLD, phase
    assert HOLD - 0.002 <= phase["transfer"] < 2 * HOLD, phase


def h2_answering(*heads: list[tuple[str, str]]) -> Handler:
    """An HTTP/2 server answering every request with these header blocks, then "hi"."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        config = h2.config.H2Configuration(client_side=False, validate_outbound_headers=False)
        conn = h2.connection.H2Connection(config)
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        while data := await reader.read(65536):
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    for head in heads:
                        conn.send_headers(event.stream_id, head)
                    conn.send_data(event.stream_id, b"hi", end_stream=True)
            writer.write(conn.data_to_send())
            await writer.drain()

    return handler


async def test_http2_informational_and_malformed_responses(
    ca_file: str, localhost_cert: trustme.LeafCert, secrets_dir: Path
) -> None:
    """103 Early Hints is skipped over HTTP/2 too; a bad :status is a clear validation failure."""
    context = server_context(localhost_cert)
    context.set_alpn_protocols(["h2"])
    settings = {"tls_config": {"ca_file": ca_file}}
    hints = [(":status", "103"), ("link", "</s.css>; rel=preload")]
    async with serve(h2_answering(hints, [(":status", "200")]), context) as port:
        early = await run("http", f"https://localhost:{port}/", settings, secrets=secrets_dir)
    async with serve(h2_answering([(":status", "2x0")]), context) as port:
        bad = await run("http", f"https://localhost:{port}/", settings, secrets=secrets_dir)
    assert early.success, early.message
    assert value(early, "probe_http_status_code") == 200
    assert value(early, "probe_http_version") == 2.0
    assert bad.reason == Reason.VALIDATION, bad.message
    assert "malformed HTTP response" in bad.message
    assert value(bad, "probe_http_status_code") == 0
