"""What every step and sink shares: run records, sources, cleaning parameters."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bids_affect.io import derivatives as deriv
from bids_affect.io.layout import RunRecord


def records(runs: Sequence[Mapping[str, Any]]) -> list[RunRecord]:
    """Run records from their JSON-ready dictionaries (node arguments)."""
    return [RunRecord.from_dict(run) for run in runs]


def sources(provenance: Mapping[str, Any], paths: Sequence[Path | str | None]) -> list[str]:
    """BIDS URIs of the input files (``Sources`` of a sidecar)."""
    resolver = deriv.SourceResolver({name: Path(p) for name, p in
                                     provenance.get("links", {}).items()})
    return [resolver.uri(path) for path in paths if path]


def read_json(path: Path) -> dict[str, Any]:
    """A JSON file's content."""
    return json.loads(Path(path).read_text())


def cleaning_parameters(samples_dir: Path | None) -> dict[str, Any]:
    """Cleaning parameters of a sample set (masking, filters, confounds), for sidecars."""
    from bids_affect.bold import MANIFEST_FILE

    if samples_dir is None:
        return {}
    return dict(read_json(Path(samples_dir) / MANIFEST_FILE)["parameters"])


def run_entities(run: RunRecord) -> dict[str, Any]:
    """Entities that tell a run's outputs apart (session, acquisition, run)."""
    return {"session": run.session, "acquisition": run.entities.get("acquisition"),
            "run": run.run}


def data_space(samples) -> str | None:
    """The space of a sample set's runs (None: raw data in native space)."""
    return samples.manifest["runs"][0].get("space")


def participant_outputs(output_dir: Path | str, kind: str,
                        participant_label: Sequence[str] | None, *, what: str,
                        analyses: str) -> list[deriv.FoundOutput]:
    """Participant-level outputs of ``kind`` of the selected subjects (66 when none).

    ``what`` names them in the error (``decoding outputs
    (sub-*/func/*_decoding.json)``), ``analyses`` is the ``--analyses`` value
    that writes them.

    Examples
    --------
    >>> import tempfile
    >>> participant_outputs(tempfile.mkdtemp(), "decoding", None, what="decoding outputs",
    ...                     analyses="decoding")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    bids_affect.exceptions.InputMissingError: ...: no participant-level decoding outputs; ...
    """
    from bids_affect.exceptions import InputMissingError

    found = [item for item in deriv.find_outputs(Path(output_dir), kind)
             if "subject" in item.entities
             and (not participant_label or item.entities["subject"] in participant_label)]
    if not found:
        raise InputMissingError(
            f"no participant-level {what}",
            path=output_dir,
            fix=f"run the participant level with --analyses {analyses} first")
    return found


def by_task_and_desc(found: Sequence[deriv.FoundOutput]
                     ) -> list[tuple[tuple[str, str], list[deriv.FoundOutput]]]:
    """Outputs grouped by task and ``desc``, sorted (one group result per pair).

    Examples
    --------
    >>> found = [deriv.FoundOutput(Path(name), deriv.parse_entities(name)) for name in (
    ...     "sub-02_task-movie_desc-a_x.tsv", "sub-01_task-movie_desc-a_x.tsv",
    ...     "sub-01_task-movie_desc-b_x.tsv")]
    >>> [(key, len(items)) for key, items in by_task_and_desc(found)]
    [(('movie', 'a'), 2), (('movie', 'b'), 1)]
    """
    groups: dict[tuple[str, str], list[deriv.FoundOutput]] = {}
    for item in found:
        groups.setdefault((item.entities["task"], item.entities["desc"]), []).append(item)
    return sorted(groups.items())
