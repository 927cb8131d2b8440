"""Training throughput of ``neuro120fp`` on CPU: the peers' plain loop against each speed-up.

One training step = forward, backward and AdamW step on a batch of 16 volumes of
80x80x35 (seed 003's data), 5 classes, with 2 CPU threads (``--threads``).
Variants:

- ``plain``: the loop the peers used: eager, float32, default memory format,
  the C library's default allocator behaviour;
- ``channels_last``: model and inputs in ``torch.channels_last_3d``;
- ``bf16``: forward under ``torch.autocast("cpu", dtype=torch.bfloat16)``;
- ``compile``: ``torch.compile`` (its compilation, with an empty cache, is the
  first step's time; reported as ``compile_s``);
- ``reuse_memory``: :func:`bids_affect.models.training.reuse_freed_memory`;
- ``interop_1``: ``torch.set_num_interop_threads(1)``;
- ``threads_1``: one intra-op thread instead of ``--threads``;
- ``default``: what :func:`bids_affect.models.training.fit_network` does with
  its default options for a fit of this size (``train_one_epoch`` on batches
  read from an array, through :func:`~bids_affect.models.training.prepare_model`).

Each variant runs in its own process (allocator settings, thread pools and
compiled code do not leak between variants), all from the same initial weights
and the same batch: ``--warmup`` steps (the first one timed separately), then
``--steps`` timed steps, each timed alone; a variant slower than
``--max-seconds`` runs fewer warm-up and timed steps (at least one of each). Ratios are
throughputs relative to ``plain``, from the fastest step of each variant (on a
shared machine other processes add time, never remove it), with the ratios of
median steps and of CPU seconds alongside.

Results: after the first step every variant computes, from its weights, the
logits of a fixed probe batch (train-mode batch norm, dropout off); their
largest difference from ``plain``'s and the agreement of the predicted classes
say how much a variant changes what training computes.

Usage::

    python benchmarks/bench_cnn_throughput.py [--steps 4] [--warmup 2] [--threads 2]
        [--variants plain,compile,...] [--output benchmarks/results/cnn_throughput.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# benchmarks/ is sys.path[0] when this script runs.
from _common import machine, write_report

DEFAULT_OUTPUT = Path(__file__).parent / "results" / "cnn_throughput.json"
VARIANTS = ("plain", "channels_last", "bf16", "compile", "reuse_memory", "interop_1",
            "threads_1", "default")
SHAPE = (80, 80, 35)
N_CLASSES = 5
SEED = 2026
PROBE_SIZE = 8


# --------------------------------------------------------------------------- worker


def run_variant(variant: str, batch_size: int, threads: int, warmup: int, steps: int,
                max_seconds: float) -> dict:
    """Time training steps of one variant in this process; return the measurements."""
    import torch
    from torch import nn

    from bids_affect.models import training
    from bids_affect.models.cnn3d import create_architecture

    torch.set_num_threads(1 if variant == "threads_1" else threads)
    if variant == "interop_1":
        torch.set_num_interop_threads(1)
    rng = np.random.default_rng(SEED)
    volumes = rng.normal(size=(batch_size + PROBE_SIZE, *SHAPE)).astype(np.float32)
    labels = np.arange(batch_size + PROBE_SIZE) % N_CLASSES
    torch.manual_seed(SEED)
    model = create_architecture("neuro120fp", N_CLASSES, SHAPE)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    loss_fn = nn.CrossEntropyLoss()
    device = torch.device("cpu")
    memory = training.reuse_freed_memory(variant == "reuse_memory")

    if variant == "default":
        options = training.TrainingOptions()
        # A fit of the size this benchmark stands for: 300 training volumes.
        compiled = options.use_compile(300, SHAPE)
        memory = training.reuse_freed_memory(options.reuse_memory)
        step_model = training.prepare_model(model, device, channels_last=options.channels_last,
                                            compile=compiled)
        batches = training.VolumeBatches(volumes, np.arange(batch_size), batch_size,
                                         y=labels, channels_last=options.channels_last)

        def step() -> float:
            return training.train_one_epoch(step_model, batches, loss_fn, optimizer, device,
                                            autocast_dtype=options.autocast_dtype)
        settings = {"compile": compiled, "reuse_memory": options.reuse_memory,
                    "channels_last": options.channels_last, "precision": options.precision}
    else:
        channels_last = variant == "channels_last"
        step_model = training.prepare_model(model, device, channels_last=channels_last,
                                            compile=variant == "compile")
        inputs = torch.from_numpy(volumes[:batch_size]).unsqueeze(1)
        if channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last_3d)
        targets = torch.from_numpy(labels[:batch_size])
        autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if variant == "bf16"
                    else None)

        def step() -> float:
            step_model.train()
            optimizer.zero_grad(set_to_none=True)
            if autocast is None:
                logits = step_model(inputs)
            else:
                with autocast:
                    logits = step_model(inputs)
            loss = loss_fn(logits.float(), targets)
            loss.backward()
            optimizer.step()
            return loss.item()
        settings = {}

    def probe_logits() -> list[list[float]]:
        probe = copy.deepcopy(model).to(memory_format=torch.contiguous_format).train()
        for module in probe.modules():
            if isinstance(module, nn.Dropout):
                module.p = 0.0
        with torch.no_grad():
            return probe(torch.from_numpy(volumes[batch_size:]).unsqueeze(1)).tolist()

    walls, cpus, losses = [], [], []
    with memory as memory_active:
        started = time.perf_counter()
        losses.append(step())
        first_step = time.perf_counter() - started
        probe = probe_logits()
        for _ in range(warmup - 1):
            if time.perf_counter() - started > max_seconds:
                break  # a very slow variant: its first step was warm-up enough
            losses.append(step())
        budget_start = time.perf_counter()
        for index in range(steps):
            wall, cpu = time.perf_counter(), time.process_time()
            losses.append(step())
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
            if index + 1 < steps and time.perf_counter() - budget_start > max_seconds:
                break
    return {"first_step_s": first_step, "step_wall_s": walls, "step_cpu_s": cpus,
            "losses": losses, "probe_logits": probe, "reuse_memory_active": memory_active,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "threads": torch.get_num_threads(), "interop_threads":
            torch.get_num_interop_threads(), **({"settings": settings} if settings else {})}


# --------------------------------------------------------------------------- driver


def measure(variant: str, args: argparse.Namespace) -> dict:
    """Run one variant in a fresh process (fresh, empty compile cache)."""
    threads = 1 if variant == "threads_1" else args.threads
    with tempfile.TemporaryDirectory(prefix="bench-inductor-") as cache:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
               "TORCHINDUCTOR_CACHE_DIR": cache}
        command = [sys.executable, __file__, "--worker", variant,
                   "--batch-size", str(args.batch_size), "--threads", str(args.threads),
                   "--warmup", str(args.warmup), "--steps", str(args.steps),
                   "--max-seconds", str(args.max_seconds)]
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def summarise(results: dict[str, dict], batch_size: int) -> None:
    """Add throughputs, ratios to ``plain`` and differences from ``plain``'s results."""
    plain = results.get("plain", {})
    reference = np.asarray(plain.get("probe_logits", []))
    for record in results.values():
        if "error" in record:
            continue
        walls, cpus = record["step_wall_s"], record["step_cpu_s"]
        record["volumes_per_s"] = batch_size / min(walls)
        record["volumes_per_s_median"] = batch_size / statistics.median(walls)
        record["volumes_per_cpu_s"] = batch_size / statistics.median(cpus)
        record["extra_first_step_s"] = record["first_step_s"] - statistics.median(walls)
        if "step_wall_s" in plain:
            record["ratio"] = record["volumes_per_s"] / (batch_size / min(plain["step_wall_s"]))
            record["ratio_median"] = (record["volumes_per_s_median"]
                                      / (batch_size / statistics.median(plain["step_wall_s"])))
            record["ratio_cpu"] = (record["volumes_per_cpu_s"]
                                   / (batch_size / statistics.median(plain["step_cpu_s"])))
        if reference.size:
            logits = np.asarray(record["probe_logits"])
            record["probe_max_abs_diff"] = float(np.max(np.abs(logits - reference)))
            record["probe_max_rel_diff"] = float(np.max(np.abs(logits - reference))
                                                 / np.max(np.abs(reference)))
            record["probe_argmax_agreement"] = float(np.mean(
                logits.argmax(axis=1) == reference.argmax(axis=1)))
        record.pop("probe_logits")


