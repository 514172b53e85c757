"""Transformer components as parameter subsets, and their Hessian blocks (API B).

A *component* is a named subset of a model's parameters — whole parameters, or slices of packed ones.
Its Hessian is the principal diagonal block ``H_CC = Pᵀ H P`` of the full Hessian (``P`` embeds the
component's coordinates into ``R^n``): curvature of the loss when only that component moves.

Component names and what they resolve to (``include_bias`` adds the matching bias vectors):

=====================  ===================================================================================
``attention``          every attention projection: query, key, value and output (incl. packed ones)
``attention_query``    query projections: ``q_proj``, ``query`` (BERT ``attention.self.query``), ``wq``,
                       T5 ``q``; the first third of ``in_proj_weight`` (``nn.MultiheadAttention``) and of
                       GPT-2 ``c_attn`` (a ``Conv1D`` with weight ``[d, 3d]``: the slice is on columns)
``attention_key``      likewise ``k_proj``, ``key``, ``wk``, ``k``; the second third of packed weights
``attention_value``    likewise ``v_proj``, ``value``, ``wv``, ``v``; the last third of packed weights
``attention_output``   the attention output projection: ``out_proj``/``o_proj``/``wo``/``o``, GPT-2
                       ``attn.c_proj``, BERT ``attention.output.dense``
``ffn``                feed-forward weights: ``fc1``/``fc2``, ``linear1``/``linear2`` (torch layers),
                       ``c_fc``/``mlp.c_proj`` (GPT-2), ``gate_proj``/``up_proj``/``down_proj`` (LLaMA),
                       ``intermediate.dense``/``output.dense`` (BERT), ``w1``/``w2``/``w3``, ``wi``/``wo``
``embeddings``         ``nn.Embedding`` tables (token, position, token type) and positional parameters
                       registered directly on a module (``pos``, ``pos_embed``, ``wpe``, …)
``norm``               LayerNorm / RMSNorm / other normalisation layers (``ln_*``, ``*norm*``, ``LayerNorm``)
``hidden_states``      the parameters that write into the residual stream inside each block: the attention
                       output projection plus the FFN output projection (``attention_output`` ∪ ``fc2`` /
                       ``linear2`` / ``mlp.c_proj`` / ``down_proj`` / BERT ``output.dense``). The residual
                       stream leaving block ℓ is ``h_ℓ = h_{ℓ−1} + W_o(attn) + W_2(ffn)``; these are the
                       ``W_o`` and ``W_2`` of every block.
``output_projection``  the LM / classification head: ``lm_head``, ``output_projection``, ``head``,
                       ``classifier``, ``output_layer``, ``fc_out`` outside blocks (a head tied to the
                       embedding table has no parameter of its own and resolves to nothing)
=====================  ===================================================================================

"Attention context" is a module path with a segment containing ``attn`` or ``attention``; FFN context a
segment containing ``mlp``, ``ffn``, ``feed_forward``/``feedforward``, ``densereludense`` or
``intermediate``. Fused QKV weights with a per-head interleaved layout (``query_key_value`` of
GPT-NeoX/BLOOM) count for ``attention`` as a whole; asking for their query/key/value slices warns.

Names that the package does not know raise ``ValueError``; known names that resolve to no parameter of a
given model are dropped with a ``UserWarning`` that names them — never silently.
"""
from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .._checks import check_bool, check_int, check_tol
from .blocks import BlockSpectraResult, block_spectra, layer_blocks, parameter_blocks
from .metrics import HessianMetrics
from .spectrum import as_floats, extreme_ritz_pairs, make_operator, shared_probe_traces

__all__ = [
    "COMPONENT_NAMES",
    "ParamPart",
    "resolve_component",
    "component_indices",
    "extract_component_parameters",
    "ComponentSelector",
    "ComponentAnalyzer",
    "compute_component_hessians",
]

COMPONENT_NAMES: tuple[str, ...] = (
    "attention", "attention_query", "attention_key", "attention_value", "attention_output",
    "ffn", "embeddings", "norm", "hidden_states", "output_projection",
)

