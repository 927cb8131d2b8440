"""UMAP embeddings of the top voxels of every class (seed 003), and their figure."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from bids_affect.exceptions import InputDataError, UsageError
from bids_affect.occlusion.topk import mm_coordinates, top_indices
from bids_affect.progress import Progress

# --------------------------------------------------------------------------- UMAP

LOGGER = logging.getLogger("bids_affect.occlusion")

UMAP_COLUMNS = ("i", "j", "k", "x", "y", "z", "class", "spatial_1", "spatial_2",
                "functional_1", "functional_2")

#: UMAP neighbours and minimum distance of the embeddings (seed 003).
UMAP_N_NEIGHBORS = 30
UMAP_MIN_DIST = 0.1


def _resolve_seed(random_state: int | np.random.Generator | np.random.RandomState | None
                  ) -> int:
    """An integer seed for libraries that want one (UMAP)."""
    if isinstance(random_state, (int, np.integer)):
        return int(random_state)
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(2**31 - 1))
    return int(np.random.default_rng(random_state).integers(2**31 - 1))


def umap_settings(n_points: int, n_neighbors: int = UMAP_N_NEIGHBORS,
                  min_dist: float = UMAP_MIN_DIST, n_features: int = 2) -> dict[str, Any]:
    """The UMAP parameters :func:`umap_embeddings` uses for ``n_points`` voxels (for sidecars).

    ``n_neighbors`` is clipped to ``n_points - 1`` (at least 2). The layout
    starts from the first 2 principal components of the features (UMAP's
    ``init="pca"``), not from UMAP's default spectral layout: when the
    neighbour graph falls into several components, as the top voxels of
    occlusion maps often do, the spectral layout of umap-learn 0.5 differs
    from one process to the next with the same seed (seen on one of the demo's
    two subjects), and outputs must be reproducible. Features of one column
    have no second component: their layout starts from seeded random points.

    Examples
    --------
    >>> settings = umap_settings(12)
    >>> settings["n_neighbors"], settings["n_neighbors_used"], settings["init"]
    (30, 11, 'pca')
    """
    neighbours = int(max(2, min(n_neighbors, n_points - 1)))
    return {"n_neighbors": int(n_neighbors), "n_neighbors_used": neighbours,
            "min_dist": float(min_dist), "n_components": 2, "metric": "euclidean",
            "init": "pca" if n_features >= 2 else "random"}


def _embed(features: np.ndarray, n_neighbors: int, min_dist: float, seed: int) -> np.ndarray:
    """2-D UMAP of ``features`` with :func:`umap_settings`."""
    import umap

    settings = umap_settings(len(features), n_neighbors, min_dist, np.shape(features)[1])
    reducer = umap.UMAP(n_neighbors=settings["n_neighbors_used"], min_dist=min_dist,
                        n_components=2, random_state=seed, init=settings["init"])
    threads = torch.get_num_threads()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*n_jobs value.*", category=UserWarning)
            warnings.filterwarnings("ignore", message=".*k >= N.*", category=UserWarning)
            return reducer.fit_transform(np.asarray(features, np.float64))
    finally:
        # numba's OpenMP layer sets the OpenMP thread count that torch shares: without
        # this, later CNNs in the process run on other threads, slower and not bit-equal.
        torch.set_num_threads(threads)


def umap_embeddings(class_maps: Mapping[Any, np.ndarray | None], mask: np.ndarray | None,
                    affine: np.ndarray, *, k: int = 500, n_neighbors: int = UMAP_N_NEIGHBORS,
                    min_dist: float = UMAP_MIN_DIST,
                    random_state: int | np.random.Generator | None = None) -> pd.DataFrame:
    """Spatial and functional UMAP embeddings of the top voxels of every class (seed 003).

    The voxels are the union of each class's top ``k`` (in-mask) voxels; a
    voxel in several classes' top sets belongs to the class where it ranks
    best (ties: the first class). The spatial embedding uses the voxels'
    millimetre coordinates; the functional one, each voxel's vector of
    occlusion drops across the classes (the class maps' values there).

    Parameters
    ----------
    class_maps : mapping
        Class -> map (classes mapped to None, i.e. without samples, are left out).
    mask : ndarray of bool or None
        Voxels that may rank.
    affine : ndarray, shape (4, 4)
        Voxel-to-mm affine.
    k : int
        Top voxels per class (default 500).
    n_neighbors : int
        UMAP neighbours (default 30, seed 003); clipped to the number of voxels - 1.
    min_dist : float
        UMAP minimum distance (default 0.1, seed 003).
    random_state : int, Generator or None
        Seed of UMAP (an int is passed as is; otherwise one is drawn).

    Returns
    -------
    pandas.DataFrame
        One row per voxel: ``i``, ``j``, ``k``, ``x``, ``y``, ``z``, ``class``,
        ``spatial_1``, ``spatial_2``, ``functional_1``, ``functional_2``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> maps = {"fear": rng.random((6, 6, 6)), "love": rng.random((6, 6, 6))}
    >>> table = umap_embeddings(maps, None, np.eye(4), k=10, random_state=0)
    >>> list(table.columns) == list(UMAP_COLUMNS), len(table) <= 20
    (True, True)
    """
    maps = {label: np.asarray(value, np.float64) for label, value in class_maps.items()
            if value is not None}
    if not maps:
        raise InputDataError("no class has an occlusion map to embed", path="class_maps")
    labels = list(maps)
    shape = maps[labels[0]].shape
    best: dict[int, tuple[int, int]] = {}  # voxel -> (rank, class position)
    for position, label in enumerate(labels):
        if maps[label].shape != shape:
            raise InputDataError(f"map of class {label!r} has shape {maps[label].shape}, "
                                 f"the others {shape}", path="class_maps")
        for rank, voxel in enumerate(top_indices(maps[label], mask, k)):
            if voxel not in best or (rank, position) < best[voxel]:
                best[int(voxel)] = (rank, position)
    voxels = np.array(sorted(best))
    if len(voxels) < 3:
        raise UsageError(f"UMAP needs at least 3 voxels, got {len(voxels)}", path="k")
    ijk = np.stack(np.unravel_index(voxels, shape), axis=1)
    xyz = mm_coordinates(affine, ijk)
    drops = np.stack([maps[label].ravel()[voxels] for label in labels], axis=1)
    seed = _resolve_seed(random_state)
    with Progress(2, desc="UMAP") as progress:
        spatial = _embed(xyz, n_neighbors, min_dist, seed)
        progress.update()
        functional = _embed(drops, n_neighbors, min_dist, seed)
        progress.update()
    return pd.DataFrame({
        "i": ijk[:, 0], "j": ijk[:, 1], "k": ijk[:, 2],
        "x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2],
        "class": [labels[best[int(v)][1]] for v in voxels],
        "spatial_1": spatial[:, 0], "spatial_2": spatial[:, 1],
        "functional_1": functional[:, 0], "functional_2": functional[:, 1],
    })


def plot_umap_embeddings(embeddings: pd.DataFrame, path: str | Path, *,
                         title: str | None = None) -> Path:
    """Save the spatial and functional UMAP panels, coloured by class (SVG, PNG or PDF).

    Uses matplotlib's Agg canvas directly: no pyplot state, no display needed.
    SVG files hold no date and derive their element ids from a fixed salt, so
    equal embeddings give byte-equal files.

    Parameters
    ----------
    embeddings : pandas.DataFrame
        From :func:`umap_embeddings`.
    path : str or Path
        Output file; its suffix sets the format.
    title : str, optional
        Figure title.

    Returns
    -------
    Path

    Examples
    --------
    >>> import tempfile
    >>> table = pd.DataFrame({"class": ["a", "b", "a"], "spatial_1": [0, 1, 2],
    ...                       "spatial_2": [1, 0, 1], "functional_1": [0, 0, 1],
    ...                       "functional_2": [1, 1, 0]})
    >>> plot_umap_embeddings(table, Path(tempfile.mkdtemp()) / "umap.svg").suffix
    '.svg'
    """
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    if path.suffix.lower() not in (".svg", ".png", ".pdf"):
        raise UsageError(f"figure format {path.suffix!r} is not supported", path=path,
                         fix="use .svg, .png or .pdf")
    figure = Figure(figsize=(10, 4.6), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 2)
    classes = list(dict.fromkeys(embeddings["class"]))
    colours = [f"C{index % 10}" for index in range(len(classes))]
    for ax, kind in zip(axes, ("spatial", "functional")):
        for label, colour in zip(classes, colours):
            rows = embeddings["class"] == label
            ax.scatter(embeddings.loc[rows, f"{kind}_1"], embeddings.loc[rows, f"{kind}_2"],
                       s=6, alpha=0.7, color=colour, label=str(label), linewidths=0)
        ax.set_title(f"{kind.capitalize()} UMAP")
        ax.set_xlabel(f"{kind} 1")
        ax.set_ylabel(f"{kind} 2")
    axes[1].legend(title="top for class", markerscale=2, fontsize="small", loc="best")
    if title:
        figure.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    # No date, and SVG element ids from a fixed salt: equal inputs give equal files.
    metadata = {"Date": None} if path.suffix.lower() == ".svg" else {}
    with matplotlib.rc_context({"svg.hashsalt": "bids_affect"}):
        figure.savefig(path, metadata=metadata)
    return path


def umap_summary(class_maps: Mapping[Any, np.ndarray], mask: np.ndarray | None,
                 affine: np.ndarray, *, k: int = 500,
                 random_state: int | np.random.Generator | None = None
                 ) -> tuple[pd.DataFrame | None, dict[str, Any]]:
    """The embeddings of :func:`umap_embeddings` and what a sidecar says of them.

    UMAP needs the top voxels of 2 or more classes; with fewer class maps it
    is skipped with a warning and the returned settings say why.

    Returns
    -------
    embeddings : pandas.DataFrame or None
        None when skipped.
    settings : dict
        :func:`umap_settings` plus ``top_k_per_class``, ``n_voxels`` and
        ``random_state``; or ``{"skipped": reason}``.

    Examples
    --------
    >>> embeddings, settings = umap_summary({"fear": np.ones((3, 3, 3))}, None, np.eye(4), k=2)
    >>> embeddings is None, settings["skipped"].startswith("UMAP skipped")
    (True, True)
    """
    if len(class_maps) < 2:
        reason = (f"UMAP skipped: it embeds the top voxels of 2 or more classes, and "
                  f"{len(class_maps)} class(es) have an occlusion map "
                  f"({', '.join(map(str, class_maps)) or 'none'})")
        LOGGER.warning("%s.", reason)
        return None, {"skipped": reason}
    embeddings = umap_embeddings(class_maps, mask, affine, k=k, random_state=random_state)
    return embeddings, {**umap_settings(len(embeddings)), "top_k_per_class": k,
                        "n_voxels": len(embeddings), "random_state": random_state}
