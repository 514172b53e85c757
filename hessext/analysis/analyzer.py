"""API B orchestration: ``HessianAnalyzer`` (``project.hessian`` → ``hessext.hessian``; its settings are
:class:`hessext.analysis.config.HessianConfig`).

One call of :meth:`HessianAnalyzer.analyze_step` builds one :class:`~hessext.hvp.HessianOperator` for the
training batch(es) and spends its matrix-vector products (HVPs) once:

=====================  ============================================================================  =========
section                work                                                                          HVPs
=====================  ============================================================================  =========
``hessian``            ONE Lanczos run for the top-k and the bottom ``n_bottom`` Ritz pairs (both     Lanczos
                       ends, one Krylov space); ONE Hutchinson probe set for tr(H) and, from the
                       same probes, every component's trace                                           + probes
``components``         one Lanczos run per component on its diagonal block ``H_SS``                   Lanczos
``alignment``          the gradient (shared) and ONE extra HVP ``H g``; reuses the top Ritz pairs     1
``sharpness``          nothing new (from ``hessian``)                                                 0
``train_val_divergence`` one Lanczos run and one probe set (same seed) on the validation operator     Lanczos
                                                                                                     + probes
``decomposition``      (opt-in) top eigenvalues of H, G and E = H − G (both ends for E), traces of    Lanczos
                       the three from ONE Hutch++ sketch and probe set (E's from H's and G's)        + probes
=====================  ============================================================================  =========

``HessianConfig(curvature=...)`` chooses the matrix of every section but ``decomposition``: the Hessian
(default), the generalised Gauss–Newton matrix or the Fisher (:mod:`hessext.curvature`);
``results["meta"]["curvature"]`` records it.

The model is analysed in eval mode (dropout off) and is never modified (``hessext.hvp`` policy).
``results["meta"]`` records the time and HVP count of each section (``matvecs``), the HVPs of each Lanczos
solve (``lanczos_matvecs``: ``hessian``, ``components`` per name, ``val``) and every product the operators
counted (``operator_matvecs``, equal to ``matvecs["total"]``: no HVP outside a section).
"""
from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
import warnings
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .._checks import check_bool, work_dtype
from .._state import isolated_forward
from ..curvature import FisherOperator, GGNOperator, matching_reducer, residual_operator
from ..data import MODEL_TYPES, is_batch, normalize_data
from ..ops import rademacher
from .alignment import gradient_alignment, sharpness_metrics, train_val_divergence
from .blocks import block_spectra, parameter_blocks
from .components import ComponentAnalyzer
from .config import HessianConfig
from .metrics import HessianMetrics
from .persistence import save_results
from .spectrum import as_floats, extreme_ritz_pairs, make_operator, shared_probe_traces

__all__ = ["HessianAnalyzer"]


# ------------------------------------------------------------------------------------------------ one step
def _measured(fn: Callable[[], Any], operators: Sequence[Any]) -> tuple[Any, float, int]:
    """``fn()``, the seconds it took and the products the ``operators`` counted while it ran."""
    t0 = time.perf_counter()
    m0 = sum(op.num_matvecs for op in operators)
    value = fn()
    return value, time.perf_counter() - t0, sum(op.num_matvecs for op in operators) - m0


def _spectrum_section(H: Any, cfg: HessianConfig,
                      index_sets: Optional[Mapping[str, Tensor]]) -> tuple[dict, dict]:
    """Full-model eigenpairs (ONE Lanczos run, both ends) and traces (ONE probe set, blocks included).

    Returns ``(section, extras)``: the ``results["hessian"]`` dict, and the EigenResults, traces, times and
    product counts that other sections and ``meta`` use."""
    n = H.global_n                  # the whole space (H.n is this rank's slice on an FSDP2 model)
    k_top = min(cfg.n_components, n)
    k_bot = min(cfg.n_bottom, n - k_top)
    (top, bottom), t_eig, eig_mv = _measured(
        lambda: extreme_ritz_pairs(H, k_top, k_bot, cfg.tolerance, cfg.seed, cfg.max_iter), (H,))
    top_vals = as_floats(top.descending()[0])
    bot_vals = as_floats(bottom.eigenvalues) if bottom is not None else []
    trace, t_trace, trace_mv = _measured(
        lambda: shared_probe_traces(H, cfg.trace_probes, index_sets, seed=cfg.seed) if cfg.trace_probes > 0
        else None, (H,))

    sec = HessianMetrics.compute_detailed_hessian_metrics(
        top_vals, trace=None if trace is None else trace["estimate"])
    computed = top_vals + bot_vals
    sec.update({
        "max_eigenvalue": top_vals[0],
        "min_eigenvalue": min(computed),
        "top_eigenvalues": top_vals,
        "bottom_eigenvalues": bot_vals,
        "negative_count": int(sum(1 for x in computed if x < 0)),
        "num_computed_eigenvalues": len(computed),
        "hessian_trace_estimate": float("nan") if trace is None else trace["estimate"],
        "hessian_trace_std_error": float("nan") if trace is None else trace["std_error"],
        "trace_num_probes": cfg.trace_probes,
        "num_parameters": int(n),
        "residuals": as_floats(top.residuals) + (as_floats(bottom.residuals) if bottom is not None else []),
        "converged": bool(top.converged and (bottom is None or bottom.converged or _small_residual(
            bottom, cfg.tolerance, max(abs(top_vals[0]), abs(min(computed)))))),
        "lanczos_iterations": int(getattr(top, "iterations", 0)),
        "num_matvecs": int(eig_mv + trace_mv),
    })
    extras = {"top": top, "bottom": bottom, "trace": trace, "eig_matvecs": eig_mv, "trace_matvecs": trace_mv,
              "t_eig": t_eig, "t_trace": t_trace}
    return sec, extras


