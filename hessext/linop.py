"""Symmetric linear operators on flat vectors: the one interface every hessext algorithm consumes.

A subclass implements a single method, ``_matmat(X: [n, m]) -> [n, m]``, and inherits

- ``matvec(v[n])``, ``matmat(X[n, m])`` and ``A @ v`` / ``A @ X`` with shape checks;
- ``A + B``, ``A - B``, ``c * A``, ``A * c``, ``-A`` (lazy compositions);
- ``restrict(indices)``: the principal sub-operator ``A_SS = Pᵀ A P`` on an index subset S, where
  ``P ∈ R^{n×|S|}`` embeds ``R^{|S|}`` into ``R^n`` (zero outside S);
- ``to_dense()`` (``A I`` in column blocks) and ``to_scipy()`` (a float64 numpy
  ``scipy.sparse.linalg.LinearOperator``);
- ``num_matvecs``: the number of vectors multiplied so far (``matmat`` with m columns adds m);
- ``session()``: a context manager an algorithm holds around its loop of products, so that per-product setup
  (for a :class:`~hessext.hvp.HessianOperator`: the model-state guard) is done once per run, not per product;
- the **vector-space hooks** the algorithms use for every operation on whole vectors: ``global_n``, ``dot``,
  ``norm``, ``allreduce_``, ``reorthogonalize``, ``rademacher``, ``qr`` (and the flag ``sharded``). Their
  defaults are the single-process operations (bit for bit what the algorithms did before the hooks); a
  sharded operator (:class:`hessext.sharded.ShardedHessianOperator`) holds on each rank only its slice of
  every vector and overrides them with local work plus all-reduces, so that Lanczos, the trace estimators
  and SLQ run unchanged on vectors that are never gathered.

Inputs may have any floating dtype and any device: the operator computes in its own ``dtype``/``device``
and returns the result in the input's dtype and on the input's device.
"""
from __future__ import annotations

import abc
import contextlib
import functools
import numbers
from typing import Any, Callable, Sequence, TypeVar

import numpy as np
import torch
from torch import Tensor

from . import ops
from ._checks import IndexLike, check_int, index_set

__all__ = ["LinearOperator", "DenseOperator", "SumOperator", "ScaledOperator", "RestrictedOperator",
           "as_operator", "holds_session"]


