"""A client TLS connection on the probe's own socket: an ``SSLObject`` over memory BIOs.

The http probe drives the handshake and the records itself with
``loop.sock_recv`` instead of asyncio's ``start_tls``: asyncio's SSL protocol
layer (buffers, flow control, state machine and the stream on top) costs about
0.15-0.2 ms of CPU per probe, which is a tenth of a whole HTTP/2 probe and most
of what separated it from blackbox_exporter's (docs/benchmarks.md has the
figures). The TLS work itself is the same: OpenSSL through the ``ssl`` module,
a full handshake on a fresh connection, the same context and verification.

Errors keep asyncio's meaning: the peer closing the TCP connection during the
handshake is ``ConnectionResetError``; after it, a close without close_notify
is an ordinary end of stream, and TLS errors surface as ``ssl.SSLError``.
"""

from __future__ import annotations

import asyncio
import socket
import ssl

READ_SIZE = 1 << 16


class TLSConnection:
    """One client TLS session over a connected non-blocking socket."""

    def __init__(self, sock: socket.socket, context: ssl.SSLContext, server_hostname: str) -> None:
        self._loop = asyncio.get_running_loop()
        self._sock = sock
        self._fd = sock.fileno()
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self.ssl_object = context.wrap_bio(
            self._incoming, self._outgoing, server_hostname=server_hostname
        )
        self._unsent = bytearray()  # ciphertext the kernel has not taken yet
        self._writing = False  # waiting for the socket to take _unsent
        self._reading = False  # a sock_recv is in flight
        self._write_error: OSError | None = None
        self._eof = False
        self._pump: asyncio.Task[None] | None = None

    async def handshake(self) -> None:
        """Run the full handshake; returns once the client's last flight was sent."""
        while True:
            try:
                self.ssl_object.do_handshake()
            except ssl.SSLWantReadError:
                self._flush()
                if not await self._receive():
                    raise ConnectionResetError from None
            else:
                self._flush()
                return

    async def read(self) -> bytes:
        """The application data that has arrived, waiting for some; b"" at the end."""
        while True:
            data = self._decrypt()
            if data or self._eof:
                return data
            if not await self._receive():
                self._eof = True

    def write(self, data: bytes) -> None:
        """Encrypt and send data; what the kernel does not take now follows when it can."""
        self.ssl_object.write(data)
        self._flush()

    def stream_reader(self, limit: int) -> asyncio.StreamReader:
        """A StreamReader fed with the application data, for the HTTP/1.1 code.

        A task moves the data; like a transport it stops reading while the
        reader holds more than twice ``limit`` bytes.
        """
        reader = asyncio.StreamReader(limit=limit)
        flow = _ReadFlow()
        reader.set_transport(flow)

        async def pump() -> None:
            try:
                while data := await self.read():
                    reader.feed_data(data)
                    await flow.resumed.wait()
                reader.feed_eof()
            except Exception as exc:  # handed to whoever reads next
                reader.set_exception(exc)

        self._pump = self._loop.create_task(pump())
        return reader

    def close(self) -> None:
        """Drop the connection at once (no close_notify), like a transport's abort().

        The socket leaves the event loop before it is closed, so that a pending
        wait can never act on a later socket that reuses the descriptor.
        """
        if self._pump is not None:
            self._pump.cancel()
        if self._reading:
            self._loop.remove_reader(self._fd)
        if self._writing:
            self._loop.remove_writer(self._fd)
        self._sock.close()

    def _decrypt(self) -> bytes:
        chunks = []
        while True:
            try:
                chunk = self.ssl_object.read(READ_SIZE)
            except ssl.SSLWantReadError:
                break
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                chunk = b""  # TCP closed without close_notify: an end of stream, as in asyncio
            if not chunk:  # close_notify, or the above
                self._eof = True
                break
            chunks.append(chunk)
        self._flush()  # reading may answer the peer (a key update)
        return b"".join(chunks)

    async def _receive(self) -> bool:
        """Move what arrives on the socket into the TLS layer; False at TCP EOF."""
        if self._write_error is not None:
            raise self._write_error
        self._reading = True
        try:
            data = await self._loop.sock_recv(self._sock, READ_SIZE)
        finally:
            self._reading = False
        if data:
            self._incoming.write(data)
        else:
            self._incoming.write_eof()
        return bool(data)

    def _flush(self) -> None:
        if self._outgoing.pending:
            self._unsent += self._outgoing.read()
            if not self._writing:
                self._send()

    def _send(self) -> None:
        """Send what the kernel takes; wait for writability for the rest.

        A send error is kept and raised at the next read, where a transport's
        error would surface too.
        """
        try:
            sent = self._sock.send(self._unsent)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self._write_error = exc
            sent = len(self._unsent)
        del self._unsent[:sent]
        if self._unsent and not self._writing:
            self._writing = True
            self._loop.add_writer(self._fd, self._send)
        elif not self._unsent and self._writing:
            self._writing = False
            self._loop.remove_writer(self._fd)


class _ReadFlow(asyncio.ReadTransport):
    """What a StreamReader asks of its transport: pause and resume reading."""

    def __init__(self) -> None:
        super().__init__()
        self.resumed = asyncio.Event()
        self.resumed.set()

    def pause_reading(self) -> None:
        self.resumed.clear()

    def resume_reading(self) -> None:
        self.resumed.set()

    def is_reading(self) -> bool:
        return self.resumed.is_set()
