"""Top level of the BIDS-App: checks, dataset index, workflows, provenance.

:func:`run_bids_app` is called by the command line with a checked
:class:`~bids_affect.config.Config`. It is the only place below ``cli/`` that
reads the configuration; it passes explicit settings to the workflow factories.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import shutil
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from nipype.pipeline import engine as pe

from bids_affect.__about__ import __version__
from bids_affect.config import Config
from bids_affect.exceptions import (
    BidsAffectError,
    InputMissingError,
    UsageError,
    error_from_traceback,
)
from bids_affect.io import derivatives
from bids_affect.io.layout import RunRecord

LOGGER = logging.getLogger("bids_affect.workflow")


def workflow_name() -> str:
    """Name of the top workflow (and its work folder); a new minor version starts afresh."""
    major, minor = __version__.split(".")[:2]
    return f"bids_affect_{major}_{minor}_wf"


def plan_participants(runs: Sequence[RunRecord]) -> dict[tuple[str, str], list[RunRecord]]:
    """Runs to analyse per (subject, task), leaving out runs without events.

    A run without an events file is skipped with a warning when other runs of
    the same subject and task remain; when none has events, the subject cannot
    be labelled and :class:`InputMissingError` (66) is raised.
    """
    groups: dict[tuple[str, str], list[RunRecord]] = defaultdict(list)
    for run in runs:
        groups[(run.subject, run.task)].append(run)
    plans = {}
    for (subject, task), members in sorted(groups.items()):
        with_events = [run for run in members if run.events is not None]
        if not with_events:
            raise InputMissingError(
                f"no run of sub-{subject} task-{task} has an events.tsv",
                path=members[0].raw_bold.parent,
                fix="add the runs' _events.tsv files (emotion annotations), or deselect the "
                    "task with --task-id")
        for run in members:
            if run.events is None:
                LOGGER.warning("%s has no events.tsv; this run is skipped.", run.raw_bold)
        plans[(subject, task)] = with_events
    return plans


def _provenance(config: Config, links: dict[str, Path]) -> dict[str, Any]:
    return {"links": {name: str(path) for name, path in links.items()},
            "master_seed": int(config.seeds.master), "run_id": config.execution.run_id,
            "config": config.to_dict()}


def check_output_location(output_dir: Path, input_dirs: Mapping[str, Path]) -> None:
    """Refuse an ``output_dir`` that is, holds or lies in an input dataset (exit 64).

    ``input_dirs`` are the raw dataset and the derivatives read as inputs. Our
    outputs never overwrite another pipeline's dataset (its
    ``dataset_description.json`` says who made it).
    """
    output_dir = Path(output_dir).resolve()
    for name, folder in input_dirs.items():
        folder = Path(folder).resolve()
        if name != "raw" and (folder == output_dir or output_dir in folder.parents
                              or folder in output_dir.parents):
            raise UsageError(f"output_dir overlaps the input derivatives '{name}' ({folder})",
                             path=output_dir,
                             fix="write outputs to their own folder, e.g. "
                                 "bids_dir/derivatives/bids_affect")
    other = derivatives.foreign_dataset(output_dir)
    if other is not None:
        raise UsageError(f"output_dir holds a dataset made by {other}", path=output_dir,
                         fix="choose an empty folder or a previous bids_affect output")


def output_kinds(config: Config) -> list[str]:
    """The output kinds a participant run writes (for ``.bidsignore``)."""
    from bids_affect.analyses import ANALYSES
    from bids_affect.boilerplate import decoded_models

    kinds = ["labels", "label_counts"]
    if decoded_models(config):
        kinds.extend(ANALYSES["decoding"].outputs)
    for name in config.analysis.analyses:
        kinds.extend(ANALYSES[name].outputs)
    return list(dict.fromkeys(kinds))


class RunFiles:
    """What a run created in ``output_dir`` and the work directory, to undo a failed start.

    A run that fails before writing any analysis output removes the files and
    folders it created (dataset files, its log, labels), so nothing looks
    like a finished result; a run that wrote results keeps them, and a work
    directory in which the workflow ran is kept for a rerun to resume from.
    """

    def __init__(self, output_dir: Path, work_dir: Path):
        self.output_dir, self.work_dir = Path(output_dir), Path(work_dir)
        self.before = self._files()
        self.work_dir_existed = self.work_dir.exists()
        self.workflow_started = False

    def _files(self) -> set[Path]:
        if not self.output_dir.is_dir():
            return set()
        return {path for path in self.output_dir.rglob("*") if path.is_file()}

    def new_files(self) -> list[Path]:
        """Files this run added to ``output_dir``."""
        return sorted(self._files() - self.before)

    def undo(self) -> None:
        """Remove what a failed start created; say so."""
        from bids_affect.analyses import ANALYSES

        if not self.work_dir_existed and not self.workflow_started:
            shutil.rmtree(self.work_dir, ignore_errors=True)
        created = self.new_files()
        analysis_kinds = {kind for analysis in ANALYSES.values() for kind in analysis.outputs}
        results = [path for path in created
                   if derivatives.output_kind(path, analysis_kinds) is not None]
        if results or not created:
            return
        for path in created:
            path.unlink(missing_ok=True)
        for folder in sorted({p.parent for p in created}, key=lambda p: -len(p.parts)):
            while folder != self.output_dir.parent and folder.is_dir() and not any(
                    folder.iterdir()) and folder not in self.before_folders:
                folder.rmdir()
                folder = folder.parent
        LOGGER.warning("The run failed before writing any result: the %d file(s) it had "
                       "created in %s were removed.", len(created), self.output_dir)

    @property
    def before_folders(self) -> set[Path]:
        return {p.parent for p in self.before} | ({self.output_dir} if self.before else set())


def run_bids_app(config: Config) -> None:
    """Run the levels asked for in ``config`` (already checked by the parser).

    Every input is checked (index, selection, validation, label spec) before
    anything is written to ``output_dir``, so bad input leaves no trace there;
    a problem found later, before any result was written, removes what the run
    had created (:class:`RunFiles`).
    """
    execution = config.execution
    files = RunFiles(execution.output_dir, execution.work_dir)
    try:
        _run_levels(config, files)
    except BaseException:
        files.undo()
        raise
    if execution.clean_workdir:
        clean_work_dir(execution.work_dir)
    print(f"bids_affect: outputs in {execution.output_dir}")


def _run_levels(config: Config, files: RunFiles) -> None:
    from bids_affect.boilerplate import methods_boilerplate
    from bids_affect.io.layout import check_bids_dir, find_fmriprep_derivatives

    execution = config.execution
    bids_dir = check_bids_dir(execution.bids_dir)
    derivatives.check_writable_dir(execution.output_dir, "output directory", create=False)
    # -d replaces the search of bids_dir/derivatives/ (pybids refuses two pipelines of
    # one name, e.g. the same fMRIPrep folder found and given).
    derivative_dirs = dict(execution.derivatives) or find_fmriprep_derivatives(
        bids_dir, exclude=[execution.output_dir])
    links = {"raw": bids_dir, **derivative_dirs}
    check_output_location(execution.output_dir, links)
    participant = "participant" in execution.analysis_level
    if execution.reports_only:
        from bids_affect.reports import build_reports

        for path in build_reports(execution.output_dir, execution.participant_label or None):
            print(f"bids_affect: report {path}")
        return
    if execution.boilerplate_only:
        derivatives.init_derivatives(execution.output_dir, bids_dir, links,
                                     methods=methods_boilerplate(config))
        citation = execution.output_dir / "logs" / "CITATION.md"
        print(f"bids_affect: methods boilerplate written to {citation}")
        return
    if execution.bids_database_dir is not None:
        derivatives.check_writable_dir(execution.bids_database_dir, "BIDS database directory",
                                       create=False)
    derivatives.check_writable_dir(execution.work_dir, "work directory")
    with run_log(execution.work_dir, execution.run_id) as log_path:
        if participant:
            _participant_level(config, derivative_dirs, links, files, log_path)
        if "group" in execution.analysis_level:
            _group_level(config, derivative_dirs, links, files, log_path)


def _participant_level(config: Config, derivative_dirs: dict[str, Path],
                       links: dict[str, Path], files: RunFiles, log_path: Path) -> None:
    from bids_affect.boilerplate import methods_boilerplate

    execution = config.execution
    wf, subjects = prepare_participant_level(config, derivative_dirs, links)
    derivatives.init_derivatives(
        execution.output_dir, execution.bids_dir, links, methods=methods_boilerplate(config),
        analyses=config.analysis.analyses, kinds=[*output_kinds(config), "report", "figure"])
    for subject in subjects:
        log = derivatives.log_dir(execution.output_dir, subject, execution.run_id)
        derivatives.write_text(log / "bids_affect.toml", config.to_toml())
    files.workflow_started = True
    try:
        run_workflow(wf, config)
    except BaseException:
        # As fMRIPrep: the log and the reports (of what finished) are written after a
        # failure too.
        copy_run_log(log_path, execution.output_dir, subjects, execution.run_id)
        _reports(execution.output_dir, subjects, group=False, failed=True)
        raise
    copy_run_log(log_path, execution.output_dir, subjects, execution.run_id)
    _reports(execution.output_dir, subjects, group=False)


def _group_level(config: Config, derivative_dirs: dict[str, Path], links: dict[str, Path],
                 files: RunFiles, log_path: Path) -> None:
    from bids_affect.steps.group import find_decoding_outputs, summary_table

    execution = config.execution
    found = decoding_outputs(config)
    if not found and not group_analyses(config):
        # Nothing to do at the group level: 66 (naming what is missing) before any write.
        find_decoding_outputs(execution.output_dir, execution.participant_label)
    group_config = participant_settings(config)
    # The group level describes what the participant level ran; it never rewrites the
    # participant level's methods (methods=None keeps logs/CITATION.md). Without a
    # participant level (a group-only analysis), its own methods are the dataset's.
    from bids_affect.analyses import ANALYSES
    from bids_affect.boilerplate import methods_boilerplate

    participant_methods = (execution.output_dir / "logs" / "CITATION.md").is_file()
    # Wiring checks the group parts' inputs (66 for missing outputs, 65 for native
    # maps): before any write, so that such a failure leaves nothing behind.
    wf = init_group_wf_from_config(config, links, derivative_dirs)
    kinds = ["group_withinsubject", "group_report", "group_figure",
             *(kind for name in group_analyses(config) for kind in ANALYSES[name].outputs)]
    derivatives.init_derivatives(
        execution.output_dir, execution.bids_dir, links,
        methods=None if participant_methods else methods_boilerplate(config),
        analyses=[name for name in group_analyses(config) if ANALYSES[name].wire is None],
        kinds=kinds)
    derivatives.write_text(derivatives.log_dir(execution.output_dir, None, execution.run_id)
                           / "bids_affect.toml", group_config.to_toml())
    files.workflow_started = True
    try:
        run_workflow(wf, config)
    finally:
        copy_run_log(log_path, execution.output_dir, [None], execution.run_id)
    subjects = sorted({item.entities["subject"] for item in found})
    _reports(execution.output_dir, subjects, group=True)
    if found:
        print(summary_table(execution.output_dir))


def _reports(output_dir: Path, subjects: Sequence[str], group: bool,
             failed: bool = False) -> None:
    """Write the HTML reports of ``subjects`` (and the group's), from the derivatives.

    A report that cannot be built is a warning, never the run's failure; after a
    failure, subjects with no output yet get no report and no warning.
    """
    from bids_affect.reports import build_group_report, build_subject_report

    for subject in subjects:
        try:
            path = build_subject_report(output_dir, subject)
        except InputMissingError as err:
            if not failed:
                LOGGER.warning("sub-%s: the HTML report was not written (%s).", subject, err)
        except (BidsAffectError, OSError, ValueError) as err:
            LOGGER.warning("sub-%s: the HTML report was not written (%s).", subject, err)
        else:
            LOGGER.info("Report: %s", path)
    if group:
        try:
            print(f"bids_affect: group report {build_group_report(output_dir)}")
        except (BidsAffectError, OSError, ValueError) as err:
            LOGGER.warning("The group HTML report was not written (%s).", err)


@contextlib.contextmanager
def run_log(work_dir: Path, run_id: str) -> Iterator[Path]:
    """Record the run's warnings and errors in ``work_dir/logs/RUN_ID.log`` while it runs.

    :func:`copy_run_log` then puts each subject's lines in its ``log/RUN_ID/``
    folder, where its HTML report shows them.
    """
    path = Path(work_dir) / "logs" / f"{run_id}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("%(asctime)s [%(name)s] %(levelname)s: %(message)s"))
    loggers = [logging.getLogger("bids_affect"), logging.getLogger("py.warnings")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield path
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
        handler.close()


_SUBJECT = re.compile(r"\bsub-([A-Za-z0-9]+)")


def copy_run_log(log_path: Path, output_dir: Path, subjects: Sequence[str | None],
                 run_id: str) -> None:
    """Each subject's warnings (those naming another subject left out) in its log folder.

    ``None`` in ``subjects`` stands for the group level, which gets every line.
    """
    lines = Path(log_path).read_text(encoding="utf-8").splitlines() if Path(
        log_path).is_file() else []
    for subject in subjects:
        kept = [line for line in lines if subject is None
                or all(found == subject for found in _SUBJECT.findall(line))]
        target = derivatives.log_dir(output_dir, subject, run_id) / "bids_affect.log"
        derivatives.write_text(target, "".join(f"{line}\n" for line in kept))


#: Sections of a participant run's configuration that shape its results.
_RESULT_SECTIONS = ("labels", "cleaning", "analysis")


def participant_settings(config: Config) -> Config:
    """This group run's configuration, with the settings the participant level ran.

    Each selected subject's latest saved ``bids_affect.toml`` is read; the
    sections that shape results (labels, cleaning, analyses and their options)
    are taken from them, so the group log records what the participant level
    did, not this run's defaults. Subjects run with different settings get one
    warning naming the settings and subjects; the first subject's are recorded.
    """
    from bids_affect.analyses import ANALYSES

    execution = config.execution
    found: dict[str, Config] = {}
    for log in sorted(execution.output_dir.glob("sub-*/log/*/bids_affect.toml")):
        subject = log.parts[-4].removeprefix("sub-")
        if execution.participant_label and subject not in execution.participant_label:
            continue
        try:
            found[subject] = Config.from_toml(log)  # the latest run id sorts last
        except BidsAffectError as err:
            LOGGER.warning("%s cannot be read (%s); the group level does not describe this "
                           "subject's settings.", log, err.problem)
    if not found:
        return config
    sections = [*_RESULT_SECTIONS, *(name for name in ANALYSES if name in config.sections())]
    reference_subject, reference = next(iter(found.items()))
    for subject, other in found.items():
        differing = [name for name in sections if other.section(name) != reference.section(name)]
        if differing:
            LOGGER.warning("sub-%s was run with other %s settings than sub-%s; the group "
                           "results mix them (the group log records sub-%s's).", subject,
                           ", ".join(differing), reference_subject, reference_subject)
    merged = {name: reference.section(name) for name in sections}
    # What this group run does is its own choice; what the subjects' results are, theirs.
    merged["analysis"] = dataclasses.replace(merged["analysis"],
                                             analyses=list(config.analysis.analyses))
    return config.copy(**merged)


def clean_work_dir(work_dir: Path) -> None:
    """Remove this version's workflow folders from ``work_dir`` (``--clean-workdir``).

    Other contents (a shared pybids database, other versions' or tools' folders)
    are kept, so jobs sharing one work directory do not delete each other's work.
    """
    for name in (workflow_name(), f"{workflow_name()}_group"):
        shutil.rmtree(Path(work_dir) / name, ignore_errors=True)


def prepare_participant_level(config: Config, derivative_dirs: dict[str, Path],
                              links: dict[str, Path]) -> tuple[pe.Workflow, list[str]]:
    """Index, select, validate and plan: the participant workflow (not run) and its subjects."""
    from bids_affect.io.annotations import load_label_spec
    from bids_affect.io.layout import collect_runs, load_layout, select_subjects
    from bids_affect.io.validation import check_dataset

    execution = config.execution
    layout = load_layout(execution.bids_dir, derivative_dirs, execution.bids_database_dir)
    subjects = select_subjects(layout, execution.participant_label)
    runs = collect_runs(layout, subjects, execution.session_label, execution.task_id,
                        execution.bids_filters, execution.space)
    if not execution.skip_bids_validation:
        check_dataset(execution.bids_dir, subjects, execution.work_dir)
    plans = plan_participants(runs)
    spec = load_label_spec(config.labels.labels, hrf_lag=config.labels.hrf_lag,
                           min_volumes=config.labels.min_volumes)
    subjects = sorted({subject for subject, _ in plans})
    return init_bids_affect_wf(config, plans, spec.to_dict(), links), subjects


def init_bids_affect_wf(config: Config, plans: dict[tuple[str, str], list[RunRecord]],
                        label_spec: dict[str, Any], links: dict[str, Path],
                        samples_only: bool = False) -> pe.Workflow:
    """The participant-level workflow: one sub-workflow per subject and task.

    ``samples_only``: each subject's labels and samples only (the group level's
    use: the nodes are the participant level's, so its work directory's results
    are reused when the group runs with the same ``-w``).
    """
    from bids_affect.steps.encoding import FEATURE_CACHE
    from bids_affect.workflows.participant import init_participant_wf

    analysis = config.analysis
    wf = pe.Workflow(name=workflow_name(), base_dir=str(config.execution.work_dir))
    shared = shared_settings(config)
    options = analysis_options(config)
    provenance = _provenance(config, links)
    # Processes a step may use for permutation refits; several steps run at once under
    # MultiProc, so this follows --omp-nthreads (default 1) rather than --nprocs.
    n_jobs = config.nipype.omp_nthreads or 1
    for (subject, task), runs in plans.items():
        wf.add_nodes([init_participant_wf(
            subject=subject, task=task, runs=[run.to_dict() for run in runs],
            output_dir=config.execution.output_dir, label_spec=label_spec,
            cleaning=dataclasses.asdict(config.cleaning), analyses=analysis.analyses,
            options=options, shared=shared, master_seed=int(config.seeds.master),
            provenance=provenance, n_jobs=n_jobs, bids_dir=config.execution.bids_dir,
            cache_dir=config.execution.work_dir / FEATURE_CACHE, samples_only=samples_only)])
    return wf


def analysis_registry() -> dict[str, Any]:
    """The registered analyses (:data:`bids_affect.analyses.ANALYSES`)."""
    from bids_affect.analyses import ANALYSES

    return ANALYSES


def init_group_wf_from_config(config: Config, links: dict[str, Path],
                              derivative_dirs: dict[str, Path] | None = None) -> pe.Workflow:
    """The group-level workflow with this run's settings.

    When a group analysis reads the subjects' samples (``Analysis.group_samples``,
    e.g. cross-subject decoding), the participant level's labels and samples nodes
    join the workflow: their results are reused from the work directory (the same
    ``-w`` as the participant jobs) or rebuilt.
    """
    from bids_affect.analyses import ANALYSES
    from bids_affect.workflows.group import init_group_wf

    execution = config.execution
    participants: dict[tuple[str, str], pe.Workflow] = {}
    if any(ANALYSES[name].group_samples for name in group_analyses(config)):
        top = _samples_workflow(config, derivative_dirs or {}, links)
        participants = {key: top.get_node(f"sub_{key[0]}_task_{key[1]}_wf")
                        for key in _plan_keys(top)}
    else:
        top = pe.Workflow(name=f"{workflow_name()}_group", base_dir=str(execution.work_dir))
    group = init_group_wf(
        output_dir=execution.output_dir, participant_label=execution.participant_label,
        provenance=_provenance(config, links), analyses=group_analyses(config),
        options=analysis_options(config), shared=shared_settings(config),
        master_seed=int(config.seeds.master), work_dir=execution.work_dir,
        collect_decoding=bool(decoding_outputs(config)), workflow=top,
        participants=participants)
    return group


def _plan_keys(wf: pe.Workflow) -> list[tuple[str, str]]:
    """(subject, task) of each participant sub-workflow of ``wf``."""
    keys = []
    for name in wf.list_node_names():
        head = name.split(".", 1)[0]
        if head.startswith("sub_") and head.endswith("_wf") and "_task_" in head:
            subject, task = head[len("sub_"):-len("_wf")].split("_task_", 1)
            keys.append((subject, task))
    return sorted(set(keys))


def _samples_workflow(config: Config, derivative_dirs: dict[str, Path],
                      links: dict[str, Path]) -> pe.Workflow:
    """The participant level's labels and samples nodes of the selected subjects."""
    from bids_affect.io.annotations import load_label_spec
    from bids_affect.io.layout import collect_runs, load_layout, select_subjects

    execution = config.execution
    layout = load_layout(execution.bids_dir, derivative_dirs, execution.bids_database_dir)
    subjects = select_subjects(layout, execution.participant_label)
    runs = collect_runs(layout, subjects, execution.session_label, execution.task_id,
                        execution.bids_filters, execution.space)
    spec = load_label_spec(config.labels.labels, hrf_lag=config.labels.hrf_lag,
                           min_volumes=config.labels.min_volumes)
    return init_bids_affect_wf(config, plan_participants(runs), spec.to_dict(), links,
                               samples_only=True)


