"""Tests of bids_affect.stats.mantel: the permutation kernels of the Mantel test.

The test's p-values against brute-force enumeration and scikit-bio are in
tests/test_rsa.py, through :func:`bids_affect.rsa.mantel_test`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.spatial.distance import pdist, squareform

from bids_affect.stats import mantel as mantel_module


def _rdm(values: np.ndarray) -> pd.DataFrame:
    names = [f"c{i}" for i in range(len(values))]
    return pd.DataFrame(values, index=names, columns=names)


def _random_rdm(rng: np.random.Generator, k: int, dims: int = 3) -> pd.DataFrame:
    return _rdm(squareform(pdist(rng.normal(size=(k, dims)))))


def test_compiled_kernel_agrees_with_scikit_bio(rng, monkeypatch):
    pytest.importorskip("numba")
    from skbio.stats.distance import mantel

    monkeypatch.setattr(mantel_module, "_LARGE_WORK", 0)  # the path of 1,000-class tests
    a, b = _random_rdm(rng, 40), _random_rdm(rng, 40)
    b = _rdm(b.to_numpy() + 0.3 * a.to_numpy())
    for method in ("pearson", "spearman"):
        ours = mantel_module.mantel(a.to_numpy(), b.to_numpy(), method=method,
                                    n_permutations=2000, alternative="greater", exact=None,
                                    random_state=5, n_jobs=2, names=("a", "b"))
        statistic, p_value, _ = mantel(a.to_numpy(), b.to_numpy(), method=method,
                                       permutations=2000, alternative="greater", seed=5)
        assert ours.statistic == pytest.approx(statistic, abs=1e-10)
        assert ours.p_value == p_value


def test_null_kernels_agree(rng, monkeypatch):
    a, b = _random_rdm(rng, 9).to_numpy(), _rdm(squareform(rng.integers(0, 4, 36))).to_numpy()
    perms = np.array([rng.permutation(9) for _ in range(50)])
    vectors = mantel_module.upper_triangle(a), mantel_module.upper_triangle(b)
    for method in ("pearson", "kendall_tau_a"):
        small = mantel_module._null_model(a, *vectors, method, work=0,
                                          n_jobs=1).statistics(perms)
        monkeypatch.setattr(mantel_module, "_MAX_SIGN_PAIRS", 0)
        large = mantel_module._null_model(a, *vectors, method, work=10**12,
                                          n_jobs=2).statistics(perms)
        np.testing.assert_allclose(small, large, rtol=0, atol=1e-13)
        monkeypatch.undo()
