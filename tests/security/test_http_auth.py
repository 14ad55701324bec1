"""Collector HTTP side: auth realms for the API/status page and /metrics, no CORS."""

from __future__ import annotations

import base64
import hashlib
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from probemesh.collector.httpauth import load_credentials, parse_credentials
from probemesh.errors import ConfigError
from tests.harness import Mesh
from tests.security.conftest import checks_yaml

API_TOKEN = "api-token-0123456789abcdef"
METRICS_TOKEN = "metrics-token-0123456789abcdef"


@pytest.fixture(scope="module")
def auth_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    root = tmp_path_factory.mktemp("httpauth")
    api = root / "api-auth"
    digest = hashlib.sha256(b"hunter2-hunter2").hexdigest()
    api.write_text(
        f"# grafana\nbearer {API_TOKEN}\nbasic alice:wonderland\nbasic bob:sha256:{digest}\n"
    )
    mesh = Mesh(root, checks_yaml(1))
    import os

    os.environ["PM_TEST_METRICS_AUTH"] = f"bearer {METRICS_TOKEN}"
    try:
        mesh.start_collector("--api-auth", str(api), "--metrics-auth", "env:PM_TEST_METRICS_AUTH")
    finally:
        del os.environ["PM_TEST_METRICS_AUTH"]
    yield mesh
    mesh.stop()


def _get(url: str, auth: str | None = None, **headers: str) -> tuple[int, dict[str, str]]:
    request = urllib.request.Request(
        url, headers={**headers, **({"Authorization": auth} if auth else {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers)


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize("path", ["/", "/api/v1/agents", "/api/v1/nope"])
def test_api_realm(auth_mesh: Mesh, path: str) -> None:
    url = auth_mesh.api(path)
    status, headers = _get(url)
    assert status == 401 and "WWW-Authenticate" in headers
    assert _get(url, f"Bearer {METRICS_TOKEN}")[0] == 401, "the metrics token must not open the API"
    assert _get(url, "Bearer wrong")[0] == 401
    assert _get(url, _basic("alice", "wrong"))[0] == 401
    assert _get(url, "Basic !!notbase64")[0] == 401
    expected = 404 if path.endswith("nope") else 200
    for good in (
        f"Bearer {API_TOKEN}",
        _basic("alice", "wonderland"),
        _basic("bob", "hunter2-hunter2"),
    ):
        assert _get(url, good)[0] == expected, good


@pytest.mark.parametrize("query", ["", "?collect[]=collector", "?collect[]=nope"])
def test_metrics_realm(auth_mesh: Mesh, query: str) -> None:
    """A scrape of some groups, or of a group that does not exist, is asked for
    credentials first, like any other."""
    url = auth_mesh.metrics_url + query
    assert _get(url)[0] == 401
    assert _get(url, f"Bearer {API_TOKEN}")[0] == 401
    assert _get(url, f"Bearer {METRICS_TOKEN}")[0] == (400 if "nope" in query else 200)


def test_health_stays_open(auth_mesh: Mesh) -> None:
    assert _get(auth_mesh.api("/healthz"))[0] == 200
    assert _get(auth_mesh.api("/readyz"))[0] == 200


def test_no_cors_and_security_headers(auth_mesh: Mesh) -> None:
    status, headers = _get(
        auth_mesh.api("/api/v1/agents"), f"Bearer {API_TOKEN}", Origin="https://evil.example"
    )
    assert status == 200
    assert not any(h.lower().startswith("access-control-") for h in headers)
    assert headers.get("X-Content-Type-Options") == "nosniff"
    assert headers.get("X-Frame-Options") == "DENY"
    request = urllib.request.Request(
        auth_mesh.api("/api/v1/agents"),
        method="OPTIONS",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            preflight = dict(response.headers)
    except urllib.error.HTTPError as exc:
        preflight = dict(exc.headers)
    assert not any(h.lower().startswith("access-control-") for h in preflight)


def test_credentials_parsing_errors(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    for bad in (
        "",
        "# only a comment",
        "bearer short",
        "basic nopassword",
        "basic u:sha256:zz",
        "token abc",
    ):
        with pytest.raises(ConfigError):
            parse_credentials(bad, "test")
    with pytest.raises(ConfigError):
        load_credentials(str(tmp_path / "missing"), "--api-auth")
    monkeypatch.delenv("PM_UNSET", raising=False)
    with pytest.raises(ConfigError):
        load_credentials("env:PM_UNSET", "--api-auth")
    creds = parse_credentials("bearer 0123456789abcdef0123\n", "test")
    assert creds.allows("Bearer 0123456789abcdef0123") and not creds.allows(
        "Bearer 0123456789abcdef012"
    )
