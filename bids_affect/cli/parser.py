"""Command-line parser of the BIDS-App.

``_build_parser()`` only builds the parser; :func:`parse_args` parses, applies
the precedence defaults < ``--config-file`` < flags, runs the cross-option
checks and returns one :class:`~bids_affect.config.Config`. Every option's
``dest`` is ``"section.key"`` of the config, so a flag and a TOML key are the
same setting by construction.
"""

from __future__ import annotations

import argparse
import json
import re
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from bids_affect.__about__ import __version__
from bids_affect.config import AnalysisConfig, Config, draw_seed
from bids_affect.exceptions import BidsAffectError, UnknownAnalysisLevel, UsageError

ANALYSIS_LEVELS = ("participant", "group")
NIPYPE_PLUGINS = ("MultiProc", "Linear", "SLURM", "SLURMGraph", "LegacyMultiProc")


class _Parser(argparse.ArgumentParser):
    """argparse that raises :class:`UsageError` (exit 64) instead of exiting with 2."""

    def error(self, message: str):
        raise UsageError(message, fix=f"see '{self.prog} --help'")


def _comma_list(text: str) -> list[str]:
    """``"a,b c"`` -> ``["a", "b", "c"]`` (comma or space separated)."""
    return [item for item in re.split(r"[,\s]+", text.strip()) if item]


