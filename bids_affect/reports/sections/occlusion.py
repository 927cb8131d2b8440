"""Occlusion: each class's map (glass brain or native slices), top voxels, UMAP."""

from __future__ import annotations

from typing import Any

from bids_affect.io.derivatives import (
    FoundOutput,
    atomic_path,
    sidecar,
    sidecar_path,
    write_json,
)
from bids_affect.reports.figures import plot_occlusion_map
from bids_affect.reports.formatting import read_json, read_tsv, table_from_frame
from bids_affect.reports.registry import ReportContext, register_section
from bids_affect.reports.sections._common import anchor, block_key, block_title

#: Rows of each top-voxel table shown in the report (the TSV holds them all).
TOP_ROWS = 10

#: Spaces whose maps are drawn on the MNI glass brain.
MNI_PREFIX = "MNI"


def _umap_figure(context: ReportContext, entities: dict[str, Any]) -> str | None:
    """The occlusion step's UMAP figure; drawn from the UMAP table when it is missing."""
    from bids_affect.occlusion import plot_umap_embeddings

    figure = context.figure_path("umap", **entities)
    if not figure.exists():
        table = context.path("occlusion_umap", subject=context.subject, **entities)
        if not table.exists():
            return None
        write_json(sidecar_path(figure), sidecar(
            Description="UMAP embeddings of the top voxels, redrawn by the report from the "
                        "UMAP table", sources=[context.source(table)]))
        with atomic_path(figure) as tmp:
            plot_umap_embeddings(read_tsv(table), tmp)
    context.figures.append(figure)
    return context.href(figure)


def _model_block(context: ReportContext, key: tuple[str, str], desc: str,
                 maps: list[FoundOutput]) -> dict[str, Any]:
    """Each class's map and top voxels, the UMAP, and why classes have no map."""
    entities = {"session": key[0] or None, "task": key[1], "desc": desc}
    samples_path = context.path("occlusion_samples", subject=context.subject, **entities)
    about = read_json(sidecar_path(samples_path)) if samples_path.exists() else {}
    model = about.get("Parameters", {}).get("model", desc)
    block: dict[str, Any] = {"title": f"{model}, {block_title(key)}",
                             "anchor": anchor("occlusion", *key, desc), "classes": [],
                             "notes": [], "umap": None}
    n_samples = {}
    if samples_path.exists():
        samples = read_tsv(samples_path)
        n_samples = samples.groupby("class").size().to_dict() if len(samples) else {}
    for item in sorted(maps, key=lambda i: i.entities["contrast"]):
        contrast = item.entities["contrast"]
        space = item.entities.get("space")
        mni = bool(space) and space.startswith(MNI_PREFIX)
        view = "glass brain" if mni else f"slices on the analysed voxels ({space or 'native'} " \
                                          "space, no template)"
        figure = context.save_figure(
            plot_occlusion_map(item.path, mni=mni, title=contrast),
            suffix="occlusion", description=f"Occlusion map of class {contrast}, unthresholded"
                                            f" ({view})",
            sources=[item.path], contrast=contrast, **entities)
        topk_path = context.path("occlusion_topk", subject=context.subject, contrast=contrast,
                                 **entities)
        table = None
        if topk_path.exists():
            topk = read_tsv(topk_path)
            table = table_from_frame(topk.head(TOP_ROWS),
                                     caption=f"Top {min(TOP_ROWS, len(topk))} of {len(topk)} "
                                             f"voxels of {contrast} (rank by occlusion drop)")
        block["classes"].append({"name": contrast, "figure": figure, "view": view,
                                 "space": space or "native", "table": table,
                                 "n_samples": n_samples.get(contrast)})
    for name, reason in sorted((about.get("ClassesWithoutSamples") or {}).items()):
        block["notes"].append(f"class {name}: no occlusion map ({reason})")
    umap = about.get("UMAP") or {}
    if umap.get("skipped"):
        block["notes"].append(str(umap["skipped"]))
    block["umap"] = _umap_figure(context, entities)
    return block


@register_section("occlusion", title="Occlusion", levels=("subject",), order=30)
def occlusion_section(context: ReportContext) -> dict[str, Any] | None:
    """One block per model and task: maps of every class, top voxels, UMAP, notes."""
    maps: dict[tuple[tuple[str, str], str], list[FoundOutput]] = {}
    for item in context.outputs("occlusion_map"):
        maps.setdefault((block_key(item.entities), item.entities["desc"]), []).append(item)
    for item in context.outputs("occlusion_samples"):  # classes may all lack samples
        maps.setdefault((block_key(item.entities), item.entities["desc"]), [])
    if not maps:
        return None
    return {"models": [_model_block(context, key, desc, items)
                       for (key, desc), items in sorted(maps.items())]}
