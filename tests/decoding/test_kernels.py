"""Compiled kernels of the batched multinomial solver (``decoding/_kernels.py``).

What is proved here:
- on CPU in float32, :func:`~bids_affect.decoding.linear.fit_permutations` runs the
  numba kernels (where numba is missing it runs the slower torch code);
- each kernel computes what the torch code computes (objective, probabilities,
  residuals, Hessian products, dot products), with classes missing from some
  permutations and with logits far apart (the kernels' own ``exp``);
- fits through the kernels predict as float64 fits through the torch code, with
  every class present and with classes missing.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import bids_affect.decoding.linear as linear
from bids_affect.decoding.linear import fit_permutations


def _objectives(rng, scale: float, monkeypatch):
    """The same float32 multinomial problems with and without the kernels."""
    n, k, b, r = 37, 4, 9, 11
    Z = torch.as_tensor(rng.normal(size=(n, r)), dtype=torch.float32)
    codes = rng.integers(0, k, size=(n, b))
    codes[:, 3] = np.where(codes[:, 3] == 2, 0, codes[:, 3])        # class 2 absent
    codes[:, 5] = rng.integers(0, 2, size=n)                        # classes 2 and 3 absent
    onehot = torch.zeros(n, k, b)
    onehot.scatter_(1, torch.as_tensor(codes).unsqueeze(1), 1.0)
    weights = torch.as_tensor(rng.uniform(0.5, 2.0, size=(n, 1, b)), dtype=torch.float32)
    absent = ~onehot.bool().any(dim=0, keepdim=True)
    lam = torch.full((r, 1, b), 0.7)
    compiled = linear._Multinomial(Z, onehot, weights, lam, absent)
    with monkeypatch.context() as patch:            # as where numba is not installed
        patch.setattr(linear, "_compiled_kernels", lambda: None)
        plain = linear._Multinomial(Z, onehot, weights, lam, absent)
    assert compiled.kernels is not None and plain.kernels is None
    B = torch.as_tensor(scale * rng.normal(size=(r, k - 1, b)), dtype=torch.float32)
    return compiled, plain, B


def test_cpu_float32_fits_run_the_kernels(rng, monkeypatch):
    calls = []
    kernels = linear._compiled_kernels()
    assert kernels is not None                      # numba is a dependency

    class Counting:
        def __getattr__(self, name):
            calls.append(name)
            return getattr(kernels, name)

    monkeypatch.setattr(linear, "_compiled_kernels", lambda: Counting())
    X = rng.normal(size=(30, 8))
    fit_permutations(X[:20], rng.integers(0, 3, size=(2, 20)), X[20:])
    assert {"multinomial_state", "hessian_blocks", "group_dot"} <= set(calls)
    calls.clear()
    fit_permutations(X[:20], rng.integers(0, 3, size=(2, 20)), X[20:], dtype="float64")
    assert calls == []                              # float64 runs the torch code


@pytest.mark.parametrize("scale", [0.1, 30.0])
def test_kernels_compute_what_the_torch_code_computes(rng, scale, monkeypatch):
    compiled, plain, B = _objectives(rng, scale, monkeypatch)
    scores = compiled.scores(B)
    value, (proba, residual) = compiled.value(B, scores)
    expected_value, (expected_proba, expected_residual) = plain.value(B, scores)
    np.testing.assert_allclose(value, expected_value, rtol=1e-5)
    np.testing.assert_allclose(proba, expected_proba, atol=1e-6)
    assert proba[:, 2, 3].abs().max() == 0 and proba[:, 2:, 5].abs().max() == 0
    np.testing.assert_allclose(residual, expected_residual, atol=1e-5)
    D = torch.as_tensor(rng.normal(size=B.shape), dtype=torch.float32)
    product, _ = compiled.hessian_product((proba, residual), D)
    expected_product, _ = plain.hessian_product((expected_proba, expected_residual), D)
    np.testing.assert_allclose(product, expected_product, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(compiled.dot(D, B), plain.dot(D, B), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("missing", [False, True])
def test_kernel_fits_predict_as_float64_fits(rng, missing):
    X = rng.normal(size=(90, 40))
    y = rng.integers(0, 5, size=90)
    X += 0.5 * rng.normal(size=(5, 40))[y]
    Y = np.stack([rng.permutation(y[:60]) for _ in range(12)])
    if missing:
        Y[:4] = np.where(Y[:4] == 4, 1, Y[:4])
    fast = fit_permutations(X[:60], Y, X[60:], C=1 / 40, n_classes=5, tol=1e-6)
    exact = fit_permutations(X[:60], Y, X[60:], C=1 / 40, n_classes=5, dtype="float64",
                             tol=1e-10)
    assert np.isneginf(fast[:4, :, 4]).all() == missing
    assert np.mean(fast.argmax(2) == exact.argmax(2)) >= 0.99
    finite = np.isfinite(exact)
    scale = np.abs(exact[finite]).max()
    np.testing.assert_allclose(fast[finite], exact[finite], atol=1e-3 * scale)


def test_kernels_compile_without_a_writable_cache(monkeypatch):
    """numba refuses ``cache=True`` where it finds no writable folder (read-only
    package and HOME, no NUMBA_CACHE_DIR): the kernels are then compiled per process."""
    import numba

    from bids_affect.decoding import _kernels

    njit = numba.njit

    def no_locator(*args, cache=False, **options):
        if cache:
            raise RuntimeError("cannot cache function 'f': no locator available for file")
        return njit(*args, **options)

    monkeypatch.setattr(numba, "njit", no_locator)

    def twice(x):
        return 2 * x

    assert _kernels._jit(twice)(21) == 42
