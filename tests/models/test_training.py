"""Tests of the CNN training loop: devices, splits, batches, early stopping, resume."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest
import torch
from sklearn.utils.class_weight import compute_class_weight
from torch import nn

from bids_affect.exceptions import InputDataError, UsageError
from bids_affect.models import training
from bids_affect.models.training import (
    EarlyStopping,
    TrainingOptions,
    VolumeBatches,
    balanced_class_weights,
    blocked_validation_split,
    evaluate,
    fit_network,
    load_checkpoint,
    resolve_device,
    train_one_epoch,
)

SHAPE = (12, 14, 12)
#: Fast, deterministic settings for fits in tests (one thread: bit-for-bit results).
FAST = {"architecture": "deepemotion", "batch_size": 8, "compile": False, "num_threads": 1}
needs_no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present")


def planted_volumes(rng: np.random.Generator, n_samples: int = 60, n_classes: int = 3,
                    signal: float = 1.5, shape: tuple[int, int, int] = SHAPE
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Noise volumes (float32) with a class-specific blob of ``signal`` added; labels cycle."""
    labels = np.arange(n_samples) % n_classes
    volumes = rng.normal(size=(n_samples, *shape)).astype(np.float32)
    for label in range(n_classes):
        x = 1 + 3 * label
        volumes[labels == label, x:x + 3, 4:8, 4:8] += signal
    return volumes, labels


def parameters_equal(a: nn.Module, b: nn.Module) -> bool:
    """Every parameter and buffer identical, bit for bit."""
    state_a, state_b = a.state_dict(), b.state_dict()
    return state_a.keys() == state_b.keys() and all(
        torch.equal(state_a[name], state_b[name]) for name in state_a)


def losses(history: list[dict]) -> list[tuple]:
    """History without the timings."""
    return [tuple(v for k, v in sorted(record.items()) if k != "seconds") for record in history]


@pytest.fixture
def data(rng):
    volumes, labels = planted_volumes(rng)
    train, validation = blocked_validation_split(len(labels), validation_fraction=0.2,
                                                 validation_gap=2)
    return volumes, labels, train, validation


# --------------------------------------------------------------------------- devices, options


def test_resolve_device_cpu_and_auto():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected


@needs_no_gpu
def test_cuda_without_gpu_is_a_usage_error():
    with pytest.raises(UsageError, match="no CUDA GPU") as info:
        resolve_device("cuda")
    assert info.value.exit_code == 64
    assert "\n" not in str(info.value)


def test_unknown_device_lists_the_choices():
    with pytest.raises(UsageError, match="'auto', 'cpu', 'cuda'") as info:
        resolve_device("tpu")
    assert info.value.exit_code == 64


@pytest.mark.parametrize(("field", "value"), [
    ("architecture", "nope"), ("epochs", 0), ("epochs", 2.5), ("batch_size", True),
    ("learning_rate", 0.0), ("weight_decay", -1.0), ("class_weight", "even"),
    ("class_weight", (1.0, -2.0)), ("patience", 0), ("device", "gpu"), ("precision", "fp16"),
    ("compile", "yes"), ("channels_last", "no"), ("num_threads", 0),
])
def test_invalid_options_name_the_parameter(field, value):
    with pytest.raises(UsageError, match=field) as info:
        TrainingOptions(**{field: value}).check()
    assert info.value.exit_code == 64


def test_compile_auto_compiles_only_long_fits():
    options = TrainingOptions()
    assert options.use_compile(300, (80, 80, 35))
    assert not options.use_compile(60, SHAPE)
    assert TrainingOptions(compile=True).use_compile(10, SHAPE)
    assert not TrainingOptions(compile=False).use_compile(10**6, (80, 80, 35))


# --------------------------------------------------------------------------- split, weights


