"""Channel selectivity, overlap, gain and lesion (seed 002) on a CNN with planted channels.

The planted network sees two image sets that share their categories but not
their low-level cues, as IAPS and NAPS share affective meaning: in set A the
category is the colour tint of the image, in set B the orientation of a
grating. ``conv1`` holds colour-opponent detectors, oriented Gabor filters and
luminance detectors; ``conv2`` (1x1) has six channels per category that add
that category's colour and orientation detectors (selective in both sets) and
30 channels driven by luminance only (a nuisance that varies between images
but not between categories). Random weights mix colour and orientation at
random, so whatever they prefer in one set says nothing of the other.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.base import clone
from torch import nn

from bids_affect.exceptions import InputDataError, UsageError
from bids_affect.selectivity import (
    GAIN_ALPHAS,
    ReadoutHead,
    channel_gain,
    channel_responses,
    channel_selectivity,
    d_prime,
    gain_lesion,
    gain_vector,
    layer_summary,
    overlap_test,
    randomly_initialised,
    readout_features,
    registry_layers,
    registry_random_control,
    selectivity_index,
    selectivity_table,
    split_network,
    stratified_split,
    table_1,
    tuning_values,
)
from tests.helpers import gabor

CATEGORIES = ("pleasant", "neutral", "unpleasant")
SIZE = 32
ANGLES = (0.0, np.pi / 3, 2 * np.pi / 3)
CYCLES = 4  # grating cycles per image
N_PLANTED = 6  # channels per category
N_NUISANCE = 30
#: Coarse sweep for tests: seed 002's 0..5 by 0.1 costs 2.5x more and finds the same.
TEST_ALPHAS = tuple(float(a) for a in np.arange(0, 5.01, 0.25))


def _nuisance_luminance(n: int, rng: np.random.Generator) -> np.ndarray:
    """Per-image brightness (category-independent) plus pixel noise, ``(n, 1, S, S)``."""
    return (0.5 + rng.uniform(-0.15, 0.15, (n, 1, 1, 1))
            + 0.08 * rng.standard_normal((n, 1, SIZE, SIZE)))


def colour_images(n_per_category: int, rng: np.random.Generator, strength: float = 0.05):
    """Set A: the category is which colour channel carries an extra tint."""
    codes = np.repeat(np.arange(3), n_per_category)
    tint = rng.uniform(0, 0.12, size=(len(codes), 3, 1, 1))
    tint[np.arange(len(codes)), codes] += strength
    images = _nuisance_luminance(len(codes), rng) + tint - tint.mean(axis=1, keepdims=True)
    return (torch.tensor(np.clip(images, 0, 1), dtype=torch.float32),
            np.asarray(CATEGORIES)[codes])


def grating_images(n_per_category: int, rng: np.random.Generator, strength: float = 0.05):
    """Set B: grey images where the category's grating orientation is the strongest."""
    codes = np.repeat(np.arange(3), n_per_category)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    images = _nuisance_luminance(len(codes), rng)
    for i, code in enumerate(codes):
        for k, angle in enumerate(ANGLES):
            amplitude = rng.uniform(0, 0.12) + (strength if k == code else 0.0)
            phase = rng.uniform(0, 2 * np.pi)
            along = xx * np.cos(angle) + yy * np.sin(angle)
            images[i, 0] += amplitude * np.sin(2 * np.pi * CYCLES / SIZE * along + phase)
    images = np.repeat(np.clip(images, 0, 1), 3, axis=1)
    return torch.tensor(images, dtype=torch.float32), np.asarray(CATEGORIES)[codes]


