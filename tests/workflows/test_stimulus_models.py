"""The stimulus-model analyses in the app: selectivity, image-validation, synthesis.

Each runs end to end through ``bids_affect.cli.run.main`` on tiny synthetic
inputs, and its outputs are checked against the library called directly with
the seeds the sidecars record:

- ``selectivity`` (group level, a dataset without BOLD): tests/test_selectivity.py's
  planted CNN is a plug-in image network whose trained weights come from a
  file (so seed 002's control, the same architecture with random weights,
  differs from it); image set A codes the category by colour, set B by grating
  orientation, written as PNG folders, one per category.
- ``image-validation`` and ``synthesis`` (participant level, then group): the
  subject's encoding node is replaced by one that writes, in the encoding
  step's layout (``models.json``), an encoding model of tests/test_image_validation.py's
  feature network with planted ROIs: "amygdala" reads vertical minus
  horizontal stripes (a valence code of the rated images), "LB" the reverse,
  "colour" the red detector.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from bids_affect.cli.run import main
from bids_affect.io import derivatives as deriv
from bids_affect.models.image import (
    Preprocessing,
    register_image_network,
    unregister_image_network,
)
from bids_affect.reports import registry as report_registry
from bids_affect.reports.sections import stimulus_models as stimulus_sections
from tests.test_image_validation import RAW, FeatureNet, make_rated_images
from tests.test_selectivity import (
    CATEGORIES,
    N_PLANTED,
    PlantedCNN,
    colour_images,
    grating_images,
)

#: The planted CNN's channels of each category are 18 of 48: the top 37.5% by SI.
PLANTED_FRACTION = 18 / 48
PLANTED_LAYERS = {"conv1": "conv1", "relu1": "relu1", "pool1": "pool1", "conv2": "conv2",
                  "relu2": "relu2", "fc1": "fc1", "relu3": "relu3", "fc2": "fc2"}
PIXELS = Preprocessing(resize=(32, 32), crop=None, scale=255.0, mean=(0, 0, 0),
                       std=(1, 1, 1))
ROIS = {"amygdala": (0, 20), "LB": (20, 40), "colour": (40, 60)}

# Until bids_affect/reports/sections/__init__.py imports the stimulus-model sections,
# they are registered here for these tests only (others' doctests list the sections).
_SECTIONS = {name: report_registry.SECTIONS[name] for name in stimulus_sections.SECTION_NAMES}
if "stimulus_models" not in Path(report_registry.__file__).with_name(
        "sections").joinpath("__init__.py").read_text():
    for _name in _SECTIONS:
        report_registry.SECTIONS.pop(_name)


@pytest.fixture(scope="module", autouse=True)
def stimulus_report_sections():
    with pytest.MonkeyPatch.context() as patch:
        for name, found in _SECTIONS.items():
            patch.setitem(report_registry.SECTIONS, name, found)
        yield


def _planted_architecture() -> PlantedCNN:
    """The planted CNN's architecture with torch's random initialisation (weights: a file)."""
    network = PlantedCNN()
    for module in network.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return network


def _feature_network() -> FeatureNet:
    return FeatureNet()


@pytest.fixture(scope="module")
def networks(tmp_path_factory):
    """The plug-in networks, registered for this module; the planted weights file."""
    register_image_network("plantedcnn", layers=PLANTED_LAYERS, preprocessing=PIXELS,
                           description="test: planted category channels")(
        _planted_architecture)
    register_image_network("stripes", layers={"conv1": "conv", "relu1": "relu"},
                           preprocessing=RAW, description="test: colour and stripes")(
        _feature_network)
    weights = tmp_path_factory.mktemp("weights") / "planted.pth"
    torch.save(PlantedCNN().state_dict(), weights)
    yield {"planted": weights}
    unregister_image_network("plantedcnn")
    unregister_image_network("stripes")


def _write_category_folders(root: Path, images: torch.Tensor, categories) -> Path:
    for index, (image, category) in enumerate(zip(images, categories)):
        (root / category).mkdir(parents=True, exist_ok=True)
        pixels = np.rint(image.numpy().transpose(1, 2, 0) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / category / f"im{index:03d}.png")
    return root


@pytest.fixture(scope="module")
def image_sets(tmp_path_factory):
    """Two sets sharing categories but not cues (A: colour tint, B: grating), as PNG folders."""
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("image_sets")
    return {"A": _write_category_folders(root / "A", *colour_images(40, rng)),
            "B": _write_category_folders(root / "B", *grating_images(40, rng))}


@pytest.fixture(scope="module")
def no_bold_dataset(tmp_path_factory):
    """A BIDS dataset with no subject at all: selectivity needs none."""
    root = tmp_path_factory.mktemp("nobold") / "bids"
    root.mkdir()
    (root / "dataset_description.json").write_text(json.dumps(
        {"Name": "image sets only", "BIDSVersion": "1.10.0"}))
    return root


def _selectivity_args(dataset, out, work, image_sets, weights, *extra):
    return [str(dataset), str(out), "group", "--analyses", "selectivity",
            "--image-set", *(f"{name}={path}" for name, path in image_sets.items()),
            "--feature-network", "plantedcnn", "--feature-weights", str(weights),
            # The encoding section checks its layer whatever runs (see the report).
            "--feature-layer", "relu2",
            "--selectivity-layers", "relu1,relu2", "--keep-fraction", str(PLANTED_FRACTION),
            "--no-grayscale", "--random-seed", "3", "-w", str(work), "--nprocs", "1", *extra]


GAIN_FLAGS = ("--gain-max", "2", "--gain-step", "1", "--random-channel-sets", "3",
              "--readout-learning-rate", "0.05", "--readout-epochs", "100")


@pytest.fixture(scope="module")
def selectivity_run(networks, image_sets, no_bold_dataset, tmp_path_factory):
    folder = tmp_path_factory.mktemp("selectivity")
    out, work = folder / "out", folder / "work"
    code = main(_selectivity_args(no_bold_dataset, out, work, image_sets, networks["planted"],
                                  *GAIN_FLAGS))
    assert code == 0
    return out


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", keep_default_na=False, na_values=["n/a"])


def _sidecar(path: Path) -> dict:
    return json.loads(deriv.sidecar_path(path).read_text())


def _assert_tables_equal(written: pd.DataFrame, expected: pd.DataFrame) -> None:
    """A written TSV (6 significant digits) equals the library's table."""
    assert list(written.columns) == list(expected.columns)
    assert len(written) == len(expected)
    for column in expected.columns:
        if pd.api.types.is_numeric_dtype(expected[column]) and not \
                pd.api.types.is_bool_dtype(expected[column]):
            np.testing.assert_allclose(written[column].to_numpy(dtype=float),
                                       expected[column].to_numpy(dtype=float),
                                       rtol=2e-5, atol=1e-7, err_msg=column)
        else:
            assert written[column].astype(str).tolist() == \
                expected[column].astype(str).tolist(), column


