"""Participant level: one nipype workflow per subject and task.

Labels -> clean samples -> the nodes of each analysis asked for, each step
followed by a sink that writes its derivatives. The analyses add their own
nodes (their ``wire`` function in :mod:`bids_affect.analyses`) through a
:class:`ParticipantWorkflow`, so this module knows no analysis by name. The
factory takes every setting as an argument; only
:mod:`bids_affect.workflows.base` reads the configuration.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nipype.interfaces.utility import IdentityInterface
from nipype.pipeline import engine as pe

from bids_affect.steps.labels import labels_step, samples_step, write_labels_step
from bids_affect.workflows.builder import WorkflowBuilder

#: Fields of each subject workflow's ``outputnode``.
OUTPUT_FIELDS = ("labels_dir", "samples_dir", "model_dirs", "encoding_dir")


@dataclass(frozen=True)
class SharedSettings:
    """Settings several analyses read (``[analysis]`` and the runtime)."""

    models: tuple[str, ...] = ("ridge",)
    device: str = "auto"
    num_threads: int | None = None
    roi_atlas: str | None = None


class ParticipantWorkflow(WorkflowBuilder):
    """One subject's workflow under construction; analyses add their nodes through it.

    It holds the labels and samples nodes every analysis reads, builds nodes
    and sinks (:meth:`node`, :meth:`sink`), derives each piece of work's seed
    from the master seed (:meth:`seed`), makes nodes that several analyses
    share once (:meth:`shared_node`, e.g. a decoder that occlusion and RSA
    both read), and exposes results on ``outputnode`` (:meth:`expose`) for
    whatever consumes this subject's work.
    """

    def __init__(self, *, subject: str, task: str, runs: Sequence[dict[str, Any]],
                 output_dir: Path, label_spec: Mapping[str, Any],
                 cleaning: Mapping[str, Any], options: Mapping[str, Any],
                 shared: SharedSettings, master_seed: int, provenance: Mapping[str, Any],
                 n_jobs: int = 1, check_data: bool = False, name: str | None = None,
                 bids_dir: Path | None = None, cache_dir: Path | None = None):
        self.subject, self.task = subject, task
        #: The input dataset (stimuli live in its stimuli/ folder) and a cache shared by
        #: every subject's steps (movie features): work-directory folders.
        self.bids_dir = None if bids_dir is None else str(bids_dir)
        self.cache_dir = None if cache_dir is None else str(cache_dir)
        self.options = dict(options)
        self.shared = shared
        self.n_jobs = n_jobs
        self.min_volumes = int(label_spec["min_volumes"])
        self._exposed: dict[str, list[pe.Node]] = {}
        super().__init__(pe.Workflow(name=name or f"sub_{subject}_task_{task}_wf"),
                         {"output_dir": str(output_dir), "subject": subject, "task": task,
                          "runs": list(runs), "provenance": dict(provenance)},
                         f"sub-{subject}", (subject, task), master_seed)
        self.in_files = sorted({r[key] for r in runs
                                for key in ("bold", "events", "mask", "confounds")
                                if r.get(key)})
        self.outputnode = pe.Node(IdentityInterface(fields=list(OUTPUT_FIELDS)),
                                  name="outputnode")
        # Without analyses nothing else reads the BOLD data, so labelling checks it.
        self.labels = self.node(labels_step, "labels", {
            "runs": list(runs), "label_spec": dict(label_spec), "check_data": check_data},
            self.in_files)
        ds_labels = self.sink(write_labels_step, "ds_labels")
        self.wf.connect([(self.labels, ds_labels, [("out_dir", "labels_dir")]),
                         (self.labels, self.outputnode, [("out_dir", "labels_dir")])])
        self._cleaning = dict(cleaning)
        self._runs = list(runs)
        self._samples: pe.Node | None = None

    @property
    def samples(self) -> pe.Node:
        """The node of clean samples (made on first use: labels alone need none)."""
        if self._samples is None:
            self._samples = self.node(samples_step, "samples", {
                "runs": self._runs, "cleaning": self._cleaning}, self.in_files)
            self.wf.connect([(self.labels, self._samples, [("out_dir", "labels_dir")]),
                             (self._samples, self.outputnode, [("out_dir", "samples_dir")])])
        return self._samples

    def expose(self, field: str, node: pe.Node) -> None:
        """Put ``node``'s result folder on ``outputnode.field`` (a list, in order)."""
        self._exposed.setdefault(field, []).append(node)

    def finish(self) -> pe.Workflow:
        """Connect the exposed results to ``outputnode``; the finished workflow."""
        for field, nodes in self._exposed.items():
            self.wf.connect(self.merge(f"merge_{field}", nodes), "out", self.outputnode, field)
        return self.wf


def init_participant_wf(*, subject: str, task: str, runs: Sequence[dict[str, Any]],
                        output_dir: Path, label_spec: Mapping[str, Any],
                        cleaning: Mapping[str, Any], analyses: Sequence[str],
                        options: Mapping[str, Any], shared: SharedSettings,
                        master_seed: int, provenance: Mapping[str, Any],
                        n_jobs: int = 1, name: str | None = None,
                        bids_dir: Path | None = None, cache_dir: Path | None = None,
                        samples_only: bool = False) -> pe.Workflow:
    """Workflow of one subject and task.

    Parameters
    ----------
    subject, task : str
        Labels of the subject and task.
    runs : list of dict
        :meth:`~bids_affect.io.layout.RunRecord.to_dict` of each run (with events).
    output_dir : Path
        Root of the derivatives dataset.
    label_spec : dict
        :meth:`~bids_affect.io.annotations.LabelSpec.to_dict` of the label spec.
    cleaning : dict
        Keyword arguments of :func:`bids_affect.bold.build_samples`.
    analyses : list of str
        Validated analysis names, in registry order (empty: labels only).
    options : dict
        Each analysis's options dataclass, by analysis name (every registered
        analysis with options: an analysis may read another's, as occlusion
        reads the decoders').
    shared : SharedSettings
        Settings several analyses read.
    master_seed : int
        The run's master seed; each piece of work derives its own.
    provenance : dict
        ``Sources`` resolver links and ``Parameters`` for sidecars.
    n_jobs : int
        Processes a step may use.
    bids_dir, cache_dir : Path, optional
        The input dataset, and a work-directory folder shared by every subject.
    samples_only : bool
        Labels and samples only, as the participant level made them (the group
        level reuses them from the work directory, or rebuilds them).

    Returns
    -------
    nipype Workflow
        With an ``outputnode`` holding ``labels_dir``, ``samples_dir`` and
        ``model_dirs`` (the decoders' result folders).
    """
    from bids_affect.analyses import ANALYSES

    builder = ParticipantWorkflow(
        subject=subject, task=task, runs=runs, output_dir=output_dir, label_spec=label_spec,
        cleaning=cleaning, options=options, shared=shared, master_seed=master_seed,
        provenance=provenance, n_jobs=n_jobs,
        check_data=not analyses and not samples_only, name=name, bids_dir=bids_dir,
        cache_dir=cache_dir)
    if samples_only:
        builder.samples  # noqa: B018 (made on first use)
        return builder.finish()
    for analysis_name in analyses:
        analysis = ANALYSES[analysis_name]
        if analysis.wire is not None:  # None: a group-level analysis
            analysis.wire(builder, options.get(analysis_name))
    return builder.finish()
