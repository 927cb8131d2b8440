"""The selectivity analysis (group level): emotion-selective CNN channels, gain and lesion.

Seed 002's analysis (:mod:`bids_affect.selectivity`) on the user's image sets
and image network, at the group level: no subject is involved, so a dataset
without BOLD runs it. Its nodes:

- ``selectivity``: every channel's response to every image of every set
  (``--image-set NAME=DIR``) through ``--feature-network`` with
  ``--feature-weights`` (the encoding section's settings) and, as seed 002's
  control, the same architecture with random weights; tuning values, d', SI,
  the channels kept, and the overlap of every pair of sets against the
  hypergeometric null;
- ``gainlesion_SET``, one per image set: gain and lesion of the channels
  selective in every set (seed 002: in IAPS and in NAPS), against as many
  random channels, in every layer;
- ``ds_selectivity``: the tables under ``group/`` (``desc-NETWORK``), seed 002's
  Table 1 and the figures under ``group/figures/``.

The image sets are also read by ``image-validation``
(:mod:`bids_affect.steps.image_validation`): ``--image-set`` and the rules for
bad files are declared here, once.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from bids_affect._utils import converters
from bids_affect.config import option, section
from bids_affect.exceptions import BidsAffectError, UsageError
from bids_affect.io import derivatives as deriv
from bids_affect.steps._outputs import read_json, sources

if TYPE_CHECKING:
    from bids_affect.config import Config
    from bids_affect.image_sets import ImageSet
    from bids_affect.workflows.group import GroupWorkflow


def _unit_fraction(text: str) -> float:
    """A number in (0, 1] (a fraction of channels to keep)."""
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be above 0 and at most 1, got {text}")
    return value


@section("Stimulus models: image sets and channel selectivity", "selectivity")
class SelectivityOptions:
    """Image sets (``selectivity``, ``image-validation``) and seed 002's settings."""

    image_set: dict[str, Path] = option(
        default_factory=dict, flags=("--image-set",), nargs="+", action="extend",
        type=converters.name_path,
        metavar="NAME=DIR", default_text="none",
        help="affective image sets of selectivity and image-validation: a folder with a "
             "ratings.tsv (file, valence, arousal[, category]) or one sub-folder per "
             "category; give several as --image-set IAPS=/data/iaps NAPS=/data/naps")
    on_unreadable: str = option(
        "error", flags=("--on-unreadable-image",), choices=("error", "skip"),
        help="a file of an image set that Pillow cannot read: refuse the set, or leave the "
             "file out with a warning naming it")
    min_per_category: int = option(
        4, flags=("--min-images-per-category",), type=converters.positive_int, metavar="N",
        parameters=("min_per_category",),
        help="fewest images per category (the 50/25/25 readout split needs one of each "
             "category in each part)")
    valence_low: float = option(
        4.3, type=float, metavar="VALENCE",
        help="valence below which an image is unpleasant (seed 002; used when an image "
             "set gives no category)")
    valence_high: float = option(
        6.0, type=float, metavar="VALENCE",
        help="valence above which an image is pleasant (seed 002)")
    valence_margin: float = option(
        0.5, type=converters.non_negative_float, metavar="VALENCE",
        help="half-width of the band around each valence threshold where an image gets no "
             "category and is left out (seed 002's soft thresholds)")
    layers: list[str] | None = option(
        None, flags=("--selectivity-layers",), type=converters.comma_list, metavar="LIST",
        default_text="the ReLU after every convolution (seed 002's neurons)",
        help="layers of --feature-network whose channels are analysed")
    keep_fraction: float = option(
        0.8, type=_unit_fraction, metavar="F", parameters=("keep_fraction",),
        help="fraction of each layer's channels kept by selectivity index (seed 002)")
    grayscale: bool = option(
        True, flags=("--no-grayscale",), action="store_false",
        default_text="grayscale, as seed 002",
        help="feed the images to the network in colour instead of grayscale")
    random_control: bool = option(
        True, flags=("--no-random-control",), action="store_false",
        default_text="the control runs",
        help="skip seed 002's control (the same network with random weights)")
    gain_lesion: bool = option(
        True, flags=("--no-gain-lesion",), action="store_false",
        default_text="gain and lesion run",
        help="skip the gain and lesion of selective channels (the costly part)")
    gain_max: float = option(
        5.0, type=converters.positive_float, metavar="ALPHA",
        help="largest gain alpha: selective channels are scaled by 1 + alpha (seed 002)")
    gain_step: float = option(
        0.1, type=converters.positive_float, metavar="ALPHA",
        help="step of the gain sweep from 0 to --gain-max (seed 002)")
    n_random: int = option(
        10, flags=("--random-channel-sets",), type=converters.non_negative_int, metavar="N",
        parameters=("n_random",),
        help="random channel sets per category and layer: the control of gain and lesion")
    head_learning_rate: float = option(
        1e-3, flags=("--readout-learning-rate",), type=converters.positive_float,
        metavar="RATE", help="learning rate of the readout head (Adam; seed 002)")
    head_epochs: int = option(10, flags=("--readout-epochs",), type=converters.positive_int,
                              metavar="N", help="epochs of the readout head (seed 002)")
    head_batch_size: int = option(
        128, flags=("--readout-batch-size",), type=converters.positive_int, metavar="N",
        help="mini-batch size of the readout head (seed 002)")
    head_standardize: bool = option(
        False, flags=("--readout-standardize",), action="store_true",
        help="z-score the readout's features on the training images (helps networks with "
             "random weights, whose features are tiny)")
    image_batch_size: int = option(32, type=converters.positive_int, metavar="N",
                                   help="images per forward pass")


