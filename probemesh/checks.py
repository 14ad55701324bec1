"""The collector's checks file: blackbox modules plus the checks that use them.

Loaded and fully validated at start-up and on every reload; an invalid file on
reload keeps the previous one in force (the collector logs the error).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from probemesh.durations import parse_duration
from probemesh.errors import ConfigError
from probemesh.identity import CHECK_NAME_RE, agent_id_problem, country_problem
from probemesh.modules import Module, parse_module
from probemesh.strict import build
from probemesh.targets import target_host
from probemesh.v1 import mesh_pb2 as pb

MIN_INTERVAL = 0.1  # agents enforce their own floor (--min-interval, default 5s)
DEFAULT_INTERVAL = 30.0
_CHECK_FIELDS = {"name", "target", "module", "interval", "countries", "agents"}


@dataclass(frozen=True)
class CheckSpec:
    """One validated check with its module resolved."""

    name: str
    target: str
    module: Module
    interval: float
    countries: frozenset[str]
    agents: frozenset[str]

    def applies_to(self, agent_id: str, country: str) -> bool:
        """Selectors: no selector means every agent; otherwise match either list."""
        if not self.countries and not self.agents:
            return True
        return country in self.countries or agent_id in self.agents

    def to_proto(self) -> pb.Check:
        return pb.Check(
            name=self.name,
            target=self.target,
            prober=self.module.prober,
            interval_seconds=self.interval,
            timeout_seconds=min(self.module.timeout, self.interval),
            settings_json=self.module.settings_json(),
            module=self.module.name,
        )


@dataclass(frozen=True)
class OutageSettings:
    """The optional top-level ``outage:`` section: thresholds of outage detection.

    See docs/outages.md for what each threshold does.
    """

    confirm_rounds: int = 2  # consecutive rounds before an agent's up/down verdict changes
    stale_after_intervals: float = 2.0  # a result older than this many intervals is ignored
    down_share: float = 0.5  # country down when more than this share of its agents fail
    global_share: float = 1.0  # global when at least this share of reporting countries is down
    close_after_rounds: int = 2  # an incident closes after the check is ok this many rounds
    local_problem_share: float = 0.9  # agent fails at least this share of its checks...
    local_problem_min_checks: int = 2  # ...and probes at least this many checks
    evaluate_every: float = 1.0  # seconds between two evaluations
    control_refresh: float = 300.0  # seconds between evidence requests to a control agent

    def validate(self, where: str) -> None:
        for name in ("confirm_rounds", "close_after_rounds", "local_problem_min_checks"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{where}.{name}: must be at least 1")
        if not 0.0 <= self.down_share < 1.0:  # NaN fails every comparison
            raise ConfigError(f"{where}.down_share: must be in [0, 1)")
        if not 0.0 < self.local_problem_share <= 1.0:
            raise ConfigError(f"{where}.local_problem_share: must be in (0, 1]")
        if not 0.0 < self.global_share <= 1.0:
            raise ConfigError(f"{where}.global_share: must be in (0, 1]")
        if not (1.0 <= self.stale_after_intervals < math.inf):
            raise ConfigError(f"{where}.stale_after_intervals: must be at least 1")
        if not 1.0 <= self.control_refresh <= 86400.0:
            raise ConfigError(f"{where}.control_refresh: must be between 1 and 86400 seconds")
        if not 0.1 <= self.evaluate_every <= 60.0:
            raise ConfigError(f"{where}.evaluate_every: must be between 0.1 and 60 seconds")


@dataclass(frozen=True)
class ChecksFile:
    """All modules and checks, plus a digest so reloads can tell what changed."""

    modules: dict[str, Module]
    checks: dict[str, CheckSpec]
    digest: str
    outage: OutageSettings = field(default_factory=OutageSettings)

    def for_agent(self, agent_id: str, country: str) -> list[CheckSpec]:
        """The checks assigned to one agent, in name order."""
        return [c for c in self.checks.values() if c.applies_to(agent_id, country)]


def _string_list(value: object, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: expected a list of strings")
    return value


def parse_check(raw: object, index: int, modules: dict[str, Module]) -> CheckSpec:
    """Validate one entry of ``checks:``; errors name the check and field."""
    if not isinstance(raw, dict):
        raise ConfigError(f"checks[{index}]: expected a mapping")
    name = raw.get("name")
    where = f"check {name!r}" if isinstance(name, str) else f"checks[{index}]"
    if not isinstance(name, str) or not CHECK_NAME_RE.match(name):
        raise ConfigError(f"{where}.name: must match {CHECK_NAME_RE.pattern}")
    unknown = sorted(set(raw) - _CHECK_FIELDS)
    if unknown:
        raise ConfigError(f"{where}: unknown field {unknown[0]!r}")
    module_name = raw.get("module")
    if module_name not in modules:
        raise ConfigError(
            f"{where}.module: unknown module {module_name!r} (defined: {', '.join(sorted(modules))})"
        )
    module = modules[module_name]
    target = raw.get("target")
    if not isinstance(target, str) or not target:
        raise ConfigError(f"{where}.target: required string")
    try:
        target_host(module.prober, target)
    except ConfigError as exc:
        raise ConfigError(f"{where}.target: {exc}") from None
    interval = parse_duration(raw.get("interval", f"{DEFAULT_INTERVAL}s"), f"{where}.interval")
    if interval < MIN_INTERVAL:
        raise ConfigError(f"{where}.interval: must be at least {MIN_INTERVAL:g}s")
    countries = _string_list(raw.get("countries"), f"{where}.countries")
    for code in countries:
        if problem := country_problem(code):
            raise ConfigError(f"{where}.countries: {problem}")
    agents = _string_list(raw.get("agents"), f"{where}.agents")
    for agent in agents:
        if problem := agent_id_problem(agent):
            raise ConfigError(f"{where}.agents: {problem}")
    return CheckSpec(name, target, module, interval, frozenset(countries), frozenset(agents))


def parse_checks(data: object, source: str = "<checks>") -> ChecksFile:
    """Validate a whole checks document (already parsed from YAML)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping with 'modules' and 'checks'")
    unknown = sorted(set(data) - {"modules", "checks", "outage"})
    if unknown:
        raise ConfigError(f"{source}: unknown top-level field {unknown[0]!r}")
    raw_modules = data.get("modules") or {}
    if not isinstance(raw_modules, dict):
        raise ConfigError(f"{source}: 'modules' must be a mapping of name to module")
    modules = {str(name): parse_module(str(name), raw) for name, raw in raw_modules.items()}
    raw_checks = data.get("checks") or []
    if not isinstance(raw_checks, list):
        raise ConfigError(f"{source}: 'checks' must be a list")
    checks: dict[str, CheckSpec] = {}
    for index, raw in enumerate(raw_checks):
        spec = parse_check(raw, index, modules)
        if spec.name in checks:
            raise ConfigError(f"check {spec.name!r}: duplicate name")
        checks[spec.name] = spec
    outage = build(OutageSettings, data.get("outage"), f"{source}: outage")
    digest = hashlib.sha256(yaml.safe_dump(data, sort_keys=True).encode()).hexdigest()[:16]
    checks = dict(sorted(checks.items()))
    return ChecksFile(modules=modules, checks=checks, digest=digest, outage=outage)


def load_checks(path: str | Path) -> ChecksFile:
    """Read and validate a checks file; ConfigError names the file and the problem."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read checks file: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    try:
        return parse_checks(data, str(path))
    except ConfigError as exc:
        message = str(exc)
        raise ConfigError(
            message if message.startswith(str(path)) else f"{path}: {message}"
        ) from None
