"""``HessianConfig``, the settings of :class:`hessext.analysis.analyzer.HessianAnalyzer` (API B), and
``HessianConfigError``.

Every field is checked when the config is built (and again by ``dataclasses.replace``): integers, booleans and
the tolerance by the shared checks of :mod:`hessext._checks`, so that an invalid value raises a
:class:`HessianConfigError` whose message names the field and the value.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Optional

import torch

from .._checks import ArgumentTypeError, check_bool, check_int, check_tol
from ..curvature import FISHER_KINDS
from ..data import LOSS_SOURCES
from .components import ComponentSelector

__all__ = ["HessianConfig", "HessianConfigError", "CURVATURES"]

#: What ``analyze_step`` analyses: the Hessian, the generalised Gauss–Newton matrix or the Fisher.
CURVATURES = ("hessian", "ggn", "fisher")


def _count(name: str, value: Any, minimum: int) -> None:
    """:func:`hessext._checks.check_int` with the range worded as API B's document shows it: "must be a
    positive int" (``minimum=1``) or "must be a non-negative int" (``minimum=0``)."""
    try:
        check_int(name, value, minimum=minimum)
    except ArgumentTypeError:
        raise
    except ValueError as e:
        kind = "a positive int" if minimum == 1 else "a non-negative int"
        raise HessianConfigError(f"{name} must be {kind}, got {value!r}") from e


class HessianConfigError(ValueError, TypeError):
    """An invalid :class:`HessianConfig` value (a wrong value or a wrong type).

    A ``ValueError`` — what the API B document catches as a configuration error — and, for wrong types, also
    a ``TypeError``, so that either ``except`` clause catches it."""


