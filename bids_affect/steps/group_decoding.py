"""Cross-subject decoding: the group part of the decoding analysis (steps and wiring).

With ``--alignment`` (``[group]`` section, :class:`~bids_affect.steps.group.GroupOptions`),
each decoder of ``--models`` is scored leave-one-subject-out on the subjects'
participant-level samples (reused from the work directory, or rebuilt with the
same ``--space``, ``--labels`` and cleaning options), by
:func:`bids_affect.decoding.cross_subject.decode_across_subjects`: every
alignment method on the same folds, the alignment fitted inside the training
folds, a movie-wide label-shift null per held-out subject and for the group,
and the peers' pooled random split as an audit. Without ``--alignment`` the
group level adds nothing here (cross-subject decoding runs only when asked).

Nodes, per task and decoder:

- ``crosssubject_TASK_MODEL``: reads every subject's samples folder (one at a
  time, memory-mapped) and writes the tables, summaries, nulls and
  predictions into its folder;
- ``ds_crosssubject_TASK_MODEL``: per alignment method ``A``,
  ``group/task-T_desc-MODEL[A]_decoding.tsv`` (one row per held-out subject;
  ``A`` is left out for ``none``), its JSON (the summary: group chance, band and
  p, gain over ``none`` on the same folds, folds, harmonisation, audit, and
  the sidecar's parameters, seed and sources), ``..._null.tsv`` (each held-out
  subject's null and the mean's) and ``group/sub-X_task-T_desc-MODEL[A]_predictions.tsv``.

One subject only: cross-subject decoding is skipped with a warning, and the
rest of the group level runs. Native-space samples are refused with one line
(exit 65 naming the subjects' samples; ``--space`` itself is checked at parse
time by :func:`bids_affect.steps.group.check_options`). CNN decoders read
volumes, so they take the voxel-space alignments only (``srm`` is left out
for them with a warning).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from bids_affect.io import derivatives as deriv
from bids_affect.steps._outputs import cleaning_parameters, data_space, read_json, sources
from bids_affect.steps.group import group_options, warn_versions

if TYPE_CHECKING:
    from bids_affect.workflows.group import GroupWorkflow

LOGGER = logging.getLogger("bids_affect.group")

#: The step's record of what it did (its folder), read by the sink.
RECORD_FILE = "crosssubject.json"


def cross_subject_settings(options: Any, decoding: Any, model: str, methods: Sequence[str], *,
                           device: str, num_threads: int | None,
                           min_volumes: int | None) -> dict[str, Any]:
    """The settings of one decoder's cross-subject step (and what its sidecars record).

    Folds, gap and permutations are the decoding section's (``--cv``,
    ``--cv-folds``, ``--cv-gap``, ``--n-permutations`` or
    ``--n-permutations-cnn``), as at the participant level.

    Examples
    --------
    >>> from bids_affect.steps.decoding import DecodingOptions
    >>> from bids_affect.steps.group import GroupOptions
    >>> settings = cross_subject_settings(GroupOptions(alignment=["none", "srm"]),
    ...                                   DecodingOptions(), "ridge", ["none", "srm"],
    ...                                   device="cpu", num_threads=None, min_volumes=20)
    >>> settings["alignment"], settings["n_components"], settings["n_permutations"]
    (['none', 'srm'], 50, 1000)
    """
    from bids_affect.decoding import is_cnn

    cnn = is_cnn(model)
    return {"model": model, "alignment": list(methods), "n_components": options.srm_components,
            "cv": decoding.cv, "n_splits": decoding.cv_folds, "gap": decoding.cv_gap,
            "n_permutations": decoding.n_permutations_cnn if cnn else decoding.n_permutations,
            "audit_max_per_subject": options.audit_volumes, "min_volumes": min_volumes,
            "cnn_params": {"epochs": decoding.epochs, "batch_size": decoding.batch_size,
                           "device": device, "num_threads": num_threads} if cnn else None}


def usable_alignments(model: str, methods: Sequence[str]) -> list[str]:
    """The alignment methods a decoder can take: CNNs read volumes, so voxel-space ones only.

    Examples
    --------
    >>> usable_alignments("ridge", ["none", "srm"])
    ['none', 'srm']
    >>> usable_alignments("cnn-neuro120fp", ["none", "srm"])
    ['none']
    """
    from bids_affect.alignment import VOXEL_SPACE_METHODS, check_alignment
    from bids_affect.decoding import is_cnn

    methods = check_alignment(list(methods))
    return [m for m in methods if m in VOXEL_SPACE_METHODS] if is_cnn(model) else methods


def output_desc(model: str, method: str) -> str:
    """``desc`` of a cross-subject output: the model's, plus the alignment unless ``none``.

    Examples
    --------
    >>> output_desc("ridge", "none"), output_desc("cnn-neuro120fp", "procrustes")
    ('ridge', 'cnnneuro120fpprocrustes')
    """
    return deriv.desc_label(model) + ("" if method == "none" else deriv.desc_label(method))


# --------------------------------------------------------------------------- steps


def load_subjects(samples_dirs: Sequence[Path], subjects: Sequence[str],
                  min_volumes: int | None) -> list[Any]:
    """Each subject's samples as :class:`~bids_affect.decoding.cross_subject.SubjectSamples`.

    Sample matrices stay memory-mapped (read a block of rows at a time by the
    folds). Samples not in a standard space are refused (exit 65) with one
    line naming the subjects and their samples; samples written by another
    bids_affect version are warned about (both versions named).
    """
    from bids_affect.atlases import is_standard_space
    from bids_affect.bold import SampleSet
    from bids_affect.decoding.cross_subject import SubjectSamples
    from bids_affect.exceptions import InputDataError

    if len(samples_dirs) != len(subjects):
        raise InputDataError(f"{len(samples_dirs)} sample folders for {len(subjects)} "
                             "subjects", path="samples_dirs")
    loaded = [SampleSet.load(folder) for folder in samples_dirs]
    warn_versions({f"sub-{subject} samples": samples.manifest.get("software", {}).get(
        "bids_affect") for subject, samples in zip(subjects, loaded)},
        "participant-level samples")
    spaces = [data_space(samples) for samples in loaded]
    native = [(subject, space, folder) for subject, space, folder
              in zip(subjects, spaces, samples_dirs) if not is_standard_space(space)]
    if len(loaded) >= 2 and native:
        names = ", ".join(f"sub-{subject} ({space or 'native: raw BOLD'})"
                          for subject, space, _ in native)
        raise InputDataError(
            f"cross-subject decoding needs every subject in one standard space, and the "
            f"samples of {names} are not: their voxels do not correspond across subjects",
            path=native[0][2], fix="analyse fMRIPrep outputs in an MNI152 space (--space "
                                   "MNI152NLin2009cAsym), or leave --alignment out")
    return [SubjectSamples.from_sample_set(subject, samples, space=space,
                                           min_volumes=min_volumes)
            for subject, samples, space in zip(subjects, loaded, spaces)]


def cross_subject_step(out_dir: Path, *, samples_dirs: Sequence[Path], subjects: Sequence[str],
                       task: str, settings: Mapping[str, Any], seed: int) -> None:
    """Leave-one-subject-out decoding of one decoder with each alignment method.

    Writes ``crosssubject.json`` (what ran, or why it was skipped) and, per
    method ``A``: ``A_decoding.tsv``, ``A_summary.json``, ``A_null.tsv`` and
    ``A_predictions.tsv`` (every held-out subject, with ``participant_id``).
    Fewer than two subjects: the step logs a warning and records the reason.
    """
    from bids_affect.decoding.cross_subject import NotEnoughSubjects, decode_across_subjects

    samples_dirs = [Path(folder) for folder in samples_dirs]
    record: dict[str, Any] = {"model": settings["model"], "task": task,
                              "subjects": list(subjects), "settings": dict(settings),
                              "seed": seed, "samples_dirs": [str(f) for f in samples_dirs],
                              "methods": [], "skipped": None}
    cnn_params = settings.get("cnn_params")
    try:
        people = load_subjects(samples_dirs, subjects, settings.get("min_volumes"))
        volume_mask = None
        if cnn_params is not None:
            from bids_affect.bold import SampleSet

            volume_mask = SampleSet.load(samples_dirs[0]).crop_mask
        result = decode_across_subjects(
            people, model=settings["model"], alignment=list(settings["alignment"]),
            n_components=settings["n_components"], cv=settings["cv"],
            n_splits=settings["n_splits"], gap=settings["gap"],
            n_permutations=settings["n_permutations"], random_state=seed,
            audit_max_per_subject=settings.get("audit_max_per_subject"),
            volume_mask=volume_mask, cnn_params=cnn_params)
    except NotEnoughSubjects as err:
        LOGGER.warning("task-%s %s: cross-subject decoding skipped (%s); the rest of the group "
                       "level runs.", task, settings["model"], err.problem)
        record["skipped"] = err.problem
        deriv.write_json(out_dir / RECORD_FILE, record)
        return
    for method, table in result.tables.items():
        deriv.write_tsv(out_dir / f"{method}_decoding.tsv", table)
        deriv.write_json(out_dir / f"{method}_summary.json", result.summary[method])
        nulls = result.nulls[method]
        null_table = pd.DataFrame({f"sub-{pid}": np.asarray(null, float)
                                   for pid, null in nulls.items()})
        if len(null_table.columns):
            null_table["mean"] = null_table.mean(axis=1)
        null_table.insert(0, "permutation", np.arange(1, len(null_table) + 1))
        deriv.write_tsv(out_dir / f"{method}_null.tsv", null_table)
        predictions = pd.concat([table_.assign(participant_id=pid) for pid, table_ in
                                 result.predictions[method].items()], ignore_index=True)
        deriv.write_tsv(out_dir / f"{method}_predictions.tsv", predictions)
        record["methods"].append(method)
    deriv.write_json(out_dir / RECORD_FILE, record)


#: Column descriptions of the cross-subject tables (beyond the derivatives' shared ones).
COLUMNS = {
    "balanced_accuracy": {"Description": "Balanced accuracy on the held-out subject's volumes, "
                                         "each predicted by a decoder trained on the other "
                                         "subjects' other test segments"},
    "chance_balanced_accuracy": {"Description": "Mean of the held-out subject's permutation "
                                                "null (chance level)"},
    "p_permutation": {"Description": "Permutation p-value of the held-out subject: (1 + "
                                     "#null >= observed) / (1 + n_permutations)"},
    "random_split_balanced_accuracy": {
        "Description": "Balanced accuracy of the subject's volumes in the peers' pooled random "
                       "80/20 split of every subject's volumes (leaks; audit only)"},
    "fold": {"Description": "The test segment that held the volume out (a run, or a block)"},
    "onset": {"Description": "Acquisition time of the volume in its run", "Units": "s"},
    "volume": {"Description": "Row of the subject's samples (every volume of its runs, in "
                              "run order)"},
    "mean": {"Description": "Mean over held-out subjects of their null scores under the same "
                            "label shift: the null of the mean balanced accuracy"},
}


def described(columns: Sequence[str], descriptions: Mapping[str, Any] = COLUMNS
              ) -> dict[str, Any]:
    """Sidecar entries of the ``columns`` that ``descriptions`` describes.

    Examples
    --------
    >>> list(described(["participant_id", "mean"]))
    ['mean']
    """
    return {column: dict(descriptions[column]) for column in columns if column in descriptions}


def write_cross_subject_step(out_dir: Path, *, decoding_dirs: Sequence[Path], output_dir: str,
                             participant_label: Sequence[str] | None,
                             provenance: Mapping[str, Any]) -> None:
    """Write each alignment's group table (its JSON the summary), null and predictions."""
    from bids_affect.bold import MANIFEST_FILE

    (step_dir,) = decoding_dirs
    step_dir = Path(step_dir)
    record = read_json(step_dir / RECORD_FILE)
    if record["skipped"]:
        return
    settings, task, model = record["settings"], record["task"], record["model"]
    bold = [run["bold"] for folder in record["samples_dirs"]
            for run in read_json(Path(folder) / MANIFEST_FILE)["runs"]]
    applied = {key: value for key, value in settings.items()
               if value is not None and key != "alignment"}
    common = dict(seed=record["seed"], sources=sources(provenance, bold),
                  Cleaning=cleaning_parameters(Path(record["samples_dirs"][0])))
    for method in record["methods"]:
        desc = output_desc(model, method)
        summary = read_json(step_dir / f"{method}_summary.json")
        about = dict(parameters={**applied, "alignment": method}, **common)
        table = pd.read_csv(step_dir / f"{method}_decoding.tsv", sep="\t", dtype={
            "participant_id": str}, keep_default_na=False, na_values=["n/a"])
        table["participant_id"] = "sub-" + table["participant_id"]
        deriv.write_with_sidecar(
            deriv.output_path(output_dir, "group_decoding", task=task, desc=desc), table,
            {**described(table.columns), **summary, **deriv.sidecar(
                Description=f"Leave-one-subject-out decoding of {model} with alignment "
                            f"{method}: one row per held-out subject, with its chance level, "
                            "null band and permutation p, and the leaky pooled random split "
                            "beside it", **about)})
        null = pd.read_csv(step_dir / f"{method}_null.tsv", sep="\t")
        deriv.write_with_sidecar(
            deriv.output_path(output_dir, "group_null", task=task, desc=desc), null,
            {**described(null.columns), **deriv.sidecar(
                Description="Permutation null of each held-out subject's balanced accuracy "
                            "(column sub-X) and of their mean: permutation j shifts the "
                            "movie's label sequence in every run for all subjects at once",
                PermutationScheme=summary.get("permutation_scheme"), **about)})
        predictions = pd.read_csv(step_dir / f"{method}_predictions.tsv", sep="\t",
                                  dtype={"participant_id": str}, keep_default_na=False,
                                  na_values=["n/a"])
        classes = summary.get("classes", [])
        for pid, rows in predictions.groupby("participant_id", sort=True):
            rows = rows.drop(columns="participant_id").reset_index(drop=True)
            deriv.write_with_sidecar(
                deriv.output_path(output_dir, "group_predictions", subject=pid, task=task,
                                  desc=desc), rows,
                {**described(rows.columns), **deriv.sidecar(
                    Description=f"Predictions of sub-{pid}'s volumes by decoders trained on "
                                f"the other subjects (alignment {method})",
                    Folds=summary.get("folds", {}).get(pid), **about)}, classes=classes)


