"""Default TCP ports, chosen to sit beside the exporters users already run.

Prometheus keeps a list of default port allocations on its wiki: 9090-9094
for its own servers and 9100-9999 for exporters. That exporter range is fully
allocated (blackbox_exporter has 9115, snmp_exporter 9116), so any default in
it would collide with some exporter. probemesh's defaults sit outside every
range of that list, as one block that is easy to open in a firewall.
"""

from __future__ import annotations

GRPC_PORT = 7443  # collector: agent streams (gRPC, TLS off loopback)
HTTP_PORT = 7444  # collector: /metrics, /api/v1/*, status page
AGENT_METRICS_PORT = 7445  # agent: its own /metrics (off unless --metrics-listen)