# Which roles make up each component.
_COMPONENT_ROLES: dict[str, tuple[str, ...]] = {
    "attention": ("q", "k", "v", "o", "qkv_fused", "attn_other"),
    "attention_query": ("q",),
    "attention_key": ("k",),
    "attention_value": ("v",),
    "attention_output": ("o",),
    "ffn": ("ffn_in", "ffn_out", "ffn_other"),
    "embeddings": ("embed",),
    "norm": ("norm",),
    "hidden_states": ("o", "ffn_out"),
    "output_projection": ("head",),
}

_Q = {"q_proj", "query", "wq", "q_lin", "to_q", "query_proj", "q"}
_K = {"k_proj", "key", "wk", "k_lin", "to_k", "key_proj", "k"}
_V = {"v_proj", "value", "wv", "v_lin", "to_v", "value_proj", "v"}
_O = {"o_proj", "out_proj", "wo", "o", "out_lin", "c_proj", "dense", "proj", "output_proj", "dense_proj"}
_QKV_THIRDS = {"c_attn", "qkv_proj", "wqkv", "qkv", "in_proj"}
_QKV_INTERLEAVED = {"query_key_value", "w_pack"}
_FFN_IN = {"fc1", "linear1", "c_fc", "gate_proj", "up_proj", "w1", "w3", "wi", "wi_0", "wi_1", "lin1",
           "fc_in", "dense_h_to_4h", "gate_up_proj"}
_FFN_OUT = {"fc2", "linear2", "down_proj", "w2", "lin2", "dense_4h_to_h"}
_FFN_OUT_IN_CONTEXT = {"c_proj", "wo", "fc_out", "out_proj", "proj", "dense"}
_HEAD = {"lm_head", "output_projection", "head", "out_head", "classifier", "output_layer", "fc_out",
         "generator", "score", "qa_outputs"}
_POS_PARAM = re.compile(r"(^|_)(pos|position|positional|wpe|pos_embed|pos_emb|cls_token|tok|token|embed)")


@dataclass(frozen=True)
class ParamPart:
    """A parameter, or a slice ``[start, stop)`` of it along dimension ``dim`` (``dim=None``: whole)."""

    name: str
    dim: Optional[int] = None
    start: int = 0
    stop: int = 0

    def view(self, p: Tensor) -> Tensor:
        """The part as a view of the parameter tensor ``p``."""
        if self.dim is None:
            return p
        return p.narrow(self.dim, self.start, self.stop - self.start)

    def numel(self, shape: Sequence[int]) -> int:
        if self.dim is None:
            return int(math.prod(shape))
        return int(math.prod(shape) // shape[self.dim] * (self.stop - self.start))


def _is_attn_ctx(segments: Sequence[str]) -> bool:
    return any("attn" in s.lower() or "attention" in s.lower() for s in segments)


def _is_ffn_ctx(segments: Sequence[str]) -> bool:
    keys = ("mlp", "ffn", "feed_forward", "feedforward", "densereludense", "intermediate")
    return any(any(k in s.lower() for k in keys) for s in segments)


def _is_norm(module: nn.Module) -> bool:
    if isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)):
        return True
    if hasattr(nn, "RMSNorm") and isinstance(module, nn.RMSNorm):
        return True
    return type(module).__name__.lower().endswith("norm")


def _is_embedding(module: nn.Module) -> bool:
    return isinstance(module, nn.Embedding) or "embedding" in type(module).__name__.lower() and (
        isinstance(getattr(module, "weight", None), Tensor) and module.weight.dim() == 2)


def _is_bias(param_name: str) -> bool:
    leaf = param_name.rsplit(".", 1)[-1]
    return leaf == "bias" or leaf.endswith("_bias") or leaf in ("bias_k", "bias_v")


