"""The units of work of the BIDS-App, each a pure function writing into a folder.

A nipype node (:class:`bids_affect.interfaces.RunStep`) or a notebook calls
them. A step reads its inputs (run records, upstream step folders), calls the
library (:mod:`bids_affect.io.annotations`, :mod:`bids_affect.bold`,
:mod:`bids_affect.decoding`...), and writes its results into ``out_dir``. The
``write_*`` steps are the sinks: they turn step results into derivatives,
through :func:`bids_affect.io.derivatives.output_path` only.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bids_affect.io import derivatives as deriv
from bids_affect.io.layout import RunRecord

LOGGER = logging.getLogger("bids_affect.steps")

STEPS: dict[str, Callable[..., None]] = {}


def step(name: str):
    """Register a step function under ``name`` (a duplicate is an error)."""
    def decorator(function):
        if name in STEPS:
            raise ValueError(f"step {name!r} is already registered")
        STEPS[name] = function
        return function
    return decorator


def _records(runs: Sequence[Mapping[str, Any]]) -> list[RunRecord]:
    return [RunRecord.from_dict(run) for run in runs]


def _sources(provenance: Mapping[str, Any], paths: Sequence[Path | str | None]) -> list[str]:
    resolver = deriv.SourceResolver({name: Path(p) for name, p in
                                     provenance.get("links", {}).items()})
    return [resolver.uri(path) for path in paths if path]


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def _cleaning(samples_dir: Path | None) -> dict[str, Any]:
    """Cleaning parameters of a sample set (masking, filters, confounds), for sidecars."""
    from bids_affect.bold import MANIFEST_FILE

    if samples_dir is None:
        return {}
    return dict(_read_json(Path(samples_dir) / MANIFEST_FILE)["parameters"])


# --------------------------------------------------------------------------- labels


@step("labels")
def labels_step(out_dir: Path, *, runs: Sequence[Mapping[str, Any]],
                label_spec: Mapping[str, Any], check_data: bool = False) -> None:
    """Label every volume of every run (``labels.json`` + one TSV per run).

    With ``check_data`` every BOLD file is also read through (see
    :func:`bids_affect.bold.check_bold_data`): used when no analysis reads them.
    """
    from bids_affect.io.annotations import (
        LabelSpec,
        check_events,
        check_labelled,
        count_labels,
        labels_from_scores,
        labels_table,
        read_events,
        score_volumes,
    )

    spec = LabelSpec(**label_spec)
    records = _records(runs)
    if check_data:
        from bids_affect.bold import check_bold_data

        for run in records:
            check_bold_data(run.bold)
    labels_by_run, scores_by_run = {}, {}
    for run in records:
        events = read_events(run.events)
        check_events(spec, events, run.events)
        scores = score_volumes(events, spec, tr=run.tr, n_volumes=run.n_volumes,
                               start_time=run.start_time, path=run.events)
        labels = labels_from_scores(scores, spec)
        deriv.write_tsv(out_dir / f"{run.key}_labels.tsv",
                        labels_table(labels, tr=run.tr, start_time=run.start_time))
        labels_by_run[run.key], scores_by_run[run.key] = labels, scores
    check_labelled(labels_by_run, spec, scores_by_run, where=f"sub-{records[0].subject}")
    found = sorted({label for labels in labels_by_run.values() for label in labels
                    if label is not None})
    deriv.write_tsv(out_dir / "counts.tsv",
                    count_labels(labels_by_run, list(spec.classes) or found))
    deriv.write_json(out_dir / "labels.json", {
        "spec": spec.to_dict(),
        "labels": {key: [None if label is None else str(label) for label in labels]
                   for key, labels in labels_by_run.items()}})


def read_labels(labels_dir: Path) -> dict[str, np.ndarray]:
    """Labels per run written by :func:`labels_step`."""
    content = _read_json(Path(labels_dir) / "labels.json")
    return {key: np.array(values, dtype=object) for key, values in content["labels"].items()}


@step("write_labels")
def write_labels_step(out_dir: Path, *, labels_dir: Path, output_dir: str, subject: str,
                      task: str, runs: Sequence[Mapping[str, Any]],
                      provenance: Mapping[str, Any]) -> None:
    """Write ``desc-labels_events.tsv`` per run and the per-subject counts table."""
    spec = _read_json(Path(labels_dir) / "labels.json")["spec"]
    rule = ("volume i is acquired at t_i = i * TR + StartTime and labelled with the "
            "annotation active at t_i - hrf_lag (onset <= t < onset + duration); unlabelled "
            "volumes (no class reaching the threshold, ties, read time before 0) are n/a")
    records = _records(runs)
    common = dict(parameters={"label_spec": spec["name"], "hrf_lag": spec["hrf_lag"],
                              "min_volumes": spec["min_volumes"]},
                  seed=provenance.get("master_seed"), LabelSpec=spec)
    for run in records:
        path = deriv.output_path(output_dir, "labels", subject=subject, task=task,
                                 **_run_entities(run))
        deriv.write_with_sidecar(path, Path(labels_dir) / f"{run.key}_labels.tsv", deriv.sidecar(
            Description="Emotion label of every volume", Rule=rule,
            RepetitionTime=run.tr, StartTime=run.start_time,
            sources=_sources(provenance, [run.events, run.bold]), **common))
    counts = deriv.output_path(output_dir, "label_counts", subject=subject, task=task)
    deriv.write_with_sidecar(counts, Path(labels_dir) / "counts.tsv", deriv.sidecar(
        Description="Labelled volumes per class and run",
        sources=_sources(provenance, [r.events for r in records]), **common))


def _run_entities(run: RunRecord) -> dict[str, Any]:
    """Entities that tell a run's outputs apart (session, acquisition, run)."""
    return {"session": run.session, "acquisition": run.entities.get("acquisition"),
            "run": run.run}


