"""Group report: cross-subject decoding, group inference, group maps, mixed models, group RSA.

Five sections of ``group.html``, drawn from the group level's outputs
(:mod:`bids_affect.steps.group_decoding`, :mod:`bids_affect.steps.group_maps`,
:mod:`bids_affect.steps.group`); each shows what exists and is left out when
its outputs do not:

- ``groupinference``: the within-subject scores tested across subjects (the
  t-test with its caveat, and the prevalence lower bound with the global null p);
- ``crosssubject``: leave-one-subject-out scores per alignment, the gain of
  alignment over none on the same folds, the group's null and the audit;
- ``groupmaps``: thresholded group maps (glass brains), cluster tables,
  occlusion consensus voxels and the group UMAP;
- ``mixedmodel``: the encoding ROI mixed model;
- ``grouprsa``: the comparisons tested across subjects and the group-mean RDMs.

Their templates share ``sections/_group_blocks.html``: blocks with a title,
metrics, figures, tables and notes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from bids_affect.alignment import ALIGNMENT_METHODS
from bids_affect.io.derivatives import FoundOutput, sidecar_path
from bids_affect.reports.figures import (
    plot_alignment_scores,
    plot_group_map,
    plot_rdm,
    plot_region_means,
    plot_subject_scores,
)
from bids_affect.reports.formatting import (
    format_number,
    format_p,
    read_json,
    read_tsv,
    table_from_frame,
)
from bids_affect.reports.registry import ReportContext, register_section
from bids_affect.reports.sections._common import anchor

#: The sections of this module (their names are also their templates').
SECTION_NAMES = ("groupinference", "crosssubject", "groupmaps", "mixedmodel", "grouprsa")

#: Rows of a consensus table shown in the report (the TSV has them all).
CONSENSUS_ROWS = 15


def _about(path: Path) -> dict[str, Any]:
    """A data file's sidecar (empty when it is missing)."""
    return read_json(sidecar_path(path)) if sidecar_path(path).exists() else {}


def _block(title: str, *parts: str, metrics=(), figures=(), tables=(), notes=()
           ) -> dict[str, Any]:
    return {"title": title, "anchor": anchor(*parts), "metrics": list(metrics),
            "figures": [figure for figure in figures if figure["href"]],
            "tables": [table for table in tables if table], "notes": list(notes)}


def _task_title(entities: dict[str, str], *names: str) -> str:
    return ", ".join([*(name for name in names if name), f"task-{entities.get('task', '')}"])


# --------------------------------------------------------------------------- inference


@register_section("groupinference", title="Within-subject decoding: group inference",
                  levels=("group",), order=21)
def groupinference_section(context: ReportContext) -> dict[str, Any] | None:
    """Per model: the t-test of accuracy minus chance (with its caveat) and prevalence."""
    blocks = []
    for item in sorted(context.outputs("group_withinsubject"), key=lambda i: i.path.name):
        inference = _about(item.path).get("GroupInference")
        if not inference:
            continue
        metrics = [("subjects", str(len(inference["participants"])))]
        notes = []
        ttest = inference.get("ttest")
        if ttest:
            metrics += [("mean balanced accuracy", format_number(ttest["mean_score"])),
                        ("mean chance", format_number(ttest["mean_chance"])),
                        (f"t({ttest['df']}) of accuracy minus chance", format_number(ttest["t"])),
                        ("p (one-sided)", format_p(ttest["p"]))]
            notes.append(f"Caveat: {ttest['caveat']}")
        prevalence = inference.get("prevalence")
        if prevalence:
            metrics += [("prevalence lower bound",
                         format_number(prevalence["prevalence_lower_bound"])),
                        ("largest bound these permutations allow",
                         format_number(prevalence["prevalence_lower_bound_max"])),
                        ("p of the global null", format_p(prevalence["p_global_null"])),
                        ("p of the majority null", format_p(prevalence["p_majority_null"]))]
            notes.append(f"Prevalence: {prevalence['method']}, alpha "
                         f"{prevalence['alpha']:g}, {prevalence['n_second_level_permutations']}"
                         f" second-level permutations ({'all' if prevalence['exact'] else 'drawn'}"
                         "). The bound is the largest share of the population that has the "
                         "effect with confidence 1 - alpha.")
        if inference.get("note"):
            notes.append(inference["note"])
        blocks.append(_block(_task_title(item.entities, item.entities.get("desc", "")),
                             "groupinference", item.entities.get("task", ""),
                             item.entities.get("desc", ""), metrics=metrics, notes=notes))
    return {"blocks": blocks} if blocks else None


# --------------------------------------------------------------------------- cross-subject


@register_section("crosssubject", title="Cross-subject decoding", levels=("group",),
                  order=22)
