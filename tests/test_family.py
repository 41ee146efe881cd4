"""Model families: labels -> classes, class weights, layouts, links (pure, no Dask)."""

from __future__ import annotations

import numpy as np
import pytest

from dlogit.errors import DataError
from dlogit.family import (
    Binomial,
    Classes,
    Multinomial,
    ParamLayout,
    class_multipliers,
    family_for,
    label_counts,
    merge_label_counts,
)


@pytest.mark.parametrize("labels, kind", [
    (np.array([1, -1, -1, 1, 1]), "int"),
    (np.array([True, False, True]), "bool"),
    (np.array(["spam", "ham", "eggs", "ham"], dtype=object), "str"),
    (np.array(["b", "a", "b"]), "str"),
    (np.array([0.0, 2.0, 1.0, 2.0]), "float"),
])
def test_labels_become_sorted_classes_and_round_trip(labels, kind):
    values, counts, sums = label_counts(labels)
    classes = Classes.from_counts(values, counts, sums)
    assert classes.kind == kind
    assert list(classes.values) == sorted(set(labels.tolist()))
    codes = classes.encode(labels)
    np.testing.assert_array_equal(classes.decode(codes), labels.astype(classes.values.dtype))
    assert counts.sum() == len(labels)


def test_merging_chunks_counts_exactly_and_in_any_order():
    a = label_counts(np.array(["x", "y", "x"]), np.array([1.0, 2.0, 3.0]))
    b = label_counts(np.array(["z", "x"]), np.array([0.5, 0.5]))
    for parts in ([a, b], [b, a]):
        values, counts, sums = merge_label_counts(parts)
        assert list(values) == ["x", "y", "z"]
        assert list(counts) == [3, 1, 1]
        np.testing.assert_array_equal(sums, [4.5, 2.0, 0.5])


def test_label_errors_are_one_clear_line():
    with pytest.raises(DataError, match="only one class"):
        Classes.from_counts(*label_counts(np.array([3, 3, 3])))
    with pytest.raises(DataError, match="continuous"):
        Classes.from_counts(*label_counts(np.array([0.5, 1.0, 2.0])))
    with pytest.raises(DataError, match="NaN"):
        label_counts(np.array([0.0, np.nan]))
    with pytest.raises(DataError, match="mix types"):
        label_counts(np.array([1, "a"], dtype=object))
    with pytest.raises(DataError, match="1001 distinct classes"):
        Classes.from_counts(*label_counts(np.arange(1001)), max_classes=1000)
    classes = Classes.from_counts(*label_counts(np.array(["a", "b"])))
    with pytest.raises(DataError, match="not classes of the model: c"):
        classes.encode(np.array(["a", "c"]))
    # labels that a cast to the classes' type would turn into a class are not classes
    ints = Classes.from_counts(*label_counts(np.array([0, 1, 1])))
    with pytest.raises(DataError, match="not classes of the model: 0.5"):
        ints.encode(np.array([0.0, 0.5, 1.0]))
    np.testing.assert_array_equal(ints.encode(np.array([1.0, 0.0])), [1, 0])
    bools = Classes.from_counts(*label_counts(np.array([True, False])))
    with pytest.raises(DataError, match="not classes of the model: 2"):
        bools.encode(np.array([0, 1, 2]))
    with pytest.raises(DataError, match="label type"):
        bools.encode(np.array(["yes"]))
    np.testing.assert_array_equal(bools.encode(np.array([True, False], dtype=object)), [1, 0])
    big = Classes.from_counts(*label_counts(np.array([2**53, 2**53 + 1])))  # beyond float64's integers
    np.testing.assert_array_equal(big.encode(np.array([2**53 + 1, 2**53])), [1, 0])


