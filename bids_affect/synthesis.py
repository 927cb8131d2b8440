"""Images that drive an ROI's encoding model, and whether the targets are separable (seed 000).

Seed 000 paired each subject's encoding models of the amygdala and its
subregions with a deep generator network and searched the generator's latent
space with an evolutionary algorithm for images maximising each region's
predicted response; a classifier then told the images made for different
targets apart from the predicted activations of every region's model
(6-way accuracy 71.7%, LB and SF confused; its Figure 2).

Response models (:func:`image_response_model`)
    Images in [0, 1] ``(n, 3, H, W)`` -> resized to the network's input and
    normalised -> a layer of the image network (spatial mean per channel) ->
    an encoding model (e.g. :class:`~bids_affect.image_validation.LinearROIReadout`)
    -> ``(n, n_rois)``. Differentiable when every part is torch.

Image generators
    A generator maps latent codes ``(n, latent_dim)`` to images in [0, 1]. A
    user's generator comes from a file (:func:`load_generator`): a TorchScript
    archive (code and weights together; nothing but TorchScript runs) or a
    pickled ``nn.Module`` (its class must be importable; unpickling runs code:
    load only files you trust), optionally with a separate state-dict file
    whose keys and shapes are checked. Its output must be an image batch
    ``(n, 3, H, W)``; anything else is refused with the file named. Without
    one, a built-in parameterisation: :class:`FourierGenerator` (colour
    Fourier coefficients up to a maximum frequency, scaled by 1/f, through a
    sigmoid: smooth, natural-looking spectra; few enough dimensions for
    CMA-ES) or :class:`PixelGenerator` (every pixel; for gradient ascent).

Optimisers (:func:`synthesize`)
    ``"cma"``: CMA-ES (the ``cma`` package), one independent search per image
    from its own random start; the candidates of every search are evaluated
    together, one batch through the generator and the models per
    generation. Sep-CMA (diagonal covariance) above 100 dimensions, where a
    full covariance is too costly. ``"gradient"``: Adam on the latent codes
    through the differentiable chain, with random jitter (image shifts of a
    few pixels each step) and, for :class:`PixelGenerator`, a Gaussian blur of
    the pixels every few steps (Yosinski et al. 2015), which keep the images
    from exploiting pixel-level noise. The objective of each image is the
    target ROI's predicted response, minus the mean of the other ROIs' with
    ``contrast="others"``.

Separability (:func:`separability`)
    Predicted responses of every ROI model to the images made for every
    target; a cross-validated classifier (nearest centroid on z-scored
    responses, stratified folds, every permutation computed at once) predicts
    each image's target: accuracy against chance (1 / n_targets, and the
    permutation null's mean) with a permutation p, the confusion matrix of
    cross-validated predictions, and a hierarchical clustering of
    the targets (scipy, average linkage of the Euclidean distances between
    the targets' mean standardised response profiles).

Examples
--------
>>> class Redness(nn.Module):
...     roi_names = ["red", "green"]
...     def forward(self, images):
...         return images.mean(dim=(2, 3))[:, :2]
>>> result = synthesize(Redness(), "red", n_images=2, image_size=16, n_steps=20,
...                     optimizer="gradient", learning_rate=0.5, random_state=0)
>>> bool((result.responses["red"] > 0.9).all())
True
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cma
import numpy as np
import pandas as pd
import torch
from PIL import Image
from scipy.cluster import hierarchy
from sklearn.base import clone
from sklearn.metrics import confusion_matrix
from sklearn.model_selection import StratifiedKFold, permutation_test_score
from torch import nn
from torch.nn import functional

from bids_affect._utils.validation import check_choice, check_int, check_number
from bids_affect.exceptions import InputDataError, InputMissingError, UsageError
from bids_affect.models.image import IMAGENET_MEAN, IMAGENET_STD, check_state_dict, resolve_seed
from bids_affect.models.training import resolve_device
from bids_affect.selectivity import module_path

__all__ = [
    "CONTRASTS",
    "OPTIMIZERS",
    "FourierGenerator",
    "ImageGenerator",
    "PixelGenerator",
    "SeparabilityResult",
    "SynthesisResult",
    "image_response_model",
    "load_generator",
    "random_images",
    "separability",
    "synthesis_separability",
    "synthesize",
]

#: Optimisers of :func:`synthesize`.
OPTIMIZERS = ("cma", "gradient")
#: Objectives: the target ROI alone, or minus the mean of the other ROIs.
CONTRASTS = ("none", "others")


# --------------------------------------------------------------------------- generators


class ImageGenerator(nn.Module):
    """Latent codes ``(n, latent_dim)`` -> images ``(n, 3, H, W)`` in [0, 1].

    Subclasses set :attr:`latent_dim` and :attr:`image_size` and implement
    ``forward``. :meth:`sample_latents` draws starting codes.
    """

    latent_dim: int
    image_size: tuple[int, int]

    def sample_latents(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Random starting codes ``(n, latent_dim)`` (standard normal)."""
        return rng.standard_normal((n, self.latent_dim)).astype(np.float32)


