"""Stimulus models: emotion-selective channels, encoding models on images, synthesis.

Three sections, drawn from the outputs of the ``selectivity``,
``image-validation`` and ``synthesis`` analyses:

- ``selectivity`` (group report): seed 002's Table 1, the layer summary, the
  overlap of the selective channels of two image sets against its null, and
  the figures the analysis wrote (``group/figures/desc-NETWORK_*.svg``);
- ``imagevalidation`` (subject and group reports): the regression of the
  predicted ROI responses on the ratings, per subject, and the group's tests;
- ``synthesis`` (subject and group reports): the synthesised images, their
  predicted responses against random images, the separability with its
  confusion matrix and clustering, and the pooled separability.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bids_affect.io.derivatives import FoundOutput, desc_label, sidecar_path
from bids_affect.reports.figures import (
    plot_confusion,
    plot_dendrogram,
    plot_image_grid,
    plot_rating_coefficients,
)
from bids_affect.reports.formatting import read_json, read_tsv, table_from_frame
from bids_affect.reports.registry import ReportContext, register_section
from bids_affect.reports.sections._common import anchor, block_entities, block_key, block_title

#: The sections of this module (their names are also their templates').
SECTION_NAMES = ("selectivity", "imagevalidation", "synthesis")

#: The rating terms shown (covariates stay in the TSV).
RATING_TERMS = ("valence", "arousal", "valence_x_arousal")


def _about(path: Path) -> dict[str, Any]:
    """A data file's sidecar (empty when it is missing)."""
    return read_json(sidecar_path(path)) if sidecar_path(path).exists() else {}


def _existing_figure(context: ReportContext, path: Path) -> str | None:
    """Link to a figure an analysis wrote (None when it is missing)."""
    if not path.exists():
        return None
    context.figures.append(path)
    return context.href(path)


# --------------------------------------------------------------------------- selectivity


@register_section("selectivity", title="Emotion-selective channels", levels=("group",),
                  order=40)
def selectivity_section(context: ReportContext) -> dict[str, Any] | None:
    """Per network: Table 1, layers, overlaps, and the analysis's figures."""
    found = context.outputs("selectivity_layers")
    if not found:
        return None
    blocks = []
    for item in sorted(found, key=lambda i: i.entities["desc"]):
        desc = item.entities["desc"]
        about = _about(item.path)
        network = about.get("Network", {}).get("network", desc)
        tables = []
        table1 = context.path("selectivity_table1", desc=desc)
        if table1.exists():
            tables.append(table_from_frame(read_tsv(table1), caption=(
                "Seed 002's Table 1: original F1 of the readout, the largest enhancement and "
                "lesion effect over the layers (change in % of the original)")))
        gains = context.path("selectivity_gainlesion", desc=desc)
        if gains.exists():
            summary = read_tsv(gains)
            columns = [c for c in ("image_set", "layer", "category", "n_channels", "original",
                                   "enhanced", "random_enhanced", "enhanced_p", "lesioned",
                                   "random_lesioned", "lesioned_p") if c in summary]
            tables.append(table_from_frame(summary, columns=columns, caption=(
                "Gain and lesion of the selective channels against random channel sets, per "
                "layer (p: share of random sets doing at least as well)")))
        layers = read_tsv(item.path)
        tables.append(table_from_frame(layers, caption="Selectivity by layer (network "
                                                       "'random': seed 002's control)"))
        overlap = context.path("selectivity_overlap", desc=desc)
        if overlap.exists() and len(read_tsv(overlap)):
            columns = ["network", "image_set_a", "image_set_b", "layer", "category",
                       "n_channels", "n_a", "n_b", "overlap", "expected", "p_value"]
            tables.append(table_from_frame(read_tsv(overlap), columns=columns, caption=(
                "Channels selective for the same category in two image sets, against the "
                "hypergeometric expectation of two random sets")))
        figures = [{"href": href, "caption": _about(path).get("Description", "")}
                   for suffix in ("si", "tuning", "gain")
                   if (href := _existing_figure(context, path := context.path(
                       "selectivity_figure", desc=desc, suffix=suffix)))]
        sets = about.get("ImageSets", {})
        notes = [f"{name}: {info.get('n_images')} images {info.get('categories')}"
                 + (f"; {info['n_unknown_category']} without a category left out"
                    if info.get("n_unknown_category") else "")
                 + (f"; unreadable files left out: {', '.join(info['unreadable_skipped'])}"
                    if info.get("unreadable_skipped") else "")
                 for name, info in sets.items()]
        weights = str(about.get("Network", {}).get("weights", ""))
        weights = "random weights" if weights == "random" else f"weights {Path(weights).name}"
        blocks.append({"title": f"{network}, {weights}",
                       "anchor": anchor("selectivity", desc), "tables": tables,
                       "figures": figures, "notes": notes})
    return {"blocks": blocks}


