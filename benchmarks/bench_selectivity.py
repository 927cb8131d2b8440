"""Benchmark: seed 002's gain sweep with cached layer outputs against the plain sweep.

:func:`bids_affect.selectivity.gain_lesion` cuts the network at the
manipulated layer (``torch.fx``), runs the part below once per image and keeps
the layer's output; every ``alpha`` and channel draw then runs only the part
above on the validation and test images. The reference is the plain sweep
(``cache=False``): a forward hook scales the channels and the whole network
runs from the images for every ``alpha``, as a sweep written with hooks alone
does. Both runs get the same images (preprocessed tensors in memory: the
plain sweep would also decode every image again for every ``alpha`` when
streaming from disk, so this understates the gain), the same seeds, split,
heads and channel draws, and must give identical F1 tables (checked).

Cases: registry networks with random weights (``weights="random"``; trained
weights cost the same): VGG16 at 64x64 (``relu3_3`` and ``relu5_3``) and
AlexNet at 128x128 (``relu2`` and ``relu5``). Images: 16 per category, grey
noise with a category-specific colour tint. The channels are chosen as the
analysis does: the 16 kept channels of largest SI preferring "pleasant"
(:func:`~bids_affect.selectivity.selectivity_table` on the same images), 2
random draws of 16, alphas 0 to 5 by 0.5 plus the lesion (seed 002's step of
0.1 multiplies both sweeps' cost by about 5). The readout is seed 002's head
with 50 epochs at 1e-2 on standardised features: a random network's deep
features are tiny, and with the seed's 10 epochs at 1e-3 every F1 stays at its
starting value, which would make "identical F1 tables" an empty check. The
head's first fit (torch's optimiser import, several seconds) is done before
timing. One run of each sweep per case (the plain sweeps take minutes); wall
and CPU seconds (CPU seconds are less disturbed by other work on a shared
machine).

Run::

    python benchmarks/bench_selectivity.py [--quick] [--output benchmarks/results/selectivity.json]

``--quick`` runs the AlexNet cases only.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

# benchmarks/ is sys.path[0] when this script runs.
from _common import machine, write_report

from bids_affect.image_sets import TensorImages
from bids_affect.models.image import create_image_network, image_network_entry
from bids_affect.selectivity import (
    ReadoutHead,
    channel_responses,
    gain_lesion,
    registry_layers,
    selectivity_table,
)

CASES = (("vgg16", 64, "relu3_3"), ("vgg16", 64, "relu5_3"),
         ("alexnet", 128, "relu2"), ("alexnet", 128, "relu5"))
QUICK = ("alexnet",)
CATEGORIES = ("pleasant", "neutral", "unpleasant")
N_PER_CATEGORY = 16
ALPHAS = tuple(float(a) for a in np.arange(0, 5.01, 0.5))
N_RANDOM = 2
N_CHANNELS = 16
SEED = 2026
DEFAULT_OUTPUT = Path(__file__).parent / "results" / "selectivity.json"


def make_images(network: str, size: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """Tinted noise images, normalised as the network expects."""
    rng = np.random.default_rng(seed)
    codes = np.repeat(np.arange(3), N_PER_CATEGORY)
    pixels = 0.5 + 0.15 * rng.standard_normal((len(codes), 3, size, size))
    tint = rng.uniform(0, 0.1, size=(len(codes), 3, 1, 1))
    tint[np.arange(len(codes)), codes] += 0.1
    pixels = np.clip(pixels + tint, 0, 1)
    preprocessing = image_network_entry(network).preprocessing
    mean = np.asarray(preprocessing.mean).reshape(1, 3, 1, 1) / (255.0 / preprocessing.scale)
    std = np.asarray(preprocessing.std).reshape(1, 3, 1, 1) / (255.0 / preprocessing.scale)
    images = (pixels - mean) / std
    return torch.tensor(images, dtype=torch.float32), np.asarray(CATEGORIES)[codes]


def timed(function):
    wall, cpu = time.perf_counter(), time.process_time()
    result = function()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def bench_case(network_name: str, size: int, layer: str) -> dict:
    network = create_image_network(network_name, weights="random", random_state=SEED)
    module = registry_layers(network_name, network, [layer])[layer]
    images, categories = make_images(network_name, size, SEED)
    source = TensorImages(images, batch_size=32)
    table = selectivity_table(channel_responses(network, {layer: module}, source), categories)
    chosen = table[table["kept"] & (table["preferred"] == "pleasant")].nsmallest(N_CHANNELS,
                                                                               "rank")
    channels = {"pleasant": chosen["channel"].to_numpy()}
    head = ReadoutHead(learning_rate=1e-2, epochs=50, standardize=True)

    def run(cache: bool):
        return gain_lesion(network, module, source, categories, channels, alphas=ALPHAS,
                           n_random=N_RANDOM, head=head, random_state=SEED, batch_size=32,
                           cache=cache)

    cached, cached_wall, cached_cpu = timed(lambda: run(True))
    plain, plain_wall, plain_cpu = timed(lambda: run(False))
    same = (cached.f1.equals(plain.f1) and cached.curves.equals(plain.curves))
    if not same:
        merged = cached.curves.merge(plain.curves, on=["category", "channels", "repeat",
                                                        "alpha"], suffixes=("", "_plain"))
        differing = int((merged["f1_test"] != merged["f1_test_plain"]).sum()
                        + (merged["f1_validation"] != merged["f1_validation_plain"]).sum())
    else:
        differing = 0
    summary = cached.summary.iloc[0]
    distinct = int(cached.curves["f1_test"].round(6).nunique())
    return {
        "network": network_name, "input_size": size, "layer": layer,
        "n_images": len(images), "n_evaluated": len(cached.split["validation"])
        + len(cached.split["test"]), "alphas": len(ALPHAS), "channel_sets": 1 + N_RANDOM,
        "cached_used_split": bool(cached.cached),
        "cached_wall_s": round(cached_wall, 3), "plain_wall_s": round(plain_wall, 3),
        "cached_cpu_s": round(cached_cpu, 3), "plain_cpu_s": round(plain_cpu, 3),
        "speedup_wall": round(plain_wall / cached_wall, 2),
        "ratio_cached_to_plain_wall": round(cached_wall / plain_wall, 4),
        "ratio_cached_to_plain_cpu": round(cached_cpu / plain_cpu, 4),
        "same_f1_tables": bool(same), "differing_f1_values": differing,
        "distinct_f1_test_values": distinct, "n_selective_channels": int(len(chosen)),
        "f1_original": round(float(summary["original"]), 4),
        "f1_enhanced": round(float(summary["enhanced"]), 4),
        "f1_lesioned": round(float(summary["lesioned"]), 4),
        "f1_random_enhanced": round(float(summary["random_enhanced"]), 4),
        "f1_random_lesioned": round(float(summary["random_lesioned"]), 4),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="AlexNet cases only")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    report = machine(("bids_affect", "numpy", "torch", "scikit-learn"))
    report["threads"] = torch.get_num_threads()
    report["setup"] = {
        "weights": "random (registry initialisation, seed 2026)",
        "images": f"{N_PER_CATEGORY} per category, tinted noise, preprocessed tensors in memory",
        "selective_channels": f"the {N_CHANNELS} kept channels of largest SI preferring "
                              "'pleasant' on the same images",
        "random_draws": N_RANDOM, "alphas": list(ALPHAS), "lesion": True,
        "readout": "ReadoutHead(learning_rate=1e-2, epochs=50, standardize=True), batch 128",
        "batch_size": 32,
    }
    # The optimiser's first use imports torch._dynamo (seconds): not part of either sweep.
    ReadoutHead(epochs=1).fit(np.zeros((4, 2), dtype=np.float32), [0, 1, 0, 1])
    report["timing"] = ("one run per sweep; speedup_wall = plain / cached wall seconds; "
                        "ratio_cached_to_plain_* below 1: the cached sweep is faster")
    report["cases"] = []
    for network, size, layer in CASES:
        if args.quick and network not in QUICK:
            continue
        record = bench_case(network, size, layer)
        report["cases"].append(record)
        print(f"{network:8s} {size:4d}px {layer:8s} cached {record['cached_wall_s']:8.2f} s  "
              f"plain {record['plain_wall_s']:8.2f} s  speedup {record['speedup_wall']:6.2f}x  "
              f"(CPU {record['ratio_cached_to_plain_cpu']:.2f})  "
              f"same F1: {record['same_f1_tables']} "
              f"({record['distinct_f1_test_values']} distinct)", flush=True)
    report["all_same_f1"] = all(case["same_f1_tables"] for case in report["cases"])
    write_report(report, args.output)
    return 0 if report["all_same_f1"] else 1


if __name__ == "__main__":
    sys.exit(main())