class FourierGenerator(ImageGenerator):
    """Images from their low-frequency colour Fourier coefficients.

    The latent code holds the real and imaginary parts of each colour
    channel's 2-D real FFT coefficients with frequency at most
    ``max_frequency`` cycles per image; each is scaled by ``1 / f**decay``
    (natural images' amplitude spectrum) and the image is the sigmoid of the
    inverse transform, so every code gives a valid image and small codes give
    smooth ones.

    Parameters
    ----------
    image_size : int
        Side of the square images.
    max_frequency : int
        Highest frequency kept (cycles per image), at most ``image_size // 2``.
    decay : float
        Exponent of the 1/f scaling.
    contrast : float
        Scale of the inverse transform before the sigmoid.

    Examples
    --------
    >>> generator = FourierGenerator(16, max_frequency=3)
    >>> generator.latent_dim, tuple(generator(torch.zeros(2, generator.latent_dim)).shape)
    (168, (2, 3, 16, 16))
    """

    def __init__(self, image_size: int = 64, max_frequency: int = 8, decay: float = 1.0,
                 contrast: float = 4.0):
        super().__init__()
        size = check_int(image_size, "image_size", minimum=8)
        max_frequency = check_int(max_frequency, "max_frequency", minimum=1)
        if max_frequency > size // 2:
            raise UsageError(f"must be at most image_size // 2 = {size // 2}, got "
                             f"{max_frequency}", path="max_frequency")
        fy = np.fft.fftfreq(size) * size
        fx = np.fft.rfftfreq(size) * size
        radius = np.hypot(*np.meshgrid(fy, fx, indexing="ij"))
        kept = (np.abs(fy)[:, None] <= max_frequency) & (fx[None, :] <= max_frequency)
        scale = 1.0 / np.maximum(radius, 1.0) ** check_number(decay, "decay", minimum=0.0)
        self.image_size = (size, size)
        self.contrast = check_number(contrast, "contrast", positive=True)
        self.register_buffer("index", torch.from_numpy(np.flatnonzero(kept.ravel())))
        self.register_buffer("scale", torch.from_numpy(
            scale.ravel()[kept.ravel()].astype(np.float32)))
        self.spectrum_shape = kept.shape
        self.latent_dim = 3 * 2 * int(kept.sum())

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        n = latents.shape[0]
        parts = latents.reshape(n, 3, 2, -1) * self.scale
        spectrum = torch.zeros((n, 3, math.prod(self.spectrum_shape)), dtype=torch.complex64,
                               device=latents.device)
        spectrum[:, :, self.index] = torch.complex(parts[:, :, 0], parts[:, :, 1])
        spectrum = spectrum.reshape(n, 3, *self.spectrum_shape)
        images = torch.fft.irfft2(spectrum, s=self.image_size, norm="ortho")
        return torch.sigmoid(self.contrast * images)


