"""Scores of test-fold predictions: balanced accuracy (vectorised over permutations), AUCs.

Examples
--------
>>> pooled_balanced_accuracy(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]))
0.75
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, roc_auc_score

__all__ = ["balanced_accuracies", "decoding_metrics", "pooled_balanced_accuracy"]


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


def pooled_balanced_accuracy(y: np.ndarray, predicted: np.ndarray) -> float:
    """Balanced accuracy of one label sequence (:func:`balanced_accuracies`)."""
    return float(balanced_accuracies(y, predicted)[0])


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
                            "balanced_accuracy": pooled_balanced_accuracy(
                                y[in_fold], predicted[in_fold]),
                            "n_test": int(in_fold.sum())})
    return {
        "accuracy": float(np.mean(y == predicted)),
        "balanced_accuracy": pooled_balanced_accuracy(y, predicted),
        "per_class": per_class,
        "macro_auc": float(np.mean(aucs)) if aucs else None,
        "fold_scores": fold_scores,
        "confusion_matrix": confusion_matrix(y, predicted, labels=labels).tolist(),
    }
