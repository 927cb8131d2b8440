"""Shared parameter documentation: each parameter is described once, here.

Docstrings say ``%(key)s`` where a shared description belongs; :func:`fill_doc`
pastes ``DOCDICT[key]`` there and raises on a key it does not know, so a
mistyped placeholder fails at import time instead of reaching the docs (as
nilearn's ``fill_doc``).

Examples
--------
>>> @fill_doc
... def f(tr):
...     '''Parameters
...     ----------
...     %(tr)s
...     '''
>>> "Repetition time" in f.__doc__
True
>>> @fill_doc
... def g(x):
...     '''%(no_such_key)s'''
Traceback (most recent call last):
...
KeyError: "g's docstring names %(no_such_key)s, which bids_affect._utils.docs.DOCDICT lacks"
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TypeVar

Documented = TypeVar("Documented", bound=Callable)

_PLACEHOLDER = re.compile(r"%\((\w+)\)s")

#: Every shared parameter description, by key.
DOCDICT: dict[str, str] = {}

# ---------------------------------------------------------------- labels (io/annotations)
DOCDICT["events"] = """events : pandas.DataFrame
        One run's events (see :func:`read_events`): ``onset`` and ``duration`` in
        seconds from the start of the run, plus the columns the spec names."""
DOCDICT["spec"] = """spec : LabelSpec
        The label spec (see :func:`load_label_spec`)."""
DOCDICT["tr"] = """tr : float
        Repetition time in seconds."""
DOCDICT["n_volumes"] = """n_volumes : int
        Number of volumes of the run."""
DOCDICT["start_time"] = """start_time : float, default 0
        ``StartTime`` of the BOLD sidecar: volume ``i`` is acquired at
        ``i * tr + start_time``."""
DOCDICT["path"] = """path : pathlib.Path, optional
        The events file, named in messages."""
DOCDICT["run_events"] = """%(events)s
    %(spec)s
    %(tr)s
    %(n_volumes)s
    %(start_time)s
    %(path)s"""
DOCDICT["labels_by_run"] = """labels_by_run : mapping of str to numpy.ndarray
        One subject's labels per run (object arrays of class names or ``None``),
        keyed by a run name such as ``"run-1"``."""

# ---------------------------------------------------------------- CNN training (models/)
DOCDICT["training_options"] = """architecture : str
        Name of a registered architecture
        (:func:`bids_affect.models.cnn3d.list_architectures`).
    epochs : int
        Maximum number of passes over the training samples (default 30).
    batch_size : int
        Samples per mini-batch (default 16, as seed 003).
    learning_rate : float
        AdamW's initial learning rate (default 1e-3), decayed to 0 over
        ``epochs`` by a cosine schedule.
    weight_decay : float
        AdamW's decoupled weight decay (default 1e-4).
    class_weight : "balanced", None, or weights
        Loss weight of each class: ``"balanced"`` (default) weighs class *k* by
        ``n_train / (n_classes * n_train_k)``; None weighs all equally; or a
        mapping class label -> weight (the estimator; unlisted classes weigh 1)
        or one weight per class code (:class:`TrainingOptions`). The
        validation loss is weighted alike.
    patience : int or None
        Stop when the validation loss has not improved for this many epochs
        (default 5), then keep the weights of the best epoch; None trains all
        epochs (the best weights are still kept when there is a validation set).
    device : {"auto", "cpu", "cuda"}
        Where to train: "auto" (default) takes a CUDA GPU when there is one.
    precision : {"fp32", "bf16"}
        "fp32" (default), or bfloat16 autocast: faster on GPUs and on CPUs with
        bf16 instructions (AVX512-BF16, AMX), 2.7x slower on CPUs without.
    channels_last : bool
        Train in the ``channels_last_3d`` memory format (default False: no
        faster for ``neuro120fp`` on CPU, whose 3D depthwise convolutions
        train slowly in that layout).
    compile : "auto" or bool
        Train through ``torch.compile``: 1.1-1.2x faster on CPU, with less
        peak memory, after about 35 s of compilation per batch size (80x80x35,
        2 cores); results equal up to rounding. "auto" (default) compiles when
        epochs x training samples x voxels reaches
        ``COMPILE_AUTO_MIN_VOXEL_PASSES`` (about 5 minutes of training). Falls
        back to eager training, with a warning, when compilation fails (e.g.
        no C++ compiler).
    reuse_memory : bool
        Keep freed CPU memory in the process while training (default True; see
        :func:`reuse_freed_memory`): 2.1-2.5x faster on CPU, same results bit
        for bit, at the price of a higher peak of resident memory (11 GB
        instead of 6.5 for batches of 16 volumes of 80x80x35; 7 GB when
        compiled).
    num_threads : int or None
        Threads of torch's CPU operations while fitting (restored afterwards);
        None (default) keeps torch's setting (``OMP_NUM_THREADS``)."""

# ---------------------------------------------------------------- RDM comparisons (rsa, stats)
DOCDICT["method"] = """method : {"pearson", "spearman", "kendall_tau_a"}
        Correlation of the upper triangles (:data:`METHODS`). Spearman ranks
        with average ties; Kendall's tau-a has no tie correction."""
DOCDICT["permutation_test"] = """n_permutations : int
        Monte Carlo permutations (ignored when the test is exact). 0 skips the
        Monte Carlo test (p is NaN).
    alternative : {"greater", "less", "two-sided"}
        "greater": p is the fraction of permutations whose statistic is at
        least the observed one; "less": at most; "two-sided": at least as
        large in absolute value. The identity permutation always counts.
    exact : bool or None
        Enumerate all ``k!`` permutations. None: exact when ``k <= 8``
        (:data:`MAX_EXACT_CLASSES`), Monte Carlo above, where
        ``p = (1 + #extreme) / (1 + n_permutations)``. True is accepted up to
        ``k = 10``.
    random_state : int, numpy Generator or None
        Seed of the Monte Carlo permutations. The same integer draws the same
        permutations as ``skbio.stats.distance.mantel(..., seed=random_state)``.
    n_jobs : int
        Threads for large tests (more than 1e8 permuted entries, e.g. 1,000
        classes); -1 uses every available core. Results do not depend on it."""

# ---------------------------------------------------------------- permutation nulls (stats)
DOCDICT["runs"] = """runs : array-like
        Run of each sample (the unit of leave-one-run-out and of label shifts)."""
DOCDICT["min_shift_fraction"] = """min_shift_fraction : float
        The smallest shift, as a fraction of the run's length (default 0: every
        non-zero shift)."""


def fill_doc(function: Documented) -> Documented:
    """Paste :data:`DOCDICT` entries wherever ``function``'s docstring says ``%(key)s``.

    Raises
    ------
    KeyError
        The docstring names a key that :data:`DOCDICT` lacks.
    """
    def paste(match: re.Match) -> str:
        key = match.group(1)
        if key not in DOCDICT:
            raise KeyError(f"{function.__name__}'s docstring names %({key})s, which "
                           f"bids_affect._utils.docs.DOCDICT lacks")
        return DOCDICT[key]

    doc = function.__doc__ or ""
    while _PLACEHOLDER.search(doc):  # entries may hold placeholders themselves
        doc = _PLACEHOLDER.sub(paste, doc)
    function.__doc__ = doc
    return function
