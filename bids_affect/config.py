"""One configuration object for a run: defaults < ``--config-file`` TOML < flags.

The configuration has sections, one dataclass each: the fixed ones below
(``execution``, ``nipype``, ``seeds``, ``labels``, ``cleaning``, ``analysis``)
and one per registered analysis that has options (``[decoding]``,
``[occlusion]``, ``[rsa]``...; see :mod:`bids_affect.analyses`). Every field is
declared with :func:`option`: its default, its help text, its flag and its
converter live in one place, and the command line (:mod:`bids_affect.cli.parser`),
``--help``, the TOML keys and the saved run configuration are generated from
them. Only :mod:`bids_affect.cli` and the top workflow factories read the
configuration; library code takes explicit arguments. Each run saves its
configuration as TOML, so a run can be repeated exactly with ``--config-file``.

Examples
--------
>>> cfg = Config.from_dict({"labels": {"hrf_lag": 5.0}})
>>> cfg.labels.hrf_lag
5.0
>>> cfg.section("decoding").cv_folds
5
>>> Config.from_dict({"labels": {"hrf_lagg": 5.0}})
Traceback (most recent call last):
...
bids_affect.exceptions.UsageError: config key 'labels.hrf_lagg' is unknown; fix: use one of ...
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import tomllib
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tomli_w

from bids_affect._utils import converters
from bids_affect.exceptions import UsageError

#: Marks a field's metadata as an option of the command line.
_NO_DEFAULT = dataclasses.MISSING


def option(default: Any = _NO_DEFAULT, *, help: str | None = None,
           flags: Sequence[str] | None = None, type: Callable[[str], Any] | None = None,
           choices: Sequence[str] | Callable[[], Sequence[str]] | None = None,
           metavar: str | None = None, nargs: str | None = None, action: str | None = None,
           group: str | None = None, parameters: Sequence[str] = (),
           default_factory: Callable[[], Any] | Any = _NO_DEFAULT,
           default_text: str | None = None, open_choices: bool = False) -> Any:
    """A configuration field that is also a command-line option.

    Parameters
    ----------
    default, default_factory
        As :func:`dataclasses.field`.
    help : str, optional
        The option's help; ``(default: ...)`` is appended from the default
        (or ``default_text``). Without ``help`` the field is a TOML key only.
    flags : sequence of str, optional
        Its flags; default ``--field-name``.
    type : callable, optional
        Converter of the flag's text (and of a TOML string), e.g.
        :func:`bids_affect._utils.converters.positive_int`.
    choices : sequence or callable, optional
        Allowed values, or a function returning them (registries); listed in
        the help, and checked by argparse for single values.
    metavar, nargs, action : str, optional
        As :meth:`argparse.ArgumentParser.add_argument`.
    group : str, optional
        Help group (default: the section's title).
    parameters : sequence of str
        Library parameter names this option sets (e.g. ``n_splits`` for
        ``--cv-folds``): library errors naming them are reported with the flag.
    default_text : str, optional
        How the help states the default, when its value does not say it well.
    open_choices : bool
        The choices are the named ones, but other values (a file) are valid too:
        list them in the help, let a later check decide.
    """
    metadata = {"help": help, "flags": tuple(flags) if flags else None, "type": type,
                "choices": choices, "metavar": metavar, "nargs": nargs, "action": action,
                "group": group, "parameters": tuple(parameters),
                "default_text": default_text, "open_choices": open_choices}
    if default_factory is not _NO_DEFAULT:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def section(title: str, name: str):
    """Class decorator: a dataclass of options that is config section ``name``."""
    def decorate(cls):
        cls = dataclass(cls)
        cls.section_title = title
        cls.section_name = name
        return cls
    return decorate


def option_fields(section_class: type) -> Iterator[dataclasses.Field]:
    """The fields of a section that have a command-line flag."""
    for spec in dataclasses.fields(section_class):
        if spec.metadata.get("help"):
            yield spec


def flags_of(section_class: type, spec: dataclasses.Field) -> tuple[str, ...]:
    """The flags of a field (``--field-name`` unless declared)."""
    return spec.metadata.get("flags") or ("--" + spec.name.replace("_", "-"),)


def choices_of(spec: dataclasses.Field) -> list[str] | None:
    """The allowed values of a field, resolving registry functions."""
    choices = spec.metadata.get("choices")
    if choices is None:
        return None
    return list(choices() if callable(choices) else choices)


def default_of(spec: dataclasses.Field) -> Any:
    """A field's default value."""
    if spec.default_factory is not dataclasses.MISSING:
        return spec.default_factory()
    return spec.default


# --------------------------------------------------------------------------- sections

_DATA = "Selecting data (BIDS filters)"
_PERFORMANCE = "Performance and work directory"
_REPRODUCIBILITY = "Reproducibility and logging"


def _confound_strategies() -> list[str]:
    from bids_affect.bold import CONFOUND_STRATEGIES

    return list(CONFOUND_STRATEGIES)


def _label_presets() -> list[str]:
    from bids_affect.io.annotations import list_presets

    return list(list_presets())


def _default_high_pass() -> float:
    from bids_affect.bold import DEFAULT_HIGH_PASS

    return DEFAULT_HIGH_PASS


@section("Selecting data (BIDS filters)", "execution")
class ExecutionConfig:
    """Where data come from and go to, and which of them are processed."""

    bids_dir: Path | None = None
    output_dir: Path | None = None
    analysis_level: list[str] = field(default_factory=lambda: ["participant"])
    work_dir: Path = option(
        Path("work"), flags=("-w", "--work-dir", "--work_dir"), type=Path, metavar="DIR",
        group=_PERFORMANCE, default_text="./work",
        help="work directory: cached intermediate results; a rerun resumes from it")
    participant_label: list[str] | None = option(
        None, flags=("--participant-label", "--participant_label"), nargs="+",
        metavar="LABEL", default_text="all",
        help="participants to process (with or without 'sub-')")
    session_label: list[str] | None = option(
        None, flags=("--session-label", "--session_label"), nargs="+", metavar="LABEL",
        default_text="all", help="sessions to process")
    task_id: list[str] | None = option(
        None, flags=("-t", "--task-id", "--task_id"), nargs="+", metavar="TASK",
        default_text="all", help="tasks to process")
    bids_filters: dict[str, Any] | None = None
    derivatives: dict[str, Path] = option(
        default_factory=dict, flags=("-d", "--derivatives"), nargs="+", action="extend",
        type=converters.name_path, metavar="NAME=PATH",
        default_text="fMRIPrep outputs found in bids_dir/derivatives/",
        help="fMRIPrep derivatives to use")
    bids_database_dir: Path | None = option(
        None, type=Path, metavar="DIR", help="reuse (or create) a pybids database here")
    skip_bids_validation: bool = option(
        False, flags=("--skip-bids-validation", "--skip_bids_validation"),
        action="store_true", help="do not run the bids-validator on the input")
    clean_workdir: bool = option(
        False, action="store_true", group=_PERFORMANCE,
        help="after a successful run, remove this version's workflow folders from the work "
             "directory")
    reports_only: bool = option(
        False, action="store_true", group=_REPRODUCIBILITY,
        help="only (re)write the HTML reports (sub-X.html, group.html) from the outputs "
             "already in output_dir: nothing is recomputed")
    boilerplate_only: bool = option(
        False, flags=("--boilerplate-only", "--boilerplate_only"), action="store_true",
        group=_REPRODUCIBILITY, help="only write the methods boilerplate (logs/CITATION.md)")
    space: str = option("MNI152NLin2009cAsym", metavar="SPACE",
                        help="fMRIPrep output space to analyse")
    verbose: int = option(0, flags=("-v", "--verbose"), action="count", group=_REPRODUCIBILITY,
                          default_text="warnings and progress",
                          help="more log output (-vv for debug)")
    debug: bool = option(False, action="store_true", group=_REPRODUCIBILITY,
                         help="print tracebacks on errors and keep nipype's full logs")
    run_id: str | None = None


@section(_PERFORMANCE, "nipype")
class NipypeConfig:
    """How nipype schedules the work."""

    nprocs: int | None = option(
        None, flags=("--nprocs", "--n-cpus", "--n_cpus", "--nthreads"),
        type=converters.positive_int, metavar="N", default_text="all CPUs",
        help="maximum parallel processes")
    omp_nthreads: int | None = option(
        None, type=converters.positive_int, metavar="N", default_text="1 per step",
        help="maximum threads per process")
    mem_mb: int | None = option(None, flags=("--mem-mb", "--mem_mb", "--mem"),
                                type=converters.mem_mb, metavar="MEM", default_text="no limit",
                                help="memory limit, e.g. 8G or 8000M")
    plugin: str = "MultiProc"
    plugin_args: dict[str, Any] = field(default_factory=dict)


@section(_REPRODUCIBILITY, "seeds")
class SeedConfig:
    """The master seed; every other seed derives from it (see :func:`derive_seed`)."""

    master: int | None = option(
        None, flags=("--random-seed", "--random_seed"), type=converters.non_negative_int,
        metavar="SEED", default_text="drawn and recorded",
        help="master seed (0 or more); every seed of the run derives from it")


@section("Labels and cleaning", "labels")
class LabelsConfig:
    """How annotations become labels per volume (see :mod:`bids_affect.io.annotations`)."""

    labels: str = option(
        "trial-type", metavar="PRESET|FILE", choices=_label_presets, open_choices=True,
        help="label spec: a preset or a JSON spec file")
    hrf_lag: float | None = option(
        None, type=float, metavar="SECONDS", default_text="the spec's, 4 in the presets",
        help="haemodynamic lag: volume i is labelled at t_i - lag")
    min_volumes: int | None = option(
        None, type=converters.non_negative_int, metavar="N",
        default_text="the spec's, 20 in the presets",
        help="classes with fewer labelled volumes per subject are left out of analyses")


@section("Labels and cleaning", "cleaning")
class CleaningConfig:
    """How BOLD runs are cleaned before any analysis (see :mod:`bids_affect.bold`)."""

    high_pass: float | None = option(
        default_factory=_default_high_pass, type=converters.high_pass, metavar="HZ",
        default_text="1/300: movie emotions recur every few minutes",
        help="high-pass cutoff in Hz, or 'none'")
    detrend: bool = True
    confounds: str = option("auto", metavar="STRATEGY", choices=_confound_strategies,
                            help="confound strategy from fMRIPrep's confounds")
    standardize: bool = True
    smoothing_fwhm: float | None = option(None, type=converters.positive_float, metavar="MM",
                                          default_text="none",
                                          help="spatial smoothing (FWHM) before masking")


def _analyses_help() -> str:
    from bids_affect.analyses import list_analyses

    known = "; ".join(f"{name}: {text}" for name, text in list_analyses().items())
    return ("comma-separated analyses, or 'none' (index, validate, label and write provenance "
            f"only). Known: {known}")


def _model_names() -> list[str]:
    from bids_affect.decoding import list_models

    return list_models()


def _devices() -> list[str]:
    from bids_affect.models.runtime import DEVICES

    return list(DEVICES)


def _roi_atlas_help() -> str:
    from bids_affect.atlases import roi_atlas_help

    return roi_atlas_help()


@section("Analyses", "analysis")
class AnalysisConfig:
    """Which analyses run, and the settings several analyses share."""

    analyses: list[str] = option(
        default_factory=lambda: ["decoding"], type=converters.comma_list, metavar="LIST",
        help=_analyses_help)
    models: list[str] = option(
        default_factory=lambda: ["ridge"], type=converters.comma_list, metavar="LIST",
        choices=_model_names, help="comma-separated decoders")
    device: str = option("auto", choices=_devices, help="where CNNs run")
    roi_atlas: str | None = option(None, metavar="ATLAS[:ROI,...]", default_text="none",
                                   help=_roi_atlas_help)


#: The fixed sections, in the order of the saved TOML.
FIXED_SECTIONS: dict[str, type] = {
    cls.section_name: cls for cls in (ExecutionConfig, NipypeConfig, SeedConfig,
                                      LabelsConfig, CleaningConfig, AnalysisConfig)
}


def config_sections() -> dict[str, type]:
    """Every section: the fixed ones, one per registered analysis with options, and
    the group level's (options its analyses share: alignment, group inference)."""
    from bids_affect.analyses import ANALYSES
    from bids_affect.steps.group import GroupOptions

    sections = dict(FIXED_SECTIONS)
    for analysis in ANALYSES.values():
        if analysis.options is not None:
            sections[analysis.name] = analysis.options
    sections[GroupOptions.section_name] = GroupOptions
    return sections


# --------------------------------------------------------------------------- the config


class Config:
    """All settings of one run, by section (``config.labels``, ``config.section("rsa")``)."""

    def __init__(self, **sections: Any):
        known = config_sections()
        unknown = set(sections) - set(known)
        if unknown:
            raise TypeError(f"unknown config sections {sorted(unknown)}")
        self._sections = {name: sections.get(name) or cls() for name, cls in known.items()}

    def __getattr__(self, name: str) -> Any:
        sections = self.__dict__.get("_sections", {})
        if name in sections:
            return sections[name]
        raise AttributeError(name)

    def section(self, name: str) -> Any:
        """The section ``name`` (an analysis's options dataclass, or a fixed section)."""
        return self._sections[name]

    def sections(self) -> dict[str, Any]:
        """Every section by name, in order."""
        return dict(self._sections)

    def copy(self, **sections: Any) -> Config:
        """A copy whose sections can change without touching this one; ``sections`` replace."""
        return Config(**{name: dataclasses.replace(sections.get(name, value))
                         for name, value in self._sections.items()})

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Config) and self._sections == other._sections

    def __repr__(self) -> str:
        return f"Config({', '.join(f'{k}={v!r}' for k, v in self._sections.items())})"

    @classmethod
    def from_dict(cls, settings: dict[str, dict[str, Any]], base: Config | None = None,
                  source: str = "config") -> Config:
        """Return a copy of ``base`` (defaults when None) updated with ``settings``.

        Unknown sections or keys, and values of the wrong type, raise
        :class:`UsageError` naming the key. A scalar or string value of an
        option with a converter goes through it, so a file accepts what the
        flag accepts (``mem_mb = "8G"``).
        """
        config = base.copy() if base is not None else cls()
        for section_name, values in settings.items():
            if section_name not in config._sections:
                raise UsageError(
                    f"{source} section '{section_name}' is unknown",
                    fix=f"use one of {', '.join(config._sections)}")
            if not isinstance(values, dict):
                raise UsageError(f"{source} section '{section_name}' must be a table of keys")
            section_value = dataclasses.replace(config._sections[section_name])
            known = {f.name: f for f in dataclasses.fields(section_value)}
            for key, value in values.items():
                name = f"{section_name}.{key}"
                if key not in known:
                    raise UsageError(
                        f"{source} key '{name}' is unknown",
                        fix=f"use one of {', '.join(known)}")
                value = _convert(known[key], value, f"{source} key '{name}'")
                setattr(section_value, key, _coerce(known[key], value, f"{source} key '{name}'"))
            config._sections[section_name] = section_value
        return config

    @classmethod
    def from_toml(cls, path: Path, base: Config | None = None) -> Config:
        """Read a TOML file of sections (``[labels]``, ``[decoding]``...) over ``base``.

        The run id is never read from a file: each run gets its own.
        """
        from bids_affect.io.files import read_settings_file

        settings = read_settings_file(path, "config file", tomllib.loads,
                                      (tomllib.TOMLDecodeError,), "TOML")
        if isinstance(settings.get("execution"), dict):
            settings["execution"].pop("run_id", None)
        return cls.from_dict(settings, base=base, source=f"config file {path}:")

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain, TOML-ready dictionary (paths as strings, unset values left out).

        BIDS filters are kept as JSON text: their ``null`` (entity absent) has no
        TOML form and would otherwise be lost.
        """
        out = {name: _plain(dataclasses.asdict(value)) for name, value in self._sections.items()}
        if self.execution.bids_filters is not None:
            out["execution"]["bids_filters"] = json.dumps(self.execution.bids_filters)
        return out

    def to_toml(self) -> str:
        """The configuration as TOML text, readable by :meth:`from_toml`."""
        return tomli_w.dumps(self.to_dict())


def _convert(spec: dataclasses.Field, value: Any, where: str) -> Any:
    """Pass a file's scalar value through the option's converter, as its flag would."""
    convert = spec.metadata.get("type")
    if convert is None or convert in (Path, str) or isinstance(value, bool):
        return value
    numeric = str(spec.type).removesuffix(" | None") in ("int", "float")
    if isinstance(value, str) or numeric and isinstance(value, int | float):
        try:
            return convert(str(value))
        except (ValueError, TypeError, argparse.ArgumentTypeError) as err:
            raise UsageError(f"{where}: {err}",
                             fix="give a value the matching flag accepts") from err
    return value


_SCALARS: dict[str, tuple[type, ...]] = {"bool": (bool,), "int": (int,),
                                         "float": (int, float), "str": (str,)}


def _coerce(spec: dataclasses.Field, value: Any, where: str) -> Any:
    """Check ``value`` against the field's type; turn TOML forms into it (paths, lists)."""
    type_text = str(spec.type)
    optional = type_text.endswith(" | None")
    base = type_text.removesuffix(" | None")

    def wrong(expected: str) -> UsageError:
        return UsageError(f"{where} must be {expected}, got {value!r}",
                          fix="correct the value (see bids_affect --help)")

    if value is None:
        if optional:
            return None
        raise wrong(f"a {base} value")
    if base in _SCALARS:
        if isinstance(value, bool) != (base == "bool") or not isinstance(value, _SCALARS[base]):
            raise wrong(f"a {base}")
        if base == "float" and not math.isfinite(value):
            raise wrong("a finite number")
        return float(value) if base == "float" else value
    if base == "Path":
        if not isinstance(value, str | Path):
            raise wrong("a path")
        return Path(value)
    if base == "list[str]":
        items = re.split(r"[,\s]+", value.strip()) if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
            raise wrong("a list of strings")
        return [item for item in items if item]
    if base == "dict[str, Path]":
        if isinstance(value, list) and all(isinstance(v, tuple) for v in value):
            value = dict(value)  # NAME=PATH pairs of a flag
        if not isinstance(value, dict) or not all(isinstance(v, str | Path)
                                                  for v in value.values()):
            raise wrong("a table of NAME = PATH")
        return {str(k): Path(v) for k, v in value.items()}
    if base.startswith("dict"):
        if isinstance(value, str):  # BIDS filters as saved by to_dict
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise wrong("a table (or its JSON text)") from None
        if not isinstance(value, dict):
            raise wrong("a table")
        return value
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def parameter_flags() -> dict[str, str]:
    """Library parameter names (and field names) -> the flag that sets them.

    Library errors name parameters (``n_splits: must be ...``); the command
    line reports them with the flag (``--cv-folds: must be ...``).
    """
    table: dict[str, str] = {}
    for section_class in config_sections().values():
        for spec in option_fields(section_class):
            flag = next(f for f in flags_of(section_class, spec) if f.startswith("--"))
            for name in (spec.name, *spec.metadata.get("parameters", ())):
                table.setdefault(name, flag)
    return table


