"""Speed of :func:`bids_affect.rsa.mantel_test` against scikit-bio's ``mantel``, same inputs.

Cases: 22 classes and 1,000 classes, each with 10,000 Monte Carlo permutations
(the default of ``mantel_test`` and ``--rsa-permutations``; at 1,000 classes a
call takes 10-30 s, so that case runs at most 2 repeats, recorded per case).
Both methods that scikit-bio implements natively
(Pearson, Spearman); alternative "greater"; the same integer seed, so both draw
the same permutations and must return the same p-value (checked; the RDMs are
related at 22 classes and unrelated at 1,000, so neither p sits at its floor).

Each repeat runs, in turn: ours with every available core (``n_jobs=-1``, as
scikit-bio's OpenMP loop uses by default), ours on one thread, and scikit-bio
with its default engine and with ``engine="numba"``. Wall-clock and CPU times
are recorded; the summary uses the minimum wall time over repeats (the least
disturbed run: shared machines add noise, never speed). Ours gets RDMs as
DataFrames (its API; validation and alignment are timed), scikit-bio plain
arrays. numba compiles our kernel on the first large test of a process; that
first call is timed separately (``first_call_s``) and excluded from repeats.

Usage::

    python benchmarks/bench_mantel.py [--repeats 5] [--output benchmarks/results/mantel.json]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

# benchmarks/ is sys.path[0] when this script runs.
from _common import machine, write_report
from scipy.spatial.distance import pdist, squareform

from bids_affect import rsa

#: (classes, permutations, weight of the first RDM's points in the second's, most repeats)
CASES = ((22, 10_000, 0.3, None), (1_000, 10_000, 0.0, 2))
METHODS = ("pearson", "spearman")
SEED = 2026
DEFAULT_OUTPUT = Path(__file__).parent / "results" / "mantel.json"


def make_rdms(k: int, weight: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean distances of random 5-D points, and of ``weight`` x them + new points."""
    rng = np.random.default_rng(seed)
    points = rng.normal(size=(k, 5))
    return (squareform(pdist(points)),
            squareform(pdist(weight * points + rng.normal(size=(k, 5)))))


def timed(function: Callable[[], object]) -> tuple[object, float, float]:
    """Result, wall seconds and CPU seconds (all threads) of ``function()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = function()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def bench_case(k: int, n_permutations: int, weight: float, method: str, repeats: int,
               mantel) -> dict:
    a, b = make_rdms(k, weight, SEED + k)
    names = [f"class{i}" for i in range(k)]
    a_frame, b_frame = pd.DataFrame(a, names, names), pd.DataFrame(b, names, names)
    runners = {
        "ours_all_cores": lambda: rsa.mantel_test(
            a_frame, b_frame, method=method, n_permutations=n_permutations,
            random_state=SEED, n_jobs=-1),
        "ours_one_thread": lambda: rsa.mantel_test(
            a_frame, b_frame, method=method, n_permutations=n_permutations,
            random_state=SEED, n_jobs=1),
        "skbio_default": lambda: mantel(a, b, method=method, permutations=n_permutations,
                                        alternative="greater", seed=SEED),
        "skbio_numba": lambda: mantel(a, b, method=method, permutations=n_permutations,
                                      alternative="greater", seed=SEED, engine="numba"),
    }
    first, first_wall, _ = timed(runners["ours_all_cores"])
    walls: dict[str, list[float]] = {name: [] for name in runners}
    cpus: dict[str, list[float]] = {name: [] for name in runners}
    outcomes = {}
    for _ in range(repeats):
        for name, runner in runners.items():
            outcomes[name], wall, cpu = timed(runner)
            walls[name].append(wall)
            cpus[name].append(cpu)
    statistic, p_value, _ = outcomes["skbio_default"]
    ours = outcomes["ours_all_cores"]
    record = {
        "k": k, "n_permutations": n_permutations, "method": method, "repeats": repeats,
        "statistic_ours": ours.statistic, "statistic_skbio": float(statistic),
        "p_ours": ours.p_value, "p_skbio": float(p_value),
        "same_p": bool(ours.p_value == p_value == first.p_value),
        "first_call_s": round(first_wall, 4),
    }
    for name in runners:
        record[f"{name}_wall_min_s"] = round(min(walls[name]), 4)
        record[f"{name}_wall_median_s"] = round(statistics.median(walls[name]), 4)
        record[f"{name}_cpu_min_s"] = round(min(cpus[name]), 4)
    for name in ("ours_all_cores", "ours_one_thread"):
        for engine in ("skbio_default", "skbio_numba"):
            record[f"ratio_{name}_to_{engine}"] = round(
                min(walls[name]) / min(walls[engine]), 3)
    # CPU seconds (all threads): the work done, which other processes on a
    # shared machine disturb less than the wall time.
    record["cpu_ratio_ours_all_cores_to_skbio_default"] = round(
        min(cpus["ours_all_cores"]) / min(cpus["skbio_default"]), 3)
    return record


def environment() -> dict:
    import skbio

    packages = ("numpy", "scipy", "pandas", "scikit-bio", "numba", "bids_affect")
    return {
        **machine(packages),
        "threads_ours": {"n_jobs=-1": len(os.sched_getaffinity(0)), "n_jobs=1": 1},
        "threads_skbio": "OpenMP default: OMP_NUM_THREADS, else every core",
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "skbio_default_engine": skbio.get_config("compute_engine"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    from skbio.stats.distance import mantel

    report = environment()
    report["repeats"] = args.repeats
    report["repeats_note"] = ("repeats per case are in each case's record: the 1,000-class "
                              "case runs at most 2 (each call takes 10-30 s)")
    report["timing"] = ("minimum wall time over repeats; ratio = ours / scikit-bio "
                        "(below 1: ours is faster); cpu_ratio: the same with CPU seconds of "
                        "all threads")
    report["cases"] = []
    for k, n_permutations, weight, most_repeats in CASES:
        repeats = min(args.repeats, most_repeats or args.repeats)
        for method in METHODS:
            record = bench_case(k, n_permutations, weight, method, repeats, mantel)
            report["cases"].append(record)
            print(f"k={k:5d} perms={n_permutations:6d} {method:8s} "
                  f"ours {record['ours_all_cores_wall_min_s']:.3f} s "
                  f"(1 thread {record['ours_one_thread_wall_min_s']:.3f} s, "
                  f"first call {record['first_call_s']:.3f} s)  "
                  f"skbio {record['skbio_default_wall_min_s']:.3f} s "
                  f"(numba {record['skbio_numba_wall_min_s']:.3f} s)  "
                  f"ratio {record['ratio_ours_all_cores_to_skbio_default']:.2f} "
                  f"(CPU {record['cpu_ratio_ours_all_cores_to_skbio_default']:.2f})  "
                  f"same p: {record['same_p']}", flush=True)
    write_report(report, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
