"""probemesh collector: accept agents, push checks, export metrics, detect outages."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import click

from probemesh import grpc_log, ports
from probemesh.cli import options
from probemesh.errors import ConfigError
from probemesh.grpc_options import is_loopback

log = logging.getLogger("probemesh")


@click.command()
@options.config_option
@options.opt(
    "--checks",
    "checks_path",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Checks file (blackbox modules + checks). Required.",
)
@options.opt(
    "--grpc-listen",
    default=f"0.0.0.0:{ports.GRPC_PORT}",
    callback=options.listen,
    help="Address for agent streams.",
)
@options.opt(
    "--http-listen",
    default=f"0.0.0.0:{ports.HTTP_PORT}",
    callback=options.listen,
    help="Address for /metrics, API and status page.",
)
@options.opt(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default="probemesh-data",
    help="Directory for pending webhook events and the remote-write journal, and, without "
    "--database, for the SQLite database (tokens, dedupe marks, counters, incidents).",
)
@options.opt(
    "--database",
    default=None,
    metavar="URL",
    callback=options.database_url,
    help="PostgreSQL database shared by the collectors of one mesh (postgresql://user:pass@host/db, "
    "a libpq URL): tokens, marks, counters, assignment history and incidents live there; "
    "pending webhook events and the remote-write journal stay in --data-dir. "
    "[default: SQLite in --data-dir]",
)
@options.opt(
    "--asn-db",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="IP-to-ASN database for the diagnosis: a MaxMind ASN .mmdb file, or an ip2asn "
    "TSV (range_start, range_end, AS number, ...). [default: none; no ASNs shown]",
)
@options.opt(
    "--tls-cert",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Server certificate (PEM) for gRPC TLS. [default: none]",
)
@options.opt(
    "--tls-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Server private key (PEM). [default: none]",
)
@options.opt(
    "--tls-client-ca",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="CA bundle for mTLS: agents must present a certificate it signed. [default: none]",
)
@options.opt(
    "--insecure",
    is_flag=True,
    default=False,
    help="Allow plaintext gRPC on a non-loopback address.",
)
@options.opt(
    "--max-batch-results",
    type=click.IntRange(1, 100_000),
    default=5000,
    help="Largest ResultBatch accepted from an agent.",
)
@options.opt(
    "--series-ttl",
    callback=options.duration,
    default="15m",
    help="Forget the gauges of an agent disconnected for this long.",
)
@options.opt(
    "--max-message-bytes",
    type=click.IntRange(64 * 1024, 256 * 1024 * 1024),
    default=4 * 1024 * 1024,
    help="Largest gRPC message accepted from an agent; larger: RESOURCE_EXHAUSTED.",
)
@options.opt(
    "--rate-limit",
    type=click.FloatRange(min=0),
    default=20000.0,
    help="Results per second per agent (token bucket); above: RESOURCE_EXHAUSTED. 0 disables.",
)
@options.opt(
    "--rate-burst",
    type=click.FloatRange(min=1),
    default=200000.0,
    help="Results an agent may send at once after a quiet period; at least --max-batch-results.",
)
@options.opt(
    "--max-series-per-agent",
    type=click.IntRange(1, 10**8),
    default=50_000,
    help="Probe series (label sets) exported per agent; beyond: rejected{reason=cardinality}.",
)
@options.opt(
    "--max-series",
    type=click.IntRange(1, 10**9),
    default=5_000_000,
    help="Probe series (label sets) exported over all agents.",
)
@options.opt(
    "--max-samples-per-result",
    type=click.IntRange(1, 10_000),
    default=64,
    help="Blackbox samples kept from one result.",
)
@options.opt(
    "--api-auth",
    default=None,
    help="Credentials file (or env:NAME) required for / and /api/*: lines 'bearer TOKEN' or "
    "'basic USER:PASSWORD'. [default: open]",
)
@options.opt(
    "--metrics-auth",
    default=None,
    help="Credentials file (or env:NAME) required for /metrics, same format. [default: open]",
)
@options.opt(
    "--remote-write-url",
    default=None,
    help="Prometheus remote-write endpoint: every result's probe samples at the probe's own "
    "time, plus the other metrics every --remote-write-interval. [default: none]",
)
@options.opt(
    "--remote-write-interval",
    callback=options.duration,
    default="15s",
    help="How often to snapshot and remote-write the aggregate metrics (counters, outages).",
)
@options.opt(
    "--remote-write-journal-mb",
    type=click.IntRange(min=1),
    default=1024,
    help="Cap, in MiB, of the on-disk journal of result samples waiting for the receiver; "
    "past it the oldest are dropped and counted. [default: 1024]",
)
@options.opt(
    "--external-label",
    "external_labels",
    multiple=True,
    callback=options.external_labels,
    help="NAME=VALUE added to every remote-written series, alert and webhook post, e.g. "
    "collector=eu-1; repeatable. Give each collector a distinct one. [default: none]",
)
@options.opt(
    "--external-url",
    default=None,
    callback=options.http_url,
    help="URL users reach the status page at; alerts and webhooks link incidents under it. "
    "[default: http://<listen host or hostname>:<HTTP port>/]",
)
@options.opt(
    "--alertmanager-url",
    "alertmanager_urls",
    multiple=True,
    callback=options.http_urls,
    help="Alertmanager to send incident alerts to (base URL, e.g. http://am:9093); repeatable: "
    "every one gets every alert. [default: none]",
)
@options.opt(
    "--alertmanager-resend",
    callback=options.duration,
    default="1m",
    help="Re-send the open incidents' alerts this often (Alertmanager keeps them in memory).",
)
@options.opt(
    "--alertmanager-timeout",
    callback=options.duration,
    default="10s",
    help="Timeout of one post to an Alertmanager.",
)
@options.opt(
    "--alertmanager-auth",
    default=None,
    help="Credentials file (or env:NAME) for Alertmanager, one line 'bearer TOKEN' or "
    "'basic USER:PASSWORD' (the --api-auth syntax). [default: none]",
)
@options.opt(
    "--alertmanager-ca",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="CA bundle (PEM) that signed the Alertmanagers' certificates. [default: system CAs]",
)
@options.opt(
    "--alertmanager-cert",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Client certificate (PEM) for mutual TLS with Alertmanager. [default: none]",
)
@options.opt(
    "--alertmanager-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Private key (PEM) of --alertmanager-cert. [default: none]",
)
@options.opt(
    "--alertmanager-local-problems",
    is_flag=True,
    default=False,
    help="Also send a ProbemeshAgentLocalProblem alert (severity=info) per flagged agent. "
    "[default: off]",
)
@options.opt(
    "--webhook-url",
    "webhook_urls",
    multiple=True,
    callback=options.http_urls,
    help="URL to POST every incident event to as signed JSON; repeatable. [default: none]",
)
@options.opt(
    "--webhook-secret-file",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="File holding the HMAC-SHA256 secret that signs webhook posts (at least 16 bytes). "
    "Required with --webhook-url. [default: none]",
)
@options.opt(
    "--webhook-ca",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="CA bundle (PEM) that signed the webhook receivers' certificates. [default: system CAs]",
)
@options.opt(
    "--collector-id",
    default=None,
    callback=options.collector_id,
    help="This collector's name in agent leases, logs, /metrics and /api/v1/collector; "
    "give each collector sharing a database its own. [default: hostname:gRPC port-random, "
    "new at every start]",
)
@options.opt(
    "--clock-skew-threshold",
    callback=options.duration,
    default="1s",
    help="An agent clock off by more than this is flagged, and its result times corrected.",
)
@options.LOG_LEVEL
def collector(**kw: Any) -> None:
    """Accept agents, push checks, export metrics and detect outages."""
    from probemesh.collector.asn import load_asn_db
    from probemesh.collector.httpauth import HttpAuth, load_client_authorization, load_credentials
    from probemesh.collector.ingest import IngestLimits
    from probemesh.collector.limits import SecurityLimits
    from probemesh.collector.main import CollectorOptions, run_collector
    from probemesh.collector.outbound import ClientSettings
    from probemesh.collector.webhooks import load_secret

    options.setup_logging(kw["log_level"])
    grpc_log.BRIDGE.report_handshakes = True
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
    if bool(kw["alertmanager_cert"]) != bool(kw["alertmanager_key"]):
        raise ConfigError("--alertmanager-cert and --alertmanager-key must be given together")
    if kw["webhook_urls"] and not kw["webhook_secret_file"]:
        raise ConfigError("--webhook-url needs --webhook-secret-file: every post is signed")
    alertmanager_client = ClientSettings(
        ca_file=kw["alertmanager_ca"],
        cert_file=kw["alertmanager_cert"],
        key_file=kw["alertmanager_key"],
        authorization=load_client_authorization(kw["alertmanager_auth"], "--alertmanager-auth")
        if kw["alertmanager_auth"]
        else None,
        timeout=kw["alertmanager_timeout"],
    )
    alertmanager_client.ssl_context()  # unreadable or mismatched files fail now, not later
    webhook_client = ClientSettings(ca_file=kw["webhook_ca"])
    webhook_client.ssl_context()
    settings = CollectorOptions(
        checks_path=kw["checks_path"],
        grpc_listen=kw["grpc_listen"],
        http_listen=kw["http_listen"],
        data_dir=kw["data_dir"],
        database=kw["database"],
        asn=load_asn_db(kw["asn_db"]),
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
        remote_write_journal_bytes=kw["remote_write_journal_mb"] << 20,
        external_labels=kw["external_labels"],
        external_url=kw["external_url"],
        alertmanager_urls=list(kw["alertmanager_urls"]),
        alertmanager_resend=kw["alertmanager_resend"],
        alertmanager_client=alertmanager_client,
        alertmanager_local_problems=kw["alertmanager_local_problems"],
        webhook_urls=list(kw["webhook_urls"]),
        webhook_secret=load_secret(kw["webhook_secret_file"]) if kw["webhook_secret_file"] else b"",
        webhook_client=webhook_client,
        clock_skew_threshold=kw["clock_skew_threshold"],
        collector_id=kw["collector_id"],
    )
    asyncio.run(run_collector(settings))