def gain_alphas(options: SelectivityOptions) -> list[float]:
    """The gain sweep: 0 to ``gain_max`` by ``gain_step`` (seed 002: 0 to 5 by 0.1).

    Examples
    --------
    >>> gain_alphas(SelectivityOptions(gain_max=1.0, gain_step=0.5))
    [0.0, 0.5, 1.0]
    >>> len(gain_alphas(SelectivityOptions()))
    51
    """
    steps = math.floor(options.gain_max / options.gain_step + 1e-9)
    return [round(k * options.gain_step, 10) for k in range(steps + 1)]


def loading_settings(options: SelectivityOptions) -> dict[str, Any]:
    """How image sets are read (:func:`bids_affect.image_sets.load_image_set`'s options).

    Examples
    --------
    >>> loading_settings(SelectivityOptions())["valence_thresholds"]
    [4.3, 6.0]
    """
    return {"on_unreadable": options.on_unreadable,
            "min_per_category": options.min_per_category,
            "valence_thresholds": [options.valence_low, options.valence_high],
            "valence_margin": options.valence_margin}


def load_image_sets(paths: Mapping[str, str | Path], *, keep_unknown: bool = False,
                    on_unreadable: str = "error", min_per_category: int = 4,
                    valence_thresholds: Sequence[float] = (4.3, 6.0),
                    valence_margin: float = 0.5) -> dict[str, ImageSet]:
    """Every image set, by name, read by the documented rule for bad files.

    Errors name the set's flag (``--image-set IAPS: ...``) and keep their exit
    code: a missing folder or a rated file that does not exist is 66, an
    unreadable image or a category with too few images 65.

    Examples
    --------
    >>> import tempfile
    >>> from PIL import Image
    >>> root = Path(tempfile.mkdtemp())
    >>> for category in ("calm", "scary"):
    ...     (root / category).mkdir()
    ...     for i in range(4):
    ...         Image.new("RGB", (8, 8)).save(root / category / f"{i}.png")
    >>> load_image_sets({"demo": root})["demo"].category_counts()
    {'calm': 4, 'scary': 4}
    >>> load_image_sets({"gone": root / "nowhere"})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    bids_affect.exceptions.InputMissingError: ...: --image-set gone: the image set folder ...
    """
    from bids_affect.image_sets import load_image_set

    loaded = {}
    for name, path in paths.items():
        try:
            loaded[name] = load_image_set(
                path, name=name, on_unreadable=on_unreadable, keep_unknown=keep_unknown,
                min_per_category=min_per_category,
                valence_thresholds=tuple(valence_thresholds), valence_margin=valence_margin)
        except BidsAffectError as err:
            raise type(err)(f"--image-set {name}: {err.problem}", path=err.path,
                            fix=err.fix) from None
    return loaded


