"""Tests of bids_affect.occlusion: identity with captum, speed paths, planted signal, tables."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from bids_affect.datasets.synthetic import grid_affine
from bids_affect.exceptions import InputDataError, UsageError
from bids_affect.models.cnn3d import (
    FlattenHead,
    GlobalPoolHead,
    InvertedResidual3d,
    VolumeClassifier,
    create_architecture,
    list_architectures,
)
from bids_affect.occlusion import (
    TOP_VOXEL_COLUMNS,
    UMAP_COLUMNS,
    class_occlusion_maps,
    occlusion_maps,
    plot_umap_embeddings,
    select_samples,
    top_voxels,
    umap_embeddings,
    window_grid,
)
from bids_affect.stats.enrichment import topk_region_enrichment, topk_region_shares

SHAPE = (10, 12, 9)
TOLERANCE = 1e-5


# --------------------------------------------------------------------------- helpers


def calibrated(model: nn.Module, shape, seed: int = 0) -> nn.Module:
    """A random-init model whose batch norms hold real statistics, in eval mode.

    Straight from initialisation, neuro120fp's activations shrink ~15-fold per
    block and its maps are ~1e-7: too flat for a 1e-5 comparison to mean
    anything. Batch statistics of random volumes and logits scaled to a
    standard deviation of 2 give maps of order 0.1-1.
    """
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm3d):
            module.reset_running_stats()
            module.momentum = None
    volumes = torch.randn(16, 1, *shape, generator=generator)
    with torch.no_grad():
        model.train()
        model(volumes)
        model.eval()
        last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
        last.weight *= 2 / model(volumes).std()
    return model


def make_model(name: str, shape=SHAPE, n_classes: int = 3, seed: int = 0) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = create_architecture(name, n_classes, shape)
    return calibrated(model, shape, seed)


def captum_maps(model, volumes, targets, window, stride, baseline=0.0) -> np.ndarray:
    """captum's Occlusion on the softmax output: the reference."""
    from captum.attr import Occlusion

    window, stride = (tuple(v) if not isinstance(v, int) else (v,) * 3
                      for v in (window, stride))
    occlusion = Occlusion(lambda x: torch.softmax(model(x), dim=1))
    inputs = torch.as_tensor(volumes)[:, None]
    with torch.no_grad():
        maps = occlusion.attribute(inputs, sliding_window_shapes=(1, *window),
                                   strides=(1, *stride), baselines=baseline,
                                   target=list(targets), perturbations_per_eval=32)
    return maps[:, 0].numpy()


def captum_block_maps(model, volume, block, window: int, target: int) -> np.ndarray:
    """captum's Occlusion over the windows of ``block`` only; the forward sees the full volume.

    With window == stride and a block aligned to the stride, a voxel's value
    is the score of the one window covering it, as in a full captum run.
    """
    from captum.attr import Occlusion

    full = torch.as_tensor(volume)[None, None]

    def forward(inputs: torch.Tensor) -> torch.Tensor:
        batch = full.expand(len(inputs), -1, -1, -1, -1).clone()
        batch[(slice(None), slice(None), *block)] = inputs
        return torch.softmax(model(batch), dim=1)

    with torch.no_grad():
        maps = Occlusion(forward).attribute(
            full[(slice(None), slice(None), *block)], sliding_window_shapes=(1, *(window,) * 3),
            strides=(1, *(window,) * 3), baselines=0.0, target=target,
            perturbations_per_eval=16)
    return maps[0, 0].numpy()


def noisy_volumes(rng, n=2, shape=SHAPE) -> np.ndarray:
    volumes = rng.normal(size=(n, *shape)).astype(np.float32)
    volumes[0, :3] = 0.0  # windows already at the baseline
    return volumes


def ball_mask(shape=SHAPE) -> np.ndarray:
    centre = (np.asarray(shape) - 1) / 2
    distance = np.linalg.norm((np.indices(shape).T - centre) / (np.asarray(shape) / 2),
                              axis=-1).T
    return distance < 0.9


