"""CUDA verification without a GPU (``make cuda-check``; CI runs it with the venv's python).

1. Builds the full extension (C++ + CUDA kernels) out of tree, in a temporary directory, against the torch
   in this environment (a CPU-only wheel is fine) for sm_80 and sm_90 with ``-Xptxas -v``; the build
   compiles and *links* the ``.abi3.so`` (libcudart from ``CUDA_HOME``).
2. Parses ptxas's report and prints registers, stack frame and spill bytes per kernel and architecture.
3. Loads the linked shared object in a fresh interpreter (without importing hessext) and checks that both
   ops got a CUDA kernel registered.

Exits non-zero on a failed build, any spill store/load, no kernel found for an architecture, or a failed
load. The source tree is not modified (``HESSEXT_NO_BUILD_INFO=1``).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ARCHS = ["8.0", "9.0"]

_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(sm_\d+a?)'")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_REGS = re.compile(r"Used (\d+) registers")


@dataclass
class KernelReport:
    name: str
    arch: str
    registers: int = -1
    stack: int = 0
    spill_stores: int = 0
    spill_loads: int = 0


def parse_ptxas(log: str) -> list[KernelReport]:
    """Kernel reports from ``ptxas -v`` output (one per entry function and architecture)."""
    reports: list[KernelReport] = []
    current: KernelReport | None = None
    for line in log.splitlines():
        m = _ENTRY.search(line)
        if m:
            current = KernelReport(m.group(1), m.group(2))
            reports.append(current)
            continue
        if current is None:
            continue
        m = _FRAME.search(line)
        if m:
            current.stack, current.spill_stores, current.spill_loads = map(int, m.groups())
            continue
        m = _REGS.search(line)
        if m:
            current.registers = int(m.group(1))
    return reports


def demangle(names: list[str]) -> list[str]:
    tool = shutil.which("c++filt")
    if not tool or not names:
        return names
    out = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    return out if len(out) == len(names) else names


def find_cuda_home() -> str | None:
    for c in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if c and (Path(c) / "bin" / "nvcc").exists():
            return c
    return None


def build(tmp: Path, cuda_home: str, archs: list[str]) -> tuple[int, str]:
    env = dict(os.environ)
    env.update(
        CUDA_HOME=cuda_home,
        FORCE_CUDA="1",
        TORCH_CUDA_ARCH_LIST=";".join(archs),
        HESSEXT_NVCC_FLAGS=(env.get("HESSEXT_NVCC_FLAGS", "") + " -Xptxas -v").strip(),
        HESSEXT_NO_BUILD_INFO="1",
        MAX_JOBS=env.get("MAX_JOBS", "2"),
    )
    cmd = [sys.executable, "setup.py", "-q", "build_ext", "--build-temp", str(tmp / "temp"),
           "--build-lib", str(tmp / "lib")]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    return res.returncode, res.stdout + "\n" + res.stderr


def load_check(so: Path) -> tuple[bool, str]:
    code = textwrap.dedent(f"""
        import importlib.machinery, importlib.util, torch
        path = {str(so)!r}
        loader = importlib.machinery.ExtensionFileLoader("hessext._C", path)
        spec = importlib.util.spec_from_file_location("hessext._C", path, loader=loader)
        mod = importlib.util.module_from_spec(spec)
        loader.exec_module(mod)
        has = torch._C._dispatch_has_kernel_for_dispatch_key
        for op in ("reorthogonalize", "rademacher_"):
            for key in ("CPU", "CUDA"):
                assert has("hessext::" + op, key), (op, key)
        print("loaded; CPU and CUDA kernels registered for reorthogonalize and rademacher_")
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tempfile.gettempdir())
    return res.returncode == 0, (res.stdout + res.stderr).strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default=";".join(ARCHS), help="CUDA architectures (default: 8.0;9.0)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary build directory")
    parser.add_argument("--no-load", action="store_true", help="skip loading the built shared object")
    args = parser.parse_args(argv)
    archs = [a for a in args.archs.split(";") if a]

    cuda_home = find_cuda_home()
    if cuda_home is None:
        print("cuda-check: no nvcc found (set CUDA_HOME, e.g. /usr/local/cuda)", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="hessext-cuda-check-"))
    try:
        sms = ", ".join("sm_" + a.replace(".", "") for a in archs)
        print(f"cuda-check: building the CUDA extension for {sms}"
              f" with CUDA_HOME={cuda_home} in {tmp}", flush=True)
        rc, log = build(tmp, cuda_home, archs)
        if rc != 0:
            print(log[-8000:])
            print(f"cuda-check: FAILED: the build exited with {rc}", file=sys.stderr)
            return 1
        reports = parse_ptxas(log)
        names = demangle([r.name for r in reports])
        failures = []
        print("\n| kernel | arch | registers | stack (B) | spill stores (B) | spill loads (B) |")
        print("|---|---|---:|---:|---:|---:|")
        for r, name in zip(reports, names):
            short = name.replace("(anonymous namespace)::", "").removeprefix("void ").split("(")[0]
            print(f"| {short} | {r.arch} | {r.registers} | {r.stack} | {r.spill_stores} | {r.spill_loads} |")
            if r.spill_stores or r.spill_loads:
                failures.append(f"{short} on {r.arch} spills ({r.spill_stores} B stores, "
                                f"{r.spill_loads} B loads)")
        for a in archs:
            sm = "sm_" + a.replace(".", "")
            if not any(r.arch == sm for r in reports):
                failures.append(f"no kernel report for {sm} (is -Xptxas -v reaching ptxas?)")
        sos = sorted((tmp / "lib").rglob("_C*.so"))
        if not sos:
            failures.append("no linked shared object found in the build output")
        else:
            so = sos[0]
            ldd = subprocess.run(["ldd", str(so)], capture_output=True, text=True).stdout
            cudart = [line.strip() for line in ldd.splitlines() if "cudart" in line]
            libs = "; ".join(cudart) or "no libcudart?"
            print(f"\nlinked: {so.name} ({so.stat().st_size // 1024} KiB); {libs}")
            if not args.no_load:
                ok, msg = load_check(so)
                print(f"load check: {msg.splitlines()[-1] if msg else ''}")
                if not ok:
                    failures.append(f"loading the built extension failed:\n{msg}")
        if failures:
            for f in failures:
                print(f"cuda-check: FAILED: {f}", file=sys.stderr)
            return 1
        print(f"\ncuda-check: OK ({len(reports)} kernel builds, no spills)")
        return 0
    finally:
        if args.keep:
            print(f"(build kept in {tmp})")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
