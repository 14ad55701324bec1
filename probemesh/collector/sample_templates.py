"""Recognising a result's samples from its encoded bytes: the sample filter's fast path.

Reading a 10-sample result's samples through protobuf's Python objects costs
about 4 µs, most of the filter's work, and the collector does it for every
result at up to 50,000 results a second. A check's results carry the same
samples every time, only the values change, so once a result's samples were
wholly admitted, their encoding is kept as a template: the exact bytes of the
samples, with a hole where each value goes. A later result of the check whose
encoding matches the template has exactly those samples; its values are read
straight from the holes (little-endian doubles on the wire, the packed form
kept samples use).

The match is exact, whatever bytes an agent sends. The result is encoded again
by protobuf (``SerializeToString``: fields in number order, samples together),
and the template is tried at the place the samples must end (before the HTTP
phases and the revision, whose lengths are known). It is taken only when

- the bytes before it decode on their own as a message with no sample in it
  (so the template starts where a field starts, and nothing before it is a
  sample),
- the template's samples, decoded from there, are as many as the result has
  (so no sample comes after them).

Decoding is deterministic, so the result's samples are then the template's,
byte for byte but the values. Anything else (another layout, a sample added,
a label changed, map entries in another order) is judged as before.
"""

from __future__ import annotations

import functools
import re
import struct
import sys
from dataclasses import dataclass

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message

from probemesh.v1 import mesh_pb2 as pb
from probemesh.wire import varint

USABLE = sys.byteorder == "little"  # wire doubles are little-endian; kept values native
PER_CHECK = 4  # templates tried per check, most recently learnt first
RELEARN_EVERY = 64  # with all taken, a check's results judged sample by sample per new template
_ZERO = bytes(8)  # a value of 0.0 is not encoded at all
_SAMPLE_TAG = b"\x42"  # Result.samples: field 8, length-delimited
_VALUE_TAG = b"\x19"  # Sample.value: field 3, 64-bit


def _before_samples_type() -> type[Message]:
    """A message that reads Result's field 8 as raw bytes and keeps the rest unknown."""
    field = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(
        name="probemesh/collector/sample_templates.proto",
        package="probemesh.collector.sample_templates",
        syntax="proto3",
    )
    message = file.message_type.add(name="BeforeSamples")
    message.field.add(name="samples", number=8, type=field.TYPE_BYTES, label=field.LABEL_REPEATED)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("probemesh.collector.sample_templates.BeforeSamples")
    )


_BeforeSamples = _before_samples_type()


def _varint_size(value: int) -> int:
    return max(1, (value.bit_length() + 6) // 7)


@functools.lru_cache(maxsize=1024)
def tail_size(phases: int, revision: int) -> int:
    """Bytes an encoded Result has after its samples: its phases and revision."""
    size = 0
    if phases:
        size += 1 + _varint_size(8 * phases) + 8 * phases
    if revision:
        size += 1 + _varint_size(revision)
    return size


def starts_clean(encoded: bytes, start: int) -> bool:
    """True when encoded[:start] decodes on its own and holds no sample."""
    try:
        before = _BeforeSamples.FromString(encoded[:start])
    except DecodeError:
        return False
    return not before.samples  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class Template:
    """The encoding of one list of samples, with a hole for each encoded value."""

    pattern: re.Pattern[bytes]  # the samples' bytes; one group per value hole
    length: int
    count: int  # samples
    zeros: tuple[int, ...]  # samples whose value is 0.0, which has no bytes
    series: tuple[tuple[str, tuple[tuple[str, str], ...]], ...]  # what the filter admitted

    def values(self, encoded: bytes, end: int) -> bytes | None:
        """The samples' values, packed, if encoded holds exactly these samples ending at end."""
        start = end - self.length
        if start < 0:
            return None
        match = self.pattern.fullmatch(encoded, start, end)
        if match is None or not starts_clean(encoded, start):
            return None
        if not self.zeros:
            return b"".join(match.groups())
        parts = list(match.groups())
        for index in self.zeros:  # ascending: each index is final once inserted
            parts.insert(index, _ZERO)
        return b"".join(parts)


def learn(
    samples: list[pb.Sample],
    series: tuple[tuple[str, tuple[tuple[str, str], ...]], ...],
) -> Template | None:
    """The template of samples the filter wholly admitted as series; None when
    their encoding does not end each value where a hole can be cut."""
    parts: list[bytes] = []
    zeros: list[int] = []
    length = 0
    for index, sample in enumerate(samples):
        body = sample.SerializeToString()
        entry = _SAMPLE_TAG + varint(len(body)) + body
        length += len(entry)
        value = struct.pack("<d", sample.value)
        if value == _ZERO:
            zeros.append(index)
            parts.append(re.escape(entry))
            continue
        # The value must be the encoding's last field, and the only one.
        if not body.endswith(_VALUE_TAG + value):
            return None
        head = body[:-8]
        try:
            if struct.pack("<d", pb.Sample.FromString(head[:-1]).value) != _ZERO:
                return None
        except DecodeError:
            return None
        parts.append(re.escape(_SAMPLE_TAG + varint(len(body)) + head) + b"(.{8})")
    pattern = re.compile(b"".join(parts), re.DOTALL)
    return Template(pattern, length, len(samples), tuple(zeros), series)
