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
import math
import os
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import nibabel as nib
from filelock import FileLock

from bids_affect.exceptions import (
    BidsAffectError,
    InputDataError,
    InputMissingError,
    NoDataSelected,
    OutputError,
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

#: Sidecar keys that time the volumes, read by :func:`check_timing`.
TIMING_KEYS = ("RepetitionTime", "StartTime", "SliceTiming")

#: Top-level folders pybids does not index by default (``bids.layout.validation``), plus
#: ``derivatives`` (indexed as datasets of their own); hidden names are never indexed.
_NOT_INDEXED = frozenset({"code", "models", "sourcedata", "stimuli", "derivatives"})

#: What bids_affect writes into ``--bids-database-dir`` beside pybids' index.
_DATABASE_FILE = "layout_index.sqlite"  # pybids' name (bids.layout.db)
_FINGERPRINT_FILE = "bids_affect_index.json"
_LOCK_FILE = "bids_affect.lock"


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
    #: Continuous stimulus recordings (``recording-NAME_stim``) that apply to the run:
    #: name -> {"path": file, "metadata": its sidecar, inheritance applied}.
    stim_recordings: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

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
                value = {key: dict(item) if isinstance(item, Mapping) else item
                         for key, item in value.items()}
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


_EMPTY_LABEL_FIX = ("give labels such as 01 or sub-01, or leave the option out to process "
                    "every participant")


def strip_subject_prefix(labels: Sequence[str] | None) -> list[str] | None:
    """Participant labels without ``sub-`` (the only place labels are normalised).

    Raises
    ------
    UsageError
        A label that is empty once ``sub-`` is removed (exit 64): an empty label
        must not select every subject.

    Examples
    --------
    >>> strip_subject_prefix(["sub-01", "02"])
    ['01', '02']
    >>> strip_subject_prefix(["01", "sub-"])
    Traceback (most recent call last):
    ...
    bids_affect.exceptions.UsageError: participant_label: label 'sub-' is empty; fix: give labels such as 01 or sub-01, or leave the option out to process every participant
    """  # noqa: E501
    if labels is None:
        return None
    stripped = [label[4:] if label.startswith("sub-") else label for label in labels]
    for given, label in zip(labels, stripped):
        if not label.strip():
            raise UsageError(f"label {given!r} is empty", path="participant_label",
                             fix=_EMPTY_LABEL_FIX)
    return stripped


def check_selection_labels(labels: Sequence[str] | str | None, parameter: str) -> None:
    """Refuse a selection given but empty (``[]``): it would otherwise select everything.

    Parameters
    ----------
    labels : sequence of str, str or None
        The labels given; None means "not given" (everything is selected).
    parameter : str
        The parameter named in the message (the command line shows its flag).

    Raises
    ------
    UsageError
        ``labels`` is empty or holds an empty label (exit 64).

    Examples
    --------
    >>> check_selection_labels(None, "session_label")
    >>> check_selection_labels([], "session_label")
    Traceback (most recent call last):
    ...
    bids_affect.exceptions.UsageError: session_label: was given without a label (an empty value); fix: give at least one label, or leave the option out to select everything
    """  # noqa: E501
    if labels is None:
        return
    items = [labels] if isinstance(labels, str) else list(labels)
    if not items or not all(str(item).strip() for item in items):
        raise UsageError("was given without a label (an empty value)", path=parameter,
                         fix="give at least one label, or leave the option out to select "
                             "everything")


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

    With ``database_dir`` (``--bids-database-dir``), the first job indexes and
    saves the database while holding a file lock; later jobs (or jobs started at
    the same time) wait for the lock and load the saved index instead of
    indexing again. The database is a cache that is rebuilt, with one warning
    line saying why, when it is not current: it indexes another dataset or other
    derivatives, the dataset changed since it was indexed (a file added, removed
    or modified: a fingerprint of names, sizes and modification times is saved
    beside the index), it cannot be read (corrupt), or an earlier indexing was
    interrupted. Rebuilding rather than refusing a corrupt database is deliberate:
    the index holds nothing that bids_dir does not, so rebuilding loses nothing.

    Parameters
    ----------
    bids_dir : pathlib.Path
        The raw BIDS dataset.
    derivatives : mapping of str to pathlib.Path, optional
        Derivative datasets to index too (fMRIPrep outputs), by name.
    database_dir : pathlib.Path, optional
        Folder of a pybids database to reuse or create.

    Returns
    -------
    bids.BIDSLayout

    Raises
    ------
    InputMissingError
        ``bids_dir`` or a derivatives folder is not a dataset (exit 66).
    InputDataError
        pybids cannot index the dataset, e.g. a JSON sidecar that is not valid
        JSON or not an object (exit 65, naming the file).
    OutputError
        ``database_dir`` cannot be created or written (exit 73).

    Examples
    --------
    >>> import tempfile
    >>> from bids_affect.datasets import make_synthetic_dataset
    >>> root = make_synthetic_dataset(tempfile.mkdtemp(), n_subjects=1, n_runs=1,
    ...                               n_volumes=10, shape=(6, 7, 6))
    >>> database = Path(tempfile.mkdtemp()) / "db"
    >>> load_layout(root, database_dir=database).get_subjects()
    ['01']
    >>> sorted(p.name for p in database.iterdir())  # doctest: +NORMALIZE_WHITESPACE
    ['bids_affect.lock', 'bids_affect_index.json', 'layout_index.sqlite']
    """
    from bids.exceptions import BIDSValidationError

    bids_dir = check_bids_dir(bids_dir)
    derivative_paths = {name: Path(path).absolute() for name, path in (derivatives or {}).items()}
    for name, path in derivative_paths.items():
        if not (path / "dataset_description.json").is_file():
            raise InputMissingError(
                f"derivatives '{name}' have no dataset_description.json", path=path,
                fix="give the root folder of an fMRIPrep output with -d NAME=PATH")
    roots = [bids_dir, *derivative_paths.values()]
    try:
        if database_dir is None:
            return _index(bids_dir, derivative_paths, None)
        return _load_database(bids_dir, derivative_paths, Path(database_dir).absolute())
    except BidsAffectError:
        raise
    except BIDSValidationError as err:
        raise InputDataError(f"pybids cannot index the dataset ({err})", path=bids_dir,
                             fix="run the bids-validator and correct the dataset") from err
    except (OSError, ValueError, TypeError) as err:
        # pybids fails on a sidecar it cannot parse with a bare OSError or TypeError that
        # does not say which file: find it, and name it.
        problem = _malformed_json(roots)
        if problem is None:
            raise
        path, what = problem
        raise InputDataError(f"JSON file {what}", path=path,
                             fix="correct the file (a JSON object of metadata; check it "
                                 "with the bids-validator)") from err


def _index(bids_dir: Path, derivatives: Mapping[str, Path], database_dir: Path | None,
           reset: bool = False):
    from bids import BIDSLayout

    return BIDSLayout(bids_dir, validate=True,
                      derivatives=[str(p) for p in derivatives.values()] or False,
                      database_path=None if database_dir is None else str(database_dir),
                      reset_database=reset)


def _load_database(bids_dir: Path, derivatives: Mapping[str, Path], database_dir: Path):
    """Load the pybids database in ``database_dir``, or (re)build it when it is not current."""
    from sqlalchemy.exc import SQLAlchemyError

    from bids_affect.io.derivatives import check_writable_dir

    check_writable_dir(database_dir, "BIDS database directory")
    roots = [bids_dir, *derivatives.values()]
    try:
        lock = FileLock(str(database_dir / _LOCK_FILE), timeout=3600)
        lock.acquire()
    except OSError as err:
        raise OutputError(f"cannot lock the BIDS database directory ({err.strerror or err})",
                          path=database_dir,
                          fix="choose a writable --bids-database-dir or fix its "
                              "permissions") from err
    try:
        fingerprint = dataset_fingerprint(roots, exclude=[database_dir])
        if not (database_dir / _DATABASE_FILE).exists():
            return _rebuild(bids_dir, derivatives, database_dir, fingerprint, reason=None)
        reason = _fingerprint_change(database_dir / _FINGERPRINT_FILE, fingerprint)
        if reason is None:
            try:
                layout = _index(bids_dir, derivatives, database_dir)
            except (SQLAlchemyError, sqlite3.DatabaseError) as err:
                reason = f"it cannot be read ({type(err).__name__}: corrupt or not a database)"
            else:
                if _database_matches(layout, bids_dir, derivatives):
                    return layout
                reason = "it indexes another dataset or other derivatives"
        return _rebuild(bids_dir, derivatives, database_dir, fingerprint, reason)
    finally:
        lock.release()


def _rebuild(bids_dir: Path, derivatives: Mapping[str, Path], database_dir: Path,
             fingerprint: Mapping[str, Any], reason: str | None):
    """Index from scratch into ``database_dir``; save the fingerprint once indexing is done."""
    from bids_affect.io.derivatives import write_json

    if reason is not None:
        LOGGER.warning("The BIDS database in %s is not used: %s; indexing %s again.",
                       database_dir, reason, bids_dir)
    # No fingerprint while indexing: an interrupted index is never taken as current.
    for path in (database_dir / _FINGERPRINT_FILE, *_database_files(database_dir)):
        path.unlink(missing_ok=True)
    layout = _index(bids_dir, derivatives, database_dir, reset=True)
    write_json(database_dir / _FINGERPRINT_FILE, fingerprint)
    return layout


def _database_files(database_dir: Path) -> list[Path]:
    """pybids' index files: the dataset's, and one per derivatives folder below it."""
    return [path for pattern in (_DATABASE_FILE, f"*/{_DATABASE_FILE}")
            for name in (pattern, f"{pattern}-journal") for path in database_dir.glob(name)]


def _database_matches(layout, bids_dir: Path, derivatives: Mapping[str, Path]) -> bool:
    indexed = {Path(d.root).resolve() for d in layout.derivatives.values()}
    wanted = {Path(p).resolve() for p in derivatives.values()}
    return Path(layout.root).resolve() == bids_dir.resolve() and indexed == wanted


def _dataset_files(root: Path, exclude: Sequence[Path] = ()) -> Iterator[Path]:
    """Files pybids may index under ``root``: not hidden, not in its ignored top folders."""
    excluded = {Path(p).absolute() for p in exclude}
    for folder, subfolders, files in os.walk(root, followlinks=True):
        here = Path(folder)
        subfolders[:] = sorted(
            name for name in subfolders if not name.startswith(".")
            and not (here == root and name in _NOT_INDEXED) and here / name not in excluded)
        yield from (here / name for name in sorted(files) if not name.startswith("."))


def dataset_fingerprint(roots: Sequence[Path], exclude: Sequence[Path] = ()
                        ) -> dict[str, Any]:
    """Name, size and modification time of every file pybids may index under ``roots``.

    Two fingerprints are equal when no such file was added, removed or modified
    (a database indexed at the first is then current for the second).

    Parameters
    ----------
    roots : sequence of pathlib.Path
        The raw dataset and the derivatives indexed with it.
    exclude : sequence of pathlib.Path
        Folders to leave out (the database folder itself).

    Returns
    -------
    dict
        ``{"roots": {root: {relative path: [size, mtime_ns]}}}`` (JSON-ready).

    Examples
    --------
    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> _ = (root / "sub-01").mkdir(), (root / "sub-01" / "a.json").write_text("{}")
    >>> _ = (root / "sourcedata").mkdir(), (root / "sourcedata" / "x.dcm").write_text("")
    >>> list(dataset_fingerprint([root])["roots"][str(root)])
    ['sub-01/a.json']
    """
    listing = {}
    for root in roots:
        root = Path(root).absolute()
        files = {}
        for path in _dataset_files(root, exclude):
            try:
                stat = path.stat()
            except OSError:  # a broken link (e.g. a DataLad file not fetched)
                stat = path.lstat()
            files[path.relative_to(root).as_posix()] = [stat.st_size, stat.st_mtime_ns]
        listing[str(root)] = files
    return {"roots": listing}


def _fingerprint_change(saved: Path, current: Mapping[str, Any]) -> str | None:
    """Why the index fingerprinted in ``saved`` is not current, or None when it is."""
    try:
        old = json.loads(saved.read_text(encoding="utf-8"))["roots"]
    except (OSError, ValueError, KeyError, TypeError):
        return "it has no bids_affect fingerprint (made by another tool, or indexing was " \
               "interrupted)"
    new = current["roots"]
    if set(old) != set(new):
        return "it indexes another dataset or other derivatives"
    changes = []
    for root, files in new.items():
        before = old[root]
        changes += [f"{name} added" for name in files if name not in before]
        changes += [f"{name} removed" for name in before if name not in files]
        changes += [f"{name} modified" for name in files
                    if name in before and list(before[name]) != list(files[name])]
    if not changes:
        return None
    more = f" and {len(changes) - 3} more" if len(changes) > 3 else ""
    return f"the dataset changed since it was indexed ({', '.join(changes[:3])}{more})"


def _malformed_json(roots: Sequence[Path]) -> tuple[Path, str] | None:
    """The first JSON file under ``roots`` that pybids cannot read, and what is wrong."""
    for root in roots:
        for path in _dataset_files(Path(root)):
            if path.suffix != ".json":
                continue
            try:
                content = json.loads(path.read_text(encoding="utf-8"))
            except UnicodeDecodeError:
                return path, "is not UTF-8 text"
            except ValueError as err:
                return path, f"is not valid JSON ({err})"
            except OSError as err:
                return path, f"cannot be read ({err.strerror or err})"
            if not isinstance(content, dict):
                return path, f"must hold a JSON object of metadata, not {_json_type(content)}"
    return None


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


@cache
def bids_entities() -> tuple[str, ...]:
    """The entities a query of the raw dataset may filter on (pybids' ``bids`` config).

    Read from the configuration file of the installed pybids, so the list follows
    its version.

    Examples
    --------
    >>> {"subject", "session", "run", "suffix", "extension"} <= set(bids_entities())
    True
    """
    config = resources.files("bids.layout").joinpath("config", "bids.json")
    return tuple(entity["name"] for entity in json.loads(config.read_text("utf-8"))["entities"])


def _valid_filter_value(value: Any) -> bool:
    """A filter value pybids can take: text, a whole or real number, null, or a list of them."""
    def scalar(item: Any) -> bool:
        return item is None or isinstance(item, str) or (
            isinstance(item, int | float) and not isinstance(item, bool)
            and math.isfinite(item))

    return scalar(value) or isinstance(value, list) and all(scalar(item) for item in value)


def build_queries(bids_filters: Mapping[str, Mapping[str, Any]] | None) -> dict[str, dict]:
    """Default queries updated with a BIDS filter file's content (fMRIPrep's format).

    Raises
    ------
    UsageError
        An unknown query, an entity pybids does not know, or a value that is not
        text, a number, null, ``"*"`` or a list of them (exit 64). The messages
        name the query and the entity; the fix lists the valid entities.

    Examples
    --------
    >>> build_queries({"bold": {"session": "1", "run": [1, 2]}})["bold"]["run"]
    [1, 2]
    >>> build_queries({"bold": {"flavour": "vanilla"}})
    Traceback (most recent call last):
    ...
    bids_affect.exceptions.UsageError: BIDS filter query 'bold': entity 'flavour' is unknown; fix: use pybids entities: subject, session, ...
    """  # noqa: E501
    queries = {name: dict(query) for name, query in DEFAULT_QUERIES.items()}
    for name, query in (bids_filters or {}).items():
        if name not in queries:
            raise UsageError(f"BIDS filter query '{name}' is unknown",
                             fix=f"use one of {', '.join(queries)} as top-level keys")
        if not isinstance(query, Mapping):
            raise UsageError(f"BIDS filter query '{name}' must be an object of entities",
                             fix='write e.g. {"bold": {"session": "1"}}')
        known = bids_entities()
        for entity, value in query.items():
            if entity not in known:
                raise UsageError(f"BIDS filter query '{name}': entity {entity!r} is unknown",
                                 fix=f"use pybids entities: {', '.join(known)}")
            if not _valid_filter_value(value):
                raise UsageError(
                    f"BIDS filter query '{name}': entity {entity!r} has the value "
                    f"{_as_json(value)}, which is not a filter value",
                    fix='give text, a number, null (entity absent), "*" (entity present) '
                        "or a list of them")
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
    check_selection_labels(participant_label, "participant_label")
    labels = strip_subject_prefix(participant_label)
    if labels is None:
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
    check_selection_labels(session_label, "session_label")
    check_selection_labels(task, "task_id")
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
    try:
        tr, start_time, slice_timing = check_timing(path, metadata, header)
    except InputDataError:
        # Name the JSON file that sets the bad value; looked up only now (it costs queries).
        sources = {key: _metadata_source(layout, bold, key) for key in TIMING_KEYS}
        check_timing(path, metadata, header, sources)
        raise
    shape = check_bold_shape(path, header)
    record = dict(
        subject=entities["subject"], session=entities.get("session"), task=entities["task"],
        run=_as_int(entities.get("run")), raw_bold=path, bold=path, tr=tr,
        n_volumes=shape[3], shape=shape, start_time=start_time, slice_timing=slice_timing,
        events=_find_events(layout, bold), entities=entities,
        stim_recordings=_stim_recordings(layout, entities),
    )
    if space is not None:
        record.update(_find_fmriprep_files(layout, entities, space, path))
    return RunRecord(**record)


def _stim_recordings(layout, entities: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The run's ``recording-NAME_stim`` files with their (inherited) sidecars."""
    from bids_affect.features import find_stim_recordings

    return {name: {"path": str(path), "metadata": dict(layout.get_metadata(str(path)))}
            for name, path in find_stim_recordings(layout, entities).items()}


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


def check_repetition_time(path: Path, metadata: Mapping[str, Any], header,
                          sidecar: Path | None = None) -> float:
    """RepetitionTime from the sidecar: a positive number, within 1% of the NIfTI header.

    Parameters
    ----------
    path : pathlib.Path
        The BOLD file.
    metadata : mapping
        Its sidecar metadata (BIDS inheritance applied).
    header : nibabel header
        Its NIfTI header.
    sidecar : pathlib.Path, optional
        The JSON file that sets RepetitionTime, named in messages (default: ``path``).

    Returns
    -------
    float
        The repetition time in seconds.

    Raises
    ------
    InputDataError
        RepetitionTime missing, not a number, not positive, or disagreeing with
        the header (exit 65).

    Examples
    --------
    >>> import nibabel as nib, numpy as np
    >>> header = nib.Nifti1Image(np.zeros((2, 2, 2, 3), np.float32), np.eye(4)).header
    >>> header.set_zooms((2.0, 2.0, 2.0, 2.0))
    >>> check_repetition_time(Path("bold.nii.gz"), {"RepetitionTime": 2.0}, header)
    2.0
    >>> check_repetition_time(Path("bold.nii.gz"), {"RepetitionTime": "two"}, header,
    ...                       sidecar=Path("bold.json"))
    Traceback (most recent call last):
    ...
    bids_affect.exceptions.InputDataError: bold.json: RepetitionTime must be a number of seconds, got "two" (text); fix: write it as a JSON number, e.g. "RepetitionTime": 2.0
    """  # noqa: E501
    path = Path(path)
    tr = metadata.get("RepetitionTime")
    if tr is None:
        raise InputDataError("RepetitionTime is missing from the BOLD sidecar", path=path,
                             fix="add RepetitionTime (seconds) to the JSON sidecar")
    where = sidecar or path
    tr = sidecar_seconds(tr, "RepetitionTime", where, positive=True)
    zooms = header.get_zooms()
    if len(zooms) > 3 and zooms[3] > 0:
        units = header.get_xyzt_units()[1] if hasattr(header, "get_xyzt_units") else "sec"
        header_tr = float(zooms[3]) / (1000.0 if units == "msec" else 1.0)
        if abs(header_tr - tr) > TR_TOLERANCE * tr:
            raise InputDataError(
                f"RepetitionTime {tr} s in the sidecar disagrees with {header_tr} s in the "
                f"NIfTI header of {path.name} (more than 1%)", path=where,
                fix="correct the sidecar or the header (pixdim[4])")
    return tr


def sidecar_seconds(value: Any, key: str, where: Path | str, *,
                    positive: bool = False) -> float:
    """A sidecar value in seconds: a finite JSON number (positive when asked).

    Parameters
    ----------
    value : object
        The value read from the JSON sidecar.
    key : str
        Its key, named in messages.
    where : pathlib.Path or str
        The sidecar, named in messages.
    positive : bool, default False
        Refuse 0 and negative values.

    Raises
    ------
    InputDataError
        Text, a list, an object, a boolean, NaN or infinity, or a value that is
        not positive when ``positive`` (exit 65).

    Examples
    --------
    >>> sidecar_seconds(0.5, "StartTime", "bold.json")
    0.5
    >>> sidecar_seconds(0, "RepetitionTime", "bold.json", positive=True)
    Traceback (most recent call last):
    ...
    bids_affect.exceptions.InputDataError: bold.json: RepetitionTime 0 is invalid: it must be a positive number of seconds; fix: write the repetition time in seconds, e.g. "RepetitionTime": 2.0
    """  # noqa: E501
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InputDataError(f"{key} must be a number of seconds, got {_as_json(value)} "
                             f"({_json_type(value)})", path=where,
                             fix=f'write it as a JSON number, e.g. "{key}": '
                                 f'{_EXAMPLE_SECONDS.get(key, 0.0)}')
    if not math.isfinite(value) or positive and value <= 0:
        must = "a positive" if positive else "a finite"
        raise InputDataError(f"{key} {_as_json(value)} is invalid: it must be {must} number "
                             "of seconds",
                             path=where,
                             fix=f"write the {_KEY_MEANING.get(key, key)} in seconds, e.g. "
                                 f'"{key}": {_EXAMPLE_SECONDS.get(key, 0.0)}')
    return float(value)


_EXAMPLE_SECONDS = {"RepetitionTime": 2.0, "StartTime": 0.0}
_KEY_MEANING = {"RepetitionTime": "repetition time", "StartTime": "start time"}


def _as_json(value: Any, limit: int = 80) -> str:
    """A value as its JSON file spells it (shortened), for messages."""
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _json_type(value: Any) -> str:
    """How a value read from JSON is called in messages."""
    if isinstance(value, str):
        return "text"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


def check_timing(path: Path, metadata: Mapping[str, Any], header,
                 sources: Mapping[str, Path | None] | None = None
                 ) -> tuple[float, float, tuple[float, ...] | None]:
    """RepetitionTime, StartTime (0 when absent) and SliceTiming of a BOLD run, checked.

    Parameters
    ----------
    path : pathlib.Path
        The BOLD file.
    metadata : mapping
        Its sidecar metadata (BIDS inheritance applied).
    header : nibabel header
        Its NIfTI header.
    sources : mapping of str to pathlib.Path, optional
        The JSON file that sets each key, named in messages (default: ``path``).

    Returns
    -------
    tr : float
    start_time : float
    slice_timing : tuple of float or None

    Raises
    ------
    InputDataError
        See :func:`check_repetition_time` and :func:`sidecar_seconds`; SliceTiming
        must be a list of finite numbers >= 0 (exit 65).

    Examples
    --------
    >>> import nibabel as nib, numpy as np
    >>> header = nib.Nifti1Image(np.zeros((2, 2, 2, 3), np.float32), np.eye(4)).header
    >>> header.set_zooms((2.0, 2.0, 2.0, 2.0))
    >>> check_timing(Path("bold.nii.gz"), {"RepetitionTime": 2, "SliceTiming": [0, 1]},
    ...              header)
    (2.0, 0.0, (0.0, 1.0))
    """
    sources = sources or {}

    def where(key: str) -> Path:
        return sources.get(key) or Path(path)

    tr = check_repetition_time(path, metadata, header, sidecar=sources.get("RepetitionTime"))
    start_time = metadata.get("StartTime")
    start_time = 0.0 if start_time is None else sidecar_seconds(start_time, "StartTime",
                                                               where("StartTime"))
    slice_timing = metadata.get("SliceTiming")
    if slice_timing is None:
        return tr, start_time, None
    if not isinstance(slice_timing, list) or not all(
            not isinstance(t, bool) and isinstance(t, int | float) and math.isfinite(t)
            and t >= 0 for t in slice_timing):
        raise InputDataError(f"SliceTiming must be a list of times in seconds (numbers >= 0), "
                             f"got {_as_json(slice_timing)}", path=where("SliceTiming"),
                             fix="write one acquisition time per slice, e.g. "
                                 '"SliceTiming": [0.0, 1.0, 0.5, 1.5], or remove the key')
    return tr, start_time, tuple(float(t) for t in slice_timing) or None


def _metadata_source(layout, bold, key: str) -> Path | None:
    """The sidecar that sets ``key`` for ``bold``: the most specific applicable JSON holding it."""
    for candidate in _applicable_files(layout, bold, suffix=bold.get_entities().get("suffix"),
                                       extension=".json"):
        try:
            content = json.loads(Path(candidate).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(content, dict) and key in content:
            return Path(candidate)
    return None


def _find_events(layout, bold) -> Path | None:
    """The events file that applies to ``bold`` under the BIDS inheritance principle.

    A candidate applies when each of its entities equals the BOLD's (so another
    run's events never do); among those, the most specific one wins (more
    entities, then the deeper folder), e.g. ``sub-01_task-movie_run-2_events.tsv``
    over a top-level ``task-movie_events.tsv``.
    """
    applicable = _applicable_files(layout, bold, suffix="events", extension=".tsv")
    return applicable[0] if applicable else None


def _applicable_files(layout, bold, *, suffix: str | None, extension: str) -> list[Path]:
    """Files of ``suffix`` and ``extension`` that apply to ``bold``, most specific first.

    A candidate applies when each of its entities equals the BOLD's; more entities,
    then a deeper folder, make it more specific (the BIDS inheritance principle).
    """
    own = bold.get_entities()
    applicable = []
    for candidate in layout.get(suffix=suffix, extension=extension, scope="raw",
                                task=own.get("task")):
        entities = {key: value for key, value in candidate.get_entities().items()
                    if key not in _NON_MATCHING_ENTITIES}
        if all(own.get(key) == value for key, value in entities.items()):
            applicable.append((len(entities), len(Path(candidate.path).parts), candidate.path))
    return [Path(path) for *_, path in sorted(applicable, reverse=True)]


def _own_sidecar(path: Path) -> Path:
    """The JSON file beside a NIfTI file (named in messages), or the file itself."""
    name = Path(path).name
    stem = name[: -len(".nii.gz")] if name.endswith(".nii.gz") else Path(name).stem
    sidecar = Path(path).with_name(f"{stem}.json")
    return sidecar if sidecar.is_file() else Path(path)


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
    found = {} if start_time is None else {"start_time": sidecar_seconds(
        start_time, "StartTime", _own_sidecar(preproc_path))}
    return {**found, "bold": preproc_path, "space": space, "shape": shape,
            "n_volumes": shape[3],
            "mask": Path(mask[0]) if mask else None,
            "confounds": Path(confounds[0]) if confounds else None}