def _mem_mb(text: str) -> int:
    """Memory in MB from ``8000``, ``8000M``, ``8G``, ``8GB``, ``1.5T``."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)B?\s*", text.upper())
    if not match:
        raise argparse.ArgumentTypeError(f"cannot read memory {text!r}; use e.g. 8G or 8000M")
    factor = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024**2}[match.group(2)]
    return max(1, round(float(match.group(1)) * factor))


def _name_path(text: str) -> tuple[str, Path]:
    """``NAME=PATH`` (or a bare PATH, named after its folder)."""
    if "=" in text:
        name, path = text.split("=", 1)
    else:
        name, path = Path(text).name, text
    if not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    return name, Path(path)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _high_pass(text: str) -> float | None:
    if text.lower() in ("none", "off", "0"):
        return None
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be a positive frequency in Hz, or 'none'")
    return value


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def _build_parser() -> argparse.ArgumentParser:
    """Build the parser (no parsing, no checks)."""
    from bids_affect.analyses import list_analyses
    from bids_affect.atlases import roi_atlas_help
    from bids_affect.decoding import list_models
    from bids_affect.io.annotations import list_presets
    from bids_affect.rsa import DISTANCES

    parser = _Parser(
        prog="bids_affect",
        description="bids_affect: emotion decoding, interpretation and encoding models of "
                    "naturalistic fMRI (a BIDS-App).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("bids_dir", type=Path, help="root folder of a BIDS dataset")
    parser.add_argument("output_dir", type=Path,
                        help="folder of the outputs (a BIDS derivatives dataset); may be "
                             "bids_dir/derivatives/<name>")
    parser.add_argument("analysis_level", nargs="+", metavar="{participant,group}",
                        help="processing stage(s): participant, group, or both")
    parser.add_argument("--version", action="version", version=f"bids_affect {__version__}")

    g = parser.add_argument_group("Selecting data (BIDS filters)")
    g.add_argument("--participant-label", "--participant_label", nargs="+",
                   dest="execution.participant_label", metavar="LABEL",
                   help="participants to process (with or without 'sub-'); default: all")
    g.add_argument("--session-label", "--session_label", nargs="+",
                   dest="execution.session_label", metavar="LABEL",
                   help="sessions to process; default: all")
    g.add_argument("-t", "--task-id", "--task_id", nargs="+", dest="execution.task_id",
                   metavar="TASK", help="tasks to process; default: all")
    g.add_argument("--bids-filter-file", "--bids_filter_file", type=Path,
                   dest="execution.bids_filter_file", metavar="FILE",
                   help='JSON of pybids queries, e.g. {"bold": {"session": null, "run": "*"}} '
                        '(null: entity absent, "*": any value)')
    g.add_argument("-d", "--derivatives", nargs="+", type=_name_path,
                   dest="execution.derivatives", metavar="NAME=PATH",
                   help="fMRIPrep derivatives to use (default: fMRIPrep outputs found in "
                        "bids_dir/derivatives/)")
    g.add_argument("--bids-database-dir", type=Path, dest="execution.bids_database_dir",
                   metavar="DIR", help="reuse (or create) a pybids database here")
    g.add_argument("--skip-bids-validation", "--skip_bids_validation", action="store_true",
                   dest="execution.skip_bids_validation",
                   help="do not run the bids-validator on the input")
    g.add_argument("--space", dest="execution.space", metavar="SPACE",
                   help="fMRIPrep output space to analyse (default MNI152NLin2009cAsym)")

    g = parser.add_argument_group("Performance and work directory")
    g.add_argument("-w", "--work-dir", "--work_dir", type=Path, dest="execution.work_dir",
                   metavar="DIR", help="work directory: cached intermediate results; a rerun "
                                       "resumes from it (default ./work)")
    g.add_argument("--clean-workdir", action="store_true", dest="execution.clean_workdir",
                   help="delete the work directory after a successful run")
    g.add_argument("--nprocs", "--n-cpus", "--n_cpus", "--nthreads", type=_positive_int,
                   dest="nipype.nprocs", metavar="N", help="maximum parallel processes")
    g.add_argument("--omp-nthreads", type=_positive_int, dest="nipype.omp_nthreads",
                   metavar="N", help="maximum threads per process")
    g.add_argument("--mem-mb", "--mem_mb", "--mem", type=_mem_mb, dest="nipype.mem_mb",
                   metavar="MEM", help="memory limit, e.g. 8G or 8000M")
    g.add_argument("--use-plugin", "--use_plugin", type=Path, dest="nipype.use_plugin",
                   metavar="FILE", help="nipype plugin YAML: {plugin: MultiProc|Linear|SLURM, "
                                        "plugin_args: {...}}")

    g = parser.add_argument_group("Reproducibility and logging")
    g.add_argument("--random-seed", "--random_seed", type=int, dest="seeds.master",
                   metavar="SEED", help="master seed; drawn and recorded when not given")
    g.add_argument("--config-file", "--config_file", type=Path, dest="config_file",
                   metavar="FILE", help="TOML settings (sections as in the saved "
                                        "bids_affect.toml); flags override them")
    g.add_argument("--reports-only", action="store_true", dest="execution.reports_only",
                   help="only (re)write reports (arrives with the reports release)")
    g.add_argument("--boilerplate-only", "--boilerplate_only", action="store_true",
                   dest="execution.boilerplate_only",
                   help="only write the methods boilerplate (logs/CITATION.md)")
    g.add_argument("-v", "--verbose", action="count", dest="execution.verbose",
                   help="more log output (-vv for debug)")
    g.add_argument("--debug", action="store_true", dest="execution.debug",
                   help="print tracebacks on errors and keep nipype's full logs")

    g = parser.add_argument_group("Labels and cleaning")
    presets = ", ".join(list_presets())
    g.add_argument("--labels", dest="labels.labels", metavar="PRESET|FILE",
                   help=f"label spec: a preset ({presets}) or a JSON spec file")
    g.add_argument("--hrf-lag", type=float, dest="labels.hrf_lag", metavar="SECONDS",
                   help="haemodynamic lag: volume i is labelled at t_i - lag (spec default 4)")
    g.add_argument("--min-volumes", type=_non_negative_int, dest="labels.min_volumes",
                   metavar="N", help="classes with fewer labelled volumes per subject are "
                                     "left out of analyses (spec default 20)")
    g.add_argument("--high-pass", type=_high_pass, dest="cleaning.high_pass", metavar="HZ",
                   help="high-pass cutoff in Hz, or 'none' (default 1/300: movie emotions "
                        "recur every few minutes)")
    g.add_argument("--confounds", dest="cleaning.confounds", metavar="STRATEGY",
                   help="confound strategy from fMRIPrep's confounds (none, motion, simple, "
                        "scrubbing, compcor)")
    g.add_argument("--smoothing-fwhm", type=float, dest="cleaning.smoothing_fwhm",
                   metavar="MM", help="spatial smoothing before masking (default none)")

    g = parser.add_argument_group("Analyses")
    g.add_argument("--analyses", type=_comma_list, dest="analysis.analyses", metavar="LIST",
                   help="comma-separated analyses, or 'none' (index, validate, label and "
                        "write provenance only). Known: " + "; ".join(
                            f"{name}: {text}" for name, text in list_analyses().items()))
    g.add_argument("--models", type=_comma_list, dest="analysis.models", metavar="LIST",
                   help="comma-separated decoders. Known: " + ", ".join(list_models()))
    g.add_argument("--cv", choices=("auto", "loro", "blocked"), dest="analysis.cv",
                   help="cross-validation: leave-one-run-out (auto with 2+ runs) or blocked "
                        "k-fold with a gap (auto with one run)")
    g.add_argument("--cv-folds", type=_positive_int, dest="analysis.cv_folds", metavar="K",
                   help="folds of blocked k-fold (default 5)")
    g.add_argument("--cv-gap", type=float, dest="analysis.cv_gap", metavar="SECONDS",
                   help="gap between test and training blocks in blocked k-fold (default 30)")
    g.add_argument("--n-permutations", type=_non_negative_int, dest="analysis.n_permutations",
                   metavar="N", help="permutations of the null for linear decoders "
                                     "(default 1000)")
    g.add_argument("--n-permutations-cnn", type=_non_negative_int,
                   dest="analysis.n_permutations_cnn", metavar="N",
                   help="permutations of the null for CNN decoders (each retrains; default 20)")
    g.add_argument("--epochs", type=_positive_int, dest="analysis.epochs", metavar="N",
                   help="CNN training epochs (default 30)")
    g.add_argument("--batch-size", type=_positive_int, dest="analysis.batch_size",
                   metavar="N", help="CNN mini-batch size (default 16)")
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), dest="analysis.device",
                   help="where CNNs run (default auto)")
    g.add_argument("--occlusion-window", type=_positive_int,
                   dest="analysis.occlusion_window", metavar="VOXELS",
                   help="occlusion cube size (default 2)")
    g.add_argument("--occlusion-stride", type=_positive_int,
                   dest="analysis.occlusion_stride", metavar="VOXELS",
                   help="occlusion stride (default 2)")
    g.add_argument("--occlusion-threshold", type=_probability,
                   dest="analysis.occlusion_threshold", metavar="P",
                   help="occlude held-out samples classified correctly with p >= P "
                        "(default .75)")
    g.add_argument("--occlusion-samples", type=_positive_int,
                   dest="analysis.occlusion_samples", metavar="N",
                   help="samples per class to occlude (default 10)")
    g.add_argument("--occlusion-precision", choices=("float32", "bfloat16"),
                   dest="analysis.occlusion_precision",
                   help="occlusion arithmetic: float32 (default), or bfloat16, which is "
                        "approximate (the sidecar reports its error relative to the map), "
                        "measured slower than float32 on CPUs and may help on GPUs")
    g.add_argument("--top-k", type=_positive_int, dest="analysis.top_k", metavar="K",
                   help="top voxels per occlusion map (default 500)")
    g.add_argument("--rdm-distance", choices=DISTANCES,
                   dest="analysis.rdm_distance", help="RDM distance (default correlation)")
    g.add_argument("--rsa-methods", type=_comma_list, dest="analysis.rsa_methods",
                   metavar="LIST", help="RDM comparisons: pearson, spearman, kendall_tau_a "
                                        "(default spearman)")
    g.add_argument("--rsa-reference", nargs="+", type=_name_path,
                   dest="analysis.rsa_reference", metavar="NAME=PATH",
                   help="reference RDMs (TSV with a 'class' column and one column per "
                        "class, 3 or more) compared with the brain and model RDMs on the "
                        "classes they share; NAME must differ from the brain, ROI and model "
                        "RDMs' names")
    g.add_argument("--rsa-permutations", type=_non_negative_int,
                   dest="analysis.rsa_permutations", metavar="N",
                   help="Mantel permutations when exact enumeration is impossible "
                        "(more than 8 classes; default 10000)")
    g.add_argument("--roi-atlas", dest="analysis.roi_atlas", metavar="ATLAS[:ROI,...]",
                   help=roi_atlas_help())
    return parser


def _nested(flags: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{"labels.hrf_lag": 5}`` -> ``{"labels": {"hrf_lag": 5}}``."""
    nested: dict[str, dict[str, Any]] = {}
    for dest, value in flags.items():
        section, key = dest.split(".", 1)
        nested.setdefault(section, {})[key] = value
    return nested


