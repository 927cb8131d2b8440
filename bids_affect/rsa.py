"""Representational similarity analysis: RDMs, their comparison, and Mantel tests.

An RDM (representational dissimilarity matrix) holds the dissimilarity of the
response patterns of every pair of classes. Here it is a pandas DataFrame with
the class names as index and columns: square, symmetric, zero diagonal.

- :func:`compute_rdm` builds one from a samples x features matrix (voxels of a
  mask or ROI for a brain RDM; a CNN layer's features of the same held-out
  samples for a model RDM) and a label per sample: correlation distance of the
  class means (the default), Euclidean distance, or a distance cross-validated
  across runs (:data:`DISTANCES`).
- :func:`fold_averaged_rdm` builds a model RDM from cross-validation folds:
  each fold's network embeds the samples that fold held out, in a feature
  space of its own (unit ``j`` of one fold's network has nothing to do with
  unit ``j`` of another's), so one RDM is computed per fold and the RDMs, not
  the features, are averaged.
- :func:`rdm_to_table` and :func:`read_rdm` convert to and from the TSV form of
  ``desc-SOURCE_rdm.tsv`` (a first column ``class``, then one column per
  class); :func:`read_rdm` also reads and validates user reference RDMs
  (``--rsa-reference NAME=PATH``).
- :func:`compare_rdms` correlates the upper triangles of two RDMs aligned by
  class name (:data:`METHODS`: Pearson, Spearman, Kendall's tau-a).
- :func:`mantel_test` tests that correlation by permuting the rows and columns
  of the first RDM together: all ``k!`` permutations for ``k <= 8`` classes
  (the p-value is then exact), Monte Carlo above. :func:`compare_rdms_table`
  runs every pairwise test of a set of named RDMs and returns the table of
  ``desc-rsa_statistics.tsv`` (each pair on the classes both hold, when asked:
  a reference RDM may hold other classes than the data).
- :func:`brain_rdm_name` and :func:`model_rdm_name` give the RDMs' ``desc`` names.

A plain correlation of the ``k (k - 1) / 2`` entries of two RDMs (10 for five
classes) is not a test: the entries share classes, so they are not
independent, and the usual p-value of a correlation is wrong. Report the
Mantel p-value with the number of permutations and whether it is exact.

Examples
--------
>>> rng = np.random.default_rng(0)
>>> labels = np.repeat(["anger", "fear", "joy", "love", "sad"], 20)
>>> means = rng.normal(size=(5, 50))
>>> X = (means.repeat(20, axis=0) + rng.normal(size=(100, 50))).astype(np.float32)
>>> brain = compute_rdm(X, labels)
>>> brain.shape, list(brain.index[:2])
((5, 5), ['anger', 'fear'])
>>> result = mantel_test(brain, compute_rdm(means, ["anger", "fear", "joy", "love", "sad"]))
>>> result.n_permutations, result.exact, result.p_value < 0.05
(120, True, True)
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.spatial.distance import pdist, squareform

from bids_affect._utils.docs import fill_doc
from bids_affect._utils.validation import check_choice
from bids_affect.exceptions import InputDataError, InputMissingError, UsageError
from bids_affect.io.derivatives import desc_label
from bids_affect.stats.mantel import (
    ALTERNATIVES,
    MAX_EXACT_CLASSES,
    METHODS,
    MantelResult,
    constant_warning,
    correlate,
    kendall_tau_a,
    mantel,
    upper_triangle,
)

__all__ = [
    "ALTERNATIVES",
    "BRAIN_RDM",
    "DISTANCES",
    "MAX_EXACT_CLASSES",
    "METHODS",
    "MODEL_RDM_LAYER",
    "TABLE_COLUMNS",
    "MantelResult",
    "brain_rdm_name",
    "check_rdm",
    "class_patterns",
    "compare_rdms",
    "compare_rdms_table",
    "compute_rdm",
    "fold_averaged_rdm",
    "kendall_tau_a",
    "mantel_test",
    "model_rdm",
    "model_rdm_name",
    "penultimate_features",
    "reference_rdms",
    "rdm_to_table",
    "read_rdm",
    "shared_class_names",
]

#: Dissimilarities of class patterns that :func:`compute_rdm` knows.
DISTANCES: dict[str, str] = {
    "correlation": "1 - Pearson r between the class-mean patterns",
    "euclidean": "Euclidean distance between the class-mean patterns",
    "cv_euclidean": "squared Euclidean distance per feature, cross-validated across runs "
                    "(leave one run out; unbiased, so it can be negative)",
    "crossnobis": "cv_euclidean after dividing each feature by its residual standard "
                  "deviation (cross-validated Mahalanobis with a diagonal noise model)",
}

LOGGER = logging.getLogger("bids_affect.rsa")

#: Columns of ``desc-rsa_statistics.tsv`` (:func:`compare_rdms_table`).
TABLE_COLUMNS = ("rdm_a", "rdm_b", "method", "r", "p", "n_permutations", "exact")

#: An RDM is symmetric with a zero diagonal when it is within this much, times
#: max(1, its largest absolute entry), of being so.
_SYMMETRY_TOLERANCE = 1e-8
#: Samples summed per step when class means are computed (bounds float64 copies).
_ROW_CHUNK = 128

# --------------------------------------------------------------------------- RDM names

#: Name (``desc``) of the whole-mask brain RDM; ROI RDMs append the ROI's label.
BRAIN_RDM = "brain"

#: Layer whose features give a CNN's model RDM (the input of the classifier's last layer).
MODEL_RDM_LAYER = "penultimate"


def brain_rdm_name(roi: str | None = None) -> str:
    """Name of a brain RDM: ``brain`` (whole mask) or ``brain`` + the ROI's label.

    Examples
    --------
    >>> brain_rdm_name(), brain_rdm_name("amygdala_cm"), brain_rdm_name("Left_Amygdala")
    ('brain', 'brainamygdalacm', 'brainLeftAmygdala')
    """
    return BRAIN_RDM if roi is None else BRAIN_RDM + desc_label(roi)


def model_rdm_name(model: str) -> str:
    """Name of a CNN decoder's model RDM: its ``desc`` label + the layer.

    Examples
    --------
    >>> model_rdm_name("cnn-neuro120fp")
    'cnnneuro120fppenultimate'
    """
    return desc_label(model) + MODEL_RDM_LAYER


# --------------------------------------------------------------------------- RDMs


def class_patterns(X: Any, labels: Sequence[Any], classes: Sequence[Any] | None = None
                   ) -> pd.DataFrame:
    """Mean pattern of each class.

    Parameters
    ----------
    X : array of shape (n_samples, n_features)
        Samples x voxels (or CNN features); float32 or a memory map is fine:
        the means are accumulated in float64, a few samples at a time.
    labels : sequence of length n_samples
        The class of each sample. Samples of classes not in ``classes`` are left out.
    classes : sequence, optional
        The classes, in the order of the result; default: the sorted unique labels.

    Returns
    -------
    pandas.DataFrame
        One row per class (index: class names as str), one column per feature.

    Raises
    ------
    InputDataError
        Bad shapes, a class without samples, or non-finite values in its samples.

    Examples
    --------
    >>> X = np.array([[1.0, 2.0], [3.0, 4.0], [10.0, 10.0]], dtype=np.float32)
    >>> class_patterns(X, ["b", "b", "a"])
          0     1
    a  10.0  10.0
    b   2.0   3.0
    """
    X, labels, classes, names, _ = _check_samples(X, labels, classes, None)
    sums, counts, _ = _cell_sums(X, labels, classes, None)
    return pd.DataFrame(sums[0] / counts[0][:, None], index=names)


def compute_rdm(X: Any, labels: Sequence[Any], classes: Sequence[Any] | None = None,
                distance: str = "correlation", runs: Sequence[Any] | None = None
                ) -> pd.DataFrame:
    """RDM of the class patterns of a samples x features matrix.

    Brain RDMs take the voxels of a mask or ROI; model RDMs take a CNN layer's
    features of the same held-out samples. The distances (:data:`DISTANCES`):

    - ``"correlation"``: ``1 - r`` of the class-mean patterns (Pearson r across features);
    - ``"euclidean"``: Euclidean distance of the class means;
    - ``"cv_euclidean"``: leave-one-run-out cross-validated squared Euclidean
      distance divided by the number of features,
      ``mean over runs r of (a_train - b_train) . (a_r - b_r) / n_features``,
      where ``a_r`` is the mean of class ``a`` in run ``r`` and ``a_train`` its
      mean over the samples of the other runs (rsatoolbox's ``crossnobis``
      with ``noise=None`` and ``cv_descriptor`` = run, to 1e-10). Noise adds
      nothing to it on average, so unlike the Euclidean distance it is about 0
      for classes that do not differ, and it can be negative. A class pair
      enters the runs where both classes occur, and occur in other runs too;
    - ``"crossnobis"``: the same after dividing each feature by its residual
      standard deviation (residuals around the run x class means, pooled): a
      cross-validated Mahalanobis distance with a diagonal noise model. The
      full noise covariance of thousands of voxels cannot be estimated from a
      few hundred samples; whiten ``X`` beforehand for a multivariate model.

    rsatoolbox is not called here: its cross-validated distances build an
    n_features x n_features noise matrix (20 GB for 50,000 voxels) and need
    every class in every run, which a movie rarely gives.

    Parameters
    ----------
    X : array of shape (n_samples, n_features)
        Samples x voxels or features (float32 or a memory map is fine).
    labels : sequence of length n_samples
        Class of each sample; samples of other classes than ``classes`` are left out.
    classes : sequence, optional
        Classes in the order of the RDM; default: the sorted unique labels.
    distance : str
        One of :data:`DISTANCES`.
    runs : sequence of length n_samples, optional
        Run of each sample; needed by the cross-validated distances, ignored by the others.

    Returns
    -------
    pandas.DataFrame
        The RDM: class names (str) as index and columns, symmetric, zero diagonal.

    Raises
    ------
    UsageError
        Unknown distance, or a cross-validated distance without runs.
    InputDataError
        Bad shapes, a class without samples, non-finite values, a constant
        pattern (correlation), fewer than 2 runs, or a pair of classes that
        never occurs in a held-out run and in another run.

    Examples
    --------
    >>> X = np.array([[0, 0], [0, 0.2], [3, 0], [3, 0.2], [0, 4], [0.2, 4]])
    >>> compute_rdm(X, ["a", "a", "b", "b", "c", "c"], distance="euclidean").round(2)
         a     b     c
    a  0.0  3.00  3.90
    b  3.0  0.00  4.86
    c  3.9  4.86  0.00
    >>> rdm = compute_rdm(X, ["a", "a", "b", "b", "c", "c"], distance="cv_euclidean",
    ...                   runs=[1, 2, 1, 2, 1, 2])
    >>> float(rdm.loc["a", "b"])
    4.5
    """
    check_choice(distance, "distance", DISTANCES)
    cross_validated = distance in ("cv_euclidean", "crossnobis")
    if cross_validated and runs is None:
        raise UsageError(f"distance {distance!r} is cross-validated across runs and needs "
                         "the run of each sample", path="runs",
                         fix="pass runs=..., or use distance='correlation' or 'euclidean'")
    X, labels, classes, names, runs = _check_samples(
        X, labels, classes, runs if cross_validated else None)
    sums, counts, residual_ss = _cell_sums(X, labels, classes, runs,
                                           with_residuals=distance == "crossnobis")
    if cross_validated:
        weights = None if residual_ss is None else _noise_weights(residual_ss, counts)
        values = _crossvalidated_distances(sums, counts, names, weights)
    else:
        patterns = sums[0] / counts[0][:, None]
        if distance == "euclidean":
            values = squareform(pdist(patterns, "euclidean"))
        else:
            values = _correlation_distances(patterns, names)
    return pd.DataFrame(values, index=names, columns=names)


def _check_measured(n_folds: np.ndarray, names: Sequence[str], why: str, path: str,
                    fix: str) -> None:
    """Refuse an RDM with a pair of classes no fold measured (a 0 in ``n_folds``)."""
    never = np.argwhere(n_folds == 0)
    if never.size:
        first, second = names[never[0][0]], names[never[0][1]]
        raise InputDataError(f"classes {first!r} and {second!r} {why}", path=path, fix=fix)


def fold_averaged_rdm(features_by_fold: Sequence[Any], labels_by_fold: Sequence[Sequence[Any]],
                      classes: Sequence[Any] | None = None, distance: str = "correlation",
                      runs_by_fold: Sequence[Sequence[Any]] | None = None
                      ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """RDM of features that live in one space per fold: one RDM per fold, then their mean.

    Model RDMs of cross-validated networks need this: each held-out sample is
    embedded by the network of its own fold, and the networks of different
    folds share no feature space (their units are arbitrary rotations and
    permutations of one another). Class means pooled across folds would mix
    those spaces; distances computed within one fold do not. Each fold's RDM
    holds the classes present in that fold (2 or more); the entry of a class
    pair is the mean over the folds holding both classes.

    Parameters
    ----------
    features_by_fold : sequence of arrays of shape (n_samples_f, n_features_f)
        Per fold, the features of its samples (the number of features may differ).
    labels_by_fold : sequence of sequences
        Per fold, the class of each sample.
    classes : sequence, optional
        Classes of the result, in order; default: the sorted labels of all folds.
        Samples of other classes are left out.
    distance : str
        One of :data:`DISTANCES` (see :func:`compute_rdm`).
    runs_by_fold : sequence of sequences, optional
        Per fold, the run of each sample; needed by the cross-validated
        distances (and then every fold must span 2 or more runs).

    Returns
    -------
    rdm : pandas.DataFrame
        The fold-averaged RDM.
    n_folds : pandas.DataFrame of int
        How many folds contributed to each entry (diagonal: folds holding the class).

    Raises
    ------
    UsageError
        Unknown distance, or folds, labels and runs of different lengths.
    InputDataError
        As :func:`compute_rdm` for a fold's data; a class without samples in
        any fold, or a pair of classes that no fold holds together.

    Examples
    --------
    >>> fold_1 = np.array([[0.0, 0], [3, 0], [0, 4]])           # classes a, b, c
    >>> fold_2 = np.array([[0.0, 10], [0, 16]])                  # another space: a, b only
    >>> rdm, n_folds = fold_averaged_rdm([fold_1, fold_2], [list("abc"), list("ab")],
    ...                                  distance="euclidean")
    >>> rdm.round(2)
         a    b    c
    a  0.0  4.5  4.0
    b  4.5  0.0  5.0
    c  4.0  5.0  0.0
    >>> n_folds.loc["a"].tolist()
    [2, 2, 1]
    """
    check_choice(distance, "distance", DISTANCES)
    n_given = len(features_by_fold)
    if n_given == 0 or len(labels_by_fold) != n_given or (
            runs_by_fold is not None and len(runs_by_fold) != n_given):
        raise UsageError(f"needs one features matrix, one label sequence (and one run "
                         f"sequence) per fold; got {n_given} features, {len(labels_by_fold)} "
                         f"labels", path="labels_by_fold")
    labels_by_fold = [np.asarray(labels) for labels in labels_by_fold]
    if classes is None:
        classes = list(np.unique(np.concatenate(labels_by_fold)))
    names = [str(c) for c in classes]
    totals = np.zeros((len(names), len(names)))
    n_folds = np.zeros((len(names), len(names)), dtype=np.int64)
    for fold, (features, labels) in enumerate(zip(features_by_fold, labels_by_fold)):
        present = [position for position, cls in enumerate(classes) if np.any(labels == cls)]
        if len(present) < 2:  # a fold with one class holds no pair
            n_folds[present, present] += 1
            continue
        runs = None if runs_by_fold is None else runs_by_fold[fold]
        rdm = compute_rdm(features, labels, [classes[p] for p in present], distance, runs)
        cell = np.ix_(present, present)
        totals[cell] += rdm.to_numpy()
        n_folds[cell] += 1
    missing = np.flatnonzero(np.diag(n_folds) == 0)
    if missing.size:
        raise InputDataError(f"class {names[missing[0]]!r} has no samples in any fold",
                             path="labels_by_fold",
                             fix="leave it out of classes, or check the labels")
    _check_measured(n_folds, names, "never occur in the same fold, so their distance cannot "
                    "be measured in one feature space", "labels_by_fold",
                    "leave one of them out, or use fewer, larger test folds")
    averaged = totals / n_folds
    np.fill_diagonal(averaged, 0.0)
    return (pd.DataFrame(averaged, index=names, columns=names),
            pd.DataFrame(n_folds, index=names, columns=names))


def _check_samples(X: Any, labels: Sequence[Any], classes: Sequence[Any] | None,
                   runs: Sequence[Any] | None):
    """Validated arrays, the classes, their names (str) and the runs."""
    X = np.asarray(X)
    if X.ndim != 2 or not np.issubdtype(X.dtype, np.number):
        raise InputDataError(f"must be a numeric samples x features matrix; got shape "
                             f"{X.shape} of {X.dtype}", path="X")
    labels = np.asarray(labels)
    if labels.shape != (X.shape[0],):
        raise InputDataError(f"has shape {labels.shape}, expected one label for each of the "
                             f"{X.shape[0]} samples", path="labels")
    if runs is not None:
        runs = np.asarray(runs)
        if runs.shape != (X.shape[0],):
            raise InputDataError(f"has shape {runs.shape}, expected one run for each of the "
                                 f"{X.shape[0]} samples", path="runs")
    classes = list(np.unique(labels)) if classes is None else list(classes)
    names = [str(c) for c in classes]
    if len(set(names)) != len(names) or not names:
        raise UsageError(f"must name distinct classes; got {names}", path="classes")
    return X, labels, classes, names, runs


def _cell_sums(X: np.ndarray, labels: np.ndarray, classes: list, runs: np.ndarray | None,
               with_residuals: bool = False):
    """Sums and counts of the samples of each run x class cell, in float64.

    Returns ``sums`` (n_runs, n_classes, n_features), ``counts`` (n_runs,
    n_classes) and, when asked, the residual sum of squares of each feature
    around its cell means (else None). Without runs there is one "run".
    """
    groups = [np.ones(len(labels), bool)] if runs is None else [
        runs == run for run in np.unique(runs)]
    sums = np.zeros((len(groups), len(classes), X.shape[1]))
    counts = np.zeros((len(groups), len(classes)), dtype=np.int64)
    residual_ss = np.zeros(X.shape[1]) if with_residuals else None
    for c, cls in enumerate(classes):
        in_class = labels == cls
        if not in_class.any():
            raise InputDataError(f"class {str(cls)!r} has no samples", path="labels",
                                 fix="leave it out of classes, or check the labels")
        for g, in_group in enumerate(groups):
            rows = np.flatnonzero(in_group & in_class)
            chunks = [rows[start:start + _ROW_CHUNK] for start in range(0, rows.size, _ROW_CHUNK)]
            for chunk in chunks:
                sums[g, c] += X[chunk].sum(axis=0, dtype=np.float64)
            counts[g, c] = rows.size
            if not np.isfinite(sums[g, c]).all():
                raise InputDataError(f"samples of class {str(cls)!r} hold non-finite values "
                                     "(NaN or inf)", path="X",
                                     fix="check the masking and cleaning of the data")
            if residual_ss is not None and rows.size:
                mean = sums[g, c] / rows.size
                for chunk in chunks:
                    residual_ss += ((X[chunk] - mean) ** 2).sum(axis=0)
    return sums, counts, residual_ss


def _correlation_distances(patterns: np.ndarray, names: list[str]) -> np.ndarray:
    """``1 - Pearson r`` between the rows of ``patterns``."""
    centred = patterns - patterns.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(centred, axis=1)
    if (norms == 0).any():
        flat = names[int(np.flatnonzero(norms == 0)[0])]
        raise InputDataError(f"the mean pattern of class {flat!r} is constant, so its "
                             "correlation distance is undefined", path="X",
                             fix="use distance='euclidean', or check the features")
    unit = centred / norms[:, None]
    distances = 1.0 - unit @ unit.T
    distances = (distances + distances.T) / 2
    np.fill_diagonal(distances, 0.0)
    return distances


def _noise_weights(residual_ss: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``1 / residual standard deviation`` of each feature (0 for noiseless features)."""
    dof = int(counts.sum() - np.count_nonzero(counts))
    if dof < 1:
        raise InputDataError("crossnobis needs residuals: every run x class cell has a "
                             "single sample", path="X", fix="use distance='cv_euclidean'")
    variance = residual_ss / dof
    weights = np.zeros_like(variance)
    np.divide(1.0, np.sqrt(variance), out=weights, where=variance > 0)
    if not weights.any():
        raise InputDataError("no feature varies around its run x class means", path="X",
                             fix="use distance='cv_euclidean'")
    return weights


