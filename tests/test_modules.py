"""Load-time validation of blackbox modules: errors name the module and the field."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from probemesh.errors import ConfigError, ModuleError
from probemesh.modules import PROBER_SETTINGS, parse_module, settings_from_json
from probemesh.targets import split_host_port, target_host

# blackbox_exporter's own example modules (example.yml), which must load unchanged.
BLACKBOX_EXAMPLE = """
modules:
  http_2xx_example:
    prober: http
    timeout: 5s
    http:
      valid_http_versions: ["HTTP/1.1", "HTTP/2.0"]
      valid_status_codes: []
      method: GET
      headers:
        Host: vhost.example.com
        Accept-Language: en-US
        Origin: example.com
      no_follow_redirects: false
      fail_if_ssl: false
      fail_if_not_ssl: false
      fail_if_body_matches_regexp:
        - "Could not connect to database"
      fail_if_body_not_matches_regexp:
        - "Download the latest version here"
      fail_if_header_matches:
        - header: Set-Cookie
          allow_missing: true
          regexp: '.*'
      fail_if_header_not_matches:
        - header: Access-Control-Allow-Origin
          regexp: '(\\*|example\\.com)'
      tls_config:
        insecure_skip_verify: false
      preferred_ip_protocol: "ip4"
      ip_protocol_fallback: false
  http_basic_auth_example:
    prober: http
    http:
      method: POST
      headers:
        Host: "login.example.com"
      basic_auth:
        username: "username"
        password: "mysecret"
  http_custom_ca_example:
    prober: http
    http:
      method: GET
      tls_config:
        ca_file: "/certs/my_cert.crt"
  tcp_connect_example:
    prober: tcp
    timeout: 5s
  imap_starttls:
    prober: tcp
    timeout: 5s
    tcp:
      query_response:
        - expect: "OK.*STARTTLS"
        - send: ". STARTTLS"
        - expect: "OK"
        - starttls: true
        - send: ". capability"
        - expect: "CAPABILITY IMAP4rev1"
  smtp_starttls:
    prober: tcp
    timeout: 5s
    tcp:
      query_response:
        - expect: "^220 ([^ ]+) ESMTP (.+)$"
        - send: "EHLO prober\\r"
        - expect: "^250-STARTTLS"
        - send: "STARTTLS\\r"
        - expect: "^220"
        - starttls: true
        - send: "EHLO prober\\r"
        - expect: "^250-AUTH"
        - send: "QUIT\\r"
  irc_banner_example:
    prober: tcp
    timeout: 5s
    tcp:
      query_response:
        - send: "NICK prober"
        - send: "USER prober prober prober :prober"
        - expect: "PING :([^ ]+)"
          send: "PONG ${1}"
        - expect: "^:[^ ]+ 001"
  icmp_example:
    prober: icmp
    timeout: 5s
    icmp:
      preferred_ip_protocol: "ip4"
      source_ip_address: "127.0.0.1"
  dns_udp_example:
    prober: dns
    timeout: 5s
    dns:
      query_name: "www.prometheus.io"
      query_type: "A"
      valid_rcodes:
      - NOERROR
      validate_answer_rrs:
        fail_if_matches_regexp:
        - ".*127.0.0.1"
        fail_if_all_match_regexp:
        - ".*127.0.0.1"
        fail_if_not_matches_regexp:
        - "www.prometheus.io.\\t300\\tIN\\tA\\t127.0.0.1"
        fail_if_none_matches_regexp:
        - "127.0.0.1"
      validate_authority_rrs:
        fail_if_matches_regexp:
        - ".*127.0.0.1"
      validate_additional_rrs:
        fail_if_matches_regexp:
        - ".*127.0.0.1"
  dns_soa:
    prober: dns
    dns:
      query_name: "prometheus.io"
      query_type: "SOA"
  dns_tcp_example:
    prober: dns
    dns:
      transport_protocol: "tcp"
      preferred_ip_protocol: "ip4"
      query_name: "www.prometheus.io"
  grpc:
    prober: grpc
    grpc:
      tls: true
      preferred_ip_protocol: ip4
  grpc_plain:
    prober: grpc
    grpc:
      tls: false
      service: "service1"
