"""Fixtures for the probe tests (defined in cert_fixtures so other suites can import them)."""

from tests.agent.probes.cert_fixtures import (  # noqa: F401 - fixtures
    ca,
    ca_file,
    expired_cert,
    localhost_cert,
    other_host_cert,
)
