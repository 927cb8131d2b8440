"""Command-line parser of the BIDS-App.

``_build_parser()`` only builds the parser: the positional arguments and the
few flags that read files, then one flag per option of every configuration
section (:func:`bids_affect.config.config_sections`: the fixed sections and one
per registered analysis), with its help, choices and default generated from
the option's declaration. :func:`parse_args` parses, applies the precedence
defaults < ``--config-file`` < flags, runs the cross-option checks and returns
one :class:`~bids_affect.config.Config`. Every option's ``dest`` is
``"section.key"`` of the config, so a flag and a TOML key are the same setting
by construction.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from bids_affect.__about__ import __version__
from bids_affect.config import (
    Config,
    choices_of,
    config_sections,
    default_of,
    draw_seed,
    flags_of,
    option_fields,
)
from bids_affect.exceptions import BidsAffectError, UnknownAnalysisLevel, UsageError

ANALYSIS_LEVELS = ("participant", "group")
NIPYPE_PLUGINS = ("MultiProc", "Linear", "SLURM", "SLURMGraph", "LegacyMultiProc")

#: Help groups in the order ``--help`` shows them (others follow in section order).
_GROUP_ORDER = ("Selecting data (BIDS filters)", "Performance and work directory",
                "Reproducibility and logging", "Labels and cleaning", "Analyses")


class _ExecSpecAction(argparse.Action):
    """``--bids-exec-spec``: print the Boutiques descriptor and exit (as ``--version``)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS,
                 help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        from bids_affect.cli.descriptor import execution_spec

        sys.stdout.write(execution_spec())
        parser.exit()


class _Parser(argparse.ArgumentParser):
    """argparse that raises :class:`UsageError` (exit 64) instead of exiting with 2."""

    def error(self, message: str):
        raise UsageError(message, fix=f"see '{self.prog} --help'")


def _default_text(spec: dataclasses.Field) -> str | None:
    """How ``--help`` states a field's default."""
    text = spec.metadata.get("default_text")
    if text is not None:
        return text
    default = default_of(spec)
    if default is None or default is False or default == {} or default == []:
        return None
    if isinstance(default, list):
        return ",".join(map(str, default))
    return str(default)


def option_help(spec: dataclasses.Field) -> str:
    """The help of an option: its text, its choices and its default (all from the code)."""
    text = spec.metadata["help"]
    text = text() if callable(text) else text
    choices = choices_of(spec)
    if choices and spec.metadata.get("type") is not None:  # lists: argparse cannot check
        text = f"{text}. Known: {', '.join(choices)}"
    elif choices and not text.rstrip().endswith(")"):
        text = f"{text} ({', '.join(choices)})"
    default = _default_text(spec)
    return f"{text} (default: {default})" if default is not None else text


def _add_option(group: argparse._ArgumentGroup, section_name: str, section_class: type,
                spec: dataclasses.Field) -> None:
    meta = spec.metadata
    kwargs: dict[str, Any] = {"dest": f"{section_name}.{spec.name}",
                              "help": option_help(spec)}
    if meta.get("action"):
        kwargs["action"] = meta["action"]
    if meta.get("action") in (None, "extend", "append"):
        for key in ("type", "metavar", "nargs"):
            if meta.get(key) is not None:
                kwargs[key] = meta[key]
        if (meta.get("choices") is not None and meta.get("type") is None
                and not meta.get("nargs") and not meta.get("open_choices")):
            kwargs["choices"] = choices_of(spec)
    group.add_argument(*flags_of(section_class, spec), **kwargs)


