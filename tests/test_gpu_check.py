"""tools/gpu_check.py (``make gpu-check``): the no-CUDA path, its self-test, and the CUDA path's control
flow with the GPU steps stubbed (the real CUDA path runs only on a GPU machine)."""
from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "gpu_check.py"


def _load():
    """A fresh copy of the script as a module (registered while it executes: its dataclasses need that)."""
    name = "_gpu_check_under_test"
    spec = importlib.util.spec_from_file_location(name, SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    try:
        spec.loader.exec_module(mod)
    finally:
        del sys.modules[name]
    return mod


gpu_check = _load()


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HESSEXT_FORCE_PYTHON"}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the script rebuilds and benchmarks")
def test_without_cuda_says_so_and_exits_0():
    res = _run()
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.startswith(gpu_check.NO_CUDA_MESSAGE)
    assert "nothing to check" in res.stdout
    assert "## " not in res.stdout  # no step ran


def test_self_test_runs_the_numerics_on_the_cpu():
    """The numerics step (Lanczos, trace, analyze_step) with the CPU standing in for the GPU: every row of
    the table is there and agrees exactly with itself."""
    res = _run("--self-test")
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    assert "## numerics (self-test: cpu against cpu)" in out and "gpu-check: OK" in out
    rows = [line for line in out.splitlines() if line.startswith("| ") and line.endswith("| ok |")]
    assert len(rows) == 5 + 1 + 5 + 1 + 5 + 2, out
    assert all("| 0.0e+00 |" in line for line in rows), out
    assert "lanczos float32 eigenvalue 5 of 5" in out and "analyze_step hessian_trace_estimate" in out


def test_arch_of():
    assert gpu_check.arch_of((9, 0)) == "9.0"
    assert gpu_check.arch_of((8, 6)) == "8.6"
    assert gpu_check.arch_of((10, 0)) == "10.0"


def test_comparison_verdicts():
    C = gpu_check.Comparison
    assert C("x", 1.0 + 1e-9, 1.0, 1.0, 1e-8).ok
    assert not C("x", 1.0 + 1e-7, 1.0, 1.0, 1e-8).ok
    assert C("x", 2.0, 1.0, 10.0, 0.2).rel == pytest.approx(0.1)
    assert C("x", 0.0, 0.0, 0.0, 1e-8).ok                      # both zero: no difference
    assert not C("x", 1e-30, 0.0, 0.0, 1e-8).ok                # scale 0 but different
    assert C("x", float("nan"), 1.0, 1.0, 1e-8).rel == math.inf
    assert not C("x", 1.0, float("nan"), 1.0, 1e-8).ok


def _fake_cuda(monkeypatch, mod, calls: list, fail: str | None = None):
    Step = mod.Step
    monkeypatch.setattr(mod.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(mod.torch.cuda, "get_device_capability", lambda i=0: (9, 0))
    monkeypatch.setattr(mod, "device_facts", lambda: "FakeGPU")

    def stub(name):
        def f(*args, **kwargs):
            calls.append((name, args))
            return Step(name, name != fail, 0.0, "stub")
        return f

    monkeypatch.setattr(mod, "step_build", stub("build"))
    monkeypatch.setattr(mod, "step_tests", stub("tests"))
    monkeypatch.setattr(mod, "step_bench", stub("bench"))
    monkeypatch.setattr(mod, "step_numerics", stub("numerics"))
    monkeypatch.setattr(mod, "copy_bandwidth_gbps", lambda device, numel=0: 4321.0)


@pytest.mark.parametrize("fail", [None, "build", "tests", "bench", "numerics"])
def test_cuda_path_runs_every_step_and_fails_on_any(monkeypatch, capsys, fail):
    mod = _load()
    calls: list = []
    _fake_cuda(monkeypatch, mod, calls, fail)
    rc = mod.main([])
    out = capsys.readouterr().out
    assert [c[0] for c in calls] == ["build", "tests", "bench", "numerics"]  # later steps run after a failure
    assert calls[0][1][0] == "9.0"                                          # built for the device's arch
    assert calls[2][1][0] == 4321.0                                         # bench against measured copy BW
    assert calls[3][1][0] == "cuda"
    assert "## device" in out and "FakeGPU" in out and "4321.0 GB/s" in out and "## summary" in out
    if fail is None:
        assert rc == 0 and "gpu-check: OK" in out
    else:
        assert rc == 1 and f"gpu-check: FAILED: {fail}" in out


def test_cuda_path_skips(monkeypatch, capsys):
    mod = _load()
    calls: list = []
    _fake_cuda(monkeypatch, mod, calls)
    assert mod.main(["--skip-build", "--skip-tests", "--skip-bench"]) == 0
    assert [c[0] for c in calls] == ["numerics"]


def _load_setup():
    """setup.py as a module (its build runs only as __main__)."""
    spec = importlib.util.spec_from_file_location("_hessext_setup_under_test", ROOT / "setup.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_stable_abi_target_follows_the_installed_torch():
    """The GPU machines this project may borrow run torch 2.11, whose stable ABI has no stream handle: a build
    there targets 2.11 (device_info.cuh then asks AOTInductor's shim for the stream); 2.13 and later target
    2.13; before 2.10 there is no stable ABI to build against."""
    setup = _load_setup()
    assert setup.target_version("2.11.0+cu130") == "0x020b000000000000"
    assert setup.target_version("2.10.1") == "0x020a000000000000"
    assert setup.target_version("2.13.0+cpu") == "0x020d000000000000"
    assert setup.target_version("2.14.1") == "0x020d000000000000"
    assert setup.target_version("3.0.0") == "0x020d000000000000"
    with pytest.raises(SystemExit, match=r"torch >= 2\.10.*found torch 2\.9\.1.*HESSEXT_NO_EXT=1"):
        setup.target_version("2.9.1")
    from hessext import _backend

    target = _backend.info().get("stable_abi_target")
    if target is not None:  # the extension in use was built against this torch
        assert target == setup.target_version(torch.__version__)
