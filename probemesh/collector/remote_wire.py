"""Remote-write 1.0 WriteRequest bytes, written without message objects.

Building a ``remote_pb2.TimeSeries`` per sample costs several microseconds of
Python; a collector writes every result's dozen or so samples and snapshots
hundreds of thousands of counter series, so the messages are written here
field by field instead (``tests/prometheus/test_remote_write.py`` parses them
back with the generated classes). Label pairs recur across series (check,
agent, country names) and are encoded once each.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Iterable

import cramjam

from probemesh.wire import varint

_DOUBLE = struct.Struct("<d")


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return varint(number << 3 | 2) + _length(len(payload)) + payload


def _length(n: int) -> bytes:
    """varint(n), without its loop for the lengths of a series (under 16 KiB)."""
    if n < 0x80:
        return _BYTE[n]
    if n < 0x4000:
        return bytes((n & 0x7F | 0x80, n >> 7))
    return varint(n)


_BYTE = [bytes((n,)) for n in range(0x80)]


@functools.lru_cache(maxsize=1 << 16)
def label(name: str, value: str) -> bytes:
    """One Label (name = 1, value = 2) as a TimeSeries' labels field (1)."""
    return field(1, field(1, name.encode()) + field(2, value.encode()))


def stamp(timestamp_ms: int) -> bytes:
    """A Sample's timestamp field (2), shared by the samples of one moment."""
    return b"\x10" + varint(timestamp_ms)


def timeseries(labels: bytes, value: float, stamp_bytes: bytes) -> bytes:
    """One TimeSeries (WriteRequest field 1) of encoded labels and one sample
    (Sample: value = 1, a double; timestamp = 2)."""
    # The sample is 9 bytes and the stamp at most 11: its length is one byte.
    body = labels + _SAMPLE_HEADS[len(stamp_bytes)] + _DOUBLE.pack(value) + stamp_bytes
    return b"\x0a" + _length(len(body)) + body


_SAMPLE_HEADS = [b"\x12" + bytes((9 + n,)) + b"\x09" for n in range(12)]


def timeseries_at(series: Iterable[tuple[bytes, float]], stamp_bytes: bytes) -> list[bytes]:
    """timeseries() of many series of one moment (a snapshot's), with the
    sample's framing and the length arithmetic worked out once for them all:
    a snapshot encodes hundreds of thousands, and a call for each one is a
    third of the snapshot's encoding."""
    head = _SAMPLE_HEADS[len(stamp_bytes)]
    extra = len(head) + _DOUBLE.size + len(stamp_bytes)
    pack, lengths = _DOUBLE.pack, _LENGTHS
    return [
        b"\x0a" + lengths[len(labels) + extra] + labels + head + pack(value) + stamp_bytes
        for labels, value in series
    ]


class _Lengths(dict[int, bytes]):
    """_length(n) for the few lengths series have, each computed once."""

    def __missing__(self, n: int) -> bytes:
        self[n] = encoded = _length(n)
        return encoded


_LENGTHS = _Lengths()


def request(parts: list[bytes]) -> bytes:
    """A snappy-compressed WriteRequest of encoded fields (series, metadata)."""
    return bytes(cramjam.snappy.compress_raw(b"".join(parts)))
