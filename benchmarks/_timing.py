"""Timing helpers shared by the Lanczos benchmarks: a wall-clock accumulator for wrapped functions and an
operator wrapper that times its products.

Imported inside the benchmarks' run functions (after the thread count is set), never by the library.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import torch

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
