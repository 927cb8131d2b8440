"""Group level: summaries and models across the subjects' participant-level outputs.

The group level reads what the participant level wrote (derivatives and, where
an analysis needs them, the samples in the work directory); it never runs
participant steps again. Each registered analysis with a ``wire_group``
function adds its group nodes through a :class:`GroupWorkflow`; the
within-subject decoding table is collected whenever decoding outputs exist.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from nipype.interfaces.utility import Merge
from nipype.pipeline import engine as pe

from bids_affect.steps.group import group_withinsubject_step, inference_settings
from bids_affect.workflows.builder import WorkflowBuilder
from bids_affect.workflows.participant import SharedSettings


class GroupWorkflow(WorkflowBuilder):
    """The group workflow under construction; analyses add their nodes through it."""

    def __init__(self, *, output_dir: Path, participant_label: Sequence[str] | None,
                 options: Mapping[str, Any], shared: SharedSettings, master_seed: int,
                 provenance: Mapping[str, Any], work_dir: Path | None = None,
                 name: str = "group_wf", workflow: pe.Workflow | None = None,
                 participants: Mapping[tuple[str, str], pe.Workflow] | None = None):
        self.output_dir = Path(output_dir)
        self.work_dir = None if work_dir is None else Path(work_dir)
        self.participant_label = list(participant_label) if participant_label else None
        self.options = dict(options)
        self.shared = shared
        #: Each (subject, task)'s participant sub-workflow (labels and samples), when a
        #: group analysis reads the samples; the group's nodes share its workflow.
        self.participants = dict(participants or {})
        super().__init__(workflow if workflow is not None else pe.Workflow(name=name),
                         {"output_dir": str(output_dir),
                          "participant_label": self.participant_label,
                          "provenance": dict(provenance)}, "group", ("group",), master_seed)


    def connect_samples(self, node: pe.Node, task: str | None = None) -> list[str]:
        """Feed ``node.samples_dirs`` with each subject's samples folder; the subjects.

        Only the subjects of ``task`` when given; in subject order.
        """
        keys = [key for key in sorted(self.participants) if task is None or key[1] == task]
        merge = pe.Node(Merge(len(keys)), name=f"merge_samples_{node.name}",
                        run_without_submitting=True)
        for index, key in enumerate(keys, start=1):
            self.wf.connect(self.participants[key], "outputnode.samples_dir", merge,
                            f"in{index}")
        self.wf.connect(merge, "out", node, "samples_dirs")
        return [subject for subject, _ in keys]


def init_group_wf(*, output_dir: Path, participant_label: Sequence[str] | None,
                  provenance: dict, analyses: Sequence[str] = (),
                  options: Mapping[str, Any] | None = None,
                  shared: SharedSettings | None = None, master_seed: int = 0,
                  work_dir: Path | None = None, collect_decoding: bool = True,
                  name: str = "group_wf", workflow: pe.Workflow | None = None,
                  participants: Mapping[tuple[str, str], pe.Workflow] | None = None
                  ) -> pe.Workflow:
    """Workflow of the group level.

    ``collect_decoding``: collect each subject's within-subject decoding scores
    into ``group/task-T_desc-MODEL_withinsubject.tsv``. Then each analysis of
    ``analyses`` with a group part adds its nodes (``Analysis.wire_group``).
    ``workflow`` and ``participants``: the workflow to add the group's nodes to,
    holding the subjects' labels and samples sub-workflows (see
    :meth:`GroupWorkflow.connect_samples`); default a workflow of its own.
    """
    from bids_affect.analyses import ANALYSES

    builder = GroupWorkflow(output_dir=output_dir, participant_label=participant_label,
                            options=options or {}, shared=shared or SharedSettings(),
                            master_seed=master_seed, provenance=provenance,
                            work_dir=work_dir, name=name, workflow=workflow,
                            participants=participants)
    if collect_decoding:
        builder.node(group_withinsubject_step, "withinsubject", {
            "output_dir": str(output_dir), "participant_label": builder.participant_label,
            "provenance": dict(provenance),
            "inference": inference_settings(builder.options.get("group"))}, sink=True)
    for analysis_name in analyses:
        analysis = ANALYSES[analysis_name]
        if analysis.wire_group is not None:
            analysis.wire_group(builder, builder.options.get(analysis_name))
    return builder.wf
