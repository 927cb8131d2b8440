"""Decoding with 3D CNNs through :func:`bids_affect.decoding.decode`: null, signal, resume.

Tiny volumes (6^3 or 8^3), the small ``deepemotion`` network, a few epochs, one
thread and fixed seeds: each fit takes a fraction of a second and every result
is reproducible bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest

from bids_affect.decoding import decode
from tests.helpers import run_until_killed
from tests.test_decoding import ar_noise, scene_labels

CNN = {"epochs": 3, "batch_size": 16, "num_threads": 1, "compile": False}


def null_volumes(seed: int = 4, n_runs: int = 3, n_per_run: int = 60, size: int = 6):
    """Scene-like labels and strongly autocorrelated noise volumes without any signal."""
    rng = np.random.default_rng(seed)
    labels, runs = scene_labels(n_runs, n_per_run, ["a", "b", "c"], rng, scene=(8, 20))
    X = ar_noise(len(labels), size**3, 0.95, rng).reshape(-1, size, size, size)
    return X, labels, runs


def planted_volumes(seed: int = 0, n_runs: int = 3, n_per_run: int = 40, size: int = 8):
    """Scene-like labels, AR noise, and a blob in a class-specific place of each volume."""
    rng = np.random.default_rng(seed)
    classes = ["a", "b", "c"]
    labels, runs = scene_labels(n_runs, n_per_run, classes, rng, scene=(6, 14))
    X = ar_noise(len(labels), size**3, 0.6, rng).reshape(-1, size, size, size)
    for k, name in enumerate(classes):
        X[labels == name, 2 * k:2 * k + 3, 2:6, 2:6] += 1.5
    return X, labels, runs


def test_cnn_on_null_data_is_inside_the_null_band_while_a_random_split_leaks():
    X, labels, runs = null_volumes()
    metrics = decode(X, labels, runs, model="cnn-deepemotion", n_permutations=19,
                     random_state=0, cnn_params=CNN).metrics
    low, high = metrics["null_band"]
    assert low <= metrics["balanced_accuracy"] <= high
    assert metrics["p_permutation"] > 0.1
    # Neighbouring volumes of a scene on both sides of a random split: an inflated score.
    assert metrics["random_split_balanced_accuracy"] > high + 0.2


def test_cnn_finds_planted_signal():
    X, labels, runs = planted_volumes()
    n_permutations = 19
    metrics = decode(X, labels, runs, model="cnn-deepemotion", n_permutations=n_permutations,
                     random_state=0, cnn_params={**CNN, "epochs": 6}, audit=False).metrics
    assert metrics["balanced_accuracy"] >= 0.7                     # chance: 1/3
    assert metrics["p_permutation"] == pytest.approx(1 / (n_permutations + 1))
    assert metrics["null_band"][1] < metrics["balanced_accuracy"] - 0.2
    assert 0.2 < metrics["chance_balanced_accuracy"] < 0.47


def test_rare_class_at_the_end_of_a_run_or_shifted_there_is_handled(caplog):
    # Class "c" has 6 early volumes of run 1: a shift can move them into the inner
    # validation block at the end of the run; in run 3 it ends the run from the start.
    rng = np.random.default_rng(0)
    rows = [np.array(["a", "b"] * 20, dtype=object) for _ in range(3)]
    rows[0][2:8] = "c"
    rows[2][-4:] = "c"
    labels, runs = np.concatenate(rows).astype(str), np.repeat([1, 2, 3], 40)
    X = rng.normal(size=(120, 6, 6, 6)).astype(np.float32)
    result = decode(X, labels, runs, model="cnn-deepemotion", n_permutations=30,
                    random_state=0, cnn_params={**CNN, "epochs": 1}, audit=False)
    assert len(result.null) == 30 and np.isfinite(result.null).all()
    folds = {fold["test"]: fold["missing_classes"] for fold in result.metrics["folds"]}
    # Testing run 1 leaves "c" only at the end of run 3: held out for validation.
    assert folds["1"] == ["c"] and folds["2"] == [] and folds["3"] == []
    assert "classes ['c'] have training samples only in the CNN's inner validation" \
        in caplog.text


def _counting_epochs(monkeypatch) -> list:
    from bids_affect.models import training

    calls = []
    real = training.train_one_epoch

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "train_one_epoch", counted)
    return calls


def test_decode_resumes_the_cnn_null_after_a_real_kill(tmp_path, monkeypatch):
    X, labels, runs = null_volumes(n_per_run=40)
    cnn = {**CNN, "epochs": 2, "patience": None}
    np.savez(tmp_path / "data.npz", X=X, labels=labels, runs=runs)
    checkpoints = tmp_path / "checkpoints"
    # 3 folds x 2 epochs observed, 2 permutations x 3 folds x 2 epochs: die in the third.
    run_until_killed(tmp_path, 3 * 2 + 2 * 3 * 2 + 3, f"""
        from bids_affect.decoding import decode
        data = np.load(sys.argv[1])
        decode(data["X"], data["labels"].tolist(), data["runs"], model="cnn-deepemotion",
               n_permutations=4, random_state=0, cnn_params={cnn!r},
               checkpoint_dir=sys.argv[2])
    """, tmp_path / "data.npz", checkpoints)
    finished = sorted(path.name for path in (checkpoints / "null").iterdir())
    assert finished == ["permutation-0001.json", "permutation-0002.json"]
    assert not (checkpoints / "audit.pt").exists()

    arguments = dict(model="cnn-deepemotion", n_permutations=4, random_state=0, cnn_params=cnn)
    epochs = _counting_epochs(monkeypatch)
    resumed = decode(X, labels.tolist(), runs, checkpoint_dir=checkpoints, **arguments)
    # Folds and permutations 1-2 came from checkpoints: permutations 3-4 and the audit ran.
    assert len(epochs) == 2 * 3 * 2 + 2
    assert (checkpoints / "audit.pt").exists()
    epochs.clear()
    again = decode(X, labels.tolist(), runs, checkpoint_dir=checkpoints, **arguments)
    assert len(epochs) == 0                        # everything, the audit too, resumed
    uninterrupted = decode(X, labels.tolist(), runs, **arguments)
    for result in (resumed, again):
        assert result.metrics == uninterrupted.metrics
        np.testing.assert_array_equal(result.null, uninterrupted.null)
        np.testing.assert_array_equal(result.predictions.proba, uninterrupted.predictions.proba)


def test_stale_null_checkpoints_are_not_reused(tmp_path):
    X, labels, runs = null_volumes(n_per_run=40)
    cnn = {**CNN, "epochs": 1}
    first = decode(X, labels.tolist(), runs, model="cnn-deepemotion", n_permutations=3,
                   random_state=0, cnn_params=cnn, checkpoint_dir=tmp_path, audit=False)
    other_seed = decode(X, labels.tolist(), runs, model="cnn-deepemotion", n_permutations=3,
                        random_state=1, cnn_params=cnn, checkpoint_dir=tmp_path, audit=False)
    fresh = decode(X, labels.tolist(), runs, model="cnn-deepemotion", n_permutations=3,
                   random_state=1, cnn_params=cnn, audit=False)
    np.testing.assert_array_equal(other_seed.null, fresh.null)
    assert not np.array_equal(first.null, other_seed.null)
