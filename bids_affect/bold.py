"""From BOLD runs to clean, memory-mapped samples.

One subject's runs are masked, cleaned with nilearn and written, run by run,
into a work folder as two float32 views of the same data:

* ``samples.npy``: a matrix of every volume of every run by every voxel in
  the mask, for linear models;
* ``volumes.npy``: the same volumes cropped to the mask's bounding box
  (background 0), shape ``(n_volumes, bx, by, bz)``, for 3D CNNs;

plus ``table.tsv`` (one row per volume: subject, run key, run index, volume
index ``i``, time ``t_i = i * TR + StartTime``, label, censored), the mask
(``mask.nii.gz``) and ``manifest.json``, written last. Row ``r`` of both views
and of the table describe the same volume, so labels and samples line up by
construction. :meth:`SampleSet.load` refuses a folder whose manifest is
missing: a build that crashed or was killed leaves none.

Cleaning per run, in nilearn's order (:func:`nilearn.signal.clean`): linear
detrend, Butterworth high-pass (default 1/300 Hz: emotions in a movie recur
every few minutes and a 1/128 Hz high-pass removes real signal), regression of
the fMRIPrep confounds chosen by a named strategy (:data:`CONFOUND_STRATEGIES`),
z-score per voxel. Optional smoothing happens before masking. Volumes that a
strategy censors (non-steady-state, scrubbing) keep their row, filled with 0
and flagged ``censored``; :meth:`SampleSet.labelled` never returns them.

Memory: runs are read a block of volumes at a time in file order, so only one
run's masked float32 signals (and its cleaned copy) are ever in memory; nilearn
cleans blocks of voxels, which bounds its float64 copies; the outputs are
written with ordinary sequential writes, so no output page stays resident.

Examples
--------
>>> import tempfile
>>> from pathlib import Path
>>> from bids_affect.datasets import example_runs
>>> runs = example_runs(n_runs=2, n_volumes=30)
>>> samples = build_samples(runs, None, Path(tempfile.mkdtemp()) / "samples",
...                         confounds="none")
>>> samples.X.shape[0], samples.volumes.shape[0], len(samples.table)
(60, 60, 60)
>>> SampleSet.load(samples.folder).X.shape == samples.X.shape
True
"""

from __future__ import annotations

import ast
import json
import logging
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, BinaryIO

import nibabel as nib
import numpy as np
import pandas as pd

from bids_affect._utils.docs import DOCDICT, fill_doc
from bids_affect.exceptions import InputDataError, InputMissingError, UsageError
from bids_affect.io.annotations import LabelSpec
from bids_affect.io.derivatives import (
    atomic_path,
    software_versions,
    write_json,
    write_nifti,
    write_tsv,
)
from bids_affect.io.layout import RunRecord, check_bold_shape
from bids_affect.progress import track

LOGGER = logging.getLogger("bids_affect.bold")

#: Default high-pass cutoff (Hz): well below the recurrence of emotions in a movie.
DEFAULT_HIGH_PASS = 1.0 / 300.0

#: Default minimum number of labelled volumes per class and subject (the label spec's).
DEFAULT_MIN_VOLUMES = LabelSpec.min_volumes

#: Largest difference (mm) between two affines that still counts as the same grid.
AFFINE_TOLERANCE_MM = 1e-3

#: Files of a sample set, inside its folder (a work directory, not derivatives).
SAMPLES_FILE = "samples.npy"
VOLUMES_FILE = "volumes.npy"
TABLE_FILE = "table.tsv"
MASK_FILE = "mask.nii.gz"
MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "bids_affect-samples"
MANIFEST_VERSION = 1

#: Volumes per block when the cropped 4D view is written.
_WRITE_CHUNK = 64

#: Bytes per block of volumes read (as float32), and per block of voxels cleaned (float64).
_READ_BLOCK_BYTES = 64 * 2**20
_CLEAN_BLOCK_BYTES = 16 * 2**20

_SAMPLE_DTYPE = np.dtype("<f4")
_TABLE_DTYPES = {"subject": str, "run": str, "label": str}

_CLEANING_DOC = """detrend : bool
        Remove a linear trend from each voxel, per run (default True).
    high_pass : float or None
        High-pass cutoff in Hz (Butterworth filter), or None for none. Default
        1/300 Hz: emotions in a movie recur every few minutes, and a 1/128 Hz
        high-pass removes real signal. Recorded in the manifest.
    confounds : str
        Confound strategy, a key of :data:`CONFOUND_STRATEGIES`: %(strategies)s.
    standardize : bool or str
        z-score each voxel per run (True: nilearn's ``"zscore_sample"``), or a
        nilearn ``standardize`` value, or False.
    smoothing_fwhm : float or None
        Gaussian smoothing (FWHM, mm) of each volume before masking."""


# --------------------------------------------------------------------------- confounds


@dataclass(frozen=True)
class ConfoundStrategy:
    """A named choice of fMRIPrep confounds.

    Parameters
    ----------
    description : str
        One line for ``--help`` and the docs.
    nilearn_kwargs : Mapping or None
        Keyword arguments of :func:`nilearn.interfaces.fmriprep.load_confounds`;
        None means no confounds.
    """

    description: str
    nilearn_kwargs: Mapping[str, Any] | None = None


def _strategy(description: str, **kwargs: Any) -> ConfoundStrategy:
    return ConfoundStrategy(description, MappingProxyType(kwargs) if kwargs else None)


#: Confound strategies by name. "simple" and "scrubbing" are nilearn's presets
#: (``load_confounds_strategy``) without their ``high_pass`` component: that
#: component adds fMRIPrep's ``cosine_*`` regressors, a 1/128 Hz high-pass that
#: would override ``high_pass``. nilearn does not allow CompCor without them,
#: so "compcor" keeps them (and says so in the log).
CONFOUND_STRATEGIES: Mapping[str, ConfoundStrategy] = MappingProxyType({
    "auto": _strategy("'motion' for runs with fMRIPrep's confounds file, 'none' for runs "
                      "without one (raw BIDS); each run's choice is recorded"),
    "none": _strategy("no confound regression"),
    "motion": _strategy("6 motion parameters and their derivatives (12 regressors)",
                        strategy=("motion",), motion="derivatives"),
    "motion24": _strategy("6 motion parameters, derivatives, squares and squared "
                          "derivatives (24 regressors)",
                          strategy=("motion",), motion="full"),
    "simple": _strategy("nilearn 'simple' without cosine regressors: 24 motion "
                        "regressors, mean white-matter and CSF signals",
                        strategy=("motion", "wm_csf"), motion="full", wm_csf="basic"),
    "scrubbing": _strategy("nilearn 'scrubbing' without cosine regressors: 24 motion, "
                           "8 white-matter/CSF regressors, censoring of high-motion "
                           "volumes (FD > 0.5 mm or std DVARS > 1.5)",
                           strategy=("motion", "wm_csf", "scrub"), motion="full",
                           wm_csf="full", scrub=5, fd_threshold=0.5,
                           std_dvars_threshold=1.5),
    "compcor": _strategy("nilearn 'compcor': 24 motion regressors, anatomical CompCor "
                         "components and fMRIPrep's cosine regressors (a 1/128 Hz "
                         "high-pass by default)",
                         strategy=("high_pass", "motion", "compcor"), motion="full",
                         compcor="anat_combined", n_compcor="all"),
})