class PlantedCNN(nn.Module):
    """conv1 (detectors) -> pool -> conv2 (planted channels) -> mean -> fc1 -> fc2."""

    def __init__(self, seed: int = 0, width: int = 64):
        super().__init__()
        rng = np.random.default_rng(seed)
        n_channels = 3 * N_PLANTED + N_NUISANCE
        self.conv1 = nn.Conv2d(3, 8, 7, padding=3)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(8, n_channels, 1)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(n_channels, width)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(width, 10)
        w1, b1 = np.zeros((8, 3, 7, 7)), np.zeros(8)
        for k in range(3):
            w1[k] = -0.5 / 49
            w1[k, k] = 1.0 / 49  # colour k minus the mean of the others
            w1[3 + k] = gabor(ANGLES[k], CYCLES / SIZE)[None]
        w1[6], b1[6] = 1.0 / 147, -0.3  # brightness
        w1[7], b1[7] = -1.0 / 147, 0.7  # darkness
        w2 = np.zeros((n_channels, 8))
        for code in range(3):
            rows = slice(code * N_PLANTED, (code + 1) * N_PLANTED)
            w2[rows, code] = 8 * rng.uniform(0.5, 1.5, N_PLANTED)
            w2[rows, 3 + code] = 8 * rng.uniform(0.5, 1.5, N_PLANTED)
        w2[3 * N_PLANTED:, 6:8] = rng.uniform(0.0, 2.0, (N_NUISANCE, 2))
        self.planted = {CATEGORIES[c]: np.arange(c * N_PLANTED, (c + 1) * N_PLANTED)
                        for c in range(3)}
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.conv1.weight.copy_(torch.tensor(w1))
            self.conv1.bias.copy_(torch.tensor(b1))
            self.conv2.weight.copy_(torch.tensor(w2)[..., None, None])
            self.conv2.bias.zero_()
            self.fc1.weight.copy_(torch.randn(width, n_channels, generator=generator)
                                  / np.sqrt(n_channels))
            self.fc1.bias.zero_()
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu2(self.conv2(self.pool1(self.relu1(self.conv1(x)))))
        return self.fc2(self.relu3(self.fc1(torch.flatten(self.pool2(x), 1))))


@pytest.fixture(scope="module")
def image_sets():
    rng = np.random.default_rng(0)
    return {"A": colour_images(100, rng), "B": grating_images(100, rng)}


@pytest.fixture(scope="module")
def planted():
    return PlantedCNN()


# --------------------------------------------------------------------------- formulas


def test_d_prime_si_and_tuning_equal_seed_002_by_hand():
    # pleasant 1, 3 (mean 2, var 1); neutral 0, 2 (mean 1, var 1); unpleasant 4, 4 (mean 4).
    responses = np.array([[1.0], [3.0], [0.0], [2.0], [4.0], [4.0]])
    categories = ["pleasant", "pleasant", "neutral", "neutral", "unpleasant", "unpleasant"]
    # d'(e) = (mean_e - mean of the other two means) / sqrt((1 + 1 + 0) / 2)
    expected = [(2 - (1 + 4) / 2) / 1.0, (1 - (2 + 4) / 2) / 1.0, (4 - (2 + 1) / 2) / 1.0]
    assert d_prime(responses, categories)[0] == pytest.approx(expected)
    # Sample variances (2, 2, 0): denominator sqrt(4 / 2).
    assert d_prime(responses, categories, ddof=1)[0] == pytest.approx(
        np.array(expected) / np.sqrt(2))
    si, preferred = selectivity_index(d_prime(responses, categories))
    assert si[0] == pytest.approx(2.5) and preferred[0] == 2  # unpleasant
    # The mean of the three variances (a common misreading) would give 2.5 / sqrt(2/3).
    assert si[0] != pytest.approx(2.5 / np.sqrt(2 / 3))
    grand, spread = 14 / 6, np.sqrt(np.mean((responses[:, 0] - 14 / 6) ** 2))
    assert tuning_values(responses, categories)[0] == pytest.approx(
        [(2 - grand) / spread, (1 - grand) / spread, (4 - grand) / spread])


def test_constant_channels_have_no_selectivity_and_are_never_kept():
    responses = np.column_stack([np.arange(9.0), np.zeros(9)])
    categories = np.repeat(CATEGORIES, 3)
    table = selectivity_table({"layer": responses}, categories, keep_fraction=1.0)
    dead = table.iloc[1]
    assert np.isnan(dead["si"]) and dead["preferred"] == "none" and not dead["kept"]
    assert table.iloc[0]["kept"] and table.iloc[0]["preferred"] == "unpleasant"