class PixelGenerator(ImageGenerator):
    """Images whose latent code is every pixel (before a sigmoid): for gradient ascent.

    Examples
    --------
    >>> generator = PixelGenerator(8)
    >>> generator.latent_dim, float(generator(torch.zeros(1, 192)).mean())
    (192, 0.5)
    """

    def __init__(self, image_size: int = 64):
        super().__init__()
        size = check_int(image_size, "image_size", minimum=8)
        self.image_size = (size, size)
        self.latent_dim = 3 * size * size

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(latents.reshape(-1, 3, *self.image_size))

    def sample_latents(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Small random pixels around grey (codes with standard deviation 0.1)."""
        return (0.1 * rng.standard_normal((n, self.latent_dim))).astype(np.float32)


class _FileGenerator(ImageGenerator):
    """A user's generator network, its output mapped from ``output_range`` to [0, 1]."""

    def __init__(self, network: nn.Module, latent_dim: int, output_range: tuple[float, float],
                 image_size: tuple[int, int], path: str):
        super().__init__()
        self.network = network
        self.latent_dim = latent_dim
        self.low, self.high = output_range
        self.image_size = image_size
        self.path = path

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return (self.network(latents) - self.low) / (self.high - self.low)

    def train(self, mode: bool = True) -> _FileGenerator:
        self.training = mode
        # An ExportedProgram's module refuses train()/eval(): it runs as exported.
        with contextlib.suppress(NotImplementedError):
            self.network.train(mode)
        return self


def _check_image_batch(output: Any, n: int, path: str) -> torch.Tensor:
    if not isinstance(output, torch.Tensor) or not output.is_floating_point():
        kind = type(output).__name__ if not isinstance(output, torch.Tensor) else str(
            output.dtype)
        raise InputDataError(f"the generator's output is {kind}, not a float tensor of images",
                             path=path, fix="give a generator returning (batch, 3, height, "
                                            "width) images")
    shape = tuple(output.shape)
    if output.ndim != 4 or shape[0] != n or shape[1] != 3 or min(shape[2:]) < 8:
        raise InputDataError(f"the generator's output has shape {shape} for {n} latent codes; "
                             f"an image batch ({n}, 3, height, width) with sides of 8 pixels "
                             "or more is needed", path=path,
                             fix="give a generator of RGB images, or wrap it to return them")
    if not torch.isfinite(output).all():
        raise InputDataError("the generator's output holds NaN or infinite values", path=path)
    return output


def _read_module(path: Path) -> Any:
    """The module in ``path``: a torch.export archive, TorchScript, or a pickled module."""
    errors = []
    try:
        return torch.export.load(path).module()
    except Exception as error:  # not an ExportedProgram archive
        errors.append(error)
    try:
        with warnings.catch_warnings():
            # TorchScript is deprecated in favour of torch.export, but users still have it.
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.load(str(path), map_location="cpu")
    except Exception as error:  # not TorchScript either
        errors.append(error)
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:
        raise InputDataError(f"cannot be read as a torch module ({type(error).__name__}: "
                             f"{str(error).splitlines()[0] if str(error) else ''})", path=path,
                             fix="save the generator with torch.export.save, torch.jit.save "
                                 "or torch.save(module)") from error


def load_generator(path: str | os.PathLike, *, latent_dim: int | None = None,
                   weights: str | os.PathLike | None = None,
                   output_range: tuple[float, float] = (0.0, 1.0),
                   random_state: int | np.random.Generator | None = None) -> ImageGenerator:
    """A user's image generator network from a file, checked to give an image batch.

    Parameters
    ----------
    path : path
        A ``torch.export`` archive (``torch.export.save``, with a dynamic batch
        dimension: the safe format, no code from the file runs), a TorchScript
        archive (``torch.jit.save``), or a pickled ``nn.Module``
        (``torch.save(model)``; unpickling runs code from the file: load only
        files you trust).
    latent_dim : int, optional
        Length of a latent code; default the module's ``latent_dim`` attribute
        (a ``torch.export`` archive keeps no attributes: give it).
    weights : path, optional
        A state dict loaded into the module after its keys and shapes are
        checked (a file for another architecture is refused, naming it).
    output_range : (float, float)
        The generator's output range, mapped to [0, 1] (``(-1, 1)`` for tanh
        outputs). More than 5% of the values of the probe batch outside the
        range by over 10% of its width gives a warning.
    random_state : int, numpy Generator or None
        Seeds the probe codes.

    Raises
    ------
    InputMissingError
        (exit 66) the file does not exist.
    InputDataError
        (exit 65) the file holds no module, the weights do not fit it, or its
        output is not an image batch ``(n, 3, H, W)``.

    Examples
    --------
    >>> import tempfile
    >>> net = nn.Sequential(nn.Linear(4, 3 * 8 * 8), nn.Sigmoid(), nn.Unflatten(1, (3, 8, 8)))
    >>> path = Path(tempfile.mkdtemp()) / "generator.pt"
    >>> torch.save(net, path)
    >>> generator = load_generator(path, latent_dim=4)
    >>> generator.image_size
    (8, 8)
    >>> bad = Path(tempfile.mkdtemp()) / "flat.pt"
    >>> torch.save(nn.Linear(4, 10), bad)
    >>> load_generator(bad, latent_dim=4)
    Traceback (most recent call last):
    ...
    bids_affect.exceptions.InputDataError: .../flat.pt: the generator's output has shape ...
    """
    path = Path(path)
    if not path.is_file():
        raise InputMissingError("the generator file does not exist", path=path,
                                fix="give a torch.export, TorchScript or torch.save'd "
                                    "generator module")
    network = _read_module(path)
    if not isinstance(network, nn.Module):
        raise InputDataError(f"holds a {type(network).__name__}, not a torch module",
                             path=path, fix="save the module itself, not its state dict "
                                            "(give a state dict as weights=)")
    if weights is not None:
        from bids_affect.models.image import read_state_dict

        state = read_state_dict(weights)
        check_state_dict(network, state, f"generator {path.name}", weights)
        network.load_state_dict(state)
    latent_dim = latent_dim if latent_dim is not None else getattr(network, "latent_dim", None)
    if latent_dim is None:
        raise UsageError("the generator's latent dimension is unknown",
                         path="generator_latent_dim",
                         fix=f"give latent_dim, or set a latent_dim attribute on {path.name}")
    latent_dim = check_int(latent_dim, "generator_latent_dim", minimum=1)
    low, high = (check_number(v, "generator_output_range") for v in output_range)
    if not high > low:
        raise UsageError(f"must be (low, high) with high > low, got {output_range!r}",
                         path="generator_output_range")
    with contextlib.suppress(NotImplementedError):  # an exported module runs as exported
        network.eval()
    probe = torch.from_numpy(np.random.default_rng(resolve_seed(random_state))
                             .standard_normal((2, latent_dim)).astype(np.float32))
    try:
        with torch.no_grad():
            output = network(probe)
    except Exception as error:
        raise InputDataError(f"fails on latent codes of length {latent_dim} "
                             f"({type(error).__name__}: "
                             f"{str(error).splitlines()[0] if str(error) else ''})", path=path,
                             fix="check the generator's latent dimension") from error
    output = _check_image_batch(output, 2, str(path))
    width = high - low
    outside = ((output < low - 0.1 * width) | (output > high + 0.1 * width)).float().mean()
    if float(outside) > 0.05:
        warnings.warn(f"{path}: {100 * float(outside):.0f}% of the generator's output lies "
                      f"outside output_range {output_range}; images will be clipped",
                      UserWarning, stacklevel=2)
    return _FileGenerator(network, latent_dim, (low, high), tuple(output.shape[2:]), str(path))


# --------------------------------------------------------------------------- response models


class _ResponseModel(nn.Module):
    """Images in [0, 1] -> network input -> a layer's channel means -> encoding model."""

    def __init__(self, network: nn.Module, layer: str, readout: Callable,
                 input_size: tuple[int, int] | None, mean: Sequence[float],
                 std: Sequence[float], scale: float, roi_names: Sequence[str] | None):
        super().__init__()
        self.network = network
        self.layer = layer
        self.readout = readout
        self.input_size = input_size
        self.scale = scale
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self.roi_names = list(roi_names) if roi_names is not None else getattr(
            readout, "roi_names", None)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The layer's channel means (fully connected outputs as they are)."""
        if self.input_size is not None and tuple(images.shape[-2:]) != tuple(self.input_size):
            images = functional.interpolate(images, size=self.input_size, mode="bilinear",
                                            align_corners=False, antialias=True)
        inputs = (images * self.scale - self.mean) / self.std
        captured: list[torch.Tensor] = []

        def capture(_module, _inputs, output):
            captured.append(output)
            raise _Stop

        handle = self.network.get_submodule(self.layer).register_forward_hook(capture)
        try:
            self.network(inputs)
        except _Stop:
            pass
        finally:
            handle.remove()
        if not captured:
            raise UsageError(f"layer {self.layer!r} is not used by the network's forward pass",
                             path="feature_layer")
        output = captured[0]
        return output.flatten(2).mean(dim=2) if output.ndim > 2 else output

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        predicted = self.readout(self.features(images))
        if not isinstance(predicted, torch.Tensor):
            predicted = torch.as_tensor(np.asarray(predicted, dtype=np.float32))
        return predicted if predicted.ndim == 2 else predicted[:, None]


class _Stop(Exception):
    pass


def image_response_model(network: nn.Module, layer: nn.Module | str, readout: Callable, *,
                         preprocessing=None, roi_names: Sequence[str] | None = None
                         ) -> nn.Module:
    """Images in [0, 1] -> predicted ROI responses, through a network's layer and a readout.

    Parameters
    ----------
    network : nn.Module
        The image network of the encoding features (eval mode is set).
    layer : nn.Module or str
        Its layer (module or path) the encoding model reads.
    readout : callable
        Features ``(n, n_features)`` -> ``(n, n_rois)``: a torch module (the
        chain is then differentiable, e.g.
        :class:`~bids_affect.image_validation.LinearROIReadout`) or any callable.
    preprocessing : bids_affect.models.image.Preprocessing, optional
        The network's input size, scale and normalisation (images are resized
        to the input size and multiplied by ``scale / 255``); default 224x224
        ImageNet normalisation. Pass ``image_network_entry(name).preprocessing``.
    roi_names : sequence of str, optional
        Default: the readout's ``roi_names``.

    Examples
    --------
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    >>> model = image_response_model(net, "1", nn.Linear(4, 2), roi_names=["CM", "LB"])
    >>> tuple(model(torch.rand(5, 3, 32, 32)).shape), model.roi_names
    ((5, 2), ['CM', 'LB'])
    """
    path = module_path(network, layer)
    if preprocessing is None:
        size, mean, std, scale = (224, 224), IMAGENET_MEAN, IMAGENET_STD, 1.0
    else:
        size = preprocessing.input_size
        mean, std = preprocessing.mean, preprocessing.std
        scale = 255.0 / float(preprocessing.scale)
    network.eval()
    return _ResponseModel(network, path, readout, size, mean, std, scale, roi_names).eval()


def _roi_names(model: Callable, n_rois: int, roi_names: Sequence[str] | None) -> list[str]:
    names = list(roi_names) if roi_names is not None else getattr(model, "roi_names", None)
    names = names or [f"roi{i}" for i in range(n_rois)]
    if len(names) != n_rois:
        raise InputDataError(f"{len(names)} ROI names for {n_rois} predicted ROIs",
                             path="roi_names")
    return list(names)


# --------------------------------------------------------------------------- synthesis


@dataclass
class SynthesisResult:
    """Images synthesised for one target ROI.

    Attributes
    ----------
    target : str
    images : ndarray ``(n, 3, H, W)``, float32 in [0, 1]
    latents : ndarray ``(n, latent_dim)``
    objective : ndarray ``(n,)``
        The final objective of each image.
    responses : pandas.DataFrame
        Predicted response of every ROI to every image.
    history : ndarray ``(n_steps,)``
        Mean objective of the best images so far, per step.
    optimizer : str
    """

    target: str
    images: np.ndarray
    latents: np.ndarray
    objective: np.ndarray
    responses: pd.DataFrame
    history: np.ndarray
    optimizer: str
    settings: dict[str, Any] = field(default_factory=dict)

    def pil_images(self) -> list[Image.Image]:
        """The images as 8-bit RGB Pillow images (to save as PNG).

        Examples
        --------
        >>> result = SynthesisResult("CM", np.ones((1, 3, 4, 4), np.float32), np.zeros((1, 2)),
        ...                          np.zeros(1), pd.DataFrame(), np.zeros(1), "cma")
        >>> result.pil_images()[0].getpixel((0, 0))
        (255, 255, 255)
        """
        pixels = np.clip(np.rint(self.images * 255.0), 0, 255).astype(np.uint8)
        return [Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0)))
                for image in pixels]


