"""Shared fixtures: a seeded generator and small synthetic datasets."""

from __future__ import annotations

import os

import numpy as np
import pytest

# Tests run single-threaded BLAS/torch unless they say otherwise: results are
# then bit-for-bit reproducible and two test processes do not oversubscribe 2 cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")


@pytest.fixture
def rng() -> np.random.Generator:
    """A seeded random generator (tests never use global random state)."""
    return np.random.default_rng(20261125)


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory):
    """A small synthetic movie study with planted signal and fMRIPrep derivatives."""
    from bids_affect.datasets import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("synthetic") / "bids",
                                  n_subjects=2, n_runs=3, n_volumes=80, shape=(12, 14, 12),
                                  signal=1.5, seed=7)


@pytest.fixture(autouse=True)
def _restore_logging():
    """Undo the CLI's logging set-up after each test, so caplog sees every record."""
    import logging

    names = ("bids_affect", "py.warnings")
    saved = {name: (logging.getLogger(name).handlers[:], logging.getLogger(name).level,
                    logging.getLogger(name).propagate) for name in names}
    yield
    for name, (handlers, level, propagate) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers[:], logger.level, logger.propagate = handlers, level, propagate
    logging.captureWarnings(False)
