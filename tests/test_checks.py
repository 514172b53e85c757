"""hessext._checks: the shared argument checks refuse what they should, with the argument named."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from hessext._checks import ArgumentTypeError, check_int, converged, index_set


def test_index_set_reads_a_generator_once():
    assert index_set((i for i in [1, 3]), 5).tolist() == [1, 3]
    with pytest.raises(TypeError, match="blocks must be integers"):   # not truncated to [1]
        index_set((x for x in [1.5]), 5, name="blocks")
    assert index_set(iter([]), 5).dtype == torch.long


def test_index_set_refuses_repeats_and_out_of_range():
    with pytest.raises(ValueError, match="unique"):
        index_set([1, 1], 5)
    assert index_set([1, 1], 5, unique=False).tolist() == [1, 1]
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        index_set([5], 5)


def test_check_int_type_errors_are_value_errors_too():
    with pytest.raises(ArgumentTypeError):
        check_int("k", True)
    with pytest.raises(ValueError, match="k must be >= 1, got 0"):
        check_int("k", 0, 1)
    assert check_int("k", np.int64(3), 1) == 3


def test_converged_uses_the_sqrt_eps_floor_and_counts_exact_pairs():
    eps = torch.finfo(torch.float64).eps
    # λ = 0: the floor √ε·scale decides; a residual of exactly 0 is converged even with scale 0
    assert converged([1e-12], [0.0], 1e-3, 1.0, torch.float64).all()
    assert not converged([1e-3], [0.0], 1e-3, 1.0, torch.float64).any()
    assert converged([0.0], [0.0], 1e-3, 0.0, torch.float64).all()
    assert not converged([10 * eps], [0.0], 1e-3, 0.0, torch.float64).any()