def _small_residual(res: Any, tol: float, scale: float) -> bool:
    """Residuals below ``tol`` × the spectral scale ``max(|λ_max|, |λ_min|)``.

    The bottom of a (nearly) positive semi-definite Hessian sits at λ ≈ 0, where the relative test
    ``‖r‖ < tol·max(|λ|, √ε‖H‖)`` of the Lanczos run may stay out of reach; a residual small against the
    whole spectrum still locates that eigenvalue to ``tol·‖H‖``, which is what ``min_eigenvalue`` needs."""
    return bool(res.residuals.numel() and float(res.residuals.max()) <= tol * scale)


def _materialised(data: Any, num_batches: Optional[int], arg_name: str) -> Any:
    """``data`` itself for one batch, else its list of batches (a DataLoader is read once, so that several
    operators see the same batches; the global RNG is never written). Errors name ``arg_name``."""
    if is_batch(data):
        return data
    try:
        with isolated_forward():
            return normalize_data(data, num_batches)
    except (TypeError, ValueError) as e:
        raise type(e)(f"{arg_name}: {e}") from e


def _as_data(batches: Any) -> Any:
    """A materialised list as operator data: one batch as itself, several as an iterator (a list of two
    bare tensors would read as one (inputs, targets) pair)."""
    if not isinstance(batches, list):
        return batches
    return batches[0] if len(batches) == 1 else iter(batches)


def shared_hutchpp(H: Any, G: Any, num_matvecs: int, seed: int) -> dict[str, dict[str, float]]:
    """Hutch++ traces of ``H``, ``G`` and ``E = H − G`` from ONE sketch and ONE probe set.

    With ``s = ⌊m/3⌋`` (0 when ``m < 3``: plain Hutchinson) and ``g = m − 2s``: ``Q = orth(H S)`` for a
    Rademacher sketch ``S ∈ R^{n×s}`` (the top eigenspace of ``H``, where ``G``'s outliers live too), then for
    ``A ∈ {H, G}``

        tr(A) ≈ tr(Qᵀ A Q) + (1/g) Σ_i p_iᵀ A p_i,   p_i = (I − QQᵀ) r_i,

    unbiased for any ``Q`` independent of the residual probes ``r_i`` (Rademacher). ``E`` uses ``H``'s and
    ``G``'s products (``E Q = H Q − G Q``, ``E p = H p − G p``), so ``tr_E = tr_H − tr_G`` holds exactly for
    the estimates and its standard error comes from the per-probe differences. Cost: ``s`` products of ``H``
    for the sketch, ``s + g`` of each of ``H`` and ``G`` (``5m/3`` for three traces instead of ``4m``).

    Returns:
        ``{"hessian" | "ggn" | "residual": {"estimate", "std_error"}}``; the standard errors are those of the
        probe part (conditional on ``Q``), 0 when the sketch spans the space.
    """
    n, device = H.n, H.device
    dtype = work_dtype(H.dtype)
    s = num_matvecs // 3 if num_matvecs >= 3 else 0
    g = num_matvecs - 2 * s
    exact = {"hessian": 0.0, "ggn": 0.0}
    Q = torch.zeros(n, 0, dtype=dtype, device=device)
    if s:
        S = rademacher(n, s, seed=seed, dtype=dtype, device=device)
        Q = torch.linalg.qr(H.matmat(S), mode="reduced").Q
        exact = {"hessian": float(torch.sum(Q * H.matmat(Q))), "ggn": float(torch.sum(Q * G.matmat(Q)))}
    names = ("hessian", "ggn", "residual")
    exact["residual"] = exact["hessian"] - exact["ggn"]
    if Q.shape[1] >= n or g == 0:
        se = 0.0 if Q.shape[1] >= n else float("nan")
        return {k: {"estimate": exact[k], "std_error": se} for k in names}
    P = rademacher(n, g, seed=seed, offset=s * n, dtype=dtype, device=device)
    P = P - Q @ (Q.T @ P)
    vh = (P * H.matmat(P)).sum(0).to("cpu", torch.float64)
    vg = (P * G.matmat(P)).sum(0).to("cpu", torch.float64)
    out = {}
    for k, v in zip(names, (vh, vg, vh - vg)):
        se = float(v.std() / math.sqrt(g)) if g > 1 else float("nan")
        out[k] = {"estimate": exact[k] + float(v.mean()), "std_error": se}
    return out