"""


def load(raw: dict[str, Any], name: str = "m") -> Any:
    return parse_module(name, raw).settings


def test_blackbox_example_modules_load_unchanged() -> None:
    """All but the absolute ca_file load as written; that one names the agent's secrets dir."""
    modules = yaml.safe_load(BLACKBOX_EXAMPLE)["modules"]
    with pytest.raises(
        ModuleError, match=r"tls_config\.ca_file: '/certs/my_cert\.crt' is an absolute"
    ):
        parse_module("http_custom_ca_example", modules["http_custom_ca_example"])
    modules["http_custom_ca_example"]["http"]["tls_config"]["ca_file"] = "certs/my_cert.crt"
    for name, raw in modules.items():
        module = parse_module(name, raw)
        again = settings_from_json(module.prober, module.settings_json())
        assert again == module.settings, name


@pytest.mark.parametrize(
    "field",
    [
        {"bearer_token_file": "/etc/shadow"},
        {"bearer_token_file": "../../etc/shadow"},
        {"basic_auth": {"username": "u", "password_file": "a/../../b"}},
        {"tls_config": {"ca_file": "/etc/ssl/ca.pem"}},
        {"tls_config": {"cert_file": "../c.pem", "key_file": "k.pem"}},
        {"tls_config": {"cert_file": "c.pem", "key_file": "/k.pem"}},
    ],
)
def test_file_references_must_stay_inside_the_secrets_dir(field: dict) -> None:
    with pytest.raises(ModuleError, match="--secrets-dir"):
        parse_module("m", {"prober": "http", "http": field})
    with pytest.raises(ConfigError, match="--secrets-dir"):
        settings_from_json("http", json.dumps(field))