# --------------------------------------------------------------------------- identity with captum

WINDOWS = [
    (2, 2),                      # the default
    (3, 2),                      # overlapping windows; 3 divides no axis
    ((2, 3, 4), (1, 2, 3)),      # anisotropic, stride != window
    ((3, 2, 3), (3, 2, 1)),      # cut-off windows at every border
]


@pytest.mark.parametrize("name", sorted(list_architectures()))
@pytest.mark.parametrize(("window", "stride"), WINDOWS)
def test_maps_equal_captum(rng, name, window, stride):
    model = make_model(name)
    volumes = noisy_volumes(rng)
    targets = [0, 2]
    reference = captum_maps(model, volumes, targets, window, stride)
    assert np.abs(reference).max() > 0.05  # the comparison is not between flat maps

    incremental = occlusion_maps(model, volumes, targets, window=window, stride=stride)
    assert incremental.maps.dtype == np.float32
    assert np.abs(incremental.maps - reference).max() < TOLERANCE
    assert incremental.info["engine"]["fallback_layers"] == []
    assert incremental.info["windows_unchanged"] > 0

    plain = occlusion_maps(model, volumes, targets, window=window, stride=stride,
                           method="plain", batch_size=7)
    assert plain.info["engine"]["incremental_layers"] == 0
    assert np.abs(plain.maps - reference).max() < TOLERANCE
    assert np.abs(plain.maps - incremental.maps).max() < TOLERANCE

    mask = ball_mask()
    masked = occlusion_maps(model, volumes, targets, window=window, stride=stride, mask=mask)
    assert np.abs(masked.maps[:, mask] - reference[:, mask]).max() < TOLERANCE
    assert not masked.maps[:, ~mask].any()
    assert masked.info["windows_outside_mask"] > 0
    assert masked.info["windows_computed"] < incremental.info["windows_computed"]


DEEP_SHAPE = (30, 28, 27)  # z is odd: the last window along z is cut off at the border


@pytest.mark.parametrize("block", [
    (slice(12, 18), slice(10, 16), slice(10, 16)),  # centre: every box lies inside the maps
    (slice(24, 30), slice(0, 6), slice(20, 27)),    # corner: boxes clipped at the borders
], ids=["centre", "border"])
def test_maps_equal_captum_where_deep_boxes_are_smaller_than_the_maps(rng, block):
    """On the small volumes above the deepest boxes span whole feature maps; not here."""
    model = make_model("deepemotion", shape=DEEP_SHAPE)
    volume = rng.normal(size=(1, *DEEP_SHAPE)).astype(np.float32)
    region = np.zeros(DEEP_SHAPE, bool)
    region[block] = True
    reference = captum_block_maps(model, volume[0], block, window=2, target=1)
    assert np.abs(reference).max() > 0.005
    result = occlusion_maps(model, volume, 1, window=2, mask=region)  # the block's windows
    box = result.info["recomputed_box"]
    assert all(b < m for b, m in zip(box["shape"], box["feature_map"])), box
    assert result.info["windows_computed"] == reference[::2, ::2, ::2].size
    assert np.abs(result.maps[0][block] - reference).max() < TOLERANCE


def test_baseline_other_than_zero(rng):
    model = make_model("deepemotion")
    volumes = noisy_volumes(rng, n=1)
    reference = captum_maps(model, volumes, [1], 2, 2, baseline=-0.5)
    result = occlusion_maps(model, volumes, 1, window=2, baseline=-0.5)
    assert np.abs(result.maps - reference).max() < TOLERANCE
    assert result.info["windows_unchanged"] == 0


class Scale(nn.Module):
    """A layer the engine does not know (forces the fallback)."""

    def forward(self, x):
        return 1.5 * x


class OddHead(nn.Module):
    """A head the engine does not know."""

    def __init__(self, channels, n_classes):
        super().__init__()
        self.fc = nn.Linear(channels, n_classes)

    def forward(self, x):
        return self.fc(x.amax(dim=(2, 3, 4)))