# The strategies come from the table above, so their list in the docs cannot drift.
DOCDICT["cleaning"] = _CLEANING_DOC.replace(
    "%(strategies)s", ", ".join(f'"{name}"' for name in CONFOUND_STRATEGIES))


def list_confound_strategies() -> dict[str, str]:
    """Names and descriptions of the confound strategies (for ``--help``).

    Examples
    --------
    >>> list(list_confound_strategies())[:3]
    ['auto', 'none', 'motion']
    """
    return {name: spec.description for name, spec in CONFOUND_STRATEGIES.items()}


def check_confound_strategy(name: str) -> ConfoundStrategy:
    """The strategy called ``name``; unknown names raise :class:`UsageError` (64).

    Examples
    --------
    >>> check_confound_strategy("motion").nilearn_kwargs["motion"]
    'derivatives'
    >>> check_confound_strategy("aroma")
    Traceback (most recent call last):
    ...
    bids_affect.exceptions.UsageError: confounds: unknown strategy 'aroma'; fix: use one of ...
    """
    if name not in CONFOUND_STRATEGIES:
        raise UsageError(f"unknown strategy {name!r}", path="confounds",
                         fix=f"use one of {', '.join(CONFOUND_STRATEGIES)}")
    return CONFOUND_STRATEGIES[name]


_CONFOUNDS_NAME = re.compile(r"^(?P<prefix>.+)_desc-confounds_(timeseries|regressors)\.tsv$")
_NILEARN_MISSING = re.compile(r"missing:\s*(\[.*?\])\s*(\[.*?\])", re.DOTALL)


def _nilearn_image_path(confounds: Path) -> str:
    """The preprocessed-BOLD name from which nilearn finds exactly ``confounds``.

    nilearn's loader takes an image path and looks for the confounds TSV in the
    image's folder by name; it never opens the image. Giving it a name built from
    the confounds file makes it read the file the layout chose, even when the
    BOLD lies elsewhere.
    """
    match = _CONFOUNDS_NAME.match(confounds.name)
    if not match:
        raise InputDataError(
            "confounds file name does not follow fMRIPrep's pattern "
            "(..._desc-confounds_timeseries.tsv)", path=confounds,
            fix="give the confounds file fMRIPrep wrote, with its original name")
    return str(confounds.with_name(f"{match['prefix']}_desc-preproc_bold.nii.gz"))


#: What nilearn's names of column groups stand for, in messages.
_COLUMN_GROUPS = {
    "compcor": "CompCor components (a_comp_cor_* / t_comp_cor_* listed in the JSON sidecar)",
    "motion": "motion parameters (trans_*, rot_*)",
    "wm_csf": "white_matter and csf",
    "global_signal": "global_signal",
    "ica_aroma": "aroma_motion_*",
}


def _missing_columns(message: str) -> str | None:
    """Columns and column groups listed in nilearn's "missing" error, as text."""
    match = _NILEARN_MISSING.search(message)
    if not match:
        return None
    try:
        columns, groups = (ast.literal_eval(text) for text in match.groups())
    except (ValueError, SyntaxError):
        return None
    names = [str(c) for c in columns] + [_COLUMN_GROUPS.get(g, f"{g} columns") for g in groups]
    return ", ".join(names) or None


def _missing_keys(err: KeyError) -> str:
    """Column names of a pandas KeyError ("['a', 'b'] not in index" or "'a'")."""
    text = str(err.args[0]) if err.args else str(err)
    match = re.search(r"\[.*?\]", text)
    try:
        return ", ".join(str(c) for c in ast.literal_eval(match.group(0))) if match else text
    except (ValueError, SyntaxError):
        return text


#: The strategy that adapts to the data: "motion" with fMRIPrep's confounds, else "none".
AUTO_CONFOUNDS = "auto"


def resolve_confound_strategy(strategy: str, run: RunRecord) -> str:
    """The strategy applied to ``run``: ``auto`` becomes ``motion`` or ``none``.

    ``auto`` regresses fMRIPrep's motion parameters when the run has
    fMRIPrep's confounds file and nothing otherwise (raw BIDS); every other
    strategy is applied as named (and fails on a run without the file).

    Examples
    --------
    >>> from bids_affect.datasets import example_runs
    >>> resolve_confound_strategy("auto", example_runs()[0])
    'none'
    """
    check_confound_strategy(strategy)
    if strategy != AUTO_CONFOUNDS:
        return strategy
    return "motion" if run.confounds is not None else "none"


def load_run_confounds(run: RunRecord, strategy: str = AUTO_CONFOUNDS
                       ) -> tuple[pd.DataFrame | None, np.ndarray | None]:
    """Confounds of one run chosen by ``strategy``, with nilearn's sample mask.

    Parameters
    ----------
    run : RunRecord
        The run; its ``confounds`` TSV (fMRIPrep) is read unless ``strategy``
        is "none".
    strategy : str
        A key of :data:`CONFOUND_STRATEGIES` (``auto``: see
        :func:`resolve_confound_strategy`).

    Returns
    -------
    confounds : pandas.DataFrame or None
        One row per volume, one column per regressor (None for "none").
    sample_mask : numpy.ndarray or None
        Indices of the volumes to keep, or None when none is censored
        (non-steady-state volumes, scrubbing).

    Raises
    ------
    UsageError
        Unknown strategy (64).
    InputMissingError
        The strategy needs a confounds file and the run has none (66).
    InputDataError
        The file lacks columns the strategy needs, cannot be read, or its
        rows differ from the BOLD's volumes (65).

    Examples
    --------
    >>> import tempfile
    >>> from bids_affect.datasets import make_synthetic_dataset
    >>> from bids_affect.io.layout import collect_runs, load_layout
    >>> root = make_synthetic_dataset(tempfile.mkdtemp(), n_subjects=1, n_runs=1,
    ...                               n_volumes=20, shape=(8, 9, 8))
    >>> layout = load_layout(root, derivatives={"fmriprep": root / "derivatives" / "fmriprep"})
    >>> run = collect_runs(layout)[0]
    >>> confounds, sample_mask = load_run_confounds(run, "motion")
    >>> confounds.shape, sample_mask
    ((20, 12), None)
    """
    strategy = resolve_confound_strategy(strategy, run)
    spec = check_confound_strategy(strategy)
    if spec.nilearn_kwargs is None:
        return None, None
    if run.confounds is None:
        raise InputMissingError(
            f"confound strategy '{strategy}' needs fMRIPrep's confounds file, and this "
            "run has none", path=run.bold,
            fix="give fMRIPrep derivatives (-d fmriprep=PATH) or use --confounds none")
    path = Path(run.confounds)
    if not path.is_file():
        raise InputMissingError("confounds file does not exist", path=path,
                                fix="check the fMRIPrep derivatives folder")
    from nilearn.interfaces.fmriprep import load_confounds

    kwargs = dict(spec.nilearn_kwargs)
    try:
        confounds, sample_mask = load_confounds(_nilearn_image_path(path), **kwargs)
    except (KeyError, ValueError, OSError, pd.errors.ParserError) as err:
        # nilearn reports missing columns in a ValueError, except for the scrubbing
        # columns, which it indexes without checking (a pandas KeyError).
        missing = _missing_keys(err) if isinstance(err, KeyError) else _missing_columns(str(err))
        if missing:
            raise InputDataError(
                f"confound strategy '{strategy}' needs column(s) the file lacks: {missing}",
                path=path, fix="choose another --confounds strategy (see --help) or re-run "
                               "fMRIPrep") from err
        raise InputDataError(f"nilearn cannot load the confounds ({err})", path=path,
                             fix="give the confounds TSV fMRIPrep wrote for this run") from err
    n_volumes = load_bold(run.bold).shape[3]
    if len(confounds) != n_volumes:
        raise InputDataError(
            f"confounds table has {len(confounds)} rows but the BOLD "
            f"{Path(run.bold).name} has {n_volumes} volumes", path=path,
            fix="give the confounds file fMRIPrep wrote for this run")
    if "cosine00" in confounds.columns:
        LOGGER.warning("%s: strategy '%s' regresses fMRIPrep's cosine regressors (a 1/128 Hz "
                       "high-pass by default), in addition to high_pass", path.name, strategy)
    if sample_mask is not None:
        sample_mask = np.asarray(sample_mask, dtype=int)
    return confounds, sample_mask


