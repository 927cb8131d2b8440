"""Labels per volume: from a run's ``events.tsv`` annotations to one class per volume.

A *label spec* (a JSON file validated against ``bids_affect/data/labels/schema.json``;
presets ship in ``bids_affect/data/labels/``) names the source of the annotations,
how categories merge into classes, the agreement threshold, the overlap rule, the
haemodynamic lag and the minimum number of volumes a class needs.

The rule
--------
- Volume ``i`` of a run is acquired at ``t_i = i * TR + StartTime`` (``StartTime``
  from the BOLD sidecar, 0 when absent). Its label is read at ``t_i - hrf_lag``.
  Onsets are relative to the start of each run; nothing is ever derived from the
  lengths of earlier runs.
- An annotation is active at time ``t`` when ``onset <= t < onset + duration``.
  Negative onsets are valid and follow the same rule (a scene that began before
  the run started is active from the run's first second). Events whose
  ``trial_type`` is ``n/a`` are ignored for trial_type specs.
- Agreement-column spec (``source: columns``): an active annotation scores each
  class with the largest agreement among the class's member columns; the volume's
  score for a class is the largest score among its active annotations; a class is
  a candidate when its score >= threshold (with a 1e-6 tolerance, since the files
  hold values like 0.333333333333). Overlap ``max`` (default): the candidate with
  the highest score wins; equal highest scores (within 1e-6) leave the volume
  unlabelled. Overlap ``exclude``: a volume with more than one candidate is
  unlabelled.
- ``trial_type`` spec: the active event's trial_type (after the mapping) is the
  class; two different active classes leave the volume unlabelled.
- Volumes with no candidate, or whose read time falls before 0, are unlabelled
  (``None``, written ``n/a``), never guessed.

Times are compared at microsecond resolution, so that ``6 * 0.72`` equals an
onset of ``4.32``.

Examples
--------
>>> import pandas as pd
>>> spec = load_label_spec("trial-type", hrf_lag=0)
>>> events = pd.DataFrame({"onset": [0.0, 4.0], "duration": [4.0, 2.0],
...                        "trial_type": ["fear", "joy"]})
>>> label_volumes(events, spec, tr=2.0, n_volumes=4).tolist()
['fear', 'fear', 'joy', None]
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from fractions import Fraction
from functools import cache
from importlib import resources
from numbers import Integral
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bids_affect._utils.docs import fill_doc
from bids_affect.exceptions import InputDataError, InputMissingError, UsageError

logger = logging.getLogger("bids_affect.annotations")

#: Two scores closer than this are equal; a score this close below the threshold passes.
SCORE_TOLERANCE = 1e-6
#: Times (onsets, ends, read times) are rounded to this many decimals (microseconds).
TIME_DECIMALS = 6
SOURCES = ("columns", "trial_type")
OVERLAP_RULES = ("max", "exclude")
REQUIRED_EVENT_COLUMNS = ("onset", "duration")

_PRESET_PACKAGE = "bids_affect.data"
_PRESET_FOLDER = "labels"
_SCHEMA_FILE = "schema.json"
_SCHEMA_HINT = "see docs/labels.md and bids_affect/data/labels/schema.json"



# ---------------------------------------------------------------------------------------
# Label specs
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelSpec:
    """How annotations become labels per volume (validated on construction).

    Parameters
    ----------
    name : str
        Name recorded in sidecars.
    source : {"columns", "trial_type"}
        Agreement columns (one per category, e.g. StudyForrest's ``e_*``) or the
        events' ``trial_type``.
    classes : mapping of str to tuple of str
        Class name (alphanumeric) to its member columns (full names, e.g.
        ``"e_anger/rage"``) or member trial_type values. Empty for ``trial_type``:
        each value is its own class.
    threshold : float, default 0.5
        ``columns`` only: a class is a candidate when its agreement reaches this.
    overlap : {"max", "exclude"}, default "max"
        How a volume with several candidates is resolved.
    hrf_lag : float, default 4.0
        Seconds between a volume's acquisition and the annotation time it reads.
    min_volumes : int, default 20
        Classes with fewer labelled volumes per subject are left out of analyses.
    description : str, default ""
        One line for ``--help``.

    Examples
    --------
    >>> spec = LabelSpec("fear-only", "columns", {"fear": ("e_fear",)}, threshold=0.5)
    >>> spec.to_dict()["classes"]
    {'fear': ['e_fear']}
    >>> LabelSpec("bad", "columns", {"fear": ("e_fear",)}, overlap="min")
    Traceback (most recent call last):
    ...
    bids_affect.exceptions.UsageError: label spec 'bad': field 'overlap': 'min' is not one of ['max', 'exclude']; fix: see docs/labels.md and bids_affect/data/labels/schema.json
    """  # noqa: E501

    name: str
    source: str
    classes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    threshold: float = 0.5
    overlap: str = "max"
    hrf_lag: float = 4.0
    min_volumes: int = 20
    description: str = ""

    def __post_init__(self) -> None:
        as_given = {**self.__dict__, "classes": _plain_classes(self.classes)}
        check_label_spec(as_given, where=f"label spec {self.name!r}")
        # Frozen: normalise through object.__setattr__; a fresh dict, never the caller's.
        object.__setattr__(self, "classes", {str(name): tuple(members)
                                             for name, members in self.classes.items()})
        object.__setattr__(self, "threshold", float(self.threshold))
        object.__setattr__(self, "hrf_lag", float(self.hrf_lag))
        object.__setattr__(self, "min_volumes", int(self.min_volumes))

    def __hash__(self) -> int:
        # classes is a plain dict (a mapping proxy would not pickle to nipype workers),
        # so hash the JSON form; equal specs hash equal.
        return hash(json.dumps(self.to_dict(), sort_keys=True))

    @property
    def columns(self) -> tuple[str, ...]:
        """The events columns this spec reads."""
        if self.source == "trial_type":
            return ("trial_type",)
        return tuple(column for members in self.classes.values() for column in members)

    def to_dict(self) -> dict[str, Any]:
        """The spec as JSON-ready values (recorded in sidecars; loads back unchanged).

        Examples
        --------
        >>> spec = load_label_spec("studyforrest-raw5")
        >>> LabelSpec(**spec.to_dict()) == spec
        True
        """
        values = {spec_field.name: getattr(self, spec_field.name) for spec_field in fields(self)}
        return {**values, "classes": {name: list(members)
                                      for name, members in self.classes.items()}}


def _plain_classes(classes: Any) -> Any:
    """Classes with tuples as lists, so that the JSON Schema checks apply to them."""
    if not isinstance(classes, Mapping):
        return classes
    return {name: list(members) if isinstance(members, tuple) else members
            for name, members in classes.items()}


@cache
def _schema() -> dict[str, Any]:
    return json.loads(_preset_folder().joinpath(_SCHEMA_FILE).read_text(encoding="utf-8"))


def check_label_spec(spec: Mapping[str, Any], where: str = "label spec") -> None:
    """Check a label spec's fields against the JSON Schema and the rules beyond it.

    Parameters
    ----------
    spec : mapping
        The spec's fields, as read from JSON.
    where : str
        What to name in messages (the file).

    Raises
    ------
    UsageError
        Naming ``where`` and the bad field.

    Examples
    --------
    >>> check_label_spec({"source": "trial_type"})
    >>> check_label_spec({"source": "columns", "classes": {"fear": ["e_fear"]},
    ...                   "thresold": 0.5}, where="my_spec.json")
    Traceback (most recent call last):
    ...
    bids_affect.exceptions.UsageError: my_spec.json: Additional properties are not allowed ('thresold' was unexpected); fix: see docs/labels.md and bids_affect/data/labels/schema.json
    """  # noqa: E501
    problem = _schema_problem(dict(spec))
    if problem is None:
        problem = _shared_member_problem(spec.get("classes", {}))
    if problem is not None:
        raise UsageError(problem, path=where, fix=_SCHEMA_HINT)


def _shared_member_problem(classes: Mapping[str, Sequence[str]]) -> str | None:
    # A member in two classes would make every annotation of it a tie.
    owner: dict[str, str] = {}
    for name, members in classes.items():
        for member in members:
            if member in owner:
                return (f"field 'classes': {member!r} belongs to both {owner[member]!r} "
                        f"and {name!r}")
            owner[member] = name
    return None


def _schema_problem(value: Any, schema: Mapping[str, Any] | None = None) -> str | None:
    """The most relevant violation of the label spec schema by ``value``, or None."""
    import jsonschema

    non_finite = _non_finite_field(value)
    if non_finite is not None:
        where = f"field {non_finite!r}: " if non_finite else ""
        return f"{where}must be a finite number (NaN and infinity are not allowed)"
    validator = jsonschema.Draft202012Validator(_schema() if schema is None else schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(value))
    if error is None:
        return None
    where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}"
                    for part in error.absolute_path).lstrip(".")
    return f"field {where!r}: {error.message}" if where else error.message


def _non_finite_field(value: Any, where: str = "") -> str | None:
    """Dotted path of the first NaN or infinite number in ``value`` ("" for itself), or None.

    JSON Schema's numeric bounds let NaN through (every comparison with it is false),
    and Python's JSON reader accepts ``NaN`` and ``Infinity``.
    """
    if isinstance(value, float) and not math.isfinite(value):
        return where
    items = value.items() if isinstance(value, Mapping) else enumerate(value) \
        if isinstance(value, list) else ()
    for key, item in items:
        found = _non_finite_field(item, f"{where}.{key}".lstrip("."))
        if found is not None:
            return found
    return None


def _preset_folder():
    return resources.files(_PRESET_PACKAGE).joinpath(_PRESET_FOLDER)


def _preset_files() -> dict[str, Any]:
    return {entry.name.removesuffix(".json"): entry
            for entry in sorted(_preset_folder().iterdir(), key=lambda entry: entry.name)
            if entry.name.endswith(".json") and entry.name != _SCHEMA_FILE}


def list_presets() -> dict[str, str]:
    """The label spec presets shipped with bids_affect.

    Returns
    -------
    dict of str to str
        Preset name to its one-line description (used by ``--help``).

    Examples
    --------
    >>> sorted(list_presets())
    ['studyforrest-5', 'studyforrest-raw5', 'trial-type']
    """
    return {name: load_label_spec(name).description for name in _preset_files()}


def load_label_spec(name_or_path: str | Path, *, hrf_lag: float | None = None,
                    min_volumes: int | None = None) -> LabelSpec:
    """Load a label spec: a preset name or a path to a JSON spec file.

    A ``str`` naming a preset loads the preset; any other value is a file path.

    Parameters
    ----------
    name_or_path : str or pathlib.Path
        A preset name (see :func:`list_presets`) or a JSON file.
    hrf_lag : float, optional
        Replaces the spec's ``hrf_lag`` (``--hrf-lag``).
    min_volumes : int, optional
        Replaces the spec's ``min_volumes`` (``--min-volumes``).

    Returns
    -------
    LabelSpec

    Raises
    ------
    UsageError
        Unknown preset or missing file (listing the presets), a file that is not
        valid JSON, or a bad field (naming the file and the field).

    Examples
    --------
    >>> spec = load_label_spec("studyforrest-5", hrf_lag=5)
    >>> spec.hrf_lag, spec.threshold, list(spec.classes)
    (5.0, 0.5, ['anger', 'sadness', 'fear', 'love', 'happiness'])
    """
    presets = _preset_files()
    if isinstance(name_or_path, str) and name_or_path in presets:
        source = presets[name_or_path]
        where, default_name = f"label preset {name_or_path!r}", name_or_path
    else:
        source = Path(name_or_path).expanduser()
        where, default_name = str(source), source.stem
        if not source.is_file():
            raise UsageError("is neither a label preset nor an existing JSON spec file",
                             path=where,
                             fix=f"use one of the presets {', '.join(presets)}, or the "
                                 "path of a JSON label spec")
    content = _read_json(source, where)
    check_label_spec(content, where=where)
    content.pop("$schema", None)
    content.setdefault("name", default_name)
    for key, value in (("hrf_lag", hrf_lag), ("min_volumes", min_volumes)):
        if value is not None:
            problem = _schema_problem(value, _schema()["properties"][key])
            if problem:
                raise UsageError(problem, path=f"--{key.replace('_', '-')}",
                                 fix=_SCHEMA_HINT)
            content[key] = value
    return LabelSpec(**content)


def _read_json(source, where: str) -> dict[str, Any]:
    try:
        content = json.loads(source.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise UsageError(f"is not valid JSON (line {error.lineno}, column {error.colno}: "
                         f"{error.msg})", path=where, fix="correct the JSON syntax") from None
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"cannot be read ({error})", path=where,
                         fix="give a readable UTF-8 JSON file") from None
    if not isinstance(content, dict):
        raise UsageError("must hold a JSON object of spec fields", path=where,
                         fix=_SCHEMA_HINT)
    return content


def presets_markdown() -> str:
    """The presets as a Markdown table (pasted into ``docs/labels.md``; a test compares).

    Examples
    --------
    >>> print(presets_markdown().splitlines()[0])
    | preset | source | classes (members) | threshold | overlap | hrf_lag | min_volumes |
    """
    lines = ["| preset | source | classes (members) | threshold | overlap | hrf_lag "
             "| min_volumes |", "|---|---|---|---|---|---|---|"]
    for name in _preset_files():
        spec = load_label_spec(name)
        classes = "; ".join(f"**{label}**: {', '.join(f'`{m}`' for m in members)}"
                            for label, members in spec.classes.items())
        threshold = _as_fraction(spec.threshold) if spec.source == "columns" else "-"
        lines.append(f"| `{name}` | {spec.source} | {classes or 'each trial_type value'} "
                     f"| {threshold} | {spec.overlap} | {spec.hrf_lag:g} s "
                     f"| {spec.min_volumes} |")
    return "\n".join(lines) + "\n"


def _as_fraction(value: float) -> str:
    """``0.5555555555555556`` as ``5/9``, ``0.5`` as ``0.5`` (thresholds are observer shares)."""
    fraction = Fraction(value).limit_denominator(20)
    repeating = len(repr(value)) > 8 and abs(float(fraction) - value) < 1e-9
    return str(fraction) if repeating else f"{value:g}"


# ---------------------------------------------------------------------------------------
# Events
# ---------------------------------------------------------------------------------------


def read_events(path: Path) -> pd.DataFrame:
    """Read a BIDS events TSV (``n/a`` and empty cells are missing values).

    ``trial_type`` is read as text, so values such as ``1`` or ``NA`` stay labels.

    Parameters
    ----------
    path : pathlib.Path
        The ``*_events.tsv`` file.

    Returns
    -------
    pandas.DataFrame
        One row per event, in file order (row ``k`` is on line ``k + 2``).

    Raises
    ------
    InputMissingError
        The file does not exist.
    InputDataError
        No ``onset`` or ``duration`` column, or onsets or durations that are not
        numbers, missing onsets, or negative durations (naming the file and lines).

    Examples
    --------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "events.tsv"
    >>> _ = path.write_text("onset\\tduration\\ttrial_type\\n0\\t2\\tfear\\n2\\t2\\tn/a\\n")
    >>> read_events(path).trial_type.tolist()
    ['fear', nan]
    """
    path = Path(path)
    if not path.is_file():
        raise InputMissingError("events file not found", path=path,
                                fix="check the dataset, or give a spec without events")
    try:
        events = pd.read_csv(path, sep="\t", na_values=["n/a", ""], keep_default_na=False,
                             dtype={"trial_type": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise InputDataError(f"is not a readable TSV ({' '.join(str(error).split())})",
                             path=path, fix="write a tab-separated table with a header") from None
    _check_timing_columns(events, path)
    return events


def _check_timing_columns(events: pd.DataFrame, path: Path | None) -> None:
    """Onsets and durations exist and are finite numbers; onsets given, durations >= 0."""
    where = path if path is not None else "events"
    missing = [column for column in REQUIRED_EVENT_COLUMNS if column not in events]
    if missing:
        raise InputDataError(f"has no column {' or '.join(missing)} (columns found: "
                             f"{', '.join(map(str, events.columns))})", path=where,
                             fix="BIDS events files need onset and duration in seconds")
    for column, allowed in (("onset", "any number of seconds"),
                            ("duration", "seconds >= 0, or n/a")):
        given = events[column].notna().to_numpy()
        seconds = pd.to_numeric(events[column], errors="coerce").to_numpy(float)
        with np.errstate(invalid="ignore"):
            bad = given & ~np.isfinite(seconds)  # text or infinity
            # A duration may be n/a (the event is then never active); an onset may not.
            bad |= ~given if column == "onset" else seconds < 0
        if bad.any():
            raise InputDataError(f"column {column} holds invalid values on lines "
                                 f"{_lines(bad)}", path=where,
                                 fix=f"give every event a {column}: {allowed}")


def _lines(mask: pd.Series | np.ndarray, limit: int = 10) -> str:
    """TSV line numbers (the header is line 1) of the rows where ``mask`` holds."""
    lines = [str(position + 2) for position in np.flatnonzero(np.asarray(mask))]
    more = f" and {len(lines) - limit} more" if len(lines) > limit else ""
    return ", ".join(lines[:limit]) + more


@fill_doc
def check_events(spec: LabelSpec, events: pd.DataFrame, path: Path | None = None) -> None:
    """Check that a run's events hold what the spec reads.

    Parameters
    ----------
    %(spec)s
    %(events)s
    %(path)s

    Raises
    ------
    UsageError
        The spec names columns the events do not have (exit code 64): the message
        names the file, the missing columns and the columns found.
    InputDataError
        Bad onsets or durations, or agreement columns that are not numbers.

    Examples
    --------
    >>> import pandas as pd
    >>> events = pd.DataFrame({"onset": [0.0], "duration": [2.0], "e_fear": [0.6]})
    >>> check_events(load_label_spec("studyforrest-raw5"), events, Path("run-1_events.tsv"))
    Traceback (most recent call last):
    ...
    bids_affect.exceptions.UsageError: run-1_events.tsv: label spec 'studyforrest-raw5' needs columns missing from the events: e_sadness, e_happiness, e_anger/rage, e_love (columns found: onset, duration, e_fear); fix: choose a label spec that matches the events (--labels), or correct the spec's columns
    """  # noqa: E501
    _check_timing_columns(events, path)
    where = path if path is not None else "events"
    missing = [column for column in spec.columns if column not in events]
    if missing:
        raise UsageError(f"label spec {spec.name!r} needs columns missing from the events: "
                         f"{', '.join(missing)} (columns found: "
                         f"{', '.join(map(str, events.columns))})", path=where,
                         fix="choose a label spec that matches the events (--labels), "
                             "or correct the spec's columns")
    if spec.source == "columns":
        for column in spec.columns:
            not_number = pd.to_numeric(events[column], errors="coerce").isna()
            bad = not_number & events[column].notna()
            if bad.any():
                raise InputDataError(f"agreement column {column} holds values that are not "
                                     f"numbers on lines {_lines(bad)}", path=where,
                                     fix="agreement columns hold numbers or n/a")


# ---------------------------------------------------------------------------------------
# Labels per volume
# ---------------------------------------------------------------------------------------


@fill_doc
def score_volumes(events: pd.DataFrame, spec: LabelSpec, *, tr: float, n_volumes: int,
                  start_time: float = 0.0, path: Path | None = None,
                  where: str | None = None) -> pd.DataFrame:
    """Each class's score per volume, read at ``t_i - hrf_lag`` (the step before labels).

    For a ``columns`` spec, a class's score is the largest agreement of its member
    columns over the annotations active at the read time; for a ``trial_type`` spec
    it is 1 when an event of the class is active. Volumes where no annotation of a
    class is active, or whose read time falls before 0, hold NaN.

    Logs a warning when the events hold no event at all (a header only: no volume
    of the run can be labelled), and one naming the TSV lines of events that
    start after the end of the run (``onset >= n_volumes * tr + start_time``).

    Parameters
    ----------
    %(run_events)s
    where : str, optional
        The subject and run, named with ``path`` in warnings (e.g.
        ``"sub-01 task-movie_run-1"``).

    Returns
    -------
    pandas.DataFrame
        ``n_volumes`` rows (index ``volume``), one column per class: the spec's
        classes, or for an identity ``trial_type`` spec the values found, sorted.

    Examples
    --------
    >>> import pandas as pd
    >>> events = pd.DataFrame({"onset": [0.0, 2.0], "duration": [4.0, 2.0],
    ...                        "e_fear": [0.6, 0.2], "e_love": [0.0, 0.9]})
    >>> spec = LabelSpec("demo", "columns", {"fear": ("e_fear",), "love": ("e_love",)},
    ...                  hrf_lag=0.0)
    >>> score_volumes(events, spec, tr=2.0, n_volumes=3)  # doctest: +NORMALIZE_WHITESPACE
            fear  love
    volume
    0        0.6   0.0
    1        0.6   0.9
    2        NaN   NaN
    """
    check_events(spec, events, path)
    _check_acquisition(tr, n_volumes, start_time, path)
    if events.empty:
        logger.warning("%s: the events file holds a header but no event, so none of the "
                       "run's %d volumes is labelled; check that the annotations were "
                       "exported for this run", _named(where, path), n_volumes)
    events = events.reset_index(drop=True)  # positions give TSV line numbers
    event_scores = _event_scores(events, spec)  # events x classes, NaN: does not score
    _warn_events_past_end(events.loc[event_scores.notna().any(axis=1)], tr=tr,
                          n_volumes=n_volumes, start_time=start_time,
                          where=_named(where, path))
    read_times = np.round(np.arange(n_volumes) * tr + start_time - spec.hrf_lag,
                          TIME_DECIMALS)
    onsets = np.round(events["onset"].to_numpy(float), TIME_DECIMALS)
    # A missing duration makes an empty interval: the event is never active.
    ends = np.round(onsets + events["duration"].to_numpy(float), TIME_DECIMALS)
    active = (onsets[None, :] <= read_times[:, None]) & (read_times[:, None] < ends[None, :])
    active &= (read_times >= 0)[:, None]
    scores = np.full((n_volumes, event_scores.shape[1]), np.nan)
    for position, class_name in enumerate(event_scores.columns):
        by_event = event_scores[class_name].to_numpy(float)
        counted = active & ~np.isnan(by_event)[None, :]
        best = np.where(counted, by_event[None, :], -np.inf).max(axis=1, initial=-np.inf)
        scores[:, position] = np.where(counted.any(axis=1), best, np.nan)
    return pd.DataFrame(scores, columns=pd.Index(event_scores.columns),
                        index=pd.RangeIndex(n_volumes, name="volume"))


def _check_acquisition(tr: float, n_volumes: int, start_time: float,
                       path: Path | None) -> None:
    where = path if path is not None else "events"
    if not (math.isfinite(tr) and tr > 0):
        raise InputDataError(f"repetition time must be a positive number of seconds, got {tr}",
                             path=where, fix="check RepetitionTime in the BOLD sidecar")
    if not math.isfinite(start_time):
        raise InputDataError(f"StartTime must be a number of seconds, got {start_time}",
                             path=where, fix="check StartTime in the BOLD sidecar")
    if not isinstance(n_volumes, Integral) or n_volumes < 0:
        raise InputDataError(f"number of volumes must be a whole number >= 0, got "
                             f"{n_volumes}", path=where, fix="check the BOLD image")


def _event_scores(events: pd.DataFrame, spec: LabelSpec) -> pd.DataFrame:
    """Events x classes: the score each event gives each class (NaN: none)."""
    if spec.source == "columns":
        agreement = {name: events[list(members)].apply(pd.to_numeric, errors="coerce")
                     .max(axis=1, skipna=True) for name, members in spec.classes.items()}
        return pd.DataFrame(agreement, index=events.index, columns=list(spec.classes))
    trial_types = events["trial_type"].map(lambda value: value if pd.isna(value)
                                           else str(value))
    if spec.classes:
        class_of = {member: name for name, members in spec.classes.items()
                    for member in members}
        unmapped = sorted(set(trial_types.dropna()) - set(class_of))
        if unmapped:
            logger.debug("trial_type values outside the spec's classes are ignored: %s",
                         ", ".join(unmapped))
        classes = trial_types.map(class_of)
        names = list(spec.classes)
    else:
        classes = trial_types
        names = sorted(set(trial_types.dropna()))
    one_hot = {name: np.where(classes == name, 1.0, np.nan) for name in names}
    return pd.DataFrame(one_hot, index=events.index, columns=names)


def _named(where: str | None, path: Path | None) -> str:
    """What warnings about one run name: the subject and run, and the events file."""
    if where is None:
        return str(path) if path is not None else "events"
    return where if path is None else f"{where} ({path})"


def _warn_events_past_end(events: pd.DataFrame, *, tr: float, n_volumes: int,
                          start_time: float, where: str) -> None:
    run_end = round(n_volumes * tr + start_time, TIME_DECIMALS)
    past_end = events.loc[np.round(events["onset"].astype(float), TIME_DECIMALS) >= run_end]
    if past_end.empty:
        return
    lines = ", ".join(f"{position + 2} (onset {onset:g} s)"
                      for position, onset in past_end["onset"].items())
    logger.warning("%s: %d event(s) start after the end of the run (%d volumes x TR %g s "
                   "+ StartTime %g s = %g s) and are never labelled: TSV lines %s; check "
                   "that the events belong to this run and that onsets are relative to its "
                   "start", where, len(past_end),
                   n_volumes, tr, start_time, run_end, lines)


def labels_from_scores(scores: pd.DataFrame, spec: LabelSpec) -> np.ndarray:
    """Labels per volume from :func:`score_volumes`, by the spec's threshold and overlap rule.

    Parameters
    ----------
    scores : pandas.DataFrame
        Volumes x classes, as :func:`score_volumes` returns.
    spec : LabelSpec
        Gives the threshold (``columns`` specs; any active class is a candidate for
        ``trial_type``) and the overlap rule.

    Returns
    -------
    numpy.ndarray
        Object array: a class name, or ``None`` (no candidate, tie, or excluded).

    Examples
    --------
    >>> import pandas as pd
    >>> scores = pd.DataFrame({"fear": [0.6, 0.6, 0.7, 0.2],
    ...                        "love": [0.1, 0.6000001, 0.5, None]})
    >>> spec = LabelSpec("demo", "columns", {"fear": ("e_fear",), "love": ("e_love",)})
    >>> labels_from_scores(scores, spec).tolist()
    ['fear', None, 'fear', None]
    >>> from dataclasses import replace
    >>> labels_from_scores(scores, replace(spec, overlap="exclude")).tolist()
    ['fear', None, None, None]
    """
    values = scores.to_numpy(dtype=float, na_value=np.nan)
    threshold = spec.threshold if spec.source == "columns" else 1.0
    candidate = values >= threshold - SCORE_TOLERANCE  # NaN compares False
    best = np.where(candidate, values, -np.inf).max(axis=1, initial=-np.inf)
    at_best = candidate & (values >= best[:, None] - SCORE_TOLERANCE)
    # max: a single highest candidate wins; exclude: a single candidate, or nothing.
    winners = at_best if spec.overlap == "max" else candidate
    labelled = winners.sum(axis=1) == 1
    labels = np.full(len(values), None, dtype=object)
    if labelled.any():  # argmax needs at least one class column
        class_names = np.asarray(scores.columns, dtype=object)
        labels[labelled] = class_names[at_best[labelled].argmax(axis=1)]
    return labels


@fill_doc
def label_volumes(events: pd.DataFrame, spec: LabelSpec, *, tr: float, n_volumes: int,
                  start_time: float = 0.0, path: Path | None = None,
                  where: str | None = None) -> np.ndarray:
    """The label of every volume of one run, by the rule in the module docstring.

    Logs the warnings of :func:`score_volumes` (no event at all; events that
    start after the end of the run). Equivalent to
    ``labels_from_scores(score_volumes(...), spec)``; call those two when the scores
    are wanted for :func:`check_labelled`.

    Parameters
    ----------
    %(run_events)s
    where : str, optional
        The subject and run, named with ``path`` in warnings.

    Returns
    -------
    numpy.ndarray
        Object array of length ``n_volumes``: a class name or ``None``.

    Examples
    --------
    >>> import pandas as pd
    >>> events = pd.DataFrame({"onset": [-3.0, 4.0], "duration": [9.0, 4.0],
    ...                        "trial_type": ["calm", None]})  # None: n/a in the TSV
    >>> spec = load_label_spec("trial-type")  # hrf_lag 4 s
    >>> label_volumes(events, spec, tr=2.0, n_volumes=6).tolist()
    [None, None, 'calm', 'calm', 'calm', None]
    """
    scores = score_volumes(events, spec, tr=tr, n_volumes=n_volumes, start_time=start_time,
                           path=path, where=where)
    return labels_from_scores(scores, spec)


# ---------------------------------------------------------------------------------------
# Tables and checks over runs
# ---------------------------------------------------------------------------------------


@fill_doc
def labels_table(labels: np.ndarray, *, tr: float, start_time: float = 0.0) -> pd.DataFrame:
    """One run's labels as an events table, one row per volume (``desc-labels_events.tsv``).

    Parameters
    ----------
    labels : numpy.ndarray
        Class name or ``None`` per volume, as :func:`label_volumes` returns.
    %(tr)s
    %(start_time)s

    Returns
    -------
    pandas.DataFrame
        Columns ``onset`` (acquisition time ``t_i``), ``duration`` (TR),
        ``trial_type`` (class, or ``None``, written ``n/a``) and ``volume`` (``i``).

    Examples
    --------
    >>> import numpy as np
    >>> labels_table(np.array(["fear", None], dtype=object), tr=0.72, start_time=0.36)
       onset  duration trial_type  volume
    0   0.36      0.72       fear       0
    1   1.08      0.72       None       1
    """
    volumes = np.arange(len(labels))
    return pd.DataFrame({"onset": np.round(volumes * tr + start_time, TIME_DECIMALS),
                         "duration": float(tr),
                         "trial_type": pd.Series(labels, dtype=object),
                         "volume": volumes})


@fill_doc
def count_labels(labels_by_run: Mapping[str, np.ndarray],
                 classes: Sequence[str]) -> pd.DataFrame:
    """Labelled volumes per class and run, with a ``total`` row (one subject).

    Parameters
    ----------
    %(labels_by_run)s
    classes : sequence of str
        Class columns, in order; labels outside them get columns of their own
        after them, so that no volume goes uncounted.

    Returns
    -------
    pandas.DataFrame
        Columns ``run``, one per class, ``n/a``; one row per run plus ``total``.

    Examples
    --------
    >>> import numpy as np
    >>> runs = {"run-1": np.array(["fear", None, "fear"], dtype=object),
    ...         "run-2": np.array(["love", None], dtype=object)}
    >>> count_labels(runs, ["fear", "love"])
         run  fear  love  n/a
    0  run-1     2     0    1
    1  run-2     0     1    1
    2  total     2     1    2
    """
    as_series = {run: pd.Series(labels, dtype=object) for run, labels in labels_by_run.items()}
    found = {label for labels in as_series.values() for label in labels.dropna()}
    columns = [*classes, *sorted(found - set(classes))]
    rows = []
    for run, labels in as_series.items():
        counts = labels.value_counts(dropna=True)
        rows.append({"run": run, **{name: int(counts.get(name, 0)) for name in columns},
                     "n/a": int(labels.isna().sum())})
    table = pd.DataFrame(rows, columns=["run", *columns, "n/a"])
    total = {"run": "total", **table.drop(columns="run").sum().astype(int).to_dict()}
    return pd.concat([table, pd.DataFrame([total])], ignore_index=True)


def drop_rare_classes(labels: np.ndarray, min_volumes: int,
                      classes: Sequence[str] | None = None, *, where: str | None = None
                      ) -> tuple[np.ndarray, dict[str, int]]:
    """Unlabel the classes with fewer than ``min_volumes`` volumes (one subject's labels).

    Applied where an analysis builds its samples; the labels files keep every label.

    Parameters
    ----------
    labels : numpy.ndarray
        Class name or ``None`` per volume, over all runs of one subject.
    min_volumes : int
        Fewest volumes a class needs.
    classes : sequence of str, optional
        Keep only these classes; one with fewer volumes (even none) is reported too.
    where : str, optional
        The subject, named in the warning (e.g. ``"sub-01"``).

    Returns
    -------
    labels : numpy.ndarray
        A copy with the rare classes set to ``None``.
    dropped : dict of str to int
        Each dropped class and its number of volumes.

    Examples
    --------
    >>> import numpy as np
    >>> labels = np.array(["fear"] * 3 + ["love"] + [None], dtype=object)
    >>> kept, dropped = drop_rare_classes(labels, min_volumes=2, where="sub-01")
    >>> kept.tolist(), dropped
    (['fear', 'fear', 'fear', None, None], {'love': 1})
    """
    counts = pd.Series(labels, dtype=object).value_counts(dropna=True)
    kept = np.array(labels, dtype=object, copy=True)
    if classes is not None:
        kept[~pd.Series(kept, dtype=object).isin(list(classes)).to_numpy()] = None
        counts = counts.reindex(list(dict.fromkeys(classes)), fill_value=0)
    dropped = {str(name): int(count) for name, count in counts.items() if count < min_volumes}
    if dropped:
        kept[pd.Series(kept, dtype=object).isin(list(dropped)).to_numpy()] = None
        logger.warning("%sclasses with fewer than %d labelled volumes are left out: %s",
                       f"{where}: " if where else "", min_volumes,
                       ", ".join(f"{name} ({count} volumes)"
                                 for name, count in dropped.items()))
    return kept, dropped


@fill_doc
def check_labelled(labels_by_run: Mapping[str, np.ndarray], spec: LabelSpec,
                   scores_by_run: Mapping[str, pd.DataFrame] | None = None, *,
                   where: str | None = None) -> None:
    """Refuse a subject whose runs have no labelled volume at all, saying how far off it is.

    When some volumes are labelled, a warning names the classes that label none
    (the spec's classes, or for an identity ``trial_type`` spec the values found in
    the events): the analyses leave such a class out.

    Parameters
    ----------
    %(labels_by_run)s
    %(spec)s
    scores_by_run : mapping of str to pandas.DataFrame, optional
        :func:`score_volumes` per run; with them the message gives, per class, the
        number of volumes where the class was reported (score > 0) and its highest
        score, and how many volumes had candidates but were left unlabelled.
    where : str, optional
        What to name in the message (e.g. ``"sub-01"``).

    Raises
    ------
    InputDataError
        No labelled volume (exit code 65).

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> spec = LabelSpec("demo", "columns", {"fear": ("e_fear",)}, threshold=0.5)
    >>> scores = {"run-1": pd.DataFrame({"fear": [0.3, 0.4, np.nan]})}
    >>> check_labelled({"run-1": np.full(3, None)}, spec, scores, where="sub-01")
    Traceback (most recent call last):
    ...
    bids_affect.exceptions.InputDataError: sub-01: no volume labelled by label spec 'demo' (source columns, threshold 0.5, overlap max, hrf_lag 4 s) in 1 run(s), 3 volumes; per class, volumes reported and highest score: fear 2 (max 0.4); fix: check that the events belong to the runs, or use a spec with a lower threshold or other columns (docs/labels.md)
    """  # noqa: E501
    n_labelled = sum(int(pd.notna(pd.Series(labels, dtype=object)).sum())
                     for labels in labels_by_run.values())
    if n_labelled:
        _warn_unlabelled_classes(labels_by_run, spec, scores_by_run, where)
        return
    n_volumes = sum(len(labels) for labels in labels_by_run.values())
    threshold = f", threshold {spec.threshold:g}" if spec.source == "columns" else ""
    problem = (f"no volume labelled by label spec {spec.name!r} (source {spec.source}"
               f"{threshold}, overlap {spec.overlap}, hrf_lag {spec.hrf_lag:g} s) in "
               f"{len(labels_by_run)} run(s), {n_volumes} volumes")
    if scores_by_run:
        problem += "; " + _describe_scores(scores_by_run, spec)
    raise InputDataError(problem, path=where,
                         fix="check that the events belong to the runs, or use a spec with "
                             "a lower threshold or other columns (docs/labels.md)")


def _warn_unlabelled_classes(labels_by_run: Mapping[str, np.ndarray], spec: LabelSpec,
                             scores_by_run: Mapping[str, pd.DataFrame] | None,
                             where: str | None) -> None:
    """Warn about classes of the spec (or found in the events) that label no volume."""
    expected = list(spec.classes)
    for scores in (scores_by_run or {}).values():  # identity trial_type specs: values found
        expected += [str(name) for name in scores.columns if str(name) not in expected]
    found = {str(label) for labels in labels_by_run.values() for label in labels
             if pd.notna(label)}
    missing = [name for name in expected if name not in found]
    if missing:
        logger.warning("%sclass(es) with no labelled volume in %d run(s), left out of the "
                       "analyses: %s (label spec %r)", f"{where}: " if where else "",
                       len(labels_by_run), ", ".join(missing), spec.name)


def _describe_scores(scores_by_run: Mapping[str, pd.DataFrame], spec: LabelSpec) -> str:
    scores = pd.concat(list(scores_by_run.values()), ignore_index=True)
    if scores.shape[1] == 0:
        return "no event of any class"
    per_class = []
    for name in scores.columns:
        reported = scores[name] > 0
        highest = f" (max {scores[name].max():.3g})" if reported.any() else ""
        per_class.append(f"{name} {int(reported.sum())}{highest}")
    text = "per class, volumes reported and highest score: " + ", ".join(per_class)
    threshold = spec.threshold if spec.source == "columns" else 1.0
    n_unresolved = int((scores >= threshold - SCORE_TOLERANCE).any(axis=1).sum())
    if n_unresolved:
        text += (f"; {n_unresolved} volume(s) had candidates but were left unlabelled by "
                 f"overlap rule {spec.overlap!r} (ties or several classes)")
    return text
