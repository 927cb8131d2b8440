"""The registry of analyses: names, descriptions, availability and requirements.

``--analyses`` choices in ``--help`` and in the docs come from here. An
analysis of the roadmap that is not built yet is registered as unavailable, so
asking for it is refused with exit 64 and a clear line, never silently skipped.

Examples
--------
>>> check_analyses(["decoding"], ["ridge"])
['decoding']
>>> check_analyses(["none"], ["ridge"])
[]
>>> check_analyses(["encoding"], ["ridge"])
Traceback (most recent call last):
...
bids_affect.exceptions.UsageError: --analyses: 'encoding' is not available in bids_affect ...
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bids_affect.__about__ import __version__
from bids_affect.exceptions import UsageError


@dataclass(frozen=True)
class Analysis:
    """One analysis of the BIDS-App."""

    name: str
    description: str
    available: bool = True
    needs_cnn: bool = False


ANALYSES: dict[str, Analysis] = {
    analysis.name: analysis
    for analysis in (
        Analysis("decoding", "within-subject emotion decoders with run-wise CV, chance "
                             "level and permutation tests"),
        Analysis("occlusion", "occlusion sensitivity maps of CNN decoders, top voxels, UMAP",
                 needs_cnn=True),
        Analysis("rsa", "brain and CNN RDMs compared with Mantel tests"),
        Analysis("encoding", "voxelwise encoding models of stimulus CNN features",
                 available=False),
        Analysis("selectivity", "emotion selectivity of CNN channels", available=False),
        Analysis("synthesis", "stimuli that maximise an ROI's encoding model",
                 available=False),
    )
}


def list_analyses() -> dict[str, str]:
    """Names and descriptions of the available analyses."""
    return {name: a.description for name, a in ANALYSES.items() if a.available}


def check_analyses(names: Sequence[str], models: Sequence[str]) -> list[str]:
    """Validated analysis names (``["none"]`` -> ``[]``), in registry order.

    Raises :class:`UsageError` for unknown or unavailable analyses, and for
    analyses that need a CNN when ``models`` holds none.
    """
    names = [name.lower() for name in names]
    if names == ["none"]:
        return []
    if "none" in names:
        raise UsageError("--analyses: 'none' cannot be combined with other analyses")
    for name in names:
        if name not in ANALYSES:
            raise UsageError(f"--analyses: {name!r} is unknown",
                             fix=f"use one of {', '.join(list_analyses())}, or none")
        if not ANALYSES[name].available:
            raise UsageError(f"--analyses: {name!r} is not available in bids_affect "
                             f"{__version__} (it arrives in a later release)",
                             fix=f"use one of {', '.join(list_analyses())}")
    cnn_models = [model for model in models if model.startswith("cnn-")]
    for name in names:
        if ANALYSES[name].needs_cnn and not cnn_models:
            from bids_affect.decoding import list_models

            known = [m for m in list_models() if m.startswith("cnn-")]
            raise UsageError(
                f"--analyses {name} needs a CNN decoder, but --models has none "
                f"({', '.join(models)})",
                fix=f"add one of {', '.join(known)} to --models")
    return [name for name in ANALYSES if name in names]