def geometry_model() -> VolumeClassifier:
    """Dilated 'same' convolution, padded max and average pooling, strided conv."""
    trunk = nn.Sequential(
        nn.Conv3d(1, 4, 3, padding="same", dilation=2), nn.BatchNorm3d(4), nn.ReLU(),
        nn.MaxPool3d(3, stride=2, padding=1),
        nn.Conv3d(4, 6, (3, 1, 2), stride=(2, 1, 1), padding=(1, 0, 1)), nn.LeakyReLU(),
        nn.AvgPool3d(2, stride=1, padding=1), nn.Conv3d(6, 8, 1), nn.Tanh(),
    )
    return VolumeClassifier(trunk, GlobalPoolHead(8, 3))


def fallback_model() -> VolumeClassifier:
    """A residual block that uses its residual, and an unknown layer."""
    trunk = nn.Sequential(
        nn.Conv3d(1, 8, 3, padding=1), nn.BatchNorm3d(8), nn.ReLU6(),
        InvertedResidual3d(8, 8, stride=1), Scale(), nn.Conv3d(8, 8, 3, stride=2, padding=1),
    )
    return VolumeClassifier(trunk, FlattenHead(8 * 5 * 6 * 5, 16, 3))


@pytest.mark.parametrize(("build", "head", "fallback"), [
    (geometry_model, "global-pool", []),
    (fallback_model, "module", ["InvertedResidual3d", "Scale", "Conv3d"]),
    (lambda: VolumeClassifier(nn.Sequential(nn.Conv3d(1, 4, 3), nn.ReLU()), OddHead(4, 3)),
     "module", []),
])
def test_engine_paths_equal_captum(rng, build, head, fallback):
    with torch.random.fork_rng():
        torch.manual_seed(3)
        model = calibrated(build(), SHAPE)
    volumes = noisy_volumes(rng)
    reference = captum_maps(model, volumes, [0, 1], (2, 3, 2), (2, 2, 1))
    assert np.abs(reference).max() > 0.005
    incremental = occlusion_maps(model, volumes, [0, 1], window=(2, 3, 2), stride=(2, 2, 1))
    plain = occlusion_maps(model, volumes, [0, 1], window=(2, 3, 2), stride=(2, 2, 1),
                           method="plain")
    assert incremental.info["engine"]["head"] == head
    assert incremental.info["engine"]["fallback_layers"] == fallback
    assert np.abs(incremental.maps - reference).max() < TOLERANCE
    assert np.abs(incremental.maps - plain.maps).max() < TOLERANCE


def test_model_training_flags_are_restored(rng):
    model = make_model("deepemotion")
    model.train()
    model.trunk[1].eval()  # a frozen batch norm inside a training model
    occlusion_maps(model, noisy_volumes(rng, n=1), 0, window=5)
    assert model.training and model.head.training and not model.trunk[1].training


def test_generic_module_uses_plain_forwards(rng):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv3d(1, 2, 3), nn.Flatten(), nn.LazyLinear(3)).eval()
        volumes = noisy_volumes(rng, n=1)
        model(torch.as_tensor(volumes)[:, None])
    reference = captum_maps(model, volumes, [2], 3, 3)
    result = occlusion_maps(model, volumes, 2, window=3)
    assert result.info["engine"] == {"incremental_layers": 0,
                                     "fallback_layers": ["Sequential"], "head": "module"}
    assert np.abs(result.maps - reference).max() < TOLERANCE


