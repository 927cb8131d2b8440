"""Occlusion sensitivity maps of 3D CNNs, sample choice, top voxels and UMAP embeddings.

Occlusion (Zeiler & Fergus 2014; seed 003): a window (2x2x2 voxels, stride 2
by default) slides over a volume; at each position the voxels under it are set
to a baseline (0) and the drop of the softmax probability of the target class,
``p(target | volume) - p(target | occluded volume)``, is the window's score. A
voxel's value is the mean score of the windows that cover it. The maps equal
captum's ``Occlusion(lambda x: softmax(model(x), 1))`` with the same window
(``sliding_window_shapes=(1, *window)``), stride, baseline and target, to float
precision. captum's conventions, which :func:`window_grid` follows:

- the first window starts at index 0 of every axis, and windows step by the
  stride until one reaches the end: ``ceil((size - window) / stride) + 1``
  positions per axis; the last window may be cut off by the border;
- a voxel's value is the sum of the scores of the windows that cover it,
  divided by their number;
- with ``stride <= window`` every voxel is covered; captum refuses larger
  strides, which we allow: voxels no window covers get 0.

Speed, with the same answer (:func:`occlusion_maps`):

- windows that do not touch the mask are skipped (in-mask values do not
  depend on them; outside the mask the maps hold 0), and windows whose voxels
  already equal the baseline score exactly 0 without a forward pass;
- occluded copies are evaluated in batches;
- incremental inference (Nakandala et al., SIGMOD 2019, "Krypton"): the
  activations of every trunk layer of a :class:`~bids_affect.models.cnn3d.VolumeClassifier`
  are computed once for the original volume; for each window only the box of
  each layer that the window can change is recomputed (the box grows by each
  kernel's reach and shrinks by its stride), reading its surroundings from the
  cached activations. Boxes have a fixed size per layer, so windows batch
  together. Batch norm (eval mode) and activations are pointwise. The head is
  linear in the last feature map up to its first nonlinearity: global average
  pooling updates the mean by ``(sum of new box - sum of old box) / N``; a
  flatten head updates ``fc1`` by ``W[:, box] @ (new box - old box)``.
  Layers the engine does not know (residual blocks whose residual is used,
  custom modules, ceil-mode pooling...) get plain batched forwards from there
  on, on full feature maps; ``method="plain"`` does that from the input.

Other pieces: :func:`select_samples` (which held-out samples explain a class),
:func:`class_occlusion_maps` (per-class mean maps, each sample occluded with
its own fold's model), :func:`top_voxels` (the top-k table with atlas labels),
:func:`bids_affect.stats.enrichment.topk_region_enrichment` (does a region
hold more top voxels than the map's own spatial statistics predict),
:func:`bids_affect.stats.enrichment.topk_region_shares` (every region of a
parcellation at once, for family-wise checks), :func:`umap_embeddings` (with
:func:`umap_settings` for sidecars) and :func:`plot_umap_embeddings`.

Examples
--------
>>> import numpy as np
>>> from bids_affect.models.cnn3d import create_architecture
>>> model = create_architecture("deepemotion", n_classes=2, input_shape=(8, 8, 8)).eval()
>>> volumes = np.random.default_rng(0).normal(size=(1, 8, 8, 8)).astype(np.float32)
>>> result = occlusion_maps(model, volumes, targets=[1])
>>> result.maps.shape, result.maps.dtype, result.info["windows_computed"]
((1, 8, 8, 8), dtype('float32'), 64)
"""

from bids_affect.occlusion.engine import (
    BATCH_MEMORY_BYTES,
    DEFAULT_WINDOW,
    N_PRECISION_CHECK,
    OcclusionResult,
    WindowGrid,
    occlusion_maps,
    window_grid,
)
from bids_affect.occlusion.selection import (
    ClassOcclusionMaps,
    SampleSelection,
    class_occlusion_maps,
    select_samples,
)
from bids_affect.occlusion.topk import (
    NATIVE_SPACE_REGION,
    TOP_VOXEL_COLUMNS,
    check_top_k,
    mm_coordinates,
    top_voxels,
)
from bids_affect.occlusion.umap import (
    UMAP_COLUMNS,
    UMAP_MIN_DIST,
    UMAP_N_NEIGHBORS,
    plot_umap_embeddings,
    umap_embeddings,
    umap_settings,
    umap_summary,
)

__all__ = [
    "BATCH_MEMORY_BYTES", "DEFAULT_WINDOW", "NATIVE_SPACE_REGION", "N_PRECISION_CHECK",
    "TOP_VOXEL_COLUMNS", "UMAP_COLUMNS", "UMAP_MIN_DIST", "UMAP_N_NEIGHBORS",
    "ClassOcclusionMaps", "OcclusionResult", "SampleSelection", "WindowGrid", "check_top_k",
    "class_occlusion_maps", "mm_coordinates", "occlusion_maps", "plot_umap_embeddings",
    "select_samples", "top_voxels", "umap_embeddings", "umap_settings", "umap_summary",
    "window_grid",
]
