"""One configuration object for a run: defaults < ``--config-file`` TOML < flags.

The configuration has sections (one dataclass each). Only :mod:`bids_affect.cli`
and the top workflow factories read it; library code takes explicit arguments.
Each run saves its configuration as TOML, so a run can be repeated exactly with
``--config-file``.

Examples
--------
>>> cfg = Config.from_dict({"labels": {"hrf_lag": 5.0}})
>>> cfg.labels.hrf_lag
5.0
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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tomli_w

from bids_affect.exceptions import UsageError


@dataclass
class ExecutionConfig:
    """Where data come from and go to, and which of them are processed."""

    bids_dir: Path | None = None
    output_dir: Path | None = None
    analysis_level: list[str] = field(default_factory=lambda: ["participant"])
    work_dir: Path = Path("work")
    participant_label: list[str] | None = None
    session_label: list[str] | None = None
    task_id: list[str] | None = None
    bids_filters: dict[str, Any] | None = None
    derivatives: dict[str, Path] = field(default_factory=dict)
    bids_database_dir: Path | None = None
    skip_bids_validation: bool = False
    clean_workdir: bool = False
    reports_only: bool = False
    boilerplate_only: bool = False
    space: str = "MNI152NLin2009cAsym"
    verbose: int = 0
    debug: bool = False
    run_id: str | None = None


@dataclass
class NipypeConfig:
    """How nipype schedules the work."""

    nprocs: int | None = None
    omp_nthreads: int | None = None
    mem_mb: int | None = None
    plugin: str = "MultiProc"
    plugin_args: dict[str, Any] = field(default_factory=dict)


@dataclass
class SeedConfig:
    """The master seed; every other seed derives from it (see :func:`derive_seed`)."""

    master: int | None = None


@dataclass
class LabelsConfig:
    """How annotations become labels per volume (see :mod:`bids_affect.io.annotations`)."""

    labels: str = "trial-type"
    hrf_lag: float | None = None
    min_volumes: int | None = None


@dataclass
class CleaningConfig:
    """How BOLD runs are cleaned before any analysis (see :mod:`bids_affect.bold`)."""

    high_pass: float | None = 1.0 / 300.0
    detrend: bool = True
    confounds: str = "motion"
    standardize: bool = True
    smoothing_fwhm: float | None = None


@dataclass
class AnalysisConfig:
    """Which analyses run and with which settings."""

    analyses: list[str] = field(default_factory=lambda: ["decoding"])
    models: list[str] = field(default_factory=lambda: ["ridge"])
    cv: str = "auto"
    cv_folds: int = 5
    cv_gap: float = 30.0
    n_permutations: int = 1000
    n_permutations_cnn: int = 20
    epochs: int = 30
    batch_size: int = 16
    device: str = "auto"
    occlusion_window: int = 2
    occlusion_stride: int = 2
    occlusion_threshold: float = 0.75
    occlusion_samples: int = 10
    occlusion_precision: str = "float32"
    top_k: int = 500
    rdm_distance: str = "correlation"
    rsa_methods: list[str] = field(default_factory=lambda: ["spearman"])
    rsa_reference: dict[str, Path] = field(default_factory=dict)
    rsa_permutations: int = 10000
    roi_atlas: str | None = None


_SECTIONS = {
    "execution": ExecutionConfig,
    "nipype": NipypeConfig,
    "seeds": SeedConfig,
    "labels": LabelsConfig,
    "cleaning": CleaningConfig,
    "analysis": AnalysisConfig,
}


@dataclass
class Config:
    """All settings of one run, by section."""

    execution: ExecutionConfig = field(default_factory=ExecutionConfig)
    nipype: NipypeConfig = field(default_factory=NipypeConfig)
    seeds: SeedConfig = field(default_factory=SeedConfig)
    labels: LabelsConfig = field(default_factory=LabelsConfig)
    cleaning: CleaningConfig = field(default_factory=CleaningConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)

    @classmethod
    def from_dict(cls, settings: dict[str, dict[str, Any]], base: Config | None = None,
                  source: str = "config",
                  converters: Mapping[str, Callable[[str], Any]] | None = None) -> Config:
        """Return a copy of ``base`` (defaults when None) updated with ``settings``.

        Unknown sections or keys, and values of the wrong type, raise
        :class:`UsageError` naming the key. ``converters`` maps ``"section.key"``
        to the command line's converter of that setting (``--mem-mb 8G``), applied
        to scalar values so that a file accepts what the flag accepts.
        """
        config = dataclasses.replace(base) if base is not None else cls()
        for section_name, values in settings.items():
            if section_name not in _SECTIONS:
                raise UsageError(
                    f"{source} section '{section_name}' is unknown",
                    fix=f"use one of {', '.join(_SECTIONS)}")
            if not isinstance(values, dict):
                raise UsageError(f"{source} section '{section_name}' must be a table of keys")
            section = dataclasses.replace(getattr(config, section_name))
            known = {f.name: f for f in dataclasses.fields(section)}
            for key, value in values.items():
                name = f"{section_name}.{key}"
                if key not in known:
                    raise UsageError(
                        f"{source} key '{name}' is unknown",
                        fix=f"use one of {', '.join(known)}")
                convert = (converters or {}).get(name)
                numeric = str(known[key].type).removesuffix(" | None") in ("int", "float")
                if convert is not None and not isinstance(value, bool) and (
                        isinstance(value, str) or numeric and isinstance(value, (int, float))):
                    try:
                        value = convert(str(value))
                    except (ValueError, TypeError, argparse.ArgumentTypeError) as err:
                        raise UsageError(f"{source} key '{name}': {err}",
                                         fix="give a value the matching flag accepts") from err
                setattr(section, key, _coerce(known[key], value, f"{source} key '{name}'"))
            setattr(config, section_name, section)
        return config

    @classmethod
    def from_toml(cls, path: Path, base: Config | None = None,
                  converters: Mapping[str, Callable[[str], Any]] | None = None) -> Config:
        """Read a TOML file of sections (``[labels]``, ``[analysis]``...) over ``base``.

        The run id is never read from a file: each run gets its own.
        """
        from bids_affect.io.files import read_settings_file

        settings = read_settings_file(path, "config file", tomllib.loads,
                                      (tomllib.TOMLDecodeError,), "TOML")
        if isinstance(settings.get("execution"), dict):
            settings["execution"].pop("run_id", None)
        return cls.from_dict(settings, base=base, source=f"config file {path}:",
                             converters=converters)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain, TOML-ready dictionary (paths as strings, unset values left out).

        BIDS filters are kept as JSON text: their ``null`` (entity absent) has no
        TOML form and would otherwise be lost.
        """
        out = {name: _plain(dataclasses.asdict(getattr(self, name))) for name in _SECTIONS}
        if self.execution.bids_filters is not None:
            out["execution"]["bids_filters"] = json.dumps(self.execution.bids_filters)
        return out

    def to_toml(self) -> str:
        """The configuration as TOML text, readable by :meth:`from_toml`."""
        return tomli_w.dumps(self.to_dict())


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
        if not isinstance(value, (str, Path)):
            raise wrong("a path")
        return Path(value)
    if base == "list[str]":
        items = re.split(r"[,\s]+", value.strip()) if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
            raise wrong("a list of strings")
        return [item for item in items if item]
    if base == "dict[str, Path]":
        if not isinstance(value, dict) or not all(isinstance(v, (str, Path))
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
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


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
