"""Seeded-result snapshot: the exact bits of a fixed set of public calls, recorded before a refactor and
checked after it (issue 13, point 8: "nothing observable changes").

    python tools/seeded_snapshot.py record   # writes tests/data/seeded_snapshot.json for this backend
    python tools/seeded_snapshot.py check    # recomputes and compares bit for bit; exit 1 on a difference

The calls: Lanczos (float32/float64, dense and Hessian operators), both API A functions in both call forms,
``analyze_step`` (MLP with components off; a factory transformer with components and alignment on), the
trace estimators (Hutchinson with blocks, Hutch++, XTrace, adaptive, estimate_trace), SLQ, the API B legacy
functions and a 1-D landscape. Results are stored per backend ("cpu" = compiled kernels, "python") with a
fingerprint of what the bits depend on (torch version, CPU capability, thread count); ``tests/
test_seeded_snapshot.py`` compares bitwise when the fingerprint matches and to a tight tolerance otherwise.
"""
from __future__ import annotations

import json
import math
import os
import sys
from typing import Any

import torch
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PATH = os.path.join(ROOT, "tests", "data", "seeded_snapshot.json")


def _hex(x: Any) -> list[str]:
    if isinstance(x, torch.Tensor):
        return [float(v).hex() for v in x.detach().double().reshape(-1).tolist()]
    if isinstance(x, (list, tuple)):
        return [h for v in x for h in _hex(v)]
    if hasattr(x, "tolist"):
        return _hex(torch.as_tensor(x))
    return [float(x).hex()]


def fingerprint() -> dict[str, Any]:
    import hessext
    return {"torch": torch.__version__, "cpu": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads(), "backend": hessext.BACKEND}


def _mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((out - y) ** 2).mean()


