"""RSA: every RDM as a heat map, and the table of their comparisons."""

from __future__ import annotations

from typing import Any

from bids_affect.io.derivatives import sidecar_path
from bids_affect.reports.figures import plot_rdm
from bids_affect.reports.formatting import read_json, read_tsv, table_from_frame
from bids_affect.reports.registry import ReportContext, register_section
from bids_affect.reports.sections._common import anchor, block_entities, block_title, by_block


@register_section("rsa", title="Representational similarity", levels=("subject",),
                  order=40)
def rsa_section(context: ReportContext) -> dict[str, Any] | None:
    """One block per task: the RDMs, then the comparison table."""
    rdms = by_block(context.outputs("rdm"))
    statistics = by_block(context.outputs("rsa_statistics"))
    if not rdms and not statistics:
        return None
    blocks = []
    for key in sorted(set(rdms) | set(statistics)):
        figures = []
        for item in sorted(rdms.get(key, []), key=lambda i: i.entities["desc"]):
            desc = item.entities["desc"]
            about = read_json(sidecar_path(item.path)) if sidecar_path(item.path).exists() \
                else {}
            rdm = read_tsv(item.path)
            rdm = rdm.set_index(rdm.columns[0])  # the class names
            figures.append({"name": desc, "caption": about.get("Description", ""),
                            "href": context.save_figure(
                                plot_rdm(rdm, title=desc), suffix="rdm",
                                description=f"Representational dissimilarity matrix {desc}",
                                sources=[item.path], desc=desc, **block_entities(key))})
        table = None
        if key in statistics:
            table = table_from_frame(read_tsv(statistics[key][0].path),
                                     caption="Comparisons of the RDMs (p from permutations "
                                             "of the classes; exact when every relabelling "
                                             "was used)")
        blocks.append({"title": block_title(key), "anchor": anchor("rsa", *key),
                       "rdms": figures, "table": table})
    return {"blocks": blocks}