#: One summary line per section: (section, title, ((label, key), ...)).
_SUMMARY_LINES = (
    ("alignment", "Alignment", (("|cos(g, Hg)|", "grad_Hg_alignment"), ("weighted", "weighted_alignment"),
                                ("‖Hg‖/‖g‖", "grad_Hg_ratio"),
                                ("top-k fraction of ‖g‖²", "top_subspace_fraction"))),
    ("sharpness", "Sharpness", (("max", "max_sharpness"), ("mean (tr/n)", "mean_sharpness"),
                                ("spectral norm", "spectral_norm"))),
    ("train_val_divergence", "Train/val", (("divergence score", "train_val_landscape_divergence_score"),
                                           ("trace ratio", "trace_ratio"),
                                           ("distribution overlap", "eigenvalue_distribution_overlap"),
                                           ("eigenspace overlap", "eigenspace_overlap"))),
)


#: Sections of :meth:`HessianAnalyzer.analyze_step` that do not run on an FSDP2-sharded model, and why
#: (recorded under ``results["errors"]``; raised with ``strict=True``).
SHARDED_SKIPPED = {
    "components": "skipped on an FSDP2-sharded model: component blocks select parameters by global index, "
                  "and restricted operators of sharded vectors are not supported",
    "train_val_divergence": "skipped on an FSDP2-sharded model: the eigenspace overlap of train and "
                            "validation eigenvectors is not computed on sharded vectors",
    "block_spectra": "skipped on an FSDP2-sharded model: block densities need index sets of the whole "
                     "vector",
}


def _check_sharded_config(cfg: HessianConfig) -> None:
    """Settings that an FSDP2-sharded model cannot honour raise ``ValueError`` naming the setting."""
    if cfg.curvature != "hessian":
        raise ValueError(f"HessianConfig(curvature={cfg.curvature!r}) is not supported on an FSDP2-sharded "
                         "model: only the Hessian has a sharded operator (ShardedHessianOperator)")
    if cfg.decomposition:
        raise ValueError("HessianConfig(decomposition=True) is not supported on an FSDP2-sharded model: the "
                         "Gauss–Newton operator has no sharded form")


def _scalar(v: Any) -> Optional[float]:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float, np.integer, np.floating)):
        return float(v)
    return None