@pytest.mark.parametrize(("fraction", "gap"), [(0.15, 5), (0.3, 0), (0.2, 3), (0.5, 7)])
def test_blocked_split_keeps_validation_away_from_training(rng, fraction, gap):
    # Four runs of different lengths, interleaved in the array: only the order
    # within a run is temporal.
    groups = rng.permutation(np.repeat(["r1", "r2", "r3", "r4"], [40, 25, 33, 50]))
    train, validation = blocked_validation_split(len(groups), groups, fraction, gap)
    assert len(np.intersect1d(train, validation)) == 0
    for run in np.unique(groups):
        members = np.flatnonzero(groups == run)        # temporal order within the run
        position = {index: t for t, index in enumerate(members)}
        run_train = [position[i] for i in train if groups[i] == run]
        run_val = [position[i] for i in validation if groups[i] == run]
        assert run_val == list(range(len(members) - len(run_val), len(members)))
        assert len(run_val) == int(np.ceil(round(fraction * len(members), 9)))
        # No validation volume within `gap` volumes of a training volume of its run.
        assert min(run_val) - max(run_train) > gap
        assert len(run_train) == len(members) - len(run_val) - gap


def test_blocked_split_without_groups_and_without_validation():
    train, validation = blocked_validation_split(20, None, 0.25, 2)
    assert validation.tolist() == [15, 16, 17, 18, 19]
    assert train.tolist() == list(range(13))
    train, validation = blocked_validation_split(20, None, 0.0, 5)
    assert train.tolist() == list(range(20)) and validation.size == 0


def test_blocked_split_errors():
    with pytest.raises(InputDataError, match="validation_gap") as info:
        blocked_validation_split(8, None, 0.5, 4)
    assert info.value.exit_code == 65
    with pytest.raises(UsageError, match="validation_fraction"):
        blocked_validation_split(8, None, 1.0, 0)
    with pytest.raises(UsageError, match="validation_gap"):
        blocked_validation_split(8, None, 0.2, -1)
    with pytest.raises(InputDataError, match="groups"):
        blocked_validation_split(8, [0, 1], 0.2, 0)


def test_balanced_class_weights_match_scikit_learn(rng):
    codes = rng.integers(0, 4, size=50)
    expected = compute_class_weight("balanced", classes=np.arange(4), y=codes)
    np.testing.assert_allclose(balanced_class_weights(codes, 4), expected)
    with pytest.raises(InputDataError, match=r"\[2\]"):
        balanced_class_weights(np.array([0, 1, 1]), 3)


# --------------------------------------------------------------------------- batches, epochs


def test_volume_batches_shuffle_reproducibly_from_a_memmap(tmp_path, rng):
    volumes = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float32,
                                        shape=(11, 3, 4, 5))
    volumes[:] = rng.normal(size=volumes.shape)
    labels = np.arange(11) % 2
    indices = np.arange(1, 11)

    def served(seed):
        batches = VolumeBatches(volumes, indices, 4, y=labels,
                                generator=np.random.default_rng(seed))
        return [(x.numpy().copy(), t.numpy().copy()) for x, t in batches]

    first, again, other = served(1), served(1), served(2)
    assert [x.shape for x, _ in first] == [(4, 1, 3, 4, 5), (4, 1, 3, 4, 5), (2, 1, 3, 4, 5)]
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(first, again))
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(first, other))
    # Every index served once per epoch, with its own label.
    served_volumes = np.concatenate([x[:, 0] for x, _ in first])
    served_labels = np.concatenate([t for _, t in first])
    order = [int(np.flatnonzero((volumes == v).all(axis=(1, 2, 3)))[0]) for v in served_volumes]
    assert sorted(order) == indices.tolist()
    assert served_labels.tolist() == labels[order].tolist()