def _objective(responses: torch.Tensor, target: int, contrast: str) -> torch.Tensor:
    value = responses[:, target]
    if contrast == "others" and responses.shape[1] > 1:
        others = torch.cat([responses[:, :target], responses[:, target + 1:]], dim=1)
        value = value - others.mean(dim=1)
    return value


def _evaluate(model: Callable, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    chunks = []
    for start in range(0, len(images), batch_size):
        out = model(images[start:start + batch_size])
        if not isinstance(out, torch.Tensor):
            out = torch.as_tensor(np.asarray(out, dtype=np.float32))
        chunks.append(out if out.ndim == 2 else out[:, None])
    return torch.cat(chunks)


def _jitter(images: torch.Tensor, pixels: int, rng: np.random.Generator) -> torch.Tensor:
    if pixels <= 0:
        return images
    dy, dx = (int(v) for v in rng.integers(-pixels, pixels + 1, size=2))
    return torch.roll(images, shifts=(dy, dx), dims=(2, 3))


def _gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, math.ceil(2.5 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    kernel = kernel / kernel.sum()
    channels = images.shape[1]
    padded = functional.pad(images, (radius, radius, radius, radius), mode="reflect")
    out = functional.conv2d(padded, kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1),
                            groups=channels)
    return functional.conv2d(out, kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1),
                             groups=channels)


