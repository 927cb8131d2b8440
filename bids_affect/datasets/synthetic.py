"""Synthetic movie-fMRI datasets in BIDS with planted emotion signal.

:func:`make_synthetic_dataset` writes a valid raw BIDS dataset that looks like
a naturalistic movie study: several runs (TR 2 s by default), emotions as
contiguous scenes of varied length annotated in the StudyForrest format (one
agreement column ``e_*`` per category, plus ``trial_type``), AR(1) noise, slow
drifts, head-motion signals, and class-specific spatial patterns planted in
known regions and convolved with a haemodynamic response. Optionally it adds
fMRIPrep-style derivatives (``desc-preproc_bold`` in an MNI-like space,
``desc-brain_mask``, ``desc-confounds_timeseries.tsv`` whose motion columns are
really mixed into the signal). The ground truth (regions, scenes, labels per
volume) goes to ``sourcedata/groundtruth/``. With ``signal=0`` (the null
variant) the BOLD holds no information about the emotions.

Examples
--------
>>> import tempfile
>>> root = make_synthetic_dataset(tempfile.mkdtemp(), n_subjects=2, n_runs=2,
...                               n_volumes=30, shape=(10, 12, 10), seed=3)
>>> sorted(p.name for p in (root / "sub-01" / "func").iterdir())[:2]
['sub-01_task-movie_run-1_bold.nii.gz', 'sub-01_task-movie_run-1_events.tsv']
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage, stats

#: The 22 emotion categories of the StudyForrest annotations (columns ``e_*``).
STUDYFORREST_CATEGORIES = (
    "admiration", "anger/rage", "contempt", "disappointment", "fear", "fears_confirmed",
    "gloating", "gratification", "gratitude", "happiness", "happy-for", "hate", "hope",
    "love", "pity/compassion", "pride", "relief", "remorse", "resent", "sadness",
    "satisfaction", "shame",
)

#: The category a scene of each class is annotated with (a raw StudyForrest column,
#: so both the ``studyforrest-5`` and ``studyforrest-raw5`` presets read it).
CLASS_CATEGORY = {"anger": "anger/rage", "sadness": "sadness", "fear": "fear",
                  "love": "love", "happiness": "happiness"}

DEFAULT_CLASSES = ("anger", "fear", "happiness", "love", "sadness")

#: Centres (MNI mm) of the planted regions, given to classes in order.
REGION_CENTRES_MM = (
    (-22.0, -4.0, -18.0),   # left amygdala
    (40.0, 8.0, 0.0),       # right insula
    (2.0, 46.0, -6.0),      # ventromedial prefrontal cortex
    (4.0, -60.0, 36.0),     # precuneus
    (-56.0, -24.0, 6.0),    # left superior temporal gyrus
    (44.0, -70.0, 0.0),     # right lateral occipital cortex
    (-40.0, 30.0, 20.0),    # left middle frontal gyrus
    (24.0, -4.0, -18.0),    # right amygdala
)

#: Bounding box of the MNI152 brain (mm), covered by the synthetic grid.
MNI_BRAIN_BOX = ((-78.0, 78.0), (-114.0, 78.0), (-72.0, 86.0))

MOTION_COLUMNS = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")


@dataclass
class SyntheticParameters:
    """Parameters of a synthetic dataset (written to the ground truth)."""

    n_subjects: int = 2
    n_runs: int = 3
    n_volumes: int | Sequence[int] = 120
    shape: tuple[int, int, int] = (20, 24, 20)
    tr: float = 2.0
    classes: tuple[str, ...] = DEFAULT_CLASSES
    signal: float = 1.0
    noise: float = 1.0
    ar: float = 0.5
    drift: float = 1.0
    motion: float = 0.5
    scene_duration: tuple[float, float] = (10.0, 40.0)
    neutral_fraction: float = 0.15
    region_radius_mm: float | None = None
    hrf: str = "spm"
    hrf_lag: float = 4.0
    start_time: float | None = None
    task: str = "movie"
    space: str = "MNI152NLin2009cAsym"
    with_derivatives: bool = True
    seed: int = 0
    subject_labels: tuple[str, ...] = field(default_factory=tuple)
    sessions: tuple[str, ...] = field(default_factory=tuple)
    stimulus: str | None = None
    encoding_signal: float = 0.0
    movie_fps: float = 10.0
    movie_size: tuple[int, int] = (32, 32)


def make_synthetic_dataset(path: str | Path, *, null: bool = False, **params) -> Path:
    """Write a synthetic BIDS movie study into ``path`` and return its root.

    Parameters
    ----------
    path : str or Path
        Folder to create (it may exist and be empty).
    null : bool
        Write the null variant: identical structure, no planted signal.
    **params
        Fields of :class:`SyntheticParameters`: ``n_subjects``, ``n_runs``,
        ``n_volumes`` (one value or one per run), ``shape``, ``tr``, ``classes``,
        ``signal`` (planted amplitude, in units of the noise standard deviation),
        ``noise``, ``ar`` (AR(1) coefficient), ``drift``, ``motion``,
        ``scene_duration`` (min, max seconds), ``neutral_fraction``, ``hrf``
        (``"spm"`` canonical HRF or ``"delay"``: a boxcar shifted by
        ``hrf_lag``), ``start_time`` (written as ``StartTime``),
        ``with_derivatives``, ``seed``, ``subject_labels`` (default 01, 02...),
        ``sessions`` (session labels, each holding every run; default none),
        ``stimulus`` (None; ``"movie"``: a synthetic movie per run in ``stimuli/``,
        named by a ``stim_file`` event at onset 0; ``"recording"``: its visual
        properties as ``recording-visual_stim`` files; ``"both"``),
        ``encoding_signal`` (amplitude of voxels in the right amygdala driven by
        the movie's luminance and contrast through the HRF; needs ``stimulus``),
        ``movie_fps``, ``movie_size``.

    Returns
    -------
    Path
        Root of the dataset.
    """
    p = SyntheticParameters(**params)
    if null:
        p.signal = 0.0
    p.classes = tuple(p.classes)
    p.shape = tuple(int(n) for n in p.shape)
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(p.seed)
    n_volumes = _per_run(p.n_volumes, p.n_runs)
    affine = grid_affine(p.shape)
    brain = brain_mask(p.shape, affine)
    regions = plant_regions(p.shape, affine, brain, p.classes, p.region_radius_mm)
    patterns = _class_patterns(regions, len(p.classes), rng)
    subjects = list(p.subject_labels) or [f"{i + 1:02d}" for i in range(p.n_subjects)]

    _write_top_level(root, p, subjects)
    truth = root / "sourcedata" / "groundtruth"
    truth.mkdir(parents=True, exist_ok=True)
    nib.Nifti1Image(regions.astype(np.int16), affine).to_filename(truth / "regions_dseg.nii.gz")
    pd.DataFrame({"index": np.arange(1, len(p.classes) + 1), "name": p.classes,
                  "centre_mm": [str(REGION_CENTRES_MM[i % len(REGION_CENTRES_MM)])
                                for i in range(len(p.classes))]}
                 ).to_csv(truth / "regions_dseg.tsv", sep="\t", index=False)
    if p.with_derivatives:
        _write_fmriprep_description(root / "derivatives" / "fmriprep")

    movies = _write_movies(root, p, n_volumes) if p.stimulus else {}
    encoding_weights = _encoding_pattern(p, affine, brain, regions, truth)
    p.sessions = tuple(str(label) for label in p.sessions)
    for subject, session in itertools.product(subjects, p.sessions or [None]):
        folder = Path(f"sub-{subject}") / (f"ses-{session}" if session else "") / "func"
        func = root / folder
        func.mkdir(parents=True, exist_ok=True)
        for run, n_vol in enumerate(n_volumes, start=1):
            entities = "_".join(part for part in (
                f"sub-{subject}", f"ses-{session}" if session else None, f"task-{p.task}",
                f"run-{run}") if part)
            scenes = make_scenes(n_vol * p.tr + (p.start_time or 0.0), p.classes, p.scene_duration,
                                 p.neutral_fraction, rng)
            events = events_table(scenes, p.classes, rng)
            if run in movies and p.stimulus in ("movie", "both"):
                events = _with_movie_event(events, movies[run])
            events.to_csv(func / f"{entities}_events.tsv", sep="\t", index=False,
                          na_rep="n/a")
            times = np.arange(n_vol) * p.tr + (p.start_time or 0.0)
            drive = class_drive(scenes, p.classes, times, p.hrf, p.hrf_lag)
            motion = _motion_parameters(n_vol, rng)
            extra = None
            if encoding_weights is not None:
                extra = (visual_drive(movies[run], times), encoding_weights)
            data = _bold_data(p, brain, patterns, drive, motion, rng, extra)
            if p.stimulus in ("recording", "both"):
                _write_recording(func / f"{entities}_recording-visual_stim.tsv.gz",
                                 movies[run])
            image = _bold_image(data, affine, p.tr)
            image.to_filename(func / f"{entities}_bold.nii.gz")
            true_labels = labels_at(scenes, times - p.hrf_lag)
            pd.DataFrame({"volume": np.arange(n_vol), "onset": times,
                          "trial_type": true_labels}).to_csv(
                truth / f"{entities}_labels.tsv", sep="\t", index=False, na_rep="n/a")
            if p.with_derivatives:
                _write_fmriprep_run(root / "derivatives" / "fmriprep" / folder, entities,
                                    image, brain, affine, motion, p)
    (truth / "parameters.json").write_text(
        json.dumps({**asdict(p), "null": null, "n_volumes": n_volumes}, indent=2) + "\n")
    return root


def _per_run(n_volumes: int | Sequence[int], n_runs: int) -> list[int]:
    if isinstance(n_volumes, (int, np.integer)):
        return [int(n_volumes)] * n_runs
    values = [int(n) for n in n_volumes]
    if len(values) != n_runs:
        raise ValueError(f"n_volumes has {len(values)} values for {n_runs} runs")
    return values


# --------------------------------------------------------------------------- space


def grid_affine(shape: Sequence[int]) -> np.ndarray:
    """Affine of a grid of ``shape`` isotropic voxels that covers the MNI brain.

    Examples
    --------
    >>> float(grid_affine((20, 24, 20))[0, 0])  # mm per voxel
    8.0
    """
    extent = np.array([hi - lo for lo, hi in MNI_BRAIN_BOX])
    voxel = float(np.round(np.max(extent / np.asarray(shape, float)), 1))
    centre = np.array([(lo + hi) / 2 for lo, hi in MNI_BRAIN_BOX])
    affine = np.diag([voxel, voxel, voxel, 1.0])
    affine[:3, 3] = centre - voxel * (np.asarray(shape, float) - 1) / 2
    return affine


def brain_mask(shape: Sequence[int], affine: np.ndarray) -> np.ndarray:
    """The MNI152 brain mask bundled with nilearn, resampled to the grid."""
    from nilearn.datasets import load_mni152_brain_mask
    from nilearn.image import resample_img, smooth_img

    template = load_mni152_brain_mask(resolution=2)
    template = nib.Nifti1Image(np.asarray(template.dataobj, np.float32), template.affine)
    # Smooth to the target voxel size first: the mask then holds the brain fraction
    # of each target voxel, and linear resampling does not alias.
    template = smooth_img(template, fwhm=float(abs(affine[0, 0])))
    resampled = resample_img(template, target_affine=affine, target_shape=tuple(shape),
                             interpolation="continuous", force_resample=True,
                             copy_header=True)
    mask = np.asarray(resampled.dataobj) > 0.5
    return ndimage.binary_fill_holes(mask)


def plant_regions(shape: Sequence[int], affine: np.ndarray, brain: np.ndarray,
                  classes: Sequence[str], radius_mm: float | None = None) -> np.ndarray:
    """Label image: value ``k + 1`` marks the planted region of class ``k``.

    Each region is a ball around a centre of :data:`REGION_CENTRES_MM`, inside
    the brain, not overlapping the regions before it.
    """
    voxel = float(abs(affine[0, 0]))
    radius = radius_mm if radius_mm is not None else max(14.0, 1.6 * voxel)
    ijk = np.indices(shape).reshape(3, -1).T
    xyz = nib.affines.apply_affine(affine, ijk).reshape(*shape, 3)
    regions = np.zeros(shape, np.int16)
    for k in range(len(classes)):
        centre = np.asarray(REGION_CENTRES_MM[k % len(REGION_CENTRES_MM)])
        if k >= len(REGION_CENTRES_MM):  # more classes than centres: mirror and shift
            centre = centre * np.array([-1.0, 1.0, 1.0]) + np.array([0.0, 10.0, 10.0])
        distance = np.linalg.norm(xyz - centre, axis=-1)
        ball = (distance <= radius) & brain & (regions == 0)
        if not ball.any():  # coarse grids: take the nearest free brain voxel's neighbourhood
            free = np.where(brain & (regions == 0), distance, np.inf)
            nearest = np.unravel_index(np.argmin(free), shape)
            ball = np.zeros(shape, bool)
            ball[nearest] = True
            ball = ndimage.binary_dilation(ball) & brain & (regions == 0)
        regions[ball] = k + 1
    return regions


def _class_patterns(regions: np.ndarray, n_classes: int,
                    rng: np.random.Generator) -> np.ndarray:
    """One spatial pattern per class: positive weights inside its region."""
    patterns = np.zeros((n_classes, *regions.shape), np.float32)
    for k in range(n_classes):
        inside = regions == k + 1
        patterns[k][inside] = rng.uniform(0.7, 1.3, inside.sum())
    return patterns


# --------------------------------------------------------------------------- time


def make_scenes(total: float, classes: Sequence[str], duration: tuple[float, float],
                neutral_fraction: float, rng: np.random.Generator) -> pd.DataFrame:
    """Contiguous scenes covering ``[0, total)``: onset, duration, class (None: neutral).

    Onsets and durations are on a 0.5 s grid; consecutive scenes differ in class.
    """
    rows, onset, previous = [], 0.0, None
    while onset < total:
        length = float(np.round(rng.uniform(*duration) * 2) / 2)
        if rng.random() < neutral_fraction:
            label = None
        else:
            choices = [c for c in classes if c != previous]
            label = str(rng.choice(choices))
        rows.append((onset, length, label))
        onset += length
        previous = label
    return pd.DataFrame(rows, columns=["onset", "duration", "label"])


def labels_at(scenes: pd.DataFrame, times: np.ndarray) -> list[str | None]:
    """Class of the scene active at each time (``onset <= t < onset + duration``)."""
    out = []
    for t in np.asarray(times, float):
        active = scenes[(scenes.onset <= t) & (t < scenes.onset + scenes.duration)]
        label = active.label.iloc[0] if len(active) and t >= 0 else None
        out.append(label if isinstance(label, str) else None)
    return out


def events_table(scenes: pd.DataFrame, classes: Sequence[str],
                 rng: np.random.Generator) -> pd.DataFrame:
    """StudyForrest-style events: agreement columns ``e_*`` plus ``trial_type``.

    A scene of class ``c`` has agreement 5/9 to 9/9 on its category (see
    :data:`CLASS_CATEGORY`; other classes get a column ``e_<class>``); every
    other category gets 0 to 2/9, below any threshold in use.
    """
    categories = list(STUDYFORREST_CATEGORIES)
    categories += [c for c in classes if c not in CLASS_CATEGORY and c not in categories]
    table = pd.DataFrame({"onset": scenes.onset, "duration": scenes.duration})
    table["trial_type"] = [label if isinstance(label, str) else None for label in scenes.label]
    table["character"] = "FORREST"
    agreement = rng.integers(0, 3, size=(len(scenes), len(categories))) / 9.0
    for row, label in enumerate(scenes.label):
        if isinstance(label, str):
            column = categories.index(CLASS_CATEGORY.get(label, label))
            agreement[row, column] = rng.integers(5, 10) / 9.0
    for column, name in enumerate(categories):
        table[f"e_{name}"] = np.round(agreement[:, column], 12)
    return table


def canonical_hrf(dt: float, length: float = 32.0) -> np.ndarray:
    """SPM's canonical double-gamma HRF sampled every ``dt`` seconds (unit peak)."""
    t = np.arange(0.0, length, dt)
    hrf = stats.gamma.pdf(t, 6) - stats.gamma.pdf(t, 16) / 6.0
    return hrf / hrf.max()


def class_drive(scenes: pd.DataFrame, classes: Sequence[str], times: np.ndarray,
                hrf: str = "spm", lag: float = 4.0, dt: float = 0.1) -> np.ndarray:
    """Expected response of each class at each time, shape ``(n_times, n_classes)``.

    ``hrf="spm"`` convolves each class's scene boxcar with the canonical HRF;
    ``hrf="delay"`` shifts the boxcar by ``lag`` seconds (exact timing, for tests).
    """
    times = np.asarray(times, float)
    if hrf == "delay":
        labels = labels_at(scenes, times - lag)
        return np.array([[label == c for c in classes] for label in labels], np.float32)
    if hrf != "spm":
        raise ValueError(f"hrf must be 'spm' or 'delay', got {hrf!r}")
    grid = np.arange(0.0, times.max() + dt, dt)
    kernel = canonical_hrf(dt)
    drive = np.zeros((len(times), len(classes)), np.float32)
    for k, name in enumerate(classes):
        boxcar = np.zeros_like(grid)
        for scene in scenes[scenes.label == name].itertuples():
            boxcar[(grid >= scene.onset) & (grid < scene.onset + scene.duration)] = 1.0
        response = np.convolve(boxcar, kernel / kernel.sum())[: len(grid)]
        drive[:, k] = np.interp(times, grid, response)
    return drive


def _motion_parameters(n_volumes: int, rng: np.random.Generator) -> np.ndarray:
    """Six head-motion traces (mm and radians), shape ``(n_volumes, 6)``.

    Each is AR(1) jitter (coefficient .7) plus a small linear drift: like real
    traces, they vary from volume to volume, so regressing them out removes the
    motion signal without removing the slow, scene-long emotion signal.
    """
    jitter = np.zeros((n_volumes, 6))
    innovations = rng.normal(0, 0.05, size=(n_volumes, 6))
    for t in range(1, n_volumes):
        jitter[t] = 0.7 * jitter[t - 1] + innovations[t]
    drift = np.linspace(0, 1, n_volumes)[:, None] * rng.normal(0, 0.1, size=(1, 6))
    motion = jitter + drift
    motion[:, 3:] *= 0.01
    return motion - motion.mean(axis=0)


def _ar1_noise(n_volumes: int, n_voxels: int, coefficient: float,
               rng: np.random.Generator) -> np.ndarray:
    """Unit-variance AR(1) noise, shape ``(n_volumes, n_voxels)``."""
    innovations = rng.standard_normal((n_volumes, n_voxels)).astype(np.float32)
    scale = np.sqrt(1.0 - coefficient**2)
    noise = np.empty_like(innovations)
    noise[0] = innovations[0]
    for t in range(1, n_volumes):
        noise[t] = coefficient * noise[t - 1] + scale * innovations[t]
    return noise


def _bold_data(p: SyntheticParameters, brain: np.ndarray, patterns: np.ndarray,
               drive: np.ndarray, motion: np.ndarray, rng: np.random.Generator,
               extra: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """BOLD time series (x, y, z, t) as float32 in scanner-like units.

    ``extra``: a drive (n_volumes,) and a spatial pattern added with amplitude
    ``encoding_signal`` (the planted encoding voxels).
    """
    n_vol = drive.shape[0]
    in_brain = np.flatnonzero(brain)
    n_vox = in_brain.size
    base = 1000.0 + 150.0 * ndimage.gaussian_filter(rng.standard_normal(brain.shape), 2)
    percent = p.noise * _ar1_noise(n_vol, n_vox, p.ar, rng)
    if p.signal:
        weights = patterns.reshape(len(p.classes), -1)[:, in_brain]
        percent += p.signal * p.noise * (drive @ weights)
    if extra is not None:
        visual, pattern = extra
        percent += p.encoding_signal * p.noise * np.outer(visual, pattern.reshape(-1)[in_brain])
    t = np.linspace(-1, 1, n_vol)[:, None]
    slopes = rng.normal(0, 1, size=(3, n_vox)).astype(np.float32)
    percent += p.drift * (t * slopes[0] + (t**2 - 1 / 3) * slopes[1]
                          + np.cos(np.pi * (t + 1)) * slopes[2])
    loadings = rng.normal(0, 1, size=(6, n_vox)).astype(np.float32)
    scaled_motion = motion / motion.std(axis=0).clip(1e-6)
    percent += p.motion * (scaled_motion @ loadings)
    data = np.zeros((*brain.shape, n_vol), np.float32)
    flat = data.reshape(-1, n_vol)
    flat[in_brain] = (base.reshape(-1)[in_brain, None] * (1.0 + 0.01 * percent.T))
    outside = np.flatnonzero(~brain)
    flat[outside] = 30.0 + 5.0 * rng.standard_normal((outside.size, n_vol))
    return data


def _bold_image(data: np.ndarray, affine: np.ndarray, tr: float) -> nib.Nifti1Image:
    image = nib.Nifti1Image(np.round(data).clip(0, 32767).astype(np.int16), affine)
    image.header.set_xyzt_units("mm", "sec")
    zooms = image.header.get_zooms()
    image.header.set_zooms((*zooms[:3], tr))
    image.header.set_qform(affine, code=1)
    image.header.set_sform(affine, code=4)
    return image


# --------------------------------------------------------------------------- stimuli

#: Where the voxels driven by the movie are planted (MNI mm): the right amygdala.
ENCODING_CENTRE_MM = (24.0, -4.0, -18.0)

#: The movie properties that drive the planted encoding voxels, and their weights.
VISUAL_DRIVE = {"luminance": 1.0, "rms_contrast": 0.7}


def _write_movies(root: Path, p: SyntheticParameters, n_volumes: Sequence[int]
                  ) -> dict[int, pd.DataFrame]:
    """One synthetic movie per run in ``stimuli/`` (shared by the subjects); its frames' truth."""
    from bids_affect.datasets.movie import write_synthetic_movie

    if p.stimulus not in ("movie", "recording", "both"):
        raise ValueError(f"stimulus must be None, 'movie', 'recording' or 'both', got "
                         f"{p.stimulus!r}")
    movies = {}
    for run, n_vol in enumerate(n_volumes, start=1):
        duration = n_vol * p.tr + (p.start_time or 0.0) + p.tr
        truth = write_synthetic_movie(root / "stimuli" / f"{p.task}_run-{run}.mp4",
                                      duration=duration, fps=p.movie_fps,
                                      size=tuple(p.movie_size), scene_duration=(4.0, 12.0),
                                      seed=p.seed * 1000 + run)
        truth.attrs["stim_file"] = f"{p.task}_run-{run}.mp4"
        truth.attrs["duration"] = duration
        movies[run] = truth
    if p.stimulus == "recording":  # the movies were only the recordings' source
        import shutil

        shutil.rmtree(root / "stimuli")
    return movies


def _with_movie_event(events: pd.DataFrame, movie: pd.DataFrame) -> pd.DataFrame:
    """The run's events plus the movie's presentation: onset 0, ``stim_file``, no label."""
    row = {column: 0.0 for column in events.columns if column.startswith("e_")}
    row.update(onset=0.0, duration=movie.attrs["duration"], trial_type=None, character="n/a",
               stim_file=movie.attrs["stim_file"])
    table = pd.concat([pd.DataFrame([row]), events.assign(stim_file=None)],
                      ignore_index=True)
    return table[[*events.columns, "stim_file"]]


def visual_drive(movie: pd.DataFrame, times: np.ndarray, dt: float = 0.1) -> np.ndarray:
    """The planted encoding response: z-scored luminance and contrast through the HRF.

    Frame values are held until the next frame, convolved with the canonical
    HRF and read at the volumes' acquisition ``times``; the result is z-scored.
    """
    frame_times = movie["time"].to_numpy(float)
    signal = sum(weight * stats.zscore(movie[name].to_numpy(float))
                 for name, weight in VISUAL_DRIVE.items())
    grid = np.arange(0.0, float(np.max(times)) + dt, dt)
    held = signal[np.clip(np.searchsorted(frame_times, grid, side="right") - 1, 0, None)]
    kernel = canonical_hrf(dt)
    response = np.convolve(held, kernel / kernel.sum())[: len(grid)]
    drive = np.interp(times, grid, response)
    return ((drive - drive.mean()) / drive.std()).astype(np.float32)


def _encoding_pattern(p: SyntheticParameters, affine: np.ndarray, brain: np.ndarray,
                      regions: np.ndarray, truth: Path) -> np.ndarray | None:
    """Weights of the planted encoding voxels (a ball in the right amygdala), or None."""
    if not p.encoding_signal:
        return None
    if not p.stimulus:
        raise ValueError("encoding_signal needs a stimulus ('movie', 'recording' or 'both')")
    rng = np.random.default_rng(p.seed + 7919)  # its own stream: the rest stays as it was
    voxel = float(abs(affine[0, 0]))
    ijk = np.indices(brain.shape).reshape(3, -1).T
    xyz = nib.affines.apply_affine(affine, ijk).reshape(*brain.shape, 3)
    distance = np.linalg.norm(xyz - np.asarray(ENCODING_CENTRE_MM), axis=-1)
    ball = (distance <= max(14.0, 1.6 * voxel)) & brain & (regions == 0)
    if not ball.any():
        ball = (distance <= distance[brain & (regions == 0)].min() + 1e-6) & brain
    weights = np.zeros(brain.shape, np.float32)
    weights[ball] = rng.uniform(0.7, 1.3, int(ball.sum()))
    nib.Nifti1Image(ball.astype(np.int16), affine).to_filename(truth / "encoding_mask.nii.gz")
    return weights


def _write_recording(path: Path, movie: pd.DataFrame) -> None:
    """The movie's visual properties as a BIDS continuous recording (``recording-visual``)."""
    from bids_affect.features import FeatureSet, write_stim_recording

    columns = ["luminance", "r", "g", "b", "rms_contrast"]
    features = FeatureSet.regular("visual", movie[columns].to_numpy(np.float32),
                                  float(movie.attrs["fps"]), start_time=0.0, columns=columns)
    write_stim_recording(features, path)


# --------------------------------------------------------------------------- files


def _write_json(path: Path, content: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=2) + "\n")


def _write_top_level(root: Path, p: SyntheticParameters, subjects: Sequence[str]) -> None:
    _write_json(root / "dataset_description.json", {
        "Name": "bids_affect synthetic movie study" + (" (null)" if not p.signal else ""),
        "BIDSVersion": "1.10.0", "DatasetType": "raw", "License": "CC0",
        "Authors": ["bids_affect"],
        "GeneratedBy": [{"Name": "bids_affect.datasets", "Description": "synthetic data"}],
    })
    (root / "README").write_text(
        "Synthetic naturalistic movie fMRI study generated by bids_affect.datasets.\n"
        "Emotion scenes are annotated in the StudyForrest format; the planted ground truth\n"
        "is in sourcedata/groundtruth/.\n")
    (root / "CHANGES").write_text("1.0.0 2026-01-01\n  - Generated.\n")
    pd.DataFrame({"participant_id": [f"sub-{s}" for s in subjects]}).to_csv(
        root / "participants.tsv", sep="\t", index=False)
    bold_sidecar = {"RepetitionTime": p.tr, "TaskName": p.task,
                    "SliceEncodingDirection": "k"}
    if p.start_time is not None:
        bold_sidecar["StartTime"] = p.start_time
    _write_json(root / f"task-{p.task}_bold.json", bold_sidecar)
    events_sidecar = {
        "trial_type": {"Description": "Dominant emotion of the scene (n/a: neutral)"},
        "character": {"Description": "Character whose emotion is annotated"},
    }
    for name in STUDYFORREST_CATEGORIES:
        events_sidecar[f"e_{name}"] = {
            "Description": f"Fraction of observers reporting {name}", "Units": "fraction"}
    _write_json(root / f"task-{p.task}_events.json", events_sidecar)


def _write_fmriprep_description(folder: Path) -> None:
    _write_json(folder / "dataset_description.json", {
        "Name": "fMRIPrep - synthetic", "BIDSVersion": "1.10.0", "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "fMRIPrep", "Version": "24.1.0"}],
    })


def _write_fmriprep_run(func: Path, entities: str, image: nib.Nifti1Image,
                        brain: np.ndarray, affine: np.ndarray, motion: np.ndarray,
                        p: SyntheticParameters) -> None:
    func.mkdir(parents=True, exist_ok=True)
    space = f"{entities}_space-{p.space}"
    image.to_filename(func / f"{space}_desc-preproc_bold.nii.gz")
    _write_json(func / f"{space}_desc-preproc_bold.json",
                {"RepetitionTime": p.tr, "SkullStripped": False, "TaskName": p.task,
                 **({"StartTime": p.start_time} if p.start_time is not None else {})})
    mask = nib.Nifti1Image(brain.astype(np.uint8), affine)
    mask.header.set_qform(affine, code=1)
    mask.header.set_sform(affine, code=4)
    mask.to_filename(func / f"{space}_desc-brain_mask.nii.gz")
    _write_json(func / f"{space}_desc-brain_mask.json", {"Type": "Brain"})
    confounds = confounds_table(np.asarray(image.dataobj, np.float32), brain, motion)
    confounds.to_csv(func / f"{entities}_desc-confounds_timeseries.tsv", sep="\t",
                     index=False, na_rep="n/a")
    _write_json(func / f"{entities}_desc-confounds_timeseries.json",
                {name: {"Description": name} for name in confounds.columns})


def confounds_table(data: np.ndarray, brain: np.ndarray, motion: np.ndarray) -> pd.DataFrame:
    """fMRIPrep-style confounds: motion (+ derivatives, squares), tissue signals, FD."""
    table = {}
    for column, name in enumerate(MOTION_COLUMNS):
        trace = motion[:, column]
        derivative = np.concatenate([[np.nan], np.diff(trace)])
        table[name] = trace
        table[f"{name}_derivative1"] = derivative
        table[f"{name}_power2"] = trace**2
        table[f"{name}_derivative1_power2"] = derivative**2
    eroded = ndimage.binary_erosion(brain)
    edge = brain & ~eroded
    flat = data.reshape(-1, data.shape[-1])
    table["global_signal"] = flat[brain.reshape(-1)].mean(axis=0)
    table["white_matter"] = flat[eroded.reshape(-1)].mean(axis=0) if eroded.any() \
        else table["global_signal"]
    table["csf"] = flat[edge.reshape(-1)].mean(axis=0) if edge.any() \
        else table["global_signal"]
    displacement = np.abs(np.diff(motion[:, :3], axis=0)).sum(axis=1) \
        + 50.0 * np.abs(np.diff(motion[:, 3:], axis=0)).sum(axis=1)
    table["framewise_displacement"] = np.concatenate([[np.nan], displacement])
    return pd.DataFrame(table)


def example_runs(n_runs: int = 1, n_volumes: int = 20, folder: str | Path | None = None,
                 **params) -> list:
    """Run records of a tiny raw synthetic dataset, for examples and notebooks.

    Parameters
    ----------
    n_runs, n_volumes : int
        Runs of one subject and volumes per run.
    folder : str or Path, optional
        Where the dataset goes (default: a new temporary folder).
    **params
        Further :class:`SyntheticParameters` (default shape ``(8, 9, 8)``, no
        fMRIPrep derivatives).

    Returns
    -------
    list of :class:`~bids_affect.io.layout.RunRecord`

    Examples
    --------
    >>> [(run.run, run.n_volumes) for run in example_runs(n_runs=2, n_volumes=12)]
    [(1, 12), (2, 12)]
    """
    import tempfile

    from bids_affect.io.layout import collect_runs, load_layout

    params = {"shape": (8, 9, 8), "with_derivatives": False, **params}
    root = make_synthetic_dataset(folder or tempfile.mkdtemp(), n_subjects=1, n_runs=n_runs,
                                  n_volumes=n_volumes, **params)
    return collect_runs(load_layout(root))
