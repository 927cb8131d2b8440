"""Image CNNs for stimulus features: AlexNet, VGG16 and EmoNet, their registry and layers.

The networks are written in plain torch (torchvision does not import with the
CPU build of torch installed here) with **torchvision's parameter names**
(``features.0.weight`` ... ``classifier.6.bias``), so a state-dict file saved
from ``torchvision.models.alexnet`` or ``vgg16`` loads with ``load_state_dict``.

Registered networks
    ``alexnet``
        torchvision's AlexNet (Krizhevsky 2014, "one weird trick": 64-192-384-256-256
        channels), 1,000 outputs.
    ``vgg16``
        torchvision's VGG16 (configuration D, no batch norm), 1,000 outputs.
    ``emonet``
        EmoNet (Kragel et al. 2019, used by seed 000): MATLAB's AlexNet fine-tuned to
        20 emotion categories. MATLAB's AlexNet is the original Caffe network, not
        torchvision's: 96-256-384-384-256 channels, conv2/conv4/conv5 in two groups,
        local response normalisation after relu1 and relu2, no padding in conv1, 227x227
        inputs. Its parameters keep torchvision's names (the normalisation layers sit
        inside ``features.2`` and ``features.5`` next to the max-pools, so the indices
        of the convolutions are torchvision's); only the shapes differ. fc8 gives
        logits (EmoNet's softmax is left out). A state dict of the PyTorch port
        ``ecco-laboratory/emonet-pytorch`` (keys ``conv_0.0.weight`` ...) is converted
        on loading (:func:`convert_emonet_pytorch_state_dict`).

Weights
    Only from a local file (``weights=PATH``: a ``.pth``/``.pt`` state dict, or a dict
    holding one under ``state_dict``/``model``/``model_state_dict``; a ``module.``
    prefix left by ``DataParallel`` is removed) or, when asked explicitly,
    ``weights="random"``: the initialisation torchvision uses, from a seed. Nothing is
    downloaded. Keys and shapes are checked before loading; the first missing or
    unexpected key, or the first shape mismatch, is named with the file
    (:class:`InputDataError`, exit 65).

Layers
    Named as in Caffe/MATLAB (seed 000 reads ``fc7`` with MATLAB's ``activations``):
    ``convN`` and ``fcN`` are the outputs of the convolution or linear layer itself
    (before its ReLU), ``reluN`` after it, ``normN`` and ``poolN`` the normalisation and
    pooling outputs. VGG16 numbers its convolutions ``conv1_1`` ... ``conv5_3``.
    :func:`list_layers` gives them in forward order.

Preprocessing (:class:`Preprocessing`, :func:`preprocess_images`)
    ``alexnet`` and ``vgg16``: torchvision's ImageNet transform: the shorter side
    resized to 256 (bilinear, antialiased, in 8 bits as torchvision and PIL do on 8-bit
    images), a 224x224 centre crop, pixel values scaled to [0, 1], then ImageNet's mean
    (0.485, 0.456, 0.406) subtracted and the result divided by its standard deviation
    (0.229, 0.224, 0.225) per channel. ``emonet``: resized to 227x227 without keeping
    the aspect ratio (seed 000's ``imresize(I, [227 227])``, with imresize's default
    antialiased bicubic kernel), pixel values kept in 0-255 and the per-channel mean of
    MATLAB AlexNet's average image (Caffe's ImageNet mean, 122.68, 116.67, 104.01 for R,
    G, B) subtracted, as its input layer does (MATLAB subtracts the whole 227x227 average
    image; its channel means are used here). Grey-scale images are replicated to three
    channels, as seed 000 does.

Plug-ins
    Packages add networks through the entry-point group ``bids_affect.image_networks``
    (:data:`ENTRY_POINT_GROUP`): an entry point names a module whose import registers
    networks with :func:`register_image_network`, or an :class:`ImageNetworkEntry`
    (registered under the entry point's name). A bare factory is skipped with a
    warning: a network needs its layer names and preprocessing too.

Examples
--------
>>> sorted(list_image_networks())
['alexnet', 'emonet', 'vgg16']
>>> list_layers("alexnet")[:3]
['conv1', 'relu1', 'pool1']
>>> network = create_image_network("alexnet", weights="random", random_state=0)
>>> images = np.zeros((2, 40, 60, 3), dtype=np.uint8)
>>> inputs = preprocess_images(images, image_network_entry("alexnet").preprocessing)
>>> tuple(inputs.shape)
(2, 3, 224, 224)
>>> tuple(layer_activations(network, inputs, layer_module("alexnet", "fc7")).shape)
(2, 4096)
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted
from torch import nn
from torch.nn import functional

from bids_affect._utils.plugins import iter_plugins, name_is_free
from bids_affect._utils.validation import check_choice, check_int
from bids_affect.exceptions import InputDataError, InputMissingError, UsageError
from bids_affect.models.runtime import resolve_device, torch_threads

LOGGER = logging.getLogger("bids_affect.models.image")

#: Entry-point group of plug-in image networks (see the module docstring).
ENTRY_POINT_GROUP = "bids_affect.image_networks"

#: ImageNet statistics of torchvision's pretrained weights (pixel values in [0, 1]).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Channel means (R, G, B; pixel values 0-255) of the average image of MATLAB's AlexNet.
MATLAB_ALEXNET_MEAN = (122.679, 116.669, 104.007)

#: File extensions accepted for weights.
WEIGHT_EXTENSIONS = (".pth", ".pt")

#: Keys under which checkpoints commonly hold their state dict.
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")


# --------------------------------------------------------------------------- preprocessing


@dataclass(frozen=True)
class Preprocessing:
    """How images become a network's input (see the module docstring).

    Parameters
    ----------
    resize : int or (int, int)
        An int resizes the shorter side to it, keeping the aspect ratio (then ``crop``
        applies); a pair ``(height, width)`` resizes to exactly that size.
    crop : int or None
        Side of the square centre crop after resizing; None for no crop.
    scale : float
        Pixel values (0-255) are divided by it: 255 gives [0, 1], 1 keeps 0-255.
    mean, std : (float, float, float)
        Per-channel (R, G, B) mean subtracted and standard deviation divided, after
        scaling.
    interpolation : {"bilinear", "bicubic"}
        Resampling kernel of the resize (antialiased when shrinking).
    """

    resize: int | tuple[int, int]
    crop: int | None
    scale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"

    def __post_init__(self):
        check_choice(self.interpolation, "interpolation", ("bilinear", "bicubic"))

    @property
    def input_size(self) -> tuple[int, int]:
        """``(height, width)`` of the network's input."""
        if self.crop is not None:
            return (int(self.crop), int(self.crop))
        if isinstance(self.resize, int):
            raise ValueError("a shorter-side resize needs a crop to fix the input size")
        return (int(self.resize[0]), int(self.resize[1]))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description, for provenance."""
        return {"resize": self.resize if isinstance(self.resize, int) else list(self.resize),
                "crop": self.crop, "scale": self.scale, "mean": list(self.mean),
                "std": list(self.std),
                "interpolation": f"{self.interpolation}, antialiased, 8-bit"}


TORCHVISION_IMAGENET = Preprocessing(resize=256, crop=224, scale=255.0, mean=IMAGENET_MEAN,
                                     std=IMAGENET_STD)
MATLAB_ALEXNET = Preprocessing(resize=(227, 227), crop=None, scale=1.0,
                               mean=MATLAB_ALEXNET_MEAN, std=(1.0, 1.0, 1.0),
                               interpolation="bicubic")


def _resized_size(height: int, width: int, resize: int | tuple[int, int]) -> tuple[int, int]:
    if not isinstance(resize, int):
        return (int(resize[0]), int(resize[1]))
    # torchvision's Resize(int): the shorter side becomes ``resize``, the longer one is
    # truncated, not rounded.
    if height <= width:
        return (resize, int(resize * width / height))
    return (int(resize * height / width), resize)


def preprocess_images(images: np.ndarray, preprocessing: Preprocessing,
                      device: torch.device | str | None = None) -> torch.Tensor:
    """Resize, crop and normalise a batch of 8-bit images into a network's input.

    Parameters
    ----------
    images : ndarray of uint8
        RGB images ``(n, height, width, 3)``, one image ``(height, width, 3)``, or grey-scale
        images ``(n, height, width)`` (replicated to three channels).
    preprocessing : Preprocessing
        The network's preprocessing (``image_network_entry(name).preprocessing``).
    device : torch.device or str, optional
        Where the result lives (images are resized on the CPU, then moved).

    Returns
    -------
    torch.Tensor, float32, shape (n, 3, height, width)

    Examples
    --------
    >>> images = np.full((1, 300, 400, 3), 255, dtype=np.uint8)
    >>> x = preprocess_images(images, TORCHVISION_IMAGENET)
    >>> tuple(x.shape), round(float(x[0, 0, 0, 0]), 4)
    ((1, 3, 224, 224), 2.2489)
    """
    array = np.asarray(images)
    if array.dtype != np.uint8:
        raise UsageError(f"must be 8-bit images (uint8), got dtype {array.dtype}",
                         path="images", fix="convert with np.clip(x, 0, 255).astype(np.uint8)")
    if array.ndim == 3 and array.shape[-1] == 3:
        array = array[None]
    if array.ndim == 3:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.ndim != 4 or array.shape[-1] != 3 or min(array.shape[1:3]) < 1:
        raise UsageError(f"must have shape (n, height, width, 3), got {np.shape(images)}",
                         path="images")
    size = _resized_size(array.shape[1], array.shape[2], preprocessing.resize)
    out_height, out_width = preprocessing.input_size
    top = int(round((size[0] - out_height) / 2.0)) if preprocessing.crop is not None else 0
    left = int(round((size[1] - out_width) / 2.0)) if preprocessing.crop is not None else 0
    resized = torch.empty((array.shape[0], 3, out_height, out_width), dtype=torch.uint8)
    # Resized on the CPU in 8 bits, one image at a time: torch's uint8 kernel reads the
    # (height, width, 3) layout as it is and is 20x faster than float32 (measured on
    # 360x640 frames); the result is rounded to 8 bits, as torchvision's transforms do on
    # uint8 images and PIL does. A float copy of a whole batch of full-HD frames would
    # also take hundreds of MB. Only the small network input moves to ``device``.
    for index, image in enumerate(array):
        tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]
        if tuple(tensor.shape[-2:]) != size:
            tensor = functional.interpolate(tensor, size=size, mode=preprocessing.interpolation,
                                            align_corners=False, antialias=True)
        resized[index] = tensor[0, :, top:top + out_height, left:left + out_width]
    mean = torch.tensor(preprocessing.mean, dtype=torch.float32, device=device).view(3, 1, 1)
    std = torch.tensor(preprocessing.std, dtype=torch.float32, device=device).view(3, 1, 1)
    return (resized.to(device).to(torch.float32) / preprocessing.scale - mean) / std


# --------------------------------------------------------------------------- registry


ImageNetworkFactory = Callable[[], nn.Module]
StateDictConverter = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class ImageNetworkEntry:
    """A registered image network.

    Parameters
    ----------
    name : str
        Registry name.
    factory : callable
        ``factory() -> nn.Module``, building the network with its random initialisation.
        When weights come from a file it runs under torch's meta device: every tensor the
        network uses must be a parameter or buffer.
    layers : mapping of str to str
        Layer name to module path (``"fc7": "classifier.4"``), in forward order.
    preprocessing : Preprocessing
        What the network expects as input.
    description : str
        One line for ``--help`` and the docs.
    initialise : callable, optional
        ``initialise(network)``, applied after the factory for random weights (e.g.
        torchvision's VGG initialisation), drawing from torch's global generator
        (seeded by :func:`create_image_network`); default: the modules' own.
    convert_state_dict : callable, optional
        ``convert(state_dict) -> state_dict`` applied to a weights file before the
        key check, when its keys are in another known layout (EmoNet's PyTorch port).
    """

    name: str
    factory: ImageNetworkFactory
    layers: Mapping[str, str]
    preprocessing: Preprocessing
    description: str = ""
    initialise: Callable[[nn.Module], None] | None = None
    convert_state_dict: StateDictConverter | None = None


_REGISTRY: dict[str, ImageNetworkEntry] = {}

#: Whether the entry points of :data:`ENTRY_POINT_GROUP` have been loaded.
_PLUGINS = {"loaded": False}


def register_image_network(name: str, *, layers: Mapping[str, str],
                           preprocessing: Preprocessing, description: str = "",
                           initialise: Callable[[nn.Module], None] | None = None,
                           convert_state_dict: StateDictConverter | None = None):
    """Decorator registering ``factory() -> nn.Module`` as the image network ``name``.

    A duplicate name is an error: remove the old entry first
    (:func:`unregister_image_network`) to replace it.

    Examples
    --------
    >>> @register_image_network("tinyimage", layers={"conv1": "0", "fc1": "3"},
    ...                         preprocessing=Preprocessing((8, 8), None, 255.0,
    ...                                                     (0, 0, 0), (1, 1, 1)))
    ... def tinyimage():
    ...     return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(),
    ...                          nn.Linear(144, 2))
    >>> list_layers("tinyimage")
    ['conv1', 'fc1']
    >>> unregister_image_network("tinyimage")
    """
    if not name.replace("-", "_").isidentifier():
        raise ValueError(f"image network name {name!r} must be a simple identifier")
    if not layers:
        raise ValueError(f"image network {name!r} needs at least one named layer")

    def decorator(factory: ImageNetworkFactory) -> ImageNetworkFactory:
        if name in _REGISTRY:
            raise ValueError(f"image network {name!r} is already registered")
        _REGISTRY[name] = ImageNetworkEntry(
            name, factory, types.MappingProxyType(dict(layers)), preprocessing, description,
            initialise, convert_state_dict)
        return factory

    return decorator


def unregister_image_network(name: str) -> None:
    """Remove a registered image network (for plug-ins and tests)."""
    _REGISTRY.pop(name, None)


def load_plugin_image_networks(reload: bool = False) -> list[str]:
    """Register the networks of the ``bids_affect.image_networks`` entry points.

    Runs once (the registry calls it when first read); ``reload=True`` runs it again.
    An entry point naming a module registered its networks when imported; one naming
    an :class:`ImageNetworkEntry` is registered under the entry point's name; a name
    registered by another entry raises :class:`UsageError`. A plug-in that fails to
    import, or names anything else, is skipped with a warning. Returns the names it
    registered.

    Examples
    --------
    >>> isinstance(load_plugin_image_networks(), list)
    True
    """
    if _PLUGINS["loaded"] and not reload:
        return []
    before = set(_REGISTRY)
    for entry_point, loaded in iter_plugins(ENTRY_POINT_GROUP, "image network", LOGGER):
        if not isinstance(loaded, ImageNetworkEntry):
            LOGGER.warning("image network plug-in %r (%s) is neither a module nor an "
                           "ImageNetworkEntry (a network needs its layers and "
                           "preprocessing); skipped", entry_point.name, entry_point.value)
            continue
        entry = dataclasses.replace(loaded, name=entry_point.name)
        if not name_is_free(_REGISTRY, entry_point, entry.factory, "image network"):
            continue
        register_image_network(
            entry.name, layers=entry.layers, preprocessing=entry.preprocessing,
            description=entry.description, initialise=entry.initialise,
            convert_state_dict=entry.convert_state_dict)(entry.factory)
    _PLUGINS["loaded"] = True
    return sorted(set(_REGISTRY) - before)


def list_image_networks() -> dict[str, str]:
    """Registered image network names (plug-ins included) and their descriptions.

    Examples
    --------
    >>> "emonet" in list_image_networks()
    True
    """
    load_plugin_image_networks()
    return {name: entry.description for name, entry in sorted(_REGISTRY.items())}


def image_network_entry(name: str) -> ImageNetworkEntry:
    """The registry entry of ``name``; an unknown name raises :class:`UsageError` (64).

    Examples
    --------
    >>> image_network_entry("emonet").preprocessing.input_size
    (227, 227)
    """
    if name not in _REGISTRY:
        load_plugin_image_networks()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UsageError(f"image network {name!r} is unknown", path="feature_network",
                         fix=f"use one of {', '.join(sorted(_REGISTRY))}") from None


def list_layers(name: str) -> list[str]:
    """Layer names of the image network ``name``, in forward order.

    Examples
    --------
    >>> list_layers("vgg16")[-3:]
    ['fc7', 'relu7', 'fc8']
    """
    return list(image_network_entry(name).layers)


def layer_module(name: str, layer: str) -> str:
    """Module path of ``layer`` in network ``name``; unknown layers list the valid ones.

    Raises
    ------
    UsageError
        (exit 64) naming ``feature_layer``, when the network has no such layer.

    Examples
    --------
    >>> layer_module("alexnet", "fc7")
    'classifier.4'
    """
    layers = image_network_entry(name).layers
    if layer not in layers:
        raise UsageError(f"network {name!r} has no layer {layer!r}", path="feature_layer",
                         fix=f"use one of {', '.join(layers)}")
    return layers[layer]


# --------------------------------------------------------------------------- networks


def _relu() -> nn.ReLU:
    # Not in place: a forward hook on a convolution must keep its pre-ReLU output.
    return nn.ReLU(inplace=False)


def _classifier(in_features: int, n_outputs: int, dropout_first: bool) -> nn.Sequential:
    """torchvision's classifier: AlexNet puts dropout before fc6/fc7, VGG after."""
    if dropout_first:
        return nn.Sequential(nn.Dropout(0.5), nn.Linear(in_features, 4096), _relu(),
                             nn.Dropout(0.5), nn.Linear(4096, 4096), _relu(),
                             nn.Linear(4096, n_outputs))
    return nn.Sequential(nn.Linear(in_features, 4096), _relu(), nn.Dropout(0.5),
                         nn.Linear(4096, 4096), _relu(), nn.Dropout(0.5),
                         nn.Linear(4096, n_outputs))


class ImageCNN(nn.Module):
    """``classifier(flatten(avgpool(features(x))))``: torchvision's AlexNet/VGG layout."""

    def __init__(self, features: nn.Sequential, pooled_size: int, classifier: nn.Sequential):
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((pooled_size, pooled_size))
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def _alexnet_layers(conv_indices: Sequence[int], pools: Mapping[int, str]) -> dict[str, str]:
    """Caffe names of an AlexNet-like network; ``pools`` maps a feature index to pool paths."""
    layers: dict[str, str] = {}
    for number, index in enumerate(conv_indices, start=1):
        layers[f"conv{number}"] = f"features.{index}"
        layers[f"relu{number}"] = f"features.{index + 1}"
        for name, path in pools.get(number, {}).items():
            layers[name] = path
    for number, index in ((6, 1), (7, 4)):
        layers[f"fc{number}"] = f"classifier.{index}"
        layers[f"relu{number}"] = f"classifier.{index + 1}"
    layers["fc8"] = "classifier.6"
    return layers


_ALEXNET_LAYERS = _alexnet_layers((0, 3, 6, 8, 10), {
    1: {"pool1": "features.2"}, 2: {"pool2": "features.5"}, 5: {"pool5": "features.12"}})


@register_image_network("alexnet", layers=_ALEXNET_LAYERS, preprocessing=TORCHVISION_IMAGENET,
                        description="torchvision's AlexNet (64-192-384-256-256 channels), "
                                    "1,000 ImageNet classes, 224x224 input")
def alexnet() -> ImageCNN:
    """torchvision's ``alexnet()``, parameter for parameter."""
    features = nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), _relu(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(64, 192, kernel_size=5, padding=2), _relu(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(192, 384, kernel_size=3, padding=1), _relu(),
        nn.Conv2d(384, 256, kernel_size=3, padding=1), _relu(),
        nn.Conv2d(256, 256, kernel_size=3, padding=1), _relu(),
        nn.MaxPool2d(kernel_size=3, stride=2),
    )
    return ImageCNN(features, 6, _classifier(256 * 6 * 6, 1000, dropout_first=True))


def _norm_pool() -> nn.Sequential:
    """Caffe AlexNet's norm + pool, one parameter-free block (keeps torchvision's indices)."""
    return nn.Sequential(nn.LocalResponseNorm(size=5, alpha=1e-4, beta=0.75, k=1.0),
                         nn.MaxPool2d(kernel_size=3, stride=2))


#: EmoNet's 20 output categories (Kragel et al. 2019), in the order of fc8.
EMONET_CATEGORIES = (
    "Adoration", "Aesthetic Appreciation", "Amusement", "Anxiety", "Awe", "Boredom",
    "Confusion", "Craving", "Disgust", "Empathic Pain", "Entrancement", "Excitement", "Fear",
    "Horror", "Interest", "Joy", "Romance", "Sadness", "Sexual Desire", "Surprise",
)

#: emonet-pytorch's module prefixes and ours (the convolutional fc layers become linear).
_EMONET_PORT_KEYS = {"conv_0.0": "features.0", "conv_1.0": "features.3",
                     "conv_2.0": "features.6", "conv_3.0": "features.8",
                     "conv_4.0": "features.10", "conv_5.0": "classifier.1",
                     "conv_6.0": "classifier.4", "classifier.0": "classifier.6"}


def convert_emonet_pytorch_state_dict(
        state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict of ``ecco-laboratory/emonet-pytorch``'s EmoNet, with our names and shapes.

    The port writes fc6-fc8 as convolutions (fc6: a 6x6 kernel over the 6x6 pool5
    map); a convolution whose kernel covers its whole input is a linear layer on the
    flattened input (channels, then rows, then columns: torch's flatten order), so
    its weights are reshaped to ``(out, in)``. A state dict already in our layout is
    returned unchanged.

    Examples
    --------
    >>> port = {"conv_5.0.weight": torch.zeros(4096, 256, 6, 6),
    ...         "conv_5.0.bias": torch.zeros(4096)}
    >>> {k: tuple(v.shape) for k, v in convert_emonet_pytorch_state_dict(port).items()}
    {'classifier.1.weight': (4096, 9216), 'classifier.1.bias': (4096,)}
    """
    if not any(key.startswith("conv_") for key in state_dict):
        return dict(state_dict)
    converted = {}
    for key, value in state_dict.items():
        prefix, _, parameter = key.rpartition(".")
        target = _EMONET_PORT_KEYS.get(prefix)
        if target is None:
            converted[key] = value  # left for the key check to report
            continue
        if target.startswith("classifier") and value.ndim == 4:
            value = value.reshape(value.shape[0], -1)
        converted[f"{target}.{parameter}"] = value
    return converted


_EMONET_LAYERS = _alexnet_layers((0, 3, 6, 8, 10), {
    1: {"norm1": "features.2.0", "pool1": "features.2.1"},
    2: {"norm2": "features.5.0", "pool2": "features.5.1"},
    5: {"pool5": "features.12"}})


@register_image_network("emonet", layers=_EMONET_LAYERS, preprocessing=MATLAB_ALEXNET,
                        convert_state_dict=convert_emonet_pytorch_state_dict,
                        description="EmoNet (Kragel et al. 2019; seed 000): Caffe/MATLAB "
                                    "AlexNet with 20 emotion categories, 227x227 input")
def emonet() -> ImageCNN:
    """MATLAB's (Caffe's) AlexNet with a 20-category fc8, torchvision's parameter names."""
    features = nn.Sequential(
        nn.Conv2d(3, 96, kernel_size=11, stride=4), _relu(), _norm_pool(),
        nn.Conv2d(96, 256, kernel_size=5, padding=2, groups=2), _relu(), _norm_pool(),
        nn.Conv2d(256, 384, kernel_size=3, padding=1), _relu(),
        nn.Conv2d(384, 384, kernel_size=3, padding=1, groups=2), _relu(),
        nn.Conv2d(384, 256, kernel_size=3, padding=1, groups=2), _relu(),
        nn.MaxPool2d(kernel_size=3, stride=2),
    )
    return ImageCNN(features, 6, _classifier(256 * 6 * 6, len(EMONET_CATEGORIES),
                                             dropout_first=True))


#: VGG16 (configuration D): output channels per convolution, "M" for a max-pool.
_VGG16_CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
                 512, 512, 512, "M")


def _vgg16_layers() -> dict[str, str]:
    layers: dict[str, str] = {}
    block, position, index = 1, 1, 0
    for item in _VGG16_CONFIG:
        if item == "M":
            layers[f"pool{block}"] = f"features.{index}"
            block, position, index = block + 1, 1, index + 1
            continue
        layers[f"conv{block}_{position}"] = f"features.{index}"
        layers[f"relu{block}_{position}"] = f"features.{index + 1}"
        position, index = position + 1, index + 2
    for number, index in ((6, 0), (7, 3)):
        layers[f"fc{number}"] = f"classifier.{index}"
        layers[f"relu{number}"] = f"classifier.{index + 1}"
    layers["fc8"] = "classifier.6"
    return layers


def _initialise_vgg(network: nn.Module) -> None:
    """torchvision's VGG initialisation (He normal for convolutions, N(0, 0.01) for fc)."""
    for module in network.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, 0.01)
            nn.init.zeros_(module.bias)


