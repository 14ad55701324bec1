"""TCP (query_response, tls, starttls) and TLS probes against loopback servers."""

from __future__ import annotations

import asyncio
from pathlib import Path

import trustme

from probemesh.agent.probes.result import Reason
from probemesh.agent.probes.tcp import expand
from tests.agent.probes.probe_helpers import has, run, serve, server_context, value


async def smtp_like(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"220 mail.test ESMTP ready\r\n")
    line = await reader.readline()
    writer.write(b"250 hello " + line.split(b" ", 1)[1].strip() + b"\r\n")
    await reader.readline()


async def test_query_response_with_group_expansion() -> None:
    steps = [
        {"expect": r"^220 (?P<host>\S+) ESMTP", "send": "EHLO ${host}"},
        {"expect": "^250 hello mail.test$", "send": "QUIT"},
    ]
    async with serve(smtp_like) as port:
        result = await run("tcp", f"127.0.0.1:{port}", {"query_response": steps})
    assert result.success, result.message
    assert value(result, "probe_failed_due_to_regex") == 0


async def test_query_response_mismatch_is_validation() -> None:
    async def greet_and_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 mail.test ESMTP ready\r\n")

    async with serve(greet_and_close) as port:
        result = await run("tcp", f"127.0.0.1:{port}", {"query_response": [{"expect": "^SSH-"}]})
    assert result.reason == Reason.VALIDATION
    assert value(result, "probe_failed_due_to_regex") == 1


async def test_refused() -> None:
    async with serve(smtp_like) as port:
        pass
    result = await run("tcp", f"127.0.0.1:{port}")
    assert result.reason == Reason.REFUSED
    assert value(result, "probe_failed_due_to_regex") == 0


async def test_tls_and_starttls(
    ca_file: str,
    localhost_cert: trustme.LeafCert,
    expired_cert: trustme.LeafCert,
    secrets_dir: Path,
) -> None:
    context = server_context(localhost_cert)

    async def starttls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 ready\r\n")
        assert (await reader.readline()).strip() == b"STARTTLS"
        writer.write(b"220 go ahead\r\n")
        await writer.drain()
        await writer.start_tls(context)
        writer.write(b"250 secure\r\n")
        await reader.readline()

    steps = [
        {"expect": "^220 ready"},
        {"send": "STARTTLS"},
        {"expect": "^220 go ahead", "starttls": True},
        {"expect": "^250 secure"},
    ]
    tls = {"ca_file": ca_file}
    async with serve(starttls) as port:
        upgraded = await run(
            "tcp",
            f"localhost:{port}",
            {"query_response": steps, "tls_config": tls},
            secrets=secrets_dir,
        )
    assert upgraded.success, upgraded.message
    assert has(upgraded, "probe_ssl_earliest_cert_expiry")

    async with serve(smtp_like, context) as port:
        direct = await run(
            "tcp",
            f"localhost:{port}",
            {"tls": True, "tls_config": tls, "query_response": [{"expect": "^220"}]},
            secrets=secrets_dir,
        )
    assert direct.success, direct.message
    assert has(direct, "probe_tls_version_info")

    async with serve(smtp_like, server_context(expired_cert)) as port:
        expired = await run(
            "tcp", f"localhost:{port}", {"tls": True, "tls_config": tls}, secrets=secrets_dir
        )
    assert expired.reason == Reason.TLS


async def test_tls_prober(
    ca_file: str,
    localhost_cert: trustme.LeafCert,
    other_host_cert: trustme.LeafCert,
    secrets_dir: Path,
) -> None:
    async def idle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)

    async with serve(idle, server_context(localhost_cert), host="::1") as port:
        ok = await run(
            "tls", f"[::1]:{port}", {"tls_config": {"ca_file": ca_file}}, secrets=secrets_dir
        )
    assert ok.success, ok.message
    assert value(ok, "probe_ip_protocol") == 6
    assert value(ok, "probe_tls_duration_seconds", phase="handshake") > 0
    assert has(ok, "probe_ssl_last_chain_info")
    async with serve(idle, server_context(other_host_cert)) as port:
        wrong = await run(
            "tls", f"127.0.0.1:{port}", {"tls_config": {"ca_file": ca_file}}, secrets=secrets_dir
        )
    assert wrong.reason == Reason.TLS


def test_go_template_expansion() -> None:
    import re

    match = re.search(r"(?P<a>x+)(y)", "xxy")
    assert match is not None
    assert expand("$a-${2}-$$-$9-${nope}", match) == "xx-y-$--"
