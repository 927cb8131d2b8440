"""Decoders: the estimators and the one table of decoder names.

A decoder name is a linear family (``ridge``, ``logreg``, ``svm``) optionally
suffixed by a feature reduction fitted inside the training folds (``-anova``,
``-pca``), or ``cnn-`` and a registered 3D architecture. :func:`parse_decoder`
is the only place that reads these names; everything else asks the
:class:`DecoderSpec` it returns (is it a CNN, does its null need refits, what
are its probabilities). :func:`make_decoder` builds a fresh, unfitted decoder
for each fit (nilearn's habit), listing the valid names when one is unknown.

Examples
--------
>>> spec = parse_decoder("ridge-pca")
>>> spec.family, spec.reduction, spec.is_cnn, spec.algebraic_null
('ridge', 'pca', False, True)
>>> parse_decoder("cnn-neuro120fp").architecture
'neuro120fp'
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.decomposition import PCA
from sklearn.feature_selection import SelectPercentile, f_classif
from sklearn.linear_model import Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from bids_affect.decoding.linear import BalancedLinearSVC, BalancedLogisticRegression
from bids_affect.exceptions import UsageError

__all__ = ["CNN_PREFIX", "LINEAR_FAMILIES", "REDUCTIONS", "BalancedRidgeClassifier",
           "DecoderSpec", "LinearFamily", "Reduction",
           "balanced_targets", "check_models", "is_cnn", "list_models", "make_decoder",
           "parse_decoder", "softmax_of_decision"]


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


# Saved decoders (joblib pickles) name their class by module: the public package, so a
# model file stays loadable whatever the internal layout (numpy's set_module habit).
for _estimator in (BalancedRidgeClassifier, BalancedLogisticRegression, BalancedLinearSVC):
    _estimator.__module__ = "bids_affect.decoding"


# --------------------------------------------------------------------------- the table

#: What ``prob_CLASS`` columns hold, by kind of decoder.
SOFTMAX_OF_DECISION = "softmax of decision values"
CLASS_PROBABILITIES = "predicted class probabilities"


@dataclass(frozen=True)
class LinearFamily:
    """A linear classifier family of the decoder table.

    ``make(n_features, seed)`` builds a fresh classifier. The penalties scale
    with the number of features (ridge alpha = p, C = 1/p): on z-scored voxels
    the squared norm of a sample grows with p, and so does the Gram matrix.
    ``algebraic_null``: its predictions are linear in the training labels, so
    its permutation null needs no refits (:func:`bids_affect.decoding.null.ridge_null`).
    ``batched_null``: its permutation null fits every permuted label set of a fold
    as one batched problem (:func:`bids_affect.decoding.linear.permutation_null_predictions`).
    """

    make: Callable[[int, int | None], Any]
    probabilities: str
    algebraic_null: bool = False
    batched_null: bool = False


@dataclass(frozen=True)
class Reduction:
    """A feature reduction fitted inside the training folds (``-anova``, ``-pca``).

    ``make(n_features, n_samples)`` builds it; ``n_kept(n_features, n_samples)``
    is the number of features it leaves (the classifier's penalty follows it);
    ``uses_labels``: it reads the labels (a label-free one keeps the ridge
    null algebraic).
    """

    make: Callable[[int, int], Any]
    n_kept: Callable[[int, int], int]
    uses_labels: bool


#: ANOVA keeps this percentage of the features; PCA at most this many components.
ANOVA_PERCENTILE = 10
PCA_COMPONENTS = 100

LINEAR_FAMILIES: dict[str, LinearFamily] = {
    "ridge": LinearFamily(
        lambda n_features, seed: BalancedRidgeClassifier(alpha=float(max(n_features, 1))),
        SOFTMAX_OF_DECISION, algebraic_null=True),
    "logreg": LinearFamily(
        lambda n_features, seed: BalancedLogisticRegression(C=1.0 / max(n_features, 1)),
        CLASS_PROBABILITIES, batched_null=True),
    "svm": LinearFamily(
        lambda n_features, seed: BalancedLinearSVC(C=1.0 / max(n_features, 1),
                                                   random_state=seed),
        SOFTMAX_OF_DECISION, batched_null=True),
}


def _pca_size(n_features: int, n_samples: int) -> int:
    return min(PCA_COMPONENTS, n_features, n_samples - 1)


REDUCTIONS: dict[str, Reduction] = {
    "anova": Reduction(
        lambda n_features, n_samples: SelectPercentile(f_classif, percentile=ANOVA_PERCENTILE),
        lambda n_features, n_samples: max(1, int(np.ceil(n_features * (ANOVA_PERCENTILE / 100)))),
        uses_labels=True),
    "pca": Reduction(
        lambda n_features, n_samples: PCA(n_components=_pca_size(n_features, n_samples),
                                          svd_solver="full"),
        _pca_size, uses_labels=False),
}

CNN_PREFIX = "cnn-"


@dataclass(frozen=True)
class DecoderSpec:
    """What a decoder name means (see :func:`parse_decoder`)."""

    name: str
    family: str
    reduction: str | None = None
    architecture: str | None = None

    @property
    def is_cnn(self) -> bool:
        """A 3D CNN: it reads volumes, not voxel vectors."""
        return self.architecture is not None

    @property
    def algebraic_null(self) -> bool:
        """Its permutation null needs no refits (linear in the labels, label-free reduction)."""
        return (not self.is_cnn and LINEAR_FAMILIES[self.family].algebraic_null
                and (self.reduction is None or not REDUCTIONS[self.reduction].uses_labels))

    @property
    def batched_null(self) -> bool:
        """Its permutation null fits all permutations of a fold at once (logreg, SVM)."""
        return (not self.is_cnn and not self.algebraic_null
                and LINEAR_FAMILIES[self.family].batched_null)

    @property
    def probabilities(self) -> str:
        """What its ``predict_proba`` (the ``prob_CLASS`` columns) holds."""
        return (CLASS_PROBABILITIES if self.is_cnn
                else LINEAR_FAMILIES[self.family].probabilities)


def list_models() -> list[str]:
    """Every decoder name ``--models`` accepts (CNNs from the architecture registry)."""
    from bids_affect.models.cnn3d import list_architectures

    names = []
    for family in LINEAR_FAMILIES:
        names.append(family)
        names.extend(f"{family}-{reduction}" for reduction in REDUCTIONS)
    names.extend(CNN_PREFIX + arch for arch in list_architectures())
    return names


def parse_decoder(name: str) -> DecoderSpec:
    """The :class:`DecoderSpec` of a decoder name; unknown names list the known ones."""
    name = str(name).strip().lower()
    if name not in list_models():
        raise UsageError(f"{name!r} is unknown", path="models",
                         fix=f"use one of {', '.join(list_models())}")
    if name.startswith(CNN_PREFIX):
        return DecoderSpec(name, "cnn", architecture=name[len(CNN_PREFIX):])
    family, _, reduction = name.partition("-")
    return DecoderSpec(name, family, reduction or None)


def is_cnn(name: str) -> bool:
    """Whether decoder ``name`` is a 3D CNN (it reads volumes, not voxel vectors)."""
    return str(name).strip().lower().startswith(CNN_PREFIX)


def check_models(names: Sequence[str]) -> list[str]:
    """Validated, de-duplicated decoder names; unknown ones raise :class:`UsageError`."""
    models = [name.strip().lower() for name in names if name.strip()]
    if not models:
        raise UsageError("is empty", path="models", fix=f"use some of {', '.join(list_models())}")
    return list(dict.fromkeys(parse_decoder(name).name for name in models))


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
    spec = parse_decoder(name)
    if spec.is_cnn:
        from bids_affect.models.classifier import CNN3DClassifier

        return CNN3DClassifier(architecture=spec.architecture, random_state=random_state,
                               **(cnn_params or {}))
    n_features = int(n_features or 1)
    n_samples = int(n_samples or n_features + 1)
    steps = [("scale", StandardScaler())]
    kept = n_features
    if spec.reduction:
        reduction = REDUCTIONS[spec.reduction]
        steps.append((spec.reduction, reduction.make(n_features, n_samples)))
        kept = reduction.n_kept(n_features, n_samples)
    steps.append(("classifier", LINEAR_FAMILIES[spec.family].make(kept, random_state)))
    return Pipeline(steps)
