"""Stimulus features: one contract for BIDS stim recordings, users' files and movies.

Every source gives a :class:`FeatureSet`: a name (the ``recording-NAME`` label,
alphanumeric), a float32 matrix ``values`` of shape ``(n_samples, n_features)``,
the time of each sample in seconds from the start of the run (the first BOLD
volume's acquisition, the same clock as events.tsv onsets), column names and
provenance. A sample holds from its time until the next sample's time (the last
one until ``end_time``).

Sources
    1. **BIDS continuous recordings** ``sub-X[_ses-S]_task-T[_run-R]_recording-NAME_stim.tsv.gz``
       with a JSON sidecar giving ``SamplingFrequency`` (Hz), ``StartTime`` (s, time of
       the first row from the run's start, negative allowed) and ``Columns``; no
       header, one row per sample (:func:`read_stim_recording`,
       :func:`write_stim_recording`). :func:`find_stim_recordings` returns those that
       apply to a BOLD run, from the raw dataset or derivatives indexed by pybids,
       under the BIDS inheritance principle (a recording without ``run`` applies to
       every run of its subject, session and task; the most specific file wins).
    2. **A user's file** given as ``NAME=PATH`` (:func:`parse_feature_argument`,
       :func:`read_feature_file`): a ``.tsv`` with a header row (one column per
       feature) or a ``.npy`` array ``(n_samples, n_features)``; one row per sample.
       Sample times come from an ``onset`` column of the TSV (seconds from the run's
       start, strictly increasing, any spacing), or else from a regular sampling:
       ``SamplingFrequency`` (Hz) and ``StartTime`` (s, default 0) in a JSON file beside
       the data (same name, ``.json``; it may also give ``Columns`` for an NPY), or the
       ``sampling_frequency``/``start_time`` arguments. A path may hold ``{subject}``,
       ``{session}``, ``{task}`` and ``{run}`` placeholders for per-run files
       (:func:`expand_feature_path`).
    3. **A movie**: the BIDS ``stim_file`` column of events.tsv names a video under
       ``bids_dir/stimuli/``, and the event's onset places the movie's first frame on
       the run's clock (:func:`find_movie_events`). The movie is decoded with PyAV,
       frames are streamed (at most one batch of frames is held in memory), every
       ``frame_step``-th frame (frames 0, 5, 10, ... by default, as seed 000's
       ``1:5:n``) is passed through an image network of :mod:`bids_affect.models.image`
       and one layer is read (:func:`extract_movie_features`,
       :func:`movie_features_for_run`). Convolution layers are averaged over space (one
       value per channel); fully connected layers are taken as they are. Sample times
       are the frames' presentation times plus the onset. Each movie event lasts its
       ``duration`` (frames after it are not used) or, when ``duration`` is ``n/a``,
       the whole movie. Events of a run must not overlap: which frame was on screen
       would be ambiguous. Several movies in a run are concatenated in time (a gap
       between them leaves volumes without samples, which :func:`features_per_volume`
       refuses). Rows repeating a movie and its onset are one presentation.

Per volume and resampling
    :func:`features_per_volume` averages the samples that fall in each volume's
    interval ``[i * TR + StartTime, (i + 1) * TR + StartTime)``, as seed 000 averages the
    sampled frames within each TR, and refuses intervals without samples.
    :func:`resample_features` gives the stream on any regular grid (e.g. the fine grid
    on which the encoding models convolve with the HRF) as the time average of the
    piecewise-constant stream over each output interval: it upsamples (each sample
    held until the next) and downsamples alike.

Examples
--------
>>> features = FeatureSet.regular("luminance", np.arange(8.0)[:, None],
...                               sampling_frequency=2.0, columns=["lum"])
>>> features.times.tolist()[:3], features.end_time
([0.0, 0.5, 1.0], 4.0)
>>> features_per_volume(features, tr=2.0, n_volumes=2).ravel().tolist()
[1.5, 5.5]
"""

from __future__ import annotations

import gzip
import json
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bids_affect._utils.validation import check_int, check_number
from bids_affect.exceptions import InputDataError, InputMissingError, UsageError
from bids_affect.io.derivatives import atomic_path, write_json

#: A stim recording's file name: the recording label and the extension.
RECORDING_PATTERN = re.compile(r"_recording-([A-Za-z0-9]+)_stim\.tsv\.gz$")

#: Video file extensions recognised in the ``stim_file`` column.
VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mkv", ".webm", ".avi", ".mov", ".mpg", ".mpeg",
                    ".ogv", ".wmv", ".flv")

#: Default frame step (every 5th frame, as seed 000).
DEFAULT_FRAME_STEP = 5

#: Tolerance (s) on sample times when checking regular sampling and coverage.
TIME_TOLERANCE = 1e-6

#: Entities that do not decide whether a stim recording applies to a BOLD run.
_NON_MATCHING_ENTITIES = frozenset({"suffix", "extension", "datatype", "recording"})

_NAME_PATTERN = re.compile(r"^[A-Za-z0-9]+$")


# --------------------------------------------------------------------------- the contract


def check_recording_name(name: Any) -> str:
    """``name`` if it is a valid ``recording-NAME`` label (letters and digits).

    Examples
    --------
    >>> check_recording_name("alexnetfc7")
    'alexnetfc7'
    """
    if not isinstance(name, str) or not _NAME_PATTERN.match(name):
        raise UsageError(f"must be letters and digits only (a BIDS recording-NAME label), "
                         f"got {name!r}", path="name",
                         fix="use bids_affect.io.derivatives.desc_label(name)")
    return name


