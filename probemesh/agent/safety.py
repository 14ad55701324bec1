"""Which addresses an agent may probe: a compromised collector must not aim the
fleet at cloud metadata services or the VPS's own private network.

The check runs on the address a probe is about to connect to, after DNS
resolution, so a name that rebinds to 169.254.169.254 is refused too.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

# Never probed, whatever the flags: link-local (cloud metadata lives there) and
# the AWS IPv6 metadata endpoint.
ALWAYS_BLOCKED = (
    ipaddress.ip_network("169.254.0.0/16"),
    ipaddress.ip_network("fe80::/10"),
    ipaddress.ip_network("fd00:ec2::254/128"),
)


@dataclass(frozen=True)
class AddressPolicy:
    """allow_private admits loopback and private ranges (demo, tests, LANs)."""

    allow_private: bool = False

    def refusal(self, address: str) -> str | None:
        """Why the agent refuses to probe address, or None when it is allowed."""
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        for network in ALWAYS_BLOCKED:
            if ip in network:
                return f"target address {ip} is link-local/cloud-metadata; agents never probe it"
        if ip.is_unspecified or ip.is_multicast:
            return f"target address {ip} is not a unicast address"
        if not self.allow_private and (ip.is_loopback or ip.is_private or ip.is_reserved):
            kind = "loopback" if ip.is_loopback else "private"
            return (
                f"target address {ip} is {kind}; "
                "start the agent with --allow-private-targets to allow it"
            )
        return None
