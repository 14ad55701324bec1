"""Generated protobuf code must match proto/: edit the .proto, then run the script."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_generated_code_is_fresh() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_every_proto_message_and_field_is_commented() -> None:
    """The .proto is a documented contract: no message, field or enum value without a comment."""
    for path in (ROOT / "proto" / "probemesh").rglob("*.proto"):
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            stripped = line.strip()
            declares = stripped.startswith(("message ", "enum ", "service ", "rpc ")) or (
                "=" in stripped
                and stripped.endswith(";")
                and not stripped.startswith(("syntax", "option", "package"))
            )
            if declares:
                previous = lines[i - 1].strip() if i else ""
                assert previous.startswith("//"), (
                    f"{path.name}:{i + 1}: {stripped!r} has no comment"
                )
