"""Speed of :mod:`bids_affect.encoding` against the reference libraries, same inputs, same run.

Cases (each runs in its own subprocess, so its peak resident memory, from
``os.wait4``, is its own):

* ``hrf``: 4,096 features sampled once per volume over 3,600 volumes (TR 2 s),
  convolved with the SPM HRF. Ours (:func:`~bids_affect.encoding.convolve_features`,
  equal to nilearn's ``compute_regressor``) against plain FFT convolution
  (``scipy.signal.fftconvolve`` of the volume-sampled features with the HRF
  sampled at the TR: no oversampling, no boxcar) and against nilearn's
  ``compute_regressor`` called per feature on ``--nilearn-columns`` columns
  and scaled to all (its time is linear in the columns; the equality is checked
  on those columns). Goal: at most 2x plain FFT.
* ``pls``: 20 components, 3,000 volumes x 4,096 features x 20,000 voxels
  (float32, low-rank signal plus noise). Ours
  (:class:`~bids_affect.encoding.PLSEncoder`) against scikit-learn's
  ``PLSRegression(20)`` with its defaults; the smallest correlation over voxels
  of the two models' predictions on 500 held-out volumes, and the same against
  ``PLSRegression(20, tol=1e-12)`` (scikit-learn's default tolerance stops its
  power iterations early; the converged fit shows which answer is exact).
  Goals: r >= 0.9999, at least 5x faster than the defaults.
* ``ridge``: :func:`~bids_affect.encoding.encode` with ``model="ridge"`` on a
  StudyForrest-sized subject: 8 runs (3,599 volumes), 4,096 features (one
  sample per volume, SPM HRF), ``--voxels`` voxels (50,000 in the issue),
  leave-one-run-out with himalaya's inner leave-one-run-out; no null, no
  audit: the time and memory of one cross-validated encoding.
* ``null``: the 1,000-shift null of ``--roi-voxels`` ROI voxels (1,000) of the
  same design: :func:`~bids_affect.encoding.run_shift_null` (algebra) against
  one cross-validated ridge fit of those voxels. Goal: at most 5x.

Timings are wall seconds of the work inside the child (imports and data
generation excluded); ``--repeats`` applies to the fast ``hrf`` case (minimum
taken: other work on a shared machine only slows a run down). ``--small``
divides every size by about 8 for a quick smoke run (written to
``encoding-small.json`` unless ``--output`` is given).

Usage::

    python benchmarks/bench_encoding.py [--small] [--cases hrf,pls,ridge,null]
        [--voxels 50000] [--roi-voxels 1000] [--nilearn-columns 256] [--repeats 3]
        [--threads N] [--skip-converged] [--output benchmarks/results/encoding.json]

``--threads`` sets OMP/OpenBLAS/MKL threads of every case. On an
oversubscribed machine multi-threaded LAPACK calls (``eigh`` in himalaya's
kernel ridge) spin-wait and slow down by an order of magnitude (measured: a
340 x 340 ``eigh`` 1.1 s with 2 threads, 0.03 s with one, at a load of 14 on
2 cores); ``--threads 1`` keeps such runs comparable.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

# benchmarks/ is sys.path[0] when this script runs.
from _common import machine, write_report

#: Volumes per run of the StudyForrest movie runs (3T, 3,599 in total).
RUN_LENGTHS = (451, 441, 438, 488, 462, 439, 542, 338)
TR = 2.0
SEED = 2026
RESULTS = Path(__file__).parent / "results"
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")

SIZES = {
    "full": {"hrf": (3600, 4096), "pls": (3000, 4096, 20000), "features": 4096,
             "run_scale": 1.0},
    "small": {"hrf": (450, 512), "pls": (400, 512, 2500), "features": 512,
              "run_scale": 0.125},
}


def run_lengths(scale: float) -> list[int]:
    return [max(20, int(round(n * scale))) for n in RUN_LENGTHS]


def smooth_features(rng: np.random.Generator, n: int, p: int) -> np.ndarray:
    """Slowly varying float32 features (AR(1) 0.9), as CNN features of a movie are."""
    noise = rng.standard_normal((n, p), dtype=np.float32)
    out = np.empty_like(noise)
    out[0] = noise[0]
    for t in range(1, n):
        out[t] = 0.9 * out[t - 1] + 0.44 * noise[t]
    return out


def timed(function) -> tuple[Any, float]:
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


# --------------------------------------------------------------------------- cases


def case_hrf(size: str, args) -> dict:
    from nilearn.glm.first_level import compute_regressor, spm_hrf
    from scipy.signal import fftconvolve

    from bids_affect.encoding import convolve_features

    n, p = SIZES[size]["hrf"]
    rng = np.random.default_rng(SEED)
    values = smooth_features(rng, n, p)
    frames = TR * np.arange(n)
    kernel = spm_hrf(TR, 1).astype(np.float32)
    ours_s, fft_s = [], []
    for _ in range(args.repeats):
        ours, wall = timed(lambda: convolve_features(values, frames, frames))
        ours_s.append(wall)
        _, wall = timed(lambda: fftconvolve(values, kernel[:, None], axes=0)[:n])
        fft_s.append(wall)
    columns = min(args.nilearn_columns, p)

    def nilearn():
        out = np.empty((n, columns))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for j in range(columns):
                events = np.vstack([frames, np.full(n, TR), values[:, j]])
                out[:, j] = compute_regressor(events, "spm", frames)[0][:, 0]
        return out

    theirs, nilearn_s = timed(nilearn)
    return {
        "volumes": n, "features": p, "tr": TR,
        "ours_s": round(min(ours_s), 4), "plain_fft_s": round(min(fft_s), 4),
        "nilearn_columns_timed": columns, "nilearn_s_timed": round(nilearn_s, 3),
        "nilearn_s_all_columns": round(nilearn_s * p / columns, 2),
        "ratio_ours_to_plain_fft": round(min(ours_s) / min(fft_s), 3),
        "ratio_nilearn_to_ours": round(nilearn_s * p / columns / min(ours_s), 1),
        "max_abs_difference_to_nilearn": float(np.abs(ours[:, :columns] - theirs).max()),
        "goal": "ours <= 2x plain FFT",
        "goal_met": bool(min(ours_s) <= 2 * min(fft_s)),
    }


def case_pls(size: str, args) -> dict:
    from sklearn.cross_decomposition import PLSRegression

    from bids_affect.encoding import PLSEncoder, voxel_scores

    n, p, q = SIZES[size]["pls"]
    rng = np.random.default_rng(SEED)
    held_out = min(500, n // 6)
    latent = rng.standard_normal((n + held_out, 40), dtype=np.float32)
    X = latent @ rng.standard_normal((40, p), dtype=np.float32)
    X += 3 * rng.standard_normal(X.shape, dtype=np.float32)
    Y = latent[:, :25] @ rng.standard_normal((25, q), dtype=np.float32)
    Y += 4 * rng.standard_normal(Y.shape, dtype=np.float32)
    train, test = slice(0, n), slice(n, None)
    ours, ours_s = timed(lambda: PLSEncoder(n_components=20).fit(X[train], Y[train]))
    predicted = ours.predict(X[test])
    theirs, sklearn_s = timed(lambda: PLSRegression(n_components=20).fit(X[train], Y[train]))
    r, _ = voxel_scores(theirs.predict(X[test]), predicted)
    record = {
        "volumes": n, "features": p, "voxels": q, "components": 20,
        "ours_s": round(ours_s, 2), "ours_space": ours.space_,
        "sklearn_s": round(sklearn_s, 2), "sklearn_iterations": theirs.n_iter_,
        "speedup": round(sklearn_s / ours_s, 2),
        "prediction_r_min": float(r.min()), "prediction_r_median": float(np.median(r)),
    }
    del theirs
    if not args.skip_converged:
        # scikit-learn's default tol (1e-6 on the squared change of the weights) stops
        # its power iterations early; a tight tol shows which answer is the exact one.
        converged, converged_s = timed(lambda: PLSRegression(
            n_components=20, tol=1e-12, max_iter=5000).fit(X[train], Y[train]))
        r_converged, _ = voxel_scores(converged.predict(X[test]), predicted)
        record.update(sklearn_converged_s=round(converged_s, 2),
                      sklearn_converged_iterations=converged.n_iter_,
                      prediction_r_min_vs_converged=float(r_converged.min()),
                      speedup_vs_converged=round(converged_s / ours_s, 2))
    r_best = max(record["prediction_r_min"], record.get("prediction_r_min_vs_converged", 0))
    record.update(goal="r >= 0.9999 and at least 5x faster (than scikit-learn's defaults)",
                  goal_met=bool(r_best >= 0.9999 and sklearn_s >= 5 * ours_s))
    return record


def studyforrest_design(size: str, n_voxels: int, n_planted: int):
    """Features per run and BOLD with ``n_planted`` voxels driven through the HRF."""
    from bids_affect.encoding import convolve_features

    rng = np.random.default_rng(SEED)
    p = SIZES[size]["features"]
    lengths = run_lengths(SIZES[size]["run_scale"])
    mixing = rng.standard_normal((p, n_planted), dtype=np.float32) / np.sqrt(p)
    features, bold = [], []
    for n in lengths:
        times = TR * np.arange(n)
        values = smooth_features(rng, n, p)
        design = convolve_features(values, times, times)
        run = rng.standard_normal((n, n_voxels), dtype=np.float32)
        run[:, :n_planted] += 0.5 * (design - design.mean(axis=0)) @ mixing
        features.append((values, times))
        bold.append(run)
    return features, bold, lengths


def case_ridge(size: str, args) -> dict:
    from bids_affect.encoding import encode

    features, bold, lengths = studyforrest_design(size, args.voxels, 200)
    result, wall = timed(lambda: encode(features, bold, TR, model="ridge", n_permutations=0,
                                        audit=False, random_state=SEED))
    return {
        "runs": lengths, "volumes": int(sum(lengths)), "features": features[0][0].shape[1],
        "voxels": args.voxels, "folds": result.metrics["n_folds"], "wall_s": round(wall, 1),
        "solver": "himalaya KernelRidgeCV (dual) with inner leave-one-run-out",
        "mean_r_planted": float(result.r[:200].mean()),
        "mean_r_other": float(result.r[200:].mean()),
    }


def case_null(size: str, args) -> dict:
    from bids_affect.encoding import (
        RidgeEncoder,
        check_rois,
        convolve_features,
        cross_validated_fits,
        inner_splits,
        run_shift_null,
    )

    features, bold, lengths = studyforrest_design(size, args.roi_voxels, args.roi_voxels // 5)
    X = np.concatenate([convolve_features(v, t, t) for v, t in features])
    Y = np.concatenate(bold)
    runs = np.repeat(np.arange(len(lengths)), lengths)
    splits = inner_splits(len(runs), runs)
    clock = TR * np.arange(len(runs), dtype=float)
    fits, fit_s = timed(lambda: cross_validated_fits(RidgeEncoder, X, Y, splits, runs, clock))
    rois = check_rois({"roi": np.ones(Y.shape[1], bool)}, Y.shape[1])
    null, null_s = timed(lambda: run_shift_null(X, Y, splits, runs, fits.fold_alphas, rois,
                                                args.shifts, random_state=SEED))
    return {
        "volumes": int(len(runs)), "features": X.shape[1], "voxels": args.roi_voxels,
        "shifts": args.shifts, "one_cv_fit_s": round(fit_s, 1), "null_s": round(null_s, 1),
        "ratio_null_to_one_cv_fit": round(null_s / fit_s, 2),
        "max_abs_difference_observed_r": float(np.abs(null["r"] - fits.fold_r.mean(0)).max()),
        "goal": "null at most 5x one CV fit",
        "goal_met": bool(null_s <= 5 * fit_s),
    }


CASES = {"hrf": case_hrf, "pls": case_pls, "ridge": case_ridge, "null": case_null}


# --------------------------------------------------------------------------- driver


def run_child(case: str, size: str, args) -> dict:
    """Run one case in a fresh interpreter; add its peak RSS and CPU time."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "result.json"
        command = [sys.executable, __file__, "--child", case, "--size", size,
                   "--child-output", str(out), "--voxels", str(args.voxels),
                   "--roi-voxels", str(args.roi_voxels), "--shifts", str(args.shifts),
                   "--nilearn-columns", str(args.nilearn_columns),
                   "--repeats", str(args.repeats)]
        if args.skip_converged:
            command.append("--skip-converged")
        env = dict(os.environ)
        if args.threads:
            env.update({name: str(args.threads) for name in THREAD_VARIABLES})
        started = time.perf_counter()
        child = subprocess.Popen(command, env=env)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - started
        if os.waitstatus_to_exitcode(status) != 0:
            return {"error": f"exit status {os.waitstatus_to_exitcode(status)}"}
        record = json.loads(out.read_text())
    record.update(peak_rss_mib=round(usage.ru_maxrss / 1024, 1),
                  cpu_s=round(usage.ru_utime + usage.ru_stime, 1),
                  process_wall_s=round(wall, 1))
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="about 1/8 of every size")
    parser.add_argument("--cases", default="hrf,pls,ridge,null")
    parser.add_argument("--voxels", type=int, default=None, help="ridge case (50,000)")
    parser.add_argument("--roi-voxels", type=int, default=None, help="null case (1,000)")
    parser.add_argument("--shifts", type=int, default=1000)
    parser.add_argument("--nilearn-columns", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None,
                        help="BLAS/OpenMP threads of the cases (default: inherited)")
    parser.add_argument("--skip-converged", action="store_true",
                        help="pls: skip the tight-tolerance scikit-learn fit")
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--child", choices=sorted(CASES), help=argparse.SUPPRESS)
    parser.add_argument("--size", choices=sorted(SIZES), default="full", help=argparse.SUPPRESS)
    parser.add_argument("--child-output", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    size = "small" if args.small else args.size
    args.voxels = args.voxels or (50_000 if size == "full" else 5_000)
    args.roi_voxels = args.roi_voxels or (1_000 if size == "full" else 200)
    if args.child:
        record = CASES[args.child](size, args)
        args.child_output.write_text(json.dumps(record))
        return 0
    output = args.output or RESULTS / ("encoding-small.json" if args.small else "encoding.json")
    report = machine(("bids_affect", "numpy", "scipy", "scikit-learn", "nilearn", "himalaya"))
    report.update(size=size, repeats_hrf=args.repeats, cases={},
                  threads={name: (str(args.threads) if args.threads else os.environ.get(name))
                           for name in THREAD_VARIABLES})
    report["timing"] = ("wall seconds of the work inside each case's own process (imports and "
                        "data generation excluded); peak_rss_mib and cpu_s of that process")
    for case in args.cases.split(","):
        record = run_child(case.strip(), size, args)
        report["cases"][case] = record
        print(case, json.dumps(record), flush=True)
    write_report(report, output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
