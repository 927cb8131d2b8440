"""Functional alignment of subjects watching the same movie, fitted inside training folds.

Voxels of different brains do not correspond one to one, even in a standard
space: the same response lands a few millimetres apart, or in a different mix
of voxels. Functional alignment learns, from time-locked responses to a shared
stimulus (never from labels), a map from each subject's voxels to a common
space, so that a decoder trained on some subjects can read another one.

Methods (:data:`ALIGNMENT_METHODS`), all fitted by :class:`GroupAlignment` on
the training subjects only, with fmralign's estimators doing each subject's fit:

``none``
    The identity: voxels of the standard space taken as they are.
``srm``
    Deterministic shared response model (Chen et al. 2015): each subject's data
    ``X_s`` (time x voxels) ~ ``S W_s'``, with ``W_s`` orthonormal (voxels x k)
    and ``S`` (time x k) the shared response. Alternating updates: each
    ``W_s`` by fmralign's :class:`~fmralign.methods.DetSRM` (orthogonal
    Procrustes of ``X_s`` onto ``S``), then ``S`` = mean of ``X_s W_s``.
    Aligned data live in the k-dimensional shared space.
``procrustes``
    Each subject rotated (and scaled) onto a template in voxel space by
    fmralign's :class:`~fmralign.methods.Procrustes`; the template starts as
    the subjects' mean and is re-estimated as the mean of the aligned subjects
    (fmralign's template scheme).
``ridge``
    The same with a ridge regression from each subject's voxels to the
    template (fmralign's :class:`~fmralign.methods.RidgeAlignment`, penalty by
    its internal cross-validation over contiguous blocks of time points,
    computed from one SVD per block instead of one refit per penalty:
    :class:`BlockRidgeAlignment`).

Voxel-space maps are ``n_voxels x n_voxels``; above ``max_parcel_size`` voxels
they are fitted piecewise (fmralign's ``PiecewiseAlignment``) within parcels:
an atlas parcellation given as ``parcels``, or else contiguous chunks of the
mask's voxel order (slabs of neighbouring voxels), which bounds memory to
``n_voxels x max_parcel_size`` per subject.

A subject left out of the group fit gets its own map with
:meth:`GroupAlignment.fit_subject`, from its responses at time points whose
template rows are known (see :mod:`bids_affect.decoding.cross_subject` for the
nested scheme that keeps scored data out of that fit).

Memory: the group fit streams subjects. ``fit`` accepts a callable returning a
fresh iterable of arrays (for example memory-mapped rows read one subject at a
time); each pass over the subjects holds one subject's float32 data, the
template and the running sum. Learned maps are kept per subject (``k x
n_voxels`` for SRM).

Examples
--------
>>> rng = np.random.default_rng(0)
>>> shared = rng.standard_normal((80, 5)).astype(np.float32)
>>> mixing = rng.standard_normal((5, 40)).astype(np.float32)
>>> subjects = [(shared @ mixing)[:, rng.permutation(40)] for _ in range(3)]
>>> srm = GroupAlignment("srm", n_components=5, random_state=0).fit(subjects)
>>> srm.template_.shape, srm.transform(subjects[0], subject=0).shape
((80, 5), (80, 5))
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from fmralign.methods import DetSRM, Identity, Procrustes, RidgeAlignment
from fmralign.methods.piecewise import PiecewiseAlignment
from scipy import linalg
from sklearn.base import BaseEstimator
from sklearn.linear_model import Ridge
from sklearn.metrics import r2_score
from sklearn.model_selection import check_cv
from sklearn.utils.validation import check_is_fitted

from bids_affect.exceptions import InputDataError, UsageError

LOGGER = logging.getLogger("bids_affect.alignment")

#: Alignment methods by name, with a one-line description (``--alignment``).
ALIGNMENT_METHODS: dict[str, str] = {
    "none": "no alignment: the standard space's voxels as they are",
    "srm": "shared response model (fmralign DetSRM): k shared components",
    "procrustes": "scaled orthogonal Procrustes onto a voxel-space template (fmralign)",
    "ridge": "ridge regression onto a voxel-space template (fmralign RidgeAlignment)",
}

#: Methods whose aligned data stay in voxel space (one value per mask voxel).
VOXEL_SPACE_METHODS = ("none", "procrustes", "ridge")

#: Default number of shared components of the SRM.
DEFAULT_N_COMPONENTS = 50

#: Template updates by method when ``n_iter`` is None (fmralign's 2 for the voxel-space ones).
DEFAULT_N_ITER = {"none": 0, "srm": 10, "procrustes": 2, "ridge": 2}

#: Largest parcel (voxels) of the voxel-space methods before they are fitted piecewise.
DEFAULT_MAX_PARCEL_SIZE = 1000

Subjects = Sequence[np.ndarray] | Callable[[], Iterable[np.ndarray]]


def check_alignment(names: str | Sequence[str]) -> list[str]:
    """Validated, de-duplicated alignment names (a comma-separated string or a sequence).

    Examples
    --------
    >>> check_alignment("none,SRM")
    ['none', 'srm']
    >>> check_alignment(["hyper"])
    Traceback (most recent call last):
    ...
    bids_affect.exceptions.UsageError: --alignment: 'hyper' is unknown; fix: use ...
    """
    if isinstance(names, str):
        names = names.split(",")
    methods = [str(name).strip().lower() for name in names if str(name).strip()]
    if not methods:
        raise UsageError("is empty", path="--alignment",
                         fix=f"use some of {', '.join(ALIGNMENT_METHODS)}")
    for name in methods:
        if name not in ALIGNMENT_METHODS:
            raise UsageError(f"{name!r} is unknown", path="--alignment",
                             fix=f"use one of {', '.join(ALIGNMENT_METHODS)}")
    return list(dict.fromkeys(methods))


def contiguous_parcels(n_voxels: int, max_parcel_size: int = DEFAULT_MAX_PARCEL_SIZE
                       ) -> np.ndarray:
    """Parcel label of each voxel: equal chunks of at most ``max_parcel_size`` in mask order.

    A mask's voxels are listed in C order of the grid, so consecutive voxels are
    neighbours and a chunk is a slab of the brain: a crude but local
    parcellation for piecewise alignment when no atlas is given.

    Examples
    --------
    >>> np.bincount(contiguous_parcels(10, 4)).tolist()
    [4, 3, 3]
    """
    if int(max_parcel_size) < 1:
        raise UsageError(f"must be at least 1, got {max_parcel_size}", path="max_parcel_size")
    n_parcels = int(np.ceil(n_voxels / max_parcel_size))
    return (np.arange(n_voxels) * n_parcels // max(n_voxels, 1)).astype(np.int64)


#: fmralign's default penalties of its ridge alignment.
FMRALIGN_RIDGE_ALPHAS = (0.1, 1.0, 10.0, 100.0, 1000.0)


class BlockRidgeAlignment(RidgeAlignment):
    """fmralign's :class:`~fmralign.methods.RidgeAlignment`, its penalty found by algebra.

    fmralign fits ``RidgeCV(alphas, cv=4, scoring="r2")``: a grid search that
    refits a ridge for every penalty and fold (contiguous folds of time
    points). Here each fold's centred training data get one SVD, from which
    the predictions of every penalty follow; the R^2 scores, the choice (the
    first best penalty) and the final :class:`~sklearn.linear_model.Ridge`
    refit on all data are fmralign's, so ``transform`` gives its result.

    Parameters
    ----------
    alphas : sequence of float or None
        Penalties tried (None: fmralign's :data:`FMRALIGN_RIDGE_ALPHAS`).
    cv : int or splitter
        Folds of time points (default 4 contiguous blocks, as fmralign).

    Attributes
    ----------
    alpha_ : float
        The chosen penalty.
    R : Ridge
        The fitted map (fmralign's attribute name).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((40, 5))
    >>> fitted = BlockRidgeAlignment().fit(X, X @ rng.standard_normal((5, 5)))
    >>> fitted.alpha_, fitted.transform(X).shape
    (0.1, (40, 5))
    """

    def fit(self, X, Y):
        """Choose the penalty by blocked cross-validated R^2, then fit the ridge map."""
        X = np.asarray(X)
        Y = np.asarray(Y)
        alphas = np.asarray(FMRALIGN_RIDGE_ALPHAS if self.alphas is None else self.alphas,
                            dtype=float)
        scores = np.zeros(len(alphas))
        for train, test in check_cv(self.cv).split(X):
            x_mean, y_mean = X[train].mean(axis=0), Y[train].mean(axis=0)
            left, singular, right = linalg.svd(X[train] - x_mean, full_matrices=False)
            projected = left.T @ (Y[train] - y_mean)
            test_scores = (X[test] - x_mean) @ right.T
            for index, alpha in enumerate(alphas):
                predicted = (test_scores * (singular / (singular**2 + alpha))) @ projected
                scores[index] += r2_score(Y[test], predicted + y_mean)
        self.alpha_ = float(alphas[int(np.argmax(scores))])
        self.R = Ridge(alpha=self.alpha_, fit_intercept=True).fit(X, Y)
        return self


def _method_estimator(method: str, n_components: int, alphas: Sequence[float] | None):
    """A fresh fmralign estimator for one subject (or one parcel) of ``method``."""
    if method == "srm":
        return DetSRM(n_components=n_components)
    if method == "procrustes":
        return Procrustes(scaling=True)
    if method == "ridge":
        return BlockRidgeAlignment(alphas=None if alphas is None else list(alphas))
    return Identity()


def _float32(X: Any, name: str = "X") -> np.ndarray:
    array = np.asarray(X, dtype=np.float32)
    if array.ndim != 2:
        raise InputDataError(f"must be a 2D array (time points x voxels), got shape "
                             f"{array.shape}", path=name)
    if not np.isfinite(array).all():
        raise InputDataError("contains NaN or infinite values", path=name,
                             fix="clean the samples again (masking, confounds)")
    return array


class _Reiterable:
    """Subjects given as a list or as a callable returning a fresh iterable of arrays."""

    def __init__(self, subjects: Subjects):
        self.subjects = subjects

    def __iter__(self):
        items = self.subjects() if callable(self.subjects) else self.subjects
        for index, X in enumerate(items):
            yield _float32(X, f"subjects[{index}]")


class GroupAlignment(BaseEstimator):
    """Functional alignment of several subjects to a shared space (fmralign estimators).

    Parameters
    ----------
    method : {"none", "srm", "procrustes", "ridge"}
        See :data:`ALIGNMENT_METHODS`.
    n_components : int
        Shared components of the SRM (ignored by the other methods).
    n_iter : int or None
        Alternating updates of the template: None gives :data:`DEFAULT_N_ITER`
        (10 for the SRM, fmralign's 2 for Procrustes and ridge).
    parcels : array of int or None
        Parcel of each voxel for the piecewise voxel-space methods (for
        example atlas regions resampled to the mask); None: contiguous chunks
        (:func:`contiguous_parcels`) when there are more voxels than
        ``max_parcel_size``, else one parcel.
    max_parcel_size : int
        See ``parcels``.
    alphas : sequence of float or None
        Ridge penalties tried by the ridge method (None: fmralign's defaults).
    random_state : int, Generator or None
        Seed of the SRM's random initial shared response.

    Attributes
    ----------
    method_ : str
        The validated method.
    template_ : ndarray or None
        ``(n_timepoints, n_features_out_)`` float32: the shared response (SRM) or
        the voxel-space template; None for ``none``.
    estimators_ : list
        The fitted fmralign estimator of each subject given to ``fit``.
    parcels_ : ndarray or None
        Parcels used by the piecewise methods (None: one piece).
    n_subjects_, n_timepoints_, n_features_in_, n_features_out_ : int
        Sizes of the fit.
    loss_ : list of float
        Per update, the mean squared distance of the aligned subjects to the
        template (the quantity the template update reduces).

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> base = rng.standard_normal((60, 30)).astype(np.float32)
    >>> subjects = [base[:, rng.permutation(30)] for _ in range(3)]
    >>> aligner = GroupAlignment("procrustes").fit(subjects)
    >>> new = aligner.fit_subject(base[:, ::-1], np.arange(60))
    >>> float(np.corrcoef(new.transform(base[:, ::-1]).ravel(),
    ...                   aligner.template_.ravel())[0, 1]) > 0.99
    True
    """

    def __init__(self, method: str = "srm", n_components: int = DEFAULT_N_COMPONENTS,
                 n_iter: int | None = None, parcels: np.ndarray | None = None,
                 max_parcel_size: int = DEFAULT_MAX_PARCEL_SIZE,
                 alphas: Sequence[float] | None = None, random_state=None):
        self.method = method
        self.n_components = n_components
        self.n_iter = n_iter
        self.parcels = parcels
        self.max_parcel_size = max_parcel_size
        self.alphas = alphas
        self.random_state = random_state

    # ------------------------------------------------------------------ checks

    def _check_params(self, n_timepoints: int, n_voxels: int) -> tuple[str, int]:
        (method,) = check_alignment([self.method])
        n_iter = self.n_iter if self.n_iter is not None else max(1, DEFAULT_N_ITER[method])
        if int(n_iter) < 1:
            raise UsageError(f"must be at least 1, got {self.n_iter}", path="n_iter")
        if method == "srm" and not 1 <= int(self.n_components) <= min(n_timepoints, n_voxels):
            raise UsageError(f"must be between 1 and min(time points, voxels) = "
                             f"{min(n_timepoints, n_voxels)}, got {self.n_components}",
                             path="n_components", fix="use fewer shared components")
        return method, int(n_iter)

    def _resolve_parcels(self, method: str, n_voxels: int) -> np.ndarray | None:
        if method not in ("procrustes", "ridge"):
            return None
        if self.parcels is not None:
            parcels = np.asarray(self.parcels)
            if parcels.shape != (n_voxels,) or not np.issubdtype(parcels.dtype, np.integer):
                raise InputDataError(f"must hold one integer parcel per voxel ({n_voxels}), "
                                     f"got shape {parcels.shape} and dtype {parcels.dtype}",
                                     path="parcels")
            return parcels
        if n_voxels <= int(self.max_parcel_size):
            return None
        parcels = contiguous_parcels(n_voxels, self.max_parcel_size)
        LOGGER.info("%s alignment of %d voxels: fitted piecewise in %d contiguous chunks of "
                    "at most %d voxels (give parcels for an atlas parcellation)", method,
                    n_voxels, parcels.max() + 1, self.max_parcel_size)
        return parcels

    def _new_estimator(self):
        base = _method_estimator(self.method_, int(self.n_components), self.alphas)
        if self.parcels_ is None:
            return base
        return PiecewiseAlignment(method=base, labels=self.parcels_)

    # ------------------------------------------------------------------ fitting

    def fit(self, subjects: Subjects, y=None) -> GroupAlignment:
        """Learn the template and each subject's map from time-locked responses.

        Parameters
        ----------
        subjects : sequence of arrays, or callable returning an iterable of arrays
            One ``(n_timepoints, n_voxels)`` array per subject, row ``t`` of
            every subject being the response to the same moment of the
            stimulus. A callable is called once per pass and may load each
            subject lazily (memory maps), so only one is in memory at a time.
        y : None
            Ignored: alignment never sees labels.

        Returns
        -------
        self
        """
        data = _Reiterable(subjects)
        first = next(iter(data), None)
        if first is None:
            raise InputDataError("no subject to align", path="subjects")
        n_timepoints, n_voxels = first.shape
        self.method_, n_iter = self._check_params(n_timepoints, n_voxels)
        self.parcels_ = self._resolve_parcels(self.method_, n_voxels)
        self.n_timepoints_, self.n_features_in_ = n_timepoints, n_voxels
        self.loss_ = []
        if self.method_ == "none":
            self.estimators_ = [self._new_estimator() for _ in data]
            self.n_subjects_ = len(self.estimators_)
            self.template_ = None
            self.n_features_out_ = n_voxels
            return self
        if self.method_ == "srm":
            rng = np.random.default_rng(self.random_state)
            template = rng.standard_normal((n_timepoints, int(self.n_components)))
            template = template.astype(np.float32)
        else:
            template = self._mean(data, n_timepoints, n_voxels)
        for _ in range(n_iter):
            template, estimators = self._update(data, template, n_timepoints, n_voxels)
        self.template_ = template
        self.estimators_ = estimators
        self.n_subjects_ = len(estimators)
        self.n_features_out_ = template.shape[1]
        return self

    @staticmethod
    def _check_shape(X: np.ndarray, index: int, n_timepoints: int, n_voxels: int) -> None:
        if X.shape != (n_timepoints, n_voxels):
            raise InputDataError(f"has shape {X.shape}, subject 0 {(n_timepoints, n_voxels)}: "
                                 f"every subject needs the same time points and voxels",
                                 path=f"subjects[{index}]",
                                 fix="use the time points common to all subjects and one mask")

    def _mean(self, data: _Reiterable, n_timepoints: int, n_voxels: int) -> np.ndarray:
        total = np.zeros((n_timepoints, n_voxels), np.float32)  # a voxel-space template
        n = 0
        for index, X in enumerate(data):
            self._check_shape(X, index, n_timepoints, n_voxels)
            total += X
            n += 1
        return total / np.float32(n)

    def _update(self, data: _Reiterable, template: np.ndarray, n_timepoints: int,
                n_voxels: int) -> tuple[np.ndarray, list]:
        """One pass: each subject mapped onto ``template``; the new template is their mean."""
        total = np.zeros(template.shape, np.float32)
        estimators = []
        squared = 0.0
        for index, X in enumerate(data):
            self._check_shape(X, index, n_timepoints, n_voxels)
            estimator = self._new_estimator().fit(X, template)
            aligned = np.asarray(estimator.transform(X), np.float32)
            squared += float(np.square(aligned - template).sum())
            total += aligned
            estimators.append(estimator)
        self.loss_.append(squared / (len(estimators) * template.size))
        return total / np.float32(len(estimators)), estimators

    # ------------------------------------------------------------------ using the maps

    def transform(self, X: np.ndarray, subject: int) -> np.ndarray:
        """Data of fitted subject number ``subject`` (any time points) in the common space.

        Examples
        --------
        >>> X = np.eye(4, dtype=np.float32)
        >>> GroupAlignment("none").fit([X, X]).transform(X, subject=1).shape
        (4, 4)
        """
        check_is_fitted(self)
        if not 0 <= int(subject) < self.n_subjects_:
            raise UsageError(f"must be between 0 and {self.n_subjects_ - 1}, got {subject}",
                             path="subject")
        return self._apply(self.estimators_[int(subject)], X)

    def fit_subject(self, X: np.ndarray, timepoints: Sequence[int] | np.ndarray):
        """The map of a subject left out of ``fit``, learned at known template rows.

        Parameters
        ----------
        X : ndarray
            ``(len(timepoints), n_voxels)``: the new subject's responses at
            those time points of the shared stimulus.
        timepoints : array of int
            Rows of ``template_`` that the rows of ``X`` correspond to.

        Returns
        -------
        estimator
            A fitted fmralign estimator; :meth:`apply` (or its ``transform``)
            maps the subject's data to the common space.
        """
        check_is_fitted(self)
        X = _float32(X)
        timepoints = np.asarray(timepoints, dtype=np.intp)
        if X.shape != (len(timepoints), self.n_features_in_):
            raise InputDataError(f"has shape {X.shape}, expected ({len(timepoints)}, "
                                 f"{self.n_features_in_}): one row per time point given, one "
                                 f"column per voxel of the fit", path="X")
        if self.method_ == "none":
            return self._new_estimator()
        if len(timepoints) and (timepoints.min() < 0 or timepoints.max() >= self.n_timepoints_):
            raise InputDataError(f"must index the {self.n_timepoints_} template rows",
                                 path="timepoints")
        if self.method_ == "srm" and len(timepoints) < self.n_features_out_:
            raise InputDataError(f"{len(timepoints)} time points cannot fit "
                                 f"{self.n_features_out_} shared components", path="timepoints",
                                 fix="use fewer components or more alignment time points")
        return self._new_estimator().fit(X, self.template_[timepoints])

    @staticmethod
    def _apply(estimator, X: np.ndarray) -> np.ndarray:
        return np.asarray(estimator.transform(_float32(X)), np.float32)

    def apply(self, estimator, X: np.ndarray) -> np.ndarray:
        """``X`` through a map from :meth:`fit_subject`, as float32."""
        return self._apply(estimator, X)
