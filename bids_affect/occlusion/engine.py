"""The occlusion engine: maps of one classifier over volumes, incremental and batched.

See :mod:`bids_affect.occlusion` for the method and its equality with captum.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bids_affect._utils.validation import check_choice
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


def check_volumes(volumes: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    shape = tuple(volumes.shape)
    if len(shape) == 5 and shape[1] == 1:
        volumes = volumes[:, 0]
    elif len(shape) != 4:
        raise InputDataError(f"volumes must be shaped (n, X, Y, Z) or (n, 1, X, Y, Z), got "
                             f"{shape}", path="volumes")
    if volumes.shape[0] == 0:
        raise InputDataError("no volumes given", path="volumes")
    return volumes


def check_mask(mask: np.ndarray | None, shape: Triple,
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
    method = check_choice(method, "method", ("incremental", "plain"))  # type: ignore
    precision = check_choice(precision, "precision", ("float32", "bfloat16"))  # type: ignore
    volumes = check_volumes(volumes)
    n_volumes = int(volumes.shape[0])
    grid = window_grid(tuple(volumes.shape[1:]), window, stride)
    mask = check_mask(mask, grid.shape)
    target_list = _check_targets(targets, n_volumes)
    if batch_size is not None and (int(batch_size) != batch_size or batch_size < 1):
        raise UsageError(f"batch_size must be a positive integer, got {batch_size!r}",
                         path="batch_size")
    baseline = float(baseline)
    device = _model_device(model)
    touching = np.ones(grid.counts, bool) if mask is None else grid.window_sums(mask) > 0

    positions, n_unchanged = _windows_to_score(volumes, grid, touching, baseline)

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
                scores = _window_scores(engine, active, target, grid.counts, batch_size,
                                        progress)
                if exact_plan is not None and len(active):
                    exact = _VolumeEngine(exact_plan, tables, volume, baseline)
                    check_errors.append(_reduced_precision_errors(
                        exact, scores, active, target, max(1, N_PRECISION_CHECK // n_volumes)))
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


def _windows_to_score(volumes: np.ndarray | torch.Tensor, grid: WindowGrid,
                      touching: np.ndarray, baseline: float) -> tuple[list[np.ndarray], int]:
    """Per volume, the window positions whose occlusion changes it (touching the mask).

    A window whose voxels all equal the baseline already scores 0: it needs no
    forward pass. Volumes are read one at a time. Returns the positions and how
    many windows were left out that way.
    """
    positions, n_unchanged = [], 0
    for index in range(int(volumes.shape[0])):
        changes = grid.window_sums(_read_volume(volumes, index) != baseline) > 0
        positions.append(np.argwhere(touching & changes))
        n_unchanged += int((touching & ~changes).sum())
    return positions, n_unchanged


def _window_scores(engine: _VolumeEngine, active: np.ndarray, target: int,
                   counts: Sequence[int], batch_size: int, progress: Progress) -> np.ndarray:
    """The score of every window of one volume (0 for windows not in ``active``), in batches."""
    scores = np.zeros(tuple(counts), np.float64)
    for chunk in range(0, len(active), batch_size):
        batch = active[chunk:chunk + batch_size]
        scores[tuple(batch.T)] = engine.scores(batch, target)
        progress.update(len(batch))
    return scores


def _reduced_precision_errors(exact: _VolumeEngine, scores: np.ndarray, active: np.ndarray,
                              target: int, n_checked: int) -> np.ndarray:
    """|bfloat16 - float32| window scores on ``n_checked`` windows spread over ``active``."""
    chosen = active[np.unique(np.linspace(0, len(active) - 1, n_checked).round().astype(int))]
    return np.abs(scores[tuple(chosen.T)] - exact.scores(chosen, target))


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
