"""Within-subject emotion decoding with honest cross-validation.

Decoders are scikit-learn estimators built fresh for each fit from a table of
names (:func:`make_decoder`): linear pipelines (scaling, optional ANOVA or PCA
reduction, then ridge, logistic regression or a linear SVM, all fitted inside
the training folds) and 3D CNNs (:class:`~bids_affect.models.classifier.CNN3DClassifier`).

Cross-validation splits by run (:class:`LeaveOneRunOut`) or, for single-run
data, by contiguous blocks with a gap in seconds (:class:`BlockedKFold`).
Random splits of volumes are never used for scores; they appear only in the
leakage audit (``random_split_balanced_accuracy``), which shows how much the
peers' random 80/20 split of volumes inflates a score.

Significance comes from a permutation test whose null keeps the temporal
structure of the labels: the sequence of labels of each run is shifted
circularly (by at least a tenth of the run), the whole cross-validation is
repeated, and the balanced accuracy is recorded. For ridge decoders the null
needs no refits: the predictions are linear in the training labels, so each
fold's hat matrix is computed once and applied to every permuted label matrix.

Examples
--------
>>> rng = np.random.default_rng(0)
>>> runs = np.repeat([1, 2, 3], 40)
>>> y = np.tile(np.repeat(["a", "b"], 20), 3)
>>> X = rng.normal(size=(120, 30)).astype(np.float32)
>>> X[y == "a", :5] += 1.0
>>> result = decode(X, y, runs, model="ridge", n_permutations=50, random_state=0)
>>> result.metrics["balanced_accuracy"] > 0.8, result.metrics["p_permutation"] < 0.05
(True, True)
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from joblib import Parallel, delayed
from scipy import linalg
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.feature_selection import SelectPercentile, f_classif
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import (
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)
from sklearn.model_selection import BaseCrossValidator, StratifiedShuffleSplit
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from bids_affect.exceptions import InputDataError, UsageError
from bids_affect.progress import Progress
from bids_affect.progress import context as progress_context

LOGGER = logging.getLogger("bids_affect.decoding")

class BalancedRidgeClassifier(ClassifierMixin, BaseEstimator):
    """Ridge classifier with class-balanced targets and no class prior.

    :class:`~sklearn.linear_model.RidgeClassifier` regresses one-hot (±1) targets
    and adds to each class's score the mean of its training targets, i.e. the
    class's frequency in the training folds. With leave-one-run-out on the scenes
    of a movie that frequency is anti-correlated with the class's frequency in the
    test run, and on data without signal the balanced accuracy falls well below
    ``1 / n_classes`` (anti-learning; 0.13 for 5 classes in our simulations).
    Here the one-hot target of class ``c`` is divided by ``sqrt(n_c)``, its number
    of training samples, so every class's weight vector has the same expected norm
    under the null, and the scores carry no prior term: the null then centres on
    ``1 / n_classes`` (0.20) and planted signal is found with more power. The
    scores stay linear in the one-hot labels for fixed class counts, which circular
    shifts keep, so the permutation shortcut of :func:`ridge_null` holds.

    Parameters
    ----------
    alpha : float
        Ridge penalty.

    Examples
    --------
    >>> X = np.array([[0.0], [0.1], [1.0], [1.1], [1.2], [0.9]])
    >>> clf = BalancedRidgeClassifier(alpha=1e-3).fit(X, ["a", "a", "b", "b", "b", "b"])
    >>> clf.predict([[0.3], [0.8]]).tolist()
    ['a', 'b']
    """

    def __init__(self, alpha: float = 1.0):
        self.alpha = alpha

    def fit(self, X, y):
        """Fit one ridge regression on the class-balanced, centred one-hot targets."""
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32])
        check_classification_targets(y)
        self.classes_, codes = np.unique(y, return_inverse=True)
        targets = balanced_targets(np.eye(len(self.classes_))[codes])
        self.ridge_ = Ridge(alpha=self.alpha).fit(X, targets)
        self.prior_ = targets.mean(axis=0)
        return self

    def decision_function(self, X):
        """Scores per class (for two classes, the second's minus the first's)."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        scores = self.ridge_.predict(X) - self.prior_
        return scores[:, 1] - scores[:, 0] if len(self.classes_) == 2 else scores

    def predict(self, X):
        """The class with the highest score."""
        scores = self.decision_function(X)
        index = (scores > 0).astype(int) if scores.ndim == 1 else scores.argmax(axis=1)
        return self.classes_[index]

    def predict_proba(self, X):
        """Softmax of the decision values (:func:`softmax_of_decision`); not calibrated."""
        return softmax_of_decision(self.decision_function(X))


class SoftmaxLinearSVC(LinearSVC):
    """:class:`~sklearn.svm.LinearSVC` with ``predict_proba``: softmax of its decision values.

    The values are scores, not calibrated probabilities (:func:`softmax_of_decision`);
    they rank samples as the decision function does, which is what the AUCs need.

    Examples
    --------
    >>> X = np.array([[0.0], [0.2], [1.0], [1.2]])
    >>> SoftmaxLinearSVC().fit(X, [0, 0, 1, 1]).predict_proba(X).shape
    (4, 2)
    """

    def predict_proba(self, X):
        """Softmax of the decision values, columns in the order of ``classes_``."""
        return softmax_of_decision(self.decision_function(X))


