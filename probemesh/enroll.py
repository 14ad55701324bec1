"""One-line enrollment: the join string, the certificate pin, the agent's state dir.

``probemesh token create --collector-url`` prints a join string that carries
everything a node needs: the collector addresses, the SHA-256 pin of the
certificate the agent must trust (the collector's CA, or its self-signed
server certificate), the agent id, the country and the token.

``probemesh agent join`` checks the pin before it trusts anything: it opens a
TLS connection to a collector, looks for a certificate with the pinned hash in
the chain the collector presents, then verifies the collector's chain and name
against that certificate alone. Only then does it write the state dir, so a
wrong pin or a man in the middle leaves nothing behind. Afterwards gRPC
verifies the collector against the pinned certificate on every connection, so
the pin keeps protecting the link.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import socket
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from probemesh.errors import ConfigError, PinError, StateError
from probemesh.identity import agent_id_problem, country_problem
from probemesh.targets import split_host_port

PREFIX = "pmjoin1_"
CONFIG_NAME = "agent.yml"
TOKEN_NAME = "token"
CA_NAME = "collector-ca.pem"
_PIN_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9.-]{0,253}$")
_PEM_RE = re.compile(r"-----BEGIN CERTIFICATE-----\s+.*?-----END CERTIFICATE-----", re.DOTALL)
CONTACT_TIMEOUT = 10.0


@dataclass(frozen=True)
class JoinString:
    """What a node needs to enroll, in one copy-pasteable string."""

    collectors: tuple[str, ...]
    pin: str
    agent_id: str
    country: str
    token: str
    # Name the collector's certificate carries, when agents reach it by another
    # name or by IP address; empty: the host of each collector address.
    server_name: str = ""

    def encode(self) -> str:
        body = {
            "collectors": list(self.collectors),
            "pin": self.pin,
            "agent_id": self.agent_id,
            "country": self.country,
            "token": self.token,
        }
        if self.server_name:
            body["server_name"] = self.server_name
        raw = json.dumps(body, separators=(",", ":")).encode()
        return PREFIX + base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> JoinString:
        """Parse and validate a join string; ConfigError names what is wrong."""
        text = text.strip()
        if not text.startswith(PREFIX):
            raise ConfigError(f"join string: expected it to start with {PREFIX!r}")
        payload = text.removeprefix(PREFIX)
        try:
            raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
            body: Any = json.loads(raw)
        except (binascii.Error, ValueError):
            raise ConfigError("join string: damaged (not base64 JSON); copy it again") from None
        if not isinstance(body, dict):
            raise ConfigError("join string: damaged (not a JSON object); copy it again")
        fields = ("collectors", "pin", "agent_id", "country", "token")
        missing = [f for f in fields if not body.get(f)]
        if missing:
            raise ConfigError(f"join string: missing {', '.join(missing)}")
        collectors = body["collectors"]
        if not isinstance(collectors, list) or not all(isinstance(c, str) for c in collectors):
            raise ConfigError("join string: collectors must be a list of HOST:PORT")
        for address in collectors:
            split_host_port(address)
        if not isinstance(body["pin"], str) or not _PIN_RE.match(body["pin"]):
            raise ConfigError("join string: pin must be sha256:<64 hex digits>")
        for name, problem in (
            ("agent_id", agent_id_problem(str(body["agent_id"]))),
            ("country", country_problem(str(body["country"]))),
        ):
            if problem:
                raise ConfigError(f"join string: {name}: {problem}")
        server_name = body.get("server_name", "")
        if not isinstance(server_name, str) or server_name_problem(server_name):
            raise ConfigError("join string: server_name must be a DNS name")
        return cls(
            tuple(collectors),
            body["pin"],
            str(body["agent_id"]),
            str(body["country"]),
            str(body["token"]),
            server_name,
        )


def server_name_problem(name: str) -> str:
    """Why name cannot be a certificate's DNS name, or "" (an empty name is fine: none)."""
    return "" if _NAME_RE.match(name) else f"{name[:64]!r} is not a DNS name"


def certificate_pin(der: bytes) -> str:
    """The pin of a certificate: sha256 over its DER encoding, as sha256:<hex>."""
    return "sha256:" + hashlib.sha256(der).hexdigest()


def pem_certificates(text: str) -> list[bytes]:
    """Every certificate in a PEM text, as DER, in file order."""
    return [ssl.PEM_cert_to_DER_cert(block) for block in _PEM_RE.findall(text)]


def to_pem(der: bytes) -> str:
    return ssl.DER_cert_to_PEM_cert(der)


def presented_chain(
    address: str, server_name: str = "", timeout: float = CONTACT_TIMEOUT
) -> list[bytes]:
    """The certificates a collector presents (leaf first, DER), unverified.

    Nothing is trusted yet: the caller compares them with a pin.
    """
    host, port = split_host_port(address)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])  # gRPC servers expect HTTP/2
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=server_name or host) as tls,
        ):
            return _unverified_chain(tls)
    except ssl.SSLError as exc:
        raise ConfigError(f"collector {address}: TLS handshake failed: {exc.reason}") from None
    except OSError as exc:
        raise ConfigError(f"collector {address}: cannot connect: {exc.strerror or exc}") from None