def _crossvalidated_distances(sums: np.ndarray, counts: np.ndarray, names: list[str],
                              weights: np.ndarray | None) -> np.ndarray:
    """Leave-one-run-out cross-validated distances of the class means (see compute_rdm)."""
    n_runs, n_classes, n_features = sums.shape
    if n_runs < 2:
        raise InputDataError(f"cross-validated distances need at least 2 runs; got "
                             f"{n_runs}", path="runs",
                             fix="use distance='correlation' or 'euclidean'")
    total_sums, total_counts = sums.sum(axis=0), counts.sum(axis=0)
    accumulated = np.zeros((n_classes, n_classes))
    n_folds = np.zeros((n_classes, n_classes), dtype=np.int64)
    for run in range(n_runs):
        train_counts = total_counts - counts[run]
        present = np.flatnonzero((counts[run] > 0) & (train_counts > 0))
        test = sums[run, present] / counts[run, present][:, None]
        train = (total_sums[present] - sums[run, present]) / train_counts[present][:, None]
        if weights is not None:
            test, train = test * weights, train * weights
        kernel = train @ test.T
        within = np.diag(kernel)
        cell = np.ix_(present, present)
        accumulated[cell] += within[:, None] + within[None, :] - kernel - kernel.T
        n_folds[cell] += 1
    _check_measured(n_folds, names, "never occur together in a held-out run while also "
                    "occurring in the other runs, so their cross-validated distance is "
                    "undefined", "runs",
                    "leave one of them out, or use a distance that is not cross-validated")
    distances = accumulated / n_folds / n_features
    distances = (distances + distances.T) / 2
    np.fill_diagonal(distances, 0.0)
    return distances


