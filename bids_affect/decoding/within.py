"""Within-subject decoding: cross-validation, chance level, permutation test and audit.

:func:`decode` is what the BIDS-App's decoding step calls, and what a notebook
calls on a sample matrix. It splits the samples (:func:`~bids_affect.decoding.cv.cv_splits`),
fits a fresh decoder per fold, scores the test-fold predictions
(:func:`~bids_affect.decoding.metrics.decoding_metrics`), builds the
permutation null (:mod:`bids_affect.decoding.null`) and, beside the honest
score, the peers' leaky random split (:func:`~bids_affect.decoding.fit.random_split_score`).

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

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bids_affect._utils.docs import fill_doc
from bids_affect.decoding.cv import Folds, cv_splits
from bids_affect.decoding.estimators import DecoderSpec, make_decoder, parse_decoder
from bids_affect.decoding.fit import FoldPredictions, cross_validate, random_split_score
from bids_affect.decoding.linear import permutation_null_predictions
from bids_affect.decoding.metrics import balanced_accuracies, decoding_metrics
from bids_affect.decoding.null import (
    PERMUTATION_SCHEME,
    NullCheckpoints,
    null_fingerprint,
    refit_null,
    ridge_hat_matrices,
    ridge_null,
    warn_about_cost,
)
from bids_affect.exceptions import InputDataError
from bids_affect.models.runtime import torch_threads
from bids_affect.progress import Progress
from bids_affect.stats.permutation import circular_shifts, null_summary

__all__ = ["DecodingResult", "decode", "encode_labels"]

#: Note written beside ``random_split_balanced_accuracy``.
RANDOM_SPLIT_NOTE = (
    "balanced accuracy of the same decoder on the peers' random 80/20 split of volumes; "
    "neighbouring volumes leak across it, so it is inflated. Reported for comparison only.")


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
    """Class indices and the sorted class names of string labels.

    Examples
    --------
    >>> codes, classes = encode_labels(["joy", "fear", "joy"])
    >>> codes.tolist(), classes
    ([1, 0, 1], ['fear', 'joy'])
    """
    classes = sorted(set(labels))
    lookup = {name: k for k, name in enumerate(classes)}
    return np.array([lookup[label] for label in labels], int), classes


def _decoder_seeds(random_state: int | None) -> tuple[int, int, int]:
    """Seeds of the decoder, the permutations and the audit split, from one seed."""
    seeds = np.random.SeedSequence(random_state).generate_state(3)
    model_seed, permutation_seed, audit_seed = (int(s >> 1) for s in seeds)
    return model_seed, permutation_seed, audit_seed


def _estimator_factory(spec: DecoderSpec, n_features: int, seed: int,
                       cnn_params: dict[str, Any] | None, checkpoint_dir: Path | None
                       ) -> Callable[..., Any]:
    """``make(fold, n_train, checkpoint=None)``: a fresh decoder sized for its training set.

    A CNN given a checkpoint name and a ``checkpoint_dir`` saves its training
    there, so a killed run resumes.
    """
    def make_estimator(fold: int, n_train: int, checkpoint: str | None = None):
        estimator = make_decoder(spec.name, n_features=n_features, n_samples=n_train,
                                 random_state=seed, cnn_params=cnn_params)
        if spec.is_cnn and checkpoint_dir is not None and checkpoint is not None:
            estimator.set_params(checkpoint_path=Path(checkpoint_dir) / checkpoint)
        return estimator

    return make_estimator


def _permutation_null(spec: DecoderSpec, make_estimator: Callable[..., Any], X: np.ndarray,
                      permuted: np.ndarray, folds: Folds, n_classes: int, runs: np.ndarray, *,
                      n_jobs: int, fingerprint: Callable[[], str],
                      checkpoint_dir: Path | None, device: str = "cpu") -> np.ndarray:
    """Balanced accuracies of the permuted label sequences (algebra, batches or refits)."""
    n_permutations = len(permuted)
    with Progress(n_permutations, desc=f"{spec.name}: permutations") as progress:
        if not n_permutations:
            return np.empty(0)
        if spec.algebraic_null:
            hats = ridge_hat_matrices(make_estimator, X, folds.splits)
            null = ridge_null(hats, folds.splits, permuted, n_classes)
            progress.update(n_permutations)
            return null
        if spec.batched_null:
            with torch_threads(max(1, n_jobs)):
                predicted = permutation_null_predictions(make_estimator, X, permuted,
                                                         folds.splits, n_classes,
                                                         device=device)
            progress.update(n_permutations)
            return balanced_accuracies(permuted, predicted, n_classes)
        checkpoints = (None if checkpoint_dir is None
                       else NullCheckpoints(Path(checkpoint_dir) / "null", fingerprint()))
        return refit_null(make_estimator, X, permuted, folds.splits, n_classes, runs,
                          spec.is_cnn, 1 if spec.is_cnn else n_jobs, progress, folds.names,
                          checkpoints)


def _decoding_json(spec: DecoderSpec, classes: list[str], y: np.ndarray, folds: Folds,
                   fit: FoldPredictions, scores: dict[str, Any], null: np.ndarray
                   ) -> dict[str, Any]:
    """The fields of ``decoding.json`` (and the confusion matrix) of one decoder."""
    n_classes = len(classes)
    observed = scores["balanced_accuracy"]
    summary = null_summary(observed, null, n_classes)
    counts = np.bincount(y, minlength=n_classes)
    return {
        "model": spec.name,
        "classes": classes,
        "cv": folds.scheme,
        "n_folds": len(folds.splits),
        "n_samples": {name: int(count) for name, count in zip(classes, counts)},
        "accuracy": scores["accuracy"],
        "balanced_accuracy": observed,
        "chance_balanced_accuracy": summary["chance"],
        "chance_level_source": summary["chance_source"],
        "null_band": summary["null_band"],
        "p_permutation": summary["p_permutation"],
        "n_permutations": summary["n_permutations"],
        "p_resolution": summary["p_resolution"],
        "permutation_scheme": PERMUTATION_SCHEME,
        "per_class": scores["per_class"],
        "macro_auc": scores["macro_auc"],
        "fold_scores": scores["fold_scores"],
        "folds": fit.folds,
        "confusion_matrix": scores["confusion_matrix"],
    }


@fill_doc
def decode(X: np.ndarray, labels: Sequence[str], runs: Sequence, *, model: str = "ridge",
           times: np.ndarray | None = None, cv: str = "auto", n_splits: int = 5,
           gap: float = 30.0, n_permutations: int = 1000, random_state: int | None = None,
           n_jobs: int = 1, cnn_params: dict[str, Any] | None = None,
           checkpoint_dir: Path | None = None, audit: bool = True,
           null_device: str = "cpu") -> DecodingResult:
    """Cross-validated decoding with chance level, permutation test and leakage audit.

    Parameters
    ----------
    X : ndarray
        Labelled samples in temporal order within runs: ``(n, n_voxels)`` for
        linear decoders, ``(n, X, Y, Z)`` volumes for CNNs (memmaps are fine).
    labels : sequence of str
        Class of each sample.
    %(runs)s
    model : str
        A decoder name of :func:`~bids_affect.decoding.estimators.list_models`.
    times : ndarray, optional
        Acquisition time of each sample in seconds; required by blocked k-fold
        with a gap (use :func:`~bids_affect.decoding.cv.acquisition_clock` for
        several runs).
    cv : {"auto", "loro", "blocked"}
        Cross-validation scheme.
    n_splits, gap : int, float
        Folds and gap (seconds) of blocked k-fold.
    n_permutations : int
        Permutations of the null (:func:`~bids_affect.stats.permutation.circular_shifts`);
        0 skips the test.
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
    null_device : {"cpu", "cuda", "auto"}
        Where the batched null of logreg and SVM decoders runs.

    Returns
    -------
    DecodingResult
        ``metrics`` holds the ``decoding.json`` fields.

    Notes
    -----
    The null is that of :func:`~bids_affect.stats.permutation.circular_shifts`:
    each run's labels shifted circularly and the whole cross-validation
    repeated (algebraically for the ridge decoders,
    :func:`~bids_affect.decoding.null.ridge_null`). ``p_permutation`` is
    ``(1 + #{null >= observed}) / (1 + n_permutations)``.
    """
    spec = parse_decoder(model)
    y, classes = encode_labels(labels)
    runs = np.asarray(runs)
    n_classes = len(classes)
    if n_classes < 2:
        raise InputDataError(f"decoding needs at least 2 classes, found {classes}",
                             path="labels", fix="check the label spec, its threshold and the "
                                                "minimum of labelled volumes per class")
    if len(y) != len(X):
        raise ValueError(f"{len(X)} samples but {len(y)} labels")
    folds = cv_splits(cv, y, runs, times=times, n_splits=n_splits, gap=gap)
    model_seed, permutation_seed, audit_seed = _decoder_seeds(random_state)
    make_estimator = _estimator_factory(spec, int(np.prod(X.shape[1:])), model_seed,
                                        cnn_params, checkpoint_dir)

    started = time.perf_counter()
    fit = cross_validate(lambda k, n: make_estimator(k, n, f"fold-{k + 1}.pt"), X, y,
                         folds.splits, n_classes, runs=runs, fold_names=folds.names,
                         fit_groups=spec.is_cnn, class_names=classes, decisions=True)
    fit_seconds = time.perf_counter() - started
    scores = decoding_metrics(y, fit.predicted, fit.proba, classes, fit.fold, fit.folds)

    permuted = circular_shifts(y, runs, n_permutations, random_state=permutation_seed)
    if n_permutations:
        warn_about_cost(spec.name, n_permutations, 1 if spec.is_cnn else n_jobs, fit_seconds,
                        len(folds.splits),
                        refits=not (spec.algebraic_null or spec.batched_null))
    null = _permutation_null(
        spec, make_estimator, X, permuted, folds, n_classes, runs, n_jobs=n_jobs,
        fingerprint=lambda: null_fingerprint(spec.name, cnn_params, model_seed, X,
                                             folds.splits, n_classes),
        checkpoint_dir=checkpoint_dir,
        device=(cnn_params or {}).get("device", "cpu") if spec.is_cnn else null_device)
    metrics = _decoding_json(spec, classes, y, folds, fit, scores, null)
    if audit:
        metrics["random_split_balanced_accuracy"] = random_split_score(
            lambda k, n: make_estimator(k, n, "audit.pt"), X, y, n_classes,
            random_state=audit_seed)
        metrics["random_split_note"] = RANDOM_SPLIT_NOTE
    return DecodingResult(spec.name, classes, metrics, fit, y, null)
