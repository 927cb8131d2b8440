"""Benchmark: the batched permutation null of logreg and SVM against scikit-learn refits.

For each data set and decoder (``logreg``, ``svm``, with ``-pca`` and
``-anova``: a StandardScaler, the reduction, then
:class:`~bids_affect.decoding.linear.BalancedLogisticRegression` or
:class:`~bids_affect.decoding.linear.BalancedLinearSVC`, C = 1 / features, as
``make_decoder`` builds them), in one run:

- ``one_cv_fit_s``: one leave-one-run-out cross-validation with scikit-learn
  (the decoder refitted per fold), the least of its timings (three on the true
  labels, one per refitted permutation: on a shared machine, the least
  disturbed);
- ``batched_null_s``: the null of 1,000 circular shifts by
  :func:`~bids_affect.decoding.linear.permutation_null_predictions`, the least
  of ``--null-repeats`` runs (demo; one run on ``large``) as ``one_cv_fit_s`` is
  the least of its runs (goal: at most 10 times ``one_cv_fit_s``;
  ``null_over_one_cv_fit``);
- ``refit_null_s_per_permutation``: scikit-learn refits of the first
  ``--n-refits`` of the same permutations (the null as decode computed it),
  extrapolated to 1,000 (``speedup_over_refits``);
- agreement of the predictions of each of those permutations, batched against
  refit, over all test volumes (goal: >= 99%); and of each against the exact
  optimum (the batched fit in float64 to ``tol=1e-9``):
  ``prediction_agreement_exact`` (batched, float32, default tolerance) beside
  ``refit_agreement_exact`` (scikit-learn's own); on the demo's shared designs, the
  same for all 1,000 permutations (``prediction_agreement_exact_all``), and the
  null's time and agreement at a tenth of the default tolerance (``tighter_*``);
  and the p-values of the observed
  balanced accuracy against the two nulls on those permutations: the same
  permutations, so the paired exceedance indicators are compared with an exact
  McNemar test (binomial on the discordant permutations; ``mcnemar_p``), and
  ``p_difference`` against the Monte Carlo standard error of p (``p_mc_se``);
- ``chance_*``: null means (balanced accuracy) of the balanced estimator, and of
  the previous decoder (scikit-learn with ``class_weight="balanced"`` and an
  intercept, on the refitted permutations): the anti-learning of issue 16.

- ``kernels_compile_s`` and ``kernels_cached_load_s``: a tiny float32 fit in a new
  process with an empty numba cache (numba's import and the compilation of
  :mod:`bids_affect.decoding._kernels`), then again with that cache filled: the
  once-per-machine and the per-process cost that the timings above leave out.

Data sets: ``demo`` is sub-02 of the bundled demo (built with the CLI, cleaned
samples of the 5 StudyForrest classes; 376 volumes, 1,812 voxels, 3 runs);
``large`` is a StudyForrest-sized synthetic subject (8 runs of 123 labelled
volumes, ``--large-voxels`` features, AR(1) noise z-scored per run, a weak
planted signal so that p is informative); the ANOVA decoders are left out of
``large`` (their per-permutation designs of 4,800 voxels cost more than refits).

Usage::

    python benchmarks/bench_linear_null.py [--n-refits 20] [--skip-large]
        [--large-voxels 48208] [--null-repeats 5] [--work-dir DIR] [--output FILE]
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from scipy.stats import binomtest

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "linear_null.json"
sys.path.insert(0, str(HERE))

from _common import machine, write_report  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.feature_selection import SelectPercentile, f_classif  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.metrics import balanced_accuracy_score  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.svm import LinearSVC  # noqa: E402

from bids_affect.decoding.linear import (  # noqa: E402
    DEFAULT_TOL,
    BalancedLinearSVC,
    BalancedLogisticRegression,
    permutation_null_predictions,
)
from bids_affect.stats.permutation import circular_shifts  # noqa: E402

N_PERMUTATIONS = 1000
SEED = 2026
MODELS = ("logreg", "svm", "logreg-pca", "svm-pca", "logreg-anova", "svm-anova")


def make_factory(model: str, n_features: int, previous: bool = False):
    """``make(fold, n_train)`` for a decoder name, as ``make_decoder`` builds it.

    ``previous`` builds the decoder that ran before (scikit-learn's estimators
    with balanced class weights and an intercept), for its null mean only.
    """
    base, _, reduction = model.partition("-")
    reduced = {"": n_features, "pca": 100, "anova": max(1, math.ceil(n_features * 0.1))}
    C = 1.0 / reduced[reduction]

    def make(fold: int = 0, n_train: int = 1000):
        steps = [StandardScaler()]
        if reduction == "pca":
            steps.append(PCA(n_components=min(100, n_features, n_train - 1),
                             svd_solver="full"))
        elif reduction == "anova":
            steps.append(SelectPercentile(f_classif, percentile=10))
        if previous:
            steps.append(LogisticRegression(C=C, max_iter=1000, class_weight="balanced")
                         if base == "logreg" else
                         LinearSVC(C=C, class_weight="balanced", max_iter=5000))
        else:
            steps.append(BalancedLogisticRegression(C=C) if base == "logreg" else
                         BalancedLinearSVC(C=C, random_state=0))
        return make_pipeline(*steps)

    return make


def cross_validated(make, X, labels, splits) -> np.ndarray:
    predicted = np.full(len(labels), -1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for fold, (train, test) in enumerate(splits):
            predicted[test] = make(fold, len(train)).fit(X[train], labels[train]).predict(
                X[test])
    return predicted


def demo_subject(work: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cleaned, labelled samples of the demo's sub-02, made by the BIDS-App itself."""
    from bids_affect.bold import SampleSet
    from bids_affect.datasets.demo import make_demo_dataset

    root = make_demo_dataset(work / "demo")
    found = sorted((work / "work").glob("*/sub_02_task_movie_wf/samples/result"))
    if not found:
        command = [shutil.which("bids_affect") or "bids_affect", str(root), str(work / "out"),
                   "participant", "--participant-label", "02", "--labels", "studyforrest-5",
                   "--analyses", "decoding", "--models", "ridge", "--n-permutations", "0",
                   "-w", str(work / "work"), "--skip-bids-validation", "--nprocs", "1",
                   "--random-seed", "1"]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        found = sorted((work / "work").glob("*/sub_02_task_movie_wf/samples/result"))
    samples = SampleSet.load(found[0])
    index = samples.labelled(min_volumes=20)
    table = samples.table.iloc[index]
    labels = np.unique(table.label.to_numpy().astype(str), return_inverse=True)[1]
    runs = np.unique(table.run.to_numpy().astype(str), return_inverse=True)[1]
    return np.asarray(samples.X[index], dtype=np.float32), labels, runs


