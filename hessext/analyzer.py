"""API B orchestration: ``HessianConfig`` and ``HessianAnalyzer`` (``project.hessian`` → ``hessext.hessian``).

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
=====================  ============================================================================  =========

The model is analysed in eval mode (dropout off) and is never modified (``hessext.hvp`` policy).
``results["meta"]`` records the time and HVP count of each section (``matvecs``), the HVPs of each Lanczos
solve (``lanczos_matvecs``: ``hessian``, ``components`` per name, ``val``) and every product the operators
counted (``operator_matvecs``, equal to ``matvecs["total"]``: no HVP outside a section).
"""
from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ._io import atomic_write
from ._state import restore_rng_state, rng_state
from .alignment import gradient_alignment, sharpness_metrics, train_val_divergence
from .components import ComponentAnalyzer, ComponentSelector, shared_probe_traces
from .metrics import HessianMetrics

__all__ = ["HessianConfig", "HessianConfigError", "HessianAnalyzer", "MODEL_TYPES"]

MODEL_TYPES = ("decoder_only", "encoder_only", "encoder_decoder")
SECTIONS = ("hessian", "components", "alignment", "sharpness", "train_val_divergence")


class HessianConfigError(ValueError, TypeError):
    """An invalid :class:`HessianConfig` value (a wrong value or a wrong type).

    A ``ValueError`` — what the API B document catches as a configuration error — and, for wrong types, also
    a ``TypeError``, so that either ``except`` clause catches it."""


def _is_pos_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool) and x > 0


