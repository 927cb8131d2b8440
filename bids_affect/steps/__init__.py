"""The units of work of the BIDS-App, one module per analysis.

A step is a pure function ``step(out_dir, **kwargs)`` that reads its inputs
(run records, upstream step folders), calls the library and writes its
results into ``out_dir``; a nipype node
(:class:`bids_affect.interfaces.RunStep`) or a notebook calls it. The
``write_*`` steps are the sinks: they turn step results into derivatives,
through :func:`bids_affect.io.derivatives.output_path` only. No science lives
here: steps read, call the library, and write.

- :mod:`~bids_affect.steps.labels`: labels per volume and clean samples (every run);
- :mod:`~bids_affect.steps.decoding`, :mod:`~bids_affect.steps.occlusion`,
  :mod:`~bids_affect.steps.rsa`: one module per analysis, each with its options
  dataclass (its config section and flags), its steps and its wiring;
- :mod:`~bids_affect.steps.group`: the group level;
- :mod:`~bids_affect.steps._outputs`: what every sink shares.

Nodes name their step by its import path (``"bids_affect.steps.decoding:decode_step"``,
see :func:`step_path`), so a step of a plug-in or a test module runs in any
nipype worker process.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable


def step_path(function: Callable) -> str:
    """``"module:function"``, the name a node gives its step.

    Examples
    --------
    >>> from bids_affect.steps.labels import labels_step
    >>> step_path(labels_step)
    'bids_affect.steps.labels:labels_step'
    """
    return f"{function.__module__}:{function.__qualname__}"


def resolve_step(path: str) -> Callable[..., None]:
    """The step function named ``"module:function"`` (see :func:`step_path`)."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)
