"""Dataset index: pybids queries that return typed run records.

One query layer for the whole app. :func:`load_layout` indexes a raw BIDS
dataset (plus fMRIPrep derivatives, given with ``-d`` or found in
``bids_dir/derivatives/``), reusing a pybids database when asked;
:func:`collect_runs` returns one :class:`RunRecord` per BOLD run selected by
participant labels, sessions, tasks and a BIDS filter file.

Examples
--------
>>> from bids_affect.datasets import make_synthetic_dataset
>>> import tempfile
>>> root = make_synthetic_dataset(tempfile.mkdtemp(), n_subjects=1, n_runs=2,
...                               n_volumes=20, shape=(8, 9, 8))
>>> layout = load_layout(root)
>>> runs = collect_runs(layout, participant_label=["01"])
>>> [(r.subject, r.run, r.n_volumes, r.tr) for r in runs]
[('01', 1, 20, 2.0), ('01', 2, 20, 2.0)]
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
from filelock import FileLock

from bids_affect.exceptions import (
    InputDataError,
    InputMissingError,
    NoDataSelected,
    UsageError,
)
from bids_affect.io.files import read_settings_file

LOGGER = logging.getLogger("bids_affect.layout")

#: pybids queries of the inputs, by name; ``--bids-filter-file`` updates them.
DEFAULT_QUERIES: dict[str, dict[str, Any]] = {
    "bold": {"datatype": "func", "suffix": "bold", "extension": [".nii", ".nii.gz"]},
}

#: Tolerance between the sidecar's RepetitionTime and the NIfTI header (fraction).
TR_TOLERANCE = 0.01

_CONTAINER_HINT = ("if you run a container, check that bids_dir is mounted "
                   "(docker -v /data:/data:ro; singularity -B /data)")


@dataclass(frozen=True)
class RunRecord:
    """One BOLD run and everything needed to analyse it.

    ``bold`` is the file analyses read: fMRIPrep's preprocessed BOLD in the
    requested space when derivatives are available, the raw BOLD otherwise
    (``raw_bold`` is always the raw file).
    """

    subject: str
    session: str | None
    task: str
    run: int | None
    raw_bold: Path
    bold: Path
    tr: float
    n_volumes: int
    shape: tuple[int, ...]
    start_time: float = 0.0
    slice_timing: tuple[float, ...] | None = None
    events: Path | None = None
    space: str | None = None
    mask: Path | None = None
    confounds: Path | None = None
    entities: Mapping[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """A short, unique, file-name-safe name of the run (``ses-1_task-movie_run-2``)."""
        parts = [f"ses-{self.session}" if self.session else None, f"task-{self.task}"]
        if self.entities.get("acquisition"):
            parts.append(f"acq-{self.entities['acquisition']}")
        if self.run is not None:
            parts.append(f"run-{self.run}")
        return "_".join(p for p in parts if p)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (paths as strings)."""
        out = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if isinstance(value, Path):
                value = str(value)
            elif isinstance(value, Mapping):
                value = dict(value)
            out[name] = value
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> RunRecord:
        """Inverse of :meth:`to_dict`."""
        values = dict(values)
        for name in ("raw_bold", "bold", "events", "mask", "confounds"):
            if values.get(name) is not None:
                values[name] = Path(values[name])
        for name in ("shape", "slice_timing"):
            if values.get(name) is not None:
                values[name] = tuple(values[name])
        return cls(**values)


def strip_subject_prefix(labels: Sequence[str] | None) -> list[str] | None:
    """Participant labels without ``sub-`` (the only place labels are normalised).

    Examples
    --------
    >>> strip_subject_prefix(["sub-01", "02"])
    ['01', '02']
    """
    if labels is None:
        return None
    return [label[4:] if label.startswith("sub-") else label for label in labels]


def check_bids_dir(bids_dir: Path) -> Path:
    """Check that ``bids_dir`` is a BIDS folder; return its absolute path."""
    bids_dir = Path(bids_dir).absolute()
    if not bids_dir.is_dir():
        raise InputMissingError("bids_dir does not exist or is not a folder", path=bids_dir,
                                fix=f"give the path of a BIDS dataset; {_CONTAINER_HINT}")
    if not (bids_dir / "dataset_description.json").is_file():
        raise InputMissingError(
            "not a BIDS folder (dataset_description.json is missing)", path=bids_dir,
            fix=f"point bids_dir at the dataset's root folder; {_CONTAINER_HINT}")
    return bids_dir


