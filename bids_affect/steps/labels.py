"""Steps every participant workflow runs: labels per volume, then clean samples."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bids_affect.io import derivatives as deriv
from bids_affect.steps._outputs import read_json, records, run_entities, sources

#: The labelling rule, as the sidecars of ``desc-labels_events.tsv`` state it.
LABEL_RULE = ("volume i is acquired at t_i = i * TR + StartTime and labelled with the "
              "annotation active at t_i - hrf_lag (onset <= t < onset + duration); unlabelled "
              "volumes (no class reaching the threshold, ties, read time before 0) are n/a")


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
    run_records = records(runs)
    if check_data:
        from bids_affect.bold import check_bold_data

        for run in run_records:
            check_bold_data(run.bold)
    labels_by_run, scores_by_run = {}, {}
    for run in run_records:
        events = read_events(run.events)
        check_events(spec, events, run.events)
        scores = score_volumes(events, spec, tr=run.tr, n_volumes=run.n_volumes,
                               start_time=run.start_time, path=run.events,
                               where=f"sub-{run.subject} {run.key}")
        labels = labels_from_scores(scores, spec)
        deriv.write_tsv(out_dir / f"{run.key}_labels.tsv",
                        labels_table(labels, tr=run.tr, start_time=run.start_time))
        labels_by_run[run.key], scores_by_run[run.key] = labels, scores
    check_labelled(labels_by_run, spec, scores_by_run, where=f"sub-{run_records[0].subject}")
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
    content = read_json(Path(labels_dir) / "labels.json")
    return {key: np.array(values, dtype=object) for key, values in content["labels"].items()}


def write_labels_step(out_dir: Path, *, labels_dir: Path, output_dir: str, subject: str,
                      task: str, runs: Sequence[Mapping[str, Any]],
                      provenance: Mapping[str, Any]) -> None:
    """Write ``desc-labels_events.tsv`` per run and the per-subject counts table."""
    spec = read_json(Path(labels_dir) / "labels.json")["spec"]
    run_records = records(runs)
    common = dict(parameters={"label_spec": spec["name"], "hrf_lag": spec["hrf_lag"],
                              "min_volumes": spec["min_volumes"]},
                  seed=provenance.get("master_seed"), LabelSpec=spec)
    for run in run_records:
        path = deriv.output_path(output_dir, "labels", subject=subject, task=task,
                                 **run_entities(run))
        deriv.write_with_sidecar(path, Path(labels_dir) / f"{run.key}_labels.tsv", deriv.sidecar(
            Description="Emotion label of every volume", Rule=LABEL_RULE,
            RepetitionTime=run.tr, StartTime=run.start_time,
            sources=sources(provenance, [run.events, run.bold]), **common))
    counts = deriv.output_path(output_dir, "label_counts", subject=subject, task=task)
    deriv.write_with_sidecar(counts, Path(labels_dir) / "counts.tsv", deriv.sidecar(
        Description="Labelled volumes per class and run",
        sources=sources(provenance, [r.events for r in run_records]), **common))


def samples_step(out_dir: Path, *, labels_dir: Path, runs: Sequence[Mapping[str, Any]],
                 cleaning: Mapping[str, Any]) -> None:
    """Clean every run into memory-mapped samples (see :func:`bids_affect.bold.build_samples`)."""
    from bids_affect.bold import build_samples

    build_samples(records(runs), read_labels(labels_dir), out_dir, **dict(cleaning))