def parse_args(argv: list[str] | None = None) -> Config:
    """Parse ``argv`` into a checked :class:`Config` (raises exit-coded errors)."""
    parser = _build_parser()
    namespace = vars(parser.parse_args(argv))
    config_file = namespace.pop("config_file", None)
    filter_file = namespace.pop("execution.bids_filter_file", None)
    plugin_file = namespace.pop("nipype.use_plugin", None)
    for key in ("execution.derivatives", "analysis.rsa_reference"):
        if key in namespace:
            namespace[key] = dict(namespace[key])
    positional = {"execution.bids_dir": namespace.pop("bids_dir"),
                  "execution.output_dir": namespace.pop("output_dir"),
                  "execution.analysis_level": namespace.pop("analysis_level")}

    converters = {action.dest: action.type for action in parser._actions
                  if callable(action.type) and action.type not in (Path, str)}
    config = Config.from_toml(config_file, converters=converters) if config_file else Config()
    config = Config.from_dict(_nested({**namespace, **positional}), base=config,
                              source="command line")
    if filter_file is not None:
        from bids_affect.io.layout import load_filter_file

        config.execution.bids_filters = load_filter_file(filter_file)
    if plugin_file is not None:
        config.nipype.plugin, config.nipype.plugin_args = _read_plugin_file(plugin_file)
    check_config(config)
    if config.seeds.master is None:
        config.seeds.master = draw_seed()
    if config.execution.run_id is None:
        config.execution.run_id = (f"{datetime.now():%Y%m%d-%H%M%S}_"
                                   f"{uuid.uuid4().hex[:8]}")
    return config