# --------------------------------------------------------------------------- samples


@step("samples")
def samples_step(out_dir: Path, *, labels_dir: Path, runs: Sequence[Mapping[str, Any]],
                 cleaning: Mapping[str, Any]) -> None:
    """Clean every run into memory-mapped samples (see :func:`bids_affect.bold.build_samples`)."""
    from bids_affect.bold import build_samples

    build_samples(_records(runs), read_labels(labels_dir), out_dir, **dict(cleaning))


# --------------------------------------------------------------------------- decoding


def _decoding_inputs(samples, min_volumes: int, model: str):
    from bids_affect.decoding import acquisition_clock, is_cnn

    index = samples.labelled(min_volumes=min_volumes)
    table = samples.table.iloc[index].reset_index(drop=True)
    data = samples.volumes if is_cnn(model) else samples.X
    return index, table, np.asarray(data[index]), acquisition_clock(table.run_index, table.time)


@step("decode")
def decode_step(out_dir: Path, *, samples_dir: Path, model: str, settings: Mapping[str, Any],
                seed: int, min_volumes: int, n_jobs: int = 1) -> None:
    """Cross-validated decoding of one model; results, fold models and null in ``out_dir``."""
    import joblib

    from bids_affect.bold import SampleSet
    from bids_affect.decoding import decode, is_cnn

    samples = SampleSet.load(samples_dir)
    index, table, data, clock = _decoding_inputs(samples, min_volumes, model)
    cnn = is_cnn(model)
    cnn_params = {"epochs": settings["epochs"], "batch_size": settings["batch_size"],
                  "device": settings["device"], "num_threads": settings.get("num_threads")}
    result = decode(data, table.label.tolist(), table.run.to_numpy(), model=model, times=clock,
                    cv=settings["cv"], n_splits=settings["n_splits"], gap=settings["gap"],
                    n_permutations=settings["n_permutations_cnn" if cnn else "n_permutations"],
                    random_state=seed, n_jobs=n_jobs, cnn_params=cnn_params if cnn else None,
                    checkpoint_dir=out_dir / "checkpoints" if cnn else None)
    fit = result.predictions
    predictions = pd.DataFrame({
        "sample": index, "run": table.run, "volume": table.volume, "onset": table.time,
        "fold": fit.fold + 1, "true": [result.classes[k] for k in result.y],
        "predicted": [result.classes[k] for k in fit.predicted]})
    for k, name in enumerate(result.classes):
        predictions[f"prob_{name}"] = fit.proba[:, k]
    deriv.write_tsv(out_dir / "predictions.tsv", predictions)
    deriv.write_tsv(out_dir / "null.tsv", pd.DataFrame({
        "permutation": np.arange(1, len(result.null) + 1), "balanced_accuracy": result.null}))
    model_dir = out_dir / "models"
    model_dir.mkdir(exist_ok=True)
    for fold, estimator in enumerate(fit.estimators, start=1):
        if cnn:
            estimator.save(model_dir / f"fold-{fold}.pt")
        else:
            with deriv.atomic_path(model_dir / f"fold-{fold}.joblib") as tmp:
                joblib.dump(estimator, tmp)
    deriv.write_json(out_dir / "decoding.json", {
        **result.metrics, "seed": seed, "settings": dict(settings),
        "min_volumes": min_volumes})


