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
:func:`topk_region_enrichment` (does a region hold more top voxels than the
map's own spatial statistics predict), :func:`topk_region_shares` (every
region of a parcellation at once, for family-wise checks), :func:`umap_embeddings` (with
:func:`umap_settings` for sidecars) and :func:`plot_umap_embeddings`.

Examples
--------
>>> from bids_affect.models.cnn3d import create_architecture
>>> model = create_architecture("deepemotion", n_classes=2, input_shape=(8, 8, 8)).eval()
>>> volumes = np.random.default_rng(0).normal(size=(1, 8, 8, 8)).astype(np.float32)
>>> result = occlusion_maps(model, volumes, targets=[1])
>>> result.maps.shape, result.maps.dtype, result.info["windows_computed"]
((1, 8, 8, 8), dtype('float32'), 64)
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import nibabel as nib
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from bids_affect.exceptions import InputDataError, UsageError
from bids_affect.models.cnn3d import (
    FlattenHead,
    GlobalPoolHead,
    InvertedResidual3d,
    VolumeClassifier,
)
from bids_affect.progress import Progress

Triple = tuple[int, int, int]
Method = Literal["incremental", "plain"]
Precision = Literal["float32", "bfloat16"]

#: Default occlusion window and stride (seed 003: a 2x2x2 cube, stride 2).
DEFAULT_WINDOW = 2

#: Bytes of activations one batch of occluded windows may take (sets the automatic batch size).
BATCH_MEMORY_BYTES = 512 * 2**20

#: Windows compared against float32 when ``precision="bfloat16"`` (per call).
N_PRECISION_CHECK = 64


# --------------------------------------------------------------------------- window grid


def _triple(value: int | Sequence[int], name: str) -> Triple:
    values = (value,) * 3 if isinstance(value, (int, np.integer)) else tuple(
        value if isinstance(value, Sequence) else [value])
    if len(values) != 3 or not all(isinstance(v, (int, np.integer)) and v >= 1
                                   for v in values):
        raise UsageError(f"{name} must be a positive integer or 3 of them, got {value!r}",
                         path=name)
    return tuple(int(v) for v in values)  # type: ignore[return-value]


@dataclass(frozen=True)
class WindowGrid:
    """Positions of an occlusion window over a volume, with captum's conventions.

    Build it with :func:`window_grid`, which validates the arguments.
    """

    shape: Triple
    window: Triple
    stride: Triple

    @property
    def counts(self) -> Triple:
        """Window positions per axis: ``ceil((size - window) / stride) + 1``."""
        return tuple(-(-(size - w) // s) + 1  # type: ignore[return-value]
                     for size, w, s in zip(self.shape, self.window, self.stride))

    @property
    def n_windows(self) -> int:
        """Number of window positions."""
        return math.prod(self.counts)

    def starts(self, axis: int) -> np.ndarray:
        """First voxel of each window position along ``axis``."""
        return np.arange(self.counts[axis]) * self.stride[axis]

    def cover(self, axis: int) -> np.ndarray:
        """``(size, n_positions)`` matrix: 1 where the window at a position covers a voxel."""
        voxels = np.arange(self.shape[axis])[:, None]
        starts = self.starts(axis)[None, :]
        return ((voxels >= starts) & (voxels < starts + self.window[axis])).astype(np.float64)

    def window_sums(self, values: np.ndarray) -> np.ndarray:
        """Sum of ``values`` (shaped like the volume) under each window position."""
        return np.einsum("xi,yj,zk,xyz->ijk", self.cover(0), self.cover(1), self.cover(2),
                         np.asarray(values, np.float64), optimize=True)

    def spread(self, scores: np.ndarray) -> np.ndarray:
        """Voxel map: mean score of the windows covering each voxel (0 where none)."""
        covers = [self.cover(axis) for axis in range(3)]
        total = np.einsum("xi,yj,zk,ijk->xyz", *covers, scores, optimize=True)
        counts = np.einsum("xi,yj,zk->xyz", *(c.sum(1, keepdims=True) for c in covers))
        return np.divide(total, counts, out=np.zeros_like(total), where=counts > 0)


def window_grid(shape: Sequence[int], window: int | Sequence[int] = DEFAULT_WINDOW,
                stride: int | Sequence[int] | None = None) -> WindowGrid:
    """The window positions of an occlusion run (validated).

    Parameters
    ----------
    shape : sequence of 3 int
        Shape of the volumes.
    window : int or sequence of 3 int
        Window size in voxels; it must fit in the volume.
    stride : int or sequence of 3 int, optional
        Step between positions; default: the window size.

    Returns
    -------
    WindowGrid

    Raises
    ------
    UsageError
        A window larger than the volume, or non-positive sizes (exit 64).

    Examples
    --------
    >>> grid = window_grid((80, 80, 35), window=2)
    >>> grid.counts, grid.n_windows
    ((40, 40, 18), 28800)
    >>> window_grid((5, 5, 5), window=2, stride=2).starts(0)  # the last window is cut off
    array([0, 2, 4])
    """
    shape_ = tuple(int(n) for n in shape)
    if len(shape_) != 3 or min(shape_) < 1:
        raise InputDataError(f"volumes must be 3D, got shape {tuple(shape)}", path="volumes")
    window_ = _triple(window, "window")
    stride_ = window_ if stride is None else _triple(stride, "stride")
    if any(w > n for w, n in zip(window_, shape_)):
        raise UsageError(f"the occlusion window {window_} is larger than the volume "
                         f"{shape_}", path="window",
                         fix=f"use a window of at most {shape_} voxels")
    return WindowGrid(shape_, window_, stride_)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the engine's plan

#: Modules that act voxel by voxel (in eval mode), so a box of them needs no context.
_POINTWISE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
              nn.Mish, nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid,
              nn.Softplus, nn.PReLU, nn.Identity, nn.Dropout, nn.Dropout3d, nn.AlphaDropout)


