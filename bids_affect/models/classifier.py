"""The 3D CNN as a scikit-learn classifier of volumes.

:class:`CNN3DClassifier` follows scikit-learn's estimator contract: ``__init__``
only stores its arguments, ``fit`` validates its inputs, builds a fresh network
from the architecture registry (:mod:`bids_affect.models.cnn3d`), trains it with
:func:`bids_affect.models.training.fit_network` and learns attributes ending in
``_``; every other method checks that the estimator is fitted. Inputs are
volumes, shape ``(n_samples, X, Y, Z)`` (or ``(n_samples, 1, X, Y, Z)``), as
float32 arrays or memory maps; they are read batch by batch, never copied whole.

Early stopping uses an inner validation split that is blocked in time
(:func:`~bids_affect.models.training.blocked_validation_split`): samples are
expected in temporal order (runs in order, volumes in order within a run), and
the last ``validation_fraction`` of each run (``groups``) is held out with a gap
of ``validation_gap`` volumes before it, so validation volumes never neighbour
training volumes. A class whose samples all fall in those held-out blocks (a
rare class at the end of a run, which a circular shift of the labels can put
there) is treated as missing, as a decoder treats a class absent from its
training fold: the network is trained without it and gives it probability 0
(``untrained_classes_``, with a warning).

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> X = rng.normal(size=(40, 8, 8, 8)).astype(np.float32)
>>> y = np.repeat(["fear", "joy"], 20)
>>> X[y == "joy", 2:5, 2:5, 2:5] += 2.0
>>> clf = CNN3DClassifier(architecture="deepemotion", epochs=3, validation_gap=1,
...                       random_state=0).fit(X, y)
>>> clf.predict_proba(X[:3]).shape, clf.classes_.tolist()
((3, 2), ['fear', 'joy'])
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.special import softmax
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted, column_or_1d

from bids_affect.__about__ import __version__
from bids_affect._utils.docs import fill_doc
from bids_affect.exceptions import InputDataError, UsageError
from bids_affect.io.derivatives import write_torch
from bids_affect.models.cnn3d import VolumeClassifier, create_architecture, with_all_classes
from bids_affect.models.runtime import resolve_device, reuse_freed_memory, torch_threads
from bids_affect.models.training import (
    TrainingOptions,
    VolumeBatches,
    blocked_validation_split,
    fit_network,
    forward_batches,
)

MODEL_FORMAT = "bids_affect.CNN3DClassifier"
MODEL_VERSION = 1

#: Volumes per block when inputs are checked for NaN and infinite values.
_FINITE_CHECK_BLOCK = 64


def check_volumes(X: Any, name: str = "X") -> np.ndarray:
    """``X`` as an array of volumes ``(n, X, Y, Z)`` (a view when possible), validated.

    Accepts ``(n, X, Y, Z)`` and ``(n, 1, X, Y, Z)`` arrays and memory maps of
    real numbers; anything else raises :class:`InputDataError` (exit 65) naming
    the shape or value received. Memory maps are scanned for NaN and infinite
    values block by block, never loaded whole.

    Examples
    --------
    >>> check_volumes(np.zeros((2, 1, 4, 5, 6), dtype=np.float32)).shape
    (2, 4, 5, 6)
    """
    volumes = X if isinstance(X, np.ndarray) else np.asarray(X, dtype=np.float32)
    if volumes.ndim == 5 and volumes.shape[1] == 1:
        volumes = volumes.reshape((volumes.shape[0], *volumes.shape[2:]))
    if volumes.ndim != 4 or volumes.shape[0] < 1 or min(volumes.shape) < 1:
        raise InputDataError(f"expected volumes of shape (n_samples, X, Y, Z) or "
                             f"(n_samples, 1, X, Y, Z), got shape {volumes.shape}", path=name)
    if not (np.issubdtype(volumes.dtype, np.floating) or np.issubdtype(volumes.dtype, np.integer)):
        raise InputDataError(f"expected real numbers (float32 preferred), got dtype "
                             f"{volumes.dtype}", path=name)
    for start in range(0, len(volumes), _FINITE_CHECK_BLOCK):
        if not np.isfinite(volumes[start:start + _FINITE_CHECK_BLOCK]).all():
            raise InputDataError("contains NaN or infinite values", path=name,
                                 fix="clean the samples (masking, confound regression) first")
    return volumes


def _seed_from(random_state: Any) -> int | None:
    """An integer seed from ``random_state`` (None stays None: drawn at fit time)."""
    if random_state is None:
        return None
    if isinstance(random_state, int | np.integer) and not isinstance(random_state, bool):
        if random_state < 0:
            raise UsageError(f"must be None or an integer >= 0, got {random_state}",
                             path="random_state")
        return int(random_state)
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(np.iinfo(np.int32).max))
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(2**63))
    raise UsageError(f"must be None, an integer, a numpy RandomState or Generator, got "
                     f"{random_state!r}", path="random_state")


def _to_python(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _names(labels: np.ndarray) -> list:
    """Class labels as plain Python values, for messages (``['joy']``, not ``np.str_``)."""
    return [_to_python(label) for label in labels]


@fill_doc
class CNN3DClassifier(ClassifierMixin, BaseEstimator):
    """A 3D CNN from the architecture registry, trained as a scikit-learn classifier.

    Parameters
    ----------
    %(training_options)s
    validation_fraction : float
        Fraction of each run held out, at its end, for early stopping
        (default 0.15); 0 trains all ``epochs`` on every sample.
    validation_gap : int
        Samples left out of training before each held-out block (default 5:
        10 s at TR 2 s, the span of a BOLD response).
    checkpoint_path : path-like or None
        Checkpoint written after every epoch; a killed fit given the same path,
        data and parameters resumes where it stopped and ends with the same
        weights. None (default): no checkpoint.
    random_state : int, numpy RandomState or Generator, or None
        Seeds weight initialisation, dropout and shuffling; None (default)
        draws a seed at fit time (kept in ``random_seed_``).

    Attributes
    ----------
    classes_ : numpy.ndarray
        Class labels, sorted (every class of ``y``).
    untrained_classes_ : numpy.ndarray
        Classes of ``y`` whose samples all fell in the held-out validation
        block (a rare class at the end of a run): the network was trained
        without them and gives them probability 0, as a decoder gives a class
        absent from its training fold. Usually empty; a warning names them.
    network_ : VolumeClassifier
        The trained network (weights of the best validation epoch), in eval mode.
    history_ : list of dict
        One record per epoch: ``epoch``, ``train_loss``, ``learning_rate``,
        ``val_loss``, ``val_balanced_accuracy`` (with a validation set), ``seconds``.
    n_epochs_ : int
        Epochs trained (fewer than ``epochs`` after early stopping).
    best_epoch_ : int or None
        Epoch whose weights were kept (None without a validation set).
    input_shape_ : tuple of int
        Shape ``(X, Y, Z)`` of the volumes.
    random_seed_ : int
        The seed used.
    compiled_ : bool
        Whether training ran through ``torch.compile``.

    Examples
    --------
    >>> from sklearn.base import clone
    >>> clone(CNN3DClassifier(epochs=5)).get_params()["epochs"]
    5
    """

    def __init__(self, architecture: str = "neuro120fp", epochs: int = 30,
                 batch_size: int = 16, learning_rate: float = 1e-3,
                 weight_decay: float = 1e-4,
                 class_weight: str | Mapping[Any, float] | None = "balanced",
                 validation_fraction: float = 0.15, validation_gap: int = 5,
                 patience: int | None = 5, device: str = "auto", precision: str = "fp32",
                 channels_last: bool = False, compile: str | bool = "auto",
                 reuse_memory: bool = True, num_threads: int | None = None,
                 checkpoint_path: str | os.PathLike | None = None,
                 random_state: int | np.random.RandomState | np.random.Generator | None = None):
        self.architecture = architecture
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.class_weight = class_weight
        self.validation_fraction = validation_fraction
        self.validation_gap = validation_gap
        self.patience = patience
        self.device = device
        self.precision = precision
        self.channels_last = channels_last
        self.compile = compile
        self.reuse_memory = reuse_memory
        self.num_threads = num_threads
        self.checkpoint_path = checkpoint_path
        self.random_state = random_state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # Inputs are volumes (n, X, Y, Z): scikit-learn's 2D checks do not apply.
        tags.input_tags.two_d_array = False
        tags.non_deterministic = self.random_state is None
        return tags

    # ------------------------------------------------------------------ fitting

    def _training_options(self, classes: np.ndarray | None = None) -> TrainingOptions:
        """The parameters as checked :class:`TrainingOptions` (class weights by code)."""
        class_weight = self.class_weight
        if isinstance(class_weight, Mapping):
            if classes is None:
                classes = np.asarray(list(class_weight))
            unknown = set(map(_to_python, class_weight)) - set(map(_to_python, classes))
            if unknown:
                raise UsageError(f"names classes absent from y: {sorted(map(str, unknown))}",
                                 path="class_weight", fix=f"use labels of {classes.tolist()}")
            class_weight = tuple(float(class_weight.get(label, 1.0)) for label in classes)
        elif class_weight not in ("balanced", None):
            raise UsageError(f"must be 'balanced', None or a mapping class -> weight, got "
                             f"{class_weight!r}", path="class_weight")
        return TrainingOptions(
            architecture=self.architecture, epochs=self.epochs, batch_size=self.batch_size,
            learning_rate=self.learning_rate, weight_decay=self.weight_decay,
            class_weight=class_weight, patience=self.patience, device=self.device,
            precision=self.precision, channels_last=self.channels_last, compile=self.compile,
            reuse_memory=self.reuse_memory, num_threads=self.num_threads).check()

    def fit(self, X: np.ndarray, y: np.ndarray,
            groups: np.ndarray | None = None) -> CNN3DClassifier:
        """Train a fresh network on volumes ``X`` with labels ``y``.

        Parameters
        ----------
        X : numpy.ndarray or numpy.memmap
            Volumes, ``(n_samples, X, Y, Z)`` or ``(n_samples, 1, X, Y, Z)``,
            in temporal order within each run.
        y : array-like of shape (n_samples,)
            Class labels (at least two classes).
        groups : array-like of shape (n_samples,), optional
            Run of each sample; the validation block is taken at the end of each.

        Returns
        -------
        self

        Examples
        --------
        >>> X = np.random.default_rng(0).normal(size=(30, 6, 6, 6)).astype(np.float32)
        >>> clf = CNN3DClassifier(architecture="deepemotion", epochs=1, validation_gap=1)
        >>> clf.fit(X, np.arange(30) % 2).n_epochs_
        1
        """
        self._training_options()  # parameter errors first, before reading data
        volumes = check_volumes(X)
        labels = column_or_1d(np.asarray(y), warn=True)
        if len(labels) != len(volumes):
            raise InputDataError(f"has {len(labels)} labels for {len(volumes)} volumes",
                                 path="y", fix="give one label per volume")
        classes, codes = np.unique(labels, return_inverse=True)
        if len(classes) < 2:
            raise InputDataError(f"a classifier needs at least 2 classes, y has "
                                 f"{len(classes)} ({classes.tolist()})", path="y",
                                 fix="give samples of two or more classes")
        options = self._training_options(classes)
        train, validation = blocked_validation_split(len(volumes), groups,
                                                     self.validation_fraction,
                                                     self.validation_gap)
        trained = np.unique(codes[train])
        untrained = np.setdiff1d(np.arange(len(classes)), trained)
        if len(trained) < 2:
            raise InputDataError(
                f"only classes {_names(classes[trained])} have training samples once the "
                f"last validation_fraction={self.validation_fraction} of each run is held "
                f"out (validation_gap={self.validation_gap})", path="y",
                fix="give more samples, pass groups (runs), or lower validation_fraction")
        if len(untrained):
            warnings.warn(
                f"classes {_names(classes[untrained])} have no training sample once the "
                f"last validation_fraction={self.validation_fraction} of each run is held "
                f"out; they are treated as missing: the network is trained without them "
                f"and gives them probability 0 (see untrained_classes_)", UserWarning,
                stacklevel=2)
            # Train on the other classes only; validate on their held-out samples.
            remap = np.full(len(classes), -1)
            remap[trained] = np.arange(len(trained))
            codes = remap[codes]
            validation = validation[codes[validation] >= 0]
            if isinstance(options.class_weight, tuple):
                options = dataclasses.replace(options, class_weight=tuple(
                    options.class_weight[c] for c in trained))
        result = fit_network(volumes, codes, train, validation, n_classes=len(trained),
                             options=options, seed=_seed_from(self.random_state),
                             checkpoint_path=self.checkpoint_path)
        self.classes_ = classes
        self.untrained_classes_ = classes[untrained]
        self.network_ = (with_all_classes(result.model, trained, len(classes)).eval()
                         if len(untrained) else result.model)
        self.history_ = result.history
        self.n_epochs_ = result.n_epochs
        self.best_epoch_ = result.best_epoch
        self.input_shape_ = tuple(int(n) for n in volumes.shape[1:])
        self.random_seed_ = result.seed
        self.compiled_ = result.compiled
        return self

    # ------------------------------------------------------------------ prediction

    def _forward(self, X: np.ndarray, method: str = "forward") -> np.ndarray:
        check_is_fitted(self)
        volumes = check_volumes(X)
        if tuple(volumes.shape[1:]) != self.input_shape_:
            raise InputDataError(f"volumes of shape {tuple(volumes.shape[1:])}, but the "
                                 f"network was trained on {self.input_shape_}", path="X")
        device = next(self.network_.parameters()).device
        autocast_dtype = torch.bfloat16 if self.precision == "bf16" else None
        with (torch_threads(self.num_threads),
              reuse_freed_memory(self.reuse_memory and device.type == "cpu")):
            return forward_batches(self.network_,
                                   VolumeBatches(volumes, np.arange(len(volumes)),
                                                 self.batch_size),
                                   device, method=method, autocast_dtype=autocast_dtype)

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """Logits, shape ``(n_samples, n_classes)``, columns in the order of ``classes_``.

        Examples
        --------
        >>> X = np.random.default_rng(0).normal(size=(30, 6, 6, 6)).astype(np.float32)
        >>> clf = CNN3DClassifier(architecture="deepemotion", epochs=1, validation_gap=1)
        >>> clf.fit(X, np.arange(30) % 3).decision_function(X[:2]).shape
        (2, 3)
        """
        return self._forward(X).astype(np.float64)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities (softmax of the logits), columns in the order of ``classes_``.

        Examples
        --------
        >>> X = np.random.default_rng(0).normal(size=(30, 6, 6, 6)).astype(np.float32)
        >>> clf = CNN3DClassifier(architecture="deepemotion", epochs=1, validation_gap=1)
        >>> bool(np.allclose(clf.fit(X, np.arange(30) % 2).predict_proba(X).sum(axis=1), 1))
        True
        """
        return softmax(self.decision_function(X), axis=1)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """The most probable class of each volume.

        Examples
        --------
        >>> X = np.random.default_rng(0).normal(size=(30, 6, 6, 6)).astype(np.float32)
        >>> clf = CNN3DClassifier(architecture="deepemotion", epochs=1, validation_gap=1)
        >>> set(clf.fit(X, np.arange(30) % 2).predict(X)) <= {0, 1}
        True
        """
        logits = self._forward(X)  # checks fitting before classes_ is read
        return self.classes_[np.argmax(logits, axis=1)]

    def embed(self, X: np.ndarray) -> np.ndarray:
        """Penultimate features of each volume (``network_.embed``), for RSA; float32.

        Examples
        --------
        >>> X = np.random.default_rng(0).normal(size=(30, 6, 6, 6)).astype(np.float32)
        >>> clf = CNN3DClassifier(architecture="deepemotion", epochs=1, validation_gap=1)
        >>> clf.fit(X, np.arange(30) % 2).embed(X[:4]).shape
        (4, 128)
        """
        return self._forward(X, method="embed")

    # ------------------------------------------------------------------ persistence

    def _portable_params(self) -> dict[str, Any]:
        """Parameters as plain Python values (loadable with ``weights_only=True``)."""
        params = self.get_params(deep=False)
        if params["checkpoint_path"] is not None:
            params["checkpoint_path"] = os.fspath(params["checkpoint_path"])
        if not isinstance(params["random_state"], int | np.integer | None):
            params["random_state"] = None  # generator objects are not saved
        if isinstance(params["class_weight"], Mapping):
            params["class_weight"] = {_to_python(label): float(weight)
                                      for label, weight in params["class_weight"].items()}
        return {name: _to_python(value) for name, value in params.items()}

    def save(self, path: str | os.PathLike) -> Path:
        """Write the fitted estimator to ``path`` (a torch file), atomically.

        The file holds the parameters, the architecture, the classes, the input
        shape, the network's state dict, the history and the versions of torch
        and bids_affect; :meth:`load` rebuilds the estimator from it.

        Examples
        --------
        >>> import tempfile
        >>> X = np.random.default_rng(0).normal(size=(30, 6, 6, 6)).astype(np.float32)
        >>> clf = CNN3DClassifier(architecture="deepemotion", epochs=1, validation_gap=1)
        >>> path = clf.fit(X, np.arange(30) % 2).save(Path(tempfile.mkdtemp()) / "m.pt")
        >>> bool((CNN3DClassifier.load(path).predict(X) == clf.predict(X)).all())
        True
        """
        check_is_fitted(self)
        payload = {
            "format": MODEL_FORMAT, "version": MODEL_VERSION,
            "params": self._portable_params(), "architecture": self.architecture,
            "classes": self.classes_.tolist(), "input_shape": list(self.input_shape_),
            "untrained_classes": self.untrained_classes_.tolist(),
            "state_dict": {name: tensor.detach().cpu()
                           for name, tensor in self.network_.state_dict().items()},
            "history": self.history_, "n_epochs": self.n_epochs_,
            "best_epoch": self.best_epoch_, "random_seed": self.random_seed_,
            "compiled": self.compiled_,
            "versions": {"torch": str(torch.__version__), "bids_affect": __version__},
        }
        path = Path(path)
        return write_torch(path, payload)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | None = None) -> CNN3DClassifier:
        """A fitted estimator from a file written by :meth:`save`.

        Parameters
        ----------
        path : path-like
            The file.
        device : {"auto", "cpu", "cuda"}, optional
            Where to put the network; default: the saved ``device`` parameter.

        Examples
        --------
        >>> CNN3DClassifier.load("missing.pt")
        Traceback (most recent call last):
        ...
        bids_affect.exceptions.InputDataError: missing.pt: no such model file
        """
        payload = load_network_payload(path)
        params = dict(payload["params"])
        if device is not None:
            params["device"] = device
        estimator = cls(**params)
        classes = np.asarray(payload["classes"])
        input_shape = tuple(int(n) for n in payload["input_shape"])
        with torch.random.fork_rng(devices=[]):  # initial weights are overwritten anyway
            network: VolumeClassifier = create_architecture(payload["architecture"],
                                                            len(classes), input_shape)
        network.load_state_dict(payload["state_dict"])
        estimator.network_ = network.to(resolve_device(params["device"])).eval()
        estimator.classes_ = classes
        estimator.untrained_classes_ = np.asarray(payload.get("untrained_classes", []),
                                                  dtype=classes.dtype)
        estimator.input_shape_ = input_shape
        estimator.history_ = list(payload["history"])
        estimator.n_epochs_ = int(payload["n_epochs"])
        estimator.best_epoch_ = payload["best_epoch"]
        estimator.random_seed_ = payload["random_seed"]
        estimator.compiled_ = bool(payload["compiled"])
        return estimator