def softmax_of_decision(decision: np.ndarray) -> np.ndarray:
    """Softmax over classes of decision values; ``d`` of a binary decoder counts as ``[-d, d]``.

    This is what the ridge and SVM decoders report as ``prob_CLASS``: it sums to 1
    and keeps the ranking of the decision values, but it is not calibrated (a
    probability of 0.9 does not mean that 90% of such samples are right).

    Examples
    --------
    >>> softmax_of_decision(np.array([0.0, np.log(3) / 2])).round(2).tolist()
    [[0.5, 0.5], [0.25, 0.75]]
    """
    decision = np.asarray(decision, dtype=np.float64)
    if decision.ndim == 1:
        decision = np.column_stack([-decision, decision])
    decision = decision - decision.max(axis=1, keepdims=True)
    proba = np.exp(decision)
    return proba / proba.sum(axis=1, keepdims=True)


def balanced_targets(onehot: np.ndarray) -> np.ndarray:
    """One-hot targets (``(..., n_samples, n_classes)``) divided by ``sqrt`` of class counts.

    Examples
    --------
    >>> balanced_targets(np.eye(2)[[0, 0, 0, 0, 1]]).round(2).tolist()
    [[0.5, 0.0], [0.5, 0.0], [0.5, 0.0], [0.5, 0.0], [0.0, 1.0]]
    """
    counts = onehot.sum(axis=-2, keepdims=True)
    return onehot / np.sqrt(np.maximum(counts, 1))


#: Linear classifiers by name; each entry builds a fresh, unfitted classifier. The
#: penalties scale with the number of features (ridge alpha = p, C = 1/p): on z-scored
#: voxels the squared norm of a sample grows with p, and so does the Gram matrix.
LINEAR_CLASSIFIERS: dict[str, Callable[[int, int | None], Any]] = {
    "ridge": lambda n_features, seed: BalancedRidgeClassifier(alpha=float(max(n_features, 1))),
    "logreg": lambda n_features, seed: LogisticRegression(
        C=1.0 / max(n_features, 1), max_iter=1000, class_weight="balanced",
        random_state=seed),
    "svm": lambda n_features, seed: SoftmaxLinearSVC(
        C=1.0 / max(n_features, 1), class_weight="balanced", dual="auto", max_iter=5000,
        random_state=seed),
}

#: Optional feature reduction inside the folds, by suffix (``logreg-pca``).
REDUCTIONS = {
    "anova": lambda n_features, n_samples: SelectPercentile(f_classif, percentile=10),
    "pca": lambda n_features, n_samples: PCA(n_components=min(100, n_features, n_samples - 1),
                                             svd_solver="full"),
}

#: Reduction -> number of features it leaves (for the ridge penalty).
_REDUCED_FEATURES = {
    None: lambda n_features, n_samples: n_features,
    "anova": lambda n_features, n_samples: max(1, int(np.ceil(n_features * 0.1))),
    "pca": lambda n_features, n_samples: min(100, n_features, n_samples - 1),
}

CNN_PREFIX = "cnn-"


def _parse_model(name: str) -> tuple[str, str | None]:
    base, _, reduction = name.partition("-")
    return base, (reduction or None)


def list_models() -> list[str]:
    """Every decoder name ``--models`` accepts (CNNs from the architecture registry)."""
    from bids_affect.models.cnn3d import list_architectures

    names = []
    for base in LINEAR_CLASSIFIERS:
        names.append(base)
        names.extend(f"{base}-{reduction}" for reduction in REDUCTIONS)
    names.extend(CNN_PREFIX + arch for arch in list_architectures())
    return names


def is_cnn(name: str) -> bool:
    """Whether decoder ``name`` is a 3D CNN (it reads volumes, not voxel vectors)."""
    return name.startswith(CNN_PREFIX)


def check_models(names: Sequence[str]) -> list[str]:
    """Validated, de-duplicated decoder names; unknown ones raise :class:`UsageError`."""
    known = list_models()
    models = [name.strip().lower() for name in names if name.strip()]
    if not models:
        raise UsageError("--models is empty", fix=f"use some of {', '.join(known)}")
    for name in models:
        if name not in known:
            raise UsageError(f"--models: {name!r} is unknown",
                             fix=f"use one of {', '.join(known)}")
    return list(dict.fromkeys(models))


