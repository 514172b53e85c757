"""LinearOperator base: products, counters, algebra, restriction, dense and scipy conversion."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse.linalg as spla
import torch
from _spectra import Diag as DiagOperator  # implements only _matmat: the rest is the base class

from hessext.linop import DenseOperator, LinearOperator, as_operator


def sym(n: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n, n, generator=g, dtype=dtype)
    return A + A.T


def test_products_shapes_and_counter():
    A = sym(7)
    op = DenseOperator(A)
    v = torch.randn(7, dtype=torch.float64)
    X = torch.randn(7, 3, dtype=torch.float64)
    assert torch.allclose(op.matvec(v), A @ v, rtol=1e-14, atol=1e-14)
    assert torch.allclose(op @ v, A @ v, rtol=1e-14, atol=1e-14)
    assert torch.allclose(op.matmat(X), A @ X, rtol=1e-14, atol=1e-14)
    assert torch.allclose(op @ X, A @ X, rtol=1e-14, atol=1e-14)
    assert op.num_matvecs == 1 + 1 + 3 + 3
    assert op.matmat(torch.zeros(7, 0, dtype=torch.float64)).shape == (7, 0)
    assert op.num_matvecs == 8
    assert op.shape == (7, 7) and op.dtype == torch.float64


def test_shape_and_type_errors():
    op = DenseOperator(sym(5))
    with pytest.raises(ValueError, match=r"\[5\]"):
        op.matvec(torch.zeros(4, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"\[5, m\]"):
        op.matmat(torch.zeros(4, 2, dtype=torch.float64))
    with pytest.raises(ValueError):
        op @ torch.zeros(5, 2, 2)
    with pytest.raises(TypeError, match="floating"):
        op @ torch.zeros(5, dtype=torch.long)
    # a complex vector is refused (casting it would silently drop its imaginary part), naming the dtype
    for z in (torch.ones(5, dtype=torch.complex128), torch.ones(5, 2, dtype=torch.complex64)):
        with pytest.raises(TypeError, match=str(z.dtype)):
            op @ z
    with pytest.raises(TypeError, match="complex128"):
        op.matvec(torch.ones(5, dtype=torch.complex128))
    with pytest.raises(TypeError, match="complex"):
        DenseOperator(torch.ones(2, 2, dtype=torch.complex64))
    with pytest.raises(ValueError, match="n must be >= 0, got -1"):
        LinearOperator.__init__(DiagOperator(torch.ones(2)), -1)
    with pytest.raises(TypeError):
        op @ [1.0] * 5
    with pytest.raises(ValueError, match="square"):
        DenseOperator(torch.zeros(3, 4))
    with pytest.raises(TypeError):
        as_operator([[1.0]])
    with pytest.raises(ValueError, match="sizes differ"):
        op + DenseOperator(sym(4))
    with pytest.raises(TypeError):
        op * "2"
    with pytest.raises(TypeError, match="abstract.*_matmat"):   # a subclass without _matmat cannot exist
        LinearOperator(3)

    class NoMatmat(LinearOperator):
        pass

    with pytest.raises(TypeError, match="abstract.*_matmat"):
        NoMatmat(3)


def test_dtype_and_device_follow_the_input():
    op = DenseOperator(sym(6))  # float64 operator
    v = torch.randn(6, dtype=torch.float32)
    y = op @ v
    assert y.dtype == torch.float32
    assert torch.allclose(y.double(), op.A @ v.double(), rtol=1e-6, atol=1e-6)


def test_algebra():
    A, B = sym(6, 0), sym(6, 1)
    a, b = DenseOperator(A), DenseOperator(B)
    X = torch.randn(6, 2, dtype=torch.float64)
    for expr, dense in [(a + b, A + B), (a - b, A - B), (2.5 * a, 2.5 * A), (a * -3, -3 * A), (-a, -A),
                        (a / 4, A / 4), (a + B, A + B), (B + a, A + B), (2 * (a - 0.5 * b), 2 * A - B)]:
        assert torch.allclose(expr @ X, dense @ X, rtol=1e-13, atol=1e-13)
        assert torch.allclose(expr.to_dense(), dense, rtol=1e-13, atol=1e-13)
    a, b = DenseOperator(A), DenseOperator(B)
    s = a + b
    s @ X
    assert s.num_matvecs == 2 and a.num_matvecs == 2 and b.num_matvecs == 2


def test_restrict():
    A = sym(9)
    op = DenseOperator(A)
    idx = torch.tensor([7, 1, 4])
    r = op.restrict(idx)
    assert r.shape == (3, 3)
    assert torch.equal(r.to_dense(), A[idx][:, idx])
    assert torch.equal(op.restrict(slice(2, 8, 3)).to_dense(), A[2:8:3, 2:8:3])
    mask = torch.zeros(9, dtype=torch.bool)
    mask[[0, 5]] = True
    assert torch.equal(op.restrict(mask).to_dense(), A[[0, 5]][:, [0, 5]])
    nested = r.restrict([2, 0])  # = indices [4, 7] of A
    assert torch.equal(nested.to_dense(), A[[4, 7]][:, [4, 7]])
    v = torch.randn(3, dtype=torch.float64)
    assert torch.allclose(r @ v, A[idx][:, idx] @ v, rtol=1e-14, atol=1e-14)
    with pytest.raises(ValueError, match="unique"):
        op.restrict([1, 1])
    with pytest.raises(ValueError, match=r"\[0, 9\)"):
        op.restrict([3, 9])
    with pytest.raises(ValueError, match="no coordinate"):
        op.restrict(slice(3, 3))
    with pytest.raises(TypeError):
        op.restrict(torch.tensor([0.5]))


def test_to_dense_blocks_and_subclass_with_only_matmat():
    d = torch.arange(1.0, 301.0, dtype=torch.float64)
    op = DiagOperator(d)
    D = op.to_dense(block_size=64)
    assert torch.equal(D, torch.diag(d))
    assert op.num_matvecs == 300
    assert torch.equal(op.to_dense(), torch.diag(d))  # default blocks of 256


def test_to_scipy():
    A = sym(12, 3)
    op = DenseOperator(A.float())  # float32 operator: scipy side is float64 all the same
    S = op.to_scipy()
    assert S.shape == (12, 12) and S.dtype == np.float64
    x = np.random.default_rng(0).standard_normal(12)
    y = S.matvec(x)
    assert y.dtype == np.float64 and y.shape == (12,)
    np.testing.assert_allclose(y, A.numpy() @ x, rtol=1e-5, atol=1e-5)
    X = np.random.default_rng(1).standard_normal((12, 4))
    np.testing.assert_allclose(S.matmat(X), A.numpy() @ X, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(S @ x[:, None], (A.numpy() @ x)[:, None], rtol=1e-5, atol=1e-5)
    op64 = DenseOperator(A)
    top = spla.eigsh(op64.to_scipy(), k=1, which="LA", tol=1e-12)[0][0]
    assert abs(top - torch.linalg.eigvalsh(A)[-1].item()) < 1e-9


def test_as_operator():
    A = sym(4)
    op = as_operator(A)
    assert isinstance(op, DenseOperator) and as_operator(op) is op
    assert isinstance(as_operator(A.numpy()), DenseOperator)