def large_subject(n_voxels: int, seed: int = SEED) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """8 runs x 123 labelled volumes of AR(1) noise (z-scored per run), weak signal."""
    rng = np.random.default_rng(seed)
    n_runs, n_per_run, n_classes = 8, 123, 5
    labels, runs = [], []
    for run in range(n_runs):
        probability = rng.dirichlet(np.ones(n_classes))
        row = []
        while len(set(row)) < n_classes:
            row = []
            while len(row) < n_per_run:
                row += [rng.choice(n_classes, p=probability)] * int(rng.integers(5, 20))
            row = row[:n_per_run]
        labels += row
        runs += [run] * n_per_run
    labels, runs = np.array(labels), np.array(runs)
    X = np.empty((len(labels), n_voxels), np.float32)
    for run in range(n_runs):
        rows = np.flatnonzero(runs == run)
        block = rng.standard_normal((len(rows), n_voxels), dtype=np.float32)
        for t in range(1, len(rows)):
            block[t] = 0.8 * block[t - 1] + 0.6 * block[t]
        X[rows] = (block - block.mean(0)) / block.std(0)
    X += 0.05 * rng.standard_normal((n_classes, n_voxels), dtype=np.float32)[labels]
    return X, labels, runs


def tolerance_check(model, make, X, permuted, splits, n_classes, batched, exact) -> dict:
    """Every permutation against the exact optimum, at the default tolerance and at a tenth.

    ``exact``: the predictions of the batched fits in float64 to ``tol=1e-9``.
    """
    default = DEFAULT_TOL["logistic" if model.startswith("logreg") else "squared_hinge"]
    start = time.perf_counter()
    tighter = permutation_null_predictions(make, X, permuted, splits, n_classes,
                                           tol=default / 10)
    tighter_s = time.perf_counter() - start
    tested = exact >= 0
    return {"default_tol": default,
            "prediction_agreement_exact_all": round(float(np.mean(batched[tested]
                                                                  == exact[tested])), 5),
            "tighter_tol": default / 10,
            "tighter_null_s": round(tighter_s, 3),
            "tighter_agreement_exact_all": round(float(np.mean(tighter[tested]
                                                               == exact[tested])), 5)}