def _library_inputs(image_sets, weights):
    from bids_affect.image_sets import ImageStream, Preprocess, load_image_set
    from bids_affect.models.image import create_image_network
    from bids_affect.selectivity import registry_layers

    network = create_image_network("plantedcnn", weights=str(weights))
    layers = registry_layers("plantedcnn", network, ["relu1", "relu2"])
    loaded = {name: load_image_set(path, name=name) for name, path in image_sets.items()}
    streams = {name: (ImageStream(s, Preprocess(PIXELS, grayscale=False), batch_size=32),
                      s.categories) for name, s in loaded.items()}
    return network, layers, loaded, streams


@pytest.mark.slow  # the app's run (a module fixture) takes 13-25 s
def test_selectivity_runs_without_bold_and_equals_the_library(selectivity_run, networks,
                                                              image_sets):
    from bids_affect.selectivity import (
        channel_selectivity,
        layer_summary,
        registry_random_control,
    )

    out = selectivity_run
    channels_path = out / "group" / "desc-plantedcnn_selectivity.tsv"
    about = _sidecar(channels_path)
    network, layers, _, streams = _library_inputs(image_sets, networks["planted"])
    control = registry_random_control("plantedcnn", ["relu1", "relu2"],
                                      random_state=about["ControlSeed"])
    expected = channel_selectivity(network, layers, streams, keep_fraction=PLANTED_FRACTION,
                                   control=control)
    _assert_tables_equal(_read(channels_path), expected.table)
    _assert_tables_equal(_read(out / "group" / "desc-plantedcnn_overlap.tsv"),
                         expected.overlap)
    _assert_tables_equal(_read(out / "group" / "desc-plantedcnn_layers.tsv"),
                         layer_summary(expected.table))
    assert about["Network"]["weights_sha256"] and about["Parameters"]["grayscale"] is False
    assert about["ImageSets"]["A"]["categories"] == dict.fromkeys(CATEGORIES, 40)

    # The science, as seed 002: the planted channels are the shared ones, well above the
    # hypergeometric null; the random-weight control shares nothing beyond chance.
    overlap = _read(out / "group" / "desc-plantedcnn_overlap.tsv")
    trained = overlap[(overlap["network"] == "trained") & (overlap["layer"] == "relu2")]
    assert sorted(trained["category"]) == sorted(CATEGORIES)
    for row in trained.itertuples():
        start = CATEGORIES.index(row.category) * N_PLANTED
        assert row.channels == " ".join(map(str, range(start, start + N_PLANTED)))
        assert row.overlap > 4 * row.expected and row.p_value < 1e-4
    control_rows = overlap[(overlap["network"] == "random") & (overlap["layer"] == "relu2")]
    assert len(control_rows) and control_rows["p_value"].min() > 0.05 / 6


