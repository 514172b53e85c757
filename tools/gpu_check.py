"""First contact with a CUDA device, in one command (``make gpu-check``; under 5 minutes on one GPU).

Without CUDA (``torch.cuda.is_available()`` false) it prints that no CUDA device is present and exits 0.
With CUDA it runs, each step under a ``## step`` header so that the output can be pasted into the README:

1. **build**: ``pip install --no-build-isolation --no-deps -e .`` for the device's architecture only
   (``TORCH_CUDA_ARCH_LIST`` from ``torch.cuda.get_device_capability()``, ``FORCE_CUDA=1``, ``CUDA_HOME``
   from the environment or ``/usr/local/cuda``), then ``python -m hessext info`` in a fresh interpreter,
   which must say ``backend: cuda`` with the device's architecture among the compiled ones;
2. **tests**: the CUDA tests (``pytest -k cuda`` over the test files that hold them: the ``ops-cuda`` and
   ``cuda`` parameters of ``tests/test_ops.py``, the GPU tests of ``test_hvp.py`` and ``test_api_a.py``);
3. **bandwidth**: the device-to-device copy bandwidth of a resident 1 GiB tensor (CUDA events; bytes read
   + written), the reference of the next step;
4. **bench**: ``benchmarks/bench_kernels.py --device cuda --ref-gbps <step 3>``: reorthogonalize (n up to
   1e7, k up to 128) against the torch composition, and the probe kernel, as % of the copy bandwidth;
5. **numerics**: ``hessext.lanczos`` (top 5) and ``hessext.trace.estimate_trace`` on a ``HessianOperator``
   of a small MLP, in float64 and float32, and ``HessianAnalyzer(HessianConfig.minimal(...)).analyze_step``
   in float64, each on the GPU and on the CPU, printing both numbers and their relative difference.

Exits 1 if any step fails, including a GPU/CPU difference beyond :data:`RTOL` (eigenvalues relative to the
largest |eigenvalue| of the CPU run, traces relative to the CPU trace). Steps after a failed one still run.
``--self-test`` runs step 5 with the CPU standing in for the GPU (no build, tests or benchmark): it checks
this script's own plumbing on a machine without a GPU.
"""
from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parent.parent
TIME_LIMIT_S = 300.0
NO_CUDA_MESSAGE = "gpu-check: no CUDA device present"

# Largest relative GPU/CPU difference accepted, per quantity and dtype. float64: both devices converge to
# the same Ritz values (residual tolerance 1e-10) and use bit-identical probes, so only the rounding of the
# products differs; float32: HVPs differ by ~1e-6 relative between devices (summation order), the Ritz
# values are converged to 1e-5 relative residual.
RTOL = {
    ("lanczos", "float64"): 1e-8,
    ("trace", "float64"): 1e-8,
    ("analyze_step", "float64"): 1e-6,
    ("lanczos", "float32"): 1e-4,
    ("trace", "float32"): 1e-4,
}
LANCZOS_TOL = {"float64": 1e-10, "float32": 1e-5}


@dataclass
class Step:
    """Outcome of one step: ``ok`` and a one-line ``detail`` for the summary."""

    name: str
    ok: bool
    seconds: float
    detail: str = ""


@dataclass
class Comparison:
    """One quantity computed on both devices; ``rel`` is the difference over ``scale``."""

    what: str
    gpu: float
    cpu: float
    scale: float
    rtol: float
    rel: float = field(init=False)

    def __post_init__(self) -> None:
        diff = abs(self.gpu - self.cpu)
        self.rel = diff / self.scale if self.scale > 0 else (0.0 if diff == 0 else math.inf)
        if math.isnan(self.rel) or math.isnan(self.gpu) or math.isnan(self.cpu):
            self.rel = math.inf

    @property
    def ok(self) -> bool:
        return self.rel <= self.rtol


def header(title: str) -> None:
    """A Markdown header between steps (flushed, so that it precedes a child process's output)."""
    print(f"\n## {title}\n", flush=True)


def arch_of(capability: tuple[int, int]) -> str:
    """``TORCH_CUDA_ARCH_LIST`` entry of a compute capability: (9, 0) -> "9.0"."""
    major, minor = capability
    return f"{int(major)}.{int(minor)}"


def run(cmd: list[str], timeout: float, env: dict[str, str] | None = None) -> int:
    """Run ``cmd`` in the repository root with its output going straight to ours; its exit code (124 on a
    timeout, 127 when it cannot start)."""
    sys.stdout.flush()
    print("$ " + " ".join(cmd), flush=True)
    try:
        res = subprocess.run(cmd, cwd=ROOT, env=env, timeout=timeout, stdout=None, stderr=subprocess.STDOUT)
    except subprocess.TimeoutExpired:
        print(f"gpu-check: `{cmd[0]} ...` timed out after {timeout:.0f} s", flush=True)
        return 124
    except OSError as exc:
        print(f"gpu-check: cannot run {cmd[0]}: {exc}", flush=True)
        return 127
    return res.returncode