def test_bfloat16_reports_its_deviation(rng):
    model = make_model("neuro120fp")
    volumes = noisy_volumes(rng, n=1)
    exact = occlusion_maps(model, volumes, 0, window=2)
    reduced = occlusion_maps(model, volumes, 0, window=2, precision="bfloat16")
    check = reduced.info["precision_check"]
    assert reduced.info["precision"] == "bfloat16" and "precision_check" not in exact.info
    assert check["windows_checked"] > 0 and check["reference"] == "float32"
    # window == stride: a voxel's value is one window's score, so the sampled
    # errors are among the map's errors
    actual = np.abs(reduced.maps - exact.maps).max()
    assert 0 < check["max_abs_score_error"] <= actual + 1e-6
    largest = np.abs(exact.maps).max()
    assert abs(check["max_abs_map_value"] - largest) <= actual + 1e-6
    assert check["relative_error"] == pytest.approx(check["max_abs_score_error"]
                                                    / check["max_abs_map_value"])
    # bfloat16 keeps 8 bits of mantissa; through 5 blocks the scores (differences of
    # probabilities) err by 5-11% of the largest map value on these networks
    assert check["relative_error"] <= actual / largest + 1e-6
    assert actual / largest < 0.15


# ------------------------------------------------------------------ window grid, bad input


def test_window_grid_follows_captum():
    grid = window_grid((10, 5, 4), window=(3, 2, 4), stride=(2, 2, 3))
    assert grid.counts == (5, 3, 1)
    assert grid.starts(0).tolist() == [0, 2, 4, 6, 8]  # the last window is cut off
    assert grid.cover(0).sum(axis=0).tolist() == [3, 3, 3, 3, 2]


def test_stride_larger_than_window_leaves_uncovered_voxels_at_zero(rng):
    model = make_model("deepemotion")
    result = occlusion_maps(model, noisy_volumes(rng, n=1), 0, window=1, stride=2)
    assert not result.maps[0, 1::2].any()
    assert result.maps[0, ::2].any()


def test_window_larger_than_volume_is_a_usage_error(rng):
    model = make_model("deepemotion")
    with pytest.raises(UsageError, match="larger than the volume") as error:
        occlusion_maps(model, noisy_volumes(rng, n=1), 0, window=(2, 13, 2))
    assert error.value.exit_code == 64
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"window": 0}, UsageError, "positive"),
    ({"targets": 3}, UsageError, "outside 0..2"),
    ({"mask": np.ones((3, 3, 3), bool)}, InputDataError, "mask has shape"),
    ({"method": "fast"}, UsageError, "method"),
    ({"precision": "float16"}, UsageError, "precision"),
    ({"batch_size": 0}, UsageError, "batch_size"),
])
def test_bad_arguments(rng, kwargs, error, message):
    model = make_model("deepemotion")
    arguments = {"targets": 0, **kwargs}
    with pytest.raises(error, match=message):
        occlusion_maps(model, noisy_volumes(rng, n=1), **arguments)


def test_non_finite_volume_is_a_data_error(rng):
    volumes = noisy_volumes(rng, n=1)
    volumes[0, 4, 4, 4] = np.nan
    with pytest.raises(InputDataError, match="non-finite") as error:
        occlusion_maps(make_model("deepemotion"), volumes, 0)
    assert error.value.exit_code == 65


# --------------------------------------------------------------------------- sample choice


