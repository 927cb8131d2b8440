"""Encoding: each feature set's r map, its ROI table and the fit's null and audit."""

from __future__ import annotations

from typing import Any

from bids_affect.io.derivatives import FoundOutput
from bids_affect.reports.figures import plot_occlusion_map
from bids_affect.reports.formatting import format_cell, read_json, read_tsv, table_from_frame
from bids_affect.reports.registry import ReportContext, register_section
from bids_affect.reports.sections._common import anchor, block_key, block_title

#: Spaces whose maps are drawn on the MNI glass brain.
MNI_PREFIX = "MNI"

#: The ``stat`` entities of encoding maps.
ENCODING_STATS = ("r", "rsquared", "p", "pfwe")


def _fit_block(context: ReportContext, key: tuple[str, str], desc: str,
               maps: list[FoundOutput]) -> dict[str, Any]:
    """The r map, the ROI table and the fit's numbers of one encoding model."""
    entities = {"session": key[0] or None, "task": key[1], "desc": desc}
    metrics_path = context.path("encoding", subject=context.subject, **entities)
    metrics = read_json(metrics_path) if metrics_path.exists() else {}
    null = metrics.get("null") or {}
    audit = metrics.get("audit") or {}
    facts = [("encoding model", metrics.get("EncodingModel", metrics.get("model"))),
             ("feature sets", ", ".join(metrics.get("FeatureSets") or [desc])),
             ("cross-validation", f"{metrics.get('cv')}, {metrics.get('n_folds')} folds"),
             ("voxels", metrics.get("n_voxels")),
             ("mean r over the mask", metrics.get("mean_r")),
             ("voxels with p < .05 (FWE-corrected)", null.get("n_voxels_pfwe05")),
             ("FWE threshold of r", null.get("fwe_threshold_r")),
             ("permutations (circular shifts of each run's BOLD)",
              metrics.get("n_permutations")),
             ("mean r of the random 5-fold split (audit, leaks)", audit.get("mean_r")),
             ("ROIs", metrics.get("ROIs"))]
    block: dict[str, Any] = {"title": f"{desc}, {block_title(key)}",
                             "anchor": anchor("encoding", *key, desc),
                             "facts": [(name, format_cell(name, value)) for name, value in facts
                                       if value is not None],
                             "figure": None, "table": None}
    r_maps = [item for item in maps if item.entities.get("stat") == "r"]
    if r_maps:
        item = r_maps[0]
        space = item.entities.get("space")
        mni = bool(space) and space.startswith(MNI_PREFIX)
        block["figure"] = context.save_figure(
            plot_occlusion_map(item.path, mni=mni, title=f"{desc}: held-out r"),
            suffix="encoding", description=f"Held-out r of the encoding model {desc}, "
                                           "unthresholded", sources=[item.path], **entities)
    roi_path = context.path("encoding_roi", subject=context.subject, **entities)
    if roi_path.exists():
        block["table"] = table_from_frame(
            read_tsv(roi_path), caption="Per ROI: mean r and R2 of its voxels, the "
                                        "permutation p and null band of the mean r, and the "
                                        "random-split audit")
    return block


@register_section("encoding", title="Encoding models", levels=("subject",), order=45)
def encoding_section(context: ReportContext) -> dict[str, Any] | None:
    """One block per feature set (and model) and task."""
    fits: dict[tuple[tuple[str, str], str], list[FoundOutput]] = {}
    for item in context.outputs("encoding_map"):
        if item.entities.get("stat") not in ENCODING_STATS:  # occlusion maps share the suffix
            continue
        fits.setdefault((block_key(item.entities), item.entities["desc"]), []).append(item)
    for item in context.outputs("encoding_roi"):
        fits.setdefault((block_key(item.entities), item.entities["desc"]), [])
    if not fits:
        return None
    return {"fits": [_fit_block(context, key, desc, items)
                     for (key, desc), items in sorted(fits.items())]}
