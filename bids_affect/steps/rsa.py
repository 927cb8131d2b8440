"""The RSA analysis: options, the RDM and write steps, their checks and wiring.

One ``rsa`` node per subject: brain RDMs (whole mask, and each ROI of
``--roi-atlas``), the model RDM of each CNN decoder of ``--models``, the
reference RDMs of ``--rsa-reference``, and Mantel tests of every pair.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bids_affect._utils import converters
from bids_affect.config import option, section
from bids_affect.exceptions import BidsAffectError, UsageError
from bids_affect.io import derivatives as deriv
from bids_affect.steps._outputs import cleaning_parameters, data_space, read_json, sources
from bids_affect.steps.decoding import decoder_node, load_fold_networks, read_decoding

if TYPE_CHECKING:
    from bids_affect.config import Config
    from bids_affect.workflows.participant import ParticipantWorkflow


def _distances() -> list[str]:
    from bids_affect.rsa import DISTANCES

    return list(DISTANCES)


def _methods() -> list[str]:
    from bids_affect.rsa import METHODS

    return list(METHODS)


@section("RSA", "rsa")
class RSAOptions:
    """Settings of the RDMs and their comparisons (``[rsa]``)."""

    distance: str = option("correlation", flags=("--rdm-distance",), choices=_distances,
                           help="RDM distance")
    methods: list[str] = option(
        default_factory=lambda: ["spearman"], flags=("--rsa-methods",),
        type=converters.comma_list, metavar="LIST", choices=_methods,
        help="RDM comparisons (comma-separated)")
    reference: dict[str, Path] = option(
        default_factory=dict, flags=("--rsa-reference",), nargs="+", action="extend",
        type=converters.name_path, metavar="NAME=PATH", default_text="none",
        help="reference RDMs (TSV with a 'class' column and one column per class, 3 or "
             "more) compared with the brain and model RDMs on the classes they share; NAME "
             "must differ from the brain, ROI and model RDMs' names")
    permutations: int = option(
        10000, flags=("--rsa-permutations",), type=converters.non_negative_int, metavar="N",
        help="Mantel permutations when exact enumeration is impossible (more than 8 classes)")


def rsa_settings(options: RSAOptions, roi_atlas: str | None) -> dict[str, Any]:
    """The settings an RSA step receives (and its sidecars record)."""
    return {"distance": options.distance, "methods": list(options.methods),
            "n_permutations": options.permutations,
            "references": {name: str(path) for name, path in options.reference.items()},
            "roi_atlas": roi_atlas}


# --------------------------------------------------------------------------- checks


def _as_usage_error(option_text: str, err: BidsAffectError) -> UsageError:
    """An error found while checking an option's value, as exit 64 naming the option.

    Errors about files (data, missing) keep the file; usage errors name the option only.
    """
    path = None if isinstance(err, UsageError) else err.path
    return UsageError(f"{option_text}: {err.problem}", path=path, fix=err.fix)


def check_options(options: RSAOptions, config: Config) -> None:
    """Parse-time checks: methods known; reference RDMs valid, under names no RDM writes."""
    from bids_affect.atlases import parse_roi_atlas
    from bids_affect.decoding import is_cnn
    from bids_affect.rsa import METHODS, brain_rdm_name, model_rdm_name, read_rdm

    for method in options.methods:
        if method not in METHODS:
            raise UsageError(f"--rsa-methods: {method!r} is unknown",
                             fix=f"use one of {', '.join(METHODS)}")
    roi_atlas = config.analysis.roi_atlas
    rois = list(parse_roi_atlas(roi_atlas).rois) if roi_atlas else []
    # Output names compare case-insensitively: they must differ on any file system.
    reserved = {brain_rdm_name().lower(): "the whole-mask brain RDM"}
    reserved.update({brain_rdm_name(roi).lower(): f"the brain RDM of ROI {roi}"
                     for roi in rois})
    reserved.update({model_rdm_name(model).lower(): f"the model RDM of {model}"
                     for model in config.analysis.models if is_cnn(model)})
    given: dict[str, str] = {}
    for name, path in options.reference.items():
        option_text = f"--rsa-reference {name}"
        try:
            label = deriv.desc_label(name)
            rdm = read_rdm(path)
        except BidsAffectError as err:
            raise _as_usage_error(option_text, err) from None
        if label.lower() in reserved:
            raise UsageError(f"{option_text}: desc-{label}_rdm.tsv is {reserved[label.lower()]}",
                             fix="give the reference another name")
        if label.lower() in given:
            raise UsageError(f"{option_text}: references {given[label.lower()]!r} and {name!r} "
                             f"would both write desc-{label}_rdm.tsv (names keep letters and "
                             "digits only)", fix="give each reference its own name")
        given[label.lower()] = name
        if len(rdm) < 3:
            raise UsageError(f"{option_text}: the RDM holds {len(rdm)} classes; comparing RDMs "
                             "needs 3 or more", path=path, fix="give an RDM of 3 or more "
                                                               "classes")


# --------------------------------------------------------------------------- steps


def rsa_step(out_dir: Path, *, samples_dir: Path, settings: Mapping[str, Any], seed: int,
             min_volumes: int, decoding_dirs: Sequence[Path] = ()) -> None:
    """Brain (whole mask, ROIs), CNN and reference RDMs of one subject and their comparisons.

    ``settings``: ``distance``, ``methods``, ``n_permutations``, ``references``
    (name -> TSV path) and ``roi_atlas`` (an ``--roi-atlas`` value, or None).
    Every RDM is written as ``rdm_NAME.tsv``; ``rsa.json`` keeps, per RDM, what
    its sidecar says (the distance actually used, the folds behind each entry
    of a model RDM, the ROI and its voxels...).
    """
    from bids_affect.atlases import roi_columns
    from bids_affect.bold import SampleSet
    from bids_affect.rsa import (
        brain_rdm_name,
        compare_rdms_table,
        compute_rdm,
        model_rdm,
        rdm_to_table,
        reference_rdms,
    )

    samples = SampleSet.load(samples_dir)
    columns_by_roi = roi_columns(samples.mask_img, settings.get("roi_atlas"),
                                 data_space(samples))  # fail fast
    index = samples.labelled(min_volumes=min_volumes)
    table = samples.table.iloc[index]
    labels, runs = table.label.tolist(), table.run.tolist()
    classes = sorted(set(labels))
    distance = settings["distance"]
    X = samples.X[index]
    rdms = {brain_rdm_name(): compute_rdm(X, labels, classes, distance, runs)}
    details: dict[str, dict[str, Any]] = {brain_rdm_name(): {
        "Description": "RDM of the brain's class patterns (every voxel of the mask)",
        "Distance": distance, "NumberOfVoxels": int(X.shape[1])}}
    for roi, columns in columns_by_roi.items():
        name = brain_rdm_name(roi)
        rdms[name] = compute_rdm(X[:, columns], labels, classes, distance, runs)
        details[name] = {"Description": f"RDM of the brain's class patterns in ROI {roi} "
                                        "(its voxels in the mask)",
                         "Distance": distance, "ROI": roi, "NumberOfVoxels": len(columns)}
    for decoding_dir in decoding_dirs:
        metrics, predictions = read_decoding(decoding_dir)
        networks = load_fold_networks(decoding_dir, len(metrics["classes"]))
        name, rdm, about = model_rdm(metrics["model"], networks, samples.volumes, predictions,
                                     classes, distance)
        rdms[name], details[name] = rdm, about
    for name, (rdm, about) in reference_rdms(settings.get("references", {}), classes).items():
        rdms[name], details[name] = rdm, about
    for name, rdm in rdms.items():
        deriv.write_tsv(out_dir / f"rdm_{name}.tsv", rdm_to_table(rdm))
    if len(rdms) > 1:
        statistics = compare_rdms_table(rdms, methods=settings["methods"],
                                        n_permutations=settings["n_permutations"],
                                        random_state=seed, shared_classes=True)
        deriv.write_tsv(out_dir / "statistics.tsv", statistics)
    deriv.write_json(out_dir / "rsa.json", {"rdms": list(rdms), "settings": dict(settings),
                                            "seed": seed, "classes": classes,
                                            "details": details})


def write_rsa_step(out_dir: Path, *, decoding_dirs: Sequence[Path], output_dir: str,
                   subject: str, task: str, runs: Sequence[Mapping[str, Any]],
                   provenance: Mapping[str, Any], samples_dir: Path | None = None) -> None:
    """Write every RDM and the table of comparisons."""
    from bids_affect.atlases import roi_atlas_info

    (rsa_dir,) = decoding_dirs
    info = read_json(Path(rsa_dir) / "rsa.json")
    settings = info["settings"]
    atlas = roi_atlas_info(settings["roi_atlas"]) if settings.get("roi_atlas") else None
    common = dict(parameters={**settings, "cleaning": cleaning_parameters(samples_dir)},
                  seed=info["seed"], sources=sources(provenance, [r["bold"] for r in runs]))
    for name in info["rdms"]:
        details = info["details"][name]
        roi = {"Atlas": atlas} if "ROI" in details else {}
        deriv.write_with_sidecar(
            deriv.output_path(output_dir, "rdm", subject=subject, task=task, desc=name),
            Path(rsa_dir) / f"rdm_{name}.tsv",
            deriv.sidecar(**details, **roi, RequestedDistance=settings["distance"], **common))
    if (Path(rsa_dir) / "statistics.tsv").exists():
        deriv.write_with_sidecar(
            deriv.output_path(output_dir, "rsa_statistics", subject=subject, task=task),
            Path(rsa_dir) / "statistics.tsv",
            deriv.sidecar(Description="Pairwise RDM comparisons on the upper triangles, each "
                                      "pair on the classes both RDMs hold; p from Mantel "
                                      "tests (exact enumeration up to 8 classes, rdm_a "
                                      "permuted)", Alternative="greater", **common))


# --------------------------------------------------------------------------- wiring


def wire(builder: ParticipantWorkflow, options: RSAOptions) -> None:
    """One RSA node (and its sink), fed by every CNN decoder of ``--models``."""
    from nipype.interfaces.utility import Merge
    from nipype.pipeline import engine as pe

    from bids_affect.decoding import is_cnn

    settings = rsa_settings(options, builder.shared.roi_atlas)
    rsa_node = builder.node(rsa_step, "rsa", {"settings": settings, "seed": builder.seed("rsa"),
                                              "min_volumes": builder.min_volumes},
                            in_files=[str(p) for p in settings["references"].values()])
    sink = builder.sink(write_rsa_step, "ds_rsa")
    builder.wf.connect([(builder.samples, rsa_node, [("out_dir", "samples_dir")]),
                        (rsa_node, sink, [("out_dir", "decoding_dirs")]),
                        (builder.samples, sink, [("out_dir", "samples_dir")])])
    decoders = [decoder_node(builder, model) for model in builder.shared.models
                if is_cnn(model)]
    if decoders:
        merge = pe.Node(Merge(len(decoders)), name="merge_cnn_decoders",
                        run_without_submitting=True)
        for index, decode in enumerate(decoders, start=1):
            builder.wf.connect(decode, "out_dir", merge, f"in{index}")
        builder.wf.connect(merge, "out", rsa_node, "decoding_dirs")