@dataclass(frozen=True, eq=False)
class FeatureSet:
    """Stimulus features of one run: a matrix of samples with their times.

    Parameters
    ----------
    name : str
        The ``recording-NAME`` label (letters and digits).
    values : array, shape (n_samples, n_features)
        Stored as float32 (a 1-D array is one feature). NaN and infinite values are
        refused.
    times : array, shape (n_samples,)
        Seconds from the start of the run, strictly increasing.
    columns : sequence of str, optional
        Feature names (default ``NAME_0`` ...), unique.
    sampling_frequency : float, optional
        Set when the samples are regular (``times = StartTime + arange(n) / fs``);
        checked against ``times``.
    end_time : float, optional
        Until when the last sample holds; default: last time plus one sampling
        interval (the median interval when irregular).
    provenance : mapping
        Where the features come from (``source`` is the file, if any).

    Examples
    --------
    >>> fs = FeatureSet("colour", np.ones((3, 2)), times=[0.0, 0.4, 1.0])
    >>> fs.columns, fs.values.dtype, fs.sampling_frequency, round(fs.end_time, 2)
    (('colour_0', 'colour_1'), dtype('float32'), None, 1.5)
    """

    name: str
    values: np.ndarray
    times: np.ndarray
    columns: Sequence[str] | None = None
    sampling_frequency: float | None = None
    end_time: float | None = None
    provenance: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        check_recording_name(self.name)
        source = self.provenance.get("source") or f"feature set {self.name!r}"
        values = np.asarray(self.values)
        if values.ndim == 1:
            values = values[:, None]
        if values.ndim != 2 or values.shape[0] < 1 or values.shape[1] < 1:
            raise InputDataError(f"features must be a 2-D matrix (samples x features) with "
                                 f"at least one of each, got shape {np.shape(self.values)}",
                                 path=source)
        if not np.issubdtype(values.dtype, np.number) or np.iscomplexobj(values):
            raise InputDataError(f"features must be real numbers, got dtype {values.dtype}",
                                 path=source)
        values = values.astype(np.float32, copy=False)
        _check_finite(values, source)
        times = np.asarray(self.times, dtype=np.float64)
        if times.shape != (values.shape[0],):
            raise InputDataError(f"{times.size} sample times for {values.shape[0]} samples",
                                 path=source)
        if not np.all(np.isfinite(times)) or np.any(np.diff(times) <= 0):
            raise InputDataError("sample times must be finite and strictly increasing",
                                 path=source, fix="sort the samples by time; remove "
                                                  "duplicated times")
        columns = (tuple(f"{self.name}_{i}" for i in range(values.shape[1]))
                   if self.columns is None else tuple(str(c) for c in self.columns))
        if len(columns) != values.shape[1] or len(set(columns)) != len(columns):
            raise InputDataError(f"{len(columns)} column names ({len(set(columns))} unique) "
                                 f"for {values.shape[1]} features", path=source)
        frequency = self.sampling_frequency
        if frequency is not None:
            frequency = _check_frequency(frequency, "sampling_frequency")
            expected = times[0] + np.arange(times.size) / frequency
            if np.max(np.abs(times - expected)) > max(TIME_TOLERANCE, 1e-3 / frequency):
                raise InputDataError(f"sample times are not regular at {frequency} Hz",
                                     path=source)
        end_time = self.end_time
        if end_time is None:
            if frequency is not None:
                end_time = times[-1] + 1.0 / frequency
            else:
                end_time = times[-1] + (float(np.median(np.diff(times))) if times.size > 1
                                        else 0.0)
        if not end_time >= times[-1]:
            raise InputDataError(f"end_time {end_time} is before the last sample "
                                 f"({times[-1]} s)", path=source)
        for name, value in (("values", values), ("times", times), ("columns", columns),
                            ("sampling_frequency", frequency), ("end_time", float(end_time)),
                            ("provenance", dict(self.provenance))):
            object.__setattr__(self, name, value)

    @classmethod
    def regular(cls, name: str, values: np.ndarray, sampling_frequency: float,
                start_time: float = 0.0, columns: Sequence[str] | None = None,
                provenance: Mapping[str, Any] | None = None) -> FeatureSet:
        """Regularly sampled features: sample ``i`` at ``start_time + i / sampling_frequency``.

        Examples
        --------
        >>> FeatureSet.regular("x", np.zeros((4, 1)), 10.0, start_time=-0.2).times.tolist()
        [-0.2, -0.1, 0.0, 0.1]
        """
        frequency = _check_frequency(sampling_frequency, "sampling_frequency")
        n_samples = np.shape(values)[0] if np.ndim(values) else 0
        times = float(start_time) + np.arange(n_samples) / frequency
        # Rounding keeps -0.2 + 2 / 10 at 0.0 instead of 2.8e-17.
        times = np.round(times, 12)
        return cls(name, values, times, columns, frequency, None, dict(provenance or {}))

    def save(self, path: str | os.PathLike) -> Path:
        """Write the whole set to ``path`` (``.npz``, no pickle) atomically; see :meth:`load`.

        Examples
        --------
        >>> import tempfile
        >>> fs = FeatureSet("colour", np.ones((3, 2)), times=[0.0, 0.4, 1.0],
        ...                 columns=["r", "g"], end_time=2.0, provenance={"source": "m.mp4"})
        >>> back = FeatureSet.load(fs.save(Path(tempfile.mkdtemp()) / "colour.npz"))
        >>> back.name, back.columns, back.sampling_frequency, back.end_time, back.provenance
        ('colour', ('r', 'g'), None, 2.0, {'source': 'm.mp4'})
        """
        path = Path(path)
        with atomic_path(path) as tmp, open(tmp, "wb") as stream:
            np.savez(stream, name=np.array(self.name), values=self.values, times=self.times,
                     columns=np.asarray(self.columns, dtype=str),
                     sampling_frequency=np.nan if self.sampling_frequency is None
                     else self.sampling_frequency, end_time=self.end_time,
                     provenance=np.array(json.dumps(dict(self.provenance), default=str)))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> FeatureSet:
        """A set written by :meth:`save`."""
        with np.load(Path(path), allow_pickle=False) as stored:
            frequency = float(stored["sampling_frequency"])
            return cls(str(stored["name"]), stored["values"], stored["times"],
                       stored["columns"].tolist(), None if math.isnan(frequency) else frequency,
                       float(stored["end_time"]), json.loads(str(stored["provenance"])))

    @property
    def n_samples(self) -> int:
        """Number of samples (rows)."""
        return int(self.values.shape[0])

    @property
    def n_features(self) -> int:
        """Number of features (columns)."""
        return int(self.values.shape[1])

    @property
    def start_time(self) -> float:
        """Time of the first sample (s from the run's start)."""
        return float(self.times[0])

    @property
    def source(self) -> str:
        """The file the features come from, or their name."""
        return str(self.provenance.get("source") or f"feature set {self.name!r}")


def _check_frequency(value: Any, name: str) -> float:
    return check_number(value, name, positive=True)


def _check_finite(values: np.ndarray, source: str | os.PathLike) -> None:
    finite = np.isfinite(values)
    if not finite.all():
        row, column = (int(i) for i in np.argwhere(~finite)[0])
        raise InputDataError(f"features hold {int((~finite).sum())} NaN or infinite values "
                             f"(first at row {row + 1}, column {column + 1})", path=source,
                             fix="remove or interpolate the missing samples")


# --------------------------------------------------------------------------- BIDS recordings


def recording_name(path: str | os.PathLike) -> str:
    """The ``recording-NAME`` label of a ``..._recording-NAME_stim.tsv.gz`` file.

    Examples
    --------
    >>> recording_name("sub-01_task-movie_run-1_recording-alexnetfc7_stim.tsv.gz")
    'alexnetfc7'
    """
    match = RECORDING_PATTERN.search(Path(path).name)
    if match is None:
        raise UsageError("not a BIDS stim recording (…_recording-NAME_stim.tsv.gz)",
                         path=path, fix="name the file …_recording-NAME_stim.tsv.gz")
    return match.group(1)


def _recording_sidecar(path: Path) -> Path:
    return path.with_name(path.name[: -len(".tsv.gz")] + ".json")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        content = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InputMissingError("JSON sidecar not found", path=path) from None
    except (OSError, ValueError) as err:
        raise InputDataError(f"cannot read JSON ({err})", path=path,
                             fix="correct the JSON syntax") from err
    if not isinstance(content, dict):
        raise InputDataError("JSON sidecar must hold an object", path=path)
    return content


