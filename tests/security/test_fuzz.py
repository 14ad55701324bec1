"""Fuzzing: random and mutated messages on the Connect stream, random checks files.

Bounded for CI; set PROBEMESH_FUZZ_EXAMPLES (e.g. 5000) for a long run. The
collector must stay up, answer every stream with an expected status code,
keep its memory bounded and never export anything the catalog does not admit.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import grpc
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from probemesh.catalog import PROBE_METRICS
from probemesh.checks import parse_checks
from probemesh.errors import ConfigError
from tests.harness import Mesh, http_get, total
from tests.security import rawstream as raw
from tests.security.conftest import checks_yaml, collector_rss_kib, fuzz_examples

# What a stream may end with; UNKNOWN would mean an exception escaped the servicer.
EXPECTED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.INTERNAL,  # gRPC's own answer to bytes that do not parse as AgentMessage
}
AGENT = "fuzz1"
_OWN = re.compile(r"^(probemesh_|process_|python_)")


@pytest.fixture(scope="module")
def fuzz_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Mesh, str]]:
    mesh = Mesh(tmp_path_factory.mktemp("fuzz"), checks_yaml(5))
    mesh.start_collector("--rate-limit", "0", "--max-message-bytes", "65536")
    yield mesh, mesh.token(AGENT, "BR")
    assert mesh.collector is not None and mesh.collector.alive(), "the collector died under fuzzing"
    assert "Traceback" not in mesh.collector.log()
    mesh.stop()


def _valid_messages() -> list[bytes]:
    good = raw.result("c00", samples=[{"name": "probe_http_status_code", "value": 200.0}])
    return [raw.batch(1, [good, raw.result("c01", success=False, reason=4)])]


def _mutate(data: bytes, flips: list[tuple[int, int]]) -> bytes:
    buf = bytearray(data)
    for pos, value in flips:
        buf[pos % len(buf)] = value
    return bytes(buf)


def _check_health(mesh: Mesh, baseline_kib: int) -> None:
    assert mesh.collector is not None and mesh.collector.alive()
    assert http_get(mesh.api("/healthz"))
    rss = collector_rss_kib(mesh.collector.pid)
    assert rss < baseline_kib + 150 * 1024, (
        f"collector RSS grew from {baseline_kib} KiB to {rss} KiB"
    )
    samples = mesh.metrics()
    for name, labels in samples:
        family = re.sub(r"_(bucket|sum|count|total|created)$", "", name)
        assert (
            _OWN.match(name)
            or name in PROBE_METRICS
            or family in ("probe_success", "probe_duration_seconds")
        ), name
        for key, value in labels:
            assert len(value) <= 256, (name, key, value[:80])
    assert total(samples, "probe_success", agent=AGENT) <= 5


def test_random_bytes_and_mutated_messages(fuzz_mesh: tuple[Mesh, str]) -> None:
    mesh, token = fuzz_mesh
    assert mesh.collector is not None
    baseline = collector_rss_kib(mesh.collector.pid)
    target = f"127.0.0.1:{mesh.grpc_port}"
    codes: set[grpc.StatusCode] = set()

    @settings(
        max_examples=fuzz_examples(40),
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
    )
    @given(
        with_hello=st.booleans(),
        payload=st.one_of(
            st.binary(max_size=2048),
            st.lists(
                st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=8
            ).map(lambda flips: _mutate(_valid_messages()[0], flips)),
        ),
        repeat=st.integers(1, 3),
    )
    def one(with_hello: bool, payload: bytes, repeat: int) -> None:
        messages = ([raw.hello(AGENT, "BR")] if with_hello else []) + [payload] * repeat
        out = raw.connect(target, messages, token=token, linger=0.05, timeout=5)
        codes.add(out.code)
        assert out.code in EXPECTED, (out.code, out.details, payload[:64])

    one()
    _check_health(mesh, baseline)
    assert grpc.StatusCode.UNKNOWN not in codes


def test_hostile_hellos(fuzz_mesh: tuple[Mesh, str]) -> None:
    mesh, token = fuzz_mesh
    target = f"127.0.0.1:{mesh.grpc_port}"
    text = st.text(max_size=300)

    @settings(
        max_examples=fuzz_examples(20),
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
    )
    @given(region=text, city=text, version=text, caps=st.lists(text, max_size=5))
    def one(region: str, city: str, version: str, caps: list[str]) -> None:
        hello = raw.hello(AGENT, "BR", region=region, city=city, version=version, capabilities=caps)
        out = raw.connect(target, [hello], token=token, linger=0.05)
        assert out.code in (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT), out

    one()
    page = http_get(mesh.metrics_url)
    for line in page.splitlines():
        if line.startswith("probemesh_agent_info"):
            assert re.search(r'region="[A-Za-z0-9 _.-]{0,63}"', line), line


# --- checks file -----------------------------------------------------------------

_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=20),
    st.sampled_from(["http", "tcp", "dns", "icmp", "tls", "grpc", "5s", "-1s", "0s", "1e9s", "BR",
                     "xx", "http_2xx"]),
)  # fmt: skip
_keys = st.one_of(
    st.sampled_from([
        "modules", "checks", "name", "target", "module", "interval", "countries", "agents",
        "prober",
        "timeout", "http", "tcp", "dns", "valid_status_codes", "preferred_ip_protocol",
        "query_name",
        "fail_if_body_matches_regexp", "tls_config", "headers", "method", "outage",
    ]),
    st.text(max_size=10),
)  # fmt: skip
_values = st.recursive(
    _scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_keys, children, max_size=5),
    max_leaves=25,
)


@settings(max_examples=fuzz_examples(300), deadline=None, suppress_health_check=list(HealthCheck))
@given(
    data=st.dictionaries(
        st.sampled_from(["modules", "checks", "outage"]) | _keys, _values, max_size=4
    )
)
def test_random_checks_documents_raise_only_config_error(data: dict[str, object]) -> None:
    with contextlib.suppress(ConfigError):
        parse_checks(data)


@settings(max_examples=fuzz_examples(200), deadline=None, suppress_health_check=list(HealthCheck))
@given(text=st.text(max_size=400))
def test_random_yaml_text_raises_only_config_error(text: str) -> None:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return
    with contextlib.suppress(ConfigError):
        parse_checks(data)


def _seed_document() -> dict[str, object]:
    return {
        "modules": {
            "http_2xx": {"prober": "http", "timeout": "5s", "http": {"valid_status_codes": [200]}}
        },
        "checks": [
            {"name": "a", "target": "https://example.org/", "module": "http_2xx", "interval": "30s"}
        ],
    }


@settings(max_examples=fuzz_examples(300), deadline=None, suppress_health_check=list(HealthCheck))
@given(
    path=st.lists(
        st.sampled_from(
            [
                "modules",
                "http_2xx",
                "http",
                "checks",
                0,
                "interval",
                "target",
                "valid_status_codes",
                "prober",
            ]
        ),
        min_size=1,
        max_size=4,
    ),
    value=_values,
)
def test_mutated_valid_checks_raise_only_config_error(path: list[object], value: object) -> None:
    doc = _seed_document()
    node: object = doc
    for key in path[:-1]:
        try:
            node = node[key]  # type: ignore[index]
        except (KeyError, IndexError, TypeError):
            return
    try:
        node[path[-1]] = value  # type: ignore[index]
    except (KeyError, IndexError, TypeError):
        return
    with contextlib.suppress(ConfigError):
        parse_checks(doc)