def find_fmriprep_derivatives(bids_dir: Path, exclude: Sequence[Path] = ()) -> dict[str, Path]:
    """fMRIPrep derivatives found in ``bids_dir/derivatives/`` (never our own outputs)."""
    found = {}
    excluded = {Path(p).resolve() for p in exclude}
    for folder in sorted((Path(bids_dir) / "derivatives").glob("*")):
        description = folder / "dataset_description.json"
        if folder.resolve() in excluded or not description.is_file():
            continue
        try:
            generated = json.loads(description.read_text()).get("GeneratedBy", [])
        except (json.JSONDecodeError, OSError):
            continue
        names = {str(item.get("Name", "")).lower() for item in generated if isinstance(item, dict)}
        if "fmriprep" in names:
            found[folder.name] = folder
    return found


def load_layout(bids_dir: Path, derivatives: Mapping[str, Path] | None = None,
                database_dir: Path | None = None):
    """Index ``bids_dir`` (and derivatives) with pybids; reuse ``database_dir``.

    With ``database_dir``, the first job indexes and saves the database while
    holding a file lock; later jobs (or jobs started at the same time) wait for
    the lock and load the saved index instead of indexing again.
    """
    from bids import BIDSLayout
    from bids.exceptions import BIDSValidationError

    bids_dir = check_bids_dir(bids_dir)
    derivative_paths = {name: Path(path).absolute() for name, path in (derivatives or {}).items()}
    for name, path in derivative_paths.items():
        if not (path / "dataset_description.json").is_file():
            raise InputMissingError(
                f"derivatives '{name}' have no dataset_description.json", path=path,
                fix="give the root folder of an fMRIPrep output with -d NAME=PATH")

    def build(reset: bool = False):
        return BIDSLayout(
            bids_dir,
            validate=True,
            derivatives=[str(p) for p in derivative_paths.values()] or False,
            database_path=None if database_dir is None else str(database_dir),
            reset_database=reset,
        )

    try:
        if database_dir is None:
            return build()
        database_dir = Path(database_dir).absolute()
        database_dir.mkdir(parents=True, exist_ok=True)
        with FileLock(str(database_dir / "bids_affect.lock"), timeout=3600):
            layout = build()
            if not _database_matches(layout, bids_dir, derivative_paths):
                LOGGER.warning("The database in %s indexes another dataset or other "
                               "derivatives; indexing %s again.", database_dir, bids_dir)
                layout = build(reset=True)
            return layout
    except BIDSValidationError as err:
        raise InputDataError(f"pybids cannot index the dataset ({err})", path=bids_dir,
                             fix="run the bids-validator and correct the dataset") from err


def _database_matches(layout, bids_dir: Path, derivatives: Mapping[str, Path]) -> bool:
    indexed = {Path(d.root).resolve() for d in layout.derivatives.values()}
    wanted = {Path(p).resolve() for p in derivatives.values()}
    return Path(layout.root).resolve() == bids_dir.resolve() and indexed == wanted


def _to_pybids_query(filters: Mapping[str, Any]) -> dict[str, Any]:
    """Turn filter-file values into pybids values: ``null`` -> absent, ``"*"`` -> any."""
    from bids.layout import Query

    def convert(value):
        if value is None:
            return Query.NONE
        if value == "*":
            return Query.ANY
        if isinstance(value, list):
            return [convert(v) for v in value]
        return value

    return {key: convert(value) for key, value in filters.items()}


def build_queries(bids_filters: Mapping[str, Mapping[str, Any]] | None) -> dict[str, dict]:
    """Default queries updated with a BIDS filter file's content (fMRIPrep's format)."""
    queries = {name: dict(query) for name, query in DEFAULT_QUERIES.items()}
    for name, query in (bids_filters or {}).items():
        if name not in queries:
            raise UsageError(f"BIDS filter query '{name}' is unknown",
                             fix=f"use one of {', '.join(queries)} as top-level keys")
        if not isinstance(query, Mapping):
            raise UsageError(f"BIDS filter query '{name}' must be an object of entities")
        queries[name].update(query)
    return queries


