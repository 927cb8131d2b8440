"""Fitting decoders fold by fold: test-fold predictions, and the leakage audit.

Examples
--------
>>> from bids_affect.decoding.estimators import make_decoder
>>> X = np.r_[np.zeros((10, 2)), np.ones((10, 2))] + np.arange(20)[:, None] * 1e-3
>>> y = np.repeat([0, 1], 10)
>>> splits = [(np.r_[0:5, 10:15], np.r_[5:10, 15:20]), (np.r_[5:10, 15:20], np.r_[0:5, 10:15])]
>>> fit = cross_validate(lambda fold, n: make_decoder("ridge", n_features=2), X, y, splits, 2)
>>> fit.predicted.tolist() == y.tolist()
True
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import StratifiedShuffleSplit

from bids_affect.decoding.estimators import softmax_of_decision
from bids_affect.decoding.metrics import pooled_balanced_accuracy
from bids_affect.exceptions import InputDataError
from bids_affect.progress import context as progress_context

__all__ = ["FoldPredictions", "cross_validate", "random_split_score"]

LOGGER = logging.getLogger("bids_affect.decoding")


@dataclass
class FoldPredictions:
    """Test-fold predictions of one cross-validation."""

    proba: np.ndarray          # (n_samples, n_classes), class order of ``classes``
    predicted: np.ndarray      # (n_samples,) class indices
    fold: np.ndarray           # (n_samples,) fold of each sample
    estimators: list[Any] = field(default_factory=list)
    folds: list[dict[str, Any]] = field(default_factory=list)
    #: (n_samples, n_classes) decision values (NaN: a class the fold model lacks), or None.
    decision: np.ndarray | None = None


def _scores(estimator, X: np.ndarray, n_classes: int) -> np.ndarray:
    """Class probabilities in the order ``0..n_classes-1`` (absent classes: 0).

    Every decoder of :func:`make_decoder` has ``predict_proba`` (for ridge and
    SVM, the uncalibrated :func:`softmax_of_decision`); other estimators fall
    back to the softmax of their decision values.
    """
    present = np.asarray(estimator.classes_, int)
    if hasattr(estimator, "predict_proba"):
        proba = estimator.predict_proba(X)
    else:
        proba = softmax_of_decision(estimator.decision_function(X))
    full = np.zeros((len(X), n_classes))
    full[:, present] = proba
    return full


def _decisions(estimator, X: np.ndarray, n_classes: int) -> np.ndarray:
    """Decision values in the order ``0..n_classes-1`` (a class the model lacks: NaN).

    A binary decoder's single value ``d`` (the second class's score minus the
    first's) counts as ``[-d, d]``, as :func:`softmax_of_decision` reads it.
    """
    present = np.asarray(estimator.classes_, int)
    decision = np.asarray(estimator.decision_function(X), dtype=np.float64)
    if decision.ndim == 1:
        decision = np.column_stack([-decision, decision])
    full = np.full((len(X), n_classes), np.nan)
    full[:, present] = decision
    return full


def _class_names(codes: Sequence[int], class_names: Sequence[str] | None) -> list:
    return [str(class_names[c]) for c in codes] if class_names else [int(c) for c in codes]


def cross_validate(make_estimator: Callable[[int, int], Any], X: np.ndarray, y: np.ndarray,
                   splits: Sequence[tuple[np.ndarray, np.ndarray]], n_classes: int, *,
                   runs: np.ndarray | None = None, fold_names: Sequence[str] | None = None,
                   keep_estimators: bool = True, fit_groups: bool = False,
                   class_names: Sequence[str] | None = None,
                   warn: bool = True, decisions: bool = False) -> FoldPredictions:
    """Fit a fresh estimator per fold and predict its test samples.

    Parameters
    ----------
    make_estimator : callable
        ``make_estimator(fold, n_train)`` returns a fresh, unfitted estimator.
    X : ndarray
        Samples (2D for linear decoders, 4D volumes for CNNs); a memmap is fine.
    y : ndarray of int
        Class index of each sample.
    splits : list of (train, test)
        Index arrays.
    n_classes : int
        Number of classes (probability columns).
    runs : ndarray, optional
        Run of each sample, passed to ``fit`` as ``groups`` when ``fit_groups``.
    class_names : sequence of str, optional
        Name of each class index, for the fold records and warnings.
    decisions : bool
        Also keep each test sample's decision values (``decision``).

    A class absent from a fold's training samples cannot be predicted by that
    fold's model: its probability is 0 and its test samples count as errors
    (the fold's record lists it by name in ``missing_classes``, and a warning
    is logged). A CNN whose inner validation block (the end of each run) holds
    every training sample of a class treats that class the same way
    (``untrained_classes_`` of
    :class:`~bids_affect.models.classifier.CNN3DClassifier`).
    """
    n = len(y)
    proba = np.zeros((n, n_classes))
    fold_of = np.full(n, -1)
    result = FoldPredictions(proba, np.zeros(n, int), fold_of,
                             decision=np.full((n, n_classes), np.nan) if decisions else None)
    for k, (train, test) in enumerate(splits):
        absent = sorted(set(range(n_classes)) - set(np.unique(y[train]).tolist()))
        name = fold_names[k] if fold_names is not None else f"fold-{k + 1}"
        if len(np.unique(y[train])) < 2:
            raise InputDataError(f"training set of {name} holds fewer than 2 classes",
                                 fix="use more runs or another cross-validation scheme")
        if absent and warn:
            LOGGER.warning("%s: classes %s are absent from the training samples; that fold "
                           "cannot predict them and their test samples count as errors.",
                           name, _class_names(absent, class_names))
        estimator = make_estimator(k, len(train))
        with warnings.catch_warnings(), progress_context(f"test {name}"):
            warnings.simplefilter("ignore", ConvergenceWarning)
            # The CNN's own warning names class codes; the one below names classes.
            warnings.filterwarnings("ignore", message=".*no training sample once.*")
            if fit_groups and runs is not None:
                estimator.fit(X[train], y[train], groups=runs[train])
            else:
                estimator.fit(X[train], y[train])
        untrained = sorted(int(c) for c in getattr(estimator, "untrained_classes_", ()))
        if untrained and warn:
            LOGGER.warning("%s: classes %s have training samples only in the CNN's inner "
                           "validation block (the end of each run); that fold cannot "
                           "predict them and their test samples count as errors.",
                           name, _class_names(untrained, class_names))
        proba[test] = _scores(estimator, X[test], n_classes)
        if result.decision is not None:
            result.decision[test] = _decisions(estimator, X[test], n_classes)
        fold_of[test] = k
        result.folds.append({"fold": k + 1, "test": name, "n_train": int(len(train)),
                             "n_test": int(len(test)),
                             "missing_classes": _class_names(sorted({*absent, *untrained}),
                                                             class_names)})
        if keep_estimators:
            result.estimators.append(estimator)
    tested = fold_of >= 0
    result.predicted = np.where(tested, proba.argmax(axis=1), -1)
    return result


def random_split_score(make_estimator, X: np.ndarray, y: np.ndarray, n_classes: int,
                       random_state=None) -> float:
    """Leakage audit: balanced accuracy with the peers' random 80/20 split of volumes.

    Neighbouring volumes of one scene land on both sides of such a split, so
    this score is inflated on autocorrelated data; it is reported, never used.
    """
    splitter = StratifiedShuffleSplit(n_splits=1, test_size=0.2, random_state=random_state)
    train, test = next(splitter.split(np.zeros(len(y)), y))
    fit = cross_validate(make_estimator, X, y, [(train, test)], n_classes,
                         fold_names=["random 80/20 split (leakage audit)"],
                         keep_estimators=False, warn=False)
    return pooled_balanced_accuracy(y[test], fit.predicted[test])
