"""Generate the gRPC Python modules from proto/ into hwnas/rpc/ (run after editing a .proto):

    python -m hwnas.rpc.codegen

The proto folder is mapped onto this package, so generated imports read
``from hwnas.rpc.v1 import predictor_pb2`` and never touch a top-level ``proto`` package.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTOS = ["v1/predictor.proto"]


def generate(out_dir: Path) -> None:
    import grpc_tools
    from grpc_tools import protoc

    include = Path(grpc_tools.__file__).parent / "_proto"
    for rel in PROTOS:
        args = ["protoc", f"-I{include}", f"-Ihwnas/rpc={ROOT / 'proto'}",
                f"--python_out={out_dir}", f"--grpc_python_out={out_dir}",
                f"--pyi_out={out_dir}", f"hwnas/rpc/{rel}"]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {rel}")


if __name__ == "__main__":
    generate(ROOT)
    sys.exit(0)
