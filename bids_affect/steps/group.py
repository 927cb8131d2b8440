"""The group level: summaries across the subjects' participant-level outputs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from bids_affect.io import derivatives as deriv
from bids_affect.steps._outputs import read_json


def find_decoding_outputs(output_dir: Path | str,
                          participant_label: Sequence[str] | None = None) -> list:
    """Participant-level ``decoding.json`` files of the selected subjects (66 when none)."""
    from bids_affect.exceptions import InputMissingError

    found = deriv.find_outputs(output_dir, "decoding")
    if participant_label:
        found = [item for item in found if item.entities["subject"] in participant_label]
    if not found:
        raise InputMissingError(
            "no participant-level decoding outputs (sub-*/func/*_decoding.json)",
            path=output_dir, fix="run the participant level (with --analyses decoding) first")
    return found


def group_withinsubject_step(out_dir: Path, *, output_dir: str,
                             participant_label: Sequence[str] | None,
                             provenance: Mapping[str, Any]) -> None:
    """Collect each subject's decoding scores into one table per task and model."""
    found = find_decoding_outputs(output_dir, participant_label)
    rows: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for item in found:
        metrics = read_json(item.path)
        band = metrics.get("null_band") or [None, None]
        rows.setdefault((item.entities["task"], item.entities["desc"]), []).append({
            "participant_id": f"sub-{item.entities['subject']}",
            "model": metrics["model"],
            "n_samples": sum(metrics["n_samples"].values()),
            "n_classes": len(metrics["classes"]),
            "accuracy": metrics["accuracy"],
            "balanced_accuracy": metrics["balanced_accuracy"],
            "chance_balanced_accuracy": metrics["chance_balanced_accuracy"],
            "null_low": band[0], "null_high": band[1],
            "p_permutation": metrics["p_permutation"],
            "n_permutations": metrics["n_permutations"],
            "macro_auc": metrics["macro_auc"],
            "random_split_balanced_accuracy": metrics.get("random_split_balanced_accuracy"),
        })
    for (task, desc), table in sorted(rows.items()):
        table = pd.DataFrame(sorted(table, key=lambda row: row["participant_id"]))
        deriv.write_with_sidecar(
            deriv.output_path(output_dir, "group_withinsubject", task=task, desc=desc), table,
            deriv.sidecar(Description="Within-subject decoding scores of every subject, with "
                                      "chance level, null band and permutation p",
                          sources=[deriv.SourceResolver({"": Path(output_dir)}).uri(i.path)
                                   for i in found if i.entities["task"] == task
                                   and i.entities["desc"] == desc]))


def summary_table(output_dir: Path) -> str:
    """Each subject's decoding scores, from the group tables: what the demo prints last.

    A p-value can be no smaller than 1 / (permutations + 1): the table says
    so where the permutations bound it above .05.
    """
    lines = [f"{'subject':<9}{'model':<17}{'bal. acc.':>10}{'chance':>9}{'p':>8}  note"]
    for table in sorted((Path(output_dir) / "group").glob("*_withinsubject.tsv")):
        for row in pd.read_csv(table, sep="\t").itertuples():
            bound = 1 / (row.n_permutations + 1)
            note = (f"p cannot go below {bound:.2f}: only {row.n_permutations} permutations"
                    if bound > 0.05 else f"{row.n_permutations} permutations")
            lines.append(f"{row.participant_id:<9}{row.model:<17}{row.balanced_accuracy:>10.3f}"
                         f"{row.chance_balanced_accuracy:>9.3f}{row.p_permutation:>8.3f}  {note}")
    return "\n".join(lines)