def image_set_files(paths: Mapping[str, str | Path]) -> list[str]:
    """Every file of the image sets: inputs whose change must rerun the steps reading them.

    Examples
    --------
    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> _ = (root / "ratings.tsv").write_text("file")
    >>> [Path(f).name for f in image_set_files({"A": root, "gone": root / "x"})]
    ['ratings.tsv']
    """
    return sorted(str(file) for root in paths.values() if Path(root).is_dir()
                  for file in Path(root).rglob("*") if file.is_file())


def describe_image_sets(image_sets: Mapping[str, ImageSet]) -> dict[str, dict[str, Any]]:
    """What sidecars say of each image set: folder, counts, files left out."""
    return {name: {"path": str(image_set.root), "n_images": len(image_set),
                   "categories": image_set.category_counts(),
                   "n_unknown_category": image_set.n_unknown,
                   "unreadable_skipped": list(image_set.skipped)}
            for name, image_set in image_sets.items()}


def selectivity_settings(options: SelectivityOptions, encoding: Any, device: str,
                         num_threads: int | None) -> dict[str, Any]:
    """The settings the selectivity steps receive (and their sidecars record).

    The network and its weights are the encoding section's (``--feature-network``,
    ``--feature-weights``): one image network per run of the app.

    Examples
    --------
    >>> from bids_affect.config import Config
    >>> config = Config()
    >>> settings = selectivity_settings(config.section("selectivity"),
    ...                                 config.section("encoding"), "cpu", None)
    >>> settings["network"], settings["keep_fraction"], settings["head"]["epochs"]
    ('alexnet', 0.8, 10)
    """
    return {"image_sets": {name: str(path) for name, path in options.image_set.items()},
            "network": encoding.feature_network, "weights": encoding.feature_weights,
            "layers": None if options.layers is None else list(options.layers),
            "keep_fraction": options.keep_fraction, "grayscale": options.grayscale,
            "random_control": options.random_control, "alphas": gain_alphas(options),
            "n_random": options.n_random,
            "head": {"learning_rate": options.head_learning_rate,
                     "epochs": options.head_epochs, "batch_size": options.head_batch_size,
                     "standardize": options.head_standardize},
            "loading": loading_settings(options), "batch_size": options.image_batch_size,
            "device": device, "num_threads": num_threads}


# --------------------------------------------------------------------------- checks


def analysis_wanted(name: str, level: str, config: Config) -> bool:
    """Whether analysis ``name`` runs at ``level`` in this run (checks apply then only).

    Examples
    --------
    >>> from bids_affect.config import Config
    >>> config = Config.from_dict({"analysis": {"analyses": ["selectivity"]},
    ...                            "execution": {"analysis_level": ["group"]}})
    >>> analysis_wanted("selectivity", "group", config), analysis_wanted("rsa", "group", config)
    (True, False)
    """
    execution = config.execution
    return (name in config.analysis.analyses and level in execution.analysis_level
            and not (execution.reports_only or execution.boilerplate_only))


def check_image_set_names(paths: Mapping[str, Path], analysis: str) -> None:
    """At least one set; names that stay distinct as labels (they name nodes and columns).

    Examples
    --------
    >>> check_image_set_names({"IAPS": Path("a"), "I-APS": Path("b")}, "selectivity")
    Traceback (most recent call last):
    ...
    bids_affect.exceptions.UsageError: --image-set: 'IAPS' and 'I-APS' are the same name ...
    """
    if not paths:
        raise UsageError(f"--image-set: {analysis} needs at least one image set",
                         fix="give --image-set NAME=DIR (a folder with ratings.tsv, or one "
                             "sub-folder per category)")
    labels: dict[str, str] = {}
    for name in paths:
        try:
            label = deriv.desc_label(name).lower()
        except UsageError:
            raise UsageError(f"--image-set {name!r}: the name needs a letter or digit",
                             fix="name each set with letters and digits, e.g. IAPS") from None
        if label in labels:
            raise UsageError(f"--image-set: {labels[label]!r} and {name!r} are the same name "
                             "once reduced to letters and digits",
                             fix="give each image set its own name")
        labels[label] = name