# --------------------------------------------------------------------------- validation


def _by_block_and_desc(items: list[FoundOutput]
                       ) -> dict[tuple[tuple[str, str], str], FoundOutput]:
    return {(block_key(item.entities), item.entities["desc"]): item
            for item in sorted(items, key=lambda i: i.path)}


def _subject_validation(context: ReportContext) -> dict[str, Any] | None:
    found = _by_block_and_desc(context.outputs("image_regression"))
    if not found:
        return None
    blocks = []
    for (key, desc), item in sorted(found.items()):
        table = read_tsv(item.path)
        shown = table[table["term"].isin(RATING_TERMS)].reset_index(drop=True)
        drawn = shown.assign(roi=shown["image_set"].astype(str) + ": " + shown["roi"])
        figure = context.save_figure(
            plot_rating_coefficients(drawn, title=f"{desc}: predicted responses ~ ratings"),
            suffix="imagevalidation", sources=[item.path],
            description="Standardised coefficients (95% intervals) of the rating terms in "
                        "the regression of each ROI's predicted response on the ratings",
            desc=desc, **block_entities(key))
        about = _about(item.path)
        notes = [f"model {name} left out: {why}"
                 for name, why in (about.get("SkippedModels") or {}).items()]
        blocks.append({"title": f"{desc}, {block_title(key)}",
                       "anchor": anchor("imagevalidation", *key, desc), "figure": figure,
                       "table": table_from_frame(shown, columns=[
                           "image_set", "roi", "term", "coef", "se", "t", "p", "r_squared",
                           "n_images"], caption="Rating terms (covariates in the TSV)"),
                       "notes": notes})
    return {"blocks": blocks}


def _group_validation(context: ReportContext) -> dict[str, Any] | None:
    found = context.outputs("group_image_regression")
    if not found:
        return None
    blocks = []
    for item in sorted(found, key=lambda i: i.path):
        task, desc = item.entities["task"], item.entities["desc"]
        table = read_tsv(item.path)
        shown = table[table["term"].isin(RATING_TERMS)].reset_index(drop=True)
        subjects = [pd.read_csv(found_item.path, sep="\t").assign(
                        participant_id=f"sub-{found_item.entities['subject']}")
                    for found_item in context.outputs("image_regression", task=task,
                                                      desc=desc)]
        figure = None
        if subjects:
            per_subject = pd.concat(subjects, ignore_index=True)
            per_subject = per_subject[per_subject["term"].isin(RATING_TERMS)]
            per_subject = per_subject.assign(
                roi=per_subject["image_set"].astype(str) + ": " + per_subject["roi"])
            figure = context.save_figure(
                plot_rating_coefficients(per_subject, title=f"{desc}: every subject"),
                suffix="imagevalidation", sources=[item.path],
                description="Each subject's standardised rating coefficients (points) and "
                            "their mean (bars)", task=task, desc=desc)
        blocks.append({"title": f"{desc}, task-{task}",
                       "anchor": anchor("imagevalidation", task, desc), "figure": figure,
                       "table": table_from_frame(shown, caption=(
                           "One-sample t-tests across subjects and Cohen's d (seed 000)")),
                       "notes": []})
    return {"blocks": blocks}


@register_section("imagevalidation", title="Encoding models on affective images",
                  levels=("subject", "group"), order=45)
def image_validation_section(context: ReportContext) -> dict[str, Any] | None:
    """Per fit: the rating coefficients of each ROI (subject), or their group tests."""
    return (_subject_validation(context) if context.level == "subject"
            else _group_validation(context))


# --------------------------------------------------------------------------- synthesis


