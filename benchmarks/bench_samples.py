"""Benchmark: streamed sample building against one NiftiMasker over the whole series.

A StudyForrest-sized subject (8 runs, 3,599 volumes of 80x80x35 int16, gzip,
an ellipsoid brain of about 48,000 voxels of 3x3x3.3 mm) is written once by a
dedicated writer (much faster than the synthetic-study generator, which also
writes raw copies and plants signal), then cleaned by

* ``ours``: :func:`bids_affect.bold.build_samples` (run by run, two float32
  views written to disk);
* ``naive``: ``NiftiMasker(...).fit_transform(concat_imgs(runs))`` with the
  same mask and the options NiftiMasker shares with ours (detrend, high_pass,
  standardize, t_r), nilearn defaults otherwise;
* ``naive_vectorised``: the same with ``clean_args={"butterworth__copy": True}``,
  the vectorised filter that ``build_samples`` uses (so the time ratio is not
  only nilearn's per-voxel filter loop).

Each approach runs in its own subprocess; its peak resident memory and CPU
time come from ``os.wait4`` (``ru_maxrss``, ``ru_utime + ru_stime`` of that
child only) and its wall time from the parent (interpreter start and imports
included) and from the child (processing only). The approaches run
``--repeats`` times, interleaved, and the best time of each is compared (other
work on the machine only ever slows a run down); peak memory is the largest
seen. Confound regression is off in every approach ("none"): NiftiMasker would
need the same confounds concatenated, and the comparison is about data flow.

Usage::

    python benchmarks/bench_samples.py [--data-dir DIR] [--work-dir DIR] [--repeats 2]
                                       [--output benchmarks/results/samples.json]

``--data-dir`` keeps the dataset for later runs (default: a temporary folder,
deleted at the end). Results are printed and written as JSON.
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
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

# benchmarks/ is sys.path[0] when this script runs.
from _common import machine, write_report

#: Volumes per run of the StudyForrest movie runs (3T, 3,599 in total).
RUN_LENGTHS = (451, 441, 438, 488, 462, 439, 542, 338)
SHAPE = (80, 80, 35)
VOXEL_MM = (3.0, 3.0, 3.3)
TR = 2.0
HIGH_PASS = 1.0 / 300.0
#: Semi-axes (voxels) of the ellipsoid brain: about 48,000 voxels, like a real 3 mm EPI.
BRAIN_SEMI_AXES = (24.0, 30.0, 16.0)
SEED = 20260101
APPROACHES = ("ours", "naive", "naive_vectorised")
PREFIX = "sub-01_task-movie_run-{run}"
SPACE = "MNI152NLin2009cAsym"
MOTION = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")


# --------------------------------------------------------------------------- dataset


def grid_affine() -> np.ndarray:
    """Affine of the benchmark grid (3x3x3.3 mm, centred on the origin)."""
    affine = np.diag([*VOXEL_MM, 1.0])
    affine[:3, 3] = -np.asarray(VOXEL_MM) * (np.asarray(SHAPE) - 1) / 2
    return affine


def brain_mask() -> np.ndarray:
    """Boolean ellipsoid in the middle of the grid."""
    centre = (np.asarray(SHAPE) - 1) / 2
    ijk = np.indices(SHAPE).reshape(3, -1).T
    distance = (((ijk - centre) / np.asarray(BRAIN_SEMI_AXES)) ** 2).sum(axis=1)
    return (distance <= 1.0).reshape(SHAPE)


def write_run(path: Path, n_volumes: int, brain: np.ndarray, affine: np.ndarray,
              rng: np.random.Generator) -> np.ndarray:
    """Write one int16 gzip run (noise, drifts, motion) and return its motion traces."""
    n_brain = int(brain.sum())
    motion = np.cumsum(rng.normal(0, 0.05, size=(n_volumes, 6)), axis=0)
    motion -= motion.mean(axis=0)
    baseline = rng.uniform(600, 1000, n_brain).astype(np.float32)
    percent = rng.standard_normal((n_brain, n_volumes), dtype=np.float32)
    t = np.linspace(-1, 1, n_volumes, dtype=np.float32)
    percent += np.outer(rng.normal(0, 1, n_brain).astype(np.float32), t)
    percent += rng.normal(0, 0.3, (n_brain, 6)).astype(np.float32) @ (
        motion / motion.std(axis=0)).T.astype(np.float32)
    data = rng.normal(30, 5, size=(*SHAPE, n_volumes)).astype(np.int16)
    data[brain] = np.round(baseline[:, None] * (1 + 0.01 * percent)).astype(np.int16)
    image = nib.Nifti1Image(data, affine)
    image.header.set_xyzt_units("mm", "sec")
    image.header.set_zooms((*VOXEL_MM, TR))
    image.to_filename(path)
    return motion


def write_dataset(folder: Path) -> None:
    """Write the benchmark subject in fMRIPrep's layout (preproc BOLD, mask, confounds)."""
    func = folder / "derivatives" / "fmriprep" / "sub-01" / "func"
    func.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    affine = grid_affine()
    brain = brain_mask()
    for run, n_volumes in enumerate(RUN_LENGTHS, start=1):
        prefix = PREFIX.format(run=run)
        started = time.perf_counter()
        motion = write_run(func / f"{prefix}_space-{SPACE}_desc-preproc_bold.nii.gz",
                           n_volumes, brain, affine, rng)
        nib.Nifti1Image(brain.astype(np.uint8), affine).to_filename(
            func / f"{prefix}_space-{SPACE}_desc-brain_mask.nii.gz")
        confounds = pd.DataFrame(motion, columns=list(MOTION))
        for name in MOTION:
            confounds[f"{name}_derivative1"] = confounds[name].diff()
        confounds.to_csv(func / f"{prefix}_desc-confounds_timeseries.tsv", sep="\t",
                         index=False, na_rep="n/a")
        print(f"wrote run {run} ({n_volumes} volumes) in {time.perf_counter() - started:.1f} s",
              file=sys.stderr)
    (folder / "benchmark_dataset.json").write_text(json.dumps(dataset_parameters()) + "\n")


