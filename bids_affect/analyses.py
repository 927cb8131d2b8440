"""The registry of analyses: one :class:`Analysis` record per analysis.

A record carries everything the app needs to offer an analysis: its name and
description (``--analyses`` choices), its options dataclass (a config section
``[NAME]`` and command-line flags generated from it, see :mod:`bids_affect.config`),
the output kinds it writes (:data:`bids_affect.io.derivatives.OUTPUTS`), the
checks of its options at parse time, and ``wire``, which adds its nodes to a
subject's workflow (:class:`bids_affect.workflows.participant.ParticipantWorkflow`).
Adding an analysis takes a library module (the science), a steps module (its
options, steps and wiring) and one :func:`register_analysis` call; the parser,
the configuration and the workflows pick it up from here.

An analysis of the roadmap that is not built yet is registered as unavailable,
so asking for it is refused with exit 64 and a clear line, never silently skipped.

Examples
--------
>>> check_analyses(["decoding"], ["ridge"])
['decoding']
>>> check_analyses(["none"], ["ridge"])
[]
>>> check_analyses(["encodings"], ["ridge"])
Traceback (most recent call last):
...
bids_affect.exceptions.UsageError: analyses: 'encodings' is unknown; fix: use one of ...
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bids_affect.__about__ import __version__
from bids_affect.boilerplate import decoding_methods, occlusion_methods, rsa_methods
from bids_affect.exceptions import UsageError
from bids_affect.steps import (
    decoding,
    encoding,
    group,
    group_decoding,
    group_maps,
    image_validation,
    occlusion,
    rsa,
    selectivity,
    synthesis,
)


@dataclass(frozen=True)
class Analysis:
    """One analysis of the BIDS-App.

    Attributes
    ----------
    name : str
        Its ``--analyses`` name and config section.
    description : str
        One line for ``--help`` and the docs.
    options : type or None
        Its options: a dataclass made with :func:`bids_affect.config.section`
        whose fields are declared with :func:`bids_affect.config.option`.
    wire : callable or None
        ``wire(builder, options)`` adds its nodes to one subject's workflow
        (:class:`~bids_affect.workflows.participant.ParticipantWorkflow`); None
        for an analysis of the group level only.
    wire_group : callable or None
        ``wire_group(builder, options)`` adds its nodes to the group workflow
        (:class:`~bids_affect.workflows.group.GroupWorkflow`).
    group_samples : bool
        Its group part reads the subjects' samples (the participant level's
        labels and samples nodes join the group workflow).
    group_when : callable or None
        ``group_when(config)``: whether its group part runs for this
        configuration (None: whenever the analysis is asked for).
    outputs : tuple of str
        Output kinds it writes (keys of :data:`bids_affect.io.derivatives.OUTPUTS`).
    check : callable or None
        ``check(options, config)``: parse-time checks of its options (exit 64).
    methods : callable or None
        ``methods(config)``: its paragraph of the methods boilerplate.
    needs_cnn : bool
        It reads trained CNN decoders, so ``--models`` must name one.
    available : bool
        False for an analysis of the roadmap not built yet.
    """

    name: str
    description: str
    options: type | None = None
    wire: Callable[[Any, Any], None] | None = None
    wire_group: Callable[[Any, Any], None] | None = None
    group_samples: bool = False
    group_when: Callable[[Any], bool] | None = None
    outputs: tuple[str, ...] = ()
    check: Callable[[Any, Any], None] | None = None
    methods: Callable[[Any], str] | None = None
    needs_cnn: bool = False
    available: bool = True


#: Every analysis, by name, in the order they run and are listed.
ANALYSES: dict[str, Analysis] = {}


def register_analysis(analysis: Analysis) -> Analysis:
    """Add ``analysis`` to the registry; a name taken already is an error."""
    if analysis.name in ANALYSES or analysis.name == "none":
        raise ValueError(f"analysis {analysis.name!r} is already registered")
    if analysis.available and analysis.wire is None and analysis.wire_group is None:
        raise ValueError(f"analysis {analysis.name!r} is available but has no wire function")
    ANALYSES[analysis.name] = analysis
    return analysis


def unregister_analysis(name: str) -> None:
    """Remove an analysis (tests and plug-ins that replace one)."""
    ANALYSES.pop(name, None)


def list_analyses() -> dict[str, str]:
    """Names and descriptions of the available analyses."""
    return {name: a.description for name, a in ANALYSES.items() if a.available}


def check_analyses(names: Sequence[str], models: Sequence[str],
                   levels: Sequence[str] = ("participant", "group")) -> list[str]:
    """Validated analysis names (``["none"]`` -> ``[]``), in registry order.

    Raises :class:`UsageError` for unknown or unavailable analyses, for
    analyses that need a CNN when ``models`` holds none, and for an analysis
    of the group level only asked at the participant level alone.
    """
    from bids_affect.decoding import is_cnn, list_models

    names = [name.lower() for name in names]
    if names == ["none"]:
        return []
    if "none" in names:
        raise UsageError("'none' cannot be combined with other analyses", path="analyses")
    for name in names:
        if name not in ANALYSES:
            raise UsageError(f"{name!r} is unknown", path="analyses",
                             fix=f"use one of {', '.join(list_analyses())}, or none")
        if not ANALYSES[name].available:
            raise UsageError(f"{name!r} is not available in bids_affect {__version__} (it "
                             "arrives in a later release)", path="analyses",
                             fix=f"use one of {', '.join(list_analyses())}")
    for name in names:
        if ANALYSES[name].wire is None and "group" not in levels:
            raise UsageError(f"{name} runs at the group level only (no subject is involved)",
                             path="analyses", fix=f"run 'bids_affect bids_dir output_dir group "
                                                  f"--analyses {name}'")
        if ANALYSES[name].needs_cnn and not any(is_cnn(model) for model in models):
            known = [model for model in list_models() if is_cnn(model)]
            raise UsageError(f"{name} needs a CNN decoder, but --models has none "
                             f"({', '.join(models)})", path="analyses",
                             fix=f"add one of {', '.join(known)} to --models")
    return [name for name in ANALYSES if name in names]


register_analysis(Analysis(
    "decoding", "within-subject emotion decoders with run-wise CV, chance level and "
                "permutation tests",
    options=decoding.DecodingOptions, wire=decoding.wire, methods=decoding_methods,
    wire_group=group_decoding.wire_group, group_samples=True, group_when=group.needs_samples,
    outputs=("decoding", "predictions", "confusion", "null_distribution", "model",
             "group_decoding", "group_null", "group_predictions")))
register_analysis(Analysis(
    "occlusion", "occlusion sensitivity maps of CNN decoders, top voxels, UMAP",
    options=occlusion.OcclusionOptions, wire=occlusion.wire, needs_cnn=True,
    methods=occlusion_methods, wire_group=group_maps.wire_group_occlusion,
    outputs=("occlusion_map", "occlusion_topk", "occlusion_samples", "occlusion_umap",
             "figure", "group_statmap", "group_inference_map", "group_clusters",
             "group_consensus", "group_occlusion_umap", "group_figure")))
register_analysis(Analysis(
    "rsa", "brain and CNN RDMs compared with Mantel tests",
    options=rsa.RSAOptions, wire=rsa.wire, check=rsa.check_options, methods=rsa_methods,
    wire_group=group_maps.wire_group_rsa,
    outputs=("rdm", "rsa_statistics", "group_rsa_statistics", "group_rdm")))
register_analysis(Analysis(
    "encoding", "voxelwise encoding models of stimulus features (movies through image CNNs, "
                "or BIDS stimulus recordings), with nulls and ROI tables",
    options=encoding.EncodingOptions, wire=encoding.wire, check=encoding.check_options,
    methods=encoding.methods, wire_group=group_maps.wire_group_encoding,
    outputs=("encoding_map", "encoding_roi", "encoding", "encoding_model", "stim_recording",
             "group_statmap", "group_inference_map", "group_clusters", "group_mixedmodel")))
# ---- Stimulus models (issue 13; helper I) ----
register_analysis(Analysis(
    "selectivity", "emotion-selective channels of an image CNN on affective image sets, "
                   "their gain and lesion against random channels (group level only)",
    options=selectivity.SelectivityOptions, wire_group=selectivity.wire_group,
    check=selectivity.check_options, methods=selectivity.methods,
    outputs=("selectivity_channels", "selectivity_layers", "selectivity_overlap",
             "selectivity_gainlesion", "selectivity_gaincurves", "selectivity_table1",
             "selectivity_figure")))
register_analysis(Analysis(
    "image-validation", "each subject's encoding models on affective images: predicted ROI "
                        "responses regressed on valence and arousal",
    options=image_validation.ImageValidationOptions, wire=image_validation.wire,
    wire_group=image_validation.wire_group, check=image_validation.check_options,
    methods=image_validation.methods,
    outputs=("image_responses", "image_regression", "group_image_regression")))
register_analysis(Analysis(
    "synthesis", "images that maximise each ROI's encoding model, and their separability",
    options=synthesis.SynthesisOptions, wire=synthesis.wire, wire_group=synthesis.wire_group,
    check=synthesis.check_options, methods=synthesis.methods,
    outputs=("synthesis_image", "synthesis_responses", "synthesis_separability",
             "synthesis_confusion", "group_separability", "group_separability_test",
             "group_synthesis_confusion")))