def test_train_one_epoch_and_evaluate_modes():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(27, 8), nn.Dropout(0.5), nn.Linear(8, 2))
    volumes = np.random.default_rng(0).normal(size=(10, 3, 3, 3)).astype(np.float32)
    labels = np.array([0, 1] * 5)
    batches = VolumeBatches(volumes, np.arange(10), 4, y=labels)
    loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    device = torch.device("cpu")
    before = [p.detach().clone() for p in model.parameters()]
    loss = train_one_epoch(model, batches, loss_fn, optimizer, device)
    assert model.training and np.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))

    result = evaluate(model, batches, device, loss_fn)
    assert not model.training
    assert result.logits.shape == (10, 2) and result.targets.tolist() == labels.tolist()
    with torch.no_grad():
        logits = model(torch.from_numpy(volumes).unsqueeze(1))
    np.testing.assert_allclose(result.logits, logits.numpy(), rtol=1e-6)
    assert result.loss == pytest.approx(float(loss_fn(logits, torch.from_numpy(labels))))
    again = evaluate(model, batches, device, loss_fn)   # eval mode: dropout is off
    assert np.array_equal(again.logits, result.logits)
    with pytest.raises(ValueError, match="fixed order"):
        evaluate(model, VolumeBatches(volumes, np.arange(10), 4, y=labels,
                                      generator=np.random.default_rng(0)), device)


def test_early_stopping_keeps_the_best_epoch():
    model = nn.Linear(2, 1)
    stopper = EarlyStopping(patience=2)
    for epoch, loss in enumerate([1.0, 0.5, 0.7, float("nan")], start=1):
        if epoch == 2:
            best = {k: v.clone() for k, v in model.state_dict().items()}
        stopper.update(loss, model, epoch)
        with torch.no_grad():
            model.weight.add_(1.0)
    assert stopper.stopped and stopper.best_epoch == 2 and stopper.best_loss == 0.5
    assert all(torch.equal(best[k], stopper.best_state[k]) for k in best)


# --------------------------------------------------------------------------- fitting


def test_fit_network_learns_and_keeps_the_best_validation_epoch(data, tmp_path):
    volumes, labels, train, validation = data
    result = fit_network(volumes, labels, train, validation, n_classes=3, seed=0,
                         options=TrainingOptions(epochs=4, patience=None, **FAST),
                         checkpoint_path=tmp_path / "fit.pt")
    history = result.history
    assert result.n_epochs == 4 and not result.model.training and not result.compiled
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    # Cosine schedule over the epochs, starting at the learning rate.
    np.testing.assert_allclose([r["learning_rate"] for r in history],
                               [1e-3 * (1 + np.cos(np.pi * e / 4)) / 2 for e in range(4)])
    val_losses = [r["val_loss"] for r in history]
    assert result.best_epoch == int(np.argmin(val_losses)) + 1
    checkpoint = load_checkpoint(tmp_path / "fit.pt")
    best = checkpoint["early_stopping"]["best_state"]
    assert all(torch.equal(best[k], v) for k, v in result.model.state_dict().items())
    assert checkpoint["architecture"] == "deepemotion" and checkpoint["n_classes"] == 3
    assert tuple(checkpoint["input_shape"]) == SHAPE and checkpoint["finished"]


def test_early_stopping_stops_on_noise(rng):
    volumes, labels = planted_volumes(rng, signal=0.0)
    train, validation = blocked_validation_split(60, None, 0.3, 2)
    result = fit_network(volumes, labels, train, validation, n_classes=3, seed=1,
                         options=TrainingOptions(epochs=12, patience=2, learning_rate=1e-2,
                                                 **FAST))
    assert result.n_epochs < 12
    assert result.n_epochs - result.best_epoch == 2


def test_fit_leaves_global_random_state_and_threads_alone(data):
    volumes, labels, train, validation = data
    # The legacy global NumPy state is what careless code would touch.
    numpy_state = np.random.get_state()  # noqa: NPY002
    torch_state = torch.get_rng_state()
    threads = torch.get_num_threads()
    fit_network(volumes, labels, train, validation, n_classes=3, seed=0,
                options=TrainingOptions(epochs=1, **{**FAST, "num_threads": 2}))
    assert torch.equal(torch.get_rng_state(), torch_state)
    after = np.random.get_state()  # noqa: NPY002
    assert all(np.array_equal(a, b) for a, b in zip(after, numpy_state))
    assert torch.get_num_threads() == threads