@register_image_network("vgg16", layers=_vgg16_layers(), preprocessing=TORCHVISION_IMAGENET,
                        initialise=_initialise_vgg,
                        description="torchvision's VGG16 (configuration D, no batch norm), "
                                    "1,000 ImageNet classes, 224x224 input")
def vgg16() -> ImageCNN:
    """torchvision's ``vgg16()``, parameter for parameter (inputs of 32x32 and up)."""
    modules: list[nn.Module] = []
    channels = 3
    for item in _VGG16_CONFIG:
        if item == "M":
            modules.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        modules += [nn.Conv2d(channels, int(item), kernel_size=3, padding=1), _relu()]
        channels = int(item)
    return ImageCNN(nn.Sequential(*modules), 7, _classifier(512 * 7 * 7, 1000,
                                                            dropout_first=False))


# --------------------------------------------------------------------------- weights


def resolve_seed(random_state: int | np.random.Generator | None) -> int:
    """An integer seed from ``random_state`` (None draws one from fresh entropy).

    Examples
    --------
    >>> resolve_seed(3), resolve_seed(np.random.default_rng(0)) == resolve_seed(
    ...     np.random.default_rng(0))
    (3, True)
    """
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(0, 2**31 - 1))
    if random_state is None:
        return int(np.random.default_rng().integers(0, 2**31 - 1))
    if isinstance(random_state, bool) or not isinstance(random_state, int | np.integer):
        raise UsageError(f"must be an int, a numpy Generator or None, got {random_state!r}",
                         path="random_state")
    return int(random_state)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict in a ``.pth``/``.pt`` file (unwrapped from a checkpoint dict).

    Read with ``torch.load(weights_only=True)``: tensors and plain containers only, no
    code from the file runs. A dict holding the state dict under ``state_dict``,
    ``model_state_dict`` or ``model`` is unwrapped; a ``module.`` prefix on every key
    (``DataParallel``) is removed.

    Raises
    ------
    InputMissingError
        (66) when the file does not exist.
    InputDataError
        (65) when it cannot be read or holds no state dict.

    Examples
    --------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "w.pt"
    >>> torch.save({"state_dict": {"module.fc.weight": torch.ones(2, 3)}}, path)
    >>> list(read_state_dict(path))
    ['fc.weight']
    """
    path = Path(path)
    if path.suffix not in WEIGHT_EXTENSIONS:
        raise UsageError(f"weights must be a {' or '.join(WEIGHT_EXTENSIONS)} file, "
                         f"got {path.name!r}", path="feature_weights",
                         fix="save the state dict with torch.save(model.state_dict(), "
                             "'weights.pth'), or give 'random' for untrained weights")
    if not path.is_file():
        raise InputMissingError("weights file not found", path=path,
                                fix="give the path of a local .pth/.pt state dict "
                                    "(weights are never downloaded)")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for corrupt or unsafe files
        raise InputDataError(f"cannot read weights ({type(err).__name__}: "
                             f"{str(err).splitlines()[0] if str(err) else ''})", path=path,
                             fix="give a state dict saved with torch.save(model.state_dict())"
                             ) from err
    if isinstance(content, Mapping):
        for key in _WRAPPER_KEYS:
            if isinstance(content.get(key), Mapping):
                content = content[key]
                break
    if (not isinstance(content, Mapping) or not content
            or not all(isinstance(v, torch.Tensor) for v in content.values())):
        raise InputDataError("the file holds no state dict (a mapping of parameter names "
                             "to tensors)", path=path,
                             fix="save it with torch.save(model.state_dict(), path)")
    state = {str(key): value for key, value in content.items()}
    if all(key.startswith("module.") for key in state):
        state = {key[len("module."):]: value for key, value in state.items()}
    return state


def check_state_dict(network: nn.Module, state_dict: Mapping[str, torch.Tensor],
                     network_name: str, path: str | os.PathLike) -> None:
    """Refuse a state dict whose keys or shapes differ from the network's.

    Names the first missing key (in the network's order), else the first unexpected
    key (in the file's order), else the first shape mismatch, and how many problems
    there are in all (:class:`InputDataError`, exit 65, naming ``path``).

    Examples
    --------
    >>> net = nn.Sequential(nn.Linear(3, 2))
    >>> check_state_dict(net, {"0.weight": torch.zeros(2, 4), "0.bias": torch.zeros(2)},
    ...                  "tiny", "w.pth")
    Traceback (most recent call last):
    ...
    bids_affect.exceptions.InputDataError: w.pth: weights do not fit network 'tiny': \
key '0.weight' has shape (2, 4) in the file but (2, 3) in the network (1 mismatch in all); \
fix: give weights saved from the same architecture, or choose their network with \
--feature-network
    """
    expected = network.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    wrong_shape = [key for key in expected if key in state_dict
                   and tuple(state_dict[key].shape) != tuple(expected[key].shape)]
    total = len(missing) + len(unexpected) + len(wrong_shape)
    if not total:
        return
    if missing:
        first = f"key {missing[0]!r} is missing from the file"
    elif unexpected:
        first = f"key {unexpected[0]!r} in the file is not in the network"
    else:
        key = wrong_shape[0]
        first = (f"key {key!r} has shape {tuple(state_dict[key].shape)} in the file but "
                 f"{tuple(expected[key].shape)} in the network")
    raise InputDataError(
        f"weights do not fit network {network_name!r}: {first} "
        f"({total} mismatch{'es' if total > 1 else ''} in all)", path=path,
        fix="give weights saved from the same architecture, or choose their network with "
            "--feature-network")


def file_sha256(path: str | os.PathLike, chunk_size: int = 1 << 22) -> str:
    """SHA-256 of a file, read in chunks (for provenance of weights files).

    Examples
    --------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "a.bin"
    >>> _ = path.write_bytes(b"abc")
    >>> file_sha256(path)[:12]
    'ba7816bf8f01'
    """
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def _check_layer_paths(network: nn.Module, entry: ImageNetworkEntry) -> None:
    paths = dict(network.named_modules())
    absent = [path for path in entry.layers.values() if path not in paths]
    if absent:
        raise ValueError(f"image network {entry.name!r} names layers at module paths "
                         f"{absent} that its factory does not build")


def create_image_network(name: str, *, weights: str | os.PathLike | None,
                         random_state: int | np.random.Generator | None = None) -> nn.Module:
    """An image network of the registry, in eval mode, with its weights.

    Parameters
    ----------
    name : str
        A name of :func:`list_image_networks`.
    weights : path or "random"
        A local state-dict file (see :func:`read_state_dict`), or ``"random"`` for
        torchvision's random initialisation. There is no default: an untrained network
        must be asked for.
    random_state : int, numpy Generator or None
        Seed of the random weights (ignored for a file). The caller's torch random
        state is left as it was.

    Examples
    --------
    >>> a = create_image_network("alexnet", weights="random", random_state=1)
    >>> b = create_image_network("alexnet", weights="random", random_state=1)
    >>> torch.equal(a.features[0].weight, b.features[0].weight), a.training
    (True, False)
    """
    entry = image_network_entry(name)
    if weights is None or (isinstance(weights, str) and not weights.strip()):
        raise UsageError("weights are required", path="feature_weights",
                         fix="give a local .pth/.pt state dict, or 'random' for an untrained "
                             "network (nothing is downloaded)")
    if isinstance(weights, str) and weights == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(resolve_seed(random_state))
            network = entry.factory()
            if entry.initialise is not None:
                with torch.no_grad():
                    entry.initialise(network)
        _check_layer_paths(network, entry)
        return network.eval()
    state = read_state_dict(weights)
    if entry.convert_state_dict is not None:
        state = entry.convert_state_dict(state)
    network = _empty_network(entry)
    _check_layer_paths(network, entry)
    check_state_dict(network, state, name, weights)
    network.load_state_dict(state, strict=True)
    return network.eval()


def _empty_network(entry: ImageNetworkEntry) -> nn.Module:
    """The network with uninitialised parameters, which the weights file fills.

    Built on the meta device (nothing allocated, no random numbers drawn) and then
    given empty CPU storage: loading AlexNet or VGG16 skips drawing 61-138 million
    random values that the file replaces. Non-persistent buffers are in no state dict,
    so a network that has some is built the ordinary way.
    """
    with torch.device("meta"):
        network = entry.factory()
    if any(module._non_persistent_buffers_set for module in network.modules()):
        return entry.factory()
    return network.to_empty(device="cpu")


# --------------------------------------------------------------------------- activations


class _StopForward(Exception):
    """Raised by the capturing hook: the layers after the one read are not run."""



def layer_activations(network: nn.Module, inputs: torch.Tensor,
                      module_path: str) -> torch.Tensor:
    """Output of the module at ``module_path`` for ``inputs``, in eval mode, without gradients.

    A forward hook captures the module's output and stops the forward pass there, so
    the layers after it are not computed (reading ``conv1`` of VGG16 costs one
    convolution, not the network). The network's train/eval mode is restored after.

    Parameters
    ----------
    network : nn.Module
        E.g. from :func:`create_image_network`.
    inputs : torch.Tensor
        Preprocessed batch (:func:`preprocess_images`), on the network's device.
    module_path : str
        Dotted module path (:func:`layer_module` turns a layer name into one).

    Returns
    -------
    torch.Tensor
        The module's output, detached: ``(n, channels, height, width)`` for convolution
        layers, ``(n, features)`` for fully connected ones.

    Examples
    --------
    >>> net = nn.Sequential(nn.Conv2d(3, 2, 1), nn.ReLU(), nn.Flatten(), nn.Linear(8, 1))
    >>> tuple(layer_activations(net, torch.zeros(5, 3, 2, 2), "0").shape)
    (5, 2, 2, 2)
    """
    try:
        module = network.get_submodule(module_path)
    except AttributeError:
        raise UsageError(f"the network has no module {module_path!r}",
                         path="feature_layer") from None
    captured: list[torch.Tensor] = []

    def capture(_module, _inputs, output):
        captured.append(output.detach())
        raise _StopForward

    handle = module.register_forward_hook(capture)
    was_training = network.training
    network.eval()
    try:
        with torch.no_grad():
            network(inputs)
    except _StopForward:
        pass
    finally:
        handle.remove()
        network.train(was_training)
    if not captured:
        raise RuntimeError(f"the module {module_path!r} is not used by the network's forward")
    return captured[0]


def pool_activations(activations: torch.Tensor) -> torch.Tensor:
    """One vector per image: the spatial mean of convolution maps, fc outputs as they are.

    Examples
    --------
    >>> tuple(pool_activations(torch.ones(4, 8, 3, 3)).shape)
    (4, 8)
    """
    if activations.ndim == 4:
        return activations.mean(dim=(2, 3))
    if activations.ndim == 2:
        return activations
    return activations.flatten(1)


class ImageFeatures(BaseEstimator):
    """Features of one layer of an image network, for batches of images.

    A scikit-learn-style estimator: ``__init__`` stores its arguments, :meth:`fit`
    validates them and builds the network (there is nothing to learn from data), and
    :meth:`transform` turns 8-bit RGB images into a float32 matrix, one row per image:
    the spatial mean of each channel for convolution layers, the outputs as they are
    for fully connected layers.

    Parameters
    ----------
    network : str
        A name of :func:`list_image_networks`.
    layer : str
        A name of :func:`list_layers` for ``network`` (``fc7`` as seed 000).
    weights : path or "random"
        A local state-dict file, or ``"random"`` (explicitly) for an untrained network.
    device : {"auto", "cpu", "cuda"}
        Where the network runs.
    batch_size : int
        Images per forward pass.
    num_threads : int or None
        torch CPU threads during :meth:`transform` (None: torch's setting).
    preprocessing : Preprocessing or None
        Overrides the network's preprocessing (e.g. for weights trained with another
        normalisation).
    random_state : int, numpy Generator or None
        Seed of random weights.

    Attributes
    ----------
    network_ : nn.Module
    module_path_ : str
    preprocessing_ : Preprocessing
    device_ : torch.device
    seed_ : int or None
        The seed of random weights (drawn when ``random_state`` is None).
    weights_sha256_ : str or None
        Checksum of the weights file.
    spatially_pooled_ : bool
        Whether the layer gives maps, averaged over space.
    n_features_out_ : int

    Examples
    --------
    >>> extractor = ImageFeatures("alexnet", "conv5", weights="random", random_state=0).fit()
    >>> extractor.transform(np.zeros((3, 64, 64, 3), dtype=np.uint8)).shape
    (3, 256)
    >>> extractor.get_feature_names_out()[:2].tolist()
    ['conv5_000', 'conv5_001']
    """

    def __init__(self, network: str = "alexnet", layer: str = "fc7", *,
                 weights: str | os.PathLike | None = None, device: str = "cpu",
                 batch_size: int = 16, num_threads: int | None = None,
                 preprocessing: Preprocessing | None = None,
                 random_state: int | np.random.Generator | None = None):
        self.network = network
        self.layer = layer
        self.weights = weights
        self.device = device
        self.batch_size = batch_size
        self.num_threads = num_threads
        self.preprocessing = preprocessing
        self.random_state = random_state

    def fit(self, images: Any = None, y: Any = None) -> ImageFeatures:
        """Validate the parameters and build the network (``images`` is not used)."""
        entry = image_network_entry(self.network)
        self.module_path_ = layer_module(self.network, self.layer)
        check_int(self.batch_size, "batch_size", minimum=1)
        if self.num_threads is not None:
            check_int(self.num_threads, "num_threads", minimum=1)
        self.device_ = resolve_device(self.device)
        self.preprocessing_ = self.preprocessing or entry.preprocessing
        random_weights = isinstance(self.weights, str) and self.weights == "random"
        self.seed_ = resolve_seed(self.random_state) if random_weights else None
        self.network_ = create_image_network(self.network, weights=self.weights,
                                             random_state=self.seed_).to(self.device_)
        self.weights_sha256_ = None if random_weights else file_sha256(self.weights)
        height, width = self.preprocessing_.input_size
        probe = torch.zeros((1, 3, height, width), device=self.device_)
        activations = layer_activations(self.network_, probe, self.module_path_)
        self.spatially_pooled_ = activations.ndim == 4
        self.n_features_out_ = int(pool_activations(activations).shape[1])
        return self

    def transform(self, images: np.ndarray) -> np.ndarray:
        """Features of 8-bit ``images`` ``(n, height, width, 3)``: float32 ``(n, n_features)``."""
        check_is_fitted(self, "network_")
        images = np.asarray(images)
        if images.ndim == 3 and images.shape[-1] == 3:
            images = images[None]
        out = np.empty((len(images), self.n_features_out_), dtype=np.float32)
        # torch.set_num_threads costs 10-30 ms per call even when the count does not
        # change (measured with torch 2.13 on CPU): a cost per batch worth avoiding.
        unchanged = self.num_threads is None or self.num_threads == torch.get_num_threads()
        with contextlib.nullcontext() if unchanged else torch_threads(self.num_threads):
            for start in range(0, len(images), self.batch_size):
                stop = start + self.batch_size
                inputs = preprocess_images(images[start:stop], self.preprocessing_,
                                           self.device_)
                activations = layer_activations(self.network_, inputs, self.module_path_)
                out[start:stop] = pool_activations(activations).float().cpu().numpy()
        return out

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        """Column names: ``LAYER_INDEX`` (``fc7_0000`` ...)."""
        check_is_fitted(self, "network_")
        width = len(str(self.n_features_out_ - 1))
        return np.asarray([f"{self.layer}_{index:0{width}d}"
                           for index in range(self.n_features_out_)], dtype=object)

    def provenance(self) -> dict[str, Any]:
        """What produced the features: network, layer, weights and their checksum or seed."""
        check_is_fitted(self, "network_")
        return {
            "network": self.network, "layer": self.layer, "module": self.module_path_,
            "weights": "random" if self.seed_ is not None else str(self.weights),
            "weights_sha256": self.weights_sha256_, "random_seed": self.seed_,
            "pooling": ("spatial mean per channel" if self.spatially_pooled_
                        else "none (fully connected)"),
            "preprocessing": self.preprocessing_.to_dict(),
        }