def read_decoding(decoding_dir: Path) -> tuple[dict[str, Any], pd.DataFrame]:
    """Metrics and test-fold predictions written by :func:`decode_step`."""
    metrics = _read_json(Path(decoding_dir) / "decoding.json")
    predictions = pd.read_csv(Path(decoding_dir) / "predictions.tsv", sep="\t",
                              keep_default_na=False, na_values=["n/a"])
    return metrics, predictions


def fold_model_paths(decoding_dir: Path) -> list[Path]:
    """Fold models of a decoding step, in fold order."""
    files = list((Path(decoding_dir) / "models").glob("fold-*"))
    return sorted(files, key=lambda path: int(path.stem.split("-")[1]))


@step("write_decoding")
def write_decoding_step(out_dir: Path, *, decoding_dirs: Sequence[Path], samples_dir: Path,
                        output_dir: str, subject: str, task: str,
                        runs: Sequence[Mapping[str, Any]],
                        provenance: Mapping[str, Any]) -> None:
    """Write decoding.json, per-run predictions, confusion, null and the fold models."""
    import torch

    from bids_affect.decoding import is_cnn

    (decoding_dir,) = decoding_dirs
    metrics, predictions = read_decoding(decoding_dir)
    model, classes = metrics["model"], metrics["classes"]
    desc = deriv.desc_label(model)
    records = {run.key: run for run in _records(runs)}
    sources = _sources(provenance, [r.bold for r in records.values()])
    parameters = {"model": model, **metrics["settings"], "min_volumes": metrics["min_volumes"],
                  "cleaning": _cleaning(samples_dir)}
    common = dict(parameters=parameters, seed=metrics["seed"], sources=sources)

    decoding_json = {k: v for k, v in metrics.items()
                     if k not in ("settings", "seed", "min_volumes", "confusion_matrix")}
    deriv.write_json(deriv.output_path(output_dir, "decoding", subject=subject, task=task,
                                       desc=desc),
                     {**decoding_json, **deriv.sidecar(**common)})
    prob_columns = [f"prob_{name}" for name in classes]
    for key, rows in predictions.groupby("run", sort=False):
        run = records[key]
        path = deriv.output_path(output_dir, "predictions", subject=subject, task=task,
                                 desc=desc, **_run_entities(run))
        table = rows[["onset", "volume", "true", "predicted", *prob_columns]]
        deriv.write_with_sidecar(path, table.reset_index(drop=True), deriv.sidecar(
            Description="Test-fold predictions (each volume predicted by the fold model "
                        "that did not see its run)",
            Probabilities=("softmax of decision values" if model.split("-")[0] in
                           ("ridge", "svm") else "predicted class probabilities"),
            **{**common, "sources": _sources(provenance, [run.bold])}))
    confusion = pd.DataFrame(metrics["confusion_matrix"], columns=classes)
    confusion.insert(0, "true", classes)
    deriv.write_with_sidecar(
        deriv.output_path(output_dir, "confusion", subject=subject, task=task, desc=desc),
        confusion, deriv.sidecar(Description="Confusion matrix of test-fold predictions: rows "
                                             "true class, columns predicted class", **common))
    deriv.write_with_sidecar(
        deriv.output_path(output_dir, "null_distribution", subject=subject, task=task,
                          desc=desc),
        pd.read_csv(Path(decoding_dir) / "null.tsv", sep="\t"),
        deriv.sidecar(Description="Permutation null of the balanced accuracy",
                      PermutationScheme=metrics.get("permutation_scheme"), **common))

    folds = fold_model_paths(decoding_dir)
    cnn = is_cnn(model)
    model_path = deriv.output_path(output_dir, "model", subject=subject, task=task, desc=desc,
                                   extension=".pt" if cnn else ".joblib")
    deriv.write_json(deriv.sidecar_path(model_path), deriv.sidecar(
        Description=f"The {len(folds)} fold models of {model}, in fold order",
        Folds=metrics["folds"], Classes=classes, **common))
    if cnn:
        deriv.write_torch(model_path, {
            f"fold-{k}": _publishable_network(torch.load(path, weights_only=False))
            for k, path in enumerate(folds, start=1)})
    else:
        import joblib

        with deriv.atomic_path(model_path) as tmp:
            joblib.dump([joblib.load(path) for path in folds], tmp)


