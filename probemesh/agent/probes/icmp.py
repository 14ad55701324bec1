"""ICMP echo probe: ``packets`` echo requests SEND_SPACING apart, then loss and RTT stats.

blackbox sends one request; probemesh sends ``packets`` (default 3) so that loss
and jitter are measurable per round. The probe succeeds when at least one reply
arrives; replies still missing ``reply_timeout`` after the last request count
as lost, and so do requests the kernel refuses to send (EPERM from a local
firewall rule), as ping(8) counts them. Phases as in blackbox: ``resolve``,
``setup`` (opening the socket) and ``rtt`` (here the mean RTT of the replies).

Sockets: a raw socket when the agent has CAP_NET_RAW, else the unprivileged
datagram "ping" socket that Linux allows to the groups in
net.ipv4.ping_group_range; with neither the probe fails and says which to grant.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import time
from dataclasses import dataclass, field
from itertools import pairwise

from icmplib import (
    AsyncSocket,
    ICMPLibError,
    ICMPRequest,
    ICMPv4Socket,
    ICMPv6Socket,
    SocketBroadcastError,
    SocketPermissionError,
    TimeoutExceeded,
)

from probemesh.agent.probes.net import ProbeEnv, Resolved, resolve
from probemesh.agent.probes.result import ProbeFailure, ProbeResult, Reason
from probemesh.modules import ICMPSettings

_ECHO_REPLY = {socket.AF_INET: 0, socket.AF_INET6: 129}
_UNREACHABLE = {socket.AF_INET: 3, socket.AF_INET6: 1}
_DEFAULT_PAYLOAD = 56
# Gap between two echo requests of one round: short enough for a fast round,
# long enough that the receiver reads each reply as it lands.
SEND_SPACING = 0.01
# Linux <linux/in.h>; the socket module does not export them.
_IP_MTU_DISCOVER = 10
_IP_PMTUDISC_DO = 2


async def probe(target: str, settings: ICMPSettings, env: ProbeEnv, result: ProbeResult) -> None:
    """Ping target and record loss, RTT statistics and blackbox's phases."""
    phases = dict.fromkeys(("resolve", "setup", "rtt"), 0.0)
    tally = _Tally()
    try:
        start = time.perf_counter()
        resolved = await resolve(
            target.strip("[]"),
            settings.preferred_ip_protocol,
            settings.ip_protocol_fallback,
            env,
            result,
        )
        setup_at = time.perf_counter()
        phases["resolve"] = setup_at - start
        source = settings.source_ip_address or env.source_address or None
        sock = open_socket(resolved.family, source)
        try:
            if settings.dont_fragment and resolved.family == socket.AF_INET:
                sock._sock.setsockopt(socket.IPPROTO_IP, _IP_MTU_DISCOVER, _IP_PMTUDISC_DO)
            phases["setup"] = time.perf_counter() - setup_at
            await _ping(sock, resolved, settings, tally)
        finally:
            sock.close()
    finally:
        _record(tally, phases, result)
    if not tally.rtts:
        raise ProbeFailure(Reason.TIMEOUT, f"no echo reply from {resolved.address}")
    result.success = True


@dataclass
class _Tally:
    """Requests sent and RTTs of the replies so far; recorded even if the probe is cancelled."""

    sent: int = 0
    rtts: list[float] = field(default_factory=list)


