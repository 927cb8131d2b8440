"""Helpers of the group-level tests: datasets whose subjects watched one movie.

:func:`shared_movie_dataset`: a synthetic study in which every subject watched
the same movie. :func:`bids_affect.datasets.make_synthetic_dataset` draws each
subject's scenes apart, so its subjects disagree on the label of one moment of
the movie, which cross-subject decoding refuses (one label sequence per movie).
Here every subject gets the first subject's events, BOLD and confounds, plus
noise of its own drawn per voxel (``extra_noise`` times the voxel's temporal
SD): one movie, one planted signal in one standard space, subjects that differ.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np

from bids_affect.datasets import make_synthetic_dataset


def _noisy_copy(source: Path, target: Path, rng: np.random.Generator,
                extra_noise: float) -> None:
    image = nib.load(source)
    data = np.asarray(image.dataobj, np.float32)
    spread = data.std(axis=-1, keepdims=True)
    noisy = data + extra_noise * spread * rng.standard_normal(data.shape).astype(np.float32)
    nib.Nifti1Image(noisy, image.affine, image.header).to_filename(target)


def shared_movie_dataset(path: Path, *, n_subjects: int = 3, extra_noise: float = 1.0,
                         seed: int = 0, **params) -> Path:
    """A synthetic study whose subjects share sub-01's movie (events and planted signal)."""
    root = make_synthetic_dataset(path, n_subjects=n_subjects, seed=seed, **params)
    rng = np.random.default_rng(seed + 1)
    fmriprep = root / "derivatives" / "fmriprep"
    for number in range(2, n_subjects + 1):
        subject = f"{number:02d}"
        for folder in (root / "sub-01" / "func", fmriprep / "sub-01" / "func"):
            if not folder.is_dir():  # no fMRIPrep derivatives
                continue
            for source in sorted(folder.iterdir()):
                target = Path(str(source).replace("sub-01", f"sub-{subject}"))
                if source.name.endswith("_bold.nii.gz"):
                    _noisy_copy(source, target, rng, extra_noise)
                elif source.name.endswith(("_events.tsv", "_confounds_timeseries.tsv")):
                    shutil.copyfile(source, target)
    return root