class _Step:
    """One :meth:`HessianAnalyzer.analyze_step` call: its operators, its results and their bookkeeping.

    Every section runs through :meth:`run`, which times it, counts the products of its operators into
    ``meta`` and records a failure under the section's name (or raises it when ``strict``)."""

    def __init__(self, cfg: HessianConfig, model: nn.Module, loss_fn: Any, model_type: Optional[str],
                 step: Any, strict: bool) -> None:
        self.cfg, self.model, self.loss_fn, self.model_type = cfg, model, loss_fn, model_type
        self.strict = strict
        self.results: dict[str, Any] = {"step": step, "model_type": model_type}
        self.errors: dict[str, str] = {}
        self.meta: dict[str, Any] = {"time_s": {}, "matvecs": {}, "lanczos_matvecs": {}}
        self.t_start = time.perf_counter()
        self.H: Any = None            # the analysed operator (HessianConfig.curvature)
        self.Hv: Any = None           # the same curvature on the validation data
        self.hessian_op: Any = None   # the Hessian (is H for curvature="hessian")
        self.ggn_op: Any = None       # the Gauss–Newton matrix, when analysed or decomposed
        self.operators: list[Any] = []
        self.index_sets: dict[str, Tensor] = {}
        self.extras: dict[str, Any] = {}
        self.top_vals: Optional[Tensor] = None
        self.top_vecs: Optional[Tensor] = None
        self.components = ComponentAnalyzer(include_bias=cfg.include_bias, tol=cfg.tolerance,
                                            trace_probes=cfg.trace_probes, seed=cfg.seed,
                                            max_iter=cfg.max_iter)

    def build_operators(self, train_batch: Any, val_batch: Any, train_name: str) -> Any:
        """The train (and validation) operators: invalid arguments raise here, whatever ``strict`` says.
        Returns the training data as the operators read it (materialised once when several operators
        share it)."""
        cfg = self.cfg
        kw = dict(num_batches=cfg.num_batches, device=cfg.device, dtype=cfg.dtype, eval_mode=cfg.eval_mode,
                  pad_idx=cfg.pad_idx, loss_source=cfg.loss_source)
        model, loss_fn, model_type = self.model, self.loss_fn, self.model_type
        curv = cfg.curvature != "hessian"
        if curv or cfg.decomposition:
            train_batch = _materialised(train_batch, cfg.num_batches, train_name)
        self.hessian_op = make_operator(model, loss_fn, train_batch, model_type, arg_name=train_name, **kw)
        if self.hessian_op.sharded:
            _check_sharded_config(cfg)
        self.H = self.curvature_operator(cfg.curvature, train_batch) if curv else self.hessian_op
        kind = f" ({cfg.fisher_kind})" if cfg.curvature == "fisher" else ""
        self.meta["curvature"] = cfg.curvature + kind
        ev = getattr(self.hessian_op, "evaluator", None)
        self.meta["loss_source"] = ev.loss_source_used if ev is not None else self.hessian_op.loss_source_used
        dt = self.hessian_op.dtype if ev is None else ev.dtype
        self.meta["compute_dtype"] = str(dt).replace("torch.", "")
        self.meta["upcast_half"] = bool(ev is not None and ev.upcast)
        self.meta["sharded"] = bool(self.hessian_op.sharded)
        if cfg.track_train_val_landscape_divergence and val_batch is not None:
            if curv:
                val_batch = _materialised(val_batch, cfg.num_batches, "val_batch")
                make_operator(model, loss_fn, val_batch, model_type, arg_name="val_batch", **kw)  # its checks
                self.Hv = self.curvature_operator(cfg.curvature, val_batch)
            else:
                self.Hv = make_operator(model, loss_fn, val_batch, model_type, arg_name="val_batch", **kw)
        self.operators = [op for op in (self.H, self.Hv) if op is not None]
        if curv:
            self.operators.append(self.hessian_op)
        self.meta["time_s"]["setup"] = time.perf_counter() - self.t_start
        if cfg.track_component_hessian and self.H.sharded:
            self.skip("components")
        elif cfg.track_component_hessian:
            try:
                self.index_sets = self.components.component_index_sets(self.model, self.H.layout,
                                                                       cfg.component_list)
            except Exception as e:  # noqa: BLE001 - recorded, the spectrum still runs
                self.fail("components", e)
        return train_batch

    def block_spectra(self) -> dict[str, Any]:
        """Blockwise SLQ densities and their Jensen–Shannon distances
        (:func:`hessext.analysis.blocks.block_spectra`): the non-empty components when components are
        tracked, else one block per parameter tensor (Zhang et al. 2024); components may overlap (each
        block's density is its own)."""
        cfg = self.cfg
        blocks = {k: v for k, v in self.index_sets.items() if v.numel() > 0}
        blocks = blocks or parameter_blocks(self.H.layout)
        return block_spectra(self.H, blocks, num_probes=cfg.block_spectra_probes,
                             num_iter=cfg.block_spectra_iter, seed=cfg.seed, allow_overlap=True).to_dict()

    def curvature_operator(self, curvature: str, data: Any) -> Any:
        """The ``"ggn"`` or ``"fisher"`` operator of ``data`` with the conventions of the Hessian operator
        (dtype, device, eval mode, padding label, and its data-parallel reducer inside
        ``data_parallel()``)."""
        cfg, H = self.cfg, self.hessian_op
        pad = cfg.pad_idx if cfg.pad_idx is not None else getattr(self.model, "pad_idx", None)
        pad = pad if isinstance(pad, int) and not isinstance(pad, bool) else None
        kw = dict(model_type=self.model_type, pad_idx=pad, dtype=cfg.dtype, eval_mode=cfg.eval_mode,
                  device=None if cfg.device in (None, "auto") else H.device, reducer=matching_reducer(H))
        if curvature == "ggn":
            return GGNOperator(self.model, self.loss_fn, _as_data(data), **kw)
        return FisherOperator(self.model, self.loss_fn, _as_data(data), kind=cfg.fisher_kind, seed=cfg.seed,
                              **kw)

    def skip(self, section: str) -> None:
        """Record why ``section`` does not run on an FSDP2-sharded model (:data:`SHARDED_SKIPPED`), as the
        section's error (raised when ``strict``)."""
        self.fail(section, NotImplementedError(SHARDED_SKIPPED[section]))

    def fail(self, section: str, exc: BaseException) -> None:
        """Record ``exc`` as the error of ``section`` (raise it when ``strict``)."""
        if self.strict:
            raise exc
        self.errors[section] = f"{type(exc).__name__}: {exc}"

    def run(self, section: str, fn: Callable[[], Any], operators: Sequence[Any], *, needs_core: bool = True,
            book: bool = True) -> None:
        """``results[section] = fn()``, its time and products in ``meta`` (unless ``book=False``: the
        section books itself), or its failure recorded. Sections after the full-model one are skipped when
        it failed."""
        try:
            if needs_core and "hessian" not in self.results:
                raise RuntimeError("skipped: the full-model analysis failed")
            value, seconds, matvecs = _measured(fn, operators)
        except Exception as e:  # noqa: BLE001 - a failing section must not lose the others
            self.fail(section, e)
            return
        if book:
            self.meta["time_s"][section] = seconds
            self.meta["matvecs"][section] = matvecs
        self.results[section] = value

    # ---- the sections
    def hessian(self) -> dict[str, Any]:
        """The full-model section (it books its eigen and trace parts separately in ``meta``)."""
        sec, self.extras = _spectrum_section(self.H, self.cfg, self.index_sets)
        ex = self.extras
        self.meta["time_s"]["hessian_lanczos"] = ex["t_eig"]
        self.meta["time_s"]["trace"] = ex["t_trace"]
        self.meta["matvecs"]["hessian_lanczos"] = ex["eig_matvecs"]
        self.meta["matvecs"]["trace"] = ex["trace_matvecs"]
        self.meta["lanczos_matvecs"]["hessian"] = ex["eig_matvecs"]
        self.top_vals, self.top_vecs = ex["top"].descending()
        return sec

    def component_blocks(self, train_batch: Any) -> dict[str, dict]:
        """Each component's block: one Lanczos run each, traces from the full-model probes."""
        trace = self.extras.get("trace")
        block_traces = trace.get("blocks") if trace else None
        out = self.components.analyze_all_components(
            self.model, self.loss_fn, train_batch, self.model_type, component_list=list(self.index_sets),
            n_components=self.cfg.n_components, operator=self.H, block_traces=block_traces or {})
        self.meta["lanczos_matvecs"]["components"] = {c: int(r["num_matvecs"]) for c, r in out.items()}
        return out

    def alignment(self) -> dict[str, Any]:
        """The gradient and ONE extra product ``H g``, against the top Ritz pairs."""
        H = self.H
        loss, g = H.loss_and_grad()
        al = gradient_alignment(g, H @ g, self.top_vals, self.top_vecs,
                                allreduce=H.allreduce_ if H.sharded else None)
        al["loss"] = float(loss)
        self.results["hessian"]["loss"] = float(loss)
        self.results["hessian"]["grad_norm"] = al["grad_norm"]
        return al

    def sharpness(self) -> dict[str, float]:
        """From the full-model section (no product)."""
        hs = self.results["hessian"]
        tr = hs["hessian_trace_estimate"]
        finite = math.isfinite(tr)
        return sharpness_metrics(hs["top_eigenvalues"], hs["min_eigenvalue"], tr if finite else None,
                                 hs["num_parameters"], hs["hessian_trace_std_error"] if finite else None)

    def divergence(self) -> dict[str, Any]:
        """The validation operator's spectrum (same seed) against the training one."""
        vsec, vextras = _spectrum_section(self.Hv, self.cfg, None)
        self.meta["lanczos_matvecs"]["val"] = vextras["eig_matvecs"]
        _, v_vecs = vextras["top"].descending()
        hs = self.results["hessian"]
        div = train_val_divergence(hs, vsec, hs["top_eigenvalues"], vsec["top_eigenvalues"], self.top_vecs,
                                   v_vecs)
        div["val_hessian"] = {k: vsec[k] for k in (
            "max_eigenvalue", "min_eigenvalue", "top_eigenvalues", "hessian_trace_estimate",
            "hessian_trace_std_error", "negative_count", "effective_rank_95")}
        return div

    def decomposition(self, train_batch: Any) -> dict[str, Any]:
        """``H = G + E`` side by side: top eigenvalues of the three (both ends for ``E``), and their traces
        from one shared Hutch++ sketch and probe set (:func:`shared_hutchpp`). A spectrum already computed by
        the ``hessian`` section for the same matrix is reused."""
        cfg = self.cfg
        if self.ggn_op is None:
            self.ggn_op = self.H if cfg.curvature == "ggn" else self.curvature_operator("ggn", train_batch)
            self.operators.append(self.ggn_op)
        H, G = self.hessian_op, self.ggn_op
        E = residual_operator(H, G)
        k = min(cfg.n_components, H.n)
        out: dict[str, Any] = {}
        k_e = min(cfg.n_bottom, H.n - k)
        for name, op, k_bot in (("hessian", H, 0), ("ggn", G, 0), ("residual", E, k_e)):
            if op is self.H and k_bot == 0 and self.extras.get("top") is not None:
                top, bottom = self.extras["top"], None          # the hessian section's run (same settings)
            else:
                top, bottom = extreme_ritz_pairs(op, k, k_bot, cfg.tolerance, cfg.seed, cfg.max_iter)
            out[name] = {"top_eigenvalues": as_floats(top.descending()[0]),
                         "converged": bool(top.converged and (bottom is None or bottom.converged))}
            if bottom is not None:
                out[name]["bottom_eigenvalues"] = as_floats(bottom.eigenvalues)
        m0 = H.num_matvecs + G.num_matvecs
        if cfg.trace_probes > 0:
            for name, tr in shared_hutchpp(H, G, cfg.trace_probes, cfg.seed).items():
                out[name]["trace"], out[name]["trace_std_error"] = tr["estimate"], tr["std_error"]
        out["trace_method"] = "hutch++ (one sketch of H and one probe set shared by H, G and E)"
        out["trace_matvecs"] = int(H.num_matvecs + G.num_matvecs - m0)
        return out

    def finish(self) -> dict[str, Any]:
        """The results with ``meta`` (totals) and the errors."""
        meta, results = self.meta, self.results
        meta["time_s"]["total"] = time.perf_counter() - self.t_start
        meta["matvecs"]["total"] = int(sum(v for k, v in meta["matvecs"].items() if k != "total"))
        # Every product the operators counted (equals ``matvecs["total"]``: no HVP outside a section).
        meta["operator_matvecs"] = int(sum(op.num_matvecs for op in self.operators))
        results["meta"] = meta
        if self.errors:
            results["errors"] = self.errors
            results["error"] = "; ".join(f"{k}: {v}" for k, v in self.errors.items())
        return results


