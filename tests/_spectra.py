"""Operators and spectra with known eigenvalues, shared by the Lanczos tests (full, partial, restarted,
block).

``with_spectrum`` builds a dense symmetric matrix ``Q diag(λ) Qᵀ`` with a seeded random orthogonal ``Q``;
``Diag`` is ``diag(d)`` as an operator (for n up to 10⁵ and more); the spectra put outliers, clusters and a
bulk where Lanczos is likely to produce ghost copies without (enough) reorthogonalisation.
"""
from __future__ import annotations

import numpy as np
import torch

from hessext.linop import LinearOperator

F64 = torch.float64


def with_spectrum(evals: np.ndarray, seed: int = 0, dtype: torch.dtype = F64) -> torch.Tensor:
    """A dense symmetric ``[n, n]`` matrix with eigenvalues ``evals`` (eigenvectors from a seeded QR)."""
    g = torch.Generator().manual_seed(seed)
    n = len(evals)
    Q, _ = torch.linalg.qr(torch.randn(n, n, dtype=F64, generator=g))
    return ((Q * torch.tensor(evals, dtype=F64)) @ Q.T).to(dtype)


def outliers_and_clusters(n: int = 300) -> np.ndarray:
    """A bulk in [−1, 1], 6 outliers and a cluster of 4 at the top (gaps 1e-3)."""
    return np.concatenate([np.linspace(-1.0, 1.0, n - 10), [3.0, 3.2, 3.5, 3.7, 3.9, 4.2],
                           [5.0, 5.001, 5.002, 5.003]])


def outliers_and_bulk(n: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    """20 outliers evenly in [2, 10] over a uniform bulk in [0, 1], randomly permuted (a diagonal)."""
    g = np.random.default_rng(seed)
    d = np.concatenate([g.uniform(0, 1, n - 20), np.linspace(2, 10, 20)])
    return torch.tensor(g.permutation(d), dtype=dtype)


def wanted(truth: np.ndarray, which: str, k: int) -> np.ndarray:
    """The k eigenvalues of ``truth`` that ``which`` ("LA", "SA", "BE", "LM") asks for, ascending."""
    t = np.sort(truth)
    if which == "LA":
        return t[-k:]
    if which == "SA":
        return t[:k]
    if which == "BE":
        return np.concatenate([t[:k // 2], t[len(t) - (k - k // 2):]])
    return np.sort(t[np.argsort(np.abs(t))[-k:]])


def ghost_free(got: np.ndarray, spectrum: np.ndarray, rtol: float) -> bool:
    """Every computed value is an eigenvalue, no value appears more often than its multiplicity in
    ``spectrum`` (all eigenvalues, repeated ones repeated), and the largest eigenvalue is found."""
    spectrum = np.sort(spectrum)
    used = np.zeros(spectrum.size, dtype=bool)
    for v in got:
        near = np.flatnonzero(~used & (np.abs(spectrum - v) <= rtol * max(abs(v), 1.0)))
        if near.size == 0:
            return False
        used[near[0]] = True
    return bool(np.any(np.abs(got - spectrum[-1]) <= rtol * abs(spectrum[-1])))


class Diag(LinearOperator):
    """diag(d) as an operator (products counted by the base class)."""

    def __init__(self, d: torch.Tensor) -> None:
        super().__init__(d.numel(), d.dtype, d.device)
        self.d = d

    def _matmat(self, X: torch.Tensor) -> torch.Tensor:
        return self.d[:, None] * X
