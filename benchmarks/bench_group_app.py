"""The BIDS-App's group level for 20 subjects against the library called directly.

Data: a synthetic study of 20 subjects who watched one movie
(``tests/steps/group_helpers.shared_movie_dataset``: sub-01's events, BOLD and
confounds, plus noise of each subject's own), in MNI152NLin2009cAsym; 3 runs
of 100 volumes on a (12, 14, 12) grid (``--small``: 3 runs of 60 volumes on
(8, 9, 8)). Set-up, timed but not compared: the participant level of every
subject (ridge, 1,000 permutations) with one work directory.

Cases, each in its own process (peak resident memory from ``os.wait4`` of that
child):

* ``app``: ``bids_affect bids_dir output_dir group --alignment none,srm``
  reusing the participant level's samples from the work directory: cross-subject
  ridge decoding with both alignments on the same folds (1,000 label shifts,
  the audit), the within-subject table with its t-test and prevalence inference
  (100,000 second-level permutations), the group report. The cross-subject
  node's cached folder is removed before each repeat, so it computes again.
* ``library``: what the app's group level computes, called directly on the
  same memory-mapped samples and nulls:
  :func:`~bids_affect.decoding.cross_subject.decode_across_subjects` and
  :func:`~bids_affect.stats.prevalence_inference`.

The ratio ``app / library`` is the app's overhead (nipype, reading and
writing derivatives with sidecars, figures and the HTML report). Timings are
the best of ``--repeats``; BLAS runs on one thread.

Usage::

    python benchmarks/bench_group_app.py [--small] [--repeats 1]
                                         [--output benchmarks/results/group_app.json]
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

# benchmarks/ is sys.path[0] when this script runs; the repository root holds tests/.
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

from _common import machine, write_report

SIZES = {"full": {"n_runs": 3, "n_volumes": 100, "shape": (12, 14, 12)},
         "small": {"n_runs": 3, "n_volumes": 60, "shape": (8, 9, 8)}}
N_SUBJECTS = 20
N_PERMUTATIONS = 1000
N_COMPONENTS = 10
COMMON = ["--labels", "studyforrest-5", "--models", "ridge", "--min-volumes", "5",
          "--n-permutations", str(N_PERMUTATIONS), "--skip-bids-validation", "--nprocs", "1",
          "--random-seed", "7"]
RESULTS = Path(__file__).parent / "results"


def prepare(folder: Path, size: dict[str, Any]) -> float:
    """The dataset and its participant level (every subject, one work directory)."""
    from bids_affect.cli.run import main
    from tests.steps.group_helpers import shared_movie_dataset

    started = time.perf_counter()
    bids = shared_movie_dataset(folder / "bids", n_subjects=N_SUBJECTS, signal=1.5,
                                scene_duration=(8.0, 20.0), seed=3, **size)
    code = main([str(bids), str(folder / "out"), "participant", "-w", str(folder / "work"),
                 *COMMON])
    if code != 0:
        raise RuntimeError(f"the participant level failed with exit code {code}")
    return time.perf_counter() - started


def run_app(folder: Path) -> dict[str, Any]:
    """The group level through ``main`` (the group wiring applied as the tests do)."""
    import pytest

    from bids_affect.cli.run import main
    from tests.steps.group_helpers import use_group_level, use_group_report

    with pytest.MonkeyPatch.context() as patch:
        use_group_level(patch)
        use_group_report(patch)
        code = main([str(folder / "bids"), str(folder / "app_out"), "group", "-w",
                     str(folder / "work"), *COMMON, "--alignment", "none,srm",
                     "--srm-components", str(N_COMPONENTS)])
    if code != 0:
        raise RuntimeError(f"the group level failed with exit code {code}")
    about = json.loads((folder / "app_out" / "group" / "task-movie_desc-ridgesrm_decoding.json")
                       .read_text())
    return {"mean_balanced_accuracy_srm": round(about["mean_balanced_accuracy"], 4),
            "gain_over_none": round(about["gain_over_none"]["mean"], 4)}


def run_library(folder: Path) -> dict[str, Any]:
    """The same computations, called directly on the participant level's files."""
    import numpy as np
    import pandas as pd

    from bids_affect.bold import SampleSet
    from bids_affect.decoding.cross_subject import SubjectSamples, decode_across_subjects
    from bids_affect.stats import prevalence_inference

    subjects, scores, nulls = [], [], []
    for samples_dir in sorted((folder / "work").glob("*/sub_*_task_movie_wf/samples/result")):
        label = samples_dir.parts[-3].split("_")[1]
        samples = SampleSet.load(samples_dir)
        subjects.append(SubjectSamples.from_sample_set(
            label, samples, space=samples.manifest["runs"][0]["space"], min_volumes=5))
        stem = folder / "out" / f"sub-{label}" / "func" / f"sub-{label}_task-movie_desc-ridge"
        scores.append(json.loads(Path(f"{stem}_decoding.json").read_text())
                      ["balanced_accuracy"])
        nulls.append(pd.read_csv(f"{stem}_null.tsv", sep="\t")["balanced_accuracy"]
                     .to_numpy(float))
    result = decode_across_subjects(subjects, model="ridge", alignment="none,srm",
                                    n_components=N_COMPONENTS, n_permutations=N_PERMUTATIONS,
                                    random_state=0)
    prevalence = prevalence_inference(np.asarray(scores), nulls, random_state=0)
    return {"mean_balanced_accuracy_srm": round(
                result.summary["srm"]["mean_balanced_accuracy"], 4),
            "prevalence_lower_bound": round(float(prevalence.gamma0[0]), 4)}