def decoding_outputs(config: Config) -> list:
    """The participant-level decoding outputs of the selected subjects (may be none)."""
    return derivatives.find_outputs(config.execution.output_dir, "decoding") if not \
        config.execution.participant_label else [
            item for item in derivatives.find_outputs(config.execution.output_dir, "decoding")
            if item.entities["subject"] in config.execution.participant_label]


def group_analyses(config: Config) -> list[str]:
    """The analyses asked for that have a group part."""
    from bids_affect.analyses import ANALYSES

    return [name for name in config.analysis.analyses if ANALYSES[name].wire_group
            and (ANALYSES[name].group_when is None or ANALYSES[name].group_when(config))]


def analysis_options(config: Config) -> dict[str, Any]:
    """Each registered analysis's options section, and the group level's, by name."""
    return {name: section for name, section in config.sections().items()
            if name in analysis_registry() or name == "group"}


def shared_settings(config: Config):
    """The settings several analyses read (models, device, threads, ROI atlas)."""
    from bids_affect.workflows.participant import SharedSettings

    analysis = config.analysis
    return SharedSettings(models=tuple(analysis.models), device=analysis.device,
                          num_threads=config.nipype.omp_nthreads,
                          roi_atlas=analysis.roi_atlas)


def error_from_crash_files(crash_dir: Path) -> BidsAffectError | None:
    """The bids_affect error recorded in a nipype crash file of ``crash_dir``, if any."""
    for crash in sorted(Path(crash_dir).glob("crash-*.txt")):
        error = error_from_traceback(crash.read_text(errors="replace"))
        if error is not None:
            return error
    return None


