"""Which addresses an agent may probe: a compromised collector must not aim the
fleet at cloud metadata services or the VPS's own private network.

The check runs on the address a probe is about to connect to, after DNS
resolution, so a name that rebinds to 169.254.169.254 is refused too.

A refusal is a configuration problem, not an outage: its message starts with
the rule's name (one of POLICY_RULES) so that the collector can show and
count it as "not runnable on agent X: <rule>" instead of a failure.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

# The policy rules an agent may refuse a check by.
RULE_BLOCKED = "blocked_address"  # link-local / cloud metadata: never probed
RULE_PRIVATE = "private_target"  # loopback or private without --allow-private-targets
RULE_INTERVAL = "interval_floor"  # interval below --min-interval
POLICY_RULES = (RULE_BLOCKED, RULE_PRIVATE, RULE_INTERVAL)


def policy_message(rule: str, detail: str) -> str:
    """The refusal message: "<rule>: <detail>"."""
    return f"{rule}: {detail}"


def policy_rule(message: str) -> str:
    """The rule a refusal message names; "" when it names none of POLICY_RULES."""
    rule = message.partition(":")[0]
    return rule if rule in POLICY_RULES else ""


# Never probed, whatever the flags: link-local (AWS, GCP, Azure and Oracle
# metadata live at 169.254.169.254), the AWS IPv6 metadata endpoint and
# Alibaba Cloud's metadata address.
ALWAYS_BLOCKED = (
    ipaddress.ip_network("169.254.0.0/16"),
    ipaddress.ip_network("fe80::/10"),
    ipaddress.ip_network("fd00:ec2::254/128"),
    ipaddress.ip_network("100.100.100.200/32"),
)
# Carrier-grade NAT space: not "private" for Python, but never the public internet.
_SHARED = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one reaches through a translator, if any.

    IPv4-mapped (::ffff:a.b.c.d), IPv4-compatible (::a.b.c.d), NAT64
    (64:ff9b::a.b.c.d), 6to4 (2002:aabb:ccdd::) and Teredo all end up at an
    IPv4 address; the policy judges that address.
    """
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    packed = int(ip)
    if ip in _NAT64 or (packed >> 32 == 0 and packed > 1):
        return ipaddress.IPv4Address(packed & 0xFFFFFFFF)
    return None


@dataclass(frozen=True)
class AgentPolicy:
    """What the agent refuses, announced in Hello so the collector can warn early."""

    min_interval: float = 0.0
    allow_private_targets: bool = False


@dataclass(frozen=True)
class AddressPolicy:
    """allow_private admits loopback and private ranges (demo, tests, LANs)."""

    allow_private: bool = False

    def refusal(self, address: str) -> str | None:
        """Why the agent refuses to probe address, or None when it is allowed."""
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if isinstance(ip, ipaddress.IPv6Address):
            ip = _embedded_ipv4(ip) or ip
        for network in ALWAYS_BLOCKED:
            if ip in network:
                return policy_message(
                    RULE_BLOCKED,
                    f"target address {ip} is link-local/cloud-metadata; agents never probe it",
                )
        if ip.is_unspecified or ip.is_multicast:
            return policy_message(RULE_BLOCKED, f"target address {ip} is not a unicast address")
        private = ip.is_loopback or ip.is_private or ip.is_reserved or ip in _SHARED
        if not self.allow_private and private:
            kind = "loopback" if ip.is_loopback else "private"
            return policy_message(
                RULE_PRIVATE,
                f"target address {ip} is {kind}; "
                "start the agent with --allow-private-targets to allow it",
            )
        return None
