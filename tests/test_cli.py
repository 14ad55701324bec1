"""The command line: one clear line and exit 2 for bad input; env vars and --config work."""

from __future__ import annotations

import socket
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

from tests.harness import ROOT, Mesh, free_port, run_cli


def error_line(*args: str, env: dict[str, str] | None = None) -> str:
    result = run_cli(*args, check=False)
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("probemesh: error: ")
    return lines[0]


def test_version_is_the_package_version() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert run_cli("--version").stdout.strip() == f"probemesh, version {project['version']}"
    assert metadata.version("probemesh") == project["version"]  # the install is current


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("collector", "--no-such-flag"), "No such option '--no-such-flag'"),
        (("collector",), "Missing option '--checks'"),
        (("agent", "--collector", "127.0.0.1:1", "--agent-id", "Bad Id", "--country", "BR", "--token", "x"),
         "agent id 'Bad Id'"),
        (("agent", "--collector", "127.0.0.1:1", "--agent-id", "a1", "--country", "XX", "--token", "x"),
         "country 'XX' is not an ISO-3166"),
        (("agent", "--collector", "nowhere", "--agent-id", "a1", "--country", "BR", "--token", "x"),
         "missing port"),
        (("agent", "--collector", "10.0.0.1:7443", "--agent-id", "a1", "--country", "BR", "--token", "x"),
         "not loopback: give --tls-ca, or --insecure"),
        (("agent", "--collector", "127.0.0.1:7443", "--agent-id", "a1", "--country", "BR"),
         "a token is required"),
        (("agent", "--collector", "127.0.0.1:1", "--agent-id", "a1", "--country", "BR", "--token", "x",
          "--min-interval", "soon"), "invalid duration 'soon'"),
        (("token", "create", "--agent-id", "a1", "--country", "br"), "country 'br'"),
        (("collector", "--checks", "c.yml", "--alertmanager-url", "am:9093"),
         "--alertmanager-url: 'am:9093' is not an http:// or https:// URL"),
        (("collector", "--checks", "c.yml", "--alertmanager-resend", "often"),
         "invalid duration 'often'"),
        (("collector", "--checks", "c.yml", "--collector-id", "eu 1"),
         "Invalid value for '--collector-id'"),
        (("collector", "--checks", "c.yml", "--grpc-listen", "127.0.0.1:0",
          "--webhook-url", "http://127.0.0.1:1/hook"), "--webhook-url needs --webhook-secret-file"),
        (("collector", "--checks", "c.yml", "--grpc-listen", "127.0.0.1:0",
          "--alertmanager-auth", "/nonexistent/am-auth"), "--alertmanager-auth: cannot read"),
    ],
)  # fmt: skip
def test_bad_flags_print_one_line_and_exit_2(args: tuple[str, ...], expected: str) -> None:
    assert expected in error_line(*args)


def test_bad_checks_file_names_check_and_field(tmp_path: Path) -> None:
    checks = tmp_path / "checks.yaml"
    checks.write_text(
        "modules: {m: {prober: http}}\nchecks: [{name: web, target: 'http://x/', module: m, interval: 1h1}]\n"
    )
    line = error_line("collector", "--checks", str(checks), "--grpc-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
                      "--data-dir", str(tmp_path / "d"))  # fmt: skip
    assert "check 'web'.interval: invalid duration '1h1'" in line


def test_config_file_and_env_vars_set_options(tmp_path: Path) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text("collector: 127.0.0.1:1\nagent-id: a1\ncountry: XX\n")
    line = error_line("agent", "--config", str(config), "--token", "x")
    assert "country 'XX'" in line  # the value came from the file
    config.write_text("colour: blue\n")
    assert "unknown option 'colour'" in error_line("agent", "--config", str(config))


def test_token_lifecycle(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    token = run_cli(
        "token", "create", "--data-dir", data, "--agent-id", "vps-br-1", "--country", "BR"
    ).stdout.strip()
    assert token.startswith("pm_") and len(token.splitlines()) == 1
    listing = run_cli("token", "list", "--data-dir", data).stdout
    assert "vps-br-1" in listing and "BR" in listing and "active" in listing
    assert token not in listing and token.split("_", 2)[2] not in listing  # the whole secret
    assert "revoked 1 token" in run_cli("token", "revoke", "--data-dir", data, "vps-br-1").stdout
    assert "revoked" in run_cli("token", "list", "--data-dir", data).stdout
    assert "no active token matches" in error_line(
        "token", "revoke", "--data-dir", data, "vps-br-1"
    )


def test_collector_refuses_a_grpc_port_another_process_holds(tmp_path: Path) -> None:
    """Even a listener that allows SO_REUSEPORT (as gRPC servers do) is not shared."""
    checks = tmp_path / "checks.yaml"
    checks.write_text("modules: {m: {prober: tcp}}\nchecks: []\n")
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = run_cli("collector", "--checks", str(checks), "--grpc-listen", f"127.0.0.1:{port}",
                         "--http-listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "d"), check=False)  # fmt: skip
    # gRPC core's own line about the bind is relayed from another thread, so it may
    # come before or after ours; ours is the only error line of the CLI.
    assert result.returncode == 2, result.stderr
    ours = [line for line in result.stderr.splitlines() if line.startswith("probemesh: ")]
    assert ours == [f"probemesh: error: --grpc-listen: cannot listen on 127.0.0.1:{port}"]


def test_a_second_collector_on_one_sqlite_database_refuses_to_start(tmp_path: Path) -> None:
    """A SQLite database belongs to one collector (its leases live in that process)."""
    mesh = Mesh(tmp_path, "modules: {m: {prober: tcp}}\nchecks: []\n")
    try:
        first = mesh.start_collector()
        second = run_cli("collector", "--checks", str(mesh.checks_path), "--grpc-listen",
                         f"127.0.0.1:{free_port()}", "--http-listen", "127.0.0.1:0",
                         "--data-dir", str(mesh.data_dir), check=False)  # fmt: skip
        assert first.alive(), "the collector that holds the database goes on"
        first.kill()  # the lock goes with the process, however it ends
        mesh.start_collector()
    finally:
        mesh.stop()
    assert second.returncode == 1, second.stderr  # unusable state, not a bad flag
    assert second.stderr.splitlines()[-1] == (
        f"probemesh: error: {mesh.data_dir / 'collector.sqlite3'}: another collector is using "
        "this database; a SQLite database belongs to one collector (several collectors share "
        "PostgreSQL: --database)"
    )


def test_bad_asn_db_names_the_file_and_line(tmp_path: Path) -> None:
    checks = tmp_path / "checks.yaml"
    checks.write_text(
        "modules: {m: {prober: tcp}}\nchecks: [{name: c, target: 'h:1', module: m}]\n"
    )
    asn = tmp_path / "ip2asn.tsv"
    asn.write_text("10.0.0.0\t10.0.0.255\t64500\tZZ\tok\n10.0.1.0\tnot-an-ip\t64501\n")
    line = error_line("collector", "--checks", str(checks), "--grpc-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
                      "--data-dir", str(tmp_path / "d"), "--asn-db", str(asn))  # fmt: skip
    assert f"--asn-db {asn}:2: expected range_start" in line
