"""Shared option machinery: PROBEMESH_<OPTION> env vars, --config YAML, validating callbacks."""

from __future__ import annotations

import ipaddress
import logging
import re
import sys
from pathlib import Path
from typing import Any

import click
import yaml

from probemesh.collector.outbound import check_url
from probemesh.durations import parse_duration
from probemesh.errors import ConfigError
from probemesh.httpserver import parse_listen
from probemesh.identity import agent_id_problem, country_problem, valid_region
from probemesh.targets import split_host_port


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
    apply_defaults(ctx, data, value)
    return value


def apply_defaults(
    ctx: click.Context, data: dict[Any, Any], source: str, keep_existing: bool = False
) -> None:
    """Use a mapping of option names ("agent-id" or "agent_id") to values as defaults.

    With keep_existing, defaults already set (by --config) win over these.
    """
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
            raise click.BadParameter(f"{source}: unknown option {key!r}")
        defaults[name] = item
    current = ctx.default_map or {}
    ctx.default_map = {**defaults, **current} if keep_existing else {**current, **defaults}


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


def listen(_ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value:
        try:
            parse_listen(value)
        except ConfigError as exc:
            raise click.BadParameter(str(exc), param=param) from None
    return value


def agent_id(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is not None and (problem := agent_id_problem(value)):
        raise click.BadParameter(problem)
    return value


def collector_id(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}", value):
        raise click.BadParameter(
            "must be 1 to 128 letters, digits, '.', '_', ':' or '-', starting with a letter or digit"
        )
    return value


def country(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is not None and (problem := country_problem(value)):
        raise click.BadParameter(problem)
    return value


def region(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    if not valid_region(value):
        raise click.BadParameter("must be up to 63 letters, digits, spaces, '.', '_' or '-'")
    return value


def ip_address(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    if value:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise click.BadParameter(f"{value!r} is not an IP address") from None
    return value


def duration(_ctx: click.Context, param: click.Parameter, value: Any) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration(value, f"--{param.name}".replace("_", "-"))
    except ConfigError as exc:
        raise click.BadParameter(str(exc)) from None


def collectors(_ctx: click.Context, _param: click.Parameter, value: str | None) -> list[str]:
    if value is None:
        return []
    addresses = [a.strip() for a in value.split(",") if a.strip()]
    for address in addresses:
        try:
            split_host_port(address)
        except ConfigError as exc:
            raise click.BadParameter(str(exc)) from None
    if not addresses:
        raise click.BadParameter("at least one HOST:PORT is required")
    return addresses


def http_url(_ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value:
        try:
            check_url(value, param.opts[0])
        except ConfigError as exc:
            raise click.BadParameter(str(exc)) from None
    return value


def http_urls(
    _ctx: click.Context, param: click.Parameter, value: tuple[str, ...]
) -> tuple[str, ...]:
    for item in value:
        http_url(_ctx, param, item)
    return value


def external_labels(
    _ctx: click.Context, _param: click.Parameter, value: tuple[str, ...]
) -> dict[str, str]:
    labels: dict[str, str] = {}
    for item in value:
        name, sep, label_value = item.partition("=")
        if not sep or not re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", name) or name.startswith("__"):
            raise click.BadParameter(f"{item!r}: expected NAME=VALUE with a Prometheus label name")
        labels[name] = label_value
    return labels


def setup_logging(level: str) -> None:
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


def database_url(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """--database: a postgresql:// URL (libpq syntax); checked here, connected to later."""
    if not value:
        return None
    from probemesh.collector.database import check_url as check_database_url

    try:
        check_database_url(value)
    except ConfigError as exc:
        raise click.BadParameter(str(exc).removeprefix("--database: ")) from None
    return value
