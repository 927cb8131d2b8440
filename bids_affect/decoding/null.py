"""The permutation null of a decoder: algebraic for ridge, refits (resumable) otherwise.

The null shifts each run's labels circularly
(:func:`bids_affect.stats.permutation.circular_shifts`) and repeats the whole
cross-validation. Ridge decoders need no refits: their test scores are linear
in the training labels, so each fold's hat matrix is computed once
(:func:`ridge_hat_matrices`) and applied to every permuted label matrix
(:func:`ridge_null`). Other decoders refit every fold for every permutation
(:func:`refit_null`), in parallel, and a CNN's finished permutations are
checkpointed so a killed run resumes (:class:`NullCheckpoints`).

Examples
--------
>>> from bids_affect.decoding.estimators import make_decoder
>>> rng = np.random.default_rng(0)
>>> X, y = rng.normal(size=(40, 5)), np.tile([0, 1], 20)
>>> splits = [(np.arange(20, 40), np.arange(20)), (np.arange(20), np.arange(20, 40))]
>>> hats = ridge_hat_matrices(lambda k, n: make_decoder("ridge", n_features=5), X, splits)
>>> ridge_null(hats, splits, np.array([y, y[::-1]]), 2).shape
(2,)
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from joblib import Parallel, delayed
from scipy import linalg
from sklearn.base import clone

from bids_affect.decoding.estimators import balanced_targets
from bids_affect.decoding.fit import cross_validate
from bids_affect.decoding.metrics import balanced_accuracies, pooled_balanced_accuracy
from bids_affect.progress import Progress
from bids_affect.progress import context as progress_context

__all__ = ["PERMUTATION_SCHEME", "NullCheckpoints", "null_fingerprint", "refit_null",
           "ridge_hat_matrices", "ridge_null", "warn_about_cost"]

LOGGER = logging.getLogger("bids_affect.decoding")

#: A refit null estimated to take longer than this (seconds) is announced as a warning.
REFIT_NULL_WARNING_S = 600.0

#: Permutation p-values coarser than this resolution are announced as a warning.
P_RESOLUTION_WARNING = 0.01

PERMUTATION_SCHEME = (
    "circular shift of each run's label sequence (any non-zero shift, drawn uniformly); the "
    "whole cross-validation repeated")


def warn_about_cost(model: str, n_permutations: int, n_jobs: int, fit_seconds: float,
                    n_folds: int, refits: bool) -> None:
    """Warn when the p resolution is coarse, and when a refit null will take long."""
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


def null_fingerprint(model: str, cnn_params: dict[str, Any] | None, seed: int, X: np.ndarray,
                     splits: Sequence[tuple[np.ndarray, np.ndarray]], n_classes: int,
                     n_hashed_samples: int = 8) -> str:
    """A digest of what a permutation's score depends on (see :class:`NullCheckpoints`)."""
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


def refit_null(make_estimator, X, permuted: np.ndarray, splits, n_classes, runs, fit_groups,
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
        value = pooled_balanced_accuracy(labels, fit.predicted)
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