@dataclass(frozen=True)
class _SpatialOp:
    """A convolution or pooling layer: its geometry, and how to run it on a padded box."""

    module: nn.Module
    kernel: Triple
    stride: Triple
    dilation: Triple
    pad_lo: Triple
    pad_hi: Triple
    pad_value: float

    @property
    def reach(self) -> Triple:
        """Extent of one output's receptive field minus one, per axis."""
        return tuple(d * (k - 1) for d, k in zip(self.dilation, self.kernel))  # type: ignore

    @property
    def is_pointwise(self) -> bool:
        return max(self.kernel) == 1 and max(self.stride) == 1 and max(self.pad_lo) == 0 \
            and max(self.pad_hi) == 0

    def out_size(self, size: Triple) -> Triple:
        return tuple((n + lo + hi - r - 1) // s + 1  # type: ignore[return-value]
                     for n, lo, hi, r, s in zip(size, self.pad_lo, self.pad_hi, self.reach,
                                                self.stride))

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """Pad a full ``(N, C, X, Y, Z)`` map as the layer does implicitly."""
        pads = [p for axis in (2, 1, 0) for p in (self.pad_lo[axis], self.pad_hi[axis])]
        return F.pad(x, pads, value=self.pad_value)

    def on_padded(self, x: torch.Tensor) -> torch.Tensor:
        """The layer on an input that already holds its padding."""
        m = self.module
        if isinstance(m, nn.Conv3d):
            return F.conv3d(x, m.weight, m.bias, m.stride, 0, m.dilation, m.groups)
        if isinstance(m, nn.MaxPool3d):
            return F.max_pool3d(x, m.kernel_size, m.stride, 0, m.dilation)
        return F.avg_pool3d(x, m.kernel_size, m.stride, 0,
                            divisor_override=m.divisor_override)


