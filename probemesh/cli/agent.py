"""probemesh agent: probe the checks a collector assigns and stream the results.

``probemesh agent join JOINSTRING`` enrolls a node: it verifies the collector's
certificate pin and writes agent.yml, the token and the pinned CA into the
state dir. From then on ``probemesh agent --state-dir DIR`` reads agent.yml
from that directory; options given on the command line or as environment
variables override it.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import click

from probemesh import grpc_log, ports
from probemesh.cli import options
from probemesh.errors import ConfigError
from probemesh.grpc_options import is_loopback

log = logging.getLogger("probemesh")


def _state_defaults(ctx: click.Context, _param: click.Parameter, value: Path) -> Path:
    """--state-dir: an enrolled directory's agent.yml supplies option defaults."""
    from probemesh.enroll import state_config

    try:
        data = state_config(value)
    except ConfigError as exc:
        raise click.BadParameter(str(exc)) from None
    if data:
        options.apply_defaults(ctx, data, str(value / "agent.yml"), keep_existing=True)
    return value


@click.group(invoke_without_command=True)
@options.config_option
@options.opt(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default="probemesh-agent",
    is_eager=True,
    callback=_state_defaults,
    help="Directory of the durable result queue; its agent.yml (written by 'agent join') "
    "supplies defaults.",
)
@options.opt(
    "--collector",
    "collectors",
    callback=options.collectors,
    help="Collector HOST:PORT; several, comma-separated, are tried in order (failover). Required "
    "unless the state dir is enrolled.",
)
@options.opt(
    "--agent-id",
    callback=options.agent_id,
    help="This agent's id (bound to its token). Required unless the state dir is enrolled.",
)
@options.opt(
    "--country",
    callback=options.country,
    help="ISO-3166 alpha-2 country (bound to its token). Required unless the state dir is "
    "enrolled.",
)
@options.opt(
    "--token", default=None, help="Bearer token from 'probemesh token create'. [default: none]"
)
@options.opt(
    "--token-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="File holding the token (preferred over --token); read again before every connection "
    "attempt, so a new token needs no restart. [default: none]",
)
@options.opt(
    "--region",
    default="",
    callback=options.region,
    help="Region inside the country. [default: none]",
)
@options.opt(
    "--city", default="", callback=options.region, help="City, informational. [default: none]"
)
@options.opt(
    "--asn", type=click.IntRange(0, 2**32 - 1), default=0, help="Uplink AS number; 0 when unknown."
)
@options.opt(
    "--metrics-listen",
    default="",
    callback=options.listen,
    help=f"Address for the agent's /metrics, e.g. 127.0.0.1:{ports.AGENT_METRICS_PORT}. [default: off]",
)
@options.opt(
    "--source-address",
    default="",
    callback=options.ip_address,
    help="Local IP address probes bind to. [default: any]",
)
@options.opt(
    "--allow-private-targets",
    is_flag=True,
    default=False,
    help="Allow probing loopback and private addresses (link-local/metadata stay refused).",
)
@options.opt(
    "--secrets-dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Directory of the files checks may name (bearer_token_file, tls_config.ca_file, ...); "
    "names resolve inside it only. [default: none: every file reference is refused]",
)
@options.opt(
    "--min-interval",
    callback=options.duration,
    default="5s",
    help="Refuse checks with a shorter interval.",
)
@options.opt(
    "--max-concurrency",
    type=click.IntRange(1, 10_000),
    default=256,
    help="Probes running at once, at most.",
)
@options.opt(
    "--queue-max-results",
    type=click.IntRange(10, 10**9),
    default=1_000_000,
    help="Results kept on disk while the collector is unreachable; oldest dropped beyond.",
)
@options.opt(
    "--queue-max-age",
    callback=options.duration,
    default="7d",
    help="Results older than this are dropped (counted).",
)
@options.opt(
    "--tls-ca",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="CA bundle to verify the collector; enables TLS. [default: plaintext]",
)
@options.opt(
    "--tls-cert",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Client certificate for mTLS. [default: none]",
)
@options.opt(
    "--tls-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Client key for mTLS. [default: none]",
)
@options.opt(
    "--tls-server-name", default="", help="Expected collector certificate name. [default: host]"
)
@options.opt(
    "--insecure",
    is_flag=True,
    default=False,
    help="Allow plaintext gRPC to a non-loopback collector.",
)
@options.LOG_LEVEL
@click.pass_context
def agent(ctx: click.Context, **kw: Any) -> None:
    """Probe targets for the checks a collector assigns, and stream the results.

    'probemesh agent join JOINSTRING' enrolls a node first; then
    'probemesh agent --state-dir DIR' is all it takes.
    """
    if ctx.invoked_subcommand is not None:
        return
    from probemesh.agent import eventloop
    from probemesh.agent.credentials import TokenSource, TokenUnavailable
    from probemesh.agent.link import ChannelTLS, Identity, LinkSettings
    from probemesh.agent.main import AgentOptions, run_agent

    options.setup_logging(kw["log_level"])
    for name, flag in (
        ("collectors", "--collector"),
        ("agent_id", "--agent-id"),
        ("country", "--country"),
    ):
        if not kw[name]:
            raise ConfigError(
                f"{flag} is required (or enroll the state dir {kw['state_dir']} first: "
                "probemesh agent join JOINSTRING)"
            )
    token = TokenSource(kw["token"] or "", kw["token_file"])
    try:
        if not token.get():
            raise ConfigError("a token is required: --token, --token-file or PROBEMESH_TOKEN")
    except TokenUnavailable as exc:
        raise ConfigError(str(exc)) from None
    link = LinkSettings(
        server_name=kw["tls_server_name"], secrets_dir_configured=kw["secrets_dir"] is not None
    )
    if kw["tls_ca"]:
        if bool(kw["tls_cert"]) != bool(kw["tls_key"]):
            raise ConfigError("--tls-cert and --tls-key must be given together")
        link.tls = ChannelTLS(kw["tls_ca"], kw["tls_cert"], kw["tls_key"])
    else:
        remote = [c for c in kw["collectors"] if not is_loopback(c)]
        if remote and not kw["insecure"]:
            raise ConfigError(
                f"--collector {remote[0]} is not loopback: give --tls-ca, or --insecure"
            )
        if remote:
            log.warning(
                "plaintext gRPC to %s: the token crosses the network unencrypted", ", ".join(remote)
            )
    settings = AgentOptions(
        collectors=kw["collectors"],
        identity=Identity(kw["agent_id"], kw["country"], kw["region"], kw["city"], kw["asn"]),
        token=token,
        state_dir=kw["state_dir"],
        metrics_listen=kw["metrics_listen"],
        source_address=kw["source_address"],
        allow_private_targets=kw["allow_private_targets"],
        secrets_dir=kw["secrets_dir"],
        min_interval=kw["min_interval"],
        max_concurrency=kw["max_concurrency"],
        queue_max_results=kw["queue_max_results"],
        queue_max_age=kw["queue_max_age"],
        link=link,
    )
    eventloop.run(run_agent(settings))