def check_options(options: SelectivityOptions, config: Config) -> None:
    """Parse-time checks of a selectivity run: network, layers, weights, settings, image sets.

    The image sets are read (headers only) so that a missing folder, a rated
    file that does not exist, an unreadable image or a category too small for
    the readout's split fails before any work, with its exit code.
    """
    from bids_affect.image_sets import valence_categories
    from bids_affect.models.image import image_network_entry

    if not analysis_wanted("selectivity", "group", config):
        return
    check_image_set_names(options.image_set, "selectivity")
    encoding = config.section("encoding")
    if encoding.feature_weights is None:
        raise UsageError("--feature-weights: selectivity needs the weights of "
                         f"--feature-network {encoding.feature_network}",
                         fix="give a local state-dict file (.pth, .pt), or 'random' for a "
                             "randomly initialised network (recorded as such)")
    layers = image_network_entry(encoding.feature_network).layers
    unknown = [name for name in options.layers or () if name not in layers]
    if unknown:
        raise UsageError(f"--selectivity-layers: {encoding.feature_network} has no layer "
                         f"{unknown[0]!r}", fix=f"use some of {', '.join(layers)}")
    if not 0.0 < options.keep_fraction <= 1.0:
        raise UsageError(f"--keep-fraction: must be above 0 and at most 1, got "
                         f"{options.keep_fraction}")
    try:
        valence_categories([], thresholds=(options.valence_low, options.valence_high),
                           margin=options.valence_margin)
    except UsageError as err:
        raise UsageError(f"--valence-low, --valence-high, --valence-margin: {err.problem}",
                         fix="give low + margin <= high - margin") from None
    load_image_sets(options.image_set, **loading_settings(options))


# --------------------------------------------------------------------------- steps


def _network(settings: Mapping[str, Any], seed: int):
    """The image network, its layers (name -> module), its registry entry and provenance."""
    from bids_affect.models.image import create_image_network, file_sha256, image_network_entry
    from bids_affect.selectivity import registry_layers

    name, weights = settings["network"], settings["weights"]
    entry = image_network_entry(name)
    network = create_image_network(name, weights=weights, random_state=seed)
    layers = registry_layers(name, network, settings["layers"])
    random_weights = weights == "random"
    provenance = {"network": name, "weights": "random" if random_weights else str(weights),
                  "weights_sha256": None if random_weights else file_sha256(weights),
                  "random_seed": seed if random_weights else None,
                  "layers": {layer: entry.layers[layer] for layer in layers},
                  "preprocessing": entry.preprocessing.to_dict()}
    return network, layers, entry, provenance


def _stream(image_set: ImageSet, entry, settings: Mapping[str, Any]):
    from bids_affect.image_sets import ImageStream, Preprocess

    return ImageStream(image_set, Preprocess(entry.preprocessing, settings["grayscale"]),
                       batch_size=settings["batch_size"])


