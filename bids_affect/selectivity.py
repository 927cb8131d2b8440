"""Emotion-selective channels of image CNNs, and what their gain and lesion do (seed 002).

Seed 002 (Liu et al. 2024) showed VGG16's channels ("neurons") respond
selectively to pleasant, neutral or unpleasant pictures, and that raising
their gain improves emotion recognition while lesioning them hurts it, more
than the same number of random channels. This module runs that analysis on
any image CNN (a plain :class:`torch.nn.Module`; registry networks through
:func:`registry_layers`) and any image sets.

Responses (:func:`channel_responses`)
    The response of a channel to an image is the spatial mean of its feature
    map (seed 002's eq. 2; a fully connected unit's output as it is), read by
    forward hooks on the named modules, in batches streamed from the images.
    The forward pass stops once every named module has fired. For seed 002's
    neurons, name the ReLU outputs (``relu5_3``).

Selectivity (:func:`tuning_values`, :func:`d_prime`, :func:`selectivity_table`)
    Tuning value of category *e*: (category mean - grand mean) / standard
    deviation over all images (eq. 4, population standard deviation). d' of
    *e*: its mean minus the mean of the other categories' means, over the
    square root of **the sum of the three variances divided by 2** (eq. 5 as
    printed; not the mean variance). With *k* categories the other means are
    averaged and all *k* variances summed. SI = the largest d'; the category
    giving it is the channel's preferred one. Within a layer, the top
    ``keep_fraction`` (80%) of channels by SI are kept. A constant channel
    (zero variance in every category: dead after a ReLU) has no d'; it is never
    kept and not counted among the layer's channels.

Generalisation (:func:`overlap_test`)
    Channels kept and preferring the same category in two image sets. Their
    number is tested against two random sets of the same sizes drawn from the
    channels that could be selected in both sets: the hypergeometric
    distribution (``scipy.stats.hypergeom``) gives the expectation and the
    one-sided p-value. Seed 002's control, a randomly initialised network
    (:func:`randomly_initialised`, or ``weights="random"`` of the registry),
    goes through the same functions.

Gain and lesion (:func:`gain_lesion`)
    A forward hook multiplies the chosen channels' outputs by ``1 + alpha``
    (:func:`channel_gain`), which equals seed 002's ReLU slope ``1 + alpha``
    (eq. 1) whether the hook sits on the convolution or on its ReLU, since
    ``max(0, (1 + alpha) z) = (1 + alpha) max(0, z)`` for ``alpha >= -1``;
    ``alpha = -1`` is the lesion (output 0). The readout is the frozen network
    with a new head (:class:`ReadoutHead`, two units: category vs rest) on the
    input of its last linear layer (the layer seed 002 replaced), trained on
    the unmanipulated network's features of a stratified 50/25/25 split, with
    seed 002's settings (learning rate 1e-3, 10 epochs, batches of 128; Adam).
    Per category: F1 of the original network on the test images; the gain
    sweep (``alpha`` 0 to 5 by 0.1), the best ``alpha`` chosen on the
    validation images and scored on the test images ("enhanced"); the lesion;
    and the same for as many random channels of the layer, once per random
    draw, with the selective-minus-random difference, its percentile interval
    over the draws and a permutation-style p-value.

Speed
    The network is split at the manipulated layer with ``torch.fx``
    (:func:`split_network`): the part below runs once per image and its
    output (the manipulated layer's output) is kept (in memory, or in a
    memory map under ``cache_dir``); every ``alpha`` and channel draw then
    runs only the part above, on the validation and test images. Caching the
    layer's output rather than its input saves that layer too, with the same
    result: the gain multiplies the output. A network ``torch.fx`` cannot
    trace, or one where a skip connection crosses the layer, falls back (with
    a warning) to the plain sweep that runs the whole network for every
    ``alpha`` (``cache=False`` asks for it). ``benchmarks/bench_selectivity.py``
    measures the ratio.

Examples
--------
>>> torch.manual_seed(0)  # doctest: +ELLIPSIS
<torch._C.Generator object at ...>
>>> net = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
...                     nn.Flatten(), nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2))
>>> images = torch.rand(24, 3, 8, 8)
>>> images[:8, 0] += 1.0  # "pleasant" images are redder
>>> categories = np.repeat(["pleasant", "neutral", "unpleasant"], 8)
>>> responses = channel_responses(net, {"relu1": net[1]}, images)
>>> table = selectivity_table(responses, categories)
>>> table.columns[:4].tolist(), int(table["kept"].sum())
(['layer', 'channel', 'tuning_pleasant', 'tuning_neutral'], 5)
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import stats
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.utils.validation import check_array, check_is_fitted, check_X_y
from torch import fx, nn
from torch.nn import functional

from bids_affect._utils.validation import check_choice, check_int, check_number
from bids_affect.exceptions import InputDataError, UsageError
from bids_affect.image_sets import CATEGORIES, ImageSource, as_image_source
from bids_affect.models.image import (
    create_image_network,
    image_network_entry,
    resolve_seed,
)
from bids_affect.models.training import resolve_device

__all__ = [
    "GAIN_ALPHAS",
    "KEEP_FRACTION",
    "LESION_ALPHA",
    "SPLIT_FRACTIONS",
    "GainLesionResult",
    "NetworkSplit",
    "ReadoutHead",
    "SelectivityResult",
    "category_order",
    "channel_gain",
    "channel_responses",
    "channel_selectivity",
    "d_prime",
    "gain_lesion",
    "gain_vector",
    "layer_summary",
    "module_path",
    "overlap_test",
    "randomly_initialised",
    "readout_features",
    "registry_layers",
    "registry_random_control",
    "resolve_layers",
    "selectivity_index",
    "selectivity_table",
    "shared_selective_channels",
    "split_network",
    "stratified_split",
    "table_1",
    "tuning_values",
]

#: Seed 002's gain sweep: alpha from 0 to 5 by 0.1 (slope 1 + alpha).
GAIN_ALPHAS = tuple(round(0.1 * step, 1) for step in range(51))
#: The lesion: slope 0, output 0.
LESION_ALPHA = -1.0
#: Fraction of channels kept by SI in each layer (seed 002's Fig 3C threshold).
KEEP_FRACTION = 0.8
#: Train, validation and test fractions of the readout's split, per category.
SPLIT_FRACTIONS = (0.5, 0.25, 0.25)

LayerSpec = Mapping[str, nn.Module] | Sequence[str]


# --------------------------------------------------------------------------- layers


def module_path(model: nn.Module, module: nn.Module | str) -> str:
    """The dotted path of ``module`` inside ``model`` (a path is checked and returned).

    Examples
    --------
    >>> net = nn.Sequential(nn.Conv2d(3, 2, 1), nn.ReLU())
    >>> module_path(net, net[1]), module_path(net, "0")
    ('1', '0')
    """
    if isinstance(module, str):
        try:
            model.get_submodule(module)
        except AttributeError:
            raise UsageError(f"the network has no module {module!r}", path="layer") from None
        return module
    for name, candidate in model.named_modules():
        if candidate is module:
            return name
    raise UsageError(f"the module {type(module).__name__} is not part of the network",
                     path="layer", fix="pass a module of the same network object")


def resolve_layers(model: nn.Module, layers: LayerSpec) -> dict[str, nn.Module]:
    """Layer name -> module, from a mapping of modules or a list of module paths.

    Examples
    --------
    >>> net = nn.Sequential(nn.Conv2d(3, 2, 1), nn.ReLU())
    >>> list(resolve_layers(net, ["1"])), list(resolve_layers(net, {"relu1": net[1]}))
    (['1'], ['relu1'])
    """
    if isinstance(layers, Mapping):
        resolved = {str(name): module for name, module in layers.items()}
        for module in resolved.values():
            module_path(model, module)
    elif isinstance(layers, str) or not isinstance(layers, Sequence):
        raise UsageError(f"must be a mapping of names to modules or a list of module paths, "
                         f"got {layers!r}", path="layers")
    else:
        resolved = {str(path): model.get_submodule(module_path(model, path)) for path in layers}
    if not resolved:
        raise UsageError("names no layer", path="layers", fix="name at least one layer")
    return resolved


def registry_layers(network_name: str, network: nn.Module,
                    layers: Sequence[str] | None = None) -> dict[str, nn.Module]:
    """Layer name -> module of a registry network (:mod:`bids_affect.models.image`).

    Parameters
    ----------
    network_name : str
        ``vgg16``, ``alexnet``, ``emonet`` or a plug-in's name.
    network : nn.Module
        Built by :func:`~bids_affect.models.image.create_image_network`.
    layers : list of str, optional
        Layer names (``relu5_3``); default the ReLU after every convolution,
        seed 002's neurons (13 layers of VGG16, 5 of AlexNet).

    Examples
    --------
    >>> from bids_affect.models.image import create_image_network
    >>> net = create_image_network("alexnet", weights="random", random_state=0)
    >>> list(registry_layers("alexnet", net))
    ['relu1', 'relu2', 'relu3', 'relu4', 'relu5']
    """
    entry = image_network_entry(network_name)
    if layers is None:
        layers = [name for name, path in entry.layers.items()
                  if name.startswith("relu") and path.startswith("features.")]
    unknown = [name for name in layers if name not in entry.layers]
    if unknown:
        raise UsageError(f"network {network_name!r} has no layer {unknown[0]!r}",
                         path="selectivity_layers", fix=f"use some of {', '.join(entry.layers)}")
    return {name: network.get_submodule(entry.layers[name]) for name in layers}


def registry_random_control(network_name: str, layers: Sequence[str],
                            random_state: int | np.random.Generator | None = None
                            ) -> tuple[nn.Module, dict[str, nn.Module]]:
    """Seed 002's control: the registry network with random weights, and its layers.

    Examples
    --------
    >>> net, layers = registry_random_control("alexnet", ["relu5"], random_state=0)
    >>> type(layers["relu5"]).__name__
    'ReLU'
    """
    network = create_image_network(network_name, weights="random", random_state=random_state)
    return network, registry_layers(network_name, network, layers)


def randomly_initialised(model: nn.Module, random_state: int | np.random.Generator | None = None,
                         initialise: Callable[[nn.Module], None] | None = None) -> nn.Module:
    """A copy of ``model`` with random weights (seed 002's untrained control).

    Every submodule with ``reset_parameters`` is reset (torch's default
    initialisation), or ``initialise(copy)`` runs instead. Torch's global
    random state is left as it was.

    Examples
    --------
    >>> net = nn.Sequential(nn.Linear(3, 2))
    >>> a, b = randomly_initialised(net, 0), randomly_initialised(net, 0)
    >>> torch.equal(a[0].weight, b[0].weight), torch.equal(a[0].weight, net[0].weight)
    (True, False)
    """
    copied = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(resolve_seed(random_state))
        if initialise is not None:
            initialise(copied)
        else:
            for module in copied.modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
    return copied.eval()


# --------------------------------------------------------------------------- responses


class _StopForward(Exception):
    """Raised by a capturing hook once everything needed was read."""


def _channel_mean(output: torch.Tensor) -> torch.Tensor:
    """Seed 002's eq. 2: the spatial mean of each channel's map (fc units as they are)."""
    return output.flatten(2).mean(dim=2) if output.ndim > 2 else output


@contextlib.contextmanager
def _evaluating(model: nn.Module) -> Iterator[None]:
    """Eval mode, no gradients; the model's mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def _capture(model: nn.Module, batch: torch.Tensor,
             targets: Mapping[str, tuple[nn.Module, str]],
             reduce: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, torch.Tensor]:
    """Run ``model`` on ``batch`` and return ``reduce`` of each target's input or output.

    The pass stops once every target has fired; a target firing twice (a module
    used twice in the forward pass) is refused: its reading would be ambiguous.
    """
    captured: dict[str, torch.Tensor] = {}
    handles = []

    def hook_for(name: str):
        def store(value: torch.Tensor) -> None:
            if name in captured:
                raise UsageError(f"layer {name!r} runs more than once in the network's "
                                 "forward pass, so its response is ambiguous", path="layers",
                                 fix="name a module that is used once")
            captured[name] = reduce(value)
            if len(captured) == len(targets):
                raise _StopForward

        return store

    for name, (module, where) in targets.items():
        store = hook_for(name)
        if where == "input":
            handles.append(module.register_forward_pre_hook(
                lambda _m, args, store=store: store(args[0])))
        else:
            handles.append(module.register_forward_hook(
                lambda _m, _args, output, store=store: store(output)))
    try:
        model(batch)
    except _StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
    missing = [name for name in targets if name not in captured]
    if missing:
        raise UsageError(f"layer {missing[0]!r} is not used by the network's forward pass",
                         path="layers")
    return captured


