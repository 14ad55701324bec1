"""gRPC core's lines as the bridge translates them (lines as grpcio 1.85 writes them)."""

from __future__ import annotations

import logging

import pytest

from probemesh.grpc_log import CoreLogBridge, cause_of

NO_CERT = (
    "I1130 19:13:56.008748   11313 ssl_transport_security.cc:2563] Handshake failed with error "
    "SSL_ERROR_SSL: error:100000c0:SSL routines:OPENSSL_internal:PEER_DID_NOT_RETURN_A_CERTIFICATE: "
    "Invalid certificate verification context"
)
PLAIN = NO_CERT.replace("100000c0", "100000f7").replace(
    "PEER_DID_NOT_RETURN_A_CERTIFICATE", "WRONG_VERSION_NUMBER"
)


def test_causes_in_operator_words() -> None:
    assert (
        cause_of(NO_CERT)
        == "client sent no certificate (mTLS: the agent needs --tls-cert/--tls-key)"
    )
    assert cause_of(PLAIN) == "plaintext client on a TLS port (the agent needs --tls-ca)"
    assert cause_of("I1130 19:13:56.0 1 chttp2_server.cc:1] something else") is None


def test_bridge_reports_once_per_cause_and_drops_info(caplog: pytest.LogCaptureFixture) -> None:
    bridge = CoreLogBridge()
    bridge.report_handshakes = True
    with caplog.at_level(logging.INFO):
        for _ in range(20):
            bridge.handle(NO_CERT)
        bridge.handle(PLAIN)
        bridge.handle("I1130 19:13:56.0 1 some_file.cc:1] routine information")
        bridge.handle("E1130 19:13:56.0 1 some_file.cc:1] a real error")
    messages = [r.getMessage() for r in caplog.records]
    assert sum("client sent no certificate" in m for m in messages) == 1
    assert sum("plaintext client on a TLS port" in m for m in messages) == 1
    assert not any("routine information" in m for m in messages)
    assert any(m.startswith("gRPC core: E1130") for m in messages)