def test_reusing_freed_memory_changes_no_result(data):
    volumes, labels, train, validation = data
    fits = [fit_network(volumes, labels, train, validation, n_classes=3, seed=5,
                        options=TrainingOptions(epochs=2, reuse_memory=reuse, **FAST))
            for reuse in (True, False)]
    assert parameters_equal(fits[0].model, fits[1].model)


def test_seeds_decide_the_weights(data):
    volumes, labels, train, validation = data
    options = TrainingOptions(epochs=1, **FAST)
    a, b, c = (fit_network(volumes, labels, train, validation, n_classes=3, seed=seed,
                           options=options) for seed in (3, 3, 4))
    assert parameters_equal(a.model, b.model) and losses(a.history) == losses(b.history)
    assert not parameters_equal(a.model, c.model)


class Interrupted(Exception):
    """Stands for a kill after a given epoch."""


def interrupt_after(epoch: int):
    def on_epoch_end(done: int, record: dict) -> None:
        if done == epoch:
            raise Interrupted
    return on_epoch_end


@pytest.mark.parametrize("patience", [None, 1])
def test_resume_after_interruption_is_bit_for_bit(data, tmp_path, patience):
    volumes, labels, train, validation = data
    # Dropout, shuffling, the cosine schedule, AdamW moments and (patience=1)
    # early stopping all carry state across the interruption.
    options = TrainingOptions(epochs=5, patience=patience, **FAST)
    kwargs = {"n_classes": 3, "seed": 11, "options": options}
    uninterrupted = fit_network(volumes, labels, train, validation, **kwargs)

    path = tmp_path / "sub-01" / "checkpoint.pt"
    with pytest.raises(Interrupted):
        fit_network(volumes, labels, train, validation, checkpoint_path=path,
                    on_epoch_end=interrupt_after(2), **kwargs)
    assert load_checkpoint(path)["epoch"] == 2
    resumed = fit_network(volumes, labels, train, validation, checkpoint_path=path, **kwargs)
    assert resumed.resumed_epochs == 2
    assert parameters_equal(uninterrupted.model, resumed.model)
    assert losses(uninterrupted.history) == losses(resumed.history)
    assert resumed.best_epoch == uninterrupted.best_epoch

    # A finished checkpoint is only read back.
    again = fit_network(volumes, labels, train, validation, checkpoint_path=path, **kwargs)
    assert again.resumed_epochs == again.n_epochs
    assert parameters_equal(uninterrupted.model, again.model)


def test_unseeded_fit_resumes_with_its_own_seed(data, tmp_path):
    volumes, labels, train, validation = data
    kwargs = {"n_classes": 3, "seed": None, "options": TrainingOptions(epochs=3, **FAST),
              "checkpoint_path": tmp_path / "c.pt"}
    with pytest.raises(Interrupted):
        fit_network(volumes, labels, train, validation, on_epoch_end=interrupt_after(1),
                    **kwargs)
    seed = load_checkpoint(tmp_path / "c.pt")["seed"]
    resumed = fit_network(volumes, labels, train, validation, **kwargs)
    assert resumed.seed == seed and resumed.resumed_epochs == 1
    reference = fit_network(volumes, labels, train, validation,
                            **{**kwargs, "seed": seed, "checkpoint_path": None})
    assert parameters_equal(reference.model, resumed.model)