class LinearOperator(abc.ABC):
    """Base class of square (symmetric) linear operators ``A ∈ R^{n×n}`` (abstract: subclasses implement
    :meth:`_matmat`).

    Args:
        n: size.
        dtype: dtype the operator computes in.
        device: device the operator computes on.
    """

    def __init__(self, n: int, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None) -> None:
        n = check_int("n", n, minimum=0)
        self.shape: tuple[int, int] = (n, n)
        self.dtype: torch.dtype = dtype
        self.device: torch.device = torch.device(device) if device is not None else torch.device("cpu")
        self.num_matvecs: int = 0

    # ------------------------------------------------------------------ to implement
    @abc.abstractmethod
    def _matmat(self, X: Tensor) -> Tensor:
        """``A X`` for ``X: [n, m]`` in ``self.dtype`` on ``self.device``; returns ``[n, m]``."""

    # ------------------------------------------------------------------ products
    @property
    def n(self) -> int:
        return self.shape[0]

    def session(self) -> contextlib.AbstractContextManager:
        """Context for a run of many products (an algorithm's loop); nothing to set up here."""
        return contextlib.nullcontext()

    def _prepare(self, X: Tensor, what: str) -> Tensor:
        if not isinstance(X, Tensor):
            if isinstance(X, np.ndarray):
                X = torch.from_numpy(X)
            else:
                raise TypeError(f"{what} must be a torch.Tensor, got {type(X).__name__}")
        if X.is_complex():
            raise TypeError(f"{what} must be a real floating tensor, got dtype {X.dtype}: the operator is "
                            "real symmetric, so apply it to the real and the imaginary part separately")
        if not X.is_floating_point():
            raise TypeError(f"{what} must be a floating tensor, got dtype {X.dtype}")
        return X

    def matvec(self, v: Tensor) -> Tensor:
        """``A v`` for ``v: [n]``; returns ``[n]`` in v's dtype, on v's device."""
        v = self._prepare(v, "v")
        if v.dim() != 1 or v.shape[0] != self.n:
            raise ValueError(f"v must have shape [{self.n}], got {list(v.shape)}")
        return self.matmat(v[:, None])[:, 0]

    def matmat(self, X: Tensor) -> Tensor:
        """``A X`` for ``X: [n, m]``; returns ``[n, m]`` in X's dtype, on X's device."""
        X = self._prepare(X, "X")
        if X.dim() != 2 or X.shape[0] != self.n:
            raise ValueError(f"X must have shape [{self.n}, m], got {list(X.shape)}")
        m = X.shape[1]
        if m == 0:
            return X.new_zeros(self.n, 0)
        Y = self._matmat(X.to(dtype=self.dtype, device=self.device))
        if Y.shape != (self.n, m):
            raise RuntimeError(f"{type(self).__name__}._matmat returned shape {list(Y.shape)}, "
                               f"expected {[self.n, m]}")
        self.num_matvecs += m
        return Y.to(dtype=X.dtype, device=X.device)

    def __matmul__(self, X: Tensor) -> Tensor:
        if isinstance(X, LinearOperator):
            raise TypeError("operator @ operator is not supported; compose with + and * or apply to vectors")
        X = self._prepare(X, "operand")
        if X.dim() == 1:
            return self.matvec(X)
        if X.dim() == 2:
            return self.matmat(X)
        raise ValueError(f"operand must be [n] or [n, m] with n={self.n}, got {list(X.shape)}")

    # ------------------------------------------------------------------ algebra
    def __add__(self, other: "LinearOperator | Tensor") -> "LinearOperator":
        return SumOperator([self, as_operator(other)])

    def __radd__(self, other: "LinearOperator | Tensor") -> "LinearOperator":
        return SumOperator([as_operator(other), self])

    def __sub__(self, other: "LinearOperator | Tensor") -> "LinearOperator":
        return SumOperator([self, ScaledOperator(as_operator(other), -1.0)])

    def __rsub__(self, other: "LinearOperator | Tensor") -> "LinearOperator":
        return SumOperator([as_operator(other), ScaledOperator(self, -1.0)])

    def __mul__(self, c: float) -> "LinearOperator":
        if isinstance(c, Tensor) and c.numel() == 1:
            c = c.item()
        if isinstance(c, bool) or not isinstance(c, numbers.Real):
            raise TypeError(f"an operator can only be multiplied by a real scalar, got {type(c).__name__}")
        return ScaledOperator(self, float(c))

    __rmul__ = __mul__

    def __truediv__(self, c: float) -> "LinearOperator":
        if isinstance(c, bool) or not isinstance(c, numbers.Real):
            raise TypeError(f"an operator can only be divided by a real scalar, got {type(c).__name__}")
        return ScaledOperator(self, 1.0 / float(c))

    def __neg__(self) -> "LinearOperator":
        return ScaledOperator(self, -1.0)

    def restrict(self, indices: IndexLike) -> "LinearOperator":
        """The principal sub-operator on an index subset: ``(A_SS) x = (A P x)[S]``.

        Args:
            indices: a LongTensor / sequence of ints (unique, in ``[0, n)``), a boolean mask ``[n]``, or a
                slice.
                The order of ``indices`` is the coordinate order of the sub-operator.
        """
        return RestrictedOperator(self, indices)

    # ------------------------------------------------------------------ vector-space hooks
    #: True for operators whose vectors are sharded across processes (each rank holds a slice).
    sharded: bool = False

    @property
    def global_n(self) -> int:
        """Dimension of the whole space (= :attr:`n`, the local vector length, unless vectors are sharded)."""
        return self.n

    def dot(self, x: Tensor, y: Tensor) -> Tensor:
        """``xᵀy`` over the whole space, a 0-dim tensor (default: ``torch.dot``)."""
        return torch.dot(x, y)

    def norm(self, x: Tensor, dim: int | None = None) -> Tensor:
        """``‖x‖₂`` over the whole space (``dim=0``: of every column of an ``[n, m]`` block; default
        ``torch.linalg.vector_norm``)."""
        return torch.linalg.vector_norm(x) if dim is None else torch.linalg.vector_norm(x, dim=dim)

    def allreduce_(self, t: Tensor, reduce: str = "sum") -> Tensor:
        """Combine the per-process partial values ``t`` in place (``reduce``: ``"sum"``, ``"max"`` or
        ``"min"``) and return it: the sum of local partial dot products is the global dot product. A no-op
        (returns ``t``) for single-process operators."""
        return t

    def reorthogonalize(self, w: Tensor, basis: Tensor, passes: int = 2) -> tuple[Tensor, Tensor, Tensor]:
        """``(w − basisᵀc, c, ‖w − basisᵀc‖)`` with ``c`` the summed projection coefficients of ``passes``
        classical Gram–Schmidt passes (default :func:`hessext.ops.reorthogonalize`, the fused kernel)."""
        return ops.reorthogonalize(w, basis, passes)

    def rademacher(self, m: int | None = None, *, seed: int, offset: int = 0,
                   dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Tensor:
        """This process's part of the counter-based ±1 probes of the whole space: ``[n]`` (or ``[n, m]``),
        element ``i`` of column ``j`` with counter ``offset + j·global_n + i_global`` (default
        :func:`hessext.ops.rademacher` ``(n, m, ...)``)."""
        return ops.rademacher(self.n, m, seed=seed, offset=offset, dtype=dtype, device=device)

    def qr(self, Y: Tensor) -> tuple[Tensor, Tensor]:
        """Thin QR ``Y = QR`` of an ``[n, m]`` block of vectors of this space (default Householder,
        ``torch.linalg.qr(Y, mode="reduced")``)."""
        return torch.linalg.qr(Y, mode="reduced")

    # ------------------------------------------------------------------ conversions
    def to_dense(self, block_size: int | None = None) -> Tensor:
        """The dense ``[n, n]`` matrix ``A I``, built ``block_size`` columns at a time (default 256)."""
        n = self.n
        bs = n if block_size is None and n <= 256 else (block_size or 256)
        if bs < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        out = torch.empty(n, n, dtype=self.dtype, device=self.device)
        for j0 in range(0, n, bs):
            j1 = min(n, j0 + bs)
            E = torch.zeros(n, j1 - j0, dtype=self.dtype, device=self.device)
            E[torch.arange(j0, j1, device=self.device), torch.arange(j1 - j0, device=self.device)] = 1
            out[:, j0:j1] = self.matmat(E)
        return out

    def to_scipy(self):
        """A ``scipy.sparse.linalg.LinearOperator`` (float64 numpy in and out) backed by this operator."""
        from scipy.sparse.linalg import LinearOperator as _ScipyOp

        def to_torch(x: np.ndarray) -> Tensor:
            return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64)).to(self.device, self.dtype)

        def mv(x: np.ndarray) -> np.ndarray:
            x = np.asarray(x)
            y = self.matvec(to_torch(x).reshape(-1))
            return y.detach().to("cpu", torch.float64).numpy().reshape(x.shape)

        def mm(X: np.ndarray) -> np.ndarray:
            return self.matmat(to_torch(X)).detach().to("cpu", torch.float64).numpy()

        return _ScipyOp(shape=self.shape, matvec=mv, rmatvec=mv, matmat=mm, rmatmat=mm, dtype=np.float64)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n={self.n}, dtype={self.dtype}, device={self.device})"


