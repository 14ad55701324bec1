"""The probemesh command line: a thin layer over the collector, agent and demo.

Every option has an environment variable (PROBEMESH_<OPTION>) and may be set in
a YAML file given with --config (keys are option names). Errors are caught once
here: one clear line on stderr, exit status 2 for bad input.
"""

from __future__ import annotations

import sys

import click

# grpc_log first: it sets gRPC core's verbosity, which grpc reads when it loads.
from probemesh import __version__, grpc_log
from probemesh.cli.agent import agent
from probemesh.cli.collector import collector
from probemesh.cli.demo import demo
from probemesh.cli.tokens import token
from probemesh.errors import ConfigError, ProbemeshError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="probemesh")
def cli() -> None:
    """Multi-region synthetic probe mesh: agents in many countries, one collector."""


for command in (collector, agent, token, demo):
    cli.add_command(command)


def main() -> None:
    """Console entry point: one line per error, exit 2 for bad input."""
    grpc_log.BRIDGE.start()
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
