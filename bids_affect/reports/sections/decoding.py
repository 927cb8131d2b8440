"""Decoding per model: score against its null, confusion matrix, per-class and fold scores."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bids_affect.io.derivatives import FoundOutput
from bids_affect.reports.figures import plot_confusion, plot_null_distribution
from bids_affect.reports.formatting import (
    format_number,
    format_p,
    read_json,
    read_tsv,
    table_from_records,
)
from bids_affect.reports.registry import ReportContext, register_section
from bids_affect.reports.sections._common import anchor, block_title, by_block

PER_CLASS_COLUMNS = ("class", "precision", "recall", "f1", "auc", "support")


def _headline(metrics: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The decoder's scores and their statistics, as (name, shown value) pairs."""
    band = metrics.get("null_band")
    n_samples = metrics.get("n_samples") or {}
    rows = [
        ("classes (labelled volumes)",
         ", ".join(f"{name} ({n_samples.get(name, 'n/a')})" for name in metrics["classes"])),
        ("cross-validation", f"{metrics.get('cv', 'n/a')}, {metrics.get('n_folds', 'n/a')} "
                             "folds"),
        ("balanced accuracy", format_number(metrics.get("balanced_accuracy"))),
        ("chance level", f"{format_number(metrics.get('chance_balanced_accuracy'))} "
                         f"({metrics.get('chance_level_source', 'n/a')})"),
        ("null band", "n/a" if not band else f"{format_number(band[0])} to "
                                             f"{format_number(band[1])}"),
        ("p (permutations)", f"{format_p(metrics.get('p_permutation'))} "
                             f"({format_number(metrics.get('n_permutations'))} permutations; "
                             f"smallest possible p {format_p(metrics.get('p_resolution'))})"),
        ("accuracy", format_number(metrics.get("accuracy"))),
        ("macro AUC", format_number(metrics.get("macro_auc"))),
        ("random 80/20 split (audit)",
         format_number(metrics.get("random_split_balanced_accuracy"))),
    ]
    return rows


def _fold_records(metrics: Mapping[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """Fold scores joined with each fold's sizes (``folds``), and the columns to show."""
    folds = {str(fold.get("test")): fold for fold in metrics.get("folds", [])}
    records = []
    for score in metrics.get("fold_scores", []):
        fold = folds.get(str(score.get("fold")), {})
        missing = fold.get("missing_classes")
        records.append({"test": score.get("fold"), "n_train": fold.get("n_train"),
                        "n_test": score.get("n_test", fold.get("n_test")),
                        "balanced_accuracy": score.get("balanced_accuracy"),
                        "missing_classes": ", ".join(missing) if missing else "none"})
    columns = ["test", "n_train", "n_test", "balanced_accuracy", "missing_classes"]
    return records, [c for c in columns if any(r.get(c) is not None for r in records)]


def _model_block(context: ReportContext, found: FoundOutput,
                 key: tuple[str, str]) -> dict[str, Any]:
    """Headline, null and confusion figures, per-class and fold tables of one model."""
    metrics = read_json(found.path)
    entities = {name: found.entities.get(name) for name in ("session", "task", "desc")}
    model = str(metrics.get("model", entities["desc"]))
    title = f"{model}, {block_title(key)}"
    block: dict[str, Any] = {"title": title, "anchor": anchor("decoding", *key, model),
                             "headline": _headline(metrics), "null_figure": None,
                             "confusion_figure": None, "notes": []}
    null_path = context.path("null_distribution", subject=context.subject, **entities)
    null = read_tsv(null_path) if null_path.exists() else None
    if null is not None and len(null):
        block["null_figure"] = context.save_figure(
            plot_null_distribution(
                null["balanced_accuracy"].to_numpy(), observed=metrics["balanced_accuracy"],
                chance=metrics.get("chance_balanced_accuracy"),
                null_band=metrics.get("null_band"), p=metrics.get("p_permutation"),
                random_split=metrics.get("random_split_balanced_accuracy"),
                title=f"{model}: balanced accuracy against its null"),
            suffix="null", description="Balanced accuracy of the decoder against its "
                                       "permutation null: chance (null mean), null band, p "
                                       "and the random-split audit",
            sources=[found.path, null_path], **entities)
    else:
        block["notes"].append("No permutation null was computed (0 permutations): the "
                              "score has no p-value and no null band, and its chance level "
                              f"is {metrics.get('chance_level_source', 'not estimated')}.")
    confusion_path = context.path("confusion", subject=context.subject, **entities)
    if confusion_path.exists():
        confusion = read_tsv(confusion_path).set_index("true")
        block["confusion_figure"] = context.save_figure(
            plot_confusion(confusion, title=f"{model}: confusion matrix"),
            suffix="confusion", description="Confusion matrix over the held-out folds (rows "
                                            "true, columns predicted)",
            sources=[confusion_path], **entities)
    per_class = metrics.get("per_class") or {}
    block["per_class"] = table_from_records(
        [{"class": name, **values} for name, values in per_class.items()], PER_CLASS_COLUMNS,
        caption="Per-class metrics over the held-out folds")
    records, columns = _fold_records(metrics)
    block["folds"] = table_from_records(records, columns,
                                        caption="Balanced accuracy of each test fold")
    for name in ("permutation_scheme", "random_split_note"):
        if metrics.get(name):
            block["notes"].append(str(metrics[name]))
    return block


@register_section("decoding", title="Decoding", levels=("subject",), order=20)
def decoding_section(context: ReportContext) -> dict[str, Any] | None:
    """One block per decoding model and task."""
    found = by_block(context.outputs("decoding"))
    if not found:
        return None
    return {"models": [_model_block(context, item, key) for key, items in found.items()
                       for item in sorted(items, key=lambda i: i.entities.get("desc", ""))]}
