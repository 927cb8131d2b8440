"""The decoding analysis: options, the decode and write steps, and their wiring.

Each decoder of ``--models`` gets a ``decode_MODEL`` node (cross-validation,
null, audit, fold models in its folder) and a ``ds_decode_MODEL`` sink
(``decoding.json``, predictions per run, confusion matrix, null, the fold
models). Occlusion and RSA read trained CNN decoders, so they ask for the same
nodes (:func:`decoder_node`); a decoder runs once whoever asks.
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
from bids_affect.steps._outputs import (
    cleaning_parameters,
    read_json,
    records,
    run_entities,
    sources,
)

if TYPE_CHECKING:
    from nipype.pipeline import engine as pe

    from bids_affect.workflows.participant import ParticipantWorkflow


def _cv_schemes() -> tuple[str, ...]:
    from bids_affect.decoding import CV_SCHEMES

    return CV_SCHEMES


@section("Decoding", "decoding")
class DecodingOptions:
    """Settings of the decoders (``[decoding]``; the decoders are ``--models``)."""

    cv: str = option("auto", choices=_cv_schemes, parameters=("cv",),
                     help="cross-validation: leave-one-run-out (auto with 2+ runs) or blocked "
                          "k-fold with a gap (auto with one run)")
    cv_folds: int = option(5, type=converters.int_at_least(2), metavar="K",
                           parameters=("n_splits",), help="folds of blocked k-fold")
    cv_gap: float = option(30.0, type=converters.non_negative_float, metavar="SECONDS",
                           parameters=("gap",),
                           help="gap between test and training blocks in blocked k-fold")
    n_permutations: int = option(1000, type=converters.non_negative_int, metavar="N",
                                 help="permutations of the null for linear decoders")
    n_permutations_cnn: int = option(
        20, type=converters.non_negative_int, metavar="N",
        help="permutations of the null for CNN decoders (each retrains)")
    epochs: int = option(30, type=converters.positive_int, metavar="N",
                         help="CNN training epochs")
    batch_size: int = option(16, type=converters.positive_int, metavar="N",
                             help="CNN mini-batch size")


def decoder_settings(options: DecodingOptions, device: str, num_threads: int | None
                     ) -> dict[str, Any]:
    """The settings a decode step receives (and its sidecars record)."""
    return {"cv": options.cv, "n_splits": options.cv_folds, "gap": options.cv_gap,
            "n_permutations": options.n_permutations,
            "n_permutations_cnn": options.n_permutations_cnn, "epochs": options.epochs,
            "batch_size": options.batch_size, "device": device, "num_threads": num_threads}


def applied_settings(settings: Mapping[str, Any], scheme: str, cnn: bool) -> dict[str, Any]:
    """The settings that shaped one decoder's results (what its sidecars record).

    Blocked k-fold's folds and gap only when it ran; the CNN's training
    settings only for a CNN; the permutation count the decoder used.

    Examples
    --------
    >>> settings = decoder_settings(DecodingOptions(), "auto", None)
    >>> applied_settings(settings, "loro", cnn=False)
    {'cv': 'auto', 'cv_applied': 'loro', 'n_permutations': 1000}
    """
    applied = {"cv": settings["cv"], "cv_applied": scheme}
    if scheme == "blocked":
        applied.update(n_splits=settings["n_splits"], gap=settings["gap"])
    applied["n_permutations"] = settings["n_permutations_cnn" if cnn else "n_permutations"]
    if cnn:
        applied.update({key: settings[key] for key in ("epochs", "batch_size", "device",
                                                       "num_threads")})
    return applied


# --------------------------------------------------------------------------- steps


def _decoding_inputs(samples, min_volumes: int, cnn: bool):
    from bids_affect.decoding import acquisition_clock

    index = samples.labelled(min_volumes=min_volumes)
    table = samples.table.iloc[index].reset_index(drop=True)
    data = samples.volumes if cnn else samples.X
    return index, table, np.asarray(data[index]), acquisition_clock(table.run_index, table.time)


def decode_step(out_dir: Path, *, samples_dir: Path, model: str, settings: Mapping[str, Any],
                seed: int, min_volumes: int, n_jobs: int = 1) -> None:
    """Cross-validated decoding of one model; results, fold models and null in ``out_dir``."""
    import joblib

    from bids_affect.bold import SampleSet
    from bids_affect.decoding import decode, parse_decoder

    spec = parse_decoder(model)
    samples = SampleSet.load(samples_dir)
    index, table, data, clock = _decoding_inputs(samples, min_volumes, spec.is_cnn)
    cnn_params = {"epochs": settings["epochs"], "batch_size": settings["batch_size"],
                  "device": settings["device"], "num_threads": settings.get("num_threads")}
    result = decode(data, table.label.tolist(), table.run.to_numpy(), model=model, times=clock,
                    cv=settings["cv"], n_splits=settings["n_splits"], gap=settings["gap"],
                    n_permutations=settings["n_permutations_cnn" if spec.is_cnn
                                            else "n_permutations"],
                    random_state=seed, n_jobs=n_jobs,
                    cnn_params=cnn_params if spec.is_cnn else None,
                    checkpoint_dir=out_dir / "checkpoints" if spec.is_cnn else None,
                    null_device=settings["device"])
    fit = result.predictions
    predictions = pd.DataFrame({
        "sample": index, "run": table.run, "volume": table.volume, "onset": table.time,
        "fold": fit.fold + 1, "true": [result.classes[k] for k in result.y],
        "predicted": [result.classes[k] for k in fit.predicted]})
    for k, name in enumerate(result.classes):
        predictions[f"prob_{name}"] = fit.proba[:, k]
    for k, name in enumerate(result.classes):
        predictions[f"decision_{name}"] = fit.decision[:, k]
    deriv.write_tsv(out_dir / "predictions.tsv", predictions)
    deriv.write_tsv(out_dir / "null.tsv", pd.DataFrame({
        "permutation": np.arange(1, len(result.null) + 1), "balanced_accuracy": result.null}))
    model_dir = out_dir / "models"
    model_dir.mkdir(exist_ok=True)
    for fold, estimator in enumerate(fit.estimators, start=1):
        if spec.is_cnn:
            estimator.save(model_dir / f"fold-{fold}.pt")
        else:
            with deriv.atomic_path(model_dir / f"fold-{fold}.joblib") as tmp:
                joblib.dump(estimator, tmp)
    deriv.write_json(out_dir / "decoding.json", {
        **result.metrics, "seed": seed, "settings": dict(settings),
        "min_volumes": min_volumes})


def read_decoding(decoding_dir: Path) -> tuple[dict[str, Any], pd.DataFrame]:
    """Metrics and test-fold predictions written by :func:`decode_step`."""
    metrics = read_json(Path(decoding_dir) / "decoding.json")
    predictions = pd.read_csv(Path(decoding_dir) / "predictions.tsv", sep="\t",
                              keep_default_na=False, na_values=["n/a"])
    return metrics, predictions


def fold_model_paths(decoding_dir: Path) -> list[Path]:
    """Fold models of a decoding step, in fold order."""
    files = list((Path(decoding_dir) / "models").glob("fold-*"))
    return sorted(files, key=lambda path: int(path.stem.split("-")[1]))


def write_decoding_step(out_dir: Path, *, decoding_dirs: Sequence[Path], samples_dir: Path,
                        output_dir: str, subject: str, task: str,
                        runs: Sequence[Mapping[str, Any]],
                        provenance: Mapping[str, Any]) -> None:
    """Write decoding.json, per-run predictions, confusion, null and the fold models."""
    from bids_affect.decoding import parse_decoder
    from bids_affect.decoding.estimators import CLASS_PROBABILITIES
    from bids_affect.models.classifier import load_network_payload, publishable_network

    (decoding_dir,) = decoding_dirs
    metrics, predictions = read_decoding(decoding_dir)
    model, classes = metrics["model"], metrics["classes"]
    spec = parse_decoder(model)
    desc = deriv.desc_label(model)
    run_records = {run.key: run for run in records(runs)}
    common = dict(parameters={"model": model,
                              **applied_settings(metrics["settings"], metrics["cv"],
                                                 spec.is_cnn),
                              "min_volumes": metrics["min_volumes"],
                              "cleaning": cleaning_parameters(samples_dir)},
                  seed=metrics["seed"],
                  sources=sources(provenance, [r.bold for r in run_records.values()]))

    decoding_json = {k: v for k, v in metrics.items()
                     if k not in ("settings", "seed", "min_volumes", "confusion_matrix")}
    deriv.write_json(deriv.output_path(output_dir, "decoding", subject=subject, task=task,
                                       desc=desc),
                     {**decoding_json, **deriv.sidecar(**common)})
    # Every decoder has the contracted prob_CLASS columns; those without class
    # probabilities (ridge, SVM) fill them with the softmax of their decision values
    # (the sidecar says so) and add the decision values themselves.
    prefixes = (["prob_"] if spec.probabilities == CLASS_PROBABILITIES
                else ["prob_", "decision_"])
    score_columns = [f"{prefix}{name}" for prefix in prefixes for name in classes]
    for key, rows in predictions.groupby("run", sort=False):
        run = run_records[key]
        path = deriv.output_path(output_dir, "predictions", subject=subject, task=task,
                                 desc=desc, **run_entities(run))
        table = rows[["onset", "volume", "true", "predicted", *score_columns]]
        deriv.write_with_sidecar(path, table.reset_index(drop=True), deriv.sidecar(
            Description="Test-fold predictions (each volume predicted by the fold model "
                        "that did not see its run)",
            Scores=" ".join(_SCORE_COLUMNS[spec.probabilities][prefix] for prefix in prefixes),
            **{**common, "sources": sources(provenance, [run.bold])}))
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
    model_path = deriv.output_path(output_dir, "model", subject=subject, task=task, desc=desc,
                                   extension=".pt" if spec.is_cnn else ".joblib")
    deriv.write_json(deriv.sidecar_path(model_path), deriv.sidecar(
        Description=f"The {len(folds)} fold models of {model}, in fold order",
        Folds=metrics["folds"], Classes=classes, **common))
    if spec.is_cnn:
        deriv.write_torch(model_path, {
            f"fold-{k}": publishable_network(load_network_payload(path))
            for k, path in enumerate(folds, start=1)})
    else:
        import joblib

        with deriv.atomic_path(model_path) as tmp:
            joblib.dump([joblib.load(path) for path in folds], tmp)


#: What the score columns of a predictions table hold, by kind of decoder (the
#: ``probabilities`` of :class:`bids_affect.decoding.DecoderSpec`) and prefix.
_SCORE_COLUMNS = {
    "predicted class probabilities": {
        "prob_": "prob_CLASS: the fold model's predicted probability of each class."},
    "softmax of decision values": {
        "prob_": "prob_CLASS: the softmax over classes of the decision values; it sums to 1 "
                 "and ranks samples as they do, but this decoder has no class "
                 "probabilities: it is not calibrated (0.9 does not mean 90% right).",
        "decision_": "decision_CLASS: the fold model's decision value of each class (n/a "
                     "for a class the fold's training samples lacked; a binary decoder's "
                     "value d counts as -d and d). macro_auc and per-class AUCs in "
                     "decoding.json rank prob_CLASS."},
}


def load_fold_networks(decoding_dir: Path, n_classes: int) -> list:
    """Each fold's trained CNN of a decode step (eval mode), with outputs for all classes."""
    from bids_affect.models.classifier import load_fold_networks as load_networks

    return load_networks(fold_model_paths(decoding_dir), n_classes)


# --------------------------------------------------------------------------- wiring


def decoder_node(builder: ParticipantWorkflow, model: str) -> pe.Node:
    """The decode node of ``model`` in ``builder``'s workflow, with its sink (made once)."""
    def make() -> pe.Node:
        options = builder.options["decoding"]
        desc = deriv.desc_label(model)
        decode = builder.node(decode_step, f"decode_{desc}", {
            "model": model, "settings": decoder_settings(options, builder.shared.device,
                                                         builder.shared.num_threads),
            "seed": builder.seed(model), "min_volumes": builder.min_volumes,
            "n_jobs": builder.n_jobs})
        sink = builder.sink(write_decoding_step, f"ds_decode_{desc}")
        builder.wf.connect([(builder.samples, decode, [("out_dir", "samples_dir")]),
                            (decode, sink, [("out_dir", "decoding_dirs")]),
                            (builder.samples, sink, [("out_dir", "samples_dir")])])
        builder.expose("model_dirs", decode)
        return decode

    return builder.shared_node(("decoder", model), make)


def wire(builder: ParticipantWorkflow, options: DecodingOptions) -> None:
    """Add a decoder (and its sink) per model of ``--models``."""
    for model in builder.shared.models:
        decoder_node(builder, model)
