"""Timing helpers shared by the Lanczos benchmarks: a wall-clock accumulator for wrapped functions, an
operator wrapper that times its products, and the benchmarks' workload (a tanh MLP's Hessian).

Imported inside the benchmarks' run functions (after the thread count is set), never by the library.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import torch
from torch import nn

from hessext.hvp import HessianOperator
from hessext.linop import LinearOperator


class Timer:
    """Accumulates wall time of wrapped calls; nested wrapped calls are counted once (by the outermost)."""

    def __init__(self) -> None:
        self.total = 0.0
        self.calls = 0
        self.depth = 0

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` with its wall time (outermost calls only) added to ``total`` and counted in ``calls``."""
        def timed(*args: Any, **kwargs: Any) -> Any:
            self.depth += 1
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.depth -= 1
                if self.depth == 0:
                    self.total += time.perf_counter() - t0
                    self.calls += 1
        return timed


class TimedOperator(LinearOperator):
    """The wrapped operator, with the wall time of its products accumulated in ``seconds`` (``calls``
    block products)."""

    def __init__(self, op: LinearOperator) -> None:
        super().__init__(op.n, op.dtype, op.device)
        self.op, self.seconds, self.calls = op, 0.0, 0

    def session(self):  # noqa: ANN201
        return self.op.session()

    def _matmat(self, X: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        Y = self.op.matmat(X)
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        return Y


def tanh_mlp_operator(h: int, batch: int = 16) -> TimedOperator:
    """The Lanczos benchmarks' workload, timed: the Hessian of a tanh MLP 784-h-h-10 with cross-entropy on one
    random batch (float32, seed 0); n ≈ 784h + h² + 11h + 10."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(784, h), nn.Tanh(), nn.Linear(h, h), nn.Tanh(), nn.Linear(h, 10))
    X, y = torch.randn(batch, 784), torch.randint(0, 10, (batch,))
    return TimedOperator(HessianOperator(model, nn.CrossEntropyLoss(), (X, y)))
