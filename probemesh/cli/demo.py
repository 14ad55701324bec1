"""probemesh demo: the whole mesh on loopback in one process."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import click

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
    default="127.0.0.1:9115",
    callback=options.listen,
    help="Collector HTTP address.",
)
@options.opt(
    "--grpc-listen",
    default="127.0.0.1:7443",
    callback=options.listen,
    help="Collector gRPC address.",
)
@options.opt(
    "--no-table",
    is_flag=True,
    default=False,
    help="Print a line per change instead of the live table.",
)
@options.LOG_LEVEL
def demo(**kw: Any) -> None:
    """Run a collector, 8 agents (BR PH UG DE ZA LT US JP) and a failing demo target."""
    from probemesh.demo import DemoOptions, run_demo

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    asyncio.run(
        run_demo(
            DemoOptions(kw["duration"], kw["http_listen"], kw["grpc_listen"], not kw["no_table"])
        )
    )
