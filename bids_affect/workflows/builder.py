"""What the participant and group workflow builders share: nodes, sinks, seeds, merges."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

from nipype.interfaces.utility import Merge
from nipype.pipeline import engine as pe

from bids_affect.config import derive_seed
from bids_affect.interfaces import RunStep
from bids_affect.steps import step_path


class WorkflowBuilder:
    """A workflow under construction; analyses add their nodes through it.

    Parameters
    ----------
    wf : nipype Workflow
        The workflow nodes go into.
    common : mapping
        Keyword arguments of every sink (output folder, names, provenance).
    label : str
        What progress lines and errors name the nodes by (``sub-01``, ``group``).
    seed_keys : tuple
        Keys every seed derives from, after the master seed.
    master_seed : int
        The run's master seed.
    """

    def __init__(self, wf: pe.Workflow, common: Mapping[str, Any], label: str,
                 seed_keys: Sequence[str | int], master_seed: int):
        self.wf = wf
        self.common = dict(common)
        self._label = label
        self._seed_keys = tuple(seed_keys)
        self._master_seed = int(master_seed)
        self._shared_nodes: dict[Hashable, pe.Node] = {}

    def node(self, step: Callable[..., None], name: str, kwargs: Mapping[str, Any],
             in_files: Sequence[str] = (), sink: bool = False) -> pe.Node:
        """A node running ``step`` (see :class:`~bids_affect.interfaces.RunStep`).

        ``in_files`` are inputs whose change must invalidate the node's cache;
        a ``sink`` always reruns (it only copies finished results into place).
        """
        node = pe.Node(RunStep(step=step_path(step), kwargs=dict(kwargs),
                               progress_label=f"{self._label} {name}"),
                       name=name, overwrite=sink, run_without_submitting=sink)
        if in_files:
            node.inputs.in_files = list(in_files)
        self.wf.add_nodes([node])
        return node

    def sink(self, step: Callable[..., None], name: str) -> pe.Node:
        """A sink running ``step`` with the output names and provenance."""
        return self.node(step, name, self.common, sink=True)

    def seed(self, *keys: str | int) -> int:
        """The seed of one piece of work (e.g. a decoder's name), from the master seed."""
        return derive_seed(self._master_seed, *self._seed_keys, *keys)

    def shared_node(self, key: Hashable, make: Callable[[], pe.Node]) -> pe.Node:
        """The node ``make()`` builds, built once per ``key`` however many ask."""
        if key not in self._shared_nodes:
            self._shared_nodes[key] = make()
        return self._shared_nodes[key]

    def merge(self, name: str, nodes: Sequence[pe.Node]) -> pe.Node:
        """A node whose ``out`` lists the result folders of ``nodes``, in order."""
        merge = pe.Node(Merge(len(nodes)), name=name, run_without_submitting=True)
        for index, node in enumerate(nodes, start=1):
            self.wf.connect(node, "out_dir", merge, f"in{index}")
        return merge
