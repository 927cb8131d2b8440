"""Top level of the BIDS-App: checks, dataset index, workflows, provenance.

:func:`run_bids_app` is called by the command line with a checked
:class:`~bids_affect.config.Config`. It is the only place below ``cli/`` that
reads the configuration; it passes explicit settings to the workflow factories.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections import defaultdict
from collections.abc import Mapping, Sequence
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


def methods_boilerplate(config: Config) -> str:
    """A short methods paragraph describing this run's settings."""
    analysis, labels, cleaning = config.analysis, config.labels, config.cleaning
    decoding = config.section("decoding")
    high_pass = f"{cleaning.high_pass:.5f} Hz" if cleaning.high_pass else "no"
    return (
        f"Analyses were performed with bids_affect {__version__}. Each volume was labelled "
        f"with the emotion annotation active at its acquisition time minus a haemodynamic lag "
        f"(label spec '{labels.labels}'); unlabelled or tied volumes were excluded. BOLD runs "
        f"were masked, linearly detrended={cleaning.detrend}, high-pass filtered ({high_pass}), "
        f"cleaned of confounds ('{cleaning.confounds}') and z-scored per run with nilearn. "
        f"Decoders ({', '.join(analysis.models)}) were evaluated with {decoding.cv} "
        f"cross-validation (leave-one-run-out when several runs exist); significance was assessed with "
        f"{decoding.n_permutations} permutations that circularly shift each run's label sequence, "
        f"the chance level being the mean of that null distribution.")


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


def run_bids_app(config: Config) -> None:
    """Run the levels asked for in ``config`` (already checked by the parser).

    Every input is checked (index, selection, validation, label spec) before
    anything is written to ``output_dir``, so bad input leaves no trace there.
    """
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
    methods = methods_boilerplate(config)
    if execution.boilerplate_only:
        derivatives.init_derivatives(execution.output_dir, bids_dir, links, methods=methods)
        LOGGER.info("Methods boilerplate written to %s",
                    execution.output_dir / "logs" / "CITATION.md")
        return
    derivatives.check_writable_dir(execution.work_dir, "work directory")
    if "participant" in execution.analysis_level:
        wf, subjects = prepare_participant_level(config, derivative_dirs, links)
        derivatives.init_derivatives(execution.output_dir, bids_dir, links, methods=methods)
        for subject in subjects:
            log = derivatives.log_dir(execution.output_dir, subject, execution.run_id)
            derivatives.write_text(log / "bids_affect.toml", config.to_toml())
        run_workflow(wf, config)
    if "group" in execution.analysis_level:
        from bids_affect.steps.group import find_decoding_outputs

        # 66 before any write
        find_decoding_outputs(execution.output_dir, execution.participant_label)
        if "participant" not in execution.analysis_level:  # else the participant level just did
            derivatives.init_derivatives(execution.output_dir, bids_dir, links, methods=methods)
        derivatives.write_text(derivatives.log_dir(execution.output_dir, None, execution.run_id)
                               / "bids_affect.toml", config.to_toml())
        run_workflow(init_group_wf_from_config(config, links), config)
    if execution.clean_workdir:
        clean_work_dir(execution.work_dir)
    print(f"bids_affect: outputs in {execution.output_dir}")


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
                        label_spec: dict[str, Any], links: dict[str, Path]) -> pe.Workflow:
    """The participant-level workflow: one sub-workflow per subject and task."""
    import dataclasses

    from bids_affect.workflows.participant import SharedSettings, init_participant_wf

    analysis = config.analysis
    wf = pe.Workflow(name=workflow_name(), base_dir=str(config.execution.work_dir))
    shared = SharedSettings(models=tuple(analysis.models), device=analysis.device,
                            num_threads=config.nipype.omp_nthreads,
                            roi_atlas=analysis.roi_atlas)
    options = {name: section for name, section in config.sections().items()
               if name in analysis_registry()}
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
            provenance=provenance, n_jobs=n_jobs)])
    return wf


def analysis_registry() -> dict[str, Any]:
    """The registered analyses (:data:`bids_affect.analyses.ANALYSES`)."""
    from bids_affect.analyses import ANALYSES

    return ANALYSES


def init_group_wf_from_config(config: Config, links: dict[str, Path]) -> pe.Workflow:
    """The group-level workflow with this run's settings."""
    from bids_affect.workflows.group import init_group_wf

    wf = pe.Workflow(name=f"{workflow_name()}_group", base_dir=str(config.execution.work_dir))
    wf.add_nodes([init_group_wf(output_dir=config.execution.output_dir,
                                participant_label=config.execution.participant_label,
                                provenance=_provenance(config, links))])
    return wf


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
