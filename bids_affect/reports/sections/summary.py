"""Data used: runs, volumes, labelled volumes per class and run, exclusions and why."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from bids_affect.io.derivatives import sidecar_path
from bids_affect.reports.figures import plot_label_timeline
from bids_affect.reports.formatting import read_json, read_tsv, table_from_frame
from bids_affect.reports.registry import ReportContext, register_section
from bids_affect.reports.sections._common import (
    anchor,
    block_entities,
    block_title,
    by_block,
    run_sort_key,
)

#: Columns of the label counts table that are not classes.
NOT_CLASSES = ("run", "n/a")


def _counts_table(counts: pd.DataFrame) -> pd.DataFrame:
    """The counts table with a ``volumes`` column (every volume of a run is counted)."""
    classes = [c for c in counts.columns if c not in NOT_CLASSES]
    table = counts.copy()
    numbers = table[[*classes, *(["n/a"] if "n/a" in table else [])]]
    table.insert(1, "volumes", numbers.sum(axis=1).astype(int))
    if "n/a" in table:
        table = table.rename(columns={"n/a": "unlabelled"})
    return table


def _exclusions(counts: pd.DataFrame, about: Mapping[str, Any],
                rule: str | None) -> list[str]:
    """Sentences saying which volumes and classes were left out, and why."""
    notes = []
    total = counts[counts["run"] == "total"] if "total" in set(counts["run"]) else None
    totals = total.iloc[0] if total is not None and len(total) else counts.sum(numeric_only=True)
    if "n/a" in counts:
        unlabelled = int(totals["n/a"])
        why = rule or "no class reached the agreement threshold, or a tie"
        notes.append(f"{unlabelled} volume(s) have no label and are excluded from every "
                     f"analysis (rule: {why}).")
    parameters = about.get("Parameters", {})
    minimum = parameters.get("min_volumes", about.get("LabelSpec", {}).get("min_volumes"))
    if minimum is not None:
        for name in [c for c in counts.columns if c not in NOT_CLASSES]:
            count = int(totals[name])
            if count == 0:
                notes.append(f"class {name}: no labelled volume.")
            elif count < int(minimum):
                notes.append(f"class {name}: {count} labelled volume(s), fewer than the "
                             f"minimum of {int(minimum)} per subject, so it is left out of "
                             "the analyses.")
    return notes


def _label_settings(about: Mapping[str, Any], events_about: Mapping[str, Any]) -> list[tuple]:
    """Label spec, lag, threshold and TR, as (name, value) pairs."""
    spec = about.get("LabelSpec", {})
    settings = [("label spec", spec.get("name")), ("description", spec.get("description")),
                ("haemodynamic lag (s)", spec.get("hrf_lag")),
                ("agreement threshold", spec.get("threshold")),
                ("overlaps", spec.get("overlap")),
                ("repetition time (s)", events_about.get("RepetitionTime"))]
    return [(name, value) for name, value in settings if value is not None]


@register_section("summary", title="Data used", levels=("subject",), order=10)
def summary_section(context: ReportContext) -> dict[str, Any] | None:
    """Runs and labelled volumes per class, from the label counts and the labels events."""
    counts = by_block(context.outputs("label_counts"))
    events = by_block(context.outputs("labels"))
    if not counts and not events:
        return None
    blocks = []
    for key in sorted(set(counts) | set(events)):
        runs = sorted(events.get(key, []), key=run_sort_key)
        events_about = read_json(sidecar_path(runs[0].path)) if runs else {}
        block: dict[str, Any] = {"title": block_title(key), "anchor": anchor("summary", *key),
                                 "n_runs": len(runs), "table": None, "notes": [],
                                 "settings": [], "figure": None}
        classes: list[str] = []
        if key in counts:
            path = counts[key][0].path
            table = read_tsv(path)
            about = read_json(sidecar_path(path))
            classes = [c for c in table.columns if c not in NOT_CLASSES]
            block["table"] = table_from_frame(
                _counts_table(table),
                caption="Volumes per run and labelled volumes per class (desc-labels_counts)")
            block["notes"] = _exclusions(table, about, events_about.get("Rule"))
            block["settings"] = _label_settings(about, events_about)
        if runs:
            labels = {f"run-{item.entities['run']}" if "run" in item.entities
                      else item.path.name: read_tsv(item.path) for item in runs}
            if not classes:
                classes = sorted({str(v) for frame in labels.values()
                                  for v in frame["trial_type"].dropna()})
            block["figure"] = context.save_figure(
                plot_label_timeline(labels, classes, title=f"Labels per volume, "
                                                           f"{block_title(key)}"),
                suffix="labels", description="Label of every volume over time, per run "
                                             "(grey: unlabelled, excluded)",
                sources=[item.path for item in runs], **block_entities(key))
        blocks.append(block)
    return {"blocks": blocks}
