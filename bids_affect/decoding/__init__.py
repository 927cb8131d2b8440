"""Emotion decoding with honest cross-validation.

- :mod:`~bids_affect.decoding.estimators`: the decoders and the one table of
  decoder names (:func:`parse_decoder`, :func:`make_decoder`): linear pipelines
  (scaling, optional ANOVA or PCA reduction, then ridge, logistic regression or
  a linear SVM, all fitted inside the training folds) and 3D CNNs
  (:class:`~bids_affect.models.classifier.CNN3DClassifier`);
- :mod:`~bids_affect.decoding.cv`: splits by run (:class:`LeaveOneRunOut`) or,
  for single-run data, by contiguous blocks with a gap in seconds
  (:class:`BlockedKFold`);
- :mod:`~bids_affect.decoding.fit`: fold-by-fold fits and the leakage audit;
- :mod:`~bids_affect.decoding.metrics`: balanced accuracy, per-class metrics, AUCs;
- :mod:`~bids_affect.decoding.null`: the permutation null (algebraic for ridge);
- :mod:`~bids_affect.decoding.within`: :func:`decode`, all of it for one subject.

Random splits of volumes are never used for scores; they appear only in the
leakage audit (``random_split_balanced_accuracy``), which shows how much the
peers' random 80/20 split of volumes inflates a score.

Significance comes from a permutation test whose null keeps the temporal
structure of the labels: the sequence of labels of each run is shifted
circularly (by any non-zero amount), the whole cross-validation is
repeated, and the balanced accuracy is recorded. For ridge decoders the null
needs no refits: the predictions are linear in the training labels, so each
fold's hat matrix is computed once and applied to every permuted label matrix.

Examples
--------
>>> parse_decoder("logreg-anova").algebraic_null, parse_decoder("ridge").algebraic_null
(False, True)
>>> "cnn-neuro120fp" in list_models()
True

See :func:`decode` for a whole decoding of one subject.
"""

import numpy as np  # noqa: F401  (the decoders' doctests run here: their __module__ is this)

from bids_affect.decoding.cv import (
    CV_SCHEMES,
    BlockedKFold,
    Folds,
    LeaveOneRunOut,
    acquisition_clock,
    cv_splits,
    make_cv,
)
from bids_affect.decoding.estimators import (
    CNN_PREFIX,
    LINEAR_FAMILIES,
    REDUCTIONS,
    BalancedRidgeClassifier,
    DecoderSpec,
    balanced_targets,
    check_models,
    is_cnn,
    list_models,
    make_decoder,
    parse_decoder,
    softmax_of_decision,
)
from bids_affect.decoding.fit import FoldPredictions, cross_validate, random_split_score
from bids_affect.decoding.linear import BalancedLinearSVC, BalancedLogisticRegression
from bids_affect.decoding.metrics import (
    balanced_accuracies,
    decoding_metrics,
    pooled_balanced_accuracy,
)
from bids_affect.decoding.null import (
    PERMUTATION_SCHEME,
    NullCheckpoints,
    refit_null,
    ridge_hat_matrices,
    ridge_null,
)
from bids_affect.decoding.within import DecodingResult, decode, encode_labels
from bids_affect.stats.permutation import circular_shifts, draw_shifts, permutation_p_value

__all__ = [
    "CNN_PREFIX", "CV_SCHEMES", "BalancedLinearSVC", "BalancedLogisticRegression",
    "LINEAR_FAMILIES", "PERMUTATION_SCHEME", "REDUCTIONS",
    "BalancedRidgeClassifier", "BlockedKFold", "DecoderSpec", "DecodingResult", "FoldPredictions",
    "Folds", "LeaveOneRunOut", "NullCheckpoints", "acquisition_clock",
    "balanced_accuracies", "balanced_targets", "check_models", "circular_shifts",
    "cross_validate", "cv_splits", "decode", "decoding_metrics", "draw_shifts",
    "encode_labels", "is_cnn", "list_models", "make_cv", "make_decoder", "parse_decoder",
    "permutation_p_value", "pooled_balanced_accuracy", "random_split_score", "refit_null",
    "ridge_hat_matrices", "ridge_null", "softmax_of_decision",
]
