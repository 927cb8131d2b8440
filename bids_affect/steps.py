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


# --------------------------------------------------------------------------- labels


@step("labels")
def labels_step(out_dir: Path, *, runs: Sequence[Mapping[str, Any]],
                label_spec: Mapping[str, Any]) -> None:
    """Label every volume of every run (``labels.json`` + one TSV per run)."""
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
    for run in records:
        path = deriv.output_path(output_dir, "labels", subject=subject, session=run.session,
                                 task=task, run=run.run)
        deriv.write_with_sidecar(path, Path(labels_dir) / f"{run.key}_labels.tsv", deriv.sidecar(
            Description="Emotion label of every volume", LabelSpec=spec, Rule=rule,
            RepetitionTime=run.tr, StartTime=run.start_time,
            sources=_sources(provenance, [run.events, run.bold])))
    counts = deriv.output_path(output_dir, "label_counts", subject=subject, task=task)
    deriv.write_with_sidecar(counts, Path(labels_dir) / "counts.tsv", deriv.sidecar(
        Description="Labelled volumes per class and run", LabelSpec=spec,
        sources=_sources(provenance, [r.events for r in records])))


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
    parameters = {"model": model, **metrics["settings"], "min_volumes": metrics["min_volumes"]}
    common = dict(parameters=parameters, seed=metrics["seed"], sources=sources)

    decoding_json = {k: v for k, v in metrics.items()
                     if k not in ("settings", "seed", "min_volumes", "confusion_matrix")}
    deriv.write_json(deriv.output_path(output_dir, "decoding", subject=subject, task=task,
                                       desc=desc),
                     {**decoding_json, **deriv.sidecar(**common)})
    prob_columns = [f"prob_{name}" for name in classes]
    for key, rows in predictions.groupby("run", sort=False):
        run = records[key]
        path = deriv.output_path(output_dir, "predictions", subject=subject,
                                 session=run.session, task=task, run=run.run, desc=desc)
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
    with deriv.atomic_path(model_path) as tmp:
        if cnn:
            torch.save({f"fold-{k}": torch.load(path, weights_only=False)
                        for k, path in enumerate(folds, start=1)}, tmp)
        else:
            import joblib

            joblib.dump([joblib.load(path) for path in folds], tmp)


# --------------------------------------------------------------------------- group


@step("group_withinsubject")
def group_withinsubject_step(out_dir: Path, *, output_dir: str,
                             participant_label: Sequence[str] | None,
                             provenance: Mapping[str, Any]) -> None:
    """Collect each subject's decoding scores into one table per task and model."""
    from bids_affect.exceptions import InputMissingError

    found = deriv.find_outputs(output_dir, "decoding")
    if participant_label:
        found = [item for item in found if item.entities["subject"] in participant_label]
    if not found:
        raise InputMissingError(
            "no participant-level decoding outputs (sub-*/func/*_decoding.json)",
            path=output_dir, fix="run the participant level (with --analyses decoding) first")
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