async def _ping(sock: AsyncSocket, target: Resolved, settings: ICMPSettings, tally: _Tally) -> None:
    """Send the requests SEND_SPACING apart while a receiver times each reply as it lands.

    Sending everything first and reading afterwards would stamp early replies
    late (each send costs ~0.1 ms in Python) and overstate short RTTs.
    """
    ident = random.getrandbits(16) ^ (os.getpid() & 0xFFFF)
    first_seq = random.getrandbits(16)
    pending: dict[int, float] = {}
    all_sent = asyncio.Event()
    ids = {ident}
    receiver = asyncio.create_task(_receive(sock, target, pending, ids, all_sent, tally))
    try:
        for i in range(settings.packets):
            if i:
                await asyncio.sleep(SEND_SPACING)
            if receiver.done():
                break  # an unreachable reply ended the round
            seq = (first_seq + i) & 0xFFFF
            request = ICMPRequest(
                target.address,
                ident,
                seq,
                payload_size=settings.payload_size or _DEFAULT_PAYLOAD,
                ttl=settings.ttl,
            )
            try:
                sock.send(request)
            except SocketBroadcastError:
                # icmplib's name for any EPERM/EACCES from sendto(): a local firewall rule
                # dropped the request (or the address is a broadcast). Like ping(8), count the
                # request as sent and lost, and carry on with the others.
                tally.sent += 1
                continue
            except ICMPLibError as exc:
                raise ProbeFailure(Reason.CONNECT, f"cannot send echo request: {exc}") from None
            ids.add(request.id)  # the kernel rewrites the id on datagram sockets
            pending[seq] = request.time
            tally.sent += 1
        if not pending and not tally.rtts:
            raise ProbeFailure(
                Reason.CONNECT,
                f"cannot send echo request to {target.address}: the kernel refused every one "
                "(EPERM/EACCES: a local firewall rule, or a broadcast address)",
            )
        all_sent.set()
        await asyncio.wait_for(asyncio.shield(receiver), settings.reply_wait)
    except TimeoutError:
        pass  # replies still missing after reply_timeout are lost
    finally:
        receiver.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await receiver


async def _receive(
    sock: AsyncSocket,
    target: Resolved,
    pending: dict[int, float],
    ids: set[int],
    all_sent: asyncio.Event,
    tally: _Tally,
) -> None:
    """Time replies as they arrive; return once every sent request is answered."""
    while not (all_sent.is_set() and not pending):
        # No short receive timeout: a timeout racing a completed read drops that
        # reply. The caller cancels this task once the round is over.
        try:
            reply = await sock.receive(None, 3600.0)
        except TimeoutExceeded:
            continue
        if reply.id not in ids or reply.sequence not in pending:
            continue  # a raw socket sees every ICMP packet on the host
        if reply.type == _UNREACHABLE[target.family]:
            raise ProbeFailure(Reason.CONNECT, f"{target.address} is unreachable (ICMP)")
        if reply.type == _ECHO_REPLY[target.family]:
            tally.rtts.append(reply.time - pending.pop(reply.sequence))


def open_socket(family: socket.AddressFamily, source: str | None) -> AsyncSocket:
    """A raw ICMP socket if allowed, else an unprivileged ping socket, else a clear failure."""
    cls = ICMPv6Socket if family == socket.AF_INET6 else ICMPv4Socket
    for privileged in (True, False):
        try:
            return AsyncSocket(cls(address=source, privileged=privileged))
        except SocketPermissionError:
            continue
        except ICMPLibError as exc:
            raise ProbeFailure(Reason.OTHER, f"cannot open ICMP socket: {exc}") from None
    group = os.getgid()
    raise ProbeFailure(
        Reason.OTHER,
        "ICMP needs a raw socket or a ping socket: grant the agent CAP_NET_RAW "
        f"(setcap cap_net_raw+ep) or include its group {group} in "
        "net.ipv4.ping_group_range (sysctl)",
    )


def _record(tally: _Tally, phases: dict[str, float], result: ProbeResult) -> None:
    sent, rtts = tally.sent, tally.rtts
    received = len(rtts)
    if rtts:
        phases["rtt"] = sum(rtts) / received
    for phase, seconds in phases.items():
        result.add("probe_icmp_duration_seconds", seconds, phase=phase)
    result.add("probe_icmp_packets_sent", sent)
    result.add("probe_icmp_packets_received", received)
    result.add("probe_icmp_packet_loss_ratio", (sent - received) / sent if sent else 1.0)
    if rtts:
        result.add("probe_icmp_rtt_min_seconds", min(rtts))
        result.add("probe_icmp_rtt_avg_seconds", phases["rtt"])
        result.add("probe_icmp_rtt_max_seconds", max(rtts))
        diffs = [abs(b - a) for a, b in pairwise(rtts)]
        result.add("probe_icmp_jitter_seconds", sum(diffs) / len(diffs) if diffs else 0.0)