def read_stim_recording(path: str | os.PathLike,
                        metadata: Mapping[str, Any] | None = None) -> FeatureSet:
    """Read a BIDS continuous recording ``..._recording-NAME_stim.tsv.gz``.

    Parameters
    ----------
    path : path
        The gzipped TSV (no header; one row per sample, one column per feature).
    metadata : mapping, optional
        Its sidecar's content (e.g. ``layout.get_metadata(path)``, which applies the
        inheritance principle); default: the JSON file beside it.

    Raises
    ------
    InputMissingError
        (66) when the file or its sidecar is missing.
    InputDataError
        (65) when ``SamplingFrequency``, ``StartTime`` or ``Columns`` is missing or
        invalid, when the number of columns differs from ``Columns``, or for empty,
        non-numeric, NaN or unreadable data.

    Examples
    --------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "sub-01_task-movie_recording-lum_stim.tsv.gz"
    >>> written = write_stim_recording(FeatureSet.regular(
    ...     "lum", [[0.5], [0.25]], sampling_frequency=10.0, columns=["luminance"]), path)
    >>> features = read_stim_recording(path)
    >>> features.name, features.values.ravel().tolist(), features.times.tolist()
    ('lum', [0.5, 0.25], [0.0, 0.1])
    """
    path = Path(path)
    name = recording_name(path)
    if not path.is_file():
        raise InputMissingError("stim recording not found", path=path)
    if not metadata:
        metadata = _read_json(_recording_sidecar(path))
    sidecar = _recording_sidecar(path)
    for key in ("SamplingFrequency", "StartTime", "Columns"):
        if key not in metadata:
            raise InputDataError(f"the sidecar of this recording lacks {key}", path=path,
                                 fix=f"add {key} to {sidecar.name} (SamplingFrequency in Hz, "
                                     "StartTime in s from the run's start, Columns: names)")
    try:
        frequency = _check_frequency(metadata["SamplingFrequency"], "SamplingFrequency")
        start_time = float(metadata["StartTime"])
    except (UsageError, TypeError, ValueError) as err:
        raise InputDataError(f"SamplingFrequency must be a positive number and StartTime a "
                             f"number, got {metadata['SamplingFrequency']!r} and "
                             f"{metadata['StartTime']!r}", path=path,
                             fix=f"correct {sidecar.name}") from err
    columns = metadata["Columns"]
    if (not isinstance(columns, list) or not columns
            or not all(isinstance(c, str) for c in columns)):
        raise InputDataError(f"Columns must be a list of names, got {columns!r}", path=path,
                             fix=f"correct {sidecar.name}")
    values = _read_headerless_tsv(path)
    if values.shape[1] != len(columns):
        raise InputDataError(f"the file has {values.shape[1]} columns but Columns lists "
                             f"{len(columns)}", path=path,
                             fix=f"make Columns in {sidecar.name} name every column")
    _check_finite(values, path)
    return FeatureSet.regular(name, values, frequency, start_time, columns,
                              {"source": str(path), "metadata": dict(metadata)})


def _read_headerless_tsv(path: Path) -> np.ndarray:
    try:
        table = pd.read_csv(path, sep="\t", header=None, compression="gzip",
                            na_values=["n/a"], keep_default_na=True, dtype=np.float64)
    except pd.errors.EmptyDataError:
        raise InputDataError("the recording holds no samples", path=path) from None
    except (ValueError, TypeError) as err:
        raise InputDataError(f"non-numeric or ragged data ({str(err).splitlines()[0]})",
                             path=path, fix="write numbers only, the same number per row, "
                                            "tab-separated, without a header") from err
    except (OSError, EOFError, UnicodeDecodeError, pd.errors.ParserError) as err:
        raise InputDataError(f"cannot read the gzipped TSV ({type(err).__name__}: {err})",
                             path=path, fix="re-create the file (gzip of a tab-separated "
                                            "table without header)") from err
    if table.shape[0] == 0:
        raise InputDataError("the recording holds no samples", path=path)
    return table.to_numpy(dtype=np.float32)


def write_stim_recording(features: FeatureSet, path: str | os.PathLike,
                         metadata: Mapping[str, Any] | None = None) -> Path:
    """Write regularly sampled features as a BIDS continuous recording, atomically.

    Writes the JSON sidecar (``SamplingFrequency``, ``StartTime``, ``Columns``, the
    features' provenance under ``Provenance``, and ``metadata``, e.g. the derivatives
    writer's standard fields) and then the data: a gzipped TSV without header whose
    values are written with 9 significant digits, which float32 reads back exactly.
    Each file goes to a temporary name first, so the data file exists only once both
    are complete. The gzip header holds no time stamp or name: equal features give
    equal bytes. Text is slow for large matrices (3,600 x 4,096 values: about 5 s of
    CPU to write, 2 s to read, 86 MB): features are computed once and reused.

    Parameters
    ----------
    features : FeatureSet
        Regularly sampled (``sampling_frequency`` set; see :func:`resample_features`).
    path : path
        Ending in ``_recording-NAME_stim.tsv.gz`` with NAME the features' name.
    metadata : mapping, optional
        More sidecar fields.

    Examples
    --------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "sub-01_task-movie_recording-x_stim.tsv.gz"
    >>> write_stim_recording(FeatureSet.regular("x", [[1.0]], 1.0), path).name
    'sub-01_task-movie_recording-x_stim.tsv.gz'
    """
    path = Path(path)
    if recording_name(path) != features.name:
        raise UsageError(f"file name says recording-{recording_name(path)} but the features "
                         f"are named {features.name!r}", path=path)
    if features.sampling_frequency is None:
        raise UsageError("BIDS recordings are regularly sampled; these features are not",
                         path=path, fix="resample them first with resample_features()")
    content: dict[str, Any] = {"SamplingFrequency": features.sampling_frequency,
                               "StartTime": features.start_time,
                               "Columns": list(features.columns)}
    if features.provenance:
        content["Provenance"] = features.provenance
    content.update(metadata or {})
    write_json(_recording_sidecar(path), content)
    # One C-level format per row is 5x faster than pandas' to_csv with a float format,
    # and gzip level 1 is 7x faster than level 9 for a file 10% larger (measured on
    # 360 x 4,096 float32 values).
    row_format = "\t".join(["%.9g"] * features.n_features) + "\n"
    with atomic_path(path) as tmp, open(tmp, "wb") as raw, \
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0,
                          compresslevel=1) as zipped:
        for first in range(0, features.n_samples, 256):
            rows = features.values[first:first + 256].tolist()
            zipped.write("".join(row_format % tuple(row) for row in rows).encode("ascii"))
    return path


def _same_entity(value: Any, wanted: Any) -> bool:
    if value is None or wanted is None:
        return value is wanted
    try:
        return int(value) == int(wanted)
    except (TypeError, ValueError):
        return str(value) == str(wanted)


