"""Training loop of the 3D CNNs: devices, mini-batches, early stopping, checkpoints, speed.

The pieces follow pytorch/examples (``imagenet/main.py``): :func:`train_one_epoch`
and :func:`evaluate` receive the model, the batches, the loss and the device
explicitly; evaluation runs in ``eval()`` under ``torch.inference_mode()``.
:func:`fit_network` strings them together: AdamW, a cosine learning-rate schedule
over the epochs, class weights, mini-batches drawn by index from a float32 array
or memory map of shape ``(n, X, Y, Z)`` (no DataLoader workers: one process reads
the memory map, shuffled by a seeded generator), early stopping on an inner
validation split, and a checkpoint after every epoch.

Resuming
    A checkpoint holds everything the next epoch depends on: model, optimizer and
    scheduler states, the torch and NumPy random states, the best weights and
    the early-stopping counters, and the history. It also holds a fingerprint of
    the fit (options, seed, data shape, labels, split and a hash of a few
    samples). :func:`fit_network` given a checkpoint path that holds a
    checkpoint of the same fit continues after its last epoch; a run killed
    after epoch *k* thus ends with the same weights, bit for bit, as a run
    never interrupted (same thread count). A checkpoint of another fit is
    ignored and overwritten.

Speed on CPU (``neuro120fp``, 80x80x35 volumes, batch 16, 2 threads; measured by
``benchmarks/bench_cnn_throughput.py``, figures in ``benchmarks/results/cnn_throughput.json``)
    Most of the time goes into memory traffic at full resolution: every
    activation of the first layers is a tensor of 0.5-1 GB. The C library
    hands such blocks back to the kernel when they are freed and the next step
    page-faults them in again: more than half of the CPU time went to that.
    :func:`reuse_freed_memory` keeps freed memory in the process during
    training: 2.1-2.5x the plain loop's throughput, results unchanged bit for
    bit, but 4 GB more peak memory. ``torch.compile`` fuses batch norm and
    activations: 1.1-1.2x alone, 0-20% more on top of memory reuse (within
    the noise of a shared machine), and it brings the peak memory back to the
    plain loop's; results equal up to rounding; about 35 s of compilation per
    batch size, so ``compile="auto"`` compiles only fits long enough to repay
    it. Both together (the defaults): 2.3-2.7x. ``channels_last`` (0.9-1.0x)
    and bf16 autocast (0.4x: this CPU has no bf16 arithmetic) are options
    only; one inter-op thread instead of two changes nothing.

Randomness
    :func:`fit_network` works inside ``torch.random.fork_rng()``: it seeds
    torch's global generator there (weight initialisation, dropout) and the
    caller's generator state is restored afterwards. Shuffling uses its own
    ``numpy.random.Generator``. Global random states are never changed.

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> X = rng.normal(size=(24, 8, 8, 8)).astype(np.float32)
>>> y = np.tile([0, 1], 12)
>>> options = TrainingOptions(architecture="deepemotion", epochs=2, compile=False)
>>> result = fit_network(X, y, np.arange(16), np.arange(18, 24), n_classes=2,
...                      options=options, seed=0)
>>> len(result.history), result.model.training
(2, False)
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from bids_affect._utils.docs import fill_doc
from bids_affect._utils.validation import check_choice, check_int, check_number
from bids_affect.exceptions import InputDataError, UsageError
from bids_affect.io.derivatives import write_torch
from bids_affect.models.cnn3d import create_architecture, list_architectures
from bids_affect.models.runtime import (
    DEVICES,
    is_compile_error,
    prepare_model,
    resolve_device,
    reuse_freed_memory,
    torch_threads,
)
from bids_affect.progress import Progress

LOGGER = logging.getLogger(__name__)

#: Values of the ``precision`` option: float32, or bfloat16 autocast.
PRECISIONS = ("fp32", "bf16")
#: Values of the ``compile`` option besides True and False.
COMPILE_CHOICES = ("auto", True, False)
#: ``compile="auto"`` compiles when epochs x training samples x voxels reaches this:
#: about 5 minutes of training on 2 CPU cores, against about a minute of compilation.
COMPILE_AUTO_MIN_VOXEL_PASSES = 2e8

CHECKPOINT_FORMAT = "bids_affect.cnn_checkpoint"
CHECKPOINT_VERSION = 1

# --------------------------------------------------------------------------- options


@fill_doc
@dataclass(frozen=True)
class TrainingOptions:
    """How a network is trained; every field has the estimator's default.

    Parameters
    ----------
    %(training_options)s

    Examples
    --------
    >>> TrainingOptions(epochs=3).check().batch_size
    16
    """

    architecture: str = "neuro120fp"
    epochs: int = 30
    batch_size: int = 16
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    class_weight: str | None | tuple[float, ...] = "balanced"
    patience: int | None = 5
    device: str = "auto"
    precision: str = "fp32"
    channels_last: bool = False
    compile: str | bool = "auto"
    reuse_memory: bool = True
    num_threads: int | None = None

    def check(self) -> TrainingOptions:
        """Raise :class:`UsageError` naming the first invalid option; return self."""
        if self.architecture not in list_architectures():
            raise UsageError(f"unknown architecture {self.architecture!r}", path="architecture",
                             fix=f"use one of {', '.join(list_architectures())}")
        check_int(self.epochs, "epochs", minimum=1)
        check_int(self.batch_size, "batch_size", minimum=1)
        check_number(self.learning_rate, "learning_rate", positive=True)
        check_number(self.weight_decay, "weight_decay", minimum=0)
        if not (self.class_weight in ("balanced", None) or _is_weight_sequence(self.class_weight)):
            raise UsageError(f"must be 'balanced', None or one positive weight per class, "
                             f"got {self.class_weight!r}", path="class_weight")
        if self.patience is not None:
            check_int(self.patience, "patience", minimum=1)
        check_choice(self.device, "device", DEVICES)
        check_choice(self.precision, "precision", PRECISIONS)
        check_choice(self.compile, "compile", COMPILE_CHOICES)
        for name in ("channels_last", "reuse_memory"):
            if not isinstance(getattr(self, name), bool | np.bool_):
                raise UsageError(f"must be True or False, got {getattr(self, name)!r}",
                                 path=name)
        if self.num_threads is not None:
            check_int(self.num_threads, "num_threads", minimum=1)
        return self

    def use_compile(self, n_train: int, input_shape: Sequence[int]) -> bool:
        """Whether a fit on ``n_train`` samples of ``input_shape`` compiles the model.

        Examples
        --------
        >>> TrainingOptions().use_compile(300, (80, 80, 35))
        True
        >>> TrainingOptions().use_compile(60, (12, 14, 12))
        False
        """
        if self.compile != "auto":
            return bool(self.compile)
        voxel_passes = self.epochs * n_train * math.prod(int(n) for n in input_shape)
        return voxel_passes >= COMPILE_AUTO_MIN_VOXEL_PASSES

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The autocast dtype of ``precision`` (None for float32)."""
        return torch.bfloat16 if self.precision == "bf16" else None


