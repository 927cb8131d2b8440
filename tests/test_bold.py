"""Tests of bids_affect.bold: masking, cleaning and memory-mapped samples."""

from __future__ import annotations

import dataclasses
import json
import re
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_affect import bold
from bids_affect.bold import (
    CONFOUND_STRATEGIES,
    SampleSet,
    build_samples,
    clean_run,
    load_run_confounds,
    subject_mask,
)
from bids_affect.datasets import DEFAULT_CLASSES, make_synthetic_dataset
from bids_affect.exceptions import InputDataError, InputMissingError, UsageError
from bids_affect.io.layout import RunRecord

MOTION = ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"]


# --------------------------------------------------------------------------- helpers


def fmriprep_runs(root: Path, subject: str = "01") -> list[RunRecord]:
    """Run records of a synthetic dataset's fMRIPrep outputs, built from file names.

    Built here rather than with ``collect_runs`` so that these tests exercise
    this module only (the layout has its own tests).
    """
    params = json.loads((root / "sourcedata" / "groundtruth" / "parameters.json").read_text())
    func = root / "derivatives" / "fmriprep" / f"sub-{subject}" / "func"
    runs = []
    for path in sorted(func.glob("*_desc-preproc_bold.nii.gz")):
        prefix, space = re.match(r"(.+)_space-([^_]+)_desc-preproc", path.name).groups()
        shape = tuple(nib.load(path).shape)
        run = int(re.search(r"_run-(\d+)", prefix)[1])
        runs.append(RunRecord(
            subject=subject, session=None, task=params["task"], run=run,
            raw_bold=root / f"sub-{subject}" / "func" / f"{prefix}_bold.nii.gz", bold=path,
            tr=params["tr"], n_volumes=shape[3], shape=shape,
            start_time=params["start_time"] or 0.0, space=space,
            mask=func / f"{prefix}_space-{space}_desc-brain_mask.nii.gz",
            confounds=func / f"{prefix}_desc-confounds_timeseries.tsv",
            entities={"subject": subject, "task": params["task"], "run": run}))
    return runs