def load_filter_file(path: Path) -> dict[str, Any]:
    """Read a ``--bids-filter-file`` (JSON object of queries)."""
    content = read_settings_file(path, "BIDS filter file", json.loads, (ValueError,), "JSON")
    if not isinstance(content, dict):
        raise UsageError("BIDS filter file must hold a JSON object", path=path,
                         fix='write a JSON object such as {"bold": {"session": "1"}}')
    try:
        build_queries(content)
    except UsageError as err:
        raise UsageError(err.problem, path=path, fix=err.fix) from None
    return content


def select_subjects(layout, participant_label: Sequence[str] | None) -> list[str]:
    """Subjects to process; unknown labels raise :class:`InputMissingError` (66)."""
    available = sorted(layout.get_subjects())
    labels = strip_subject_prefix(participant_label)
    if not labels:
        if not available:
            raise NoDataSelected("the dataset has no subjects", path=layout.root,
                                 fix="check that bids_dir is the dataset's root")
        return available
    missing = [label for label in labels if label not in available]
    if missing:
        raise InputMissingError(
            f"participant(s) {', '.join('sub-' + m for m in missing)} not found "
            f"(available: {', '.join(available) or 'none'})", path=layout.root,
            fix=f"check --participant-label; {_CONTAINER_HINT}")
    return list(dict.fromkeys(labels))


def collect_runs(layout, participant_label: Sequence[str] | None = None,
                 session_label: Sequence[str] | None = None,
                 task: Sequence[str] | str | None = None,
                 bids_filters: Mapping[str, Any] | None = None,
                 space: str | None = "MNI152NLin2009cAsym") -> list[RunRecord]:
    """All selected BOLD runs as :class:`RunRecord`, sorted by subject, session, task, run.

    Raises :class:`NoDataSelected` (18) when the selection is empty.
    """
    subjects = select_subjects(layout, participant_label)
    query = dict(build_queries(bids_filters)["bold"])
    query["subject"] = subjects
    if session_label:
        query["session"] = list(session_label)
    if task:
        query["task"] = [task] if isinstance(task, str) else list(task)
    files = layout.get(scope="raw", return_type="object", **_to_pybids_query(query))
    if not files:
        raise NoDataSelected(
            f"no BOLD run matches the selection ({_describe(query)})", path=layout.root,
            fix="check --participant-label, --session-label, --task-id and the filter file")
    has_derivatives = bool(layout.derivatives)
    runs = [_run_record(layout, bold, space if has_derivatives else None) for bold in files]
    return sorted(runs, key=lambda r: (r.subject, r.session or "", r.task, r.run or 0, r.key))


def _describe(query: Mapping[str, Any]) -> str:
    skip = {"datatype", "suffix", "extension"}
    return ", ".join(f"{k}={v}" for k, v in query.items() if k not in skip) or "all"


def _run_record(layout, bold, space: str | None) -> RunRecord:
    entities = {k: v for k, v in bold.get_entities().items()
                if k in ("subject", "session", "task", "acquisition", "run", "direction",
                         "echo", "reconstruction")}
    metadata = layout.get_metadata(bold.path)
    path = Path(bold.path)
    header = read_header(path)
    tr = check_repetition_time(path, metadata, header)
    shape = check_bold_shape(path, header)
    record = dict(
        subject=entities["subject"], session=entities.get("session"), task=entities["task"],
        run=_as_int(entities.get("run")), raw_bold=path, bold=path, tr=tr,
        n_volumes=shape[3], shape=shape,
        start_time=float(metadata.get("StartTime", 0.0) or 0.0),
        slice_timing=tuple(metadata["SliceTiming"]) if metadata.get("SliceTiming") else None,
        events=_find_events(layout, bold), entities=entities,
    )
    if space is not None:
        record.update(_find_fmriprep_files(layout, entities, space, path))
    return RunRecord(**record)


def _as_int(value):
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return value


def read_header(path: Path):
    """NIfTI header of ``path``; unreadable files raise :class:`InputDataError` (65)."""
    if Path(path).stat().st_size == 0:
        raise InputDataError("BOLD file is empty (0 bytes)", path=path,
                             fix="re-copy or re-convert the file")
    try:
        return nib.load(path).header
    except Exception as err:  # nibabel raises many types for corrupt files
        raise InputDataError(f"cannot read NIfTI file ({type(err).__name__}: {err})", path=path,
                             fix="re-copy or re-convert the file; check it with nib-ls") from err