def find_cuda_home() -> str | None:
    """The CUDA toolkit to build with: ``$CUDA_HOME``, ``$CUDA_PATH`` or ``/usr/local/cuda`` (with nvcc)."""
    for c in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if c and (Path(c) / "bin" / "nvcc").exists():
            return c
    return None


def step_build(arch: str, timeout: float) -> Step:
    """Rebuild the extension for ``arch`` only, then check in a fresh interpreter that it serves CUDA."""
    t0 = time.perf_counter()
    cuda_home = find_cuda_home()
    if cuda_home is None:
        return Step("build", False, 0.0, "no nvcc found (set CUDA_HOME); the installed build is unchanged")
    env = dict(os.environ, CUDA_HOME=cuda_home, FORCE_CUDA="1", TORCH_CUDA_ARCH_LIST=arch,
               MAX_JOBS=os.environ.get("MAX_JOBS", str(min(8, os.cpu_count() or 1))))
    env.pop("HESSEXT_NO_CUDA", None)
    env.pop("HESSEXT_NO_EXT", None)
    print(f"TORCH_CUDA_ARCH_LIST={arch} FORCE_CUDA=1 CUDA_HOME={cuda_home}")
    rc = run([sys.executable, "-m", "pip", "install", "-q", "--no-build-isolation", "--no-deps", "-e", "."],
             timeout, env)
    if rc != 0:
        return Step("build", False, time.perf_counter() - t0, f"pip install exited with {rc}")
    check = ("import sys, hessext; from hessext import _backend; i = _backend.info(); "
             "print('backend:', i['backend'], '| archs:', ' '.join(i['cuda_archs']), '| devices:', "
             "', '.join(i['cuda_devices'])); "
             f"sys.exit(0 if i['backend'] == 'cuda' and any(a.startswith({arch!r}) for a in i['cuda_archs']) "
             "else 3)")
    env_run = {k: v for k, v in os.environ.items() if k != "HESSEXT_FORCE_PYTHON"}
    rc = run([sys.executable, "-m", "hessext", "info"], 60, env_run)
    rc2 = run([sys.executable, "-c", check], 60, env_run)
    ok = rc == 0 and rc2 == 0
    detail = f"built for sm_{arch.replace('.', '')}" if ok else \
        f"the rebuilt extension does not serve CUDA for {arch} (info exited {rc}, check {rc2})"
    return Step("build", ok, time.perf_counter() - t0, detail)


CUDA_TEST_FILES = ["tests/test_ops.py", "tests/test_hvp.py", "tests/test_api_a.py"]


def step_tests(timeout: float) -> Step:
    """The CUDA tests: every test whose name or parameter id says cuda, in the files that have them."""
    t0 = time.perf_counter()
    env = {k: v for k, v in os.environ.items() if k != "HESSEXT_FORCE_PYTHON"}
    env.setdefault("OMP_NUM_THREADS", "4")
    rc = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "cuda", "-rs",
              *CUDA_TEST_FILES], timeout, env)
    ok = rc == 0
    return Step("tests", ok, time.perf_counter() - t0, "all selected CUDA tests passed" if ok else
                f"pytest exited with {rc}")


