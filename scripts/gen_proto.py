"""Generate probemesh/v1/*_pb2*.py from proto/; the only way generated code is made.

Also generates probemesh/remotewrite/remote_pb2.py(i) from proto/prometheus/ (the
Prometheus remote-write messages: no gRPC service, a self-contained file).

Run ``python scripts/gen_proto.py`` after editing a .proto file.
``python scripts/gen_proto.py --check`` exits 1 when the committed code is stale
(tests/test_proto_generated.py runs it).
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
OUT_PACKAGE = Path("probemesh") / "v1"
PROMPB_ROOT = PROTO_ROOT / "prometheus"
PROMPB_PACKAGE = Path("probemesh") / "remotewrite"


def generate(out_dir: Path) -> list[Path]:
    """Compile every .proto under proto/ into out_dir; return generated files."""
    protos = sorted(
        str(p.relative_to(PROTO_ROOT))
        for p in PROTO_ROOT.rglob("*.proto")
        if not p.is_relative_to(PROMPB_ROOT)
    )
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    prompb_out = out_dir / PROMPB_PACKAGE
    prompb_out.mkdir(parents=True, exist_ok=True)
    prompb = sorted(str(p.relative_to(PROMPB_ROOT)) for p in PROMPB_ROOT.glob("*.proto"))
    prompb_args = [
        "protoc",
        f"-I{PROMPB_ROOT}",
        f"--python_out={prompb_out}",
        f"--pyi_out={prompb_out}",
        *prompb,
    ]
    if prompb and protoc.main(prompb_args) != 0:
        raise SystemExit("protoc failed (proto/prometheus)")
    return sorted((out_dir / OUT_PACKAGE).glob("*_pb2*.py*")) + sorted(
        prompb_out.glob("*_pb2*.py*")
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if generated code is stale")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        produced = generate(Path(tmp))
        stale = []
        for path in produced:
            rel = path.relative_to(tmp)
            target = ROOT / rel
            if args.check:
                if not target.exists() or not filecmp.cmp(path, target, shallow=False):
                    stale.append(str(rel))
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
    if stale:
        print("stale generated code (run scripts/gen_proto.py):", ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