@dataclass
class HessianConfig:
    """Settings of :class:`HessianAnalyzer`. Invalid values raise :class:`HessianConfigError` — a ``ValueError``
    (and a ``TypeError``) whose message names the field.

    Attributes:
        n_components: number k of top eigenvalues (Ritz pairs) of the full Hessian and of each component.
        n_bottom: number (≥ 1) of eigenvalues computed from the bottom of the spectrum in the same Lanczos
            run (``min_eigenvalue`` is the smallest of them; ``negative_count`` counts the negative values among
            all computed Ritz values).
        num_batches: batches averaged when ``train_batch``/``val_batch`` is an iterable (DataLoader) or a
            list of batches; ignored for a single batch. None: all (for a DataLoader, its full length).
        device: "cpu", "cuda", "cuda:0", a ``torch.device``, or None/"auto" (the parameters' device). "cuda"
            without a GPU warns and falls back to the parameters' device.
        track_component_hessian: analyse the components of ``component_list``.
        component_list: component names (see :mod:`hessext.components`); None: the standard list.
        track_gradient_alignment: gradient–curvature alignment (one extra HVP).
        track_sharpness: sharpness metrics (no extra HVP).
        track_train_val_landscape_divergence: compare with ``val_batch`` (when one is given).
        tolerance: Lanczos stopping tolerance on the relative Ritz residuals ``‖Hv − λv‖ / |λ|``.
        max_iter: cap on the Krylov dimension (HVPs) of each Lanczos run; None: ``min(n, 10k + 200)``
            (runs stop as soon as ``tolerance`` is met; ``converged`` in the results says whether it was).
        trace_probes: Rademacher probes of the Hutchinson trace estimate (≥ 2 for a standard error).
        seed: seed of the probes and of the Lanczos start vector.
        include_bias: count bias vectors as part of components.
        save_hessian_data: write each step's results as JSON + NPZ into ``output_dir``.
        save_eigenvectors: also store the top eigenvectors ``[k, n]`` in the NPZ file.
        create_plots: draw the figures of :class:`hessext.viz.HessianVisualizer` into ``output_dir``.
        output_dir: directory of saved data and plots.
        model_name: prefix of saved files and plot titles.
        eval_mode: analyse the model in eval mode (dropout off; recommended).
        dtype: computation dtype (None: the parameters'; ``torch.float64`` for reference runs).
        pad_idx: label value ignored by dict-batch losses besides -100 (None: the model's ``pad_idx``
            attribute if it has one).
    """

    n_components: int = 10
    n_bottom: int = 1
    num_batches: Optional[int] = None
    device: Any = None
    track_component_hessian: bool = True
    component_list: Optional[list] = None
    track_gradient_alignment: bool = True
    track_sharpness: bool = True
    track_train_val_landscape_divergence: bool = True
    tolerance: float = 1e-4
    max_iter: Optional[int] = None
    trace_probes: int = 20
    seed: int = 0
    include_bias: bool = False
    save_hessian_data: bool = False
    save_eigenvectors: bool = False
    create_plots: bool = False
    output_dir: str = "./hessian_analysis"
    model_name: str = "model"
    eval_mode: bool = True
    dtype: Optional[torch.dtype] = None
    pad_idx: Optional[int] = None

    def __post_init__(self) -> None:
        if not _is_pos_int(self.n_components):
            raise HessianConfigError(f"n_components must be a positive int, got {self.n_components!r}")
        if not _is_pos_int(self.n_bottom):
            raise HessianConfigError(f"n_bottom must be a positive int (min_eigenvalue is the smallest "
                                     f"eigenvalue, from the bottom of the spectrum), got {self.n_bottom!r}")
        if self.num_batches is not None and not _is_pos_int(self.num_batches):
            raise HessianConfigError(f"num_batches must be a positive int or None, got {self.num_batches!r}")
        if self.device is not None and not isinstance(self.device, torch.device):
            if not isinstance(self.device, str):
                raise HessianConfigError(f"device must be a str, a torch.device or None, got "
                                         f"{type(self.device).__name__}")
            if self.device != "auto":
                try:
                    torch.device(self.device)
                except (RuntimeError, ValueError) as e:
                    raise HessianConfigError(f"device must be 'cpu', 'cuda', 'cuda:N', 'auto' or None, got "
                                     f"{self.device!r}") from e
        for name in ("track_component_hessian", "track_gradient_alignment", "track_sharpness",
                     "track_train_val_landscape_divergence", "include_bias", "save_hessian_data",
                     "save_eigenvectors", "create_plots", "eval_mode"):
            if not isinstance(getattr(self, name), bool):
                raise HessianConfigError(f"{name} must be a bool, got {getattr(self, name)!r}")
        tol = self.tolerance
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not math.isfinite(tol) or tol <= 0:
            raise HessianConfigError(f"tolerance must be a positive finite number, got {tol!r}")
        if self.max_iter is not None and not _is_pos_int(self.max_iter):
            raise HessianConfigError(f"max_iter must be a positive int or None, got {self.max_iter!r}")
        if isinstance(self.trace_probes, bool) or not isinstance(self.trace_probes, (int, np.integer)) \
                or self.trace_probes < 0:
            raise HessianConfigError(f"trace_probes must be a non-negative int, got {self.trace_probes!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise HessianConfigError(f"seed must be a non-negative int, got {self.seed!r}")
        if self.component_list is None:
            self.component_list = ComponentSelector.get_standard_components()
        elif isinstance(self.component_list, str):
            raise HessianConfigError(f"component_list must be a list of names, got the str "
                                     f"{self.component_list!r}")
        else:
            try:
                self.component_list = ComponentSelector.check_names(self.component_list)
            except (TypeError, ValueError) as e:
                raise HessianConfigError(f"component_list: {e}") from e
            if self.track_component_hessian and not self.component_list:
                raise HessianConfigError("component_list is empty while track_component_hessian=True")
        if not isinstance(self.output_dir, (str, os.PathLike)) or not str(self.output_dir):
            raise HessianConfigError(f"output_dir must be a non-empty path, got {self.output_dir!r}")
        if not isinstance(self.model_name, str) or not self.model_name or os.sep in self.model_name:
            raise HessianConfigError(f"model_name must be a non-empty file-name-safe str, got "
                                     f"{self.model_name!r}")
        if self.dtype is not None and self.dtype not in (torch.float32, torch.float64):
            raise HessianConfigError(f"dtype must be torch.float32, torch.float64 or None, got {self.dtype!r}")
        if self.pad_idx is not None and (isinstance(self.pad_idx, bool) or not isinstance(self.pad_idx, int)):
            raise HessianConfigError(f"pad_idx must be an int or None, got {self.pad_idx!r}")

    # -------------------------------------------------------------- presets
    @classmethod
    def minimal(cls, **kwargs: Any) -> "HessianConfig":
        """Fast: 5 top eigenvalues, 10 trace probes, no components, no alignment, no train/val."""
        base = dict(n_components=5, trace_probes=10, track_component_hessian=False,
                    track_gradient_alignment=False, track_sharpness=True,
                    track_train_val_landscape_divergence=False,
                    component_list=ComponentSelector.get_minimal_components())
        base.update(kwargs)
        return cls(**base)

    @classmethod
    def default(cls, **kwargs: Any) -> "HessianConfig":
        """Balanced: 10 eigenvalues, standard components, alignment, sharpness, train/val, 20 probes."""
        return cls(**kwargs)

    @classmethod
    def comprehensive(cls, **kwargs: Any) -> "HessianConfig":
        """Detailed: 20 eigenvalues (5 from the bottom), every component, 50 probes, tighter tolerance."""
        base = dict(n_components=20, n_bottom=5, trace_probes=50, tolerance=1e-5,
                    component_list=ComponentSelector.get_comprehensive_components())
        base.update(kwargs)
        return cls(**base)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["device"] = None if self.device is None else str(self.device)
        d["dtype"] = None if self.dtype is None else str(self.dtype)
        d["output_dir"] = str(self.output_dir)
        return d


# ------------------------------------------------------------------------------------------------ helpers
def _resolve_device(device: Any) -> Optional[torch.device]:
    if device is None or device == "auto":
        return None
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        warnings.warn(f"device={str(device)!r} requested but CUDA is not available; using the parameters' device",
                      UserWarning, stacklevel=3)
        return None
    return dev


def _is_single_batch(data: Any) -> bool:
    from .data import is_batch
    return is_batch(data)


def _checked_batches(data: Any, num_batches: Optional[int], arg_name: str) -> list:
    """``data`` as its list of batches (a DataLoader is iterated once, the global RNG restored); errors name
    ``arg_name``. Dict batches must hold ``input_ids`` and ``labels``."""
    from collections.abc import Mapping as _Mapping

    from .data import normalize_data

    rng = rng_state()  # iterating a DataLoader draws its base seed from the global torch RNG
    try:
        batches = normalize_data(data, num_batches)
    except (TypeError, ValueError) as e:
        raise type(e)(f"{arg_name}: {e}") from e
    finally:
        restore_rng_state(rng)
    for i, b in enumerate(batches):
        if isinstance(b, _Mapping):
            where = "" if len(batches) == 1 else f" (batch {i})"
            for key in ("labels", "input_ids"):
                if key not in b:
                    raise ValueError(f"{arg_name}{where}: batch dict has keys "
                                     f"{sorted(map(str, b.keys()))}; expected {key!r}")
            ids = b["input_ids"]
            if isinstance(ids, Tensor) and (ids.is_floating_point() or ids.is_complex()):
                raise TypeError(f"{arg_name}{where}: batch['input_ids'] must be an integer tensor of token "
                                f"ids, got {ids.dtype}")
    return batches


def make_operator(model: nn.Module, loss_fn: Any, data: Any, model_type: Optional[str], *,
                  num_batches: Optional[int] = None, device: Any = None, dtype: Any = None,
                  eval_mode: bool = True, pad_idx: Optional[int] = None, arg_name: str = "data") -> Any:
    """A :class:`~hessext.hvp.HessianOperator` with API B conventions.

    ``num_batches`` applies only to iterables / lists of batches (never warns for a single batch); label
    ``pad_idx`` (or the model's ``pad_idx`` attribute) is ignored by dict-batch losses besides -100. Invalid
    ``data`` raises ``ValueError``/``TypeError`` whose message starts with ``arg_name``; a ``loss_fn`` that
    is neither None nor callable raises ``TypeError``.
    """
    from .data import make_batch_loss
    from .hvp import HessianOperator

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if model_type is not None and model_type not in MODEL_TYPES:
        raise ValueError(f"model_type must be one of {MODEL_TYPES}, got {model_type!r}")
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable (e.g. torch.nn.CrossEntropyLoss()) or None, got "
                        f"{type(loss_fn).__name__}")
    nb = None if _is_single_batch(data) else num_batches
    batches = _checked_batches(data, nb, arg_name)
    # The operator gets the batches already materialised: one batch as itself, several as an iterator (a
    # list of two bare tensors would read as one (inputs, targets) pair).
    data = batches[0] if len(batches) == 1 else iter(batches)
    nb = None
    pad = pad_idx if pad_idx is not None else getattr(model, "pad_idx", None)
    batch_loss = None
    if isinstance(pad, int) and not isinstance(pad, bool):
        # HessianOperator does not take pad_idx; build the same dict/pair loss with the pad label ignored.
        batch_loss = make_batch_loss(loss_fn, model, model_type=model_type, pad_idx=pad)
    return HessianOperator(model, loss_fn, data, num_batches=nb, model_type=model_type, batch_loss=batch_loss,
                           device=_resolve_device(device), dtype=dtype, eval_mode=eval_mode)