@pytest.mark.slow  # the app's run (a module fixture) takes 13-25 s
@pytest.mark.filterwarnings("ignore:layer relu1. no channel is selective:UserWarning")
def test_gain_and_lesion_equal_the_library_and_lesions_hurt(selectivity_run, networks,
                                                            image_sets):
    from bids_affect.selectivity import ReadoutHead, gain_lesion, table_1

    out = selectivity_run
    summary_path = out / "group" / "desc-plantedcnn_gainlesion.tsv"
    seeds = _sidecar(summary_path)["GainLesionSeeds"]
    network, layers, loaded, streams = _library_inputs(image_sets, networks["planted"])
    channels = {category: list(range(k * N_PLANTED, (k + 1) * N_PLANTED))
                for k, category in enumerate(CATEGORIES)}
    head = ReadoutHead(learning_rate=0.05, epochs=100)
    name = "B"
    stream, categories = streams[name]
    results = {layer: gain_lesion(network, module, stream, categories,
                                  channels if layer == "relu2" else _relu1_channels(out),
                                  alphas=(0.0, 1.0, 2.0), n_random=3, head=head,
                                  random_state=seeds[name])
               for layer, module in layers.items()}
    written = _read(summary_path)
    mine = written[written["image_set"] == name].drop(columns=["image_set", "layer"])
    expected = pd.concat([r.summary for r in results.values()], ignore_index=True)
    _assert_tables_equal(mine.reset_index(drop=True), expected)
    table1 = _read(out / "group" / "desc-plantedcnn_table1.tsv")
    _assert_tables_equal(table1[table1["image_set"] == name].drop(columns="image_set")
                         .reset_index(drop=True), table_1(results))
    # Lesioning the planted channels abolishes recognition of their category; lesioning
    # as many random channels does far less (10 test images per category: F1 is coarse).
    for _, relu2 in written[written["layer"] == "relu2"].groupby("image_set"):
        assert (relu2["lesioned"] == 0).all()
        assert relu2["original"].mean() > 0.4
        assert relu2["random_lesioned"].mean() > relu2["lesioned"].mean() + 0.2
    curves = _read(out / "group" / "desc-plantedcnn_gaincurves.tsv")
    assert set(curves["alpha"]) == {-1.0, 0.0, 1.0, 2.0}