def _confusion(path: Path) -> pd.DataFrame:
    table = read_tsv(path)
    return table.set_index(table.columns[0])


def _subject_synthesis(context: ReportContext) -> dict[str, Any] | None:
    from PIL import Image

    found = _by_block_and_desc(context.outputs("synthesis_separability"))
    if not found:
        return None
    blocks = []
    for (key, desc), item in sorted(found.items()):
        entities = {"desc": desc, **block_entities(key)}
        about = _about(item.path)
        summary = read_tsv(item.path)
        responses = read_tsv(context.path("synthesis_responses", subject=context.subject,
                                          **entities))
        rois = [c for c in responses.columns if c not in ("target", "image", "objective")]
        images: dict[str, list[np.ndarray]] = {}
        for row in responses[responses["target"] != "random"].itertuples():
            path = context.path("synthesis_image", subject=context.subject,
                                contrast=desc_label(row.target), suffix=f"image{row.image:02d}",
                                **entities)
            if path.exists():
                with Image.open(path) as picture:
                    images.setdefault(str(row.target), []).append(np.asarray(
                        picture.convert("RGB")))
        figures = []
        if images:
            figures.append({"caption": "The images synthesised for each target ROI (rows)",
                            "href": context.save_figure(
                                plot_image_grid(images), suffix="synthesis",
                                description="Synthesised images, one row per target ROI",
                                sources=[item.path], **entities)})
        confusion_path = context.path("synthesis_confusion", subject=context.subject,
                                      **entities)
        if confusion_path.exists():
            figures.append({"caption": "Cross-validated confusion of the targets",
                            "href": context.save_figure(
                                plot_confusion(_confusion(confusion_path)),
                                suffix="targetconfusion", sources=[confusion_path],
                                description="Confusion matrix of the images' targets",
                                **entities)})
        if about.get("Linkage"):
            labels = str(summary["targets"].iloc[0]).split()  # the linkage's order
            figures.append({"caption": "Hierarchical clustering of the targets",
                            "href": context.save_figure(
                                plot_dendrogram(np.asarray(about["Linkage"]), labels),
                                suffix="dendrogram", sources=[item.path],
                                description="Average-linkage clustering of the targets' "
                                            "mean response profiles", **entities)})
        means = responses.groupby("target", sort=False)[rois].mean().reset_index()
        blocks.append({"title": f"{desc}, {block_title(key)}",
                       "anchor": anchor("synthesis", *key, desc), "figures": figures,
                       "tables": [table_from_frame(summary, caption="Separability of the "
                                                                    "targets"),
                                  table_from_frame(means, caption=(
                                      "Mean predicted response of each ROI (columns) to the "
                                      "images made for each target (rows) and to random "
                                      "images of the same generator"))]})
    return {"blocks": blocks}


def _group_synthesis(context: ReportContext) -> dict[str, Any] | None:
    found = context.outputs("group_separability")
    if not found:
        return None
    blocks = []
    for item in sorted(found, key=lambda i: i.path):
        names = {"task": item.entities["task"], "desc": item.entities["desc"]}
        tables = [table_from_frame(read_tsv(item.path), caption="Separability per subject")]
        test = context.path("group_separability_test", **names)
        if test.exists():
            tables.append(table_from_frame(read_tsv(test), caption=(
                "Accuracy minus chance across subjects (one-sample t-test)")))
        figures = []
        confusion = context.path("group_synthesis_confusion", **names)
        if confusion.exists():
            figures.append({"caption": "Confusion summed over subjects", "href":
                            context.save_figure(plot_confusion(_confusion(confusion)),
                                                suffix="targetconfusion", sources=[confusion],
                                                description="Confusion of the targets summed "
                                                            "over subjects", **names)})
        blocks.append({"title": f"{names['desc']}, task-{names['task']}",
                       "anchor": anchor("synthesis", *names.values()), "figures": figures,
                       "tables": tables})
    return {"blocks": blocks}


@register_section("synthesis", title="Synthesised images and their separability",
                  levels=("subject", "group"), order=46)
def synthesis_section(context: ReportContext) -> dict[str, Any] | None:
    """Per fit: images, responses, separability (subject), or the pooled separability."""
    return (_subject_synthesis(context) if context.level == "subject"
            else _group_synthesis(context))