def test_keep_fraction_keeps_the_top_channels_by_si(rng):
    categories = np.repeat(CATEGORIES, 20)
    responses = rng.normal(size=(60, 10))
    responses[:20, :4] += np.arange(1, 5)  # channels 0-3, increasingly pleasant-selective
    table = selectivity_table({"l": responses}, categories, keep_fraction=0.3)
    assert table.loc[table["kept"], "channel"].tolist() == [1, 2, 3]
    assert table.set_index("channel").loc[3, "rank"] == 1
    with pytest.raises(UsageError, match="keep_fraction"):
        selectivity_table({"l": responses}, categories, keep_fraction=0.0)


def test_overlap_null_is_the_hypergeometric_expectation():
    from scipy.stats import hypergeom

    a = pd.DataFrame({"layer": "l", "channel": range(20), "si": 1.0, "kept": True,
                      "preferred": ["p"] * 8 + ["n"] * 12})
    b = a.assign(preferred=["p"] * 5 + ["n"] * 10 + ["p"] * 5)
    table = overlap_test(a, b).set_index("category")
    assert table.loc["p", "overlap"] == 5 and table.loc["p", "expected"] == pytest.approx(4.0)
    assert table.loc["p", "p_value"] == pytest.approx(hypergeom.sf(4, 20, 8, 10))
    assert table.loc["p", "channels"] == "0 1 2 3 4"


# --------------------------------------------------------------------------- planted channels


#: The 18 planted channels of 48 are the top 37.5% by SI in both sets.
PLANTED_FRACTION = 18 / 48


def test_planted_channels_are_found_and_no_others(planted, image_sets):
    result = channel_selectivity(planted, {"relu2": planted.relu2}, image_sets,
                                 keep_fraction=PLANTED_FRACTION)
    shared = result.channels("relu2")
    assert {k: v.tolist() for k, v in shared.items()} == {
        k: v.tolist() for k, v in planted.planted.items()}
    # With seed 002's 80%, every planted channel is still among the shared ones.
    default = channel_selectivity(planted, {"relu2": planted.relu2}, image_sets)
    for category, channels in default.channels("relu2").items():
        assert set(planted.planted[category].tolist()) <= set(channels.tolist())


def test_overlap_exceeds_the_hypergeometric_null_but_not_for_random_weights(planted,
                                                                            image_sets):
    trained = channel_selectivity(planted, {"relu2": planted.relu2}, image_sets,
                                  keep_fraction=PLANTED_FRACTION).overlap
    assert (trained["overlap"] == N_PLANTED).all()
    assert (trained["overlap"] > 4 * trained["expected"]).all()
    assert (trained["p_value"] < 1e-5).all()
    # Seed 002's control: random weights, same rule. What a random network prefers in
    # one set says nothing of the other: no overlap is significant (Bonferroni over the
    # 3 categories x 3 networks).
    for seed in range(3):
        control = randomly_initialised(planted, seed)
        table = channel_selectivity(control, {"relu2": control.relu2}, image_sets,
                                    keep_fraction=PLANTED_FRACTION).overlap
        assert len(table) == 3 and table["n_channels"].min() > 20
        assert table["p_value"].min() > 0.05 / 9, seed


def test_control_network_rows_are_labelled(planted, image_sets):
    control = randomly_initialised(planted, 0)
    result = channel_selectivity(planted, {"relu2": planted.relu2}, image_sets,
                                 control=(control, {"relu2": control.relu2}))
    assert set(result.table["network"]) == {"trained", "random"}
    assert set(result.overlap["network"]) == {"trained", "random"}
    assert result.table.columns[:3].tolist() == ["network", "image_set", "layer"]
    random_shared = result.channels("relu2", "A", "B", network="random")
    assert set(random_shared) <= set(CATEGORIES)


# --------------------------------------------------------------------------- gain and lesion


def test_channel_gain_is_a_relu_slope_of_one_plus_alpha():
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 4, 1)
    net = nn.Sequential(conv, nn.ReLU())
    x = torch.randn(3, 2, 5, 5)
    z = conv(x).detach()
    with channel_gain(net[1], [1, 3], 1.5), torch.no_grad():
        scaled = net(x)
    expected = torch.relu(z)
    expected[:, [1, 3]] = torch.relu(2.5 * z[:, [1, 3]])  # max(0, (1 + alpha) w * x)
    assert torch.allclose(scaled, expected, atol=1e-6)
    with channel_gain(conv, [0], -1.0), torch.no_grad():  # lesion on the convolution
        lesioned = net(x)
    assert torch.all(lesioned[:, 0] == 0) and torch.allclose(lesioned[:, 1:], torch.relu(z)[:, 1:])
    with torch.no_grad():
        assert torch.allclose(net(x), torch.relu(z))  # the hook is gone
    assert gain_vector(3, [2], 0.0).tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(UsageError, match="channels"):
        gain_vector(3, [3], 1.0)
    with pytest.raises(UsageError, match="alpha"):
        gain_vector(3, [0], -2.0)