def _classify(model: nn.Module) -> tuple[dict[str, list[ParamPart]], list[str]]:
    """Roles of every parameter (or parameter slice) of ``model``.

    Returns:
        (roles, notes): ``roles`` maps a role (q, k, v, o, qkv_fused, attn_other, ffn_in, ffn_out,
        ffn_other, embed, norm, head, other) to parts; ``notes`` lists warnings for packed weights whose
        query/key/value layout is unknown.
    """
    roles: dict[str, list[ParamPart]] = {r: [] for r in (
        "q", "k", "v", "o", "qkv_fused", "attn_other", "ffn_in", "ffn_out", "ffn_other",
        "embed", "norm", "head", "other")}
    notes: list[str] = []
    seen: set[int] = set()
    for mod_name, module in model.named_modules():
        segs = mod_name.split(".") if mod_name else []
        for k, p in module.named_parameters(recurse=False):
            if id(p) in seen:
                continue  # shared (tied) parameter, already classified under its first name
            seen.add(id(p))
            name = f"{mod_name}.{k}" if mod_name else k
            for role, part in _parameter_parts(module, segs, k, p, name, notes):
                roles[role].append(part)
    return roles, notes


def _parameter_parts(module: nn.Module, segs: Sequence[str], k: str, p: Tensor, name: str,
                     notes: list[str]) -> list[tuple[str, ParamPart]]:
    """The (role, part) pairs of parameter ``k`` (full name ``name``) of ``module`` at path ``segs``; a packed
    parameter gives one part per role. Notes on packed weights of unknown layout go to ``notes``."""
    if isinstance(module, nn.MultiheadAttention):
        return _mha_parts(module.embed_dim, k, name)
    leaf = segs[-1].lower() if segs else ""
    parent_leaf = segs[-2].lower() if len(segs) > 1 else ""
    in_attn = _is_attn_ctx(segs)
    if _is_norm(module):
        return [("norm", ParamPart(name))]
    if _is_embedding(module):
        return [("attn_other" if in_attn else "embed", ParamPart(name))]
    if k in ("weight", "bias") and p.dim() in (1, 2):  # a Linear-like layer (Linear, Conv1D, ...)
        if leaf in _QKV_THIRDS and (in_attn or leaf == "c_attn"):
            conv1d = type(module).__name__ == "Conv1D"
            dim = 1 if (conv1d and k == "weight") else 0  # a GPT-2 Conv1D weight is [d, 3d]
            size = p.shape[dim]
            if size % 3 == 0:
                third = size // 3
                return [(r, ParamPart(name, dim, j * third, (j + 1) * third)) for j, r in enumerate("qkv")]
            notes.append(f"{name}: fused QKV of size {size} is not divisible by 3")
            return [("qkv_fused", ParamPart(name))]
        if leaf in _QKV_INTERLEAVED:
            notes.append(f"{name}: fused QKV with an interleaved per-head layout")
            return [("qkv_fused", ParamPart(name))]
        return [(_linear_role(leaf, parent_leaf, in_attn, _is_ffn_ctx(segs)), ParamPart(name))]
    if _POS_PARAM.search(k.lower()):
        return [("embed", ParamPart(name))]
    return [("other", ParamPart(name))]


def _mha_parts(d: int, k: str, name: str) -> list[tuple[str, ParamPart]]:
    """Parts of parameter ``k`` of an ``nn.MultiheadAttention`` of width ``d``: the packed ``in_proj_*`` in
    thirds (query, key, value rows)."""
    if k in ("in_proj_weight", "in_proj_bias"):
        return [(role, ParamPart(name, 0, j * d, (j + 1) * d)) for j, role in enumerate("qkv")]
    if k in ("q_proj_weight", "k_proj_weight", "v_proj_weight"):
        return [(k[0], ParamPart(name))]
    if k in ("bias_k", "bias_v"):
        return [(k[-1], ParamPart(name))]
    return [("attn_other", ParamPart(name))]