def _relu1_channels(out: Path) -> dict[str, list[int]]:
    """relu1's channels selective in both sets, from the written channel table."""
    table = _read(out / "group" / "desc-plantedcnn_selectivity.tsv")
    rows = table[(table["network"] == "trained") & (table["layer"] == "relu1") & table["kept"]]
    shared = {}
    for category in CATEGORIES:
        per_set = [set(group.loc[group["preferred"] == category, "channel"])
                   for _, group in rows.groupby("image_set")]
        shared[category] = sorted(set.intersection(*per_set))
    return shared


@pytest.mark.slow  # the app's run (a module fixture) takes 13-25 s
def test_selectivity_figures_sidecars_and_report(selectivity_run):
    out = selectivity_run
    for suffix in ("si", "tuning", "gain"):
        figure = out / "group" / "figures" / f"desc-plantedcnn_{suffix}.svg"
        assert figure.read_text().startswith("<?xml")
        assert _sidecar(figure)["Description"]
    for kind in ("selectivity_channels", "selectivity_layers", "selectivity_overlap",
                 "selectivity_gainlesion", "selectivity_gaincurves", "selectivity_table1"):
        path = deriv.output_path(out, kind, desc="plantedcnn")
        about = _sidecar(path)
        assert about["Description"] and about["RandomSeed"] >= 0, kind
        assert about["Sources"][-1].endswith("planted.pth")
    report = (out / "group.html").read_text()
    assert "Emotion-selective channels" in report and "group/figures/desc-plantedcnn_si.svg" \
        in report


def _last_error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines()
            if line.startswith("bids_affect: error")]


def test_selectivity_bad_input_exits_with_its_code_and_one_line(networks, image_sets,
                                                                no_bold_dataset, tmp_path,
                                                                capsys):
    def run(sets, weights=networks["planted"], *extra, level="group"):
        args = _selectivity_args(no_bold_dataset, tmp_path / "out", tmp_path / "work", sets,
                                 weights, "--no-gain-lesion", *extra)
        args[2] = level
        return main(args)

    assert run({"A": image_sets["A"], "C": tmp_path / "missing"}) == 66
    (line,) = _last_error_lines(capsys)
    assert "--image-set C" in line and "missing" in line
    rated = tmp_path / "rated"
    rated.mkdir()
    Image.new("RGB", (8, 8)).save(rated / "here.png")
    (rated / "ratings.tsv").write_text("file\tvalence\tarousal\nhere.png\t2\t5\n"
                                       "gone.png\t8\t5\n")
    assert run({"R": rated}) == 66
    (line,) = _last_error_lines(capsys)
    assert "gone.png" in line and "ratings.tsv" in line
    assert run({"A": image_sets["A"]}, level="participant") == 64
    (line,) = _last_error_lines(capsys)
    assert "group level only" in line
    alexnet = tmp_path / "alexnet_like.pth"
    torch.save({"features.0.weight": torch.zeros(64, 3, 11, 11)}, alexnet)
    assert run(dict(image_sets), alexnet) == 65
    (line,) = _last_error_lines(capsys)
    assert "weights do not fit network 'plantedcnn'" in line and "alexnet_like.pth" in line
    assert not (tmp_path / "out" / "group").exists()


def test_help_shows_the_new_flags_with_defaults(capsys):
    assert main(["--help"]) == 0
    # argparse wraps lines at hyphens too ("image-" / "validation").
    text = re.sub(r"-\s+", "-", " ".join(capsys.readouterr().out.split()))
    for expected in ("--image-set NAME=DIR", "--keep-fraction F", "(default: 0.8)",
                     "--no-grayscale", "(default: grayscale, as seed 002)",
                     "--random-channel-sets N", "--gain-max ALPHA", "(default: 5.0)",
                     "--image-colour-covariates {rgb,luminance}", "--generator PATH",
                     "--synthesis-optimizer {cma,gradient}", "--synthesis-images N",
                     "selectivity: emotion-selective channels", "image-validation:",
                     "synthesis: images that maximise"):
        assert expected in text, expected


# --------------------------------------------------------------------------- encoding models