def test_checkpoint_of_another_fit_is_ignored(data, tmp_path, caplog):
    volumes, labels, train, validation = data
    path = tmp_path / "c.pt"
    options = TrainingOptions(epochs=2, **FAST)
    with pytest.raises(Interrupted):
        fit_network(volumes, labels, train, validation, n_classes=3, seed=1, options=options,
                    checkpoint_path=path, on_epoch_end=interrupt_after(1))
    changed = volumes.copy()
    changed[0] += 1.0   # the first sample is always hashed
    with caplog.at_level(logging.INFO, logger="bids_affect.models.training"):
        fresh = fit_network(changed, labels, train, validation, n_classes=3, seed=1,
                            options=options, checkpoint_path=path)
    assert fresh.resumed_epochs == 0 and "another fit" in caplog.text
    reference = fit_network(changed, labels, train, validation, n_classes=3, seed=1,
                            options=options)
    assert parameters_equal(fresh.model, reference.model)
    # Another seed is another fit too; the checkpoint now holds the finished fit above.
    other = fit_network(changed, labels, train, validation, n_classes=3, seed=2,
                        options=options, checkpoint_path=path)
    assert other.resumed_epochs == 0


def test_unreadable_checkpoint_is_ignored(data, tmp_path):
    volumes, labels, train, validation = data
    path = tmp_path / "c.pt"
    path.write_bytes(b"not a checkpoint")
    result = fit_network(volumes, labels, train, validation, n_classes=3, seed=1,
                         options=TrainingOptions(epochs=1, **FAST), checkpoint_path=path)
    assert result.resumed_epochs == 0 and load_checkpoint(path)["epoch"] == 1


def test_failed_compilation_falls_back_to_eager_training(data, monkeypatch):
    volumes, labels, train, validation = data

    class NoCompiler(nn.Module):
        """What torch.compile returns when no C++ compiler is found: fails when called."""

        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, inputs):
            raise torch._dynamo.exc.TorchDynamoException("no C++ compiler")

    monkeypatch.setattr(training.torch, "compile", lambda model, **kwargs: NoCompiler(model))
    kwargs = {"n_classes": 3, "seed": 2}
    with pytest.warns(RuntimeWarning, match="torch.compile failed"):
        fallback = fit_network(volumes, labels, train, validation,
                               options=TrainingOptions(epochs=2, **{**FAST, "compile": True}),
                               **kwargs)
    assert not fallback.compiled
    eager = fit_network(volumes, labels, train, validation,
                        options=TrainingOptions(epochs=2, **FAST), **kwargs)
    assert parameters_equal(fallback.model, eager.model)


@pytest.mark.slow
# Raised by torch's own modules that inductor imports.
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_compiled_training_matches_eager_training(data):
    """torch.compile (about a minute to compile here) changes results only by rounding."""
    volumes, labels, train, validation = data
    fits = {}
    for compiled in (False, True):
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # no silent fallback
            fits[compiled] = fit_network(
                volumes, labels, train, validation, n_classes=3, seed=4,
                options=TrainingOptions(epochs=2, **{**FAST, "compile": compiled}))
    assert fits[True].compiled
    for a, b in zip(fits[False].history, fits[True].history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)
    batches = VolumeBatches(volumes, np.arange(len(volumes)), 16)
    eager, compiled = (training.forward_batches(fits[c].model, batches, torch.device("cpu"))
                       for c in (False, True))
    np.testing.assert_allclose(compiled, eager, rtol=1e-3, atol=1e-3)
    assert np.array_equal(compiled.argmax(axis=1), eager.argmax(axis=1))


def test_a_single_last_training_sample_joins_the_previous_batch():
    from bids_affect.models.cnn3d import create_architecture
    from bids_affect.models.training import VolumeBatches

    X = np.zeros((9, 8, 8, 8), np.float32)
    batches = VolumeBatches(X, np.arange(9), 4, y=np.zeros(9, int),
                            generator=np.random.default_rng(0))
    sizes = [len(x) for x, _ in batches]
    assert sizes == [4, 5] and len(batches) == 2
    # neuro120fp's 1x1x1 feature maps cannot be batch-normalised over one sample
    model = create_architecture("neuro120fp", 2, (8, 8, 8)).train()
    for inputs, _ in batches:
        model(inputs)
