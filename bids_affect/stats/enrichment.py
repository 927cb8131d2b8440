"""Do the top voxels of a map fall in a region more than chance predicts?

The null criteria of occlusion maps (seed 003 reports top voxels without one):
:func:`topk_region_enrichment` translates the region over the volume, keeping
the map's spatial smoothness; :func:`topk_region_shares` gives every region of
a parcellation at once, for family-wise checks against permuted maps.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from bids_affect.exceptions import InputDataError
from bids_affect.occlusion.engine import check_mask
from bids_affect.occlusion.topk import top_indices

# --------------------------------------------------------------------------- null criterion


def topk_region_enrichment(stat_map: np.ndarray, region: np.ndarray,
                           mask: np.ndarray | None = None, k: int | None = None, *,
                           min_inside: float = 0.5) -> dict[str, float]:
    """Does a region hold more top-k voxels than the same region moved elsewhere?

    The statistic is the share of the region's in-mask voxels that rank among
    the map's top ``k`` (in-mask) voxels. Its null distribution comes from the
    same region translated to every position where it stays in the volume
    with at least ``min_inside`` of its voxels in the mask. Translating the
    region, rather than permuting voxels, keeps the map's spatial smoothness
    (an occlusion map is smooth on the scale of the window, so its top voxels
    come in clusters): on data where no region carries signal, the clusters
    fall anywhere, and the region's share is an ordinary draw from the
    translated shares, with a p-value near uniform. A region that drives the
    classifier holds the top voxels and ranks first.

    Parameters
    ----------
    stat_map : ndarray, shape (X, Y, Z)
        The map.
    region : ndarray of bool, shape (X, Y, Z)
        The region to test (a box, a ball...).
    mask : ndarray of bool, optional
        Voxels that may rank (None: all).
    k : int, optional
        Top voxels; default: the number of in-mask region voxels.
    min_inside : float
        Minimum in-mask share of a translated region to count in the null.

    Returns
    -------
    dict
        ``share`` (the statistic), ``dice`` (Dice of the top-k set and the
        in-mask region), ``p_value`` (share of positions, the true one
        included, whose share is at least the observed one), ``null_95``
        (95th percentile of the translated shares), ``n_positions``.

    Examples
    --------
    >>> stat_map = np.zeros((10, 10, 10)); stat_map[2:4, 2:4, 2:4] = 1.0
    >>> region = stat_map > 0
    >>> result = topk_region_enrichment(stat_map, region)
    >>> result["dice"], result["share"], result["n_positions"], round(result["p_value"], 4)
    (1.0, 1.0, 729, 0.0014)
    """
    from scipy.signal import fftconvolve

    stat_map = np.asarray(stat_map, dtype=np.float64)
    region = check_mask(region, stat_map.shape, "region")
    inside = np.ones(stat_map.shape, bool) if mask is None else check_mask(mask,
                                                                           stat_map.shape)
    region_in_mask = region & inside
    if not region_in_mask.any():
        raise InputDataError("the region holds no in-mask voxel", path="region")
    k = int(region_in_mask.sum()) if k is None else k
    top = np.zeros(stat_map.size, bool)
    top[top_indices(stat_map, inside, k)] = True
    top = top.reshape(stat_map.shape)
    corner = np.argwhere(region).min(axis=0)
    far = np.argwhere(region).max(axis=0) + 1
    footprint = region[tuple(slice(a, b) for a, b in zip(corner, far))].astype(np.float64)
    kernel = footprint[::-1, ::-1, ::-1]
    hits, covered = (np.maximum(np.rint(fftconvolve(image.astype(np.float64), kernel,
                                                    mode="valid")), 0.0)
                     for image in (top, inside))
    shares = np.divide(hits, covered, out=np.zeros_like(hits), where=covered > 0)
    observed = float(shares[tuple(corner)])
    valid = covered >= min_inside * footprint.sum()
    valid[tuple(corner)] = True
    null = shares[valid]
    overlap = (top & region_in_mask).sum()
    return {"share": observed,
            "dice": float(2 * overlap / (top.sum() + region_in_mask.sum())),
            "p_value": float(np.mean(null >= observed - 1e-12)),
            "null_95": float(np.quantile(null, 0.95)), "n_positions": int(null.size)}


def topk_region_shares(stat_map: np.ndarray, labels: np.ndarray, mask: np.ndarray | None = None,
                       k: int = 500) -> pd.Series:
    """Share of each region's in-mask voxels that rank among the map's top ``k``.

    With every region of a parcellation at once, the largest share is a
    family-wise statistic: compared with the largest shares of maps made with
    permuted class labels, it says whether any region holds more top voxels
    than chance, without choosing the region first.

    Parameters
    ----------
    stat_map : ndarray, shape (X, Y, Z)
        The map.
    labels : ndarray of int, shape (X, Y, Z)
        Region of each voxel (0: none), e.g. :func:`bids_affect.atlases.resample_labels`.
    mask : ndarray of bool, optional
        Voxels that may rank (None: all).
    k : int
        Top voxels (in the mask).

    Returns
    -------
    pandas.Series
        Share per region label (index), for the regions with in-mask voxels.

    Examples
    --------
    >>> stat_map = np.zeros((4, 4, 4)); stat_map[:2, :2, :2] = 1.0
    >>> labels = np.ones((4, 4, 4), int); labels[:2] = 2
    >>> topk_region_shares(stat_map, labels, k=8).round(3).to_dict()
    {1: 0.0, 2: 0.25}
    """
    stat_map = np.asarray(stat_map)
    labels = np.asarray(labels)
    if labels.shape != stat_map.shape or labels.dtype.kind not in "iu" or labels.min() < 0:
        raise InputDataError(f"the region labels must be integers >= 0 shaped like the map "
                             f"{stat_map.shape}; got {labels.dtype} of shape {labels.shape}",
                             path="labels")
    inside = np.ones(stat_map.shape, bool) if mask is None else check_mask(mask,
                                                                           stat_map.shape)
    top = np.zeros(stat_map.size, bool)
    top[top_indices(stat_map, inside, k)] = True
    region = labels.ravel()[inside.ravel()]
    hits = np.bincount(region, weights=top[inside.ravel()])
    sizes = np.bincount(region)
    present = np.flatnonzero(sizes)
    present = present[present > 0]
    return pd.Series(hits[present] / sizes[present], index=present, name="share")
