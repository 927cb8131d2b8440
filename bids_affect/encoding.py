"""Voxelwise encoding models: stimulus features through the HRF predict each voxel.

The science of seed 000 (Jang & Kragel): image-CNN features of the movie,
convolved with the canonical HRF, predict amygdala voxels with PLS (20
components); each voxel is scored by the correlation of its predicted and
observed responses. Its public code draws 5 random folds over time points,
which puts the neighbours of every test volume in the training set. Here:

* :func:`convolve_features` convolves feature streams sampled at any times with
  nilearn's SPM or Glover HRF (or FIR delays) exactly as
  ``nilearn.glm.first_level.compute_regressor`` does, for thousands of
  features in one sparse matrix product (:func:`hrf_operator`).
* Encoders are scikit-learn estimators that z-score the features on the
  training data: :class:`PLSEncoder` (predictions equal to scikit-learn's
  ``PLSRegression``, computed from a Gram matrix instead of power iterations
  over the data), :class:`RidgeEncoder` (one alpha per voxel by an inner
  cross-validation blocked by run, with himalaya) and
  :class:`BandedRidgeEncoder` (several feature sets, each with its own
  penalty, himalaya's banded ridge; each band's share of the held-out R²).
* :func:`encode` scores them by leave-one-run-out (blocked k-fold with a gap
  for single-run data), gives every score a null from circular shifts
  (each run's BOLD shifted against its features and the CV redone: by algebra
  for ridge, :func:`run_shift_null`; by refits otherwise), per-voxel,
  FWE-corrected and ROI-mean p-values, the leakage audit of seed 000's random
  5-fold split (:func:`random_split_scores`) and the final model refitted on
  all runs (:class:`EncodingModel`, saved atomically).

Examples
--------
>>> rng = np.random.default_rng(0)
>>> runs = [rng.normal(size=(60, 4)).astype(np.float32) for _ in range(3)]
>>> features = [(values, 2.0 * np.arange(60)) for values in runs]
>>> bold = []
>>> for values in runs:
...     design = convolve_features(values, 2.0 * np.arange(60), 2.0 * np.arange(60))
...     noise = rng.normal(size=(60, 3)).astype(np.float32)
...     bold.append(noise + 4 * design[:, :1] * np.array([1, 1, 0], np.float32))
>>> result = encode(features, bold, 2.0, model="ridge", n_permutations=99, random_state=0)
>>> bool(result.r[0] > 0.5), bool(result.p[0] < 0.05), bool(result.p[2] > 0.05)
(True, True, True)
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.sparse.linalg import LinearOperator, eigsh
from sklearn.base import BaseEstimator, MultiOutputMixin, RegressorMixin
from sklearn.model_selection import KFold
from sklearn.utils.validation import check_is_fitted, validate_data

from bids_affect._utils.validation import check_choice, check_int, check_number
from bids_affect.decoding import acquisition_clock, make_cv
from bids_affect.exceptions import InputDataError, UsageError
from bids_affect.io.derivatives import atomic_path, to_jsonable
from bids_affect.stats.permutation import draw_shifts

LOGGER = logging.getLogger("bids_affect.encoding")

# --------------------------------------------------------------------------- HRF

#: HRF models of :func:`convolve_features`: nilearn's canonical kernels, or FIR delays.
HRF_MODELS = ("spm", "glover", "fir")

#: FIR delays (seconds) of ``hrf="fir"`` when none are given: lagged copies at 2-8 s, as
#: the voxelwise-modelling literature (Huth, Nunez-Elizalde, Gallant) uses at a TR of 2 s.
DEFAULT_FIR_DELAYS = (2.0, 4.0, 6.0, 8.0)


def _check_finite(array: np.ndarray, name: str, batch: int = 1_000_000) -> None:
    """Raise InputDataError when ``array`` holds NaN or inf (checked in slices: memmaps)."""
    flat = array.reshape(len(array), -1) if array.ndim > 1 else array[:, None]
    rows = max(1, batch // max(1, flat.shape[1]))
    for start in range(0, len(flat), rows):
        block = flat[start:start + rows]
        if not np.isfinite(block).all():
            bad = start + int(np.flatnonzero(~np.isfinite(block).all(axis=1))[0])
            raise InputDataError(f"holds NaN or infinite values (first in row {bad})",
                                 path=name, fix="clean or interpolate the data first")


def high_res_grid(frame_times: np.ndarray, oversampling: int = 50,
                  min_onset: float = -24.0) -> np.ndarray:
    """Oversampled time grid of the convolution: the grid nilearn's ``compute_regressor`` uses.

    It starts ``-min_onset`` seconds before the first volume and ends one
    volume after the last, with about ``oversampling`` points per TR (nilearn's
    formula, reproduced so that the two convolutions agree to rounding).

    Examples
    --------
    >>> grid = high_res_grid(2.0 * np.arange(10), oversampling=4)
    >>> float(grid[0]), float(grid[-1]), len(grid)
    (-24.0, 20.0, 89)
    """
    frame_times = np.asarray(frame_times, dtype=float)
    n = frame_times.size
    first, last = frame_times.min(), frame_times.max()
    end = last * (1 + 1.0 / (n - 1))
    n_high = (n - 1) / (last - first) * (end - first - min_onset) * oversampling + 1
    return np.linspace(first + min_onset, end, int(np.rint(n_high)))


def hrf_kernel(hrf: str, tr: float, oversampling: int = 50,
               delay: float = 0.0) -> tuple[np.ndarray, int]:
    """The HRF sampled at ``tr / oversampling`` and the grid index of its first sample.

    ``"spm"`` and ``"glover"`` are nilearn's kernels (first sample at lag 0).
    ``"fir"`` is a box of one TR whose response to a stimulus at time ``t`` is
    the stimulus' mean over ``[t - delay, t - delay + tr)`` (nilearn's FIR
    regressors, with ``delay`` in seconds instead of scans): the lagged copies
    of voxelwise modelling when features are sampled once per volume.

    Examples
    --------
    >>> kernel, first = hrf_kernel("spm", 2.0, oversampling=1)
    >>> np.round(kernel[:5], 3).tolist(), first
    ([0.0, 0.0, 0.132, 0.431, 0.368], 0)
    >>> hrf_kernel("fir", 2.0, oversampling=2, delay=4.0)
    (array([0.5, 0.5]), 3)
    """
    from nilearn.glm.first_level.hemodynamic_models import glover_hrf, spm_hrf

    check_choice(hrf, "hrf", HRF_MODELS)
    if hrf == "spm":
        return spm_hrf(tr, oversampling), 0
    if hrf == "glover":
        return glover_hrf(tr, oversampling), 0
    if delay < 0:
        raise UsageError(f"FIR delays must be >= 0 s; got {delay}", path="fir_delays")
    # nilearn samples FIR regressors oversampling - 1 grid points later than the others.
    first = int(np.rint(delay / tr * oversampling)) - (oversampling - 1)
    return np.full(oversampling, 1.0 / oversampling), first


def hrf_operator(times: np.ndarray, frame_times: np.ndarray, duration: float, *,
                 hrf: str = "spm", oversampling: int = 50,
                 fir_delays: Sequence[float] | None = None,
                 min_onset: float = -24.0) -> list[sparse.csr_matrix]:
    """Sparse matrices ``W`` with ``W @ values`` = the HRF-convolved features at the volumes.

    A feature sample held for ``duration`` seconds from ``times[j]`` is a
    boxcar on nilearn's oversampled grid (:func:`high_res_grid`); its
    convolution with the kernel is a difference of the kernel's cumulative
    sums, and sampling at the volumes is nilearn's linear interpolation. All of
    it is linear in the feature values and depends only on the times, so it is
    one matrix per kernel, ``(n_volumes, n_samples)`` with about
    ``32 s / sample period`` non-zeros per row: applied to every feature at
    once, it gives ``compute_regressor``'s numbers (same grid, onsets, kernel
    and interpolation) without building the 50-fold oversampled signals.
    Samples that end before the grid's start (``-min_onset`` seconds before
    the first volume) get zero columns; nilearn would add them at its first
    grid point.

    Parameters
    ----------
    times : ndarray
        Start of each feature sample in seconds from the run's start, increasing.
    frame_times : ndarray
        Acquisition time of each volume in seconds, increasing (at least 2).
    duration : float
        How long each feature sample lasts (1 / sampling frequency), seconds.
    hrf : {"spm", "glover", "fir"}
        The kernel (:func:`hrf_kernel`).
    oversampling : int
        Grid points per TR.
    fir_delays : sequence of float, optional
        Delays in seconds for ``hrf="fir"`` (default :data:`DEFAULT_FIR_DELAYS`).
    min_onset : float
        Start of the grid relative to the first volume (nilearn's default).

    Returns
    -------
    list of scipy.sparse.csr_matrix
        One ``(n_volumes, n_samples)`` matrix per kernel (per FIR delay).

    Examples
    --------
    >>> [w] = hrf_operator(2.0 * np.arange(20), 2.0 * np.arange(20), 2.0)
    >>> w.shape, round(float(w[-1].sum()), 3)  # a sustained input of 1 ends at 1
    ((20, 20), 1.0)
    """
    all_times = np.asarray(times, dtype=float)
    frame_times = np.asarray(frame_times, dtype=float)
    tr = float(np.min(np.diff(frame_times)))
    grid = high_res_grid(frame_times, oversampling, min_onset)
    last = len(grid) - 1
    # Samples that end before the grid starts are left out (nilearn would pile
    # them up on its first grid point).
    kept = np.flatnonzero(all_times + duration > grid[0])
    times = all_times[kept]
    # Onsets and offsets on the grid, clipped and widened exactly as nilearn's
    # _sample_condition does (a zero-length box still covers one grid point).
    onset = np.minimum(np.searchsorted(grid, times), last)
    offset = np.minimum(np.searchsorted(grid, times + duration), last)
    widen = (offset == onset) & (offset < last)
    offset[widen] += 1
    # scipy's interp1d: the grid interval holding each volume, and its weight.
    upper = np.clip(np.searchsorted(grid, frame_times), 1, last)
    lower = upper - 1
    weight = (frame_times - grid[lower]) / (grid[upper] - grid[lower])
    delays = (DEFAULT_FIR_DELAYS if fir_delays is None else fir_delays) if hrf == "fir" else [0.0]
    operators = []
    for delay in delays:
        kernel, first = hrf_kernel(hrf, tr, oversampling, delay)
        cumulative = np.concatenate([[0.0], np.cumsum(kernel)])
        size = len(kernel)
        # A sample contributes to grid point k when its box overlaps the kernel's
        # support behind k: onset <= k - first and offset > k - first - size + 1.
        start = np.searchsorted(offset, lower - first - size + 1, side="right")
        stop = np.searchsorted(onset, upper - first, side="right")
        counts = np.maximum(stop - start, 0)
        rows = np.repeat(np.arange(len(frame_times)), counts)
        columns = (np.repeat(start - np.cumsum(counts) + counts, counts)
                   + np.arange(counts.sum()))
        k_low, k_high, w = lower[rows], upper[rows], weight[rows]
        on, off = onset[columns], offset[columns]
        # sum of kernel[i - first] over i <= k, at the box's two ends
        summed = [cumulative[np.clip(k - first + 1, 0, size)]
                  for k in (k_low - on, k_low - off, k_high - on, k_high - off)]
        values = (1 - w) * (summed[0] - summed[1]) + w * (summed[2] - summed[3])
        operators.append(sparse.csr_matrix((values, (rows, kept[columns])),
                                           shape=(len(frame_times), len(all_times))))
    return operators


def convolve_features(values: np.ndarray, times: np.ndarray, frame_times: np.ndarray, *,
                      sampling_frequency: float | None = None, hrf: str = "spm",
                      oversampling: int = 50, fir_delays: Sequence[float] | None = None,
                      min_onset: float = -24.0, name: str = "features") -> np.ndarray:
    """Feature streams convolved with the HRF and sampled at the volumes' acquisition times.

    Equal (to rounding) to calling ``nilearn.glm.first_level.compute_regressor``
    on each feature column with events ``(times, 1 / sampling_frequency,
    values[:, i])``, but for all columns at once (:func:`hrf_operator`).

    Parameters
    ----------
    values : ndarray
        ``(n_samples, n_features)`` feature values (float32 kept).
    times : ndarray
        ``(n_samples,)`` start time of each sample, seconds from the run's start, increasing.
    frame_times : ndarray
        ``(n_volumes,)`` acquisition time of each volume, seconds (``i * TR + StartTime``).
    sampling_frequency : float, optional
        Samples per second; each sample lasts its inverse. Inferred from the
        median spacing of ``times`` when not given.
    hrf : {"spm", "glover", "fir"}
        Canonical kernel, or FIR delays (lagged copies).
    oversampling : int
        Grid points per TR (nilearn's default 50).
    fir_delays : sequence of float, optional
        Delays in seconds for ``hrf="fir"``.
    min_onset : float
        Start of the grid before the first volume, seconds (nilearn's -24).
    name : str
        Names the features in error messages (e.g. the feature set and run).

    Returns
    -------
    ndarray
        ``(n_volumes, n_features * n_kernels)``: one block of columns per FIR
        delay (a single block for SPM and Glover). float32 unless ``values`` is float64.

    Raises
    ------
    InputDataError
        NaN values, times not increasing, or features that do not cover the
        run (they must span the first volume to the end of the last one).

    Examples
    --------
    >>> frames = 2.0 * np.arange(30)
    >>> design = convolve_features(np.ones((30, 2), np.float32), frames, frames)
    >>> design.shape, design.dtype, round(float(design[-1, 0]), 3)
    ((30, 2), dtype('float32'), 1.0)
    """
    check_choice(hrf, "hrf", HRF_MODELS)
    values = np.asarray(values)
    if values.ndim == 1:
        values = values[:, None]
    times = np.asarray(times, dtype=float)
    frame_times = np.asarray(frame_times, dtype=float)
    if values.ndim != 2 or len(times) != len(values):
        raise InputDataError(f"values of shape {values.shape} do not match {len(times)} "
                             f"sample times", path=name,
                             fix="give one time per row of the feature matrix")
    if len(frame_times) < 2 or np.any(np.diff(frame_times) <= 0):
        raise InputDataError("needs at least 2 volumes with increasing acquisition times",
                             path=name)
    if len(times) < 2 and sampling_frequency is None:
        raise InputDataError("one feature sample needs an explicit sampling_frequency",
                             path=name)
    if not np.all(np.isfinite(times)) or np.any(np.diff(times) <= 0):
        raise InputDataError("sample times must be finite and strictly increasing",
                             path=name, fix="sort the feature samples by time")
    _check_finite(values, name)
    if sampling_frequency is None:
        sampling_frequency = 1.0 / float(np.median(np.diff(times)))
    if not sampling_frequency > 0:
        raise UsageError(f"sampling_frequency must be > 0; got {sampling_frequency}",
                         path=name)
    if int(oversampling) < 1:
        raise UsageError(f"oversampling must be >= 1; got {oversampling}", path="oversampling")
    duration = 1.0 / sampling_frequency
    tr = float(np.min(np.diff(frame_times)))
    # The features must cover the acquisition of every volume, up to half a sample.
    tolerance = duration / 2
    end, needed = times[-1] + duration, frame_times[-1] + tr
    if times[0] > frame_times[0] + tolerance or end < needed - tolerance:
        raise InputDataError(
            f"the features cover {times[0]:.2f}-{end:.2f} s but the run's volumes are "
            f"acquired over {frame_times[0]:.2f}-{needed:.2f} s", path=name,
            fix="compute features over the whole run (check the stimulus' duration and its "
                "onset in events.tsv)")
    operators = hrf_operator(times, frame_times, duration, hrf=hrf,
                             oversampling=int(oversampling), fir_delays=fir_delays,
                             min_onset=min_onset)
    dtype = np.float64 if values.dtype == np.float64 else np.float32
    blocks = [np.asarray(op.astype(dtype) @ values.astype(dtype, copy=False))
              for op in operators]
    return blocks[0] if len(blocks) == 1 else np.concatenate(blocks, axis=1)


# --------------------------------------------------------------------------- estimators

#: Ridge penalties searched by :class:`RidgeEncoder` and :class:`BandedRidgeEncoder`:
#: z-scored features make useful penalties scale with the number of samples and features,
#: so the grid spans 1e-2 (a few samples, little noise) to 1e7 (thousands of CNN units).
DEFAULT_ALPHAS = tuple(float(a) for a in np.logspace(-2, 7, 10))

#: Voxels per batch of himalaya's ridge solvers (memory bound; results do not depend on it).
DEFAULT_TARGETS_BATCH = 10_000

#: himalaya backends :class:`RidgeEncoder` accepts; "auto" takes "torch_cuda" when torch
#: sees a GPU, else "numpy".
BACKENDS = ("numpy", "torch", "torch_cuda", "auto")


def _moments(X: np.ndarray, ddof: int) -> tuple[np.ndarray, np.ndarray]:
    """Column means and standard deviations (float64 sums; a constant column gets scale 1)."""
    mean = X.mean(axis=0, dtype=np.float64)
    scale = X.std(axis=0, ddof=ddof, dtype=np.float64)
    scale[scale == 0] = 1.0
    return mean, scale


def _standardized(X: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return ((X - mean.astype(X.dtype)) / scale.astype(X.dtype)).astype(X.dtype, copy=False)


class _LinearEncoder(MultiOutputMixin, RegressorMixin, BaseEstimator):
    """Shared validation and prediction of encoders: ``z-scored X @ weights_ + intercept_``."""

    def _validate_fit(self, X: Any, Y: Any) -> tuple[np.ndarray, np.ndarray]:
        X, Y = validate_data(self, X, Y, multi_output=True, y_numeric=True,
                             dtype=(np.float64, np.float32), ensure_min_samples=3)
        self._targets_1d = Y.ndim == 1
        Y = Y[:, None] if Y.ndim == 1 else Y
        dtype = np.float64 if np.float64 in (X.dtype, Y.dtype) else np.float32
        return X.astype(dtype, copy=False), Y.astype(dtype, copy=False)

    def _check_predict(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=(np.float64, np.float32))
        return _standardized(X, self.x_mean_, self.x_scale_)

    def _output(self, predicted: np.ndarray) -> np.ndarray:
        return predicted[:, 0] if getattr(self, "_targets_1d", False) else predicted

    def predict(self, X: Any) -> np.ndarray:
        """Predicted responses ``(n_samples, n_targets)``."""
        Z = self._check_predict(X)
        return self._output(Z @ self.weights_.astype(Z.dtype) + self.intercept_.astype(Z.dtype))


# ------------------------------------------------------------------ PLS


def _top_eigenvector(matvec, size: int, tol: float) -> tuple[np.ndarray, float]:
    """Leading eigenvector and eigenvalue of a symmetric PSD operator (Lanczos; dense if small)."""
    if size <= 200:
        matrix = np.column_stack([matvec(column) for column in np.eye(size)])
        values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
        return vectors[:, -1], float(values[-1])
    # A fixed start vector: the converged eigenvector does not depend on it.
    start = np.random.default_rng(0).standard_normal(size)
    operator = LinearOperator((size, size), matvec=matvec, dtype=np.float64)
    values, vectors = eigsh(operator, k=1, which="LA", v0=start, tol=tol)
    return vectors[:, 0], float(values[0])


def _gram_factor(X: np.ndarray) -> np.ndarray:
    """``F`` (``n x rank``) with ``F F' = X X'``: pivoted Cholesky (LAPACK ``?pstrf``)."""
    from scipy.linalg import lapack

    gram = (X @ X.T).astype(np.float64)
    factor, pivots, rank, info = lapack.dpstrf(gram, lower=0)
    if info < 0:
        raise InputDataError("the features' Gram matrix cannot be factorised", path="X")
    basis = np.zeros((len(X), rank))
    basis[pivots - 1] = np.triu(factor)[:rank].T
    return basis.astype(X.dtype)


class _Gram:
    """``Z Z'`` applied to sample-space vectors: an explicit ``n x n`` matrix, or through ``Z``."""

    def __init__(self, Z: np.ndarray, explicit: bool):
        self.Z = Z
        self.matrix = Z @ Z.T if explicit else None

    def __call__(self, u: np.ndarray) -> np.ndarray:
        u = u.astype(self.Z.dtype)
        out = self.matrix @ u if self.matrix is not None else self.Z @ (self.Z.T @ u)
        return out.astype(np.float64)


#: Spaces in which :func:`pls_components` solves each component's eigenproblem.
PLS_SPACES = ("auto", "features", "samples", "targets")


def _pls_costs(n: int, p: int, q: int, n_components: int) -> dict[str, float]:
    """Multiply-adds of each space: forming its Gram matrix, then ~40 Lanczos steps each."""
    steps = 40 * n_components

    def gram(m: int, r: int) -> float:     # Psi' Z Z' Psi, through Psi' Z or through Z Z'
        return min(n * m * r + m * m * r, n * n * r + n * n * m + n * m * m)

    costs = {"features": gram(p, q) + steps * p * p, "targets": gram(q, p) + steps * q * q}
    if n < p:
        costs["samples"] = n * n * p + n ** 3 / 3 + gram(n, q) + steps * n * n
    return costs


def pls_components(X: np.ndarray, Y: np.ndarray, n_components: int, space: str = "auto",
                   tol: float = 1e-8) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """NIPALS PLS2 (regression deflation) of centred, scaled ``X`` and ``Y``, by a small Gram.

    NIPALS' k-th X-weight vector is the leading eigenvector of
    ``X_k' Y_k Y_k' X_k``, and regression deflation makes ``X_k = P X`` and
    ``Y_k = P Y`` with ``P = I - T T'`` (``T``: the earlier scores,
    normalised). With ``A = X X'`` and ``B = Y Y'``, the same leading
    eigenvalue belongs to ``D = Psi' P K P Psi`` for three choices:

    * ``"features"``: ``Psi = X``, ``K = B`` (``p x p``): the eigenvector is ``w``;
    * ``"samples"``: ``Psi = F`` with ``F F' = A`` (pivoted Cholesky), ``K = B``
      (``rank x rank``, ``rank <= n``): the score is ``t = P F z``
      (Rännar et al. 1994, J. Chemometrics 8:111, kernel PLS);
    * ``"targets"``: ``Psi = Y``, ``K = A`` (``q x q``): the score is
      ``t = P A P Y c`` (few voxels, e.g. an ROI);

    and then ``w`` is ``X' P B t`` normalised. ``D`` is ``D_0 = Psi' K Psi``
    minus rank-2k terms in ``Psi' T``, ``Psi' K T`` and ``T' K T``, so the data
    are touched once, to form ``D_0`` (through ``Psi' Z`` with ``K = Z Z'``,
    or through ``K``), and each component costs a few Lanczos steps on a small
    matrix instead of power iterations over all the data. "auto" picks the
    space with the fewest multiply-adds.

    Parameters
    ----------
    X, Y : ndarray
        ``(n, p)`` and ``(n, q)``, centred (and scaled) columns.
    n_components : int
        Components.
    space : {"auto", "features", "samples", "targets"}
        Where each eigenproblem is solved (same answer).
    tol : float
        Lanczos tolerance.

    Returns
    -------
    weights, loadings : ndarray
        ``(p, n_components)`` X-weights (unit norm) and X-loadings.
    scores : ndarray
        ``(n, n_components)`` X-scores.
    space : str
        The space used.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X, Y = rng.normal(size=(30, 6)), rng.normal(size=(30, 4))
    >>> X, Y = X - X.mean(axis=0), Y - Y.mean(axis=0)
    >>> w = [pls_components(X, Y, 2, space)[0] for space in ("features", "samples", "targets")]
    >>> bool(np.allclose(np.abs(w[0]), np.abs(w[1])) and np.allclose(np.abs(w[0]), np.abs(w[2])))
    True
    """
    check_choice(space, "space", PLS_SPACES)
    n, p = X.shape
    q = Y.shape[1]
    costs = _pls_costs(n, p, q, n_components)
    space = min(costs, key=costs.get) if space == "auto" else space
    psi, outer = {"features": (X, Y), "targets": (Y, X)}.get(space, (None, Y))
    if space == "samples":
        psi = _gram_factor(X)
    m, r = psi.shape[1], outer.shape[1]
    kernel = _Gram(outer, explicit=n * n * r + n * n * m + n * m * m < n * m * r + m * m * r)
    if kernel.matrix is not None:
        small = psi.T @ (kernel.matrix @ psi)
    else:
        cross = psi.T @ outer
        small = cross @ cross.T
        del cross
    small = (small + small.T) / 2
    times_b = _Gram(Y, False) if space == "targets" else kernel
    times_a = kernel if space == "targets" else None
    dtype = psi.dtype
    psi64 = psi.astype(np.float64)
    scores = np.zeros((n, 0))                   # T, normalised
    psi_t = np.zeros((m, 0))                    # Psi' T
    psi_kt = np.zeros((m, 0))                   # Psi' K T
    t_kt = np.zeros((0, 0))                     # T' K T

    def matvec(v):
        v = np.ravel(v)
        a = psi_t.T @ v
        return ((small @ v.astype(dtype)).astype(np.float64) - psi_t @ (psi_kt.T @ v)
                - psi_kt @ a + psi_t @ (t_kt @ a))

    def deflate(u):
        return u - scores @ (scores.T @ u)

    def times_xt(u):                            # X' u, in the data's precision
        return (X.T @ u.astype(X.dtype)).astype(np.float64)

    total = float(np.sum(X.astype(np.float64) ** 2))       # ||X||_F^2
    residual = total
    weights = np.zeros((p, n_components))
    loadings = np.zeros((p, n_components))
    raw_scores = np.zeros((n, n_components))
    first_value = None
    for k in range(n_components):
        if residual <= 1e-10 * total:
            raise InputDataError(f"n_components={n_components} exceeds the rank of the "
                                 f"features ({k})", path="n_components",
                                 fix=f"use at most {k} components")
        z, value = _top_eigenvector(matvec, m, tol)
        first_value = value if first_value is None else first_value
        if value <= 1e-12 * first_value:
            raise InputDataError(f"after {k} components the features keep no covariance "
                                 f"with the targets", path="n_components",
                                 fix=f"use at most {k} components")
        direction = deflate(psi64 @ z)
        if times_a is not None:
            direction = deflate(times_a(direction))
        w = times_xt(deflate(times_b(direction)))           # X' P B t
        w /= np.linalg.norm(w)
        t = deflate((X @ w.astype(X.dtype)).astype(np.float64))   # t = X_k w
        tt = float(t @ t)
        unit = t / np.sqrt(tt)
        weights[:, k], raw_scores[:, k] = w, t
        loadings[:, k] = times_xt(t) / tt
        residual -= tt * float(loadings[:, k] @ loadings[:, k])  # ||X' t||^2 / t't
        k_unit = kernel(unit)
        t_kt = np.block([[t_kt, (scores.T @ k_unit)[:, None]],
                         [k_unit @ scores, unit @ k_unit]])
        scores = np.column_stack([scores, unit])
        psi_t = np.column_stack([psi_t, psi64.T @ unit])
        psi_kt = np.column_stack([psi_kt, psi64.T @ k_unit])
    return weights, loadings, raw_scores, space


class PLSEncoder(_LinearEncoder):
    """PLS regression (PLS2, NIPALS), as seed 000 uses: predictions equal to scikit-learn's.

    Features and targets are centred and scaled to unit variance (``ddof=1``)
    on the training data, so the predictions equal those of
    ``sklearn.cross_decomposition.PLSRegression(n_components, scale=True)``
    to the convergence of its power iterations (its default ``tol=1e-6`` on
    the squared change of the weights stops them early: differences of about
    1e-3 of the predictions' scale; with a tight ``tol`` they agree to 1e-6).
    The components come from :func:`pls_components`: one Gram matrix and a
    few Lanczos steps per component instead of power iterations over the data.

    Parameters
    ----------
    n_components : int
        Components (seed 000: 20). At most the rank of the training features.
    space : {"auto", "features", "samples", "targets"}
        Where each component's eigenproblem is solved (:func:`pls_components`).
    tol : float
        Relative accuracy of each component's eigenvector (Lanczos residual).

    Attributes
    ----------
    x_mean_, x_scale_ : ndarray
        Feature means and standard deviations of the training data.
    y_mean_, y_scale_ : ndarray
        The same for the targets.
    x_weights_, x_loadings_, x_rotations_ : ndarray
        ``(n_features, n_components)``, scikit-learn's quantities (signs may differ).
    y_loadings_ : ndarray
        ``(n_targets, n_components)``, in units of scaled targets.
    intercept_ : ndarray
        The target means.
    space_ : str
        The space used.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(50, 8))
    >>> Y = X[:, :2] @ rng.normal(size=(2, 3)) + 0.1 * rng.normal(size=(50, 3))
    >>> from sklearn.cross_decomposition import PLSRegression
    >>> ours = PLSEncoder(n_components=2).fit(X, Y).predict(X)
    >>> converged = PLSRegression(n_components=2, tol=1e-14, max_iter=10_000)
    >>> bool(np.allclose(ours, converged.fit(X, Y).predict(X), atol=1e-6))
    True
    """

    def __init__(self, n_components: int = 20, space: str = "auto", tol: float = 1e-8):
        self.n_components = n_components
        self.space = space
        self.tol = tol

    def fit(self, X: Any, Y: Any, runs: Any = None, times: Any = None) -> PLSEncoder:
        """Fit on training features ``(n, p)`` and targets ``(n, q)``.

        ``runs`` and ``times`` are accepted for a common signature and ignored.
        """
        n_components = check_int(self.n_components, "n_components", minimum=1)
        check_choice(self.space, "space", PLS_SPACES)
        tol = check_number(self.tol, "tol", minimum=0.0)
        X, Y = self._validate_fit(X, Y)
        n, p = X.shape
        if n_components > min(n - 1, p):
            raise InputDataError(f"n_components={n_components} exceeds the rank bound "
                                 f"min(n_samples - 1, n_features) = {min(n - 1, p)}",
                                 path="n_components", fix="use fewer components")
        self.x_mean_, self.x_scale_ = _moments(X, ddof=1)
        self.y_mean_, self.y_scale_ = _moments(Y, ddof=1)
        Xz = _standardized(X, self.x_mean_, self.x_scale_)
        Yz = _standardized(Y, self.y_mean_, self.y_scale_)
        weights, loadings, scores, self.space_ = pls_components(Xz, Yz, n_components,
                                                                self.space, tol)
        # Y_k' t_k = Y' t_k, since t_k is orthogonal to the earlier scores: one product.
        self.y_loadings_ = ((Yz.T @ scores.astype(Yz.dtype)).astype(np.float64)
                            / np.sum(scores ** 2, axis=0))
        self.x_weights_, self.x_loadings_ = weights, loadings
        self.x_rotations_ = weights @ np.linalg.pinv(loadings.T @ weights)
        self.intercept_ = self.y_mean_
        return self

    @property
    def weights_(self) -> np.ndarray:
        """``(n_features, n_targets)`` weights on z-scored features (formed on demand)."""
        check_is_fitted(self)
        return (self.x_rotations_ @ self.y_loadings_.T) * self.y_scale_

    def predict(self, X: Any) -> np.ndarray:
        """Predicted responses ``(n_samples, n_targets)``, through the components."""
        Z = self._check_predict(X)
        scores = Z.astype(np.float64) @ self.x_rotations_
        return self._output(((scores @ (self.y_loadings_ * self.y_scale_[:, None]).T)
                             + self.y_mean_).astype(Z.dtype))


# ------------------------------------------------------------------ ridge (himalaya)


@contextlib.contextmanager
def himalaya_backend(name: str) -> Iterator[Any]:
    """Use a himalaya backend inside the block, then restore the previous one.

    himalaya keeps its backend in a global; this confines the change to one fit.

    Examples
    --------
    >>> with himalaya_backend("numpy") as backend:
    ...     backend.name
    'numpy'
    """
    from himalaya.backend import get_backend, set_backend

    check_choice(name, "backend", BACKENDS)
    if name in ("auto", "torch_cuda"):
        import torch

        if name == "auto":
            name = "torch_cuda" if torch.cuda.is_available() else "numpy"
        elif not torch.cuda.is_available():
            # checked here: himalaya itself calls pytest.skip when pytest is loaded
            raise UsageError("himalaya cannot use backend 'torch_cuda' here: torch sees no "
                             "CUDA GPU", path="backend", fix="use backend='numpy' (or 'auto')")
    previous = get_backend().name
    try:
        backend = set_backend(name)
    except Exception as err:  # himalaya raises plain errors when torch/cuda is missing
        raise UsageError(f"himalaya cannot use backend {name!r} here ({err})", path="backend",
                         fix="use backend='numpy' (or 'auto')") from err
    try:
        yield backend
    finally:
        set_backend(previous)


def inner_splits(n_samples: int, runs: Any = None, times: Any = None, n_splits: int = 5,
                 gap: float = 30.0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Splits of a training set for choosing penalties, blocked like the outer CV.

    Leave-one-run-out when the samples come from 2 or more runs; otherwise
    ``n_splits`` contiguous blocks whose training part leaves out ``gap``
    around the block (seconds of ``times``; samples when ``times`` is None).

    Examples
    --------
    >>> [test.tolist() for _, test in inner_splits(4, runs=[1, 1, 2, 2])]
    [[0, 1], [2, 3]]
    >>> [train.tolist() for train, _ in inner_splits(6, n_splits=2, gap=1)]
    [[4, 5], [0, 1]]
    """
    runs = np.zeros(n_samples) if runs is None else np.asarray(runs)
    clock = np.arange(n_samples, dtype=float) if times is None else np.asarray(times, float)
    name, splitter = make_cv("auto", runs, n_splits, gap)
    dummy = np.zeros(n_samples)
    splits = list(splitter.split(dummy, groups=runs if name == "loro" else clock))
    if any(len(train) == 0 or len(test) == 0 for train, test in splits):
        raise InputDataError(f"the inner cross-validation of {n_samples} training samples "
                             f"leaves an empty training set (gap {gap})", path="gap",
                             fix="use a smaller gap, fewer inner folds or more data")
    return splits


def _to_numpy(backend, array) -> np.ndarray:
    return np.asarray(backend.to_numpy(array))


class RidgeEncoder(_LinearEncoder):
    """Ridge regression with one penalty per voxel chosen by a blocked inner CV (himalaya).

    Features are z-scored on the training data (``ddof=0``); himalaya's
    ``RidgeCV`` (``fit_intercept=True``, SVD solver) picks each voxel's alpha
    by the squared error of an inner cross-validation that is itself blocked:
    leave-one-run-out among the training runs, or blocked k-fold with a gap
    for one run (:func:`inner_splits`); then refits on all training samples.

    Parameters
    ----------
    alphas : sequence of float
        Penalties searched.
    inner_folds : int
        Blocks of the inner CV when the training data hold a single run.
    gap : float
        Gap of the inner blocked CV: seconds of ``times`` (samples without ``times``).
    backend : {"numpy", "torch", "torch_cuda", "auto"}
        himalaya backend ("auto": CUDA when torch sees a GPU).
    n_targets_batch : int or None
        Voxels per batch inside himalaya: bounds the memory of the inner CV's
        predictions (alphas x validation volumes x voxels) without changing the
        result; None takes all voxels at once.
    solver : {"auto", "primal", "dual"}
        himalaya's ``RidgeCV`` (SVD of the features) or ``KernelRidgeCV`` with a
        linear kernel (eigendecomposition of the samples' Gram matrix): the
        same ridge, centred in every inner fold; "auto" takes the dual when
        there are fewer samples than features.

    Attributes
    ----------
    x_mean_, x_scale_ : ndarray
        Feature means and standard deviations of the training data.
    solver_ : str
        The solver used.
    weights_ : ndarray
        ``(n_features, n_targets)`` weights on z-scored features (the data's precision).
    intercept_ : ndarray
        ``(n_targets,)``.
    best_alphas_ : ndarray
        ``(n_targets,)`` the penalty chosen for each voxel.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(90, 5)).astype(np.float32)
    >>> Y = X[:, :1] * [1.0, 0.0] + rng.normal(size=(90, 2)).astype(np.float32)
    >>> model = RidgeEncoder(alphas=(0.1, 10.0, 1e5)).fit(X, Y, runs=np.repeat([1, 2, 3], 30))
    >>> model.best_alphas_.round(1).tolist()  # no signal in voxel 2: the largest penalty
    [0.1, 100000.0]
    """

    def __init__(self, alphas: Sequence[float] = DEFAULT_ALPHAS, inner_folds: int = 5,
                 gap: float = 30.0, backend: str = "numpy",
                 n_targets_batch: int | None = DEFAULT_TARGETS_BATCH, solver: str = "auto"):
        self.alphas = alphas
        self.inner_folds = inner_folds
        self.gap = gap
        self.backend = backend
        self.n_targets_batch = n_targets_batch
        self.solver = solver

    def _prepare(self, X: Any, Y: Any, runs: Any, times: Any):
        alphas = np.asarray(self.alphas, dtype=float).ravel()
        if len(alphas) == 0 or not np.all(np.isfinite(alphas) & (alphas > 0)):
            raise UsageError(f"alphas must be positive numbers; got {self.alphas!r}",
                             path="alphas")
        check_int(self.inner_folds, "inner_folds", minimum=2)
        check_number(self.gap, "gap", minimum=0.0)
        X, Y = self._validate_fit(X, Y)
        self.x_mean_, self.x_scale_ = _moments(X, ddof=0)
        Xz = _standardized(X, self.x_mean_, self.x_scale_)
        splits = inner_splits(len(X), runs, times, self.inner_folds, self.gap)
        return Xz, Y, np.sort(alphas).astype(Xz.dtype), splits

    def fit(self, X: Any, Y: Any, runs: Any = None, times: Any = None) -> RidgeEncoder:
        """Fit on ``(n, p)`` features and ``(n, q)`` targets.

        Parameters
        ----------
        runs : array-like, optional
            Run of each training sample (inner leave-one-run-out with 2+ runs).
        times : array-like, optional
            Acquisition time of each sample (seconds), for the inner blocked CV's gap.
        """
        from himalaya.kernel_ridge import KernelRidgeCV
        from himalaya.ridge import RidgeCV

        Xz, Y, alphas, splits = self._prepare(X, Y, runs, times)
        check_choice(self.solver, "solver", ("auto", "primal", "dual"))
        dual = self.solver == "dual" or (self.solver == "auto" and Xz.shape[0] < Xz.shape[1])
        batch = {"n_targets_batch": self.n_targets_batch}
        with himalaya_backend(self.backend) as backend:
            if dual:
                model = KernelRidgeCV(alphas=alphas, kernel="linear", cv=splits,
                                      fit_intercept=True, solver_params=batch, warn=False)
                model.fit(Xz, Y)
                weights = model.get_primal_coef()
            else:
                model = RidgeCV(alphas=alphas, cv=splits, fit_intercept=True,
                                solver_params={"warn": False, **batch})
                model.fit(Xz, Y)
                weights = model.coef_
            self.weights_ = _to_numpy(backend, weights).astype(Xz.dtype)
            self.intercept_ = _to_numpy(backend, model.intercept_).astype(np.float64)
            self.best_alphas_ = _to_numpy(backend, model.best_alphas_).astype(np.float64)
        self.solver_ = "dual" if dual else "primal"
        return self


class BandedRidgeEncoder(RidgeEncoder):
    """Banded ridge: each feature set (band) gets its own penalty per voxel (himalaya).

    himalaya's ``BandedRidgeCV`` searches the band weights by random search
    on the simplex (``n_iter`` draws, the first one equal weights) crossed
    with ``alphas``, scored by the same blocked inner CV as
    :class:`RidgeEncoder`. :meth:`predict_bands` splits a prediction into the
    parts each band contributes, so the held-out R² can be split by band.

    Parameters
    ----------
    bands : sequence of int
        Columns of each band, in order (they sum to the number of features).
    alphas, inner_folds, gap, backend, n_targets_batch
        As in :class:`RidgeEncoder`.
    n_iter : int
        Band weightings tried.
    random_state : int, optional
        Seed of the random search.

    Attributes
    ----------
    deltas_ : ndarray
        ``(n_bands, n_targets)`` log band scalings (himalaya's).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(120, 6)).astype(np.float32)
    >>> Y = X[:, :1] + 0.5 * rng.normal(size=(120, 1)).astype(np.float32)
    >>> model = BandedRidgeEncoder(bands=(3, 3), n_iter=5, random_state=0)
    >>> parts = model.fit(X, Y, runs=np.repeat([1, 2, 3], 40)).predict_bands(X)
    >>> parts.shape, bool(np.abs(parts[0]).mean() > np.abs(parts[1]).mean())
    ((2, 120, 1), True)
    """

    def __init__(self, bands: Sequence[int] | None = None,
                 alphas: Sequence[float] = DEFAULT_ALPHAS, n_iter: int = 20,
                 inner_folds: int = 5, gap: float = 30.0,
                 backend: str = "numpy", n_targets_batch: int | None = DEFAULT_TARGETS_BATCH,
                 random_state: int | None = None):
        self.alphas = alphas
        self.inner_folds = inner_folds
        self.gap = gap
        self.backend = backend
        self.n_targets_batch = n_targets_batch
        self.bands = bands
        self.n_iter = n_iter
        self.random_state = random_state

    def fit(self, X: Any, Y: Any, runs: Any = None, times: Any = None) -> BandedRidgeEncoder:
        """Fit as :meth:`RidgeEncoder.fit`, each band with its own scaling."""
        from himalaya.ridge import BandedRidgeCV

        n_iter = check_int(self.n_iter, "n_iter", minimum=1)
        Xz, Y, alphas, splits = self._prepare(X, Y, runs, times)
        bands = [Xz.shape[1]] if self.bands is None else [int(b) for b in self.bands]
        if min(bands) < 1 or sum(bands) != Xz.shape[1]:
            raise UsageError(f"bands {bands} must be positive and sum to the {Xz.shape[1]} "
                             f"feature columns", path="bands")
        self.bands_ = bands
        groups = np.repeat(np.arange(len(bands)), bands)
        seed = np.random.default_rng(self.random_state).integers(2**31 - 1)
        params = {"n_iter": n_iter, "alphas": alphas, "progress_bar": False, "warn": False,
                  "n_targets_batch": self.n_targets_batch}
        with himalaya_backend(self.backend) as backend:
            model = BandedRidgeCV(groups=groups, solver_params=params, fit_intercept=True,
                                  cv=splits, random_state=int(seed))
            model.fit(Xz, Y)
            self.weights_ = _to_numpy(backend, model.coef_).astype(Xz.dtype)
            self.intercept_ = _to_numpy(backend, model.intercept_).astype(np.float64)
            self.deltas_ = _to_numpy(backend, model.deltas_).astype(np.float64)
            self.best_alphas_ = _to_numpy(backend, model.best_alphas_).astype(np.float64)
        return self

    def predict_bands(self, X: Any) -> np.ndarray:
        """``(n_bands, n_samples, n_targets)``: each band's part of a prediction (no intercept)."""
        Z = self._check_predict(X)
        edges = np.cumsum([0, *self.bands_])
        weights = self.weights_.astype(Z.dtype)
        return np.stack([Z[:, a:b] @ weights[a:b] for a, b in zip(edges[:-1], edges[1:])])


#: Encoders by name (``--encoding-models``): classes, built fresh for each fit.
ENCODERS: dict[str, type[_LinearEncoder]] = {
    "pls": PLSEncoder,
    "ridge": RidgeEncoder,
    "banded-ridge": BandedRidgeEncoder,
}


def list_encoders() -> list[str]:
    """Names of the encoding models.

    Examples
    --------
    >>> list_encoders()
    ['banded-ridge', 'pls', 'ridge']
    """
    return sorted(ENCODERS)


def make_encoder(name: str, **params: Any) -> _LinearEncoder:
    """A fresh, unfitted encoder of :data:`ENCODERS` with ``params`` set.

    Examples
    --------
    >>> make_encoder("pls", n_components=5)
    PLSEncoder(n_components=5)
    >>> make_encoder("lasso")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    bids_affect.exceptions.UsageError: model: must be one of 'banded-ridge', 'pls', ...
    """
    check_choice(name, "model", list_encoders())
    estimator = ENCODERS[name]()
    valid = estimator.get_params()
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise UsageError(f"{name} has no parameter(s) {', '.join(unknown)}; it takes "
                         f"{', '.join(sorted(valid))}", path="model_params")
    return estimator.set_params(**dict(params))


# --------------------------------------------------------------------------- scores


def voxel_scores(observed: np.ndarray, predicted: np.ndarray, axis: int = -2
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Pearson r and R² of each column's prediction (0 where a column is constant).

    Samples run along ``axis`` (the second-to-last by default; other axes are
    voxels and batches). float32 inputs stay float32; sums are float64.

    Examples
    --------
    >>> y = np.array([[1.0, 2.0], [2.0, 2.0], [3.0, 2.0]])
    >>> r, r2 = voxel_scores(y, np.array([[1.0, 0.0], [2.0, 1.0], [4.0, 0.0]]))
    >>> np.round(r, 3).tolist(), np.round(r2, 3).tolist()
    ([0.982, 0.0], [0.5, 0.0])
    """
    y = np.asarray(observed)
    p = np.asarray(predicted)
    dtype = np.result_type(y.dtype, p.dtype, np.float32)
    y, p = y.astype(dtype, copy=False), p.astype(dtype, copy=False)

    def total(x: np.ndarray) -> np.ndarray:
        return np.sum(x, axis=axis, dtype=np.float64)

    yc = y - np.mean(y, axis=axis, keepdims=True, dtype=np.float64).astype(dtype)
    pc = p - np.mean(p, axis=axis, keepdims=True, dtype=np.float64).astype(dtype)
    sst, spp, cross = total(yc * yc), total(pc * pc), total(yc * pc)
    del yc, pc
    denominator = np.sqrt(sst * spp)
    r = np.divide(cross, denominator, out=np.zeros_like(sst), where=denominator > 0)
    residual = y - p
    residual = np.divide(total(residual * residual), sst, out=np.ones_like(sst), where=sst > 0)
    return r, np.where(sst > 0, 1.0 - residual, 0.0)


def check_rois(rois: Mapping[str, Any] | None, n_voxels: int) -> dict[str, np.ndarray]:
    """ROI masks as boolean column masks; the whole mask (``"mask"``) when none are given.

    Examples
    --------
    >>> {name: mask.sum() for name, mask in check_rois({"amygdala": [1, 1, 0]}, 3).items()}
    {'amygdala': np.int64(2)}
    """
    if rois is None:
        return {"mask": np.ones(n_voxels, bool)}
    checked = {}
    for name, mask in rois.items():
        mask = np.asarray(mask).astype(bool).ravel()
        if mask.shape != (n_voxels,) or not mask.any():
            raise InputDataError(f"ROI {name!r} must be a non-empty mask of the {n_voxels} "
                                 f"voxels; got {mask.shape} with {int(mask.sum())} voxels",
                                 path="rois", fix="give one boolean per voxel column")
        checked[str(name)] = mask
    if not checked:
        raise InputDataError("no ROI given", path="rois", fix="give at least one ROI or None")
    return checked


def roi_means(values: np.ndarray, rois: Mapping[str, np.ndarray]) -> np.ndarray:
    """Mean of each ROI's columns: ``(..., n_voxels)`` to ``(..., n_rois)``.

    Examples
    --------
    >>> roi_means(np.array([[1.0, 3.0, 5.0]]), {"a": [1, 1, 0], "b": [0, 0, 1]}).tolist()
    [[2.0, 5.0]]
    """
    values = np.asarray(values)
    masks = np.column_stack([np.asarray(mask, bool) for mask in rois.values()])
    return (values @ masks) / masks.sum(axis=0)


# --------------------------------------------------------------------------- nulls

#: How the scores' null is built (the sidecar's ``null.scheme``).
NULL_SCHEME = ("circular shift of each run's BOLD against its features (shift of at least "
               "10% of the run, the same for every voxel); the whole cross-validation redone "
               "and r and R² recomputed")


class _NullTally:
    """Counts, maxima and ROI sums of null scores, filled by blocks of voxels or permutations."""

    def __init__(self, r: np.ndarray, r2: np.ndarray, rois: Mapping[str, np.ndarray],
                 n_permutations: int):
        self.r, self.r2 = r, r2
        self.masks = np.column_stack(list(rois.values())).astype(np.float64)
        self.count_r = np.zeros(len(r))
        self.count_r2 = np.zeros(len(r))
        self.max_r = np.full(n_permutations, -np.inf)
        self.roi_r = np.zeros((n_permutations, self.masks.shape[1]))
        self.roi_r2 = np.zeros((n_permutations, self.masks.shape[1]))

    def add(self, null_r: np.ndarray, null_r2: np.ndarray, columns: Any = slice(None),
            permutations: Any = slice(None)) -> None:
        """Null scores ``(len(permutations), len(columns))``."""
        self.count_r[columns] += np.sum(null_r >= self.r[columns] - 1e-12, axis=0)
        self.count_r2[columns] += np.sum(null_r2 >= self.r2[columns] - 1e-12, axis=0)
        self.max_r[permutations] = np.maximum(self.max_r[permutations], null_r.max(axis=1))
        self.roi_r[permutations] += null_r @ self.masks[columns]
        self.roi_r2[permutations] += null_r2 @ self.masks[columns]

    def result(self) -> dict[str, np.ndarray]:
        n = len(self.max_r)
        sizes = self.masks.sum(axis=0)
        return {
            "r": self.r, "rsquared": self.r2,
            "p": (1 + self.count_r) / (1 + n),
            "p_rsquared": (1 + self.count_r2) / (1 + n),
            # FWE: the max statistic over voxels, per permutation (Nichols & Holmes 2002)
            "p_fwe": (1 + np.sum(self.max_r[:, None] >= self.r[None, :] - 1e-12, axis=0))
            / (1 + n),
            "max_r": self.max_r,
            "roi_r": self.roi_r / sizes,
            "roi_rsquared": self.roi_r2 / sizes,
        }


def shifted_rows(runs: np.ndarray, n_permutations: int, random_state: int | None = None,
                 min_shift_fraction: float = 0.1) -> np.ndarray:
    """``(n_permutations, n_samples)`` row indices of the BOLD with each run shifted circularly.

    Row ``t`` of a run of ``n`` samples takes row ``(t - s) mod n`` of the same
    run; the shifts ``s`` come from
    :func:`~bids_affect.stats.permutation.draw_shifts` (at least
    ``min_shift_fraction`` of the run).

    Examples
    --------
    >>> shifted_rows(np.repeat([1, 2], 4), 1, random_state=0).tolist()
    [[1, 2, 3, 0, 6, 7, 4, 5]]
    """
    runs = np.asarray(runs)
    shifts = draw_shifts(runs, n_permutations, random_state, min_shift_fraction)
    index = np.tile(np.arange(len(runs)), (n_permutations, 1))
    for k, run in enumerate(np.unique(runs)):
        rows = np.flatnonzero(runs == run)
        index[:, rows] = rows[(np.arange(len(rows))[None, :] - shifts[:, k:k + 1]) % len(rows)]
    return index


def _ridge_hat(X_train: np.ndarray, X_test: np.ndarray, alphas: np.ndarray
               ) -> dict[float, np.ndarray]:
    """Per penalty, ``H`` with test predictions ``= mean + H (Y_train - mean)`` (himalaya's ridge).

    Both are centred on the training mean, as ``fit_intercept=True`` does.
    ``H = X_test (X'X + a I)^-1 X'``, from the eigendecomposition of the
    smaller of ``X X'`` and ``X'X`` (float64), returned in the data's precision.
    """
    offset = X_train.mean(axis=0, dtype=np.float64)
    train = (X_train - offset).astype(np.float64)
    test = (X_test - offset).astype(np.float64)
    if train.shape[0] <= train.shape[1]:
        values, vectors = np.linalg.eigh(train @ train.T)       # X X' = U s² U'
        left, right = test @ (train.T @ vectors), vectors.T
    else:
        values, vectors = np.linalg.eigh(train.T @ train)       # X'X = V s² V'
        left, right = test @ vectors, (train @ vectors).T
    values = np.clip(values, 0, None)
    return {float(a): ((left / (values + a)) @ right).astype(X_train.dtype)
            for a in np.unique(alphas)}


def run_shift_null(X: np.ndarray, Y: np.ndarray, splits, runs: np.ndarray,
                   fold_alphas: Sequence[np.ndarray], rois: Mapping[str, np.ndarray],
                   n_permutations: int, random_state: int | None = None,
                   min_shift_fraction: float = 0.1, voxel_batch: int = 2000,
                   observed: tuple[np.ndarray, np.ndarray] | None = None
                   ) -> dict[str, np.ndarray]:
    """The shift null of ridge scores (:data:`NULL_SCHEME`), by algebra instead of refits.

    Each permutation shifts each run's BOLD circularly against its features
    (:func:`shifted_rows`, the same shift for all voxels, so the max
    statistic controls the FWE and ROI means get their null), redoes every
    fold and rescores the test run. With the penalties chosen on the real data
    (``fold_alphas``) a ridge prediction is linear in the training targets,
    ``mean + H (Y_train - mean)``; each fold's ``H`` (one per penalty in use,
    from one SVD) is computed once and a permutation costs one matrix product
    per fold. Keeping the penalties fixed (the inner CV is not redone) makes
    the test slightly conservative (false-positive rates of 3-5% at .05 on
    null data, :mod:`tests.test_encoding`).

    Validity. Under the null hypothesis the BOLD is independent of the
    features; runs are separate acquisitions and a circular shift of a
    stationary series has the series' own distribution, so the shifted data
    and the real data are exchangeable, and the whole cross-validation is
    redone on them. (Shifting only the held-out run against fixed predictions
    needs no refit, but it is not valid for scores averaged over folds: under
    the null, fold scores are positively correlated, because each run's noise
    sits in the training set of the other folds. Measured on null data:
    false-positive rates of 15-18% for ROI means and 30% for the FWE at .05.)

    Parameters
    ----------
    X : ndarray
        ``(n_samples, n_features)`` design (HRF-convolved features), unscaled.
    Y : ndarray
        ``(n_samples, n_voxels)`` responses.
    splits : list of (train, test)
        The cross-validation folds.
    runs : ndarray
        Run of each sample.
    fold_alphas : sequence of ndarray
        Each fold's penalty per voxel (``RidgeEncoder.best_alphas_``).
    rois : mapping
        ROI name to boolean voxel mask (:func:`check_rois`).
    n_permutations : int
        Shifts drawn.
    random_state : int, optional
        Seed of the shifts.
    min_shift_fraction : float
        Smallest shift, as a fraction of the run.
    voxel_batch : int
        Voxels per block (bounds memory).
    observed : (ndarray, ndarray), optional
        Observed r and R² (averaged over folds) the p-values compare with; by
        default those the algebra gives (equal to himalaya's fits to rounding).

    Returns
    -------
    dict
        ``r``, ``rsquared`` (the observed scores, averaged over folds);
        ``p``, ``p_rsquared``, ``p_fwe`` per voxel; ``max_r`` (the max statistic
        per permutation); ``roi_r``, ``roi_rsquared`` (``(n_permutations,
        n_rois)`` ROI means of the null).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(60, 3))
    >>> Y = X[:, :1] + rng.normal(size=(60, 2))
    >>> runs = np.repeat([1, 2, 3], 20)
    >>> splits = list(inner_splits(60, runs))
    >>> null = run_shift_null(X, Y, splits, runs, [np.ones(2)] * 3, check_rois(None, 2), 19,
    ...                       random_state=0)
    >>> null["p"].shape, bool(null["p"][0] <= 0.05)
    ((2,), True)
    """
    n_folds = len(splits)
    index = shifted_rows(runs, n_permutations, random_state, min_shift_fraction)
    r_obs = np.zeros(Y.shape[1])
    r2_obs = np.zeros(Y.shape[1])
    hats = []
    for (train, test), alphas in zip(splits, fold_alphas):
        mean, scale = _moments(X[train], ddof=0)
        hat = _ridge_hat(_standardized(X[train], mean, scale),
                         _standardized(X[test], mean, scale), alphas)
        hats.append(hat)
        predicted = np.zeros((len(test), Y.shape[1]))
        for alpha, h in hat.items():
            voxels = np.flatnonzero(alphas == alpha)
            y_train = Y[train][:, voxels].astype(np.float64)
            centre = y_train.mean(axis=0)
            predicted[:, voxels] = centre + h @ (y_train - centre)
        r, r2 = voxel_scores(Y[test], predicted)
        r_obs += r / n_folds
        r2_obs += r2 / n_folds
    tally = _NullTally(*(observed or (r_obs, r2_obs)), rois, n_permutations)
    for start in range(0, Y.shape[1], voxel_batch):
        columns = np.arange(start, min(start + voxel_batch, Y.shape[1]))
        block = np.asarray(Y[:, columns])
        null_r = np.zeros((n_permutations, len(columns)))
        null_r2 = np.zeros((n_permutations, len(columns)))
        for (train, test), alphas, hat in zip(splits, fold_alphas, hats):
            groups = [(h, 1 - h.sum(axis=1), voxels, np.ascontiguousarray(block[:, voxels]))
                      for a, h in hat.items()
                      if len(voxels := np.flatnonzero(alphas[columns] == a))]
            # permutations in batches of about 2e7 values
            size = max(1, int(2e7 // (len(train) * len(columns))))
            for first in range(0, n_permutations, size):
                batch = np.arange(first, min(first + size, n_permutations))
                rows = index[batch]
                y_test = np.take(block, rows[:, test].T, axis=0)   # (n_test, b, voxels)
                predicted = np.empty_like(y_test)
                for h, offset, voxels, part in groups:
                    # mean + H (y - mean) = H y + (1 - H 1) mean: one product per batch
                    y_train = np.take(part, rows[:, train].T, axis=0)   # (n_train, b, v)
                    product = h @ y_train.reshape(len(train), -1)
                    predicted[:, :, voxels] = (product.reshape(len(test), len(batch), -1)
                                               + offset[:, None, None] * y_train.mean(axis=0))
                r, r2 = voxel_scores(y_test, predicted, axis=0)
                null_r[batch] += r / n_folds
                null_r2[batch] += r2 / n_folds
        tally.add(null_r, null_r2, columns=columns)
    return tally.result()


def refit_shift_null(make_estimator, X: np.ndarray, Y: np.ndarray, splits, runs: np.ndarray,
                     clock: np.ndarray, rois: Mapping[str, np.ndarray], n_permutations: int,
                     random_state: int | None = None, min_shift_fraction: float = 0.1,
                     n_jobs: int = 1, observed: tuple[np.ndarray, np.ndarray] | None = None
                     ) -> dict[str, np.ndarray]:
    """The shift null (:data:`NULL_SCHEME`) of any encoder, by refitting every fold.

    For encoders whose predictions are not linear in the targets (PLS) or
    whose penalties are per voxel and per band (banded ridge). Permutations
    run in parallel with ``n_jobs`` processes; otherwise as
    :func:`run_shift_null` (see there for the validity argument).

    Parameters
    ----------
    make_estimator : callable
        Returns a fresh, unfitted encoder.
    clock : ndarray
        Acquisition clock of each sample (for the encoder's inner CV).
    n_jobs : int
        Parallel permutations (joblib).
    observed : (ndarray, ndarray), optional
        Observed r and R² averaged over folds, when already computed.
    X, Y, splits, runs, rois, n_permutations, random_state, min_shift_fraction
        As in :func:`run_shift_null`.

    Returns
    -------
    dict
        As :func:`run_shift_null`.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(60, 3))
    >>> Y = X[:, :1] + rng.normal(size=(60, 2))
    >>> runs = np.repeat([1, 2, 3], 20)
    >>> null = refit_shift_null(lambda: PLSEncoder(n_components=1), X, Y, inner_splits(60, runs),
    ...                         runs, np.arange(60.0), check_rois(None, 2), 19, random_state=0)
    >>> bool(null["p"][0] <= 0.05), null["roi_r"].shape
    (True, (19, 1))
    """
    from joblib import Parallel, delayed

    from bids_affect.progress import Progress

    index = shifted_rows(runs, n_permutations, random_state, min_shift_fraction)
    if observed is None:
        fits = cross_validated_fits(make_estimator, X, Y, splits, runs, clock)
        observed = (fits.fold_r.mean(axis=0), fits.fold_r2.mean(axis=0))
    tally = _NullTally(observed[0], observed[1], rois, n_permutations)

    def one(permutation: int) -> tuple[np.ndarray, np.ndarray]:
        fits = cross_validated_fits(make_estimator, X, Y[index[permutation]], splits, runs,
                                    clock)
        return fits.fold_r.mean(axis=0), fits.fold_r2.mean(axis=0)

    chunk = max(1, 2 * abs(int(n_jobs)))
    with Progress(n_permutations, desc="encoding null: refits") as progress, \
            Parallel(n_jobs=n_jobs) as parallel:
        for first in range(0, n_permutations, chunk):
            batch = np.arange(first, min(first + chunk, n_permutations))
            scores = parallel(delayed(one)(int(k)) for k in batch)
            tally.add(np.stack([r for r, _ in scores]), np.stack([r2 for _, r2 in scores]),
                      permutations=batch)
            progress.update(len(batch))
    return tally.result()


# --------------------------------------------------------------------------- CV, audit


@dataclass
class FoldFits:
    """Cross-validated predictions of one encoder and what each fold learned."""

    predicted: np.ndarray                        # (n_samples, n_voxels), held-out
    fold_r: np.ndarray                           # (n_folds, n_voxels)
    fold_r2: np.ndarray                          # (n_folds, n_voxels)
    fold_alphas: list[np.ndarray] | None         # each fold's penalty per voxel
    band_r2: np.ndarray | None                   # (n_folds, n_bands, n_voxels) split R²


def _split_r2(observed: np.ndarray, parts: np.ndarray) -> np.ndarray:
    """Product-measure split of the centred held-out R² over bands (himalaya's r2_score_split)."""
    from himalaya.scoring import r2_score_split

    with himalaya_backend("numpy"):
        centred = observed - observed.mean(axis=0)
        parts = parts - parts.mean(axis=1, keepdims=True)
        return np.asarray(r2_score_split(centred.astype(np.float64), parts.astype(np.float64)))


def cross_validated_fits(make_estimator, X: np.ndarray, Y: np.ndarray, splits, runs: np.ndarray,
                         clock: np.ndarray) -> FoldFits:
    """Fit a fresh encoder per fold on the training runs and predict the test samples.

    ``make_estimator()`` returns an unfitted encoder; its ``fit`` receives the
    training samples' runs and acquisition clock (for the inner CV).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(60, 4))
    >>> Y = X[:, :1] + 0.5 * rng.normal(size=(60, 2))
    >>> runs = np.repeat([1, 2, 3], 20)
    >>> fits = cross_validated_fits(lambda: PLSEncoder(n_components=1), X, Y,
    ...                             inner_splits(60, runs), runs, np.arange(60.0))
    >>> fits.fold_r.shape, bool(fits.fold_r[:, 0].min() > 0.5)
    ((3, 2), True)
    """
    n_folds = len(splits)
    predicted = np.zeros(Y.shape, dtype=np.float32)
    fold_r = np.zeros((n_folds, Y.shape[1]))
    fold_r2 = np.zeros((n_folds, Y.shape[1]))
    fold_alphas, band_r2 = [], []
    for k, (train, test) in enumerate(splits):
        estimator = make_estimator()
        estimator.fit(X[train], Y[train], runs=runs[train], times=clock[train])
        predicted[test] = estimator.predict(X[test])
        fold_r[k], fold_r2[k] = voxel_scores(Y[test], predicted[test])
        if hasattr(estimator, "best_alphas_"):
            fold_alphas.append(estimator.best_alphas_)
        if hasattr(estimator, "predict_bands"):
            band_r2.append(_split_r2(Y[test], estimator.predict_bands(X[test])))
    return FoldFits(predicted, fold_r, fold_r2, fold_alphas or None,
                    np.stack(band_r2) if band_r2 else None)


def random_split_scores(make_estimator, X: np.ndarray, Y: np.ndarray, runs: np.ndarray,
                        clock: np.ndarray, n_splits: int = 5,
                        random_state: int | None = None) -> np.ndarray:
    """Leakage audit: per-voxel r with seed 000's random k-fold split over time points.

    Test volumes are drawn at random from all runs, so each has its neighbours
    (which share its slow drift and its HRF-smoothed features) in the training
    set: this score is inflated on autocorrelated data. It is reported beside
    the honest score, never used for inference.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> drift = np.cumsum(rng.normal(size=(90, 1)), axis=0)
    >>> X = drift + 0.1 * rng.normal(size=(90, 5))
    >>> Y = np.cumsum(rng.normal(size=(90, 1)), axis=0)  # unrelated slow noise
    >>> r = random_split_scores(lambda: PLSEncoder(n_components=3), X, Y,
    ...                         np.repeat([1, 2, 3], 30), np.arange(90.0), random_state=0)
    >>> bool(r[0] > 0.3)
    True
    """
    splitter = KFold(n_splits=n_splits, shuffle=True, random_state=random_state)
    splits = [(np.sort(a), np.sort(b)) for a, b in splitter.split(X)]
    return cross_validated_fits(make_estimator, X, Y, splits, runs, clock).fold_r.mean(axis=0)


# --------------------------------------------------------------------------- final model


@dataclass
class EncodingModel:
    """An encoder refitted on all runs: what a later analysis needs to predict responses.

    Predictions are ``((X - x_mean) / x_scale) @ weights + intercept`` where
    ``X`` holds the design columns: each band's HRF-convolved features, one
    block per HRF kernel (FIR delay). Saved as one ``.npz`` (no pickle).

    Attributes
    ----------
    model : str
        Encoder name (``pls``, ``ridge``, ``banded-ridge``).
    weights : ndarray
        ``(n_columns, n_voxels)`` float32 weights on z-scored columns.
    x_mean, x_scale, intercept : ndarray
        Column means and scales, voxel intercepts.
    alphas : ndarray or None
        Ridge penalty per voxel.
    band_names, band_sizes : list
        Feature sets and their design columns.
    n_kernels : int
        HRF kernels per feature (FIR delays; 1 for SPM and Glover).
    hrf : dict
        HRF settings (``hrf``, ``oversampling``, ``fir_delays``, ``tr``).
    feature_spec : dict
        How the features were made (network, layer, weights...), as given.

    Examples
    --------
    >>> model = EncodingModel("ridge", np.ones((2, 3), np.float32), np.zeros(2), np.ones(2),
    ...                       np.zeros(3))
    >>> model.predict(np.array([[1.0, 2.0]])).tolist()
    [[3.0, 3.0, 3.0]]
    """

    model: str
    weights: np.ndarray
    x_mean: np.ndarray
    x_scale: np.ndarray
    intercept: np.ndarray
    alphas: np.ndarray | None = None
    band_names: list[str] = field(default_factory=lambda: ["features"])
    band_sizes: list[int] = field(default_factory=list)
    n_kernels: int = 1
    hrf: dict[str, Any] = field(default_factory=dict)
    feature_spec: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if not self.band_sizes:
            self.band_sizes = [int(self.weights.shape[0])]

    @classmethod
    def from_estimator(cls, name: str, estimator: _LinearEncoder, **metadata: Any
                       ) -> EncodingModel:
        """Collect a fitted encoder's weights, scaling and penalties.

        Examples
        --------
        >>> rng = np.random.default_rng(0)
        >>> fitted = PLSEncoder(n_components=1).fit(rng.normal(size=(20, 3)),
        ...                                         rng.normal(size=(20, 2)))
        >>> EncodingModel.from_estimator("pls", fitted).weights.shape
        (3, 2)
        """
        return cls(model=name, weights=np.asarray(estimator.weights_, np.float32),
                   x_mean=np.asarray(estimator.x_mean_), x_scale=np.asarray(estimator.x_scale_),
                   intercept=np.asarray(estimator.intercept_),
                   alphas=getattr(estimator, "best_alphas_", None), **metadata)

    def design(self, features: np.ndarray) -> np.ndarray:
        """The design columns of ``features``: as they are, or raw features tiled over kernels.

        Raw features (one column per feature, no FIR copies) stand for a
        sustained stimulus such as a still image: its steady-state response is
        the features themselves under each delay (the canonical kernels sum to
        one), so they are repeated in every kernel block.

        Examples
        --------
        >>> model = EncodingModel("ridge", np.ones((4, 1), np.float32), np.zeros(4), np.ones(4),
        ...                       np.zeros(1), band_sizes=[4], n_kernels=2)
        >>> model.design([[1.0, 2.0]]).tolist()
        [[1.0, 2.0, 1.0, 2.0]]
        """
        features = np.asarray(features, dtype=np.float32)
        if features.ndim == 1:
            features = features[None, :]
        n_columns = self.weights.shape[0]
        if features.shape[1] == n_columns:
            return features
        raw = [size // self.n_kernels for size in self.band_sizes]
        if self.n_kernels > 1 and features.shape[1] == sum(raw):
            edges = np.cumsum([0, *raw])
            return np.concatenate([np.tile(features[:, a:b], self.n_kernels)
                                   for a, b in zip(edges[:-1], edges[1:])], axis=1)
        raise InputDataError(f"expected {n_columns} design columns (or {sum(raw)} raw "
                             f"features); got {features.shape[1]}", path="features",
                             fix="extract the same feature set the model was fitted on")

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Predicted responses ``(n, n_voxels)`` of design rows or raw feature rows."""
        X = self.design(features)
        z = (X - self.x_mean.astype(np.float32)) / self.x_scale.astype(np.float32)
        return z @ self.weights + self.intercept.astype(np.float32)

    def predict_rois(self, features: np.ndarray, rois: Mapping[str, Any]) -> pd.DataFrame:
        """ROI-mean predicted responses: one column per ROI, one row per stimulus.

        Examples
        --------
        >>> model = EncodingModel("pls", np.eye(2, dtype=np.float32), np.zeros(2), np.ones(2),
        ...                       np.zeros(2))
        >>> model.predict_rois([[1.0, 3.0]], {"a": [True, True], "b": [False, True]})
             a    b
        0  2.0  3.0
        """
        rois = check_rois(rois, self.weights.shape[1])
        return pd.DataFrame(roi_means(self.predict(features), rois), columns=list(rois))

    def save(self, path: str | Path) -> Path:
        """Write the model to ``path`` (``.npz``, no pickle) atomically; returns the path.

        See :meth:`load` for an example.
        """
        path = Path(path)
        meta = {"model": self.model, "band_names": list(self.band_names),
                "band_sizes": [int(s) for s in self.band_sizes], "n_kernels": int(self.n_kernels),
                "hrf": self.hrf, "feature_spec": self.feature_spec}
        arrays = {"weights": self.weights, "x_mean": self.x_mean, "x_scale": self.x_scale,
                  "intercept": self.intercept,
                  "alphas": np.array([]) if self.alphas is None else self.alphas}
        with atomic_path(path) as tmp, open(tmp, "wb") as stream:
            np.savez(stream, meta=np.array(json.dumps(to_jsonable(meta))), **arrays)
        return path

    @classmethod
    def load(cls, path: str | Path) -> EncodingModel:
        """Read a model written by :meth:`save`.

        Examples
        --------
        >>> import tempfile
        >>> model = EncodingModel("ridge", np.ones((2, 1), np.float32), np.zeros(2), np.ones(2),
        ...                       np.zeros(1), feature_spec={"layer": "fc7"})
        >>> path = model.save(Path(tempfile.mkdtemp()) / "model.npz")
        >>> EncodingModel.load(path).feature_spec
        {'layer': 'fc7'}
        """
        with np.load(path, allow_pickle=False) as stored:
            meta = json.loads(str(stored["meta"]))
            alphas = stored["alphas"]
            return cls(model=meta["model"], weights=stored["weights"], x_mean=stored["x_mean"],
                       x_scale=stored["x_scale"], intercept=stored["intercept"],
                       alphas=alphas if alphas.size else None, band_names=meta["band_names"],
                       band_sizes=meta["band_sizes"], n_kernels=meta["n_kernels"],
                       hrf=meta["hrf"], feature_spec=meta["feature_spec"])


# --------------------------------------------------------------------------- encode


@dataclass
class EncodingResult:
    """Everything one encoder produced for one subject (arrays per voxel column)."""

    model: str
    r: np.ndarray
    r2: np.ndarray
    p: np.ndarray | None
    p_fwe: np.ndarray | None
    p_r2: np.ndarray | None
    fold_r: np.ndarray
    roi_table: pd.DataFrame
    audit_r: np.ndarray | None
    band_r2: np.ndarray | None
    final_model: EncodingModel
    metrics: dict[str, Any]
    predicted: np.ndarray = field(repr=False)


def _feature_runs(features: Any, n_runs: int) -> dict[str, list[tuple]]:
    """Feature sets as ``{name: [(values, times, sampling_frequency) per run]}``."""
    sets = dict(features) if isinstance(features, Mapping) else {"features": features}
    checked = {}
    for name, runs in sets.items():
        runs = list(runs)
        if len(runs) != n_runs:
            raise InputDataError(f"feature set {name!r} has {len(runs)} runs but the BOLD has "
                                 f"{n_runs}", path="features",
                                 fix="give the features of every BOLD run, in the same order")
        items = []
        for item in runs:
            if isinstance(item, Mapping):
                item = (item["values"], item["times"], item.get("sampling_frequency"))
            elif hasattr(item, "values") and hasattr(item, "times"):
                item = (item.values, item.times, getattr(item, "sampling_frequency", None))
            item = tuple(item) + (None,) * (3 - len(tuple(item)))
            items.append(item[:3])
        checked[str(name)] = items
    return checked


def encode(features: Any, bold: Sequence[np.ndarray], tr: float, *, model: str = "ridge",
           model_params: Mapping[str, Any] | None = None, hrf: str = "spm",
           fir_delays: Sequence[float] | None = None, oversampling: int = 50,
           start_time: float = 0.0, cv: str = "auto", n_splits: int = 5, gap: float = 30.0,
           n_permutations: int = 1000, n_jobs: int = 1,
           min_shift_fraction: float = 0.1, rois: Mapping[str, Any] | None = None,
           audit: bool = True, run_labels: Sequence[str] | None = None,
           feature_spec: Mapping[str, Any] | None = None, random_state: int | None = None,
           voxel_batch: int = 2000) -> EncodingResult:
    """Cross-validated voxelwise encoding with nulls, ROI table, leakage audit and final model.

    Parameters
    ----------
    features : sequence or mapping
        Per run, the stimulus features: ``(values, times[, sampling_frequency])``
        or an object with ``values``, ``times`` (seconds from the run's start)
        and optionally ``sampling_frequency``. A mapping ``{name: per-run
        sequence}`` gives several feature sets (the bands of ``banded-ridge``;
        other models use their columns together).
    bold : sequence of ndarray
        Per run, ``(n_volumes, n_voxels)`` cleaned BOLD samples (float32, memmaps fine).
    tr : float
        Repetition time, seconds; volume ``i`` is acquired at ``start_time + i * tr``.
    model : {"ridge", "pls", "banded-ridge"}
        Encoder (:data:`ENCODERS`).
    model_params : mapping, optional
        Encoder parameters (e.g. ``{"n_components": 20}``, ``{"alphas": [...]}``).
    hrf, fir_delays, oversampling : str, sequence, int
        HRF of :func:`convolve_features`.
    start_time : float
        Acquisition time of the first volume (the BOLD sidecar's ``StartTime``).
    cv : {"auto", "loro", "blocked"}
        Leave-one-run-out, or ``n_splits`` contiguous blocks with ``gap`` seconds
        (``auto``: leave-one-run-out with 2+ runs).
    n_permutations : int
        Shifts of the null (:data:`NULL_SCHEME`); 0 skips it (p-values are then
        None). Ridge's null is algebra (:func:`run_shift_null`); the other
        models refit every fold per permutation (:func:`refit_shift_null`).
    n_jobs : int
        Parallel permutations of a refit null.
    min_shift_fraction : float
        Smallest circular shift, as a fraction of the run.
    rois : mapping, optional
        ROI name to boolean voxel mask; the whole mask when None.
    audit : bool
        Also score the model with seed 000's random 5-fold split (leakage audit).
    run_labels : sequence of str, optional
        Names of the runs (fold names); ``1, 2, ...`` when None.
    feature_spec : mapping, optional
        Stored with the final model (network, layer, weights, frame step...).
    random_state : int, optional
        Master seed: shifts, audit split and the banded-ridge search derive from it.
    voxel_batch : int
        Voxels per block of the null (bounds memory).

    Returns
    -------
    EncodingResult
        ``r``, ``r2`` (mean over folds of held-out scores), ``p``, ``p_fwe``,
        ``p_r2``, ``fold_r``, ``roi_table`` (``roi``, ``n_voxels``, ``mean_r``,
        ``mean_rsquared``, ``p``, ``p_rsquared``, ``null_low``, ``null_high``,
        ``random_split_r``), ``audit_r``, ``band_r2`` (banded ridge: split R²
        per band and voxel), ``final_model`` and ``metrics`` (the
        ``encoding.json`` fields).

    Raises
    ------
    InputDataError
        Mismatched runs, features that do not cover a run, NaN values,
        ``n_components`` above the features' rank.
    UsageError
        Unknown model, HRF or CV; bad parameters.

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> times = 2.0 * np.arange(50)
    >>> features = [(rng.normal(size=(50, 6)).astype(np.float32), times) for _ in range(3)]
    >>> bold = [rng.normal(size=(50, 4)).astype(np.float32)
    ...         + 3 * convolve_features(values, t, times)[:, :1] * [1, 1, 0, 0]
    ...         for values, t in features]
    >>> result = encode(features, bold, 2.0, model="pls", model_params={"n_components": 2},
    ...                 n_permutations=19, rois={"planted": [1, 1, 0, 0]}, random_state=0)
    >>> result.roi_table[["roi", "n_voxels", "p"]].to_dict("records")
    [{'roi': 'planted', 'n_voxels': 2, 'p': 0.05}]
    >>> bool(result.metrics["audit"]["mean_r"] > 0), result.final_model.weights.shape
    (True, (6, 4))
    """
    check_int(n_permutations, "n_permutations", minimum=0)
    check_int(voxel_batch, "voxel_batch", minimum=1)
    if check_int(n_jobs, "n_jobs", minimum=-1) == 0:
        raise UsageError("must be a positive number of jobs or -1 (all cores), got 0",
                         path="n_jobs")
    tr = check_number(tr, "tr", positive=True)
    if not 0.0 <= check_number(min_shift_fraction, "min_shift_fraction") < 0.5:
        raise UsageError(f"must be in [0, 0.5), got {min_shift_fraction}",
                         path="min_shift_fraction")
    params = dict(model_params or {})
    make_encoder(model, **params)                        # validates name and parameters
    bold = list(bold)
    if not bold:
        raise InputDataError("no BOLD run given", path="bold")
    n_voxels = {np.shape(b)[1] if np.ndim(b) == 2 else -1 for b in bold}
    if len(n_voxels) != 1 or -1 in n_voxels:
        raise InputDataError(f"every BOLD run must be (n_volumes, n_voxels) with the same "
                             f"voxels; got {[np.shape(b) for b in bold]}", path="bold")
    labels = [str(k + 1) for k in range(len(bold))] if run_labels is None else list(run_labels)
    if len(labels) != len(bold):
        raise InputDataError(f"{len(labels)} run labels for {len(bold)} runs", path="run_labels")
    sets = _feature_runs(features, len(bold))
    rois = check_rois(rois, n_voxels.pop())
    seeds = np.random.SeedSequence(random_state).generate_state(3)
    shift_seed, audit_seed, model_seed = (int(s >> 1) for s in seeds)
    if model == "banded-ridge":
        params.setdefault("random_state", model_seed)

    designs, band_sizes, frames = [], {}, []
    for k, (run_bold, label) in enumerate(zip(bold, labels)):
        _check_finite(np.asarray(run_bold), f"bold run {label}")
        frame_times = start_time + tr * np.arange(len(run_bold))
        frames.append(frame_times)
        blocks = []
        for name, runs in sets.items():
            values, times, frequency = runs[k]
            block = convolve_features(values, times, frame_times, sampling_frequency=frequency,
                                      hrf=hrf, oversampling=oversampling,
                                      fir_delays=fir_delays, name=f"{name} run {label}")
            band_sizes.setdefault(name, block.shape[1])
            if block.shape[1] != band_sizes[name]:
                raise InputDataError(f"feature set {name!r} has {block.shape[1]} columns in run "
                                     f"{label} but {band_sizes[name]} before", path="features")
            blocks.append(block.astype(np.float32, copy=False))
        designs.append(np.concatenate(blocks, axis=1))
    n_kernels = (len(DEFAULT_FIR_DELAYS if fir_delays is None else fir_delays)
                 if hrf == "fir" else 1)
    if model == "banded-ridge":
        params.setdefault("bands", tuple(band_sizes.values()))
    X = np.concatenate(designs)
    Y = np.concatenate([np.asarray(b, dtype=np.float32) for b in bold])
    runs = np.repeat(np.arange(len(bold)), [len(b) for b in bold])
    clock = acquisition_clock(runs, np.concatenate(frames))
    cv_name, splitter = make_cv(cv, runs, n_splits, gap)
    if cv_name == "loro":
        splits = list(splitter.split(X, groups=runs))
        fold_names = [labels[int(runs[test[0]])] for _, test in splits]
    else:
        splits = list(splitter.split(X, groups=clock))
        fold_names = [f"block-{k + 1}" for k in range(len(splits))]
    for (train, _), name in zip(splits, fold_names):
        if len(train) < 3:
            raise InputDataError(f"fold {name} leaves {len(train)} training volumes",
                                 path="cv", fix="use fewer folds, a smaller gap or more data")

    def make() -> _LinearEncoder:
        return make_encoder(model, **params)

    started = time.perf_counter()
    fits = cross_validated_fits(make, X, Y, splits, runs, clock)
    fit_seconds = time.perf_counter() - started
    LOGGER.info("%s: %d folds fitted in %.1f s", model, len(splits), fit_seconds)
    r, r2 = fits.fold_r.mean(axis=0), fits.fold_r2.mean(axis=0)
    null_result, null_method = None, None
    if n_permutations and model == "ridge":
        null_method = "algebra: each fold's ridge hat matrix at the penalties chosen on the data"
        null_result = run_shift_null(X, Y, splits, runs, fits.fold_alphas, rois,
                                     n_permutations, shift_seed, min_shift_fraction,
                                     voxel_batch, (r, r2))
    elif n_permutations:
        null_method = "refit of every fold for each permutation"
        estimate = fit_seconds * n_permutations / max(1, n_jobs)
        LOGGER.log(logging.WARNING if estimate > 600 else logging.INFO,
                   "%s: the null refits all %d folds for each of %d permutations; about %.1f h "
                   "with %d job(s) (fewer permutations, more jobs, or model 'ridge', whose "
                   "null is algebra, are faster)", model, len(splits), n_permutations,
                   estimate / 3600, n_jobs)
        null_result = refit_shift_null(make, X, Y, splits, runs, clock, rois, n_permutations,
                                       shift_seed, min_shift_fraction, n_jobs, (r, r2))
    audit_r = (random_split_scores(make, X, Y, runs, clock, 5, audit_seed) if audit else None)
    final = make().fit(X, Y, runs=runs, times=clock)
    hrf_spec = {"hrf": hrf, "oversampling": int(oversampling), "tr": tr,
                "start_time": float(start_time),
                "fir_delays": (list(DEFAULT_FIR_DELAYS if fir_delays is None else fir_delays)
                               if hrf == "fir" else None)}
    final_model = EncodingModel.from_estimator(
        model, final, band_names=list(band_sizes), band_sizes=list(band_sizes.values()),
        n_kernels=n_kernels, hrf=hrf_spec, feature_spec=dict(feature_spec or {}))
    band_r2 = None if fits.band_r2 is None else fits.band_r2.mean(axis=0)
    roi_table = _roi_table(rois, r, r2, audit_r, null_result)
    metrics = _metrics(model, params, cv_name, fold_names, splits, fits, r, r2, null_result,
                       n_permutations, null_method, min_shift_fraction, audit_r, final_model,
                       band_r2, hrf_spec)
    return EncodingResult(
        model=model, r=r, r2=r2,
        p=None if null_result is None else null_result["p"],
        p_fwe=None if null_result is None else null_result["p_fwe"],
        p_r2=None if null_result is None else null_result["p_rsquared"],
        fold_r=fits.fold_r, roi_table=roi_table, audit_r=audit_r, band_r2=band_r2,
        final_model=final_model, metrics=metrics, predicted=fits.predicted)


def _roi_table(rois, r, r2, audit_r, null_result) -> pd.DataFrame:
    rows = []
    for k, (name, mask) in enumerate(rois.items()):
        row = {"roi": name, "n_voxels": int(mask.sum()), "mean_r": float(r[mask].mean()),
               "mean_rsquared": float(r2[mask].mean()), "p": None, "p_rsquared": None,
               "null_low": None, "null_high": None,
               "random_split_r": None if audit_r is None else float(audit_r[mask].mean())}
        if null_result is not None:
            null_r, null_r2 = null_result["roi_r"][:, k], null_result["roi_rsquared"][:, k]
            n = len(null_r)
            row.update(p=float((1 + np.sum(null_r >= row["mean_r"] - 1e-12)) / (1 + n)),
                       p_rsquared=float((1 + np.sum(null_r2 >= row["mean_rsquared"] - 1e-12))
                                        / (1 + n)),
                       null_low=float(np.percentile(null_r, 2.5)),
                       null_high=float(np.percentile(null_r, 97.5)))
        rows.append(row)
    return pd.DataFrame(rows)


def _metrics(model, params, cv_name, fold_names, splits, fits, r, r2, null_result,
             n_permutations, null_method, min_shift_fraction, audit_r, final_model, band_r2,
             hrf_spec) -> dict[str, Any]:
    metrics: dict[str, Any] = {
        "model": model,
        "model_params": {k: (list(v) if isinstance(v, tuple) else v) for k, v in params.items()},
        "hrf": hrf_spec,
        "cv": cv_name,
        "n_folds": len(splits),
        "folds": fold_names,
        "fold_scores": [{"fold": name, "n_test": int(len(test)),
                         "mean_r": float(fits.fold_r[k].mean()),
                         "mean_rsquared": float(fits.fold_r2[k].mean())}
                        for k, (name, (_, test)) in enumerate(zip(fold_names, splits))],
        "n_voxels": int(len(r)),
        "mean_r": float(r.mean()),
        "mean_rsquared": float(r2.mean()),
        "n_permutations": int(n_permutations),
        "null": None,
    }
    if null_result is not None:
        max_r = null_result["max_r"]
        metrics["null"] = {
            "scheme": NULL_SCHEME, "method": null_method,
            "min_shift_fraction": min_shift_fraction,
            "p_resolution": 1.0 / (n_permutations + 1),
            "fwe_threshold_r": float(np.percentile(max_r, 95)),
            "n_voxels_p05": int(np.sum(null_result["p"] < 0.05)),
            "n_voxels_pfwe05": int(np.sum(null_result["p_fwe"] < 0.05)),
        }
    if audit_r is not None:
        metrics["audit"] = {
            "scheme": "random 5-fold split over time points (seed 000's code)",
            "mean_r": float(audit_r.mean()),
            "note": "neighbouring volumes fall on both sides of a random split, so this score "
                    "is inflated; reported for comparison only",
        }
    if final_model.alphas is not None:
        values, counts = np.unique(final_model.alphas, return_counts=True)
        metrics["alphas"] = {"min": float(values.min()), "median": float(
            np.median(final_model.alphas)), "max": float(values.max()),
            "counts": {f"{v:g}": int(c) for v, c in zip(values, counts)}}
    if band_r2 is not None:
        metrics["bands"] = [{"name": name, "n_columns": int(size),
                             "mean_split_rsquared": float(band_r2[k].mean())}
                            for k, (name, size) in enumerate(zip(final_model.band_names,
                                                                 final_model.band_sizes))]
    return metrics
