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
