"""Synthetic BIDS datasets with planted signal, and the bundled demo."""

from bids_affect.datasets.synthetic import (
    DEFAULT_CLASSES,
    SyntheticParameters,
    example_runs,
    make_synthetic_dataset,
)

__all__ = ["DEFAULT_CLASSES", "SyntheticParameters", "example_runs", "make_synthetic_dataset"]