class DenseOperator(LinearOperator):
    """A dense ``[n, n]`` matrix as an operator (symmetry is the caller's promise; it is not checked)."""

    def __init__(self, A: Tensor) -> None:
        if isinstance(A, np.ndarray):
            A = torch.from_numpy(A)
        if not isinstance(A, Tensor):
            raise TypeError(f"A must be a Tensor, got {type(A).__name__}")
        if A.dim() != 2 or A.shape[0] != A.shape[1]:
            raise ValueError(f"A must be a square [n, n] matrix, got shape {list(A.shape)}")
        if not A.is_floating_point():
            raise TypeError(f"A must be floating point, got dtype {A.dtype}")
        super().__init__(A.shape[0], A.dtype, A.device)
        self.A = A

    def _matmat(self, X: Tensor) -> Tensor:
        return self.A @ X

    def to_dense(self, block_size: int | None = None) -> Tensor:
        return self.A.clone()


def _common(ops: Sequence[LinearOperator]) -> tuple[torch.dtype, torch.device]:
    n = ops[0].n
    for op in ops[1:]:
        if op.n != n:
            raise ValueError(f"operator sizes differ: {ops[0].shape} and {op.shape}")
    dtype = ops[0].dtype
    for op in ops[1:]:
        dtype = torch.promote_types(dtype, op.dtype)
    return dtype, ops[0].device