def dataset_parameters() -> dict[str, Any]:
    return {"run_lengths": list(RUN_LENGTHS), "shape": list(SHAPE), "voxel_mm": list(VOXEL_MM),
            "tr": TR, "brain_semi_axes": list(BRAIN_SEMI_AXES), "seed": SEED,
            "dtype": "int16", "compression": "gzip"}


def ensure_dataset(folder: Path) -> None:
    """Write the dataset unless ``folder`` already holds this one."""
    marker = folder / "benchmark_dataset.json"
    if marker.is_file() and json.loads(marker.read_text()) == dataset_parameters():
        print(f"reusing the dataset in {folder}", file=sys.stderr)
        return
    write_dataset(folder)


def benchmark_runs(folder: Path) -> list:
    """Run records of the benchmark subject."""
    from bids_affect.io.layout import RunRecord

    func = folder / "derivatives" / "fmriprep" / "sub-01" / "func"
    runs = []
    for run, n_volumes in enumerate(RUN_LENGTHS, start=1):
        prefix = PREFIX.format(run=run)
        bold = func / f"{prefix}_space-{SPACE}_desc-preproc_bold.nii.gz"
        runs.append(RunRecord(
            subject="01", session=None, task="movie", run=run, raw_bold=bold, bold=bold,
            tr=TR, n_volumes=n_volumes, shape=(*SHAPE, n_volumes), space=SPACE,
            mask=func / f"{prefix}_space-{SPACE}_desc-brain_mask.nii.gz",
            confounds=func / f"{prefix}_desc-confounds_timeseries.tsv",
            entities={"subject": "01", "task": "movie", "run": run}))
    return runs


# --------------------------------------------------------------------------- workers


def run_worker(name: str, data_dir: Path, work_dir: Path, mask: Path, result: Path) -> None:
    """Clean the subject with one approach (in a child process) and write its timing."""
    from nilearn.image import concat_imgs
    from nilearn.maskers import NiftiMasker

    from bids_affect.bold import build_samples

    runs = benchmark_runs(data_dir)
    started = time.perf_counter()
    if name == "ours":
        samples = build_samples(runs, None, work_dir / "samples", mask_img=mask,
                                confounds="none", detrend=True, high_pass=HIGH_PASS,
                                standardize=True)
        shape = samples.X.shape
    else:
        clean_args = {"butterworth__copy": True} if name == "naive_vectorised" else None
        masker = NiftiMasker(mask_img=str(mask), detrend=True, high_pass=HIGH_PASS, t_r=TR,
                             standardize="zscore_sample", clean_args=clean_args)
        shape = masker.fit_transform(concat_imgs([str(run.bold) for run in runs])).shape
    result.write_text(json.dumps({"processing_s": time.perf_counter() - started,
                                  "shape": list(shape)}))


def measure(name: str, data_dir: Path, work_dir: Path, mask: Path) -> dict[str, Any]:
    """Run one approach in its own process: peak RSS of that child, wall times."""
    result = work_dir / f"{name}.json"
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", name,
               "--data-dir", str(data_dir), "--work-dir", str(work_dir),
               "--mask", str(mask), "--result", str(result)]
    started = time.perf_counter()
    child = subprocess.Popen(command)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if child.returncode != 0:
        raise RuntimeError(f"{name} failed with exit code {child.returncode}")
    inner = json.loads(result.read_text())
    shutil.rmtree(work_dir / "samples", ignore_errors=True)
    return {"peak_rss_mib": round(usage.ru_maxrss / 1024, 1), "wall_s": round(wall, 2),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
            "processing_s": round(inner["processing_s"], 2), "output_shape": inner["shape"]}


