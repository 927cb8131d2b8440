"""Which held-out samples explain a class, and per-class maps with each sample's fold model."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from bids_affect.exceptions import InputDataError, UsageError
from bids_affect.occlusion.engine import (
    DEFAULT_WINDOW,
    Method,
    Precision,
    check_volumes,
    occlusion_maps,
)

# --------------------------------------------------------------------------- sample choice


@dataclass(frozen=True)
class SampleSelection:
    """Held-out samples chosen to explain each class (see :func:`select_samples`).

    Attributes
    ----------
    classes : tuple
        Class labels, in the order of the probability columns.
    samples : dict
        Class -> indices of the chosen samples (highest p(true) first).
    folds : dict
        Class -> fold of each chosen sample.
    probabilities : dict
        Class -> p(true class) of each chosen sample.
    n_eligible : dict
        Class -> number of samples that qualified before the cap.
    n_held_out : dict
        Class -> number of samples of that class.
    threshold : float
    n_per_class : int
    """

    classes: tuple
    samples: dict[Any, np.ndarray]
    folds: dict[Any, np.ndarray]
    probabilities: dict[Any, np.ndarray]
    n_eligible: dict[Any, int]
    n_held_out: dict[Any, int]
    threshold: float
    n_per_class: int

    @property
    def empty(self) -> list:
        """Classes for which no sample qualifies."""
        return [label for label in self.classes if len(self.samples[label]) == 0]

    def reason(self, label: Any) -> str | None:
        """Why a class has no map (None when it has samples)."""
        if len(self.samples[label]):
            return None
        return (f"no held-out sample of class {label!r} was classified correctly with "
                f"p >= {self.threshold:g} ({self.n_held_out[label]} held-out samples of "
                f"that class)")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary for sidecars."""
        return {
            "threshold": self.threshold, "n_per_class": self.n_per_class,
            "classes": {str(label): {
                "samples": self.samples[label].tolist(),
                "folds": self.folds[label].tolist(),
                "p_true": [round(float(p), 6) for p in self.probabilities[label]],
                "n_eligible": self.n_eligible[label], "n_held_out": self.n_held_out[label],
                "empty_reason": self.reason(label)} for label in self.classes},
        }