def selective_channels(table: pd.DataFrame, network: str = "trained"
                       ) -> dict[str, dict[str, list[int]]]:
    """Per layer and category, the channels kept and preferring it in every image set.

    With two sets these are seed 002's emotion-selective neurons (selective for
    the same emotion in IAPS and in NAPS, the overlap of
    :func:`bids_affect.selectivity.overlap_test`); with one set, that set's
    kept channels.

    Parameters
    ----------
    table : pandas.DataFrame
        :attr:`bids_affect.selectivity.SelectivityResult.table`.
    network : str
        ``"trained"`` or ``"random"``.

    Examples
    --------
    >>> table = pd.DataFrame({"network": "trained", "image_set": ["A"] * 3 + ["B"] * 3,
    ...                       "layer": "relu5", "channel": [0, 1, 2] * 2,
    ...                       "preferred": ["pleasant", "pleasant", "neutral",
    ...                                     "pleasant", "neutral", "neutral"],
    ...                       "kept": True})
    >>> selective_channels(table)
    {'relu5': {'pleasant': [0], 'neutral': [2]}}
    """
    from bids_affect.selectivity import category_order

    rows = table[table["network"] == network]
    order = category_order(rows.loc[rows["preferred"] != "none", "preferred"])
    result: dict[str, dict[str, list[int]]] = {}
    for layer in pd.unique(rows["layer"]):
        layer_rows = rows[rows["layer"] == layer]
        shared = {}
        for category in order:
            chosen = [set(group.loc[group["kept"] & (group["preferred"] == category),
                                    "channel"].astype(int))
                      for _, group in layer_rows.groupby("image_set", sort=False)]
            shared[category] = sorted(set.intersection(*chosen)) if chosen else []
        result[str(layer)] = shared
    return result


def selectivity_step(out_dir: Path, *, settings: Mapping[str, Any], network_seed: int,
                     control_seed: int) -> None:
    """Channel selectivity of every layer on every image set, with the random control.

    Writes ``channels.tsv`` (one row per network, set, layer and channel),
    ``layers.tsv``, ``overlap.tsv`` and ``selectivity.json`` (the channels
    selective in every set, per layer and category, for the gain and lesion
    steps; the network's provenance; the image sets).
    """
    from bids_affect.models.runtime import torch_threads
    from bids_affect.selectivity import (
        channel_selectivity,
        layer_summary,
        registry_random_control,
    )

    image_sets = load_image_sets(settings["image_sets"], **settings["loading"])
    network, layers, entry, provenance = _network(settings, network_seed)
    streams = {name: (_stream(image_set, entry, settings), image_set.categories)
               for name, image_set in image_sets.items()}
    control = (registry_random_control(settings["network"], list(layers),
                                       random_state=control_seed)
               if settings["random_control"] else None)
    with torch_threads(settings.get("num_threads")):
        result = channel_selectivity(network, layers, streams,
                                     keep_fraction=settings["keep_fraction"], control=control,
                                     device=settings["device"],
                                     batch_size=settings["batch_size"])
    deriv.write_tsv(out_dir / "channels.tsv", result.table)
    deriv.write_tsv(out_dir / "layers.tsv", layer_summary(result.table))
    deriv.write_tsv(out_dir / "overlap.tsv", result.overlap)
    deriv.write_json(out_dir / "selectivity.json", {
        "settings": dict(settings), "network_seed": network_seed,
        "control_seed": control_seed if settings["random_control"] else None,
        "network": provenance, "image_sets": describe_image_sets(image_sets),
        "layers": list(layers), "selective": selective_channels(result.table)})