def environment(args: argparse.Namespace) -> dict:
    return {
        **machine(("torch", "numpy", "bids_affect")),
        "threads": args.threads,
        "architecture": "neuro120fp",
        "input_shape": list(SHAPE),
        "batch_size": args.batch_size,
        "warmup_steps": args.warmup,
        "timed_steps": args.steps,
        "max_seconds_per_variant": args.max_seconds,
        "timing": ("volumes_per_s: batch / fastest timed step; ratio: that relative to "
                   "plain; ratio_median: the same from median steps; ratio_cpu: from CPU "
                   "seconds of all threads; extra_first_step_s: first step minus a median "
                   "step (compilation, one-off allocations)"),
        "results": ("probe_*: logits of 8 fixed volumes after the first step (train-mode "
                    "batch norm, dropout off) compared with plain's"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--max-seconds", type=float, default=120.0)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(run_variant(args.worker, args.batch_size, args.threads,
                                     max(args.warmup, 1), args.steps, args.max_seconds)))
        return 0
    variants = [name for name in args.variants.split(",") if name]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    report = environment(args)
    results = {}
    for variant in variants:
        results[variant] = measure(variant, args)
        record = results[variant]
        if "error" in record:
            print(f"{variant:14s} failed: {record['error']}", flush=True)
        else:
            print(f"{variant:14s} first step {record['first_step_s']:7.1f} s, steps "
                  f"{' '.join(f'{wall:.2f}' for wall in record['step_wall_s'])} s "
                  f"(CPU {statistics.median(record['step_cpu_s']):.2f} s), peak RSS "
                  f"{record['peak_rss_gb']:.1f} GB", flush=True)
    summarise(results, args.batch_size)
    report["variants"] = results
    if "default" in results and "ratio" in results["default"]:
        report["default_speedup"] = round(results["default"]["ratio"], 3)
        report["goal"] = 1.5
        report["goal_met"] = results["default"]["ratio"] >= 1.5
    for variant, record in results.items():
        if "ratio" in record:
            print(f"{variant:14s} {record['volumes_per_s']:.3f} vol/s  ratio "
                  f"{record['ratio']:.2f} (median {record['ratio_median']:.2f}, CPU "
                  f"{record['ratio_cpu']:.2f})  probe max |diff| "
                  f"{record['probe_max_abs_diff']:.2e}, argmax agreement "
                  f"{record['probe_argmax_agreement']:.2f}")
    write_report(report, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
