"""Benchmark: bids_affect.occlusion against captum's Occlusion on the same work.

The work is seed 003's setting: the ``neuro120fp`` network (random weights,
batch norms given the statistics of random volumes and logits scaled so that
the network responds as a trained one does, eval mode, 5 classes) on one
80x80x35 volume (2.4 mm voxels) with nilearn's MNI152 brain mask resampled to
that grid, a 2x2x2 window with stride 2, baseline 0, target class 0.

The full captum run would take ~28,800 forward passes of the whole volume, so
both methods occlude the same fixed block of windows (default 8x8x2 windows
near the centre of the brain; captum occludes the block's voxels while its
forward function places them into the full volume). Both get the same batch
size (``perturbations_per_eval``), the same threads and float32. We also time
our full-volume run with the brain mask, and extrapolate captum's time to the
full volume (it cannot skip windows outside the mask). The same block in
bfloat16 records its speed and error: max abs error, and relative error (max
abs error / max abs map value); on CPUs without native bfloat16 arithmetic it
is slower than float32.

Run::

    python benchmarks/bench_occlusion.py

It writes ``benchmarks/results/occlusion.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

# benchmarks/ is sys.path[0] when this script runs.
from _common import machine, write_report

from bids_affect.datasets.synthetic import MNI_BRAIN_BOX, brain_mask
from bids_affect.models.cnn3d import create_architecture
from bids_affect.occlusion import occlusion_maps, window_grid

SHAPE = (80, 80, 35)
VOXEL_MM = 2.4
WINDOW = 2
N_CLASSES = 5
TARGET = 0


def grid_affine_mm(shape, voxel_mm: float) -> np.ndarray:
    """Isotropic grid of ``voxel_mm`` centred on the MNI brain box."""
    centre = np.array([(lo + hi) / 2 for lo, hi in MNI_BRAIN_BOX])
    affine = np.diag([voxel_mm] * 3 + [1.0])
    affine[:3, 3] = centre - voxel_mm * (np.asarray(shape) - 1) / 2
    return affine


def make_model(seed: int) -> torch.nn.Module:
    """neuro120fp with random weights, calibrated to respond as a trained network does.

    Straight from initialisation its activations shrink ~15-fold per block and
    its probabilities barely move; batch-norm statistics of random volumes and
    a last layer scaled to logits of standard deviation 2 fix that. The cost
    of a forward pass does not depend on the weights.
    """
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = create_architecture("neuro120fp", N_CLASSES, SHAPE)
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm3d):
                module.reset_running_stats()
                module.momentum = None
        volumes = torch.randn(4, 1, *SHAPE)
        with torch.no_grad():
            model.train()
            model(volumes)
            model.eval()
            model.head.fc.weight *= 2 / model(volumes).std()
    return model


def captum_block(model, volume: np.ndarray, block: tuple[slice, ...], batch_size: int):
    """captum's Occlusion over the block's windows; the forward sees the full volume."""
    from captum.attr import Occlusion

    full = torch.as_tensor(volume)[None, None]

    def forward(inputs: torch.Tensor) -> torch.Tensor:
        batch = full.expand(len(inputs), -1, -1, -1, -1).clone()
        batch[(slice(None), slice(None), *block)] = inputs
        return torch.softmax(model(batch), dim=1)

    inputs = torch.as_tensor(volume[block])[None, None]
    started = time.perf_counter()
    with torch.no_grad():
        maps = Occlusion(forward).attribute(
            inputs, sliding_window_shapes=(1, WINDOW, WINDOW, WINDOW),
            strides=(1, WINDOW, WINDOW, WINDOW), baselines=0.0, target=TARGET,
            perturbations_per_eval=batch_size)
    return maps[0, 0].numpy(), time.perf_counter() - started


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--block", default="8,8,2",
                        help="windows of the block along x,y,z (default 8,8,2)")
    parser.add_argument("--batch-size", type=int, default=16,
                        help="occluded copies per forward, for both methods (default 16)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path,
                        default=Path(__file__).parent / "results" / "occlusion.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    report = machine(("torch", "numpy", "captum", "nilearn", "bids_affect"))

    affine = grid_affine_mm(SHAPE, VOXEL_MM)
    mask = brain_mask(SHAPE, affine)
    rng = np.random.default_rng(args.seed)
    volume = np.where(mask, rng.normal(size=SHAPE), 0.0).astype(np.float32)
    model = make_model(args.seed)
    grid = window_grid(SHAPE, WINDOW)

    counts = [int(n) for n in args.block.split(",")]
    first = [(total - n) // 2 for total, n in zip(grid.counts, counts)]
    block = tuple(slice(f * WINDOW, (f + n) * WINDOW) for f, n in zip(first, counts))
    block_mask = np.zeros(SHAPE, bool)
    block_mask[block] = True
    n_block = int(np.prod(counts))

    reference, captum_seconds = captum_block(model, volume, block, args.batch_size)
    ours = occlusion_maps(model, volume[None], TARGET, mask=block_mask,
                          batch_size=args.batch_size)
    ours_auto = occlusion_maps(model, volume[None], TARGET, mask=block_mask)
    bf16 = occlusion_maps(model, volume[None], TARGET, mask=block_mask,
                          batch_size=args.batch_size, precision="bfloat16")
    full = occlusion_maps(model, volume[None], TARGET, mask=mask)
    difference = float(np.abs(ours.maps[0][block] - reference).max())
    bf16_error = float(np.abs(bf16.maps - ours.maps).max())

    captum_per_window = captum_seconds / n_block
    result = {
        **report,
        "threads": torch.get_num_threads(),
        "setup": {"model": "neuro120fp, random weights, batch-norm statistics of 4 random "
                           "volumes, last layer scaled to logits of standard deviation 2, "
                           "eval mode", "n_classes": N_CLASSES, "shape": SHAPE,
                  "voxel_mm": VOXEL_MM, "mask": "nilearn MNI152 brain mask (2 mm) resampled "
                  "to the grid (bids_affect.datasets.synthetic.brain_mask)",
                  "mask_voxels": int(mask.sum()), "window": WINDOW, "stride": WINDOW,
                  "baseline": 0.0, "target": TARGET, "dtype": "float32",
                  "windows_per_volume": grid.n_windows},
        "same_work": {
            "block_windows": counts, "block_voxels": [[s.start, s.stop] for s in block],
            "n_windows": n_block, "batch_size": args.batch_size,
            "captum_seconds": round(captum_seconds, 3),
            "ours_seconds": ours.info["seconds"],
            "speedup": round(captum_seconds / ours.info["seconds"], 1),
            "ours_auto_batch_seconds": ours_auto.info["seconds"],
            "ours_auto_batch_size": ours_auto.info["batch_size"],
            "speedup_auto_batch": round(captum_seconds / ours_auto.info["seconds"], 1),
            "max_abs_difference": difference,
            "max_abs_map_value": float(np.abs(reference).max()),
            "engine": ours.info["engine"],
        },
        "full_volume": {
            "ours_seconds": full.info["seconds"],
            "windows_computed": full.info["windows_computed"],
            "windows_skipped_outside_mask": full.info["windows_outside_mask"],
            "batch_size": full.info["batch_size"],
            "captum_estimated_seconds": round(captum_per_window * grid.n_windows, 1),
            "estimated_speedup": round(captum_per_window * grid.n_windows
                                       / full.info["seconds"], 1),
            "note": "captum's full-volume time is extrapolated from the block "
                    "(seconds per window x 28,800 windows)",
        },
        "bfloat16": {"seconds": bf16.info["seconds"],
                     "float32_seconds": ours.info["seconds"],
                     "slowdown_vs_float32": round(bf16.info["seconds"]
                                                  / ours.info["seconds"], 2),
                     "precision_check": bf16.info["precision_check"],
                     "max_abs_difference_to_float32": bf16_error,
                     "relative_difference_to_float32": bf16_error / float(
                         np.abs(ours.maps).max())},
    }
    print(json.dumps(result, indent=2))
    write_report(result, args.output)
    return result


if __name__ == "__main__":
    main()
