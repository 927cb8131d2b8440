"""Top voxels of a map: the table with voxel indices, millimetres and atlas labels."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd

from bids_affect.exceptions import InputDataError, UsageError
from bids_affect.occlusion.engine import check_mask

# --------------------------------------------------------------------------- top voxels

#: Columns of the top-voxel table (DESIGN.md, "Clarifications": Top voxels).
TOP_VOXEL_COLUMNS = ("rank", "i", "j", "k", "x", "y", "z", "value", "atlas", "region")

#: ``region`` of voxels in data that are not in a standard space.
NATIVE_SPACE_REGION = "native space: no atlas"


def top_indices(stat_map: np.ndarray, mask: np.ndarray | None, k: int) -> np.ndarray:
    """Flat indices of the ``k`` largest in-mask values: largest first, ties by voxel order."""
    values = np.asarray(stat_map, dtype=np.float64)
    if values.ndim != 3:
        raise InputDataError(f"the map must be 3D, got shape {values.shape}", path="stat_map")
    inside = np.ones(values.shape, bool) if mask is None else check_mask(mask, values.shape)
    candidates = np.flatnonzero(inside.ravel())
    if int(k) != k or k < 1:
        raise UsageError(f"k must be a positive integer, got {k!r}", path="k")
    if k > len(candidates):
        raise UsageError(f"{k} top voxels asked, but the mask holds only {len(candidates)} "
                         f"voxels", path="k", fix=f"use k <= {len(candidates)}")
    scores = values.ravel()[candidates]
    if not np.isfinite(scores).all():
        raise InputDataError("the map holds non-finite values inside the mask",
                             path="stat_map")
    return candidates[np.lexsort((candidates, -scores))[:int(k)]]


def mm_coordinates(affine: np.ndarray, ijk: np.ndarray) -> np.ndarray:
    """World coordinates (mm) of voxel indices, rounded to 0.1 micrometre.

    Affines stored as float32 in NIfTI headers would otherwise print as
    ``-65.64999961853027`` instead of ``-65.65``.

    Examples
    --------
    >>> affine = np.diag([2.0, 2.0, 2.0, 1.0]).astype(np.float32)
    >>> affine[:3, 3] = -65.65
    >>> mm_coordinates(affine, [[1, 0, 0]]).tolist()
    [[-63.65, -65.65, -65.65]]
    """
    return np.round(nib.affines.apply_affine(np.asarray(affine, float), ijk), 4)


def top_voxels(stat_map: np.ndarray, mask: np.ndarray | None, affine: np.ndarray,
               k: int = 500, atlas: str | None = None, *, space: str | None = None,
               threshold: float = 25.0) -> pd.DataFrame:
    """Table of the ``k`` in-mask voxels with the largest values, with atlas labels.

    Parameters
    ----------
    stat_map : ndarray, shape (X, Y, Z)
        An occlusion (or any statistic) map.
    mask : ndarray of bool, shape (X, Y, Z), or None
        Voxels that may rank (None: all).
    affine : ndarray, shape (4, 4)
        Voxel-to-mm affine of the map.
    k : int
        Number of voxels (default 500, seed 003); more than the mask holds is
        a :class:`UsageError` (exit 64).
    atlas : {"harvard_oxford", "juelich"}, optional
        Offline atlas giving ``region`` (:mod:`bids_affect.atlases`); valid
        for standard (MNI152) spaces only.
    space : str, optional
        Space of the map. A non-standard space (``T1w``, ``native``...) gets
        ``atlas="none"`` and ``region="native space: no atlas"`` whatever
        ``atlas`` says; None trusts the caller.
    threshold : float
        Probability threshold (percent) of the atlas labels.

    Returns
    -------
    pandas.DataFrame
        Columns ``rank`` (1 = largest), ``i``, ``j``, ``k`` (voxel indices),
        ``x``, ``y``, ``z`` (mm), ``value``, ``atlas`` and ``region``
        (``unlabelled`` where the atlas has no structure; ``no atlas`` when
        none was asked on standard-space data). Ties rank by voxel order.

    Examples
    --------
    >>> stat_map = np.zeros((4, 4, 4)); stat_map[1, 2, 3] = 5.0; stat_map[0, 0, 1] = 2.0
    >>> table = top_voxels(stat_map, None, np.eye(4), k=2, space="T1w")
    >>> table[["rank", "i", "j", "k"]].values.tolist(), table["value"].tolist()
    ([[1, 1, 2, 3], [2, 0, 0, 1]], [5.0, 2.0])
    >>> table["region"].unique().tolist()
    ['native space: no atlas']
    """
    from bids_affect.atlases import is_standard_space, label_coordinates

    stat_map = np.asarray(stat_map)
    flat = top_indices(stat_map, mask, k)
    ijk = np.stack(np.unravel_index(flat, stat_map.shape), axis=1)
    xyz = mm_coordinates(affine, ijk)
    table = pd.DataFrame({"rank": np.arange(1, len(flat) + 1), "i": ijk[:, 0],
                          "j": ijk[:, 1], "k": ijk[:, 2], "x": xyz[:, 0], "y": xyz[:, 1],
                          "z": xyz[:, 2], "value": stat_map.ravel()[flat].astype(float)})
    if space is not None and not is_standard_space(space):
        table["atlas"] = "none"
        table["region"] = NATIVE_SPACE_REGION
    elif atlas is None:
        table["atlas"] = "none"
        table["region"] = "no atlas"
    else:
        table["atlas"] = atlas
        table["region"] = label_coordinates(xyz, atlas=atlas, threshold=threshold)
    return table[list(TOP_VOXEL_COLUMNS)]




def check_top_k(top_k: int, mask: np.ndarray) -> int:
    """``top_k`` checked against the voxels of a brain mask before any costly work.

    Examples
    --------
    >>> check_top_k(5, np.ones((2, 2, 2), bool))
    5
    """
    n_voxels = int(np.count_nonzero(mask))
    if top_k > n_voxels:
        raise UsageError(f"asks for {top_k} top voxels, more than the brain mask holds "
                         f"({n_voxels} voxels)", path="top_k", fix=f"use {n_voxels} or less")
    return int(top_k)
