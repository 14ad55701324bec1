"""gRPC core's lines as the bridge translates them (as grpcio 1.85 writes them, with
the handshaker trace the CLI turns on)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

from probemesh.grpc_log import CoreLogBridge, cause_of

SSL = (
    "I1130 20:02:18.648556    6870 ssl_transport_security.cc:2563] Handshake failed with error "
    "SSL_ERROR_SSL: error:100000c0:SSL routines:OPENSSL_internal:"
    "PEER_DID_NOT_RETURN_A_CERTIFICATE: Invalid certificate verification context"
)
BLOCK = [
    "I1130 20:02:18.648578    6870 handshaker.cc:155] CallNextHandshakerLocked: error=UNKNOWN: "
    "Ssl handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:100000c0:SSL routines:"
    "OPENSSL_internal:PEER_DID_NOT_RETURN_A_CERTIFICATE: Invalid certificate verification context: OK",
    "=== Source Location Trace: === ",
    "src/core/util/status_helper.cc:68",
    " shutdown=false index=2, args={endpoint=0x7f5ac8001c20, args={grpc.internal.endpoint_local_"
    "address=ipv4:127.0.0.1:36887, grpc.internal.endpoint_peer_address=ipv4:{peer}, x=1}}",
]
AFTER = (
    "I1130 20:02:18.648587    6870 channel_trace.h:396] handshake manager 0x7f5ac80020c0: "
    "Failed with error: UNKNOWN: Ssl handshake failed (TSI_PROTOCOL_FAILURE)"
)


def failed_handshake(bridge: CoreLogBridge, peer: str) -> None:
    bridge.handle(SSL)
    for line in BLOCK:
        bridge.handle(line.replace("{peer}", peer))
    for line in (AFTER, "=== Source Location Trace: === ", "src/core/util/status_helper.cc:68", ""):
        bridge.handle(line)


def test_causes_in_operator_words() -> None:
    assert (
        cause_of(SSL) == "client sent no certificate (mTLS: the agent needs --tls-cert/--tls-key)"
    )
    plain = SSL.replace("PEER_DID_NOT_RETURN_A_CERTIFICATE", "WRONG_VERSION_NUMBER")
    assert cause_of(plain) == "plaintext client on a TLS port (the agent needs --tls-ca)"


def test_one_line_per_peer_and_cause(
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    bridge = CoreLogBridge()
    bridge.report_handshakes = True
    with caplog.at_level(logging.INFO):
        for port in range(40000, 40020):  # one agent retrying: new source ports
            failed_handshake(bridge, f"203.0.113.7:{port}")
        failed_handshake(bridge, "198.51.100.9:5000")
        bridge.handle("I1130 19:13:56.0 1 some_file.cc:1] routine information")
        bridge.handle("E1130 19:13:56.0 1 some_file.cc:1] a real error")
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    handshakes = [m for m in messages if m.startswith("TLS handshake")]
    assert handshakes == [
        "TLS handshake with 203.0.113.7:40000 failed: client sent no certificate "
        "(mTLS: the agent needs --tls-cert/--tls-key)",
        "TLS handshake with 198.51.100.9:5000 failed: client sent no certificate "
        "(mTLS: the agent needs --tls-cert/--tls-key)",
    ]
    assert not any("routine information" in m for m in messages)
    assert any(m.startswith("gRPC core: E1130") for m in messages)
    assert capsys.readouterr().err == "", "continuation lines leaked to stderr"


def test_without_the_trace_the_cause_alone(caplog: pytest.LogCaptureFixture) -> None:
    bridge = CoreLogBridge()
    bridge.report_handshakes = True
    with caplog.at_level(logging.INFO):
        bridge.handle(SSL)
        bridge.handle("I1130 19:13:57.0 1 other.cc:1] the next line of gRPC core")
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
        "TLS handshake with an agent failed: client sent no certificate "
        "(mTLS: the agent needs --tls-cert/--tls-key)"
    ]


def test_cli_runs_without_a_descriptor_2() -> None:
    """A daemon started with stderr closed: the bridge steps aside, the CLI works."""
    done = subprocess.run(
        [sys.executable, "-m", "probemesh", "--version"],
        stdout=subprocess.PIPE,
        preexec_fn=lambda: os.close(2),  # stderr closed, as some supervisors start daemons
        timeout=30,
    )
    assert done.returncode == 0 and done.stdout.startswith(b"probemesh, version")