def _linear_role(leaf: str, parent_leaf: str, in_attn: bool, in_ffn: bool) -> str:
    """The role of a Linear-like layer that is not a fused QKV, from its name ``leaf``, its parent's name and
    its context (inside attention / inside a feed-forward block)."""
    if in_attn:
        if leaf in _Q:
            return "q"
        if leaf in _K:
            return "k"
        if leaf in _V:
            return "v"
        if leaf in _O or (leaf == "dense" and parent_leaf == "output"):
            return "o"
        return "attn_other"
    if leaf in _FFN_IN or (leaf == "dense" and parent_leaf == "intermediate"):
        return "ffn_in"
    if (leaf in _FFN_OUT or (in_ffn and leaf in _FFN_OUT_IN_CONTEXT)
            or (leaf == "dense" and parent_leaf == "output")):
        return "ffn_out"
    if in_ffn:
        return "ffn_other"
    if leaf in _HEAD or (leaf == "decoder" and parent_leaf == "predictions"):
        return "head"
    return "other"


def _check_name(name: object) -> str:
    if not isinstance(name, str):
        raise TypeError(f"component name must be a str, got {type(name).__name__} ({name!r})")
    if name not in _COMPONENT_ROLES:
        raise ValueError(f"unknown component name {name!r}; known components: {list(COMPONENT_NAMES)}")
    return name


def resolve_component(model: nn.Module, name: str, include_bias: bool = False,
                      trainable_only: bool = False) -> list[ParamPart]:
    """The parameter parts that make up component ``name`` on ``model`` (may be empty).

    Args:
        model: the model.
        name: a component name (see the module docstring).
        include_bias: include bias vectors (``bias``, ``*_bias``).
        trainable_only: keep only parameters with ``requires_grad``.

    Raises:
        ValueError: unknown component name.
    """
    _check_name(name)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    roles, notes = _classify(model)
    parts: list[ParamPart] = []
    for role in _COMPONENT_ROLES[name]:
        parts.extend(roles[role])
    if name in ("attention_query", "attention_key", "attention_value") and roles["qkv_fused"]:
        warnings.warn(f"component {name!r}: fused QKV weights with an unknown layout are not split and are "
                      f"not part of it ({'; '.join(notes)}); they count for 'attention' as a whole",
                      UserWarning, stacklevel=3)
    params = dict(model.named_parameters())
    out = []
    for part in parts:
        if not include_bias and _is_bias(part.name):
            continue
        if trainable_only and not params[part.name].requires_grad:
            continue
        out.append(part)
    # Order as in named_parameters, then by slice start.
    order = {k: i for i, k in enumerate(params)}
    out.sort(key=lambda q: (order[q.name], q.start))
    return out


def component_indices(layout: Any, parts: Iterable[ParamPart], device: Any = None) -> Tensor:
    """Flat indices (int64, sorted) of ``parts`` in a ``ParamLayout``.

    Whole parameters map to their flat range; a dim-0 slice of a row-major ``[R, C…]`` parameter to
    ``off + [start·c, stop·c)`` with ``c = numel / R``; a dim-1 slice of a 2-D ``[R, C]`` parameter (a GPT-2
    ``Conv1D`` weight) to ``off + r·C + j`` for every row r and ``start ≤ j < stop``. Parts whose parameter
    is not in the layout (e.g. frozen) are skipped.
    """
    chunks = []
    for part in parts:
        if part.name not in layout:
            continue
        i = layout.names.index(part.name)
        off, shape, numel = layout.offsets[i], tuple(layout.shapes[i]), layout.numels[i]
        if part.dim is None:
            chunks.append(torch.arange(off, off + numel, dtype=torch.long))
        elif part.dim == 0:
            row = numel // shape[0]
            chunks.append(torch.arange(off + part.start * row, off + part.stop * row, dtype=torch.long))
        elif part.dim == 1 and len(shape) == 2:
            C = shape[1]
            idx = (torch.arange(shape[0], dtype=torch.long)[:, None] * C
                   + torch.arange(part.start, part.stop, dtype=torch.long)[None, :])
            chunks.append(off + idx.reshape(-1))
        else:
            raise ValueError(f"unsupported slice of {part.name!r} with shape {shape}: dim={part.dim}")
    if not chunks:
        return torch.empty(0, dtype=torch.long, device=device)
    idx = torch.unique(torch.cat(chunks))  # sorted, de-duplicated
    return idx.to(device) if device is not None else idx