def find_stim_recordings(layout, entities: Mapping[str, Any],
                         names: Sequence[str] | None = None) -> dict[str, Path]:
    """The ``recording-NAME`` stim files that apply to one BOLD run, by name.

    A recording applies when each of its entities equals the run's (so another run's
    recording never does; one without ``run`` applies to every run); among those of
    one name the most specific file (with the most entities) wins. Derivatives
    indexed by ``layout`` (``-d``) are searched too.

    Parameters
    ----------
    layout : bids.BIDSLayout
        Index of the dataset (and derivatives).
    entities : mapping
        The BOLD run's entities (``subject``, ``task``, ``session``, ``run`` ...).
    names : sequence of str, optional
        Recordings wanted; each must be found.

    Raises
    ------
    InputMissingError
        (66) when a wanted name has no file (the message lists those found).
    InputDataError
        (65) when two equally specific files of one name apply (e.g. the same file
        name in the raw dataset and in derivatives).

    Examples
    --------
    >>> import tempfile
    >>> from bids import BIDSLayout
    >>> root = Path(tempfile.mkdtemp())
    >>> _ = (root / "dataset_description.json").write_text(
    ...     '{"Name": "x", "BIDSVersion": "1.10.0"}')
    >>> func = root / "sub-01" / "func"
    >>> func.mkdir(parents=True)
    >>> for name in ("sub-01_task-movie_run-1_bold.nii.gz",
    ...              "sub-01_task-movie_recording-lum_stim.tsv.gz"):
    ...     _ = (func / name).write_bytes(b"")
    >>> found = find_stim_recordings(BIDSLayout(root), {"subject": "01", "task": "movie",
    ...                                                 "run": 1})
    >>> {name: path.name for name, path in found.items()}
    {'lum': 'sub-01_task-movie_recording-lum_stim.tsv.gz'}
    """
    own = {key: value for key, value in entities.items() if value is not None}
    if "subject" not in own or "task" not in own:
        raise UsageError(f"must name at least the subject and task, got {dict(entities)}",
                         path="entities")
    candidates: dict[str, list[tuple[int, str]]] = {}
    for found in layout.get(suffix="stim", extension=".tsv.gz", subject=own["subject"],
                            task=own["task"]):
        their = {key: value for key, value in found.get_entities().items()
                 if key not in _NON_MATCHING_ENTITIES}
        if not all(_same_entity(value, own.get(key)) for key, value in their.items()):
            continue
        match = RECORDING_PATTERN.search(Path(found.path).name)
        if match is None:
            continue
        candidates.setdefault(match.group(1), []).append((len(their), found.path))
    chosen = {}
    for name, options in sorted(candidates.items()):
        options.sort(reverse=True)
        if len(options) > 1 and options[0][0] == options[1][0]:
            raise InputDataError(f"two recordings named {name!r} apply to this run: "
                                 f"{options[0][1]} and {options[1][1]}", path=options[0][1],
                                 fix="remove one, or rename one (another recording-NAME)")
        chosen[name] = Path(options[0][1])
    if names is not None:
        missing = [name for name in names if name not in chosen]
        if missing:
            run = ", ".join(f"{key}-{value}" for key, value in own.items()
                            if key not in ("suffix", "extension", "datatype"))
            raise InputMissingError(
                f"no recording-{missing[0]}_stim.tsv.gz applies to the run ({run}); "
                f"found: {', '.join(chosen) or 'none'}", path=layout.root,
                fix="add the recording (or its derivatives folder with -d), or choose "
                    "among the feature sets found")
        chosen = {name: chosen[name] for name in names}
    return chosen


def load_stim_recordings(layout, entities: Mapping[str, Any],
                         names: Sequence[str] | None = None) -> dict[str, FeatureSet]:
    """Read the recordings of :func:`find_stim_recordings`, with inherited sidecars.

    Examples
    --------
    >>> import tempfile
    >>> from bids import BIDSLayout
    >>> root = Path(tempfile.mkdtemp())
    >>> _ = (root / "dataset_description.json").write_text(
    ...     '{"Name": "x", "BIDSVersion": "1.10.0"}')
    >>> (root / "sub-01" / "func").mkdir(parents=True)
    >>> _ = (root / "sub-01/func/sub-01_task-movie_bold.nii.gz").write_bytes(b"")
    >>> _ = write_stim_recording(FeatureSet.regular("lum", [[1.0], [2.0]], 1.0),
    ...     root / "sub-01/func/sub-01_task-movie_recording-lum_stim.tsv.gz")
    >>> loaded = load_stim_recordings(BIDSLayout(root), {"subject": "01", "task": "movie"})
    >>> loaded["lum"].values.ravel().tolist()
    [1.0, 2.0]
    """
    return {name: read_stim_recording(path, layout.get_metadata(str(path)) or None)
            for name, path in find_stim_recordings(layout, entities, names).items()}


# --------------------------------------------------------------------------- users' files


def parse_feature_argument(text: str) -> tuple[str, str]:
    """Split ``NAME=PATH`` (``--stimulus-features``) into a recording name and a path.

    Examples
    --------
    >>> parse_feature_argument("lum=/data/lum_{run}.tsv")
    ('lum', '/data/lum_{run}.tsv')
    """
    name, separator, path = str(text).partition("=")
    if not separator or not path:
        raise UsageError(f"must be NAME=PATH, got {text!r}", path="stimulus_features",
                         fix="e.g. --stimulus-features luminance=/data/luminance.tsv")
    try:
        check_recording_name(name)
    except UsageError:
        raise UsageError(f"NAME must be letters and digits, got {name!r}",
                         path="stimulus_features") from None
    return name, path


def expand_feature_path(template: str | os.PathLike, entities: Mapping[str, Any]) -> Path:
    """Fill ``{subject}``, ``{session}``, ``{task}`` and ``{run}`` in a feature file's path.

    Examples
    --------
    >>> expand_feature_path("feat/sub-{subject}_run-{run}.npy",
    ...                     {"subject": "01", "run": 2}).as_posix()
    'feat/sub-01_run-2.npy'
    """
    values = {key: ("" if entities.get(key) is None else str(entities[key]))
              for key in ("subject", "session", "task", "run")}
    try:
        return Path(str(template).format(**values))
    except (KeyError, IndexError, ValueError) as err:
        raise UsageError(f"placeholders may be {{subject}}, {{session}}, {{task}} and "
                         f"{{run}} only, got {str(template)!r}",
                         path="stimulus_features") from err


