"""gRPC channel/server options shared by agent and collector.

Keepalive pings every 10 s with a 10 s timeout find a half-open TCP connection
within about 20-30 s even when no application data flows; application
heartbeats cover proxies that answer pings themselves.
"""

from __future__ import annotations

import ipaddress

MAX_MESSAGE_BYTES = 8 * 1024 * 1024

CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    # Our own backoff and failover decide when to reconnect.
    ("grpc.enable_retries", 0),
]


def server_options(max_message_bytes: int) -> list[tuple[str, int]]:
    """Server side: accept the agents' keepalive pings, cap message size.

    gRPC core's receive cap is twice max_message_bytes: the servicer enforces
    max_message_bytes itself so that it can count the refusal
    (rejected{reason="message_too_large"}); core cuts anything larger before
    it is read, answering RESOURCE_EXHAUSTED without our counting it.
    TLS: gRPC core (BoringSSL) negotiates TLS 1.2 or 1.3 only, on both sides,
    by default; docs/security.md records how that was checked.
    """
    return [
        ("grpc.keepalive_time_ms", 10_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
        ("grpc.http2.max_ping_strikes", 0),
        ("grpc.max_receive_message_length", hard_receive_limit(max_message_bytes)),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        # A port another process already holds is an error, not a silent share.
        ("grpc.so_reuseport", 0),
    ]


def hard_receive_limit(max_message_bytes: int) -> int:
    """gRPC core's receive cap for a configured max_message_bytes."""
    return min(2 * max_message_bytes, 2**31 - 1)


def is_loopback(address: str) -> bool:
    """True when a host:port (or bare host) names this machine only."""
    host = (
        address.rsplit(":", 1)[0] if address.count(":") == 1 or address.startswith("[") else address
    )
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
