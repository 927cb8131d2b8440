"""The bundled demo: a small synthetic movie study, analysed at both levels.

``bids_affect-demo [FOLDER]`` writes the demo dataset into ``FOLDER/bids``
(made by :func:`~bids_affect.datasets.make_synthetic_dataset` with planted
signal), then runs ``bids_affect FOLDER/bids FOLDER/derivatives participant
group`` with the demo's analyses; the group level ends with a table of each
subject's decoders (balanced accuracy, chance level, permutation p), and the
demo prints where the outputs are.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bids_affect.datasets.synthetic import make_synthetic_dataset

#: The demo dataset: 2 subjects, 3 runs of 5 minutes, a coarse MNI-like grid.
DEMO_DATASET = dict(n_subjects=2, n_runs=3, n_volumes=150, shape=(16, 19, 16), tr=2.0,
                    signal=2.0, noise=1.0, seed=2026, stimulus="movie", encoding_signal=2.0)

#: The demo's analyses: a ridge decoder (1,000 permutations), the small CNN of seeds
#: 001/004 with few epochs and permutations (each permutation retrains it; a real study
#: uses more), its occlusion maps, RSA, and encoding models of the demo's movie: its
#: frames through AlexNet's conv1 with random weights (no weights are downloaded; the
#: planted voxels follow the movie's luminance and contrast, which such a layer keeps).
DEMO_ARGUMENTS = ("--labels", "studyforrest-5", "--analyses", "decoding,occlusion,rsa,encoding",
                  "--models", "ridge,cnn-deepemotion", "--epochs", "10",
                  "--n-permutations-cnn", "3", "--occlusion-samples", "3",
                  "--occlusion-threshold", "0.5", "--top-k", "50",
                  "--feature-network", "alexnet", "--feature-layer", "conv1",
                  "--feature-weights", "random", "--encoding-permutations", "200",
                  "--random-seed", "2026")


def make_demo_dataset(folder: Path) -> Path:
    """Write (or reuse) the demo dataset in ``folder/bids``; return its root."""
    root = Path(folder) / "bids"
    if (root / "dataset_description.json").exists():
        return root
    return make_synthetic_dataset(root, **DEMO_DATASET)


def main(argv: list[str] | None = None) -> int:
    """Make the demo dataset and run participant and group levels on it."""
    from bids_affect.cli.run import main as bids_affect_main

    parser = argparse.ArgumentParser(
        prog="bids_affect-demo", description="Run bids_affect on its bundled demo dataset.")
    parser.add_argument("folder", nargs="?", type=Path, default=Path("bids_affect_demo"),
                        help="where the dataset, work and outputs go")
    parser.add_argument("extra", nargs=argparse.REMAINDER,
                        help="further bids_affect options (e.g. --nprocs 2)")
    args = parser.parse_args(argv)
    folder = args.folder.absolute()
    root = make_demo_dataset(folder)
    print(f"bids_affect-demo: dataset in {root}")
    output = folder / "derivatives"
    code = bids_affect_main([str(root), str(output), "participant", "group",
                             "-w", str(folder / "work"), *DEMO_ARGUMENTS, *args.extra])
    if code == 0:
        print(f"bids_affect-demo: outputs in {output}")
        print(f"bids_affect-demo: open {output / 'sub-01.html'} first (the group's: "
              f"{output / 'group.html'})")
    return code


if __name__ == "__main__":
    sys.exit(main())