def extract_component_parameters(model: nn.Module, component_name: str,
                                 include_bias: bool = False) -> list[Tensor]:
    """Tensors of component ``component_name``: whole ``Parameter`` objects, or views of packed ones.

    A slice of a packed parameter (the query third of ``in_proj_weight``) is returned as a view
    (``narrow``) of the parameter, sharing its storage. ``sum(p.numel() for p in result)`` is the size of
    the component. An empty list comes with a ``UserWarning``.

    Raises:
        ValueError: unknown component name (the message lists the known ones).
    """
    parts = resolve_component(model, component_name, include_bias=include_bias)
    params = dict(model.named_parameters())
    if not parts:
        warnings.warn(f"component {component_name!r} matches no parameter of {type(model).__name__}",
                      UserWarning, stacklevel=2)
    return [part.view(params[part.name]) for part in parts]


class ComponentSelector:
    """Lists of component names and their validation against a model."""

    @staticmethod
    def get_minimal_components() -> list[str]:
        """``["attention", "ffn"]``."""
        return ["attention", "ffn"]

    @staticmethod
    def get_standard_components(no_fnn: bool = False) -> list[str]:
        """``attention, ffn, embeddings, norm, output_projection`` (without ``ffn`` when ``no_fnn``)."""
        out = ["attention", "ffn", "embeddings", "norm", "output_projection"]
        if no_fnn:
            out.remove("ffn")
        return out

    @staticmethod
    def get_comprehensive_components() -> list[str]:
        """Every known component name."""
        return list(COMPONENT_NAMES)

    @staticmethod
    def check_names(names: Iterable[str]) -> list[str]:
        """Validate names without a model (duplicates dropped, order kept).

        Raises ``ValueError`` on unknown names, ``TypeError`` on non-str."""
        if isinstance(names, str):
            names = [names]
        names = list(names)
        bad = [n for n in names if isinstance(n, str) and n not in _COMPONENT_ROLES]
        for n in names:
            if not isinstance(n, str):
                raise TypeError(f"component names must be str, got {type(n).__name__} ({n!r})")
        if bad:
            raise ValueError(f"unknown component names {bad}; known components: {list(COMPONENT_NAMES)}")
        return list(dict.fromkeys(names))

    @staticmethod
    def validate_components(model: nn.Module, component_names: Iterable[str],
                            include_bias: bool = False) -> list[str]:
        """The names of ``component_names`` that resolve to at least one trainable parameter of ``model``.

        Raises:
            ValueError: a name is not a known component.
        Warns:
            UserWarning: naming every known component that matches nothing on this model (dropped).
        """
        names = ComponentSelector.check_names(component_names)
        valid, dropped = [], []
        for n in names:
            (valid if resolve_component(model, n, include_bias, trainable_only=True) else dropped).append(n)
        if dropped:
            warnings.warn(f"components {dropped} match no trainable parameter of {type(model).__name__} "
                          f"and are dropped", UserWarning, stacklevel=2)
        return valid


def _refuse_sharded(H: Any, what: str) -> None:
    """Component and block analyses select parameters by index of the whole flat vector, which an
    FSDP2-sharded operator never holds: ``ValueError`` naming the function."""
    if getattr(H, "sharded", False):
        raise ValueError(f"{what} is not supported on an FSDP2-sharded model: its blocks are index sets of "
                         "the whole parameter vector, and the sharded operator's vectors are per-rank shards "
                         "(analyse the whole model with HessianAnalyzer / min_max_hessian_eigs instead)")


