"""Cross-validation that never leaks: leave one run out, or blocked k-fold with a gap.

Random splits of volumes are never used for scores: neighbouring volumes of a
scene would land on both sides. :func:`cv_splits` turns ``--cv`` into the
folds of one subject, named by the run (or block) they test.

Examples
--------
>>> runs = np.repeat(["run-1", "run-2"], 3)
>>> folds = cv_splits("auto", np.array([0, 1, 0, 1, 0, 1]), runs)
>>> folds.scheme, folds.names, [test.tolist() for _, test in folds.splits]
('loro', ['run-1', 'run-2'], [[0, 1, 2], [3, 4, 5]])
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import BaseCrossValidator

from bids_affect._utils.validation import check_choice, check_int, check_number
from bids_affect.exceptions import InputDataError, UsageError

__all__ = ["CV_SCHEMES", "BlockedKFold", "Folds", "LeaveOneRunOut", "acquisition_clock",
           "cv_splits", "make_cv"]

#: ``--cv`` choices: "auto" is leave-one-run-out with 2+ runs, blocked k-fold with one.
CV_SCHEMES = ("auto", "loro", "blocked")


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
            raise UsageError("leave-one-run-out needs at least 2 runs, got 1", path="cv",
                             fix="use blocked cross-validation for single-run data")
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
        check_int(n_splits, "n_splits", minimum=2, fix="use 2 or more folds (5 is usual)")
        check_number(gap, "gap", minimum=0.0,
                     fix="give the seconds left out on each side of a test block, e.g. 30")
        self.n_splits = n_splits
        self.gap = gap

    def get_n_splits(self, X=None, y=None, groups=None) -> int:
        return int(self.n_splits)

    def _iter_test_indices(self, X=None, y=None, groups=None):
        n_samples = len(X) if X is not None else len(groups)
        if n_samples < self.n_splits:
            raise InputDataError(f"{n_samples} samples cannot make {self.n_splits} blocks",
                                 path="n_splits", fix="use fewer folds or more data")
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


def cv_scheme(cv: str, n_runs: int) -> str:
    """``"loro"`` or ``"blocked"`` for ``--cv`` (``auto``: leave-one-run-out with 2+ runs).

    Examples
    --------
    >>> cv_scheme("auto", 3), cv_scheme("auto", 1), cv_scheme("blocked", 3)
    ('loro', 'blocked', 'blocked')
    """
    check_choice(cv, "cv", CV_SCHEMES)
    if cv == "auto":
        return "loro" if n_runs >= 2 else "blocked"
    if cv == "loro" and n_runs < 2:
        raise UsageError("leave-one-run-out needs at least 2 runs, got 1", path="cv",
                         fix="use blocked cross-validation for single-run data")
    return cv


def make_cv(cv: str, runs: np.ndarray, n_splits: int = 5, gap: float = 30.0):
    """The splitter for ``--cv`` (``auto``: leave-one-run-out with 2+ runs, else blocked)."""
    if cv_scheme(cv, len(np.unique(runs))) == "loro":
        return "loro", LeaveOneRunOut()
    return "blocked", BlockedKFold(n_splits=n_splits, gap=gap)


@dataclass(frozen=True)
class Folds:
    """The folds of one cross-validation: scheme, (train, test) index pairs, fold names."""

    scheme: str
    splits: list[tuple[np.ndarray, np.ndarray]]
    names: list[str]


def cv_splits(cv: str, y: np.ndarray, runs: np.ndarray, *, times: np.ndarray | None = None,
              n_splits: int = 5, gap: float = 30.0) -> Folds:
    """The folds of ``cv`` for samples of classes ``y`` in ``runs``.

    Leave-one-run-out folds are named by the run they test, blocked folds
    ``block-K``. Every training set must hold 2 or more classes.

    Parameters
    ----------
    cv : {"auto", "loro", "blocked"}
        Cross-validation scheme.
    y : ndarray
        Class of each sample.
    runs : ndarray
        Run of each sample.
    times : ndarray, optional
        Acquisition time of each sample in seconds; required by blocked k-fold
        with a gap (use :func:`acquisition_clock` for several runs).
    n_splits, gap : int, float
        Folds and gap (seconds) of blocked k-fold.
    """
    runs = np.asarray(runs)
    scheme, splitter = make_cv(cv, runs, n_splits, gap)
    if scheme == "loro":
        splits = list(splitter.split(y, y, groups=runs))
        _, first = np.unique(runs, return_index=True)
        names = [str(run) for run in runs[np.sort(first)]]
    else:
        if times is None and gap > 0:
            raise UsageError(f"blocked k-fold's gap is in seconds ({gap}), so it needs the "
                             f"acquisition time of each sample", path="times",
                             fix="pass times (acquisition_clock(run_index, seconds)), "
                                 "or gap=0")
        clock = times if times is not None else np.arange(len(y), dtype=float)
        splits = list(splitter.split(y, y, groups=clock))
        names = [f"block-{k + 1}" for k in range(len(splits))]
    for (train, _test), name in zip(splits, names):
        if len(np.unique(y[train])) < 2:
            raise InputDataError(f"too few volumes for cv {scheme!r}: the training set of "
                                 f"fold {name} holds fewer than 2 classes", path="cv",
                                 fix="use another cross-validation, fewer folds, or more data")
    return Folds(scheme, splits, names)
