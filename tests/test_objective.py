"""The fixed-order reduction tree: any placement of chunks gives bit-identical sums."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from dlogit.objective import complete_tree, node_sum, owned_nodes


@pytest.mark.parametrize("n_chunks", [1, 2, 3, 7, 16, 33])
def test_owned_nodes_tile_and_reduce_identically(rng, n_chunks):
    leaves = [rng.standard_normal(5) * 10.0 ** rng.integers(-8, 8) for _ in range(n_chunks)]
    whole = node_sum(lambda i: leaves[i], 0, n_chunks)
    for _ in range(20):
        k = int(rng.integers(1, 5))
        owner = rng.integers(0, k, n_chunks)
        parts = {}
        covered = []
        for w in range(k):
            idx = [i for i in range(n_chunks) if owner[i] == w]
            for lo, hi in owned_nodes(idx, n_chunks):
                assert all(owner[i] == w for i in range(lo, hi))
                parts[(lo, hi)] = node_sum(lambda i: leaves[i], lo, hi)
                covered.extend(range(lo, hi))
        assert sorted(covered) == list(range(n_chunks))
        assert np.array_equal(complete_tree(parts, n_chunks), whole)


def test_missing_chunk_is_an_error():
    with pytest.raises(KeyError):
        complete_tree({(0, 1): np.zeros(2)}, 2)


# --------------------------------------------------------------------------------------------------
# the preconditioning change of variables: theta = A theta'


def _reparam(rng, K=3, d=5, center=True):
    from dlogit.family import ParamLayout
    from dlogit.objective import Reparam

    layout = ParamLayout(d, K)
    scale = 10.0 ** rng.uniform(-3, 4, d)
    shift = rng.standard_normal(d) * 1e3 if center else np.zeros(d)
    return layout, Reparam(layout, scale, shift)


@pytest.mark.parametrize("K", [1, 3])
def test_reparam_maps_are_inverse_and_adjoint(rng, K):
    layout, R = _reparam(rng, K)
    th = rng.standard_normal(layout.size)
    np.testing.assert_allclose(R.to_solver(R.to_user(th)), th, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(R.to_user(R.to_solver(th)), th, rtol=1e-12, atol=1e-9)
    # A is linear: <A^T g, v> == <g, A v>, and A^{-T} inverts A^T
    g, v = rng.standard_normal(layout.size), rng.standard_normal(layout.size)
    assert np.dot(R.grad_to_solver(g), v) == pytest.approx(np.dot(g, R.to_user(v)), rel=1e-10)
    np.testing.assert_allclose(R.grad_to_user(R.grad_to_solver(g)), g, rtol=1e-10, atol=1e-10)


def test_reparam_keeps_the_objective_and_its_gradient(rng):
    """f'(theta') = f(A theta') and grad f' = A^T grad f: the optimum in either coordinates is the same."""
    from dlogit.family import ParamLayout
    from dlogit.objective import Reparam

    n, d = 200, 4
    X = rng.standard_normal((n, d)) * [1.0, 3e4, 1e-3, 50.0] + [0.0, 5e4, 0.0, -20.0]
    y = (rng.random(n) < 0.5).astype(float)
    layout = ParamLayout(d, 1)
    R = Reparam(layout, X.std(axis=0), X.mean(axis=0))

    def f(theta):
        z = X @ theta[:d] + theta[d]
        return np.mean(np.logaddexp(0, z) - y * z) + 0.01 * theta[:d] @ theta[:d]

    def grad(theta):
        z = X @ theta[:d] + theta[d]
        r = 1 / (1 + np.exp(-z)) - y
        return np.r_[X.T @ r / n + 0.02 * theta[:d], r.mean()]

    ts = rng.standard_normal(d + 1) * 0.1
    from scipy.optimize import approx_fprime

    fd = approx_fprime(ts, lambda t: f(R.to_user(t)), 1e-7)
    np.testing.assert_allclose(R.grad_to_solver(grad(R.to_user(ts))), fd, rtol=1e-4, atol=1e-6)
    from dlogit.objective import fit_penalty

    P = fit_penalty(layout, l1=0.5, l2=0.01)
    Ps = R.penalty(P)  # the same penalty in the solver's coordinates
    w = Ps.l1_weights
    np.testing.assert_allclose(w[:d], 0.5 / R.scale)
    assert w[d] == 0.0  # the intercept is never penalized
    for t in (ts, np.r_[0.0, ts[1:]]):
        assert Ps.value(t) == pytest.approx(P.value(R.to_user(t)), rel=1e-13)
    # the smooth part's gradient transforms as every gradient does (A^T)
    np.testing.assert_allclose(Ps.gradient(ts), R.grad_to_solver(P.gradient(R.to_user(ts))), rtol=1e-13)


def test_preconditioner_is_finite_at_extreme_scales():
    from dlogit.objective import preconditioner
    from dlogit.stats import chunk_stats

    X = np.array([[1e300, 1.0, 0.0, 5.0], [-1e300, 2.0, 0.0, 5.0], [3e299, 3.0, 0.0, 5.0]])
    st = chunk_stats(X, np.array([0, 1, 0]))
    scale, shift = preconditioner(st.col_max, st.col_sum, st.col_sq, st.rows, center=True)
    assert np.all(np.isfinite(scale)) and np.all(scale > 0) and np.all(np.isfinite(shift))
    np.testing.assert_allclose(scale[0], (X[:, 0] / 1e300).std() * 1e300 / 2, rtol=1e-10)  # no overflow
    np.testing.assert_allclose(scale[1], X[:, 1].std() / 2, rtol=1e-10)
    np.testing.assert_allclose(shift[1], 2.0)
    assert scale[2] == 1.0 and shift[2] == 0.0  # an all-zero column
    assert scale[3] == 5.0 and shift[3] == 0.0  # a constant column: no spread, no shift
    scale, _ = preconditioner(st.col_max, st.col_sum, st.col_sq, st.rows, center=True, l2=0.5)
    np.testing.assert_allclose(scale[1], np.hypot(X[:, 1].std() / 2, 1.0), rtol=1e-10)
    assert scale[2] == 1.0  # the penalty alone: curvature 2 l2 = 1


def test_stats_merge_in_the_tree_equals_one_pass(rng):
    from dlogit.objective import node_sum
    from dlogit.stats import chunk_stats, merge_stats

    X = rng.standard_normal((1000, 6)) * 10.0 ** rng.integers(-3, 4, 6)
    y = rng.integers(0, 3, 1000)
    w = rng.random(1000)
    whole = chunk_stats(X, y, w)
    bounds = [0, 17, 300, 301, 777, 1000]
    parts = [chunk_stats(X[a:b], y[a:b], w[a:b]) for a, b in itertools.pairwise(bounds)]
    merged = node_sum(parts.__getitem__, 0, len(parts), merge_stats)
    assert merged.rows == 1000 and merged.weight_sum == pytest.approx(w.sum(), rel=1e-14)
    np.testing.assert_array_equal(merged.labels[0], [0, 1, 2])
    np.testing.assert_array_equal(merged.labels[1], np.bincount(y))
    np.testing.assert_allclose(merged.labels[2], np.bincount(y, weights=w), rtol=1e-13)
    np.testing.assert_array_equal(merged.col_max, whole.col_max)
    # the moments are weighted by the row weights (weights and repeated rows summarize alike)
    np.testing.assert_allclose(merged.col_sum * merged.col_max, w @ X, rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(merged.col_sq * merged.col_max**2, w @ (X * X), rtol=1e-10)
    assert merged.fingerprint() == node_sum(parts.__getitem__, 0, len(parts), merge_stats).fingerprint()