def _regular_timing(path: Path, sidecar: Mapping[str, Any], sampling_frequency: float | None,
                    start_time: float | None) -> tuple[float, float]:
    given = {"SamplingFrequency": sampling_frequency, "StartTime": start_time}
    timing = {}
    for key, argument in given.items():
        in_file = sidecar.get(key)
        if in_file is not None and argument is not None and float(in_file) != float(argument):
            raise UsageError(f"{key} is {in_file} in the JSON beside the file but "
                             f"{argument} was given", path=path, fix="give one of them")
        timing[key] = in_file if in_file is not None else argument
    if timing["SamplingFrequency"] is None:
        raise UsageError("the sample times are unknown: no onset column, no "
                         "SamplingFrequency in a JSON beside the file, and no "
                         "sampling_frequency given", path=path,
                         fix=f"write {path.with_suffix('.json').name} with SamplingFrequency "
                             "(Hz) and StartTime (s), or add an onset column (TSV)")
    start = timing["StartTime"] if timing["StartTime"] is not None else 0.0
    try:
        return (_check_frequency(timing["SamplingFrequency"], "SamplingFrequency"),
                check_number(start, "StartTime"))
    except UsageError as err:
        raise UsageError(err.problem.replace("must", f"{err.path} must", 1), path=path,
                         fix="give SamplingFrequency in Hz (> 0) and StartTime in s") from None


def read_feature_file(path: str | os.PathLike, name: str, *,
                      sampling_frequency: float | None = None,
                      start_time: float | None = None) -> FeatureSet:
    """Read a user's feature file (TSV with header, or NPY); see the module docstring.

    Parameters
    ----------
    path : path
        ``.tsv`` (tab-separated, header row, optional ``onset`` column) or ``.npy``
        (2-D, samples x features).
    name : str
        The feature set's name (letters and digits).
    sampling_frequency, start_time : float, optional
        Regular sampling, when neither an ``onset`` column nor a JSON file beside the
        data gives it (``start_time`` defaults to 0).

    Examples
    --------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "lum.tsv"
    >>> _ = path.write_text("onset\\tlum\\n0.0\\t1\\n0.5\\t3\\n2.0\\t5\\n")
    >>> features = read_feature_file(path, "lum")
    >>> features.times.tolist(), features.columns
    ([0.0, 0.5, 2.0], ('lum',))
    """
    check_recording_name(name)
    path = Path(path)
    if path.suffix not in (".tsv", ".npy"):
        raise UsageError(f"feature files must be .tsv or .npy, got {path.name!r}", path=path,
                         fix="convert the features to a TSV with a header, or to NPY")
    if not path.is_file():
        raise InputMissingError("feature file not found", path=path,
                                fix="check the PATH of --stimulus-features NAME=PATH")
    json_path = path.with_suffix(".json")
    sidecar = _read_json(json_path) if json_path.is_file() else {}
    provenance = {"source": str(path), "metadata": sidecar}
    if path.suffix == ".npy":
        try:
            values = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as err:
            raise InputDataError(f"cannot read NPY ({err})", path=path) from err
        if values.ndim not in (1, 2) or values.shape[0] == 0:
            raise InputDataError(f"must be a 2-D array (samples x features), got shape "
                                 f"{values.shape}", path=path)
        _check_finite(np.asarray(values), path)
        frequency, start = _regular_timing(path, sidecar, sampling_frequency, start_time)
        return FeatureSet.regular(name, values, frequency, start, sidecar.get("Columns"),
                                  provenance)
    try:
        table = pd.read_csv(path, sep="\t", na_values=["n/a"])
    except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError) as err:
        raise InputDataError(f"cannot read the TSV ({str(err).splitlines()[0]})",
                             path=path) from err
    if table.shape[0] == 0:
        raise InputDataError("the file holds no samples", path=path)
    non_numeric = [c for c in table.columns if not pd.api.types.is_numeric_dtype(table[c])]
    if non_numeric:
        raise InputDataError(f"column {non_numeric[0]!r} is not numeric", path=path,
                             fix="write numbers only (n/a is refused too)")
    if "onset" in table.columns:
        if sidecar.get("SamplingFrequency") is not None or sampling_frequency is not None:
            raise UsageError("sample times are given twice: an onset column and a "
                             "SamplingFrequency", path=path, fix="give one of them")
        onsets = table.pop("onset").to_numpy(dtype=np.float64)
        values = table.to_numpy(dtype=np.float64)
        _check_finite(values, path)
        return FeatureSet(name, values, onsets, list(table.columns), provenance=provenance)
    values = table.to_numpy(dtype=np.float64)
    _check_finite(values, path)
    frequency, start = _regular_timing(path, sidecar, sampling_frequency, start_time)
    return FeatureSet.regular(name, values, frequency, start, list(table.columns), provenance)


# --------------------------------------------------------------------------- movies


@dataclass(frozen=True)
class MovieInfo:
    """What a movie file's container says about its video stream."""

    path: Path
    frame_rate: float
    duration: float
    n_frames: int
    width: int
    height: int
    codec: str


def _open_movie(path: Path):
    import av

    if not path.is_file():
        raise InputMissingError("movie file not found", path=path,
                                fix="put the movie under bids_dir/stimuli/ as the stim_file "
                                    "column of events.tsv names it")
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError, ValueError) as err:
        raise InputDataError(f"cannot decode the movie ({type(err).__name__}: {err})",
                             path=path, fix="re-encode it (e.g. H.264 in .mp4) or replace "
                                            "the file") from err
    if not container.streams.video:
        container.close()
        raise InputDataError("the file has no video stream", path=path,
                             fix="give a movie file; audio-only stimuli have no frames")
    return container


def probe_movie(path: str | os.PathLike) -> MovieInfo:
    """Frame rate, duration and size of a movie, from its container (nothing decoded).

    Examples
    --------
    >>> import tempfile
    >>> from bids_affect.datasets.movie import write_synthetic_movie
    >>> path = Path(tempfile.mkdtemp()) / "m.mp4"
    >>> _ = write_synthetic_movie(path, duration=2.0, fps=10, seed=0)
    >>> info = probe_movie(path)
    >>> info.frame_rate, info.duration, info.n_frames
    (10.0, 2.0, 20)
    """
    path = Path(path)
    container = _open_movie(path)
    try:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        if not rate or float(rate) <= 0:
            raise InputDataError("the movie's frame rate is unknown", path=path,
                                 fix="re-encode it with a constant frame rate")
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / 1_000_000  # AV_TIME_BASE: microseconds
        else:
            duration = math.nan
        n_frames = int(stream.frames) or int(round(duration * float(rate)))
        return MovieInfo(path, float(rate), duration, n_frames, stream.codec_context.width,
                         stream.codec_context.height, stream.codec_context.name)
    finally:
        container.close()


@dataclass(frozen=True)
class MovieFrame:
    """One decoded frame: its index in the movie, time (s from the movie's start), pixels."""

    index: int
    time: float
    image: np.ndarray