def true_labels(root: Path, runs: list[RunRecord]) -> dict[str, np.ndarray]:
    truth = root / "sourcedata" / "groundtruth"
    return {run.key: pd.read_csv(truth / f"sub-{run.subject}_{run.key}_labels.tsv",
                                 sep="\t").trial_type.to_numpy(object) for run in runs}


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` with its size and modification time."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def class_contrast(samples: SampleSet, regions: np.ndarray, shift: int = 0) -> np.ndarray:
    """Per class: mean signal of its region on its volumes minus on other labelled ones.

    ``shift`` moves the labels that many volumes later within each run.
    """
    labels = samples.table.groupby("run_index")["label"].shift(shift)
    region_of_voxel = regions[np.asarray(samples.mask_img.dataobj, bool)]
    contrasts = []
    for k, name in enumerate(DEFAULT_CLASSES):
        signal = np.asarray(samples.X[:, region_of_voxel == k + 1]).mean(axis=1)
        on = (labels == name).to_numpy()
        off = (labels.notna() & (labels != name)).to_numpy()
        contrasts.append(signal[on].mean() - signal[off].mean())
    return np.array(contrasts)


def motion_r2(cleaned: np.ndarray, confounds_file: Path) -> float:
    """Mean fraction of voxel variance explained by the 6 motion traces."""
    motion = pd.read_csv(confounds_file, sep="\t")[MOTION].to_numpy()
    motion = motion - motion.mean(axis=0)
    beta, *_ = np.linalg.lstsq(motion, cleaned, rcond=None)
    residual = ((cleaned - motion @ beta) ** 2).sum(axis=0)
    return float(np.mean(1.0 - residual / (cleaned ** 2).sum(axis=0)))


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def runs(synthetic_dataset) -> list[RunRecord]:
    return fmriprep_runs(synthetic_dataset)


@pytest.fixture(scope="module")
def samples(synthetic_dataset, runs, tmp_path_factory) -> SampleSet:
    return build_samples(runs, true_labels(synthetic_dataset, runs),
                         tmp_path_factory.mktemp("work") / "samples", confounds="motion")


@pytest.fixture(scope="module")
def timed_dataset(tmp_path_factory) -> Path:
    """Exact timing: the planted signal is the label boxcar shifted by 4 s."""
    return make_synthetic_dataset(tmp_path_factory.mktemp("timed") / "bids", n_subjects=1,
                                  n_runs=2, n_volumes=100, shape=(12, 14, 12), hrf="delay",
                                  hrf_lag=4.0, signal=2.0, start_time=1.0, seed=11)


# --------------------------------------------------------------------------- alignment


def test_labels_and_samples_line_up(timed_dataset, tmp_path):
    from bids_affect.io.annotations import label_volumes, load_label_spec, read_events

    runs = fmriprep_runs(timed_dataset)
    # Labels made by the app's rule from the events (not the ground truth), for each
    # run's own StartTime and the spec's 4 s lag (the generator's planted delay).
    spec = load_label_spec("trial-type")
    events = {run.key: str(run.raw_bold).replace("_bold.nii.gz", "_events.tsv")
              for run in runs}
    labels = {run.key: label_volumes(read_events(events[run.key]), spec, tr=run.tr,
                                     n_volumes=run.n_volumes, start_time=run.start_time)
              for run in runs}
    assert {run.start_time for run in runs} != {0.0}
    samples = build_samples(runs, labels, tmp_path / "samples")
    truth = pd.concat([pd.read_csv(timed_dataset / "sourcedata" / "groundtruth"
                                   / f"sub-01_{run.key}_labels.tsv", sep="\t") for run in runs],
                      ignore_index=True)
    # t_i = i * TR + StartTime, the same times and labels as the ground truth.
    np.testing.assert_allclose(samples.table.time, truth.onset)
    np.testing.assert_array_equal(samples.table.volume, truth.volume)
    assert samples.table.label.fillna("-").tolist() == truth.trial_type.fillna("-").tolist()

    regions = np.asarray(nib.load(timed_dataset / "sourcedata" / "groundtruth"
                                  / "regions_dseg.nii.gz").dataobj)
    aligned = class_contrast(samples, regions)
    assert (aligned > 0.25).all(), aligned  # each class lights up its own region
    shifted = {shift: class_contrast(samples, regions, shift).mean()
               for shift in (-3, -2, -1, 1, 2, 3)}
    # The contrast peaks where labels and rows line up: any off-by-N weakens it
    # (by about 15% for one volume with 10-40 s scenes, 30% or more for two).
    one_off = max(shifted[-1], shifted[1])
    more_off = max(value for shift, value in shifted.items() if abs(shift) > 1)
    assert aligned.mean() > 1.08 * one_off, (aligned.mean(), shifted)
    assert aligned.mean() > 1.2 * more_off, (aligned.mean(), shifted)


# --------------------------------------------------------------------------- streaming


@pytest.mark.parametrize("options", [
    {"confounds": "motion"},
    {"confounds": "none", "high_pass": None, "smoothing_fwhm": 8.0},
], ids=["motion", "smoothed"])
def test_matrix_equals_nilearn_per_run(runs, samples, options, tmp_path):
    from nilearn.interfaces.fmriprep import load_confounds
    from nilearn.maskers import NiftiMasker

    if options["confounds"] != "motion":
        samples = build_samples(runs, None, tmp_path, **options)
    for run in runs:
        confounds = None
        if options["confounds"] == "motion":
            confounds, _ = load_confounds(str(run.bold), strategy=("motion",),
                                          motion="derivatives")
        masker = NiftiMasker(mask_img=samples.mask_img, detrend=True,
                             high_pass=options.get("high_pass", 1 / 300), t_r=run.tr,
                             standardize="zscore_sample",
                             smoothing_fwhm=options.get("smoothing_fwhm"))
        expected = masker.fit_transform(run.bold, confounds=confounds)
        rows = (samples.table.run == run.key).to_numpy()
        np.testing.assert_allclose(samples.X[rows], expected, rtol=1e-4, atol=1e-4)
    assert samples.parameters["high_pass"] == options.get("high_pass", 1 / 300)


@pytest.mark.parametrize("smoothing_fwhm", [None, 6.0])
def test_blocks_give_the_same_result(runs, smoothing_fwhm, tmp_path, monkeypatch):
    whole = build_samples(runs, None, tmp_path / "whole", smoothing_fwhm=smoothing_fwhm)
    # 7 volumes per read, 50 voxels per clean: many blocks, last ones partial.
    monkeypatch.setattr(bold, "_READ_BLOCK_BYTES", 7 * 4 * int(np.prod(runs[0].shape[:3])))
    monkeypatch.setattr(bold, "_CLEAN_BLOCK_BYTES", 50 * 8 * runs[0].n_volumes)
    blocks = build_samples(runs, None, tmp_path / "blocks", smoothing_fwhm=smoothing_fwhm)
    np.testing.assert_allclose(blocks.X, whole.X, rtol=0, atol=1e-5)
    np.testing.assert_allclose(blocks.volumes, whole.volumes, rtol=0, atol=1e-5)


def test_crop_view_is_the_matrix_in_the_box(samples):
    inside = np.asarray(samples.mask_img.dataobj, bool)
    crop = samples.crop_mask
    assert samples.volumes.shape == (len(samples.table), *crop.shape)
    np.testing.assert_array_equal(samples.volumes[:, crop], samples.X)
    assert not np.asarray(samples.volumes[:, ~crop]).any()
    # The box is tight and its affine maps the box's first voxel.
    assert crop.sum() == inside.sum()
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        assert crop.any(axis=other)[[0, -1]].all()
    start = [s.start for s in samples.crop_slices]
    np.testing.assert_allclose(samples.crop_affine[:3, 3],
                               nib.affines.apply_affine(samples.mask_img.affine, start))
    np.testing.assert_array_equal(samples.uncrop(samples.volumes[5]).get_fdata(),
                                  samples.unmask(samples.X[5]).get_fdata())


def test_zscore_per_run_and_voxel(samples):
    for _, rows in samples.table.groupby("run_index").groups.items():
        block = np.asarray(samples.X[np.asarray(rows)], np.float64)
        np.testing.assert_allclose(block.mean(axis=0), 0, atol=1e-4)
        np.testing.assert_allclose(block.std(axis=0, ddof=1), 1, atol=1e-3)


def test_memory_does_not_grow_with_runs(tmp_path):
    n_volumes = 150
    root = make_synthetic_dataset(tmp_path / "bids", n_subjects=1, n_runs=6,
                                  n_volumes=n_volumes, shape=(24, 28, 24), seed=5)
    runs = fmriprep_runs(root)
    mask = subject_mask(runs)
    # Confounds "none": nilearn's confound loader interns path strings, and a resize of
    # the interning table (megabytes, once) would land in one of the measurements.
    options = {"mask_img": mask, "confounds": "none"}
    build_samples(runs[:1], None, tmp_path / "warm", **options)  # imports, caches
    peaks = []
    for n_runs in (2, 6):
        tracemalloc.start()
        build_samples(runs[:n_runs], None, tmp_path / f"runs{n_runs}", **options)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    # Holding the runs would add at least their masked float32 signals; streaming adds
    # nothing, and never holds the whole 4D series even once.
    four_runs = 4 * int(np.asarray(mask.dataobj).sum()) * n_volumes * 4
    assert peaks[1] - peaks[0] < 0.5 * four_runs, (peaks, four_runs)
    assert peaks[1] < 6 * np.prod(runs[0].shape) * 4, peaks


# --------------------------------------------------------------------------- masks


def test_subject_mask_intersects_fmriprep_masks(runs, tmp_path):
    masks = [np.asarray(nib.load(run.mask).dataobj, bool) for run in runs]
    smaller = masks[1].copy()
    smaller[:, :, : smaller.shape[2] // 2] = False
    image = nib.load(runs[1].mask)
    path = tmp_path / runs[1].mask.name
    nib.Nifti1Image(smaller.astype(np.uint8), image.affine, image.header).to_filename(path)
    changed = [runs[0], dataclasses.replace(runs[1], mask=path), runs[2]]
    result = np.asarray(subject_mask(changed).dataobj, bool)
    np.testing.assert_array_equal(result, masks[0] & smaller & masks[2])


def test_subject_mask_without_fmriprep_masks_is_an_epi_mask(runs):
    brain = np.asarray(nib.load(runs[0].mask).dataobj, bool)
    epi = np.asarray(subject_mask([dataclasses.replace(r, mask=None) for r in runs]).dataobj,
                     bool)
    dice = 2 * (epi & brain).sum() / (epi.sum() + brain.sum())
    assert dice > 0.8, dice


# --------------------------------------------------------------------------- confounds


def test_motion_strategy_removes_motion(runs, samples):
    mask = samples.mask_img
    without = motion_r2(clean_run(runs[0], mask, confounds="none"), runs[0].confounds)
    with_motion = motion_r2(clean_run(runs[0], mask, confounds="motion"), runs[0].confounds)
    assert without > 0.3, without  # the generator really mixes motion in
    assert with_motion < 0.2 * without, (without, with_motion)


def test_unknown_strategy_lists_the_known_ones(runs, samples):
    with pytest.raises(UsageError) as caught:
        clean_run(runs[0], samples.mask_img, confounds="aroma")
    assert caught.value.exit_code == 64
    for name in CONFOUND_STRATEGIES:
        assert name in str(caught.value)


@pytest.mark.parametrize("strategy, column", [
    ("scrubbing", "white_matter_derivative1"),
    ("compcor", "compcor"),
])
def test_strategy_needing_absent_columns(runs, strategy, column):
    with pytest.raises(InputDataError) as caught:
        load_run_confounds(runs[0], strategy)
    message = str(caught.value)
    assert caught.value.exit_code == 65
    assert str(runs[0].confounds) in message and column in message, message


def test_simple_strategy_and_missing_confounds_file(runs):
    confounds, sample_mask = load_run_confounds(runs[0], "simple")
    assert confounds.shape == (runs[0].n_volumes, 26) and sample_mask is None
    assert not any(c.startswith("cosine") for c in confounds.columns)
    with pytest.raises(InputMissingError) as caught:
        load_run_confounds(dataclasses.replace(runs[0], confounds=None), "motion")
    assert caught.value.exit_code == 66
    assert load_run_confounds(dataclasses.replace(runs[0], confounds=None), "none") == (None,
                                                                                         None)


def test_scrubbing_where_the_file_allows(runs, tmp_path):
    table = pd.read_csv(runs[0].confounds, sep="\t")
    for name in ("white_matter", "csf"):
        table[f"{name}_derivative1"] = table[name].diff()
        table[f"{name}_power2"] = table[name] ** 2
        table[f"{name}_derivative1_power2"] = table[f"{name}_derivative1"] ** 2
    table["std_dvars"] = 1.0
    table["framewise_displacement"] = 0.1
    table.loc[40, "framewise_displacement"] = 0.9  # one high-motion volume
    path = tmp_path / runs[0].confounds.name
    table.to_csv(path, sep="\t", index=False, na_rep="n/a")
    confounds, sample_mask = load_run_confounds(
        dataclasses.replace(runs[0], confounds=path), "scrubbing")
    assert confounds.shape == (len(table), 32)
    assert 40 not in sample_mask and len(sample_mask) == len(table) - 1


def test_presets_follow_nilearn_without_cosines():
    from nilearn.interfaces.fmriprep.load_confounds_strategy import preset_strategies

    for name in ("simple", "scrubbing", "compcor"):
        ours = dict(CONFOUND_STRATEGIES[name].nilearn_kwargs)
        theirs = {k: v for k, v in preset_strategies[name].items()
                  if k not in ("global_signal", "demean")}
        keep_cosines = name == "compcor"  # nilearn refuses CompCor without them
        theirs["strategy"] = tuple(s for s in theirs["strategy"]
                                   if keep_cosines or s != "high_pass")
        assert ours == theirs, name


def test_censored_volumes_keep_their_rows(runs, samples, tmp_path):
    from nilearn.interfaces.fmriprep import load_confounds
    from nilearn.signal import clean

    table = pd.read_csv(runs[0].confounds, sep="\t")
    table["non_steady_state_outlier00"] = (np.arange(len(table)) == 0).astype(int)
    path = tmp_path / runs[0].confounds.name
    table.to_csv(path, sep="\t", index=False, na_rep="n/a")
    changed = [dataclasses.replace(runs[0], confounds=path), *runs[1:]]
    censored = build_samples(changed, {r.key: ["fear"] * r.n_volumes for r in runs},
                             tmp_path / "samples", mask_img=samples.mask_img)
    assert censored.table.censored.tolist()[:2] == [True, False]
    assert not censored.X[0].any() and not censored.volumes[0].any()
    assert 0 not in censored.labelled(min_volumes=0)
    confounds, sample_mask = load_confounds(str(runs[0].bold), strategy=("motion",),
                                            motion="derivatives")
    signals = bold.load_masked_run(runs[0], samples.mask_img)
    expected = clean(signals, detrend=True, standardize="zscore_sample", confounds=confounds,
                     sample_mask=np.arange(1, len(table)), high_pass=1 / 300, t_r=runs[0].tr)
    np.testing.assert_allclose(censored.X[1:len(table)], expected, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- bad input


def _three_d(run: RunRecord, folder: Path) -> tuple[RunRecord, dict, Path]:
    path = folder / run.bold.name
    image = nib.load(run.bold)
    nib.Nifti1Image(np.asarray(image.dataobj)[..., 0], image.affine).to_filename(path)
    return dataclasses.replace(run, bold=path), {}, path


def _non_finite(run: RunRecord, folder: Path) -> tuple[RunRecord, dict, Path]:
    path = folder / run.bold.name
    image = nib.load(run.bold)
    data = np.asarray(image.dataobj, np.float32)
    data[5:8, 6, 6, 10] = np.nan
    data[5:8, 6, 6, 20] = np.inf
    nib.Nifti1Image(data, image.affine).to_filename(path)
    return dataclasses.replace(run, bold=path), {}, path


def _mask_shape(run: RunRecord, folder: Path) -> tuple[RunRecord, dict, Path]:
    path = folder / "mask.nii.gz"
    image = nib.load(run.mask)
    nib.Nifti1Image(np.asarray(image.dataobj)[1:], image.affine).to_filename(path)
    return run, {"mask_img": path}, path


def _mask_affine(run: RunRecord, folder: Path) -> tuple[RunRecord, dict, Path]:
    path = folder / run.mask.name
    image = nib.load(run.mask)
    affine = image.affine.copy()
    affine[0, 3] += 2.0
    nib.Nifti1Image(np.asarray(image.dataobj), affine).to_filename(path)
    return dataclasses.replace(run, mask=path), {}, path


def _confound_rows(run: RunRecord, folder: Path) -> tuple[RunRecord, dict, Path]:
    path = folder / run.confounds.name
    pd.read_csv(run.confounds, sep="\t").iloc[:-5].to_csv(path, sep="\t", index=False,
                                                           na_rep="n/a")
    return dataclasses.replace(run, confounds=path), {}, path


def _truncated(run: RunRecord, folder: Path) -> tuple[RunRecord, dict, Path]:
    path = folder / run.bold.name
    content = run.bold.read_bytes()
    path.write_bytes(content[: len(content) * 6 // 10])
    assert nib.load(path).shape == run.shape  # the header still reads
    return dataclasses.replace(run, bold=path), {}, path


@pytest.mark.parametrize("make_bad, words", [
    (_three_d, "3D"),
    (_non_finite, "6 NaN or Inf values in 3 voxels and 2 of 80 volumes"),
    (_mask_shape, "mask shape differs"),
    (_mask_affine, "mask affine differs"),
    (_confound_rows, "75 rows but the BOLD"),
    (_truncated, "truncated or corrupt"),
], ids=["3d", "nan", "mask-shape", "mask-affine", "confound-rows", "truncated"])
def test_bad_input(synthetic_dataset, runs, tmp_path, make_bad, words, monkeypatch):
    # Read 7 volumes at a time: NaN counts add up over blocks (volumes 10 and 20).
    monkeypatch.setattr(bold, "_READ_BLOCK_BYTES", 7 * 4 * int(np.prod(runs[0].shape[:3])))
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    bad_run, kwargs, bad_file = make_bad(runs[1], inputs)
    before = snapshot(synthetic_dataset), snapshot(inputs)
    out_dir = tmp_path / "work"
    with pytest.raises(InputDataError) as caught:
        build_samples([runs[0], bad_run, runs[2]], None, out_dir, **kwargs)
    message = str(caught.value)
    assert caught.value.exit_code == 65
    assert str(bad_file) in message and words in message, message
    assert "\n" not in message
    assert (snapshot(synthetic_dataset), snapshot(inputs)) == before
    leftovers = sorted(p.name for p in out_dir.iterdir()) if out_dir.exists() else []
    assert leftovers == [], leftovers


def test_labels_must_match_runs(runs, tmp_path):
    with pytest.raises(UsageError):
        build_samples(runs, {runs[0].key: [None] * 80}, tmp_path)
    labels = {run.key: [None] * 80 for run in runs}
    labels[runs[2].key] = [None] * 79
    with pytest.raises(InputDataError) as caught:
        build_samples(runs, labels, tmp_path)
    assert str(runs[2].bold) in str(caught.value)
    prefixed = {f"sub-01_{run.key}": ["fear"] * 80 for run in runs}  # several subjects' form
    assert set(build_samples(runs, prefixed, tmp_path).table.label) == {"fear"}


# --------------------------------------------------------------------------- sample set


def test_load_round_trip(samples):
    loaded = SampleSet.load(samples.folder)
    np.testing.assert_array_equal(loaded.X, samples.X)
    np.testing.assert_array_equal(loaded.volumes, samples.volumes)
    pd.testing.assert_frame_equal(loaded.table, samples.table)
    assert loaded.bbox == samples.bbox
    np.testing.assert_array_equal(loaded.crop_affine, samples.crop_affine)
    assert isinstance(loaded.X, np.memmap) and not loaded.X.flags.writeable
    with pytest.raises(ValueError):
        loaded.X[0, 0] = 1.0
    manifest = loaded.manifest
    assert manifest["parameters"]["high_pass"] == pytest.approx(1 / 300)
    assert manifest["parameters"]["confounds"] == "motion"
    assert [entry["key"] for entry in manifest["runs"]] == sorted(set(samples.table.run))
    assert all(Path(source).is_file() for source in manifest["sources"])
    assert list(loaded.table.columns) == ["subject", "run", "run_index", "volume", "time",
                                          "label", "censored"]
    assert loaded.table.subject.iloc[0] == "01"


def test_incomplete_folder_is_refused(samples, runs, tmp_path, monkeypatch):
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in samples.folder.iterdir():
        if path.name != bold.MANIFEST_FILE:
            (copy / path.name).write_bytes(path.read_bytes())
    with pytest.raises(InputMissingError, match="manifest.json is missing"):
        SampleSet.load(copy)

    # A rebuild that crashes leaves no manifest (the old one is removed first) and no
    # temporary files.
    out_dir = tmp_path / "rebuilt"
    build_samples(runs, None, out_dir)
    calls = []

    def crash(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("killed")
        return real(*args, **kwargs)

    real = bold.clean_signals
    monkeypatch.setattr(bold, "clean_signals", crash)
    with pytest.raises(RuntimeError):
        build_samples(runs, None, out_dir)
    assert not any(p.name.startswith(".tmp-") for p in out_dir.iterdir())
    with pytest.raises(InputMissingError):
        SampleSet.load(out_dir)


def test_labelled_drops_rare_classes(samples, caplog):
    counts = samples.table.label.value_counts()
    rare = counts.index[-1]
    threshold = int(counts.iloc[-1]) + 1
    rows = samples.labelled(min_volumes=threshold)
    assert f"{rare} ({counts.iloc[-1]} volumes)" in caplog.text
    kept = samples.table.label.iloc[rows]
    assert rare not in set(kept) and set(kept) == set(counts.index[counts >= threshold])
    caplog.clear()
    rows = samples.labelled(min_volumes=1, classes=[counts.index[0]])
    assert "left out" not in caplog.text
    assert (samples.table.label.iloc[rows] == counts.index[0]).all()
    assert len(rows) == counts.iloc[0]
    samples.labelled(min_volumes=1, classes=["surprise"])
    assert "surprise (0 volumes)" in caplog.text


def test_unmask_and_uncrop_check_shapes(samples):
    image = samples.unmask(np.arange(samples.X.shape[1], dtype=float))
    inside = np.asarray(samples.mask_img.dataobj, bool)
    np.testing.assert_array_equal(image.get_fdata()[inside], np.arange(inside.sum()))
    assert samples.unmask(np.ones((2, samples.X.shape[1]))).shape == (*inside.shape, 2)
    with pytest.raises(ValueError, match="one per mask voxel"):
        samples.unmask(np.ones(3))
    with pytest.raises(ValueError, match="crop box"):
        samples.uncrop(np.ones((2, 2, 2)))