def test_every_prober_has_settings_and_a_probe() -> None:
    from probemesh.agent.probes import PROBERS

    assert set(PROBERS) == set(PROBER_SETTINGS) == {"http", "tcp", "dns", "icmp", "grpc", "tls"}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            {"prober": "http", "http": {"valid_status_code": [200]}},
            "module m.http: unknown field 'valid_status_code'",
        ),
        ({"prober": "http", "htp": {}}, "module m: unknown field 'htp'"),
        ({"prober": "http", "dns": {}}, "module m.dns: section does not apply"),
        ({"prober": "nope"}, "module m.prober: unknown prober 'nope'"),
        (
            {"prober": "http", "http": {"fail_if_body_matches_regexp": ["("]}},
            "module m.http.fail_if_body_matches_regexp[0]: invalid regexp",
        ),
        (
            {
                "prober": "http",
                "http": {"fail_if_header_matches": [{"header": "X", "regexp": "[a"}]},
            },
            "module m.http.fail_if_header_matches[0].regexp",
        ),
        (
            {"prober": "http", "http": {"valid_status_codes": [2000]}},
            "valid_status_codes[0]: 2000 is not an HTTP status",
        ),
        (
            {"prober": "http", "http": {"proxy_url": "http://p"}},
            "module m.http.proxy_url: blackbox option not supported",
        ),
        (
            {"prober": "http", "http": {"body_size_limit": "lots"}},
            "module m.http.body_size_limit: invalid size",
        ),
        (
            {"prober": "http", "http": {"preferred_ip_protocol": "ip5"}},
            "preferred_ip_protocol: must be ip4 or ip6",
        ),
        (
            {"prober": "http", "http": {"tls_config": {"cert_file": "c"}}},
            "module m.http.tls_config: cert_file and key_file",
        ),
        ({"prober": "http", "timeout": "soon"}, "module m.timeout: invalid duration"),
        ({"prober": "dns"}, "module m.dns.query_name: must be set"),
        ({"prober": "dns", "dns": {"query_type": "A"}}, "module m.dns.query_name: must be set"),
        (
            {"prober": "dns", "dns": {"query_name": "a", "query_type": "AAAAA"}},
            "module m.dns.query_type: unknown type",
        ),
        (
            {"prober": "dns", "dns": {"query_name": "a", "valid_rcodes": ["OK"]}},
            "module m.dns.valid_rcodes[0]: unknown rcode",
        ),
        (
            {"prober": "dns", "dns": {"query_name": "a", "transport_protocol": "quic"}},
            "transport_protocol: must be udp or tcp",
        ),
        (
            {
                "prober": "dns",
                "dns": {
                    "query_name": "a",
                    "validate_answer_rrs": {"fail_if_matches_regexp": ["*"]},
                },
            },
            "module m.dns.validate_answer_rrs.fail_if_matches_regexp[0]: invalid regexp",
        ),
        (
            {"prober": "tcp", "tcp": {"query_response": [{"expect": "(?P<"}]}},
            "module m.tcp.query_response[0].expect[0]: invalid regexp",
        ),
        (
            {"prober": "tcp", "tcp": {"source_ip_address": "here"}},
            "source_ip_address: 'here' is not an IP address",
        ),
        ({"prober": "icmp", "icmp": {"packets": 0}}, "module m.icmp.packets: must be 1-100"),
        ({"prober": "icmp", "icmp": {"ttl": 300}}, "module m.icmp.ttl: must be 1-255"),
        (
            {"prober": "grpc", "grpc": {"tls_config": {"insecure_skip_verify": True}}},
            "insecure_skip_verify: not supported",
        ),
        (
            {"prober": "tls", "tls": {"tls_config": {"min_version": "SSL3"}}},
            "module m.tls.tls_config.min_version",
        ),
    ],
)
def test_errors_name_module_and_field(raw: dict[str, Any], expected: str) -> None:
    with pytest.raises(ModuleError) as info:
        parse_module("m", raw)
    assert expected in str(info.value)


def test_defaults_match_blackbox() -> None:
    http = load({"prober": "http"})
    assert http.preferred_ip_protocol == "ip6" and http.ip_protocol_fallback
    assert http.follows_redirects and http.method == "GET"
    dns_settings = load({"prober": "dns", "dns": {"query_name": "x"}})
    assert dns_settings.query_type == "ANY" and dns_settings.transport_protocol == "udp"
    assert dns_settings.recursion_desired
    icmp = load({"prober": "icmp"})
    assert icmp.packets == 3  # deliberate difference: blackbox sends one
    assert (
        load({"prober": "http", "http": {"no_follow_redirects": True}}).follows_redirects is False
    )


def test_sizes_are_base2_like_go() -> None:
    http = load({"prober": "http", "http": {"body_size_limit": "1MB"}})
    assert http.body_limit == 1 << 20
    assert load({"prober": "http", "http": {"body_size_limit": 512}}).body_limit == 512


@pytest.mark.parametrize(
    ("prober", "target", "problem"),
    [
        ("tcp", "host:70000", "port '70000' out of range"),
        ("tcp", "host", "missing port"),
        ("grpc", "host:0", "out of range"),
        ("http", "ftp://x/", "expected an http:// or https:// URL"),
        ("http", "http://x:99999/", "port out of range"),
        ("icmp", "a b", "expected a host name"),
    ],
)
def test_target_validation(prober: str, target: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        target_host(prober, target)


def test_target_forms() -> None:
    assert split_host_port("[::1]:53") == ("::1", 53)
    assert split_host_port("::1", 53) == ("::1", 53)
    assert target_host("dns", "1.1.1.1") == "1.1.1.1"
    assert target_host("http", "https://[::1]:8443/x") == "::1"