def _is_weight_sequence(value: Any) -> bool:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence | np.ndarray):
        return False
    weights = np.asarray(value, dtype=float)
    return weights.ndim == 1 and bool(np.all(np.isfinite(weights) & (weights > 0)))


# --------------------------------------------------------------------------- batches


class VolumeBatches:
    """Mini-batches of volumes read by index from an array or memory map.

    Parameters
    ----------
    X : numpy.ndarray or numpy.memmap
        Volumes, shape ``(n, X, Y, Z)``, float32 preferred (others are cast per
        batch).
    indices : array of int
        The samples to serve.
    batch_size : int
        Samples per batch; the last batch may be smaller. When shuffling
        (training), a last batch of one sample joins the batch before it: batch
        norm cannot train on a single sample whose feature maps are 1x1x1.
    y : array of int, optional
        Class codes ``0..K-1`` of all ``n`` samples; batches then carry targets.
    generator : numpy.random.Generator, optional
        When given, each iteration serves the samples in a new random order
        drawn from it; otherwise in the order of ``indices``.
    channels_last : bool
        Give the inputs the ``channels_last_3d`` memory format.

    Yields
    ------
    inputs : torch.Tensor
        ``(b, 1, X, Y, Z)`` float32, on the CPU.
    targets : torch.Tensor or None
        ``(b,)`` int64 class codes, or None without ``y``.

    Examples
    --------
    >>> X = np.zeros((5, 4, 4, 4), dtype=np.float32)
    >>> [tuple(x.shape) for x, _ in VolumeBatches(X, np.arange(5), batch_size=2)]
    [(2, 1, 4, 4, 4), (2, 1, 4, 4, 4), (1, 1, 4, 4, 4)]
    >>> shuffled = VolumeBatches(X, np.arange(5), 2, generator=np.random.default_rng(0))
    >>> [len(x) for x, _ in shuffled]
    [2, 3]
    """

    def __init__(self, X: np.ndarray, indices: np.ndarray, batch_size: int,
                 y: np.ndarray | None = None, generator: np.random.Generator | None = None,
                 channels_last: bool = False):
        self.X = X
        self.indices = np.asarray(indices, dtype=np.intp)
        self.batch_size = int(batch_size)
        self.y = None if y is None else np.asarray(y, dtype=np.int64)
        self.generator = generator
        self.channels_last = channels_last

    def _starts(self) -> list[int]:
        starts = list(range(0, len(self.indices), self.batch_size))
        if self.generator is not None and len(starts) > 1 and \
                len(self.indices) - starts[-1] == 1:
            starts.pop()
        return starts

    def __len__(self) -> int:
        return len(self._starts())

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        order = (self.indices if self.generator is None
                 else self.generator.permutation(self.indices))
        starts = self._starts()
        for start, stop in zip(starts, [*starts[1:], len(order)]):
            batch = order[start:stop]
            inputs = torch.from_numpy(np.ascontiguousarray(self.X[batch], dtype=np.float32))
            inputs = inputs.unsqueeze(1)
            if self.channels_last:
                inputs = inputs.contiguous(memory_format=torch.channels_last_3d)
            targets = None if self.y is None else torch.from_numpy(self.y[batch])
            yield inputs, targets