@dataclass
class HessianConfig:
    """Settings of :class:`HessianAnalyzer`. Invalid values raise :class:`HessianConfigError` — a
    ``ValueError`` (and a ``TypeError``) whose message names the field and the value.

    Attributes:
        n_components: number k of top eigenvalues (Ritz pairs) of the full Hessian and of each component.
        n_bottom: number (≥ 1) of eigenvalues computed from the bottom of the spectrum in the same Lanczos
            run (``min_eigenvalue`` is the smallest of them; ``negative_count`` counts the negative values
            among all computed Ritz values).
        num_batches: batches averaged when ``train_batch``/``val_batch`` is an iterable (DataLoader) or a
            list of batches; ignored for a single batch. None: all (for a DataLoader, its full length).
        device: "cpu", "cuda", "cuda:0", a ``torch.device``, or None/"auto" (the parameters' device). "cuda"
            without a GPU warns and falls back to the parameters' device.
        track_component_hessian: analyse the components of ``component_list``.
        component_list: component names (see :mod:`hessext.analysis.components`); None: the standard list.
        track_gradient_alignment: gradient–curvature alignment (one extra HVP).
        track_sharpness: sharpness metrics (no extra HVP).
        track_train_val_landscape_divergence: compare with ``val_batch`` (when one is given).
        tolerance: Lanczos stopping tolerance on the relative Ritz residuals ``‖Hv − λv‖ / |λ|``.
        max_iter: cap on the Krylov dimension (HVPs) of each Lanczos run; None: ``min(n, 10k + 200)``
            (:func:`hessext.analysis.spectrum.clustered_spectrum_max_iter`; runs stop as soon as
            ``tolerance`` is met; ``converged`` in the results says whether it was).
        trace_probes: Rademacher probes of the Hutchinson trace estimate (≥ 2 for a standard error).
        seed: seed of the probes and of the Lanczos start vector.
        include_bias: count bias vectors as part of components.
        save_hessian_data: write each step's results as JSON + NPZ into ``output_dir``.
        save_eigenvectors: also store the top eigenvectors ``[k, n]`` in the NPZ file.
        create_plots: draw the figures of :class:`hessext.viz.HessianVisualizer` into ``output_dir``.
        output_dir: directory of saved data and plots.
        model_name: prefix of saved files and plot titles.
        eval_mode: analyse the model in eval mode (dropout off; recommended).
        dtype: computation dtype (None: the parameters' — float32 for bfloat16/float16 models, analysed on
            float32 copies —; ``torch.float64`` for reference runs).
        pad_idx: label value ignored by dict-batch losses besides -100 (None: the model's ``pad_idx``
            attribute if it has one).
        curvature: the matrix every section analyses (spectrum, traces, components, alignment,
            train/val): "hessian" (default), "ggn" (:class:`hessext.curvature.GGNOperator`) or "fisher"
            (:class:`hessext.curvature.FisherOperator` of ``fisher_kind``); the last two need a loss with a
            closed form (cross-entropy, squared error). ``results["meta"]["curvature"]`` records it.
        fisher_kind: "empirical" or "mc" (labels sampled from the model with ``seed``), for
            ``curvature="fisher"``.
        decomposition: add ``results["decomposition"]``: the top eigenvalues and traces of ``H``, ``G`` and
            ``E = H − G`` from one call (one Hutch++ sketch and probe set shared by the three traces).
        track_block_spectra: add ``results["block_spectra"]``: SLQ densities of every component's diagonal
            Hessian block (every parameter tensor's when components are off), raw and normalised by the
            block's top eigenvalue, and the Jensen–Shannon distances between them (Zhang et al. 2024;
            :func:`hessext.analysis.blocks.block_spectra`), with ``block_spectra_probes`` probes and
            ``block_spectra_iter`` Lanczos steps per block.
        loss_source: which loss of a dict batch is analysed (:mod:`hessext.data`): "auto" (default: a Hugging
            Face model's own ``model(**batch).loss`` when its forward takes ``labels``, else ``loss_fn`` on
            the logits), "model" or "loss_fn". ``results["meta"]["loss_source"]`` records the choice.
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
    curvature: str = "hessian"
    fisher_kind: str = "empirical"
    decomposition: bool = False
    loss_source: str = "auto"
    track_block_spectra: bool = False
    block_spectra_probes: int = 8
    block_spectra_iter: int = 30

    def __post_init__(self) -> None:
        try:
            self._check_numbers()
            self._check_flags_and_names()
        except HessianConfigError:
            raise
        except (TypeError, ValueError) as e:  # the checks of hessext._checks name the field and the value
            raise HessianConfigError(str(e)) from e

    def _check_numbers(self) -> None:
        _count("n_components", self.n_components, 1)
        try:
            _count("n_bottom", self.n_bottom, 1)
        except ValueError as e:
            raise HessianConfigError(f"{e} (min_eigenvalue is the smallest eigenvalue, from the bottom of "
                                     "the spectrum: at least one is computed)") from e
        for name in ("num_batches", "max_iter"):
            if getattr(self, name) is not None:
                _count(name, getattr(self, name), 1)
        check_tol(self.tolerance, "tolerance")
        _count("trace_probes", self.trace_probes, 0)
        _count("block_spectra_probes", self.block_spectra_probes, 1)
        _count("block_spectra_iter", self.block_spectra_iter, 1)
        _count("seed", self.seed, 0)
        if self.pad_idx is not None:
            check_int("pad_idx", self.pad_idx)
        if self.dtype is not None and self.dtype not in (torch.float32, torch.float64):
            raise HessianConfigError(f"dtype must be torch.float32, torch.float64 or None, got "
                                     f"{self.dtype!r}")
        if self.device is not None and not isinstance(self.device, torch.device):
            if not isinstance(self.device, str):
                raise HessianConfigError(f"device must be a str, a torch.device or None, got "
                                         f"{type(self.device).__name__} {self.device!r}")
            if self.device != "auto":
                try:
                    torch.device(self.device)
                except (RuntimeError, ValueError) as e:
                    raise HessianConfigError(f"device must be 'cpu', 'cuda', 'cuda:N', 'auto' or None, got "
                                             f"{self.device!r}") from e

    def _check_flags_and_names(self) -> None:
        for name in ("track_component_hessian", "track_gradient_alignment", "track_sharpness",
                     "track_train_val_landscape_divergence", "include_bias", "save_hessian_data",
                     "save_eigenvectors", "create_plots", "eval_mode", "decomposition",
                     "track_block_spectra"):
            check_bool(name, getattr(self, name))
        for name, allowed in (("curvature", CURVATURES), ("fisher_kind", FISHER_KINDS),
                              ("loss_source", LOSS_SOURCES)):
            if not isinstance(getattr(self, name), str) or getattr(self, name) not in allowed:
                raise HessianConfigError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
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
        """The fields as a JSON-friendly dict (device, dtype and output_dir as strings)."""
        d = dataclasses.asdict(self)
        d["device"] = None if self.device is None else str(self.device)
        d["dtype"] = None if self.dtype is None else str(self.dtype)
        d["output_dir"] = str(self.output_dir)
        return d