def worker(case: str, folder: Path, result: Path) -> None:
    """Run one case in this (child) process and write what it measured."""
    import torch  # noqa: F401  (every real run imports it through bids_affect)

    started = time.perf_counter()
    record = run_app(folder) if case == "app" else run_library(folder)
    record["processing_s"] = time.perf_counter() - started
    result.write_text(json.dumps(record))


def measure(case: str, folder: Path) -> dict[str, Any]:
    """One case in its own process: wall and CPU time, peak RSS of that child."""
    result = folder / f"{case}.json"
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
                   "MKL_NUM_THREADS": "1"}
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", case,
                              "--data-dir", str(folder), "--result", str(result)],
                             env=environment)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    if status != 0:
        raise RuntimeError(f"case {case} failed with status {status}")
    record = json.loads(result.read_text())
    record.update(processing_s=round(record["processing_s"], 2), wall_s=round(wall, 2),
                  cpu_s=round(usage.ru_utime + usage.ru_stime, 2),
                  peak_rss_mib=round(usage.ru_maxrss / 1024, 1))
    return record


def fresh_group(folder: Path) -> None:
    """Forget the group level's outputs and cached cross-subject node (recomputed then)."""
    shutil.rmtree(folder / "app_out", ignore_errors=True)
    shutil.copytree(folder / "out", folder / "app_out")
    for cached in (folder / "work").glob("*/crosssubject_*"):
        shutil.rmtree(cached)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--output", type=Path)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.data_dir, args.result)
        return
    size_name = "small" if args.small else "full"
    size = SIZES[size_name]
    report: dict[str, Any] = {**machine(("bids_affect", "numpy", "nilearn", "nipype",
                                         "fmralign")),
                              "size": {"n_subjects": N_SUBJECTS, **size},
                              "n_permutations": N_PERMUTATIONS, "n_components": N_COMPONENTS,
                              "repeats": args.repeats, "threads": 1,
                              "timing": "best of repeats; peak_rss_mib of the case's own "
                                        "process (ru_maxrss)"}
    with tempfile.TemporaryDirectory(prefix="bench_group_app_") as tmp:
        folder = Path(tmp)
        report["participant_level_s"] = round(prepare(folder, size), 2)
        cases: dict[str, dict[str, Any]] = {}
        for _ in range(args.repeats):
            for case in ("library", "app"):
                if case == "app":
                    fresh_group(folder)
                record = measure(case, folder)
                if case not in cases or record["processing_s"] < cases[case]["processing_s"]:
                    cases[case] = record
        report["cases"] = cases
        report["ratio_app_to_library"] = round(cases["app"]["processing_s"]
                                               / cases["library"]["processing_s"], 3)
    output = args.output or RESULTS / ("group_app-small.json" if args.small
                                       else "group_app.json")
    write_report(report, output)
    print(json.dumps(report["cases"], indent=1), f"ratio {report['ratio_app_to_library']}")


if __name__ == "__main__":
    main()
