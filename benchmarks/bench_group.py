"""Group level: leave-one-subject-out decoding of 20 subjects, and the SRM against fmralign's.

Data: 20 synthetic subjects watching one movie
(:func:`bids_affect.decoding.cross_subject.example_subjects`: shared stimulus
responses, a planted class signal in a standard space, subject-specific voxel
permutations as a toy misalignment, AR(1) noise), 4 runs of 200 volumes
(TR 2 s) by 2,000 voxels, float32, each subject saved as ``.npy`` and opened
as a read-only memory map, as the group level reads participant samples.
``--small``: 20 subjects, 2 runs of 100 volumes, 500 voxels.

Cases, each in its own process (peak resident memory from ``os.wait4`` of
that child; ``import_only`` measures the interpreter, NumPy, scikit-learn and
torch that every case carries):

* ``loso_none`` / ``loso_srm``: :func:`decode_across_subjects` with the ridge
  decoder, leave-one-run-out segments, 1,000 permutations (algebraic refits
  of every fold's decoder), alignment ``none`` or ``srm`` (50 components, 10
  iterations), without the pooled random-split audit (its pooled matrix is
  timed separately as ``audit``).
* ``srm_fit``: one SRM fit of 19 subjects' time-locked responses (800 time
  points x 2,000 voxels each, 50 components, 10 iterations): ours
  (:class:`bids_affect.alignment.GroupAlignment`, streamed from the memory
  maps, float32) against fmralign's own ``GroupAlignment(method=DetSRM(50),
  n_iter=10)`` on the same arrays (loaded, float32, as fmralign keeps them in
  memory). Both run the same algorithm (deterministic SRM, random start);
  the final mean squared distance to the shared response is reported for both.
* ``ridge_alignment``: one subject's ridge alignment onto a 500-voxel parcel of
  the template, :class:`bids_affect.alignment.BlockRidgeAlignment` against
  fmralign's ``RidgeAlignment`` (same penalties and folds, same result).

Timings are the best of ``--repeats`` (other work on a shared machine only ever
slows a run down); BLAS runs on ``--threads`` threads in every case (default 1),
each comparison (ours and fmralign) in one child process, interleaved repeats
not needed as both sides run back to back on the same loaded arrays.

Usage::

    python benchmarks/bench_group.py [--small] [--repeats 3] [--threads 1]
                                     [--output benchmarks/results/group.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

# benchmarks/ is sys.path[0] when this script runs.
from _common import machine, write_report

SEED = 2026
SIZES = {"full": {"n_subjects": 20, "n_runs": 4, "n_volumes": 200, "n_voxels": 2000},
         "small": {"n_subjects": 20, "n_runs": 2, "n_volumes": 100, "n_voxels": 500}}
N_COMPONENTS = 50
N_ITER = 10
N_PERMUTATIONS = 1000
PARCEL = 500
CASES = ("import_only", "loso_none", "loso_srm", "audit")
COMPARISONS = ("srm_fit", "ridge_alignment")
RESULTS = Path(__file__).parent / "results"


def write_subjects(folder: Path, size: dict[str, int]) -> None:
    """Generate the subjects once and save each one's samples and labels."""
    from bids_affect.decoding.cross_subject import example_subjects

    subjects = example_subjects(n_latent=10, signal=0.5, misaligned=True, random_state=SEED,
                                **size)
    for subject in subjects:
        np.save(folder / f"sub-{subject.participant_id}.npy", subject.X)
    first = subjects[0]
    (folder / "design.json").write_text(json.dumps({
        "labels": list(first.labels), "runs": list(first.runs),
        "times": [float(t) for t in first.times], "ids": [s.participant_id for s in subjects],
        "size": size}))


def load_subjects(folder: Path) -> list:
    """Subjects whose samples are read-only memory maps."""
    from bids_affect.decoding.cross_subject import SubjectSamples

    design = json.loads((folder / "design.json").read_text())
    return [SubjectSamples(participant_id=pid, X=np.load(folder / f"sub-{pid}.npy",
                                                         mmap_mode="r"),
                           labels=np.array(design["labels"], object),
                           runs=np.array(design["runs"], object),
                           times=np.array(design["times"]), space="MNI152NLin2009cAsym",
                           tr=2.0) for pid in design["ids"]]


