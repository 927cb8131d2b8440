"""The synthesis analysis: images that drive each ROI's encoding model, and their separability.

Seed 000's Figure 2 (:mod:`bids_affect.synthesis`) in the app. Per subject,
the ``synthesis`` node reads the subject's encoding models (as
image-validation does, :func:`bids_affect.steps.image_validation.image_encoding_fits`),
builds the chain images -> network -> layer -> each ROI's mean predicted
response, and for every target ROI searches images that maximise it: over the
latent space of a generator network the user gives (``--generator``) or of a
built-in parameterisation, with CMA-ES or gradient ascent. The predicted
activations of every ROI to the images made for every target then feed a
cross-validated classifier (accuracy, chance, permutation p, confusion) and a
hierarchical clustering of the targets. Random images of the same generator
are scored too: the baseline the optimised images must beat. The group node
pools the subjects' separability (t-test of accuracy against chance, summed
confusion).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from bids_affect._utils import converters
from bids_affect.config import option, section
from bids_affect.exceptions import BidsAffectError, InputDataError, UsageError
from bids_affect.io import derivatives as deriv
from bids_affect.steps._outputs import by_task_and_desc, participant_outputs, read_json, sources
from bids_affect.steps.image_validation import (
    check_weights_unchanged,
    image_encoding_fits,
    raw_feature_encoder,
)
from bids_affect.steps.selectivity import analysis_wanted

if TYPE_CHECKING:
    from bids_affect.config import Config
    from bids_affect.workflows.group import GroupWorkflow
    from bids_affect.workflows.participant import ParticipantWorkflow


def _optimizers() -> tuple[str, ...]:
    from bids_affect.synthesis import OPTIMIZERS

    return OPTIMIZERS


def _contrasts() -> tuple[str, ...]:
    from bids_affect.synthesis import CONTRASTS

    return CONTRASTS


def _output_range(text: str) -> list[float]:
    """``LOW,HIGH`` with HIGH > LOW (the generator's output range)."""
    parts = [part for part in text.replace(" ", ",").split(",") if part]
    try:
        low, high = (float(part) for part in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH (two numbers), got {text!r}"
                                         ) from None
    if not high > low:
        raise argparse.ArgumentTypeError(f"HIGH must be above LOW, got {text!r}")
    return [low, high]


@section("Stimulus models: synthesis", "synthesis")
class SynthesisOptions:
    """Activation maximisation of each ROI's encoding model (``[synthesis]``)."""

    generator: Path | None = option(
        None, type=Path, metavar="PATH",
        default_text="built-in Fourier images (cma) or pixels (gradient)",
        help="image generator network: a torch.export or TorchScript archive, or a "
             "torch.save'd module (unpickling runs its code: give only files you trust), "
             "mapping latent codes to (n, 3, H, W) images")
    generator_weights: Path | None = option(
        None, type=Path, metavar="PATH", default_text="those saved with the generator",
        help="state dict loaded into --generator (keys and shapes checked)")
    generator_latent_dim: int | None = option(
        None, type=converters.positive_int, metavar="N",
        default_text="the generator's latent_dim attribute",
        help="length of the generator's latent codes")
    generator_output_range: list[float] = option(
        default_factory=lambda: [0.0, 1.0], type=_output_range, metavar="LOW,HIGH",
        default_text="0,1", help="range of the generator's output, mapped to [0, 1] "
                                 "(-1,1 for a tanh output)")
    optimizer: str = option("cma", flags=("--synthesis-optimizer",), choices=_optimizers,
                            help="CMA-ES (seed 000's evolutionary search) or gradient ascent "
                                 "(differentiable chains)")
    contrast: str = option("none", flags=("--synthesis-contrast",), choices=_contrasts,
                           help="maximise the target ROI alone, or minus the mean of the "
                                "others")
    targets: list[str] | None = option(
        None, flags=("--synthesis-targets",), type=converters.comma_list, metavar="LIST",
        default_text="every ROI of the encoding models",
        help="ROIs to make images for")
    n_images: int = option(10, flags=("--synthesis-images",), type=converters.positive_int,
                           metavar="N", parameters=("n_images",),
                           help="images per target, each from its own random start")
    n_steps: int = option(100, flags=("--synthesis-steps",), type=converters.positive_int,
                          metavar="N", parameters=("n_steps",),
                          help="CMA-ES generations or gradient steps")
    image_size: int = option(64, flags=("--synthesis-image-size",),
                             type=converters.int_at_least(8), metavar="PIXELS",
                             parameters=("image_size",),
                             help="side of the built-in generators' images")
    learning_rate: float = option(0.05, flags=("--synthesis-learning-rate",),
                                  type=converters.positive_float, metavar="RATE",
                                  help="Adam's learning rate (gradient ascent)")
    permutations: int = option(1000, flags=("--synthesis-permutations",),
                               type=converters.positive_int, metavar="N",
                               help="label permutations of the separability null")
    folds: int = option(5, flags=("--synthesis-folds",), type=converters.int_at_least(2),
                        metavar="K", help="stratified folds of the separability classifier")


def synthesis_settings(options: SynthesisOptions) -> dict[str, Any]:
    """The settings a synthesis step receives (and its sidecars record).

    Examples
    --------
    >>> synthesis_settings(SynthesisOptions())["optimizer"]
    'cma'
    """
    return {"generator": None if options.generator is None else str(options.generator),
            "generator_weights": (None if options.generator_weights is None
                                  else str(options.generator_weights)),
            "generator_latent_dim": options.generator_latent_dim,
            "generator_output_range": list(options.generator_output_range),
            "optimizer": options.optimizer, "contrast": options.contrast,
            "targets": None if options.targets is None else list(options.targets),
            "n_images": options.n_images, "n_steps": options.n_steps,
            "image_size": options.image_size, "learning_rate": options.learning_rate,
            "n_permutations": options.permutations, "n_splits": options.folds}


def _generator(settings: Mapping[str, Any], seed: int):
    """The user's generator (checked to give image batches), or the built-in one."""
    from bids_affect.synthesis import FourierGenerator, PixelGenerator, load_generator

    if settings["generator"] is None:
        size = settings["image_size"]
        return FourierGenerator(size) if settings["optimizer"] == "cma" else PixelGenerator(size)
    try:
        return load_generator(settings["generator"], latent_dim=settings["generator_latent_dim"],
                              weights=settings["generator_weights"],
                              output_range=tuple(settings["generator_output_range"]),
                              random_state=seed)
    except BidsAffectError as err:
        raise type(err)(f"--generator: {err.problem}", path=err.path, fix=err.fix) from None


# --------------------------------------------------------------------------- checks


def check_options(options: SynthesisOptions, config: Config) -> None:
    """Parse-time checks: folds and images per target, and the generator's output.

    The generator is loaded and probed, so a file that holds no module, weights
    for another architecture or an output that is not an image batch fail
    before any work (exit 65, 66 for a missing file).
    """
    if not analysis_wanted("synthesis", "participant", config):
        return
    if options.n_images < options.folds:
        raise UsageError(f"--synthesis-images {options.n_images} is fewer than the "
                         f"--synthesis-folds {options.folds}: every fold needs an image of "
                         "each target", fix="make more images per target or use fewer folds")
    if options.generator_weights is not None and options.generator is None:
        raise UsageError("--generator-weights needs --generator",
                         fix="give the generator network the weights belong to")
    if options.generator is not None:
        _generator(synthesis_settings(options), seed=0)


# --------------------------------------------------------------------------- steps


def _response_model(fit, device: str):
    """Images in [0, 1] -> each ROI's mean predicted response, for one encoding model."""
    from bids_affect.image_validation import roi_readout
    from bids_affect.models.image import (
        create_image_network,
        image_network_entry,
        layer_module,
    )
    from bids_affect.models.runtime import resolve_device
    from bids_affect.synthesis import image_response_model

    spec = fit.extractor
    entry = image_network_entry(spec["network"])
    network = create_image_network(spec["network"], weights=spec["weights"],
                                   random_state=spec.get("random_seed"))
    readout = roi_readout(raw_feature_encoder(fit.model), fit.rois)
    model = image_response_model(network, layer_module(spec["network"], spec["layer"]),
                                 readout, preprocessing=entry.preprocessing)
    return model.to(resolve_device(device))


def synthesis_step(out_dir: Path, *, decoding_dirs: Sequence[Path],
                   settings: Mapping[str, Any], seed: int, device: str = "cpu",
                   num_threads: int | None = None) -> None:
    """Images for every target ROI of every usable encoding model, and their separability.

    ``decoding_dirs`` holds the encoding step's folder. Per fit ``DESC``:
    ``DESC/TARGET_K.png``, ``DESC_responses.tsv`` (every ROI's predicted
    response to every image, targets and random baseline),
    ``DESC_separability.tsv``, ``DESC_confusion.tsv``; ``synthesis.json`` holds
    the rest (clustering, fold accuracies, search settings, fits left out).
    """
    import torch

    from bids_affect.models.runtime import resolve_device, torch_threads
    from bids_affect.synthesis import random_images, synthesis_separability

    (encoding_dir,) = decoding_dirs
    fits, skipped = image_encoding_fits(encoding_dir)
    for desc, fit in list(fits.items()):
        if len(fit.rois) < 2:
            skipped[desc] = (f"it has {len(fit.rois)} ROI ({', '.join(fit.rois)}); "
                             "separability needs 2 or more (--roi-atlas)")
            del fits[desc]
    if not fits:
        raise InputDataError("no encoding model of this subject can be synthesised for ("
                             f"{'; '.join(f'{k}: {v}' for k, v in skipped.items())})",
                             path=Path(encoding_dir) / "models.json",
                             fix="encode movie features through an image network, with 2 or "
                                 "more ROIs (--roi-atlas)")
    rng = np.random.default_rng(seed)
    about: dict[str, Any] = {}
    with torch_threads(num_threads):
        for desc, fit in fits.items():
            check_weights_unchanged(fit.extractor, fit.path)
            targets = settings["targets"] or list(fit.rois)
            unknown = [target for target in targets if target not in fit.rois]
            if unknown:
                raise UsageError(f"--synthesis-targets: {unknown[0]!r} is not an ROI of the "
                                 f"encoding model {desc}", fix=f"use some of "
                                                               f"{', '.join(fit.rois)}")
            model = _response_model(fit, device)
            fit_seed, baseline_seed = (int(s) for s in rng.integers(2**31 - 1, size=2))
            generator = _generator(settings, fit_seed)
            # The baseline first: the search moves the generator to the device.
            baseline = random_images(generator, settings["n_images"], baseline_seed)
            with torch.no_grad():
                random_responses = model(baseline.to(resolve_device(device))).cpu().numpy()
            made, table, result = synthesis_separability(
                model, targets, roi_names=list(fit.rois), n_images=settings["n_images"],
                n_permutations=settings["n_permutations"], n_splits=settings["n_splits"],
                random_state=fit_seed, generator=generator, optimizer=settings["optimizer"],
                contrast=settings["contrast"], n_steps=settings["n_steps"],
                image_size=settings["image_size"], learning_rate=settings["learning_rate"],
                device=device)
            folder = out_dir / deriv.desc_label(desc)
            folder.mkdir(exist_ok=True)
            rows = []
            for target, synthesis in made.items():
                for k, image in enumerate(synthesis.pil_images()):
                    with deriv.atomic_path(folder / f"{deriv.desc_label(target)}_{k}.png") as tmp:
                        image.save(tmp, format="PNG")
                rows.append(synthesis.responses.assign(
                    target=target, image=np.arange(len(synthesis.objective)) + 1,
                    objective=synthesis.objective))
            rows.append(pd.DataFrame(random_responses, columns=list(fit.rois)).assign(
                target="random", image=np.arange(len(random_responses)) + 1,
                objective=np.nan))
            responses = pd.concat(rows, ignore_index=True)
            deriv.write_tsv(out_dir / f"{desc}_responses.tsv",
                            responses[["target", "image", "objective", *fit.rois]])
            deriv.write_tsv(out_dir / f"{desc}_separability.tsv", result.table())
            confusion = result.confusion.reset_index()
            deriv.write_tsv(out_dir / f"{desc}_confusion.tsv", confusion)
            about[desc] = {
                "targets": result.targets, "order": result.order,
                "linkage": result.linkage.tolist(),
                "fold_accuracies": result.fold_accuracies.tolist(), "seed": fit_seed,
                "baseline_seed": baseline_seed, "rois": {name: int(mask.sum()) for name, mask
                                                         in fit.rois.items()},
                "features": {key: fit.extractor[key] for key in
                             ("network", "layer", "weights", "random_seed")},
                "search": next(iter(made.values())).settings,
                "images": {target: [f"{deriv.desc_label(target)}_{k}.png"
                                    for k in range(settings["n_images"])] for target in made}}
    deriv.write_json(out_dir / "synthesis.json", {"fits": about, "skipped": skipped,
                                                  "settings": dict(settings), "seed": seed})


#: How the separability was computed (sidecars).
SEPARABILITY_METHOD = ("nearest centroid on the predicted responses of every ROI, z-scored "
                       "with the training folds; stratified K-fold cross-validation over the "
                       "images; p = (1 + permutations >= accuracy) / (1 + permutations) with "
                       "the target labels permuted over all images; targets clustered by "
                       "average linkage of the Euclidean distances between their mean "
                       "standardised response profiles")


def write_synthesis_step(out_dir: Path, *, decoding_dirs: Sequence[Path], output_dir: str,
                         subject: str, task: str, runs: Sequence[Mapping[str, Any]],
                         provenance: Mapping[str, Any]) -> None:
    """Write the images, their predicted responses, the separability and its confusion."""
    (synthesis_dir,) = decoding_dirs
    info = read_json(Path(synthesis_dir) / "synthesis.json")
    settings = info["settings"]
    inputs = [path for path in (settings["generator"], settings["generator_weights"]) if path]
    for desc, about in info["fits"].items():
        label = deriv.desc_label(desc)
        common = dict(parameters=settings, seed=about["seed"],
                      sources=sources(provenance, inputs), Features=about["features"],
                      ROIVoxels=about["rois"], Search=about["search"],
                      SkippedModels=info["skipped"])
        names = dict(subject=subject, task=task, desc=label)
        responses = pd.read_csv(Path(synthesis_dir) / f"{desc}_responses.tsv", sep="\t",
                                keep_default_na=False, na_values=["n/a"])
        for target, files in about["images"].items():
            for k, name in enumerate(files):
                row = responses[(responses["target"] == target)
                                & (responses["image"] == k + 1)].iloc[0]
                path = deriv.output_path(output_dir, "synthesis_image",
                                         contrast=deriv.desc_label(target),
                                         suffix=f"image{k + 1:02d}", **names)
                deriv.write_with_sidecar(path, Path(synthesis_dir) / label / name,
                                         deriv.sidecar(
                    Description=f"Image synthesised to maximise the predicted response of "
                                f"ROI {target}", Target=target,
                    Objective=float(row["objective"]),
                    PredictedResponses={roi: float(row[roi]) for roi in about["rois"]},
                    **common))
        deriv.write_with_sidecar(
            deriv.output_path(output_dir, "synthesis_responses", **names), responses,
            deriv.sidecar(Description="Predicted response of every ROI (mean over its "
                                      "voxels) to every synthesised image (target: the ROI it "
                                      "was made for; image: its number, as in the file "
                                      "names) and to random images of the same generator "
                                      "(target 'random', the baseline)", **common))
        deriv.write_with_sidecar(
            deriv.output_path(output_dir, "synthesis_separability", **names),
            Path(synthesis_dir) / f"{desc}_separability.tsv",
            deriv.sidecar(Description="N-way classification of the images by target from "
                                      "the predicted responses of every ROI: accuracy, "
                                      "chance (1 / targets), the permutation null's mean and "
                                      "p", Method=SEPARABILITY_METHOD,
                          FoldAccuracies=about["fold_accuracies"],
                          Linkage=about["linkage"], DendrogramOrder=about["order"], **common))
        deriv.write_with_sidecar(
            deriv.output_path(output_dir, "synthesis_confusion", **names),
            Path(synthesis_dir) / f"{desc}_confusion.tsv",
            deriv.sidecar(Description="Cross-validated predictions of the images' targets: "
                                      "rows true target, columns predicted",
                          Method=SEPARABILITY_METHOD, **common), classes=about["targets"])


def group_synthesis_step(out_dir: Path, *, output_dir: str,
                         participant_label: Sequence[str] | None,
                         provenance: Mapping[str, Any]) -> None:
    """Pool the subjects' separability: their table, a t-test against chance, summed confusion."""
    import logging

    from bids_affect.stats.group import TTEST_CAVEAT, accuracy_ttest

    found = participant_outputs(
        output_dir, "synthesis_separability", participant_label,
        what="synthesis outputs (sub-*/func/*_separability.tsv)",
        analyses="encoding,synthesis")
    resolver = deriv.SourceResolver({"": Path(output_dir)})
    for (task, desc), items in by_task_and_desc(found):
        rows, confusion = [], None
        for item in sorted(items, key=lambda i: i.path):
            row = pd.read_csv(item.path, sep="\t").iloc[0].to_dict()
            rows.append({"participant_id": f"sub-{item.entities['subject']}",
                         "session": item.entities.get("session"), **row})
            table = pd.read_csv(deriv.output_path(output_dir, "synthesis_confusion",
                                                  **item.entities), sep="\t",
                                keep_default_na=False).set_index("true")
            confusion = table if confusion is None else confusion.add(table, fill_value=0)
        subjects = pd.DataFrame(rows)
        if subjects["session"].isna().all():
            subjects = subjects.drop(columns="session")
        names = dict(task=task, desc=desc)
        item_sources = [resolver.uri(item.path) for item in items]
        deriv.write_with_sidecar(
            deriv.output_path(output_dir, "group_separability", **names), subjects,
            deriv.sidecar(Description="Each subject's separability of the images synthesised "
                                      "for its ROIs: accuracy, chance, permutation null mean "
                                      "and p", Method=SEPARABILITY_METHOD,
                          sources=item_sources))
        confusion = confusion.fillna(0).astype(int)
        deriv.write_with_sidecar(
            deriv.output_path(output_dir, "group_synthesis_confusion", **names),
            confusion.reset_index(), deriv.sidecar(
                Description="Sum over subjects of the cross-validated confusion matrices "
                            "(rows true target, columns predicted)", sources=item_sources),
            classes=list(confusion.columns))
        if len(subjects) < 2:
            logging.getLogger("bids_affect.steps").warning(
                "synthesis task-%s desc-%s: one subject, no group test of separability.",
                task, desc)
            continue
        test = accuracy_ttest(subjects["accuracy"], subjects["chance"])
        test.pop("caveat")
        deriv.write_with_sidecar(
            deriv.output_path(output_dir, "group_separability_test", **names),
            pd.DataFrame([test]), deriv.sidecar(
                Description="One-sample t-test across subjects of separability accuracy "
                            "minus chance (1 / targets)", Caveat=TTEST_CAVEAT,
                sources=item_sources))


# --------------------------------------------------------------------------- wiring


def wire(builder: ParticipantWorkflow, options: SynthesisOptions) -> None:
    """The subject's synthesis node, reading its encoding models, and its sink."""
    from bids_affect.steps.encoding import encoding_node

    settings = synthesis_settings(options)
    in_files = [path for path in (settings["generator"], settings["generator_weights"])
                if path]
    node = builder.node(synthesis_step, "synthesis", {
        "settings": settings, "seed": builder.seed("synthesis"),
        "device": builder.shared.device, "num_threads": builder.shared.num_threads},
        in_files=in_files)
    sink = builder.sink(write_synthesis_step, "ds_synthesis")
    builder.wf.connect([(encoding_node(builder), node, [("out_dir", "decoding_dirs")]),
                        (node, sink, [("out_dir", "decoding_dirs")])])


def wire_group(builder: GroupWorkflow, options: SynthesisOptions) -> None:
    """The pooled separability of the subjects."""
    builder.node(group_synthesis_step, "synthesis", dict(builder.common), sink=True)


def methods(config: Config) -> str:
    """The synthesis paragraph of the methods boilerplate (seed 000).

    Examples
    --------
    >>> from bids_affect.config import Config
    >>> "CMA-ES" in methods(Config())
    True
    """
    options = config.section("synthesis")
    search = {"cma": f"CMA-ES ({options.n_steps} generations; separable CMA above 100 "
                     f"dimensions)",
              "gradient": f"gradient ascent (Adam, learning rate {options.learning_rate:g}, "
                          f"{options.n_steps} steps, with random jitter)"}[options.optimizer]
    space = ("the latent space of the generator network given" if options.generator
             else ("low-frequency colour Fourier coefficients" if options.optimizer == "cma"
                   else "the pixels (blurred periodically)")
             + f" of {options.image_size}x{options.image_size} images")
    objective = ("the target ROI's predicted response" if options.contrast == "none"
                 else "the target ROI's predicted response minus the mean of the others'")
    return (f"For each ROI of each subject's encoding models, {options.n_images} images were "
            f"synthesised (Jang & Kragel) to maximise {objective}, searching {space} with "
            f"{search}. The predicted activations of every ROI to these images were "
            f"classified by target (nearest centroid, {options.folds}-fold stratified "
            f"cross-validation, {options.permutations:,} label permutations for the p-value) "
            f"and the targets clustered hierarchically; accuracy minus chance was tested "
            f"across subjects with a one-sample t-test.")