def fake_encode_step(out_dir: Path, *, samples_dir: Path, seed: int) -> None:
    """An encoding step's results in its layout, with planted ROI models (test stand-in)."""
    from bids_affect.bold import SampleSet
    from bids_affect.encoding import EncodingModel
    from bids_affect.models.image import ImageFeatures

    samples = SampleSet.load(samples_dir)
    n_voxels = samples.X.shape[1]
    extractor = ImageFeatures("stripes", "relu1", weights="random", random_state=seed).fit()
    rng = np.random.default_rng(seed)
    n_features = extractor.n_features_out_
    weights = rng.normal(0, 0.01, (n_features, n_voxels))
    gain = rng.uniform(0.5, 1.5)
    (a0, a1), (l0, l1), (c0, c1) = ROIS.values()
    weights[1, a0:a1], weights[2, a0:a1] = gain, -gain     # valence up
    weights[1, l0:l1], weights[2, l0:l1] = -gain, gain     # valence down
    weights[0, c0:c1] = gain                               # red only
    name = "stripesrelu1"
    spec = {"feature_sets": [name], "network": "stripes", "layer": "relu1",
            "weights": "random", "frame_step": 5,
            "sets": {name: {"provenance": {"extractor": extractor.provenance(),
                                           "frame_step": 5},
                            "computed": True, "n_features": n_features, "columns": []}}}
    EncodingModel("ridge", weights.astype(np.float32), np.zeros(n_features),
                  np.ones(n_features), rng.normal(0, 0.1, n_voxels), band_names=[name],
                  band_sizes=[n_features], feature_spec=spec).save(out_dir / "enc.npz")
    deriv.write_json(out_dir / "models.json", {name: {
        "model": "enc.npz", "encoder": "ridge", "features": [name], "feature_spec": spec,
        "rois": {roi: list(range(a, b)) for roi, (a, b) in ROIS.items()},
        "rois_note": "test", "space": None, "mask": "mask.nii.gz"}})


def fake_encoding_node(builder):
    """The encoding node's stand-in: made once whoever asks, reading the samples."""
    def make():
        node = builder.node(fake_encode_step, "encode", {"seed": builder.seed("fake")})
        builder.wf.connect(builder.samples, "out_dir", node, "samples_dir")
        return node

    return builder.shared_node(("encoding",), make)


@pytest.fixture(scope="module")
def rated_set(tmp_path_factory):
    return make_rated_images(tmp_path_factory.mktemp("oasis") / "OASIS", 60,
                             np.random.default_rng(1))


SYNTHESIS_FLAGS = ("--synthesis-optimizer", "gradient", "--synthesis-steps", "25",
                   "--synthesis-images", "6", "--synthesis-folds", "3",
                   "--synthesis-image-size", "32", "--synthesis-learning-rate", "0.2",
                   "--synthesis-permutations", "199")


@pytest.fixture(scope="module")
def participant_run(networks, rated_set, synthetic_dataset, tmp_path_factory):
    folder = tmp_path_factory.mktemp("stimulus_participant")
    out, work = folder / "out", folder / "work"
    with pytest.MonkeyPatch.context() as patch:
        from bids_affect.steps import encoding as encoding_steps

        patch.setattr(encoding_steps, "encoding_node", fake_encoding_node)
        code = main([str(synthetic_dataset), str(out), "participant", "group",
                     "--analyses", "image-validation,synthesis", "--image-set",
                     f"OASIS={rated_set}", *SYNTHESIS_FLAGS, "--labels", "studyforrest-5",
                     "--skip-bids-validation", "--nprocs", "1", "--random-seed", "5",
                     "-w", str(work)])
    assert code == 0
    return out


def _encoding_dir(out: Path, subject: str) -> Path:
    """The fake encoding step's folder in the work directory."""
    (folder,) = (out.parent / "work").glob(f"**/sub_{subject}_task_movie_wf/encode/result")
    return folder


