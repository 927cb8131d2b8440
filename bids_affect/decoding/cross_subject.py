"""Cross-subject decoding: leave one subject out, with functional alignment inside the folds.

Seeds 001/004 report that their decoder collapses on unseen subjects, and their
"cross-subject" model pools every subject's volumes in one random split, which
leaks (neighbouring volumes of one scene fall on both sides). Here each
subject in turn is held out and decoded by a model trained on the others.

Folds
-----
All subjects watched the same movie, so their volumes share a timeline: run
and acquisition time (volumes of different subjects at the same run and time
saw the same frame; :func:`harmonise_subjects` intersects them). The timeline
is cut into test segments: runs (leave-one-run-out) or, for a single run,
contiguous blocks with a gap in seconds. A fold is a pair (held-out subject
``h``, test segment ``r``):

* the decoder is trained on the other subjects' labelled volumes outside
  ``r`` (and outside the gap around a block) and tested on ``h``'s labelled
  volumes inside ``r``. Training on the other subjects' copy of segment ``r``
  would let the decoder recognise the scenes of the test segment by their
  stimulus-locked response (shared by every brain, and very similar after
  alignment) instead of their emotion: labels follow the scenes, so such a
  score would not measure emotion decoding;
* the group alignment (:class:`~bids_affect.alignment.GroupAlignment`) is
  fitted once per held-out subject, on the other subjects' time-locked
  responses (all segments: no labels are used and ``h`` is not in it);
* ``h``'s own map to the common space is fitted, for each test segment,
  only on its volumes outside ``r`` (and the gap), against the template at the
  same time points: the scored volumes never enter any fit (nested scheme).

Every alignment method is scored on exactly these folds, so their scores are
paired by subject (``gain_over_none`` in the summary).

Chance and significance
-----------------------
Subjects share the movie, so the null shifts the movie's label sequence: in
each permutation every run's sequence of labelled moments is shifted
circularly (:func:`label_timeline`), for every subject at once, and every
fold's decoder is refitted on the shifted training labels and scored against
the shifted test labels (the alignment uses no labels and is kept). For ridge
decoders one linear solve per fold gives the observed fit and every refit
(:func:`_ridge_fold`); other decoders are refitted.
Shifting only the held-out subject's labels against fixed decoders is not
valid here (see :func:`label_timeline`). Each held-out subject gets its chance
level (the null's mean), 95% null band and p. Permutation ``j`` is one shift
of the movie for all held-out subjects, so the mean over subjects of their
``j``-th null scores is a draw of the mean score's null: the group's chance
level, band and p. Held-out subjects' scores are not independent
(overlapping training sets, one movie), so no t-test or prevalence inference
is run on them (:data:`GROUP_TEST_NOTE`).

The leakage audit repeats the peers' pooled random 80/20 split of every
subject's volumes (no alignment) and reports, per subject, the score on its
volumes in the random test set: reported beside the honest score, never used.

Memory: subjects are read one at a time from their (memory-mapped) sample
matrices; only the rows a step needs are loaded. The training matrix of a fold
(other subjects' labelled volumes x features) is the largest array; with the
SRM its features are the k shared components, without alignment or with the
voxel-space methods they are the mask's voxels (use an ROI mask or fewer
voxels for many subjects).

Examples
--------
>>> subjects = example_subjects(n_subjects=3, n_runs=2, n_volumes=40, n_voxels=30,
...                             random_state=0)
>>> result = decode_across_subjects(subjects, model="ridge", alignment="none",
...                                 n_permutations=20, random_state=0)
>>> list(result.tables["none"].columns) == list(RESULT_COLUMNS)
True
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import linalg, sparse
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.model_selection import StratifiedShuffleSplit
from sklearn.utils.validation import check_is_fitted

from bids_affect._utils.validation import check_int, check_number
from bids_affect.alignment import (
    DEFAULT_MAX_PARCEL_SIZE,
    DEFAULT_N_COMPONENTS,
    DEFAULT_N_ITER,
    VOXEL_SPACE_METHODS,
    GroupAlignment,
    check_alignment,
)
from bids_affect.decoding import (
    balanced_accuracies,
    check_models,
    circular_shifts,
    cross_validate,
    is_cnn,
    make_decoder,
    parse_decoder,
    softmax_of_decision,
)
from bids_affect.decoding.cv import cv_scheme
from bids_affect.exceptions import InputDataError, UsageError
from bids_affect.stats.group import check_standard_space
from bids_affect.stats.permutation import null_summary

LOGGER = logging.getLogger("bids_affect.decoding")

#: Columns of ``group/task-T_desc-MODEL[ALIGNMENT]_decoding.tsv``, in order.
RESULT_COLUMNS = ("participant_id", "balanced_accuracy", "chance_balanced_accuracy",
                  "null_low", "null_high", "p_permutation", "n_permutations", "alignment",
                  "random_split_balanced_accuracy")

#: Times (s) of two volumes closer than this are the same moment of the stimulus.
TIME_TOLERANCE_S = 1e-3

#: Largest relative difference between two subjects' TRs that still counts as equal.
TR_TOLERANCE = 1e-3

FOLD_SCHEME = (
    "fold = (held-out subject h, test segment r): the decoder is trained on the other "
    "subjects' labelled volumes outside r (and outside the gap around a block) and tested "
    "on h's labelled volumes in r; the group alignment is fitted on the other subjects' "
    "time-locked responses (no labels); h's map to the common space is fitted on h's "
    "volumes outside r only, against the template at the same time points")

#: Smallest circular shift, as a fraction of the run. 0 draws shifts uniformly among all
#: non-zero shifts, which keeps the test valid (the shifts of a run form a group): keeping
#: only shifts of 10% or more, as the within-subject null does, made a shift test liberal
#: on data without signal (scenes of 6-14 volumes, 3 runs of 60, predictions independent
#: of the labels: 7.9% of 1,000 p-values below .05 and 2.5% below .01, against 5.1% and
#: 0.8% with all shifts).
MIN_SHIFT_FRACTION = 0.0

PERMUTATION_SCHEME = (
    "the movie's label sequence shifted circularly within each run (any non-zero shift), for "
    "every subject at once; every fold's decoder refitted on the shifted training labels "
    "(algebraically for ridge decoders) and scored on the shifted test labels; the "
    "alignment, which uses no labels, is kept")


class NotEnoughSubjects(InputDataError):
    """Fewer than two subjects: cross-subject models cannot be fitted.

    Raised before any work; a group workflow can catch it, log it as a warning
    ("cross-subject analyses skipped") and run the other group analyses.
    """


# --------------------------------------------------------------------------- inputs


@dataclass
class SubjectSamples:
    """One subject's samples for cross-subject models.

    Attributes
    ----------
    participant_id : str
        Subject label (without ``sub-``).
    X : ndarray
        ``(n_volumes, n_voxels)`` float32, every volume (labelled or not), the
        columns being the voxels of one standard-space mask shared by all
        subjects; a memory map is read one block of rows at a time.
    labels : sequence
        Class of each volume, or None (unlabelled volumes still serve the
        alignment, which uses no labels).
    runs : sequence
        Run of each volume, named the same way for every subject (the run key
        without the subject, e.g. ``task-movie_run-2``).
    times : sequence of float
        Acquisition time of each volume in its run (s), ``i * TR + StartTime``.
    space : str or None
        The samples' space (native spaces are refused).
    tr : float or None
        Repetition time (s); subjects must agree.
    mask_digest : str or None
        Fingerprint of the mask (:func:`mask_digest`); subjects must agree.
    usable : ndarray of bool or None
        False for volumes to ignore entirely (censored); None: all usable.
    """

    participant_id: str
    X: np.ndarray
    labels: Sequence[Any]
    runs: Sequence[Any]
    times: Sequence[float]
    space: str | None = None
    tr: float | None = None
    mask_digest: str | None = None
    usable: np.ndarray | None = None

    @classmethod
    def from_sample_set(cls, participant_id: str, samples: Any, *, space: str | None,
                        min_volumes: int | None = None) -> SubjectSamples:
        """From a participant-level :class:`~bids_affect.bold.SampleSet` (read-only).

        Labels are those :meth:`~bids_affect.bold.SampleSet.labelled` keeps
        (classes with at least ``min_volumes`` volumes; its default when None);
        other volumes keep no label but still serve the alignment; censored
        volumes are not used at all.
        """
        table = samples.table
        rows = samples.labelled() if min_volumes is None else samples.labelled(min_volumes)
        labels = np.full(len(table), None, dtype=object)
        labels[rows] = table["label"].to_numpy(object)[rows]
        trs = sorted({float(run["tr"]) for run in samples.manifest.get("runs", [])})
        if len(trs) > 1:
            raise InputDataError(f"runs have different TRs {trs}", path=str(samples.folder),
                                 fix="decode runs of one TR together")
        return cls(participant_id=str(participant_id), X=samples.X, labels=labels,
                   runs=table["run"].to_numpy(object), times=table["time"].to_numpy(float),
                   space=space, tr=trs[0] if trs else None,
                   mask_digest=mask_digest(samples.mask_img),
                   usable=~table["censored"].to_numpy(bool))


def mask_digest(mask_img: Any) -> str:
    """A short fingerprint of a mask image: its shape, affine (to 1e-4 mm) and voxels.

    Examples
    --------
    >>> import nibabel as nib
    >>> mask = nib.Nifti1Image(np.ones((2, 2, 2), np.uint8), np.eye(4))
    >>> len(mask_digest(mask))
    16
    """
    data = np.asarray(mask_img.dataobj) > 0
    digest = hashlib.sha256(repr(data.shape).encode())
    digest.update(np.round(np.asarray(mask_img.affine, float), 4).tobytes())
    digest.update(np.packbits(data).tobytes())
    return digest.hexdigest()[:16]


def check_cross_subject_spaces(spaces: Mapping[str, str | None]) -> str:
    """The one standard space of the subjects; native data are refused (one-line reason).

    Examples
    --------
    >>> check_cross_subject_spaces({"01": "T1w", "02": "T1w"})
    Traceback (most recent call last):
    ...
    bids_affect.exceptions.UsageError: --space: cross-subject decoding need every subject ...
    """
    return check_standard_space(spaces, "cross-subject decoding")


@dataclass
class Harmonised:
    """Subjects checked and put on one timeline and one set of classes.

    Attributes
    ----------
    participant_ids : list of str
    classes : list of str
        Classes labelled in every subject (sorted): the decoders' classes.
    codes : list of ndarray
        Per subject, the class index of each volume (-1: not decoded).
    run_index : list of ndarray
        Per subject, each volume's run as an index into ``run_names`` (-1: unusable).
    times : list of ndarray
        Per subject, each volume's time in its run (s).
    run_names : list of str
    timeline : ndarray
        ``(n_timepoints, 2)``: run index and time (ms) of each time point that
        every subject has (usable), in temporal order.
    timeline_rows : list of ndarray
        Per subject, its volume at each timeline point.
    volume_keys : list of ndarray
        Per subject, each volume's moment of the stimulus as one integer
        (``run * 10**12 + time in ms``; -1: unusable).
    n_voxels : int
    space : str or None
    tr : float or None
    notes : list of str
        What was harmonised (for the sidecar).
    dropped_classes : dict
        Class -> subjects lacking it (left out of every decoder).
    """

    participant_ids: list[str]
    classes: list[str]
    codes: list[np.ndarray]
    run_index: list[np.ndarray]
    times: list[np.ndarray]
    run_names: list[str]
    timeline: np.ndarray
    timeline_rows: list[np.ndarray]
    volume_keys: list[np.ndarray]
    n_voxels: int
    space: str | None
    tr: float | None
    notes: list[str] = field(default_factory=list)
    dropped_classes: dict[str, list[str]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record of the harmonisation."""
        return {"participants": self.participant_ids, "classes": self.classes,
                "dropped_classes": self.dropped_classes, "runs": self.run_names,
                "n_common_timepoints": int(len(self.timeline)), "n_voxels": self.n_voxels,
                "space": self.space, "tr": self.tr, "notes": self.notes}