@pytest.mark.slow  # 8 s on an idle 2-core machine, 3x that on a busy one
def test_gain_of_planted_channels_helps_and_their_lesion_hurts_more_than_random(
        planted, image_sets):
    # A readout trained briefly, as seed 002's (10 epochs at 1e-3 on 4,096 features);
    # on these 64 features the same number of steps needs a larger rate.
    head = ReadoutHead(learning_rate=5e-3, epochs=30)
    gains = []
    for name, (images, categories) in image_sets.items():
        result = gain_lesion(planted, planted.relu2, images, categories, planted.planted,
                             alphas=TEST_ALPHAS, n_random=10, head=head, random_state=0)
        summary = result.summary.set_index("category")
        assert result.cached
        assert (summary["original"] > 0.3).all(), name  # the readout works
        gains.append(summary[["original", "enhanced", "random_enhanced"]])
        # Lesioning the planted channels abolishes recognition; random ones do far less.
        assert (summary["lesioned"] < 0.1).all(), name
        assert (summary["lesioned"].mean() < summary["random_lesioned"].mean() - 0.2), name
        assert (summary["lesioned_difference"] < 0).all(), name
        curves = result.curves
        assert set(curves["alpha"]) == {-1.0, *TEST_ALPHAS}
        assert len(curves) == 3 * 11 * (len(TEST_ALPHAS) + 1)
        assert summary["n_random"].eq(10).all() and summary["n_channels"].eq(6).all()
    gains = pd.concat(gains)
    selective = (gains["enhanced"] - gains["original"]).mean()
    random = (gains["random_enhanced"] - gains["original"]).mean()
    assert selective > random + 0.02
    assert selective > 0.03


def test_layer_summary_and_table_1_across_layers(planted, image_sets):
    result = channel_selectivity(planted, {"relu1": planted.relu1, "relu2": planted.relu2},
                                 image_sets, keep_fraction=PLANTED_FRACTION)
    summary = layer_summary(result.table).set_index(["image_set", "layer"])
    assert summary.loc[("A", "relu2"), "n_channels"] == 48
    assert summary.loc[("A", "relu2"), "n_kept"] == 18
    assert summary.loc[("A", "relu2"), ["kept_pleasant", "kept_neutral",
                                         "kept_unpleasant"]].tolist() == [6, 6, 6]
    images, categories = image_sets["A"]
    common = {"alphas": (0.0, 1.0, 3.0), "n_random": 1, "random_state": 0,
              "head": ReadoutHead(learning_rate=5e-3, epochs=30)}
    layers = {"relu1": gain_lesion(planted, planted.relu1, images, categories,
                                   {"pleasant": [0], "neutral": [1], "unpleasant": [2]},
                                   **common),
              "relu2": gain_lesion(planted, planted.relu2, images, categories,
                                   planted.planted, **common)}
    table = table_1(layers).set_index("category")
    # One split and head for both layers: the original F1 is the layer-independent one.
    for category in CATEGORIES:
        originals = {r.summary.set_index("category").loc[category, "original"]
                     for r in layers.values()}
        assert originals == {table.loc[category, "original"]}
    best = pd.concat([r.summary.assign(layer=name) for name, r in layers.items()])
    for category, group in best.groupby("category"):
        assert table.loc[category, "enhanced"] == group["enhanced"].max()
        assert table.loc[category, "lesioned"] == group["lesioned"].min()
        assert table.loc[category, "lesioned_change_pct"] == pytest.approx(
            100 * (table.loc[category, "original"] - table.loc[category, "lesioned"])
            / table.loc[category, "original"])