def summarise(trials: list[dict[str, Any]]) -> dict[str, Any]:
    """Best time and largest peak memory over the repeats of one approach."""
    return {"peak_rss_mib": max(t["peak_rss_mib"] for t in trials),
            **{key: min(t[key] for t in trials) for key in ("wall_s", "cpu_s", "processing_s")},
            "output_shape": trials[0]["output_shape"], "trials": trials}


def warm_page_cache(data_dir: Path) -> None:
    """Read every input once so that no approach pays for a cold disk."""
    for path in sorted(data_dir.rglob("*.nii.gz")):
        with open(path, "rb") as file:
            while file.read(1 << 24):
                pass


def ratios(ours: dict[str, Any], other: dict[str, Any]) -> dict[str, float]:
    return {"peak_rss": round(ours["peak_rss_mib"] / other["peak_rss_mib"], 3),
            "wall_time": round(ours["wall_s"] / other["wall_s"], 3),
            "cpu_time": round(ours["cpu_s"] / other["cpu_s"], 3),
            "processing_time": round(ours["processing_s"] / other["processing_s"], 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, help="dataset folder (kept; reused)")
    parser.add_argument("--work-dir", type=Path, help="where the approaches write")
    parser.add_argument("--output", type=Path,
                        default=Path(__file__).resolve().parent / "results" / "samples.json")
    parser.add_argument("--approaches", nargs="+", choices=APPROACHES, default=APPROACHES)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each approach")
    parser.add_argument("--worker", choices=APPROACHES, help=argparse.SUPPRESS)
    parser.add_argument("--mask", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        run_worker(args.worker, args.data_dir, args.work_dir, args.mask, args.result)
        return 0

    environment = machine(("bids_affect", "numpy", "scipy", "pandas", "scikit-learn",
                           "nibabel", "nilearn"))
    temporary = tempfile.TemporaryDirectory(prefix="bench_samples_")
    data_dir = args.data_dir or Path(temporary.name) / "data"
    work_dir = args.work_dir or Path(temporary.name) / "work"
    work_dir.mkdir(parents=True, exist_ok=True)
    try:
        ensure_dataset(data_dir)
        from bids_affect.bold import subject_mask

        mask = work_dir / "mask.nii.gz"
        subject_mask(benchmark_runs(data_dir)).to_filename(mask)
        warm_page_cache(data_dir)
        trials: dict[str, list[dict[str, Any]]] = {name: [] for name in args.approaches}
        for repeat in range(1, args.repeats + 1):
            for name in args.approaches:
                print(f"measuring {name} ({repeat}/{args.repeats})...", file=sys.stderr)
                trials[name].append(measure(name, data_dir, work_dir, mask))
                print(f"{name}: {trials[name][-1]}", file=sys.stderr)
        measured = {name: summarise(values) for name, values in trials.items()}
        on_disk = sum(p.stat().st_size for p in data_dir.rglob("*_bold.nii.gz"))
        report: dict[str, Any] = {
            **environment,
            "benchmark": "bids_affect.bold.build_samples vs NiftiMasker on the whole series",
            "dataset": {**dataset_parameters(), "n_volumes": sum(RUN_LENGTHS),
                        "n_mask_voxels": int(nib.load(mask).get_fdata().sum()),
                        "bold_on_disk_mib": round(on_disk / 2**20, 1)},
            "cleaning": {"detrend": True, "high_pass_hz": HIGH_PASS, "filter": "butterworth",
                         "standardize": "zscore_sample", "confounds": "none", "t_r": TR},
            "repeats": args.repeats,
            "approaches": measured,
        }
        if "ours" in measured and "naive" in measured:
            report["ratios_ours_over_naive"] = ratios(measured["ours"], measured["naive"])
            report["goals"] = {
                "peak_rss_at_most_half": report["ratios_ours_over_naive"]["peak_rss"] <= 0.5,
                "time_no_worse": report["ratios_ours_over_naive"]["wall_time"] <= 1.0}
        if "ours" in measured and "naive_vectorised" in measured:
            report["ratios_ours_over_naive_vectorised"] = ratios(measured["ours"],
                                                                 measured["naive_vectorised"])
        print(json.dumps(report, indent=2))
        write_report(report, args.output)
    finally:
        temporary.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