# --------------------------------------------------------------------------- occlusion


def load_fold_networks(decoding_dir: Path, n_classes: int) -> list:
    """Each fold's trained CNN (eval mode), with outputs for all ``n_classes`` classes."""
    from bids_affect.models.classifier import CNN3DClassifier
    from bids_affect.models.cnn3d import with_all_classes

    networks = []
    for path in fold_model_paths(decoding_dir):
        estimator = CNN3DClassifier.load(path)
        networks.append(with_all_classes(estimator.network_, estimator.classes_,
                                         n_classes).eval())
    return networks


def _check_top_k(top_k: int, mask: np.ndarray) -> int:
    """``--top-k`` checked against the voxels of the brain mask (a larger k is exit 64)."""
    from bids_affect.exceptions import UsageError

    n_voxels = int(np.count_nonzero(mask))
    if top_k > n_voxels:
        raise UsageError(f"--top-k {top_k} asks for more top voxels than the brain mask "
                         f"holds ({n_voxels} voxels)", fix=f"use --top-k {n_voxels} or less")
    return int(top_k)


@step("occlusion")
def occlusion_step(out_dir: Path, *, samples_dir: Path, decoding_dirs: Sequence[Path],
                   settings: Mapping[str, Any], seed: int) -> None:
    """Occlusion maps of one CNN decoder's held-out samples, top voxels and UMAP."""
    from bids_affect.atlases import is_standard_space
    from bids_affect.bold import SampleSet
    from bids_affect.occlusion import class_occlusion_maps, select_samples, top_voxels

    (decoding_dir,) = decoding_dirs
    samples = SampleSet.load(samples_dir)
    full_mask = np.asarray(samples.mask_img.dataobj) > 0
    top_k = _check_top_k(settings["top_k"], full_mask)  # before the costly occlusion
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
    space = samples.manifest["runs"][0].get("space")  # None: raw data in native space
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
    umap = _umap_step(out_dir, class_maps, full_mask, samples.mask_img.affine, top_k, seed)
    deriv.write_json(out_dir / "occlusion.json", {
        "model": metrics["model"], "classes": classes, "settings": dict(settings),
        "seed": seed, "space": space, "atlas": atlas,
        "n_samples": dict(result.n_samples), "empty": dict(result.empty),
        "umap": umap, "info": result.info})


def _umap_step(out_dir: Path, class_maps: Mapping[str, np.ndarray], mask: np.ndarray,
               affine: np.ndarray, top_k: int, seed: int) -> dict[str, Any]:
    """UMAP embeddings of the top voxels (table and figure); their settings or why skipped."""
    from bids_affect.occlusion import plot_umap_embeddings, umap_embeddings, umap_settings

    if len(class_maps) < 2:
        reason = (f"UMAP skipped: it embeds the top voxels of 2 or more classes, and "
                  f"{len(class_maps)} class(es) have an occlusion map "
                  f"({', '.join(class_maps) or 'none'})")
        LOGGER.warning("%s.", reason)
        return {"skipped": reason}
    embeddings = umap_embeddings(class_maps, mask, affine, k=top_k, random_state=seed)
    deriv.write_tsv(out_dir / "umap.tsv", embeddings)
    plot_umap_embeddings(embeddings, out_dir / "umap.svg")
    return {**umap_settings(len(embeddings)),
            "top_k_per_class": top_k, "n_voxels": len(embeddings), "random_state": seed}