def test_cached_sweep_equals_the_plain_sweep(planted, image_sets):
    images, categories = image_sets["A"]
    common = {"alphas": (0.0, 0.5, 2.0), "n_random": 2, "random_state": 3,
              "head": ReadoutHead(learning_rate=5e-3, epochs=5)}
    cached = gain_lesion(planted, planted.relu2, images, categories, planted.planted, **common)
    plain = gain_lesion(planted, planted.relu2, images, categories, planted.planted,
                        cache=False, **common)
    assert cached.cached and not plain.cached
    pd.testing.assert_frame_equal(cached.f1, plain.f1)
    pd.testing.assert_frame_equal(cached.curves, plain.curves)
    # Features of the two paths agree; the split network equals the whole one.
    parts = split_network(planted, planted.relu2)
    with torch.no_grad():
        split = parts.upper(parts.lower(images[:8]))
    whole = readout_features(planted, images[:8])
    assert np.allclose(split.numpy(), whole, atol=1e-5)
    gained = readout_features(planted, images[:8], gain=(planted.relu2, [0, 1], 2.0))
    assert not np.allclose(gained, whole)


def test_cached_sweep_in_a_memory_map(planted, image_sets, tmp_path):
    images, categories = image_sets["B"]
    result = gain_lesion(planted, "relu2", images, categories,
                         {"neutral": planted.planted["neutral"]}, alphas=(0.0, 1.0),
                         n_random=1, random_state=0, cache_dir=tmp_path / "cache",
                         head=ReadoutHead(learning_rate=5e-3, epochs=5))
    assert result.cached and len(result.summary) == 1
    assert list((tmp_path / "cache").iterdir()) == []  # the memory map is removed after


class SkipNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        a = self.relu1(self.conv1(x))
        b = self.relu2(self.conv2(a)) + a  # the skip crosses relu2
        return self.head(b.mean(dim=(2, 3)))


def test_a_skip_connection_across_the_layer_falls_back_to_the_plain_sweep(rng):
    net = SkipNet().eval()
    with pytest.raises(UsageError, match="skip connection"):
        split_network(net, net.relu2)
    parts = split_network(net, net.relu1)  # nothing crosses relu1
    x = torch.rand(2, 3, 6, 6)
    with torch.no_grad():
        assert torch.allclose(parts.upper(parts.lower(x)),
                              torch.from_numpy(readout_features(net, x)), atol=1e-6)
    categories = np.repeat(CATEGORIES, 4)
    with pytest.warns(UserWarning, match="skip connection"):
        result = gain_lesion(net, net.relu2, torch.rand(12, 3, 6, 6), categories,
                             {"pleasant": [0]}, alphas=(0.0, 1.0), n_random=1, random_state=0)
    assert not result.cached


def test_gain_lesion_rejects_bad_input(planted, image_sets):
    images, categories = image_sets["A"]
    with pytest.raises(UsageError, match="alphas"):
        gain_lesion(planted, planted.relu2, images, categories, planted.planted,
                    alphas=(1.0, 2.0))
    with pytest.raises(UsageError, match="'joyful' has no image"):
        gain_lesion(planted, planted.relu2, images, categories, {"joyful": [0]})
    with pytest.raises(InputDataError, match="300 images but 299 categories"):
        gain_lesion(planted, planted.relu2, images, categories[:-1], planted.planted)
    few = np.array(["pleasant"] * 298 + ["neutral"] * 2)
    with pytest.raises(InputDataError, match="'neutral' has 2 image"):
        gain_lesion(planted, planted.relu2, images, few, {"neutral": [0]})
    with pytest.warns(UserWarning, match="no channel is selective for 'pleasant'"):
        empty = gain_lesion(planted, planted.relu2, images, categories, {"pleasant": []},
                            alphas=(0.0,), n_random=2, random_state=0)
    assert np.isnan(empty.summary.loc[0, "enhanced"])


def test_stratified_split_is_50_25_25_within_each_category():
    categories = np.array(["a"] * 40 + ["b"] * 20 + ["c"] * 8)
    train, val, test = stratified_split(categories, random_state=0)
    for part, fractions in ((train, 0.5), (val, 0.25), (test, 0.25)):
        counts = pd.Series(categories[part]).value_counts()
        assert counts.to_dict() == {"a": 40 * fractions, "b": 20 * fractions,
                                    "c": 8 * fractions}
    assert len(set(train) | set(val) | set(test)) == 68
    with pytest.raises(InputDataError, match="'c' has 2 image"):
        stratified_split(["a"] * 5 + ["c"] * 2)


