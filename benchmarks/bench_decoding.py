"""Benchmark: linear decoding of a StudyForrest-sized subject, and the ridge null's cost.

1. ``end_to_end``: the BIDS-App on one StudyForrest-sized subject (8 runs, 3,599
   volumes of 80x80x35 int16 gzip, ~48,000 brain voxels, written by
   ``bench_samples.py``'s writer; the real StudyForrest annotations of
   ``../shared/data/studyforrest-emotions/`` as events), ``--labels
   studyforrest-5 --models ridge --n-permutations 1000``: wall time and peak RSS
   of the whole process tree (``os.wait4``).
2. ``ridge_null``: on the samples that run cleaned, the cost of the 1,000-shift
   permutation null through the ridge hat matrices against one cross-validated
   fit of the same pipeline (scikit-learn, 8 folds), in one run; and a naive null
   (refitting per permutation) timed on a few permutations and extrapolated.

The BOLD holds no emotion signal, so scores are at chance; this measures cost.

Usage::

    python benchmarks/bench_decoding.py [--data-dir DIR] [--skip-end-to-end]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "decoding.json"
ANNOTATIONS = HERE.parent.parent / "shared" / "data" / "studyforrest-emotions"
sys.path.insert(0, str(HERE))

# benchmarks/ is sys.path[0] when this script runs (and HERE is put first above anyway).
import bench_samples  # noqa: E402  (the dataset writer of the samples benchmark)
from _common import machine, write_report  # noqa: E402


def bids_dataset(folder: Path) -> Path:
    """A raw BIDS view of the benchmark subject with the real StudyForrest events."""
    bench_samples.ensure_dataset(folder)
    root = folder / "bids"
    if (root / "dataset_description.json").exists():
        return root
    func = root / "sub-01" / "func"
    func.mkdir(parents=True)
    (root / "dataset_description.json").write_text(json.dumps(
        {"Name": "StudyForrest-sized benchmark", "BIDSVersion": "1.10.0"}))
    (root / "task-movie_bold.json").write_text(json.dumps(
        {"RepetitionTime": bench_samples.TR, "TaskName": "movie"}))
    derivatives = root / "derivatives"
    derivatives.mkdir()
    (derivatives / "fmriprep").symlink_to(folder / "derivatives" / "fmriprep")
    (folder / "derivatives" / "fmriprep" / "dataset_description.json").write_text(json.dumps(
        {"Name": "fMRIPrep", "BIDSVersion": "1.10.0", "DatasetType": "derivative",
         "GeneratedBy": [{"Name": "fMRIPrep"}]}))
    for run in range(1, 9):
        prefix = bench_samples.PREFIX.format(run=run)
        preproc = (folder / "derivatives" / "fmriprep" / "sub-01" / "func" /
                   f"{prefix}_space-{bench_samples.SPACE}_desc-preproc_bold.nii.gz")
        (func / f"{prefix}_bold.nii.gz").symlink_to(preproc)
        shutil.copyfile(ANNOTATIONS / f"emotions_av_1s_run-{run}_events.tsv",
                        func / f"{prefix}_events.tsv")
    return root


def end_to_end(root: Path, work: Path) -> dict:
    out = work / "out"
    shutil.rmtree(work, ignore_errors=True)
    command = [shutil.which("bids_affect"), str(root), str(out), "participant",
               "--labels", "studyforrest-5", "--models", "ridge", "--n-permutations", "1000",
               "--skip-bids-validation", "-w", str(work / "work"), "--nprocs", "1",
               "--random-seed", "1", "--confounds", "motion"]
    start = time.perf_counter()
    process = subprocess.Popen(command)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"bids_affect failed with status {status}")
    metrics = json.loads((out / "sub-01/func/sub-01_task-movie_desc-ridge_decoding.json")
                         .read_text())
    return {"command": " ".join(command[1:]), "wall_s": round(wall, 1),
            "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
            "n_samples": sum(metrics["n_samples"].values()),
            "balanced_accuracy": round(metrics["balanced_accuracy"], 4),
            "chance_balanced_accuracy": round(metrics["chance_balanced_accuracy"], 4),
            "p_permutation": metrics["p_permutation"]}


def ridge_null(work: Path) -> dict:
    from bids_affect.bold import SampleSet
    from bids_affect.decoding import (
        LeaveOneRunOut,
        _pooled_balanced_accuracy,
        circular_shifts,
        cross_validate,
        encode_labels,
        make_decoder,
        ridge_hat_matrices,
        ridge_null,
    )

    samples_dir = next((work / "work").glob("*/sub_01_task_movie_wf/samples/result"))
    samples = SampleSet.load(samples_dir)
    index = samples.labelled(min_volumes=20)
    table = samples.table.iloc[index]
    X = np.asarray(samples.X[index])
    y, classes = encode_labels(table.label.tolist())
    runs = table.run.to_numpy()
    splits = list(LeaveOneRunOut().split(X, y, groups=runs))

    def make(fold, n_train):
        return make_decoder("ridge", n_features=X.shape[1], n_samples=n_train)

    start = time.perf_counter()
    cross_validate(make, X, y, splits, len(classes), keep_estimators=False, warn=False)
    one_fit = time.perf_counter() - start
    permuted = circular_shifts(y, runs, 1000, random_state=0)
    start = time.perf_counter()
    hats = ridge_hat_matrices(make, X, splits)
    null = ridge_null(hats, splits, permuted, len(classes))
    fast = time.perf_counter() - start
    n_naive = 3
    start = time.perf_counter()
    naive = [_pooled_balanced_accuracy(row, cross_validate(
        make, X, row, splits, len(classes), keep_estimators=False, warn=False).predicted)
        for row in permuted[:n_naive]]
    naive_each = (time.perf_counter() - start) / n_naive
    return {"n_samples": int(len(y)), "n_voxels": int(X.shape[1]), "n_folds": len(splits),
            "one_cv_fit_s": round(one_fit, 2), "null_1000_s": round(fast, 2),
            "null_over_one_fit": round(fast / one_fit, 3),
            "naive_null_1000_s_extrapolated": round(naive_each * 1000, 1),
            "speedup_over_naive": round(naive_each * 1000 / fast, 1),
            "first_permutations_agree_with_refits": bool(np.allclose(null[:n_naive], naive))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) /
                        "bench_samples_data")
    parser.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) /
                        "bench_decoding_work")
    parser.add_argument("--skip-end-to-end", action="store_true",
                        help="reuse the work dir of an earlier end-to-end run")
    args = parser.parse_args()
    import threadpoolctl

    results = machine(("bids_affect", "numpy", "scikit-learn", "nilearn", "threadpoolctl"))
    root = bids_dataset(args.data_dir)
    results["threads"] = (threadpoolctl.threadpool_info()[0].get("num_threads")
                          if threadpoolctl.threadpool_info() else None)
    if not args.skip_end_to_end:
        results["end_to_end"] = end_to_end(root, args.work_dir)
    results["ridge_null"] = ridge_null(args.work_dir)
    # Merged into the previous report: --skip-end-to-end keeps its end_to_end.
    previous = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    print(json.dumps(results, indent=2))
    write_report({**previous, **results}, RESULTS)


if __name__ == "__main__":
    main()