@step("write_occlusion")
def write_occlusion_step(out_dir: Path, *, decoding_dirs: Sequence[Path], samples_dir: Path,
                         output_dir: str, subject: str, task: str,
                         runs: Sequence[Mapping[str, Any]],
                         provenance: Mapping[str, Any]) -> None:
    """Write occlusion statmaps, top-k tables, the samples used and the UMAP embedding."""
    from bids_affect.atlases import atlas_info

    (occlusion_dir,) = decoding_dirs
    info = _read_json(Path(occlusion_dir) / "occlusion.json")
    desc = deriv.desc_label(info["model"])
    sources = _sources(provenance, [run["bold"] for run in runs])
    atlas = atlas_info(info["atlas"]) if info["atlas"] else None
    common = dict(parameters={"model": info["model"], **info["settings"],
                              "cleaning": _cleaning(samples_dir)},
                  seed=info["seed"], sources=sources)
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
                          Occlusion=[_without_timing(run) for run in info["info"]["runs"]],
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


def _without_timing(record: Mapping[str, Any]) -> dict[str, Any]:
    """A record less its wall-clock seconds (sidecars must not vary between equal runs)."""
    return {key: value for key, value in record.items() if key != "seconds"}


def _publishable_network(payload: Mapping[str, Any]) -> dict[str, Any]:
    """A saved CNN less what differs between equal runs: work-dir paths and timings."""
    return {**payload, "params": {**payload["params"], "checkpoint_path": None},
            "history": [_without_timing(epoch) for epoch in payload["history"]]}


def nib_load(path: Path):
    """A NIfTI image fully read into memory (safe to write elsewhere)."""
    import nibabel as nib

    image = nib.load(path)
    return nib.Nifti1Image(np.asarray(image.dataobj), image.affine, image.header)


# --------------------------------------------------------------------------- rsa


#: Distances a model RDM can use: its folds' held-out samples come from one run (or
#: block), so the distances cross-validated across runs fall back to correlation.
_MODEL_RDM_DISTANCES = ("correlation", "euclidean")

#: Samples a network embeds per forward pass when a model RDM is built.
_EMBED_BATCH = 32


@step("rsa")
def rsa_step(out_dir: Path, *, samples_dir: Path, settings: Mapping[str, Any], seed: int,
             min_volumes: int, decoding_dirs: Sequence[Path] = ()) -> None:
    """Brain (whole mask, ROIs), CNN and reference RDMs of one subject and their comparisons.

    ``settings``: ``distance``, ``methods``, ``n_permutations``, ``references``
    (name -> TSV path) and ``roi_atlas`` (an ``--roi-atlas`` value, or None).
    Every RDM is written as ``rdm_NAME.tsv``; ``rsa.json`` keeps, per RDM, what
    its sidecar says (the distance actually used, the folds behind each entry
    of a model RDM, the ROI and its voxels...).
    """
    from bids_affect.bold import SampleSet
    from bids_affect.rsa import brain_rdm_name, compare_rdms_table, compute_rdm, rdm_to_table

    samples = SampleSet.load(samples_dir)
    space = samples.manifest["runs"][0].get("space")  # None: raw data in native space
    roi_columns = _roi_columns(samples, settings.get("roi_atlas"), space)  # fail fast
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
    for roi, columns in roi_columns.items():
        name = brain_rdm_name(roi)
        rdms[name] = compute_rdm(X[:, columns], labels, classes, distance, runs)
        details[name] = {"Description": f"RDM of the brain's class patterns in ROI {roi} "
                                        "(its voxels in the mask)",
                         "Distance": distance, "ROI": roi, "NumberOfVoxels": len(columns)}
    for decoding_dir in decoding_dirs:
        name, rdm, about = _model_rdm(samples, decoding_dir, classes, distance)
        rdms[name], details[name] = rdm, about
    references = _reference_rdms(settings.get("references", {}), classes)
    for name, (rdm, about) in references.items():
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