def random_images(generator: ImageGenerator, n: int,
                  random_state: int | np.random.Generator | None = None) -> torch.Tensor:
    """Images of ``n`` random latent codes: the starting points, and the baseline to beat.

    Examples
    --------
    >>> tuple(random_images(FourierGenerator(16, 2), 3, random_state=0).shape)
    (3, 3, 16, 16)
    """
    rng = np.random.default_rng(random_state)
    with torch.no_grad():
        return generator(torch.from_numpy(generator.sample_latents(n, rng))).clamp(0, 1)


def synthesize(response_model: Callable[[torch.Tensor], Any], target: str | int, *,
               roi_names: Sequence[str] | None = None, n_images: int = 8,
               generator: ImageGenerator | None = None, optimizer: str = "cma",
               contrast: str = "none", n_steps: int = 100, image_size: int = 64,
               population: int | None = None, sigma0: float = 1.0,
               learning_rate: float = 0.05, jitter: int = 2, blur_sigma: float = 0.5,
               blur_every: int = 4, batch_size: int = 256, device: str = "cpu",
               random_state: int | np.random.Generator | None = None) -> SynthesisResult:
    """Activation maximisation of one ROI's encoding model.

    Parameters
    ----------
    response_model : callable
        Images ``(n, 3, H, W)`` in [0, 1] -> predicted responses ``(n, n_rois)``
        (:func:`image_response_model`). Gradient ascent needs a torch chain.
    target : str or int
        The ROI to drive (a name of ``roi_names``, or a column index).
    roi_names : sequence of str, optional
        Default the model's ``roi_names``.
    n_images : int
        Images to make, each from its own random start.
    generator : ImageGenerator, optional
        :func:`load_generator`, or default :class:`FourierGenerator` (CMA-ES,
        ``max_frequency=8``) or :class:`PixelGenerator` (gradient ascent).
    optimizer : {"cma", "gradient"}
    contrast : {"none", "others"}
        Maximise the target alone, or the target minus the other ROIs' mean.
    n_steps : int
        CMA-ES generations or gradient steps.
    image_size : int
        Side of the built-in generators' images.
    population : int, optional
        CMA-ES candidates per generation (default ``4 + 3 ln(latent_dim)``).
    sigma0 : float
        CMA-ES initial step size (latent units).
    learning_rate : float
        Adam's, for gradient ascent.
    jitter : int
        Gradient ascent: largest random shift (pixels) of the images each step.
    blur_sigma, blur_every : float, int
        Gradient ascent with :class:`PixelGenerator`: blur the pixels with this
        Gaussian every ``blur_every`` steps (0 turns it off).
    batch_size : int
        Images per evaluation batch.
    device : {"auto", "cpu", "cuda"}
    random_state : int, numpy Generator or None

    Returns
    -------
    SynthesisResult

    Examples
    --------
    See the module docstring.
    """
    check_choice(optimizer, "optimizer", OPTIMIZERS)
    check_choice(contrast, "contrast", CONTRASTS)
    n_images = check_int(n_images, "n_images", minimum=1)
    n_steps = check_int(n_steps, "n_steps", minimum=1)
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    torch_device = resolve_device(device)
    rng = np.random.default_rng(random_state)
    if generator is None:
        generator = (FourierGenerator(image_size) if optimizer == "cma"
                     else PixelGenerator(image_size))
    if not isinstance(generator, ImageGenerator):
        raise UsageError(f"must be an ImageGenerator (load_generator), got "
                         f"{type(generator).__name__}", path="generator")
    generator = generator.to(torch_device).eval()
    if isinstance(response_model, nn.Module):
        response_model = response_model.to(torch_device).eval()
    with torch.no_grad():
        probe = _evaluate(response_model, random_images(generator, 2, rng).to(torch_device),
                          batch_size)
    names = _roi_names(response_model, probe.shape[1], roi_names)
    if isinstance(target, str):
        if target not in names:
            raise UsageError(f"ROI {target!r} is not predicted by the model", path="target",
                             fix=f"use one of {', '.join(names)}")
        target_index = names.index(target)
    else:
        target_index = check_int(target, "target", minimum=0)
        if target_index >= len(names):
            raise UsageError(f"must be below {len(names)}, got {target}", path="target")
    settings = {"optimizer": optimizer, "contrast": contrast, "n_steps": n_steps,
                "n_images": n_images, "generator": type(generator).__name__,
                "latent_dim": generator.latent_dim}
    start = generator.sample_latents(n_images, rng)
    if optimizer == "cma":
        # Whatever cma might still draw from numpy's global generator, the caller's
        # global random state is left as it was.
        global_state = np.random.get_state()  # noqa: NPY002 - guarding the legacy state
        try:
            latents, history = _cma_search(generator, response_model, target_index, contrast,
                                           start, n_steps, population, sigma0, batch_size,
                                           rng, torch_device, settings)
        finally:
            np.random.set_state(global_state)  # noqa: NPY002
    else:
        latents, history = _gradient_ascent(generator, response_model, target_index, contrast,
                                            start, n_steps, learning_rate, jitter, blur_sigma,
                                            blur_every, rng, torch_device, settings)
    with torch.no_grad():
        images = generator(torch.from_numpy(latents).to(torch_device)).clamp(0, 1)
        responses = _evaluate(response_model, images, batch_size)
        objective = _objective(responses, target_index, contrast)
    return SynthesisResult(
        target=names[target_index], images=images.cpu().numpy().astype(np.float32),
        latents=latents, objective=objective.cpu().numpy().astype(np.float64),
        responses=pd.DataFrame(responses.cpu().numpy().astype(np.float64), columns=names),
        history=np.asarray(history, dtype=np.float64), optimizer=optimizer, settings=settings)


