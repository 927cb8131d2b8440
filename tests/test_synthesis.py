"""Activation maximisation of ROI encoding models and N-way separability (seed 000).

The ROI models are planted: a tiny network with red, green, vertical- and
horizontal-stripe detectors, and a linear readout per ROI (one detector each).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from bids_affect.exceptions import InputDataError, InputMissingError, UsageError
from bids_affect.image_validation import LinearROIReadout
from bids_affect.models.image import Preprocessing
from bids_affect.synthesis import (
    FourierGenerator,
    PixelGenerator,
    image_response_model,
    load_generator,
    random_images,
    separability,
    synthesis_separability,
    synthesize,
)
from tests.helpers import gabor

SIZE = 32
CYCLES = 4
RAW = Preprocessing(resize=(SIZE, SIZE), crop=None, scale=255.0, mean=(0, 0, 0), std=(1, 1, 1))
#: Detector weights of each planted ROI (rows: red, green, vertical, horizontal detectors).
RED, GREEN, VERTICAL = (np.eye(4)[:, k] * 10 for k in range(3))


class Detectors(nn.Module):
    """conv: red-opponent, green-opponent, vertical stripes, horizontal stripes."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 7, padding=3)
        self.relu = nn.ReLU()
        weights = torch.zeros(4, 3, 7, 7)
        for colour in (0, 1):
            weights[colour] = -0.5 / 49
            weights[colour, colour] = 1 / 49
        weights[2] = torch.tensor(gabor(0.0, CYCLES / SIZE) / 3)[None]
        weights[3] = torch.tensor(gabor(np.pi / 2, CYCLES / SIZE) / 3)[None]
        with torch.no_grad():
            self.conv.weight.copy_(weights)
            self.conv.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv(x))


def roi_model(columns, names):
    readout = LinearROIReadout(np.column_stack(columns), np.zeros(len(names)), roi_names=names)
    return image_response_model(Detectors(), "relu", readout, preprocessing=RAW)


class TinyGenerator(nn.Module):
    """Latent (16) -> 3 x 32 x 32 images in [0, 1] (module level: picklable)."""

    latent_dim = 16

    def __init__(self, channels: int = 3):
        super().__init__()
        self.channels = channels
        self.fc = nn.Linear(16, channels * 8 * 8)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        small = torch.sigmoid(self.fc(z)).view(-1, self.channels, 8, 8)
        return nn.functional.interpolate(small, size=(SIZE, SIZE), mode="bilinear",
                                         align_corners=False)