_FIRST_CALL = """
import time
import numpy as np
from bids_affect.decoding.linear import fit_permutations
rng = np.random.default_rng(0)
X = rng.normal(size=(30, 8))
start = time.perf_counter()
fit_permutations(X[:20], rng.integers(0, 3, size=(2, 20)), X[20:])
print(time.perf_counter() - start)
"""


def kernel_first_calls() -> dict:
    """Seconds of a first float32 fit in a new process: empty numba cache, then filled."""
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        compile_s, load_s = (float(subprocess.run([sys.executable, "-c", _FIRST_CALL], env=env,
                                                  check=True, capture_output=True,
                                                  text=True).stdout)
                             for _ in range(2))
    return {"kernels_compile_s": round(compile_s, 2), "kernels_cached_load_s": round(load_s, 2)}


def bench_model(model: str, X, labels, runs, n_refits: int, null_repeats: int = 1,
                check_tolerance: bool = False) -> dict:
    splits = [(np.flatnonzero(runs != run), np.flatnonzero(runs == run))
              for run in np.unique(runs)]
    n_classes = int(labels.max()) + 1
    make = make_factory(model, X.shape[1])
    permuted = circular_shifts(labels, runs, N_PERMUTATIONS, random_state=SEED)

    times = []
    for _ in range(3):
        start = time.perf_counter()
        observed_predictions = cross_validated(make, X, labels, splits)
        times.append(time.perf_counter() - start)
    one_fit = min(times)
    observed = balanced_accuracy_score(labels, observed_predictions)

    null_times = []
    for _ in range(null_repeats):
        start = time.perf_counter()
        batched = permutation_null_predictions(make, X, permuted, splits, n_classes)
        null_times.append(time.perf_counter() - start)
    batched_s = min(null_times)
    null = np.array([balanced_accuracy_score(row, guess) for row, guess in zip(permuted, batched)])

    refits = []
    for row in permuted[:n_refits]:
        start = time.perf_counter()
        refits.append(cross_validated(make, X, row, splits))
        times.append(time.perf_counter() - start)
    refits = np.stack(refits)
    refit_each = float(np.mean(times[3:]))
    # A refit is one cross-validated fit too: the least disturbed of all of them.
    one_fit = min(times)
    refit_null = np.array([balanced_accuracy_score(row, guess)
                           for row, guess in zip(permuted, refits)])
    previous = make_factory(model, X.shape[1], previous=True)
    previous_null = np.array([balanced_accuracy_score(row, cross_validated(previous, X, row,
                                                                           splits))
                              for row in permuted[:n_refits]])

    agreement = (refits == batched[:n_refits]).mean(axis=1)
    # The exact optimum: of every permutation for the tolerance check (shared designs
    # only: the ANOVA decoders' per-permutation designs make it slow), else of the refits'.
    check_all = check_tolerance and not model.endswith("anova")
    exact = permutation_null_predictions(make, X, permuted if check_all else permuted[:n_refits],
                                         splits, n_classes, dtype="float64", tol=1e-9)
    above_batched = null[:n_refits] >= observed - 1e-12
    above_refit = refit_null >= observed - 1e-12
    discordant = (int(np.sum(above_batched & ~above_refit)),
                  int(np.sum(~above_batched & above_refit)))
    p_refit = (1 + above_refit.sum()) / (1 + n_refits)
    p_batched_same = (1 + above_batched.sum()) / (1 + n_refits)
    check = (tolerance_check(model, make, X, permuted, splits, n_classes, batched, exact)
             if check_all else {})
    return {
        "model": model,
        "n_samples": int(len(labels)), "n_features": int(X.shape[1]), "n_folds": len(splits),
        "n_classes": n_classes,
        "one_cv_fit_s": round(one_fit, 3),
        "batched_null_s": round(batched_s, 3),
        "batched_null_runs_s": [round(t, 3) for t in null_times],
        "null_over_one_cv_fit": round(batched_s / one_fit, 1),
        "goal_null_over_one_cv_fit_at_most": 10,
        "refit_null_s_per_permutation": round(refit_each, 3),
        "refit_null_1000_s_extrapolated": round(refit_each * N_PERMUTATIONS, 1),
        "speedup_over_refits": round(refit_each * N_PERMUTATIONS / batched_s, 1),
        "n_refitted_permutations": n_refits,
        "prediction_agreement": round(float(agreement.mean()), 5),
        "prediction_agreement_worst_permutation": round(float(agreement.min()), 5),
        "prediction_agreement_exact": round(float(np.mean(batched[:n_refits]
                                                          == exact[:n_refits])), 5),
        "refit_agreement_exact": round(float(np.mean(refits == exact[:n_refits])), 5),
        "balanced_accuracy": round(float(observed), 4),
        "p_batched_1000": float((1 + np.sum(null >= observed - 1e-12)) / (1 + len(null))),
        "p_batched_refitted_permutations": float(p_batched_same),
        "p_refit": float(p_refit),
        "p_difference": float(abs(p_batched_same - p_refit)),
        "p_mc_se": round(math.sqrt(p_refit * (1 - p_refit) / n_refits), 4),
        "discordant_permutations": list(discordant),
        "mcnemar_p": (float(binomtest(discordant[0], sum(discordant)).pvalue)
                      if sum(discordant) else 1.0),
        "chance_balanced": round(float(null.mean()), 4),
        "null_band_balanced": [round(float(np.percentile(null, 2.5)), 4),
                               round(float(np.percentile(null, 97.5)), 4)],
        "chance_previous_decoder_refits": round(float(previous_null.mean()), 4),
        "one_over_k": round(1 / n_classes, 4),
        **check,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-refits", type=int, default=20,
                        help="permutations refitted with scikit-learn per decoder (demo)")
    parser.add_argument("--n-refits-large", type=int, default=3)
    parser.add_argument("--large-voxels", type=int, default=48_208)
    parser.add_argument("--skip-large", action="store_true")
    parser.add_argument("--null-repeats", type=int, default=5,
                        help="runs of the batched null per demo decoder (the least counts)")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--work-dir", type=Path,
                        default=Path(tempfile.gettempdir()) / "bench_linear_null_work")
    parser.add_argument("--output", type=Path, default=RESULTS,
                        help=f"results file (default: {RESULTS.relative_to(HERE.parent)})")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch and BLAS threads for both sides (default 1)")
    args = parser.parse_args()
    import threadpoolctl

    results = machine(("bids_affect", "numpy", "scikit-learn", "torch", "threadpoolctl"))
    results["threads"] = args.threads
    results["n_permutations"] = N_PERMUTATIONS
    results["p_value_test"] = (
        "same permutations for both nulls: exact McNemar test on the permutations whose "
        "exceedance (null >= observed) differs; p_difference against the Monte Carlo "
        "standard error sqrt(p (1 - p) / n) of the refit p")
    torch.set_num_threads(args.threads)
    results.update(kernel_first_calls())
    with threadpoolctl.threadpool_limits(args.threads):
        args.work_dir.mkdir(parents=True, exist_ok=True)
        X, labels, runs = demo_subject(args.work_dir)
        results["demo"] = []
        for model in args.models.split(","):
            results["demo"].append(bench_model(model, X, labels, runs, args.n_refits,
                                               args.null_repeats, check_tolerance=True))
            print(results["demo"][-1], flush=True)
        if not args.skip_large:
            X, labels, runs = large_subject(args.large_voxels)
            results["large"] = []
            for model in ("logreg", "svm"):
                results["large"].append(bench_model(model, X, labels, runs,
                                                    args.n_refits_large))
                print(results["large"][-1], flush=True)
    write_report(results, args.output)


if __name__ == "__main__":
    main()
