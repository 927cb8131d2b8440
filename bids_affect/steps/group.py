"""The group level: summaries across the subjects' participant-level outputs.

- :func:`group_withinsubject_step`: each subject's within-subject decoding
  scores in one table per task and model, with the group's inference beside
  them in its JSON (the t-test of accuracy minus chance with its caveat, and
  prevalence inference from the permutation nulls the participant level saved);
- :class:`GroupOptions`: the options of the group level (config section
  ``[group]``), read by cross-subject decoding
  (:mod:`~bids_affect.steps.group_decoding`) and by the group maps, mixed
  models, group RSA and occlusion summaries (:mod:`~bids_affect.steps.group_maps`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from bids_affect._utils import converters
from bids_affect.config import derive_seed, option, section
from bids_affect.io import derivatives as deriv
from bids_affect.steps._outputs import participant_outputs, read_json

if TYPE_CHECKING:
    from bids_affect.config import Config

LOGGER = logging.getLogger("bids_affect.group")


def _alignment_methods() -> list[str]:
    from bids_affect.alignment import ALIGNMENT_METHODS

    return list(ALIGNMENT_METHODS)


#: Tests of group maps (``--group-inference``).
GROUP_INFERENCES = ("parametric", "nonparametric", "both")


@section("Group level", "group")
class GroupOptions:
    """Settings of the group level (``[group]``): cross-subject models and group statistics."""

    alignment: list[str] = option(
        default_factory=list, type=converters.comma_list, metavar="LIST",
        choices=_alignment_methods, parameters=("alignment",),
        default_text="none given: cross-subject decoding does not run",
        help="cross-subject decoding at the group level (with --analyses decoding): each "
             "decoder of --models trained on the other subjects and tested on each held-out "
             "subject, with these functional alignments (comma-separated; several are "
             "scored on the same folds, e.g. none,srm), fitted on the training subjects and "
             "on the held-out subject's other runs only; needs data in one standard --space")
    srm_components: int = option(
        50, type=converters.positive_int, metavar="K", parameters=("n_components",),
        help="shared components of --alignment srm")
    audit_volumes: int | None = option(
        None, flags=("--audit-volumes-per-subject",), type=converters.positive_int,
        metavar="N", parameters=("audit_max_per_subject",),
        default_text="all of them",
        help="labelled volumes per subject drawn for the pooled random-split audit of "
             "cross-subject decoding (its pooled matrix is the audit's memory)")
    inference: str = option(
        "parametric", flags=("--group-inference",), choices=GROUP_INFERENCES,
        help="test of group maps (occlusion, encoding r as Fisher z): one-sample t-test "
             "thresholded by FDR (parametric, nilearn SecondLevelModel), sign flips with "
             "max-t family-wise error (nonparametric, nilearn non_parametric_inference), "
             "or both")
    alpha: float = option(
        0.05, flags=("--group-alpha",), type=converters.probability, metavar="Q",
        parameters=("alpha",),
        help="q of the FDR of parametric group maps, family-wise level of nonparametric "
             "ones, and alpha of prevalence inference")
    permutations: int = option(
        10000, flags=("--group-permutations",), type=converters.positive_int, metavar="N",
        parameters=("n_permutations",),
        help="sign flips of nonparametric group maps and of group RSA (all patterns when "
             "there are fewer)")
    cluster_threshold: int = option(
        0, flags=("--group-cluster-threshold",), type=converters.non_negative_int,
        metavar="VOXELS", parameters=("cluster_threshold",),
        help="smallest cluster (voxels) kept in thresholded parametric group maps")
    consensus_min_subjects: int | None = option(
        None, type=converters.positive_int, metavar="N", parameters=("min_subjects",),
        default_text="more than half of the subjects",
        help="occlusion consensus: a voxel is listed when at least N subjects put it among "
             "their --top-k voxels")
    prevalence_permutations: int = option(
        100_000, type=converters.positive_int, metavar="N", parameters=("n_second_level",),
        help="second-level permutations of prevalence inference (Allefeld et al. 2016)")


def group_options(builder: Any) -> GroupOptions:
    """The ``[group]`` section a group workflow builder holds (defaults when it has none).

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> group_options(SimpleNamespace(options={})).alignment
    []
    """
    options = builder.options.get(GroupOptions.section_name)
    return options if options is not None else GroupOptions()


def needs_samples(config: Config) -> bool:
    """Whether the group level reads the subjects' samples: cross-subject decoding is asked.

    Examples
    --------
    >>> from bids_affect.config import Config
    >>> needs_samples(Config())
    False
    """
    sections = config.sections()
    options = sections.get(GroupOptions.section_name, GroupOptions())
    return bool(options.alignment) and "decoding" in config.analysis.analyses


def check_options(options: GroupOptions, config: Config) -> None:
    """Parse-time checks of ``[group]`` (exit 64 with one line naming the flag).

    ``--alignment`` serves cross-subject decoding: it needs ``--analyses
    decoding`` and, at the group level, a standard ``--space`` (native voxels
    do not correspond across subjects). A participant-only run ignores it, so
    one configuration file can serve both levels.

    Examples
    --------
    >>> from bids_affect.config import Config
    >>> config = Config.from_dict({"execution": {"analysis_level": ["group"],
    ...                                          "space": "T1w"}})
    >>> check_options(GroupOptions(alignment=["srm"]), config)
    Traceback (most recent call last):
    ...
    bids_affect.exceptions.UsageError: --alignment srm: cross-subject decoding needs every \