def crosssubject_section(context: ReportContext) -> dict[str, Any] | None:
    """Per task and decoder: each alignment's scores, their gain over none, the audit."""
    found = context.outputs("group_decoding")
    if not found:
        return None
    runs: dict[tuple[str, str], dict[str, FoundOutput]] = {}
    for item in found:
        about = _about(item.path)
        key = (item.entities.get("task", ""), str(about.get("model", item.entities["desc"])))
        runs.setdefault(key, {})[str(about.get("alignment", "none"))] = item
    order = list(ALIGNMENT_METHODS)
    blocks = []
    for (task, model), by_method in sorted(runs.items()):
        by_method = dict(sorted(by_method.items(), key=lambda pair: (
            order.index(pair[0]) if pair[0] in order else len(order), pair[0])))
        tables = {method: read_tsv(item.path) for method, item in by_method.items()}
        abouts = {method: _about(item.path) for method, item in by_method.items()}
        rows = []
        for method, about in abouts.items():
            gain = about.get("gain_over_none") or {}
            band = about.get("group_null_band") or [None, None]
            rows.append({"alignment": method, "subjects": about.get("n_subjects"),
                         "mean balanced accuracy": about.get("mean_balanced_accuracy"),
                         "group chance": about.get("group_chance_balanced_accuracy"),
                         "null low": band[0], "null high": band[1],
                         "group p": about.get("group_p_permutation"),
                         "gain over none": gain.get("mean"),
                         "subjects improved": gain.get("n_improved", pd.NA),
                         "pooled random split (leaks)": (about.get("random_split") or {})
                         .get("pooled_balanced_accuracy")})
        summary = pd.DataFrame(rows).astype({"subjects improved": "Int64"})
        first_desc = next(iter(by_method.values())).entities["desc"]
        figures = [{"caption": "Each held-out subject under each alignment (same folds)",
                    "href": context.save_figure(
                        plot_alignment_scores(tables, title=f"{model}: held-out subjects"),
                        suffix="alignment", sources=[i.path for i in by_method.values()],
                        description="Balanced accuracy of each held-out subject (grey) and "
                                    "their mean (red) under each alignment, on the same folds",
                        task=task, desc=first_desc)}]
        for method, item in by_method.items():
            figure = plot_subject_scores(tables[method], title=f"{model}, alignment {method}")
            figures.append({"caption": f"Alignment {method}: each held-out subject against "
                                       "its null",
                            "href": context.save_figure(
                                figure, suffix="crosssubjectscores", sources=[item.path],
                                description="Each held-out subject's balanced accuracy "
                                            "against its chance level and null band, and the "
                                            "leaky pooled random split",
                                task=task, desc=item.entities["desc"])})
        first = next(iter(abouts.values()))
        notes = [first.get("group_test", ""), first.get("fold_scheme", ""),
                 *first.get("harmonisation", {}).get("notes", [])]
        blocks.append(_block(f"{model}, task-{task}", "crosssubject", task, model,
                             figures=figures, notes=[n for n in notes if n], tables=[
                                 table_from_frame(summary, caption=(
                                     "Leave-one-subject-out decoding per alignment: mean over "
                                     "held-out subjects, the group's chance level, null band "
                                     "and p (the same label shift for every subject per "
                                     "permutation), the paired gain over no alignment"))]))
    return {"blocks": blocks}


# --------------------------------------------------------------------------- group maps


def _map_block(context: ReportContext, item: FoundOutput) -> dict[str, Any]:
    entities = {k: v for k, v in item.entities.items() if k != "stat"}
    stem = item.path.name.split("_stat-")[0]
    figures, tables, metrics = [], [], []
    for label, control in (("tfdr", "FDR"), ("tfwe", "FWE")):
        thresholded = item.path.with_name(f"{stem}_stat-{label}_statmap.nii.gz")
        if not thresholded.exists():
            continue
        about = _about(thresholded)
        n = about.get("NumberOfSignificantVoxels", 0)
        metrics.append((f"voxels surviving {control}", str(n)))
        shown = thresholded if n else item.path
        figures.append({"href": context.save_figure(
            plot_group_map(shown, title=f"{stem.replace('_', ' ')} ({control})"),
            suffix=f"groupmap{label}", description=f"Group t map where it survives {control} "
                                                   "(the unthresholded t map when no voxel "
                                                   "does)", sources=[shown], **entities),
            "caption": f"t where it survives {control}" if n else
            f"t map (no voxel survives {control})"})
        clusters = item.path.with_name(f"{stem}_stat-{label}_clusters.tsv")
        if clusters.exists() and len(read_tsv(clusters)):
            tables.append(table_from_frame(read_tsv(clusters),
                                           caption=f"Clusters of the {control} map"))
    consensus = [found for found in context.outputs("group_consensus")
                 if all(found.entities.get(k) == v for k, v in entities.items())]
    for found in consensus:
        table = read_tsv(found.path).head(CONSENSUS_ROWS)
        tables.append(table_from_frame(table, caption=(
            f"Consensus top voxels (first {CONSENSUS_ROWS}; counted over subjects, with the "
            "atlas structure)")))
    subjects = _about(item.path).get("Subjects", [])
    title = ", ".join(f"{key}-{value}" for key, value in entities.items())
    return _block(title, "groupmaps", *entities.values(), figures=figures, tables=tables,
                  metrics=[("subjects", str(len(subjects))), *metrics])


