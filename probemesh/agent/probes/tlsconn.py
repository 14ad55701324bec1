"""A client TLS connection on the probe's own socket, on the OpenSSL that ``cryptography`` ships.

The http and tls probes drive the handshake and the records themselves over
memory BIOs, waiting for the socket with ``loop.add_reader``: asyncio's SSL
protocol layer (buffers, flow control, state machine and the stream on top)
costs about 0.15-0.2 ms of CPU per probe, a tenth of a whole HTTP/2 probe. The
TLS engine is pyOpenSSL on the OpenSSL bundled in ``cryptography``'s wheel (4.x)
rather than the ``ssl`` module on the system's OpenSSL 3.0, whose handshake
costs about 40% more CPU, mostly in decoding keys and certificates
(docs/architecture.md has the figures). The rest of the agent (tcp, dns and
grpc probes, evidence, its own gRPC link) keeps the ``ssl`` module.

Verification is the ``ssl`` module's, done by OpenSSL inside the handshake: the
chain against the CA file (or the system's trust store, the paths the ``ssl``
module uses), and the host name or IP address through OpenSSL's
``X509_VERIFY_PARAM`` host check with partial wildcards refused, exactly as
``ssl.create_default_context`` sets it up. The offer is Go's: TLS 1.2 and 1.3,
key shares X25519 then P-256, P-384, P-521, no post-quantum hybrid.

Errors keep asyncio's meaning: the peer closing the TCP connection during the
handshake is ``ConnectionResetError``; after it, a close without close_notify
is an ordinary end of stream, and TLS errors surface as ``ssl.SSLError`` (a
failed verification as ``ssl.SSLCertVerificationError``) with the ``ssl``
module's reason codes.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.bindings.openssl.binding import Binding
from OpenSSL import SSL, crypto

from probemesh.modules import TLSConfig

READ_SIZE = 1 << 16
_lib = Binding.lib
_ffi = Binding.ffi
# Go's crypto/tls curve preferences; OpenSSL 4 would add an ML-KEM key share.
_GROUPS = b"X25519:P-256:P-384:P-521"
# The ssl module's TLS 1.2 cipher string (TLS 1.3 suites are OpenSSL's defaults).
_CIPHERS = (
    b"@SECLEVEL=2:ECDH+AESGCM:ECDH+CHACHA20:ECDH+AES:DHE+AES:!aNULL:!eNULL:!aDSS:!SHA1:!AESCCM"
)
_VERSIONS = {
    "TLS10": SSL.TLS1_VERSION,
    "TLS11": SSL.TLS1_1_VERSION,
    "TLS12": SSL.TLS1_2_VERSION,
    "TLS13": SSL.TLS1_3_VERSION,
}


@dataclass(frozen=True)
class ClientContext:
    """A probe's TLS settings, built once per tls_config and its files."""

    context: SSL.Context
    verify: bool


def build_context(
    config: TLSConfig,
    ca: Path | None,
    cert: Path | None,
    key: Path | None,
    alpn: tuple[str, ...] = (),
) -> ClientContext:
    """The context for a tls_config whose files resolved to ca, cert and key.

    Raises ``OSError`` or ``OpenSSL.SSL.Error`` when a file cannot be loaded.
    """
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.set_options(SSL.OP_ALL | SSL.OP_NO_COMPRESSION)
    context.set_cipher_list(_CIPHERS)
    if _lib.SSL_CTX_set1_curves_list(context._context, _GROUPS) != 1:
        raise SSL.Error("cannot set the key exchange groups")
    context.set_min_proto_version(_VERSIONS[config.min_version or "TLS12"])
    if config.max_version:
        context.set_max_proto_version(_VERSIONS[config.max_version])
    if ca is not None:
        context.load_verify_locations(str(ca))
    else:
        system = ssl.get_default_verify_paths()
        if system.cafile or system.capath:
            context.load_verify_locations(system.cafile, system.capath)
    if cert is not None:
        context.use_certificate_chain_file(str(cert))
        context.use_privatekey_file(str(key or cert))
        context.check_privatekey()
    verify = not config.insecure_skip_verify
    context.set_verify(SSL.VERIFY_PEER if verify else SSL.VERIFY_NONE)
    if alpn:
        context.set_alpn_protos([name.encode() for name in alpn])
    return ClientContext(context, verify)


def new_connection(
    context: ClientContext, server_hostname: str, sock: socket.socket | None = None
) -> SSL.Connection:
    """A client connection (over memory BIOs without sock) that sends SNI and checks the name.

    As the ``ssl`` module does: an IP literal is sent no SNI and is checked
    against the certificate's IP addresses; a name is checked against its DNS
    names, partial wildcards refused. The subject CN is never a host name: Go
    (so blackbox_exporter) has refused a certificate without SAN since 1.15.
    """
    conn = SSL.Connection(context.context, sock)
    conn.set_connect_state()
    name = server_hostname.encode("idna")
    address = _ip_address(server_hostname)
    if address is None:
        conn.set_tlsext_host_name(name)
    if context.verify:
        param = _lib.SSL_get0_param(conn._ssl)
        _lib.X509_VERIFY_PARAM_set_hostflags(
            param,
            _lib.X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS | _lib.X509_CHECK_FLAG_NEVER_CHECK_SUBJECT,
        )
        if address is None:
            ok = _lib.X509_VERIFY_PARAM_set1_host(param, name, len(name))
        else:
            ok = _lib.X509_VERIFY_PARAM_set1_ip(param, address, len(address))
        if ok != 1:
            raise ssl.SSLError(f"cannot verify against server name {server_hostname!r}")
    return conn


