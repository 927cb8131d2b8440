"""Encoding models on affective images (seed 000's validation) with planted effects.

A synthetic image set on disk: each image holds two gratings of fixed power
whose balance turns from horizontal to vertical stripes as valence rises (so
radial spatial-frequency energy and mean colour do not change with valence),
and a red tint that rises with arousal (a colour confound). A small network
reads colour, the two orientations and six random filters; per subject, the
"amygdala" model reads vertical minus horizontal stripes (a valence code), "LB"
the reverse, and "colour" the red detector, each plus idiosyncratic weights on
the random filters.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

from bids_affect.exceptions import InputDataError, UsageError
from bids_affect.image_sets import ImageStream, Preprocess, load_image_set, low_level_features
from bids_affect.image_validation import (
    LinearROIReadout,
    group_coefficient_tests,
    image_features,
    predict_roi_responses,
    rating_design,
    rating_regression,
    registry_image_features,
    roi_readout,
    validate_encoding_models,
)
from bids_affect.models.image import Preprocessing
from tests.helpers import gabor

SIZE = 32
CYCLES = 4
RAW = Preprocessing(resize=(SIZE, SIZE), crop=None, scale=255.0, mean=(0, 0, 0), std=(1, 1, 1))
ROIS = ["amygdala", "LB", "colour"]


def make_rated_images(root: Path, n: int, rng: np.random.Generator) -> Path:
    root.mkdir(parents=True)
    valence, arousal = rng.uniform(1, 9, n), rng.uniform(1, 9, n)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    rows = []
    for i in range(n):
        theta = (valence[i] - 1) / 8 * np.pi / 2 + rng.normal(0, 0.15)
        red = 0.2 + 0.03 * (arousal[i] - 5) + rng.normal(0, 0.03)
        phases = rng.uniform(0, 2 * np.pi, 2)
        luminance = (0.45 + 0.15 * np.sin(theta) * np.sin(2 * np.pi * CYCLES * xx / SIZE
                                                         + phases[0])
                     + 0.15 * np.cos(theta) * np.sin(2 * np.pi * CYCLES * yy / SIZE + phases[1])
                     + rng.normal(0, 0.03, (SIZE, SIZE)))
        pixels = np.stack([luminance + red, luminance - red / 2 + rng.normal(0, 0.02),
                           luminance - red / 2 + rng.normal(0, 0.02)], axis=-1)
        Image.fromarray((np.clip(pixels, 0, 1) * 255).astype(np.uint8)).save(
            root / f"im{i:03d}.png")
        rows.append(f"im{i:03d}.png\t{valence[i]:.3f}\t{arousal[i]:.3f}")
    (root / "ratings.tsv").write_text("file\tvalence\tarousal\n" + "\n".join(rows) + "\n")
    return root


class FeatureNet(nn.Module):
    """conv: 0 red-opponent, 1 vertical stripes, 2 horizontal stripes, 3-8 random."""

    def __init__(self, seed: int = 0, n_random: int = 6):
        super().__init__()
        self.conv = nn.Conv2d(3, 3 + n_random, 7, padding=3)
        self.relu = nn.ReLU()
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            weights = torch.randn(3 + n_random, 3, 7, 7, generator=generator) / 20
            weights[0] = -0.5 / 49
            weights[0, 0] = 1 / 49
            weights[1] = torch.tensor(gabor(0.0, CYCLES / SIZE) / 3)[None]
            weights[2] = torch.tensor(gabor(np.pi / 2, CYCLES / SIZE) / 3)[None]
            self.conv.weight.copy_(weights)
            self.conv.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv(x))


def subject_models(n_features: int, scale: np.ndarray, n_subjects: int,
                   rng: np.random.Generator) -> dict[str, LinearROIReadout]:
    models = {}
    for subject in range(n_subjects):
        weights = np.zeros((n_features, 3))
        gain = rng.uniform(0.5, 1.5)
        weights[1, 0], weights[2, 0] = gain, -gain    # amygdala: valence up
        weights[1, 1], weights[2, 1] = -gain, gain    # LB: valence down
        weights[0, 2] = rng.uniform(0.5, 1.5)         # colour: red only
        weights[3:] += rng.normal(0, 0.3, (n_features - 3, 3))
        models[f"sub-{subject:02d}"] = LinearROIReadout(weights / scale[:, None], np.zeros(3),
                                                        roi_names=ROIS)
    return models


@pytest.fixture(scope="module")
def rated(tmp_path_factory):
    rng = np.random.default_rng(0)
    root = make_rated_images(tmp_path_factory.mktemp("oasis") / "OASIS", 120, rng)
    image_set = load_image_set(root, keep_unknown=True)
    stream = ImageStream(image_set, Preprocess(RAW), batch_size=32)
    features = image_features(FeatureNet(), "relu", stream)
    models = subject_models(features.shape[1], features.std(axis=0), 8, rng)
    return image_set, features, low_level_features(image_set), models


def test_planted_valence_is_recovered_with_its_sign(rated):
    image_set, features, covariates, models = rated
    assert len(image_set) == 120  # images near category boundaries are kept
    result = validate_encoding_models(models, features, image_set.table, covariates)
    group = result.group.set_index(["roi", "term"])
    assert group.loc[("amygdala", "valence"), "t"] > 5
    assert group.loc[("amygdala", "valence"), "p"] < 1e-3
    assert group.loc[("amygdala", "valence"), "cohen_d"] > 2
    assert group.loc[("LB", "valence"), "t"] < -5
    subjects = result.subjects.set_index(["participant_id", "roi", "term"])
    per_subject = subjects.xs(("amygdala", "valence"), level=("roi", "term"))
    assert (per_subject["coef"] > 0).all() and (per_subject["p"] < 0.05).all()
    assert result.predicted.shape == (8 * 120 * 3, 4)
    assert group.loc[("amygdala", "valence"), "n_subjects"] == 8


def test_a_pure_colour_effect_is_absorbed_by_the_colour_covariate(rated):
    image_set, features, covariates, models = rated
    without = validate_encoding_models(models, features, image_set.table).group
    without = without.set_index(["roi", "term"])
    # Red rises with arousal, so without covariates the colour model "tracks arousal".
    assert without.loc[("colour", "arousal"), "t"] > 4
    assert without.loc[("colour", "arousal"), "p"] < 1e-3
    controlled = validate_encoding_models(models, features, image_set.table,
                                          covariates).group.set_index(["roi", "term"])
    assert controlled.loc[("colour", "arousal"), "p"] > 0.05
    assert abs(controlled.loc[("colour", "arousal"), "mean"]) < 0.5 * abs(
        without.loc[("colour", "arousal"), "mean"])
    assert controlled.loc[("colour", "red"), "t"] > 3  # the covariate takes it


def test_group_t_and_cohen_d_match_scipy_and_hand():
    per_subject = pd.DataFrame({"participant_id": list("abcde"), "roi": "amygdala",
                                "term": "valence", "coef": [0.1, 0.4, 0.2, 0.5, 0.3]})
    row = group_coefficient_tests(per_subject).iloc[0]
    mean, sd = 0.3, np.std([0.1, 0.4, 0.2, 0.5, 0.3], ddof=1)
    assert row["cohen_d"] == pytest.approx(mean / sd)
    assert row["t"] == pytest.approx(mean / (sd / np.sqrt(5)))
    assert row["df"] == 4
    with pytest.raises(InputDataError, match="2 at least"):
        group_coefficient_tests(per_subject.iloc[:1])


def test_regression_equals_statsmodels_ols_on_standardised_data(rng):
    import statsmodels.api as sm

    ratings = pd.DataFrame({"valence": rng.uniform(1, 9, 60), "arousal": rng.uniform(1, 9, 60)})
    covariates = pd.DataFrame({"luminance": rng.normal(size=60)})
    response = 0.5 * ratings["valence"] - covariates["luminance"] + rng.normal(0, 1, 60)
    design = rating_design(ratings, covariates)
    assert design.columns.tolist() == ["const", "valence", "arousal", "valence_x_arousal",
                                       "luminance"]
    z = lambda c: (c - c.mean()) / c.std(ddof=0)  # noqa: E731
    interaction = (ratings["valence"] - ratings["valence"].mean()) * (
        ratings["arousal"] - ratings["arousal"].mean())
    manual = np.column_stack([np.ones(60), z(ratings["valence"]), z(ratings["arousal"]),
                              z(interaction), z(covariates["luminance"])])
    expected = sm.OLS(z(response).to_numpy(), manual).fit()
    table = rating_regression(pd.DataFrame({"amygdala": response}), design).set_index("term")
    assert table["coef"].tolist() == pytest.approx(expected.params[1:].tolist())
    assert table["t"].tolist() == pytest.approx(expected.tvalues[1:].tolist())


def test_design_rejects_missing_ratings_and_collinear_covariates(rated):
    image_set, _, covariates, _ = rated
    ratings = image_set.table.copy()
    ratings.loc[7, "arousal"] = np.nan
    with pytest.raises(InputDataError, match="im007.png"):
        rating_design(ratings)
    grey = covariates.assign(green=covariates["red"], blue=covariates["red"])
    with pytest.raises(InputDataError, match="collinear.*luminance"):
        rating_design(image_set.table, grey)
    with pytest.raises(InputDataError, match="constant"):
        rating_design(image_set.table, covariates.assign(red=0.5))
    with pytest.raises(InputDataError, match="119 covariate rows for 120"):
        rating_design(image_set.table, covariates.iloc[:-1])


def test_roi_readout_averages_a_real_encoder_over_roi_voxels(rng):
    from bids_affect.encoding import PLSEncoder

    X = rng.normal(size=(80, 12)).astype(np.float32)
    Y = X[:, :3] @ rng.normal(size=(3, 10)) + rng.normal(0, 0.1, size=(80, 10))
    encoder = PLSEncoder(n_components=3).fit(X, Y)
    rois = {"CM": [0, 1, 2], "LB": np.arange(10) >= 6}
    readout = roi_readout(encoder, rois)
    voxels = encoder.predict(X)
    expected = np.column_stack([voxels[:, :3].mean(axis=1), voxels[:, 6:].mean(axis=1)])
    assert np.allclose(readout.predict(X), expected, atol=1e-4)
    assert readout.roi_names == ["CM", "LB"]
    features = torch.from_numpy(X[:4]).requires_grad_(True)
    readout(features).sum().backward()  # differentiable, for synthesis
    assert features.grad is not None
    with pytest.raises(InputDataError, match="'SF' names no voxel"):
        roi_readout(encoder, {"SF": [12]})
    with pytest.raises(UsageError, match="lacks"):
        roi_readout(object(), rois)


def test_predicted_responses_are_checked(rng):
    features = rng.normal(size=(5, 3))
    table = predict_roi_responses(lambda X: pd.DataFrame({"CM": X[:, 0]}), features)
    assert table.columns.tolist() == ["CM"]
    with pytest.raises(InputDataError, match=r"shape \(4, 1\) for 5 images"):
        predict_roi_responses(lambda X: X[:4, :1], features)
    with pytest.raises(InputDataError, match="NaN"):
        predict_roi_responses(lambda X: X * np.nan, features)
    with pytest.raises(InputDataError, match="2 ROI names for 3"):
        predict_roi_responses(lambda X: X, features, roi_names=["a", "b"])


def test_registry_features_stream_equal_the_extractor(tmp_path, rng):
    from bids_affect.models.image import ImageFeatures

    folder = tmp_path / "set" / "all"
    folder.mkdir(parents=True)
    pixels = rng.integers(0, 256, size=(3, 40, 50, 3), dtype=np.uint8)
    for i, image in enumerate(pixels):
        Image.fromarray(image).save(folder / f"{i}.png")
    extractor = ImageFeatures("alexnet", "fc7", weights="random", random_state=0,
                              batch_size=2).fit()
    image_set = load_image_set(tmp_path / "set", min_per_category=1)
    streamed = registry_image_features(extractor, image_set)
    assert np.allclose(streamed, extractor.transform(pixels), atol=1e-5)
    gray = registry_image_features(extractor, image_set, grayscale=True)
    assert not np.allclose(gray, streamed)
