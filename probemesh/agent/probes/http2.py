"""The HTTP/2 exchange of the http probe, framed by the ``h2`` library on the timed socket.

Used when TLS negotiated ALPN ``h2``, as Go's transport does; there is no
cleartext h2c, because Go's client (and so blackbox_exporter) never attempts
it. One stream per connection: the probe opens a fresh connection per hop.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import h2.config
import h2.connection
import h2.events
import h2.exceptions

from probemesh.agent.probes.httpwire import (
    MAX_INFORMATIONAL,
    BodySink,
    Request,
    Response,
    content_length,
    malformed,
)
from probemesh.agent.probes.result import ProbeFailure, Reason
from probemesh.agent.probes.tlsconn import TLSConnection
from probemesh.modules import HTTPSettings

_CONFIG = h2.config.H2Configuration(client_side=True, header_encoding=None)
_STREAM = 1


async def exchange_h2(
    tls: TLSConnection,
    request: Request,
    settings: HTTPSettings,
    tls_samples: list,
    on_response: Callable[[Response], None],
    first_byte: list[float],
) -> None:
    """Send request on stream 1 and read the response (see ``exchange_h1``)."""
    conn = h2.connection.H2Connection(config=_CONFIG)
    conn.initiate_connection()
    headers = [
        (":method", request.method),
        (":scheme", request.url.scheme),
        (":authority", request.host),
        (":path", request.url.request_target),
    ]
    headers += [(name.lower(), value) for name, value in request.headers]
    if request.body or request.method in ("POST", "PUT", "PATCH"):
        headers.append(("content-length", str(len(request.body))))
    pending = request.body
    conn.send_headers(_STREAM, headers, end_stream=not pending)
    pending = _send_body(conn, pending)
    tls.write(conn.data_to_send())
    informational = 0
    body: BodySink | None = None
    while True:
        data = await tls.read()
        if not data:
            raise ProbeFailure(
                Reason.CONNECT, "server closed the HTTP/2 connection before the response ended"
            )
        try:
            events = conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            raise malformed(f"HTTP/2: {exc}") from None
        for event in events:
            if isinstance(event, h2.events.InformationalResponseReceived):
                if not first_byte:
                    first_byte.append(time.perf_counter())
                informational += 1
                if informational > MAX_INFORMATIONAL:
                    raise malformed(f"more than {MAX_INFORMATIONAL} 1xx responses")
            elif isinstance(event, h2.events.ResponseReceived):
                if not first_byte:
                    first_byte.append(time.perf_counter())
                response = _response(event.headers)
                response.tls_samples = tls_samples
                on_response(response)
                if request.method != "HEAD":
                    body = BodySink(response, settings)
            elif isinstance(event, h2.events.DataReceived):
                if body is not None:
                    body.feed(event.data)
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.WindowUpdated) and pending:
                pending = _send_body(conn, pending)
            elif isinstance(event, h2.events.StreamEnded):
                if body is not None:
                    body.finish()
                return
            elif isinstance(event, h2.events.StreamReset):
                raise ProbeFailure(
                    Reason.CONNECT, f"server reset the HTTP/2 stream (error {event.error_code!r})"
                )
            elif isinstance(event, h2.events.ConnectionTerminated):
                raise ProbeFailure(
                    Reason.CONNECT,
                    f"server closed the HTTP/2 connection (GOAWAY {event.error_code!r})",
                )
        if out := conn.data_to_send():
            tls.write(out)


def _send_body(conn: h2.connection.H2Connection, body: bytes) -> bytes:
    """Send as much of body as flow control allows; returns what is left."""
    while body:
        size = min(conn.local_flow_control_window(_STREAM), conn.max_outbound_frame_size)
        if size <= 0:
            return body
        chunk, body = body[:size], body[size:]
        conn.send_data(_STREAM, chunk, end_stream=not body)
    return body


def _response(raw: list[tuple[bytes, bytes]]) -> Response:
    status = b""
    headers: list[tuple[str, str]] = []
    for name, value in raw:
        if name == b":status":
            status = value
        elif not name.startswith(b":"):
            headers.append((name.decode("latin-1"), value.decode("latin-1")))
    if len(status) != 3 or not status.isdigit():
        raise malformed(f"HTTP/2 :status {status[:20]!r}")
    response = Response("HTTP/2.0", int(status), headers)
    response.content_length = content_length([v for k, v in headers if k == "content-length"])
    return response