# --------------------------------------------------------------------------- wiring


def _min_volumes(builder: GroupWorkflow) -> int | None:
    """The label spec's minimum volumes per class, as the participant level used it."""
    value = getattr(builder, "min_volumes", None)
    if value is None:  # until the group builder carries it: the run's saved settings
        value = (builder.common.get("provenance", {}).get("config", {})
                 .get("labels", {}).get("min_volumes"))
    return None if value is None else int(value)


def wire_group(builder: GroupWorkflow, options: Any) -> None:
    """With ``--alignment``: a cross-subject node (and its sink) per task and decoder.

    ``options`` is the decoding section (folds, permutations, CNN training);
    the alignments come from ``[group]``. The subjects' samples come from the
    participant level's nodes that join the group workflow
    (``Analysis.group_samples``).
    """
    group = group_options(builder)
    if not group.alignment:
        return
    tasks = sorted({task for _, task in builder.participants})
    if not tasks:
        raise RuntimeError("cross-subject decoding needs the subjects' samples, but the group "
                           "workflow holds no participant sub-workflow (the decoding entry of "
                           "the registry must set group_samples when --alignment is given)")
    min_volumes = _min_volumes(builder)
    for model in builder.shared.models:
        methods = usable_alignments(model, group.alignment)
        left_out = [m for m in group.alignment if m not in methods]
        if left_out:
            LOGGER.warning("cross-subject %s: a CNN reads volumes, so --alignment %s (a shared "
                           "space that is not a volume) is left out for it", model,
                           ", ".join(left_out))
        if not methods:
            continue
        settings = cross_subject_settings(group, options, model, methods,
                                          device=builder.shared.device,
                                          num_threads=builder.shared.num_threads,
                                          min_volumes=min_volumes)
        for task in tasks:
            name = f"{deriv.desc_label(task)}_{deriv.desc_label(model)}"
            node = builder.node(cross_subject_step, f"crosssubject_{name}", {
                "task": task, "settings": settings,
                "seed": builder.seed("crosssubject", task, model)})
            subjects = builder.connect_samples(node, task)
            node.inputs.kwargs = {**node.inputs.kwargs, "subjects": subjects}
            sink = builder.sink(write_cross_subject_step, f"ds_crosssubject_{name}")
            builder.wf.connect(node, "out_dir", sink, "decoding_dirs")