class TanhGenerator(TinyGenerator):
    """The same images in [-1, 1], as a tanh output layer gives."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return 2 * super().forward(z) - 1


class FlatGenerator(nn.Module):
    latent_dim = 16

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 10)

    def forward(self, z):
        return self.fc(z)


@pytest.fixture(scope="module")
def model():
    return roi_model([RED, GREEN, VERTICAL], ["red", "green", "vertical"])


def _random_best(model, generator, n=64):
    with torch.no_grad():
        return model(random_images(generator, n, random_state=123)).numpy().max(axis=0)


# --------------------------------------------------------------------------- synthesis


@pytest.mark.parametrize("optimizer", ["gradient", "cma"])
def test_optimised_images_drive_the_target_well_above_random_images(model, optimizer):
    generator = FourierGenerator(SIZE, max_frequency=4)
    best_random = _random_best(model, generator)
    for index, target in enumerate(("red", "vertical")):
        result = synthesize(model, target, n_images=4, optimizer=optimizer,
                            generator=generator, n_steps=40, learning_rate=0.1,
                            random_state=0)
        assert result.images.shape == (4, 3, SIZE, SIZE)
        assert result.images.min() >= 0 and result.images.max() <= 1
        target_index = [0, 2][index]
        # Every image beats the best of 64 random images by half again.
        assert (result.responses[target].to_numpy() > 1.5 * best_random[target_index]).all()
        assert result.history[-1] >= result.history[0]
        assert result.target == target and result.optimizer == optimizer


def test_default_pixel_parameterisation_with_jitter_and_blur(model):
    best_random = _random_best(model, PixelGenerator(SIZE))
    result = synthesize(model, "vertical", n_images=3, optimizer="gradient", image_size=SIZE,
                        n_steps=40, random_state=0, contrast="others")
    assert result.settings["generator"] == "PixelGenerator"
    assert (result.responses["vertical"] > 2 * best_random[2]).all()
    # "others": the target beats the other ROIs, not only random images.
    assert (result.objective > 0).all()
    assert (result.responses["vertical"] > result.responses[["red", "green"]].max(axis=1)).all()


def test_synthesis_is_reproducible_and_leaves_global_random_state_alone(model):
    generator = FourierGenerator(SIZE, max_frequency=3)
    before = np.random.get_state()  # noqa: NPY002 - checking the legacy global state
    first = synthesize(model, "green", n_images=2, generator=generator, n_steps=5,
                       random_state=7)
    after = np.random.get_state()  # noqa: NPY002
    assert np.array_equal(before[1], after[1]) and before[2] == after[2]
    second = synthesize(model, "green", n_images=2, generator=generator, n_steps=5,
                        random_state=7)
    assert np.array_equal(first.images, second.images)
    third = synthesize(model, "green", n_images=2, generator=generator, n_steps=5,
                       random_state=8)
    assert not np.array_equal(first.images, third.images)


def test_gradient_ascent_needs_a_differentiable_model():
    def numpy_model(images):
        return images.detach().numpy().mean(axis=(2, 3))

    with pytest.raises(UsageError, match="differentiable.*optimizer='cma'"):
        synthesize(numpy_model, 0, roi_names=["r", "g", "b"], optimizer="gradient",
                   image_size=16, n_steps=2, random_state=0)
    result = synthesize(numpy_model, 0, roi_names=["r", "g", "b"], optimizer="cma",
                        generator=FourierGenerator(16, 2), n_steps=15, n_images=2,
                        random_state=0)
    assert (result.responses["r"] > 0.8).all()


def test_bad_targets_and_options(model):
    with pytest.raises(UsageError, match="'SF' is not predicted"):
        synthesize(model, "SF", n_steps=1)
    with pytest.raises(UsageError, match="optimizer"):
        synthesize(model, "red", optimizer="adam")
    with pytest.raises(UsageError, match="max_frequency"):
        FourierGenerator(16, max_frequency=9)


# --------------------------------------------------------------------------- generators


def _check_file_generator(model, path, latent_dim=None):
    generator = load_generator(path, latent_dim=latent_dim)
    assert generator.latent_dim == 16 and generator.image_size == (SIZE, SIZE)
    best_random = _random_best(model, generator)
    result = synthesize(model, "red", n_images=3, generator=generator, optimizer="cma",
                        n_steps=25, random_state=0)
    assert (result.responses["red"] > best_random[0]).all(), path.name
    assert result.settings["latent_dim"] == 16


def test_generator_from_a_pickled_module(model, tmp_path):
    torch.manual_seed(0)
    torch.save(TinyGenerator(), tmp_path / "generator.pt")
    _check_file_generator(model, tmp_path / "generator.pt")


@pytest.mark.slow  # torch.export compiles the generator (10-25 s on 2 shared cores)
def test_generator_from_a_torch_export_archive(model, tmp_path):
    torch.manual_seed(0)
    exported = torch.export.export(TinyGenerator(), (torch.zeros(2, 16),),
                                   dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    torch.export.save(exported, tmp_path / "generator.pt2")
    # An exported program keeps no attributes: its latent dimension is given.
    _check_file_generator(model, tmp_path / "generator.pt2", latent_dim=16)


def test_generator_output_range_is_mapped_to_unit_interval(tmp_path):
    network = TanhGenerator()
    path = tmp_path / "tanh.pt"
    torch.save(network, path)
    with pytest.warns(UserWarning, match="outside output_range"):
        load_generator(path)
    generator = load_generator(path, output_range=(-1.0, 1.0))
    z = torch.zeros(1, 16)
    assert torch.allclose(generator(z), TinyGenerator.forward(network, z), atol=1e-6)


def test_bad_generators_are_refused_naming_the_file(tmp_path):
    cases = {
        "flat.pt": FlatGenerator(),                   # (n, 10): not an image batch
        "grey.pt": TinyGenerator(channels=1),         # (n, 1, H, W)
        "state.pt": TinyGenerator().state_dict(),     # weights, no module
    }
    for name, content in cases.items():
        torch.save(content, tmp_path / name)
        with pytest.raises(InputDataError) as error:
            load_generator(tmp_path / name)
        message = str(error.value)
        assert name in message and "\n" not in message, name
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(InputDataError, match="junk.pt: cannot be read as a torch module"):
        load_generator(tmp_path / "junk.pt")
    with pytest.raises(InputMissingError, match="missing.pt"):
        load_generator(tmp_path / "missing.pt")
    torch.save(nn.Sequential(nn.Linear(4, 3 * 8 * 8), nn.Unflatten(1, (3, 8, 8))),
               tmp_path / "nodim.pt")
    with pytest.raises(UsageError, match="latent dimension"):
        load_generator(tmp_path / "nodim.pt")
    with pytest.raises(InputDataError, match="latent codes of length 5"):
        load_generator(tmp_path / "nodim.pt", latent_dim=5)


def test_generator_weights_for_another_architecture_are_refused(tmp_path):
    torch.save(TinyGenerator(), tmp_path / "generator.pt")
    torch.save({"fc.weight": torch.zeros(10, 16), "fc.bias": torch.zeros(10)},
               tmp_path / "other.pth")
    with pytest.raises(InputDataError) as error:
        load_generator(tmp_path / "generator.pt", weights=tmp_path / "other.pth")
    assert "other.pth" in str(error.value) and "fc.weight" in str(error.value)
    good = TinyGenerator()
    torch.save(good.state_dict(), tmp_path / "good.pth")
    loaded = load_generator(tmp_path / "generator.pt", weights=tmp_path / "good.pth")
    assert torch.equal(loaded.network.fc.weight, good.fc.weight)


# --------------------------------------------------------------------------- separability


def test_distinct_roi_models_are_separable(model):
    made, table, result = synthesis_separability(
        model, n_images=10, n_splits=5, n_permutations=500, optimizer="gradient",
        image_size=SIZE, n_steps=25, random_state=0)
    assert sorted(made) == ["green", "red", "vertical"]
    assert table.shape == (30, 5) and table.columns[:2].tolist() == ["target", "image"]
    assert result.accuracy > 0.9 and result.p_value < 0.01
    assert result.chance == pytest.approx(1 / 3) and abs(result.null_mean - 1 / 3) < 0.1
    assert np.trace(result.confusion.to_numpy()) >= 27


def test_identical_roi_models_stay_at_chance():
    same = roi_model([VERTICAL, VERTICAL, VERTICAL], ["CM", "LB", "SF"])
    _, _, result = synthesis_separability(
        same, n_images=10, n_splits=5, n_permutations=500, optimizer="gradient",
        image_size=SIZE, n_steps=25, random_state=0)
    assert result.p_value > 0.05
    assert result.accuracy < 0.6


def test_two_identical_targets_are_confused_and_clustered_together():
    # As seed 000's LB and SF: two targets whose models are the same.
    four = roi_model([RED, GREEN, VERTICAL, VERTICAL], ["red", "green", "LB", "SF"])
    _, _, result = synthesis_separability(
        four, n_images=10, n_splits=5, n_permutations=200, optimizer="gradient",
        image_size=SIZE, n_steps=25, random_state=0)
    confusion = result.confusion
    assert confusion.loc["red", "red"] >= 9 and confusion.loc["green", "green"] >= 9
    mixed = confusion.loc["LB", "SF"] + confusion.loc["SF", "LB"]
    assert mixed >= 5  # LB and SF images are told apart no better than by a coin
    first_merge = {result.targets[int(i)] for i in result.linkage[0, :2]}
    assert first_merge == {"LB", "SF"}
    assert result.table()["n_targets"].item() == 4


def test_vectorised_null_equals_scikit_learn_nearest_centroid(rng):
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.neighbors import NearestCentroid
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    targets = np.repeat(["a", "b", "c"], 12)
    responses = rng.normal(size=(36, 4)) + 0.8 * (targets[:, None] == ["a", "b", "c", "a"])
    result = separability(responses, targets, n_permutations=200, random_state=5)
    folds = StratifiedKFold(5, shuffle=True, random_state=5)
    reference = cross_val_score(make_pipeline(StandardScaler(), NearestCentroid()),
                                responses, targets, cv=folds)
    assert result.accuracy == pytest.approx(reference.mean())
    assert np.allclose(result.fold_accuracies, reference)
    noise = separability(rng.normal(size=(36, 4)), targets, n_permutations=200,
                         random_state=5)
    assert abs(noise.null_mean - 1 / 3) < 0.05
    other = separability(responses, targets, n_permutations=20, random_state=5,
                         classifier=make_pipeline(StandardScaler(), NearestCentroid()))
    assert other.accuracy == pytest.approx(result.accuracy)


def test_separability_rejects_bad_input(rng):
    with pytest.raises(InputDataError, match="target 'b' has 3 images, fewer than the 5 folds"):
        separability(rng.normal(size=(9, 2)), ["a"] * 6 + ["b"] * 3)
    with pytest.raises(InputDataError, match="2 targets"):
        separability(rng.normal(size=(9, 2)), ["a"] * 9)
    with pytest.raises(InputDataError, match="do not match"):
        separability(rng.normal(size=(9, 2)), ["a", "b"] * 5)
    table = pd.DataFrame(rng.normal(size=(10, 2)))
    assert separability(table, ["a", "b"] * 5, n_splits=2, n_permutations=5,
                        random_state=0).n_permutations == 5
