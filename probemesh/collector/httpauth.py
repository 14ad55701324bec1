"""Optional HTTP authentication for the collector's API, status page and /metrics.

Two independent realms: ``api`` covers ``/`` and everything else the collector
serves over HTTP except the probes of liveness; ``metrics`` covers
``/metrics``. ``/healthz`` and ``/readyz`` stay open (orchestrators probe them
without credentials, and they reveal nothing). New routes fall into ``api`` by
default, so forgetting to protect a route is not possible.

Credentials come from a file or an environment variable (``env:NAME``), one
per line::

    # comments and blank lines are ignored
    bearer s3cr3t-token-for-grafana
    basic alice:correct horse battery staple
    basic prometheus:sha256:5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8

Secrets are kept only as SHA-256 digests in memory and compared in constant
time. The same syntax, with exactly one line, gives the credentials probemesh
itself presents to Alertmanager (:func:`load_client_authorization`). Responses also carry ``X-Content-Type-Options: nosniff`` and
``X-Frame-Options: DENY``; no CORS header is ever sent, so browsers keep
other origins out of the API.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Middleware

from probemesh.errors import ConfigError

OPEN_PATHS = frozenset({"/healthz", "/readyz"})
METRICS_PATHS = frozenset({"/metrics"})
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY"}


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


@dataclass(frozen=True)
class Credentials:
    """Accepted bearer tokens and basic-auth users, as SHA-256 digests."""

    bearer: tuple[bytes, ...] = ()
    basic: dict[str, bytes] = field(default_factory=dict)

    def allows(self, header: str) -> bool:
        """True when an Authorization header value carries accepted credentials."""
        scheme, _, value = header.partition(" ")
        scheme = scheme.lower()
        value = value.strip()
        if scheme == "bearer" and value:
            digest = _digest(value)
            # Compare against every entry: the time taken does not reveal which matched.
            return sum(hmac.compare_digest(digest, known) for known in self.bearer) > 0
        if scheme == "basic" and value:
            try:
                user, sep, password = base64.b64decode(value, validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return False
            known_pw = self.basic.get(user)
            if not sep or known_pw is None:
                hmac.compare_digest(_digest(password), _digest(""))  # same work either way
                return False
            return hmac.compare_digest(_digest(password), known_pw)
        return False

    @property
    def challenge(self) -> str:
        return 'Basic realm="probemesh"' if self.basic else 'Bearer realm="probemesh"'


def parse_credentials(text: str, source: str) -> Credentials:
    """Parse the credentials format above; ConfigError names the source and line."""
    bearer: list[bytes] = []
    basic: dict[str, bytes] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        kind, _, rest = line.partition(" ")
        rest = rest.strip()
        where = f"{source}:{number}"
        if kind == "bearer":
            if len(rest) < 16:
                raise ConfigError(f"{where}: bearer tokens must be at least 16 characters")
            bearer.append(_digest(rest))
        elif kind == "basic":
            user, sep, password = rest.partition(":")
            if not sep or not user or not password:
                raise ConfigError(
                    f"{where}: expected 'basic USER:PASSWORD' or 'basic USER:sha256:HEX'"
                )
            if password.startswith("sha256:"):
                try:
                    digest = bytes.fromhex(password.removeprefix("sha256:"))
                except ValueError:
                    digest = b""
                if len(digest) != 32:
                    raise ConfigError(f"{where}: sha256: must be followed by 64 hex digits")
                basic[user] = digest
            else:
                basic[user] = _digest(password)
        else:
            raise ConfigError(f"{where}: expected a 'bearer' or 'basic' line")
    if not bearer and not basic:
        raise ConfigError(f"{source}: no credentials found")
    return Credentials(tuple(bearer), basic)


def read_secret_source(spec: str, option: str) -> tuple[str, str]:
    """(text, source name) from a file path, or from an environment variable with env:NAME."""
    if spec.startswith("env:"):
        name = spec.removeprefix("env:")
        text = os.environ.get(name)
        if not text:
            raise ConfigError(f"{option}: environment variable {name} is empty or unset")
        return text, f"{option} (env:{name})"
    try:
        return Path(spec).read_text(), spec
    except OSError as exc:
        raise ConfigError(f"{option}: cannot read {spec}: {exc.strerror}") from None


def load_credentials(spec: str, option: str) -> Credentials:
    """Credentials from a file path, or from an environment variable with env:NAME."""
    return parse_credentials(*read_secret_source(spec, option))


def parse_client_authorization(text: str, source: str) -> str:
    """The Authorization header value for the one 'bearer' or 'basic' line of text.

    A client must send the secret itself, so the ``sha256:`` form is refused.
    """
    parse_credentials(text, source)  # the server side's validation, naming the line
    lines = [
        (number, raw.strip())
        for number, raw in enumerate(text.splitlines(), 1)
        if raw.strip() and not raw.strip().startswith("#")
    ]
    if len(lines) != 1:
        raise ConfigError(f"{source}: expected exactly one 'bearer' or 'basic' line")
    number, line = lines[0]
    kind, _, rest = line.partition(" ")
    rest = rest.strip()
    if kind == "bearer":
        return f"Bearer {rest}"
    if rest.partition(":")[2].startswith("sha256:"):
        raise ConfigError(f"{source}:{number}: a client needs the password itself, not sha256:")
    return "Basic " + base64.b64encode(rest.encode()).decode()


def load_client_authorization(spec: str, option: str) -> str:
    """Authorization header value from a credentials file or env:NAME (one line)."""
    return parse_client_authorization(*read_secret_source(spec, option))


@dataclass(frozen=True)
class HttpAuth:
    """Which credentials each realm wants; None leaves a realm open."""

    api: Credentials | None = None
    metrics: Credentials | None = None

    def realm_of(self, path: str) -> Credentials | None:
        if path in OPEN_PATHS:
            return None
        if path in METRICS_PATHS:
            return self.metrics
        return self.api


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def auth_middleware(auth: HttpAuth) -> Middleware:
    """aiohttp middleware: 401 without accepted credentials; security headers always."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        wanted = auth.realm_of(request.path)
        if wanted is not None and not wanted.allows(request.headers.get("Authorization", "")):
            return web.json_response(
                {"error": "authentication required"},
                status=401,
                headers={"WWW-Authenticate": wanted.challenge, **SECURITY_HEADERS},
            )
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            exc.headers.update(SECURITY_HEADERS)
            raise
        if not response.prepared:
            response.headers.update(SECURITY_HEADERS)
        return response

    return middleware
