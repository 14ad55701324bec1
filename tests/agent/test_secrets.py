"""SecretFiles: names resolve inside the secrets dir only; refusals name the setting, log once."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from probemesh.agent.probes.result import ProbeFailure, Reason
from probemesh.agent.secrets import SecretFiles


def test_names_inside_resolve_and_read(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "token").write_text("tok\n")
    (tmp_path / "alias").symlink_to(tmp_path / "sub" / "token")
    secrets = SecretFiles(tmp_path)
    assert secrets.read_text("bearer_token_file", "sub/token") == "tok"
    assert secrets.read_text("bearer_token_file", "alias") == "tok"  # a symlink that stays inside


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("/etc/passwd", "absolute path"),
        ("../x", "'..'"),
        ("sub/../../x", "'..'"),
        ("out", "symlink"),
        ("outdir/x", "symlink"),
    ],
)
def test_refusals_name_the_setting(tmp_path: Path, name: str, problem: str) -> None:
    root = tmp_path / "secrets"
    root.mkdir()
    (tmp_path / "x").write_text("secret")
    (root / "out").symlink_to(tmp_path / "x")
    (root / "outdir").symlink_to(tmp_path)
    with pytest.raises(ProbeFailure) as caught:
        SecretFiles(root).path("basic_auth.password_file", name)
    assert caught.value.reason == Reason.OTHER
    assert caught.value.message.startswith("basic_auth.password_file: ")
    assert problem in caught.value.message


def test_without_a_dir_every_file_is_refused_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    secrets = SecretFiles(None)
    caplog.set_level(logging.WARNING)
    for _ in range(3):
        with pytest.raises(ProbeFailure, match="no --secrets-dir"):
            secrets.path("tls_config.ca_file", "ca.pem")
    with pytest.raises(ProbeFailure):
        secrets.path("tls_config.cert_file", "ca.pem")
    assert len(caplog.records) == 2


def test_missing_file_is_a_clear_failure(tmp_path: Path) -> None:
    with pytest.raises(ProbeFailure, match="bearer_token_file: cannot read 'nope'"):
        SecretFiles(tmp_path).read_text("bearer_token_file", "nope")