# --------------------------------------------------------------------------- one epoch


def train_one_epoch(model: nn.Module, batches: VolumeBatches, loss_fn: nn.Module,
                    optimizer: torch.optim.Optimizer, device: torch.device, *,
                    autocast_dtype: torch.dtype | None = None) -> float:
    """Train ``model`` for one pass over ``batches``; return the mean training loss.

    Parameters
    ----------
    model : torch.nn.Module
        The network (or its compiled wrapper), already on ``device``.
    batches : VolumeBatches
        Mini-batches with targets.
    loss_fn : torch.nn.Module
        Loss of the logits (computed in float32) and the targets.
    optimizer : torch.optim.Optimizer
        Stepped once per batch.
    device : torch.device
        Where ``model`` lives.
    autocast_dtype : torch.dtype, optional
        Run the forward pass under ``torch.autocast`` with this dtype.

    Examples
    --------
    >>> net = nn.Sequential(nn.Flatten(), nn.Linear(8, 2))
    >>> X = np.ones((4, 2, 2, 2), dtype=np.float32)
    >>> loss = train_one_epoch(net, VolumeBatches(X, np.arange(4), 2, y=np.array([0, 1, 0, 1])),
    ...                        nn.CrossEntropyLoss(), torch.optim.SGD(net.parameters(), 0.1),
    ...                        torch.device("cpu"))
    >>> loss > 0
    True
    """
    model.train()
    total, count = 0.0, 0
    for inputs, targets in batches:
        inputs = inputs.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        with _autocast(device, autocast_dtype):
            logits = model(inputs)
        loss = loss_fn(logits.float(), targets)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(targets)
        count += len(targets)
    return total / max(count, 1)