@register_section("groupmaps", title="Group maps", levels=("group",), order=30)
def groupmaps_section(context: ReportContext) -> dict[str, Any] | None:
    """Per group t map: the thresholded maps as glass brains, clusters, consensus voxels."""
    maps = sorted(context.outputs("group_statmap"), key=lambda i: i.path.name)
    umaps = sorted(context.outputs("group_occlusion_umap"), key=lambda i: i.path.name)
    if not maps and not umaps:
        return None
    blocks = [_map_block(context, item) for item in maps]
    for item in umaps:
        figure = context.path("group_figure", suffix="umap", extension=".svg",
                              **item.entities)
        if figure.exists():
            context.figures.append(figure)
        blocks.append(_block(f"{item.entities.get('desc')}, task-{item.entities.get('task')}: "
                             "UMAP of consensus voxels", "groupmaps", "umap",
                             *item.entities.values(), figures=[{
                                 "href": context.href(figure) if figure.exists() else None,
                                 "caption": _about(item.path).get("Description", "")}]))
    return {"blocks": blocks}


# --------------------------------------------------------------------------- mixed models


@register_section("mixedmodel", title="Encoding ROIs: mixed model", levels=("group",),
                  order=35)
def mixedmodel_section(context: ReportContext) -> dict[str, Any] | None:
    """Per feature set: region means with SE, the intercept test and the region comparison."""
    found = sorted(context.outputs("group_mixedmodel"), key=lambda i: i.path.name)
    if not found:
        return None
    blocks = []
    for item in found:
        table = read_tsv(item.path)
        about = _about(item.path)
        desc = item.entities.get("desc", "")
        first = table.iloc[0]
        metrics = [("subjects", format_number(first.get("n_subjects"))),
                   ("likelihood ratio", format_number(first.get("likelihood_ratio"))),
                   ("p (likelihood ratio)", format_p(first.get("p_likelihood_ratio"))),
                   ("delta BIC (none - region)", format_number(first.get("delta_bic")))]
        figure = context.save_figure(plot_region_means(table, title=desc), suffix="regions",
                                     description="Region means of the encoding r with SE "
                                                 "(mixed model)", sources=[item.path],
                                     **{k: v for k, v in item.entities.items()
                                        if k in ("task", "desc")})
        notes = [about.get("Description", "")]
        if about.get("Converged") is False:
            notes.append("statsmodels did not report convergence of every fit.")
        blocks.append(_block(_task_title(item.entities, desc), "mixedmodel", desc,
                             item.entities.get("task", ""), metrics=metrics,
                             figures=[{"href": figure, "caption": "Region means ± SE"}],
                             tables=[table_from_frame(table, columns=[
                                 "term", "beta", "se", "t", "p"])], notes=notes))
    return {"blocks": blocks}


# --------------------------------------------------------------------------- group RSA


@register_section("grouprsa", title="Group RSA", levels=("group",), order=36)
def grouprsa_section(context: ReportContext) -> dict[str, Any] | None:
    """Per task: the comparisons tested across subjects and the group-mean RDMs."""
    statistics = sorted(context.outputs("group_rsa_statistics"), key=lambda i: i.path.name)
    rdms = sorted(context.outputs("group_rdm"), key=lambda i: i.path.name)
    if not statistics and not rdms:
        return None
    tasks = sorted({item.entities.get("task", "") for item in statistics + rdms})
    blocks = []
    for task in tasks:
        figures = []
        for item in (i for i in rdms if i.entities.get("task", "") == task):
            rdm = read_tsv(item.path)
            rdm = rdm.set_index(rdm.columns[0])
            desc = item.entities["desc"]
            figures.append({"href": context.save_figure(
                plot_rdm(rdm, title=f"group mean: {desc}"), suffix="grouprdm",
                description=f"Mean over subjects of RDM {desc}", sources=[item.path],
                task=task, desc=desc), "caption": f"Group-mean RDM {desc}"})
        tables = [table_from_frame(read_tsv(item.path), caption=(
            "Each comparison's per-subject r tested across subjects (sign flips; p_fdr: "
            "Benjamini-Hochberg across comparisons)"))
            for item in statistics if item.entities.get("task", "") == task]
        blocks.append(_block(f"task-{task}", "grouprsa", task, figures=figures, tables=tables))
    return {"blocks": blocks}