def test_select_samples_rules():
    folds = np.array([0, 0, 0, 1, 1, 1, 1, 2, 2])
    y_true = np.array(["a", "a", "a", "a", "b", "b", "a", "a", "c"])
    probabilities = np.array([
        [.80, .10, .10],   # 0: a, correct, p .80
        [.70, .20, .10],   # 1: a, correct but p < .75
        [.10, .85, .05],   # 2: a, misclassified with high confidence
        [.90, .05, .05],   # 3: a, correct, p .90
        [.40, .50, .10],   # 4: b, correct but p < .75
        [.76, .20, .04],   # 5: b, misclassified
        [.80, .15, .05],   # 6: a, correct, p .80 (ties with sample 0)
        [.95, .03, .02],   # 7: a, correct, p .95
        [.10, .10, .80],   # 8: c, correct
    ])
    selection = select_samples(folds, y_true, probabilities, classes=["a", "b", "c"],
                               n_per_class=3)
    assert selection.samples["a"].tolist() == [7, 3, 0]  # highest p first, ties by order
    assert selection.folds["a"].tolist() == [2, 1, 0]
    assert selection.n_eligible["a"] == 4
    assert selection.samples["c"].tolist() == [8]
    assert selection.empty == ["b"]
    assert "class 'b'" in selection.reason("b") and selection.reason("a") is None
    summary = selection.to_dict()
    assert summary["classes"]["b"]["samples"] == [] and summary["classes"]["b"]["empty_reason"]
    everything = select_samples(folds, y_true, probabilities, classes=["a", "b", "c"],
                                threshold=0.0, n_per_class=10)
    chosen = np.concatenate(list(everything.samples.values()))
    assert set(chosen) == {0, 1, 3, 4, 6, 7, 8}  # never the misclassified 2 and 5


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"threshold": 1.5}, "threshold"),
    ({"n_per_class": 0}, "n_per_class"),
    ({}, "not classes"),
])
def test_select_samples_bad_input(kwargs, message):
    with pytest.raises((UsageError, InputDataError), match=message):
        select_samples([0, 0], [0, "z"], np.array([[.9, .1], [.2, .8]]),
                       **{"classes": ["a", "b"], **kwargs})


def test_class_maps_use_each_samples_own_fold_model(rng):
    models = {"f1": make_model("deepemotion", seed=1), "f2": make_model("deepemotion", seed=2)}
    volumes = rng.normal(size=(5, *SHAPE)).astype(np.float32)
    folds = ["f1", "f2", "f1", "f2", "f2"]
    probabilities = np.array([[.9, .05, .05], [.1, .8, .1], [.8, .1, .1], [.05, .9, .05],
                              [.3, .6, .1]])
    selection = select_samples(folds, [0, 1, 0, 1, 1], probabilities)
    result = class_occlusion_maps(models, volumes, selection, window=3, stride=3)

    def single(fold, sample, target):
        return occlusion_maps(models[fold], volumes[[sample]], target, window=3).maps[0]

    assert np.allclose(result.maps[0], (single("f1", 0, 0) + single("f1", 2, 0)) / 2,
                       atol=1e-6)
    assert np.allclose(result.maps[1], (single("f2", 3, 1) + single("f2", 1, 1)) / 2,
                       atol=1e-6)
    assert result.maps[2] is None and result.n_samples == {0: 2, 1: 2, 2: 0}
    assert "class 2" in result.empty[2]
    with pytest.raises(UsageError, match="no model for fold"):
        class_occlusion_maps({"f1": models["f1"]}, volumes, selection, window=3)
    negative = select_samples([-1] * 5, [0, 1, 0, 1, 1], probabilities)
    with pytest.raises(UsageError, match="no model for fold -1"):  # not the list's last
        class_occlusion_maps([models["f1"], models["f2"]], volumes, negative, window=3)


# --------------------------------------------------------------------------- planted signal

PLANTED_SHAPE = (12, 14, 12)
PLANTED_BOX = (slice(4, 8), slice(5, 9), slice(4, 8))  # 64 voxels; y off the stride grid


def planted_data(rng, signal: float, n_per_class: int):
    """Three classes of noise volumes; class 0 adds ``signal`` inside PLANTED_BOX."""
    labels = np.repeat(np.arange(3), n_per_class)
    volumes = rng.normal(size=(len(labels), *PLANTED_SHAPE)).astype(np.float32)
    box = np.zeros(PLANTED_SHAPE, bool)
    box[PLANTED_BOX] = True
    volumes[labels == 0] += signal * box
    return volumes, labels, box