def _cma_search(generator, model, target, contrast, start, n_steps, population, sigma0,
                batch_size, rng, device, settings) -> tuple[np.ndarray, list[float]]:
    """Independent CMA-ES searches, one per image, evaluated in one batch per generation."""
    dim = generator.latent_dim
    diagonal = dim > 100
    sigma0 = check_number(sigma0, "sigma0", positive=True)
    strategies = []
    for code in start:
        # cma samples from numpy's global generator (and seeds it) unless given its own
        # normal sampler: each search gets an independent stream of ours instead.
        stream = np.random.default_rng(rng.integers(2**63))
        options = {"seed": np.nan, "randn": lambda *shape, s=stream: s.standard_normal(shape),
                   "verbose": -9, "CMA_diagonal": diagonal, "maxiter": n_steps}
        if population is not None:
            options["popsize"] = check_int(population, "population", minimum=2)
        strategies.append(cma.CMAEvolutionStrategy(code.astype(np.float64), sigma0, options))
    settings.update({"population": strategies[0].popsize, "sigma0": sigma0,
                     "cma_diagonal": diagonal})
    best_codes = start.astype(np.float64).copy()
    best_values = np.full(len(start), -np.inf)
    history = []
    for _ in range(n_steps):
        with warnings.catch_warnings():
            # cma's step-size adaptation warns about samples beyond 7 sigma of its
            # internal normalisation when a sigmoid-saturated objective plateaus; the
            # search goes on correctly, and the message means nothing to a user.
            warnings.filterwarnings("ignore", message="elements of z2", category=UserWarning)
            candidates = [strategy.ask() for strategy in strategies]
        stacked = np.concatenate([np.asarray(c) for c in candidates]).astype(np.float32)
        with torch.no_grad():
            images = generator(torch.from_numpy(stacked).to(device)).clamp(0, 1)
            values = _objective(_evaluate(model, images, batch_size), target, contrast)
        values = values.cpu().numpy().astype(np.float64)
        offset = 0
        for index, (strategy, batch) in enumerate(zip(strategies, candidates)):
            mine = values[offset:offset + len(batch)]
            offset += len(batch)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="elements of z2",
                                        category=UserWarning)
                strategy.tell(batch, (-mine).tolist())  # cma minimises
            top = int(np.argmax(mine))
            if mine[top] > best_values[index]:
                best_values[index], best_codes[index] = mine[top], np.asarray(batch[top])
        history.append(float(best_values.mean()))
    return best_codes.astype(np.float32), history


def _gradient_ascent(generator, model, target, contrast, start, n_steps, learning_rate,
                     jitter, blur_sigma, blur_every, rng, device, settings
                     ) -> tuple[np.ndarray, list[float]]:
    """Adam on the latent codes, with jitter (and pixel blur for PixelGenerator)."""
    learning_rate = check_number(learning_rate, "learning_rate", positive=True)
    jitter = check_int(jitter, "jitter", minimum=0)
    blur_every = check_int(blur_every, "blur_every", minimum=0)
    blur_sigma = check_number(blur_sigma, "blur_sigma", minimum=0.0)
    settings.update({"learning_rate": learning_rate, "jitter": jitter,
                     "blur_sigma": blur_sigma, "blur_every": blur_every})
    latents = torch.from_numpy(start.copy()).to(device).requires_grad_(True)
    optimiser = torch.optim.Adam([latents], lr=learning_rate)
    history = []
    for step in range(n_steps):
        images = _jitter(generator(latents), jitter, rng)
        responses = model(images)
        if not isinstance(responses, torch.Tensor) or not responses.requires_grad:
            raise UsageError("gradient ascent needs a differentiable chain, but the response "
                             "model's output carries no gradient", path="optimizer",
                             fix="use optimizer='cma', or a torch encoding model "
                                 "(image_validation.roi_readout)")
        responses = responses if responses.ndim == 2 else responses[:, None]
        value = _objective(responses, target, contrast)
        optimiser.zero_grad()
        (-value.sum()).backward()
        optimiser.step()
        history.append(float(value.detach().mean()))
        if (isinstance(generator, PixelGenerator) and blur_every and blur_sigma > 0
                and (step + 1) % blur_every == 0):
            with torch.no_grad():
                shaped = latents.view(-1, 3, *generator.image_size)
                shaped.copy_(_gaussian_blur(shaped, blur_sigma))
    return latents.detach().cpu().numpy().astype(np.float32), history


# --------------------------------------------------------------------------- separability


