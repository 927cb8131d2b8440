"""What every benchmark records about the machine, and how it writes its report.

The scripts run as ``python benchmarks/bench_x.py``, so this folder is
``sys.path[0]`` and they import this module as ``_common``.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any


def _load_average() -> list[float]:
    return [round(load, 2) for load in os.getloadavg()]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(packages: Iterable[str] = ("bids_affect", "numpy")) -> dict[str, Any]:
    """Describe the run and the machine, at the start of a benchmark.

    Parameters
    ----------
    packages : iterable of str
        Distribution names whose installed versions are recorded.

    Returns
    -------
    dict
        ``date`` (UTC, ISO 8601), ``command``, ``python``, ``platform``, ``cpu``
        (model name), ``cores_available`` (to this process),
        ``load_average_at_start`` (1, 5 and 15 minutes) and ``versions``
        (``"not installed"`` for a missing package).
    """
    versions = {}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cores_available": len(os.sched_getaffinity(0)),
        "load_average_at_start": _load_average(),
        "versions": versions,
    }


def write_report(report: dict[str, Any], path: Path) -> None:
    """Add ``load_average_at_end`` to ``report`` and write it to ``path`` as JSON.

    The folder is created if needed; the file is written next to ``path`` and
    then renamed over it, so a reader never sees a half-written report.

    Parameters
    ----------
    report : dict
        The results; modified in place.
    path : Path
        Where the report goes.
    """
    report["load_average_at_end"] = _load_average()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(json.dumps(report, indent=2) + "\n")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    print(f"written to {path}")