def _autocast(device: torch.device,
              dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


class Evaluation(NamedTuple):
    """Outputs of :func:`evaluate`."""

    #: Loss of all samples together (``loss_fn`` on the concatenated logits), or NaN.
    loss: float
    #: Logits, shape ``(n, n_classes)``, float32.
    logits: np.ndarray
    #: Class codes, shape ``(n,)``, or None when the batches carry none.
    targets: np.ndarray | None

    @property
    def balanced_accuracy(self) -> float:
        """Mean recall over the classes present in ``targets`` (NaN without targets)."""
        if self.targets is None or not len(self.targets):
            return float("nan")
        predicted = self.logits.argmax(axis=1)
        recalls = [np.mean(predicted[self.targets == k] == k) for k in np.unique(self.targets)]
        return float(np.mean(recalls))


def forward_batches(model: nn.Module, batches: VolumeBatches, device: torch.device, *,
                    method: str = "forward",
                    autocast_dtype: torch.dtype | None = None) -> np.ndarray:
    """Outputs of ``model`` (or of ``model.<method>``) over all batches, as float32.

    The model is put in ``eval()`` mode and run under ``torch.inference_mode()``.

    Examples
    --------
    >>> net = nn.Sequential(nn.Flatten(), nn.Linear(8, 3))
    >>> forward_batches(net, VolumeBatches(np.ones((5, 2, 2, 2)), np.arange(5), 2),
    ...                 torch.device("cpu")).shape
    (5, 3)
    """
    model.eval()
    function = model if method == "forward" else getattr(model, method)
    outputs = []
    with torch.inference_mode():
        for inputs, _ in batches:
            with _autocast(device, autocast_dtype):
                output = function(inputs.to(device, non_blocking=True))
            outputs.append(output.float().cpu().numpy())
    if not outputs:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(outputs)


def evaluate(model: nn.Module, batches: VolumeBatches, device: torch.device,
             loss_fn: nn.Module | None = None, *,
             autocast_dtype: torch.dtype | None = None) -> Evaluation:
    """Logits of ``model`` on ``batches`` in eval mode, and their loss.

    Parameters
    ----------
    model : torch.nn.Module
        The network, on ``device``.
    batches : VolumeBatches
        Mini-batches (with targets for a loss).
    device : torch.device
        Where ``model`` lives.
    loss_fn : torch.nn.Module, optional
        Applied once to all logits and targets (so a class-weighted loss is
        weighted over the whole set, not per batch).

    Examples
    --------
    >>> net = nn.Sequential(nn.Flatten(), nn.Linear(8, 2))
    >>> X, y = np.ones((4, 2, 2, 2), dtype=np.float32), np.array([0, 1, 0, 1])
    >>> result = evaluate(net, VolumeBatches(X, np.arange(4), 3, y=y), torch.device("cpu"),
    ...                   nn.CrossEntropyLoss())
    >>> result.logits.shape, result.balanced_accuracy
    ((4, 2), 0.5)
    """
    if batches.generator is not None:
        raise ValueError("evaluate needs batches served in a fixed order (no generator)")
    logits = forward_batches(model, batches, device, autocast_dtype=autocast_dtype)
    targets = None if batches.y is None else batches.y[batches.indices]
    loss = float("nan")
    if loss_fn is not None and targets is not None and len(targets):
        with torch.inference_mode():
            loss = float(loss_fn(torch.from_numpy(logits).to(device),
                                 torch.from_numpy(targets).to(device)))
    return Evaluation(loss, logits, targets)


# --------------------------------------------------------------------------- split and weights


def blocked_validation_split(n_samples: int, groups: Sequence[Any] | np.ndarray | None = None,
                             validation_fraction: float = 0.15,
                             validation_gap: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Inner train/validation split that is blocked in time.

    Samples are taken to be in temporal order within each group (a run).
    From each group the last ``ceil(validation_fraction * n_group)`` samples
    are held out for validation, and the ``validation_gap`` samples before
    them are left out of both sets, so no validation volume neighbours a
    training volume of its run (the BOLD response lasts several volumes).
    Without ``groups`` all samples form one group.

    Parameters
    ----------
    n_samples : int
        Number of samples.
    groups : array-like of shape (n_samples,), optional
        Run (or any temporal block) of each sample; samples of a group need not
        be contiguous, only in temporal order.
    validation_fraction : float
        Fraction of each group held out, in [0, 1); 0 gives no validation set.
    validation_gap : int
        Samples dropped before each held-out block.

    Returns
    -------
    train, validation : numpy.ndarray of int
        Sorted sample indices.

    Raises
    ------
    UsageError
        For a fraction outside [0, 1) or a negative gap.
    InputDataError
        When no training sample is left.

    Examples
    --------
    >>> train, val = blocked_validation_split(20, validation_fraction=0.2, validation_gap=2)
    >>> train.tolist(), val.tolist()
    ([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13], [16, 17, 18, 19])
    >>> train, val = blocked_validation_split(8, groups=[1, 1, 1, 1, 2, 2, 2, 2],
    ...                                       validation_fraction=0.25, validation_gap=1)
    >>> train.tolist(), val.tolist()
    ([0, 1, 4, 5], [3, 7])
    """
    if not (isinstance(validation_fraction, int | float | np.floating)
            and not isinstance(validation_fraction, bool) and 0 <= validation_fraction < 1):
        raise UsageError(f"must be a number in [0, 1), got {validation_fraction!r}",
                         path="validation_fraction")
    check_int(validation_gap, "validation_gap", minimum=0)
    n_samples = int(n_samples)
    if groups is None:
        codes = np.zeros(n_samples, dtype=np.intp)
    else:
        groups = np.asarray(groups)
        if groups.shape != (n_samples,):
            raise InputDataError(f"groups has shape {groups.shape}, expected ({n_samples},)",
                                 path="groups", fix="give one group (run) per sample")
        codes = np.unique(groups, return_inverse=True)[1].reshape(-1)
    train, validation = [], []
    for code in np.unique(codes):
        positions = np.flatnonzero(codes == code)
        # Rounded first: 0.1 * 30 is 3.0000000000000004 in floating point.
        n_held_out = math.ceil(round(validation_fraction * len(positions), 9))
        gap = validation_gap if n_held_out else 0
        train.append(positions[:max(0, len(positions) - n_held_out - gap)])
        validation.append(positions[len(positions) - n_held_out:])
    train_indices = np.sort(np.concatenate(train or [np.zeros(0, np.intp)]))
    val_indices = np.sort(np.concatenate(validation or [np.zeros(0, np.intp)]))
    if len(train_indices) < 2:
        raise InputDataError(
            f"{n_samples} samples leave {len(train_indices)} for training after holding out "
            f"validation_fraction={validation_fraction} of each run and a gap of "
            f"validation_gap={validation_gap} samples", path="X",
            fix="give more samples, or lower validation_fraction or validation_gap "
                "(validation_fraction=0 trains without early stopping)")
    return train_indices, val_indices


def balanced_class_weights(codes: np.ndarray, n_classes: int) -> np.ndarray:
    """Weights ``n / (n_classes * n_k)`` of classes ``0..n_classes-1`` (scikit-learn's rule).

    Raises :class:`InputDataError` when a class has no sample.

    Examples
    --------
    >>> balanced_class_weights(np.array([0, 0, 0, 1]), 2).tolist()
    [0.6666666666666666, 2.0]
    """
    counts = np.bincount(np.asarray(codes, dtype=np.intp), minlength=n_classes)[:n_classes]
    if np.any(counts == 0):
        raise InputDataError(f"class codes {np.flatnonzero(counts == 0).tolist()} have no "
                             f"training sample", path="y",
                             fix="give samples of every class to the training set")
    return counts.sum() / (n_classes * counts)


def _class_weight_tensor(class_weight: str | None | Sequence[float], train_codes: np.ndarray,
                         n_classes: int) -> torch.Tensor | None:
    if class_weight is None:
        return None
    if isinstance(class_weight, str):
        weights = balanced_class_weights(train_codes, n_classes)
    else:
        weights = np.asarray(class_weight, dtype=float)
        if weights.shape != (n_classes,):
            raise UsageError(f"has {weights.size} weights for {n_classes} classes",
                             path="class_weight", fix="give one weight per class")
    return torch.tensor(weights, dtype=torch.float32)


# --------------------------------------------------------------------------- checkpoints


def fit_fingerprint(X: np.ndarray, y: np.ndarray, train_indices: np.ndarray,
                    val_indices: np.ndarray, n_classes: int, options: TrainingOptions,
                    seed: int | None, *, device_type: str, compiled: bool,
                    n_hashed_samples: int = 8) -> str:
    """A hash identifying one fit: what it learns from and every option that changes it.

    Hashes the options (minus ``reuse_memory`` and ``num_threads``, which
    change no result, and ``device``/``compile``, replaced by what they
    resolved to), the seed (None: "unseeded", so a resumed unseeded fit
    takes its seed from the checkpoint), the data shape and dtype, the class
    codes, the split, and the bytes of ``n_hashed_samples`` evenly spaced
    samples (cheap on a memory map, yet any re-cleaned data changes them).

    Examples
    --------
    >>> X = np.zeros((6, 4, 4, 4), dtype=np.float32)
    >>> y = np.array([0, 1] * 3)
    >>> args = (X, y, np.arange(4), np.arange(4, 6), 2, TrainingOptions(), 0)
    >>> a = fit_fingerprint(*args, device_type="cpu", compiled=False)
    >>> a == fit_fingerprint(*args, device_type="cpu", compiled=True)
    False
    """
    settings = dataclasses.asdict(options)
    for name in ("reuse_memory", "num_threads", "device", "compile"):
        settings.pop(name)
    settings.update(device_type=device_type, compiled=bool(compiled), n_classes=int(n_classes),
                    seed="unseeded" if seed is None else int(seed),
                    shape=list(X.shape), dtype=str(X.dtype), format=CHECKPOINT_VERSION)
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for array in (y, train_indices, val_indices):
        digest.update(np.ascontiguousarray(array, dtype=np.int64).tobytes())
        digest.update(b"|")
    for index in np.unique(np.linspace(0, len(X) - 1, n_hashed_samples).astype(np.intp)):
        digest.update(np.ascontiguousarray(X[index]).tobytes())
    return digest.hexdigest()


def load_checkpoint(path: str | os.PathLike, fingerprint: str | None = None
                    ) -> dict[str, Any] | None:
    """The checkpoint at ``path``, or None when absent, unreadable or of another fit.

    Parameters
    ----------
    path : path-like
        Checkpoint file written by :func:`fit_network`.
    fingerprint : str, optional
        Accept only a checkpoint of the fit with this :func:`fit_fingerprint`.

    Examples
    --------
    >>> load_checkpoint("no-such-checkpoint.pt") is None
    True
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a foreign or damaged file: start afresh, never crash
        LOGGER.warning("%s: unreadable checkpoint ignored (%s)", path, err)
        return None
    if not (isinstance(checkpoint, dict) and checkpoint.get("format") == CHECKPOINT_FORMAT
            and checkpoint.get("version") == CHECKPOINT_VERSION):
        LOGGER.warning("%s: not a bids_affect CNN checkpoint; ignored", path)
        return None
    if fingerprint is not None and checkpoint.get("fingerprint") != fingerprint:
        LOGGER.info("%s: checkpoint of another fit (options or data differ); starting afresh",
                    path)
        return None
    return checkpoint


def _save_checkpoint(path: str | os.PathLike, checkpoint: Mapping[str, Any]) -> None:
    write_torch(Path(path), dict(checkpoint))


# --------------------------------------------------------------------------- fitting


def _cpu_copy(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().to("cpu", copy=True) for name, tensor in state.items()}


@dataclass
class EarlyStopping:
    """Track the validation loss; keep the best weights; stop after ``patience`` bad epochs.

    Examples
    --------
    >>> stopper = EarlyStopping(patience=1)
    >>> net = nn.Linear(1, 1)
    >>> stopper.update(0.5, net, epoch=1); stopper.update(0.7, net, epoch=2)
    >>> stopper.best_epoch, stopper.stopped
    (1, True)
    """

    patience: int | None
    best_loss: float = math.inf
    best_epoch: int | None = None
    best_state: dict[str, torch.Tensor] | None = None
    epochs_without_improvement: int = 0
    stopped: bool = False

    def update(self, loss: float, model: nn.Module, epoch: int) -> None:
        """Record the validation ``loss`` of ``epoch`` (1-based) with ``model``'s weights."""
        if loss < self.best_loss:  # NaN never improves
            self.best_loss, self.best_epoch = float(loss), int(epoch)
            self.best_state = _cpu_copy(model.state_dict())
            self.epochs_without_improvement = 0
        else:
            self.epochs_without_improvement += 1
        self.stopped = (self.patience is not None
                        and self.epochs_without_improvement >= self.patience)

    def state_dict(self) -> dict[str, Any]:
        """Counters and best weights, for checkpoints."""
        return dataclasses.asdict(self)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        for key, value in state.items():
            setattr(self, key, value)


@dataclass
class TrainedNetwork:
    """What :func:`fit_network` returns."""

    #: The trained network (best validation epoch), in eval mode, on the training device.
    model: nn.Module
    #: One record per epoch: epoch, train_loss, learning_rate, val_loss,
    #: val_balanced_accuracy (with a validation set), seconds.
    history: list[dict[str, float]]
    #: Epoch (1-based) whose weights were kept; None without a validation set.
    best_epoch: int | None
    #: The seed used (drawn from the operating system when None was given).
    seed: int
    #: Whether training ran through ``torch.compile``.
    compiled: bool
    #: Epochs taken from a checkpoint instead of being trained by this call.
    resumed_epochs: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def n_epochs(self) -> int:
        """Epochs trained (fewer than ``epochs`` after early stopping)."""
        return len(self.history)


class _Run:
    """The state one epoch hands to the next, and its checkpoint form."""

    def __init__(self, options: TrainingOptions, n_classes: int,
                 input_shape: tuple[int, ...], device: torch.device, seed: int):
        init_sequence, shuffle_sequence = np.random.SeedSequence(seed).spawn(2)
        torch.manual_seed(int(init_sequence.generate_state(1, np.uint64)[0]))
        self.model = create_architecture(options.architecture, n_classes, input_shape).to(device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=options.learning_rate,
                                           weight_decay=options.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer,
                                                                    T_max=options.epochs)
        self.generator = np.random.default_rng(shuffle_sequence)
        self.stopper = EarlyStopping(options.patience)
        self.history: list[dict[str, float]] = []
        self.epoch = 0
        self.device = device

    def random_states(self) -> dict[str, Any]:
        states = {"torch": torch.get_rng_state(), "numpy": self.generator.bit_generator.state}
        if self.device.type == "cuda":
            states["cuda"] = torch.cuda.get_rng_state(self.device)
        return states

    def set_random_states(self, states: Mapping[str, Any]) -> None:
        torch.set_rng_state(states["torch"])
        self.generator.bit_generator.state = states["numpy"]
        if self.device.type == "cuda":
            torch.cuda.set_rng_state(states["cuda"], self.device)

    def training_state(self) -> dict[str, Any]:
        return {"model": _cpu_copy(self.model.state_dict()),
                "optimizer": copy.deepcopy(self.optimizer.state_dict()),
                "rng": copy.deepcopy(self.random_states())}

    def load_training_state(self, state: Mapping[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.set_random_states(state["rng"])

    def checkpoint(self, **extra: Any) -> dict[str, Any]:
        return {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
                "epoch": self.epoch, **self.training_state(),
                "scheduler": self.scheduler.state_dict(),
                "early_stopping": self.stopper.state_dict(), "history": self.history, **extra}

    def resume(self, checkpoint: Mapping[str, Any]) -> None:
        self.load_training_state(checkpoint)
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.stopper.load_state_dict(checkpoint["early_stopping"])
        # Keys as the interned literals a fresh run's records use: pickle stores a string
        # once per object, so loaded keys would make a resumed model file differ, byte
        # for byte, from an uninterrupted one.
        self.history = [{sys.intern(str(key)): value for key, value in record.items()}
                        for record in checkpoint["history"]]
        self.epoch = int(checkpoint["epoch"])

    def finished(self, epochs: int) -> bool:
        return self.epoch >= epochs or self.stopper.stopped

    def train_epoch(self, step_model: nn.Module, train_batches: VolumeBatches,
                    val_batches: VolumeBatches, loss_fn: nn.Module, options: TrainingOptions,
                    verified: bool) -> tuple[dict[str, float], nn.Module]:
        """Train one epoch, step the schedule, validate and early-stop; its history record.

        Returns the record and the module to train the next epoch with (the
        eager model when compiling failed).
        """
        started = time.monotonic()
        learning_rate = float(self.optimizer.param_groups[0]["lr"])
        train_loss, step_model = _train_epoch(self, step_model, train_batches, loss_fn,
                                              options, verified)
        self.scheduler.step()
        record = {"epoch": self.epoch + 1, "train_loss": train_loss,
                  "learning_rate": learning_rate}
        if len(val_batches.indices):
            evaluation = evaluate(self.model, val_batches, self.device, loss_fn,
                                  autocast_dtype=options.autocast_dtype)
            record.update(val_loss=evaluation.loss,
                          val_balanced_accuracy=evaluation.balanced_accuracy)
            self.stopper.update(evaluation.loss, self.model, self.epoch + 1)
        record["seconds"] = time.monotonic() - started
        self.history.append(record)
        self.epoch += 1
        return record, step_model


def _train_epoch(run: _Run, step_model: nn.Module, batches: VolumeBatches, loss_fn: nn.Module,
                 options: TrainingOptions, verified: bool) -> tuple[float, nn.Module]:
    """One epoch through ``step_model``; if compiling it fails, redo the epoch eagerly."""
    if verified or step_model is run.model:
        return train_one_epoch(step_model, batches, loss_fn, run.optimizer, run.device,
                               autocast_dtype=options.autocast_dtype), step_model
    before = run.training_state()
    try:
        return train_one_epoch(step_model, batches, loss_fn, run.optimizer, run.device,
                               autocast_dtype=options.autocast_dtype), step_model
    except Exception as err:
        if not is_compile_error(err):
            raise
        warnings.warn(f"torch.compile failed ({type(err).__name__}: {str(err)[:200]}); "
                      f"training without compiling (pass compile=False to skip the attempt)",
                      RuntimeWarning, stacklevel=3)
        run.load_training_state(before)
        return _train_epoch(run, run.model, batches, loss_fn, options, verified=True)


def fit_network(X: np.ndarray, y: np.ndarray, train_indices: np.ndarray,
                val_indices: np.ndarray, *, n_classes: int,
                options: TrainingOptions | None = None, seed: int | None = None,
                checkpoint_path: str | os.PathLike | None = None,
                on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
                ) -> TrainedNetwork:
    """Train a registered architecture on ``X[train_indices]``, early-stopped on the rest.

    Parameters
    ----------
    X : numpy.ndarray or numpy.memmap
        Volumes, shape ``(n, X, Y, Z)``, float32 (read batch by batch).
    y : numpy.ndarray of int
        Class code ``0..n_classes-1`` of each of the ``n`` samples.
    train_indices, val_indices : numpy.ndarray of int
        Samples to train on, and to validate on (may be empty: no early
        stopping, the last weights are kept).
    n_classes : int
        Number of classes (outputs of the network).
    options : TrainingOptions, optional
        Architecture, optimisation and speed settings (defaults if None).
    seed : int, optional
        Seeds weight initialisation, dropout and shuffling; None draws one from
        the operating system (reported in the result).
    checkpoint_path : path-like, optional
        Written atomically after every epoch; a checkpoint of the same fit found
        there is resumed from its next epoch (see the module docstring).
    on_epoch_end : callable, optional
        Called as ``on_epoch_end(epoch, record)`` after each epoch's checkpoint.

    Returns
    -------
    TrainedNetwork

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(20, 6, 6, 6)).astype(np.float32)
    >>> result = fit_network(X, np.arange(20) % 2, np.arange(14), np.array([], dtype=int),
    ...                      n_classes=2, seed=1,
    ...                      options=TrainingOptions(architecture="deepemotion", epochs=1))
    >>> result.n_epochs, result.best_epoch
    (1, None)
    """
    options = (options or TrainingOptions()).check()
    if X.ndim != 4:
        raise InputDataError(f"X must have shape (n, X, Y, Z), got {X.shape}", path="X")
    y = np.asarray(y, dtype=np.int64)
    train_indices = np.asarray(train_indices, dtype=np.intp)
    val_indices = np.asarray(val_indices, dtype=np.intp)
    device = resolve_device(options.device)
    input_shape = tuple(int(n) for n in X.shape[1:])
    compiled = options.use_compile(len(train_indices), input_shape)
    class_weights = _class_weight_tensor(options.class_weight, y[train_indices], n_classes)
    fingerprint = fit_fingerprint(X, y, train_indices, val_indices, n_classes, options, seed,
                                  device_type=device.type, compiled=compiled)
    checkpoint = None if checkpoint_path is None else load_checkpoint(checkpoint_path,
                                                                      fingerprint)
    if checkpoint is not None:
        seed = int(checkpoint["seed"])
    elif seed is None:
        seed = int(np.random.SeedSequence().entropy)
    cuda_devices = [device.index or 0] if device.type == "cuda" else []
    with (torch_threads(options.num_threads),
          reuse_freed_memory(options.reuse_memory and device.type == "cpu"),
          torch.random.fork_rng(devices=cuda_devices)):
        run = _Run(options, n_classes, input_shape, device, seed)
        if checkpoint is not None:
            run.resume(checkpoint)
            LOGGER.info("%s: resuming after epoch %d of %d", checkpoint_path, run.epoch,
                        options.epochs)
        resumed_epochs = run.epoch
        step_model = prepare_model(run.model, device, channels_last=options.channels_last,
                                   compile=compiled)
        loss_fn = nn.CrossEntropyLoss(
            weight=None if class_weights is None else class_weights.to(device))
        train_batches = VolumeBatches(X, train_indices, options.batch_size, y=y,
                                      generator=run.generator,
                                      channels_last=options.channels_last)
        val_batches = VolumeBatches(X, val_indices, options.batch_size, y=y,
                                    channels_last=options.channels_last)
        verified = False
        with Progress(options.epochs, desc="CNN epochs") as progress:
            progress.update(run.epoch)
            while not run.finished(options.epochs):
                record, step_model = run.train_epoch(step_model, train_batches, val_batches,
                                                     loss_fn, options, verified)
                verified = True
                if checkpoint_path is not None:
                    _save_checkpoint(checkpoint_path, run.checkpoint(
                        fingerprint=fingerprint, seed=seed, architecture=options.architecture,
                        n_classes=int(n_classes), input_shape=input_shape,
                        finished=run.finished(options.epochs)))
                progress.update(1, loss=record["train_loss"], **(
                    {"val_loss": record["val_loss"]} if "val_loss" in record else {}))
                if on_epoch_end is not None:
                    on_epoch_end(run.epoch, record)
        if run.stopper.best_state is not None:
            run.model.load_state_dict(run.stopper.best_state)
        run.model.to(memory_format=torch.contiguous_format)
        run.model.eval()
    return TrainedNetwork(model=run.model, history=run.history,
                          best_epoch=run.stopper.best_epoch, seed=seed, compiled=step_model
                          is not run.model, resumed_epochs=resumed_epochs, device=device)