def iter_movie_frames(path: str | os.PathLike, frame_step: int = DEFAULT_FRAME_STEP, *,
                      until: float | None = None) -> Iterator[MovieFrame]:
    """Decode a movie frame by frame; yield every ``frame_step``-th frame as RGB.

    Frames are decoded one at a time and only the sampled ones are converted to RGB
    arrays; nothing is kept. Times are presentation times from the movie's start (the
    stream's start time, so the first frame is at 0).

    Parameters
    ----------
    path : path
        The movie.
    frame_step : int
        Yield frames 0, step, 2 * step, ...
    until : float, optional
        Stop before the first frame shown at or after this time (s).

    Examples
    --------
    >>> import tempfile
    >>> from bids_affect.datasets.movie import write_synthetic_movie
    >>> path = Path(tempfile.mkdtemp()) / "m.mp4"
    >>> _ = write_synthetic_movie(path, duration=2.0, fps=10, seed=0)
    >>> [(f.index, round(f.time, 2)) for f in iter_movie_frames(path, 7)]
    [(0, 0.0), (7, 0.7), (14, 1.4)]
    """
    import av

    _check_frame_step(frame_step)
    path = Path(path)
    container = _open_movie(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = float(stream.average_rate or stream.guessed_rate or 0) or None
        origin = (float(stream.start_time * stream.time_base)
                  if stream.start_time is not None and stream.time_base is not None else None)
        index = 0
        try:
            for frame in container.decode(stream):
                if frame.time is not None:
                    if origin is None:
                        origin = float(frame.time)
                    time = float(frame.time) - origin
                elif rate:
                    time = index / rate
                else:
                    raise InputDataError("frames have no time stamps and the frame rate is "
                                         "unknown", path=path, fix="re-encode the movie")
                if until is not None and time >= until - TIME_TOLERANCE:
                    return
                if index % frame_step == 0:
                    yield MovieFrame(index, time, frame.to_ndarray(format="rgb24"))
                index += 1
        except av.error.FFmpegError as err:
            raise InputDataError(f"the movie cannot be decoded after frame {index} "
                                 f"({type(err).__name__}: {err})", path=path,
                                 fix="re-encode it or replace the file") from err
        if index == 0:
            raise InputDataError("the movie has no decodable frame", path=path,
                                 fix="re-encode it or replace the file")
    finally:
        container.close()


def _check_frame_step(frame_step: Any) -> int:
    return check_int(frame_step, "frame_step", minimum=1)


def extract_movie_features(path: str | os.PathLike, extractor, *, name: str,
                           frame_step: int = DEFAULT_FRAME_STEP, onset: float = 0.0,
                           duration: float | None = None) -> FeatureSet:
    """Features of every ``frame_step``-th frame of a movie, timed on the run's clock.

    Frames are streamed from :func:`iter_movie_frames` and passed to the extractor in
    batches of ``extractor.batch_size``: at most one batch of frames is in memory.

    Parameters
    ----------
    path : path
        The movie.
    extractor : bids_affect.models.image.ImageFeatures
        The network and layer (fitted here if it is not yet).
    name : str
        The feature set's name (e.g. ``alexnetfc7``, :func:`feature_set_name`).
    frame_step : int
        Every Nth frame (5 as seed 000).
    onset : float
        When the movie's first frame was shown, in s from the run's start.
    duration : float, optional
        How long the movie was shown (frames after it are left out); default: all.

    Returns
    -------
    FeatureSet
        Times ``onset + frame time``; regularly sampled (``fps / frame_step``) when the
        frame rate is constant; ``end_time`` is ``onset`` plus the movie's duration (or
        the event's, when shorter).

    Examples
    --------
    >>> import tempfile
    >>> from bids_affect.datasets.movie import write_synthetic_movie
    >>> from bids_affect.models.image import ImageFeatures
    >>> path = Path(tempfile.mkdtemp()) / "m.mp4"
    >>> _ = write_synthetic_movie(path, duration=2.0, fps=10, seed=0)
    >>> extractor = ImageFeatures("alexnet", "conv1", weights="random", random_state=0)
    >>> features = extract_movie_features(path, extractor, name="alexnetconv1", onset=3.0)
    >>> features.values.shape, features.times[:2].tolist(), features.sampling_frequency
    ((4, 64), [3.0, 3.5], 2.0)
    """
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    frame_step = _check_frame_step(frame_step)
    check_recording_name(name)
    onset = float(onset)
    if not math.isfinite(onset):
        raise InputDataError(f"the movie's onset must be a number, got {onset}", path=path)
    try:
        check_is_fitted(extractor)
    except NotFittedError:
        extractor.fit()
    info = probe_movie(path)
    blocks, times, batch, indices = [], [], [], []

    def flush():
        blocks.append(extractor.transform(np.stack(batch)))
        batch.clear()

    for frame in iter_movie_frames(path, frame_step, until=duration):
        batch.append(frame.image)
        times.append(frame.time)
        indices.append(frame.index)
        if len(batch) == extractor.batch_size:
            flush()
    if batch:
        flush()
    if not times:
        raise InputDataError("no frame of the movie falls within its event's duration",
                             path=path, fix="check the onset and duration of the event")
    frame_times = np.asarray(times)
    regular = np.asarray(indices) / info.frame_rate
    is_regular = np.max(np.abs(frame_times - regular)) <= 0.5e-3 + TIME_TOLERANCE
    # The last sampled frame stands for the frames after it, up to the movie's end (the
    # container's duration, unless the frames outlast it).
    movie_end = frame_times[-1] + 1.0 / info.frame_rate
    if math.isfinite(info.duration):
        movie_end = max(movie_end, info.duration)
    end = movie_end if duration is None else min(movie_end, float(duration))
    provenance = {"source": str(path), "onset": onset, "event_duration": duration,
                  "frame_step": frame_step, "frame_rate": info.frame_rate,
                  "movie_duration": info.duration, "n_frames_sampled": len(times),
                  "size": [info.height, info.width], "codec": info.codec,
                  "extractor": extractor.provenance()}
    values = np.concatenate(blocks)
    columns = list(extractor.get_feature_names_out())
    if is_regular:
        return FeatureSet(name, values, onset + regular, columns,
                          info.frame_rate / frame_step, onset + end, provenance)
    return FeatureSet(name, values, onset + frame_times, columns, None, onset + end,
                      provenance)


def feature_set_name(network: str, layer: str) -> str:
    """The default name of movie features: network and layer, letters and digits only.

    Examples
    --------
    >>> feature_set_name("alexnet", "fc7"), feature_set_name("vgg16", "conv5_3")
    ('alexnetfc7', 'vgg16conv53')
    """
    return re.sub(r"[^A-Za-z0-9]", "", f"{network}{layer}")


@dataclass(frozen=True)
class MovieEvent:
    """A movie shown during a run: the file, its onset and (if known) duration."""

    path: Path
    onset: float
    duration: float | None
    stim_file: str


def find_movie_events(events_path: str | os.PathLike,
                      stimuli_dir: str | os.PathLike) -> list[MovieEvent]:
    """Movie presentations of a run, from the ``stim_file`` column of its events.tsv.

    Rows whose ``stim_file`` has a video extension (:data:`VIDEO_EXTENSIONS`) are
    movie presentations: ``stimuli_dir / stim_file`` is shown from ``onset`` for
    ``duration`` seconds (``n/a``: the whole movie). Rows repeating the same movie and
    onset are one presentation. Other stimuli (images, sounds) are ignored. Sorted by
    onset.

    Raises
    ------
    InputMissingError
        (66) when a movie named by ``stim_file`` is not under ``stimuli_dir``.
    InputDataError
        (65) when a movie row's onset is not a number, or its duration is negative.

    Examples
    --------
    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> (root / "stimuli").mkdir()
    >>> _ = (root / "stimuli" / "film.mp4").write_bytes(b"")
    >>> _ = (root / "events.tsv").write_text(
    ...     "onset\\tduration\\tstim_file\\n2.0\\tn/a\\tfilm.mp4\\n5\\t1\\tface.png\\n")
    >>> [(e.stim_file, e.onset, e.duration) for e in find_movie_events(
    ...     root / "events.tsv", root / "stimuli")]
    [('film.mp4', 2.0, None)]
    """
    events_path = Path(events_path)
    try:
        table = pd.read_csv(events_path, sep="\t", na_values=["n/a"], keep_default_na=False,
                            dtype={"stim_file": str})
    except FileNotFoundError:
        raise InputMissingError("events file not found", path=events_path) from None
    except (ValueError, OSError, pd.errors.ParserError) as err:
        raise InputDataError(f"cannot read events ({str(err).splitlines()[0]})",
                             path=events_path) from err
    if "stim_file" not in table.columns:
        return []
    stim_files = table["stim_file"].fillna("").astype(str).str.strip()
    is_movie = stim_files.map(lambda name: Path(name).suffix.lower() in VIDEO_EXTENSIONS)
    missing_column = pd.Series(np.nan, index=table.index)
    onsets = pd.to_numeric(table.get("onset", missing_column), errors="coerce")
    durations = pd.to_numeric(table.get("duration", missing_column), errors="coerce")
    events: dict[tuple[str, float], MovieEvent] = {}
    for position in np.flatnonzero(is_movie.to_numpy()):
        row_number = position + 2  # the header is line 1
        stim_file, onset = stim_files.iloc[position], onsets.iloc[position]
        duration = durations.iloc[position]
        if not np.isfinite(onset):
            raise InputDataError(f"line {row_number}: the onset of movie {stim_file!r} is "
                                 "not a number", path=events_path,
                                 fix="give the time (s from the run's start) the movie began")
        if np.isfinite(duration) and duration <= 0:
            raise InputDataError(f"line {row_number}: the duration of movie {stim_file!r} "
                                 f"is {duration}", path=events_path,
                                 fix="give how long the movie was shown, or n/a")
        path = Path(stimuli_dir) / stim_file
        if not path.is_file():
            raise InputMissingError(
                f"movie {stim_file!r} (events line {row_number}) not found under "
                f"{Path(stimuli_dir)}", path=path,
                fix=f"put the movie at {path}, or correct the stim_file column of "
                    f"{events_path.name}")
        key = (stim_file, float(onset))
        events.setdefault(key, MovieEvent(path, float(onset),
                                          float(duration) if np.isfinite(duration) else None,
                                          stim_file))
    return sorted(events.values(), key=lambda event: event.onset)


def _check_no_overlap(events: Sequence[MovieEvent], infos: Sequence[MovieInfo],
                      events_path: Path) -> list[float]:
    """Each event's end; overlapping presentations are refused."""
    ends = [event.onset + (event.duration if event.duration is not None else info.duration)
            for event, info in zip(events, infos)]
    for index in range(1, len(events)):
        if events[index].onset < ends[index - 1] - TIME_TOLERANCE:
            raise InputDataError(
                f"movies overlap: {events[index - 1].stim_file!r} is shown "
                f"{events[index - 1].onset:g}-{ends[index - 1]:g} s and "
                f"{events[index].stim_file!r} from {events[index].onset:g} s, so which "
                "frame was on screen is ambiguous", path=events_path,
                fix="give each movie row the duration it was shown (one row per "
                    "presentation), and annotations in rows without stim_file")
    return ends


def _check_run_coverage(start: float, end: float, run_start: float, run_end: float,
                        source: str, what: str) -> None:
    if start > run_start + TIME_TOLERANCE or end < run_end - TIME_TOLERANCE:
        raise InputDataError(
            f"{what} cover {start:g}-{end:g} s of the run's clock but the run needs "
            f"{run_start:g}-{run_end:g} s", path=source,
            fix="give features (or a movie and onset) that span the whole run, or analyse "
                "fewer volumes")


def movie_features_for_run(events_path: str | os.PathLike, stimuli_dir: str | os.PathLike,
                           extractor, *, name: str, frame_step: int = DEFAULT_FRAME_STEP,
                           tr: float | None = None, n_volumes: int | None = None,
                           start_time: float = 0.0) -> FeatureSet:
    """Features of the movie(s) a run's events.tsv names, on the run's clock.

    With ``tr`` and ``n_volumes``, the movies' container metadata are checked before
    anything is decoded: they must span the run ``[start_time, start_time + n_volumes *
    tr)`` and sample it at least once per volume (``frame_step / frame_rate <= tr``).

    Raises
    ------
    InputMissingError
        (66) when events.tsv names no movie, or a movie file is missing.
    InputDataError
        (65) when a movie is undecodable, movies overlap, or they do not cover the run.

    Examples
    --------
    >>> import tempfile
    >>> from bids_affect.datasets.movie import write_synthetic_movie
    >>> from bids_affect.models.image import ImageFeatures
    >>> root = Path(tempfile.mkdtemp())
    >>> _ = write_synthetic_movie(root / "stimuli" / "m.mp4", duration=4.0, fps=10, seed=0)
    >>> _ = (root / "events.tsv").write_text("onset\\tduration\\tstim_file\\n0\\tn/a\\tm.mp4\\n")
    >>> extractor = ImageFeatures("alexnet", "conv2", weights="random", random_state=0)
    >>> features = movie_features_for_run(root / "events.tsv", root / "stimuli", extractor,
    ...                                   name="alexnetconv2", tr=2.0, n_volumes=2)
    >>> features.values.shape
    (8, 192)
    """
    frame_step = _check_frame_step(frame_step)
    events_path = Path(events_path)
    events = find_movie_events(events_path, stimuli_dir)
    if not events:
        raise InputMissingError("no event names a movie in the stim_file column",
                                path=events_path,
                                fix="add a row with the movie's onset, duration and "
                                    "stim_file (relative to bids_dir/stimuli/), or give "
                                    "precomputed features")
    infos = [probe_movie(event.path) for event in events]
    ends = _check_no_overlap(events, infos, events_path)
    if tr is not None and n_volumes is not None:
        tr = check_number(tr, "tr", positive=True)
        run_end = float(start_time) + int(n_volumes) * tr
        _check_run_coverage(events[0].onset, max(ends), float(start_time), run_end,
                            str(events[0].path), "the movies")
        for event, info in zip(events, infos):
            if frame_step / info.frame_rate > tr + TIME_TOLERANCE:
                raise InputDataError(
                    f"every {frame_step}th frame at {info.frame_rate:g} frames/s is one per "
                    f"{frame_step / info.frame_rate:g} s, fewer than one per volume "
                    f"(TR {tr:g} s)", path=event.path,
                    fix=f"lower frame_step to at most {int(tr * info.frame_rate)}")
    parts = [extract_movie_features(event.path, extractor, name=name, frame_step=frame_step,
                                    onset=event.onset, duration=event.duration)
             for event in events]
    if len(parts) == 1:
        features = parts[0]
        provenance = {**features.provenance, "events": str(events_path)}
        return FeatureSet(name, features.values, features.times, features.columns,
                          features.sampling_frequency, features.end_time, provenance)
    return FeatureSet(
        name, np.concatenate([part.values for part in parts]),
        np.concatenate([part.times for part in parts]), parts[0].columns, None,
        parts[-1].end_time,
        {"source": str(events_path), "events": str(events_path),
         "movies": [part.provenance for part in parts]})


# --------------------------------------------------------------------------- per volume


def features_per_volume(features: FeatureSet, tr: float, n_volumes: int,
                        start_time: float = 0.0) -> np.ndarray:
    """Average the samples within each volume's interval (seed 000's rule).

    Volume ``i`` covers ``[i * tr + start_time, (i + 1) * tr + start_time)``; its features
    are the mean of the samples whose times fall in it (samples outside the run are
    ignored). The samples must cover the run: every interval needs at least one sample.

    Parameters
    ----------
    features : FeatureSet
    tr : float
        Repetition time (s).
    n_volumes : int
        Volumes of the run.
    start_time : float
        The BOLD sidecar's ``StartTime`` (s; 0 when absent).

    Returns
    -------
    ndarray, float32, shape (n_volumes, n_features)

    Raises
    ------
    InputDataError
        (65) naming the features' file when some volume has no sample: the features
        start after the run's start, end before its end, or have gaps longer than TR.

    Examples
    --------
    >>> features = FeatureSet("x", [[0.0], [1.0], [2.0], [9.0]], times=[0.1, 0.5, 1.2, 1.9])
    >>> features_per_volume(features, tr=1.0, n_volumes=2).ravel().tolist()
    [0.5, 5.5]
    """
    tr = check_number(tr, "tr", positive=True)
    n_volumes = check_int(n_volumes, "n_volumes", minimum=1)
    start_time = float(start_time)
    edges = start_time + tr * np.arange(n_volumes + 1)
    positions = np.searchsorted(features.times, edges - TIME_TOLERANCE, side="left")
    counts = np.diff(positions)
    if np.any(counts == 0):
        _explain_empty_volumes(features, counts, edges, tr)
    sums = np.add.reduceat(features.values[positions[0]:positions[-1]],
                           positions[:-1] - positions[0], axis=0, dtype=np.float64)
    return (sums / counts[:, None]).astype(np.float32)


def _explain_empty_volumes(features: FeatureSet, counts: np.ndarray, edges: np.ndarray,
                           tr: float) -> None:
    empty = np.flatnonzero(counts == 0)
    run = f"{len(counts)} volumes x TR {tr:g} s from {edges[0]:g} s"
    if features.times[0] >= edges[1] - TIME_TOLERANCE or features.end_time < edges[-2]:
        _check_run_coverage(features.start_time, features.end_time, edges[0], edges[-1],
                            features.source, f"the features ({run})")
    gaps = np.diff(features.times)
    raise InputDataError(
        f"{empty.size} of {len(counts)} volumes have no feature sample (first: volume "
        f"{empty[0]}, {edges[empty[0]]:g}-{edges[empty[0] + 1]:g} s); samples are up to "
        f"{(gaps.max() if gaps.size else math.inf):g} s apart, longer than TR {tr:g} s",
        path=features.source,
        fix="sample the stimulus at least once per volume (lower --frame-step), or "
            "resample_features() the stream onto the volumes")


def resample_features(features: FeatureSet, sampling_frequency: float, n_samples: int,
                      start_time: float = 0.0, *, max_chunk_bytes: int = 64 << 20
                      ) -> FeatureSet:
    """The stream on a regular grid: time average of the held samples over each interval.

    The features are a step function (each sample holds from its time until the next
    one, the last until ``end_time``). Output sample ``j`` is its mean over
    ``[start_time + j / fs, start_time + (j + 1) / fs)``: upsampling repeats each sample
    (a frame stays on screen until the next), downsampling averages with weights
    equal to the time each sample was shown. Computed from the cumulative integral of
    the step function, by blocks of columns (``max_chunk_bytes`` of float64 each).

    Parameters
    ----------
    features : FeatureSet
    sampling_frequency : float
        Output rate (Hz).
    n_samples : int
        Output samples.
    start_time : float
        Start of the first output interval (s from the run's start).

    Raises
    ------
    InputDataError
        (65) when the grid reaches outside ``[features.start_time, features.end_time]``.

    Examples
    --------
    >>> steps = FeatureSet("x", [[0.0], [4.0]], times=[0.0, 1.0], end_time=2.0)
    >>> resample_features(steps, 4.0, 8).values.ravel().tolist()
    [0.0, 0.0, 0.0, 0.0, 4.0, 4.0, 4.0, 4.0]
    >>> resample_features(steps, 0.5, 1).values.ravel().tolist()
    [2.0]
    """
    frequency = _check_frequency(sampling_frequency, "sampling_frequency")
    n_samples = check_int(n_samples, "n_samples", minimum=1)
    start_time = float(start_time)
    edges = start_time + np.arange(n_samples + 1) / frequency
    _check_run_coverage(features.start_time, features.end_time, edges[0], edges[-1],
                        features.source, f"the features (resampled to {frequency:g} Hz)")
    knots = np.append(features.times, features.end_time)
    widths = np.diff(knots)
    # Clip to the stream; the coverage check allowed only rounding errors outside it.
    edges = np.clip(edges, knots[0], knots[-1])
    segment = np.clip(np.searchsorted(knots, edges, side="right") - 1, 0, features.n_samples - 1)
    offsets = (edges - knots[segment])[:, None]
    out = np.empty((n_samples, features.n_features), dtype=np.float32)
    chunk = max(1, int(max_chunk_bytes // (8 * (features.n_samples + 1))))
    for first in range(0, features.n_features, chunk):
        values = features.values[:, first:first + chunk].astype(np.float64)
        integral = np.zeros((features.n_samples + 1, values.shape[1]))
        np.cumsum(values * widths[:, None], axis=0, out=integral[1:])
        at_edges = integral[segment] + values[segment] * offsets
        out[:, first:first + chunk] = np.diff(at_edges, axis=0) * frequency
    provenance = {**features.provenance,
                  "resampled": {"sampling_frequency": frequency, "start_time": start_time,
                                "n_samples": n_samples, "method": "time average of the "
                                "piecewise-constant stream"}}
    return FeatureSet.regular(features.name, out, frequency, start_time, features.columns,
                              provenance)
