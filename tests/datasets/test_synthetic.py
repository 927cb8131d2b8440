"""Synthetic datasets: valid BIDS, movie-like annotations, planted and null signal."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_affect.datasets import make_synthetic_dataset
from bids_affect.datasets.synthetic import (
    MOTION_COLUMNS,
    class_drive,
    grid_affine,
    labels_at,
    make_scenes,
)
from bids_affect.io.validation import validate_dataset


def _region_contrast(root, subject="01", run=1):
    """Per class: mean signal in its region on its volumes minus on the others."""
    truth = root / "sourcedata" / "groundtruth"
    regions = np.asarray(nib.load(truth / "regions_dseg.nii.gz").dataobj)
    names = pd.read_csv(truth / "regions_dseg.tsv", sep="\t")["name"].tolist()
    bold = np.asarray(nib.load(
        root / f"sub-{subject}/func/sub-{subject}_task-movie_run-{run}_bold.nii.gz").dataobj,
        np.float32)
    labels = pd.read_csv(truth / f"sub-{subject}_task-movie_run-{run}_labels.tsv", sep="\t",
                         keep_default_na=False, na_values=["n/a"])["trial_type"]
    contrasts = []
    for k, name in enumerate(names):
        signal = bold[regions == k + 1].mean(axis=0)
        signal = (signal - signal.mean()) / signal.std()
        on = (labels == name).to_numpy()
        if on.any() and (~on).any():
            contrasts.append(signal[on].mean() - signal[~on].mean())
    return np.array(contrasts)


def test_dataset_is_valid_bids_and_movie_like(synthetic_dataset, tmp_path):
    assert validate_dataset(synthetic_dataset, ["01", "02"], tmp_path) == []
    events = pd.read_csv(synthetic_dataset / "sub-01/func/sub-01_task-movie_run-1_events.tsv",
                         sep="\t", keep_default_na=False, na_values=["n/a"])
    assert {"onset", "duration", "trial_type", "e_anger/rage", "e_fear", "e_gloating"} <= set(
        events.columns)
    assert np.allclose(events.onset.iloc[1:].to_numpy(),
                       (events.onset + events.duration).iloc[:-1].to_numpy())  # contiguous
    assert events.duration.between(10, 40).all()
    labelled = events.dropna(subset=["trial_type"])
    for row in labelled.itertuples():
        column = {"anger": "e_anger/rage"}.get(row.trial_type, f"e_{row.trial_type}")
        assert events.loc[row.Index, column] >= 5 / 9 - 1e-9
    agreement = events.filter(like="e_").to_numpy()
    assert (np.sort(agreement, axis=1)[:, -2] <= 2 / 9 + 1e-9).all()
    image = nib.load(synthetic_dataset / "sub-01/func/sub-01_task-movie_run-1_bold.nii.gz")
    assert image.shape == (12, 14, 12, 80) and image.get_data_dtype() == np.int16
    assert image.header.get_zooms()[3] == 2.0


def test_fmriprep_derivatives_mix_real_motion(synthetic_dataset):
    func = synthetic_dataset / "derivatives/fmriprep/sub-01/func"
    confounds = pd.read_csv(func / "sub-01_task-movie_run-1_desc-confounds_timeseries.tsv",
                            sep="\t", na_values=["n/a"])
    assert set(MOTION_COLUMNS) <= set(confounds.columns)
    assert {"framewise_displacement", "csf", "white_matter", "global_signal"} <= set(
        confounds.columns)
    mask = np.asarray(nib.load(next(func.glob("*run-1*desc-brain_mask.nii.gz"))).dataobj) > 0
    bold = np.asarray(nib.load(next(func.glob("*run-1*desc-preproc_bold.nii.gz"))).dataobj,
                      np.float32)[mask].T
    bold -= bold.mean(axis=0)
    motion = confounds[list(MOTION_COLUMNS)].to_numpy()
    motion = np.column_stack([motion - motion.mean(axis=0), np.ones(len(motion))])
    residual = bold - motion @ np.linalg.lstsq(motion, bold, rcond=None)[0]
    explained = 1 - residual.var(axis=0).mean() / bold.var(axis=0).mean()
    assert explained > 0.1
    assert 0.2 < mask.mean() < 0.9


def test_planted_signal_and_null_variant(tmp_path):
    kwargs = dict(n_subjects=1, n_runs=1, n_volumes=150, shape=(12, 14, 12), seed=4,
                  with_derivatives=False, hrf="delay")
    planted = make_synthetic_dataset(tmp_path / "planted", signal=2.0, **kwargs)
    null = make_synthetic_dataset(tmp_path / "null", null=True, **kwargs)
    assert _region_contrast(planted).min() > 0.8
    # Same seed: the null data are the planted data minus exactly the planted signal,
    # which lives only inside the regions and follows each region's class.
    name = "sub-01/func/sub-01_task-movie_run-1_bold.nii.gz"
    difference = (np.asarray(nib.load(planted / name).dataobj, np.float32)
                  - np.asarray(nib.load(null / name).dataobj, np.float32))
    regions = np.asarray(nib.load(null / "sourcedata/groundtruth/regions_dseg.nii.gz").dataobj)
    assert np.abs(difference[regions == 0]).max() == 0
    labels = pd.read_csv(null / "sourcedata/groundtruth/sub-01_task-movie_run-1_labels.tsv",
                         sep="\t", keep_default_na=False, na_values=["n/a"])["trial_type"]
    for k, name in enumerate(("anger", "fear", "happiness", "love", "sadness")):
        inside = difference[regions == k + 1].mean(axis=0)
        on = (labels == name).to_numpy()
        assert inside[on].min() > 5 and np.abs(inside[~on]).max() <= 1
    parameters = json.loads((null / "sourcedata/groundtruth/parameters.json").read_text())
    assert parameters["null"] is True and parameters["signal"] == 0.0


def test_ground_truth_labels_follow_the_rule(rng):
    scenes = make_scenes(100.0, ["a", "b"], (10.0, 20.0), 0.2, rng)
    times = np.arange(50) * 2.0
    labels = labels_at(scenes, times - 4.0)
    assert labels[:2] == [None, None]  # read times before 0 are unlabelled
    for t, label in zip(times[2:] - 4.0, labels[2:]):
        row = scenes[(scenes.onset <= t) & (t < scenes.onset + scenes.duration)].iloc[0]
        assert label == (row.label if isinstance(row.label, str) else None)
    drive = class_drive(scenes, ["a", "b"], times, hrf="delay", lag=4.0)
    assert np.array_equal(drive[:, 0] == 1, np.array(labels) == "a")


def test_grid_covers_the_mni_brain_and_runs_can_differ_in_length(tmp_path):
    affine = grid_affine((20, 24, 20))
    corners = nib.affines.apply_affine(affine, [[0, 0, 0], [19, 23, 19]])
    assert (corners[0] <= [-70, -100, -60]).all() and (corners[1] >= [70, 70, 80]).all()
    root = make_synthetic_dataset(tmp_path / "d", n_subjects=1, n_runs=2, n_volumes=[10, 14],
                                  shape=(6, 7, 6), classes=("joy", "fear"), seed=2,
                                  with_derivatives=False)
    shapes = [nib.load(root / f"sub-01/func/sub-01_task-movie_run-{r}_bold.nii.gz").shape[3]
              for r in (1, 2)]
    assert shapes == [10, 14]
    events = pd.read_csv(root / "sub-01/func/sub-01_task-movie_run-1_events.tsv", sep="\t")
    assert "e_joy" in events.columns
    with pytest.raises(ValueError, match="2 runs"):
        make_synthetic_dataset(tmp_path / "e", n_runs=2, n_volumes=[10])