def _label_strings(labels: Sequence[Any], n: int, name: str) -> np.ndarray:
    values = np.asarray(labels, dtype=object)
    if values.shape != (n,):
        raise InputDataError(f"{values.shape[0] if values.ndim else 0} labels for {n} volumes",
                             path=name, fix="give one label (or None) per volume")
    out = np.empty(n, dtype=object)
    for index, value in enumerate(values):
        missing = value is None or (isinstance(value, float) and np.isnan(value)) or \
            str(value) in ("", "n/a")
        out[index] = None if missing else str(value)
    return out


def harmonise_subjects(subjects: Sequence[SubjectSamples], *,
                       need_timeline: bool = True) -> Harmonised:
    """Check subjects for cross-subject models and harmonise what is safe to harmonise.

    Refused, with one line naming the subjects: fewer than two subjects
    (:class:`NotEnoughSubjects`), native or different spaces, different masks
    (voxel counts or :func:`mask_digest`), different TRs, no common time
    points (when alignment needs them), fewer than two common classes.
    Harmonised, and said in ``notes``: classes labelled in only some subjects
    are left out of every decoder (intersection), and only time points every
    subject has serve the alignment.

    Parameters
    ----------
    subjects : sequence of SubjectSamples
    need_timeline : bool
        Whether common time points are required (functional alignment).

    Returns
    -------
    Harmonised

    Examples
    --------
    >>> subjects = example_subjects(n_subjects=2, random_state=0)
    >>> harmonise_subjects(subjects[:1])
    Traceback (most recent call last):
    ...
    bids_affect.decoding.cross_subject.NotEnoughSubjects: subjects: cross-subject decoding \
needs at least 2 subjects, got 1 (01); fix: skip cross-subject analyses or add subjects
    """
    subjects = list(subjects)
    ids = [str(s.participant_id) for s in subjects]
    if len(subjects) < 2:
        raise NotEnoughSubjects(f"cross-subject decoding needs at least 2 subjects, got "
                                f"{len(subjects)} ({', '.join(ids) or 'none'})",
                                path="subjects", fix="skip cross-subject analyses or add "
                                                     "subjects")
    if len(set(ids)) != len(ids):
        raise InputDataError(f"participant ids repeat: {ids}", path="subjects")
    spaces = {s.participant_id: s.space for s in subjects}
    space = check_cross_subject_spaces(spaces)
    n_voxels = {s.participant_id: int(np.shape(s.X)[1]) if np.ndim(s.X) == 2 else -1
                for s in subjects}
    if any(v < 0 for v in n_voxels.values()) or len(set(n_voxels.values())) > 1:
        raise InputDataError(f"subjects differ in voxels (mask): {n_voxels}; samples must be "
                             f"(volumes x voxels) of one standard-space mask", path="X",
                             fix="build every subject's samples with one mask (--mask)")
    digests = {s.participant_id: s.mask_digest for s in subjects if s.mask_digest}
    if len(set(digests.values())) > 1:
        raise InputDataError(f"subjects have different masks (digests {digests})",
                             path="mask", fix="build every subject's samples with one mask")
    trs = {s.participant_id: s.tr for s in subjects if s.tr is not None}
    if trs and (max(trs.values()) - min(trs.values())) > TR_TOLERANCE * max(trs.values()):
        raise InputDataError(f"subjects have different TRs (s) {trs}: their volumes are not "
                             f"time-locked", path="tr", fix="decode subjects of one TR "
                                                            "together")
    notes = [f"all {len(subjects)} subjects in {space}"]
    labels, usable_masks = [], []
    for s in subjects:
        n = int(np.shape(s.X)[0])
        for name in ("runs", "times"):
            if len(getattr(s, name)) != n:
                raise InputDataError(f"{len(getattr(s, name))} {name} for {n} volumes",
                                     path=f"sub-{s.participant_id} {name}")
        labels.append(_label_strings(s.labels, n, f"sub-{s.participant_id} labels"))
        usable = np.ones(n, bool) if s.usable is None else np.asarray(s.usable, bool)
        if usable.shape != (n,):
            raise InputDataError(f"usable has shape {usable.shape}, expected ({n},)",
                                 path=f"sub-{s.participant_id} usable")
        usable_masks.append(usable)
    present = [set(filter(None, lab[use])) for lab, use in zip(labels, usable_masks)]
    classes = sorted(set.intersection(*present))
    everything = sorted(set.union(*present))
    dropped = {c: [i for i, p in zip(ids, present) if c not in p] for c in everything
               if c not in classes}
    if dropped:
        notes.append("classes left out because some subjects lack them: " + "; ".join(
            f"{c} (missing in {', '.join(missing)})" for c, missing in dropped.items()))
        LOGGER.warning("cross-subject decoding: %s", notes[-1])
    if len(classes) < 2:
        raise InputDataError(f"fewer than 2 classes are labelled in every subject "
                             f"(common: {classes}; per subject: "
                             f"{dict(zip(ids, map(sorted, present)))})", path="labels",
                             fix="use a label spec whose classes every subject has")
    lookup = {c: k for k, c in enumerate(classes)}
    run_names = sorted({str(r) for s, use in zip(subjects, usable_masks)
                        for r in np.asarray(s.runs, object)[use]})
    run_lookup = {r: k for k, r in enumerate(run_names)}
    codes, run_index, times, keys = [], [], [], []
    for s, lab, use in zip(subjects, labels, usable_masks):
        code = np.array([lookup.get(v, -1) if v is not None else -1 for v in lab], np.int64)
        code[~use] = -1
        run = np.array([run_lookup.get(str(r), -1) for r in np.asarray(s.runs, object)],
                       np.int64)
        run[~use] = -1
        time = np.asarray(s.times, float)
        if not np.isfinite(time[use]).all():
            raise InputDataError("times must be finite", path=f"sub-{s.participant_id} times")
        key = run * 10**12 + np.round(time / TIME_TOLERANCE_S).astype(np.int64)
        codes.append(code)
        run_index.append(run)
        times.append(time)
        keys.append(np.where(use, key, -1))
    common = keys[0][keys[0] >= 0]
    for key in keys[1:]:
        common = np.intersect1d(common, key[key >= 0])
    timeline_rows = []
    for s, key in zip(subjects, keys):
        if len(np.unique(key[key >= 0])) != int((key >= 0).sum()):
            raise InputDataError("two volumes share a run and time",
                                 path=f"sub-{s.participant_id} times",
                                 fix="give each volume its acquisition time in its run")
        order = np.argsort(key, kind="stable")
        timeline_rows.append(order[np.searchsorted(key[order], common)])
    n_points = [int((k >= 0).sum()) for k in keys]
    if len(common) < max(n_points):
        notes.append(f"{len(common)} time points are common to every subject (per subject: "
                     f"{dict(zip(ids, n_points))}); only they serve the alignment")
    if need_timeline and len(common) < 2:
        raise InputDataError("the subjects share no time points (run and time): functional "
                             "alignment needs responses to the same moments of the stimulus",
                             path="times", fix="check run names and StartTime, or use "
                                               "--alignment none")
    timeline = np.column_stack([common // 10**12, common % 10**12])
    return Harmonised(participant_ids=ids, classes=classes, codes=codes, run_index=run_index,
                      times=times, run_names=run_names, timeline=timeline,
                      timeline_rows=timeline_rows, volume_keys=keys,
                      n_voxels=next(iter(n_voxels.values())),
                      space=space, tr=next(iter(trs.values())) if trs else None, notes=notes,
                      dropped_classes=dropped)


# --------------------------------------------------------------------------- segments


@dataclass(frozen=True)
class Segment:
    """A test segment of the common timeline: a run, or a block of it (times in s)."""

    name: str
    run: int
    start: float = -np.inf
    stop: float = np.inf


def make_segments(harmonised: Harmonised, cv: str = "auto", n_splits: int = 5,
                  gap: float = 30.0) -> tuple[str, list[Segment]]:
    """Test segments: one per run (``loro``) or ``n_splits`` blocks of the timeline.

    ``auto`` is ``loro`` with two runs or more, else ``blocked``. Blocks cut
    the time points of the common timeline into ``n_splits`` contiguous
    chunks; training then also leaves out volumes within ``gap`` s of a block.

    Examples
    --------
    >>> harmonised = harmonise_subjects(example_subjects(n_runs=3, random_state=0))
    >>> make_segments(harmonised)[0], len(make_segments(harmonised)[1])
    ('loro', 3)
    """
    if cv_scheme(cv, len(harmonised.run_names)) == "loro":
        return "loro", [Segment(name, k) for k, name in enumerate(harmonised.run_names)]
    n_splits = check_int(n_splits, "n_splits", minimum=2)
    check_number(gap, "gap", minimum=0.0)
    clock = harmonised.timeline
    if len(clock) < n_splits:
        # Without common time points (alignment none), blocks cut the first subject's times.
        clock = np.column_stack([harmonised.run_index[0], np.round(
            harmonised.times[0] / TIME_TOLERANCE_S)])[harmonised.run_index[0] >= 0]
        clock = clock[np.lexsort((clock[:, 1], clock[:, 0]))]
    if len(clock) < n_splits:
        raise InputDataError(f"{len(clock)} time points cannot make {n_splits} blocks",
                             path="--cv-folds", fix="use fewer folds")
    segments = []
    for k, chunk in enumerate(np.array_split(np.arange(len(clock)), n_splits)):
        first, last = clock[chunk[0]], clock[chunk[-1]]
        if first[0] != last[0]:
            raise InputDataError("a block spans two runs", path="--cv",
                                 fix="use --cv loro for data with several runs")
        segments.append(Segment(f"block-{k + 1}", int(first[0]),
                                float(first[1]) * TIME_TOLERANCE_S,
                                float(last[1]) * TIME_TOLERANCE_S))
    return "blocked", segments


def _segment_masks(harmonised: Harmonised, subject: int, segment: Segment, gap: float
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Per volume of ``subject``: in the test segment; usable for training (outside + gap)."""
    run = harmonised.run_index[subject]
    time = harmonised.times[subject]
    same_run = run == segment.run
    test = same_run & (time >= segment.start - TIME_TOLERANCE_S) & (
        time <= segment.stop + TIME_TOLERANCE_S)
    near = same_run & (time >= segment.start - gap - TIME_TOLERANCE_S) & (
        time <= segment.stop + gap + TIME_TOLERANCE_S)
    train = (run >= 0) & ~near
    return test, train


# --------------------------------------------------------------------------- decoders


class RowsToVolumes(ClassifierMixin, BaseEstimator):
    """A volume decoder (3D CNN) fed with voxel rows: rows are put back into the mask's box.

    Cross-subject folds handle samples as rows (volumes x voxels of one mask),
    aligned or not; a CNN reads volumes. This wrapper scatters each row into a
    zero volume of the mask's shape before ``fit`` and prediction, so any
    volume decoder plugs into the same folds as the linear ones.

    Parameters
    ----------
    estimator : estimator
        The volume decoder (e.g. :class:`~bids_affect.models.classifier.CNN3DClassifier`).
    mask : ndarray of bool
        ``(X, Y, Z)`` mask whose ``True`` voxels, in C order, are the row's columns.

    Examples
    --------
    >>> from sklearn.dummy import DummyClassifier
    >>> mask = np.zeros((2, 2, 2), bool); mask[0, 0] = True
    >>> wrapper = RowsToVolumes(DummyClassifier(), mask).fit(np.ones((4, 2)), [0, 1, 1, 1])
    >>> wrapper.volumes(np.ones((1, 2))).shape, wrapper.predict(np.ones((1, 2))).tolist()
    ((1, 2, 2, 2), [1])
    """

    def __init__(self, estimator=None, mask: np.ndarray | None = None):
        self.estimator = estimator
        self.mask = mask

    def volumes(self, X: np.ndarray) -> np.ndarray:
        """Rows ``(n, n_voxels)`` as float32 volumes ``(n, *mask.shape)``."""
        mask = np.asarray(self.mask, bool)
        X = np.asarray(X, np.float32)
        if X.ndim != 2 or X.shape[1] != int(mask.sum()):
            raise InputDataError(f"rows of shape {X.shape} do not match the mask's "
                                 f"{int(mask.sum())} voxels", path="volume_mask")
        out = np.zeros((len(X), *mask.shape), np.float32)
        out[:, mask] = X
        return out

    def fit(self, X, y, groups=None) -> RowsToVolumes:
        """Fit a clone of ``estimator`` on the rows as volumes (``groups`` passed on)."""
        self.estimator_ = clone(self.estimator)
        volumes = self.volumes(X)
        if groups is not None:
            self.estimator_.fit(volumes, y, groups=groups)
        else:
            self.estimator_.fit(volumes, y)
        self.classes_ = self.estimator_.classes_
        self.untrained_classes_ = getattr(self.estimator_, "untrained_classes_", ())
        return self

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities of the rows as volumes."""
        check_is_fitted(self)
        return self.estimator_.predict_proba(self.volumes(X))

    def predict(self, X) -> np.ndarray:
        """Most probable class of each row."""
        return self.classes_[self.predict_proba(X).argmax(axis=1)]


def _decoder_factory(model: str, seed: int, cnn_params: Mapping[str, Any] | None,
                     volume_mask: np.ndarray | None, n_features: int):
    def make(_fold: int, n_train: int):
        decoder = make_decoder(model, n_features=n_features, n_samples=n_train,
                               random_state=seed, cnn_params=dict(cnn_params or {}))
        return RowsToVolumes(decoder, volume_mask) if volume_mask is not None else decoder
    return make


# --------------------------------------------------------------------------- results


@dataclass
class CrossSubjectResult:
    """Everything leave-one-subject-out decoding produced.

    Attributes
    ----------
    model : str
    classes : list of str
    tables : dict
        Alignment -> DataFrame, one row per held-out subject
        (:data:`RESULT_COLUMNS`): ``group/task-T_desc-MODEL[ALIGNMENT]_decoding.tsv``.
    predictions : dict
        Alignment -> participant -> DataFrame: ``onset`` (time in the run),
        ``run``, ``volume`` (row of the subject's samples), ``fold``, ``true``,
        ``predicted``, ``prob_CLASS``...
    nulls : dict
        Alignment -> participant -> permutation null (balanced accuracies).
    summary : dict
        Alignment -> JSON-ready summary (the ``decoding.json`` of the group).
    harmonisation : dict
        :meth:`Harmonised.to_dict`.
    audit : dict
        The pooled random split (``pooled_balanced_accuracy``, per subject).
    """

    model: str
    classes: list[str]
    tables: dict[str, pd.DataFrame]
    predictions: dict[str, dict[str, pd.DataFrame]]
    nulls: dict[str, dict[str, np.ndarray]]
    summary: dict[str, dict[str, Any]]
    harmonisation: dict[str, Any]
    audit: dict[str, Any] | None


def _load_rows(subject: SubjectSamples, rows: np.ndarray) -> np.ndarray:
    """Rows of a (memory-mapped) sample matrix as float32, read in increasing order."""
    rows = np.asarray(rows, np.intp)
    order = np.argsort(rows, kind="stable")
    out = np.empty((len(rows), np.shape(subject.X)[1]), np.float32)
    if len(rows):
        out[order] = np.asarray(subject.X[rows[order]], np.float32)
    return out


@dataclass
class _Fold:
    """The inputs of one fold's decoder: training rows per training subject, test rows."""

    segment: Segment
    test_rows: np.ndarray
    train_rows: dict[int, np.ndarray]
    alignment_points: np.ndarray   # timeline positions of h's volumes usable to align h


def _folds(harmonised: Harmonised, held_out: int, segments: Sequence[Segment],
           gap: float) -> list[_Fold]:
    folds = []
    n = len(harmonised.participant_ids)
    timeline_h = harmonised.timeline_rows[held_out]
    for segment in segments:
        test, _ = _segment_masks(harmonised, held_out, segment, gap)
        test_rows = np.flatnonzero(test & (harmonised.codes[held_out] >= 0))
        if not len(test_rows):
            continue
        train_rows = {}
        for s in range(n):
            if s == held_out:
                continue
            _, train = _segment_masks(harmonised, s, segment, gap)
            train_rows[s] = np.flatnonzero(train & (harmonised.codes[s] >= 0))
        _, train_h = _segment_masks(harmonised, held_out, segment, gap)
        points = np.flatnonzero(train_h[timeline_h]) if len(timeline_h) else np.empty(0, int)
        folds.append(_Fold(segment, test_rows, train_rows, points))
    return folds


def _fit_alignment(method: str, subjects: Sequence[SubjectSamples], harmonised: Harmonised,
                   training: Sequence[int], settings: Mapping[str, Any], seed: int
                   ) -> GroupAlignment:
    """The group alignment of the training subjects (streamed, one subject at a time)."""
    def stream():
        for s in training:
            yield _load_rows(subjects[s], harmonised.timeline_rows[s])
    return GroupAlignment(method, random_state=seed, **settings).fit(stream)


@dataclass
class LabelTimeline:
    """The movie's label sequence on the shared timeline, and its circularly shifted copies.

    Attributes
    ----------
    keys : ndarray
        Labelled moments of the stimulus (``run * 10**12 + time in ms``), sorted.
    codes : ndarray
        Class of each key (every subject labelled there agrees).
    permuted : ndarray
        ``(n_permutations, n_keys)``: the codes shifted circularly within each
        run, one shift per run and permutation, for every subject alike.
    key_of : list of ndarray
        Per subject, each volume's index into ``keys`` (-1: not decoded).
    """

    keys: np.ndarray
    codes: np.ndarray
    permuted: np.ndarray
    key_of: list[np.ndarray]


def label_timeline(harmonised: Harmonised, n_permutations: int, random_state=None
                   ) -> LabelTimeline:
    """One label sequence for the shared timeline, and its permutations.

    The null of cross-subject decoding must shift the labels of the movie for
    every subject at once: the held-out subject's test labels *and* the
    training subjects' labels, which the decoders learned. Shifting only the
    test labels while keeping the fitted decoders is not valid: a decoder
    tested on run ``r`` was trained on the labels of the other runs, which
    are the test labels of other folds, so the pooled score counts each
    pair of runs twice and its spread exceeds that null's (measured on data
    without signal: p < .05 for 9-15% of subjects and groups).
    Shifts are drawn uniformly among all non-zero shifts of each run's
    sequence of labelled moments (:data:`MIN_SHIFT_FRACTION`).

    Raises
    ------
    InputDataError
        Subjects disagree on the label of one moment of the stimulus.

    Examples
    --------
    >>> harmonised = harmonise_subjects(example_subjects(n_subjects=2, random_state=0))
    >>> timeline = label_timeline(harmonised, 5, random_state=0)
    >>> timeline.permuted.shape == (5, len(timeline.keys))
    True
    """
    keys = np.concatenate([k[c >= 0] for k, c in zip(harmonised.volume_keys, harmonised.codes)])
    codes = np.concatenate([c[c >= 0] for c in harmonised.codes])
    unique, inverse = np.unique(keys, return_inverse=True)
    low = np.full(len(unique), np.iinfo(np.int64).max)
    high = np.full(len(unique), -1)
    np.minimum.at(low, inverse, codes)
    np.maximum.at(high, inverse, codes)
    if np.any(low != high):
        bad = unique[np.flatnonzero(low != high)[0]]
        run, time = divmod(int(bad), 10**12)
        raise InputDataError(
            f"subjects give different labels to the same moment of the stimulus (run "
            f"{harmonised.run_names[run]}, time {time * TIME_TOLERANCE_S:g} s): cross-subject "
            f"decoding needs one label sequence for the movie", path="labels",
            fix="label every subject's runs with the same annotations and label spec")
    permuted = circular_shifts(low, unique // 10**12, n_permutations,
                               random_state=random_state,
                               min_shift_fraction=MIN_SHIFT_FRACTION)
    key_of = []
    for volume_keys, volume_codes in zip(harmonised.volume_keys, harmonised.codes):
        index = np.searchsorted(unique, volume_keys)
        key_of.append(np.where(volume_codes >= 0, index, -1))
    return LabelTimeline(keys=unique, codes=low, permuted=permuted, key_of=key_of)


@dataclass
class _RidgeFold:
    """One fold of a ridge decoder as algebra: test scores are ``hat @ T`` for any labels."""

    hat: np.ndarray            # (n_test, n_moments): G with columns summed per moment
    moments: np.ndarray        # the training rows' moments (indices into the label timeline)
    multiplicity: np.ndarray   # training rows per moment
    n_train: int

    def scores(self, codes: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
        """Scores ``(b, n_test, C)`` and class counts ``(b, C)`` of label rows ``(b, n_keys)``."""
        onehot = np.eye(n_classes)[codes[:, self.moments]]            # (b, n_moments, C)
        counts = np.einsum("buc,u->bc", onehot, self.multiplicity)
        targets = onehot / np.sqrt(np.maximum(counts, 1.0))[:, None, :]
        mean = np.sqrt(counts) / self.n_train                           # mean target per class
        b, n_moments = len(codes), len(self.moments)
        scores = self.hat @ targets.transpose(1, 0, 2).reshape(n_moments, b * n_classes)
        scores = scores.reshape(len(self.hat), b, n_classes).transpose(1, 0, 2)
        scores -= self.hat.sum(axis=1)[None, :, None] * mean[:, None, :]
        scores[np.broadcast_to((counts == 0)[:, None, :], scores.shape)] = -np.inf
        return scores, counts


def _ridge_fold(make_estimator, X: np.ndarray, n_train: int, train_keys: np.ndarray
                ) -> _RidgeFold:
    """A ridge decoder's fold as algebra, valid for every labelling of the training rows.

    Test scores of :class:`~bids_affect.decoding.BalancedRidgeClassifier` are
    ``G (T - mean T)``, with ``G = Z_test (Z'Z + alpha I)^-1 Z'`` (primal) or
    ``Z_test Z' (Z Z' + alpha I)^-1`` (dual) in the label-free transformed
    space ``Z`` of the training rows (its steps before the ridge use no
    labels), and ``T`` the class-balanced one-hot training labels. Training
    rows at the same moment of the stimulus (one per training subject) always
    share a label, so ``G``'s columns are summed per moment once; the observed
    labels and every permutation then cost one small product each.
    """
    pipeline = make_estimator(0, n_train)
    transform = clone(pipeline[:-1])
    train = np.asarray(transform.fit_transform(X[:n_train]), np.float64)
    test = np.asarray(transform.transform(X[n_train:]), np.float64)
    centre = train.mean(axis=0)          # the ridge's intercept
    train -= centre
    test -= centre
    alpha = float(pipeline[-1].alpha)
    moments, inverse = np.unique(train_keys, return_inverse=True)
    multiplicity = np.bincount(inverse, minlength=len(moments)).astype(np.float64)
    # Sums rows of the same moment: (n_moments, n_train) indicator, sparse.
    per_moment = sparse.csr_matrix((np.ones(n_train), (inverse, np.arange(n_train))),
                                   shape=(len(moments), n_train))
    n_features = train.shape[1]
    # Gram matrices by BLAS syrk (upper triangle), given train.T: a Fortran-ordered view of
    # the C-ordered rows, so BLAS reads them without a copy of the largest array.
    if n_features <= n_train:
        gram = linalg.blas.dsyrk(1.0, train.T, trans=0)
        gram[np.diag_indices_from(gram)] += alpha
        solved = linalg.solve(gram, test.T, assume_a="pos", lower=False)   # (d, n_test)
        hat = (per_moment @ train) @ solved                                 # (n_moments, n_test)
    else:
        gram = linalg.blas.dsyrk(1.0, train.T, trans=1)
        gram[np.diag_indices_from(gram)] += alpha
        full = linalg.solve(gram, train @ test.T, assume_a="pos", lower=False)
        hat = per_moment @ full                                             # (n_moments, n_test)
    return _RidgeFold(np.ascontiguousarray(hat.T), moments, multiplicity, n_train)


def _ridge_probabilities(scores: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``predict_proba`` of the decoder from its scores (absent classes: 0).

    As :class:`~bids_affect.decoding.BalancedRidgeClassifier` does: with two
    trained classes the decision is their score difference ``d``, counted as
    ``[-d, d]``; otherwise the softmax of the scores.
    """
    present = np.flatnonzero(counts > 0)
    proba = np.zeros(scores.shape)
    if len(present) == 2:
        first, second = present
        proba[:, present] = softmax_of_decision(scores[:, second] - scores[:, first])
    else:
        proba[:, present] = softmax_of_decision(scores[:, present])
    return proba


def _ridge_null_fold(make_estimator, X: np.ndarray, n_train: int, train_keys: np.ndarray,
                     permuted: np.ndarray, n_classes: int, batch: int = 100) -> np.ndarray:
    """Test predictions of a ridge decoder refitted on each permuted label sequence, by algebra.

    See :func:`_ridge_fold`; equal to refitting (:func:`_refit_null_fold`).
    """
    fold = _ridge_fold(make_estimator, X, n_train, train_keys)
    return _ridge_predictions(fold, permuted, n_classes, batch)


def _ridge_predictions(fold: _RidgeFold, permuted: np.ndarray, n_classes: int,
                       batch: int = 100) -> np.ndarray:
    predicted = np.empty((len(permuted), len(fold.hat)), np.int16)
    for start in range(0, len(permuted), batch):
        scores, _ = fold.scores(permuted[start:start + batch], n_classes)
        predicted[start:start + len(scores)] = scores.argmax(axis=2)
    return predicted


def _refit_null_fold(make_estimator, X: np.ndarray, n_train: int, train_keys: np.ndarray,
                     test_keys: np.ndarray, permuted: np.ndarray, n_classes: int,
                     groups: np.ndarray, cnn: bool, name: str) -> np.ndarray:
    """Test predictions of the decoder refitted on each permuted label sequence."""
    predicted = np.empty((len(permuted), len(X) - n_train), np.int16)
    split = [(np.arange(n_train), np.arange(n_train, len(X)))]
    for index, codes in enumerate(permuted):
        labels = np.concatenate([codes[train_keys], codes[test_keys]])
        present = np.unique(labels[:n_train])
        if len(present) < 2:
            # A shift can leave one class in a blocked fold's training rows: a decoder
            # trained on it predicts that class (the ridge algebra does the same).
            predicted[index] = present[0]
            continue
        fit = cross_validate(make_estimator, X, labels, split, n_classes, runs=groups,
                             fold_names=[f"{name} permutation {index + 1}"],
                             keep_estimators=False, fit_groups=cnn, warn=False)
        predicted[index] = fit.predicted[n_train:]
    return predicted


def _fold_record(name: str, n_train: int, n_test: int, counts: np.ndarray,
                 classes: Sequence[str]) -> dict[str, Any]:
    """The fold record :func:`~bids_affect.decoding.cross_validate` writes, and its checks."""
    missing = [classes[c] for c in np.flatnonzero(counts == 0)]
    if len(classes) - len(missing) < 2:
        raise InputDataError(f"training set of {name} holds fewer than 2 classes",
                             fix="use more runs or another cross-validation scheme")
    if missing:
        LOGGER.warning("%s: classes %s are absent from the training samples; that fold "
                       "cannot predict them and their test samples count as errors.", name,
                       missing)
    return {"test": name, "n_train": int(n_train), "n_test": int(n_test),
            "missing_classes": missing}


@dataclass
class _HeldOut:
    """What the folds of one held-out subject produced."""

    rows: np.ndarray               # its tested volumes, in order
    proba: np.ndarray              # (n_rows, n_classes)
    null_predicted: np.ndarray     # (n_permutations, n_rows)
    folds: list[dict[str, Any]]


def _decode_held_out(method: str, held_out: int, subjects: Sequence[SubjectSamples],
                     harmonised: Harmonised, timeline: LabelTimeline,
                     segments: Sequence[Segment], gap: float, make_estimator,
                     settings: Mapping[str, Any], seed: int, spec) -> _HeldOut:
    """Observed and permuted test predictions of ``held_out``, fold by fold."""
    n_classes = len(harmonised.classes)
    n_permutations = len(timeline.permuted)
    training = [s for s in range(len(subjects)) if s != held_out]
    aligner = (None if method == "none" else
               _fit_alignment(method, subjects, harmonised, training, settings, seed))
    folds = _folds(harmonised, held_out, segments, gap)
    cached: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    if aligner is not None and method not in VOXEL_SPACE_METHODS:
        # Shared space (k features): each training subject is projected once.
        for position, s in enumerate(training):
            rows = np.flatnonzero(harmonised.codes[s] >= 0)
            cached[s] = (rows, aligner.transform(_load_rows(subjects[s], rows), position))

    def features(s: int, rows: np.ndarray) -> np.ndarray:
        if s in cached:
            all_rows, aligned = cached[s]
            return aligned[np.searchsorted(all_rows, rows)]
        data = _load_rows(subjects[s], rows)
        return data if aligner is None else aligner.transform(data, training.index(s))

    n_features = harmonised.n_voxels if aligner is None else aligner.n_features_out_
    tested, probabilities, null_predicted, records = [], [], [], []
    for fold_index, fold in enumerate(folds):
        n_train = sum(len(rows) for rows in fold.train_rows.values())
        n_test = len(fold.test_rows)
        X = np.empty((n_train + n_test, n_features), np.float32)
        groups = np.empty(n_train + n_test, np.int64)
        train_keys = np.empty(n_train, np.int64)
        start = 0
        for s, rows in fold.train_rows.items():
            X[start:start + len(rows)] = features(s, rows)
            train_keys[start:start + len(rows)] = timeline.key_of[s][rows]
            groups[start:start + len(rows)] = s * 10**6 + harmonised.run_index[s][rows]
            start += len(rows)
        test_data = _load_rows(subjects[held_out], fold.test_rows)
        if aligner is not None:
            points = fold.alignment_points
            own = aligner.fit_subject(
                _load_rows(subjects[held_out], harmonised.timeline_rows[held_out][points]),
                points)
            test_data = aligner.apply(own, test_data)
        X[n_train:] = test_data
        groups[n_train:] = -1
        test_keys = timeline.key_of[held_out][fold.test_rows]
        name = f"sub-{harmonised.participant_ids[held_out]} {fold.segment.name}"
        if spec.algebraic_null:
            # Ridge: one linear solve gives the observed fit and every permutation's refit.
            ridge = _ridge_fold(make_estimator, X, n_train, train_keys)
            scores, counts = ridge.scores(timeline.codes[None, :], n_classes)
            record = _fold_record(name, n_train, n_test, counts[0], harmonised.classes)
            proba = _ridge_probabilities(scores[0], counts[0])
            null = _ridge_predictions(ridge, timeline.permuted, n_classes)
        else:
            y = timeline.codes[np.concatenate([train_keys, test_keys])]
            split = (np.arange(n_train), np.arange(n_train, n_train + n_test))
            fit = cross_validate(make_estimator, X, y, [split], n_classes, runs=groups,
                                 fold_names=[name], keep_estimators=False,
                                 fit_groups=spec.is_cnn, class_names=harmonised.classes)
            record, proba = dict(fit.folds[0]), fit.proba[n_train:]
            null = (_refit_null_fold(make_estimator, X, n_train, train_keys, test_keys,
                                     timeline.permuted, n_classes, groups, spec.is_cnn, name)
                    if n_permutations else np.empty((0, n_test), np.int16))
        tested.append(fold.test_rows)
        probabilities.append(proba)
        null_predicted.append(null)
        record.update({"fold": fold_index + 1, "test": fold.segment.name,
                       "n_alignment_timepoints": int(len(fold.alignment_points))
                       if aligner is not None else 0})
        records.append(record)
    if not tested:
        raise InputDataError(f"sub-{harmonised.participant_ids[held_out]} has no labelled "
                             f"volume in any test segment", path="labels")
    rows = np.concatenate(tested)
    order = np.argsort(rows, kind="stable")
    return _HeldOut(rows=rows[order], proba=np.concatenate(probabilities)[order],
                    null_predicted=np.concatenate(null_predicted, axis=1)[:, order],
                    folds=records)


def _predictions_table(harmonised: Harmonised, subject: int, rows: np.ndarray,
                       proba: np.ndarray, segments: Sequence[Segment], gap: float,
                       method: str) -> pd.DataFrame:
    classes = harmonised.classes
    fold = np.empty(len(rows), object)
    for segment in segments:
        test, _ = _segment_masks(harmonised, subject, segment, gap)
        fold[test[rows]] = segment.name
    table = pd.DataFrame({
        "onset": harmonised.times[subject][rows],
        "run": [harmonised.run_names[r] for r in harmonised.run_index[subject][rows]],
        "volume": rows, "fold": fold,
        "true": [classes[c] for c in harmonised.codes[subject][rows]],
        "predicted": [classes[c] for c in proba.argmax(axis=1)],
        "alignment": method})
    for k, name in enumerate(classes):
        table[f"prob_{name}"] = proba[:, k]
    return table


def _pooled_audit(subjects: Sequence[SubjectSamples], harmonised: Harmonised, make_estimator,
                  seed: int, cnn: bool, max_per_subject: int | None) -> dict[str, Any]:
    """The peers' pooled random 80/20 split of every subject's volumes (leaks; audit only)."""
    rng = np.random.default_rng(seed)
    chosen = []
    for s in range(len(subjects)):
        rows = np.flatnonzero(harmonised.codes[s] >= 0)
        if max_per_subject is not None and len(rows) > max_per_subject:
            rows = np.sort(rng.choice(rows, max_per_subject, replace=False))
        chosen.append(rows)
    n_total = sum(len(rows) for rows in chosen)
    X = np.empty((n_total, harmonised.n_voxels), np.float32)
    y = np.empty(n_total, np.int64)
    owner = np.empty(n_total, np.int64)
    start = 0
    for s, rows in enumerate(chosen):
        X[start:start + len(rows)] = _load_rows(subjects[s], rows)
        y[start:start + len(rows)] = harmonised.codes[s][rows]
        owner[start:start + len(rows)] = s
        start += len(rows)
    split = StratifiedShuffleSplit(n_splits=1, test_size=0.2, random_state=seed)
    train, test = next(split.split(np.zeros(n_total), y))
    fit = cross_validate(make_estimator, X, y, [(train, test)], len(harmonised.classes),
                         runs=owner, fold_names=["pooled random 80/20 split (audit)"],
                         keep_estimators=False, fit_groups=cnn, warn=False)
    per_subject = {}
    for s, participant in enumerate(harmonised.participant_ids):
        mine = test[owner[test] == s]
        per_subject[participant] = (float(balanced_accuracies(y[mine], fit.predicted[mine])[0])
                                    if len(mine) else float("nan"))
    return {"pooled_balanced_accuracy": float(balanced_accuracies(y[test],
                                                                  fit.predicted[test])[0]),
            "per_subject": per_subject, "n_samples": int(n_total),
            "samples_per_subject_cap": max_per_subject,
            "note": "the peers' 'cross-subject' split: every subject's labelled volumes "
                    "pooled and split at random 80/20 (no alignment), so neighbouring "
                    "volumes of one scene and subject land on both sides and leak; "
                    "reported for comparison only"}


#: Why the group summary of LOSO scores has no t-test or prevalence inference.
GROUP_TEST_NOTE = (
    "held-out subjects' scores are not independent (their training sets overlap and every "
    "subject watched the same movie, so stimulus-driven predictions are shared), so a t-test "
    "or prevalence inference across them would be invalid; the group test instead applies "
    "one common circular shift of the label sequence to every held-out subject per "
    "permutation, which keeps that dependence, and scores the mean balanced accuracy")


def _group_summary(method: str, table: pd.DataFrame, nulls: Mapping[str, np.ndarray],
                   baseline: pd.DataFrame | None) -> dict[str, Any]:
    scores = table["balanced_accuracy"].to_numpy(float)
    chances = table["chance_balanced_accuracy"].to_numpy(float)
    summary: dict[str, Any] = {"n_subjects": len(table),
                               "mean_balanced_accuracy": float(scores.mean()),
                               "mean_chance_balanced_accuracy": float(chances.mean()),
                               "group_test": GROUP_TEST_NOTE}
    stacked = [np.asarray(nulls[p]) for p in table["participant_id"]]
    if stacked and all(len(n) for n in stacked):
        # Permutation j shifted every subject's labels by the same amounts, so the mean
        # over subjects of their j-th null scores is one draw of the mean score's null.
        against = null_summary(float(scores.mean()), np.mean(stacked, axis=0))
        summary["group_chance_balanced_accuracy"] = against["chance"]
        summary["group_null_band"] = against["null_band"]
        summary["group_p_permutation"] = against["p_permutation"]
    if baseline is not None and method != "none":
        paired = baseline.set_index("participant_id")["balanced_accuracy"]
        gain = scores - paired.loc[table["participant_id"]].to_numpy(float)
        summary["gain_over_none"] = {
            "mean": float(gain.mean()), "n_improved": int(np.sum(gain > 0)),
            "per_subject": dict(zip(table["participant_id"], map(float, gain))),
            "note": "paired by held-out subject: both methods were scored on the same folds "
                    "and against the same label shifts; held-out subjects are not "
                    "independent, so no p-value is given for the gain"}
    return summary


def decode_across_subjects(subjects: Sequence[SubjectSamples], *, model: str = "ridge",
                           alignment: str | Sequence[str] = "none",
                           n_components: int = DEFAULT_N_COMPONENTS, n_iter: int | None = None,
                           parcels: np.ndarray | None = None,
                           max_parcel_size: int = DEFAULT_MAX_PARCEL_SIZE, cv: str = "auto",
                           n_splits: int = 5, gap: float = 30.0, n_permutations: int = 1000,
                           random_state: int | None = None, audit: bool = True,
                           audit_max_per_subject: int | None = None,
                           volume_mask: np.ndarray | None = None,
                           cnn_params: Mapping[str, Any] | None = None) -> CrossSubjectResult:
    """Leave-one-subject-out decoding, with each alignment method scored on the same folds.

    Parameters
    ----------
    subjects : sequence of SubjectSamples
        Two or more subjects in one standard space (see :func:`harmonise_subjects`).
    model : str
        A decoder of :func:`bids_affect.decoding.list_models`; CNNs (``cnn-*``)
        need ``volume_mask`` and a voxel-space alignment (none, procrustes, ridge).
    alignment : str or sequence of str
        ``none``, ``srm``, ``procrustes``, ``ridge``, or several (comma-separated).
    n_components, n_iter, parcels, max_parcel_size
        Settings of :class:`~bids_affect.alignment.GroupAlignment`.
    cv : {"auto", "loro", "blocked"}
        Test segments (:func:`make_segments`).
    n_splits, gap : int, float
        Blocks and gap (s) of ``blocked``.
    n_permutations : int
        Circular shifts of the movie's label sequence, every subject at once,
        with every decoder refitted (0: no test; see :func:`label_timeline`).
    random_state : int or None
        Master seed: the decoder, the SRM initialisation, the permutations and
        the audit split are derived from it.
    audit : bool
        Also run the pooled random-split audit.
    audit_max_per_subject : int or None
        Labelled volumes per subject drawn for the audit (None: all; the pooled
        matrix of every subject is the audit's memory).
    volume_mask : ndarray of bool or None
        For CNN decoders: the mask (in its crop box) whose voxels are the columns.
    cnn_params : mapping or None
        Settings of CNN decoders.

    Returns
    -------
    CrossSubjectResult

    Examples
    --------
    >>> subjects = example_subjects(n_subjects=4, n_runs=2, n_volumes=60, n_voxels=40,
    ...                             signal=2.0, misaligned=True, random_state=0)
    >>> result = decode_across_subjects(subjects, alignment="none,srm", n_components=6,
    ...                                 n_permutations=50, random_state=0)
    >>> gain = result.summary["srm"]["gain_over_none"]["mean"]
    >>> bool(gain > 0.2)
    True
    """
    methods = check_alignment(alignment)
    (model,) = check_models([model])
    n_permutations = check_int(n_permutations, "n_permutations", minimum=0)
    gap = check_number(gap, "gap", minimum=0.0)
    cnn = is_cnn(model)
    if cnn:
        unusable = [m for m in methods if m not in VOXEL_SPACE_METHODS]
        if unusable:
            raise UsageError(f"a CNN reads volumes, but {', '.join(unusable)} aligns to a "
                             f"shared space that is not a volume", path="--alignment",
                             fix=f"use {', '.join(VOXEL_SPACE_METHODS)} with CNN decoders")
        if volume_mask is None:
            raise UsageError("CNN decoders need the mask (its crop box) to rebuild volumes",
                             path="volume_mask")
    elif volume_mask is not None:
        raise UsageError("is only used by CNN decoders", path="volume_mask")
    harmonised = harmonise_subjects(subjects, need_timeline=any(m != "none" for m in methods))
    if volume_mask is not None and int(np.asarray(volume_mask, bool).sum()) != \
            harmonised.n_voxels:
        raise InputDataError(f"holds {int(np.asarray(volume_mask, bool).sum())} voxels, the "
                             f"samples {harmonised.n_voxels}", path="volume_mask")
    cv_name, segments = make_segments(harmonised, cv, n_splits, gap)
    spec = parse_decoder(model)
    if cv_name == "loro":
        gap = 0.0  # runs are separate acquisitions
    n = len(harmonised.participant_ids)
    seeds = np.random.SeedSequence(random_state).generate_state(4)
    model_seed, align_seed, audit_seed, permutation_seed = (int(s >> 1) for s in seeds)
    settings = {"n_components": n_components, "n_iter": n_iter, "parcels": parcels,
                "max_parcel_size": max_parcel_size}
    timeline = label_timeline(harmonised, n_permutations, random_state=permutation_seed)
    if n_permutations and not spec.algebraic_null:
        LOGGER.warning("cross-subject %s: the permutation null refits every fold's decoder "
                       "for each of %d permutations (%d subjects x %d segments x %d "
                       "alignments); the ridge decoder needs no refits", model,
                       n_permutations, n, len(segments), len(methods))
    audit_record = None
    if audit:
        audit_record = _pooled_audit(
            subjects, harmonised,
            _decoder_factory(model, model_seed, cnn_params, volume_mask, harmonised.n_voxels),
            audit_seed, cnn, audit_max_per_subject)
    tables, predictions, nulls, summaries, folds_by_method = {}, {}, {}, {}, {}
    for method in methods:
        rows_out, predictions[method], nulls[method], folds_by_method[method] = [], {}, {}, {}
        for h, participant in enumerate(harmonised.participant_ids):
            LOGGER.info("cross-subject %s, alignment %s: held-out sub-%s (%d/%d)", model,
                        method, participant, h + 1, n)
            n_out = int(n_components) if method == "srm" else harmonised.n_voxels
            factory = _decoder_factory(model, model_seed, cnn_params, volume_mask, n_out)
            result = _decode_held_out(method, h, subjects, harmonised, timeline, segments,
                                      gap, factory, settings, align_seed, spec)
            rows = result.rows
            y = timeline.codes[timeline.key_of[h][rows]]
            observed = float(balanced_accuracies(y, result.proba.argmax(axis=1),
                                                 len(harmonised.classes))[0])
            null = (balanced_accuracies(timeline.permuted[:, timeline.key_of[h][rows]],
                                        result.null_predicted, len(harmonised.classes))
                    if n_permutations else np.empty(0))
            nulls[method][participant] = null
            predictions[method][participant] = _predictions_table(
                harmonised, h, rows, result.proba, segments, gap, method)
            folds_by_method[method][participant] = result.folds
            against = null_summary(observed, null, len(harmonised.classes))
            low, high = against["null_band"] or (np.nan, np.nan)
            rows_out.append({
                "participant_id": participant, "balanced_accuracy": observed,
                "chance_balanced_accuracy": against["chance"], "null_low": low,
                "null_high": high, "p_permutation": (
                    np.nan if against["p_permutation"] is None else against["p_permutation"]),
                "n_permutations": n_permutations, "alignment": method,
                "random_split_balanced_accuracy": (
                    audit_record["per_subject"][participant] if audit_record else np.nan)})
        tables[method] = pd.DataFrame(rows_out, columns=list(RESULT_COLUMNS))
    for method in methods:
        baseline = tables.get("none")
        summary = _group_summary(method, tables[method], nulls[method], baseline)
        summary.update({
            "model": model, "alignment": method, "classes": harmonised.classes,
            "cv": cv_name, "segments": [s.name for s in segments], "gap_s": gap,
            "fold_scheme": FOLD_SCHEME, "permutation_scheme": PERMUTATION_SCHEME,
            "n_permutations": n_permutations,
            "alignment_settings": ({} if method == "none" else {
                "n_components": n_components if method == "srm" else None,
                "n_iter": n_iter if n_iter is not None else DEFAULT_N_ITER[method],
                "parcels": "given" if parcels is not None else
                ("contiguous chunks" if harmonised.n_voxels > max_parcel_size else "none"),
                "max_parcel_size": max_parcel_size}),
            "folds": folds_by_method[method], "harmonisation": harmonised.to_dict(),
            "random_split": audit_record, "random_state": random_state})
        summaries[method] = summary
    return CrossSubjectResult(model=model, classes=harmonised.classes, tables=tables,
                              predictions=predictions, nulls=nulls, summary=summaries,
                              harmonisation=harmonised.to_dict(), audit=audit_record)


# --------------------------------------------------------------------------- example data


def example_subjects(n_subjects: int = 3, n_runs: int = 2, n_volumes: int = 60,
                     n_voxels: int = 50, n_latent: int = 6, classes: Sequence[str] = (
                         "fear", "happiness", "sadness"), signal: float = 1.0,
                     shared: float = 1.0, noise_ar: float = 0.5, misaligned: bool = False,
                     space: str = "MNI152NLin2009cAsym", scene: tuple[int, int] = (6, 14),
                     random_state=None) -> list[SubjectSamples]:
    """Small synthetic subjects watching one movie, for examples, tests and benchmarks.

    Every subject sees the same scenes (labels per volume, shared by all) and
    responds through a shared latent time course: ``shared`` x smooth
    stimulus-driven components, plus ``signal`` x a pattern per class during
    that class's scenes. Latents reach the voxels through one mixing matrix
    (a standard space); with ``misaligned`` each subject's voxels are then
    permuted (a toy of inter-subject misalignment). Each subject adds its own
    AR(1) noise (``noise_ar``).

    Examples
    --------
    >>> subjects = example_subjects(n_subjects=2, random_state=0)
    >>> subjects[0].X.shape, subjects[0].X.dtype
    ((120, 50), dtype('float32'))
    """
    rng = np.random.default_rng(random_state)
    n_total = n_runs * n_volumes
    labels, runs, times = [], [], []
    for run in range(n_runs):
        row: list[str] = []
        while len(row) < n_volumes:
            row += [str(rng.choice(list(classes)))] * int(rng.integers(*scene))
        labels += row[:n_volumes]
        runs += [f"task-movie_run-{run + 1}"] * n_volumes
        times += list(np.arange(n_volumes) * 2.0)
    labels_array = np.array(labels, object)
    kernel = np.exp(-0.5 * (np.arange(-6, 7) / 2.0) ** 2)
    components = np.stack([np.convolve(rng.standard_normal(n_total), kernel, "same")
                           for _ in range(n_latent)], axis=1)
    components /= components.std(axis=0)
    patterns = rng.standard_normal((len(classes), n_latent))
    latent = shared * components
    for k, name in enumerate(classes):
        latent[labels_array == name] += signal * patterns[k]
    mixing = rng.standard_normal((n_latent, n_voxels)) / np.sqrt(n_latent)
    clean = latent @ mixing
    subjects = []
    for s in range(n_subjects):
        noise = np.empty((n_total, n_voxels))
        noise[0] = rng.standard_normal(n_voxels)
        for t in range(1, n_total):
            noise[t] = noise_ar * noise[t - 1] + np.sqrt(1 - noise_ar**2) * \
                rng.standard_normal(n_voxels)
        data = clean + noise
        if misaligned:
            data = data[:, rng.permutation(n_voxels)]
        data = (data - data.mean(axis=0)) / data.std(axis=0)
        subjects.append(SubjectSamples(
            participant_id=f"{s + 1:02d}", X=data.astype(np.float32), labels=labels_array,
            runs=np.array(runs, object), times=np.array(times), space=space, tr=2.0))
    return subjects
