"""The one error hierarchy of probemesh.

ProbemeshError            base; the CLI catches it once and exits non-zero
├── ConfigError           a config/checks file, flag or module is invalid
│   ├── ModuleError       a blackbox module section is invalid
│   └── PinError          a collector's certificate does not match the join string's pin
├── AuthError             a token is missing, wrong, revoked or spoofed
└── StateError            the on-disk state (data-dir/state-dir) is unusable

A failed *probe* is not an exception: probes return a result with a failure
reason (see probemesh.agent.probes.result).
"""

from __future__ import annotations


class ProbemeshError(Exception):
    """Base class for every error probemesh raises on purpose."""


class ConfigError(ProbemeshError):
    """Invalid configuration; the message names the file, item and field."""


class ModuleError(ConfigError):
    """Invalid blackbox module settings; the message names the module and field."""


class PinError(ConfigError):
    """The collector failed the certificate pin: wrong join string or a man in the middle."""


class AuthError(ProbemeshError):
    """Authentication or identity failure."""


class StateError(ProbemeshError):
    """The persistent state directory cannot be used."""