# --------------------------------------------------------------------------- TSV form


def check_rdm(rdm: pd.DataFrame, name: str = "rdm") -> pd.DataFrame:
    """Validate an RDM and return it as a clean float64 copy.

    An RDM is a DataFrame whose index and columns are the same class names in
    the same order; its entries are finite, it is symmetric and its diagonal is
    zero within 1e-8 times max(1, largest absolute entry). The copy has str
    class names, is exactly symmetric (the mean of it and its transpose) and
    has an exactly zero diagonal.

    Parameters
    ----------
    rdm : pandas.DataFrame
        The RDM.
    name : str
        What to call it in error messages (a file name or an RDM name).

    Returns
    -------
    pandas.DataFrame

    Raises
    ------
    InputDataError
        Not a DataFrame, not square, headers not matching the class names,
        duplicate names, non-numeric or non-finite entries, asymmetric, or a
        non-zero diagonal. The message starts with ``name``.

    Examples
    --------
    >>> rdm = pd.DataFrame([[0, 1], [1, 0]], index=["a", "b"], columns=["a", "b"])
    >>> check_rdm(rdm).dtypes.tolist()
    [dtype('float64'), dtype('float64')]
    >>> check_rdm(pd.DataFrame([[0, 1], [2, 0]], index=["a", "b"], columns=["a", "b"]),
    ...           name="model.tsv")
    Traceback (most recent call last):
    ...
    bids_affect.exceptions.InputDataError: model.tsv: the RDM is not symmetric: ...
    """
    fix = "give a square, symmetric matrix with a zero diagonal and the class names as headers"
    if not isinstance(rdm, pd.DataFrame):
        raise InputDataError(f"an RDM must be a pandas DataFrame with the class names as "
                             f"index and columns; got {type(rdm).__name__}", path=name)
    classes = [str(label) for label in rdm.index]
    headers = [str(label) for label in rdm.columns]
    if len(classes) != len(headers):
        raise InputDataError(f"the RDM must be square; got {len(classes)} classes and "
                             f"{len(headers)} columns", path=name, fix=fix)
    if classes != headers:
        raise InputDataError(f"the column headers {headers} do not match the class names "
                             f"{classes}", path=name, fix=fix)
    if len(set(classes)) != len(classes):
        duplicated = sorted({c for c in classes if classes.count(c) > 1})
        raise InputDataError(f"class names are repeated: {duplicated}", path=name, fix=fix)
    try:
        values = rdm.to_numpy(dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise InputDataError(f"the RDM holds non-numeric entries ({error})", path=name,
                             fix=fix) from None
    _check_entries(values, classes, name, fix)
    symmetric = (values + values.T) / 2
    np.fill_diagonal(symmetric, 0.0)
    return pd.DataFrame(symmetric, index=classes, columns=classes)


def _check_entries(values: np.ndarray, classes: list[str], name: str, fix: str) -> None:
    """Finite, symmetric, zero diagonal; else InputDataError naming the first bad entry."""
    bad = np.argwhere(~np.isfinite(values))
    if bad.size:
        row, column = bad[0]
        raise InputDataError(f"the RDM holds non-finite entries, e.g. "
                             f"({classes[row]!r}, {classes[column]!r}) = {values[row, column]}",
                             path=name, fix=fix)
    tolerance = _SYMMETRY_TOLERANCE * max(1.0, float(np.abs(values).max(initial=0.0)))
    diagonal = np.abs(np.diag(values))
    if (diagonal > tolerance).any():
        i = int(np.argmax(diagonal))
        raise InputDataError(f"the RDM's diagonal must be zero; ({classes[i]!r}, "
                             f"{classes[i]!r}) = {values[i, i]}", path=name, fix=fix)
    asymmetry = np.abs(values - values.T)
    if (asymmetry > tolerance).any():
        row, column = np.unravel_index(int(np.argmax(asymmetry)), asymmetry.shape)
        raise InputDataError(f"the RDM is not symmetric: ({classes[row]!r}, "
                             f"{classes[column]!r}) = {values[row, column]} but "
                             f"({classes[column]!r}, {classes[row]!r}) = "
                             f"{values[column, row]}", path=name, fix=fix)


def rdm_to_table(rdm: pd.DataFrame) -> pd.DataFrame:
    """The TSV form of an RDM: a first column ``class``, then one column per class.

    This is what the BIDS-App writes as ``desc-SOURCE_rdm.tsv``
    (``table.to_csv(path, sep="\\t", index=False)``); :func:`read_rdm` reads it back.

    Parameters
    ----------
    rdm : pandas.DataFrame
        An RDM (see :func:`check_rdm`).

    Returns
    -------
    pandas.DataFrame

    Examples
    --------
    >>> rdm = pd.DataFrame([[0, 0.5], [0.5, 0]], index=["fear", "joy"],
    ...                    columns=["fear", "joy"])
    >>> rdm_to_table(rdm)
      class  fear  joy
    0  fear   0.0  0.5
    1   joy   0.5  0.0
    """
    rdm = check_rdm(rdm)
    if "class" in rdm.index:
        raise InputDataError("a class named 'class' would clash with the first column of the "
                             "TSV form", path="rdm", fix="rename that class")
    table = rdm.reset_index(drop=True)
    table.insert(0, "class", list(rdm.index))
    return table


def read_rdm(path: str | os.PathLike) -> pd.DataFrame:
    """Read and validate an RDM in TSV form (:func:`rdm_to_table`).

    Also reads the reference RDMs users give with ``--rsa-reference NAME=PATH``
    (e.g. a valence-arousal model): tab-separated, a first column ``class``
    holding the class names, then one column per class with the same names in
    the same order. The matrix must be square, finite, symmetric and have a zero
    diagonal within 1e-8 (times max(1, largest absolute entry)).

    Parameters
    ----------
    path : str or os.PathLike
        The TSV file.

    Returns
    -------
    pandas.DataFrame
        The RDM (class names as index and columns), as :func:`check_rdm` returns it.

    Raises
    ------
    InputMissingError
        The file does not exist.
    InputDataError
        The file is not such a table; the message starts with its path.

    Examples
    --------
    >>> import tempfile
    >>> rdm = pd.DataFrame([[0, 2, 1], [2, 0, 3], [1, 3, 0]], index=list("abc"),
    ...                    columns=list("abc"))
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = Path(tmp) / "sub-01_task-movie_desc-brain_rdm.tsv"
    ...     rdm_to_table(rdm).to_csv(path, sep="\\t", index=False)
    ...     read_rdm(path).equals(check_rdm(rdm))
    True
    """
    path = Path(path)
    fix = ("write a tab-separated table whose first column 'class' holds the class names, "
           "followed by one column per class with the same names")
    if not path.is_file():
        raise InputMissingError("RDM file not found", path=path,
                                fix="check the path given to --rsa-reference")
    try:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False,
                            na_filter=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise InputDataError(f"cannot be read as a TSV table ({error})", path=path,
                             fix=fix) from None
    if table.columns.empty or table.columns[0] != "class":
        first = table.columns[0] if len(table.columns) else ""
        raise InputDataError(f"the first column must be 'class'; got {first!r}", path=path,
                             fix=fix)
    entries = table.iloc[:, 1:]
    values = entries.apply(lambda column: pd.to_numeric(column.str.strip(), errors="coerce"))
    bad = np.argwhere(values.isna().to_numpy())
    if bad.size:
        row, column = bad[0]
        raise InputDataError(f"entry ({table['class'].iloc[row]!r}, "
                             f"{entries.columns[column]!r}) is not a number: "
                             f"{entries.iat[row, column]!r}", path=path, fix=fix)
    rdm = pd.DataFrame(values.to_numpy(dtype=np.float64), index=table["class"].tolist(),
                       columns=list(entries.columns))
    return check_rdm(rdm, name=str(path))


# --------------------------------------------------------------------------- comparisons


def _align(rdms: Mapping[str, pd.DataFrame], purpose: str = "the Mantel test"
           ) -> tuple[list[str], dict[str, np.ndarray]]:
    """Validate named RDMs and put them in the class order of the first.

    Returns the class names and each RDM's values; a class missing from any
    RDM, or fewer than 3 classes (``purpose`` says what needs them), raise
    InputDataError.
    """
    checked = {name: check_rdm(rdm, name=name) for name, rdm in rdms.items()}
    reference_name, reference = next(iter(checked.items()))
    classes = list(reference.index)
    for name, rdm in checked.items():
        for lacking, having, other in ((name, reference_name, set(classes) - set(rdm.index)),
                                       (reference_name, name, set(rdm.index) - set(classes))):
            if other:
                raise InputDataError(f"RDM {lacking!r} has no class {sorted(other)[0]!r}, "
                                     f"which RDM {having!r} has; RDMs are compared by class "
                                     "name and need the same classes", path=lacking,
                                     fix="compute both RDMs on the same classes")
    if len(classes) < 3:
        raise InputDataError(f"{purpose} needs at least 3 classes; got {len(classes)} "
                             f"({', '.join(classes)})", path=", ".join(checked),
                             fix="compare RDMs of 3 or more classes")
    # C order: the permutation kernels read rows of these matrices.
    return classes, {name: np.ascontiguousarray(rdm.loc[classes, classes].to_numpy())
                     for name, rdm in checked.items()}


@fill_doc
def compare_rdms(a: pd.DataFrame, b: pd.DataFrame, method: str = "spearman") -> float:
    """Correlation of the upper triangles of two RDMs, aligned by class name.

    Parameters
    ----------
    a, b : pandas.DataFrame
        RDMs with the same classes in any order (:func:`check_rdm`).
    %(method)s

    Returns
    -------
    float
        The correlation; NaN (with a RuntimeWarning) when an RDM's entries are
        all equal. This is not a test: see :func:`mantel_test`.

    Raises
    ------
    InputDataError
        Invalid RDMs, a class missing from one of them, or fewer than 3 classes.

    Examples
    --------
    >>> a = pd.DataFrame([[0, 1, 2], [1, 0, 3], [2, 3, 0]], index=list("abc"),
    ...                  columns=list("abc"))
    >>> b = a.loc[["c", "a", "b"], ["c", "a", "b"]] * 10  # same RDM, other order and scale
    >>> round(compare_rdms(a, b, "pearson"), 12)
    1.0
    """
    check_choice(method, "method", METHODS)
    _, (a_values, b_values) = _aligned_pair(a, b, "comparing RDMs")
    a_vector, b_vector = upper_triangle(a_values), upper_triangle(b_values)
    if np.ptp(a_vector) == 0 or np.ptp(b_vector) == 0:
        constant_warning(("a", "b"))
        return float("nan")
    return correlate(a_vector, b_vector, method)


def _aligned_pair(a: pd.DataFrame, b: pd.DataFrame, purpose: str = "the Mantel test"):
    classes, values = _align({"a": a, "b": b}, purpose)
    return classes, (values["a"], values["b"])


# --------------------------------------------------------------------------- Mantel test


# --------------------------------------------------------------------------- Mantel test


@fill_doc
def mantel_test(a: pd.DataFrame, b: pd.DataFrame, method: str = "pearson",
                n_permutations: int = 10000, alternative: str = "greater",
                exact: bool | None = None, random_state: Any = None, n_jobs: int = 1
                ) -> MantelResult:
    """Mantel test of the correlation of two RDMs.

    The null distribution permutes the rows and columns of ``a`` together (the
    class labels of one RDM are shuffled) and recomputes the correlation of the
    upper triangles. With ``k`` classes there are ``k!`` permutations; up to
    ``k = 8`` (40,320) all are enumerated and ``p`` is the exact fraction whose
    statistic is at least as extreme, the identity included (5 classes: 120
    permutations, so ``p >= 1/120``). Above, ``n_permutations`` random ones
    give ``p = (1 + #extreme) / (1 + n_permutations)`` as in scikit-bio, whose
    ``mantel`` this equals for Pearson and Spearman (the same statistic, and
    with the same integer seed the same permutations and p-value).

    Speed: the upper-triangle indices are computed once; Spearman ranks once
    (the ranks of a permuted RDM are the permuted ranks); each permuted
    statistic is the dot product of the permuted, centred and normalised upper
    triangle of ``a`` with that of ``b``, in batches (a matrix-vector product),
    so memory stays bounded. For large tests (over 1e8 permuted entries, e.g.
    1,000 classes) numpy's gather is the bottleneck and a compiled numba kernel
    fuses gather and product (numba comes with umap-learn; without it numpy runs).
    Kendall's tau-a has no such shortcut: above 25 classes each permutation
    costs a sort of the ``k (k - 1) / 2`` entries (about 0.3 s at 1,000 classes).

    Parameters
    ----------
    a, b : pandas.DataFrame
        RDMs with the same classes in any order, at least 3 (:func:`check_rdm`).
    %(method)s
    %(permutation_test)s

    Returns
    -------
    MantelResult

    Raises
    ------
    UsageError
        Unknown method or alternative, a negative ``n_permutations``, or
        ``exact=True`` with more than 10 classes.
    InputDataError
        Invalid RDMs, a class missing from one of them, or fewer than 3 classes.

    Examples
    --------
    >>> points = np.array([[0.0], [1.0], [3.0], [7.0], [15.0]])
    >>> names = ["anger", "fear", "joy", "love", "sadness"]
    >>> a = pd.DataFrame(squareform(pdist(points)), index=names, columns=names)
    >>> b = a ** 2
    >>> result = mantel_test(a, b)
    >>> round(result.statistic, 3), round(result.p_value, 4), result.n_permutations
    (0.974, 0.0083, 120)
    >>> mantel_test(a, b, n_permutations=999, exact=False, random_state=0).n_permutations
    999
    """
    check_choice(method, "method", METHODS)
    _, (a_values, b_values) = _aligned_pair(a, b)
    return mantel(a_values, b_values, method, n_permutations, alternative, exact,
                   random_state, n_jobs, names=("a", "b"))


# --------------------------------------------------------------------------- tables


@fill_doc
def compare_rdms_table(rdms: Mapping[str, pd.DataFrame], methods: Sequence[str] = ("spearman",),
                       n_permutations: int = 10000, alternative: str = "greater",
                       exact: bool | None = None, random_state: Any = None, n_jobs: int = 1,
                       shared_classes: bool = False) -> pd.DataFrame:
    """Mantel tests of every pair of named RDMs: the table ``desc-rsa_statistics.tsv``.

    Parameters
    ----------
    rdms : mapping of str to pandas.DataFrame
        RDMs by name (``brain``, ``brainAmygdala``, ``cnnneuro120fpfc``, a
        reference name...), all with the same classes (in any order), at least 3
        (see ``shared_classes``). Pairs follow the mapping's order: (first,
        second), (first, third)...
    methods : sequence of str
        Correlations to test, each a key of :data:`METHODS`.
    %(permutation_test)s
    shared_classes : bool
        False: every RDM must hold the same classes. True: each pair is
        compared on the classes both RDMs hold (at least 3), e.g. a reference
        RDM of other classes than the data's (:func:`shared_class_names`).

    Returns
    -------
    pandas.DataFrame
        One row per pair and method, columns :data:`TABLE_COLUMNS`: ``rdm_a``,
        ``rdm_b``, ``method``, ``r`` (the correlation), ``p`` (Mantel p-value),
        ``n_permutations`` (``k!`` when exact) and ``exact``. The test permutes
        ``rdm_a``. One generator made from ``random_state`` serves the tests in turn.

    Raises
    ------
    UsageError, InputDataError
        As :func:`mantel_test`; messages name the RDM at fault.

    Examples
    --------
    >>> names = ["anger", "fear", "joy", "love", "sadness"]
    >>> rng = np.random.default_rng(0)
    >>> brain = pd.DataFrame(squareform(pdist(rng.normal(size=(5, 2)))), names, names)
    >>> valence = pd.DataFrame(squareform(pdist(rng.normal(size=(5, 1)))), names, names)
    >>> table = compare_rdms_table({"brain": brain, "model": brain ** 2, "valence": valence})
    >>> table[["rdm_a", "rdm_b", "method", "n_permutations", "exact"]]
       rdm_a    rdm_b    method  n_permutations  exact
    0  brain    model  spearman             120   True
    1  brain  valence  spearman             120   True
    2  model  valence  spearman             120   True
    """
    methods = (methods,) if isinstance(methods, str) else tuple(methods)
    if not methods:
        raise UsageError("no comparison method given", path="methods",
                         fix=f"use some of {', '.join(METHODS)}")
    for method in methods:
        check_choice(method, "methods", METHODS)
    rows = []
    if len(rdms) >= 2:
        checked = {name: check_rdm(rdm, name=name) for name, rdm in rdms.items()}
        if not shared_classes:
            _align(checked)  # the same classes everywhere, else a message naming the RDM
        rng = np.random.default_rng(random_state)
        for name_a, name_b in itertools.combinations(checked, 2):
            shared = shared_class_names(checked, name_a, name_b)
            _, values = _align({name: checked[name].loc[shared, shared]
                                for name in (name_a, name_b)})
            for method in methods:
                result = mantel(values[name_a], values[name_b], method, n_permutations,
                                 alternative, exact, rng, n_jobs, names=(name_a, name_b))
                rows.append((name_a, name_b, method, result.statistic, result.p_value,
                             result.n_permutations, result.exact))
    table = pd.DataFrame(rows, columns=list(TABLE_COLUMNS))
    return table.astype({"rdm_a": str, "rdm_b": str, "method": str, "r": float, "p": float,
                         "n_permutations": int, "exact": bool})


def shared_class_names(rdms: Mapping[str, pd.DataFrame], name_a: str, name_b: str
                       ) -> list[str]:
    """Classes that RDMs ``name_a`` and ``name_b`` both hold, in a fixed order.

    The order is that of the classes' first appearance over ``rdms`` (the
    first RDM's order when all hold the same classes), so a pair's Monte Carlo
    permutations do not depend on which of its RDMs lists the classes.

    Examples
    --------
    >>> rdm = lambda names: pd.DataFrame(0.0, index=list(names), columns=list(names))
    >>> shared_class_names({"brain": rdm("abcd"), "valence": rdm("dcbx")}, "brain", "valence")
    ['b', 'c', 'd']
    """
    order = dict.fromkeys(str(c) for rdm in rdms.values() for c in rdm.index)
    held_a = {str(c) for c in rdms[name_a].index}
    held_b = {str(c) for c in rdms[name_b].index}
    return [c for c in order if c in held_a and c in held_b]


# --------------------------------------------------------------------------- model RDMs

#: Distances a model RDM can use: its folds' held-out samples come from one run (or
#: block), so the distances cross-validated across runs fall back to correlation.
MODEL_RDM_DISTANCES = ("correlation", "euclidean")

#: Samples a network embeds per forward pass when a model RDM is built.
_EMBED_BATCH = 32


def penultimate_features(network: Any, volumes: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """A CNN's penultimate features of ``volumes[rows]``, a batch at a time.

    ``network`` is a :class:`~bids_affect.models.cnn3d.VolumeClassifier` in eval mode.
    """
    import torch

    batches = []
    with torch.no_grad():
        for start in range(0, len(rows), _EMBED_BATCH):
            batch = torch.from_numpy(np.asarray(volumes[rows[start:start + _EMBED_BATCH]]))
            batches.append(network.embed(batch[:, None]).numpy())
    return np.concatenate(batches)


def model_rdm(model: str, networks: Sequence[Any], volumes: np.ndarray,
              predictions: pd.DataFrame, classes: Sequence[str], distance: str
              ) -> tuple[str, pd.DataFrame, dict[str, Any]]:
    """A CNN decoder's model RDM, its name and what its sidecar says.

    Each fold's network embeds the samples that fold held out (penultimate
    features); one RDM per fold in that network's own feature space, averaged
    over folds (:func:`fold_averaged_rdm`).

    Parameters
    ----------
    model : str
        The decoder's name.
    networks : sequence
        Each fold's network, in fold order.
    volumes : ndarray
        Every sample volume (``predictions["sample"]`` indexes it).
    predictions : pandas.DataFrame
        Test-fold predictions with columns ``sample``, ``fold`` (from 1) and ``true``.
    classes : sequence of str
        Classes of the data (the RDM holds those the decoder saw).
    distance : str
        Requested distance; a cross-validated one falls back to correlation.
    """
    features, labels = [], []
    for fold, rows in predictions.groupby("fold", sort=True):
        features.append(penultimate_features(networks[int(fold) - 1], volumes,
                                             rows["sample"].to_numpy()))
        labels.append(rows["true"].astype(str).to_numpy())
    decoded = set(predictions["true"].astype(str))
    used = distance if distance in MODEL_RDM_DISTANCES else "correlation"
    rdm, n_folds = fold_averaged_rdm(features, labels, [c for c in classes if c in decoded],
                                     distance=used)
    details = {
        "Description": f"RDM of the {MODEL_RDM_LAYER} features of {model}: per "
                       "cross-validation fold, the fold's network on the samples it held "
                       "out (one feature space per network), averaged over folds",
        "Distance": used, "Model": model,
        "FoldsPerPair": {"classes": list(n_folds.index),
                         "counts": n_folds.to_numpy().tolist()}}
    if used != distance:
        details["DistanceNote"] = (f"{distance} is cross-validated across runs, and a fold's "
                                   "held-out samples come from one run or block: this RDM "
                                   f"uses {used}")
    return model_rdm_name(model), rdm, details


def reference_rdms(references: Mapping[str, str | os.PathLike], classes: Sequence[str]
                   ) -> dict[str, tuple[pd.DataFrame, dict[str, Any]]]:
    """Reference RDMs by output name, with what their sidecars say.

    A reference with other classes than the data's is compared on the shared
    ones (a warning says which); fewer than 3 shared classes is an error.
    """
    found = {}
    for name, path in references.items():
        rdm = read_rdm(path)
        shared = [c for c in rdm.index if c in classes]
        if len(shared) < 3:
            raise InputDataError(
                f"reference RDM {name!r} shares {len(shared)} classes with the data "
                f"({', '.join(shared) or 'none'}); comparing RDMs needs 3 or more",
                path=path, fix=f"give an RDM of the data's classes ({', '.join(classes)})")
        if len(shared) < len(rdm.index) or len(shared) < len(classes):
            LOGGER.warning("Reference RDM %r (%s) holds classes %s and the data %s; "
                           "comparisons with it use the %d shared classes: %s.", name, path,
                           ", ".join(rdm.index), ", ".join(classes), len(shared),
                           ", ".join(shared))
        found[desc_label(name)] = (rdm, {
            "Description": f"Reference RDM {name!r}, as given", "Distance": "as given",
            "Reference": Path(path).name, "SharedClasses": shared})
    return found
