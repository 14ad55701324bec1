"""probemesh demo: the whole mesh on loopback in one process."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import click

from probemesh import ports
from probemesh.cli import options


@click.command()
@options.opt(
    "--duration",
    type=click.FloatRange(min=1),
    default=None,
    help="Stop after this many seconds. [default: until Ctrl-C]",
)
@options.opt(
    "--http-listen",
    default=f"127.0.0.1:{ports.HTTP_PORT}",
    callback=options.listen,
    help="Collector HTTP address; when the default is taken, a free port is used.",
)
@options.opt(
    "--grpc-listen",
    default=f"127.0.0.1:{ports.GRPC_PORT}",
    callback=options.listen,
    help="Collector gRPC address; when the default is taken, a free port is used.",
)
@options.opt(
    "--no-table",
    is_flag=True,
    default=False,
    help="Print a line per change instead of the live table.",
)
@options.LOG_LEVEL
@click.pass_context
def demo(ctx: click.Context, **kw: Any) -> None:
    """Run a collector, 8 agents (BR PH UG DE ZA LT US JP) and a failing demo target."""
    from probemesh.demo import DemoOptions, run_demo

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # An address the user chose must be honoured (or fail clearly); a default
    # that another program holds is swapped for a free port.
    flexible = {
        name
        for name in ("http_listen", "grpc_listen")
        if ctx.get_parameter_source(name) is click.core.ParameterSource.DEFAULT
    }
    asyncio.run(
        run_demo(
            DemoOptions(
                kw["duration"],
                kw["http_listen"],
                kw["grpc_listen"],
                not kw["no_table"],
                flexible_ports=frozenset(flexible),
            )
        )
    )