def _build_parser() -> argparse.ArgumentParser:
    """Build the parser (no parsing, no checks)."""
    parser = _Parser(
        prog="bids_affect",
        description="bids_affect: emotion decoding, interpretation and encoding models of "
                    "naturalistic fMRI (a BIDS-App).",
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("bids_dir", type=Path, help="root folder of a BIDS dataset")
    parser.add_argument("output_dir", type=Path,
                        help="folder of the outputs (a BIDS derivatives dataset); may be "
                             "bids_dir/derivatives/<name>")
    parser.add_argument("analysis_level", nargs="+", metavar="{participant,group}",
                        help="processing stage(s): participant, group, or both")
    parser.add_argument("--version", action="version", version=f"bids_affect {__version__}")
    parser.add_argument("--bids-exec-spec", action=_ExecSpecAction, dest=argparse.SUPPRESS,
                        help="print the Boutiques descriptor (BIDS-Apps execution spec) and "
                             "exit")

    groups: dict[str, argparse._ArgumentGroup] = {
        title: parser.add_argument_group(title) for title in _GROUP_ORDER}
    groups[_GROUP_ORDER[0]].add_argument(
        "--bids-filter-file", "--bids_filter_file", type=Path, dest="bids_filter_file",
        metavar="FILE", help='JSON of pybids queries, e.g. {"bold": {"session": null, '
                             '"run": "*"}} (null: entity absent, "*": any value)')
    groups[_GROUP_ORDER[1]].add_argument(
        "--use-plugin", "--use_plugin", type=Path, dest="use_plugin", metavar="FILE",
        help="nipype plugin YAML: {plugin: MultiProc|Linear|SLURM, plugin_args: {...}}")
    groups[_GROUP_ORDER[2]].add_argument(
        "--config-file", "--config_file", type=Path, dest="config_file", metavar="FILE",
        help="TOML settings (sections as in the saved bids_affect.toml); flags override them")
    for section_name, section_class in config_sections().items():
        for spec in option_fields(section_class):
            title = spec.metadata.get("group") or section_class.section_title
            if title not in groups:
                groups[title] = parser.add_argument_group(title)
            _add_option(groups[title], section_name, section_class, spec)
    return parser


def _nested(flags: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{"labels.hrf_lag": 5}`` -> ``{"labels": {"hrf_lag": 5}}``."""
    nested: dict[str, dict[str, Any]] = {}
    for dest, value in flags.items():
        section_name, key = dest.split(".", 1)
        nested.setdefault(section_name, {})[key] = value
    return nested


def parse_args(argv: list[str] | None = None) -> Config:
    """Parse ``argv`` into a checked :class:`Config` (raises exit-coded errors)."""
    parser = _build_parser()
    namespace = vars(parser.parse_args(argv))
    config_file = namespace.pop("config_file", None)
    filter_file = namespace.pop("bids_filter_file", None)
    plugin_file = namespace.pop("use_plugin", None)
    positional = {"execution.bids_dir": namespace.pop("bids_dir"),
                  "execution.output_dir": namespace.pop("output_dir"),
                  "execution.analysis_level": namespace.pop("analysis_level")}

    config = Config.from_toml(config_file) if config_file else Config()
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


def _check_roi_atlas(config: Config) -> None:
    """Check ``--roi-atlas`` (atlas, ROIs, the space it needs)."""
    from bids_affect.atlases import is_standard_space, parse_roi_atlas

    analysis, space = config.analysis, config.execution.space
    if analysis.roi_atlas is None:
        return
    option = f"--roi-atlas {analysis.roi_atlas}"
    if not {"rsa", "encoding", "image-validation", "synthesis"} & set(analysis.analyses):
        raise UsageError(f"{option}: the ROIs serve per-region analyses (rsa, encoding and "
                         "what reads its models), and none is asked",
                         fix="add rsa or encoding to --analyses, or leave --roi-atlas out")
    try:
        roi_atlas = parse_roi_atlas(analysis.roi_atlas)
    except BidsAffectError as err:
        raise _as_usage_error(option, err) from None
    if not roi_atlas.is_user_atlas and not is_standard_space(space):
        raise UsageError(f"{option}: the {roi_atlas.atlas} atlas is in MNI152 space, but "
                         f"--space is {space}",
                         fix="analyse outputs in an MNI152 space (--space "
                             "MNI152NLin2009cAsym), or give an atlas in the data's space as "
                             "a NIfTI dseg with a TSV of labels")


def _check_locations(config: Config) -> None:
    """Resolve the folders; refuse outputs or work inside the input (exit 64)."""
    execution = config.execution
    bids_dir = execution.bids_dir.expanduser().resolve()
    output_dir = execution.output_dir.expanduser().resolve()
    work_dir = execution.work_dir.expanduser().resolve()
    if _inside(output_dir, bids_dir) and output_dir.parent != bids_dir / "derivatives":
        raise UsageError("output_dir is bids_dir or inside it (only bids_dir/derivatives/"
                         "<name> is allowed there)", path=execution.output_dir,
                         fix="write outputs outside bids_dir, or to "
                             "bids_dir/derivatives/<name>")
    if _inside(work_dir, bids_dir):
        raise UsageError("the work directory is inside bids_dir", path=execution.work_dir,
                         fix="choose a work directory (-w) outside the input dataset")
    if _inside(work_dir, output_dir):
        raise UsageError("the work directory is inside output_dir", path=execution.work_dir,
                         fix="choose a work directory (-w) outside the outputs")
    execution.bids_dir, execution.output_dir, execution.work_dir = bids_dir, output_dir, work_dir
    if execution.bids_database_dir is not None:
        execution.bids_database_dir = execution.bids_database_dir.expanduser().resolve()
        if _inside(execution.bids_database_dir, bids_dir):
            raise UsageError("the BIDS database directory is inside bids_dir",
                             path=execution.bids_database_dir,
                             fix="choose a folder outside bids_dir")
    execution.derivatives = {name: Path(path).expanduser().resolve()
                             for name, path in execution.derivatives.items()}


def _check_list_choices(config: Config) -> None:
    """Each item of a list option is one of its choices (argparse checks single values)."""
    for section_name, section_class in config_sections().items():
        for spec in option_fields(section_class):
            values = getattr(config.section(section_name), spec.name)
            choices = choices_of(spec)
            if choices is None or spec.metadata.get("open_choices") or \
                    not isinstance(values, list):
                continue
            for value in values:
                if value not in choices:
                    flag = flags_of(section_class, spec)[0]
                    raise UsageError(f"{flag}: {value!r} is unknown",
                                     fix=f"use one of {', '.join(choices)}")


def check_config(config: Config) -> None:
    """Cross-option checks; raise exit-coded errors naming the option."""
    from bids_affect.analyses import ANALYSES, check_analyses
    from bids_affect.bold import check_confound_strategy
    from bids_affect.decoding import check_models
    from bids_affect.io.annotations import load_label_spec
    from bids_affect.models.runtime import resolve_device

    execution = config.execution
    levels = [level.lower() for level in execution.analysis_level]
    unknown = [level for level in levels if level not in ANALYSIS_LEVELS]
    if unknown:
        raise UnknownAnalysisLevel(
            f"analysis level {', '.join(map(repr, unknown))} is unknown",
            fix="use participant, group, or both")
    execution.analysis_level = list(dict.fromkeys(levels))
    _check_locations(config)
    from bids_affect.io.layout import build_queries, check_selection_labels, strip_subject_prefix

    if execution.participant_label is not None:
        check_selection_labels(execution.participant_label, "participant_label")
        execution.participant_label = strip_subject_prefix(execution.participant_label)
    check_selection_labels(execution.session_label, "session_label")
    check_selection_labels(execution.task_id, "task_id")
    if execution.bids_filters is not None:  # from --config-file: checked as the file would be
        build_queries(execution.bids_filters)
    _check_list_choices(config)
    analysis = config.analysis
    analysis.analyses = check_analyses(analysis.analyses, analysis.models,
                                       execution.analysis_level)
    analysis.models = check_models(analysis.models)
    resolve_device(analysis.device)
    check_confound_strategy(config.cleaning.confounds)
    load_label_spec(config.labels.labels, hrf_lag=config.labels.hrf_lag,
                    min_volumes=config.labels.min_volumes)
    _check_roi_atlas(config)
    for name, registered in ANALYSES.items():
        if registered.check is not None:
            registered.check(config.section(name), config)
    from bids_affect.steps import group

    group.check_options(config.section(group.GroupOptions.section_name), config)
    if config.nipype.plugin not in NIPYPE_PLUGINS:
        raise UsageError(f"nipype plugin {config.nipype.plugin!r} is not supported",
                         fix=f"use one of {', '.join(NIPYPE_PLUGINS)}")
    json.dumps(config.to_dict())  # every setting must be serialisable for the run log
