"""Movie feature extraction: frames per second through ``alexnet``, batched against one by one.

A synthetic movie (:func:`bids_affect.datasets.movie.write_synthetic_movie`, by
default 360x640 pixels, 25 frames/s, 20 s: 500 frames) goes through
:func:`bids_affect.features.extract_movie_features` with an ``alexnet`` of random
weights (seed 0) on ``--threads`` CPU threads, every 5th frame (seed 000's
``frame_step``), reading ``fc7`` (the whole network up to fc7) and ``conv1`` (one
convolution: the forward pass stops there). Variants, each repeated ``--repeats``
times, the fastest run kept (other processes on a shared machine add time, never
remove it):

- ``decode_only``: PyAV decoding and RGB conversion of the sampled frames, no network
  (the floor of the pipeline);
- ``batched``: ``extract_movie_features`` with ``batch_size=--batch-size`` (16);
- ``one_by_one``: the same with ``batch_size=1``, as seed 000's loop calls the network
  on one frame at a time (the reference of the ratio).

Wall and CPU times are both recorded: on a shared machine the wall time grows with
other processes' load (see ``load_average_*``), the CPU time much less.

Reported: sampled frames per second end to end (decoding, resizing, network),
the ratio batched / one by one, the largest difference between the features of
the two (they must agree to rounding), and the peak resident memory of the
process (``ru_maxrss``), which streaming keeps at one batch of frames.

Usage::

    python benchmarks/bench_features.py [--repeats 3] [--threads 2] [--batch-size 16]
        [--duration 20] [--size 360 640] [--output benchmarks/results/features.json]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

# benchmarks/ is sys.path[0] when this script runs.
from _common import machine, write_report

DEFAULT_OUTPUT = Path(__file__).parent / "results" / "features.json"
FRAME_STEP = 5
FPS = 25
SEED = 2026
LAYERS = ("fc7", "conv1")


def best_of(repeats: int, function: Callable[[], object]) -> tuple[object, float, float]:
    """Result of the last call, fastest wall time and its CPU time, over ``repeats`` calls."""
    best_wall, best_cpu, result = float("inf"), float("inf"), None
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        result = function()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        if wall < best_wall:
            best_wall, best_cpu = wall, cpu
    return result, best_wall, best_cpu


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--size", type=int, nargs=2, default=(360, 640),
                        metavar=("HEIGHT", "WIDTH"))
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)

    import torch

    from bids_affect.datasets.movie import write_synthetic_movie
    from bids_affect.features import extract_movie_features, iter_movie_frames, probe_movie
    from bids_affect.models.image import ImageFeatures

    torch.set_num_threads(args.threads)
    report = machine(("bids_affect", "numpy", "torch", "av"))
    report.update({"threads": args.threads, "repeats": args.repeats,
                   "batch_size": args.batch_size, "frame_step": FRAME_STEP,
                   "network": "alexnet (random weights, seed 0)",
                   "timing": "fastest of the repeats; frames_per_s counts the sampled "
                             "frames (every 5th) per second of wall time, end to end; "
                             "frames_per_cpu_s per CPU second of all threads (less "
                             "disturbed by other processes on a shared machine); ratio = "
                             "batched / one_by_one throughput (above 1: batching is "
                             "faster), cpu_ratio the same from CPU seconds"})
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "movie.mp4"
        start = time.perf_counter()
        write_synthetic_movie(path, duration=args.duration, fps=FPS, size=tuple(args.size),
                              scene_duration=(1.0, 4.0), seed=SEED)
        info = probe_movie(path)
        report["movie"] = {"size": list(args.size), "fps": FPS, "duration_s": info.duration,
                           "n_frames": info.n_frames, "codec": info.codec,
                           "write_s": round(time.perf_counter() - start, 2)}
        n_sampled = len(range(0, info.n_frames, FRAME_STEP))
        report["movie"]["n_frames_sampled"] = n_sampled

        _, wall, cpu = best_of(args.repeats, lambda: sum(
            1 for _ in iter_movie_frames(path, FRAME_STEP)))
        report["decode_only"] = {"wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
                                 "frames_per_s": round(n_sampled / wall, 1),
                                 "decoded_frames_per_s": round(info.n_frames / wall, 1)}
        print(f"decode only: {n_sampled / wall:.1f} sampled frames/s", flush=True)

        report["layers"] = {}
        for layer in LAYERS:
            record = {}
            outputs = {}
            for variant, batch_size in (("batched", args.batch_size), ("one_by_one", 1)):
                extractor = ImageFeatures("alexnet", layer, weights="random", random_state=0,
                                          batch_size=batch_size,
                                          num_threads=args.threads).fit()
                features, wall, cpu = best_of(args.repeats, lambda e=extractor, n=layer: (
                    extract_movie_features(path, e, name=f"alexnet{n}",
                                           frame_step=FRAME_STEP)))
                outputs[variant] = features.values
                record[variant] = {"wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
                                   "frames_per_s": round(features.n_samples / wall, 2),
                                   "frames_per_cpu_s": round(features.n_samples / cpu, 2)}
                print(f"{layer} {variant:10s}: {features.n_samples / wall:.2f} frames/s "
                      f"({wall:.2f} s)", flush=True)
            record["ratio_batched_to_one_by_one"] = round(
                record["batched"]["frames_per_s"] / record["one_by_one"]["frames_per_s"], 3)
            record["cpu_ratio_batched_to_one_by_one"] = round(
                record["one_by_one"]["cpu_s"] / record["batched"]["cpu_s"], 3)
            record["max_abs_difference"] = float(np.max(np.abs(
                outputs["batched"] - outputs["one_by_one"])))
            record["n_features"] = int(outputs["batched"].shape[1])
            report["layers"][layer] = record
        report["peak_rss_mb"] = round(peak_rss_mb(), 1)
    write_report(report, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