# --------------------------------------------------------------------------- images


def load_bold(path: str | Path) -> nib.Nifti1Image:
    """Open a BOLD file (header only) and check that it is a 4D series.

    Raises :class:`InputDataError` (65) for an unreadable header, a 3D image or
    fewer than 2 volumes, and :class:`InputMissingError` (66) for a missing file.

    Examples
    --------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "bold.nii.gz"
    >>> nib.Nifti1Image(np.zeros((4, 4, 4, 5), np.int16), np.eye(4)).to_filename(path)
    >>> load_bold(path).shape
    (4, 4, 4, 5)
    """
    path = Path(path)
    if not path.is_file():
        raise InputMissingError("BOLD file does not exist", path=path,
                                fix="check the dataset and the fMRIPrep derivatives")
    try:
        # keep_file_open: blocks of volumes are then read in one pass through the gzip
        # stream; the handle closes with the image.
        image = nib.load(path, keep_file_open=True)
    except Exception as err:  # nibabel raises many types for corrupt files
        raise InputDataError(f"cannot read NIfTI header ({type(err).__name__}: {err})",
                             path=path, fix="re-copy or re-convert the file") from err
    check_bold_shape(path, image.header)
    return image


def _read_data(image: nib.Nifti1Image, path: Path,
               index: tuple[slice, ...] | None = None) -> np.ndarray:
    """The image's data (or ``index`` of it) in its stored dtype; corrupt files -> 65."""
    try:
        return np.asanyarray(image.dataobj if index is None else image.dataobj[index])
    except MemoryError:
        raise
    except Exception as err:  # truncated gzip: EOFError, zlib.error, OSError, ValueError
        raise InputDataError(
            f"cannot read the image data, the file is truncated or corrupt "
            f"({type(err).__name__}: {err})", path=path,
            fix="re-copy the file or re-run the step that wrote it") from err


