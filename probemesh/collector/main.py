"""Wire the collector together and run it until SIGTERM/SIGINT; SIGHUP reloads checks."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from prometheus_client import CollectorRegistry

from probemesh import ports
from probemesh.checks import ChecksFile, load_checks
from probemesh.collector import gc_pauses, heap, runnable
from probemesh.collector.alertmanager import AlertmanagerNotifier
from probemesh.collector.asn import AsnLookup, NoAsnDatabase
from probemesh.collector.assignments import AssignmentHistory
from probemesh.collector.database import DatabaseError, open_database
from probemesh.collector.diagnosis import Diagnoser
from probemesh.collector.exporter import (
    AggregateView,
    BulkView,
    MeshExporter,
    RestView,
)
from probemesh.collector.http import build_http_app
from probemesh.collector.httpauth import HttpAuth
from probemesh.collector.incidents import IncidentBook, OutageMonitor
from probemesh.collector.ingest import Ingest, IngestLimits
from probemesh.collector.leases import LeaseBook, default_collector_id
from probemesh.collector.limits import SecurityLimits
from probemesh.collector.looplag import LoopLag
from probemesh.collector.notify import Notifications, Notifier
from probemesh.collector.outbound import ClientSettings
from probemesh.collector.outbox import Outbox
from probemesh.collector.remote_results import Journal
from probemesh.collector.remote_write import RemoteWriteMetrics, RemoteWriter
from probemesh.collector.service import ProbeMeshService
from probemesh.collector.sessions import SessionRegistry
from probemesh.collector.shared import Election, SharedVerdicts
from probemesh.collector.state import MeshState
from probemesh.collector.store import Store
from probemesh.collector.tokens import RevocationWatch, TokenStore
from probemesh.collector.webhooks import WebhookNotifier
from probemesh.collector.work_lane import WorkLane
from probemesh.errors import ConfigError, ProbemeshError
from probemesh.grpc_options import server_options
from probemesh.httpserver import parse_listen, start_site
from probemesh.v1 import mesh_pb2 as pb

log = logging.getLogger(__name__)

PRUNE_EVERY = 600.0  # seconds between two prunings of the assignment history


@dataclass
class CollectorOptions:
    """Everything the collector needs, already validated by the CLI."""

    checks_path: Path
    grpc_listen: str = f"0.0.0.0:{ports.GRPC_PORT}"
    http_listen: str = f"0.0.0.0:{ports.HTTP_PORT}"
    data_dir: Path = Path("probemesh-data")
    database: str | None = None  # a postgresql:// URL; None: SQLite in data_dir
    asn: AsnLookup = field(default_factory=NoAsnDatabase)  # --asn-db, loaded by the CLI
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    series_ttl: float = 900.0
    max_message_bytes: int = 4 * 1024 * 1024
    limits: IngestLimits = field(default_factory=IngestLimits)
    security: SecurityLimits = field(default_factory=SecurityLimits)
    http_auth: HttpAuth = field(default_factory=HttpAuth)
    remote_write_url: str | None = None
    remote_write_interval: float = 15.0
    remote_write_journal_bytes: int = 1 << 30
    external_labels: dict[str, str] = field(default_factory=dict)
    external_url: str | None = None  # the status page as users reach it
    alertmanager_urls: list[str] = field(default_factory=list)
    alertmanager_resend: float = 60.0
    alertmanager_client: ClientSettings = field(default_factory=ClientSettings)
    alertmanager_local_problems: bool = False
    webhook_urls: list[str] = field(default_factory=list)
    webhook_secret: bytes = b""
    webhook_client: ClientSettings = field(default_factory=ClientSettings)
    clock_skew_threshold: float = 1.0
    collector_id: str | None = None  # None: default_collector_id(grpc_listen)


class CollectorApp:
    """Holds the collector's parts; run() serves gRPC and HTTP until stopped."""

    def __init__(self, options: CollectorOptions) -> None:
        self.options = options
        self.checks_file: ChecksFile = load_checks(options.checks_path)
        _warn_unrunnable(self.checks_file)
        self.database = open_database(options.database, options.data_dir)
        self.database.claim()
        log.info("collector database: %s (%s)", self.database.display, self.database.dialect)
        self.store = Store(self.database)
        self.history = AssignmentHistory(
            self.store, self.checks_file.digest, writer=self.store.worker
        )
        log.info(
            "loaded %d checks from %s (revision %d)",
            len(self.checks_file.checks),
            options.checks_path,
            self.history.revision,
        )
        self.tokens = TokenStore(self.store.db, self.store.worker)
        self.revocations = RevocationWatch(self.tokens)
        self.state = MeshState()
        self.state.configured = frozenset(self.checks_file.checks)
        self.state.restore(self.store.load_counters(), self.store.load_histograms())
        now = time.time()
        for check, agent_id in list(self.state.tallies):
            # Removed while the collector was down: its agents may still replay results.
            if check not in self.checks_file.checks and self.history.knows(agent_id, check):
                self.state.linger(check, now)
        self.remote_writer: RemoteWriter | None = None
        self.registry = CollectorRegistry()
        self.bulk_registry = CollectorRegistry()
        if options.remote_write_url:
            self.remote_writer = RemoteWriter(
                self.registry,
                options.remote_write_url,
                interval=options.remote_write_interval,
                external_labels=options.external_labels,
                metrics_registry=self.registry,
                journal=Journal(
                    options.data_dir / "remote-write.sqlite3", options.remote_write_journal_bytes
                ),
                bulk_registry=self.bulk_registry,
            )
        self.leases = LeaseBook(options.collector_id or default_collector_id(options.grpc_listen))
        # One lane for the heavy work (decoding, ingest, outage rounds, pre-render):
        # a few milliseconds of it per loop iteration, whatever is queued.
        self.lane = WorkLane()
        self.ingest = Ingest(
            self.state,
            self.store,
            self.history,
            options.limits,
            result_sink=self.remote_writer.write_results if self.remote_writer else None,
            leases=self.leases,
            lane=self.lane,
        )
        self.sessions = SessionRegistry()
        self.service = ProbeMeshService(
            self.state,
            self.ingest,
            self.tokens,
            self.sessions,
            lambda: self.checks_file,
            self.history,
            self.lane,
        )
        self._external_url: str | None = None
        book = IncidentBook(self.database)
        self.notifications = Notifications(book, self._notifiers())
        shared = election = None
        if self.database.dialect == "postgresql":  # a mesh: publish there, evaluate if elected
            shared = SharedVerdicts(self.database, self.leases.holder)
            election = Election(self.database, self.leases.holder)
        self.outage = OutageMonitor(
            self.state,
            lambda: self.checks_file,
            book,
            notifications=self.notifications,
            diagnoser=Diagnoser(self.state.evidence, options.asn, self._ask),
            shared=shared,
            election=election,
            lane=self.lane,
            ask_here=self._ask_here,
        )
        self.loop_lag = LoopLag()
        self.gc_pauses = gc_pauses.GcPauses()
        self.exporter = MeshExporter(
            self.state,
            self.ingest,
            lambda: self.checks_file,
            lambda: len(self.sessions),
            extra=[
                self.outage.metric_families,
                self.notifications.metric_families,
                self.loop_lag.metric_families,
                self.gc_pauses.metric_families,
                self.leases.metric_families,
                self.service.admission.metric_families,
                self.database.metric_families,
            ],
            stream_rejected=self.service.rejected,
        )
        self.service.configure(options.security, options.max_message_bytes)
        self.ingest.configure(options.security)
        self.service.clock_threshold = options.clock_skew_threshold
        self.exporter.configure(options.security)
        # Remote write journals every result's probe gauges: its snapshots take the
        # rest, the per-pair counters at a longer interval.
        self.registry.register(AggregateView(self.exporter))
        self.bulk_registry.register(BulkView(self.exporter))
        # /metrics renders the exporter's bulk families from cached text and
        # everything else from this registry.
        self.metrics_registry = CollectorRegistry(auto_describe=False)
        self.metrics_registry.register(RestView(self.exporter))
        if self.remote_writer is not None:
            # Scraped too: a failing remote write must be visible without it.
            self.metrics_registry.register(RemoteWriteMetrics(self.remote_writer))
        self.ready = False
        self._next_prune = 0.0
        self.grpc_port = 0
        self.http_port = 0
        self.http_app = build_http_app(self)

    def _ask(self, agent_id: str, request: pb.EvidenceRequest) -> bool:
        """Send an evidence request to an agent connected here, or in a mesh through the
        collector serving it; False when neither can."""
        return self._ask_here(agent_id, request) or self.outage.relay(agent_id, request)

    def _ask_here(self, agent_id: str, request: pb.EvidenceRequest) -> bool:
        """Send an evidence request to an agent connected here; False when it is not."""
        session = self.sessions.by_agent.get(agent_id)
        if session is None:
            return False
        session.send(pb.CollectorMessage(evidence_request=request))
        return True

    def _notifiers(self) -> list[Notifier]:
        opts = self.options
        notifiers: list[Notifier] = []
        if opts.alertmanager_urls:
            notifiers.append(
                AlertmanagerNotifier(
                    opts.alertmanager_urls,
                    resend=opts.alertmanager_resend,
                    external_labels=opts.external_labels,
                    external_url=self.external_url,
                    client=opts.alertmanager_client,
                    local_problem_alerts=opts.alertmanager_local_problems,
                )
            )
        if opts.webhook_urls:
            notifiers.append(
                WebhookNotifier(
                    opts.webhook_urls,
                    opts.webhook_secret,
                    Outbox(opts.data_dir),
                    external_labels=opts.external_labels,
                    external_url=self.external_url,
                    client=opts.webhook_client,
                )
            )
        return notifiers

    def external_url(self) -> str:
        """--external-url, else http://<listen host, or this host's name>:<HTTP port>/."""
        if self._external_url is None:
            if self.options.external_url:
                self._external_url = self.options.external_url
            else:
                host, _ = parse_listen(self.options.http_listen)
                if host in ("", "0.0.0.0", "::"):
                    host = socket.getfqdn()  # may ask DNS: once, not per evaluation
                elif ":" in host:
                    host = f"[{host}]"
                self._external_url = f"http://{host}:{self.http_port}/"
        return self._external_url

    def reload(self) -> bool:
        """Re-read the checks file; keep the old one if the new one is invalid."""
        try:
            new = load_checks(self.options.checks_path)
        except ProbemeshError as exc:
            log.error("reload failed, keeping the previous checks: %s", exc)
            return False
        if new.digest == self.checks_file.digest:
            log.info("reload: checks file unchanged")
            return True
        removed = self.checks_file.checks.keys() - new.checks.keys()
        self.checks_file = new
        _warn_unrunnable(new)
        revision = self.history.new_revision(new.digest)
        self.state.configured = frozenset(new.checks)
        self.state.forget_checks(
            {name: spec.target for name, spec in new.checks.items()}, removed, time.time()
        )
        pushed = self.service.push_checks()
        log.info(
            "reloaded %d checks (revision %d); pushed to %d agents",
            len(new.checks),
            revision,
            pushed,
        )
        return True

    @property
    def grpc_security(self) -> str:
        """How agents must connect: plaintext, TLS, or mTLS (client certificates required)."""
        opts = self.options
        if not (opts.tls_cert and opts.tls_key):
            return "plaintext"
        return "mTLS, client certificates required" if opts.tls_client_ca else "TLS"

    @property
    def revision(self) -> int:
        """The checks file's revision; it never goes back, restarts included."""
        return self.history.revision

    def _bind_grpc(self, server: grpc.aio.Server) -> int:
        opts = self.options
        creds = None
        if opts.tls_cert and opts.tls_key:
            try:
                creds = grpc.ssl_server_credentials(
                    [(opts.tls_key.read_bytes(), opts.tls_cert.read_bytes())],
                    root_certificates=opts.tls_client_ca.read_bytes()
                    if opts.tls_client_ca
                    else None,
                    require_client_auth=opts.tls_client_ca is not None,
                )
            except OSError as exc:
                raise ConfigError(f"TLS files: {exc}") from None
        try:
            if creds is not None:
                port = server.add_secure_port(opts.grpc_listen, creds)
            else:
                port = server.add_insecure_port(opts.grpc_listen)
        except RuntimeError:  # grpcio raises when the address is taken
            port = 0
        if not port:
            raise ConfigError(f"--grpc-listen: cannot listen on {opts.grpc_listen}")
        return port

    async def run(self, stop: asyncio.Event) -> None:
        server = grpc.aio.server(options=server_options(self.options.max_message_bytes))
        self.service.add_to_server(server)
        self.grpc_port = self._bind_grpc(server)
        await server.start()
        http_runner = await start_site(self.http_app, self.options.http_listen)
        self.http_port = http_runner.addresses[0][1]
        self.external_url()  # fixed now that the port is known
        applier = asyncio.create_task(self.ingest.run())
        housekeeping = asyncio.create_task(self._housekeeping())
        lag = asyncio.create_task(self.loop_lag.run())
        trimmer = asyncio.create_task(heap.trim_periodically())
        await self.notifications.start()
        outage = asyncio.create_task(self.outage.run())
        if self.remote_writer is not None:
            await self.remote_writer.start()
        self.ready = True
        log.info(
            "collector %s serving gRPC (%s) on %s, HTTP on %s",
            self.leases.holder,
            self.grpc_security,
            self.options.grpc_listen,
            self.options.http_listen,
        )
        self.gc_pauses.start()
        try:
            await stop.wait()
        finally:
            self.ready = False
            self.ingest.stop_accepting()
            housekeeping.cancel()
            lag.cancel()
            self.gc_pauses.stop()
            outage.cancel()
            trimmer.cancel()
            await asyncio.gather(housekeeping, outage, lag, trimmer, return_exceptions=True)
            await self.notifications.stop()
            await applier  # drains what was queued: ack only what was applied
            if self.remote_writer is not None:
                await self.remote_writer.stop()  # a last snapshot after the drain
            for session in list(self.sessions.by_agent.values()):
                session.end(grpc.StatusCode.UNAVAILABLE, "collector shutting down")
            await server.stop(grace=2)
            await http_runner.cleanup()
            await self.tokens.close_thread()
            self.store.close()
            self.outage.book.close()
            self.database.release()
            log.info("collector stopped")

    async def _housekeeping(self) -> None:
        """Cut revoked tokens' streams, expire gone agents, pre-render changed series
        (the histograms' text only while scrapes read it: MeshExporter.pre_rendering);
        the pre-render stops after 0.8 s, so the chores after it still run."""
        exporter = self.exporter
        while True:
            await asyncio.sleep(1.0)
            until = time.monotonic() + 0.8
            await self.lane.run(exporter.prerender_steps(exporter.pre_rendering, until))
            live = [(s.opened, s.token_id) for s in self.sessions.by_agent.values()]
            try:
                revoked = await self.tokens.in_thread(
                    self.revocations.inactive, live, time.monotonic()
                )
            except DatabaseError as exc:  # checked again in a second
                log.warning("cannot check tokens for revocation: %s", exc)
                revoked = set()
            if revoked:
                self.sessions.end_tokens(revoked, "token revoked")
            try:
                await self.service.close_taken_over()
            except Exception as exc:  # polled again in a second; the fence stays exact meanwhile
                log.warning("cannot poll agent leases: %s", exc)
            now = time.time()
            horizon = now - self.options.series_ttl
            for agent in list(self.state.agents.values()):
                if not agent.connected and agent.last_seen < horizon:
                    self.state.forget_agent(agent.agent_id)
                    self.service.limiter.forget(agent.agent_id)
            self.state.forget_unassigned(horizon)
            self.state.expire_lingering(horizon)
            if now >= self._next_prune:
                self._next_prune = now + PRUNE_EVERY
                pruned = self.history.prune(now)
                if pruned:
                    log.info("pruned %d expired assignment spans", pruned)


def _warn_unrunnable(checks: ChecksFile) -> None:
    """Checks no agent will run, whatever its flags; per-agent refusals are
    warned about when the checks are assigned (see ProbeMeshService)."""
    for check, message in sorted(runnable.refused_everywhere(checks).items()):
        log.warning("check %s cannot run on any agent: %s", check, message)


async def run_collector(options: CollectorOptions) -> None:
    app = CollectorApp(options)
    gc_pauses.tune()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, app.reload)
    await app.run(stop)