@dataclass
class SeparabilityResult:
    """How well the images made for each target are told apart (seed 000's Figure 2).

    Attributes
    ----------
    accuracy : float
        Cross-validated accuracy (mean over folds).
    chance : float
        ``1 / n_targets``.
    null_mean : float
        Mean accuracy of the permutation null.
    p_value : float
        ``(1 + #null >= accuracy) / (1 + n_permutations)``.
    n_permutations : int
    fold_accuracies : ndarray
    confusion : pandas.DataFrame
        Counts of cross-validated predictions: rows true target, columns predicted.
    linkage : ndarray
        scipy linkage matrix of the targets.
    order : list of str
        Targets in dendrogram order.
    targets : list of str
    """

    accuracy: float
    chance: float
    null_mean: float
    p_value: float
    n_permutations: int
    fold_accuracies: np.ndarray
    confusion: pd.DataFrame
    linkage: np.ndarray
    order: list[str]
    targets: list[str]

    def table(self) -> pd.DataFrame:
        """One-row summary: accuracy, chance, null mean, p, permutations, targets."""
        return pd.DataFrame([{"n_targets": len(self.targets), "accuracy": self.accuracy,
                              "chance": self.chance, "null_mean": self.null_mean,
                              "p_permutation": self.p_value,
                              "n_permutations": self.n_permutations,
                              "targets": " ".join(self.targets),
                              "dendrogram_order": " ".join(self.order)}])


def _standardise(train: np.ndarray, rows: np.ndarray) -> np.ndarray:
    mean, spread = train.mean(axis=0), train.std(axis=0)
    return (rows - mean) / np.where(spread > 0, spread, 1.0)


def _centroid_predictions(values: np.ndarray, codes: np.ndarray, train: np.ndarray,
                          test: np.ndarray, n_classes: int) -> np.ndarray:
    """Nearest-centroid predictions of the test rows for many labellings at once.

    ``codes`` is ``(n_labellings, n_samples)``; features are z-scored with the
    training rows (labels play no part in that, so it is shared). Returns
    ``(n_labellings, n_test)``.
    """
    x_train = _standardise(values[train], values[train])
    x_test = _standardise(values[train], values[test])
    onehot = np.eye(n_classes)[codes[:, train]]              # (P, n_train, k)
    counts = onehot.sum(axis=1)                              # (P, k)
    centroids = np.einsum("pnk,nd->pkd", onehot, x_train) / np.maximum(counts, 1)[..., None]
    distances = (np.einsum("pkd,pkd->pk", centroids, centroids)[:, None, :]
                 - 2.0 * np.einsum("td,pkd->ptk", x_test, centroids))
    # A class absent from a permuted training fold can never be predicted.
    distances = np.where(counts[:, None, :] > 0, distances, np.inf)
    return np.argmin(distances, axis=2)


def separability(responses: pd.DataFrame | np.ndarray, targets: Sequence[str] | np.ndarray, *,
                 n_splits: int = 5, n_permutations: int = 1000, classifier=None,
                 n_jobs: int | None = None,
                 random_state: int | np.random.Generator | None = None) -> SeparabilityResult:
    """N-way classification of synthesised images by target, from predicted ROI responses.

    The default classifier is a nearest centroid on responses z-scored with
    the training fold: every permutation of the null is computed at once
    (1,000 permutations of 5 folds in well under a second), where
    scikit-learn's ``permutation_test_score`` refits a classifier 5,000 times
    (minutes). The permuted labels are shuffled over all images and the
    folds kept (stratified by the true targets); the p-value is
    ``(1 + #null >= accuracy) / (1 + n_permutations)``. Any scikit-learn
    classifier can be given instead; it then goes through
    ``permutation_test_score``.

    Parameters
    ----------
    responses : DataFrame or ndarray ``(n_images, n_models)``
        Predicted activation of every ROI model (of every subject) to every image.
    targets : array-like of str
        The target each image was made for.
    n_splits : int
        Stratified folds (shuffled; each image is its own optimisation, so
        images are independent samples).
    n_permutations : int
        Label permutations of the null.
    classifier : sklearn classifier, optional
        Default: the vectorised nearest centroid.
    n_jobs : int, optional
        Parallel permutations of a scikit-learn classifier.
    random_state : int, numpy Generator or None

    Returns
    -------
    SeparabilityResult

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> targets = np.repeat(["CM", "LB", "SF"], 10)
    >>> responses = rng.normal(size=(30, 3)) + 3 * (targets[:, None] == ["CM", "LB", "SF"])
    >>> result = separability(responses, targets, n_permutations=99, random_state=0)
    >>> result.accuracy > 0.9, result.p_value
    (True, 0.01)
    """
    targets = np.asarray(targets, dtype=str)
    values = np.asarray(responses, dtype=np.float64)
    if values.ndim != 2 or len(values) != len(targets):
        raise InputDataError(f"responses {values.shape} and {len(targets)} targets do not "
                             "match: one row per image", path="responses")
    if not np.isfinite(values).all():
        raise InputDataError("responses hold NaN or infinite values", path="responses")
    names, codes, counts = np.unique(targets, return_inverse=True, return_counts=True)
    n_splits = check_int(n_splits, "n_splits", minimum=2)
    n_permutations = check_int(n_permutations, "n_permutations", minimum=1)
    if len(names) < 2:
        raise InputDataError("needs images made for 2 targets at least", path="targets")
    if counts.min() < n_splits:
        raise InputDataError(f"target {str(names[np.argmin(counts)])!r} has {counts.min()} "
                             "images, "
                             f"fewer than the {n_splits} folds", path="targets",
                             fix="make more images per target or use fewer folds")
    seed = resolve_seed(random_state)
    cv = StratifiedKFold(n_splits, shuffle=True, random_state=seed)
    folds = list(cv.split(values, targets))
    predicted = np.empty(len(targets), dtype=int)
    if classifier is None:
        rng = np.random.default_rng(seed)
        labellings = np.vstack([codes, np.array([rng.permutation(codes)
                                                 for _ in range(n_permutations)])])
        fold_scores = np.empty((len(labellings), len(folds)))
        for j, (train, test) in enumerate(folds):
            guesses = _centroid_predictions(values, labellings, train, test, len(names))
            fold_scores[:, j] = (guesses == labellings[:, test]).mean(axis=1)
            predicted[test] = guesses[0]
        scores = fold_scores.mean(axis=1)
        score, null, fold_accuracies = scores[0], scores[1:], fold_scores[0]
        p_value = (1.0 + np.sum(null >= score)) / (1.0 + n_permutations)
    else:
        score, null, p_value = permutation_test_score(
            clone(classifier), values, targets, cv=folds, n_permutations=n_permutations,
            random_state=seed, n_jobs=n_jobs, scoring="accuracy")
        fold_accuracies = []
        for train, test in folds:
            fitted = clone(classifier).fit(values[train], targets[train])
            guesses = fitted.predict(values[test])
            fold_accuracies.append(float(np.mean(guesses == targets[test])))
            predicted[test] = np.searchsorted(names, guesses)
    confusion = pd.DataFrame(confusion_matrix(codes, predicted, labels=np.arange(len(names))),
                             index=pd.Index(names, name="true"),
                             columns=pd.Index(names, name="predicted"))
    standardised = _standardise(values, values)
    profiles = np.array([standardised[codes == k].mean(axis=0) for k in range(len(names))])
    linkage = hierarchy.linkage(profiles, method="average", metric="euclidean")
    order = [str(names[i]) for i in hierarchy.leaves_list(linkage)]
    return SeparabilityResult(
        accuracy=float(score), chance=1.0 / len(names), null_mean=float(np.mean(null)),
        p_value=float(p_value), n_permutations=n_permutations,
        fold_accuracies=np.asarray(fold_accuracies, dtype=float), confusion=confusion,
        linkage=linkage, order=order, targets=[str(n) for n in names])


