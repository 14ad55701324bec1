"""gRPC probe: one grpc.health.v1 ``Check`` on a fresh channel, like blackbox.

The target is host:port. The probe resolves the host itself (so the address
policy sees the real address) and dials the IP, keeping the host name as the
authority and the TLS name. The channel is new for every probe: a reused
channel would hide connection set-up and failures. ``check`` covers connect,
TLS and the RPC, as in blackbox. gRPC's client hides the peer certificate, so
the certificate metrics of the http/tcp probes are not emitted here.
"""

from __future__ import annotations

import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from probemesh.agent.probes.net import ProbeEnv, file_stamps, resolve, tls_paths
from probemesh.agent.probes.result import ProbeFailure, ProbeResult, Reason
from probemesh.agent.secrets import SecretFiles
from probemesh.modules import GRPCSettings, TLSConfig
from probemesh.targets import split_host_port

_STATUSES = health_pb2.HealthCheckResponse.ServingStatus
# No retries and no waiting: a probe must report the first failure it meets.
_OPTIONS = [("grpc.enable_retries", 0), ("grpc.use_local_subchannel_pool", 1)]


async def probe(target: str, settings: GRPCSettings, env: ProbeEnv, result: ProbeResult) -> None:
    """Ask target's health service about settings.service."""
    host, port = split_host_port(target)
    phases = {"resolve": 0.0}
    status_code = grpc.StatusCode.UNKNOWN
    serving = ""
    try:
        start = time.perf_counter()
        resolved = await resolve(
            host, settings.preferred_ip_protocol, settings.ip_protocol_fallback, env, result
        )
        check_at = time.perf_counter()
        phases["resolve"] = check_at - start
        address = (
            f"[{resolved.address}]:{port}"
            if ":" in resolved.address
            else f"{resolved.address}:{port}"
        )
        options = [*_OPTIONS, ("grpc.default_authority", f"{host}:{port}")]
        if settings.tls:
            name = settings.tls_config.server_name or host
            options.append(("grpc.ssl_target_name_override", name))
            channel = grpc.aio.secure_channel(
                address, _credentials(settings.tls_config, env.secrets), options
            )
        else:
            channel = grpc.aio.insecure_channel(address, options)
        try:
            async with channel:
                stub = health_pb2_grpc.HealthStub(channel)
                response = await stub.Check(health_pb2.HealthCheckRequest(service=settings.service))
            status_code = grpc.StatusCode.OK
            serving = _STATUSES.Name(response.status)
        except grpc.aio.AioRpcError as exc:
            status_code = exc.code()
            raise ProbeFailure(*_reason(exc)) from None
        finally:
            phases["check"] = time.perf_counter() - check_at
    finally:
        for phase, seconds in phases.items():
            result.add("probe_grpc_duration_seconds", seconds, phase=phase)
        for name in _STATUSES.keys():  # noqa: SIM118 - protobuf enum wrapper
            result.add("probe_grpc_healthcheck_response", name == serving, serving_status=name)
        result.add("probe_grpc_status_code", status_code.value[0])
        result.add("probe_grpc_ssl", 1 if settings.tls and status_code == grpc.StatusCode.OK else 0)
    if serving != "SERVING":
        raise ProbeFailure(Reason.VALIDATION, f"service {settings.service!r} is {serving}")
    result.success = True


def _reason(exc: grpc.aio.AioRpcError) -> tuple[Reason, str]:
    """Map a failed RPC to one failure reason; transport errors only show in the text."""
    code = exc.code()
    text = f"{exc.details()} {exc.debug_error_string()}".lower()
    message = f"gRPC {code.name}: {exc.details()}"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return Reason.TIMEOUT, message
    if code != grpc.StatusCode.UNAVAILABLE:
        return Reason.VALIDATION, message
    if "ssl" in text or "tls" in text or "handshake" in text or "certificate" in text:
        return Reason.TLS, message
    if "refused" in text:
        return Reason.REFUSED, message
    return Reason.CONNECT, message


# Credentials by (tls_config, resolved files), with the files' stamps when built.
_CREDENTIALS: dict[tuple, tuple[tuple, grpc.ChannelCredentials]] = {}


def _credentials(config: TLSConfig, secrets: SecretFiles) -> grpc.ChannelCredentials:
    """Channel credentials per tls_config, rebuilt when a file changes (checked at each use)."""
    paths = tls_paths(config, secrets)
    stamp = file_stamps(paths)
    key = (config, paths)
    cached = _CREDENTIALS.get(key)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    ca, cert, private_key = (path.read_bytes() if path else None for path in paths)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=private_key, certificate_chain=cert
    )
    if key not in _CREDENTIALS and len(_CREDENTIALS) >= 64:
        del _CREDENTIALS[next(iter(_CREDENTIALS))]
    _CREDENTIALS[key] = (stamp, credentials)
    return credentials