def load_network_payload(path: str | os.PathLike) -> dict[str, Any]:
    """The content of a file written by :meth:`CNN3DClassifier.save`, checked.

    Read with ``weights_only=True``: a model file cannot run code when loaded.

    Examples
    --------
    >>> load_network_payload("missing.pt")
    Traceback (most recent call last):
    ...
    bids_affect.exceptions.InputDataError: missing.pt: no such model file
    """
    path = Path(path)
    if not path.is_file():
        raise InputDataError("no such model file", path=path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise InputDataError(f"cannot read the model file ({type(err).__name__})",
                             path=path) from err
    if not (isinstance(payload, dict) and payload.get("format") == MODEL_FORMAT):
        raise InputDataError("not a CNN3DClassifier model file", path=path)
    if payload.get("version") != MODEL_VERSION:
        raise InputDataError(f"model file version {payload.get('version')} is not "
                             f"supported (expected {MODEL_VERSION})", path=path)
    return payload


def without_timing(record: Mapping[str, Any]) -> dict[str, Any]:
    """A record less its wall-clock seconds (outputs must not vary between equal runs).

    Examples
    --------
    >>> without_timing({"epoch": 1, "seconds": 2.5})
    {'epoch': 1}
    """
    return {key: value for key, value in record.items() if key != "seconds"}


def publishable_network(payload: Mapping[str, Any]) -> dict[str, Any]:
    """A saved CNN less what differs between equal runs: work-dir paths and timings."""
    return {**payload, "params": {**payload["params"], "checkpoint_path": None},
            "history": [without_timing(epoch) for epoch in payload["history"]]}


def load_fold_networks(paths: Sequence[str | os.PathLike], n_classes: int) -> list:
    """Each fold's trained CNN (eval mode), with outputs for all ``n_classes`` classes.

    A fold whose training samples lacked a class has no output for it;
    :func:`~bids_affect.models.cnn3d.with_all_classes` gives it one (probability 0).
    """
    networks = []
    for path in paths:
        estimator = CNN3DClassifier.load(path)
        networks.append(with_all_classes(estimator.network_, estimator.classes_,
                                         n_classes).eval())
    return networks
