"""Target syntax per prober, shared by load-time validation and the probes.

http/https: a URL. tcp, tls, grpc: host:port. dns: a server, host[:port]
(port 53 by default). icmp: a host. IPv6 literals use brackets: [::1]:443.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from probemesh.errors import ConfigError


def split_host_port(target: str, default_port: int | None = None) -> tuple[str, int]:
    """Split "host:port" / "[v6]:port"; raise ConfigError naming the problem."""
    host, sep, port_text = target.rpartition(":")
    if target.startswith("[") and "]" in target:
        close = target.index("]")
        host = target[1:close]
        rest = target[close + 1 :]
        sep, port_text = (":", rest[1:]) if rest.startswith(":") else ("", "")
    elif not sep or ":" in host:  # no port, or a bare IPv6 literal
        host, port_text = target, ""
    if not host:
        raise ConfigError(f"target {target!r}: missing host")
    if not port_text:
        if default_port is None:
            raise ConfigError(f"target {target!r}: missing port (use host:port)")
        return host, default_port
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ConfigError(f"target {target!r}: port {port_text!r} out of range 1-65535")
    return host, int(port_text)


def target_host(prober: str, target: str) -> str:
    """The host a probe will resolve, after validating the target for its prober."""
    if prober == "http":
        parts = urlsplit(target)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"target {target!r}: expected an http:// or https:// URL")
        try:
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            raise ConfigError(f"target {target!r}: port out of range 1-65535") from None
        return parts.hostname
    if prober == "icmp":
        if not target or "/" in target or " " in target:
            raise ConfigError(f"target {target!r}: expected a host name or IP address")
        return target.strip("[]")
    if prober == "dns":
        return split_host_port(target, 53)[0]
    return split_host_port(target)[0]