def _extremes(A: Any, k_top: int, k_bottom: int, tol: float, seed: int,
              max_iter: Optional[int] = None) -> tuple[Any, Any]:
    from .components import _extremes as ext
    return ext(A, k_top, k_bottom, tol, seed, max_iter)


def _vals(t: Optional[Tensor]) -> list[float]:
    return [] if t is None else [float(x) for x in t.detach().to("cpu", torch.float64).tolist()]


def _spectrum_section(H: Any, cfg: HessianConfig, index_sets: Optional[Mapping[str, Tensor]]) -> tuple[dict, dict]:
    """Full-model eigen + trace: (section dict, private extras with tensors)."""
    n = H.n
    k_top = min(cfg.n_components, n)
    k_bot = min(cfg.n_bottom, n - k_top)
    t0 = time.perf_counter()
    m0 = H.num_matvecs
    top, bottom = _extremes(H, k_top, k_bot, cfg.tolerance, cfg.seed, cfg.max_iter)
    eig_mv = H.num_matvecs - m0
    t_eig = time.perf_counter() - t0
    top_vals = sorted(_vals(top.eigenvalues), reverse=True)
    bot_vals = sorted(_vals(bottom.eigenvalues)) if bottom is not None else []

    t1 = time.perf_counter()
    m1 = H.num_matvecs
    trace = None
    if cfg.trace_probes > 0:
        trace = shared_probe_traces(H, cfg.trace_probes, index_sets, seed=cfg.seed)
    trace_mv = H.num_matvecs - m1
    t_trace = time.perf_counter() - t1

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
        "residuals": _vals(top.residuals) + (_vals(bottom.residuals) if bottom is not None else []),
        "converged": bool(top.converged and (bottom is None or bottom.converged or _small_residual(
            bottom, cfg.tolerance, max(abs(top_vals[0]), abs(min(computed)))))),
        "lanczos_iterations": int(getattr(top, "iterations", 0)),
        "num_matvecs": int(eig_mv + trace_mv),
    })
    extras = {"top": top, "bottom": bottom, "trace": trace, "eig_matvecs": eig_mv, "trace_matvecs": trace_mv,
              "t_eig": t_eig, "t_trace": t_trace}
    return sec, extras