class ComponentAnalyzer:
    """Per-component Hessian analysis: eigenvalues of diagonal blocks and traces from shared probes, and the
    blockwise spectral densities with the JS distances between blocks (:meth:`block_spectra`).

    Args:
        include_bias: include bias vectors in components (default ``False``, as
            :func:`extract_component_parameters`).
        tol: Lanczos tolerance on the Ritz residuals (relative).
        max_iter: Krylov dimension cap per component (None:
            :func:`hessext.analysis.spectrum.clustered_spectrum_max_iter`).
        trace_probes: Rademacher probes of the whole-model Hutchinson estimate whose per-block sums give
            every component's trace (0 disables component traces).
        seed: probe / start-vector seed.
    """

    def __init__(self, include_bias: bool = False, tol: float = 1e-4, trace_probes: int = 20,
                 seed: int = 0, max_iter: Optional[int] = None) -> None:
        self.include_bias = check_bool("include_bias", include_bias)
        self.tol = check_tol(tol)
        self.trace_probes = check_int("trace_probes", trace_probes, minimum=0)
        self.seed = check_int("seed", seed, minimum=0)
        self.max_iter = None if max_iter is None else check_int("max_iter", max_iter, minimum=1)

    # -------------------------------------------------------------- index sets
    def component_index_sets(self, model: nn.Module, layout: Any,
                             component_list: Iterable[str]) -> dict[str, Tensor]:
        """Name → flat index set on ``layout`` for every component that resolves to something
        (the others are dropped with a warning by :meth:`ComponentSelector.validate_components`)."""
        names = ComponentSelector.validate_components(model, component_list, include_bias=self.include_bias)
        out = {}
        for n in names:
            idx = component_indices(layout, resolve_component(model, n, self.include_bias))
            if idx.numel():
                out[n] = idx
        return out

    # -------------------------------------------------------------- analysis
    def analyze_all_components(self, model: nn.Module, loss_fn: Any, data_batch: Any,
                               model_type: Optional[str] = "decoder_only",
                               component_list: Optional[Sequence[str]] = None, n_components: int = 10,
                               *, operator: Any = None, block_traces: Optional[Mapping[str, Any]] = None,
                               num_batches: Optional[int] = None, device: Any = None) -> dict[str, dict]:
        """Top eigenvalues of each component's diagonal Hessian block, and its trace.

        For component C with index set S: ``top_eigenvalues`` (descending) and ``max_eigenvalue`` are the
        top-k Ritz values of ``H_SS`` from one Lanczos run per component (the other
        :class:`HessianMetrics` fields, e.g. ``min_eigenvalue``, describe these top-k values, as in the
        original), ``trace_estimate ± trace_std_error`` is the Hutchinson
        estimate ``(1/m) Σ_j Σ_{i∈S} z_ij (H z_j)_i`` from ONE set of m probes over the whole model (shared by
        all components, so component traces are comparable), and the :class:`HessianMetrics` fields of the
        block's top eigenvalues are added.

        Args:
            model, loss_fn, data_batch, model_type: as :class:`hessext.hvp.HessianOperator`.
            component_list: names (default :meth:`ComponentSelector.get_standard_components`).
            n_components: eigenvalues per component (clamped to the component size).
            operator: an existing ``HessianOperator`` to reuse (then model/loss/data are not re-wrapped).
            block_traces: precomputed per-component ``{"estimate", "std_error"}`` (from the caller's probes).
            num_batches: batches to average when ``data_batch`` is an iterable.
            device: device of the analysis.

        Returns:
            ``{component: {...}}`` for every component that resolves on this model.
        """
        check_int("n_components", n_components, minimum=1)
        if component_list is None:
            component_list = ComponentSelector.get_standard_components()
        H = operator if operator is not None else make_operator(
            model, loss_fn, data_batch, model_type, num_batches=num_batches, device=device,
            arg_name="data_batch")
        _refuse_sharded(H, "ComponentAnalyzer.analyze_all_components")
        index_sets = self.component_index_sets(model, H.layout, component_list)
        if not index_sets:
            return {}
        if block_traces is None and self.trace_probes > 0:
            block_traces = self.block_traces(H, index_sets)
        results: dict[str, dict] = {}
        for name, idx in index_sets.items():
            A = H.restrict(idx.to(H.device))
            size = int(idx.numel())
            # Top of the block only: the bottom of a (nearly) PSD block sits at ~0, where a relative
            # residual test cannot be met and the run would go to max_iter.
            top, _ = extreme_ritz_pairs(A, min(n_components, size), 0, self.tol, self.seed, self.max_iter)
            top_vals = as_floats(top.descending()[0])
            entry = HessianMetrics.compute_detailed_hessian_metrics(top_vals)
            entry.update({
                "num_parameters": size,
                "model_parameters": int(H.layout.n),
                "parameter_names": sorted({p for p in _names_of(model, name, self.include_bias)}),
                "max_eigenvalue": top_vals[0],
                "top_eigenvalues": top_vals,
                "residuals": [float(r) for r in top.residuals.detach().cpu().tolist()],
                "converged": bool(top.converged),
                "num_matvecs": int(top.num_matvecs),
            })
            if block_traces and name in block_traces:
                bt = block_traces[name]
                entry["trace_estimate"] = float(bt["estimate"])
                entry["trace_std_error"] = float(bt["std_error"])
                entry["mean_eigenvalue_estimate"] = float(bt["estimate"]) / size
            results[name] = entry
        return results

    def block_traces(self, H: Any, index_sets: Mapping[str, Tensor]) -> dict[str, dict[str, float]]:
        """Per-component Hutchinson traces from one probe set (see :func:`hessext.trace.hutchinson`)."""
        res = shared_probe_traces(H, self.trace_probes, index_sets, seed=self.seed)
        return res["blocks"]

    def block_spectra(self, model: nn.Module, loss_fn: Any, data_batch: Any,
                      model_type: Optional[str] = "decoder_only",
                      component_list: Optional[Sequence[str]] = None, *,
                      blocks: "str | Mapping[str, Any] | None" = None, num_probes: int = 8,
                      num_iter: int = 30, sigma: Optional[float] = None, num_grid: int = 400,
                      max_columns: Optional[int] = None, allow_overlap: bool = False, operator: Any = None,
                      num_batches: Optional[int] = None, device: Any = None) -> BlockSpectraResult:
        """Spectral densities of the diagonal Hessian blocks (raw, and normalised by each block's top
        ``|eigenvalue|`` as in Zhang et al. 2024) and the Jensen–Shannon distances between them: see
        :func:`hessext.analysis.blocks.block_spectra` (all blocks' Lanczos products of a step in one call).

        Args:
            model, loss_fn, data_batch, model_type, num_batches, device, operator: as
                :meth:`analyze_all_components`.
            component_list: component names used when ``blocks`` is None (default
                :meth:`ComponentSelector.get_standard_components`; names matching nothing are dropped with a
                warning).
            blocks: None (the components), ``"parameters"`` (one block per parameter tensor, Zhang et al.'s
                blocks), ``"layers"`` (one per module), or a dict name → index set on the flat parameters.
            num_probes, num_iter, sigma, num_grid, max_columns, allow_overlap: as
                :func:`~hessext.analysis.blocks.block_spectra`; the probe seed is this analyzer's ``seed``.

        Raises:
            ValueError: no component resolves on this model, an unknown ``blocks`` string, or what
                :func:`~hessext.analysis.blocks.block_spectra` refuses (empty or overlapping blocks, bad
                counts).
        """
        H = operator if operator is not None else make_operator(
            model, loss_fn, data_batch, model_type, num_batches=num_batches, device=device,
            arg_name="data_batch")
        _refuse_sharded(H, "ComponentAnalyzer.block_spectra")
        if blocks is None:
            names = ComponentSelector.get_standard_components() if component_list is None else component_list
            sets: Mapping[str, Any] = self.component_index_sets(model, H.layout, names)
            if not sets:
                raise ValueError(f"component_list {list(names)} resolves to no parameter of "
                                 f"{type(model).__name__}: no block to analyse")
        elif isinstance(blocks, str):
            makers = {"parameters": parameter_blocks, "layers": layer_blocks}
            if blocks not in makers:
                raise ValueError(f"blocks must be None, 'parameters', 'layers' or a dict name -> index set, "
                                 f"got {blocks!r}")
            sets = makers[blocks](H.layout)
        else:
            sets = blocks
        return block_spectra(H, sets, num_probes=num_probes, num_iter=num_iter, seed=self.seed, sigma=sigma,
                             num_grid=num_grid, max_columns=max_columns, allow_overlap=allow_overlap)

    # -------------------------------------------------------------- reporting
    @staticmethod
    def compare_components(results: Mapping[str, Mapping[str, Any]],
                           metric_name: str = "max_eigenvalue") -> dict[str, Any]:
        """Rank components by one scalar metric.

        Returns:
            ``{"metric", "values" {component: value}, "ranking" (descending), "max_component",
            "max_value", "min_component", "min_value", "ratio" (max/min, NaN when min is 0)}``. Components
            lacking the metric or with a non-finite value are listed under ``"skipped"``.

        Raises:
            ValueError: ``results`` is empty or no component has a finite ``metric_name``.
        """
        if not results:
            raise ValueError("results is empty: no component to compare")
        values, skipped = {}, []
        for comp, entry in results.items():
            v = entry.get(metric_name) if isinstance(entry, Mapping) else None
            real = isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool)
            if real and math.isfinite(v):
                values[comp] = float(v)
            else:
                skipped.append(comp)
        if not values:
            raise ValueError(f"metric_name {metric_name!r} is not a finite scalar in any component result")
        ranking = sorted(values, key=values.get, reverse=True)
        hi, lo = ranking[0], ranking[-1]
        return {
            "metric": metric_name, "values": values, "ranking": ranking,
            "max_component": hi, "max_value": values[hi], "min_component": lo, "min_value": values[lo],
            "ratio": values[hi] / values[lo] if values[lo] != 0 else float("nan"), "skipped": skipped,
        }

    @staticmethod
    def get_component_summary(results: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
        """Sizes and headline numbers of a component analysis.

        ``total_parameters`` is the sum of the component sizes (a parameter in two components, e.g.
        ``attention`` and ``hidden_states``, counts twice); ``unique_parameters`` counts each once;
        ``model_parameters`` is the analysed model size; ``parameter_fraction`` is size / model size.
        """
        names = list(results)
        sizes = {c: int(results[c].get("num_parameters", 0)) for c in names}
        model_n = max((int(results[c].get("model_parameters", 0)) for c in names), default=0)
        unique = {p for c in names for p in results[c].get("parameter_names", [])}
        summary: dict[str, Any] = {
            "num_components": len(names),
            "components": names,
            "total_parameters": int(sum(sizes.values())),
            "component_parameters": sizes,
            "model_parameters": model_n,
            "parameter_fraction": {c: (s / model_n if model_n else float("nan")) for c, s in sizes.items()},
            "unique_parameter_tensors": len(unique),
            "max_eigenvalues": {c: results[c].get("max_eigenvalue") for c in names},
            "trace_estimates": {c: results[c]["trace_estimate"] for c in names
                                if "trace_estimate" in results[c]},
        }
        maxes = {c: v for c, v in summary["max_eigenvalues"].items() if isinstance(v, (int, float))}
        if maxes:
            summary["sharpest_component"] = max(maxes, key=maxes.get)
            summary["flattest_component"] = min(maxes, key=maxes.get)
        return summary


def _names_of(model: nn.Module, name: str, include_bias: bool) -> list[str]:
    return [p.name for p in resolve_component(model, name, include_bias)]


def compute_component_hessians(model: nn.Module, loss_fn: Any, data_batch: Any,
                               model_type: Optional[str] = "decoder_only",
                               components: Optional[Sequence[str]] = None, n_components: int = 10,
                               **kwargs: Any) -> dict[str, dict]:
    """Legacy function: :meth:`ComponentAnalyzer.analyze_all_components` with default settings."""
    return ComponentAnalyzer().analyze_all_components(model, loss_fn, data_batch, model_type,
                                                      component_list=components, n_components=n_components,
                                                      **kwargs)