def test_balanced_class_weights_match_scikit_learn():
    from sklearn.utils.class_weight import compute_class_weight

    y = np.array(["a"] * 6 + ["b"] * 3 + ["c"])
    w = np.linspace(0.5, 2.0, len(y))
    for sw in (None, w):
        classes = Classes.from_counts(*label_counts(y, sw))
        got = class_multipliers(classes, "balanced")
        want = compute_class_weight("balanced", classes=np.unique(y), y=y, sample_weight=sw)
        np.testing.assert_allclose(got, want, rtol=1e-14)
    got = class_multipliers(classes, {"b": 3.0})
    np.testing.assert_array_equal(got, [1.0, 3.0, 1.0])
    with pytest.raises(DataError, match="not a class"):
        class_multipliers(classes, {"q": 1.0})


def test_layout_offsets():
    L = ParamLayout(3, 2)
    theta = np.arange(L.size, dtype=float)
    np.testing.assert_array_equal(L.coef(theta), [[0, 1, 2], [3, 4, 5]])
    np.testing.assert_array_equal(L.intercept(theta), [6, 7])
    np.testing.assert_array_equal(L.pack(L.coef(theta), L.intercept(theta)), theta)
    assert L.penalized().tolist() == [True] * 6 + [False] * 2


def test_links_are_stable_and_normalized():
    z = np.array([-1000.0, 0.0, 1000.0])
    p = Binomial().proba(z)
    np.testing.assert_array_equal(p, [[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]])
    Z = np.array([[1000.0, 0.0, -1000.0], [1.0, 2.0, 3.0]])
    P = Multinomial().proba(Z)
    np.testing.assert_allclose(P.sum(axis=1), 1.0)
    assert np.all(np.isfinite(P)) and P[0, 0] == 1.0
    loss = Multinomial().row_loss(Z, np.array([2, 0]))
    assert loss[0] == 2000.0
    assert family_for(2).name == "binomial" and family_for(5).name == "multinomial"


# -- the row terms: one reference per family ------------------------------------------------------

def _closed_form(K, Z, codes, sw):
    """float64 definitions (scipy): per-row loss, weighted residuals, the exact Hessian of the loss sum
    per row (K' x K'), from rows-major margins Z (rows, K')."""
    from scipy.special import expit, logsumexp, softmax

    n = len(codes)
    s = np.ones(n) if sw is None else sw
    if K == 2:
        z = Z[:, 0]
        l = np.logaddexp(0.0, z) - codes * z
        R = np.where(codes == 1, -expit(-z), expit(z))[:, None]  # sigmoid(z) - y without cancellation
        H = (expit(z) * expit(-z))[:, None, None]
    else:
        l = logsumexp(Z, axis=1) - Z[np.arange(n), codes]
        P = softmax(Z, axis=1)
        R = P - np.eye(K)[codes]
        H = np.einsum("ik,kj->ikj", P, np.eye(K)) - P[:, :, None] * P[:, None, :]
    return l, s[:, None] * R, s[:, None, None] * H


