"""Checks-file validation: good files load; each kind of bad file names its problem."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from probemesh.checks import load_checks, parse_checks
from probemesh.errors import ConfigError

GOOD = {
    "modules": {
        "http_2xx": {"prober": "http", "timeout": "5s", "http": {"valid_status_codes": []}},
        "tcp_connect": {"prober": "tcp", "timeout": "2s"},
    },
    "checks": [
        {
            "name": "social-home",
            "target": "https://example.org/",
            "module": "http_2xx",
            "interval": "30s",
            "countries": ["BR", "PH"],
        },
        {
            "name": "social-tcp",
            "target": "example.org:443",
            "module": "tcp_connect",
            "agents": ["vps-1"],
        },
        {"name": "everyone", "target": "http://example.org/", "module": "http_2xx"},
    ],
}


def with_check(**changes: object) -> dict:
    data = yaml.safe_load(yaml.safe_dump(GOOD))
    data["checks"][0].update(changes)
    return data


def test_good_file_loads_with_defaults_and_selectors(tmp_path: Path) -> None:
    path = tmp_path / "checks.yaml"
    path.write_text(yaml.safe_dump(GOOD))
    checks = load_checks(path)
    home = checks.checks["social-home"]
    assert home.interval == 30.0
    assert home.module.timeout == 5.0
    assert checks.checks["everyone"].interval == 30.0
    assert [c.name for c in checks.for_agent("vps-9", "BR")] == ["everyone", "social-home"]
    assert [c.name for c in checks.for_agent("vps-1", "US")] == ["everyone", "social-tcp"]
    proto = home.to_proto()
    assert proto.prober == "http" and proto.timeout_seconds == 5.0


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (with_check(module="nope"), "check 'social-home'.module: unknown module 'nope'"),
        (with_check(interval="soon"), "check 'social-home'.interval: invalid duration 'soon'"),
        (with_check(interval="10ms"), "check 'social-home'.interval: must be at least 0.1s"),
        (with_check(countries=["XX"]), "check 'social-home'.countries: country 'XX'"),
        (with_check(countries=["br"]), "country 'br' is not an ISO-3166"),
        (with_check(agents=["Bad Agent"]), "check 'social-home'.agents: agent id 'Bad Agent'"),
        (with_check(name="Has Space"), ".name: must match"),
        (
            with_check(target="ftp://example.org/"),
            "check 'social-home'.target: target 'ftp://example.org/'",
        ),
        (with_check(colour="blue"), "check 'social-home': unknown field 'colour'"),
        (
            {**GOOD, "checks": [*GOOD["checks"], GOOD["checks"][0]]},
            "check 'social-home': duplicate name",
        ),
        ({**GOOD, "extra": 1}, "unknown top-level field 'extra'"),
        (
            {"modules": {"m": {"prober": "carrier-pigeon"}}},
            "module m.prober: unknown prober 'carrier-pigeon'",
        ),
        (
            {"modules": {"m": {"prober": "http", "http": {"valid_status_code": [200]}}}},
            "module m.http: unknown field 'valid_status_code'",
        ),
        (
            {
                "modules": {
                    "m": {"prober": "http", "http": {"fail_if_body_matches_regexp": ["(unclosed"]}}
                }
            },
            "module m.http.fail_if_body_matches_regexp[0]: invalid regexp",
        ),
        ({"modules": {"m": {"prober": "http", "timeout": "-1s"}}}, "module m.timeout"),
        ({"modules": {"m": {"prober": "http", "tcp": {}}}}, "module m.tcp: section does not apply"),
    ],
)
def test_bad_files_name_the_problem(data: dict, message: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        parse_checks(data, "checks.yaml")
    assert message in str(excinfo.value)


def test_tcp_port_out_of_range_is_an_error() -> None:
    data = yaml.safe_load(yaml.safe_dump(GOOD))
    data["checks"][1]["target"] = "example.org:70000"
    with pytest.raises(ConfigError, match="port '70000' out of range"):
        parse_checks(data)


def test_unreadable_and_invalid_yaml_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read checks file"):
        load_checks(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("modules: [unclosed")
    with pytest.raises(ConfigError, match=f"{bad}: invalid YAML"):
        load_checks(bad)
