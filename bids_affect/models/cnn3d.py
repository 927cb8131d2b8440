"""3D CNN architectures for whole-brain emotion decoding, and their registry.

Every architecture is a :class:`VolumeClassifier`: a ``trunk`` of local
spatial layers (convolutions, batch norms, activations, poolings) followed by a
``head`` that turns the last feature map into class logits. Keeping the two
apart lets occlusion recompute only the part of the trunk a window changes
(:mod:`bids_affect.occlusion`) and lets RSA read the head's penultimate
features (:meth:`VolumeClassifier.embed`).

Registering one's own architecture::

    from bids_affect.models.cnn3d import register_architecture, VolumeClassifier

    @register_architecture("tiny", description="one conv layer, for tests")
    def tiny(n_classes, input_shape):
        trunk = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU())
        return VolumeClassifier(trunk, GlobalPoolHead(4, n_classes))

after which ``create_architecture("tiny", ...)`` uses it.

Plug-in architectures for the BIDS-App come from the entry-point group
``bids_affect.architectures`` (:data:`ENTRY_POINT_GROUP`) of any installed
package, loaded the first time the registry is read (``--models``, ``--help``,
:func:`list_architectures`, :func:`create_architecture`). An entry point names
either a factory, registered under the entry point's name, or a module whose
import registers its architectures with the decorator. In the plug-in's
``pyproject.toml``::

    [project.entry-points."bids_affect.architectures"]
    tiny = "my_package.models:tiny"      # a factory(n_classes, input_shape)

after ``pip install`` of that package, ``--models cnn-tiny`` works. A plug-in
that fails to load is skipped with a warning naming it; a name already taken
is an error (:func:`register_architecture`).

Examples
--------
>>> model = create_architecture("neuro120fp", n_classes=5, input_shape=(24, 24, 16))
>>> sum(p.numel() for p in model.parameters())
424549
>>> import torch
>>> model.eval()(torch.zeros(2, 1, 24, 24, 16)).shape
torch.Size([2, 5])
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from bids_affect._utils.plugins import iter_plugins, name_is_free
from bids_affect.exceptions import UsageError

LOGGER = logging.getLogger("bids_affect.models.cnn3d")

ArchitectureFactory = Callable[[int, tuple[int, int, int]], "VolumeClassifier"]

#: Entry-point group of plug-in architectures (see the module docstring).
ENTRY_POINT_GROUP = "bids_affect.architectures"


@dataclass(frozen=True)
class ArchitectureEntry:
    """A registered architecture: its factory and a one-line description."""

    name: str
    factory: ArchitectureFactory
    description: str


_REGISTRY: dict[str, ArchitectureEntry] = {}

#: Whether the entry points of :data:`ENTRY_POINT_GROUP` have been loaded.
_PLUGINS = {"loaded": False}


def register_architecture(name: str, *, description: str = ""):
    """Decorator registering ``factory(n_classes, input_shape) -> VolumeClassifier``.

    A duplicate name is an error: remove the old entry first
    (:func:`unregister_architecture`) to replace it.
    """
    if not name.isidentifier() and not name.replace("-", "_").isidentifier():
        raise ValueError(f"architecture name {name!r} must be a simple identifier")

    def decorator(factory: ArchitectureFactory) -> ArchitectureFactory:
        if name in _REGISTRY:
            raise ValueError(f"architecture {name!r} is already registered")
        _REGISTRY[name] = ArchitectureEntry(name, factory, description)
        return factory

    return decorator


def unregister_architecture(name: str) -> None:
    """Remove a registered architecture (for plug-ins and tests)."""
    _REGISTRY.pop(name, None)


def load_plugin_architectures(reload: bool = False) -> list[str]:
    """Register the architectures of the ``bids_affect.architectures`` entry points.

    Runs once (the registry calls it when first read); ``reload=True`` runs it
    again. An entry point whose object is a module registered its architectures
    when imported; any other object is a factory, registered under the entry
    point's name (with its docstring's first line as description); a name
    registered by another factory raises :class:`UsageError`. A plug-in that
    fails to import is skipped with a warning. Returns the names it registered.

    Examples
    --------
    >>> isinstance(load_plugin_architectures(), list)
    True
    """
    if _PLUGINS["loaded"] and not reload:
        return []
    before = set(_REGISTRY)
    for entry_point, loaded in iter_plugins(ENTRY_POINT_GROUP, "architecture", LOGGER):
        if not callable(loaded):
            LOGGER.warning("architecture plug-in %r (%s) is neither a module nor a factory; "
                           "skipped", entry_point.name, entry_point.value)
            continue
        if not name_is_free(_REGISTRY, entry_point, loaded, "architecture"):
            continue
        description = (loaded.__doc__ or "").strip().splitlines()
        register_architecture(entry_point.name, description=(
            description[0] if description else f"plug-in {entry_point.value}"))(loaded)
    _PLUGINS["loaded"] = True
    return sorted(set(_REGISTRY) - before)


def list_architectures() -> dict[str, str]:
    """Registered architecture names (plug-ins included) and their descriptions."""
    load_plugin_architectures()
    return {name: entry.description for name, entry in sorted(_REGISTRY.items())}


def create_architecture(name: str, n_classes: int,
                        input_shape: Sequence[int]) -> VolumeClassifier:
    """A fresh, randomly initialised network of architecture ``name``.

    Raises :class:`UsageError` (exit 64) listing the known names when ``name``
    is unknown.
    """
    if name not in _REGISTRY:
        load_plugin_architectures()
    try:
        entry = _REGISTRY[name]
    except KeyError:
        raise UsageError(f"CNN architecture {name!r} is unknown",
                         fix=f"use one of {', '.join(sorted(_REGISTRY))}") from None
    if n_classes < 2:
        raise UsageError(f"a classifier needs at least 2 classes, got {n_classes}")
    shape = tuple(int(n) for n in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise UsageError(f"input_shape must be 3 positive sizes, got {input_shape}")
    return entry.factory(int(n_classes), shape)


class GlobalPoolHead(nn.Module):
    """Global average pooling, dropout and a linear layer to the classes."""

    def __init__(self, in_channels: int, n_classes: int, dropout: float = 0.0):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_channels, n_classes)

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """Pooled features, shape ``(N, in_channels)``."""
        return self.pool(features).flatten(1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.embed(features)))


class FlattenHead(nn.Module):
    """Flatten, a hidden fully connected layer with ReLU, dropout and the output layer."""

    def __init__(self, in_features: int, hidden: int, n_classes: int, dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.relu = nn.ReLU()
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, n_classes)

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """Hidden-layer activations, shape ``(N, hidden)``."""
        return self.relu(self.fc1(features.flatten(1)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(self.embed(features)))


class InvertedResidual3d(nn.Module):
    """Depthwise-separable block: 1x1x1 expand, 3x3x3 depthwise, 1x1x1 project.

    Each convolution has no bias and is followed by batch norm; ReLU6 follows
    the first two. The residual connection is used only when the block keeps
    the shape (stride 1, same channels), as in MobileNetV2.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 2,
                 expansion: int = 2):
        super().__init__()
        hidden = in_channels * expansion
        self.use_residual = stride == 1 and in_channels == out_channels
        self.layers = nn.Sequential(
            nn.Conv3d(in_channels, hidden, 1, bias=False),
            nn.BatchNorm3d(hidden),
            nn.ReLU6(inplace=False),
            nn.Conv3d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False),
            nn.BatchNorm3d(hidden),
            nn.ReLU6(inplace=False),
            nn.Conv3d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm3d(out_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(x)
        return out + x if self.use_residual else out


class VolumeClassifier(nn.Module):
    """A 3D CNN: ``head(trunk(x))`` on volumes shaped ``(N, 1, X, Y, Z)``."""

    def __init__(self, trunk: nn.Sequential, head: nn.Module):
        super().__init__()
        self.trunk = trunk
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (the representation RSA compares with the brain)."""
        return self.head.embed(self.trunk(x))


def _conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [nn.Conv3d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm3d(out_channels), nn.ReLU()]


@register_architecture("neuro120fp", description=(
    "seed 003: conv 32 then 4 depthwise-separable blocks 64/128/256/256 (stride 2, "
    "expansion 2, ReLU6, batch norm), global average pooling, dropout .3, linear"))
def neuro120fp(n_classes: int, input_shape: tuple[int, int, int]) -> VolumeClassifier:
    """Seed 003's network: 424,549 parameters for 5 classes, any input size."""
    trunk = nn.Sequential(
        nn.Conv3d(1, 32, 3, padding=1, bias=False),
        nn.BatchNorm3d(32),
        nn.ReLU6(inplace=False),
        InvertedResidual3d(32, 64),
        InvertedResidual3d(64, 128),
        InvertedResidual3d(128, 256),
        InvertedResidual3d(256, 256),
    )
    return VolumeClassifier(trunk, GlobalPoolHead(256, n_classes, dropout=0.3))


@register_architecture("deepemotion", description=(
    "seeds 001/004: 3 conv layers 16/32/64 with batch norm and ReLU, 2 max-pools, "
    "FC 128, output"))
def deepemotion(n_classes: int, input_shape: tuple[int, int, int]) -> VolumeClassifier:
    """Seeds 001/004's network; the FC layer's size follows the input shape."""
    trunk = nn.Sequential(
        *_conv_bn_relu(1, 16), nn.MaxPool3d(2),
        *_conv_bn_relu(16, 32), nn.MaxPool3d(2),
        *_conv_bn_relu(32, 64),
    )
    pooled = [(size // 2) // 2 for size in input_shape]
    if min(pooled) < 1:
        raise UsageError(f"deepemotion needs inputs of at least 4 voxels per axis, "
                         f"got {input_shape}")
    in_features = 64 * pooled[0] * pooled[1] * pooled[2]
    return VolumeClassifier(trunk, FlattenHead(in_features, 128, n_classes, dropout=0.3))


def with_all_classes(model: VolumeClassifier, present: Sequence[int],
                     n_classes: int) -> VolumeClassifier:
    """A copy of ``model`` whose outputs cover ``n_classes`` classes.

    A fold model trained without some classes has fewer outputs; its output
    ``j`` is class ``present[j]``. The copy's last linear layer gets one row per
    class, those of absent classes with zero weights and a bias of -1e4, so
    their softmax probability is 0 and the present classes keep their values.

    Examples
    --------
    >>> model = create_architecture("neuro120fp", 2, (8, 8, 8)).eval()
    >>> full = with_all_classes(model, [0, 2], 3).eval()
    >>> x = torch.zeros(1, 1, 8, 8, 8)
    >>> torch.allclose(full(x)[0, [0, 2]], model(x)[0]), float(full(x).softmax(1)[0, 1].detach())
    (True, 0.0)
    """
    import copy

    present = [int(c) for c in present]
    full = copy.deepcopy(model)
    if present == list(range(n_classes)):
        return full
    last_name, last = [(name, module) for name, module in full.head.named_modules()
                       if isinstance(module, nn.Linear)][-1]
    expanded = nn.Linear(last.in_features, n_classes)
    with torch.no_grad():
        expanded.weight.zero_()
        expanded.bias.fill_(-1e4)
        expanded.weight[present] = last.weight
        expanded.bias[present] = last.bias
    setattr(full.head, last_name, expanded)
    return full