def _roi_columns(samples, roi_atlas: str | None, space: str | None) -> dict[str, np.ndarray]:
    """Columns of the sample matrix (mask voxels) inside each ROI of ``--roi-atlas``.

    An atlas that does not fit the data's space, or an ROI without a voxel in
    the mask, is an error here, before any RDM is computed.
    """
    if not roi_atlas:
        return {}
    from bids_affect.atlases import parse_roi_atlas, roi_atlas_masks
    from bids_affect.exceptions import InputDataError

    atlas = parse_roi_atlas(roi_atlas)
    inside = np.asarray(samples.mask_img.dataobj) > 0
    masks = roi_atlas_masks(atlas, samples.mask_img.affine, inside.shape, space=space)
    columns = {}
    for roi, mask in masks.items():
        columns[roi] = np.flatnonzero(mask[inside])
        if not columns[roi].size:
            raise InputDataError(
                f"ROI {roi!r} of --roi-atlas {roi_atlas} holds no voxel of the brain mask "
                f"({int(mask.sum())} voxels on the data grid, none inside the mask)",
                fix="leave that ROI out of --roi-atlas, or check the field of view and the "
                    "brain mask of the data")
    return columns


def _model_rdm(samples, decoding_dir: Path, classes: Sequence[str], distance: str
               ) -> tuple[str, pd.DataFrame, dict[str, Any]]:
    """A CNN decoder's model RDM and its sidecar details.

    Each fold's network embeds the samples that fold held out (penultimate
    features); one RDM per fold in that network's own feature space, averaged
    over folds (:func:`bids_affect.rsa.fold_averaged_rdm`).
    """
    from bids_affect.rsa import MODEL_RDM_LAYER, fold_averaged_rdm, model_rdm_name

    metrics, predictions = read_decoding(decoding_dir)
    networks = load_fold_networks(decoding_dir, len(metrics["classes"]))
    features, labels = [], []
    for fold, rows in predictions.groupby("fold", sort=True):
        features.append(_penultimate_features(networks[int(fold) - 1], samples.volumes,
                                              rows["sample"].to_numpy()))
        labels.append(rows["true"].astype(str).to_numpy())
    decoded = set(predictions["true"].astype(str))
    used = distance if distance in _MODEL_RDM_DISTANCES else "correlation"
    rdm, n_folds = fold_averaged_rdm(features, labels, [c for c in classes if c in decoded],
                                     distance=used)
    details = {
        "Description": f"RDM of the {MODEL_RDM_LAYER} features of {metrics['model']}: per "
                       "cross-validation fold, the fold's network on the samples it held "
                       "out (one feature space per network), averaged over folds",
        "Distance": used, "Model": metrics["model"],
        "FoldsPerPair": {"classes": list(n_folds.index),
                         "counts": n_folds.to_numpy().tolist()}}
    if used != distance:
        details["DistanceNote"] = (f"{distance} is cross-validated across runs, and a fold's "
                                   "held-out samples come from one run or block: this RDM "
                                   f"uses {used}")
    return model_rdm_name(metrics["model"]), rdm, details


