"""Hand-framed ResultBatch encoding: results stay as the bytes the queue stored.

Protobuf allows a message to be the concatenation of its encoded fields, so a
batch is its header fields followed by each stored Result as a length-delimited
field 3. Replaying a backlog thus costs no parse/re-serialise round trip on the
agent, which is what lets one agent replay tens of thousands of results a second.
"""

from __future__ import annotations

from collections.abc import Sequence

from google.protobuf.message import Message

from probemesh.v1 import mesh_pb2 as pb

SERVICE_METHOD = "/probemesh.v1.ProbeMesh/Connect"
_RESULTS_TAG = b"\x1a"  # ResultBatch.results: field 3, wire type 2
_BATCH_TAG = b"\x12"  # AgentMessage.results: field 2, wire type 2


def varint(n: int) -> bytes:
    """A protobuf varint; a negative int64 takes ten bytes, as protobuf writes it."""
    out = bytearray()
    n &= (1 << 64) - 1
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def encode_batch(first_seq: int, floor_seq: int, payloads: Sequence[bytes]) -> bytes:
    """An encoded AgentMessage{results: ResultBatch} for contiguous stored results."""
    header = pb.ResultBatch(
        first_seq=first_seq, last_seq=first_seq + len(payloads) - 1, floor_seq=floor_seq
    ).SerializeToString()
    body = b"".join(_RESULTS_TAG + varint(len(p)) + p for p in payloads)
    inner = header + body
    return _BATCH_TAG + varint(len(inner)) + inner


def serialize(message: Message | bytes) -> bytes:
    """Request serializer accepting pre-encoded bytes or a message."""
    if isinstance(message, bytes):
        return message
    return message.SerializeToString()