# --------------------------------------------------------------------------- workers


def worker(case: str, folder: Path, result: Path) -> None:
    """Run one case in this (child) process and write its timing."""
    import torch  # noqa: F401  (every real run imports it through bids_affect)

    from bids_affect.decoding import decode  # noqa: F401
    from bids_affect.decoding.cross_subject import (
        _decoder_factory,
        _pooled_audit,
        decode_across_subjects,
        harmonise_subjects,
    )

    record: dict[str, Any] = {}
    started = time.perf_counter()
    if case in ("loso_none", "loso_srm"):
        out = decode_across_subjects(load_subjects(folder), model="ridge",
                                     alignment=case.split("_")[1], n_components=N_COMPONENTS,
                                     n_iter=N_ITER, n_permutations=N_PERMUTATIONS,
                                     random_state=0, audit=False)
        summary = out.summary[case.split("_")[1]]
        record.update(mean_balanced_accuracy=round(summary["mean_balanced_accuracy"], 4),
                      group_null_band=[round(v, 4) for v in summary["group_null_band"]])
    elif case == "audit":
        subjects = load_subjects(folder)
        harmonised = harmonise_subjects(subjects, need_timeline=False)
        audit = _pooled_audit(subjects, harmonised, _decoder_factory(
            "ridge", 0, None, None, harmonised.n_voxels), 0, False, None)
        record.update(pooled_balanced_accuracy=round(audit["pooled_balanced_accuracy"], 4))
    record["processing_s"] = time.perf_counter() - started
    result.write_text(json.dumps(record))


def comparison_worker(case: str, folder: Path, result: Path, repeats: int) -> None:
    """Run one ours-against-fmralign comparison in this (child) process."""
    function = srm_comparison if case == "srm_fit" else ridge_comparison
    started = time.perf_counter()
    record = function(folder, repeats)
    record["processing_s"] = time.perf_counter() - started
    result.write_text(json.dumps(record))


def measure(case: str, folder: Path, threads: int, repeats: int = 1) -> dict[str, Any]:
    """One case in its own process: wall and CPU time, peak RSS of that child.

    Child processes get the BLAS thread count before NumPy loads (it reads it once).
    """
    result = folder / f"{case}.json"
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads),
                   "OPENBLAS_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", case,
               "--data-dir", str(folder), "--result", str(result),
               "--repeats", str(repeats)]
    started = time.perf_counter()
    child = subprocess.Popen(command, env=environment)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    if status != 0:
        raise RuntimeError(f"case {case} failed with status {status}")
    record = json.loads(result.read_text())
    record.update(peak_rss_mib=round(usage.ru_maxrss / 1024, 1), wall_s=round(wall, 2),
                  cpu_s=round(usage.ru_utime + usage.ru_stime, 2),
                  processing_s=round(record["processing_s"], 2))
    return record


# --------------------------------------------------------------------------- in-process


def timed(function, repeats: int) -> tuple[Any, float]:
    best, value = np.inf, None
    for _ in range(repeats):
        started = time.perf_counter()
        value = function()
        best = min(best, time.perf_counter() - started)
    return value, best


def srm_comparison(folder: Path, repeats: int) -> dict[str, Any]:
    """Our streamed SRM fit against fmralign's GroupAlignment(DetSRM) on the same subjects."""
    from fmralign import GroupAlignment as FmralignAlignment
    from fmralign.methods import DetSRM

    from bids_affect.alignment import GroupAlignment
    from bids_affect.decoding.cross_subject import harmonise_subjects

    subjects = load_subjects(folder)[1:]              # 19 training subjects
    harmonised = harmonise_subjects(subjects)

    def stream():
        for subject, rows in zip(subjects, harmonised.timeline_rows):
            yield np.asarray(subject.X[rows], np.float32)

    ours, ours_s = timed(lambda: GroupAlignment(
        "srm", n_components=N_COMPONENTS, n_iter=N_ITER, random_state=0).fit(stream), repeats)
    arrays = {f"s{k}": X for k, X in enumerate(stream())}
    np.random.seed(0)  # noqa: NPY002 (fmralign draws its start from the global generator)
    theirs, theirs_s = timed(lambda: FmralignAlignment(
        method=DetSRM(n_components=N_COMPONENTS), n_iter=N_ITER).fit(arrays), repeats)
    # The same measure for both fits: aligned subjects against the final shared response.
    aligned = theirs.transform(arrays)
    their_loss = float(np.mean([np.square(aligned[k] - theirs.template).mean()
                                for k in arrays]))
    our_loss = float(np.mean([np.square(ours.transform(X, k) - ours.template_).mean()
                              for k, X in enumerate(stream())]))
    return {"n_subjects": len(subjects), "n_timepoints": int(len(harmonised.timeline)),
            "n_voxels": int(harmonised.n_voxels), "n_components": N_COMPONENTS,
            "n_iter": N_ITER, "ours_s": round(ours_s, 3), "fmralign_s": round(theirs_s, 3),
            "ratio_ours_to_fmralign": round(ours_s / theirs_s, 3),
            "ours_final_loss": round(our_loss, 5),
            "fmralign_final_loss": round(their_loss, 5),
            "note": "loss = mean squared distance of each aligned subject to the final "
                    "shared response; both start from a random shared response (ours "
                    "seeded through random_state, fmralign's from NumPy's global seed)"}