def _volume_blocks(image: nib.Nifti1Image, path: Path) -> Iterator[tuple[int, np.ndarray]]:
    """Consecutive blocks of volumes ``(x, y, z, k)``, read in file order, NaN-checked.

    The file is read once from start to end, a block at a time, so a run never
    has to be in memory whole. NaN and Inf are counted over the whole run and
    refused (65) once it has been read.
    """
    n_volumes = image.shape[3]
    volume_bytes = int(np.prod(image.shape[:3])) * 4
    step = max(1, _READ_BLOCK_BYTES // volume_bytes)
    bad_voxels = np.zeros(image.shape[:3], bool)
    bad_volumes = bad_values = 0
    for start in range(0, n_volumes, step):
        block = _read_data(image, path, (Ellipsis, slice(start, start + step)))
        # Cheap test first: the sum of finite values is finite (float64 does not overflow).
        if np.issubdtype(block.dtype, np.floating) and not np.isfinite(
                block.sum(dtype=np.float64)):
            bad = ~np.isfinite(block)
            bad_voxels |= bad.any(axis=3)
            bad_volumes += int(bad.any(axis=(0, 1, 2)).sum())
            bad_values += int(bad.sum())
        yield start, block
    if bad_values:
        raise InputDataError(
            f"BOLD holds {bad_values} NaN or Inf values in {int(bad_voxels.sum())} voxels "
            f"and {bad_volumes} of {n_volumes} volumes", path=path,
            fix="re-run preprocessing, or replace them (e.g. nilearn.image.math_img"
                "('np.nan_to_num(img)', img=...))")


def check_bold_data(path: str | Path) -> None:
    """Read a BOLD series once, end to end: a 4D series, complete, with no NaN or Inf.

    The analyses read every run anyway (:func:`build_samples`); this is for runs
    that are only labelled (``--analyses none``), so that a truncated or NaN-holding
    file is refused there too.

    Raises
    ------
    InputDataError
        65, naming the file: not 4D, truncated or corrupt, NaN or Inf values.

    Examples
    --------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "bold.nii.gz"
    >>> nib.Nifti1Image(np.zeros((4, 4, 4, 5), np.float32), np.eye(4)).to_filename(path)
    >>> check_bold_data(path)
    """
    path = Path(path)
    image = load_bold(path)
    try:
        for _ in _volume_blocks(image, path):
            pass
    finally:
        image.uncache()


def _same_grid(first: nib.Nifti1Image, second: nib.Nifti1Image) -> bool:
    return (tuple(first.shape[:3]) == tuple(second.shape[:3])
            and np.allclose(first.affine, second.affine, rtol=0, atol=AFFINE_TOLERANCE_MM))


def _check_grid(mask: nib.Nifti1Image, mask_path: str | Path | None,
                bold: nib.Nifti1Image, bold_path: Path) -> None:
    """Refuse a mask whose shape or affine differ from the BOLD's."""
    if _same_grid(mask, bold):
        return
    what = "shape" if tuple(mask.shape[:3]) != tuple(bold.shape[:3]) else "affine"
    raise InputDataError(
        f"mask {what} differs from the BOLD {Path(bold_path).name} (shape "
        f"{tuple(mask.shape[:3])} vs {tuple(bold.shape[:3])}; affine "
        f"{np.round(mask.affine, 3).tolist()} vs {np.round(bold.affine, 3).tolist()})",
        path=mask_path or bold_path,
        fix="use the mask of the same space and resolution as the BOLD (same --space)")


def _mask_image(data: np.ndarray, like: nib.Nifti1Image) -> nib.Nifti1Image:
    """A uint8 mask image on ``like``'s grid, keeping its qform and sform codes."""
    return _image_like(np.asarray(data, np.uint8), like.affine, like)


def _image_like(data: np.ndarray, affine: np.ndarray,
                like: nib.Nifti1Image) -> nib.Nifti1Image:
    """An image of ``data`` that keeps ``like``'s qform/sform codes and units."""
    image = nib.Nifti1Image(data, affine)
    image.header.set_qform(affine, code=int(like.header["qform_code"]) or 1)
    image.header.set_sform(affine, code=int(like.header["sform_code"]) or 1)
    image.header.set_xyzt_units(*like.header.get_xyzt_units())
    return image


def load_mask(mask: str | Path | nib.Nifti1Image) -> nib.Nifti1Image:
    """A binary (uint8) 3D mask from a path or an image; refuse empty masks (65).

    Examples
    --------
    >>> data = np.zeros((4, 4, 4)); data[1:3, 1:3, 1:3] = 0.9
    >>> int(load_mask(nib.Nifti1Image(data, np.eye(4))).get_fdata().sum())
    8
    """
    path = None
    if isinstance(mask, (str, Path)):
        path = Path(mask)
        if not path.is_file():
            raise InputMissingError("mask file does not exist", path=path,
                                    fix="check the path of the mask")
        try:
            mask = nib.load(path)
        except Exception as err:  # nibabel raises many types for corrupt files
            raise InputDataError(f"cannot read mask ({type(err).__name__}: {err})", path=path,
                                 fix="re-copy or re-create the mask") from err
    data = _read_data(mask, path or Path("mask"))
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputDataError(f"mask is {data.ndim}D {data.shape}; a 3D mask is needed",
                             path=path or "mask", fix="give a 3D binary mask")
    binary = np.asarray(data > 0) & np.isfinite(data)
    if not binary.any():
        raise InputDataError("mask is empty (no voxel above 0)", path=path or "mask",
                             fix="give a mask that covers the brain")
    return _mask_image(binary, mask)


def subject_mask(runs: Sequence[RunRecord]) -> nib.Nifti1Image:
    """One mask for one subject's runs.

    The intersection of the fMRIPrep brain masks when every run has one;
    otherwise nilearn's :func:`~nilearn.masking.compute_epi_mask` of the mean
    image of all runs (one pass over the data, a block of volumes at a time).

    Examples
    --------
    >>> from bids_affect.datasets import example_runs
    >>> runs = example_runs(n_runs=2, n_volumes=20)
    >>> mask = subject_mask(runs)
    >>> mask.shape, bool(mask.get_fdata().any())
    ((8, 9, 8), True)
    """
    runs = list(runs)
    if not runs:
        raise UsageError("no runs given", path="runs", fix="give at least one BOLD run")
    subjects = sorted({run.subject for run in runs})
    if len(subjects) > 1:
        raise UsageError(f"runs of several subjects ({', '.join(subjects)}) have no "
                         "subject mask", path="runs",
                         fix="give the runs of one subject, or a common mask_img")
    if all(run.mask is not None for run in runs):
        return _intersect_masks(runs)
    return _epi_mask(runs)


def _intersect_masks(runs: Sequence[RunRecord]) -> nib.Nifti1Image:
    first = load_mask(runs[0].mask)
    inside = np.asarray(first.dataobj, bool)
    for run in runs:
        mask = load_mask(run.mask)
        _check_grid(mask, run.mask, load_bold(run.bold), Path(run.bold))
        if not _same_grid(first, mask):
            raise InputDataError(
                f"brain mask grid differs from {Path(runs[0].mask).name} of the same subject",
                path=run.mask, fix="give runs in one space (--space), or a mask_img")
        inside &= np.asarray(mask.dataobj, bool)
    if not inside.any():
        raise InputDataError("the runs' brain masks do not overlap", path=runs[0].mask,
                             fix="check the fMRIPrep outputs of this subject")
    return _mask_image(inside, first)


def _epi_mask(runs: Sequence[RunRecord]) -> nib.Nifti1Image:
    from nilearn.masking import compute_epi_mask

    first = load_bold(runs[0].bold)
    total = np.zeros(first.shape[:3])
    for run in track(runs, desc="mean images for the EPI mask"):
        image = load_bold(run.bold)
        if not _same_grid(first, image):
            raise InputDataError(
                f"BOLD grid differs from {Path(runs[0].bold).name} of the same subject",
                path=run.bold, fix="give runs in one space, or a mask_img")
        run_sum = np.zeros(first.shape[:3])
        for _, block in _volume_blocks(image, Path(run.bold)):
            run_sum += block.sum(axis=3, dtype=np.float64)
        total += run_sum / image.shape[3]
    mean = nib.Nifti1Image((total / len(runs)).astype(np.float32), first.affine)
    inside = np.asarray(compute_epi_mask(mean).dataobj, bool)
    if not inside.any():
        raise InputDataError("nilearn's EPI mask of the runs is empty", path=runs[0].bold,
                             fix="give a brain mask (fMRIPrep derivatives or mask_img)")
    return _mask_image(inside, first)


def bounding_box(mask: np.ndarray) -> tuple[slice, slice, slice]:
    """Slices of the smallest box holding every voxel of a 3D boolean mask.

    Examples
    --------
    >>> mask = np.zeros((5, 5, 5), bool); mask[1, 2:4, 3] = True
    >>> bounding_box(mask)
    (slice(1, 2, None), slice(2, 4, None), slice(3, 4, None))
    """
    mask = np.asarray(mask, bool)
    if not mask.any():
        raise ValueError("the mask is empty: it has no bounding box")
    slices = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        slices.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(slices)  # type: ignore[return-value]


# --------------------------------------------------------------------------- cleaning


def load_masked_run(run: RunRecord, mask_img: nib.Nifti1Image, *,
                    smoothing_fwhm: float | None = None) -> np.ndarray:
    """The run's voxels in ``mask_img`` as float32, shape ``(n_volumes, n_voxels)``.

    The file is read a block of volumes at a time; each block is checked for
    NaN and Inf, smoothed when asked (before masking), masked and converted,
    so only the masked run is ever in memory.

    Examples
    --------
    >>> from bids_affect.datasets import example_runs
    >>> [run] = example_runs(n_runs=1, n_volumes=20)
    >>> mask = subject_mask([run])
    >>> load_masked_run(run, mask).shape == (20, int(mask.get_fdata().sum()))
    True
    """
    path = Path(run.bold)
    image = load_bold(path)
    _check_grid(mask_img, mask_img.get_filename(), image, path)
    inside = np.asarray(mask_img.dataobj, bool)
    signals = np.empty((image.shape[3], int(inside.sum())), np.float32)
    for start, block in _volume_blocks(image, path):
        if smoothing_fwhm:
            from nilearn.image import smooth_img

            # Smoothing is spatial, volume by volume: blocks give the same result.
            block = np.asanyarray(smooth_img(
                nib.Nifti1Image(np.asarray(block, np.float32), image.affine),
                smoothing_fwhm).dataobj)
        signals[start:start + block.shape[3]] = block[inside].T
    return signals


def _resolve_standardize(standardize: bool | str) -> str | bool:
    if standardize is True:
        return "zscore_sample"
    return standardize or False


def clean_signals(signals: np.ndarray, t_r: float, *,
                  confounds: pd.DataFrame | np.ndarray | None = None,
                  sample_mask: np.ndarray | None = None, detrend: bool = True,
                  high_pass: float | None = DEFAULT_HIGH_PASS,
                  standardize: bool | str = True) -> np.ndarray:
    """Clean one run's signals with :func:`nilearn.signal.clean`; keep every row.

    Parameters
    ----------
    signals : numpy.ndarray
        ``(n_volumes, n_voxels)`` signals of one run.
    t_r : float
        Repetition time (s).
    confounds : DataFrame or array, optional
        ``(n_volumes, n_regressors)`` confounds, regressed out.
    sample_mask : numpy.ndarray, optional
        Indices of the volumes to keep; the others (censored) are left out of
        the cleaning and returned as rows of 0.
    detrend, high_pass, standardize
        See :func:`clean_run`.

    Returns
    -------
    numpy.ndarray
        float32 ``(n_volumes, n_voxels)``, C-contiguous.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> signals = rng.normal(100, 5, size=(50, 3)) + np.arange(50)[:, None]
    >>> cleaned = clean_signals(signals, t_r=2.0)
    >>> np.allclose(cleaned.mean(axis=0), 0, atol=1e-5), cleaned.dtype
    (True, dtype('float32'))
    """
    from nilearn.signal import clean

    signals = np.asarray(signals, dtype=np.float32)
    n_volumes, n_voxels = signals.shape
    kept = slice(None) if sample_mask is None else np.asarray(sample_mask, dtype=int)
    standardize = _resolve_standardize(standardize)
    # Every step of clean() works voxel by voxel, so blocks of voxels give the same
    # result with bounded float64 copies; except "psc", which looks at all voxels.
    step = n_voxels if standardize == "psc" else max(1, _CLEAN_BLOCK_BYTES // (8 * n_volumes))
    cleaned = np.zeros((n_volumes, n_voxels), _SAMPLE_DTYPE)
    for start in range(0, n_voxels, step):
        # butterworth__copy: filter the block in one vectorised call; nilearn's default
        # loops over voxels (one filter call each), about 25 times slower.
        cleaned[kept, start:start + step] = clean(
            signals[:, start:start + step].copy(), detrend=detrend, standardize=standardize,
            confounds=confounds, sample_mask=None if sample_mask is None else kept.copy(),
            high_pass=high_pass, t_r=t_r, butterworth__copy=True)
    return cleaned


@fill_doc
def clean_run(run: RunRecord, mask_img: nib.Nifti1Image, *, detrend: bool = True,
              high_pass: float | None = DEFAULT_HIGH_PASS, confounds: str = AUTO_CONFOUNDS,
              standardize: bool | str = True,
              smoothing_fwhm: float | None = None) -> np.ndarray:
    """Mask and clean one run: float32 ``(n_volumes, n_voxels)``.

    Parameters
    ----------
    run : RunRecord
        The run (``bold``, ``tr``, ``confounds``).
    mask_img : nibabel.Nifti1Image
        Binary mask on the BOLD's grid (see :func:`subject_mask`).
    %(cleaning)s

    Returns
    -------
    numpy.ndarray
        Cleaned signals; volumes censored by the confound strategy are rows of 0.

    Examples
    --------
    >>> from bids_affect.datasets import example_runs
    >>> [run] = example_runs(n_runs=1, n_volumes=20)
    >>> cleaned = clean_run(run, subject_mask([run]), confounds="none")
    >>> bool(np.allclose(cleaned.std(axis=0, ddof=1), 1, atol=1e-3))
    True
    """
    options = _check_cleaning(detrend, high_pass, confounds, standardize, smoothing_fwhm)
    table, sample_mask = load_run_confounds(run, confounds)
    signals = load_masked_run(run, mask_img, smoothing_fwhm=options["smoothing_fwhm"])
    return clean_signals(signals, run.tr, confounds=table, sample_mask=sample_mask,
                         detrend=detrend, high_pass=high_pass, standardize=standardize)


def _check_cleaning(detrend: bool, high_pass: float | None, confounds: str,
                    standardize: bool | str, smoothing_fwhm: float | None) -> dict[str, Any]:
    """Validate the cleaning options; return them as recorded in the manifest."""
    check_confound_strategy(confounds)
    if high_pass is not None and not (np.isfinite(high_pass) and high_pass > 0):
        raise UsageError(f"must be a positive frequency in Hz or None, got {high_pass}",
                         path="high_pass", fix="e.g. high_pass=1/300")
    if smoothing_fwhm is not None and not (np.isfinite(smoothing_fwhm) and smoothing_fwhm >= 0):
        raise UsageError(f"must be a positive FWHM in mm or None, got {smoothing_fwhm}",
                         path="smoothing_fwhm", fix="e.g. smoothing_fwhm=6")
    allowed = (True, False, None, "zscore_sample", "psc")
    if standardize not in allowed:
        raise UsageError(f"unknown value {standardize!r}", path="standardize",
                         fix="use True, False, 'zscore_sample' or 'psc'")
    return {"detrend": bool(detrend), "high_pass": high_pass, "filter": "butterworth",
            "confounds": confounds,
            "confounds_nilearn": dict(CONFOUND_STRATEGIES[confounds].nilearn_kwargs or {}),
            "standardize": _resolve_standardize(standardize),
            "smoothing_fwhm": smoothing_fwhm or None}


# --------------------------------------------------------------------------- samples


def _normalise_labels(values: Iterable[Any]) -> list[str | None]:
    """Class names as strings; None, NaN, "" and "n/a" become None."""
    out = []
    for value in values:
        if value is None or (np.ndim(value) == 0 and pd.isna(value)):
            out.append(None)
        else:
            text = str(value)
            out.append(None if text in ("", "n/a") else text)
    return out


def _labels_of(run: RunRecord, labels_by_run: Mapping[str, Any] | None,
               single_subject: bool, n_volumes: int) -> list[str | None]:
    """The run's labels: key ``sub-S_<run.key>``, or ``run.key`` for one subject."""
    if labels_by_run is None:
        return [None] * n_volumes
    keys = [f"sub-{run.subject}_{run.key}"] + ([run.key] if single_subject else [])
    key = next((k for k in keys if k in labels_by_run), None)
    if key is None:
        raise UsageError(f"no labels for run {keys[0]}", path="labels_by_run",
                         fix=f"give one label array per run, keyed by {' or '.join(keys)}")
    labels = _normalise_labels(np.asarray(labels_by_run[key], dtype=object).ravel())
    if len(labels) != n_volumes:
        raise InputDataError(
            f"{len(labels)} labels were given for run {key}, whose BOLD has {n_volumes} "
            "volumes", path=run.bold,
            fix="make the labels from this run's events and volume count")
    return labels


def _write_npy_header(file: BinaryIO, shape: tuple[int, ...]) -> None:
    np.lib.format.write_array_header_1_0(file, {
        "descr": np.lib.format.dtype_to_descr(_SAMPLE_DTYPE), "fortran_order": False,
        "shape": tuple(int(n) for n in shape)})


def _write_cropped(file: BinaryIO, cleaned: np.ndarray, crop_mask: np.ndarray) -> None:
    """Append cleaned rows as cropped volumes (background 0), a block at a time."""
    block = np.zeros((min(_WRITE_CHUNK, len(cleaned)), *crop_mask.shape), _SAMPLE_DTYPE)
    for start in range(0, cleaned.shape[0], len(block)):
        rows = cleaned[start:start + len(block)]
        view = block[:len(rows)]
        view[:, crop_mask] = rows  # voxels outside the mask stay 0 in every block
        file.write(memoryview(view))


def _run_table(run: RunRecord, index: int, labels: list[str | None],
               censored: np.ndarray) -> pd.DataFrame:
    volume = np.arange(len(labels))
    return pd.DataFrame({
        "subject": run.subject, "run": run.key, "run_index": index, "volume": volume,
        "time": volume * float(run.tr) + float(run.start_time or 0.0),
        "label": pd.Series(labels, dtype=object), "censored": censored})


@fill_doc
def build_samples(runs: Sequence[RunRecord], labels_by_run: Mapping[str, Any] | None,
                  out_dir: str | Path, *, mask_img: str | Path | nib.Nifti1Image | None = None,
                  detrend: bool = True, high_pass: float | None = DEFAULT_HIGH_PASS,
                  confounds: str = AUTO_CONFOUNDS, standardize: bool | str = True,
                  smoothing_fwhm: float | None = None) -> SampleSet:
    """Mask, clean and write runs as a :class:`SampleSet` in ``out_dir``.

    Runs are processed one at a time: read, masked, cleaned, appended to both
    views, freed. Files are written under temporary names and renamed into
    place; ``manifest.json`` comes last, so a folder without it is incomplete.
    Nothing is written outside ``out_dir``.

    Parameters
    ----------
    runs : sequence of RunRecord
        The runs, in the order of the rows.
    labels_by_run : mapping or None
        One label per volume for each run (class name, or None / NaN / "n/a"
        for an unlabelled volume), keyed by ``run.key`` (one subject) or
        ``"sub-<label>_" + run.key``. None: no labels.
    out_dir : str or Path
        Folder of the sample set (a work directory).
    mask_img : path or Nifti1Image, optional
        Mask on the runs' grid; default :func:`subject_mask` of the runs.
    %(cleaning)s

    Returns
    -------
    SampleSet
        The sample set, loaded read-only from ``out_dir``.

    Examples
    --------
    >>> import tempfile
    >>> from bids_affect.datasets import example_runs
    >>> runs = example_runs(n_runs=2, n_volumes=20)
    >>> labels = {run.key: ["fear"] * 10 + [None] * 10 for run in runs}
    >>> samples = build_samples(runs, labels, Path(tempfile.mkdtemp()), confounds="none")
    >>> samples.table.label.value_counts().to_dict()
    {'fear': 20}
    >>> samples.X.shape[1] == int(samples.mask_img.get_fdata().sum())
    True
    """
    runs = list(runs)
    if not runs:
        raise UsageError("no runs given", path="runs", fix="give at least one BOLD run")
    if len({Path(run.bold) for run in runs}) < len(runs):
        raise UsageError("a BOLD file is given twice", path="runs", fix="give each run once")
    parameters = _check_cleaning(detrend, high_pass, confounds, standardize, smoothing_fwhm)
    out_dir = Path(out_dir)
    # An old manifest would vouch for files this build is about to replace.
    (out_dir / MANIFEST_FILE).unlink(missing_ok=True)

    images = [load_bold(run.bold) for run in runs]  # headers only: fail early
    given_path = Path(mask_img) if isinstance(mask_img, (str, Path)) else None
    mask_img, mask_about = _choose_mask(runs, mask_img)
    for run, image in zip(runs, images):
        _check_grid(mask_img, given_path or run.mask, image, Path(run.bold))
    single_subject = len({run.subject for run in runs}) == 1
    labels = [_labels_of(run, labels_by_run, single_subject, image.shape[3])
              for run, image in zip(runs, images)]
    loaded = [load_run_confounds(run, confounds) for run in runs]  # all before the long pass
    if confounds == AUTO_CONFOUNDS:
        parameters["confounds_applied"] = _auto_confounds(runs)

    inside = np.asarray(mask_img.dataobj, bool)
    box = bounding_box(inside)
    n_total = sum(image.shape[3] for image in images)
    tables, run_entries = _write_runs(
        runs, labels, loaded, mask_img, box, out_dir, n_total, smoothing_fwhm=smoothing_fwhm,
        detrend=detrend, high_pass=high_pass, standardize=standardize)
    write_nifti(out_dir / MASK_FILE, mask_img)
    write_tsv(out_dir / TABLE_FILE, pd.concat(tables, ignore_index=True))
    write_json(out_dir / MANIFEST_FILE, _manifest(runs, mask_img, mask_about, box, n_total,
                                                  parameters, run_entries))
    LOGGER.info("Wrote %d volumes x %d voxels (%d runs) to %s", n_total, int(inside.sum()),
                len(runs), out_dir)
    return SampleSet.load(out_dir)


def _auto_confounds(runs: Sequence[RunRecord]) -> dict[str, str]:
    """The strategy ``auto`` applied to each run, said in the log (recorded in sidecars)."""
    applied = {run.key: resolve_confound_strategy(AUTO_CONFOUNDS, run) for run in runs}
    without = [key for key, strategy in applied.items() if strategy == "none"]
    where = f"sub-{runs[0].subject}"
    if without:
        LOGGER.warning("%s: confounds 'auto': %d of %d runs have no fMRIPrep confounds file "
                       "(%s), so no motion regression is applied to them; give fMRIPrep "
                       "derivatives (-d) to regress motion.", where, len(without), len(applied),
                       ", ".join(without))
    else:
        LOGGER.info("%s: confounds 'auto': fMRIPrep's motion parameters regressed from every "
                    "run.", where)
    return applied


def _choose_mask(runs: Sequence[RunRecord], mask_img: str | Path | nib.Nifti1Image | None
                 ) -> tuple[nib.Nifti1Image, dict[str, Any]]:
    """The mask of a sample set and what the manifest says of it (origin, sources)."""
    if mask_img is None:
        fmriprep = all(run.mask is not None for run in runs)
        return subject_mask(runs), {
            "origin": "fMRIPrep brain masks (intersection)" if fmriprep else "nilearn EPI mask",
            "sources": [str(run.mask) for run in runs] if fmriprep else []}
    given_path = Path(mask_img) if isinstance(mask_img, (str, Path)) else None
    return load_mask(mask_img), {"origin": "given",
                                 "sources": [str(given_path)] if given_path else []}


def _write_runs(runs: Sequence[RunRecord], labels: Sequence[list[str | None]],
                loaded: Sequence[tuple[pd.DataFrame | None, np.ndarray | None]],
                mask_img: nib.Nifti1Image, box: tuple[slice, slice, slice], out_dir: Path,
                n_total: int, *, smoothing_fwhm: float | None, detrend: bool,
                high_pass: float | None, standardize: bool | str
                ) -> tuple[list[pd.DataFrame], list[dict[str, Any]]]:
    """Clean each run and append it to both views; each run's table and manifest entry.

    One run is in memory at a time; both files are written sequentially under
    temporary names and renamed into place when every run is in.
    """
    inside = np.asarray(mask_img.dataobj, bool)
    crop_mask = inside[box]
    tables, run_entries = [], []
    with atomic_path(out_dir / SAMPLES_FILE) as samples_tmp, \
            atomic_path(out_dir / VOLUMES_FILE) as volumes_tmp, \
            open(samples_tmp, "wb") as samples_file, open(volumes_tmp, "wb") as volumes_file:
        _write_npy_header(samples_file, (n_total, int(inside.sum())))
        _write_npy_header(volumes_file, (n_total, *crop_mask.shape))
        first_row = 0
        for index, run in enumerate(track(runs, desc="cleaning runs")):
            table, sample_mask = loaded[index]
            signals = load_masked_run(run, mask_img, smoothing_fwhm=smoothing_fwhm)
            cleaned = clean_signals(signals, run.tr, confounds=table, sample_mask=sample_mask,
                                    detrend=detrend, high_pass=high_pass,
                                    standardize=standardize)
            del signals
            samples_file.write(memoryview(cleaned))
            _write_cropped(volumes_file, cleaned, crop_mask)
            n_volumes = cleaned.shape[0]
            del cleaned
            censored = np.ones(n_volumes, bool) if sample_mask is not None \
                else np.zeros(n_volumes, bool)
            if sample_mask is not None:
                censored[sample_mask] = False
            tables.append(_run_table(run, index, labels[index], censored))
            run_entries.append({
                "key": run.key, **run.to_dict(), "index": index, "first_row": first_row,
                "n_volumes": n_volumes,
                "confound_columns": [] if table is None else list(table.columns),
                "censored_volumes": np.flatnonzero(censored).tolist()})
            first_row += n_volumes
    return tables, run_entries


def _manifest(runs: Sequence[RunRecord], mask_img: nib.Nifti1Image,
              mask_about: Mapping[str, Any], box: tuple[slice, slice, slice], n_total: int,
              parameters: Mapping[str, Any], run_entries: list[dict[str, Any]]
              ) -> dict[str, Any]:
    """The content of ``manifest.json``: written last, it vouches for the other files."""
    inside = np.asarray(mask_img.dataobj, bool)
    crop_shape = inside[box].shape
    n_voxels = int(inside.sum())
    affine = np.asarray(mask_img.affine)
    crop_affine = affine.copy()
    crop_affine[:3, 3] = affine[:3, :3] @ [s.start for s in box] + affine[:3, 3]
    sources = [str(p) for run in runs for p in (run.bold, run.mask, run.confounds)
               if p is not None]
    return {
        "format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "complete": True,
        "parameters": parameters,
        "mask": {"file": MASK_FILE, "origin": mask_about["origin"],
                 "sources": mask_about["sources"]},
        "shape": list(inside.shape), "affine": affine, "bbox": [[s.start, s.stop] for s in box],
        "crop_affine": crop_affine, "n_volumes": n_total, "n_voxels": n_voxels,
        "files": {"samples": {"file": SAMPLES_FILE, "shape": [n_total, n_voxels],
                              "dtype": "float32"},
                  "volumes": {"file": VOLUMES_FILE, "shape": [n_total, *crop_shape],
                              "dtype": "float32"},
                  "table": {"file": TABLE_FILE, "rows": n_total}},
        "runs": run_entries, "sources": list(dict.fromkeys(sources)),
        "software": software_versions(),
    }


@dataclass
class SampleSet:
    """Clean samples of one subject (or of runs sharing a mask), memory-mapped.

    Attributes
    ----------
    folder : Path
        Where the files are.
    X : numpy.memmap
        ``(n_volumes, n_voxels)`` float32: every volume by every voxel in the mask.
    volumes : numpy.memmap
        ``(n_volumes, bx, by, bz)`` float32: the same data in the mask's bounding
        box, 0 outside the mask.
    table : pandas.DataFrame
        One row per volume: ``subject``, ``run`` (run key), ``run_index``,
        ``volume`` (index ``i`` in its run), ``time`` (``i * TR + StartTime``),
        ``label`` (class or missing), ``censored``.
    mask_img : nibabel.Nifti1Image
        The mask (full grid).
    bbox : tuple of (start, stop)
        The crop box, per axis, in voxels of the full grid.
    crop_affine : numpy.ndarray
        Affine of the cropped grid.
    manifest : dict
        The manifest: parameters, runs, sources, shapes.
    """

    folder: Path
    X: np.ndarray
    volumes: np.ndarray
    table: pd.DataFrame
    mask_img: nib.Nifti1Image
    bbox: tuple[tuple[int, int], ...]
    crop_affine: np.ndarray
    manifest: dict[str, Any] = field(repr=False)

    @classmethod
    def load(cls, folder: str | Path, mmap_mode: str = "r") -> SampleSet:
        """Open a sample set written by :func:`build_samples`.

        Parameters
        ----------
        folder : str or Path
            The folder given to :func:`build_samples`.
        mmap_mode : str
            ``"r"`` (read-only, default), ``"r+"`` or ``"c"`` (copy on write).

        Raises
        ------
        InputMissingError
            No manifest or a missing file: the build never finished (66).
        InputDataError
            A manifest or a file that does not match it (65).

        Examples
        --------
        >>> import tempfile
        >>> SampleSet.load(tempfile.mkdtemp())
        Traceback (most recent call last):
        ...
        bids_affect.exceptions.InputMissingError: ...: no complete sample set ...
        """
        folder = Path(folder)
        manifest = _read_manifest(folder)
        files = manifest["files"]
        X = _open_array(folder / files["samples"]["file"], files["samples"]["shape"],
                        mmap_mode)
        volumes = _open_array(folder / files["volumes"]["file"], files["volumes"]["shape"],
                              mmap_mode)
        table_path = folder / files["table"]["file"]
        if not table_path.is_file():
            raise InputMissingError("sample table is missing", path=table_path,
                                    fix="build the samples again")
        table = pd.read_csv(table_path, sep="\t", dtype=_TABLE_DTYPES, na_values=["n/a"],
                            keep_default_na=False)
        if len(table) != files["table"]["rows"]:
            raise InputDataError(f"sample table has {len(table)} rows, the manifest "
                                 f"{files['table']['rows']}", path=table_path,
                                 fix="build the samples again")
        table["censored"] = table["censored"].astype(bool)
        mask_path = folder / manifest["mask"]["file"]
        mask_img = load_mask(mask_path)
        return cls(folder=folder, X=X, volumes=volumes, table=table, mask_img=mask_img,
                   bbox=tuple((int(a), int(b)) for a, b in manifest["bbox"]),
                   crop_affine=np.asarray(manifest["crop_affine"], float), manifest=manifest)

    @property
    def crop_slices(self) -> tuple[slice, ...]:
        """The crop box as slices of the full grid."""
        return tuple(slice(start, stop) for start, stop in self.bbox)

    @property
    def crop_mask(self) -> np.ndarray:
        """The mask inside the crop box (boolean, shape of a cropped volume)."""
        return np.asarray(self.mask_img.dataobj, bool)[self.crop_slices]

    @property
    def parameters(self) -> dict[str, Any]:
        """The cleaning parameters recorded in the manifest."""
        return dict(self.manifest["parameters"])

    def labelled(self, min_volumes: int = DEFAULT_MIN_VOLUMES,
                 classes: Sequence[str] | None = None) -> np.ndarray:
        """Row indices of labelled, uncensored volumes of the classes kept.

        Classes with fewer than ``min_volumes`` such volumes are left out with a
        logged warning that names them and their counts
        (:func:`bids_affect.io.annotations.drop_rare_classes`).

        Parameters
        ----------
        min_volumes : int
            Minimum number of volumes of a class (default 20 per subject).
        classes : sequence of str, optional
            Only these classes (default: every class present).

        Examples
        --------
        >>> import tempfile
        >>> from bids_affect.datasets import example_runs
        >>> runs = example_runs(n_runs=1, n_volumes=30)
        >>> labels = {runs[0].key: ["fear"] * 24 + ["love"] * 3 + [None] * 3}
        >>> samples = build_samples(runs, labels, Path(tempfile.mkdtemp()), confounds="none")
        >>> len(samples.labelled(min_volumes=20))  # love (3 volumes) is left out
        24
        """
        from bids_affect.io.annotations import drop_rare_classes

        if int(min_volumes) < 0:
            raise UsageError(f"must be 0 or more, got {min_volumes}", path="min_volumes")
        label = self.table["label"]
        usable = label.notna().to_numpy() & ~self.table["censored"].to_numpy(bool)
        subjects = ", ".join(f"sub-{s}" for s in sorted(set(self.table["subject"])))
        kept, _ = drop_rare_classes(np.where(usable, label.to_numpy(object), None),
                                    int(min_volumes), classes, where=subjects or None)
        return np.flatnonzero(pd.notna(kept))

    def unmask(self, values: np.ndarray) -> nib.Nifti1Image:
        """Put one value per mask voxel (or ``(k, n_voxels)`` maps) back on the full grid.

        Examples
        --------
        >>> import tempfile
        >>> from bids_affect.datasets import example_runs
        >>> runs = example_runs(n_runs=1, n_volumes=20)
        >>> samples = build_samples(runs, None,
        ...                         Path(tempfile.mkdtemp()), confounds="none")
        >>> image = samples.unmask(samples.X[0])
        >>> image.shape == samples.mask_img.shape
        True
        """
        values = np.asarray(values)
        n_voxels = int(self.manifest["n_voxels"])
        if values.ndim not in (1, 2) or values.shape[-1] != n_voxels:
            raise ValueError(f"expected {n_voxels} values (one per mask voxel) or "
                             f"(k, {n_voxels}) maps, got shape {values.shape}")
        inside = np.asarray(self.mask_img.dataobj, bool)
        data = np.zeros((*inside.shape, *values.shape[:-1]), _SAMPLE_DTYPE)
        data[inside] = values.T
        return _image_like(data, self.mask_img.affine, self.mask_img)

    def uncrop(self, array: np.ndarray) -> nib.Nifti1Image:
        """Put a crop-box volume back on the full grid (0 outside the box).

        Examples
        --------
        >>> import tempfile
        >>> from bids_affect.datasets import example_runs
        >>> runs = example_runs(n_runs=1, n_volumes=20)
        >>> samples = build_samples(runs, None,
        ...                         Path(tempfile.mkdtemp()), confounds="none")
        >>> image = samples.uncrop(samples.volumes[0])
        >>> np.allclose(image.get_fdata(), samples.unmask(samples.X[0]).get_fdata())
        True
        """
        array = np.asarray(array)
        crop_shape = tuple(stop - start for start, stop in self.bbox)
        if array.shape != crop_shape:
            raise ValueError(f"expected a volume of the crop box {crop_shape}, "
                             f"got shape {array.shape}")
        data = np.zeros(self.mask_img.shape, _SAMPLE_DTYPE)
        data[self.crop_slices] = array
        return _image_like(data, self.mask_img.affine, self.mask_img)


def _read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise InputMissingError(
            "no complete sample set (manifest.json is missing: the build never finished "
            "or was interrupted)", path=folder, fix="build the samples again")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputDataError(f"manifest is not valid JSON ({err})", path=path,
                             fix="build the samples again") from err
    required = ("format", "complete", "files", "mask", "bbox", "crop_affine", "n_voxels")
    if (not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT
            or not manifest.get("complete") or any(k not in manifest for k in required)):
        raise InputDataError("manifest is incomplete or not a bids_affect sample set",
                             path=path, fix="build the samples again")
    if manifest.get("version", 0) > MANIFEST_VERSION:
        raise InputDataError(f"manifest version {manifest['version']} is newer than this "
                             f"bids_affect reads ({MANIFEST_VERSION})", path=path,
                             fix="upgrade bids_affect or build the samples again")
    return manifest


def _open_array(path: Path, shape: Sequence[int], mmap_mode: str) -> np.ndarray:
    if not path.is_file():
        raise InputMissingError("sample file is missing", path=path,
                                fix="build the samples again")
    try:
        array = np.load(path, mmap_mode=mmap_mode)
    except (ValueError, OSError, EOFError) as err:
        raise InputDataError(f"cannot open the sample file ({err})", path=path,
                             fix="build the samples again") from err
    if tuple(array.shape) != tuple(shape) or array.dtype != _SAMPLE_DTYPE:
        raise InputDataError(f"sample file holds {array.dtype} {array.shape}, the manifest "
                             f"says float32 {tuple(shape)}", path=path,
                             fix="build the samples again")
    return array
