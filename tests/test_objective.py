"""The fixed-order reduction tree: any placement of chunks gives bit-identical sums."""

from __future__ import annotations

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
