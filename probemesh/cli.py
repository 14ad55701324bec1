"""The probemesh command line: a thin layer over the collector, agent and demo.

Every option has an environment variable (PROBEMESH_<OPTION>) and may be set in
a YAML file given with --config (keys are option names). Errors are caught once
here: one clear line on stderr, exit status 2 for bad input.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import sys
from pathlib import Path
from typing import Any

import click
import grpc
import yaml

from probemesh import __version__
from probemesh.durations import parse_duration
from probemesh.errors import ConfigError, ProbemeshError
from probemesh.grpc_options import is_loopback
from probemesh.httpserver import parse_listen
from probemesh.identity import agent_id_problem, country_problem, valid_region
from probemesh.targets import split_host_port

log = logging.getLogger("probemesh")


def _load_config(ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """--config FILE: YAML mapping of option names to values, used as defaults."""
    if not value:
        return value
    try:
        data = yaml.safe_load(Path(value).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise click.BadParameter(f"cannot read {value}: {exc}") from None
    if not isinstance(data, dict):
        raise click.BadParameter(f"{value}: expected a mapping of option names to values")
    # Keys are the long option names ("agent-id" or "agent_id"), mapped to parameters.
    known = {
        flag.removeprefix("--").replace("-", "_"): param.name
        for param in ctx.command.params
        if param.name
        for flag in param.opts
        if flag.startswith("--")
    }
    defaults = {}
    for key, item in data.items():
        name = known.get(str(key).replace("-", "_"))
        if name is None:
            raise click.BadParameter(f"{value}: unknown option {key!r}")
        defaults[name] = item
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


def config_option(func: Any) -> Any:
    return click.option(
        "--config",
        type=click.Path(dir_okay=False),
        callback=_load_config,
        is_eager=True,
        expose_value=False,
        envvar="PROBEMESH_CONFIG",
        help="YAML file of option values (keys are option names). [default: none]",
    )(func)


def opt(*decls: str, **kwargs: Any) -> Any:
    """click.option with PROBEMESH_<OPTION> as its environment variable."""
    name = next(d for d in decls if d.startswith("--"))[2:].replace("-", "_").upper()
    kwargs.setdefault("envvar", f"PROBEMESH_{name}")
    kwargs.setdefault("show_envvar", True)
    kwargs.setdefault("show_default", "default" in kwargs)
    return click.option(*decls, **kwargs)


def _listen(_ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value:
        try:
            parse_listen(value)
        except ConfigError as exc:
            raise click.BadParameter(str(exc), param=param) from None
    return value


def _agent_id(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is not None and (problem := agent_id_problem(value)):
        raise click.BadParameter(problem)
    return value


def _country(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is not None and (problem := country_problem(value)):
        raise click.BadParameter(problem)
    return value


def _region(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    if not valid_region(value):
        raise click.BadParameter("must be up to 63 letters, digits, spaces, '.', '_' or '-'")
    return value


def _ip_address(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    if value:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise click.BadParameter(f"{value!r} is not an IP address") from None
    return value


def _duration(_ctx: click.Context, param: click.Parameter, value: Any) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration(value, f"--{param.name}".replace("_", "-"))
    except ConfigError as exc:
        raise click.BadParameter(str(exc)) from None


def _collectors(_ctx: click.Context, _param: click.Parameter, value: str | None) -> list[str]:
    if not value:
        raise click.BadParameter("at least one HOST:PORT is required")
    addresses = [a.strip() for a in value.split(",") if a.strip()]
    for address in addresses:
        try:
            split_host_port(address)
        except ConfigError as exc:
            raise click.BadParameter(str(exc)) from None
    return addresses


def _external_labels(
    _ctx: click.Context, _param: click.Parameter, value: tuple[str, ...]
) -> dict[str, str]:
    labels: dict[str, str] = {}
    for item in value:
        name, sep, label_value = item.partition("=")
        if not sep or not re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", name) or name.startswith("__"):
            raise click.BadParameter(f"{item!r}: expected NAME=VALUE with a Prometheus label name")
        labels[name] = label_value
    return labels


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


LOG_LEVEL = opt(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    default="info",
    help="Log verbosity.",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="probemesh")
def cli() -> None:
    """Multi-region synthetic probe mesh: agents in many countries, one collector."""


@cli.command()
@config_option
@opt(
    "--checks",
    "checks_path",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Checks file (blackbox modules + checks). Required.",
)
@opt("--grpc-listen", default="0.0.0.0:7443", callback=_listen, help="Address for agent streams.")
@opt(
    "--http-listen",
    default="0.0.0.0:9115",
    callback=_listen,
    help="Address for /metrics, API and status page.",
)
@opt(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default="probemesh-data",
    help="Directory for tokens, dedupe marks, counters and incidents.",
)
@opt(
    "--tls-cert",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Server certificate (PEM) for gRPC TLS. [default: none]",
)
@opt(
    "--tls-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Server private key (PEM). [default: none]",
)
@opt(
    "--tls-client-ca",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="CA bundle for mTLS: agents must present a certificate it signed. [default: none]",
)
@opt(
    "--insecure",
    is_flag=True,
    default=False,
    help="Allow plaintext gRPC on a non-loopback address.",
)
@opt(
    "--max-batch-results",
    type=click.IntRange(1, 100_000),
    default=5000,
    help="Largest ResultBatch accepted from an agent.",
)
@opt(
    "--series-ttl",
    callback=_duration,
    default="15m",
    help="Forget the gauges of an agent disconnected for this long.",
)
@opt(
    "--max-message-bytes",
    type=click.IntRange(64 * 1024, 256 * 1024 * 1024),
    default=4 * 1024 * 1024,
    help="Largest gRPC message accepted from an agent; larger: RESOURCE_EXHAUSTED.",
)
@opt(
    "--rate-limit",
    type=click.FloatRange(min=0),
    default=20000.0,
    help="Results per second per agent (token bucket); above: RESOURCE_EXHAUSTED. 0 disables.",
)
@opt(
    "--rate-burst",
    type=click.FloatRange(min=1),
    default=200000.0,
    help="Results an agent may send at once after a quiet period; at least --max-batch-results.",
)
@opt(
    "--max-series-per-agent",
    type=click.IntRange(1, 10**8),
    default=50_000,
    help="Probe series (label sets) exported per agent; beyond: rejected{reason=cardinality}.",
)
@opt(
    "--max-series",
    type=click.IntRange(1, 10**9),
    default=5_000_000,
    help="Probe series (label sets) exported over all agents.",
)
@opt(
    "--max-samples-per-result",
    type=click.IntRange(1, 10_000),
    default=64,
    help="Blackbox samples kept from one result.",
)
@opt(
    "--api-auth",
    default=None,
    help="Credentials file (or env:NAME) required for / and /api/*: lines 'bearer TOKEN' or "
    "'basic USER:PASSWORD'. [default: open]",
)
@opt(
    "--metrics-auth",
    default=None,
    help="Credentials file (or env:NAME) required for /metrics, same format. [default: open]",
)
@opt(
    "--remote-write-url",
    default=None,
    help="Prometheus remote-write endpoint to push /metrics' samples to. [default: none]",
)
@opt(
    "--remote-write-interval",
    callback=_duration,
    default="15s",
    help="How often to snapshot and remote-write the metrics.",
)
@opt(
    "--external-label",
    "external_labels",
    multiple=True,
    callback=_external_labels,
    help="NAME=VALUE added to every remote-written series, e.g. collector=eu-1; repeatable. "
    "Give each collector a distinct one. [default: none]",
)
@LOG_LEVEL
def collector(**kw: Any) -> None:
    """Accept agents, push checks, export metrics and detect outages."""
    from probemesh.collector.httpauth import HttpAuth, load_credentials
    from probemesh.collector.ingest import IngestLimits
    from probemesh.collector.limits import SecurityLimits
    from probemesh.collector.main import CollectorOptions, run_collector

    _setup_logging(kw["log_level"])
    if bool(kw["tls_cert"]) != bool(kw["tls_key"]):
        raise ConfigError("--tls-cert and --tls-key must be given together")
    if kw["tls_client_ca"] and not kw["tls_cert"]:
        raise ConfigError("--tls-client-ca needs --tls-cert and --tls-key")
    if not kw["tls_cert"] and not is_loopback(kw["grpc_listen"]):
        if not kw["insecure"]:
            raise ConfigError(
                f"--grpc-listen {kw['grpc_listen']} is not loopback: give --tls-cert/--tls-key, or --insecure"
            )
        log.warning(
            "serving plaintext gRPC on %s: tokens cross the network unencrypted", kw["grpc_listen"]
        )
    if kw["rate_limit"] and kw["rate_burst"] < kw["max_batch_results"]:
        raise ConfigError(
            "--rate-burst must be at least --max-batch-results, or a full batch could never pass"
        )
    http_auth = HttpAuth(
        api=load_credentials(kw["api_auth"], "--api-auth") if kw["api_auth"] else None,
        metrics=load_credentials(kw["metrics_auth"], "--metrics-auth")
        if kw["metrics_auth"]
        else None,
    )
    options = CollectorOptions(
        checks_path=kw["checks_path"],
        grpc_listen=kw["grpc_listen"],
        http_listen=kw["http_listen"],
        data_dir=kw["data_dir"],
        tls_cert=kw["tls_cert"],
        tls_key=kw["tls_key"],
        tls_client_ca=kw["tls_client_ca"],
        series_ttl=kw["series_ttl"],
        limits=IngestLimits(max_batch_results=kw["max_batch_results"]),
        max_message_bytes=kw["max_message_bytes"],
        security=SecurityLimits(
            rate_limit=kw["rate_limit"],
            rate_burst=kw["rate_burst"],
            max_series_per_agent=kw["max_series_per_agent"],
            max_series=kw["max_series"],
            max_samples_per_result=kw["max_samples_per_result"],
        ),
        http_auth=http_auth,
        remote_write_url=kw["remote_write_url"],
        remote_write_interval=kw["remote_write_interval"],
        external_labels=kw["external_labels"],
    )
    asyncio.run(run_collector(options))


@cli.command()
@config_option
@opt(
    "--collector",
    "collectors",
    required=True,
    callback=_collectors,
    help="Collector HOST:PORT; several, comma-separated, are tried in order (failover).",
)
@opt("--agent-id", required=True, callback=_agent_id, help="This agent's id (bound to its token).")
@opt(
    "--country",
    required=True,
    callback=_country,
    help="ISO-3166 alpha-2 country (bound to its token).",
)
@opt("--token", default=None, help="Bearer token from 'probemesh token create'. [default: none]")
@opt(
    "--token-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="File holding the token (preferred over --token). [default: none]",
)
@opt("--region", default="", callback=_region, help="Region inside the country. [default: none]")
@opt("--city", default="", callback=_region, help="City, informational. [default: none]")
@opt(
    "--asn", type=click.IntRange(0, 2**32 - 1), default=0, help="Uplink AS number; 0 when unknown."
)
@opt(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default="probemesh-agent",
    help="Directory of the durable result queue.",
)
@opt(
    "--metrics-listen",
    default="",
    callback=_listen,
    help="Address for the agent's /metrics. [default: off]",
)
@opt(
    "--source-address",
    default="",
    callback=_ip_address,
    help="Local IP address probes bind to. [default: any]",
)
@opt(
    "--allow-private-targets",
    is_flag=True,
    default=False,
    help="Allow probing loopback and private addresses (link-local/metadata stay refused).",
)
@opt(
    "--min-interval",
    callback=_duration,
    default="5s",
    help="Refuse checks with a shorter interval.",
)
@opt(
    "--max-concurrency",
    type=click.IntRange(1, 10_000),
    default=256,
    help="Probes running at once, at most.",
)
@opt(
    "--queue-max-results",
    type=click.IntRange(10, 10**9),
    default=1_000_000,
    help="Results kept on disk while the collector is unreachable; oldest dropped beyond.",
)
@opt(
    "--queue-max-age",
    callback=_duration,
    default="7d",
    help="Results older than this are dropped (counted).",
)
@opt(
    "--tls-ca",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="CA bundle to verify the collector; enables TLS. [default: plaintext]",
)
@opt(
    "--tls-cert",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Client certificate for mTLS. [default: none]",
)
@opt(
    "--tls-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Client key for mTLS. [default: none]",
)
@opt("--tls-server-name", default="", help="Expected collector certificate name. [default: host]")
@opt(
    "--insecure",
    is_flag=True,
    default=False,
    help="Allow plaintext gRPC to a non-loopback collector.",
)
@LOG_LEVEL
def agent(**kw: Any) -> None:
    """Probe targets for the checks a collector assigns, and stream the results."""
    from probemesh.agent.link import Identity, LinkSettings
    from probemesh.agent.main import AgentOptions, run_agent

    _setup_logging(kw["log_level"])
    token = kw["token_file"].read_text().strip() if kw["token_file"] else kw["token"]
    if not token:
        raise ConfigError("a token is required: --token, --token-file or PROBEMESH_TOKEN")
    link = LinkSettings(server_name=kw["tls_server_name"])
    if kw["tls_ca"]:
        if bool(kw["tls_cert"]) != bool(kw["tls_key"]):
            raise ConfigError("--tls-cert and --tls-key must be given together")
        link.credentials = grpc.ssl_channel_credentials(
            root_certificates=kw["tls_ca"].read_bytes(),
            private_key=kw["tls_key"].read_bytes() if kw["tls_key"] else None,
            certificate_chain=kw["tls_cert"].read_bytes() if kw["tls_cert"] else None,
        )
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
    options = AgentOptions(
        collectors=kw["collectors"],
        identity=Identity(kw["agent_id"], kw["country"], kw["region"], kw["city"], kw["asn"]),
        token=token,
        state_dir=kw["state_dir"],
        metrics_listen=kw["metrics_listen"],
        source_address=kw["source_address"],
        allow_private_targets=kw["allow_private_targets"],
        min_interval=kw["min_interval"],
        max_concurrency=kw["max_concurrency"],
        queue_max_results=kw["queue_max_results"],
        queue_max_age=kw["queue_max_age"],
        link=link,
    )
    asyncio.run(run_agent(options))


@cli.group()
def token() -> None:
    """Create, list and revoke agent tokens."""


DATA_DIR = opt(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default="probemesh-data",
    help="The collector's data directory.",
)


def _tokens(data_dir: Path) -> Any:
    from probemesh.collector.store import open_db
    from probemesh.collector.tokens import TokenStore

    return TokenStore(open_db(data_dir))


@token.command("create")
@DATA_DIR
@opt("--agent-id", required=True, callback=_agent_id, help="Agent the token is bound to.")
@opt("--country", required=True, callback=_country, help="Country the token is bound to.")
def token_create(data_dir: Path, agent_id: str, country: str) -> None:
    """Print a new token on one line. It is shown once and stored only hashed."""
    click.echo(_tokens(data_dir).create(agent_id, country))


@token.command("list")
@DATA_DIR
def token_list(data_dir: Path) -> None:
    """Show every token's id, agent, country, creation time and last use."""
    from probemesh.timefmt import rfc3339

    click.echo(f"{'TOKEN ID':<10} {'AGENT':<24} {'CC':<3} {'CREATED':<21} {'LAST USED':<21} STATUS")
    for info in _tokens(data_dir).list():
        status = "revoked" if info.revoked_at else "active"
        click.echo(
            f"{info.token_id:<10} {info.agent_id:<24} {info.country:<3} {rfc3339(info.created_at):<21} "
            f"{rfc3339(info.last_used) or '-':<21} {status}"
        )