def _unverified_chain(tls: ssl.SSLSocket) -> list[bytes]:
    """The peer's chain as sent. Public from Python 3.13; the same call below it."""
    getter = getattr(tls, "get_unverified_chain", None)
    if getter is None:
        getter = tls._sslobj.get_unverified_chain  # type: ignore[attr-defined]
    chain = getter() or []
    return [c if isinstance(c, bytes) else c.public_bytes(ssl._ssl.ENCODING_DER) for c in chain]  # type: ignore[attr-defined]


def verify_anchor(
    address: str, anchor_der: bytes, server_name: str = "", timeout: float = CONTACT_TIMEOUT
) -> None:
    """Check that the collector's chain and name (server_name, else the host) verify against
    anchor_der alone."""
    host, port = split_host_port(address)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cadata=anchor_der)
    context.set_alpn_protocols(["h2"])
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=server_name or host),
        ):
            return
    except ssl.SSLCertVerificationError as exc:
        if "mismatch" in (exc.verify_message or ""):  # chain fine, name wrong
            raise PinError(
                f"collector {address}: its certificate does not name {server_name or host} "
                f"({exc.verify_message}); give the name it carries with --tls-server-name "
                "when creating the token"
            ) from None
        raise PinError(
            f"collector {address}: its certificate does not verify against the pinned one "
            f"({exc.verify_message}); the pinned certificate must be the collector's CA "
            "(sent after the server certificate in its --tls-cert file) or a self-signed "
            "server certificate"
        ) from None
    except ssl.SSLError as exc:
        raise ConfigError(f"collector {address}: TLS handshake failed: {exc.reason}") from None
    except OSError as exc:
        raise ConfigError(f"collector {address}: cannot connect: {exc.strerror or exc}") from None


def pinned_anchor(address: str, pin: str, server_name: str = "") -> bytes:
    """The certificate with this pin, as the collector presents it, once it is proven to anchor
    the collector's chain. ConfigError when the pin matches nothing (wrong pin, or someone else
    answering: a man in the middle) or the chain does not verify against it."""
    chain = presented_chain(address, server_name)
    anchor = next((der for der in chain if certificate_pin(der) == pin), None)
    if anchor is None:
        seen = ", ".join(certificate_pin(der)[:19] + "..." for der in chain) or "none"
        raise PinError(
            f"collector {address}: no certificate it presents has the pinned hash {pin} "
            f"(presented: {seen}); wrong join string, or not the real collector"
        )
    verify_anchor(address, anchor, server_name)
    return anchor


def pin_from_collector(address: str, server_name: str = "") -> tuple[str, bytes]:
    """The pin of the last certificate the collector presents (its CA when it sends one)."""
    chain = presented_chain(address, server_name)
    if not chain:
        raise ConfigError(f"collector {address}: presented no certificate")
    anchor = chain[-1]
    verify_anchor(address, anchor, server_name)
    return certificate_pin(anchor), anchor


def pin_from_file(path: Path) -> str:
    """The pin of the last certificate in a PEM file (the CA of a full chain file)."""
    try:
        ders = pem_certificates(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--pin-cert {path}: {exc}") from None
    if not ders:
        raise ConfigError(f"--pin-cert {path}: no PEM certificate in the file")
    return certificate_pin(ders[-1])


def enroll(join: JoinString, state_dir: Path) -> Path:
    """Verify the pin against the collectors, then write the state dir; return the config path.

    The first collector that answers decides: one that fails the pin stops the
    join (a security problem to look at, not to route around). If none proves
    the pin, nothing is written.
    """
    config_path = state_dir / CONFIG_NAME
    if config_path.exists():
        raise StateError(
            f"{config_path} exists: this state dir is enrolled already "
            "(run 'probemesh agent --state-dir' on it, or join into a new directory)"
        )
    problems = []
    anchor = None
    for address in join.collectors:
        try:
            anchor = pinned_anchor(address, join.pin, join.server_name)
            break
        except PinError:
            raise
        except ConfigError as exc:  # unreachable: try the next collector
            problems.append(str(exc))
    if anchor is None:
        raise ConfigError("; ".join(problems))
    _write_state(join, state_dir, anchor)
    return config_path


def _write_state(join: JoinString, state_dir: Path, anchor: bytes) -> None:
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        _write_private(state_dir / TOKEN_NAME, join.token + "\n")
        _write_private(state_dir / CA_NAME, to_pem(anchor))
        config = {
            "collector": ",".join(join.collectors),
            "agent-id": join.agent_id,
            "country": join.country,
            "token-file": TOKEN_NAME,
            "tls-ca": CA_NAME,
        }
        if join.server_name:
            config["tls-server-name"] = join.server_name
        header = "# Written by 'probemesh agent join'; paths are relative to this directory.\n"
        _write_private(state_dir / CONFIG_NAME, header + yaml.safe_dump(config, sort_keys=False))
    except OSError as exc:
        raise StateError(f"cannot write the state dir {state_dir}: {exc}") from None


def _write_private(path: Path, text: str) -> None:
    """Write a file readable by its owner only (0600), atomically."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as handle:
            os.fchmod(handle.fileno(), 0o600)
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def state_config(state_dir: Path) -> dict[str, Any]:
    """Option values from the state dir's agent.yml (empty when there is none).

    Relative paths in it are taken relative to the state dir, so it can move.
    """
    path = state_dir / CONFIG_NAME
    if not path.exists():
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of option names to values")
    for key in ("token-file", "tls-ca", "tls-cert", "tls-key"):
        if isinstance(data.get(key), str):
            data[key] = str(state_dir / data[key])
    return data