def _read_plugin_file(path: Path) -> tuple[str, dict[str, Any]]:
    from bids_affect.io.files import read_settings_file

    content = read_settings_file(path, "plugin file", yaml.safe_load, (yaml.YAMLError,),
                                 "YAML") or {}
    if not isinstance(content, dict) or "plugin" not in content:
        raise UsageError("plugin file must hold 'plugin' (and optionally 'plugin_args')",
                         path=path, fix="write e.g. 'plugin: MultiProc' and "
                                        "'plugin_args: {n_procs: 4}'")
    return str(content["plugin"]), dict(content.get("plugin_args") or {})


def _inside(path: Path, parent: Path) -> bool:
    return path == parent or parent in path.parents


def _as_usage_error(option: str, err: BidsAffectError) -> UsageError:
    """An error found while checking an option's value, as exit 64 naming the option.

    Errors about files (data, missing) keep the file; usage errors name the option only.
    """
    path = None if isinstance(err, UsageError) else err.path
    return UsageError(f"{option}: {err.problem}", path=path, fix=err.fix)


def _check_roi_atlas(an: AnalysisConfig, space: str) -> list[str]:
    """Check ``--roi-atlas`` (atlas, ROIs, the space it needs); return its ROI names."""
    from bids_affect.atlases import is_standard_space, parse_roi_atlas

    if an.roi_atlas is None:
        return []
    option = f"--roi-atlas {an.roi_atlas}"
    if "rsa" not in an.analyses:
        raise UsageError(f"{option}: the ROIs serve per-region analyses (rsa), and none is "
                         "asked", fix="add rsa to --analyses, or leave --roi-atlas out")
    try:
        roi_atlas = parse_roi_atlas(an.roi_atlas)
    except BidsAffectError as err:
        raise _as_usage_error(option, err) from None
    if not roi_atlas.is_user_atlas and not is_standard_space(space):
        raise UsageError(f"{option}: the {roi_atlas.atlas} atlas is in MNI152 space, but "
                         f"--space is {space}",
                         fix="analyse outputs in an MNI152 space (--space "
                             "MNI152NLin2009cAsym), or give an atlas in the data's space as "
                             "a NIfTI dseg with a TSV of labels")
    return list(roi_atlas.rois)