def _penultimate_features(network, volumes: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """A network's penultimate features of the volumes ``rows``, a batch at a time."""
    import torch

    batches = []
    with torch.no_grad():
        for start in range(0, len(rows), _EMBED_BATCH):
            batch = torch.from_numpy(np.asarray(volumes[rows[start:start + _EMBED_BATCH]]))
            batches.append(network.embed(batch[:, None]).numpy())
    return np.concatenate(batches)


def _reference_rdms(references: Mapping[str, str], classes: Sequence[str]
                    ) -> dict[str, tuple[pd.DataFrame, dict[str, Any]]]:
    """The ``--rsa-reference`` RDMs by output name, with their sidecar details.

    A reference with other classes than the data's is compared on the shared
    ones (a warning says which); fewer than 3 shared classes is an error.
    """
    from bids_affect.exceptions import InputDataError
    from bids_affect.rsa import read_rdm

    found = {}
    for name, path in references.items():
        rdm = read_rdm(path)
        shared = [c for c in rdm.index if c in classes]
        if len(shared) < 3:
            raise InputDataError(
                f"reference RDM {name!r} shares {len(shared)} classes with the data "
                f"({', '.join(shared) or 'none'}); comparing RDMs needs 3 or more",
                path=path, fix=f"give an RDM of the data's classes ({', '.join(classes)})")
        if len(shared) < len(rdm.index) or len(shared) < len(classes):
            LOGGER.warning("Reference RDM %r (%s) holds classes %s and the data %s; "
                           "comparisons with it use the %d shared classes: %s.", name, path,
                           ", ".join(rdm.index), ", ".join(classes), len(shared),
                           ", ".join(shared))
        found[deriv.desc_label(name)] = (rdm, {
            "Description": f"Reference RDM {name!r}, as given", "Distance": "as given",
            "Reference": Path(path).name, "SharedClasses": shared})
    return found


@step("write_rsa")
def write_rsa_step(out_dir: Path, *, decoding_dirs: Sequence[Path], output_dir: str,
                   subject: str, task: str, runs: Sequence[Mapping[str, Any]],
                   provenance: Mapping[str, Any], samples_dir: Path | None = None) -> None:
    """Write every RDM and the table of comparisons."""
    from bids_affect.atlases import roi_atlas_info

    (rsa_dir,) = decoding_dirs
    info = _read_json(Path(rsa_dir) / "rsa.json")
    settings = info["settings"]
    atlas = roi_atlas_info(settings["roi_atlas"]) if settings.get("roi_atlas") else None
    common = dict(parameters={**settings, "cleaning": _cleaning(samples_dir)},
                  seed=info["seed"], sources=_sources(provenance, [r["bold"] for r in runs]))
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


# --------------------------------------------------------------------------- group


def find_decoding_outputs(output_dir: Path | str,
                          participant_label: Sequence[str] | None = None) -> list:
    """Participant-level ``decoding.json`` files of the selected subjects (66 when none)."""
    from bids_affect.exceptions import InputMissingError

    found = deriv.find_outputs(output_dir, "decoding")
    if participant_label:
        found = [item for item in found if item.entities["subject"] in participant_label]
    if not found:
        raise InputMissingError(
            "no participant-level decoding outputs (sub-*/func/*_decoding.json)",
            path=output_dir, fix="run the participant level (with --analyses decoding) first")
    return found


@step("group_withinsubject")
def group_withinsubject_step(out_dir: Path, *, output_dir: str,
                             participant_label: Sequence[str] | None,
                             provenance: Mapping[str, Any]) -> None:
    """Collect each subject's decoding scores into one table per task and model."""
    found = find_decoding_outputs(output_dir, participant_label)
    rows: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for item in found:
        metrics = _read_json(item.path)
        band = metrics.get("null_band") or [None, None]
        rows.setdefault((item.entities["task"], item.entities["desc"]), []).append({
            "participant_id": f"sub-{item.entities['subject']}",
            "model": metrics["model"],
            "n_samples": sum(metrics["n_samples"].values()),
            "n_classes": len(metrics["classes"]),
            "accuracy": metrics["accuracy"],
            "balanced_accuracy": metrics["balanced_accuracy"],
            "chance_balanced_accuracy": metrics["chance_balanced_accuracy"],
            "null_low": band[0], "null_high": band[1],
            "p_permutation": metrics["p_permutation"],
            "n_permutations": metrics["n_permutations"],
            "macro_auc": metrics["macro_auc"],
            "random_split_balanced_accuracy": metrics.get("random_split_balanced_accuracy"),
        })
    for (task, desc), table in sorted(rows.items()):
        table = pd.DataFrame(sorted(table, key=lambda row: row["participant_id"]))
        deriv.write_with_sidecar(
            deriv.output_path(output_dir, "group_withinsubject", task=task, desc=desc), table,
            deriv.sidecar(Description="Within-subject decoding scores of every subject, with "
                                      "chance level, null band and permutation p",
                          sources=[deriv.SourceResolver({"": Path(output_dir)}).uri(i.path)
                                   for i in found if i.entities["task"] == task
                                   and i.entities["desc"] == desc]))