@dataclass(frozen=True)
class TLSPeer:
    """What a finished handshake tells about the server, for the probe_tls/ssl metrics.

    Certificates are DER; ``verified_chain`` is empty when verification was off.
    """

    version: str  # "TLSv1.3"
    verified: bool
    presented: tuple[bytes, ...]
    verified_chain: tuple[bytes, ...]


class TLSConnection:
    """One client TLS session over a connected non-blocking socket."""

    def __init__(self, sock: socket.socket, context: ClientContext, server_hostname: str) -> None:
        self._loop = asyncio.get_running_loop()
        self._sock = sock
        self._fd = sock.fileno()
        self._verify = context.verify
        self._conn = new_connection(context, server_hostname)
        self._unsent = bytearray()  # ciphertext the kernel has not taken yet
        self._writing = False  # waiting for the socket to take _unsent
        self._reading = False  # waiting for the socket to become readable
        self._sent = False  # a flight left since the last read
        self._write_error: OSError | None = None
        self._eof = False
        self._pump: asyncio.Task[None] | None = None

    async def handshake(self) -> None:
        """Run the full handshake; returns once the client's last flight was sent."""
        while True:
            try:
                self._conn.do_handshake()
            except SSL.WantReadError:
                self._flush()
                if not await self._receive():
                    raise ConnectionResetError from None
            except SSL.Error as exc:
                self._flush()  # the alert, as Go's client sends it
                raise self._tls_error(exc) from None
            else:
                self._flush()
                return

    @property
    def alpn(self) -> str:
        """The protocol the server selected by ALPN, or an empty string."""
        return self._conn.get_alpn_proto_negotiated().decode("ascii", "replace")

    def peer(self) -> TLSPeer:
        """The server's certificates and the negotiated version, after the handshake."""
        presented = self._conn.get_peer_cert_chain() or []
        verified = (self._conn.get_verified_chain() or []) if self._verify else []
        return TLSPeer(
            self._conn.get_protocol_version_name(),
            self._verify,
            tuple(crypto.dump_certificate(crypto.FILETYPE_ASN1, cert) for cert in presented),
            tuple(crypto.dump_certificate(crypto.FILETYPE_ASN1, cert) for cert in verified),
        )

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
        try:
            self._conn.sendall(data)
        except SSL.Error as exc:
            raise self._tls_error(exc) from None
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
                chunk = self._conn.recv(READ_SIZE)
            except SSL.WantReadError:
                break
            except (SSL.ZeroReturnError, SSL.SysCallError):
                chunk = b""  # close_notify, or TCP closed without it: an end of stream
            except SSL.Error as exc:
                raise self._tls_error(exc) from None
            if not chunk:
                self._eof = True
                break
            chunks.append(chunk)
        self._flush()  # reading may answer the peer (a key update)
        return b"".join(chunks)

    async def _receive(self) -> bool:
        """Move what arrives on the socket into the TLS layer; False at TCP EOF.

        Right after a flight was sent its answer cannot be there yet, so the
        socket is not tried before waiting for it to become readable.
        """
        if self._write_error is not None:
            raise self._write_error
        data = None if self._sent else self._try_recv()
        self._sent = False
        while data is None:
            waiter = self._loop.create_future()
            self._loop.add_reader(self._fd, _wake, waiter)
            self._reading = True
            try:
                await waiter
            finally:
                self._reading = False
                self._loop.remove_reader(self._fd)
            data = self._try_recv()
        if data:
            self._conn.bio_write(data)
        else:
            self._conn.bio_shutdown()
        return bool(data)

    def _try_recv(self) -> bytes | None:
        """What the socket holds (b"" at EOF), or None when nothing arrived yet."""
        try:
            return self._sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return None

    def _flush(self) -> None:
        while True:
            try:
                out = self._conn.bio_read(READ_SIZE)
            except SSL.WantReadError:
                break
            self._unsent += out
            if len(out) < READ_SIZE:
                break
        if self._unsent and not self._writing:
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
        self._sent = self._sent or sent > 0
        if self._unsent and not self._writing:
            self._writing = True
            self._loop.add_writer(self._fd, self._send)
        elif not self._unsent and self._writing:
            self._writing = False
            self._loop.remove_writer(self._fd)

    def _tls_error(self, exc: SSL.Error) -> ssl.SSLError:
        """The ``ssl`` module's exception for an OpenSSL error: same reason codes."""
        queue = exc.args[0] if exc.args and isinstance(exc.args[0], list) else []
        text = str(queue[0][2]) if queue else str(exc)
        code = text.upper().replace(" ", "_")
        error: ssl.SSLError
        if code == "CERTIFICATE_VERIFY_FAILED":
            result = _lib.SSL_get_verify_result(self._conn._ssl)
            message = _ffi.string(_lib.X509_verify_cert_error_string(result)).decode()
            error = ssl.SSLCertVerificationError(1, f"[SSL: {code}] {text}: {message}")
            error.verify_code = result
            error.verify_message = message
        else:
            error = ssl.SSLError(1, f"[SSL: {code}] {text}")
        error.library = "SSL"
        error.reason = code
        return error


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _ip_address(host: str) -> bytes | None:
    """The packed address when host is an IP literal (no SNI then, as in Go and ``ssl``)."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            return socket.inet_pton(family, host)
        except OSError:
            continue
    return None


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