# ------------------------------------------------------------------------------------------------ analyzer
class HessianAnalyzer:
    """Hessian analysis of a model at a training step (API B).

    Args:
        config: a :class:`HessianConfig` (None: ``HessianConfig.default()``).

    Attributes:
        config: the configuration (change it with :meth:`update_config`).
        history: ``{step: results}`` of every :meth:`analyze_step` call (without eigenvectors), used by
            ``create_plots``.
        last_eigenvectors: top eigenvectors ``[k, n]`` (descending eigenvalues) of the last step; on an
            FSDP2-sharded model ``[k, n_local]``, this rank's shards (``ShardedHessianOperator.layout``
            order; ``gather`` assembles whole vectors).
    """

    def __init__(self, config: Optional[HessianConfig] = None) -> None:
        if config is None:
            config = HessianConfig.default()
        if not isinstance(config, HessianConfig):
            raise TypeError(f"config must be a HessianConfig or None, got {type(config).__name__}")
        self.config = config
        self.history: dict[Any, dict] = {}
        self.last_eigenvectors: Optional[Tensor] = None

    @classmethod
    def from_config(cls, config: HessianConfig) -> "HessianAnalyzer":
        """``HessianAnalyzer(config)``."""
        return cls(config)

    def update_config(self, **kwargs: Any) -> HessianConfig:
        """Change configuration fields; validated as a whole (the old config stays on error).

        Raises:
            ValueError: an unknown field or an invalid value.
        """
        names = {f.name for f in dataclasses.fields(HessianConfig)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise ValueError(f"unknown HessianConfig fields {unknown}; valid fields: {sorted(names)}")
        self.config = dataclasses.replace(self.config, **kwargs)
        return self.config

    # -------------------------------------------------------------- main entry
    def analyze_step(self, model: nn.Module, loss_fn: Any, train_batch: Any, val_batch: Any = None,
                     model_type: Optional[str] = "decoder_only", step: int = 0, *,
                     strict: bool = False) -> dict[str, Any]:
        """Analyse the Hessian of ``loss_fn`` at the model's current parameters.

        Args:
            model: the model (not modified; analysed in eval mode unless ``config.eval_mode=False``).
            loss_fn: criterion; dict batches ``{"input_ids", "labels"}`` use the ``model_type`` loss of
                :mod:`hessext.data`, ``(inputs, targets)`` batches ``loss_fn(model(inputs), targets)``.
            train_batch: a batch, a list of batches or a DataLoader (``config.num_batches`` of them).
            val_batch: optional validation data (enables ``train_val_divergence``).
            model_type: "decoder_only", "encoder_only" or "encoder_decoder".
            step: training step (a key of :attr:`history` and of saved files).
            strict: raise the first section error instead of recording it under ``"error"``.

        Raises:
            TypeError, ValueError: invalid arguments, whatever ``strict`` says — the message names the
                argument (``model``, ``loss_fn``, ``model_type``, ``train_batch``, ``val_batch``: ``None``, no
                batch, a dict without ``input_ids``/``labels``, float ``input_ids``, an unsupported type).
                Failures while analysing (e.g. labels out of the vocabulary, NaN loss, out of memory) are
                recorded per section unless ``strict``.

        Returns:
            ``{"hessian": {...}, "components": {name: {...}}, "alignment": {...}, "sharpness": {...},
            "train_val_divergence": {...}, "step", "model_type", "meta": {time_s, matvecs per section}}`` —
            a section is present when tracked (``train_val_divergence`` needs ``val_batch``). If a section
            fails, ``"error"`` holds ``"section: message"`` texts and ``"errors"`` a dict section → message;
            the other sections are kept.

        ``results["hessian"]`` fields (besides :meth:`HessianMetrics.compute_detailed_hessian_metrics` of the
        top-k eigenvalues): ``max_eigenvalue`` (largest algebraic Ritz value), ``min_eigenvalue`` (smallest
        algebraic Ritz value, from the bottom of the spectrum), ``top_eigenvalues`` (descending),
        ``bottom_eigenvalues`` (ascending), ``hessian_trace_estimate`` ± ``hessian_trace_std_error``
        (Hutchinson with ``trace_probes`` Rademacher probes — not a sum of eigenvalues; ``complexity_score``
        uses it), ``negative_count`` (number of negative values among the computed top and bottom Ritz
        values — a lower bound on the number of negative eigenvalues), ``num_matvecs``, ``residuals``,
        ``loss`` and ``grad_norm`` when the gradient was needed.
        """
        return self._analyze(model, loss_fn, train_batch, val_batch, model_type, step, strict, "train_batch")

    def _analyze(self, model: nn.Module, loss_fn: Any, train_batch: Any, val_batch: Any,
                 model_type: Optional[str], step: Any, strict: bool, train_name: str) -> dict[str, Any]:
        cfg = self.config
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if model_type is not None and model_type not in MODEL_TYPES:
            raise ValueError(f"model_type must be one of {MODEL_TYPES}, got {model_type!r}")
        check_bool("strict", strict)
        run = _Step(cfg, model, loss_fn, model_type, step, strict)
        train_batch = run.build_operators(train_batch, val_batch, train_name)
        H = (run.H,)
        run.run("hessian", run.hessian, H, needs_core=False, book=False)
        if run.top_vecs is not None:
            self.last_eigenvectors = run.top_vecs
        if cfg.track_component_hessian and "components" not in run.errors:
            run.run("components", lambda: run.component_blocks(train_batch), H)
        if cfg.track_gradient_alignment:
            run.run("alignment", run.alignment, H)
        if cfg.track_sharpness:
            run.run("sharpness", run.sharpness, H)
        if run.Hv is not None and run.H.sharded:
            run.skip("train_val_divergence")
        elif run.Hv is not None:
            run.run("train_val_divergence", run.divergence, (run.Hv,))
        if cfg.decomposition:
            run.run("decomposition", lambda: run.decomposition(train_batch), run.operators)
        if cfg.track_block_spectra and run.H.sharded:
            run.skip("block_spectra")
        elif cfg.track_block_spectra:
            run.run("block_spectra", run.block_spectra, H)
        results = run.finish()

        self.history[step] = results
        if cfg.save_hessian_data:
            try:
                self.save_hessian_data(results, step)
            except Exception as e:  # noqa: BLE001
                warnings.warn(f"save_hessian_data failed: {e}", UserWarning, stacklevel=3)
        if cfg.create_plots:
            self.create_plots()
        return results

    # -------------------------------------------------------------- persistence and plots
    def save_hessian_data(self, results: Mapping[str, Any], step: Any = None) -> dict[str, str]:
        """Write ``results`` to ``output_dir`` as one unit: ``{model_name}_step{step}.json`` (every section,
        non-finite floats as ``null``) and ``.npz`` (eigenvalue arrays; top eigenvectors when
        ``save_eigenvectors``, float64 for a float64 analysis) — both files or neither
        (:func:`hessext.analysis.persistence.write_together`). No pickle. Returns the two paths."""
        cfg = self.config
        step = results.get("step", 0) if step is None else step
        base = os.path.join(str(cfg.output_dir), f"{cfg.model_name}_step{step}")
        vecs = self.last_eigenvectors if cfg.save_eigenvectors else None
        if vecs is not None and results.get("meta", {}).get("sharded"):
            raise ValueError("save_eigenvectors=True on an FSDP2-sharded model: the eigenvectors are this "
                             "rank's shards, not whole vectors; set save_eigenvectors=False (or gather them "
                             "with ShardedHessianOperator.gather)")
        return save_results(results, cfg.to_dict(), base, vecs)

    def create_plots(self, save_path: Optional[str] = None) -> list[str]:
        """Draw the evolution plots of :attr:`history` with :class:`hessext.viz.HessianVisualizer`.

        Skipped with a warning when the visualiser (or matplotlib) is unavailable. Returns the names of the
        plot functions that ran.
        """
        try:
            from ..viz import HessianVisualizer
        except Exception as e:  # noqa: BLE001 - optional dependency
            warnings.warn(f"create_plots skipped: hessext.viz is unavailable ({e})", UserWarning,
                          stacklevel=2)
            return []
        path = save_path or os.path.join(str(self.config.output_dir), "plots")
        name = self.config.model_name
        hist = self.history
        calls = [
            ("plot_eigenvalue_evolution", {s: r["hessian"] for s, r in hist.items() if "hessian" in r}),
            ("plot_complexity_metrics", {s: r["hessian"] for s, r in hist.items() if "hessian" in r}),
            ("plot_component_comparison",
             {s: r["components"] for s, r in hist.items() if r.get("components")}),
            ("plot_gradient_alignment", {s: r["alignment"] for s, r in hist.items() if "alignment" in r}),
            ("plot_sharpness", {s: r["sharpness"] for s, r in hist.items() if "sharpness" in r}),
            ("plot_memorization_metrics",
             {s: r["train_val_divergence"] for s, r in hist.items() if "train_val_divergence" in r}),
        ]
        done = []
        for fn_name, data in calls:
            fn = getattr(HessianVisualizer, fn_name, None)
            if fn is None or not data:
                continue
            try:
                fig = fn(data, save_path=path, model_name=name)
                done.append(fn_name)
                plt = sys.modules.get("matplotlib.pyplot")
                if plt is not None and fig is not None:
                    plt.close(fig)  # figures made through pyplot belong to the caller: do not leak them
            except Exception as e:  # noqa: BLE001 - a plot must not break the analysis
                warnings.warn(f"{fn_name} failed: {e}", UserWarning, stacklevel=2)
        return done

    # -------------------------------------------------------------- reporting
    def get_analysis_summary(self, results: Mapping[str, Any]) -> str:
        """A readable multi-line summary of :meth:`analyze_step` results."""
        def fmt(v: Any) -> str:
            if isinstance(v, bool) or v is None:
                return str(v)
            if isinstance(v, (int, np.integer)):
                return f"{int(v):,}"
            if isinstance(v, (float, np.floating)):
                return f"{float(v):.4g}"
            return str(v)

        lines = [f"Hessian analysis — step {results.get('step', '?')} ({results.get('model_type')})"]
        hs = results.get("hessian")
        if hs:
            lines += [
                f"  parameters analysed:   {fmt(hs.get('num_parameters'))}",
                f"  max eigenvalue:        {fmt(hs.get('max_eigenvalue'))}",
                f"  min eigenvalue:        {fmt(hs.get('min_eigenvalue'))}",
                f"  trace estimate:        {fmt(hs.get('hessian_trace_estimate'))} ± "
                f"{fmt(hs.get('hessian_trace_std_error'))} ({hs.get('trace_num_probes')} probes)",
                f"  negative Ritz values:  {hs.get('negative_count')} of "
                f"{hs.get('num_computed_eigenvalues')} computed",
                "  top eigenvalues:       " + ", ".join(fmt(x) for x in hs.get("top_eigenvalues", [])[:10]),
                f"  condition number (top-k): {fmt(hs.get('condition_number'))}, effective rank 95%: "
                f"{hs.get('effective_rank_95')}, entropy rank: {fmt(hs.get('effective_rank_entropy'))}, "
                f"complexity: {fmt(hs.get('complexity_score'))}",
            ]
            if not hs.get("converged", True):
                lines.append(f"  note: Lanczos stopped before tolerance {self.config.tolerance:g} "
                             f"(max residual {fmt(max(hs.get('residuals') or [float('nan')]))}); "
                             "raise max_iter")
            if "loss" in hs:
                lines.append(f"  loss: {fmt(hs['loss'])}, gradient norm: {fmt(hs.get('grad_norm'))}")
        dec = results.get("decomposition")
        if dec:
            parts = [f"{k} λmax {fmt((dec[k].get('top_eigenvalues') or [float('nan')])[0])}, trace "
                     f"{fmt(dec[k].get('trace'))}" for k in ("hessian", "ggn", "residual") if k in dec]
            lines.append("Decomposition H = G + E: " + "; ".join(parts))
        comps = results.get("components")
        if comps:
            lines.append("Components (max eigenvalue, trace ± SE, parameters):")
            for c, e in comps.items():
                tr = (f"{fmt(e['trace_estimate'])} ± {fmt(e.get('trace_std_error'))}"
                      if "trace_estimate" in e else "n/a")
                lines.append(f"  {c:<18} {fmt(e.get('max_eigenvalue')):>11}   {tr:<22} "
                             f"{fmt(e.get('num_parameters'))}")
        for section, title, fields in _SUMMARY_LINES:
            sec = results.get(section)
            if sec:
                values = ", ".join(f"{label} = {fmt(sec.get(key))}" for label, key in fields)
                lines.append(f"{title}: {values}")
        meta = results.get("meta")
        if meta:
            lines.append(f"Cost: {meta['matvecs'].get('total')} Hessian-vector products, "
                         f"{meta['time_s'].get('total', float('nan')):.2f} s")
        if "error" in results:
            lines.append(f"Errors: {results['error']}")
        return "\n".join(lines)

    @staticmethod
    def _scalars(results: Mapping[str, Any]) -> dict[str, float]:
        out: dict[str, float] = {}
        for section in ("hessian", "sharpness", "alignment"):
            for k, v in (results.get(section) or {}).items():
                s = _scalar(v)
                if s is None:
                    continue
                key = k if k not in out else f"{section}_{k}"
                out[key] = s
        for comp, entry in (results.get("components") or {}).items():
            for k, v in entry.items():
                s = _scalar(v)
                if s is not None:
                    out[f"{comp}_{k}"] = s
        for k, v in (results.get("train_val_divergence") or {}).items():
            s = _scalar(v)
            if s is not None:
                out[f"train_val_{k}" if k in out else k] = s
        return out

    def compute_batch_analysis(self, model: nn.Module, loss_fn: Any, data_batches: Iterable[Any],
                               model_type: Optional[str] = "decoder_only") -> dict[str, Any]:
        """Analyse each batch separately and aggregate every scalar metric.

        For each scalar metric ``m`` (of ``hessian``, ``sharpness``, ``alignment``; component metrics as
        ``{component}_{m}``): ``m_mean`` and ``m_std`` (population standard deviation over batches) over the
        batches whose analysis produced it. Also ``num_batches`` and ``errors`` (batch index → message).
        Batches are not saved to :attr:`history`.

        Raises:
            TypeError: ``data_batches`` is a single batch or not iterable. ValueError: it is empty. Invalid
                batches raise as in :meth:`analyze_step`, named ``data_batches[i]``.
        """
        if is_batch(data_batches):
            raise TypeError(f"data_batches must be a list (or an iterable) of batches, got a single batch "
                            f"({type(data_batches).__name__}); wrap it: [batch]")
        if isinstance(data_batches, (str, bytes)) or not isinstance(data_batches, Iterable):
            raise TypeError(f"data_batches must be a list (or an iterable) of batches, got "
                            f"{type(data_batches).__name__}")
        with isolated_forward():  # a DataLoader's draws go to a private generator, never the global RNG
            batches = list(data_batches)
        if not batches:
            raise ValueError("data_batches is empty")
        per: list[dict[str, float]] = []
        errors: dict[int, str] = {}
        saved = dict(self.history)
        cfg = self.config
        try:
            self.config = dataclasses.replace(cfg, save_hessian_data=False, create_plots=False)
            for i, b in enumerate(batches):
                r = self._analyze(model, loss_fn, b, None, model_type, i, False, f"data_batches[{i}]")
                if "error" in r:
                    errors[i] = r["error"]
                per.append(self._scalars(r))
        finally:
            self.config = cfg
            self.history = saved
        keys = sorted({k for d in per for k in d})
        out: dict[str, Any] = {"num_batches": len(batches), "errors": errors}
        for k in keys:
            vals = np.array([d[k] for d in per if k in d], dtype=np.float64)
            fin = vals[np.isfinite(vals)]
            out[f"{k}_mean"] = float(fin.mean()) if fin.size else float("nan")
            out[f"{k}_std"] = float(fin.std()) if fin.size else float("nan")
        return out
