"""The derivatives writer: the only module that knows output names.

Every output path of the BIDS-App is built here from entities (see the table
in DESIGN.md, "Derivatives"), and every file is written atomically: into a
temporary file in the same folder, then renamed, so a crash or a kill never
leaves a half-written output under its real name. Each data file gets a JSON
sidecar with the parameters, the seed, the software versions and ``Sources``.

Examples
--------
>>> from pathlib import Path
>>> output_path(Path("out"), "labels", subject="01", task="movie", run=2).as_posix()
'out/sub-01/func/sub-01_task-movie_run-2_desc-labels_events.tsv'
>>> output_path(Path("out"), "occlusion_map", subject="01", task="movie",
...             space="MNI152NLin2009cAsym", desc="cnnneuro120fp",
...             contrast="fear").name
'sub-01_task-movie_space-MNI152NLin2009cAsym_desc-cnnneuro120fp_contrast-fear_stat-occlusion_statmap.nii.gz'
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from filelock import FileLock

from bids_affect.__about__ import __citation__, __code_url__, __version__
from bids_affect.exceptions import OutputError, UsageError

BIDS_VERSION = "1.10.0"

#: Order of entities in file names (BIDS order, then the statistics entities).
ENTITY_ORDER = ("subject", "session", "task", "acquisition", "run", "recording", "space",
                "desc", "contrast", "stat")
ENTITY_KEYS = {"subject": "sub", "session": "ses", "task": "task", "acquisition": "acq",
               "run": "run", "recording": "recording", "space": "space", "desc": "desc",
               "contrast": "contrast", "stat": "stat"}


@dataclass(frozen=True)
class OutputKind:
    """How one kind of output is named.

    Parameters
    ----------
    suffix : str
        BIDS suffix (``events``, ``decoding``, ``statmap``...); empty for reports
        (``sub-01.html``).
    extension : str
        File extension with its dot; ``None`` when the caller chooses (models).
    folder : str
        ``func``, ``models``, ``figures`` (under ``sub-X/``), ``group``, or ``.``
        (the dataset's root: reports).
    required : tuple of str
        Entities the caller must give.
    fixed : dict
        Entities this kind always has (``desc-labels``, ``stat-occlusion``).
    """

    suffix: str
    extension: str | None
    folder: str
    required: tuple[str, ...]
    fixed: Mapping[str, str] = field(default_factory=dict)


_SUBJECT_TASK = ("subject", "task")
_MODEL = ("subject", "task", "desc")

#: Every output of the BIDS-App, by kind.
OUTPUTS: dict[str, OutputKind] = {
    "labels": OutputKind("events", ".tsv", "func", _SUBJECT_TASK, {"desc": "labels"}),
    "label_counts": OutputKind("counts", ".tsv", "func", _SUBJECT_TASK, {"desc": "labels"}),
    "decoding": OutputKind("decoding", ".json", "func", _MODEL),
    "predictions": OutputKind("predictions", ".tsv", "func", _MODEL),
    "confusion": OutputKind("confusion", ".tsv", "func", _MODEL),
    "null_distribution": OutputKind("null", ".tsv", "func", _MODEL),
    "model": OutputKind("model", None, "models", _MODEL),
    "occlusion_map": OutputKind("statmap", ".nii.gz", "func", (*_MODEL, "contrast"),
                                {"stat": "occlusion"}),
    "occlusion_topk": OutputKind("topk", ".tsv", "func", (*_MODEL, "contrast"),
                                 {"stat": "occlusion"}),
    "occlusion_samples": OutputKind("samples", ".tsv", "func", _MODEL, {"stat": "occlusion"}),
    "occlusion_umap": OutputKind("umap", ".tsv", "func", _MODEL, {"stat": "occlusion"}),
    "rdm": OutputKind("rdm", ".tsv", "func", _MODEL),
    "rsa_statistics": OutputKind("statistics", ".tsv", "func", _SUBJECT_TASK, {"desc": "rsa"}),
    "figure": OutputKind("figure", None, "figures", ("subject",)),
    "encoding_map": OutputKind("statmap", ".nii.gz", "func", (*_MODEL, "stat")),
    "encoding_roi": OutputKind("roi", ".tsv", "func", _MODEL),
    "encoding": OutputKind("encoding", ".json", "func", _MODEL),
    "encoding_model": OutputKind("encoder", ".npz", "models", _MODEL),
    "stim_recording": OutputKind("stim", ".tsv.gz", "func", ("subject", "task", "recording")),
    "report": OutputKind("", ".html", ".", ("subject",)),
    "group_report": OutputKind("group", ".html", ".", ()),
    "group_withinsubject": OutputKind("withinsubject", ".tsv", "group", ("task", "desc")),
    "group_decoding": OutputKind("decoding", ".tsv", "group", ("task", "desc")),
    "group_statmap": OutputKind("statmap", ".nii.gz", "group", ("task", "space", "desc"),
                                {"stat": "t"}),
    "group_figure": OutputKind("figure", None, "group/figures", ("task",)),
    # ---- Stimulus models (issue 13; proposed by helper I, for the lead's review) ----
    # Channel selectivity runs at the group level only, on image sets: no subject, no
    # task; desc is the image network (vgg16...).
    "selectivity_channels": OutputKind("selectivity", ".tsv", "group", ("desc",)),
    "selectivity_layers": OutputKind("layers", ".tsv", "group", ("desc",)),
    "selectivity_overlap": OutputKind("overlap", ".tsv", "group", ("desc",)),
    "selectivity_gainlesion": OutputKind("gainlesion", ".tsv", "group", ("desc",)),
    "selectivity_gaincurves": OutputKind("gaincurves", ".tsv", "group", ("desc",)),
    "selectivity_table1": OutputKind("table1", ".tsv", "group", ("desc",)),
    # Figures of an analysis without a task; the caller names them with ``suffix``.
    "selectivity_figure": OutputKind("figure", ".svg", "group/figures", ("desc",)),
    # Encoding models on affective images (desc: the encoding model's feature set).
    "image_responses": OutputKind("imageresponses", ".tsv", "func", _MODEL),
    "image_regression": OutputKind("imageregression", ".tsv", "func", _MODEL),
    "group_image_regression": OutputKind("imageregression", ".tsv", "group",
                                         ("task", "desc")),
    # Synthesised images: sub-X/images/, one PNG per image, named by the caller's
    # ``suffix`` (image01...): the "figure" suffix marks a folder of caller-named files.
    "synthesis_image": OutputKind("figure", ".png", "images", (*_MODEL, "contrast")),
    "synthesis_responses": OutputKind("synthesis", ".tsv", "func", _MODEL),
    "synthesis_separability": OutputKind("separability", ".tsv", "func", _MODEL),
    "synthesis_confusion": OutputKind("targetconfusion", ".tsv", "func", _MODEL),
    "group_separability": OutputKind("separability", ".tsv", "group", ("task", "desc")),
    "group_separability_test": OutputKind("separabilitytest", ".tsv", "group",
                                          ("task", "desc")),
    "group_synthesis_confusion": OutputKind("targetconfusion", ".tsv", "group",
                                            ("task", "desc")),
    # ---- end of the stimulus-model block ----
    # ---- Group level (issue 12; proposed by helper J, for the lead's review) ----
    # Cross-subject decoding (group_decoding above: one row per held-out subject, its
    # JSON the summary): each held-out subject's predictions, named by its subject
    # under group/, and the permutation null of every held-out subject and of their mean.
    "group_predictions": OutputKind("predictions", ".tsv", "group", ("subject", "task", "desc")),
    "group_null": OutputKind("null", ".tsv", "group", ("task", "desc")),
    # Group maps: the t map is group_statmap (stat-t); beside it, by stat: z, p (the
    # parametric test's), pfwe (sign flips), tfdr / tfwe (the t map where it survives).
    "group_inference_map": OutputKind("statmap", ".nii.gz", "group",
                                      ("task", "space", "desc", "stat")),
    "group_clusters": OutputKind("clusters", ".tsv", "group", ("task", "space", "desc", "stat")),
    # Occlusion summaries: consensus top voxels per class, the UMAP of consensus voxels.
    "group_consensus": OutputKind("consensus", ".tsv", "group",
                                  ("task", "space", "desc", "contrast"), {"stat": "occlusion"}),
    "group_occlusion_umap": OutputKind("umap", ".tsv", "group", ("task", "space", "desc"),
                                       {"stat": "occlusion"}),
    # Encoding ROIs: r ~ region + (1 | subject) (desc: the feature set).
    "group_mixedmodel": OutputKind("mixedmodel", ".tsv", "group", ("task", "desc")),
    # Group RSA: each comparison tested across subjects; group-mean RDMs (desc: the RDM).
    "group_rsa_statistics": OutputKind("statistics", ".tsv", "group", ("task",),
                                       {"desc": "rsa"}),
    "group_rdm": OutputKind("rdm", ".tsv", "group", ("task", "desc")),
    # ---- end of the group-level block ----
}

#: Kinds whose files live in folders the validator skips as a whole.
_FOLDER_PATTERNS = {"models": "sub-*/models", "figures": "sub-*/figures", "group": "group",
                    "group/figures": "group", "images": "sub-*/images"}


def bidsignore_patterns(kinds: Iterable[str]) -> list[str]:
    """``.bidsignore`` lines for outputs of ``kinds`` (non-standard files), sorted.

    Every file of a non-standard suffix is skipped (data and JSON sidecar), and
    the app's own folders: run logs always, models, figures and the group
    folder when those kinds are written.

    Examples
    --------
    >>> bidsignore_patterns(["labels", "decoding", "model"])
    ['*_decoding.*', '*_desc-labels_events.*', 'logs', 'sub-*/log', 'sub-*/models']
    """
    patterns = {"logs", "sub-*/log"}
    for name in kinds:
        kind = OUTPUTS[name]
        if name == "labels":
            patterns.add("*_desc-labels_events.*")
        elif kind.folder in _FOLDER_PATTERNS:
            patterns.add(_FOLDER_PATTERNS[kind.folder])
        elif kind.folder == ".":
            patterns.add(f"*{kind.extension}" if not kind.suffix else
                         f"{kind.suffix}{kind.extension}")
        else:
            patterns.add(f"*_{kind.suffix}.*")
    return sorted(patterns)


_LABEL_RE = re.compile(r"^[A-Za-z0-9]+$")


def desc_label(name: str) -> str:
    """BIDS label of a free-form name: its alphanumeric characters only.

    Examples
    --------
    >>> desc_label("cnn-neuro120fp")
    'cnnneuro120fp'
    """
    label = re.sub(r"[^A-Za-z0-9]", "", str(name))
    if not label:
        raise UsageError(f"name {name!r} has no alphanumeric character to label outputs with",
                         fix="choose a name with letters or digits")
    return label


def output_path(output_dir: Path, kind: str, *, extension: str | None = None,
                suffix: str | None = None, **entities: Any) -> Path:
    """Path of one output of ``kind`` (a key of :data:`OUTPUTS`) from its entities.

    Parameters
    ----------
    output_dir : Path
        Root of the derivatives dataset.
    kind : str
        Output kind, e.g. ``"labels"``, ``"decoding"``, ``"occlusion_map"``.
    extension : str, optional
        Overrides the kind's extension (required for ``model`` and ``figure``).
    suffix : str, optional
        Overrides the kind's suffix (figures name their content with it).
    **entities
        ``subject``, ``session``, ``task``, ``run``, ``space``, ``desc``, ``contrast``;
        ``None`` values are left out. Labels must be alphanumeric.
    """
    try:
        spec = OUTPUTS[kind]
    except KeyError:
        raise UsageError(f"output kind {kind!r} is unknown",
                         fix=f"use one of {', '.join(OUTPUTS)}") from None
    values = {key: value for key, value in entities.items() if value is not None}
    unknown = set(values) - set(ENTITY_ORDER)
    if unknown:
        raise UsageError(f"entities {sorted(unknown)} are not output entities",
                         fix=f"use {', '.join(ENTITY_ORDER)}")
    missing = [name for name in spec.required if name not in values]
    if missing:
        raise UsageError(f"output {kind!r} needs the entities {missing}")
    values.update(spec.fixed)
    parts = []
    for name in ENTITY_ORDER:
        if name not in values:
            continue
        label = str(values[name])
        if not _LABEL_RE.match(label):
            raise UsageError(f"entity {name}={label!r} is not alphanumeric",
                             fix="use desc_label() to derive labels from names")
        parts.append(f"{ENTITY_KEYS[name]}-{label}")
    ext = extension if extension is not None else spec.extension
    if ext is None:
        raise UsageError(f"output {kind!r} needs an explicit extension")
    filename = "_".join(part for part in [*parts, suffix or spec.suffix] if part) + ext
    if spec.folder == "." or spec.folder.split("/")[0] == "group":
        return Path(output_dir) / spec.folder / filename
    return Path(output_dir) / f"sub-{values['subject']}" / spec.folder / filename


@dataclass(frozen=True)
class FoundOutput:
    """An existing output file and the entities of its name."""

    path: Path
    entities: dict[str, str]


_KEY_TO_ENTITY = {key: name for name, key in ENTITY_KEYS.items()}


def parse_entities(filename: str) -> dict[str, str]:
    """Entities of an output file name (inverse of :func:`output_path`).

    Examples
    --------
    >>> parse_entities("sub-01_task-movie_desc-ridge_decoding.json")
    {'subject': '01', 'task': 'movie', 'desc': 'ridge'}
    """
    parts = Path(filename).name.split(".", 1)[0].split("_")
    if "-" not in parts[-1]:  # the suffix (reports have none: sub-01.html)
        parts = parts[:-1]
    entities = {}
    for part in parts:
        key, _, value = part.partition("-")
        if key in _KEY_TO_ENTITY and value:
            entities[_KEY_TO_ENTITY[key]] = value
    return entities


def find_outputs(output_dir: Path, kind: str) -> list[FoundOutput]:
    """Existing outputs of ``kind`` under ``output_dir``, sorted by path."""
    spec = OUTPUTS[kind]
    folder = "group" if spec.folder == "group" else f"sub-*/{spec.folder}"
    found = []
    for path in sorted(Path(output_dir).glob(f"{folder}/*_{spec.suffix}{spec.extension}")):
        entities = parse_entities(path.name)
        if all(entities.get(key) == value for key, value in spec.fixed.items()):
            found.append(FoundOutput(path, entities))
    return found


def output_kind(path: Path, kinds: Iterable[str] | None = None) -> str | None:
    """The kind of output a file is (one of ``kinds``, default all), or None.

    Sidecars count as their data file's kind.

    Examples
    --------
    >>> output_kind(Path("out/sub-01/func/sub-01_task-movie_desc-ridge_decoding.json"))
    'decoding'
    >>> output_kind(Path("out/sub-01/log/x/bids_affect.toml")) is None
    True
    """
    path = Path(path)
    entities = parse_entities(path.name)
    for name in (OUTPUTS if kinds is None else kinds):
        spec = OUTPUTS[name]
        if spec.folder == "." or not path.parent.as_posix().endswith(spec.folder):
            continue
        # Figures carry their own suffix (umap, null...): every file of the folder counts.
        named = spec.suffix == "figure" or path.name.split(".", 1)[0].endswith(
            f"_{spec.suffix}")
        if named and all(entities.get(key) == value for key, value in spec.fixed.items()):
            return name
    return None


def sidecar_path(path: Path) -> Path:
    """The JSON sidecar of a data file (same name, ``.json`` extension)."""
    name = Path(path).name
    for ext in (".nii.gz", ".tsv.gz", ".tsv", ".pt", ".joblib", ".nii", ".npy", ".npz", ".svg",
                ".png"):
        if name.endswith(ext):
            return Path(path).with_name(name[: -len(ext)] + ".json")
    raise UsageError(f"no sidecar naming rule for {name}")


def log_dir(output_dir: Path, subject: str | None, run_id: str) -> Path:
    """Folder of one run's logs and configuration (``sub-X/log/<run-id>/``)."""
    base = Path(output_dir) / (f"sub-{subject}" if subject else "group")
    return base / "log" / run_id


# --------------------------------------------------------------------------- atomic I/O


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` on success.

    The temporary name keeps the extension (nibabel chooses compression by it)
    and carries the process id, so :func:`remove_stale_temporaries` can tell
    leftovers of killed processes from files being written right now.

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> with atomic_path(folder / "a.txt") as tmp:
    ...     _ = tmp.write_text("done")
    >>> (folder / "a.txt").read_text()
    'done'
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create folder ({err.strerror})", path=path.parent,
                          fix="check the permissions and free space of the output "
                              "directory") from err
    tmp = path.with_name(f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}-{path.name}")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as err:
        raise OutputError(f"cannot write file ({err.strerror})", path=path,
                          fix="check the permissions and free space of the output "
                              "directory") from err
    finally:
        if tmp.exists():
            tmp.unlink()


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete temporary files that processes no longer running left under ``folder``."""
    removed = []
    for tmp in Path(folder).rglob(".tmp-*"):
        match = re.match(r"\.tmp-(\d+)-", tmp.name)
        if match and not _pid_alive(int(match.group(1))):
            with contextlib.suppress(OSError):
                tmp.unlink()
                removed.append(tmp)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def to_jsonable(value: Any) -> Any:
    """Convert numpy scalars and arrays, paths and tuples for ``json.dumps``."""
    if isinstance(value, Mapping):
        return {str(key): to_jsonable(val) for key, val in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [to_jsonable(val) for val in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: Path, content: Mapping[str, Any]) -> Path:
    """Write ``content`` as indented JSON, atomically."""
    text = json.dumps(to_jsonable(content), indent=2) + "\n"
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_tsv(path: Path, table: pd.DataFrame, significant: int | None = None) -> Path:
    """Write a table as BIDS TSV (``n/a`` for missing values), atomically.

    ``significant``: floats with that many significant digits (outputs); None
    keeps every digit (work files that later steps read).
    """
    float_format = None if significant is None else f"%.{int(significant)}g"
    with atomic_path(path) as tmp:
        table.to_csv(tmp, sep="\t", index=False, na_rep="n/a", lineterminator="\n",
                     float_format=float_format)
    return Path(path)


def write_text(path: Path, text: str) -> Path:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_nifti(path: Path, image) -> Path:
    """Save a nibabel image atomically (gzip header without a time stamp)."""
    with atomic_path(path) as tmp:
        image.to_filename(tmp)
    return Path(path)


def write_torch(path: Path, content: Any) -> Path:
    """``torch.save`` atomically, through a stream.

    Given a file name, ``torch.save`` names the records inside its archive after
    it, so the temp file's name would make equal contents differ byte for byte.
    """
    import torch

    with atomic_path(path) as tmp, open(tmp, "wb") as stream:
        torch.save(content, stream)
    return Path(path)


def copy_file(source: Path, path: Path) -> Path:
    """Copy a finished file (e.g. from the work directory) into place atomically."""
    with atomic_path(path) as tmp:
        shutil.copyfile(source, tmp)
    return Path(path)


# --------------------------------------------------------------------------- provenance


#: Packages whose versions go into every sidecar.
PROVENANCE_PACKAGES = ("numpy", "scipy", "scikit-learn", "nilearn", "nibabel", "pybids",
                       "nipype", "torch", "pandas")


def software_versions() -> dict[str, str]:
    """Versions of bids_affect and the libraries that shape its results."""
    versions = {"bids_affect": __version__}
    for package in PROVENANCE_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def container_info() -> dict[str, str] | None:
    """``{"Type": ..., "Tag": ...}`` when running inside a bids_affect image, else None.

    As fMRIPrep does, only our own images say so: they set ``BIDS_AFFECT_CONTAINER``
    (``docker`` or ``singularity``). Generic signs such as ``/.dockerenv`` are
    not used: they mark any container (a CI runner, a sandbox), not ours.
    """
    kind = os.environ.get("BIDS_AFFECT_CONTAINER")
    if not kind:
        return None
    tag = os.environ.get("BIDS_AFFECT_CONTAINER_TAG", f"bidsaffect/bids_affect:{__version__}")
    return {"Type": kind, "Tag": tag}


@dataclass
class SourceResolver:
    """Turns input paths into BIDS URIs (``bids:raw:sub-01/...``) for ``Sources``."""

    links: dict[str, Path] = field(default_factory=dict)

    def uri(self, path: Path | str) -> str:
        """``bids:NAME:relative/path`` (``bids::...`` for the name ``""``), else the path."""
        path = Path(path).absolute()
        # The deepest root first: fMRIPrep outputs inside bids_dir/derivatives/ are
        # named by their own dataset, not as raw files.
        for name, root in sorted(self.links.items(),
                                 key=lambda item: -len(Path(item[1]).absolute().parts)):
            with contextlib.suppress(ValueError):
                return f"bids:{name}:{path.relative_to(Path(root).absolute()).as_posix()}"
        return path.as_posix()


#: Significant digits of floats in output TSVs.
TSV_SIGNIFICANT_DIGITS = 6

#: BIDS column descriptions of the output tables, by column name.
COLUMNS: dict[str, dict[str, Any]] = {
    "onset": {"Description": "Time of the volume's acquisition from the start of the run "
                             "(i * TR + StartTime)", "Units": "s"},
    "duration": {"Description": "Duration of the volume (the repetition time)", "Units": "s"},
    "trial_type": {"Description": "Emotion label of the volume (n/a: unlabelled or tied)"},
    "volume": {"Description": "Index of the volume in its run, from 0"},
    "run": {"Description": "The run (its key: task, acquisition, run entities)"},
    "true": {"Description": "The volume's label"},
    "predicted": {"Description": "The class the fold model that did not see this run "
                                 "predicted"},
    "permutation": {"Description": "Permutation number, from 1"},
    "balanced_accuracy": {"Description": "Mean recall over the classes present"},
    "class": {"Description": "Emotion class"},
    "sample": {"Description": "Row of the subject's labelled samples (decoding order)"},
    "fold": {"Description": "Cross-validation fold, from 1 (the order of fold_scores in "
                            "decoding.json)"},
    "probability": {"Description": "Probability of the true class given by the fold model"},
    "rank": {"Description": "Rank of the voxel, 1 = largest value"},
    "i": {"Description": "Voxel index along the first axis of the statmap"},
    "j": {"Description": "Voxel index along the second axis of the statmap"},
    "k": {"Description": "Voxel index along the third axis of the statmap"},
    "x": {"Description": "World coordinate of the voxel (the statmap's affine)", "Units": "mm"},
    "y": {"Description": "World coordinate of the voxel (the statmap's affine)", "Units": "mm"},
    "z": {"Description": "World coordinate of the voxel (the statmap's affine)", "Units": "mm"},
    "value": {"Description": "The statmap's value at the voxel"},
    "atlas": {"Description": "Atlas that labelled the voxel (none in native space)"},
    "region": {"Description": "Atlas structure at the voxel"},
    "spatial_1": {"Description": "First UMAP dimension of the voxels' coordinates"},
    "spatial_2": {"Description": "Second UMAP dimension of the voxels' coordinates"},
    "functional_1": {"Description": "First UMAP dimension of the voxels' occlusion values "
                                    "across classes"},
    "functional_2": {"Description": "Second UMAP dimension of the voxels' occlusion values "
                                    "across classes"},
    "rdm_a": {"Description": "First RDM of the pair (permuted by the Mantel test)"},
    "rdm_b": {"Description": "Second RDM of the pair"},
    "method": {"Description": "Correlation of the RDMs' upper triangles"},
    "r": {"Description": "The correlation"},
    "p": {"Description": "Mantel permutation p-value (one-sided, greater)"},
    "n_permutations": {"Description": "Permutations behind p (k! when exact)"},
    "exact": {"Description": "Whether every permutation was enumerated"},
    "participant_id": {"Description": "The subject"},
    "model": {"Description": "The decoder"},
    "n_samples": {"Description": "Labelled volumes decoded"},
    "n_classes": {"Description": "Classes decoded"},
    "accuracy": {"Description": "Fraction of volumes predicted right"},
    "chance_balanced_accuracy": {"Description": "Mean of the permutation null (chance level)"},
    "null_low": {"Description": "2.5th percentile of the permutation null"},
    "null_high": {"Description": "97.5th percentile of the permutation null"},
    "p_permutation": {"Description": "Permutation p-value: (1 + #null >= observed) / "
                                     "(1 + n_permutations)"},
    "macro_auc": {"Description": "Mean over classes of the one-vs-rest ROC AUC"},
    "random_split_balanced_accuracy": {
        "Description": "Balanced accuracy on the peers' leaky random 80/20 split of volumes "
                       "(leakage audit; inflated, reported for comparison only)"},
    "alignment": {"Description": "Functional alignment of the cross-subject decoder"},
}

#: Descriptions of columns named after a class (``prob_fear``...), by prefix.
COLUMN_PREFIXES: dict[str, str] = {
    "prob_": "Predicted probability of class {name} (sums to 1 over classes; 'Scores' "
             "says whether the decoder's probabilities are calibrated)",
    "decision_": "Decision value of class {name} (a score, not a probability)",
}


def column_descriptions(columns: Iterable[str], classes: Iterable[str] = ()
                        ) -> dict[str, dict[str, Any]]:
    """BIDS sidecar entries for a table's columns (those this module knows).

    Columns named after a class (a confusion matrix, an RDM, label counts) are
    described as such when ``classes`` lists them.

    Examples
    --------
    >>> column_descriptions(["onset", "decision_fear"])["decision_fear"]
    {'Description': 'Decision value of class fear (a score, not a probability)'}
    """
    known = set(map(str, classes))
    entries: dict[str, dict[str, Any]] = {}
    for column in map(str, columns):
        if column in COLUMNS:
            entries[column] = dict(COLUMNS[column])
            continue
        prefix = next((p for p in COLUMN_PREFIXES if column.startswith(p)), None)
        if prefix is not None:
            entries[column] = {"Description": COLUMN_PREFIXES[prefix].format(
                name=column[len(prefix):])}
        elif column in known:
            entries[column] = {"Description": f"Class {column}"}
    return entries


def _output_table(data: pd.DataFrame | str | os.PathLike) -> pd.DataFrame:
    """A table to write as an output: a DataFrame, or a finished TSV read back."""
    if isinstance(data, pd.DataFrame):
        return data
    return pd.read_csv(data, sep="\t", keep_default_na=False, na_values=["n/a"])


def sidecar(*, parameters: Mapping[str, Any] | None = None, seed: int | None = None,
            sources: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    """Standard sidecar content: extra fields, parameters, seed, versions, sources."""
    content: dict[str, Any] = dict(extra)
    if parameters is not None:
        content["Parameters"] = dict(parameters)
    if seed is not None:
        content["RandomSeed"] = int(seed)
    content["SoftwareVersions"] = software_versions()
    content["Sources"] = list(sources or [])
    return content


def write_with_sidecar(path: Path, data: Any, metadata_: Mapping[str, Any],
                       classes: Iterable[str] = ()) -> Path:
    """Write a data file and its JSON sidecar (sidecar first, data last).

    ``data`` is a DataFrame (TSV), a nibabel image (NIfTI), or a path to a
    finished file to copy. A table (``.tsv``) is written with
    :data:`TSV_SIGNIFICANT_DIGITS` significant digits, and its sidecar
    describes its columns (:func:`column_descriptions`; ``classes`` names the
    columns that are classes). The data file is written last, so its presence
    means the pair is complete.
    """
    path = Path(path)
    if path.name.endswith(".tsv"):
        table = _output_table(data)
        write_json(sidecar_path(path), {**column_descriptions(table.columns, classes),
                                        **metadata_})
        return write_tsv(path, table, significant=TSV_SIGNIFICANT_DIGITS)
    write_json(sidecar_path(path), metadata_)
    if hasattr(data, "to_filename"):
        return write_nifti(path, data)
    if isinstance(data, (str, os.PathLike)):
        return copy_file(Path(data), path)
    raise TypeError(f"cannot write {type(data).__name__} to {path}")


# --------------------------------------------------------------------------- dataset level


def dataset_description(source_dir: Path | None = None,
                        links: Mapping[str, Path] | None = None,
                        analyses: Sequence[str] = ()) -> dict[str, Any]:
    """Content of ``dataset_description.json`` for the derivatives dataset.

    ``analyses`` (those whose outputs the dataset holds) make its ``Name``.
    """
    generated_by: dict[str, Any] = {"Name": "bids_affect", "Version": __version__,
                                    "CodeURL": __code_url__}
    container = container_info()
    if container:
        generated_by["Container"] = container
    description: dict[str, Any] = {
        "Name": _dataset_name(analyses),
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [generated_by],
        "HowToAcknowledge": "Please cite bids_affect; see logs/CITATION.md.",
    }
    if source_dir is not None:
        source: dict[str, Any] = {"URL": Path(source_dir).absolute().as_uri()}
        with contextlib.suppress(OSError, ValueError):
            original = json.loads((Path(source_dir) / "dataset_description.json").read_text())
            if original.get("DatasetDOI"):
                source["DOI"] = original["DatasetDOI"]
        description["SourceDatasets"] = [source]
    if links:
        description["DatasetLinks"] = {name: Path(p).absolute().as_uri()
                                       for name, p in links.items()}
    return description


_NAME_PREFIX = "bids_affect outputs"


def _dataset_name(analyses: Sequence[str]) -> str:
    """``bids_affect outputs: labels, decoding, rsa`` (what the dataset holds)."""
    return f"{_NAME_PREFIX}: {', '.join(['labels', *analyses])}"


def _recorded_analyses(output_dir: Path) -> list[str]:
    """Analyses an existing dataset's ``Name`` lists (for a later run to add to)."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        name = json.loads((Path(output_dir) / "dataset_description.json").read_text())["Name"]
        if name.startswith(_NAME_PREFIX + ": "):
            return [item for item in name[len(_NAME_PREFIX) + 2:].split(", ")
                    if item and item != "labels"]
    return []


def citation_text(methods: str = "") -> str:
    """Text of ``logs/CITATION.md``."""
    text = "# How to cite\n\n" + __citation__.format(version=__version__,
                                                    code_url=__code_url__) + "\n"
    if methods:
        text += "\n## Methods\n\n" + methods.strip() + "\n"
    return text


def check_writable_dir(path: Path, what: str = "output directory", *,
                       create: bool = True) -> Path:
    """Check that ``path`` is (or can become) a writable folder; create it when asked.

    With ``create=False`` nothing is written: the nearest existing folder above
    ``path`` must be writable, so inputs can be checked before any output exists.

    Raises
    ------
    OutputError
        Exit 73, naming the folder.

    Examples
    --------
    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> check_writable_dir(root / "a" / "b", create=False).exists()
    False
    """
    path = Path(path)
    fix = f"choose a writable {what} or fix its permissions"
    if not create:
        existing = next(p for p in (path, *path.parents) if p.exists())
        if not existing.is_dir():
            raise OutputError(f"cannot create the {what}: {existing} is not a folder",
                              path=path, fix=fix)
        if not os.access(existing, os.W_OK | os.X_OK):
            raise OutputError(f"cannot create the {what}: {existing} is not writable",
                              path=path, fix=fix)
        return path
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create the {what} ({err.strerror})", path=path,
                          fix=fix) from err
    if not os.access(path, os.W_OK | os.X_OK):
        raise OutputError(f"the {what} is not writable", path=path, fix=fix)
    return path


def foreign_dataset(output_dir: Path) -> str | None:
    """Name of the pipeline that made the dataset in ``output_dir``, when not bids_affect.

    Examples
    --------
    >>> import tempfile
    >>> foreign_dataset(Path(tempfile.mkdtemp())) is None
    True
    """
    description = Path(output_dir) / "dataset_description.json"
    if not description.is_file():
        return None
    try:
        content = json.loads(description.read_text())
    except (OSError, ValueError):
        return "an unreadable dataset_description.json"
    generated = content.get("GeneratedBy") if isinstance(content, dict) else None
    names = [str(item.get("Name")) for item in generated or [] if isinstance(item, dict)]
    if names and names[0] == "bids_affect":
        return None
    if content.get("DatasetType", "raw") == "raw" and not names:
        return "a raw BIDS dataset"
    return names[0] if names else "another pipeline"


def init_derivatives(output_dir: Path, source_dir: Path | None = None,
                     links: Mapping[str, Path] | None = None, methods: str | None = "",
                     analyses: Sequence[str] = (), kinds: Iterable[str] = ()) -> None:
    """Create or update the derivatives dataset's top-level files (safe for concurrent jobs).

    ``dataset_description.json`` names the analyses the dataset holds and
    ``.bidsignore`` lists the non-standard files it holds: this run's
    (``analyses``, output ``kinds``) added to those of earlier runs into the same
    folder. ``logs/CITATION.md`` gets ``methods`` (None leaves an existing one
    as it is: the group level does not rewrite the participant level's methods).
    Jobs sharing ``output_dir`` update the files under a lock, with atomic renames.
    """
    output_dir = check_writable_dir(output_dir)
    remove_stale_temporaries(output_dir)
    with FileLock(str(_lock_path(output_dir)), timeout=600):
        previous = _recorded_analyses(output_dir)
        every = [*previous, *(name for name in analyses if name not in previous)]
        write_json(output_dir / "dataset_description.json",
                   dataset_description(source_dir, links, every))
        ignored = output_dir / ".bidsignore"
        existing = ignored.read_text().split() if ignored.is_file() else []
        patterns = sorted({*existing, *bidsignore_patterns(["labels", *kinds])})
        write_text(ignored, "\n".join(patterns) + "\n")
        citation = output_dir / "logs" / "CITATION.md"
        if methods is not None or not citation.is_file():
            write_text(citation, citation_text(methods or ""))


def _lock_path(output_dir: Path) -> Path:
    """The lock of the dataset-level files (in ``logs/``, which the validator skips)."""
    (Path(output_dir) / "logs").mkdir(parents=True, exist_ok=True)
    return Path(output_dir) / "logs" / ".dataset.lock"