def methods(config: Any) -> str:
    """The cross-subject paragraph of the methods boilerplate (empty without ``--alignment``).

    Examples
    --------
    >>> from bids_affect.config import Config
    >>> methods(Config())
    ''
    """
    from bids_affect.steps.group import GroupOptions

    options = config.sections().get(GroupOptions.section_name, GroupOptions())
    if not options.alignment:
        return ""
    names = {"none": "without alignment", "srm": f"with a shared response model "
             f"({options.srm_components} components; fmralign DetSRM)",
             "procrustes": "with scaled orthogonal Procrustes alignment (fmralign)",
             "ridge": "with ridge alignment (fmralign)"}
    listed = "; ".join(names[m] for m in options.alignment)
    return (f"Cross-subject decoding held out each subject in turn and decoded it with "
            f"decoders trained on the other subjects' volumes outside the test run ({listed}). "
            "Alignments were learned from time-locked responses without labels: the group "
            "alignment on the training subjects, the held-out subject's own map on its "
            "volumes outside the test run only. Each held-out subject's chance level, null "
            "band and p came from circular shifts of the movie's label sequence in every run, "
            "applied to all subjects at once with every decoder refitted; the group's from "
            "the mean over subjects under the same shifts. The peers' pooled random 80/20 "
            "split of every subject's volumes is reported beside it as a leakage audit.")
