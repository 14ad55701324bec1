"""Certificate fixtures made with trustme: a private CA, good, expired and wrong-host certs."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
import trustme


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def secrets_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The probes' --secrets-dir: settings name files relative to it."""
    return tmp_path_factory.mktemp("secrets")


@pytest.fixture(scope="session")
def ca_file(ca: trustme.CA, secrets_dir: Path) -> str:
    """The CA's file name inside secrets_dir, as settings name it."""
    ca.cert_pem.write_to_path(str(secrets_dir / "ca.pem"))
    return "ca.pem"


@pytest.fixture(scope="session")
def localhost_cert(ca: trustme.CA) -> trustme.LeafCert:
    return ca.issue_cert("localhost", "127.0.0.1", "::1")


@pytest.fixture(scope="session")
def expired_cert(ca: trustme.CA) -> trustme.LeafCert:
    now = datetime.datetime.now(datetime.UTC)
    return ca.issue_cert(
        "localhost",
        "127.0.0.1",
        not_before=now - datetime.timedelta(days=30),
        not_after=now - datetime.timedelta(days=1),
    )


@pytest.fixture(scope="session")
def other_host_cert(ca: trustme.CA) -> trustme.LeafCert:
    return ca.issue_cert("elsewhere.example")