def _spatial_op(module: nn.Module) -> _SpatialOp | None:
    """The geometry of a supported convolution or pooling layer, else None."""
    if type(module) is nn.Conv3d and module.padding_mode == "zeros":
        kernel, stride, dilation = (_as_triple(v) for v in
                                    (module.kernel_size, module.stride, module.dilation))
        if module.padding == "same":
            total = [d * (k - 1) for d, k in zip(dilation, kernel)]
            lo = tuple(t // 2 for t in total)
            hi = tuple(t - low for t, low in zip(total, lo))
        else:
            lo = hi = (0, 0, 0) if module.padding == "valid" else _as_triple(module.padding)
        return _SpatialOp(module, kernel, stride, dilation, lo, hi, 0.0)  # type: ignore
    if type(module) is nn.MaxPool3d and not module.ceil_mode and not module.return_indices:
        padding = _as_triple(module.padding)
        return _SpatialOp(module, _as_triple(module.kernel_size), _as_triple(module.stride),
                          _as_triple(module.dilation), padding, padding, -math.inf)
    if type(module) is nn.AvgPool3d and not module.ceil_mode:
        padding = _as_triple(module.padding)
        if module.count_include_pad or max(padding) == 0:
            return _SpatialOp(module, _as_triple(module.kernel_size),
                              _as_triple(module.stride), (1, 1, 1), padding, padding, 0.0)
    return None


def _as_triple(value: int | Sequence[int]) -> Triple:
    return (int(value),) * 3 if isinstance(value, int) else tuple(int(v) for v in value)


def _is_pointwise(module: nn.Module) -> bool:
    if type(module) in _POINTWISE:
        return True
    return (type(module) is nn.BatchNorm3d and not module.training
            and module.running_mean is not None)


def _flatten(module: nn.Module) -> Iterator[nn.Module]:
    """The layers of plain containers, in the order their forward applies them."""
    if type(module) is nn.Sequential:
        for child in module:
            yield from _flatten(child)
    elif type(module) is InvertedResidual3d and not module.use_residual:
        yield from _flatten(module.layers)
    else:
        yield module


@dataclass
class _Stage:
    """One spatial layer (None: none) and the pointwise layers after it."""

    spatial: _SpatialOp | None
    pointwise: list[nn.Module] = field(default_factory=list)

    def run(self, x: torch.Tensor) -> torch.Tensor:
        for module in self.pointwise:
            x = module(x)
        return x


@dataclass
class _Plan:
    """How to evaluate a model on occluded volumes.

    ``stages`` run incrementally on boxes; ``rest`` (the first unsupported
    trunk layer and all after it) runs on full maps; then ``head`` (float32).
    """

    stages: list[_Stage]
    rest: list[nn.Module]
    head: nn.Module
    head_kind: str

    def describe(self) -> dict[str, Any]:
        n_incremental = sum((stage.spatial is not None) + len(stage.pointwise)
                            for stage in self.stages)
        return {"incremental_layers": n_incremental,
                "fallback_layers": [type(m).__name__ for m in self.rest],
                "head": self.head_kind}


def _make_plan(model: nn.Module, trunk_model: nn.Module, method: Method) -> _Plan:
    """Split ``trunk_model``'s trunk into incremental stages and a fallback rest.

    ``model`` gives the float32 head; ``trunk_model`` (the same model, or a
    reduced-precision copy) the trunk.
    """
    if not (isinstance(model, VolumeClassifier)
            and type(model).forward is VolumeClassifier.forward):
        return _Plan([], [trunk_model], nn.Identity(), "module")
    layers = list(_flatten(trunk_model.trunk))
    if method == "plain":
        return _Plan([], layers, model.head, "module")
    stages = [_Stage(None)]
    rest: list[nn.Module] = []
    for index, layer in enumerate(layers):
        op = _spatial_op(layer)
        if op is not None and not op.is_pointwise:
            stages.append(_Stage(op))
        elif op is not None or _is_pointwise(layer):
            stages[-1].pointwise.append(layer)
        else:
            rest = layers[index:]
            break
    head = model.head
    if rest:
        head_kind = "module"
    elif (type(head) is GlobalPoolHead and type(head.pool) is nn.AdaptiveAvgPool3d
          and _as_triple(head.pool.output_size) == (1, 1, 1)):
        head_kind = "global-pool"
    elif type(head) is FlattenHead:
        head_kind = "flatten"
    else:
        head_kind = "module"
    return _Plan(stages, rest, head, head_kind)


# --------------------------------------------------------------------------- box geometry


@dataclass
class _Boxes:
    """Per axis and window position: the box recomputed at one level of the trunk.

    ``start[axis][position]`` is the box's first index; ``length`` is fixed
    per axis so that windows batch together. For a spatial stage, ``read_*``
    describe the input box it reads (in padded coordinates) and ``offset``
    where the previous level's box lies inside that input box.
    """

    size: Triple
    length: Triple
    start: list[np.ndarray]
    read_start: list[np.ndarray] | None = None
    read_length: Triple | None = None
    offset: list[np.ndarray] | None = None


def _window_boxes(grid: WindowGrid) -> tuple[_Boxes, list[np.ndarray], list[np.ndarray]]:
    """Level 0: a window-sized box per position, and the occluded range inside it."""
    starts, lows, highs = [], [], []
    for axis in range(3):
        first = grid.starts(axis)
        size, width = grid.shape[axis], grid.window[axis]
        starts.append(np.minimum(first, size - width))  # cut-off windows: shift the box in
        lows.append(first)
        highs.append(np.minimum(first + width, size))
    return _Boxes(grid.shape, grid.window, starts), lows, highs


def _next_boxes(op: _SpatialOp, boxes: _Boxes, lows: list[np.ndarray],
                highs: list[np.ndarray]) -> tuple[_Boxes, list[np.ndarray], list[np.ndarray]]:
    """Boxes of a spatial layer's output that cover every output the change reaches."""
    out_size = op.out_size(boxes.size)
    new_lows, new_highs, starts, lengths = [], [], [], []
    read_starts, read_lengths, offsets = [], [], []
    for axis in range(3):
        stride, reach, pad = op.stride[axis], op.reach[axis], op.pad_lo[axis]
        size = out_size[axis]
        # outputs o whose inputs [o*s - pad, o*s - pad + reach] meet the changed [low, high)
        low = np.clip(-((reach - pad - lows[axis]) // stride), 0, size)  # ceil division
        high = np.clip((highs[axis] - 1 + pad) // stride + 1, 0, size)
        high = np.maximum(high, low)  # an empty change stays empty
        length = int(min(size, max(1, int((high - low).max()))))
        start = np.clip(low, 0, size - length)
        read_start = start * stride
        new_lows.append(low)
        new_highs.append(high)
        starts.append(start)
        lengths.append(length)
        read_starts.append(read_start)
        read_lengths.append((length - 1) * stride + reach + 1)
        offsets.append(boxes.start[axis] + pad - read_start)
    return (_Boxes(out_size, tuple(lengths), starts, read_starts,  # type: ignore[arg-type]
                   tuple(read_lengths), offsets), new_lows, new_highs)  # type: ignore


@dataclass(frozen=True)
class _Map:
    """A feature map of one volume, channels last: ``rows[voxel, channel]``."""

    rows: torch.Tensor
    shape: Triple

    @classmethod
    def of(cls, x: torch.Tensor) -> _Map:
        """From a ``(1, C, X, Y, Z)`` tensor."""
        return cls(x[0].permute(1, 2, 3, 0).reshape(-1, x.shape[1]).contiguous(),
                   tuple(x.shape[2:]))  # type: ignore[arg-type]

    def gather(self, starts: torch.Tensor, size: Sequence[int],
               spare: bool = False) -> torch.Tensor:
        """Boxes of ``size`` at ``starts`` (B, 3), as rows ``(B * prod(size), C)``.

        With ``spare``, one extra row follows: :func:`_paste` drops there
        what falls outside the boxes.
        """
        return _gather_rows(self.rows, self.shape, starts, size, spare)


def _gather_rows(rows: torch.Tensor, shape: Sequence[int], starts: torch.Tensor,
                 size: Sequence[int], spare: bool = False) -> torch.Tensor:
    """Rows of boxes from the rows ``(X*Y*Z, K)`` of a channels-last map (see :class:`_Map`)."""
    width = rows.shape[1]
    # Each box is made of runs of size[2] consecutive rows (along z): copy whole runs.
    runs = rows.as_strided((rows.shape[0] - size[2] + 1, size[2] * width), (width, 1))
    ix, iy = (starts[:, axis, None] + torch.arange(size[axis], device=rows.device)
              for axis in range(2))
    first = (ix[:, :, None] * shape[1] + iy[:, None, :]) * shape[2] + starts[:, 2, None, None]
    out = rows.new_empty(len(starts) * math.prod(size) + int(spare), width)
    torch.index_select(runs, 0, first.reshape(-1), out=out[:len(out) - int(spare)]
                       .view(-1, size[2] * width))
    return out


def _paste_index(shape: Sequence[int], offsets: torch.Tensor,
                 size: Sequence[int]) -> torch.Tensor:
    """Row indices, in a batch of maps of ``shape``, of a box of ``size`` at ``offsets``.

    Box ``b`` lies in map ``b``; its voxels outside the map get the index
    ``B * prod(shape)``, the spare row.
    """
    ix, iy, iz = (offsets[:, axis, None] + torch.arange(size[axis], device=offsets.device)
                  for axis in range(3))
    ix, iy, iz = ix[:, :, None, None], iy[:, None, :, None], iz[:, None, None, :]
    batch = torch.arange(len(offsets), device=offsets.device)[:, None, None, None]
    flat = ((batch * shape[0] + ix) * shape[1] + iy) * shape[2] + iz
    inside = ((ix >= 0) & (ix < shape[0]) & (iy >= 0) & (iy < shape[1])
              & (iz >= 0) & (iz < shape[2]))
    return torch.where(inside, flat, len(offsets) * math.prod(shape)).reshape(-1)


def _paste(rows: torch.Tensor, size: Sequence[int], content: torch.Tensor,
           offsets: torch.Tensor) -> torch.Tensor:
    """Copy boxes ``content`` (B, C, *P) into ``rows`` (from a spare gather) at ``offsets``.

    Returns the pasted boxes as a channels-last ``(B, C, *size)`` tensor; the
    parts of ``content`` outside them went to the spare row.
    """
    batch, channels = len(offsets), content.shape[1]
    index = _paste_index(size, offsets, content.shape[2:])
    rows.index_copy_(0, index, content.permute(0, 2, 3, 4, 1).reshape(-1, channels))
    return rows[:-1].view(batch, *size, channels).permute(0, 4, 1, 2, 3)


class _Tables:
    """The box geometry of every level, as index tensors for batches of windows."""

    def __init__(self, plan: _Plan, grid: WindowGrid, device: torch.device):
        boxes, lows, highs = _window_boxes(grid)
        self.window = boxes
        self.occluded = (lows, highs)
        self.levels: list[_Boxes] = []
        for stage in plan.stages:
            if stage.spatial is not None:
                boxes, lows, highs = _next_boxes(stage.spatial, boxes, lows, highs)
            self.levels.append(boxes)
        self.device = device

    def take(self, table: list[np.ndarray], positions: np.ndarray) -> torch.Tensor:
        """``(B, 3)`` tensor of a per-axis table at window positions ``(B, 3)``."""
        values = np.stack([table[axis][positions[:, axis]] for axis in range(3)], axis=1)
        return torch.as_tensor(values, dtype=torch.long, device=self.device)

    @property
    def last(self) -> _Boxes:
        return self.levels[-1] if self.levels else self.window


# --------------------------------------------------------------------------- one volume


class _VolumeEngine:
    """Occluded-volume probabilities for one volume under a plan."""

    def __init__(self, plan: _Plan, tables: _Tables, volume: torch.Tensor, baseline: float):
        self.plan, self.tables, self.baseline = plan, tables, baseline
        self.volume = _Map.of(volume)
        self.padded: list[_Map | None] = []
        act = volume
        for stage in plan.stages:
            if stage.spatial is None:
                self.padded.append(None)
            else:
                self.padded.append(_Map.of(stage.spatial.pad(act)))
                act = stage.spatial.module(act)
            act = stage.run(act)
        self.boundary = _Map.of(act)
        self.largest_rest = act.numel()
        for module in plan.rest:
            act = module(act)
            self.largest_rest = max(self.largest_rest, act.numel())
        features = act.float()
        if plan.head_kind == "global-pool":
            self.pooled = features.mean(dim=(2, 3, 4))
        elif plan.head_kind == "flatten":
            self.hidden = plan.head.fc1(features.flatten(1))
            fc1 = plan.head.fc1.weight  # (H, C*X*Y*Z) -> rows (X*Y*Z, C*H) for box gathers
            self.fc1_rows = fc1.reshape(len(fc1), act.shape[1], -1).permute(2, 1, 0) \
                .reshape(act[0, 0].numel(), -1).contiguous()
        self.probabilities = torch.softmax(plan.head(features).float(), dim=1)[0]

    def occluded_probabilities(self, positions: np.ndarray) -> torch.Tensor:
        """Softmax probabilities ``(B, n_classes)`` with the windows at ``positions`` occluded."""
        tables = self.tables
        window = tables.window.length
        starts = tables.take(tables.window.start, positions)
        content = self.volume.gather(starts, window).view(len(positions), *window)
        lows, highs = (tables.take(bound, positions) for bound in tables.occluded)
        occluded = [(index >= lows[:, axis, None]) & (index < highs[:, axis, None])
                    for axis, index in enumerate(
                        starts[:, axis, None] + torch.arange(window[axis], device=starts.device)
                        for axis in range(3))]
        occluded = (occluded[0][:, :, None, None] & occluded[1][:, None, :, None]
                    & occluded[2][:, None, None, :])
        content = torch.where(occluded, torch.full((), self.baseline, dtype=content.dtype),
                              content)[:, None]
        for stage, padded, boxes in zip(self.plan.stages, self.padded, tables.levels):
            if stage.spatial is not None:
                read = padded.gather(tables.take(boxes.read_start, positions),
                                     boxes.read_length, spare=True)
                read = _paste(read, boxes.read_length, content,
                              tables.take(boxes.offset, positions))
                content = stage.spatial.on_padded(read)
            content = stage.run(content)
        return torch.softmax(self._head(content, tables.take(tables.last.start, positions)),
                             dim=1)

    def scores(self, positions: np.ndarray, target: int) -> np.ndarray:
        """Window scores ``p(target) - p(target | occluded)`` at window positions (B, 3)."""
        occluded = self.occluded_probabilities(positions)[:, target]
        return (self.probabilities[target] - occluded).double().cpu().numpy()

    def _head(self, content: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
        plan, length, batch = self.plan, self.tables.last.length, len(starts)
        head = plan.head
        if plan.head_kind in ("global-pool", "flatten"):
            old = self.boundary.gather(starts, length).float().view(batch, -1,
                                                                    content.shape[1])
            change = content.float().permute(0, 2, 3, 4, 1).reshape(old.shape) - old
            if plan.head_kind == "global-pool":
                pooled = self.pooled + change.sum(dim=1) / math.prod(self.boundary.shape)
                return head.fc(head.dropout(pooled)).float()
            weight = _gather_rows(self.fc1_rows, self.boundary.shape, starts, length)
            hidden = self.hidden + torch.bmm(change.reshape(batch, 1, -1),
                                             weight.view(batch, change[0].numel(), -1))[:, 0]
            return head.fc2(head.dropout(head.relu(hidden))).float()
        copies = torch.cat([self.boundary.rows.repeat(batch, 1), self.boundary.rows[:1]])
        act = _paste(copies, self.boundary.shape, content, starts)
        for module in plan.rest:
            act = module(act)
        return head(act.float()).float()

    def window_bytes(self) -> int:
        """Rough bytes of activations per occluded window (sets the batch size)."""
        largest = 0
        for padded, boxes in zip(self.padded, self.tables.levels):
            if padded is not None:
                largest = max(largest, math.prod(boxes.read_length) * padded.rows.shape[1])
        if self.plan.head_kind == "flatten":
            largest += self.fc1_rows.shape[1] * math.prod(self.tables.last.length)
        elif self.plan.head_kind == "module":
            largest += self.largest_rest
        return 4 * self.volume.rows.element_size() * max(largest, 1)
# --------------------------------------------------------------------------- occlusion maps


@dataclass(frozen=True)
class OcclusionResult:
    """Occlusion maps and how they were computed.

    Attributes
    ----------
    maps : ndarray of float32, shape (n_volumes, X, Y, Z)
        One map per volume; 0 outside the mask.
    info : dict
        Parameters and run facts for the sidecar: window, stride, baseline,
        method, engine (layers run incrementally, fallback layers, head),
        window counts (total, computed, skipped outside the mask, unchanged
        because already at the baseline), the box recomputed per window at the
        last incremental level next to that level's feature map
        (``recomputed_box``), batch size, precision and, for
        bfloat16, ``precision_check`` (deviation from float32), seconds.
    """

    maps: np.ndarray
    info: dict[str, Any]


def _check_volumes(volumes: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    shape = tuple(volumes.shape)
    if len(shape) == 5 and shape[1] == 1:
        volumes = volumes[:, 0]
    elif len(shape) != 4:
        raise InputDataError(f"volumes must be shaped (n, X, Y, Z) or (n, 1, X, Y, Z), got "
                             f"{shape}", path="volumes")
    if volumes.shape[0] == 0:
        raise InputDataError("no volumes given", path="volumes")
    return volumes


def _check_mask(mask: np.ndarray | None, shape: Triple,
                name: str = "mask") -> np.ndarray | None:
    if mask is None:
        return None
    mask = np.asarray(mask)
    if mask.shape != shape:
        raise InputDataError(f"the {name} has shape {mask.shape}, the data {shape}",
                             path=name, fix=f"resample the {name} to the data")
    mask = mask.astype(bool)
    if not mask.any():
        raise InputDataError(f"the {name} holds no voxel", path=name)
    return mask


def _check_choice(value: str, name: str, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise UsageError(f"{name} must be one of {', '.join(allowed)}, got {value!r}",
                         path=name)
    return value


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Evaluate in eval mode, then restore each module's own training flag."""
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in flags:
            module.training = training


def _model_device(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def occlusion_maps(model: nn.Module, volumes: np.ndarray | torch.Tensor,
                   targets: int | Sequence[int] | np.ndarray, *,
                   mask: np.ndarray | None = None,
                   window: int | Sequence[int] = DEFAULT_WINDOW,
                   stride: int | Sequence[int] | None = None, baseline: float = 0.0,
                   batch_size: int | None = None, method: Method = "incremental",
                   precision: Precision = "float32") -> OcclusionResult:
    """Occlusion maps of a classifier: mean probability drop of the windows covering each voxel.

    Parameters
    ----------
    model : torch.nn.Module
        A classifier of ``(n, 1, X, Y, Z)`` volumes returning logits. It is
        evaluated in eval mode (its flags are restored afterwards); a
        :class:`~bids_affect.models.cnn3d.VolumeClassifier` gets the
        incremental engine.
    volumes : ndarray or Tensor, shape (n, X, Y, Z) or (n, 1, X, Y, Z)
        The volumes (a memory map works: they are read one at a time).
    targets : int or sequence of int
        Class index whose probability is scored, one for all or one per volume.
    mask : ndarray of bool, shape (X, Y, Z), optional
        Brain mask: windows that do not touch it are skipped and the maps are 0
        outside it. In-mask values are those of the unmasked computation.
    window : int or sequence of 3 int
        Window size (default 2).
    stride : int or sequence of 3 int, optional
        Step between windows (default: the window size).
    baseline : float
        Value the occluded voxels take (default 0).
    batch_size : int, optional
        Occluded copies per forward pass; default: as many as fit in
        :data:`BATCH_MEMORY_BYTES` of activations (at most 256).
    method : {"incremental", "plain"}
        ``incremental`` recomputes only the boxes a window changes (with plain
        forwards from the first layer it does not support); ``plain`` runs
        full forwards of every occluded copy. Both give the same maps.
    precision : {"float32", "bfloat16"}
        ``bfloat16`` runs the trunk in bfloat16 (the head stays float32) and
        reports in ``info["precision_check"]`` the largest deviation of window
        scores from float32 on up to :data:`N_PRECISION_CHECK` windows (a map
        value is a mean of window scores, so its error is at most the largest
        window-score error), absolute and relative to the maps' largest
        absolute value. It is approximate, and on CPUs without native
        bfloat16 arithmetic slower than float32 (``benchmarks/results/occlusion.json``);
        it may help on GPUs.

    Returns
    -------
    OcclusionResult
        ``maps`` (float32, shaped ``(n, X, Y, Z)``) and ``info``.

    Raises
    ------
    UsageError
        Bad window, stride, target, method or precision (exit 64).
    InputDataError
        Volumes or mask of the wrong shape, non-finite values (exit 65).

    Examples
    --------
    >>> from bids_affect.models.cnn3d import create_architecture
    >>> model = create_architecture("neuro120fp", n_classes=3, input_shape=(6, 6, 6))
    >>> volumes = np.ones((2, 6, 6, 6), np.float32)
    >>> mask = np.zeros((6, 6, 6), bool); mask[2:4, 2:4, 2:4] = True
    >>> result = occlusion_maps(model, volumes, targets=[0, 2], mask=mask, window=2)
    >>> result.maps.shape, float(np.abs(result.maps[:, ~mask]).max())
    ((2, 6, 6, 6), 0.0)
    >>> result.info["windows_computed"], result.info["windows_outside_mask"]
    (2, 52)
    """
    started = time.perf_counter()
    method = _check_choice(method, "method", ("incremental", "plain"))  # type: ignore
    precision = _check_choice(precision, "precision", ("float32", "bfloat16"))  # type: ignore
    volumes = _check_volumes(volumes)
    n_volumes = int(volumes.shape[0])
    grid = window_grid(tuple(volumes.shape[1:]), window, stride)
    mask = _check_mask(mask, grid.shape)
    target_list = _check_targets(targets, n_volumes)
    if batch_size is not None and (int(batch_size) != batch_size or batch_size < 1):
        raise UsageError(f"batch_size must be a positive integer, got {batch_size!r}",
                         path="batch_size")
    baseline = float(baseline)
    device = _model_device(model)
    touching = np.ones(grid.counts, bool) if mask is None else grid.window_sums(mask) > 0

    # First pass: which windows change each volume (reads one volume at a time).
    positions, n_unchanged = [], 0
    for index in range(n_volumes):
        changes = grid.window_sums(_read_volume(volumes, index) != baseline) > 0
        positions.append(np.argwhere(touching & changes))
        n_unchanged += int((touching & ~changes).sum())

    maps = np.zeros((n_volumes, *grid.shape), np.float32)
    check_errors: list[np.ndarray] = []
    with _eval_mode(model), torch.inference_mode():
        reduced = None
        if precision == "bfloat16":
            reduced = copy.deepcopy(model).to(torch.bfloat16).eval()
        plan = _make_plan(model, reduced or model, method)
        exact_plan = _make_plan(model, model, method) if reduced is not None else None
        tables = _Tables(plan, grid, device)
        dtype = torch.float32 if reduced is None else torch.bfloat16
        with Progress(sum(map(len, positions)), desc="occlusion windows") as progress:
            for index, active in enumerate(positions):
                volume = torch.as_tensor(_read_volume(volumes, index), device=device)[None, None]
                engine = _VolumeEngine(plan, tables, volume.to(dtype), baseline)
                target = _check_target(int(target_list[index]), engine.probabilities)
                if batch_size is None:
                    batch_size = int(np.clip(BATCH_MEMORY_BYTES // engine.window_bytes(),
                                             1, 256))
                scores = np.zeros(grid.counts, np.float64)
                for chunk in range(0, len(active), batch_size):
                    batch = active[chunk:chunk + batch_size]
                    scores[tuple(batch.T)] = engine.scores(batch, target)
                    progress.update(len(batch))
                if exact_plan is not None and len(active):
                    chosen = active[np.unique(np.linspace(
                        0, len(active) - 1, max(1, N_PRECISION_CHECK // n_volumes)
                    ).round().astype(int))]
                    exact = _VolumeEngine(exact_plan, tables, volume, baseline)
                    check_errors.append(np.abs(scores[tuple(chosen.T)]
                                               - exact.scores(chosen, target)))
                maps[index] = grid.spread(scores)
                if mask is not None:
                    maps[index][~mask] = 0.0
    info: dict[str, Any] = {
        "window": list(grid.window), "stride": list(grid.stride), "baseline": baseline,
        "method": method, "engine": plan.describe(), "precision": precision,
        "batch_size": batch_size, "windows_per_volume": grid.n_windows,
        "windows_computed": sum(map(len, positions)),
        "windows_outside_mask": int((~touching).sum()) * n_volumes,
        "windows_unchanged": n_unchanged,
        "recomputed_box": {"shape": list(tables.last.length),
                           "feature_map": list(tables.last.size)},
        "conventions": "captum Occlusion on softmax probabilities: windows from index 0 "
                       "every stride until the end (the last may be cut off); voxel value "
                       "= mean score of the windows covering it",
    }
    if check_errors:
        info["precision_check"] = _precision_check(np.concatenate(check_errors), maps)
    info["seconds"] = round(time.perf_counter() - started, 3)
    return OcclusionResult(maps, info)


def _precision_check(errors: np.ndarray, maps: np.ndarray) -> dict[str, Any]:
    """Deviation of reduced-precision window scores from float32, absolute and relative.

    The relative error divides the largest sampled error by the largest
    absolute value of the maps, the scale on which a reader judges them.
    """
    largest = float(np.abs(maps).max())
    max_error = float(errors.max())
    return {
        "reference": "float32", "windows_checked": int(errors.size),
        "max_abs_score_error": max_error, "mean_abs_score_error": float(errors.mean()),
        "max_abs_map_value": largest,
        "relative_error": max_error / largest if largest > 0 else None,
        "note": "measured on a sample of windows; a map value is a mean of window scores, "
                "so its error is at most the largest window-score error over all windows; "
                "relative_error = max_abs_score_error / max_abs_map_value",
    }


def _read_volume(volumes: np.ndarray | torch.Tensor, index: int) -> np.ndarray:
    volume = np.asarray(volumes[index], dtype=np.float32)
    if not np.isfinite(volume).all():
        raise InputDataError(f"volume {index} holds non-finite values", path="volumes")
    return volume


def _check_targets(targets: int | Sequence[int] | np.ndarray, n_volumes: int) -> np.ndarray:
    values = np.asarray(targets)
    if values.ndim > 1 or values.ndim == 1 and len(values) != n_volumes \
            or values.dtype.kind not in "iu":
        raise UsageError(f"targets must be one class index or one per volume ({n_volumes}), "
                         f"got {targets!r}", path="targets")
    return np.broadcast_to(values, (n_volumes,))


def _check_target(target: int, probabilities: torch.Tensor) -> int:
    n_classes = int(probabilities.shape[0])
    if not 0 <= target < n_classes:
        raise UsageError(f"target class index {target} is outside 0..{n_classes - 1}",
                         path="targets")
    return target


# --------------------------------------------------------------------------- sample choice


@dataclass(frozen=True)
class SampleSelection:
    """Held-out samples chosen to explain each class (see :func:`select_samples`).

    Attributes
    ----------
    classes : tuple
        Class labels, in the order of the probability columns.
    samples : dict
        Class -> indices of the chosen samples (highest p(true) first).
    folds : dict
        Class -> fold of each chosen sample.
    probabilities : dict
        Class -> p(true class) of each chosen sample.
    n_eligible : dict
        Class -> number of samples that qualified before the cap.
    n_held_out : dict
        Class -> number of samples of that class.
    threshold : float
    n_per_class : int
    """

    classes: tuple
    samples: dict[Any, np.ndarray]
    folds: dict[Any, np.ndarray]
    probabilities: dict[Any, np.ndarray]
    n_eligible: dict[Any, int]
    n_held_out: dict[Any, int]
    threshold: float
    n_per_class: int

    @property
    def empty(self) -> list:
        """Classes for which no sample qualifies."""
        return [label for label in self.classes if len(self.samples[label]) == 0]

    def reason(self, label: Any) -> str | None:
        """Why a class has no map (None when it has samples)."""
        if len(self.samples[label]):
            return None
        return (f"no held-out sample of class {label!r} was classified correctly with "
                f"p >= {self.threshold:g} ({self.n_held_out[label]} held-out samples of "
                f"that class)")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary for sidecars."""
        return {
            "threshold": self.threshold, "n_per_class": self.n_per_class,
            "classes": {str(label): {
                "samples": self.samples[label].tolist(),
                "folds": self.folds[label].tolist(),
                "p_true": [round(float(p), 6) for p in self.probabilities[label]],
                "n_eligible": self.n_eligible[label], "n_held_out": self.n_held_out[label],
                "empty_reason": self.reason(label)} for label in self.classes},
        }


def select_samples(folds: Sequence[Any] | np.ndarray, y_true: Sequence[Any] | np.ndarray,
                   probabilities: np.ndarray, classes: Sequence[Any] | None = None, *,
                   threshold: float = 0.75, n_per_class: int = 10) -> SampleSelection:
    """Choose the held-out samples whose occlusion maps explain each class.

    A sample qualifies when its own fold's model (which did not see it)
    classified it correctly with ``p(true class) >= threshold``. Up to
    ``n_per_class`` samples are kept per class, deterministically: highest
    ``p(true)`` first, ties by sample order. Classes where none qualifies are
    listed in ``empty`` with a :meth:`~SampleSelection.reason` to write in the
    outputs instead of a map.

    Parameters
    ----------
    folds : array-like, shape (n,)
        Fold (test fold) of each sample.
    y_true : array-like, shape (n,)
        True class of each sample (labels of ``classes``).
    probabilities : ndarray, shape (n, n_classes)
        Held-out predicted probabilities, columns in the order of ``classes``.
        The caller guarantees each row comes from the model of the sample's fold.
    classes : sequence, optional
        Class labels of the columns; default ``0..n_classes-1``.
    threshold : float
        Minimum probability of the true class (default .75, seed 003).
    n_per_class : int
        Samples kept per class at most (default 10, seed 003).

    Returns
    -------
    SampleSelection

    Examples
    --------
    >>> probabilities = np.array([[.9, .1], [.6, .4], [.2, .8], [.95, .05]])
    >>> selection = select_samples([0, 0, 1, 1], ["a", "a", "a", "a"], probabilities,
    ...                            classes=["a", "b"], n_per_class=1)
    >>> selection.samples["a"].tolist(), selection.empty
    ([3], ['b'])
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 2 or probabilities.shape[1] < 2:
        raise InputDataError(f"probabilities must be shaped (n_samples, n_classes), got "
                             f"{probabilities.shape}", path="probabilities")
    if not np.isfinite(probabilities).all():
        raise InputDataError("probabilities hold non-finite values", path="probabilities")
    n_samples, n_classes = probabilities.shape
    folds = np.asarray(folds)
    y_true = np.asarray(y_true)
    if folds.shape != (n_samples,) or y_true.shape != (n_samples,):
        raise InputDataError(f"folds {folds.shape} and y_true {y_true.shape} must both hold "
                             f"one value per row of probabilities ({n_samples})",
                             path="y_true")
    labels = tuple(range(n_classes)) if classes is None else tuple(classes)
    if len(labels) != n_classes:
        raise UsageError(f"{len(labels)} classes given for {n_classes} probability columns",
                         path="classes")
    if not 0.0 <= threshold <= 1.0:
        raise UsageError(f"threshold must be a probability, got {threshold}",
                         path="threshold")
    if int(n_per_class) != n_per_class or n_per_class < 1:
        raise UsageError(f"n_per_class must be a positive integer, got {n_per_class}",
                         path="n_per_class")
    position = {label: index for index, label in enumerate(labels)}
    unknown = [label for label in dict.fromkeys(y_true.tolist()) if label not in position]
    if unknown:
        raise InputDataError(f"y_true holds labels that are not classes: {unknown}",
                             path="y_true", fix=f"classes are {list(labels)}")
    true_index = np.array([position[label] for label in y_true.tolist()], dtype=int)
    p_true = probabilities[np.arange(n_samples), true_index]
    eligible = (probabilities.argmax(axis=1) == true_index) & (p_true >= threshold)

    samples, chosen_folds, chosen_p, n_eligible, n_held_out = {}, {}, {}, {}, {}
    for index, label in enumerate(labels):
        candidates = np.flatnonzero(eligible & (true_index == index))
        order = candidates[np.lexsort((candidates, -p_true[candidates]))]
        kept = order[:int(n_per_class)]
        samples[label] = kept
        chosen_folds[label] = folds[kept]
        chosen_p[label] = p_true[kept]
        n_eligible[label] = len(candidates)
        n_held_out[label] = int((true_index == index).sum())
    return SampleSelection(labels, samples, chosen_folds, chosen_p, n_eligible, n_held_out,
                           float(threshold), int(n_per_class))


# --------------------------------------------------------------------------- maps per class


@dataclass(frozen=True)
class ClassOcclusionMaps:
    """Mean occlusion map per class (see :func:`class_occlusion_maps`).

    Attributes
    ----------
    maps : dict
        Class -> float32 map shaped like the volumes (0 outside the mask), or
        None when no sample qualified (see ``empty``).
    n_samples : dict
        Class -> number of samples averaged.
    empty : dict
        Class -> reason, for classes without a map.
    info : dict
        Occlusion parameters and engine facts (per fold), and the selection.
    """

    maps: dict[Any, np.ndarray | None]
    n_samples: dict[Any, int]
    empty: dict[Any, str]
    info: dict[str, Any]


def class_occlusion_maps(models: Sequence[nn.Module] | Mapping[Any, nn.Module],
                         volumes: np.ndarray | torch.Tensor, selection: SampleSelection, *,
                         mask: np.ndarray | None = None,
                         window: int | Sequence[int] = DEFAULT_WINDOW,
                         stride: int | Sequence[int] | None = None, baseline: float = 0.0,
                         batch_size: int | None = None, method: Method = "incremental",
                         precision: Precision = "float32") -> ClassOcclusionMaps:
    """Per-class occlusion maps: the mean of the maps of each class's selected samples.

    Every sample is occluded with the model of its own fold (the one that
    held it out), with its true class as the target.

    Parameters
    ----------
    models : sequence or mapping of torch.nn.Module
        Fold -> trained model (a list is indexed by fold number).
    volumes : ndarray or Tensor, shape (n_samples, X, Y, Z)
        All samples, indexed as in :func:`select_samples`; only the chosen
        ones are read.
    selection : SampleSelection
        From :func:`select_samples`.
    mask, window, stride, baseline, batch_size, method, precision
        As in :func:`occlusion_maps`.

    Returns
    -------
    ClassOcclusionMaps

    Examples
    --------
    >>> from bids_affect.models.cnn3d import create_architecture
    >>> models = [create_architecture("deepemotion", 2, (8, 8, 8)) for _ in range(2)]
    >>> volumes = np.random.default_rng(0).normal(size=(4, 8, 8, 8)).astype(np.float32)
    >>> selection = select_samples([0, 0, 1, 1], [0, 1, 0, 1],
    ...                            np.array([[.9, .1], [.5, .5], [.8, .2], [.3, .7]]))
    >>> result = class_occlusion_maps(models, volumes, selection, window=4)
    >>> result.n_samples, list(result.empty)
    ({0: 2, 1: 0}, [1])
    """
    volumes = _check_volumes(volumes)
    sums: dict[Any, np.ndarray] = {}
    runs: list[dict[str, Any]] = []
    by_fold: dict[Any, list[tuple[int, int]]] = {}
    for class_index, label in enumerate(selection.classes):
        for sample, fold in zip(selection.samples[label], selection.folds[label]):
            by_fold.setdefault(fold.item() if hasattr(fold, "item") else fold, []).append(
                (int(sample), class_index))
    for fold, members in by_fold.items():
        model = _fold_model(models, fold)
        samples = [sample for sample, _ in members]
        result = occlusion_maps(model, np.stack([np.asarray(volumes[s]) for s in samples]),
                                [class_index for _, class_index in members], mask=mask,
                                window=window, stride=stride, baseline=baseline,
                                batch_size=batch_size, method=method, precision=precision)
        for (_, class_index), sample_map in zip(members, result.maps):
            label = selection.classes[class_index]
            sums[label] = sums.get(label, 0.0) + sample_map.astype(np.float64)
        runs.append({"fold": fold, "samples": samples, **result.info})
    maps: dict[Any, np.ndarray | None] = {}
    n_samples = {label: len(selection.samples[label]) for label in selection.classes}
    for label in selection.classes:
        maps[label] = (sums[label] / n_samples[label]).astype(np.float32) \
            if n_samples[label] else None
    empty = {label: selection.reason(label) for label in selection.empty}
    return ClassOcclusionMaps(maps, n_samples, empty,  # type: ignore[arg-type]
                              {"runs": runs, "selection": selection.to_dict()})


def _fold_model(models: Sequence[nn.Module] | Mapping[Any, nn.Module], fold: Any) -> nn.Module:
    if isinstance(models, Mapping):
        known = list(models)
        found = fold in models
    else:  # a list is indexed by fold number (no negative indices)
        known = list(range(len(models)))
        found = isinstance(fold, (int, np.integer)) and 0 <= fold < len(models)
    if not found:
        raise UsageError(f"no model for fold {fold!r}", path="models",
                         fix=f"give one model per fold; folds with a model: {known}")
    return models[fold]  # type: ignore[index]


# --------------------------------------------------------------------------- top voxels

#: Columns of the top-voxel table (DESIGN.md, "Clarifications": Top voxels).
TOP_VOXEL_COLUMNS = ("rank", "i", "j", "k", "x", "y", "z", "value", "atlas", "region")

#: ``region`` of voxels in data that are not in a standard space.
NATIVE_SPACE_REGION = "native space: no atlas"


def _top_indices(stat_map: np.ndarray, mask: np.ndarray | None, k: int) -> np.ndarray:
    """Flat indices of the ``k`` largest in-mask values: largest first, ties by voxel order."""
    values = np.asarray(stat_map, dtype=np.float64)
    if values.ndim != 3:
        raise InputDataError(f"the map must be 3D, got shape {values.shape}", path="stat_map")
    inside = np.ones(values.shape, bool) if mask is None else _check_mask(mask, values.shape)
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
    flat = _top_indices(stat_map, mask, k)
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
    region = _check_mask(region, stat_map.shape, "region")
    inside = np.ones(stat_map.shape, bool) if mask is None else _check_mask(mask,
                                                                           stat_map.shape)
    region_in_mask = region & inside
    if not region_in_mask.any():
        raise InputDataError("the region holds no in-mask voxel", path="region")
    k = int(region_in_mask.sum()) if k is None else k
    top = np.zeros(stat_map.size, bool)
    top[_top_indices(stat_map, inside, k)] = True
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
    inside = np.ones(stat_map.shape, bool) if mask is None else _check_mask(mask,
                                                                           stat_map.shape)
    top = np.zeros(stat_map.size, bool)
    top[_top_indices(stat_map, inside, k)] = True
    region = labels.ravel()[inside.ravel()]
    hits = np.bincount(region, weights=top[inside.ravel()])
    sizes = np.bincount(region)
    present = np.flatnonzero(sizes)
    present = present[present > 0]
    return pd.Series(hits[present] / sizes[present], index=present, name="share")


# --------------------------------------------------------------------------- UMAP

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
                  min_dist: float = UMAP_MIN_DIST) -> dict[str, Any]:
    """The UMAP parameters :func:`umap_embeddings` uses for ``n_points`` voxels (for sidecars).

    ``n_neighbors`` is clipped to ``n_points - 1`` (at least 2); spectral
    initialisation needs more points than neighbours + 2, random is used below.

    Examples
    --------
    >>> settings = umap_settings(12)
    >>> settings["n_neighbors"], settings["n_neighbors_used"], settings["init"]
    (30, 11, 'random')
    """
    neighbours = int(max(2, min(n_neighbors, n_points - 1)))
    return {"n_neighbors": int(n_neighbors), "n_neighbors_used": neighbours,
            "min_dist": float(min_dist), "n_components": 2, "metric": "euclidean",
            "init": "spectral" if n_points > neighbours + 2 else "random"}


def _embed(features: np.ndarray, n_neighbors: int, min_dist: float, seed: int) -> np.ndarray:
    """2-D UMAP of ``features`` with :func:`umap_settings`."""
    import umap

    settings = umap_settings(len(features), n_neighbors, min_dist)
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
        for rank, voxel in enumerate(_top_indices(maps[label], mask, k)):
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