def select_samples(folds: Sequence[Any] | np.ndarray, y_true: Sequence[Any] | np.ndarray,
                   probabilities: np.ndarray, classes: Sequence[Any] | None = None, *,
                   threshold: float = 0.75, n_per_class: int = 10) -> SampleSelection:
    """Choose the held-out samples whose occlusion maps explain each class.

    A sample qualifies when its own fold's model (which did not see it)
    classified it correctly with ``p(true class) >= threshold``. Up to
    ``n_per_class`` samples are kept per class, deterministically: highest
    ``p(true)`` first, ties by sample order. Classes where none qualifies are
    listed in ``empty`` with a :meth:`~SampleSelection.reason` to write in the
    outputs instead of a map.

    Parameters
    ----------
    folds : array-like, shape (n,)
        Fold (test fold) of each sample.
    y_true : array-like, shape (n,)
        True class of each sample (labels of ``classes``).
    probabilities : ndarray, shape (n, n_classes)
        Held-out predicted probabilities, columns in the order of ``classes``.
        The caller guarantees each row comes from the model of the sample's fold.
    classes : sequence, optional
        Class labels of the columns; default ``0..n_classes-1``.
    threshold : float
        Minimum probability of the true class (default .75, seed 003).
    n_per_class : int
        Samples kept per class at most (default 10, seed 003).

    Returns
    -------
    SampleSelection

    Examples
    --------
    >>> probabilities = np.array([[.9, .1], [.6, .4], [.2, .8], [.95, .05]])
    >>> selection = select_samples([0, 0, 1, 1], ["a", "a", "a", "a"], probabilities,
    ...                            classes=["a", "b"], n_per_class=1)
    >>> selection.samples["a"].tolist(), selection.empty
    ([3], ['b'])
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 2 or probabilities.shape[1] < 2:
        raise InputDataError(f"probabilities must be shaped (n_samples, n_classes), got "
                             f"{probabilities.shape}", path="probabilities")
    if not np.isfinite(probabilities).all():
        raise InputDataError("probabilities hold non-finite values", path="probabilities")
    n_samples, n_classes = probabilities.shape
    folds = np.asarray(folds)
    y_true = np.asarray(y_true)
    if folds.shape != (n_samples,) or y_true.shape != (n_samples,):
        raise InputDataError(f"folds {folds.shape} and y_true {y_true.shape} must both hold "
                             f"one value per row of probabilities ({n_samples})",
                             path="y_true")
    labels = tuple(range(n_classes)) if classes is None else tuple(classes)
    if len(labels) != n_classes:
        raise UsageError(f"{len(labels)} classes given for {n_classes} probability columns",
                         path="classes")
    if not 0.0 <= threshold <= 1.0:
        raise UsageError(f"threshold must be a probability, got {threshold}",
                         path="threshold")
    if int(n_per_class) != n_per_class or n_per_class < 1:
        raise UsageError(f"n_per_class must be a positive integer, got {n_per_class}",
                         path="n_per_class")
    position = {label: index for index, label in enumerate(labels)}
    unknown = [label for label in dict.fromkeys(y_true.tolist()) if label not in position]
    if unknown:
        raise InputDataError(f"y_true holds labels that are not classes: {unknown}",
                             path="y_true", fix=f"classes are {list(labels)}")
    true_index = np.array([position[label] for label in y_true.tolist()], dtype=int)
    p_true = probabilities[np.arange(n_samples), true_index]
    eligible = (probabilities.argmax(axis=1) == true_index) & (p_true >= threshold)

    samples, chosen_folds, chosen_p, n_eligible, n_held_out = {}, {}, {}, {}, {}
    for index, label in enumerate(labels):
        candidates = np.flatnonzero(eligible & (true_index == index))
        order = candidates[np.lexsort((candidates, -p_true[candidates]))]
        kept = order[:int(n_per_class)]
        samples[label] = kept
        chosen_folds[label] = folds[kept]
        chosen_p[label] = p_true[kept]
        n_eligible[label] = len(candidates)
        n_held_out[label] = int((true_index == index).sum())
    return SampleSelection(labels, samples, chosen_folds, chosen_p, n_eligible, n_held_out,
                           float(threshold), int(n_per_class))


# --------------------------------------------------------------------------- maps per class


@dataclass(frozen=True)
class ClassOcclusionMaps:
    """Mean occlusion map per class (see :func:`class_occlusion_maps`).

    Attributes
    ----------
    maps : dict
        Class -> float32 map shaped like the volumes (0 outside the mask), or
        None when no sample qualified (see ``empty``).
    n_samples : dict
        Class -> number of samples averaged.
    empty : dict
        Class -> reason, for classes without a map.
    info : dict
        Occlusion parameters and engine facts (per fold), and the selection.
    """

    maps: dict[Any, np.ndarray | None]
    n_samples: dict[Any, int]
    empty: dict[Any, str]
    info: dict[str, Any]


def class_occlusion_maps(models: Sequence[nn.Module] | Mapping[Any, nn.Module],
                         volumes: np.ndarray | torch.Tensor, selection: SampleSelection, *,
                         mask: np.ndarray | None = None,
                         window: int | Sequence[int] = DEFAULT_WINDOW,
                         stride: int | Sequence[int] | None = None, baseline: float = 0.0,
                         batch_size: int | None = None, method: Method = "incremental",
                         precision: Precision = "float32") -> ClassOcclusionMaps:
    """Per-class occlusion maps: the mean of the maps of each class's selected samples.

    Every sample is occluded with the model of its own fold (the one that
    held it out), with its true class as the target.

    Parameters
    ----------
    models : sequence or mapping of torch.nn.Module
        Fold -> trained model (a list is indexed by fold number).
    volumes : ndarray or Tensor, shape (n_samples, X, Y, Z)
        All samples, indexed as in :func:`select_samples`; only the chosen
        ones are read.
    selection : SampleSelection
        From :func:`select_samples`.
    mask, window, stride, baseline, batch_size, method, precision
        As in :func:`occlusion_maps`.

    Returns
    -------
    ClassOcclusionMaps

    Examples
    --------
    >>> from bids_affect.models.cnn3d import create_architecture
    >>> models = [create_architecture("deepemotion", 2, (8, 8, 8)) for _ in range(2)]
    >>> volumes = np.random.default_rng(0).normal(size=(4, 8, 8, 8)).astype(np.float32)
    >>> selection = select_samples([0, 0, 1, 1], [0, 1, 0, 1],
    ...                            np.array([[.9, .1], [.5, .5], [.8, .2], [.3, .7]]))
    >>> result = class_occlusion_maps(models, volumes, selection, window=4)
    >>> result.n_samples, list(result.empty)
    ({0: 2, 1: 0}, [1])
    """
    volumes = check_volumes(volumes)
    sums: dict[Any, np.ndarray] = {}
    runs: list[dict[str, Any]] = []
    by_fold: dict[Any, list[tuple[int, int]]] = {}
    for class_index, label in enumerate(selection.classes):
        for sample, fold in zip(selection.samples[label], selection.folds[label]):
            by_fold.setdefault(fold.item() if hasattr(fold, "item") else fold, []).append(
                (int(sample), class_index))
    for fold, members in by_fold.items():
        model = _fold_model(models, fold)
        samples = [sample for sample, _ in members]
        result = occlusion_maps(model, np.stack([np.asarray(volumes[s]) for s in samples]),
                                [class_index for _, class_index in members], mask=mask,
                                window=window, stride=stride, baseline=baseline,
                                batch_size=batch_size, method=method, precision=precision)
        for (_, class_index), sample_map in zip(members, result.maps):
            label = selection.classes[class_index]
            sums[label] = sums.get(label, 0.0) + sample_map.astype(np.float64)
        runs.append({"fold": fold, "samples": samples, **result.info})
    maps: dict[Any, np.ndarray | None] = {}
    n_samples = {label: len(selection.samples[label]) for label in selection.classes}
    for label in selection.classes:
        maps[label] = (sums[label] / n_samples[label]).astype(np.float32) \
            if n_samples[label] else None
    empty = {label: selection.reason(label) for label in selection.empty}
    return ClassOcclusionMaps(maps, n_samples, empty,  # type: ignore[arg-type]
                              {"runs": runs, "selection": selection.to_dict()})


def _fold_model(models: Sequence[nn.Module] | Mapping[Any, nn.Module], fold: Any) -> nn.Module:
    if isinstance(models, Mapping):
        known = list(models)
        found = fold in models
    else:  # a list is indexed by fold number (no negative indices)
        known = list(range(len(models)))
        found = isinstance(fold, (int, np.integer)) and 0 <= fold < len(models)
    if not found:
        raise UsageError(f"no model for fold {fold!r}", path="models",
                         fix=f"give one model per fold; folds with a model: {known}")
    return models[fold]  # type: ignore[index]
