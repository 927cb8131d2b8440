"""Compiled element-wise kernels of the batched multinomial solver (CPU, float32).

:func:`~bids_affect.decoding.linear.fit_permutations` spends about half of its
time outside its matrix products, in element-wise passes over arrays of shape
``(samples or coordinates, classes, permutations)``: a softmax takes some ten
torch operations, each reading and writing the whole array. These numba
kernels do each of those sequences in one pass (a sample's classes at a time,
vectorised over the permutations, the contiguous last axis). They compute what
the torch code of :class:`~bids_affect.decoding.linear._Multinomial` computes,
to float32 rounding (``tests/decoding/test_kernels.py``); the torch code stays
for float64, for GPUs, and where numba is missing.

numba compiles them on first use (about 3 s) and caches them on disk where it can
(then about 0.3 s to load in a new process).
"""
from __future__ import annotations

import math

import numba
import numpy as np

# Every loop runs along the permutations (the last axis), so the sums vectorise without
# reordering ("reassoc", which would also merge the two parts of the exp's range
# reduction); NaN and infinity keep their meaning (no "nnan"/"ninf"), so that a
# diverging fit shows as such.
_OPTIONS = {"nogil": True, "boundscheck": False, "fastmath": {"contract", "nsz", "arcp"}}


def _jit(function):
    """numba's ``njit``, cached on disk where numba finds a writable folder
    (``NUMBA_CACHE_DIR``, which the CLI points into the work directory; the
    package's ``__pycache__``; the user's cache), else compiled in each process."""
    try:
        return numba.njit(cache=True, **_OPTIONS)(function)
    except RuntimeError:          # "cannot cache function ...: no locator available"
        return numba.njit(**_OPTIONS)(function)


#: float32 ``exp`` on ``[-87, 0]``: Cody-Waite reduction by ``ln 2`` and Cephes's
#: ``expf`` polynomial (relative error below 1e-7 against float64 ``exp``), scaled by
#: ``2^m`` written into the exponent bits. LLVM's own ``exp`` is a scalar call that
#: does not vectorise (3 to 10 times slower here).
_LOG2E = np.float32(1.44269504088896341)
_LN2_HIGH = np.float32(0.693359375)
_LN2_LOW = np.float32(-2.12194440e-4)
_EXP_POLY = tuple(np.float32(c) for c in (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3,
                                          4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1))
_LOWEST = np.float32(-87.0)
_ONE = np.float32(1.0)
_HALF = np.float32(0.5)


@_jit
def _exp_below_top(scores, top, present, out, bits, scale):  # pragma: no cover - compiled
    """``out = exp(scores - top) * present``; ``scale`` is ``bits`` viewed as float32."""
    c0, c1, c2, c3, c4, c5 = _EXP_POLY
    for j in range(scores.size):
        # Absent classes (present 0) may lie above the top: clip them to 0 as well.
        shifted = min(max(scores[j] - top[j], _LOWEST), np.float32(0.0))
        m = np.floor(shifted * _LOG2E + _HALF)          # float32 (math.floor: int64)
        r = shifted - m * _LN2_HIGH - m * _LN2_LOW
        poly = ((((c0 * r + c1) * r + c2) * r + c3) * r + c4) * r + c5
        out[j] = (poly * r * r + r + _ONE) * present[j]
        bits[j] = (np.int32(m) + np.int32(127)) << np.int32(23)
    for j in range(scores.size):
        out[j] *= scale[j]


@_jit
def _combine(rows, matrix, out):  # pragma: no cover - compiled
    """``out[a] = sum_i rows[i] matrix[i, a]``: rows of length ``b`` mixed by a small
    matrix (contrast coordinates to classes with the basis, back with its transpose)."""
    for a in range(out.shape[0]):
        out[a] = 0.0
        for i in range(rows.shape[0]):
            weight = matrix[i, a]
            for j in range(out.shape[1]):
                out[a, j] += rows[i, j] * weight


@_jit
def multinomial_state(scores, basis, weights, codes, present, proba, residual,
                      value):  # pragma: no cover - compiled
    """Class probabilities, projected residuals and objective of a batch, in one pass.

    ``scores`` and ``residual`` ``(n, k - 1, b)`` are in the coordinates of the
    orthonormal ``basis`` ``(k - 1, k)`` of the class contrasts (logits
    ``scores' basis``); ``proba`` ``(n, k, b)``;
    ``weights`` ``(n, b)``; ``codes`` ``(n, b)`` each sample's class;
    ``present`` ``(k, b)`` 1.0, or 0.0 for a class absent from a permutation;
    ``value`` ``(b,)`` float64. Writes ``proba`` (softmax over the present
    classes), ``residual = basis (w p - w onehot)`` (the gradient's factor) and
    ``value = sum_i w_i (log-sum-exp_i - logit of i's class)``.
    """
    n, k, b = proba.shape
    logits = np.empty((k, b), proba.dtype)
    differences = np.empty((k, b), proba.dtype)
    top = np.empty(b, proba.dtype)
    total = np.empty(b, proba.dtype)
    bits = np.empty(b, np.int32)
    scale = bits.view(np.float32)
    lowest = np.finfo(np.float32).min
    value[:] = 0.0
    for i in range(n):
        p, w, code = proba[i], weights[i], codes[i]
        _combine(scores[i], basis, logits)
        top[:] = lowest
        for c in range(k):
            for j in range(b):
                if present[c, j] > 0 and logits[c, j] > top[j]:
                    top[j] = logits[c, j]
        total[:] = 0.0
        for c in range(k):
            _exp_below_top(logits[c], top, present[c], p[c], bits, scale)
            for j in range(b):
                total[j] += p[c, j]
        for j in range(b):
            value[j] += w[j] * (math.log(total[j]) + top[j])
            total[j] = _ONE / total[j]
        for c in range(k):
            for j in range(b):
                q = p[c, j] * total[j]
                p[c, j] = q
                own = code[j] == c
                differences[c, j] = w[j] * (q - _ONE) if own else w[j] * q
                if own:
                    value[j] -= w[j] * logits[c, j]
        _combine(differences, basis.T, residual[i])


@_jit
def hessian_blocks(product, basis, proba, weights, out):  # pragma: no cover - compiled
    """The multinomial Hessian's sample blocks times ``product``, in one pass.

    ``out = basis w (diag(p) - p p') basis' product`` per sample; shapes as in
    :func:`multinomial_state` (``product`` and ``out`` in contrast coordinates).
    """
    n, k, b = proba.shape
    full = np.empty((k, b), proba.dtype)
    mean = np.empty(b, proba.dtype)
    for i in range(n):
        p, w = proba[i], weights[i]
        _combine(product[i], basis, full)
        mean[:] = 0.0
        for c in range(k):
            for j in range(b):
                mean[j] += p[c, j] * full[c, j]
        for c in range(k):
            for j in range(b):
                full[c, j] = (full[c, j] - mean[j]) * w[j] * p[c, j]
        _combine(full, basis.T, out[i])


@_jit
def group_dot(a, b, out):  # pragma: no cover - compiled
    """``out[j] = sum_{i, c} a[i, c, j] b[i, c, j]`` in float64, without a product array."""
    n, k, m = a.shape
    out[:] = 0.0
    for i in range(n):
        for c in range(k):
            for j in range(m):
                out[j] += a[i, c, j] * b[i, c, j]