class _SameSpace(LinearOperator):
    """A composition that acts on the vectors of an inner operator ``_space``: the vector-space hooks are the
    inner operator's (so a sum or multiple of sharded operators is sharded like them)."""

    _space: LinearOperator

    @property
    def sharded(self) -> bool:  # type: ignore[override]
        return self._space.sharded

    @property
    def global_n(self) -> int:
        return self._space.global_n

    def dot(self, x: Tensor, y: Tensor) -> Tensor:
        return self._space.dot(x, y)

    def norm(self, x: Tensor, dim: int | None = None) -> Tensor:
        return self._space.norm(x, dim)

    def allreduce_(self, t: Tensor, reduce: str = "sum") -> Tensor:
        return self._space.allreduce_(t, reduce)

    def reorthogonalize(self, w: Tensor, basis: Tensor, passes: int = 2) -> tuple[Tensor, Tensor, Tensor]:
        return self._space.reorthogonalize(w, basis, passes)

    def rademacher(self, m: int | None = None, *, seed: int, offset: int = 0,
                   dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Tensor:
        return self._space.rademacher(m, seed=seed, offset=offset, dtype=dtype, device=device)

    def qr(self, Y: Tensor) -> tuple[Tensor, Tensor]:
        return self._space.qr(Y)


class SumOperator(_SameSpace):
    """``Σ_i A_i`` (lazy). The terms must act on the same vectors (same size; sharded operators only with
    operators of the same sharded space)."""

    def __init__(self, ops: Sequence[LinearOperator]) -> None:
        flat: list[LinearOperator] = []
        for op in ops:
            flat.extend(op.ops if isinstance(op, SumOperator) else [op])
        dtype, device = _common(flat)
        spaces = [op for op in flat if op.sharded]
        if spaces and any(op.global_n != spaces[0].global_n for op in flat):
            raise ValueError("cannot add a sharded operator to an operator on a different space (global "
                             f"sizes {[op.global_n for op in flat]})")
        super().__init__(flat[0].n, dtype, device)
        self.ops = flat
        self._space = spaces[0] if spaces else flat[0]

    def session(self) -> contextlib.AbstractContextManager:
        stack = contextlib.ExitStack()
        for op in self.ops:
            stack.enter_context(op.session())
        return stack

    def _matmat(self, X: Tensor) -> Tensor:
        out = self.ops[0].matmat(X)
        for op in self.ops[1:]:
            out = out + op.matmat(X)
        return out


class ScaledOperator(_SameSpace):
    """``c · A`` (lazy)."""

    def __init__(self, op: LinearOperator, c: float) -> None:
        if isinstance(op, ScaledOperator):
            op, c = op.op, c * op.c
        super().__init__(op.n, op.dtype, op.device)
        self.op, self.c = op, float(c)
        self._space = op

    def session(self) -> contextlib.AbstractContextManager:
        return self.op.session()

    def _matmat(self, X: Tensor) -> Tensor:
        return self.c * self.op.matmat(X)


class RestrictedOperator(LinearOperator):
    """Principal sub-operator ``Pᵀ A P`` on the index subset ``S`` (coordinates in the order of ``S``); a new,
    single-process space of size ``|S|`` (sharded operators are refused)."""

    def __init__(self, op: LinearOperator, indices: IndexLike) -> None:
        if op.sharded:
            raise ValueError(f"restrict() of a sharded operator ({type(op).__name__}) is not supported: its "
                             "vectors hold only this rank's slice, so an index subset of the whole space "
                             "has no local meaning here")
        idx = index_set(indices, op.n)
        if idx.numel() == 0:
            raise ValueError("indices selects no coordinate")
        if isinstance(op, RestrictedOperator):
            idx, op = op.indices.cpu()[idx], op.op
        super().__init__(idx.numel(), op.dtype, op.device)
        self.op = op
        self.indices = idx.to(op.device)

    def session(self) -> contextlib.AbstractContextManager:
        return self.op.session()

    def _matmat(self, X: Tensor) -> Tensor:
        full = X.new_zeros(self.op.n, X.shape[1])
        full[self.indices] = X
        return self.op.matmat(full)[self.indices]


def as_operator(A: "LinearOperator | Tensor | np.ndarray") -> LinearOperator:
    """``A`` itself if it is a LinearOperator, else a :class:`DenseOperator` of the square matrix ``A``."""
    if isinstance(A, LinearOperator):
        return A
    if isinstance(A, (Tensor, np.ndarray)):
        return DenseOperator(A)
    raise TypeError(f"A must be a LinearOperator or a square [n, n] tensor, got {type(A).__name__}")


F = TypeVar("F", bound=Callable[..., Any])


def holds_session(fn: F) -> F:
    """Decorator for an algorithm ``fn(A, ...)``: ``A`` becomes an operator (:func:`as_operator`) and its
    :meth:`LinearOperator.session` is held for the whole call, so per-product setup happens once."""
    @functools.wraps(fn)
    def wrapper(A: Any, *args: Any, **kwargs: Any) -> Any:
        op = as_operator(A)
        with op.session():
            return fn(op, *args, **kwargs)
    return wrapper  # type: ignore[return-value]