def make_decoder(name: str, *, n_features: int | None = None, n_samples: int | None = None,
                 random_state: int | None = None, cnn_params: dict[str, Any] | None = None):
    """A fresh, unfitted decoder of name ``name`` (see :func:`list_models`).

    Parameters
    ----------
    name : str
        ``ridge``, ``logreg``, ``svm``, optionally suffixed ``-anova`` or ``-pca``;
        or ``cnn-<architecture>``.
    n_features, n_samples : int, optional
        Size of the training data (the ridge penalty and the PCA size follow them).
    random_state : int, optional
        Seed of the decoder.
    cnn_params : dict, optional
        Keyword arguments of :class:`~bids_affect.models.classifier.CNN3DClassifier`.

    Examples
    --------
    >>> make_decoder("logreg-pca", n_features=500, n_samples=200).steps[1][0]
    'pca'
    """
    check_models([name])
    if is_cnn(name):
        from bids_affect.models.classifier import CNN3DClassifier

        return CNN3DClassifier(architecture=name[len(CNN_PREFIX):], random_state=random_state,
                               **(cnn_params or {}))
    base, reduction = _parse_model(name)
    n_features = int(n_features or 1)
    n_samples = int(n_samples or n_features + 1)
    steps = [("scale", StandardScaler())]
    if reduction:
        steps.append((reduction, REDUCTIONS[reduction](n_features, n_samples)))
    reduced = _REDUCED_FEATURES[reduction](n_features, n_samples)
    steps.append(("classifier", LINEAR_CLASSIFIERS[base](reduced, random_state)))
    return Pipeline(steps)


# --------------------------------------------------------------------------- splitters


class LeaveOneRunOut(BaseCrossValidator):
    """Each run in turn is the test set; ``groups`` gives the run of each sample.

    Examples
    --------
    >>> [test.tolist() for _, test in LeaveOneRunOut().split(np.zeros(4), groups=[1, 1, 2, 2])]
    [[0, 1], [2, 3]]
    """

    def get_n_splits(self, X=None, y=None, groups=None) -> int:
        if groups is None:
            raise ValueError("LeaveOneRunOut needs groups (the run of each sample)")
        return len(np.unique(np.asarray(groups)))

    def _iter_test_indices(self, X=None, y=None, groups=None):
        if groups is None:
            raise ValueError("LeaveOneRunOut needs groups (the run of each sample)")
        groups = np.asarray(groups)
        if len(np.unique(groups)) < 2:
            raise UsageError("leave-one-run-out needs at least 2 runs, got 1",
                             path="--cv", fix="use --cv blocked for single-run data")
        _, first = np.unique(groups, return_index=True)
        for run in groups[np.sort(first)]:
            yield np.flatnonzero(groups == run)


class BlockedKFold(BaseCrossValidator):
    """K contiguous blocks in time; training drops samples within ``gap`` of the test block.

    Parameters
    ----------
    n_splits : int
        Number of blocks (folds), at least 2.
    gap : float
        Seconds on each side of a test block whose samples are left out of training,
        so that no training volume neighbours a test volume in time.

    ``groups`` in :meth:`split` holds each sample's acquisition time in seconds,
    increasing in sample order (use :func:`acquisition_clock` to keep several
    runs apart); without it the sample index is the time.

    Examples
    --------
    >>> cv = BlockedKFold(n_splits=2, gap=2)
    >>> [(tr.tolist(), te.tolist()) for tr, te in cv.split(np.zeros(8))]
    [([6, 7], [0, 1, 2, 3]), ([0, 1], [4, 5, 6, 7])]
    """

    def __init__(self, n_splits: int = 5, gap: float = 30.0):
        if int(n_splits) < 2:
            raise UsageError(f"BlockedKFold needs n_splits >= 2, got {n_splits}",
                             path="--cv-folds")
        if gap < 0:
            raise UsageError(f"BlockedKFold needs gap >= 0, got {gap}", path="--cv-gap")
        self.n_splits = n_splits
        self.gap = gap

    def get_n_splits(self, X=None, y=None, groups=None) -> int:
        return int(self.n_splits)

    def _iter_test_indices(self, X=None, y=None, groups=None):
        n_samples = len(X) if X is not None else len(groups)
        if n_samples < self.n_splits:
            raise InputDataError(f"{n_samples} samples cannot make {self.n_splits} blocks",
                                 path="--cv-folds", fix="use fewer folds or more data")
        yield from np.array_split(np.arange(n_samples), self.n_splits)

    def split(self, X, y=None, groups=None):
        n_samples = len(X)
        times = np.arange(n_samples, dtype=float) if groups is None else np.asarray(groups,
                                                                                    float)
        if np.any(np.diff(times) < 0):
            raise ValueError("BlockedKFold needs times that increase in sample order")
        for test in self._iter_test_indices(X, y, groups):
            start, stop = times[test[0]] - self.gap, times[test[-1]] + self.gap
            train = np.flatnonzero((times < start) | (times > stop))
            yield train, test