def run_workflow(wf: pe.Workflow, config: Config) -> None:
    """Run ``wf`` with the configured nipype plugin; map node failures to exit codes."""
    execution, nipype_config = config.execution, config.nipype
    crash_dir = execution.work_dir / "crash" / execution.run_id
    wf.config["execution"].update({
        "crashdump_dir": str(crash_dir), "crashfile_format": "txt",
        "stop_on_first_crash": True, "remove_unnecessary_outputs": False,
        "hash_method": "timestamp", "check_version": False,
    })
    plugin, plugin_args = nipype_config.plugin, dict(nipype_config.plugin_args)
    n_procs = nipype_config.nprocs or os.cpu_count() or 1
    if plugin == "MultiProc":
        if n_procs == 1:
            plugin = "Linear"
        else:
            plugin_args.setdefault("n_procs", n_procs)
            plugin_args.setdefault("raise_insufficient", False)
            if nipype_config.mem_mb:
                plugin_args.setdefault("memory_gb", nipype_config.mem_mb / 1024)
    try:
        wf.run(plugin=plugin, plugin_args=plugin_args)
    except BidsAffectError:
        raise
    except Exception as err:
        error = error_from_crash_files(crash_dir) or error_from_traceback(str(err))
        if error is not None:
            raise error from err
        crashes = sorted(crash_dir.glob("crash-*"))
        raise RuntimeError(f"a workflow step failed; see {crashes[0] if crashes else crash_dir}"
                           ) from err