@pytest.mark.slow  # the app's run (a module fixture) takes 13-25 s
def test_image_validation_equals_the_library_and_recovers_planted_valence(participant_run,
                                                                          rated_set):
    from bids_affect.encoding import EncodingModel
    from bids_affect.image_sets import load_image_set, low_level_features
    from bids_affect.image_validation import (
        rating_design,
        rating_regression,
        registry_image_features,
    )
    from bids_affect.models.image import ImageFeatures

    out = participant_run
    image_set = load_image_set(rated_set, name="OASIS", keep_unknown=True)
    design = rating_design(image_set.table, low_level_features(image_set))
    coefficients = []
    for subject in ("01", "02"):
        folder = _encoding_dir(out, subject)
        spec = json.loads((folder / "models.json").read_text())["stripesrelu1"]
        provenance = spec["feature_spec"]["sets"]["stripesrelu1"]["provenance"]
        extractor = ImageFeatures("stripes", "relu1", weights="random", random_state=provenance[
            "extractor"]["random_seed"]).fit()
        model = EncodingModel.load(folder / "enc.npz")
        rois = {roi: np.isin(np.arange(model.weights.shape[1]), columns)
                for roi, columns in spec["rois"].items()}
        predicted = model.predict_rois(registry_image_features(extractor, image_set), rois)
        names = dict(subject=subject, task="movie", desc="stripesrelu1")
        responses = _read(deriv.output_path(out, "image_responses", **names))
        np.testing.assert_allclose(responses[list(ROIS)].to_numpy(), predicted.to_numpy(),
                                   rtol=2e-5)
        assert responses["image"].tolist() == image_set.files
        regression = _read(deriv.output_path(out, "image_regression", **names))
        expected = rating_regression(predicted, design).assign(image_set="OASIS")
        _assert_tables_equal(regression, expected[["image_set", *expected.columns[:-1]]])
        by_term = regression.set_index(["roi", "term"])["coef"]
        assert by_term[("amygdala", "valence")] > 0.3 > -0.3 > by_term[("LB", "valence")]
        coefficients.append(regression.assign(participant_id=f"sub-{subject}"))
    from bids_affect.image_validation import group_coefficient_tests

    group = _read(out / "group" / "task-movie_desc-stripesrelu1_imageregression.tsv")
    expected = group_coefficient_tests(pd.concat(coefficients, ignore_index=True)[
        ["participant_id", "image_set", "roi", "term", "coef"]])
    _assert_tables_equal(group.drop(columns="image_set"), expected)
    assert set(group["n_subjects"]) == {2}


@pytest.mark.slow  # the app's run (a module fixture) takes 13-25 s
def test_synthesis_drives_targets_above_random_images_and_separates_them(participant_run):
    from bids_affect.steps.image_validation import image_encoding_fits
    from bids_affect.steps.synthesis import _response_model
    from bids_affect.synthesis import PixelGenerator, synthesis_separability

    out = participant_run
    names = dict(subject="01", task="movie", desc="stripesrelu1")
    responses = _read(deriv.output_path(out, "synthesis_responses", **names))
    random = responses[responses["target"] == "random"]
    for target in ROIS:
        made = responses[responses["target"] == target]
        assert len(made) == 6
        assert made[target].min() > random[target].max(), target
        for k in range(1, 7):
            image = deriv.output_path(out, "synthesis_image", contrast=target,
                                      suffix=f"image{k:02d}", **names)
            with Image.open(image) as picture:
                assert picture.size == (32, 32)
            assert _sidecar(image)["Target"] == target
    separability_path = deriv.output_path(out, "synthesis_separability", **names)
    separability = _read(separability_path)
    assert separability["accuracy"].iloc[0] > 0.9 and separability["p_permutation"].iloc[0] \
        <= 0.01
    # The library called directly with the recorded seed gives the same separability.
    about = _sidecar(separability_path)
    fits, _ = image_encoding_fits(_encoding_dir(out, "01"))
    model = _response_model(fits["stripesrelu1"], "cpu")
    _, _, result = synthesis_separability(
        model, list(ROIS), roi_names=list(ROIS), n_images=6, n_permutations=199, n_splits=3,
        random_state=about["RandomSeed"], generator=PixelGenerator(32), optimizer="gradient",
        contrast="none", n_steps=25, image_size=32, learning_rate=0.2)
    _assert_tables_equal(separability, result.table())
    assert about["DendrogramOrder"] == result.order
    confusion = _read(deriv.output_path(out, "synthesis_confusion", **names))
    assert confusion.columns[0] == "true" and confusion.iloc[:, 1:].to_numpy().sum() == 18
    group = _read(out / "group" / "task-movie_desc-stripesrelu1_separability.tsv")
    assert group["participant_id"].tolist() == ["sub-01", "sub-02"]
    test = _read(out / "group" / "task-movie_desc-stripesrelu1_separabilitytest.tsv")
    assert test["n_subjects"].iloc[0] == 2 and test["mean_difference"].iloc[0] > 0.5
    pooled = _read(out / "group" / "task-movie_desc-stripesrelu1_targetconfusion.tsv")
    assert pooled.iloc[:, 1:].to_numpy().sum() == 36