@token.command("revoke")
@DATA_DIR
@click.argument("selector")
def token_revoke(data_dir: Path, selector: str) -> None:
    """Revoke by token id or by agent id; live streams using it are cut within seconds."""
    count = _tokens(data_dir).revoke(selector)
    if not count:
        raise ConfigError(f"no active token matches {selector!r}")
    click.echo(f"revoked {count} token(s)")


@cli.command()
@opt(
    "--duration",
    type=click.FloatRange(min=1),
    default=None,
    help="Stop after this many seconds. [default: until Ctrl-C]",
)
@opt("--http-listen", default="127.0.0.1:9115", callback=_listen, help="Collector HTTP address.")
@opt("--grpc-listen", default="127.0.0.1:7443", callback=_listen, help="Collector gRPC address.")
@opt(
    "--no-table",
    is_flag=True,
    default=False,
    help="Print a line per change instead of the live table.",
)
@LOG_LEVEL
def demo(**kw: Any) -> None:
    """Run a collector, 8 agents (BR PH UG DE ZA LT US JP) and a failing demo target."""
    from probemesh.demo import DemoOptions, run_demo

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    asyncio.run(
        run_demo(
            DemoOptions(kw["duration"], kw["http_listen"], kw["grpc_listen"], not kw["no_table"])
        )
    )


def main() -> None:
    """Console entry point: one line per error, exit 2 for bad input."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        click.echo(f"probemesh: error: {exc.format_message()}", err=True)
        sys.exit(2)
    except ConfigError as exc:
        click.echo(f"probemesh: error: {exc}", err=True)
        sys.exit(2)
    except ProbemeshError as exc:
        click.echo(f"probemesh: error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
