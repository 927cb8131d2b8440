"""The encoding analysis: options, the feature, encoding and write steps, and their wiring.

Each subject gets an ``encoding`` node: stimulus features for every run
(BIDS ``recording-NAME_stim`` files, ``--stimulus-features`` files, or movies
named in events.tsv's ``stim_file`` passed through an image CNN), convolved
with the HRF and fitted to the subject's cleaned BOLD samples by the encoding
models of ``--encoding-models`` (:func:`bids_affect.encoding.encode`).
Cross-validation follows the decoding options (``--cv``, ``--cv-folds``,
``--cv-gap``).
"""

from __future__ import annotations

from pathlib import Path

from bids_affect._utils import converters
from bids_affect.config import option, section


def _encoders() -> list[str]:
    from bids_affect.encoding import list_encoders

    return list_encoders()


def _image_networks() -> list[str]:
    from bids_affect.models.image import list_image_networks

    return list(list_image_networks())


def _hrf_models() -> tuple[str, ...]:
    from bids_affect.encoding import HRF_MODELS

    return HRF_MODELS


@section("Encoding", "encoding")
class EncodingOptions:
    """Settings of the encoding models and of the stimulus features (``[encoding]``)."""

    models: list[str] = option(
        default_factory=lambda: ["ridge"], flags=("--encoding-models",),
        type=converters.comma_list, metavar="LIST", choices=_encoders,
        help="comma-separated encoding models")
    feature_sets: list[str] | None = option(
        None, type=converters.comma_list, metavar="LIST",
        default_text="every recording-NAME_stim feature set of the runs, and the movies",
        help="feature sets to encode from (their recording-NAME labels)")
    stimulus_features: dict[str, Path] = option(
        default_factory=dict, nargs="+", type=converters.name_path, metavar="NAME=PATH",
        default_text="none",
        help="features of your own: a TSV (with header) or NPY per run, rows sampled from "
             "the run's start; PATH may hold {subject}, {session}, {task}, {run} "
             "(see docs/encoding.md)")
    feature_network: str = option("alexnet", choices=_image_networks,
                                  help="image CNN that turns movie frames into features")
    feature_layer: str = option("fc7", metavar="LAYER",
                                help="layer of --feature-network whose activations are the "
                                     "features (conv layers spatially averaged)")
    feature_weights: str | None = option(
        None, metavar="PATH|random", default_text="none: needed for movies",
        help="weights of --feature-network: a local state-dict file (torchvision parameter "
             "names), or 'random' for a randomly initialised network (recorded as such)")
    frame_step: int = option(5, type=converters.positive_int, metavar="N",
                             help="every Nth movie frame goes through the network (seed 000)")
    hrf: str = option("spm", choices=_hrf_models,
                      help="haemodynamic model of the features: SPM or Glover canonical HRF, "
                           "or FIR delays of 2-8 s")
    permutations: int = option(
        1000, flags=("--encoding-permutations",), type=converters.non_negative_int,
        metavar="N", parameters=("n_permutations",),
        help="circular shifts of each run's BOLD against its features in the null")
    pls_components: int = option(20, type=converters.positive_int, metavar="K",
                                 parameters=("n_components",),
                                 help="components of the pls encoding model (seed 000)")