def test_readout_head_follows_the_estimator_contract(rng):
    head = ReadoutHead(random_state=0)
    assert head.get_params() == {"learning_rate": 1e-3, "epochs": 10, "batch_size": 128,
                                 "standardize": False, "random_state": 0}  # seed 002's
    X = rng.normal(size=(300, 6)).astype(np.float32)
    y = np.where(X[:, 0] + 0.3 * X[:, 1] > 0, "pleasant", "rest")
    fitted = clone(head).set_params(learning_rate=0.05, epochs=30).fit(X, y)
    assert fitted.coef_.shape == (2, 6) and fitted.score(X, y) > 0.9
    again = clone(head).set_params(learning_rate=0.05, epochs=30).fit(X, y)
    assert np.array_equal(fitted.coef_, again.coef_)  # seeded
    assert fitted.predict_proba(X[:3]).sum(axis=1) == pytest.approx(1.0)
    assert not hasattr(head, "coef_")
    with pytest.raises(InputDataError, match="one class"):
        clone(head).fit(X, np.zeros(300))
    # Standardised: tiny features (a random network's) train as well as unit ones.
    tiny = clone(head).set_params(learning_rate=0.05, epochs=30, standardize=True)
    assert tiny.fit(X * 1e-4, y).score(X * 1e-4, y) > 0.9
    assert tiny.mean_.shape == (6,)
    assert clone(head).set_params(learning_rate=0.05, epochs=30).fit(
        X * 1e-4, y).score(X * 1e-4, y) < 0.8


def test_responses_are_spatial_means_and_stop_early(planted, image_sets):
    images = image_sets["A"][0][:5]
    responses = channel_responses(planted, {"relu1": planted.relu1, "fc1": planted.fc1},
                                  images, batch_size=2)
    with torch.no_grad():
        maps = planted.relu1(planted.conv1(images))
        fc1 = planted.fc1(planted.pool2(planted.relu2(planted.conv2(planted.pool1(maps))))
                          .flatten(1))
    assert np.allclose(responses["relu1"], maps.mean(dim=(2, 3)).numpy(), atol=1e-6)
    assert np.allclose(responses["fc1"], fc1.numpy(), atol=1e-5)
    calls = []
    handle = planted.fc2.register_forward_hook(lambda *args: calls.append(1))
    try:
        channel_responses(planted, ["relu2"], images)
    finally:
        handle.remove()
    assert calls == []  # the layers above the last one read never ran


# --------------------------------------------------------------------------- registry


def test_registry_network_adapters():
    from bids_affect.models.image import create_image_network

    network = create_image_network("alexnet", weights="random", random_state=0)
    layers = registry_layers("alexnet", network)
    assert list(layers) == ["relu1", "relu2", "relu3", "relu4", "relu5"]
    images = torch.rand(9, 3, 64, 64)
    responses = channel_responses(network, layers, images, batch_size=5)
    assert responses["relu5"].shape == (9, 256)
    parts = split_network(network, layers["relu5"])  # up to fc7, the input of fc8
    with torch.no_grad():
        assert torch.allclose(parts.upper(parts.lower(images[:2])),
                              torch.from_numpy(readout_features(network, images[:2])),
                              atol=1e-5)
    control, control_layers = registry_random_control("alexnet", ["relu5"], random_state=1)
    assert not torch.equal(control.features[10].weight, network.features[10].weight)
    assert list(control_layers) == ["relu5"]
    with pytest.raises(UsageError, match="no layer 'conv9'"):
        registry_layers("alexnet", network, ["conv9"])


def test_weights_for_another_architecture_are_refused_naming_the_file(tmp_path):
    from bids_affect.models.image import create_image_network

    path = tmp_path / "vgg_like.pth"
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, path)
    with pytest.raises(InputDataError) as error:
        create_image_network("alexnet", weights=path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_default_alphas_are_seed_002s():
    assert GAIN_ALPHAS[0] == 0.0 and GAIN_ALPHAS[-1] == 5.0 and len(GAIN_ALPHAS) == 51
    assert np.allclose(np.diff(GAIN_ALPHAS), 0.1)
