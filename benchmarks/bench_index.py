"""Re-indexing cost with ``--bids-database-dir`` on a synthetic 100-subject dataset.

Measures, in one run and in fresh processes (so no Python-level cache helps):

- ``index``: :func:`bids_affect.io.layout.load_layout` with an empty database dir
  (pybids indexes the dataset and saves the database);
- ``reuse``: the same call again (the database is loaded, nothing is re-indexed);
- ``memory``: no database (what every job pays without ``--bids-database-dir``);

each followed by :func:`collect_runs` for one participant, as a participant job does.
Results go to ``benchmarks/results/index.json``.

Usage::

    python benchmarks/bench_index.py [--subjects 100] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# benchmarks/ is sys.path[0] when this script runs.
from _common import machine, write_report

RESULTS = Path(__file__).resolve().parent / "results" / "index.json"

WORKER = """
import sys, time
start = time.perf_counter()
from bids_affect.io.layout import collect_runs, find_fmriprep_derivatives, load_layout
imported = time.perf_counter()
root, database = sys.argv[1], (sys.argv[2] if sys.argv[2] != "-" else None)
layout = load_layout(root, find_fmriprep_derivatives(root), database)
runs = collect_runs(layout, ["001"])
print(time.perf_counter() - imported, len(runs))
"""


def timed_job(root: Path, database: Path | None) -> float:
    """Seconds a fresh process spends indexing (or loading) and collecting runs."""
    result = subprocess.run([sys.executable, "-c", WORKER, str(root),
                             str(database) if database else "-"],
                            capture_output=True, text=True, check=True)
    seconds, n_runs = result.stdout.split()
    assert int(n_runs) == 2
    return float(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=100)
    parser.add_argument("--data-dir", type=Path, default=None)
    args = parser.parse_args()
    report = machine(("bids_affect", "pybids"))
    from bids_affect.datasets import make_synthetic_dataset

    folder = args.data_dir or Path(tempfile.mkdtemp(prefix="bench_index_"))
    root = folder / "bids"
    if not (root / "dataset_description.json").exists():
        start = time.perf_counter()
        make_synthetic_dataset(root, n_subjects=args.subjects, n_runs=2, n_volumes=10,
                               shape=(5, 6, 5), subject_labels=tuple(
                                   f"{i + 1:03d}" for i in range(args.subjects)), seed=0)
        print(f"dataset written in {time.perf_counter() - start:.1f} s")
    database = folder / "database"
    shutil.rmtree(database, ignore_errors=True)
    n_files = sum(1 for path in root.rglob("*") if path.is_file())
    index = timed_job(root, database)
    reuse = [timed_job(root, database) for _ in range(3)]
    memory = timed_job(root, None)
    results = {
        **report, "subjects": args.subjects, "files": n_files,
        "index_with_new_database_s": round(index, 2),
        "reuse_database_s": round(min(reuse), 2),
        "no_database_s": round(memory, 2),
        "reuse_over_index_ratio": round(min(reuse) / index, 3),
    }
    print(json.dumps(results, indent=2))
    write_report(results, RESULTS)


if __name__ == "__main__":
    main()
