"""Group report: the subjects' reports, and within-subject scores side by side."""

from __future__ import annotations

from typing import Any

from bids_affect.io.derivatives import sidecar_path
from bids_affect.reports.figures import plot_subject_scores
from bids_affect.reports.formatting import read_json, read_tsv, table_from_frame
from bids_affect.reports.registry import ReportContext, register_section
from bids_affect.reports.sections._common import anchor, block_title


@register_section("subjects", title="Subjects", levels=("group",), order=10)
def subjects_section(context: ReportContext) -> dict[str, Any] | None:
    """Links to the report of every subject with outputs (built before the group's)."""
    from bids_affect.reports.build import list_subjects

    subjects = list_subjects(context.output_dir)
    if not subjects:
        return None
    return {"subjects": [{"name": f"sub-{subject}",
                          "href": context.href(context.path("report", subject=subject))}
                         for subject in subjects]}


@register_section("withinsubject", title="Within-subject decoding across subjects",
                  levels=("group",), order=20)
def withinsubject_section(context: ReportContext) -> dict[str, Any] | None:
    """Per model: every subject's balanced accuracy against its chance and null band."""
    found = context.outputs("group_withinsubject")
    if not found:
        return None
    blocks = []
    for item in sorted(found, key=lambda i: (i.entities.get("task", ""),
                                             i.entities.get("desc", ""))):
        table = read_tsv(item.path)
        about = read_json(sidecar_path(item.path)) if sidecar_path(item.path).exists() else {}
        entities = {"task": item.entities.get("task"), "desc": item.entities.get("desc")}
        models = sorted(set(table["model"].astype(str))) if "model" in table else []
        model = models[0] if len(models) == 1 else entities["desc"]
        key = ("", entities["task"] or "")
        figure = context.save_figure(
            plot_subject_scores(table, title=f"{model}: balanced accuracy per subject"),
            suffix="scores", description="Within-subject balanced accuracy of every subject "
                                         "against its chance level and null band",
            sources=[item.path], **entities)
        blocks.append({"title": f"{model}, {block_title(key)}",
                       "anchor": anchor("withinsubject", *key, entities["desc"] or ""),
                       "figure": figure, "description": about.get("Description", ""),
                       "table": table_from_frame(table)})
    return {"blocks": blocks}