def _check_rsa_references(an: AnalysisConfig, rois: list[str]) -> None:
    """Reference RDMs: valid files of 3+ classes, under names no other RDM writes."""
    from bids_affect.decoding import is_cnn
    from bids_affect.io.derivatives import desc_label
    from bids_affect.rsa import brain_rdm_name, model_rdm_name, read_rdm

    # Output names compare case-insensitively: they must differ on any file system.
    reserved = {brain_rdm_name().lower(): "the whole-mask brain RDM"}
    reserved.update({brain_rdm_name(roi).lower(): f"the brain RDM of ROI {roi}"
                     for roi in rois})
    reserved.update({model_rdm_name(model).lower(): f"the model RDM of {model}"
                     for model in an.models if is_cnn(model)})
    given: dict[str, str] = {}
    for name, path in an.rsa_reference.items():
        option = f"--rsa-reference {name}"
        try:
            label = desc_label(name)
            rdm = read_rdm(path)
        except BidsAffectError as err:
            raise _as_usage_error(option, err) from None
        if label.lower() in reserved:
            raise UsageError(f"{option}: desc-{label}_rdm.tsv is {reserved[label.lower()]}",
                             fix="give the reference another name")
        if label.lower() in given:
            raise UsageError(f"{option}: references {given[label.lower()]!r} and {name!r} "
                             f"would both write desc-{label}_rdm.tsv (names keep letters and "
                             "digits only)", fix="give each reference its own name")
        given[label.lower()] = name
        if len(rdm) < 3:
            raise UsageError(f"{option}: the RDM holds {len(rdm)} classes; comparing RDMs "
                             "needs 3 or more", path=path, fix="give an RDM of 3 or more "
                                                               "classes")


def check_config(config: Config) -> None:
    """Cross-option checks; raise exit-coded errors naming the option."""
    from bids_affect.analyses import check_analyses
    from bids_affect.decoding import check_models
    from bids_affect.io.annotations import load_label_spec
    from bids_affect.models.training import resolve_device

    ex = config.execution
    levels = [level.lower() for level in ex.analysis_level]
    unknown = [level for level in levels if level not in ANALYSIS_LEVELS]
    if unknown:
        raise UnknownAnalysisLevel(
            f"analysis level {', '.join(map(repr, unknown))} is unknown",
            fix="use participant, group, or both")
    ex.analysis_level = list(dict.fromkeys(levels))

    bids_dir = ex.bids_dir.expanduser().resolve()
    output_dir = ex.output_dir.expanduser().resolve()
    work_dir = ex.work_dir.expanduser().resolve()
    if _inside(output_dir, bids_dir) and output_dir.parent != bids_dir / "derivatives":
        raise UsageError("output_dir is bids_dir or inside it (only bids_dir/derivatives/"
                         "<name> is allowed there)", path=ex.output_dir,
                         fix="write outputs outside bids_dir, or to "
                             "bids_dir/derivatives/<name>")
    if _inside(work_dir, bids_dir):
        raise UsageError("the work directory is inside bids_dir", path=ex.work_dir,
                         fix="choose a work directory (-w) outside the input dataset")
    if _inside(work_dir, output_dir):
        raise UsageError("the work directory is inside output_dir", path=ex.work_dir,
                         fix="choose a work directory (-w) outside the outputs")
    ex.bids_dir, ex.output_dir, ex.work_dir = bids_dir, output_dir, work_dir
    if ex.bids_database_dir is not None:
        ex.bids_database_dir = ex.bids_database_dir.expanduser().resolve()
        if _inside(ex.bids_database_dir, bids_dir):
            raise UsageError("the BIDS database directory is inside bids_dir",
                             path=ex.bids_database_dir, fix="choose a folder outside bids_dir")
    ex.derivatives = {name: Path(path).expanduser().resolve()
                      for name, path in ex.derivatives.items()}
    if ex.participant_label:
        from bids_affect.io.layout import strip_subject_prefix

        ex.participant_label = strip_subject_prefix(ex.participant_label)
    if ex.reports_only:
        raise UsageError("--reports-only is not available yet: HTML reports arrive with the "
                         "reports release", fix="run without --reports-only")
    an = config.analysis
    an.analyses = check_analyses(an.analyses, an.models)
    an.models = check_models(an.models)
    resolve_device(an.device)
    load_label_spec(config.labels.labels, hrf_lag=config.labels.hrf_lag,
                    min_volumes=config.labels.min_volumes)
    from bids_affect.rsa import METHODS

    for method in an.rsa_methods:
        if method not in METHODS:
            raise UsageError(f"--rsa-methods: {method!r} is unknown",
                             fix=f"use one of {', '.join(METHODS)}")
    _check_rsa_references(an, _check_roi_atlas(an, ex.space))
    if config.nipype.plugin not in NIPYPE_PLUGINS:
        raise UsageError(f"nipype plugin {config.nipype.plugin!r} is not supported",
                         fix=f"use one of {', '.join(NIPYPE_PLUGINS)}")
    json.dumps(config.to_dict())  # every setting must be serialisable for the run log