def channel_responses(model: nn.Module, layers: LayerSpec, images, *, device: str = "cpu",
                      batch_size: int = 32) -> dict[str, np.ndarray]:
    """Response of every channel of every layer to every image (seed 002's eq. 2).

    Parameters
    ----------
    model : nn.Module
        The network; moved to ``device``, run in eval mode (its mode is restored).
    layers : mapping of str to nn.Module, or list of module paths
        The modules whose outputs are read.
    images : ImageSource or torch.Tensor
        An :class:`~bids_affect.image_sets.ImageStream` (streamed from disk) or
        a tensor ``(n, 3, H, W)`` of preprocessed images.
    device : {"auto", "cpu", "cuda"}
    batch_size : int
        Images per forward pass when ``images`` is a tensor.

    Returns
    -------
    dict of str to numpy.ndarray
        Per layer, float32 ``(n_images, n_channels)``: the spatial mean of each
        channel's map (a fully connected layer's outputs as they are).

    Examples
    --------
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    >>> channel_responses(net, ["1"], torch.zeros(5, 3, 6, 6))["1"].shape
    (5, 4)
    """
    torch_device = resolve_device(device)
    targets = {name: (module, "output") for name, module in resolve_layers(model, layers).items()}
    source = as_image_source(images, batch_size)
    model.to(torch_device)
    out: dict[str, np.ndarray] = {}
    start = 0
    with _evaluating(model):
        for batch in source.batches():
            captured = _capture(model, batch.to(torch_device), targets, _channel_mean)
            for name, value in captured.items():
                if name not in out:
                    out[name] = np.empty((len(source), value.shape[1]), dtype=np.float32)
                out[name][start:start + len(batch)] = value.float().cpu().numpy()
            start += len(batch)
    return out


# --------------------------------------------------------------------------- selectivity


def category_order(categories: Sequence[str] | np.ndarray) -> tuple[str, ...]:
    """Categories in seed 002's order when they are its three, else sorted by name.

    Examples
    --------
    >>> category_order(["neutral", "pleasant", "unpleasant"])
    ('pleasant', 'neutral', 'unpleasant')
    >>> category_order(["calm", "afraid"])
    ('afraid', 'calm')
    """
    present = set(np.asarray(categories, dtype=str).tolist())
    if present <= set(CATEGORIES):
        return tuple(c for c in CATEGORIES if c in present)
    return tuple(sorted(present))


def _category_stats(responses: np.ndarray, categories: Sequence[str] | np.ndarray,
                    order: Sequence[str] | None, ddof: int
                    ) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    """Category order, means ``(k, C)`` and variances ``(k, C)`` of the responses."""
    responses = np.asarray(responses, dtype=np.float64)
    categories = np.asarray(categories, dtype=str)
    if responses.ndim != 2 or len(responses) != len(categories):
        raise InputDataError(f"responses {responses.shape} and categories "
                             f"({len(categories)},) do not match: one row per image needed",
                             path="responses")
    order = tuple(order) if order is not None else category_order(categories)
    if len(order) < 2:
        raise InputDataError(f"needs at least 2 categories, got {order!r}", path="categories")
    means, variances = [], []
    for name in order:
        rows = responses[categories == name]
        if len(rows) <= ddof:
            raise InputDataError(f"category {name!r} has {len(rows)} image(s); its variance "
                                 f"needs more than {ddof}", path="categories")
        means.append(rows.mean(axis=0))
        variances.append(rows.var(axis=0, ddof=ddof))
    return order, np.array(means), np.array(variances)