def acquisition_clock(run_index: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Sample times made increasing across runs, for :class:`BlockedKFold` only.

    Runs are placed a million seconds apart, so a gap never spans two runs.
    (Labels never use this clock: each run's annotations are relative to its start.)
    """
    return np.asarray(run_index, float) * 1e6 + np.asarray(times, float)


def make_cv(cv: str, runs: np.ndarray, n_splits: int = 5, gap: float = 30.0):
    """The splitter for ``--cv`` (``auto``: leave-one-run-out with 2+ runs, else blocked)."""
    n_runs = len(np.unique(runs))
    if cv == "auto":
        cv = "loro" if n_runs >= 2 else "blocked"
    if cv == "loro":
        if n_runs < 2:
            raise UsageError("leave-one-run-out needs at least 2 runs, got 1", path="--cv",
                             fix="use --cv blocked for single-run data")
        return "loro", LeaveOneRunOut()
    if cv == "blocked":
        return "blocked", BlockedKFold(n_splits=n_splits, gap=gap)
    raise UsageError(f"--cv {cv!r} is unknown", fix="use auto, loro or blocked")


# --------------------------------------------------------------------------- permutations


def draw_shifts(runs: np.ndarray, n_permutations: int, random_state=None,
                min_shift_fraction: float = 0.1) -> np.ndarray:
    """Circular shift of each run for each permutation, shape ``(n_permutations, n_runs)``.

    Runs are in the order of ``np.unique(runs)``. The shift of a run of ``n``
    samples is drawn uniformly among ``[m, n - m]`` with
    ``m = max(1, ceil(min_shift_fraction * n))``; a run of one sample gets 0.

    Examples
    --------
    >>> draw_shifts(np.repeat([1, 2], 10), 3, random_state=0).shape
    (3, 2)
    """
    rng = np.random.default_rng(random_state)
    sizes = [int(np.sum(runs == run)) for run in np.unique(runs)]
    shifts = np.zeros((n_permutations, len(sizes)), dtype=np.int64)
    for p in range(n_permutations):
        for r, n in enumerate(sizes):
            if n < 2:
                continue
            low = max(1, int(np.ceil(min_shift_fraction * n)))
            high = max(low, n - low)
            shifts[p, r] = rng.integers(low, high + 1)
    return shifts


def circular_shifts(y: np.ndarray, runs: np.ndarray, n_permutations: int,
                    random_state=None, min_shift_fraction: float = 0.1) -> np.ndarray:
    """Permuted label sequences of the null: each run's labels shifted circularly.

    The shifts come from :func:`draw_shifts`: the sample at position ``t`` of a
    run of ``n`` samples gets the label of position ``(t - s) mod n``. Permuted
    labels keep the scene structure (temporal autocorrelation) of the originals
    but never sit near their true alignment.

    Validity. Runs are separate acquisitions, so their noise is independent: on
    null data with strongly autocorrelated noise (AR(1) 0.95, scenes of 10-40
    samples, 4 runs of 100, ridge, leave-one-run-out, 200 permutations) 4.7% of
    150 p-values fell below .05. When the noise instead runs on across run
    boundaries (one acquisition cut into "runs"), leave-one-run-out itself leaks
    at the boundaries and the same test gave 12.7%: split such data with
    ``cv="blocked"`` and a gap. Leaving out of the scoring the scene that a
    shift wraps across a run's ends was tried: it brought that case to 5.3% but
    made the test conservative (1.3%) on independent runs and cut its power
    (0.58 to 0.33 at one planted strength), so it is not used.

    Returns
    -------
    ndarray
        ``(n_permutations, n_samples)`` labels.

    Examples
    --------
    >>> y = np.array([0, 0, 1, 1, 2, 2])
    >>> circular_shifts(y, np.zeros(6), 2, random_state=0).shape
    (2, 6)
    """
    y = np.asarray(y)
    runs = np.asarray(runs)
    shifts = draw_shifts(runs, n_permutations, random_state, min_shift_fraction)
    permuted = np.empty((n_permutations, len(y)), dtype=y.dtype)
    for r, run in enumerate(np.unique(runs)):
        index = np.flatnonzero(runs == run)
        for p in range(n_permutations):
            permuted[p, index] = np.roll(y[index], int(shifts[p, r]))
    return permuted


def permutation_p_value(observed: float, null: np.ndarray) -> float:
    """One-sided p: ``(1 + #{null >= observed}) / (1 + n)``; 1.0 without permutations."""
    null = np.asarray(null)
    return float((1 + np.sum(null >= observed - 1e-12)) / (1 + len(null)))


# --------------------------------------------------------------------------- cross-validation


@dataclass
class FoldPredictions:
    """Test-fold predictions of one cross-validation."""

    proba: np.ndarray          # (n_samples, n_classes), class order of ``classes``
    predicted: np.ndarray      # (n_samples,) class indices
    fold: np.ndarray           # (n_samples,) fold of each sample
    estimators: list[Any] = field(default_factory=list)
    folds: list[dict[str, Any]] = field(default_factory=list)


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


def _class_names(codes: Sequence[int], class_names: Sequence[str] | None) -> list:
    return [str(class_names[c]) for c in codes] if class_names else [int(c) for c in codes]


def cross_validate(make_estimator: Callable[[int, int], Any], X: np.ndarray, y: np.ndarray,
                   splits: Sequence[tuple[np.ndarray, np.ndarray]], n_classes: int, *,
                   runs: np.ndarray | None = None, fold_names: Sequence[str] | None = None,
                   keep_estimators: bool = True, fit_groups: bool = False,
                   class_names: Sequence[str] | None = None,
                   warn: bool = True) -> FoldPredictions:
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
    result = FoldPredictions(proba, np.zeros(n, int), fold_of)
    for k, (train, test) in enumerate(splits):
        absent = sorted(set(range(n_classes)) - set(np.unique(y[train]).tolist()))
        name = fold_names[k] if fold_names is not None else f"fold-{k + 1}"
        if len(np.unique(y[train])) < 2:
            raise InputDataError(f"training set of {name} holds fewer than 2 classes",
                                 fix="use more runs or a different --cv")
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


def balanced_accuracies(labels: np.ndarray, predicted: np.ndarray,
                        n_classes: int | None = None) -> np.ndarray:
    """Balanced accuracy of each row of ``labels`` against ``predicted`` (vectorised).

    The mean, over the classes present, of each class's recall. Samples with
    ``predicted < 0`` (not tested) are left out. Equals scikit-learn's
    ``balanced_accuracy_score`` on the tested samples.

    Examples
    --------
    >>> balanced_accuracies(np.array([[0, 0, 0, 1], [0, 1, 1, 1]]),
    ...                     np.array([[0, 0, 1, 1], [0, 0, 1, 1]])).round(3).tolist()
    [0.833, 0.833]
    """
    labels = np.atleast_2d(labels)
    predicted = np.broadcast_to(np.atleast_2d(predicted), labels.shape)
    use = predicted >= 0
    n_classes = int(n_classes if n_classes is not None else labels.max() + 1)
    hits = np.zeros((len(labels), n_classes))
    support = np.zeros((len(labels), n_classes))
    for c in range(n_classes):
        of_class = use & (labels == c)
        support[:, c] = of_class.sum(axis=1)
        hits[:, c] = (of_class & (predicted == c)).sum(axis=1)
    present = support > 0
    recall = np.where(present, hits / np.maximum(support, 1), 0.0)
    return recall.sum(axis=1) / np.maximum(present.sum(axis=1), 1)


def _pooled_balanced_accuracy(y: np.ndarray, predicted: np.ndarray) -> float:
    return float(balanced_accuracies(y, predicted)[0])


def ridge_hat_matrices(make_estimator: Callable[[int, int], Any], X: np.ndarray,
                       splits: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
    """Per fold, the matrix ``H`` with test scores ``= H (T - mean T)`` (see below).

    ``make_estimator(fold, n_train)`` returns the fold's unfitted ridge decoder
    (built for that fold's own training size: the PCA size and the penalty
    follow it): every step before the ridge must ignore the labels (scaling,
    PCA). ``H = Z_test Z_train' (Z_train Z_train' + alpha I)^-1``, with ``Z``
    the transformed data; since ``Z_train`` has zero mean, this is exactly the
    score of :class:`BalancedRidgeClassifier`, whose targets ``T`` are the
    class-balanced one-hot labels (:func:`balanced_targets`). Each ``H`` is
    computed once and reused for every permuted label matrix (:func:`ridge_null`).
    """
    hats = []
    for k, (train, test) in enumerate(splits):
        pipeline = make_estimator(k, len(train))
        transform = clone(pipeline[:-1])
        z_train = transform.fit_transform(X[train]).astype(np.float64)
        z_test = transform.transform(X[test]).astype(np.float64)
        alpha = pipeline[-1].alpha
        gram = z_train @ z_train.T
        gram[np.diag_indices_from(gram)] += alpha
        cross = z_test @ z_train.T
        hats.append(linalg.solve(gram, cross.T, assume_a="pos").T)
    return hats


def ridge_null(hats: Sequence[np.ndarray], splits, permuted: np.ndarray, n_classes: int,
               batch: int = 100) -> np.ndarray:
    """Balanced accuracies of permuted label sequences through the ridge hat matrices."""
    n_permutations, n = permuted.shape
    null = np.empty(n_permutations)
    eye = np.eye(n_classes)
    for start in range(0, n_permutations, batch):
        labels = permuted[start:start + batch]
        predicted = np.full(labels.shape, -1)
        for hat, (train, test) in zip(hats, splits):
            onehot = eye[labels[:, train]]                       # (b, n_train, C)
            present = onehot.any(axis=1)                         # (b, C)
            targets = balanced_targets(onehot)
            centred = targets - targets.mean(axis=1, keepdims=True)
            scores = np.einsum("tn,bnc->btc", hat, centred)      # no class prior
            scores = np.where(present[:, None, :], scores, -np.inf)
            predicted[:, test] = scores.argmax(axis=2)
        null[start:start + len(labels)] = balanced_accuracies(labels, predicted, n_classes)
    return null


class NullCheckpoints:
    """Scores of finished permutations, one small JSON file each, written atomically.

    A killed refit null (CNNs: permutations x folds fits) resumes from them:
    ``permutation-NNNN.json`` holds the permutation's balanced accuracy and a
    fingerprint of everything it depends on (decoder, its settings and seed,
    the data's shape and a sample of its bytes, the folds, and the
    permutation's labels); a file whose fingerprint differs
    is ignored and overwritten. JSON keeps floats exactly, so a resumed null
    equals an uninterrupted one bit for bit.

    Examples
    --------
    >>> import tempfile
    >>> store = NullCheckpoints(Path(tempfile.mkdtemp()), "abc")
    >>> labels = np.array([0, 1])
    >>> store.load(0, labels) is None
    True
    >>> store.save(0, labels, 0.25); store.load(0, labels)
    0.25
    """

    def __init__(self, folder: Path, fingerprint: str):
        self.folder = Path(folder)
        self.fingerprint = fingerprint

    def _key(self, labels: np.ndarray) -> str:
        digest = hashlib.sha256(self.fingerprint.encode())
        digest.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
        return digest.hexdigest()

    def path(self, index: int) -> Path:
        return self.folder / f"permutation-{index + 1:04d}.json"

    def load(self, index: int, labels: np.ndarray) -> float | None:
        """The saved score of permutation ``index``, or None (absent, unreadable, stale)."""
        try:
            record = json.loads(self.path(index).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict) or record.get("key") != self._key(labels):
            return None
        return float(record["balanced_accuracy"])

    def save(self, index: int, labels: np.ndarray, value: float) -> None:
        """Write the score of permutation ``index`` atomically."""
        from bids_affect.io.derivatives import write_json

        self.folder.mkdir(parents=True, exist_ok=True)
        write_json(self.path(index), {"permutation": index + 1,
                                      "balanced_accuracy": float(value),
                                      "key": self._key(labels)})


def _null_fingerprint(model: str, cnn_params: dict[str, Any] | None, seed: int, X: np.ndarray,
                      splits: Sequence[tuple[np.ndarray, np.ndarray]], n_classes: int,
                      n_hashed_samples: int = 8) -> str:
    settings = {"model": model, "cnn_params": cnn_params or {}, "seed": int(seed),
                "n_classes": int(n_classes), "shape": list(X.shape), "dtype": str(X.dtype)}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for train, test in splits:
        for array in (train, test):
            digest.update(np.ascontiguousarray(array, dtype=np.int64).tobytes())
            digest.update(b"|")
    for index in np.unique(np.linspace(0, len(X) - 1, n_hashed_samples).astype(np.intp)):
        digest.update(np.ascontiguousarray(X[index]).tobytes())
    return digest.hexdigest()


def _refit_null(make_estimator, X, permuted: np.ndarray, splits, n_classes, runs, fit_groups,
                n_jobs, progress: Progress | None, fold_names: Sequence[str] | None = None,
                checkpoints: NullCheckpoints | None = None) -> np.ndarray:
    """The null by refitting the whole cross-validation per permutation (in parallel)."""
    n_permutations = len(permuted)

    def one(index):
        labels = permuted[index]
        with progress_context(f"permutation {index + 1}/{n_permutations}"):
            fit = cross_validate(make_estimator, X, labels, splits, n_classes, runs=runs,
                                 fold_names=fold_names, keep_estimators=False,
                                 fit_groups=fit_groups, warn=False)
        value = _pooled_balanced_accuracy(labels, fit.predicted)
        if checkpoints is not None:
            checkpoints.save(index, labels, value)
        return value

    scores = np.full(n_permutations, np.nan)
    todo = []
    for index in range(n_permutations):
        saved = (None if checkpoints is None else
                 checkpoints.load(index, permuted[index]))
        if saved is None:
            todo.append(index)
        else:
            scores[index] = saved
    if checkpoints is not None and len(todo) < n_permutations:
        LOGGER.info("%s: %d of %d permutations resumed from checkpoints", checkpoints.folder,
                    n_permutations - len(todo), n_permutations)
    if progress is not None:
        progress.update(n_permutations - len(todo))
    chunk = max(1, n_jobs) * 4
    with Parallel(n_jobs=n_jobs) as parallel:
        for start in range(0, len(todo), chunk):
            indices = todo[start:start + chunk]
            scores[indices] = parallel(delayed(one)(index) for index in indices)
            if progress is not None:
                progress.update(len(indices))
    return scores


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
    return _pooled_balanced_accuracy(y[test], fit.predicted[test])


# --------------------------------------------------------------------------- metrics


def decoding_metrics(y: np.ndarray, predicted: np.ndarray, proba: np.ndarray,
                     classes: Sequence[str], fold: np.ndarray,
                     fold_records: Sequence[dict]) -> dict[str, Any]:
    """Scores of test-fold predictions: accuracy, balanced accuracy, per class, AUC, folds."""
    n_classes = len(classes)
    labels = np.arange(n_classes)
    precision, recall, f1, support = precision_recall_fscore_support(
        y, predicted, labels=labels, zero_division=0)
    per_class = {}
    aucs = []
    for k, name in enumerate(classes):
        positive = y == k
        auc = (float(roc_auc_score(positive, proba[:, k]))
               if 0 < positive.sum() < len(y) else None)
        if auc is not None:
            aucs.append(auc)
        per_class[name] = {"precision": float(precision[k]), "recall": float(recall[k]),
                           "f1": float(f1[k]), "auc": auc, "support": int(support[k])}
    fold_scores = []
    for record in fold_records:
        in_fold = fold == record["fold"] - 1
        fold_scores.append({"fold": record["test"],
                            "balanced_accuracy": _pooled_balanced_accuracy(
                                y[in_fold], predicted[in_fold]),
                            "n_test": int(in_fold.sum())})
    return {
        "accuracy": float(np.mean(y == predicted)),
        "balanced_accuracy": _pooled_balanced_accuracy(y, predicted),
        "per_class": per_class,
        "macro_auc": float(np.mean(aucs)) if aucs else None,
        "fold_scores": fold_scores,
        "confusion_matrix": confusion_matrix(y, predicted, labels=labels).tolist(),
    }


# --------------------------------------------------------------------------- decode


@dataclass
class DecodingResult:
    """Everything one decoder produced for one subject."""

    model: str
    classes: list[str]
    metrics: dict[str, Any]
    predictions: FoldPredictions
    y: np.ndarray
    null: np.ndarray


def encode_labels(labels: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Class indices and the sorted class names of string labels."""
    classes = sorted(set(labels))
    lookup = {name: k for k, name in enumerate(classes)}
    return np.array([lookup[label] for label in labels], int), classes


#: Decoders whose null needs no refits (:func:`ridge_hat_matrices`).
RIDGE_SHORTCUT = ("ridge", "ridge-pca")

#: A refit null estimated to take longer than this (seconds) is announced as a warning.
REFIT_NULL_WARNING_S = 600.0

#: Permutation p-values coarser than this resolution are announced as a warning.
P_RESOLUTION_WARNING = 0.01

PERMUTATION_SCHEME = (
    "circular shift of each run's label sequence (shift of at least 10% of the run); the "
    "whole cross-validation repeated")


def _warn_about_cost(model: str, n_permutations: int, n_jobs: int, fit_seconds: float,
                     n_folds: int, refits: bool) -> None:
    resolution = 1.0 / (n_permutations + 1)
    if resolution > P_RESOLUTION_WARNING:
        LOGGER.warning("%s: %d permutations give p-values no finer than 1/%d = %.3f (p can "
                       "never be below it); use at least %d permutations for a resolution "
                       "of %s.", model, n_permutations, n_permutations + 1, resolution,
                       int(np.ceil(1 / P_RESOLUTION_WARNING)) - 1, P_RESOLUTION_WARNING)
    if not refits:
        return
    estimate = fit_seconds * n_permutations / max(1, n_jobs)
    level = logging.WARNING if estimate > REFIT_NULL_WARNING_S else logging.INFO
    LOGGER.log(level, "%s: the permutation null refits all %d folds for each of %d "
               "permutations; one cross-validation took %.1f s, so the null needs about "
               "%.1f h with %d parallel job(s). Fewer permutations, more CPUs (--nprocs), "
               "or the ridge decoder (whose null needs no refits) are faster.", model,
               n_folds, n_permutations, fit_seconds, estimate / 3600, max(1, n_jobs))


def decode(X: np.ndarray, labels: Sequence[str], runs: Sequence, *, model: str = "ridge",
           times: np.ndarray | None = None, cv: str = "auto", n_splits: int = 5,
           gap: float = 30.0, n_permutations: int = 1000, random_state: int | None = None,
           n_jobs: int = 1, cnn_params: dict[str, Any] | None = None,
           checkpoint_dir: Path | None = None, audit: bool = True) -> DecodingResult:
    """Cross-validated decoding with chance level, permutation test and leakage audit.

    Parameters
    ----------
    X : ndarray
        Labelled samples in temporal order within runs: ``(n, n_voxels)`` for
        linear decoders, ``(n, X, Y, Z)`` volumes for CNNs (memmaps are fine).
    labels : sequence of str
        Class of each sample.
    runs : sequence
        Run of each sample (the unit of leave-one-run-out and of label shifts).
    model : str
        A decoder name of :func:`list_models`.
    times : ndarray, optional
        Acquisition time of each sample in seconds; required by blocked k-fold
        with a gap (use :func:`acquisition_clock` for several runs).
    cv : {"auto", "loro", "blocked"}
        Cross-validation scheme.
    n_splits, gap : int, float
        Folds and gap (seconds) of blocked k-fold.
    n_permutations : int
        Permutations of the null (:func:`circular_shifts`); 0 skips the test.
    random_state : int, optional
        Seed of the decoder, the permutations and the audit split.
    n_jobs : int
        Parallel refits of the null (linear decoders without the ridge shortcut).
    cnn_params : dict, optional
        Settings of CNN decoders (epochs, batch size, device...).
    checkpoint_dir : Path, optional
        Folder of checkpoints: CNN fold fits (``fold-K.pt``), the audit fit
        (``audit.pt``) and each finished permutation of a refit null
        (``null/permutation-NNNN.json``); a killed run given the same folder
        resumes from them and ends with the same results.
    audit : bool
        Also compute ``random_split_balanced_accuracy``.

    Returns
    -------
    DecodingResult
        ``metrics`` holds the ``decoding.json`` fields.

    Notes
    -----
    The null is that of :func:`circular_shifts`: each run's labels shifted
    circularly and the whole cross-validation repeated (algebraically for the
    ridge decoders, :func:`ridge_null`). ``p_permutation`` is
    ``(1 + #{null >= observed}) / (1 + n_permutations)``.
    """
    y, classes = encode_labels(labels)
    runs = np.asarray(runs)
    n_classes = len(classes)
    if n_classes < 2:
        raise InputDataError(f"decoding needs at least 2 classes, found {classes}",
                             fix="check the label spec, its threshold and --min-volumes")
    if len(y) != len(X):
        raise ValueError(f"{len(X)} samples but {len(y)} labels")
    cv_name, splitter = make_cv(cv, runs, n_splits, gap)
    if cv_name == "loro":
        splits = list(splitter.split(X, y, groups=runs))
        _, first = np.unique(runs, return_index=True)
        fold_names = [str(run) for run in runs[np.sort(first)]]
    else:
        if times is None and gap > 0:
            raise UsageError(f"blocked k-fold's gap is in seconds ({gap}), so it needs the "
                             f"acquisition time of each sample", path="times",
                             fix="pass times (acquisition_clock(run_index, seconds)), "
                                 "or gap=0")
        clock = times if times is not None else np.arange(len(y), dtype=float)
        splits = list(splitter.split(X, y, groups=clock))
        fold_names = [f"block-{k + 1}" for k in range(len(splits))]
    for (train, _test), name in zip(splits, fold_names):
        if len(np.unique(y[train])) < 2:
            raise InputDataError(f"too few volumes for --cv {cv_name}: the training set of "
                                 f"fold {name} holds fewer than 2 classes",
                                 fix="use another --cv, fewer folds, or more data")
    seeds = np.random.SeedSequence(random_state).generate_state(3)
    model_seed, permutation_seed, audit_seed = (int(s >> 1) for s in seeds)
    n_features = int(np.prod(X.shape[1:]))
    cnn = is_cnn(model)

    def make_estimator(fold: int, n_train: int, checkpoint: str | None = None):
        estimator = make_decoder(model, n_features=n_features, n_samples=n_train,
                                 random_state=model_seed, cnn_params=cnn_params)
        if cnn and checkpoint_dir is not None and checkpoint is not None:
            estimator.set_params(checkpoint_path=Path(checkpoint_dir) / checkpoint)
        return estimator

    started = time.perf_counter()
    fit = cross_validate(lambda k, n: make_estimator(k, n, f"fold-{k + 1}.pt"), X, y, splits,
                         n_classes, runs=runs, fold_names=fold_names, fit_groups=cnn,
                         class_names=classes)
    fit_seconds = time.perf_counter() - started
    metrics = decoding_metrics(y, fit.predicted, fit.proba, classes, fit.fold, fit.folds)

    shortcut = model in RIDGE_SHORTCUT
    permuted = circular_shifts(y, runs, n_permutations, random_state=permutation_seed)
    if n_permutations:
        _warn_about_cost(model, n_permutations, 1 if cnn else n_jobs, fit_seconds,
                         len(splits), refits=not shortcut)
    with Progress(n_permutations, desc=f"{model}: permutations") as progress:
        if n_permutations and shortcut:
            hats = ridge_hat_matrices(make_estimator, X, splits)
            null = ridge_null(hats, splits, permuted, n_classes)
            progress.update(n_permutations)
        elif n_permutations:
            checkpoints = (None if checkpoint_dir is None else NullCheckpoints(
                Path(checkpoint_dir) / "null",
                _null_fingerprint(model, cnn_params, model_seed, X, splits, n_classes)))
            null = _refit_null(make_estimator, X, permuted, splits, n_classes, runs, cnn,
                               n_jobs if not cnn else 1, progress, fold_names, checkpoints)
        else:
            null = np.empty(0)

    observed = metrics["balanced_accuracy"]
    counts = np.bincount(y, minlength=n_classes)
    metrics = {
        "model": model,
        "classes": classes,
        "cv": cv_name,
        "n_folds": len(splits),
        "n_samples": {name: int(count) for name, count in zip(classes, counts)},
        "accuracy": metrics["accuracy"],
        "balanced_accuracy": observed,
        "chance_balanced_accuracy": float(null.mean()) if len(null) else 1.0 / n_classes,
        "chance_level_source": "permutation null mean" if len(null) else "1 / n_classes",
        "null_band": ([float(np.percentile(null, 2.5)), float(np.percentile(null, 97.5))]
                      if len(null) else None),
        "p_permutation": permutation_p_value(observed, null) if len(null) else None,
        "n_permutations": int(n_permutations),
        "p_resolution": 1.0 / (n_permutations + 1) if n_permutations else None,
        "permutation_scheme": PERMUTATION_SCHEME,
        "per_class": metrics["per_class"],
        "macro_auc": metrics["macro_auc"],
        "fold_scores": metrics["fold_scores"],
        "folds": fit.folds,
        "confusion_matrix": metrics["confusion_matrix"],
    }
    if audit:
        metrics["random_split_balanced_accuracy"] = random_split_score(
            lambda k, n: make_estimator(k, n, "audit.pt"), X, y, n_classes,
            random_state=audit_seed)
        metrics["random_split_note"] = (
            "balanced accuracy of the same decoder on the peers' random 80/20 split of "
            "volumes; neighbouring volumes leak across it, so it is inflated. Reported for "
            "comparison only.")
    return DecodingResult(model, classes, metrics, fit, y, null)
