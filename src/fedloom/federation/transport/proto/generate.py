"""Regenerate ``fedloom_pb2*.py`` from ``fedloom.proto`` (needs grpcio-tools, a dev extra)."""

from __future__ import annotations

from pathlib import Path

from grpc_tools import protoc


def main() -> None:
    here = Path(__file__).resolve().parent
    root = here.parents[3]  # src/, so generated imports read fedloom.federation.transport.proto....
    code = protoc.main(["protoc", f"-I{root}", f"--python_out={root}", f"--pyi_out={root}",
                        f"--grpc_python_out={root}", str(here / "fedloom.proto")])
    if code != 0:
        raise SystemExit(f"protoc failed with exit code {code}")


if __name__ == "__main__":
    main()