@agent.command("join")
@click.argument("join_string", envvar="PROBEMESH_JOIN")
@options.opt(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default="probemesh-agent",
    help="Directory to enroll (created with mode 0700).",
)
@options.opt(
    "--no-run",
    is_flag=True,
    default=False,
    help="Enroll and exit instead of running the agent (for installers).",
)
def join(join_string: str, state_dir: Path, no_run: bool) -> None:
    """Enroll this node from a join string ('probemesh token create --collector-url').

    The collector's certificate must match the pin in the join string: a wrong
    pin or a man in the middle is refused and nothing is written. The state dir
    then holds agent.yml, the token (0600) and the pinned CA, and the agent runs
    as 'probemesh agent --state-dir DIR'. JOINSTRING may also come from
    PROBEMESH_JOIN, which keeps it out of the process list.
    """
    from probemesh.enroll import JoinString, enroll

    parsed = JoinString.decode(join_string)
    config = enroll(parsed, state_dir)
    click.echo(
        f"enrolled {parsed.agent_id} ({parsed.country}); collector certificate matches the pin; "
        f"wrote {config}",
        err=True,
    )
    if no_run:
        return
    # The same process becomes 'probemesh agent --state-dir DIR': one code path
    # for the first run and every later one, and the pid a supervisor sees stays.
    sys.stdout.flush()
    grpc_log.BRIDGE.stop()
    os.execv(
        sys.executable,
        [sys.executable, "-m", "probemesh", "agent", "--state-dir", str(state_dir)],
    )
