"""The occlusion analysis: options, the occlusion and write steps, and their wiring.

Each CNN decoder of ``--models`` gets an ``occlusion_MODEL`` node: maps of its
held-out samples (each with the model of the fold that held it out), top
voxels with atlas labels, and the UMAP embedding of the top voxels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from bids_affect._utils import converters
from bids_affect.config import option, section
from bids_affect.io import derivatives as deriv
from bids_affect.steps._outputs import cleaning_parameters, data_space, read_json, sources
from bids_affect.steps.decoding import decoder_node, load_fold_networks, read_decoding

if TYPE_CHECKING:
    from bids_affect.workflows.participant import ParticipantWorkflow


@section("Occlusion", "occlusion")
class OcclusionOptions:
    """Settings of the occlusion maps (``[occlusion]``)."""

    window: int = option(2, flags=("--occlusion-window",), type=converters.positive_int,
                         metavar="VOXELS", help="occlusion cube size")
    stride: int = option(2, flags=("--occlusion-stride",), type=converters.positive_int,
                         metavar="VOXELS", help="occlusion stride")
    threshold: float = option(
        0.75, flags=("--occlusion-threshold",), type=converters.probability, metavar="P",
        help="occlude held-out samples classified correctly with p >= P")
    samples: int = option(10, flags=("--occlusion-samples",), type=converters.positive_int,
                          metavar="N", parameters=("n_per_class",),
                          help="samples per class to occlude")
    precision: str = option(
        "float32", flags=("--occlusion-precision",), choices=("float32", "bfloat16"),
        help="occlusion arithmetic: float32, or bfloat16, which is approximate (the sidecar "
             "reports its error relative to the map), measured slower than float32 on CPUs "
             "and may help on GPUs")
    top_k: int = option(500, flags=("--top-k",), type=converters.positive_int, metavar="K",
                        parameters=("k",), help="top voxels per occlusion map")


def occlusion_settings(options: OcclusionOptions) -> dict[str, Any]:
    """The settings an occlusion step receives (and its sidecars record)."""
    return {"window": options.window, "stride": options.stride,
            "threshold": options.threshold, "n_per_class": options.samples,
            "precision": options.precision, "top_k": options.top_k}


# --------------------------------------------------------------------------- steps


def occlusion_step(out_dir: Path, *, samples_dir: Path, decoding_dirs: Sequence[Path],
                   settings: Mapping[str, Any], seed: int) -> None:
    """Occlusion maps of one CNN decoder's held-out samples, top voxels and UMAP."""
    from bids_affect.atlases import is_standard_space
    from bids_affect.bold import SampleSet
    from bids_affect.occlusion import (
        check_top_k,
        class_occlusion_maps,
        plot_umap_embeddings,
        select_samples,
        top_voxels,
        umap_summary,
    )

    (decoding_dir,) = decoding_dirs
    samples = SampleSet.load(samples_dir)
    full_mask = np.asarray(samples.mask_img.dataobj) > 0
    top_k = check_top_k(settings["top_k"], full_mask)  # before the costly occlusion
    metrics, predictions = read_decoding(decoding_dir)
    classes = metrics["classes"]
    networks = load_fold_networks(decoding_dir, len(classes))
    y_true = predictions["true"].astype(str).to_numpy()
    selection = select_samples(predictions["fold"].to_numpy() - 1, y_true,
                               predictions[[f"prob_{c}" for c in classes]].to_numpy(),
                               classes=classes, threshold=settings["threshold"],
                               n_per_class=settings["n_per_class"])
    volumes = samples.volumes[predictions["sample"].to_numpy()]
    result = class_occlusion_maps(networks, volumes, selection, mask=samples.crop_mask,
                                  window=settings["window"], stride=settings["stride"],
                                  precision=settings["precision"])
    space = data_space(samples)
    atlas = "harvard_oxford" if is_standard_space(space) else None
    class_maps = {}
    for name in classes:
        if result.maps.get(name) is None:
            continue
        image = samples.uncrop(result.maps[name])
        image.to_filename(out_dir / f"map_{name}.nii.gz")
        class_maps[name] = np.asarray(image.dataobj)
        deriv.write_tsv(out_dir / f"topk_{name}.tsv",
                        top_voxels(class_maps[name], full_mask, image.affine, k=top_k,
                                   atlas=atlas, space=space or "native"))
    chosen = [{"class": name, "sample": int(sample), "fold": int(fold) + 1,
               "run": predictions["run"].iloc[int(sample)],
               "volume": int(predictions["volume"].iloc[int(sample)]),
               "probability": float(probability)}
              for name in classes
              for sample, fold, probability in zip(selection.samples[name],
                                                   selection.folds[name],
                                                   selection.probabilities[name])]
    deriv.write_tsv(out_dir / "samples.tsv", pd.DataFrame(
        chosen, columns=["class", "sample", "fold", "run", "volume", "probability"]))
    embeddings, umap = umap_summary(class_maps, full_mask, samples.mask_img.affine, k=top_k,
                                    random_state=seed)
    if embeddings is not None:
        deriv.write_tsv(out_dir / "umap.tsv", embeddings)
        plot_umap_embeddings(embeddings, out_dir / "umap.svg")
    deriv.write_json(out_dir / "occlusion.json", {
        "model": metrics["model"], "classes": classes, "settings": dict(settings),
        "seed": seed, "space": space, "atlas": atlas,
        "n_samples": dict(result.n_samples), "empty": dict(result.empty),
        "umap": umap, "info": result.info})


