"""The catalog of probe metrics an agent may report and the collector exports.

Everything a probe emits crosses the network and lands in Prometheus labels, so
the collector accepts a sample only when its name is listed here and each extra
label is one of the listed keys with an allowed value. This bounds cardinality
whatever an agent sends, and doubles as the metrics reference.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

HTTP_PHASE_ORDER = ("resolve", "connect", "tls", "processing", "transfer")
HTTP_PHASES = frozenset(HTTP_PHASE_ORDER)
HTTP_PHASE_METRIC = "probe_http_duration_seconds"
DNS_PHASES = frozenset({"resolve", "connect", "request"})
ICMP_PHASES = frozenset({"resolve", "setup", "rtt"})
GRPC_PHASES = frozenset({"resolve", "check"})
TLS_PHASES = frozenset({"resolve", "connect", "handshake"})
TLS_VERSIONS = frozenset({"TLS 1.0", "TLS 1.1", "TLS 1.2", "TLS 1.3"})
SERVING_STATUSES = frozenset({"UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"})
_FINGERPRINT = re.compile(r"^[0-9a-f]{64}$")
_SHORT_TEXT = re.compile(r"^[\x20-\x7e]{0,128}$")


@dataclass(frozen=True)
class MetricSpec:
    """A probe metric: its help text and the extra labels it may carry."""

    help: str
    labels: dict[str, frozenset[str] | re.Pattern[str]] = field(default_factory=dict)

    def labels_ok(self, labels: dict[str, str]) -> bool:
        """True when labels has exactly the allowed keys with allowed values."""
        if labels.keys() != self.labels.keys():
            return False
        for key, allowed in self.labels.items():
            value = labels[key]
            if isinstance(allowed, frozenset):
                if value not in allowed:
                    return False
            elif not allowed.match(value):
                return False
        return True


PROBE_METRICS: dict[str, MetricSpec] = {
    "probe_dns_lookup_time_seconds": MetricSpec(
        "Returns the time taken for probe dns lookup in seconds"
    ),
    "probe_ip_protocol": MetricSpec("Specifies whether probe ip protocol is IP4 or IP6"),
    "probe_failed_due_to_regex": MetricSpec("Indicates if probe failed due to regex"),
    "probe_http_duration_seconds": MetricSpec(
        "Duration of http request by phase, summed over all redirects", {"phase": HTTP_PHASES}
    ),
    "probe_http_status_code": MetricSpec("Response HTTP status code"),
    "probe_http_content_length": MetricSpec("Length of http content response"),
    "probe_http_uncompressed_body_length": MetricSpec("Length of uncompressed response body"),
    "probe_http_redirects": MetricSpec("The number of redirects"),
    "probe_http_ssl": MetricSpec("Indicates if SSL was used for the final redirect"),
    "probe_http_version": MetricSpec("Returns the version of HTTP of the probe response"),
    "probe_ssl_earliest_cert_expiry": MetricSpec("Returns last SSL chain expiry in unixtime"),
    "probe_ssl_last_chain_expiry_timestamp_seconds": MetricSpec(
        "Returns last SSL chain expiry in timestamp seconds"
    ),
    "probe_ssl_last_chain_info": MetricSpec(
        "Contains SSL leaf certificate information",
        {"fingerprint_sha256": _FINGERPRINT, "subject": _SHORT_TEXT, "issuer": _SHORT_TEXT},
    ),
    "probe_tls_version_info": MetricSpec(
        "Returns the TLS version used or NaN when unknown", {"version": TLS_VERSIONS}
    ),
    "probe_dns_duration_seconds": MetricSpec(
        "Duration of DNS request by phase", {"phase": DNS_PHASES}
    ),
    "probe_dns_answer_rrs": MetricSpec(
        "Returns number of entries in the answer resource record list"
    ),
    "probe_dns_authority_rrs": MetricSpec(
        "Returns number of entries in the authority resource record list"
    ),
    "probe_dns_additional_rrs": MetricSpec(
        "Returns number of entries in the additional resource record list"
    ),
    "probe_dns_query_succeeded": MetricSpec(
        "Displays whether or not the query was executed successfully"
    ),
    "probe_dns_serial": MetricSpec("Returns the serial number of the zone"),
    "probe_icmp_duration_seconds": MetricSpec(
        "Duration of icmp request by phase", {"phase": ICMP_PHASES}
    ),
    "probe_icmp_reply_hop_limit": MetricSpec("Replied packet hop limit (TTL for ipv4)"),
    "probe_icmp_packets_sent": MetricSpec("Number of ICMP echo requests sent"),
    "probe_icmp_packets_received": MetricSpec("Number of ICMP echo replies received"),
    "probe_icmp_packet_loss_ratio": MetricSpec("Share of ICMP echo requests without a reply"),
    "probe_icmp_rtt_min_seconds": MetricSpec("Smallest ICMP round-trip time"),
    "probe_icmp_rtt_avg_seconds": MetricSpec("Average ICMP round-trip time"),
    "probe_icmp_rtt_max_seconds": MetricSpec("Largest ICMP round-trip time"),
    "probe_icmp_jitter_seconds": MetricSpec("Mean absolute difference between consecutive RTTs"),
    "probe_grpc_healthcheck_response": MetricSpec(
        "Response HealthCheck response", {"serving_status": SERVING_STATUSES}
    ),
    "probe_grpc_status_code": MetricSpec("Response gRPC status code"),
    "probe_grpc_duration_seconds": MetricSpec(
        "Duration of gRPC request by phase", {"phase": GRPC_PHASES}
    ),
    "probe_grpc_ssl": MetricSpec("Indicates if SSL was used for the connection"),
    "probe_tls_duration_seconds": MetricSpec(
        "Duration of the tls probe by phase (probemesh only)", {"phase": TLS_PHASES}
    ),
}