def _small_residual(res: Any, tol: float, scale: float) -> bool:
    """Residuals below ``tol`` × the spectral scale: the test that an eigenvalue near 0 can meet (a relative
    test ``‖r‖ < tol |λ|`` cannot when λ ≈ 0)."""
    return bool(res.residuals.numel() and float(res.residuals.max()) <= tol * scale)


def _top_vectors(top: Any) -> tuple[Tensor, Tensor]:
    """Top Ritz pairs sorted descending: (values [k], vectors [k, n])."""
    order = torch.argsort(top.eigenvalues, descending=True)
    return top.eigenvalues[order], top.eigenvectors[order.to(top.eigenvectors.device)]


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, Tensor):
        return _json_safe(obj.detach().cpu().tolist())
    if isinstance(obj, np.ndarray):
        return _json_safe(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (bool, int, str)) or obj is None:
        return obj
    return str(obj)


def _scalar(v: Any) -> Optional[float]:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float, np.integer, np.floating)):
        return float(v)
    return None


# ------------------------------------------------------------------------------------------------ analyzer
class HessianAnalyzer:
    """Hessian analysis of a model at a training step (API B).

    Args:
        config: a :class:`HessianConfig` (None: ``HessianConfig.default()``).

    Attributes:
        config: the configuration (change it with :meth:`update_config`).
        history: ``{step: results}`` of every :meth:`analyze_step` call (without eigenvectors), used by
            ``create_plots``.
        last_eigenvectors: top eigenvectors ``[k, n]`` (descending eigenvalues) of the last step.
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
        if not isinstance(strict, bool):
            raise TypeError(f"strict must be a bool, got {strict!r}")
        results: dict[str, Any] = {"step": step, "model_type": model_type}
        errors: dict[str, str] = {}
        meta: dict[str, Any] = {"time_s": {}, "matvecs": {}, "lanczos_matvecs": {}}
        t_start = time.perf_counter()

        # ---- operators: invalid arguments raise here (naming the argument), whatever ``strict`` says
        op_kw = dict(num_batches=cfg.num_batches, device=cfg.device, dtype=cfg.dtype, eval_mode=cfg.eval_mode,
                     pad_idx=cfg.pad_idx)
        H = make_operator(model, loss_fn, train_batch, model_type, arg_name=train_name, **op_kw)
        Hv = None
        if cfg.track_train_val_landscape_divergence and val_batch is not None:
            Hv = make_operator(model, loss_fn, val_batch, model_type, arg_name="val_batch", **op_kw)
        meta["time_s"]["setup"] = time.perf_counter() - t_start

        def fail(section: str, exc: BaseException) -> None:
            if strict:
                raise exc
            errors[section] = f"{type(exc).__name__}: {exc}"

        index_sets: dict[str, Tensor] = {}
        comp_an = ComponentAnalyzer(include_bias=cfg.include_bias, tol=cfg.tolerance,
                                    trace_probes=cfg.trace_probes, seed=cfg.seed, max_iter=cfg.max_iter)
        extras: dict[str, Any] = {}
        # ---- the full-model spectrum (one Lanczos run, one probe set)
        try:
            if cfg.track_component_hessian:
                try:
                    index_sets = comp_an.component_index_sets(model, H.layout, cfg.component_list)
                except Exception as e:  # noqa: BLE001 - recorded, the spectrum still runs
                    fail("components", e)
            sec, extras = _spectrum_section(H, cfg, index_sets)
            results["hessian"] = sec
            meta["time_s"]["hessian_lanczos"] = extras["t_eig"]
            meta["time_s"]["trace"] = extras["t_trace"]
            meta["matvecs"]["hessian_lanczos"] = extras["eig_matvecs"]
            meta["matvecs"]["trace"] = extras["trace_matvecs"]
            meta["lanczos_matvecs"]["hessian"] = extras["eig_matvecs"]
            top_vals, top_vecs = _top_vectors(extras["top"])
            self.last_eigenvectors = top_vecs
        except Exception as e:  # noqa: BLE001
            fail("hessian", e)
            extras = {}

        have_core = "hessian" in results
        # ---- components
        if cfg.track_component_hessian and "components" not in errors:
            try:
                if not have_core:
                    raise RuntimeError("skipped: the full-model analysis failed")
                t0, m0 = time.perf_counter(), H.num_matvecs
                block_traces = (extras["trace"] or {}).get("blocks") if extras.get("trace") else None
                results["components"] = comp_an.analyze_all_components(
                    model, loss_fn, train_batch, model_type, component_list=list(index_sets),
                    n_components=cfg.n_components, operator=H, block_traces=block_traces or {})
                meta["time_s"]["components"] = time.perf_counter() - t0
                meta["matvecs"]["components"] = H.num_matvecs - m0
                meta["lanczos_matvecs"]["components"] = {c: int(r["num_matvecs"])
                                                         for c, r in results["components"].items()}
            except Exception as e:  # noqa: BLE001
                fail("components", e)

        # ---- alignment (gradient shared; one extra HVP)
        if cfg.track_gradient_alignment:
            try:
                if not have_core:
                    raise RuntimeError("skipped: the full-model analysis failed")
                t0, m0 = time.perf_counter(), H.num_matvecs
                loss, g = H.loss_and_grad()
                Hg = H @ g
                al = gradient_alignment(g, Hg, top_vals, top_vecs)
                al["loss"] = float(loss)
                results["alignment"] = al
                results["hessian"]["loss"] = float(loss)
                results["hessian"]["grad_norm"] = al["grad_norm"]
                meta["time_s"]["alignment"] = time.perf_counter() - t0
                meta["matvecs"]["alignment"] = H.num_matvecs - m0
            except Exception as e:  # noqa: BLE001
                fail("alignment", e)

        # ---- sharpness (no extra HVP)
        if cfg.track_sharpness:
            try:
                if not have_core:
                    raise RuntimeError("skipped: the full-model analysis failed")
                hs = results["hessian"]
                tr = hs["hessian_trace_estimate"]
                results["sharpness"] = sharpness_metrics(
                    hs["top_eigenvalues"], hs["min_eigenvalue"], None if not math.isfinite(tr) else tr,
                    hs["num_parameters"], hs["hessian_trace_std_error"] if math.isfinite(tr) else None)
                meta["matvecs"]["sharpness"] = 0
            except Exception as e:  # noqa: BLE001
                fail("sharpness", e)

        # ---- train / val divergence
        if Hv is not None:
            try:
                if not have_core:
                    raise RuntimeError("skipped: the full-model analysis failed")
                t0 = time.perf_counter()
                vsec, vextras = _spectrum_section(Hv, cfg, None)
                meta["lanczos_matvecs"]["val"] = vextras["eig_matvecs"]
                v_vals, v_vecs = _top_vectors(vextras["top"])
                div = train_val_divergence(results["hessian"], vsec, results["hessian"]["top_eigenvalues"],
                                           vsec["top_eigenvalues"], top_vecs, v_vecs)
                div["val_hessian"] = {k: vsec[k] for k in (
                    "max_eigenvalue", "min_eigenvalue", "top_eigenvalues", "hessian_trace_estimate",
                    "hessian_trace_std_error", "negative_count", "effective_rank_95")}
                results["train_val_divergence"] = div
                meta["time_s"]["train_val_divergence"] = time.perf_counter() - t0
                meta["matvecs"]["train_val_divergence"] = Hv.num_matvecs
            except Exception as e:  # noqa: BLE001
                fail("train_val_divergence", e)

        meta["time_s"]["total"] = time.perf_counter() - t_start
        meta["matvecs"]["total"] = int(sum(v for k, v in meta["matvecs"].items() if k != "total"))
        # Every product the operators counted (equals ``matvecs["total"]``: no HVP outside a section).
        meta["operator_matvecs"] = int(H.num_matvecs + (Hv.num_matvecs if Hv is not None else 0))
        results["meta"] = meta
        if errors:
            results["errors"] = errors
            results["error"] = "; ".join(f"{k}: {v}" for k, v in errors.items())

        self.history[step] = results
        if cfg.save_hessian_data:
            try:
                self.save_hessian_data(results, step)
            except Exception as e:  # noqa: BLE001
                warnings.warn(f"save_hessian_data failed: {e}", UserWarning, stacklevel=2)
        if cfg.create_plots:
            self.create_plots()
        return results

    # -------------------------------------------------------------- persistence and plots
    def save_hessian_data(self, results: Mapping[str, Any], step: Any = None) -> dict[str, str]:
        """Write ``results`` to ``output_dir`` atomically: ``{model_name}_step{step}.json`` (every section,
        non-finite floats as ``null``) and ``.npz`` (eigenvalue arrays; top eigenvectors when
        ``save_eigenvectors``). No pickle. Returns the two paths."""
        cfg = self.config
        step = results.get("step", 0) if step is None else step
        base = os.path.join(str(cfg.output_dir), f"{cfg.model_name}_step{step}")
        payload = {"config": cfg.to_dict(), **{k: v for k, v in results.items()}}
        atomic_write(base + ".json", json.dumps(_json_safe(payload), indent=1, allow_nan=False).encode())
        arrays: dict[str, np.ndarray] = {}
        hs = results.get("hessian", {})
        for key in ("top_eigenvalues", "bottom_eigenvalues", "residuals"):
            if key in hs:
                arrays[key] = np.asarray(hs[key], dtype=np.float64)
        for comp, entry in (results.get("components") or {}).items():
            if "top_eigenvalues" in entry:
                arrays[f"components/{comp}/top_eigenvalues"] = np.asarray(entry["top_eigenvalues"], np.float64)
        if cfg.save_eigenvectors and self.last_eigenvectors is not None:
            arrays["top_eigenvectors"] = self.last_eigenvectors.detach().cpu().float().numpy()
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        atomic_write(base + ".npz", buf.getvalue())
        return {"json": base + ".json", "npz": base + ".npz"}

    def create_plots(self, save_path: Optional[str] = None) -> list[str]:
        """Draw the evolution plots of :attr:`history` with :class:`hessext.viz.HessianVisualizer`.

        Skipped with a warning when the visualiser (or matplotlib) is unavailable. Returns the names of the
        plot functions that ran.
        """
        try:
            from .viz import HessianVisualizer
        except Exception as e:  # noqa: BLE001 - optional dependency
            warnings.warn(f"create_plots skipped: hessext.viz is unavailable ({e})", UserWarning, stacklevel=2)
            return []
        path = save_path or os.path.join(str(self.config.output_dir), "plots")
        name = self.config.model_name
        hist = self.history
        calls = [
            ("plot_eigenvalue_evolution", {s: r["hessian"] for s, r in hist.items() if "hessian" in r}),
            ("plot_complexity_metrics", {s: r["hessian"] for s, r in hist.items() if "hessian" in r}),
            ("plot_component_comparison", {s: r["components"] for s, r in hist.items() if r.get("components")}),
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
                f"  negative Ritz values:  {hs.get('negative_count')} of {hs.get('num_computed_eigenvalues')} "
                "computed",
                "  top eigenvalues:       " + ", ".join(fmt(x) for x in hs.get("top_eigenvalues", [])[:10]),
                f"  condition number (top-k): {fmt(hs.get('condition_number'))}, effective rank 95%: "
                f"{hs.get('effective_rank_95')}, entropy rank: {fmt(hs.get('effective_rank_entropy'))}, "
                f"complexity: {fmt(hs.get('complexity_score'))}",
            ]
            if not hs.get("converged", True):
                lines.append(f"  note: Lanczos stopped before tolerance {self.config.tolerance:g} "
                             f"(max residual {fmt(max(hs.get('residuals') or [float('nan')]))}); raise max_iter")
            if "loss" in hs:
                lines.append(f"  loss: {fmt(hs['loss'])}, gradient norm: {fmt(hs.get('grad_norm'))}")
        comps = results.get("components")
        if comps:
            lines.append("Components (max eigenvalue, trace ± SE, parameters):")
            for c, e in comps.items():
                tr = (f"{fmt(e['trace_estimate'])} ± {fmt(e.get('trace_std_error'))}"
                      if "trace_estimate" in e else "n/a")
                lines.append(f"  {c:<18} {fmt(e.get('max_eigenvalue')):>11}   {tr:<22} "
                             f"{fmt(e.get('num_parameters'))}")
        al = results.get("alignment")
        if al:
            lines.append(f"Alignment: |cos(g, Hg)| = {fmt(al.get('grad_Hg_alignment'))}, weighted = "
                         f"{fmt(al.get('weighted_alignment'))}, ‖Hg‖/‖g‖ = {fmt(al.get('grad_Hg_ratio'))}, "
                         f"top-k fraction of ‖g‖² = {fmt(al.get('top_subspace_fraction'))}")
        sh = results.get("sharpness")
        if sh:
            lines.append(f"Sharpness: max = {fmt(sh.get('max_sharpness'))}, mean (tr/n) = "
                         f"{fmt(sh.get('mean_sharpness'))}, spectral norm = {fmt(sh.get('spectral_norm'))}")
        dv = results.get("train_val_divergence")
        if dv:
            lines.append(f"Train/val: divergence score = {fmt(dv.get('train_val_landscape_divergence_score'))}, "
                         f"trace ratio = {fmt(dv.get('trace_ratio'))}, distribution overlap = "
                         f"{fmt(dv.get('eigenvalue_distribution_overlap'))}, eigenspace overlap = "
                         f"{fmt(dv.get('eigenspace_overlap'))}")
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
        if _is_single_batch(data_batches):
            raise TypeError(f"data_batches must be a list (or an iterable) of batches, got a single batch "
                            f"({type(data_batches).__name__}); wrap it: [batch]")
        if isinstance(data_batches, (str, bytes)) or not isinstance(data_batches, Iterable):
            raise TypeError(f"data_batches must be a list (or an iterable) of batches, got "
                            f"{type(data_batches).__name__}")
        rng = rng_state()  # iterating a DataLoader draws its base seed from the global torch RNG
        try:
            batches = list(data_batches)
        finally:
            restore_rng_state(rng)
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