def gain_lesion_step(out_dir: Path, *, decoding_dirs: Sequence[Path], image_set: str,
                     settings: Mapping[str, Any], network_seed: int, seed: int) -> None:
    """Gain and lesion of the selective channels of every layer, on one image set.

    ``decoding_dirs`` holds the selectivity step's folder. One split and one
    readout per category for every layer (the same ``seed``), so the original
    F1 is the same in every layer, as in seed 002's Table 1. Writes
    ``summary.tsv``, ``curves.tsv``, ``table1.tsv`` and ``gainlesion.json``.
    """
    from bids_affect.models.runtime import torch_threads
    from bids_affect.selectivity import ReadoutHead, gain_lesion, table_1

    (selectivity_dir,) = decoding_dirs
    info = read_json(Path(selectivity_dir) / "selectivity.json")
    loaded = load_image_sets({image_set: settings["image_sets"][image_set]},
                             **settings["loading"])[image_set]
    network, layers, entry, _ = _network(settings, network_seed)
    stream = _stream(loaded, entry, settings)
    present = set(loaded.categories)
    head = ReadoutHead(**settings["head"])
    results = {}
    with torch_threads(settings.get("num_threads")):
        for layer, module in layers.items():
            channels = {category: chosen for category, chosen in
                        info["selective"][layer].items() if category in present}
            results[layer] = gain_lesion(
                network, module, stream, loaded.categories, channels,
                alphas=settings["alphas"], n_random=settings["n_random"], head=head,
                random_state=seed, device=settings["device"],
                batch_size=settings["batch_size"], cache_dir=out_dir / "cache")

    def stacked(part: str) -> pd.DataFrame:
        tables = []
        for layer, result in results.items():
            table = getattr(result, part)
            if part == "curves":  # a category without selective channels has no curve
                empty = result.summary.loc[result.summary["n_channels"] == 0, "category"]
                table = table[~table["category"].isin(empty)]
            tables.append(table.assign(image_set=image_set, layer=layer))
        return pd.concat(tables, ignore_index=True)

    for part in ("summary", "curves"):
        table = stacked(part)
        first = ["image_set", "layer"]
        deriv.write_tsv(out_dir / f"{part}.tsv",
                        table[first + [c for c in table.columns if c not in first]])
    table = table_1(results)
    table.insert(0, "image_set", image_set)
    deriv.write_tsv(out_dir / "table1.tsv", table)
    deriv.write_json(out_dir / "gainlesion.json", {
        "image_set": image_set, "seed": seed, "network_seed": network_seed,
        "cached": {layer: result.cached for layer, result in results.items()},
        "split": {part: len(indices) for part, indices in
                  next(iter(results.values())).split.items()}})


def _result_folders(folders: Sequence[Path]) -> tuple[Path, list[Path]]:
    """The selectivity step's folder and the gain-lesion steps' folders, by their files."""
    selectivity = [Path(f) for f in folders if (Path(f) / "selectivity.json").is_file()]
    gains = [Path(f) for f in folders if (Path(f) / "gainlesion.json").is_file()]
    return selectivity[0], gains


#: What each group table of the selectivity analysis holds.
DESCRIPTIONS = {
    "selectivity_channels": "Every channel of every layer on every image set: tuning value "
                            "per category ((category mean - grand mean) / SD), d' per "
                            "category (seed 002's eq. 5: mean minus the mean of the other "
                            "categories' means, over sqrt(sum of the category variances / "
                            "2)), SI (largest d'), preferred category, rank by SI and "
                            "whether it is kept (top fraction by SI); network 'random' is "
                            "the same architecture with random weights (seed 002's control)",
    "selectivity_layers": "Per network, image set and layer: channels with a d', SI mean, "
                          "median and maximum, channels kept and kept per preferred "
                          "category",
    "selectivity_overlap": "Channels kept and preferring the same category in two image sets "
                           "(overlap) against two random sets of the same sizes: expected = "
                           "n_a n_b / n_channels, p = P(hypergeometric >= overlap)",
    "selectivity_gainlesion": "Per image set, layer and category: test F1 of the readout "
                              "(category vs rest) for the original network, the selective "
                              "channels' best gain (alpha chosen on the validation images) "
                              "and their lesion, against as many random channels per draw: "
                              "the mean random F1, the selective-minus-random difference, "
                              "its percentile interval over the draws and p = (1 + draws at "
                              "least as good) / (1 + draws)",
    "selectivity_gaincurves": "Readout F1 on the validation and test images at every gain "
                              "alpha (alpha -1 is the lesion), for the selective channels "
                              "(repeat 0) and each random draw; a layer and category without "
                              "selective channels has no curve",
    "selectivity_table1": "Seed 002's Table 1: per image set and category, the original F1, "
                          "the largest enhancement and the largest lesion effect over the "
                          "layers, with their layers (change in percent of the original)",
}