def copy_bandwidth_gbps(device: str, numel: int = 1 << 28) -> float:
    """Median GB/s (bytes read + written) of a device-to-device copy of a resident float32 tensor of
    ``numel`` elements: ``benchmarks/bench_kernels.copy_bandwidth`` (CUDA events on a GPU). Imports hessext:
    call it after the build."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_kernels", ROOT / "benchmarks" / "bench_kernels.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return float(bench.copy_bandwidth(device, numel)["gbps"])


def step_bench(gbps: float, timeout: float) -> Step:
    """The kernel benchmark on the GPU, its % column against the measured copy bandwidth."""
    t0 = time.perf_counter()
    env = {k: v for k, v in os.environ.items() if k != "HESSEXT_FORCE_PYTHON"}
    rc = run([sys.executable, "benchmarks/bench_kernels.py", "--device", "cuda", "--ref-gbps", f"{gbps:.1f}"],
             timeout, env)
    return Step("bench", rc == 0, time.perf_counter() - t0, "bench_kernels ran" if rc == 0 else
                f"bench_kernels exited with {rc}")


def make_problem() -> tuple[torch.nn.Module, torch.nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    """A small tanh MLP (10 -> 32 -> 32 -> 3, 1,507 parameters) with cross-entropy on 256 fixed samples;
    everything drawn from a private generator (the global RNG is not touched)."""
    g = torch.Generator().manual_seed(19)
    model = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.Tanh(), torch.nn.Linear(32, 32),
                                torch.nn.Tanh(), torch.nn.Linear(32, 3))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 if p.dim() == 2 else 0.1))
    X = torch.randn(256, 10, generator=g)
    y = torch.randint(0, 3, (256,), generator=g)
    return model, torch.nn.CrossEntropyLoss(), (X, y)


def _per_device(fn: Callable[[str], Any], devices: tuple[str, str]) -> tuple[Any, Any]:
    return fn(devices[0]), fn(devices[1])


def compare_lanczos_and_trace(devices: tuple[str, str], dtype_name: str) -> list[Comparison]:
    """Top-5 Ritz values (Lanczos) and a 40-probe Hutchinson trace on both devices, in ``dtype_name``."""
    from hessext.hvp import HessianOperator
    from hessext.lanczos import lanczos
    from hessext.trace import estimate_trace

    model, loss, data = make_problem()
    dtype = getattr(torch, dtype_name)

    def solve(device: str) -> tuple[list[float], float]:
        H = HessianOperator(model, loss, data, dtype=dtype, device=device)
        eig = lanczos(H, k=5, which="LA", tol=LANCZOS_TOL[dtype_name], seed=0)
        tr = estimate_trace(H, 40, method="hutchinson", seed=0)
        return [float(v) for v in eig.eigenvalues], float(tr.estimate)

    (g_eigs, g_tr), (c_eigs, c_tr) = _per_device(solve, devices)
    scale = max(abs(v) for v in c_eigs)
    out = [Comparison(f"lanczos {dtype_name} eigenvalue {i + 1} of 5 (ascending)", g, c, scale,
                      RTOL[("lanczos", dtype_name)]) for i, (g, c) in enumerate(zip(g_eigs, c_eigs))]
    out.append(Comparison(f"hutchinson trace {dtype_name} (40 probes)", g_tr, c_tr, abs(c_tr),
                          RTOL[("trace", dtype_name)]))
    return out


def compare_analyze_step(devices: tuple[str, str]) -> list[Comparison]:
    """``HessianAnalyzer(HessianConfig.minimal(device=..., dtype=float64)).analyze_step`` on both devices."""
    from hessext.analysis import HessianAnalyzer, HessianConfig

    model, loss, data = make_problem()

    def analyse(device: str) -> dict[str, Any]:
        cfg = HessianConfig.minimal(device=device, dtype=torch.float64, tolerance=1e-8)
        return HessianAnalyzer(cfg).analyze_step(model, loss, data, model_type=None, strict=True)["hessian"]

    g, c = _per_device(analyse, devices)
    rtol = RTOL[("analyze_step", "float64")]
    scale = max(abs(float(v)) for v in c["top_eigenvalues"])
    out = [Comparison(f"analyze_step top eigenvalue {i + 1} (descending)", float(a), float(b), scale, rtol)
           for i, (a, b) in enumerate(zip(g["top_eigenvalues"], c["top_eigenvalues"]))]
    out.append(Comparison("analyze_step min_eigenvalue", float(g["min_eigenvalue"]),
                          float(c["min_eigenvalue"]), scale, rtol))
    out.append(Comparison("analyze_step hessian_trace_estimate", float(g["hessian_trace_estimate"]),
                          float(c["hessian_trace_estimate"]), abs(float(c["hessian_trace_estimate"])), rtol))
    return out


def print_comparisons(rows: list[Comparison], gpu_name: str) -> None:
    """A Markdown table: quantity, both numbers, relative difference, tolerance, verdict."""
    print(f"| quantity | {gpu_name} | cpu | rel. diff | tolerance | |")
    print("|---|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r.what} | {r.gpu:.12g} | {r.cpu:.12g} | {r.rel:.1e} | {r.rtol:.0e} | "
              f"{'ok' if r.ok else 'FAIL'} |")


def step_numerics(device: str) -> Step:
    """Lanczos, trace and analyze_step on ``device`` against the CPU (see the module docstring)."""
    t0 = time.perf_counter()
    import hessext

    print(f"hessext backend: {hessext.BACKEND}; device under test: {device}; model: tanh MLP, 1,507 "
          f"parameters, cross-entropy, 256 samples")
    if device.startswith("cuda") and hessext.BACKEND != "cuda":
        return Step("numerics", False, time.perf_counter() - t0,
                    f"hessext.BACKEND is {hessext.BACKEND!r}, not 'cuda': the CUDA kernels are not active")
    devices = (device, "cpu")
    rows: list[Comparison] = []
    errors: list[str] = []
    parts: list[tuple[str, Callable[[], list[Comparison]]]] = [
        ("lanczos + trace, float64", lambda: compare_lanczos_and_trace(devices, "float64")),
        ("lanczos + trace, float32", lambda: compare_lanczos_and_trace(devices, "float32")),
        ("analyze_step (HessianConfig.minimal, float64)", lambda: compare_analyze_step(devices)),
    ]
    for name, part in parts:
        try:
            rows.extend(part())
        except Exception as exc:  # a failed part is reported and the others still run
            errors.append(f"{name}: {type(exc).__name__}: {exc}")
    print_comparisons(rows, device)
    for e in errors:
        print(f"\nFAILED: {e}")
    bad = [r.what for r in rows if not r.ok]
    ok = not errors and not bad
    worst = max((r.rel / r.rtol for r in rows), default=0.0)
    detail = (f"{len(rows)} quantities within tolerance (worst at {worst:.2g} of its tolerance)" if ok else
              f"{len(bad)} beyond tolerance, {len(errors)} errors")
    return Step("numerics", ok, time.perf_counter() - t0, detail)


def summary(steps: list[Step], total: float) -> int:
    """Print the steps' table and return the exit code (1 if any step failed)."""
    header("summary")
    print("| step | result | seconds | detail |")
    print("|---|---|---:|---|")
    for s in steps:
        print(f"| {s.name} | {'ok' if s.ok else 'FAILED'} | {s.seconds:.1f} | {s.detail} |")
    over = total > TIME_LIMIT_S
    print(f"\ntotal {total:.0f} s (target: under {TIME_LIMIT_S:.0f} s{'; EXCEEDED' if over else ''})")
    failed = [s.name for s in steps if not s.ok]
    print(f"gpu-check: {'FAILED: ' + ', '.join(failed) if failed else 'OK'}", flush=True)
    return 1 if failed else 0


