"""Command line: ``python -m hessext {info,demo,bench}`` (also installed as the ``hessext`` script).

- ``info``: which kernel backend is active (``cuda``/``cpu``/``python``) and why, torch version, compiled CUDA
  architectures and build flags.
- ``demo``: delegates to ``hessext.demo.main(argv)``.
- ``bench``: the quick kernel benchmark (``benchmarks/bench_kernels.py --quick``) and, if present, the quick
  engine benchmark (``benchmarks/bench_engine.py --quick``); both need a source checkout.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from . import _backend, demo

ROOT = Path(__file__).resolve().parent.parent


def _cmd_info(args: argparse.Namespace) -> int:
    info = _backend.info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"hessext backend: {info['backend']}")
    if info["load_error"]:
        print(f"  compiled extension not used: {info['load_error']}")
    width = max(len(k) for k in info)
    for key, value in info.items():
        if key == "backend":
            continue
        if isinstance(value, list):
            value = " ".join(str(v) for v in value) if value else "-"
        print(f"  {key:<{width}}  {value}")
    return 0


def _cmd_demo(argv: list[str]) -> int:
    result = demo.main(argv)
    return int(result) if isinstance(result, int) else 0


def _cmd_bench(args: argparse.Namespace) -> int:
    scripts = [ROOT / "benchmarks" / "bench_kernels.py", ROOT / "benchmarks" / "bench_engine.py"]
    if not scripts[0].exists():
        print(f"benchmarks not found next to the package ({scripts[0]}): run from a source checkout.",
              file=sys.stderr)
        return 2
    status = 0
    for script in scripts:
        if not script.exists():
            print(f"(skipping {script.name}: not present)")
            continue
        cmd = [sys.executable, str(script)] + ([] if args.full else ["--quick"])
        print(f"$ {' '.join(cmd)}", flush=True)
        status = subprocess.call(cmd, cwd=str(ROOT)) or status
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m hessext`` and of the ``hessext`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="hessext", description="Fast Hessian analysis for PyTorch models.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_info = sub.add_parser("info", help="backend, torch version, compiled CUDA archs, build flags")
    p_info.add_argument("--json", action="store_true", help="print as JSON")
    sub.add_parser("demo", help="train a tiny transformer and write a Hessian report (hessext.demo)",
                   add_help=False)
    p_bench = sub.add_parser("bench", help="quick kernel (and engine) benchmarks")
    p_bench.add_argument("--full", action="store_true", help="run the full benchmarks instead of --quick")

    if argv and argv[0] == "demo":  # everything after `demo` belongs to hessext.demo
        return _cmd_demo(argv[1:])
    args = parser.parse_args(argv)
    if args.command == "info":
        return _cmd_info(args)
    return _cmd_bench(args)


if __name__ == "__main__":
    sys.exit(main())
