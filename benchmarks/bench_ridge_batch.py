"""Memory of the ridge encoder with and without voxel batches inside himalaya.

:class:`~bids_affect.encoding.RidgeEncoder` passes ``n_targets_batch`` to
himalaya (default :data:`~bids_affect.encoding.DEFAULT_TARGETS_BATCH`): its
inner cross-validation predicts every validation volume for every penalty and
voxel, ``(alphas, volumes, voxels)``, and batching voxels bounds that array
without changing the fit. One fit per setting, each in a fresh process (its
peak resident memory is its own), on the same data: ``--volumes`` x 4,096
features x ``--voxels`` (float32, 6 runs, so the inner CV leaves one run out).
The fits must be equal (penalties identical, weights within float32 rounding).
Results go to ``benchmarks/results/ridge_batch.json``.

Usage::

    python benchmarks/bench_ridge_batch.py [--volumes 1800] [--voxels 30000] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

# benchmarks/ is sys.path[0] when this script runs.
from _common import machine, write_report

RESULTS = Path(__file__).resolve().parent / "results" / "ridge_batch.json"

WORKER = """
import json, resource, sys, time
import numpy as np
from bids_affect.encoding import RidgeEncoder
batch = None if sys.argv[1] == "none" else int(sys.argv[1])
n, q = int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(0)
X = rng.standard_normal((n, 4096), dtype=np.float32)
Y = rng.standard_normal((n, q), dtype=np.float32)
Y[:, :100] += X[:, :5] @ rng.standard_normal((5, 100)).astype(np.float32)
runs = np.repeat(np.arange(6), -(-n // 6))[:n]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
start = time.perf_counter()
model = RidgeEncoder(n_targets_batch=batch).fit(X, Y, runs=runs)
seconds = time.perf_counter() - start
np.save(sys.argv[4], model.weights_)
np.save(sys.argv[4].replace(".npy", "_alphas.npy"), model.best_alphas_)
print(json.dumps({"fit_s": round(seconds, 1), "solver": model.solver_,
                  "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                  "rss_before_fit_mib": round(before)}))
"""


def main() -> None:
    import tempfile

    import numpy as np

    from bids_affect.encoding import DEFAULT_TARGETS_BATCH

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", type=int, default=1800)
    parser.add_argument("--voxels", type=int, default=30000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    report = machine(("bids_affect", "numpy", "himalaya"))
    env = {**os.environ, **{name: str(args.threads) for name in
                            ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}}
    report.update(volumes=args.volumes, features=4096, voxels=args.voxels, threads=args.threads,
                  cases={})
    with tempfile.TemporaryDirectory() as folder:
        for batch in ("none", str(DEFAULT_TARGETS_BATCH)):
            weights = str(Path(folder) / f"weights_{batch}.npy")
            done = subprocess.run([sys.executable, "-c", WORKER, batch, str(args.volumes),
                                   str(args.voxels), weights], env=env, check=True,
                                  capture_output=True, text=True)
            case = json.loads(done.stdout.strip().splitlines()[-1])
            case["fit_overhead_mib"] = case["peak_rss_mib"] - case["rss_before_fit_mib"]
            report["cases"][f"n_targets_batch={batch}"] = case
            print(batch, case, flush=True)
        whole, batched = (np.load(str(Path(folder) / f"weights_{b}.npy"))
                          for b in ("none", str(DEFAULT_TARGETS_BATCH)))
        same_alphas = np.array_equal(*(np.load(str(Path(folder) / f"weights_{b}_alphas.npy"))
                                       for b in ("none", str(DEFAULT_TARGETS_BATCH))))
    unbatched, default = report["cases"].values()
    report.update(
        same_alphas=bool(same_alphas),
        max_abs_weight_difference=float(np.abs(whole - batched).max()),
        ratio_overhead_batched_to_whole=round(default["fit_overhead_mib"]
                                              / unbatched["fit_overhead_mib"], 3),
        ratio_time_batched_to_whole=round(default["fit_s"] / unbatched["fit_s"], 3))
    write_report(report, RESULTS)
    print(json.dumps({key: report[key] for key in ("same_alphas", "max_abs_weight_difference",
                                                   "ratio_overhead_batched_to_whole",
                                                   "ratio_time_batched_to_whole")}))


if __name__ == "__main__":
    main()
