"""Which files a probe may read: only names inside the operator's ``--secrets-dir``.

Settings come from the collector, and an attacker may control a collector that
agents trust. Were ``bearer_token_file: /etc/shadow`` honoured, the agent would
read that file and send it in a header to a target of the collector's choice.
So every file named in pushed settings (``bearer_token_file``,
``basic_auth.password_file``, ``tls_config.ca_file``/``cert_file``/``key_file``)
is a name relative to a directory the agent's operator chose. Absolute paths,
``..`` and symlinks leading out of it are refused before anything is opened,
and with no directory every file reference is refused.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from probemesh.agent.probes.result import ProbeFailure, Reason
from probemesh.modules import file_name_problem

log = logging.getLogger(__name__)


class SecretFiles:
    """Resolves file names from pushed settings inside one directory, or refuses them."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(os.path.realpath(root)) if root is not None else None
        self._logged: set[tuple[str, str]] = set()

    def path(self, setting: str, name: str) -> Path:
        """The real path of name inside the secrets dir; ProbeFailure naming setting if refused.

        The file itself is not opened here; a refusal is logged once per (setting, name).
        """
        problem = file_name_problem(name)
        if not problem and self.root is None:
            problem = "is refused: this agent has no --secrets-dir, so it reads no files"
        if not problem:
            assert self.root is not None
            real = Path(os.path.realpath(self.root / name))
            if real != self.root and self.root not in real.parents:
                problem = "leads out of the agent's --secrets-dir (symlink)"
            else:
                return real
        message = f"{setting}: {name!r} {problem}"
        if (setting, name) not in self._logged:
            self._logged.add((setting, name))
            log.warning("refusing a file named in pushed settings: %s", message)
        raise ProbeFailure(Reason.OTHER, message)

    def read_text(self, setting: str, name: str) -> str:
        """The file's text, stripped, as blackbox reads token and password files."""
        path = self.path(setting, name)
        try:
            return path.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            detail = exc.strerror if isinstance(exc, OSError) else str(exc)
            raise ProbeFailure(Reason.OTHER, f"{setting}: cannot read {name!r}: {detail}") from None

    def read_bytes(self, setting: str, name: str) -> bytes:
        path = self.path(setting, name)
        try:
            return path.read_bytes()
        except OSError as exc:
            raise ProbeFailure(
                Reason.OTHER, f"{setting}: cannot read {name!r}: {exc.strerror}"
            ) from None
