"""Group level: summaries and models across the subjects' participant-level outputs.

The group level reads what the participant level wrote (derivatives and, where
an analysis needs them, the samples in the work directory); it never runs
participant steps again. Each registered analysis with a ``wire_group``
function adds its group nodes through a :class:`GroupWorkflow`; the
within-subject decoding table is collected whenever decoding outputs exist.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from nipype.pipeline import engine as pe

from bids_affect.config import derive_seed
from bids_affect.interfaces import RunStep
from bids_affect.steps import step_path
from bids_affect.steps.group import group_withinsubject_step
from bids_affect.workflows.participant import SharedSettings


class GroupWorkflow:
    """The group workflow under construction; analyses add their nodes through it."""

    def __init__(self, *, output_dir: Path, participant_label: Sequence[str] | None,
                 options: Mapping[str, Any], shared: SharedSettings, master_seed: int,
                 provenance: Mapping[str, Any], work_dir: Path | None = None,
                 name: str = "group_wf"):
        self.output_dir = Path(output_dir)
        self.work_dir = None if work_dir is None else Path(work_dir)
        self.participant_label = list(participant_label) if participant_label else None
        self.options = dict(options)
        self.shared = shared
        self._master_seed = int(master_seed)
        self.common = {"output_dir": str(output_dir),
                       "participant_label": self.participant_label,
                       "provenance": dict(provenance)}
        self.wf = pe.Workflow(name=name)

    def node(self, step: Callable[..., None], name: str, kwargs: Mapping[str, Any],
             in_files: Sequence[str] = (), sink: bool = False) -> pe.Node:
        """A node running ``step`` (see :class:`~bids_affect.interfaces.RunStep`)."""
        node = pe.Node(RunStep(step=step_path(step), kwargs=dict(kwargs),
                               progress_label=f"group {name}"),
                       name=name, overwrite=sink, run_without_submitting=sink)
        if in_files:
            node.inputs.in_files = list(in_files)
        self.wf.add_nodes([node])
        return node

    def sink(self, step: Callable[..., None], name: str) -> pe.Node:
        """A sink running ``step`` with the output folder, selection and provenance."""
        return self.node(step, name, self.common, sink=True)

    def seed(self, *keys: str | int) -> int:
        """The seed of one piece of the group's work."""
        return derive_seed(self._master_seed, "group", *keys)


def init_group_wf(*, output_dir: Path, participant_label: Sequence[str] | None,
                  provenance: dict, analyses: Sequence[str] = (),
                  options: Mapping[str, Any] | None = None,
                  shared: SharedSettings | None = None, master_seed: int = 0,
                  work_dir: Path | None = None, collect_decoding: bool = True,
                  name: str = "group_wf") -> pe.Workflow:
    """Workflow of the group level.

    ``collect_decoding``: collect each subject's within-subject decoding scores
    into ``group/task-T_desc-MODEL_withinsubject.tsv``. Then each analysis of
    ``analyses`` with a group part adds its nodes (``Analysis.wire_group``).
    """
    from bids_affect.analyses import ANALYSES

    builder = GroupWorkflow(output_dir=output_dir, participant_label=participant_label,
                            options=options or {}, shared=shared or SharedSettings(),
                            master_seed=master_seed, provenance=provenance,
                            work_dir=work_dir, name=name)
    if collect_decoding:
        builder.node(group_withinsubject_step, "withinsubject", {
            "output_dir": str(output_dir), "participant_label": builder.participant_label,
            "provenance": dict(provenance)}, sink=True)
    for analysis_name in analyses:
        analysis = ANALYSES[analysis_name]
        if analysis.wire_group is not None:
            analysis.wire_group(builder, builder.options.get(analysis_name))
    return builder.wf