def compute() -> dict[str, list[str]]:
    import hessext
    from hessext import (
        HessianAnalyzer,
        HessianConfig,
        ModelWrapper,
        TransformerFactory,
        compute_hessian_gradient_alignment,
        get_hessian_eigenvectors,
        hessian_trace,
        loss_landscape_1d,
        measure_train_val_landscape_divergence,
        min_max_hessian_eigs,
        random_direction,
    )
    from hessext.density import spectral_density
    from hessext.hvp import HessianOperator
    from hessext.lanczos import extreme_eigenpairs, lanczos
    from hessext.trace import adaptive_trace, estimate_trace, hutchinson, hutchpp, xtrace

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    g = torch.Generator().manual_seed(1)
    X, y = torch.randn(16, 4, generator=g), torch.randn(16, 3, generator=g)
    H = HessianOperator(model, _mse, (X, y))
    H64 = HessianOperator(model, _mse, [(X[:8], y[:8]), (X[8:], y[8:])], dtype=torch.float64)
    out: dict[str, list[str]] = {}
    seed = 3
    r = hutchinson(H, 8, seed=seed, blocks={"first": slice(0, 40), "last": slice(40, None)})
    out["hutchinson"] = _hex([r.estimate, r.std_error, *r.block_estimates.values(),
                              *r.block_std_errors.values()])
    r = hutchpp(H64, 9, seed=seed)
    out["hutchpp"] = _hex([r.estimate, r.std_error])
    r = xtrace(H64, 8, seed=seed)
    out["xtrace"] = _hex([r.estimate, r.std_error])
    r = adaptive_trace(H64, 12, seed=seed)
    out["adaptive_trace"] = _hex([r.estimate, r.std_error])
    r = estimate_trace(H, rtol=1e-2, max_matvecs=40, seed=seed)
    out["estimate_trace"] = _hex([r.estimate, r.std_error, r.num_matvecs])
    for name, A in (("f32", H), ("f64", H64)):
        e = lanczos(A, k=3, seed=seed, max_iter=20, tol=1e-12)
        out[f"lanczos_{name}"] = _hex([e.eigenvalues, e.residuals, e.eigenvectors, e.num_matvecs])
        s = lanczos(A, k=2, which="SA", seed=seed, tol=1e-6)
        out[f"lanczos_sa_{name}"] = _hex([s.eigenvalues, s.residuals, s.num_matvecs])
    top, bottom = extreme_eigenpairs(H64, k_top=2, k_bottom=2, seed=seed, tol=1e-8)
    out["extreme_eigenpairs"] = _hex([top.eigenvalues, bottom.eigenvalues, top.num_matvecs])
    dense = torch.diag(torch.linspace(-1, 3, 50, dtype=torch.float64)) + 1e-3 * torch.ones(50, 50,
                                                                                            dtype=torch.float64)
    out["lanczos_dense"] = _hex(lanczos(dense, k=4, which="LM", seed=seed).eigenvalues)
    d = spectral_density(H64, num_probes=2, num_iter=8, seed=seed)
    out["density"] = _hex([d.nodes, d.weights, d.density])
    wrapper = ModelWrapper(model, lambda o: _mse(o, y), X)
    out["apiA_min_max"] = _hex(list(min_max_hessian_eigs(wrapper, max_iter=30, seed=seed)))
    out["apiA_min_max_legacy"] = _hex(list(min_max_hessian_eigs(model, X, y, _mse)))
    out["apiA_trace"] = _hex(hessian_trace(wrapper, num_random_vectors=12, seed=seed))
    out["apiA_trace_legacy"] = _hex(hessian_trace(model, _mse, X, y, 8, seed=seed))

    cfg = HessianConfig(n_components=3, n_bottom=1, max_iter=20, trace_probes=6, seed=seed,
                        track_component_hessian=False, track_gradient_alignment=False)
    res = HessianAnalyzer(cfg).analyze_step(model, _mse, (X, y), model_type=None, strict=True)
    hs = res["hessian"]
    out["analyze_step_mlp"] = _hex([hs["top_eigenvalues"], hs["hessian_trace_estimate"],
                                    hs["hessian_trace_std_error"]])

    torch.manual_seed(0)
    tmodel = TransformerFactory.create_decoder_only_transformer(vocab_size=11, d_model=8, num_heads=2,
                                                              num_layers=1, d_ff=16, max_seq_length=6)
    tmodel = tmodel.double()
    gg = torch.Generator().manual_seed(5)
    ids = torch.randint(0, 11, (3, 6), generator=gg)
    batch = {"input_ids": ids, "labels": torch.roll(ids, -1, dims=1)}
    tcfg = HessianConfig(n_components=2, n_bottom=1, max_iter=30, trace_probes=6, seed=seed,
                         component_list=["attention", "ffn"], track_component_hessian=True,
                         track_gradient_alignment=True)
    tres = HessianAnalyzer(tcfg).analyze_step(tmodel, None, batch, batch, model_type="decoder_only",
                                              strict=True)
    flat = []

    def walk(obj: Any, key: str = "") -> None:
        if isinstance(obj, dict):
            for k in sorted(obj, key=str):
                walk(obj[k], f"{key}/{k}")
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                walk(v, key)
        elif isinstance(obj, bool) or obj is None or isinstance(obj, str):
            return
        elif isinstance(obj, (int, float)) and not key.endswith("seconds") and "time" not in key:
            if math.isfinite(float(obj)):
                flat.append(float(obj))
        elif isinstance(obj, torch.Tensor) and obj.is_floating_point():
            flat.extend(obj.double().reshape(-1).tolist())
    walk({k: v for k, v in tres.items() if k not in ("timing", "timings", "metadata")})
    out["analyze_step_transformer"] = _hex(flat)

    ev, vecs = get_hessian_eigenvectors(tmodel, None, [batch], num_batches=1, model_type="decoder_only",
                                        n_top_vectors=2)
    out["get_hessian_eigenvectors"] = _hex([torch.as_tensor(ev)])
    al = compute_hessian_gradient_alignment(tmodel, None, batch, eigenvectors=None, model_type="decoder_only")
    out["alignment"] = _hex([v for k, v in sorted(al.items()) if isinstance(v, float)])
    div = measure_train_val_landscape_divergence(tmodel, None, batch, batch, model_type="decoder_only")
    out["divergence"] = _hex([v for k, v in sorted(div.items()) if isinstance(v, float) and math.isfinite(v)])
    land = loss_landscape_1d(model, _mse, (X, y), random_direction(model, seed=seed), radius=0.5,
                             num_points=5)
    out["landscape_1d"] = _hex([torch.as_tensor(land.losses)])
    del hessext
    return out


def main() -> int:
    what = sys.argv[1] if len(sys.argv) > 1 else "check"
    fp = fingerprint()
    results = compute()
    stored = json.load(open(PATH)) if os.path.exists(PATH) else {}
    if what == "record":
        stored[fp["backend"]] = {"fingerprint": fp, "results": results}
        os.makedirs(os.path.dirname(PATH), exist_ok=True)
        with open(PATH, "w") as f:
            json.dump(stored, f, indent=0, sort_keys=True)
        print(f"recorded {len(results)} calls for backend {fp['backend']!r} in {PATH}")
        return 0
    ref = stored[fp["backend"]]
    if ref["fingerprint"] != fp:
        print(f"note: fingerprint differs: recorded {ref['fingerprint']}, here {fp}")
    bad = [k for k in ref["results"] if results.get(k) != ref["results"][k]]
    missing = sorted(set(ref["results"]) - set(results))
    for k in bad:
        print(f"DIFFERS: {k}\n  recorded {ref['results'][k][:6]}\n  now      {(results.get(k) or [])[:6]}")
    print(f"{len(ref['results']) - len(bad)}/{len(ref['results'])} calls bitwise identical"
          + (f"; missing {missing}" if missing else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
