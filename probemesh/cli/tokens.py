"""probemesh token create|list|revoke: the agents' bearer tokens in the collector's database."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from probemesh.cli import options
from probemesh.errors import ConfigError


@click.group()
def token() -> None:
    """Create, list and revoke agent tokens."""


def _database_options(fn: Any) -> Any:
    """--data-dir and --database, as the collector takes them."""
    fn = options.opt(
        "--database",
        default=None,
        metavar="URL",
        callback=options.database_url,
        help="The collectors' shared PostgreSQL database (postgresql://user:pass@host/db, "
        "a libpq URL). [default: SQLite in --data-dir]",
    )(fn)
    return options.opt(
        "--data-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default="probemesh-data",
        help="The collector's data directory (its SQLite database).",
    )(fn)


def _tokens(data_dir: Path, database: str | None) -> Any:
    from probemesh.collector.database import open_database
    from probemesh.collector.tokens import TokenStore

    return TokenStore(open_database(database, data_dir).connect())


@token.command("create")
@_database_options
@options.opt(
    "--agent-id", required=True, callback=options.agent_id, help="Agent the token is bound to."
)
@options.opt(
    "--country", required=True, callback=options.country, help="Country the token is bound to."
)
@options.opt(
    "--collector-url",
    default=None,
    callback=lambda ctx, param, value: options.collectors(ctx, param, value) if value else [],
    help="Collector HOST:PORT[,...] as agents reach it; also print a join string. "
    "[default: token only]",
)
@options.opt(
    "--pin-cert",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Certificate the join string pins: the collector's CA (the last certificate of the "
    "file). [default: the last certificate the collector presents]",
)
@options.opt(
    "--tls-server-name",
    default="",
    help="Name in the collector's certificate, when agents reach it by another name or an IP. "
    "[default: the host of each --collector-url]",
)
def token_create(
    data_dir: Path,
    database: str | None,
    agent_id: str,
    country: str,
    collector_url: list[str],
    pin_cert: Path | None,
    tls_server_name: str,
) -> None:
    """Print a new token on one line. It is shown once and stored only hashed.

    With --collector-url, a second line holds the join string for
    'probemesh agent join': collector addresses, the certificate pin, agent id,
    country and token. It is shown once too.
    """
    from probemesh.enroll import (
        JoinString,
        pin_from_collector,
        pin_from_file,
        server_name_problem,
    )

    if (pin_cert or tls_server_name) and not collector_url:
        raise ConfigError("--pin-cert and --tls-server-name need --collector-url")
    if problem := server_name_problem(tls_server_name):
        raise ConfigError(f"--tls-server-name: {problem}")
    pin = ""
    if collector_url:
        # Settle the pin before a token exists: a failure leaves no orphan token.
        pin = (
            pin_from_file(pin_cert)
            if pin_cert
            else pin_from_collector(collector_url[0], tls_server_name)[0]
        )
    secret = _tokens(data_dir, database).create(agent_id, country)
    click.echo(secret)
    if collector_url:
        join = JoinString(tuple(collector_url), pin, agent_id, country, secret, tls_server_name)
        click.echo(join.encode())
        click.echo(
            f"join string pins {pin}; on the node run: probemesh agent join JOINSTRING",
            err=True,
        )


@token.command("list")
@_database_options
def token_list(data_dir: Path, database: str | None) -> None:
    """Show every token's id, agent, country, creation time and last use."""
    from probemesh.timefmt import rfc3339

    infos = _tokens(data_dir, database).list()
    click.echo(f"{'TOKEN ID':<10} {'AGENT':<24} {'CC':<3} {'CREATED':<21} {'LAST USED':<21} STATUS")
    for info in infos:
        status = "revoked" if info.revoked_at else "active"
        click.echo(
            f"{info.token_id:<10} {info.agent_id:<24} {info.country:<3} {rfc3339(info.created_at):<21} "
            f"{rfc3339(info.last_used) or '-':<21} {status}"
        )


@token.command("revoke")
@_database_options
@click.argument("selector")
def token_revoke(data_dir: Path, database: str | None, selector: str) -> None:
    """Revoke by token id or by agent id; live streams using it are cut within seconds."""
    count = _tokens(data_dir, database).revoke(selector)
    if not count:
        raise ConfigError(f"no active token matches {selector!r}")
    click.echo(f"revoked {count} token(s)")