def train_small_cnn(volumes, labels, seed: int = 0, epochs: int = 40) -> VolumeClassifier:
    """A two-layer CNN with a flatten head, trained with Adam (fixed seed, no global state)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        trunk = nn.Sequential(nn.Conv3d(1, 8, 3, padding=1), nn.BatchNorm3d(8), nn.ReLU(),
                              nn.MaxPool3d(2), nn.Conv3d(8, 8, 3, padding=1), nn.ReLU())
        model = VolumeClassifier(trunk, FlattenHead(8 * 6 * 7 * 6, 16, 3, dropout=0.2))
        optimiser = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
        inputs = torch.as_tensor(volumes)[:, None]
        targets = torch.as_tensor(labels)
        model.train()
        for _ in range(epochs):
            for batch in torch.randperm(len(inputs)).split(32):
                optimiser.zero_grad()
                loss = nn.functional.cross_entropy(model(inputs[batch]), targets[batch])
                loss.backward()
                optimiser.step()
    return model.eval()


def planted_class_map(rng, signal: float, threshold: float):
    """Class maps of a CNN trained on planted data, and what made them."""
    train, train_labels, box = planted_data(rng, signal, n_per_class=60)
    test, test_labels, _ = planted_data(rng, signal, n_per_class=20)
    model = train_small_cnn(train, train_labels)
    with torch.no_grad():
        probabilities = torch.softmax(model(torch.as_tensor(test)[:, None]), 1).numpy()
    selection = select_samples(np.zeros(len(test), int), test_labels, probabilities,
                               threshold=threshold)
    maps = class_occlusion_maps([model], test, selection, window=2)
    return maps, selection, box, (model, test, test_labels)


#: A parcellation of PLANTED_SHAPE into 4-voxel boxes (the planted box straddles two).
PARCELS = (np.indices(PLANTED_SHAPE) // 4 * np.array([100, 10, 1])[:, None, None, None]).sum(0) + 1


def largest_share_p_value(rng, fitted, n_permutations: int = 99) -> float:
    """Family-wise p: the largest region share of the class-0 map among label-permuted maps.

    Every held-out sample is occluded for p(class 0); the class-0 map is the
    mean over the class-0 samples, a null map the mean over the samples that
    permuted labels call class 0. On null data the held-out labels say nothing
    about the volumes (nor about the model, trained on other samples), so the
    maps are exchangeable and p is exact. It is a criterion for null data only:
    with signal, the model's p(class 0) reacts to the planted region in every
    sample, so permuted-label maps show it too (a test with power would retrain
    on permuted labels).
    """
    model, test, labels = fitted
    maps = occlusion_maps(model, test, 0, window=2).maps

    def largest(chosen):
        return topk_region_shares(maps[chosen].mean(axis=0), PARCELS, k=64).max()

    observed = largest(labels == 0)
    null = [largest(rng.permutation(labels) == 0) for _ in range(n_permutations)]
    return (1 + sum(value >= observed for value in null)) / (1 + n_permutations)


@pytest.mark.slow
def test_planted_region_is_found(rng):
    maps, selection, box, _ = planted_class_map(rng, signal=1.5, threshold=0.75)
    assert selection.n_eligible[0] >= 10 and maps.n_samples[0] == 10
    enrichment = topk_region_enrichment(maps.maps[0], box)  # k = 64, the box's size
    assert enrichment["dice"] >= 0.6
    assert enrichment["p_value"] <= 0.01
    table = top_voxels(maps.maps[0], None, np.eye(4), k=int(box.sum()))
    inside = box[table["i"], table["j"], table["k"]]
    assert inside.mean() == pytest.approx(enrichment["dice"])


@pytest.mark.slow
def test_null_data_show_no_region(rng):
    """Null criterion: on data without signal the box is an ordinary position.

    :func:`topk_region_enrichment` compares the share of top-k voxels in the
    box with the shares of the same box moved to every other position (a null
    that keeps the map's smoothness). The planted box ranks first (p <= .01,
    the test above); on null data it must not (p > .01), and its Dice with the
    top-k stays below the planted test's bound. One null dataset has a 1%
    chance of p <= .01 by construction; the seeded data here give p = 1.

    Family-wise: no region of a parcellation may stand out either. The largest
    share over all regions (:func:`topk_region_shares`) of the class-0 map is
    an ordinary draw among those of maps made with permuted labels.
    """
    maps, selection, box, fitted = planted_class_map(rng, signal=0.0, threshold=0.0)
    assert maps.n_samples[0] > 0
    enrichment = topk_region_enrichment(maps.maps[0], box)
    assert enrichment["p_value"] > 0.01
    assert enrichment["dice"] < 0.6
    assert largest_share_p_value(rng, fitted) > 0.05


def test_enrichment_flags_a_planted_blob_but_not_a_shifted_one(rng):
    from scipy import ndimage

    noise = ndimage.gaussian_filter(rng.normal(size=(20, 20, 20)), 1.5)
    region = np.zeros(noise.shape, bool)
    region[5:9, 5:9, 5:9] = True
    blob = ndimage.gaussian_filter(region.astype(float), 1.0)
    planted = noise + 5 * noise.std() * blob / blob.max()
    assert topk_region_enrichment(planted, region)["p_value"] < 0.01
    # the noise map alone: the region is one position among many
    assert topk_region_enrichment(noise, region)["p_value"] > 0.01


# --------------------------------------------------------------------------- top voxels


def test_top_voxels_columns_order_and_coordinates():
    stat_map = np.zeros((5, 6, 7), np.float32)
    stat_map[4, 1, 2] = 3.0
    stat_map[0, 5, 6] = 2.0
    stat_map[1, 1, 1] = 2.0  # ties with (0, 5, 6): voxel order decides
    stat_map[2, 2, 2] = 9.0  # outside the mask
    mask = np.ones(stat_map.shape, bool)
    mask[2, 2, 2] = False
    affine = np.array([[-2.0, 0, 0, 10], [0, 2, 0, -20], [0, 0, 3, 5], [0, 0, 0, 1]])
    table = top_voxels(stat_map, mask, affine, k=3, space="T1w")
    assert tuple(table.columns) == TOP_VOXEL_COLUMNS
    assert table["rank"].tolist() == [1, 2, 3]
    assert table[["i", "j", "k"]].values.tolist() == [[4, 1, 2], [0, 5, 6], [1, 1, 1]]
    assert table[["x", "y", "z"]].values.tolist()[0] == [2.0, -18.0, 11.0]
    assert table["value"].tolist() == [3.0, 2.0, 2.0]
    assert set(table["atlas"]) == {"none"} and set(table["region"]) == {
        "native space: no atlas"}


def test_top_voxels_atlas_labels_in_mni_space():
    shape = (40, 48, 40)
    affine = grid_affine(shape)
    stat_map = np.zeros(shape)
    inverse = np.linalg.inv(affine)
    amygdala = np.rint(inverse @ [-22, -4, -18, 1])[:3].astype(int)
    corner = (0, 0, 0)  # outside the brain
    stat_map[tuple(amygdala)] = 2.0
    stat_map[corner] = 1.0
    table = top_voxels(stat_map, None, affine, k=2, atlas="harvard_oxford",
                       space="MNI152NLin2009cAsym")
    assert table["region"].tolist() == ["Left_Amygdala", "unlabelled"]
    assert set(table["atlas"]) == {"harvard_oxford"}
    native = top_voxels(stat_map, None, affine, k=2, atlas="harvard_oxford", space="T1w")
    assert set(native["region"]) == {"native space: no atlas"}
    assert set(native["atlas"]) == {"none"}


def test_k_larger_than_mask_is_a_usage_error():
    mask = np.zeros((4, 4, 4), bool)
    mask[:2, :2, :2] = True
    with pytest.raises(UsageError, match="mask holds only 8 voxels") as error:
        top_voxels(np.zeros((4, 4, 4)), mask, np.eye(4), k=9)
    assert error.value.exit_code == 64


# --------------------------------------------------------------------------- UMAP


@pytest.mark.slow
def test_umap_embeddings_and_figure(rng, tmp_path):
    shape = (8, 9, 7)
    mask = ball_mask(shape)
    maps = {"fear": rng.random(shape), "love": rng.random(shape), "anger": None}
    table = umap_embeddings(maps, mask, np.diag([2.0, 2.0, 2.0, 1.0]), k=40,
                            random_state=3)
    assert tuple(table.columns) == UMAP_COLUMNS
    assert not table[["i", "j", "k"]].duplicated().any()
    assert 40 <= len(table) <= 80 and set(table["class"]) == {"fear", "love"}
    assert mask[table["i"], table["j"], table["k"]].all()
    assert np.allclose(table["x"], 2 * table["i"])
    fear_top = top_voxels(maps["fear"], mask, np.eye(4), k=40)
    fear_rows = table.merge(fear_top[["i", "j", "k"]], on=["i", "j", "k"])
    assert (fear_rows["class"] == "fear").mean() > 0.5
    again = umap_embeddings(maps, mask, np.diag([2.0, 2.0, 2.0, 1.0]), k=40, random_state=3)
    pd.testing.assert_frame_equal(table, again)
    assert np.isfinite(table[["spatial_1", "spatial_2", "functional_1",
                              "functional_2"]].values).all()

    tiny = umap_embeddings({"fear": maps["fear"]}, mask, np.eye(4), k=6, random_state=0)
    assert len(tiny) == 6  # n_neighbors (30) clipped to 5

    svg = plot_umap_embeddings(table, tmp_path / "figures" / "umap.svg", title="sub-01")
    png = plot_umap_embeddings(table, tmp_path / "umap.png")
    assert svg.read_text().lstrip().startswith("<?xml") and "sub-01" in svg.read_text()
    assert png.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(UsageError, match="format"):
        plot_umap_embeddings(table, tmp_path / "umap.gif")


def test_umap_leaves_the_torch_thread_count_alone():
    """numba's first parallel launch resets the OpenMP thread count that torch shares.

    Later CNNs of the process (a nipype worker runs several steps) would run on
    other threads: slower and not bit-equal. Run in a fresh process, where the
    first launch happens.
    """
    code = ("import numpy as np, torch; torch.set_num_threads(1)\n"
            "from bids_affect.occlusion import umap_embeddings\n"
            "maps = {c: np.random.default_rng(i).random((6, 6, 6)) for i, c in enumerate('ab')}\n"
            "umap_embeddings(maps, None, np.eye(4), k=10, random_state=0)\n"
            "print('threads', torch.get_num_threads())")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, timeout=300)
    assert result.stdout.split()[-2:] == ["threads", "1"]


def test_svg_figures_are_reproducible(tmp_path):
    table = pd.DataFrame({"class": ["a", "b", "a"], "spatial_1": [0, 1, 2],
                          "spatial_2": [1, 0, 1], "functional_1": [0, 0, 1],
                          "functional_2": [1, 1, 0]})
    first = plot_umap_embeddings(table, tmp_path / "first.svg").read_bytes()
    assert plot_umap_embeddings(table, tmp_path / "second.svg").read_bytes() == first


def test_umap_needs_a_map():
    with pytest.raises(InputDataError, match="no class"):
        umap_embeddings({"fear": None}, None, np.eye(4), k=5)


def test_umap_embeddings_are_equal_across_processes():
    """The same features and seed give the same embedding in any process.

    These functional features (the top voxels' occlusion values of a demo
    subject) make a neighbour graph of several components, on which
    umap-learn's default spectral start differed from one process to the next.
    """
    from pathlib import Path

    features = Path(__file__).parent / "data" / "umap_disconnected_features.npy"
    code = ("import hashlib, sys, numpy as np\n"
            "from bids_affect.occlusion.umap import _embed\n"
            "out = _embed(np.load(sys.argv[1]), 30, 0.1, 2041923419)\n"
            "print(hashlib.sha256(out.tobytes()).hexdigest())")
    digests = {subprocess.run([sys.executable, "-c", code, str(features)], capture_output=True,
                              text=True, check=True, timeout=300).stdout.split()[-1]
               for _ in range(3)}
    assert len(digests) == 1