def device_facts() -> str:
    """One line about the first CUDA device."""
    p = torch.cuda.get_device_properties(0)
    cap = torch.cuda.get_device_capability(0)
    return (f"{p.name}, compute capability {cap[0]}.{cap[1]}, {p.total_memory / 2**30:.0f} GiB, "
            f"{p.multi_processor_count} SMs, {torch.cuda.device_count()} device(s); "
            f"torch {torch.__version__} (CUDA {torch.version.cuda})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-build", action="store_true", help="keep the installed extension")
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--skip-bench", action="store_true")
    parser.add_argument("--self-test", action="store_true",
                        help="without a GPU: run the numerics step with the CPU standing in for the GPU")
    args = parser.parse_args(argv)
    t_start = time.perf_counter()
    if args.self_test:
        header("copy bandwidth (self-test: cpu, 64 MiB)")
        gbps = copy_bandwidth_gbps("cpu", 1 << 24)
        print(f"cpu copy: {gbps:.1f} GB/s")
        header("numerics (self-test: cpu against cpu)")
        steps = [Step("bandwidth", gbps > 0, 0.0, f"{gbps:.1f} GB/s"), step_numerics("cpu")]
        return summary(steps, time.perf_counter() - t_start)
    if not torch.cuda.is_available():
        print(f"{NO_CUDA_MESSAGE} (torch {torch.__version__}, built with CUDA {torch.version.cuda}): "
              f"nothing to check; exit 0.")
        return 0
    header("device")
    print(device_facts())
    arch = arch_of(torch.cuda.get_device_capability(0))
    steps: list[Step] = []
    if not args.skip_build:
        header(f"build (TORCH_CUDA_ARCH_LIST={arch})")
        steps.append(step_build(arch, timeout=150))
    if not args.skip_tests:
        header("CUDA tests")
        steps.append(step_tests(timeout=120))
    header("copy bandwidth")
    t0 = time.perf_counter()
    gbps = copy_bandwidth_gbps("cuda")
    print(f"device-to-device copy of a resident 1 GiB float32 tensor: {gbps:.1f} GB/s (bytes read + written, "
          f"median of 5 x 10 copies, CUDA events)")
    steps.append(Step("bandwidth", gbps > 0, time.perf_counter() - t0, f"{gbps:.1f} GB/s"))
    if not args.skip_bench:
        header("kernel benchmark")
        steps.append(step_bench(gbps, timeout=120))
    header("numerics (GPU against CPU)")
    steps.append(step_numerics("cuda"))
    return summary(steps, time.perf_counter() - t_start)


if __name__ == "__main__":
    sys.exit(main())