@pytest.mark.parametrize("K", [2, 3, 5])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("layout", ["rows-major", "outputs-major", "stacked"])
def test_row_terms_match_the_definitions_in_every_layout(K, weighted, layout):
    """Family.terms / hvp_terms against the closed forms, rows-major (rows, K'), outputs-major
    (K', rows) and stacked models (q, K', rows), with margins up to +-40 (where naive formulas fail)."""
    rng = np.random.default_rng(K + 10 * weighted)
    fam = family_for(K)
    k = fam.n_outputs(K)
    n = 301
    Z = rng.standard_normal((n, k)) * 8
    Z[:5] = 40.0 * np.sign(Z[:5])
    U = rng.standard_normal((n, k))
    codes = rng.integers(0, K, n)
    sw = rng.uniform(0.0, 3.0, n) if weighted else None
    l, R_want, H = _closed_form(K, Z, codes, sw)
    loss_want = float(np.sum(l if sw is None else l * sw))
    T_want = np.einsum("ikj,ij->ik", H, U)
    target = fam.target(codes)
    if layout == "rows-major":
        loss, R, curv = fam.terms(Z.copy(), target, sw, True, class_axis=-1)
        T = fam.hvp_terms(curv, U.copy(), class_axis=-1)
    else:
        q = 1 if layout == "outputs-major" else 2
        Zs = np.broadcast_to(Z.T, (q, k, n)).copy() if q > 1 else Z.T.copy()
        Us = np.broadcast_to(U.T, (q, k, n)).copy() if q > 1 else U.T.copy()
        sws = None if sw is None else (np.broadcast_to(sw, (q, n)).copy() if q > 1 else sw)
        loss, R, curv = fam.terms(Zs, target, sws, True, class_axis=-2)
        T = fam.hvp_terms(curv, Us, class_axis=-2)
        if q > 1:
            np.testing.assert_array_equal(loss[0], loss[1])
            loss, R, T = loss[0], R[0], T[0]
        R, T = R.T, T.T
    assert float(loss) == pytest.approx(loss_want, rel=1e-12)
    # binomial residuals keep their relative precision; a multinomial own-class p - 1 cancels in the closed form
    np.testing.assert_allclose(R, R_want, rtol=1e-12, atol=1e-300 if K == 2 else 1e-15)
    np.testing.assert_allclose(T, T_want, rtol=1e-10, atol=1e-13)


def test_binomial_terms_without_an_output_axis_equal_the_rows_major_ones():
    rng = np.random.default_rng(3)
    z = rng.standard_normal(200) * 5
    codes = rng.integers(0, 2, 200)
    sw = rng.random(200)
    fam = Binomial()
    a = fam.terms(z.copy(), fam.target(codes), sw, True, class_axis=None)
    b = fam.terms(z[:, None].copy(), fam.target(codes), sw, True, class_axis=-1)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1][:, 0])
    np.testing.assert_array_equal(a[2], b[2][:, 0])
    with pytest.raises(ValueError, match="output axis"):
        Multinomial().row_terms(np.zeros(3), np.zeros(3, np.int64), False, class_axis=None)


@pytest.mark.parametrize("K", [2, 4])
def test_intercept_only_model_zeroes_the_intercept_gradient(K):
    """At the intercept-only model the intercepts' gradient of the weighted loss vanishes; lambda_max is
    the largest coefficient gradient there."""
    rng = np.random.default_rng(K)
    fam = family_for(K)
    n, d = 500, 3
    codes = rng.integers(0, K, n)
    sw = rng.uniform(0.5, 2.0, n)
    S = np.bincount(codes, weights=sw, minlength=K)
    b = fam.intercept_only(S)
    Z = np.broadcast_to(b, (n, fam.n_outputs(K))).copy()
    _, R, _ = fam.terms(Z, fam.target(codes), sw, False, class_axis=-1)
    np.testing.assert_allclose(R.sum(axis=0), 0.0, atol=1e-10)
    X = rng.standard_normal((n, d))
    G = (X.T @ R).T / sw.sum()
    assert fam.lambda_max(G) == np.max(np.abs(G))
    assert fam.lambda_max(np.zeros((fam.n_outputs(K), 0))) == 0.0


def test_no_evaluator_branches_on_the_family():
    """The evaluators take the family's terms: none asks which family it holds (issue 20)."""
    import re
    from pathlib import Path

    import dlogit

    root = Path(dlogit.__file__).parent
    files = sorted((root / "chunks").glob("*.py")) + [root / "folds.py", root / "summary.py"]
    pattern = re.compile(r"family\.name\s*==|\.name\s*==\s*[\"'](bi|multi)nomial|n_outputs\s*==\s*1|\bk\s*==\s*1\b"
                         r"|\bK\s*==\s*1\b|k\s*>\s*1\b")
    hits = [f"{p.name}:{i + 1}: {line.strip()}" for p in files
            for i, line in enumerate(p.read_text().splitlines()) if pattern.search(line)]
    assert not hits, hits