def tuning_values(responses: np.ndarray, categories: Sequence[str] | np.ndarray, *,
                  order: Sequence[str] | None = None) -> np.ndarray:
    """Seed 002's tuning values: (category mean - grand mean) / std over all images.

    Parameters
    ----------
    responses : ndarray ``(n_images, n_channels)``
    categories : array-like of str, one per image
    order : sequence of str, optional
        Column order; default :func:`category_order`.

    Returns
    -------
    ndarray ``(n_channels, n_categories)``
        NaN for a constant channel.

    Examples
    --------
    >>> r = np.array([[1.0], [3.0], [5.0], [7.0]])
    >>> tuning_values(r, ["pleasant", "pleasant", "neutral", "neutral"]).round(3).tolist()
    [[-0.894, 0.894]]
    """
    order, means, _ = _category_stats(responses, categories, order, ddof=0)
    responses = np.asarray(responses, dtype=np.float64)
    grand = responses.mean(axis=0)
    spread = responses.std(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        values = (means - grand) / np.where(spread > 0, spread, np.nan)
    return values.T


def d_prime(responses: np.ndarray, categories: Sequence[str] | np.ndarray, *,
            order: Sequence[str] | None = None, ddof: int = 0) -> np.ndarray:
    """d' of each category against the others, exactly as seed 002's eq. 5.

    ``d'(e) = (mean_e - mean of the other categories' means)
    / sqrt((var_1 + var_2 + var_3) / 2)``: the sum of the variances of all
    categories (the category's own included) divided by 2.

    Parameters
    ----------
    responses : ndarray ``(n_images, n_channels)``
    categories : array-like of str, one per image
    order : sequence of str, optional
        Column order; default :func:`category_order`.
    ddof : int
        Delta degrees of freedom of the variances: 0 (default) is the
        population variance (``numpy.var``), 1 the sample variance.

    Returns
    -------
    ndarray ``(n_channels, n_categories)``
        NaN for a channel with zero variance in every category.

    Examples
    --------
    Pleasant responses 1 and 3 (mean 2, var 1), neutral 0 and 0 (mean 0,
    var 0), unpleasant 1 and 1 (mean 1, var 0): d'(pleasant) =
    (2 - (0 + 1) / 2) / sqrt((1 + 0 + 0) / 2) = 1.5 / 0.7071 = 2.1213.

    >>> r = np.array([[1.0], [3.0], [0.0], [0.0], [1.0], [1.0]])
    >>> c = ["pleasant", "pleasant", "neutral", "neutral", "unpleasant", "unpleasant"]
    >>> d_prime(r, c).round(4).tolist()
    [[2.1213, -2.1213, 0.0]]
    """
    _, means, variances = _category_stats(responses, categories, order, ddof)
    k = len(means)
    others = (means.sum(axis=0, keepdims=True) - means) / (k - 1)
    spread = np.sqrt(variances.sum(axis=0) / 2.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        values = (means - others) / np.where(spread > 0, spread, np.nan)
    return values.T


def selectivity_index(d_primes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SI (the largest d') and the index of the category giving it, per channel.

    A channel whose d' are all NaN gets SI NaN and index -1.

    Examples
    --------
    >>> si, preferred = selectivity_index(np.array([[0.5, 2.0, -1.0], [np.nan] * 3]))
    >>> si.tolist(), preferred.tolist()
    ([2.0, nan], [1, -1])
    """
    d_primes = np.asarray(d_primes, dtype=np.float64)
    valid = ~np.isnan(d_primes).all(axis=1)
    si = np.full(len(d_primes), np.nan)
    preferred = np.full(len(d_primes), -1, dtype=int)
    si[valid] = np.nanmax(d_primes[valid], axis=1)
    preferred[valid] = np.nanargmax(d_primes[valid], axis=1)
    return si, preferred


def _check_fraction(value: float, name: str) -> float:
    value = check_number(value, name)
    if not 0.0 < value <= 1.0:
        raise UsageError(f"must be in (0, 1], got {value!r}", path=name)
    return value


def selectivity_table(responses: Mapping[str, np.ndarray],
                      categories: Sequence[str] | np.ndarray, *,
                      keep_fraction: float = KEEP_FRACTION,
                      order: Sequence[str] | None = None, ddof: int = 0) -> pd.DataFrame:
    """Tuning values, d', SI, preferred category and selection of every channel.

    Parameters
    ----------
    responses : mapping of str to ndarray ``(n_images, n_channels)``
        From :func:`channel_responses`.
    categories : array-like of str, one per image
    keep_fraction : float
        Fraction of a layer's channels (those with a d') kept by SI: the
        ``ceil(keep_fraction * n)`` largest (default 0.8, seed 002's).
    order : sequence of str, optional
        Category order; default :func:`category_order`.
    ddof : int
        Of the variances in d' (:func:`d_prime`).

    Returns
    -------
    pandas.DataFrame
        One row per layer and channel: ``layer``, ``channel``,
        ``tuning_CATEGORY`` and ``dprime_CATEGORY`` per category, ``si``,
        ``preferred`` (``"none"`` for a constant channel), ``rank`` (1 = the
        largest SI of the layer; 0 for a constant channel) and ``kept``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> c = np.repeat(["pleasant", "neutral", "unpleasant"], 10)
    >>> r = rng.normal(size=(30, 5))
    >>> r[:10, 0] += 3  # channel 0 prefers pleasant images
    >>> t = selectivity_table({"conv1": r}, c, keep_fraction=0.2)
    >>> t.loc[t["kept"], ["channel", "preferred", "rank"]].values.tolist()
    [[0, 'pleasant', 1]]
    """
    keep_fraction = _check_fraction(keep_fraction, "keep_fraction")
    order = tuple(order) if order is not None else category_order(categories)
    tables = []
    for layer, layer_responses in responses.items():
        tuning = tuning_values(layer_responses, categories, order=order)
        dprimes = d_prime(layer_responses, categories, order=order, ddof=ddof)
        si, preferred = selectivity_index(dprimes)
        valid = ~np.isnan(si)
        rank = np.zeros(len(si), dtype=int)
        by_si = np.flatnonzero(valid)[np.argsort(-si[valid], kind="stable")]
        rank[by_si] = np.arange(1, len(by_si) + 1)
        n_keep = math.ceil(keep_fraction * len(by_si) - 1e-9)
        table = pd.DataFrame({"layer": layer, "channel": np.arange(len(si))})
        for index, name in enumerate(order):
            table[f"tuning_{name}"] = tuning[:, index]
        for index, name in enumerate(order):
            table[f"dprime_{name}"] = dprimes[:, index]
        table["si"] = si
        table["preferred"] = np.where(preferred >= 0, np.asarray(order, dtype=object)[
            np.maximum(preferred, 0)], "none")
        table["rank"] = rank
        table["kept"] = valid & (rank >= 1) & (rank <= n_keep)
        tables.append(table)
    return pd.concat(tables, ignore_index=True)


def overlap_test(table_a: pd.DataFrame, table_b: pd.DataFrame) -> pd.DataFrame:
    """Channels selective for the same category in two image sets, against chance.

    Per layer and category: ``n_a`` and ``n_b`` channels kept and preferring
    the category in each set, their ``overlap``, and what two random sets of
    those sizes would share: drawn from the ``n_channels`` channels that have
    a d' in both sets, the overlap is hypergeometric, with ``expected``
    ``n_a n_b / n_channels`` and one-sided ``p_value`` P(overlap >= observed).

    Parameters
    ----------
    table_a, table_b : pandas.DataFrame
        :func:`selectivity_table` of the same network on two image sets.

    Returns
    -------
    pandas.DataFrame
        ``layer``, ``category``, ``n_channels``, ``n_a``, ``n_b``, ``overlap``,
        ``expected``, ``ratio`` (overlap / expected), ``p_value``, ``channels``
        (the shared channels, space-separated).

    Examples
    --------
    >>> a = pd.DataFrame({"layer": "l", "channel": range(6), "si": 1.0, "kept": True,
    ...                   "preferred": ["p", "p", "p", "n", "n", "n"]})
    >>> b = a.assign(preferred=["p", "p", "p", "n", "n", "n"])
    >>> overlap_test(a, b)[["category", "overlap", "expected", "p_value"]].round(3).values.tolist()
    [['n', 3, 1.5, 0.05], ['p', 3, 1.5, 0.05]]
    """
    rows = []
    for layer in pd.unique(table_a["layer"]):
        a = table_a[table_a["layer"] == layer].set_index("channel")
        if layer not in set(table_b["layer"]):
            raise InputDataError(f"layer {layer!r} is in one selectivity table only",
                                 path="table_b")
        b = table_b[table_b["layer"] == layer].set_index("channel")
        if not a.index.equals(b.index):
            raise InputDataError(f"layer {layer!r} has different channels in the two tables",
                                 path="table_b")
        eligible = a["si"].notna() & b["si"].notna()
        n_channels = int(eligible.sum())
        names = sorted(set(a.loc[a["kept"], "preferred"]) | set(b.loc[b["kept"], "preferred"]))
        for name in names:
            in_a = eligible & a["kept"] & (a["preferred"] == name)
            in_b = eligible & b["kept"] & (b["preferred"] == name)
            shared = a.index[in_a & in_b].to_numpy()
            n_a, n_b, overlap = int(in_a.sum()), int(in_b.sum()), len(shared)
            expected = n_a * n_b / n_channels if n_channels else float("nan")
            p_value = (float(stats.hypergeom.sf(overlap - 1, n_channels, n_a, n_b))
                       if n_channels else float("nan"))
            rows.append({
                "layer": layer, "category": name, "n_channels": n_channels, "n_a": n_a,
                "n_b": n_b, "overlap": overlap, "expected": expected,
                "ratio": overlap / expected if expected else float("nan"),
                "p_value": p_value, "channels": " ".join(map(str, shared))})
    return pd.DataFrame(rows, columns=["layer", "category", "n_channels", "n_a", "n_b",
                                       "overlap", "expected", "ratio", "p_value", "channels"])


def shared_selective_channels(overlap: pd.DataFrame, layer: str) -> dict[str, np.ndarray]:
    """Category -> channels selective for it in both image sets, for one layer.

    Examples
    --------
    >>> table = pd.DataFrame({"layer": ["l", "l"], "category": ["p", "n"],
    ...                       "channels": ["0 4", ""]})
    >>> {k: v.tolist() for k, v in shared_selective_channels(table, "l").items()}
    {'p': [0, 4], 'n': []}
    """
    rows = overlap[overlap["layer"] == layer]
    if rows.empty:
        raise UsageError(f"layer {layer!r} is not in the overlap table", path="layer",
                         fix=f"use one of {', '.join(map(str, pd.unique(overlap['layer'])))}")
    return {str(row.category): np.array([int(c) for c in str(row.channels).split()], dtype=int)
            for row in rows.itertuples()}


def layer_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per layer: channels, SI statistics and kept channels per category.

    Parameters
    ----------
    table : pandas.DataFrame
        :func:`selectivity_table` rows (with ``network`` and ``image_set``
        columns when they come from :func:`channel_selectivity`).

    Returns
    -------
    pandas.DataFrame
        The grouping columns present (``network``, ``image_set``), ``layer``,
        ``n_channels`` (with a d'), ``si_mean``, ``si_median``, ``si_max``,
        ``n_kept`` and ``kept_CATEGORY`` per category, in layer order.

    Examples
    --------
    >>> t = pd.DataFrame({"layer": ["a"] * 3, "si": [0.5, 1.5, np.nan],
    ...                   "preferred": ["p", "n", "none"], "kept": [False, True, False]})
    >>> layer_summary(t)[["layer", "n_channels", "si_max", "n_kept", "kept_n"]].values.tolist()
    [['a', 2, 1.5, 1, 1]]
    """
    keys = [c for c in ("network", "image_set") if c in table.columns] + ["layer"]
    categories = sorted(set(table.loc[table["preferred"] != "none", "preferred"]))
    rows = []
    for key, group in table.groupby(keys, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        kept = group[group["kept"]]
        row = dict(zip(keys, key))
        row.update({"n_channels": int(group["si"].notna().sum()),
                    "si_mean": float(group["si"].mean()),
                    "si_median": float(group["si"].median()),
                    "si_max": float(group["si"].max()), "n_kept": len(kept)})
        row.update({f"kept_{c}": int((kept["preferred"] == c).sum()) for c in categories})
        rows.append(row)
    return pd.DataFrame(rows)


@dataclass
class SelectivityResult:
    """Selectivity of one network's layers on several image sets.

    Attributes
    ----------
    table : pandas.DataFrame
        :func:`selectivity_table` rows with ``network`` (``"trained"`` or
        ``"random"``) and ``image_set`` columns first.
    overlap : pandas.DataFrame
        :func:`overlap_test` rows for every pair of image sets, with
        ``network``, ``image_set_a`` and ``image_set_b`` columns first.
    """

    table: pd.DataFrame
    overlap: pd.DataFrame

    def channels(self, layer: str, image_set_a: str | None = None,
                 image_set_b: str | None = None, network: str = "trained"
                 ) -> dict[str, np.ndarray]:
        """Category -> channels of ``layer`` selective in both sets (the first pair by default)."""
        rows = self.overlap[self.overlap["network"] == network]
        if image_set_a is None and not rows.empty:
            image_set_a, image_set_b = rows[["image_set_a", "image_set_b"]].iloc[0]
        rows = rows[(rows["image_set_a"] == image_set_a) & (rows["image_set_b"] == image_set_b)]
        if rows.empty:
            raise UsageError(f"no overlap of network {network!r} for image sets "
                             f"{image_set_a!r} and {image_set_b!r}", path="image_sets")
        return shared_selective_channels(rows, layer)


def channel_selectivity(model: nn.Module, layers: LayerSpec,
                        image_sets: Mapping[str, tuple[Any, Sequence[str] | np.ndarray]], *,
                        keep_fraction: float = KEEP_FRACTION,
                        order: Sequence[str] | None = None,
                        control: tuple[nn.Module, LayerSpec] | None = None,
                        device: str = "cpu", batch_size: int = 32,
                        ddof: int = 0) -> SelectivityResult:
    """Selectivity tables on every image set and overlaps of every pair, for a network.

    Parameters
    ----------
    model : nn.Module
    layers : mapping of str to nn.Module, or list of module paths
    image_sets : mapping of str to (images, categories)
        Per set name, an :class:`~bids_affect.image_sets.ImageSource` (or a
        tensor) and one category per image. At least one set; overlaps need two.
    keep_fraction : float
        See :func:`selectivity_table`.
    order : sequence of str, optional
        Category order (default: :func:`category_order` of all sets' categories).
    control : (nn.Module, layers), optional
        The randomly initialised network and its layers (same names), run the
        same way with ``network="random"`` (:func:`randomly_initialised`,
        :func:`registry_random_control`).
    device, batch_size, ddof
        See :func:`channel_responses` and :func:`d_prime`.

    Returns
    -------
    SelectivityResult

    Examples
    --------
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU())
    >>> images = torch.rand(30, 3, 8, 8)
    >>> cats = np.tile(["pleasant", "neutral", "unpleasant"], 10)
    >>> sets = {"A": (images[:15], cats[:15]), "B": (images[15:], cats[15:])}
    >>> result = channel_selectivity(net, {"relu1": net[1]}, sets)
    >>> sorted(result.overlap["category"].tolist()) == sorted(set(result.overlap["category"]))
    True
    """
    if not image_sets:
        raise UsageError("names no image set", path="image_sets")
    all_categories = np.concatenate([np.asarray(c, dtype=str) for _, c in image_sets.values()])
    order = tuple(order) if order is not None else category_order(all_categories)
    networks: list[tuple[str, nn.Module, LayerSpec]] = [("trained", model, layers)]
    if control is not None:
        networks.append(("random", control[0], control[1]))
    tables, overlaps = [], []
    for network_name, network, network_layers in networks:
        per_set = {}
        for set_name, (images, categories) in image_sets.items():
            responses = channel_responses(network, network_layers, images, device=device,
                                          batch_size=batch_size)
            table = selectivity_table(responses, categories, keep_fraction=keep_fraction,
                                      order=order, ddof=ddof)
            per_set[set_name] = table
            tables.append(table.assign(network=network_name, image_set=set_name))
        names = list(per_set)
        for i, name_a in enumerate(names):
            for name_b in names[i + 1:]:
                overlaps.append(overlap_test(per_set[name_a], per_set[name_b]).assign(
                    network=network_name, image_set_a=name_a, image_set_b=name_b))
    table = pd.concat(tables, ignore_index=True)
    table = table[["network", "image_set", *[c for c in table.columns
                                             if c not in ("network", "image_set")]]]
    overlap = (pd.concat(overlaps, ignore_index=True) if overlaps
               else overlap_test(tables[0], tables[0]).iloc[:0].assign(
                   network=None, image_set_a=None, image_set_b=None))
    overlap = overlap[["network", "image_set_a", "image_set_b",
                       *[c for c in overlap.columns
                         if c not in ("network", "image_set_a", "image_set_b")]]]
    return SelectivityResult(table, overlap)


# --------------------------------------------------------------------------- gain and lesion


def gain_vector(n_channels: int, channels: Sequence[int] | np.ndarray, alpha: float
                ) -> torch.Tensor:
    """Per-channel slope: ``1 + alpha`` on ``channels``, 1 elsewhere.

    Examples
    --------
    >>> gain_vector(4, [1, 3], 0.5).tolist()
    [1.0, 1.5, 1.0, 1.5]
    """
    alpha = check_number(alpha, "alpha", minimum=LESION_ALPHA)
    gains = torch.ones(int(n_channels), dtype=torch.float32)
    channels = np.asarray(channels, dtype=int)
    if channels.size and (channels.min() < 0 or channels.max() >= n_channels):
        raise UsageError(f"channel indices must lie in [0, {n_channels}), got "
                         f"{channels.min()}..{channels.max()}", path="channels")
    gains[torch.as_tensor(channels, dtype=torch.long)] = 1.0 + alpha
    return gains


def _apply_gain(output: torch.Tensor, gains: torch.Tensor) -> torch.Tensor:
    shape = (1, -1) + (1,) * (output.ndim - 2)
    return output * gains.to(output.device, output.dtype).view(shape)


@contextlib.contextmanager
def channel_gain(module: nn.Module, channels: Sequence[int] | np.ndarray,
                 alpha: float) -> Iterator[None]:
    """Within the block, ``module``'s output channels ``channels`` are scaled by ``1 + alpha``.

    Seed 002's gain (``alpha > 0``) and lesion (``alpha = -1``): a ReLU slope
    of ``1 + alpha`` on the chosen channels, equivalently a scaling of their
    output (see the module docstring).

    Examples
    --------
    >>> relu = nn.ReLU()
    >>> with channel_gain(relu, [0], -1.0):
    ...     relu(torch.ones(1, 2, 1, 1)).flatten().tolist()
    [0.0, 1.0]
    >>> relu(torch.ones(1, 2, 1, 1)).flatten().tolist()
    [1.0, 1.0]
    """
    cache: dict[int, torch.Tensor] = {}

    def scale(_module, _inputs, output):
        n = output.shape[1]
        if n not in cache:
            cache[n] = gain_vector(n, channels, alpha)
        return _apply_gain(output, cache[n])

    handle = module.register_forward_hook(scale)
    try:
        yield
    finally:
        handle.remove()


def _readout_target(model: nn.Module, readout: nn.Module | str | None
                    ) -> tuple[str, str]:
    """(module path, "input" or "output") of the features the head reads."""
    if readout is not None:
        return module_path(model, readout), "output"
    linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise UsageError("the network has no linear layer to replace with the readout head",
                         path="readout", fix="name the layer whose output feeds the head")
    return linears[-1], "input"


@dataclass
class NetworkSplit:
    """A network cut at a layer: ``upper(lower(x))`` gives the readout features.

    Attributes
    ----------
    lower : torch.fx.GraphModule
        Images -> the layer's output.
    upper : torch.fx.GraphModule
        The layer's output -> the readout features (the input of the last
        linear layer, or the output of the named readout module).
    layer : str
        The layer's module path.
    readout : tuple of (str, str)
        Module path of the readout and whether its ``"input"`` or ``"output"``.
    """

    lower: fx.GraphModule
    upper: fx.GraphModule
    layer: str
    readout: tuple[str, str]


class _LeafTracer(fx.Tracer):
    """fx tracer keeping the named modules whole (their nodes are the cut points)."""

    def __init__(self, leaves: set[str]):
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return qualified_name in self.leaves or super().is_leaf_module(module, qualified_name)


def split_network(model: nn.Module, layer: nn.Module | str,
                  readout: nn.Module | str | None = None) -> NetworkSplit:
    """Cut ``model`` at ``layer`` with ``torch.fx``, up to its readout features.

    Parameters
    ----------
    model : nn.Module
    layer : nn.Module or str
        The manipulated module (or its path): ``lower`` ends with its output.
    readout : nn.Module or str, optional
        The module whose output feeds the readout head; default the input of
        the network's last ``nn.Linear`` (the layer seed 002 replaced).

    Raises
    ------
    UsageError
        (exit 64) when the network cannot be traced, the layer runs more than
        once, a skip connection crosses the cut, or the readout does not
        depend on the layer.

    Examples
    --------
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16, 5),
    ...                     nn.ReLU(), nn.Linear(5, 2))
    >>> parts = split_network(net, net[1])
    >>> x = torch.rand(2, 3, 4, 4)
    >>> torch.allclose(parts.upper(parts.lower(x)), net[:5](x))
    True
    """
    layer_name = module_path(model, layer)
    readout_name, where = _readout_target(model, readout)
    try:
        graph = _LeafTracer({layer_name, readout_name}).trace(model)
    except Exception as error:  # fx raises many types for untraceable code
        raise UsageError(f"torch.fx cannot trace the network ({type(error).__name__}: "
                         f"{str(error).splitlines()[0] if str(error) else ''})", path="layer",
                         fix="use cache=False (the whole network runs for every alpha)"
                         ) from error
    nodes = list(graph.nodes)
    position = {node: index for index, node in enumerate(nodes)}
    cuts = [n for n in nodes if n.op == "call_module" and n.target == layer_name]
    reads = [n for n in nodes if n.op == "call_module" and n.target == readout_name]
    if len(cuts) != 1 or len(reads) != 1:
        raise UsageError(f"layer {layer_name!r} or readout {readout_name!r} does not run "
                         "exactly once in the traced forward pass", path="layer")
    cut = cuts[0]
    features = reads[0] if where == "output" else reads[0].args[0]
    if not isinstance(features, fx.Node) or position[features] < position[cut]:
        raise UsageError(f"the readout ({readout_name}) comes before layer {layer_name!r}",
                         path="layer", fix="choose a layer below the readout")

    def ancestors(end: fx.Node, stop: fx.Node | None) -> set[fx.Node]:
        seen, stack = set(), [end]
        while stack:
            node = stack.pop()
            if node in seen or node is stop:
                continue
            seen.add(node)
            stack.extend(node.all_input_nodes)
        return seen

    above = ancestors(features, cut)
    crossing = [n for n in above if position[n] < position[cut] and n.op != "get_attr"]
    if crossing:
        raise UsageError(f"a connection from {crossing[0].name!r} crosses layer "
                         f"{layer_name!r} (a skip connection), so the network cannot be cut "
                         "there", path="layer", fix="use cache=False, or another layer")
    if cut not in ancestors(features, None):
        raise UsageError(f"the readout does not depend on layer {layer_name!r}", path="layer")

    def build(keep: set[fx.Node], output: fx.Node, placeholder_for: fx.Node | None
              ) -> fx.GraphModule:
        new = fx.Graph()
        env: dict[fx.Node, fx.Node] = {}
        if placeholder_for is not None:
            env[placeholder_for] = new.placeholder("activations")
        for node in nodes:
            if node in keep and node not in env:
                env[node] = new.node_copy(node, lambda n: env[n])
        new.output(env[output])
        return fx.GraphModule(model, new)

    lower = build(ancestors(cut, None), cut, None)
    upper = build(above, features, cut)
    return NetworkSplit(lower, upper, layer_name, (readout_name, where))


def stratified_split(categories: Sequence[str] | np.ndarray,
                     fractions: tuple[float, float, float] = SPLIT_FRACTIONS,
                     random_state: int | np.random.Generator | None = None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train, validation and test indices, split within each category (seed 002: 50/25/25).

    Each category's images are shuffled; ``floor(fraction * n)`` (at least one)
    go to validation and to test, the rest to training.

    Raises
    ------
    InputDataError
        (exit 65) when a category has fewer than 3 images.

    Examples
    --------
    >>> train, val, test = stratified_split(np.repeat(["a", "b"], 8), random_state=0)
    >>> len(train), len(val), len(test)
    (8, 4, 4)
    """
    if len(fractions) != 3 or any(f <= 0 for f in fractions) or not math.isclose(
            sum(fractions), 1.0):
        raise UsageError(f"must be three positive fractions summing to 1, got {fractions!r}",
                         path="split_fractions")
    categories = np.asarray(categories, dtype=str)
    rng = np.random.default_rng(random_state)
    parts: list[list[np.ndarray]] = [[], [], []]
    for name in category_order(categories):
        members = rng.permutation(np.flatnonzero(categories == name))
        n = len(members)
        n_val = max(1, math.floor(fractions[1] * n))
        n_test = max(1, math.floor(fractions[2] * n))
        if n - n_val - n_test < 1:
            raise InputDataError(f"category {name!r} has {n} image(s), too few for a "
                                 "train/validation/test split (3 at least)", path="categories",
                                 fix="add images to the category or leave it out")
        parts[0].append(members[n_val + n_test:])
        parts[1].append(members[:n_val])
        parts[2].append(members[n_val:n_val + n_test])
    train, val, test = (np.sort(np.concatenate(p)) for p in parts)
    return train, val, test


class ReadoutHead(ClassifierMixin, BaseEstimator):
    """A linear head on frozen features: one unit per class, softmax cross-entropy, Adam.

    Seed 002 replaced VGG16's last layer by two units (category vs rest) and
    trained only them: learning rate 1e-3, 10 epochs, batches of 128.

    Parameters
    ----------
    learning_rate : float
        Adam's learning rate.
    epochs : int
        Passes over the training features.
    batch_size : int
        Features per step (reshuffled every epoch).
    standardize : bool
        z-score the features with the training features' mean and standard
        deviation (kept fixed: a later gain still changes what the head sees).
        Off by default, as seed 002; useful for random-weight networks, whose
        deep features are orders of magnitude smaller than a trained one's.
    random_state : int, numpy Generator or None
        Seeds the initial weights and the shuffling.

    Attributes
    ----------
    classes_ : ndarray
    coef_ : ndarray ``(n_classes, n_features)``
        Weights on the (standardised, with ``standardize``) features.
    intercept_ : ndarray ``(n_classes,)``
    mean_, scale_ : ndarray ``(n_features,)``
        The standardisation (0 and 1 without ``standardize``).
    n_features_in_ : int

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(200, 5)).astype(np.float32)
    >>> y = (X[:, 0] > 0).astype(int)
    >>> head = ReadoutHead(learning_rate=0.05, epochs=20, random_state=0).fit(X, y)
    >>> head.score(X, y) > 0.9
    True
    """

    def __init__(self, learning_rate: float = 1e-3, epochs: int = 10, batch_size: int = 128,
                 standardize: bool = False,
                 random_state: int | np.random.Generator | None = None):
        self.learning_rate = learning_rate
        self.epochs = epochs
        self.batch_size = batch_size
        self.standardize = standardize
        self.random_state = random_state

    def fit(self, X: np.ndarray, y: np.ndarray) -> ReadoutHead:
        """Train the head on features ``X`` ``(n, d)`` and labels ``y``."""
        check_number(self.learning_rate, "learning_rate", positive=True)
        epochs = check_int(self.epochs, "epochs", minimum=1)
        batch_size = check_int(self.batch_size, "batch_size", minimum=1)
        X, y = check_X_y(X, y, dtype=np.float32)
        self.classes_, codes = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise InputDataError(f"the training labels hold one class only "
                                 f"({self.classes_[0]!r})", path="y")
        self.n_features_in_ = X.shape[1]
        check_choice(self.standardize, "standardize", (True, False))
        if self.standardize:
            self.mean_ = X.mean(axis=0)
            spread = X.std(axis=0)
            self.scale_ = np.where(spread > 0, spread, 1.0).astype(np.float32)
            X = (X - self.mean_) / self.scale_
        else:
            self.mean_ = np.zeros(X.shape[1], dtype=np.float32)
            self.scale_ = np.ones(X.shape[1], dtype=np.float32)
        seed = resolve_seed(self.random_state)
        rng = np.random.default_rng(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            linear = nn.Linear(X.shape[1], len(self.classes_))
        optimizer = torch.optim.Adam(linear.parameters(), lr=self.learning_rate)
        features, targets = torch.from_numpy(X), torch.from_numpy(codes.astype(np.int64))
        for _ in range(epochs):
            order = torch.from_numpy(rng.permutation(len(X)))
            for start in range(0, len(X), batch_size):
                rows = order[start:start + batch_size]
                loss = functional.cross_entropy(linear(features[rows]), targets[rows])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        self.coef_ = linear.weight.detach().numpy().copy()
        self.intercept_ = linear.bias.detach().numpy().copy()
        return self

    def _logits(self, X: np.ndarray) -> np.ndarray:
        check_is_fitted(self, "coef_")
        X = check_array(X, dtype=np.float32)
        if X.shape[1] != self.n_features_in_:
            raise InputDataError(f"features have {X.shape[1]} columns, the head was fitted "
                                 f"on {self.n_features_in_}", path="X")
        if self.standardize:
            X = (X - self.mean_) / self.scale_
        return X @ self.coef_.T + self.intercept_

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """Logits ``(n, n_classes)``; for two classes, the second minus the first ``(n,)``."""
        logits = self._logits(X)
        return logits[:, 1] - logits[:, 0] if logits.shape[1] == 2 else logits

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Softmax of the logits."""
        logits = self._logits(X)
        logits = logits - logits.max(axis=1, keepdims=True)
        odds = np.exp(logits)
        return odds / odds.sum(axis=1, keepdims=True)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """The class with the largest logit."""
        return self.classes_[np.argmax(self._logits(X), axis=1)]


def readout_features(model: nn.Module, images, *, readout: nn.Module | str | None = None,
                     gain: tuple[nn.Module | str, Sequence[int], float] | None = None,
                     indices: Sequence[int] | np.ndarray | None = None, device: str = "cpu",
                     batch_size: int = 32) -> np.ndarray:
    """Features the readout head reads, from the whole network (optionally with a gain).

    This is the plain path: every call runs the network from the images. The
    gain sweep of :func:`gain_lesion` runs only the part above the layer
    instead (:func:`split_network`).

    Parameters
    ----------
    model : nn.Module
    images : ImageSource or torch.Tensor
    readout : nn.Module or str, optional
        See :func:`split_network`.
    gain : (module, channels, alpha), optional
        Scale these channels of this module by ``1 + alpha`` (:func:`channel_gain`).
    indices : array-like of int, optional
        Only these images, in this order.
    device, batch_size
        See :func:`channel_responses`.

    Returns
    -------
    ndarray ``(n, n_features)``, float32

    Examples
    --------
    >>> net = nn.Sequential(nn.Flatten(), nn.Linear(12, 3), nn.ReLU(), nn.Linear(3, 2))
    >>> readout_features(net, torch.rand(4, 3, 2, 2)).shape
    (4, 3)
    """
    torch_device = resolve_device(device)
    path, where = _readout_target(model, readout)
    targets = {"readout": (model.get_submodule(path), where)}
    source = as_image_source(images, batch_size)
    model.to(torch_device)
    chunks = []
    with contextlib.ExitStack() as stack:
        stack.enter_context(_evaluating(model))
        if gain is not None:
            module = model.get_submodule(module_path(model, gain[0]))
            stack.enter_context(channel_gain(module, gain[1], gain[2]))
        for batch in source.batches(indices):
            value = _capture(model, batch.to(torch_device), targets, lambda v: v.flatten(1))
            chunks.append(value["readout"].float().cpu().numpy())
    return np.concatenate(chunks)


@dataclass
class GainLesionResult:
    """F1 of the readout under gain and lesion of selective and random channels.

    Attributes
    ----------
    f1 : pandas.DataFrame
        One row per category and channel set: ``category``, ``channels``
        (``"selective"`` or ``"random"``), ``repeat`` (the random draw; 0 for
        the selective set), ``n_channels``, ``original``, ``best_alpha``,
        ``enhanced``, ``lesioned`` (test F1).
    curves : pandas.DataFrame
        The gain curves: ``category``, ``channels``, ``repeat``, ``alpha``,
        ``f1_validation``, ``f1_test`` (``alpha = -1`` is the lesion).
    summary : pandas.DataFrame
        Seed 002's Table 1, one row per category: ``original``, ``enhanced``,
        ``enhanced_change_pct``, ``lesioned``, ``lesioned_change_pct``,
        ``best_alpha``, ``n_channels``; the random control's means
        (``random_enhanced``, ``random_lesioned``); the selective-minus-random
        differences with their interval over the draws and p-values
        (``enhanced_difference``, ``enhanced_ci_low``, ``enhanced_ci_high``,
        ``enhanced_p``, and the same for ``lesioned_``). The enhanced p-value
        is the fraction of random draws whose enhanced F1 reaches the
        selective one, (1 + count) / (1 + draws); the lesion p-value counts
        random lesions as low or lower.
    split : dict
        ``train``, ``validation`` and ``test`` image indices.
    cached : bool
        Whether the sweep reused the layer's output (False: plain sweep).
    """

    f1: pd.DataFrame
    curves: pd.DataFrame
    summary: pd.DataFrame
    split: dict[str, np.ndarray]
    cached: bool


class _Sweep:
    """Readout features of the validation and test images under per-channel gains."""

    def __init__(self, model: nn.Module, layer: str, images: ImageSource,
                 evaluated: np.ndarray, readout: nn.Module | str | None, device: torch.device,
                 batch_size: int, cache: bool, cache_dir: str | os.PathLike | None):
        self.model, self.layer, self.images = model, layer, images
        self.evaluated, self.readout, self.device = evaluated, readout, device
        self.batch_size = batch_size
        self.split: NetworkSplit | None = None
        if cache:
            try:
                self.split = split_network(model, layer, readout)
            except UsageError as error:
                warnings.warn(f"the gain sweep runs the whole network for every alpha: {error}",
                              UserWarning, stacklevel=3)
        self.activations: np.ndarray | None = None
        self.cache_dir = cache_dir
        self._tempdir: tempfile.TemporaryDirectory | None = None

    def original_features(self) -> tuple[np.ndarray, int]:
        """Readout features of every image, and the layer's channel count.

        With a split network, the layer's outputs of the evaluated images are
        kept on the way (in memory, or in a memory map under ``cache_dir``).
        """
        n = len(self.images)
        keep = np.full(n, -1)
        keep[self.evaluated] = np.arange(len(self.evaluated))
        features, start, n_channels = None, 0, None
        with _evaluating(self.model):
            for batch in self.images.batches():
                batch = batch.to(self.device)
                if self.split is None:
                    layer_module = self.model.get_submodule(self.layer)
                    captured = _capture_layer_and_readout(self.model, batch, layer_module,
                                                          self.readout)
                    out, n_channels = captured
                else:
                    activations = self.split.lower(batch)
                    n_channels = activations.shape[1]
                    rows = keep[start:start + len(batch)]
                    if (rows >= 0).any():
                        if self.activations is None:
                            self.activations = self._allocate(activations.shape[1:])
                        self.activations[rows[rows >= 0]] = activations[
                            torch.from_numpy(rows >= 0)].float().cpu().numpy()
                    out = self.split.upper(activations).flatten(1).float().cpu().numpy()
                if features is None:
                    features = np.empty((n, out.shape[1]), dtype=np.float32)
                features[start:start + len(batch)] = out
                start += len(batch)
        return features, int(n_channels)

    def _allocate(self, shape: tuple[int, ...]) -> np.ndarray:
        full = (len(self.evaluated), *shape)
        if self.cache_dir is None:
            return np.empty(full, dtype=np.float32)
        Path(self.cache_dir).mkdir(parents=True, exist_ok=True)
        self._tempdir = tempfile.TemporaryDirectory(dir=self.cache_dir)
        return np.lib.format.open_memmap(Path(self._tempdir.name) / "activations.npy",
                                         mode="w+", dtype=np.float32, shape=full)

    def features(self, channels: np.ndarray, alpha: float) -> np.ndarray:
        """Readout features of the evaluated images with ``channels`` scaled by 1 + alpha."""
        if self.split is None:
            return readout_features(self.model, self.images, readout=self.readout,
                                    gain=(self.layer, channels, alpha), indices=self.evaluated,
                                    device=str(self.device), batch_size=self.batch_size)
        gains = gain_vector(self.activations.shape[1], channels, alpha).to(self.device)
        chunks = []
        with _evaluating(self.model):
            for start in range(0, len(self.activations), self.batch_size):
                batch = torch.from_numpy(np.asarray(
                    self.activations[start:start + self.batch_size])).to(self.device)
                chunks.append(self.split.upper(_apply_gain(batch, gains)).flatten(1)
                              .float().cpu().numpy())
        return np.concatenate(chunks)

    def close(self) -> None:
        self.activations = None
        if self._tempdir is not None:
            self._tempdir.cleanup()


def _capture_layer_and_readout(model: nn.Module, batch: torch.Tensor, layer: nn.Module,
                               readout: nn.Module | str | None) -> tuple[np.ndarray, int]:
    path, where = _readout_target(model, readout)
    captured = _capture(model, batch, {"layer": (layer, "output"),
                                       "readout": (model.get_submodule(path), where)},
                        lambda v: v)
    return (captured["readout"].flatten(1).float().cpu().numpy(),
            int(captured["layer"].shape[1]))


def _f1(head: ReadoutHead, features: np.ndarray, truth: np.ndarray) -> float:
    """F1 of the positive class (the category): sklearn's ``f1_score`` with
    ``zero_division=0``, counted directly (the sweep calls it thousands of times and
    sklearn's input checks cost 15 ms a call)."""
    predicted = head.predict(features).astype(bool)
    true_positive = np.count_nonzero(predicted & truth)
    denominator = np.count_nonzero(predicted) + np.count_nonzero(truth)
    return 2.0 * true_positive / denominator if denominator else 0.0


def gain_lesion(model: nn.Module, layer: nn.Module | str, images,
                categories: Sequence[str] | np.ndarray,
                channels: Mapping[str, Sequence[int] | np.ndarray], *,
                readout: nn.Module | str | None = None,
                alphas: Sequence[float] = GAIN_ALPHAS, n_random: int = 10,
                head: ReadoutHead | None = None,
                fractions: tuple[float, float, float] = SPLIT_FRACTIONS,
                confidence: float = 0.95,
                random_state: int | np.random.Generator | None = None,
                device: str = "cpu", batch_size: int = 64, cache: bool = True,
                cache_dir: str | os.PathLike | None = None) -> GainLesionResult:
    """Seed 002's gain and lesion of selective channels, against random channels.

    Parameters
    ----------
    model : nn.Module
        The frozen network (moved to ``device``, run in eval mode).
    layer : nn.Module or str
        The manipulated module (or its path), e.g. ``relu5_3``'s module.
    images : ImageSource or torch.Tensor
        The image set (one category per image in ``categories``).
    categories : array-like of str
    channels : mapping of str to channel indices
        The selective channels of ``layer`` per category
        (:meth:`SelectivityResult.channels`); the categories tested.
    readout : nn.Module or str, optional
        See :func:`split_network`.
    alphas : sequence of float
        The gain sweep (default 0 to 5 by 0.1); 0 must be among them.
    n_random : int
        Random channel sets per category (as many channels as the selective set).
    head : ReadoutHead, optional
        The head's settings (cloned per category); default seed 002's.
    fractions : (float, float, float)
        Train, validation, test fractions per category.
    confidence : float
        Of the interval of the selective-minus-random differences.
    random_state : int, numpy Generator or None
        Seeds the split, the heads (when ``head.random_state`` is None) and the
        random channel draws.
    device, batch_size
        Where and in what batches the network runs.
    cache : bool
        Reuse the layer's output across the sweep (default); False runs the
        whole network for every alpha.
    cache_dir : path, optional
        Keep the cached layer outputs in a memory map there (default memory).

    Returns
    -------
    GainLesionResult

    Examples
    --------
    >>> net = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
    ...                     nn.Flatten(), nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> images = torch.rand(24, 3, 8, 8)
    >>> cats = np.repeat(["pleasant", "neutral", "unpleasant"], 8)
    >>> result = gain_lesion(net, net[1], images, cats, {"pleasant": [0, 1]},
    ...                      alphas=(0.0, 1.0), n_random=2, random_state=0)
    >>> result.summary[["category", "n_channels"]].values.tolist()
    [['pleasant', 2]]
    """
    categories = np.asarray(categories, dtype=str)
    source = as_image_source(images, batch_size)
    if len(source) != len(categories):
        raise InputDataError(f"{len(source)} images but {len(categories)} categories",
                             path="categories")
    alphas = tuple(check_number(a, "alphas", minimum=LESION_ALPHA) for a in alphas)
    if 0.0 not in alphas:
        raise UsageError(f"must include 0 (the unmanipulated network), got {alphas!r}",
                         path="alphas")
    n_random = check_int(n_random, "n_random", minimum=0)
    confidence = check_number(confidence, "confidence", positive=True)
    check_choice(cache, "cache", (True, False))
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    unknown = [name for name in channels if name not in set(categories)]
    if unknown:
        raise UsageError(f"category {unknown[0]!r} has no image", path="channels",
                         fix=f"use some of {', '.join(category_order(categories))}")
    # Independent streams: the split and the heads do not depend on the layer's width
    # or on the channel draws, so every layer of an image set gets the same split and
    # readout (the original F1 is then the same in every layer, as seed 002's Table 1).
    split_rng, head_rng, channel_rng = np.random.default_rng(random_state).spawn(3)
    train, val, test = stratified_split(categories, fractions, split_rng)
    evaluated = np.concatenate([val, test])
    n_val = len(val)
    head = ReadoutHead() if head is None else head
    torch_device = resolve_device(device)
    model.to(torch_device)
    layer_path = module_path(model, layer)
    sweep = _Sweep(model, layer_path, source, evaluated, readout, torch_device, batch_size,
                   cache, cache_dir)
    rows, curves, summary = [], [], []
    try:
        features, n_channels = sweep.original_features()
        for name, selective in channels.items():
            truth = categories == name
            fitted = clone(head)
            head_seed = int(head_rng.integers(2**31 - 1))
            if fitted.random_state is None:
                fitted.set_params(random_state=head_seed)
            fitted.fit(features[train], truth[train])
            truth_val, truth_test = truth[val], truth[test]
            original = _f1(fitted, features[test], truth_test)
            selective = np.unique(np.asarray(selective, dtype=int))
            if selective.size == 0:
                warnings.warn(f"layer {layer_path}: no channel is selective for {name!r} in "
                              "both image sets; its gain and lesion are not defined",
                              UserWarning, stacklevel=2)
            draws = [("selective", 0, selective)] + [
                ("random", r, np.sort(channel_rng.choice(n_channels, size=selective.size,
                                                         replace=False)))
                for r in range(n_random if selective.size else 0)]
            for kind, repeat, chosen in draws:
                scores = []
                for alpha in (LESION_ALPHA, *alphas):
                    swept = (features[evaluated] if alpha == 0.0
                             else sweep.features(chosen, alpha))
                    scores.append((alpha, _f1(fitted, swept[:n_val], truth_val),
                                   _f1(fitted, swept[n_val:], truth_test)))
                curves += [{"category": name, "channels": kind, "repeat": repeat,
                            "alpha": a, "f1_validation": v, "f1_test": t}
                           for a, v, t in scores]
                gains = scores[1:]
                best = max(range(len(gains)), key=lambda i: (gains[i][1], -gains[i][0]))
                rows.append({"category": name, "channels": kind, "repeat": repeat,
                             "n_channels": int(chosen.size), "original": original,
                             "best_alpha": gains[best][0], "enhanced": gains[best][2],
                             "lesioned": scores[0][2]})
            summary.append(_summary_row(name, rows, original, selective.size, confidence))
    finally:
        sweep.close()
    f1_table = pd.DataFrame(rows)
    return GainLesionResult(f1_table, pd.DataFrame(curves), pd.DataFrame(summary),
                            {"train": train, "validation": val, "test": test},
                            sweep.split is not None)


def _percent_change(value: float, original: float) -> float:
    """100 (value - original) / original; NaN when the original F1 is 0."""
    return 100 * (value - original) / original if original else float("nan")


def _summary_row(name: str, rows: list[dict], original: float, n_channels: int,
                 confidence: float) -> dict[str, Any]:
    """Seed 002's Table 1 row for one category, with the random control's comparison."""
    mine = [r for r in rows if r["category"] == name]
    selective = next(r for r in mine if r["channels"] == "selective")
    random = [r for r in mine if r["channels"] == "random"]
    nan = float("nan")
    enhanced = selective["enhanced"] if n_channels else nan
    lesioned = selective["lesioned"] if n_channels else nan
    row = {"category": name, "n_channels": n_channels, "original": original,
           "enhanced": enhanced, "enhanced_change_pct": _percent_change(enhanced, original),
           "lesioned": lesioned, "lesioned_change_pct": -_percent_change(lesioned, original),
           "best_alpha": selective["best_alpha"] if n_channels else nan,
           "n_random": len(random)}
    tail = (1 - confidence) / 2
    for measure, sign in (("enhanced", 1), ("lesioned", -1)):
        values = np.array([r[measure] for r in random], dtype=float)
        mine_value = row[measure]
        if values.size == 0:
            row.update({f"random_{measure}": nan, f"{measure}_difference": nan,
                        f"{measure}_ci_low": nan, f"{measure}_ci_high": nan,
                        f"{measure}_p": nan})
            continue
        differences = mine_value - values
        low, high = np.quantile(differences, [tail, 1 - tail])
        as_extreme = np.sum(sign * values >= sign * mine_value)
        row.update({f"random_{measure}": float(values.mean()),
                    f"{measure}_difference": float(differences.mean()),
                    f"{measure}_ci_low": float(low), f"{measure}_ci_high": float(high),
                    f"{measure}_p": float((1 + as_extreme) / (1 + values.size))})
    return row


def table_1(results: Mapping[str, GainLesionResult]) -> pd.DataFrame:
    """Seed 002's Table 1: per category, the largest gain and lesion effects over layers.

    Parameters
    ----------
    results : mapping of layer name to GainLesionResult
        :func:`gain_lesion` of each layer on one image set (same
        ``random_state``, hence the same split and readout: the original F1 is
        the same in every layer).

    Returns
    -------
    pandas.DataFrame
        ``category``, ``original``, ``enhanced``, ``enhanced_change_pct`` and
        ``enhanced_layer`` (the layer whose enhancement raised F1 most),
        ``lesioned``, ``lesioned_change_pct`` and ``lesioned_layer`` (the
        layer whose lesion lowered it most).

    Examples
    --------
    >>> def fake(enhanced, lesioned):
    ...     summary = pd.DataFrame({"category": ["pleasant"], "original": [0.6],
    ...                             "enhanced": [enhanced], "lesioned": [lesioned]})
    ...     return GainLesionResult(summary, summary, summary, {}, True)
    >>> table = table_1({"relu3": fake(0.62, 0.5), "relu5": fake(0.7, 0.55)})
    >>> table[["enhanced_layer", "enhanced", "lesioned_layer", "lesioned"]].values.tolist()
    [['relu5', 0.7, 'relu3', 0.5]]
    """
    if not results:
        raise UsageError("names no layer", path="results")
    stacked = pd.concat([result.summary.assign(layer=layer) for layer, result in
                         results.items()], ignore_index=True)
    rows = []
    for category, group in stacked.groupby("category", sort=False):
        best = group.loc[group["enhanced"].idxmax()] if group["enhanced"].notna().any() else None
        worst = (group.loc[group["lesioned"].idxmin()] if group["lesioned"].notna().any()
                 else None)
        original = float(group["original"].iloc[0])
        enhanced = float(best["enhanced"]) if best is not None else float("nan")
        lesioned = float(worst["lesioned"]) if worst is not None else float("nan")
        rows.append({
            "category": category, "original": original, "enhanced": enhanced,
            "enhanced_change_pct": _percent_change(enhanced, original),
            "enhanced_layer": best["layer"] if best is not None else None,
            "lesioned": lesioned,
            "lesioned_change_pct": -_percent_change(lesioned, original),
            "lesioned_layer": worst["layer"] if worst is not None else None})
    return pd.DataFrame(rows)