def ridge_comparison(folder: Path, repeats: int) -> dict[str, Any]:
    """BlockRidgeAlignment against fmralign's RidgeAlignment on one parcel."""
    from fmralign.methods import RidgeAlignment

    from bids_affect.alignment import BlockRidgeAlignment

    subjects = load_subjects(folder)
    source = np.asarray(subjects[0].X[:, :PARCEL], np.float32)
    target = np.mean([np.asarray(s.X[:, :PARCEL], np.float32) for s in subjects[1:6]], axis=0)
    ours, ours_s = timed(lambda: BlockRidgeAlignment().fit(source, target), repeats)
    theirs, theirs_s = timed(lambda: RidgeAlignment().fit(source, target), repeats)
    return {"n_timepoints": int(source.shape[0]), "n_voxels": PARCEL,
            "ours_s": round(ours_s, 3), "fmralign_s": round(theirs_s, 3),
            "ratio_ours_to_fmralign": round(ours_s / theirs_s, 3),
            "same_alpha": bool(ours.alpha_ == theirs.R.alpha_),
            "max_abs_difference": float(np.abs(ours.transform(source)
                                               - theirs.transform(source)).max())}


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="smaller subjects (see above)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--worker", choices=CASES + COMPARISONS, help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker in COMPARISONS:
        comparison_worker(args.worker, args.data_dir, args.result, args.repeats)
        return 0
    if args.worker:
        worker(args.worker, args.data_dir, args.result)
        return 0
    size = SIZES["small" if args.small else "full"]
    output = args.output or RESULTS / ("group-small.json" if args.small else "group.json")
    report = machine(("bids_affect", "numpy", "scikit-learn", "fmralign", "torch"))
    report.update(size=size, threads=args.threads, repeats=args.repeats,
                  n_permutations=N_PERMUTATIONS, timing="best of repeats; peak_rss_mib of "
                  "the case's own process (ru_maxrss); cpu_s = user + system of that process")
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        started = time.perf_counter()
        write_subjects(folder, size)
        report["data_generation_s"] = round(time.perf_counter() - started, 1)
        report["cases"] = {}
        for case in CASES:
            trials = [measure(case, folder, args.threads) for _ in range(args.repeats)]
            best = min(trials, key=lambda t: t["processing_s"])
            best["peak_rss_mib"] = max(t["peak_rss_mib"] for t in trials)
            report["cases"][case] = best
            print(f"{case:12s} {best['processing_s']:8.2f} s  peak {best['peak_rss_mib']:8.1f} "
                  f"MiB", flush=True)
        baseline = report["cases"]["import_only"]["peak_rss_mib"]
        for case in ("loso_none", "loso_srm", "audit"):
            report["cases"][case]["peak_rss_above_imports_mib"] = round(
                report["cases"][case]["peak_rss_mib"] - baseline, 1)
        for case in COMPARISONS:
            record = measure(case, folder, args.threads, args.repeats)
            report[case] = record
            print(f"{case}: ours {record['ours_s']} s, fmralign {record['fmralign_s']} s "
                  f"(ratio {record['ratio_ours_to_fmralign']})", flush=True)
    write_report(report, output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
