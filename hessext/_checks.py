"""One home for the small policies every layer shares: argument checks, index sets, the work dtype, the
convergence test of a Ritz pair, the ordering of eigenpairs, and JSON-safe conversion.

Every error names the argument and the value received. Wrong *types* raise :class:`ArgumentTypeError`, which
is both a ``TypeError`` and a ``ValueError``: the house rule says "TypeError for wrong types", and the API
documents' callers have always caught ``ValueError`` for any bad argument, so both keep working.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Mapping, Sequence, Union

import numpy as np
import torch
from torch import Tensor

__all__ = ["ArgumentTypeError", "check_int", "check_seed", "check_bool", "check_tol", "check_positive_float",
           "index_set", "work_dtype", "convergence_floor", "converged", "order_descending", "json_safe",
           "IndexLike"]

IndexLike = Union[Tensor, slice, Sequence[int], np.ndarray]


class ArgumentTypeError(TypeError, ValueError):
    """An argument of the wrong type (a ``TypeError`` that ``except ValueError`` also catches)."""


def check_int(name: str, value: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an int (numpy integers accepted, bools refused), within ``[minimum, maximum]``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise ArgumentTypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    v = int(value)
    if minimum is not None and v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    if maximum is not None and v > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value!r}")
    return v


def check_seed(value: Any, name: str = "seed") -> int:
    """A seed of the counter-based generators: any int >= -2**63."""
    return check_int(name, value, -(1 << 63))


def check_bool(name: str, value: Any) -> bool:
    """``value`` as a bool (Python or numpy bools only: ``0``/``1`` are refused, they hide mistakes)."""
    if not isinstance(value, (bool, np.bool_)):
        raise ArgumentTypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
    return bool(value)


def check_positive_float(name: str, value: Any, *, upper: float | None = None) -> float:
    """A finite real number ``> 0`` (and ``< upper`` when given)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ArgumentTypeError(f"{name} must be a positive float, got {type(value).__name__} {value!r}")
    v = float(value)
    if upper is not None and not (0 < v < upper):
        raise ValueError(f"{name} must be a float in (0, {upper:g}), got {value!r}")
    if not (v > 0 and math.isfinite(v)):
        raise ValueError(f"{name} must be a positive finite float, got {value!r}")
    return v


def check_tol(value: Any, name: str = "tol", *, upper: float | None = None) -> float:
    """A tolerance: a positive finite float (below ``upper`` when given: API A's relative ``tol < 1``)."""
    return check_positive_float(name, value, upper=upper)


def index_set(indices: IndexLike, n: int, name: str = "indices", *, unique: bool = True) -> Tensor:
    """An index subset of ``range(n)`` as a 1-D CPU ``LongTensor``.

    Accepts a slice, a boolean mask ``[n]``, an integer tensor/array or a sequence of ints. Repeated
    indices are refused by default (a restriction with a repeated coordinate is singular, and a trace block
    would count it twice); ``unique=False`` lets them through for callers that want a multiset.
    """
    if isinstance(indices, slice):
        return torch.arange(n, dtype=torch.long)[indices]
    if isinstance(indices, np.ndarray):
        indices = torch.from_numpy(indices)
    if not isinstance(indices, Tensor):
        try:
            items = list(indices)                   # once: a generator can be read only once
            indices = torch.as_tensor(items, dtype=torch.long if not items else None)
        except (TypeError, ValueError) as e:
            raise ArgumentTypeError(f"{name} must be a LongTensor, a bool mask, a slice or a sequence of "
                                    f"ints, got {type(indices).__name__}") from e
    if indices.dtype == torch.bool:
        if indices.shape != (n,):
            raise ValueError(f"{name}: a boolean mask must have shape [{n}], got {list(indices.shape)}")
        return indices.nonzero().reshape(-1).cpu()
    if indices.is_floating_point() or indices.is_complex():
        raise ArgumentTypeError(f"{name} must be integers, got dtype {indices.dtype}")
    if indices.dim() > 1:
        raise ValueError(f"{name} must be 1-D, got shape {list(indices.shape)}")
    idx = indices.reshape(-1).long().cpu()
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
        raise ValueError(f"{name} must lie in [0, {n}), got range [{int(idx.min())}, {int(idx.max())}]")
    if unique and idx.numel() != torch.unique(idx).numel():
        raise ValueError(f"{name} must be unique (a repeated index was given)")
    return idx


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the algorithms compute in for an operator of ``dtype``: float32/float64 as they are, other
    real dtypes (half, bfloat16) in float32; complex operators are refused."""
    if dtype in (torch.float32, torch.float64):
        return dtype
    if dtype.is_complex:
        raise ArgumentTypeError(f"complex operators are not supported, got dtype {dtype}")
    return torch.float32


def convergence_floor(dtype: torch.dtype) -> float:
    """``√ε`` of ``dtype``: eigenvalues below ``√ε·‖A‖`` are measured against that floor (see converged)."""
    return math.sqrt(float(torch.finfo(dtype).eps))


def converged(residuals: Any, eigenvalues: Any, tol: float, scale: float, dtype: torch.dtype) -> np.ndarray:
    """The convergence test of Ritz pairs, elementwise: ``‖A v − λ v‖ < tol · max(|λ|, √ε · scale)``.

    ``scale`` is the operator's norm estimate (``‖T‖`` of the Lanczos tridiagonal, or the largest ``|λ|``
    found). The relative test ``r < tol·|λ|`` cannot be met by eigenvalues below ``√ε·‖A‖`` (a product carries
    errors of order ``ε‖A‖``), so those are measured against ``√ε·‖A‖`` instead and near-zero eigenvalues
    converge; a residual of exactly 0 is converged whatever λ. Inputs are floats or arrays on the host; the
    result is a boolean numpy array.
    """
    lam = np.abs(np.asarray(eigenvalues, dtype=np.float64))
    ref = np.maximum(lam, convergence_floor(dtype) * float(scale))
    r = np.asarray(residuals, dtype=np.float64)
    return (r < tol * ref) | (r == 0.0)     # an exact pair (zero residual) has converged, even at λ = 0


def order_descending(values: Tensor) -> Tensor:
    """Indices that sort eigenvalues from the largest (algebraic) down: results store them ascending; the API
    facades report them descending."""
    return torch.argsort(values, descending=True)


def json_safe(obj: Any) -> Any:
    """``obj`` with tensors/arrays as lists, numpy scalars as Python numbers, NaN/Inf as ``None`` and every
    mapping key as a string, so that ``json.dump`` writes strict JSON."""
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, Tensor):
        return json_safe(obj.detach().cpu().tolist())
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if obj is None or isinstance(obj, str):
        return obj
    return str(obj)