subject in one standard space, and --space is T1w (native: its voxels do not correspond \
across subjects); fix: analyse fMRIPrep outputs in an MNI152 space (--space \
MNI152NLin2009cAsym), or leave --alignment out
    """
    from bids_affect.alignment import check_alignment
    from bids_affect.atlases import is_standard_space
    from bids_affect.exceptions import UsageError

    if not options.alignment or "group" not in config.execution.analysis_level:
        return
    flag = f"--alignment {','.join(options.alignment)}"
    check_alignment(options.alignment)
    if "decoding" not in config.analysis.analyses:
        raise UsageError(f"{flag}: cross-subject decoding is the group part of the decoding "
                         "analysis, which is not asked",
                         fix="add decoding to --analyses, or leave --alignment out")
    space = config.execution.space
    if not is_standard_space(space):
        raise UsageError(f"{flag}: cross-subject decoding needs every subject in one standard "
                         f"space, and --space is {space} (native: its voxels do not "
                         "correspond across subjects)",
                         fix="analyse fMRIPrep outputs in an MNI152 space (--space "
                             "MNI152NLin2009cAsym), or leave --alignment out")


def inference_settings(options: GroupOptions | None) -> dict[str, Any]:
    """What the within-subject table's group inference uses (``[group]``, or its defaults).

    Examples
    --------
    >>> inference_settings(None)
    {'alpha': 0.05, 'n_second_level': 100000}
    """
    options = options if options is not None else GroupOptions()
    return {"alpha": options.alpha, "n_second_level": options.prevalence_permutations}


def warn_other_versions(paths: Sequence[Path], what: str) -> list[str]:
    """Warn when participant outputs were written by another bids_affect version.

    Each file's JSON sidecar (or the file itself, for a JSON output) records
    ``SoftwareVersions``; one warning names the versions found and this one.
    Returns the other versions found.

    Examples
    --------
    >>> warn_other_versions([], "decoding outputs")
    []
    """
    versions = {}
    for path in map(Path, paths):
        about = path if path.suffix == ".json" else deriv.sidecar_path(path)
        if about.is_file():
            versions[path.name] = read_json(about).get("SoftwareVersions", {}).get("bids_affect")
    return warn_versions(versions, what)


def warn_versions(versions: Mapping[str, str | None], what: str) -> list[str]:
    """Warn when the bids_affect versions of named inputs differ from this one.

    ``versions`` maps an input's name to the version that wrote it (None:
    unknown, not warned about). Returns the other versions, sorted.

    Examples
    --------
    >>> warn_versions({"sub-01 samples": "0.0.1", "sub-02 samples": None}, "samples")
    ['0.0.1']
    """
    from bids_affect.__about__ import __version__

    found: dict[str, list[str]] = {}
    for name, version in versions.items():
        if version and version != __version__:
            found.setdefault(str(version), []).append(name)
    if found:
        LOGGER.warning("%s were written by bids_affect %s, and this group level is bids_affect "
                       "%s: results may not be comparable (e.g. %s)", what,
                       ", ".join(sorted(found)), __version__,
                       "; ".join(names[0] for names in found.values()))
    return sorted(found)


def find_decoding_outputs(output_dir: Path | str,
                          participant_label: Sequence[str] | None = None) -> list:
    """Participant-level ``decoding.json`` files of the selected subjects (66 when none)."""
    return participant_outputs(output_dir, "decoding", participant_label,
                               what="decoding outputs (sub-*/func/*_decoding.json)",
                               analyses="decoding")


def group_withinsubject_step(out_dir: Path, *, output_dir: str,
                             participant_label: Sequence[str] | None,
                             provenance: Mapping[str, Any],
                             inference: Mapping[str, Any] | None = None) -> None:
    """Collect each subject's decoding scores into one table per task and model.

    The table's JSON adds the group's inference (``GroupInference``,
    :func:`withinsubject_inference`): the t-test of accuracy minus chance with
    its caveat, and prevalence inference from each subject's permutation null
    (``sub-X/func/..._desc-MODEL_null.tsv``). ``inference``: its settings
    (:func:`inference_settings`; default those of :class:`GroupOptions`); its
    seed derives from the run's master seed.
    """
    found = find_decoding_outputs(output_dir, participant_label)
    warn_other_versions([item.path for item in found], "participant-level decoding outputs")
    settings = dict(inference or inference_settings(None))
    nulls = {(item.entities["subject"], item.entities["task"], item.entities["desc"]): item.path
             for item in deriv.find_outputs(output_dir, "null_distribution")}
    rows: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for item in found:
        metrics = read_json(item.path)
        band = metrics.get("null_band") or [None, None]
        rows.setdefault((item.entities["task"], item.entities["desc"]), []).append({
            "participant_id": f"sub-{item.entities['subject']}",
            "model": metrics["model"],
            "n_samples": sum(metrics["n_samples"].values()),
            "n_classes": len(metrics["classes"]),
            "accuracy": metrics["accuracy"],
            "balanced_accuracy": metrics["balanced_accuracy"],
            "chance_balanced_accuracy": metrics["chance_balanced_accuracy"],
            "null_low": band[0], "null_high": band[1],
            "p_permutation": metrics["p_permutation"],
            "n_permutations": metrics["n_permutations"],
            "macro_auc": metrics["macro_auc"],
            "random_split_balanced_accuracy": metrics.get("random_split_balanced_accuracy"),
        })
    for (task, desc), table in sorted(rows.items()):
        table = pd.DataFrame(sorted(table, key=lambda row: row["participant_id"]))
        null_paths = [nulls.get((pid.removeprefix("sub-"), task, desc))
                      for pid in table["participant_id"]]
        seed = derive_seed(int(provenance.get("master_seed", 0)), "group", "prevalence", task,
                           desc)
        group_inference = withinsubject_inference(table, null_paths, random_state=seed,
                                                  **settings)
        used = [item.path for item in found if item.entities["task"] == task
                and item.entities["desc"] == desc] + [p for p in null_paths if p is not None]
        deriv.write_with_sidecar(
            deriv.output_path(output_dir, "group_withinsubject", task=task, desc=desc), table,
            deriv.sidecar(Description="Within-subject decoding scores of every subject, with "
                                      "chance level, null band and permutation p; "
                                      "GroupInference tests them across subjects",
                          GroupInference=group_inference,
                          parameters={"inference": settings}, seed=seed,
                          sources=[deriv.SourceResolver({"": Path(output_dir)}).uri(path)
                                   for path in used]))


def withinsubject_inference(table: pd.DataFrame, null_paths: Sequence[Path | None], *,
                            alpha: float = 0.05, n_second_level: int = 100_000,
                            random_state: int | None = None) -> dict[str, Any]:
    """The group's inference on within-subject scores: t-test with caveat, and prevalence.

    Parameters
    ----------
    table : DataFrame
        The within-subject table: ``participant_id``, ``balanced_accuracy``,
        ``chance_balanced_accuracy`` (each subject's null mean).
    null_paths : sequence of Path or None
        Each row's permutation null (``_null.tsv``, column ``balanced_accuracy``);
        None where the subject has none.
    alpha, n_second_level, random_state
        Of :func:`bids_affect.stats.prevalence_inference`.

    Returns
    -------
    dict
        ``ttest`` (:func:`bids_affect.stats.accuracy_ttest` with its
        ``caveat``; None with fewer than 2 subjects), ``prevalence``
        (:meth:`~bids_affect.stats.PrevalenceResult.to_dict`; None when a subject
        has no null: prevalence needs every subject's), ``participants`` and
        ``note`` saying what could not be computed.

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np
    >>> folder, rng = Path(tempfile.mkdtemp()), np.random.default_rng(0)
    >>> paths = []
    >>> for k in range(4):
    ...     paths.append(folder / f"{k}.tsv")
    ...     pd.DataFrame({"balanced_accuracy": rng.normal(0.2, 0.02, 50)}).to_csv(
    ...         paths[-1], sep="\\t", index=False)
    >>> table = pd.DataFrame({"participant_id": ["sub-1", "sub-2", "sub-3", "sub-4"],
    ...                       "balanced_accuracy": [0.31, 0.29, 0.33, 0.3],
    ...                       "chance_balanced_accuracy": [0.2] * 4})
    >>> result = withinsubject_inference(table, paths, random_state=0)
    >>> result["prevalence"]["p_global_null"] < 0.05, "caveat" in result["ttest"]
    (True, True)
    """
    from bids_affect.stats import accuracy_ttest, prevalence_inference

    scores = table["balanced_accuracy"].to_numpy(float)
    chances = table["chance_balanced_accuracy"].to_numpy(float)
    participants = table["participant_id"].astype(str).tolist()
    notes = []
    ttest = accuracy_ttest(scores, chances) if len(scores) >= 2 else None
    if ttest is None:
        notes.append("the t-test needs at least 2 subjects")
    nulls = [None if path is None else pd.read_csv(path, sep="\t")["balanced_accuracy"]
             .dropna().to_numpy(float) for path in null_paths]
    lacking = [pid for pid, null in zip(participants, nulls) if null is None or not len(null)]
    prevalence = None
    if lacking:
        notes.append(f"no prevalence inference: {', '.join(lacking)} saved no permutation "
                     "null (run the participant level with --n-permutations above 0)")
    else:
        prevalence = prevalence_inference(scores, nulls, alpha=alpha,
                                          n_second_level=n_second_level,
                                          random_state=random_state).to_dict()
    return {"participants": participants, "ttest": ttest, "prevalence": prevalence,
            "note": "; ".join(notes) or None}


def summary_table(output_dir: Path) -> str:
    """Each subject's decoding scores, from the group tables: what the demo prints last.

    A p-value can be no smaller than 1 / (permutations + 1): the table says
    so where the permutations bound it above .05.
    """
    lines = [f"{'subject':<9}{'model':<17}{'bal. acc.':>10}{'chance':>9}{'p':>8}  note"]
    for table in sorted((Path(output_dir) / "group").glob("*_withinsubject.tsv")):
        for row in pd.read_csv(table, sep="\t").itertuples():
            bound = 1 / (row.n_permutations + 1)
            note = (f"p cannot go below {bound:.2f}: only {row.n_permutations} permutations"
                    if bound > 0.05 else f"{row.n_permutations} permutations")
            lines.append(f"{row.participant_id:<9}{row.model:<17}{row.balanced_accuracy:>10.3f}"
                         f"{row.chance_balanced_accuracy:>9.3f}{row.p_permutation:>8.3f}  {note}")
    return "\n".join(lines)
