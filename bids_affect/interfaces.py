"""The nipype interface that runs one step of the BIDS-App inside a node.

Every node of the participant and group workflows is a :class:`RunStep`: it
calls one step function (named ``"module:function"``, see
:func:`bids_affect.steps.step_path`) with JSON-ready
keyword arguments and the folders of upstream steps, writing into the node's
own folder in the work directory. nipype hashes the arguments and the input
files, so a rerun reuses every step that finished and resumes the others.
"""

from __future__ import annotations

from pathlib import Path

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    Directory,
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from bids_affect.exceptions import BidsAffectError


class _RunStepInputSpec(BaseInterfaceInputSpec):
    step = traits.Str(mandatory=True, desc="the step function, as 'module:function'")
    kwargs = traits.Dict(mandatory=True, desc="JSON-ready keyword arguments of the step")
    in_files = InputMultiObject(File(exists=True),
                                desc="input files whose change must invalidate the cache")
    labels_dir = Directory(exists=True, desc="output folder of the labels step")
    samples_dir = Directory(exists=True, desc="output folder of the samples step")
    decoding_dirs = InputMultiObject(Directory(exists=True),
                                     desc="output folders of decoding steps")
    samples_dirs = InputMultiObject(Directory(exists=True),
                                    desc="samples folders of several subjects (group steps)")
    progress_label = traits.Str(nohash=True, desc="what progress lines name (e.g. "
                                                  "'sub-01 decode_ridge')")


class _RunStepOutputSpec(TraitedSpec):
    out_dir = Directory(exists=True, desc="folder holding the step's results")


class RunStep(SimpleInterface):
    """Run the step ``module:function`` as ``step(out_dir, **kwargs, **upstream folders)``."""

    input_spec = _RunStepInputSpec
    output_spec = _RunStepOutputSpec
    # Steps resume from what they left in their folder (CNN checkpoints); nipype must
    # not empty the folder of an unfinished node before rerunning it.
    can_resume = True

    def _run_interface(self, runtime):
        from bids_affect import progress
        from bids_affect.steps import resolve_step

        out_dir = Path(runtime.cwd) / "result"
        out_dir.mkdir(exist_ok=True)
        kwargs = dict(self.inputs.kwargs)
        for name in ("labels_dir", "samples_dir"):
            value = getattr(self.inputs, name)
            if isdefined(value):
                kwargs[name] = Path(value)
        for name in ("decoding_dirs", "samples_dirs"):
            value = getattr(self.inputs, name)
            if isdefined(value):
                kwargs[name] = [Path(p) for p in value]
        label = self.inputs.progress_label if isdefined(self.inputs.progress_label) else ""
        with progress.context(label or self.inputs.step):
            try:
                resolve_step(self.inputs.step)(out_dir, **kwargs)
            except BidsAffectError as err:
                if not label or "sub-" in str(err):
                    raise
                # Name the subject and step: "decoding needs at least 2 classes" alone
                # does not say whose data.
                problem = f"{err.path}: {err.problem}" if err.path else err.problem
                raise type(err)(f"{label}: {problem}", fix=err.fix) from err
        self._results["out_dir"] = str(out_dir)
        return runtime
