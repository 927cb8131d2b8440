"""Group level: summaries across the subjects' participant-level outputs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from nipype.pipeline import engine as pe

from bids_affect.interfaces import RunStep
from bids_affect.steps import step_path
from bids_affect.steps.group import group_withinsubject_step


def init_group_wf(*, output_dir: Path, participant_label: Sequence[str] | None,
                  provenance: dict, name: str = "group_wf") -> pe.Workflow:
    """Workflow of the group level.

    For now it collects each subject's within-subject decoding scores into
    ``group/task-T_desc-MODEL_withinsubject.tsv`` (cross-subject models arrive
    with a later release).
    """
    wf = pe.Workflow(name=name)
    collect = pe.Node(RunStep(step=step_path(group_withinsubject_step), kwargs={
        "output_dir": str(output_dir),
        "participant_label": list(participant_label) if participant_label else None,
        "provenance": dict(provenance)}), name="withinsubject", overwrite=True)
    wf.add_nodes([collect])
    return wf