def synthesis_separability(response_model: Callable[[torch.Tensor], Any],
                           targets: Sequence[str] | None = None, *,
                           roi_names: Sequence[str] | None = None,
                           models: Mapping[str, Callable] | None = None,
                           n_images: int = 10, n_permutations: int = 1000,
                           n_splits: int = 5,
                           random_state: int | np.random.Generator | None = None,
                           **synthesis_options: Any
                           ) -> tuple[dict[str, SynthesisResult], pd.DataFrame,
                                      SeparabilityResult]:
    """Images for every target ROI, every model's responses to them, and their separability.

    Parameters
    ----------
    response_model : callable
        Images -> every ROI's predicted response (the one optimised).
    targets : sequence of str, optional
        ROIs to make images for (default every ROI).
    roi_names : sequence of str, optional
    models : mapping of str to callable, optional
        The models whose predicted activations the classifier reads (e.g.
        every subject's response model, named ``sub-01`` ...; their columns
        are prefixed with the name); default ``response_model`` alone.
    n_images : int
        Images per target.
    n_permutations, n_splits
        See :func:`separability`.
    random_state : int, numpy Generator or None
    **synthesis_options
        Passed to :func:`synthesize`.

    Returns
    -------
    (dict of str to SynthesisResult, pandas.DataFrame, SeparabilityResult)
        Per target its images; the responses table (``target``, ``image``,
        then one column per model ROI); the separability.

    Examples
    --------
    >>> class Channels(nn.Module):
    ...     roi_names = ["red", "green", "blue"]
    ...     def forward(self, images):
    ...         return images.mean(dim=(2, 3))
    >>> made, table, result = synthesis_separability(
    ...     Channels(), n_images=5, n_splits=2, n_permutations=19, image_size=16,
    ...     optimizer="gradient", n_steps=10, random_state=0)
    >>> sorted(made), result.accuracy > 0.9
    (['blue', 'green', 'red'], True)
    """
    rng = np.random.default_rng(random_state)
    with torch.no_grad():
        probe = _evaluate(response_model, torch.full((1, 3, 16, 16), 0.5), 1) if isinstance(
            response_model, nn.Module) else None
    names = (list(roi_names) if roi_names is not None
             else getattr(response_model, "roi_names", None)
             or ([f"roi{i}" for i in range(probe.shape[1])] if probe is not None else None))
    if names is None:
        raise UsageError("the ROI names are unknown", path="roi_names")
    targets = list(targets) if targets is not None else list(names)
    readers = dict(models) if models is not None else {"": response_model}
    made, rows = {}, []
    for target in targets:
        result = synthesize(response_model, target, roi_names=names, n_images=n_images,
                            random_state=int(rng.integers(2**31 - 1)), **synthesis_options)
        made[target] = result
        images = torch.from_numpy(result.images)
        columns = {}
        for reader_name, reader in readers.items():
            with torch.no_grad():
                out = _evaluate(reader, images, 256).cpu().numpy()
            reader_rois = _roi_names(reader, out.shape[1], names if reader is response_model
                                     else None)
            for j, roi in enumerate(reader_rois):
                columns[f"{reader_name}_{roi}" if reader_name else roi] = out[:, j]
        rows.append(pd.DataFrame({"target": target, "image": np.arange(n_images), **columns}))
    table = pd.concat(rows, ignore_index=True)
    values = table.drop(columns=["target", "image"])
    result = separability(values, table["target"], n_splits=n_splits,
                          n_permutations=n_permutations, random_state=int(rng.integers(2**31 - 1)))
    return made, table, result