def draw_seed(rng: np.random.Generator | None = None) -> int:
    """Draw a master seed (when the user gave none) in ``[0, 2**31)``."""
    rng = rng if rng is not None else np.random.default_rng()
    return int(rng.integers(0, 2**31 - 1))


def derive_seed(master: int, *keys: str | int) -> int:
    """Derive an integer seed for one piece of work from the master seed.

    The same master and keys always give the same seed; different keys give
    independent streams (numpy's ``SeedSequence`` spawn keys).

    Examples
    --------
    >>> derive_seed(42, "sub-01", "ridge") == derive_seed(42, "sub-01", "ridge")
    True
    >>> derive_seed(42, "sub-01", "ridge") == derive_seed(42, "sub-02", "ridge")
    False
    """
    spawn_key = tuple(zlib.crc32(str(key).encode()) for key in keys)
    sequence = np.random.SeedSequence(entropy=int(master), spawn_key=spawn_key)
    return int(sequence.generate_state(1, dtype=np.uint32)[0] >> 1)


__all__ = ["FIXED_SECTIONS", "AnalysisConfig", "CleaningConfig", "Config", "ExecutionConfig",
           "LabelsConfig", "NipypeConfig", "SeedConfig", "choices_of",
           "config_sections", "default_of", "derive_seed", "draw_seed", "flags_of", "option",
           "option_fields", "parameter_flags", "section"]