@pytest.mark.slow  # the app's run (a module fixture) takes 13-25 s
def test_stimulus_reports_show_the_sections(participant_run):
    out = participant_run
    subject = (out / "sub-01.html").read_text()
    assert "Encoding models on affective images" in subject
    assert "Synthesised images and their separability" in subject
    group = (out / "group.html").read_text()
    assert "Cohen" in group and "targetconfusion" in group
    from bids_affect.reports.build import missing_files

    assert missing_files(out / "sub-01.html") == [] and missing_files(out / "group.html") == []


@pytest.mark.slow  # 70 s on 2 busy cores: the real encoding step on a synthetic movie study
def test_the_real_encoding_models_are_validated_and_synthesised(networks, rated_set,
                                                                tmp_path):
    """With the encoding step itself (movies through the 'stripes' network, default ROIs)."""
    from bids_affect.datasets import make_synthetic_dataset
    from bids_affect.encoding import EncodingModel
    from bids_affect.image_sets import load_image_set
    from bids_affect.image_validation import registry_image_features
    from bids_affect.models.image import ImageFeatures

    dataset = make_synthetic_dataset(tmp_path / "bids", n_subjects=2, n_runs=2, n_volumes=60,
                                     shape=(12, 14, 12), signal=1.5, seed=7,
                                     stimulus="movie", encoding_signal=2.0)
    out, work = tmp_path / "out", tmp_path / "work"
    code = main([str(dataset), str(out), "participant", "group", "--analyses",
                 "encoding,image-validation,synthesis", "--image-set", f"OASIS={rated_set}",
                 "--feature-network", "stripes", "--feature-layer", "relu1",
                 "--feature-weights", "random", "--encoding-permutations", "10",
                 "--synthesis-optimizer", "gradient", "--synthesis-steps", "10",
                 "--synthesis-images", "4", "--synthesis-folds", "2",
                 "--synthesis-image-size", "32", "--synthesis-permutations", "19",
                 "--labels", "studyforrest-5", "--skip-bids-validation", "--nprocs", "1",
                 "--random-seed", "2", "-w", str(work)])
    assert code == 0
    (folder,) = work.glob("**/sub_01_task_movie_wf/encode/result")
    fit = json.loads((folder / "models.json").read_text())["stripesrelu1"]
    extractor = ImageFeatures("stripes", "relu1", weights="random", random_state=fit[
        "feature_spec"]["sets"]["stripesrelu1"]["provenance"]["extractor"]["random_seed"]).fit()
    model = EncodingModel.load(folder / fit["model"])
    rois = {roi: np.isin(np.arange(model.weights.shape[1]), columns)
            for roi, columns in fit["rois"].items()}
    image_set = load_image_set(rated_set, keep_unknown=True)
    expected = model.predict_rois(registry_image_features(extractor, image_set), rois)
    names = dict(subject="01", task="movie", desc="stripesrelu1")
    responses = _read(deriv.output_path(out, "image_responses", **names))
    np.testing.assert_allclose(responses[list(rois)].to_numpy(), expected.to_numpy(),
                               rtol=2e-5, atol=1e-6)
    separability = _read(deriv.output_path(out, "synthesis_separability", **names))
    assert separability["n_targets"].iloc[0] == len(rois) >= 2
    assert (out / "group" / "task-movie_desc-stripesrelu1_imageregression.tsv").is_file()
    assert (out / "group" / "task-movie_desc-stripesrelu1_separabilitytest.tsv").is_file()