def write_selectivity_step(out_dir: Path, *, decoding_dirs: Sequence[Path], output_dir: str,
                           participant_label: Sequence[str] | None,
                           provenance: Mapping[str, Any]) -> None:
    """Write the group tables of the selectivity analysis, Table 1 and its figures."""
    from bids_affect.reports.figures import (
        plot_gain_curves,
        plot_selectivity_by_layer,
        plot_tuning_curves,
        save_svg,
    )

    selectivity_dir, gain_dirs = _result_folders(decoding_dirs)
    info = read_json(selectivity_dir / "selectivity.json")
    settings = info["settings"]
    desc = deriv.desc_label(settings["network"])
    inputs = [Path(path) / "ratings.tsv" if (Path(path) / "ratings.tsv").is_file() else path
              for path in settings["image_sets"].values()]
    if settings["weights"] != "random":
        inputs.append(settings["weights"])
    applied = {key: value for key, value in settings.items()
               if key not in ("device", "num_threads")}
    if not gain_dirs:
        applied = {key: value for key, value in applied.items()
                   if key not in ("alphas", "n_random", "head")}
    common = dict(parameters=applied, seed=info["network_seed"],
                  sources=sources(provenance, inputs), Network=info["network"],
                  ImageSets=info["image_sets"], ControlSeed=info["control_seed"])

    def write(kind: str, table: pd.DataFrame | Path, **extra: Any) -> Path:
        path = deriv.output_path(output_dir, kind, desc=desc)
        deriv.write_with_sidecar(path, table, deriv.sidecar(
            Description=DESCRIPTIONS[kind], **extra, **common))
        return path

    channels = write("selectivity_channels", selectivity_dir / "channels.tsv")
    layers = write("selectivity_layers", selectivity_dir / "layers.tsv")
    overlap = write("selectivity_overlap", selectivity_dir / "overlap.tsv")
    written = {"tuning": ([channels], plot_tuning_curves(
                   pd.read_csv(selectivity_dir / "channels.tsv", sep="\t",
                               keep_default_na=False, na_values=["n/a"]),
                   title=f"{settings['network']}: tuning of the kept channels"),
                   "Mean tuning curve (and SD) of the kept channels of the deepest layer, "
                   "grouped by their preferred category, per image set"),
               "si": ([layers, overlap], plot_selectivity_by_layer(
                   pd.read_csv(selectivity_dir / "layers.tsv", sep="\t"),
                   pd.read_csv(selectivity_dir / "overlap.tsv", sep="\t",
                               keep_default_na=False, na_values=["n/a"]),
                   title=settings["network"]),
                   "Mean SI by layer (trained and random weights), and channels selective "
                   "for the same category in two image sets against the hypergeometric "
                   "expectation")}
    if gain_dirs:
        def gathered(name: str) -> pd.DataFrame:
            return pd.concat([pd.read_csv(folder / name, sep="\t", keep_default_na=False,
                                          na_values=["n/a"]) for folder in sorted(gain_dirs)],
                             ignore_index=True)

        splits = {read_json(folder / "gainlesion.json")["image_set"]:
                  read_json(folder / "gainlesion.json") for folder in gain_dirs}
        seeds = {name: about["seed"] for name, about in splits.items()}
        write("selectivity_gainlesion", gathered("summary.tsv"), GainLesionSeeds=seeds,
              Splits={name: about["split"] for name, about in splits.items()})
        curves = gathered("curves.tsv")
        curves_path = write("selectivity_gaincurves", curves, GainLesionSeeds=seeds)
        write("selectivity_table1", gathered("table1.tsv"), GainLesionSeeds=seeds)
        written["gain"] = ([curves_path], plot_gain_curves(
            curves, title=f"{settings['network']}: readout F1 under gain"),
            "Test F1 of the readout against the gain alpha of the selective channels "
            "(solid, one line per layer) and the mean of the random channel sets (dotted); "
            "alpha -1 is the lesion")
    for suffix, (drawn_from, figure, description) in written.items():
        path = deriv.output_path(output_dir, "selectivity_figure", desc=desc, suffix=suffix)
        deriv.write_json(deriv.sidecar_path(path), deriv.sidecar(
            Description=description,
            sources=[f"bids::{Path(p).relative_to(output_dir).as_posix()}" for p in drawn_from]))
        save_svg(figure, path)