def check_bold_shape(path: Path, header) -> tuple[int, ...]:
    """Shape of a BOLD series from its header; anything but 4D with 2+ volumes is 65."""
    shape = tuple(int(n) for n in header.get_data_shape())
    if len(shape) != 4 or shape[3] < 2:
        what = f"a {len(shape)}D image" if len(shape) != 4 else f"{shape[3]} volume"
        raise InputDataError(
            f"BOLD file is {what}, not a time series (shape {shape}; a 4D series of 2 or "
            "more volumes is needed)", path=path,
            fix="give the run's 4D BOLD series, not a single volume or a reference image")
    return shape


def check_repetition_time(path: Path, metadata: Mapping[str, Any], header) -> float:
    """RepetitionTime from the sidecar, checked against the NIfTI header (1%)."""
    tr = metadata.get("RepetitionTime")
    if tr is None:
        raise InputDataError("RepetitionTime is missing from the BOLD sidecar", path=path,
                             fix="add RepetitionTime (seconds) to the JSON sidecar")
    tr = float(tr)
    zooms = header.get_zooms()
    if len(zooms) > 3 and zooms[3] > 0:
        units = header.get_xyzt_units()[1] if hasattr(header, "get_xyzt_units") else "sec"
        header_tr = float(zooms[3]) / (1000.0 if units == "msec" else 1.0)
        if abs(header_tr - tr) > TR_TOLERANCE * tr:
            raise InputDataError(
                f"RepetitionTime {tr} s in the sidecar disagrees with {header_tr} s in the "
                "NIfTI header (more than 1%)", path=path,
                fix="correct the sidecar or the header (pixdim[4])")
    return tr


def _find_events(layout, bold) -> Path | None:
    """The events file that applies to ``bold`` under the BIDS inheritance principle.

    A candidate applies when each of its entities equals the BOLD's (so another
    run's events never do); among those, the most specific one wins (more
    entities, then the deeper folder), e.g. ``sub-01_task-movie_run-2_events.tsv``
    over a top-level ``task-movie_events.tsv``.
    """
    own = bold.get_entities()
    applicable = []
    for candidate in layout.get(suffix="events", extension=".tsv", scope="raw",
                                task=own.get("task")):
        entities = {key: value for key, value in candidate.get_entities().items()
                    if key not in _NON_MATCHING_ENTITIES}
        if all(own.get(key) == value for key, value in entities.items()):
            applicable.append((len(entities), len(Path(candidate.path).parts), candidate.path))
    return Path(max(applicable)[2]) if applicable else None


#: Entities that do not decide whether a sidecar-like file applies to a BOLD run.
_NON_MATCHING_ENTITIES = frozenset({"suffix", "extension", "datatype"})


def _find_fmriprep_files(layout, entities: Mapping[str, Any], space: str,
                         raw_path: Path) -> dict[str, Any]:
    """Preprocessed BOLD in ``space``, its brain mask and confounds from derivatives."""
    base = {k: entities.get(k) for k in ("subject", "session", "task", "acquisition", "run")}
    base = _to_pybids_query(base)

    def get(**query):
        return layout.get(scope="derivatives", return_type="filename", **base, **query)

    preproc = get(space=space, desc="preproc", suffix="bold", extension=[".nii", ".nii.gz"])
    if not preproc:
        spaces = sorted(set(layout.get(scope="derivatives", return_type="id", target="space",
                                       desc="preproc", suffix="bold", **base)))
        raise InputMissingError(
            f"no fMRIPrep preprocessed BOLD in space {space} for this run "
            f"(spaces found: {', '.join(spaces) or 'none'})", path=raw_path,
            fix="choose one of the spaces with --space, or run fMRIPrep with "
                f"--output-spaces {space}")
    mask = get(space=space, desc="brain", suffix="mask", extension=[".nii", ".nii.gz"])
    confounds = get(desc="confounds", suffix=["timeseries", "regressors"], extension=".tsv")
    preproc_path = Path(preproc[0])
    shape = check_bold_shape(preproc_path, read_header(preproc_path))
    # fMRIPrep's slice-timing correction moves every slice to the time it records as
    # StartTime in the preprocessed BOLD's sidecar; that time, when given, labels volumes.
    start_time = layout.get_metadata(str(preproc_path)).get("StartTime")
    found = {} if start_time is None else {"start_time": float(start_time)}
    return {**found, "bold": preproc_path, "space": space, "shape": shape,
            "n_volumes": shape[3],
            "mask": Path(mask[0]) if mask else None,
            "confounds": Path(confounds[0]) if confounds else None}