def nib_load(path: Path):
    """A NIfTI image fully read into memory (safe to write elsewhere)."""
    import nibabel as nib

    image = nib.load(path)
    return nib.Nifti1Image(np.asarray(image.dataobj), image.affine, image.header)


def write_occlusion_step(out_dir: Path, *, decoding_dirs: Sequence[Path], samples_dir: Path,
                         output_dir: str, subject: str, task: str,
                         runs: Sequence[Mapping[str, Any]],
                         provenance: Mapping[str, Any]) -> None:
    """Write occlusion statmaps, top-k tables, the samples used and the UMAP embedding."""
    from bids_affect.atlases import atlas_info
    from bids_affect.models.classifier import without_timing

    (occlusion_dir,) = decoding_dirs
    info = read_json(Path(occlusion_dir) / "occlusion.json")
    desc = deriv.desc_label(info["model"])
    atlas = atlas_info(info["atlas"]) if info["atlas"] else None
    common = dict(parameters={"model": info["model"], **info["settings"],
                              "cleaning": cleaning_parameters(samples_dir)},
                  seed=info["seed"], sources=sources(provenance, [run["bold"] for run in runs]))
    names = dict(output_dir=output_dir, subject=subject, task=task, desc=desc)
    for name in info["classes"]:
        statmap = Path(occlusion_dir) / f"map_{name}.nii.gz"
        label = deriv.desc_label(name)
        if not statmap.exists():
            continue
        deriv.write_with_sidecar(
            deriv.output_path(kind="occlusion_map", space=info["space"], contrast=label,
                              **names), nib_load(statmap),
            deriv.sidecar(Description=f"Occlusion sensitivity for class {name}: mean over "
                                      "held-out samples of p(class) minus p(class) with a "
                                      "window occluded",
                          NumberOfSamples=info["n_samples"][name], Atlas=atlas,
                          Occlusion=[{**without_timing(run), "fold": run["fold"] + 1}
                                     for run in info["info"]["runs"]],
                          **common))
        deriv.write_with_sidecar(
            deriv.output_path(kind="occlusion_topk", contrast=label, **names),
            Path(occlusion_dir) / f"topk_{name}.tsv",
            deriv.sidecar(Description=f"Top voxels of the occlusion map of {name}",
                          Atlas=atlas, **common))
    deriv.write_with_sidecar(
        deriv.output_path(kind="occlusion_samples", **names),
        Path(occlusion_dir) / "samples.tsv",
        deriv.sidecar(Description="Held-out samples occluded, per class (each with the model "
                                  "of the fold that held it out)",
                      ClassesWithoutSamples=info["empty"], UMAP=info["umap"], **common))
    if (Path(occlusion_dir) / "umap.tsv").exists():
        about = dict(Description="UMAP embeddings of the top voxels: spatial (their "
                                 "coordinates) and functional (their occlusion values across "
                                 "classes)", UMAP=info["umap"], **common)
        deriv.write_with_sidecar(deriv.output_path(kind="occlusion_umap", **names),
                                 Path(occlusion_dir) / "umap.tsv", deriv.sidecar(**about))
        figure = deriv.output_path(output_dir, "figure", subject=subject, task=task,
                                   desc=desc, suffix="umap", extension=".svg")
        deriv.write_with_sidecar(figure, Path(occlusion_dir) / "umap.svg",
                                 deriv.sidecar(**about))


# --------------------------------------------------------------------------- wiring


def wire(builder: ParticipantWorkflow, options: OcclusionOptions) -> None:
    """An occlusion node (and its sink) per CNN decoder of ``--models``."""
    from bids_affect.decoding import is_cnn

    for model in builder.shared.models:
        if not is_cnn(model):
            continue
        desc = deriv.desc_label(model)
        occlude = builder.node(occlusion_step, f"occlusion_{desc}", {
            "settings": occlusion_settings(options), "seed": builder.seed("occlusion")})
        sink = builder.sink(write_occlusion_step, f"ds_occlusion_{desc}")
        builder.wf.connect([(builder.samples, occlude, [("out_dir", "samples_dir")]),
                            (decoder_node(builder, model), occlude,
                             [("out_dir", "decoding_dirs")]),
                            (occlude, sink, [("out_dir", "decoding_dirs")]),
                            (builder.samples, sink, [("out_dir", "samples_dir")])])
