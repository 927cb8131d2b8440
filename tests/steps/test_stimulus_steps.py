"""The stimulus-model steps' pieces: readouts, selective channels, encoding fits, checks.

End-to-end runs are in tests/workflows/test_stimulus_models.py; here, what
those runs rest on, and the bad inputs that stop a run before any work.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from bids_affect.cli.run import main
from bids_affect.config import Config
from bids_affect.encoding import EncodingModel
from bids_affect.exceptions import InputDataError, InputMissingError
from bids_affect.image_validation import roi_readout
from bids_affect.io import derivatives as deriv
from bids_affect.selectivity import channel_selectivity
from bids_affect.steps.image_validation import (
    check_weights_unchanged,
    image_encoding_fits,
    raw_feature_encoder,
)
from bids_affect.steps.selectivity import (
    SelectivityOptions,
    gain_alphas,
    selective_channels,
)
from bids_affect.workflows.group import init_group_wf
from bids_affect.workflows.participant import SharedSettings


def test_raw_feature_readout_equals_the_encoding_models_roi_predictions(rng):
    # Two feature sets, three FIR kernels: still-image features enter every kernel block.
    band_sizes, n_voxels = [4 * 3, 2 * 3], 7
    model = EncodingModel("ridge", rng.normal(size=(18, n_voxels)).astype(np.float32),
                          rng.normal(size=18), rng.uniform(0.5, 2, 18),
                          rng.normal(size=n_voxels), band_names=["a", "b"],
                          band_sizes=band_sizes, n_kernels=3)
    rois = {"CM": np.arange(7) < 3, "LB": np.arange(7) >= 3}
    features = rng.normal(size=(5, 6))
    readout = roi_readout(raw_feature_encoder(model), rois)
    expected = model.predict_rois(features, rois).to_numpy()
    np.testing.assert_allclose(readout.predict(features), expected, rtol=1e-4, atol=1e-4)
    # ... and the readout is differentiable (gradient ascent runs through it).
    inputs = torch.tensor(features, dtype=torch.float32, requires_grad=True)
    readout(inputs)[:, 0].sum().backward()
    assert inputs.grad is not None and torch.isfinite(inputs.grad).all()


def test_selective_channels_are_the_overlap_of_two_sets_and_the_kept_ones_of_one(rng):
    net = nn.Sequential(nn.Conv2d(3, 12, 3), nn.ReLU())
    categories = np.tile(["pleasant", "neutral", "unpleasant"], 10)
    images = torch.rand(60, 3, 8, 8)
    images[:30][categories == "pleasant", 0] += 0.5
    images[30:][categories == "pleasant", 1] += 0.5
    sets = {"A": (images[:30], categories), "B": (images[30:], categories)}
    result = channel_selectivity(net, {"relu": net[1]}, sets, keep_fraction=0.5)
    chosen = selective_channels(result.table)["relu"]
    assert {k: list(v) for k, v in result.channels("relu").items()} == \
        {k: v for k, v in chosen.items() if k in set(result.overlap["category"])}
    single = channel_selectivity(net, {"relu": net[1]}, {"A": sets["A"]}, keep_fraction=0.5)
    kept = single.table[single.table["kept"]]
    assert selective_channels(single.table)["relu"] == {
        category: sorted(kept.loc[kept["preferred"] == category, "channel"])
        for category in ("pleasant", "neutral", "unpleasant")}


def test_gain_sweep_is_seed_002s_by_default():
    alphas = gain_alphas(SelectivityOptions())
    assert alphas[0] == 0.0 and alphas[-1] == 5.0 and len(alphas) == 51 and 0.3 in alphas


def _encoding_folder(folder: Path, fits: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    model = EncodingModel("ridge", np.ones((3, 4), np.float32), np.zeros(3), np.ones(3),
                          np.zeros(4))
    model.save(folder / "enc.npz")
    deriv.write_json(folder / "models.json", {
        desc: {"model": "enc.npz", "features": [name], "rois": rois, "feature_spec": {
            "feature_sets": [name], "sets": {name: {"computed": computed, "provenance": (
                {"extractor": {"network": "alexnet", "layer": "fc7", "weights": "random",
                               "random_seed": 1}} if computed else {})}}}}
        for desc, (name, rois, computed) in fits.items()})
    return folder


def test_encoding_fits_of_image_features_are_used_and_others_explained(tmp_path):
    folder = _encoding_folder(tmp_path / "enc", {
        "alexnetfc7": ("alexnetfc7", {"CM": [0, 1], "LB": [2, 3]}, True),
        "visual": ("visual", {}, False),
        "wholemask": ("alexnetfc7", {}, True)})
    fits, skipped = image_encoding_fits(folder)
    assert list(fits) == ["alexnetfc7", "wholemask"] and list(skipped) == ["visual"]
    assert "not one image network's layer" in skipped["visual"]
    assert fits["alexnetfc7"].rois["LB"].tolist() == [False, False, True, True]
    assert list(fits["wholemask"].rois) == ["mask"]
    assert fits["alexnetfc7"].extractor["random_seed"] == 1
    bad = _encoding_folder(tmp_path / "bad", {"x": ("alexnetfc7", {"CM": [0, 9]}, True)})
    with pytest.raises(InputDataError, match="outside the model's 4 voxels"):
        image_encoding_fits(bad)
    with pytest.raises(InputMissingError, match="models.json"):
        image_encoding_fits(tmp_path / "none")


def test_weights_changed_since_the_encoding_are_refused(tmp_path):
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"one")
    from bids_affect.models.image import file_sha256

    spec = {"weights": str(weights), "weights_sha256": file_sha256(weights)}
    check_weights_unchanged(spec, tmp_path / "enc.npz")
    weights.write_bytes(b"two")
    with pytest.raises(InputDataError, match="weights changed"):
        check_weights_unchanged(spec, tmp_path / "enc.npz")
    check_weights_unchanged({"weights": "random", "weights_sha256": None}, tmp_path)


def test_selectivity_options_round_trip_through_toml(tmp_path):
    config = Config.from_dict({
        "analysis": {"analyses": ["selectivity"]},
        "selectivity": {"image_set": {"IAPS": "/data/iaps"}, "keep_fraction": 0.5,
                        "grayscale": False},
        "image-validation": {"colour": "luminance"},
        "synthesis": {"generator_output_range": [-1.0, 1.0], "optimizer": "gradient"}})
    path = tmp_path / "run.toml"
    path.write_text(config.to_toml())
    again = Config.from_toml(path)
    assert again.section("selectivity").image_set == {"IAPS": Path("/data/iaps")}
    assert again.section("selectivity").grayscale is False
    assert again.section("synthesis").generator_output_range == [-1.0, 1.0]
    assert again.section("image-validation").colour == "luminance"


def test_methods_describe_the_analyses_that_ran():
    from bids_affect.boilerplate import methods_boilerplate

    text = methods_boilerplate(Config.from_dict({"analysis": {"analyses": [
        "selectivity", "image-validation", "synthesis"]}, "synthesis": {"n_images": 7}}))
    assert "Liu et al. (2024)" in text and "top 80%" in text
    assert "Cohen's d" in text and "7 images were synthesised" in text


def test_group_wiring_has_a_gain_lesion_node_per_image_set(tmp_path):
    config = Config.from_dict({"selectivity": {"image_set": {"IAPS": str(tmp_path),
                                                             "N-APS": str(tmp_path)}},
                               "encoding": {"feature_weights": "random"}})
    options = {name: config.section(name) for name in ("selectivity", "encoding")}

    def names(opts):
        wf = init_group_wf(output_dir=tmp_path, participant_label=None, provenance={},
                           analyses=["selectivity"], options=opts, shared=SharedSettings(),
                           collect_decoding=False)
        return {node.name for node in wf._graph.nodes()}

    assert names(options) == {"selectivity", "gainlesion_IAPS", "gainlesion_NAPS",
                              "merge_selectivity", "ds_selectivity"}
    options["selectivity"].gain_lesion = False
    assert names(options) == {"selectivity", "merge_selectivity", "ds_selectivity"}


# --------------------------------------------------------------------------- bad input


@pytest.fixture
def participant_args(synthetic_dataset, tmp_path):
    def args(*extra):
        return [str(synthetic_dataset), str(tmp_path / "out"), "participant", "--analyses",
                *extra, "--skip-bids-validation", "-w", str(tmp_path / "work")]
    return args


def _error_line(capsys) -> str:
    (line,) = [line for line in capsys.readouterr().err.splitlines()
               if line.startswith("bids_affect: error")]
    return line


def test_image_validation_refuses_missing_and_unrated_images_before_any_work(
        participant_args, tmp_path, capsys):
    rated = tmp_path / "rated"
    rated.mkdir()
    Image.new("RGB", (8, 8)).save(rated / "a.png")
    (rated / "ratings.tsv").write_text("file\tvalence\tarousal\na.png\t2\t5\nb.png\t8\t4\n")
    assert main(participant_args("encoding,image-validation", "--image-set",
                                 f"R={rated}")) == 66
    assert "--image-set R" in (line := _error_line(capsys)) and "b.png" in line
    folders = tmp_path / "folders"
    for category in ("calm", "scary"):
        (folders / category).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(folders / category / "x.png")
    assert main(participant_args("image-validation", "--image-set", f"F={folders}")) == 65
    assert "lack valence or arousal" in _error_line(capsys)
    assert main(participant_args("image-validation")) == 64
    assert "needs at least one image set" in _error_line(capsys)
    assert not (tmp_path / "out").exists()


class _NotImages(nn.Module):
    latent_dim = 4

    def forward(self, codes):
        return codes.sum(dim=1)


def test_synthesis_refuses_bad_generators_and_settings_before_any_work(participant_args,
                                                                       tmp_path, capsys):
    flat = tmp_path / "flat.pt"
    torch.save(_NotImages(), flat)
    assert main(participant_args("synthesis", "--generator", str(flat))) == 65
    line = _error_line(capsys)
    assert "--generator" in line and "image batch" in line and "flat.pt" in line
    assert main(participant_args("synthesis", "--generator", str(tmp_path / "gone.pt"))) == 66
    assert "gone.pt" in _error_line(capsys)
    images = nn.Sequential(nn.Linear(4, 3 * 8 * 8), nn.Sigmoid(), nn.Unflatten(1, (3, 8, 8)))
    generator = tmp_path / "generator.pt"
    torch.save(images, generator)
    other = tmp_path / "other.pth"
    torch.save(nn.Linear(5, 2).state_dict(), other)
    assert main(participant_args("synthesis", "--generator", str(generator),
                                 "--generator-latent-dim", "4", "--generator-weights",
                                 str(other))) == 65
    assert "weights do not fit" in _error_line(capsys)
    assert main(participant_args("synthesis", "--synthesis-images", "3",
                                 "--synthesis-folds", "5")) == 64
    assert "fewer than the --synthesis-folds 5" in _error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_selectivity_needs_weights_and_known_layers(tmp_path, capsys):
    (tmp_path / "bids").mkdir()
    (tmp_path / "bids" / "dataset_description.json").write_text(json.dumps(
        {"Name": "x", "BIDSVersion": "1.10.0"}))
    common = [str(tmp_path / "bids"), str(tmp_path / "out"), "group", "--analyses",
              "selectivity", "--image-set", f"A={tmp_path}", "-w", str(tmp_path / "work")]
    assert main(common) == 64
    assert "--feature-weights" in _error_line(capsys)
    assert main([*common, "--feature-weights", "random", "--selectivity-layers",
                 "relu9"]) == 64
    assert "--selectivity-layers" in _error_line(capsys)
    assert not (tmp_path / "out").exists()  # nothing written: the checks come first


def test_image_features_are_computed_once_per_extractor_and_images(tmp_path, monkeypatch):
    import os

    from bids_affect import image_validation
    from bids_affect.image_sets import load_image_set
    from bids_affect.models.image import ImageFeatures
    from bids_affect.steps.image_validation import image_set_features

    for index in range(2):
        (tmp_path / "set" / "a").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 30), (90 * index, 10, 200)).save(tmp_path / "set" / "a" /
                                                              f"{index}.png")
    image_set = load_image_set(tmp_path / "set", min_per_category=1)
    extractor = ImageFeatures("alexnet", "conv1", weights="random", random_state=0).fit()
    cache = tmp_path / "cache"
    first = image_set_features(extractor, image_set, cache)
    assert np.array_equal(first, image_validation.registry_image_features(extractor, image_set))

    def recomputed(*args, **kwargs):
        raise AssertionError("the cached features were not reused")

    with monkeypatch.context() as patch:
        patch.setattr(image_validation, "registry_image_features", recomputed)
        assert np.array_equal(image_set_features(extractor, image_set, cache), first)
    os.utime(image_set.paths[0], ns=(1, 1))  # an image changed: computed again
    image_set_features(extractor, image_set, cache)
    assert len(list(cache.glob("imagefeatures_*.npy"))) == 2