# --------------------------------------------------------------------------- wiring


def wire_group(builder: GroupWorkflow, options: SelectivityOptions) -> None:
    """The selectivity node, a gain-lesion node per image set, and their sink."""
    from nipype.interfaces.utility import Merge
    from nipype.pipeline import engine as pe

    settings = selectivity_settings(options, builder.options["encoding"],
                                    builder.shared.device, builder.shared.num_threads)
    in_files = image_set_files(settings["image_sets"])
    if settings["weights"] not in (None, "random"):
        in_files.append(str(settings["weights"]))
    network_seed = builder.seed("selectivity", "network")
    select = builder.node(selectivity_step, "selectivity", {
        "settings": settings, "network_seed": network_seed,
        "control_seed": builder.seed("selectivity", "control")}, in_files=in_files)
    nodes = [select]
    if options.gain_lesion:
        for name in settings["image_sets"]:
            node = builder.node(gain_lesion_step, f"gainlesion_{deriv.desc_label(name)}", {
                "image_set": name, "settings": settings, "network_seed": network_seed,
                "seed": builder.seed("selectivity", "gainlesion", name)}, in_files=in_files)
            builder.wf.connect(select, "out_dir", node, "decoding_dirs")
            nodes.append(node)
    merge = pe.Node(Merge(len(nodes)), name="merge_selectivity", run_without_submitting=True)
    for index, node in enumerate(nodes, start=1):
        builder.wf.connect(node, "out_dir", merge, f"in{index}")
    sink = builder.sink(write_selectivity_step, "ds_selectivity")
    builder.wf.connect(merge, "out", sink, "decoding_dirs")


def methods(config: Config) -> str:
    """The selectivity paragraph of the methods boilerplate (seed 002).

    Examples
    --------
    >>> from bids_affect.config import Config
    >>> "80%" in methods(Config())
    True
    """
    options = config.section("selectivity")
    encoding = config.section("encoding")
    weights = ("random weights" if encoding.feature_weights == "random"
               else "the weights given")
    layers = (", ".join(options.layers) if options.layers
              else "the ReLU after every convolution")
    colour = "in grayscale" if options.grayscale else "in colour"
    text = (f"Emotion selectivity of {encoding.feature_network} channels ({weights}; layers: "
            f"{layers}) was measured as in Liu et al. (2024) on the image sets given, fed "
            f"{colour}: a channel's response to an image was the spatial mean of its feature "
            f"map; its d' for a category was the category's mean response minus the mean of "
            f"the other categories' means, over the square root of the sum of the category "
            f"variances divided by 2, and its selectivity index the largest d'; the top "
            f"{options.keep_fraction:.0%} of each layer's channels by this index were kept. "
            f"Images without a category got one from valence (below "
            f"{options.valence_low:g} unpleasant, above {options.valence_high:g} pleasant, "
            f"neutral between, none within {options.valence_margin:g} of a threshold). "
            f"Channels selective for the same category in two image sets were counted "
            f"against the hypergeometric expectation of two random sets of the same sizes")
    text += (", and the same was done with random weights as a control." if options.random_control
             else ".")
    if options.gain_lesion:
        text += (f" Gain (outputs of the channels selective in every image set scaled by 1 + "
                 f"alpha, alpha from 0 to {options.gain_max:g} by {options.gain_step:g}, the "
                 f"best alpha chosen on validation images) and lesion (outputs set to 0) "
                 f"were scored by the F1 of a two-unit readout (category vs rest; Adam, "
                 f"learning rate {options.head_learning_rate:g}, {options.head_epochs} "
                 f"epochs, batches of {options.head_batch_size}) trained on the unmanipulated "
                 f"network's features of a stratified 50/25/25 split, and compared with "
                 f"{options.n_random} sets of as many random channels.")
    return text
