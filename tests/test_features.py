"""Tests of stimulus features: BIDS recordings, users' files, movies, per-volume averaging."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from bids_affect import features as features_module
from bids_affect.datasets.movie import write_synthetic_movie
from bids_affect.exceptions import InputDataError, InputMissingError, UsageError
from bids_affect.features import (
    FeatureSet,
    expand_feature_path,
    extract_movie_features,
    feature_set_name,
    features_per_volume,
    find_movie_events,
    find_stim_recordings,
    iter_movie_frames,
    load_stim_recordings,
    movie_features_for_run,
    parse_feature_argument,
    probe_movie,
    read_feature_file,
    read_stim_recording,
    resample_features,
    write_stim_recording,
)
from bids_affect.models.image import (
    ImageFeatures,
    Preprocessing,
    register_image_network,
    unregister_image_network,
)

FPS = 10
DURATION = 6.0


def _assert_one_line_error(info, cls, exit_code: int, *fragments: str) -> None:
    """The error's class, exit code, a single line, and the fragments it must contain."""
    assert type(info.value) is cls or isinstance(info.value, cls)
    assert info.value.exit_code == exit_code
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def movie_dir(tmp_path_factory) -> Path:
    """``stimuli/`` with a 6-s, 10-frames/s synthetic movie and its ground truth."""
    stimuli = tmp_path_factory.mktemp("bids") / "stimuli"
    truth = write_synthetic_movie(stimuli / "film.mp4", duration=DURATION, fps=FPS,
                                  size=(32, 48), scene_duration=(0.5, 1.5), seed=3)
    truth.to_csv(stimuli / "film_truth.tsv", sep="\t", index=False)
    write_synthetic_movie(stimuli / "second.mkv", duration=3.0, fps=FPS, size=(32, 48),
                          codec="mpeg4", seed=4)
    return stimuli


@pytest.fixture(scope="module")
def truth(movie_dir) -> pd.DataFrame:
    return pd.read_csv(movie_dir / "film_truth.tsv", sep="\t")


@pytest.fixture(scope="module")
def mean_rgb_network(tmp_path_factory):
    """A registered 'network' whose conv1 returns each frame's mean R, G, B in [0, 1].

    A 1x1 identity convolution on frames resized to 16x16 (antialiased, so the mean is
    kept) and scaled to [0, 1]: its spatially averaged output is the frame's mean colour,
    which the movie's ground truth gives frame by frame.
    """
    register_image_network(
        "meanrgb", layers={"conv1": "0"},
        preprocessing=Preprocessing((16, 16), None, 255.0, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
        description="test: mean colour")(lambda: nn.Sequential(nn.Conv2d(3, 3, 1)))
    weights = tmp_path_factory.mktemp("weights") / "identity.pth"
    torch.save({"0.weight": torch.eye(3).reshape(3, 3, 1, 1), "0.bias": torch.zeros(3)},
               weights)
    yield weights
    unregister_image_network("meanrgb")


def _mean_rgb(weights: Path, batch_size: int = 4) -> ImageFeatures:
    return ImageFeatures("meanrgb", "conv1", weights=weights, batch_size=batch_size)


# --------------------------------------------------------------------------- FeatureSet


def test_feature_set_validates_its_contents():
    with pytest.raises(UsageError, match="name"):
        FeatureSet("alex-net", np.zeros((2, 1)), times=[0, 1])
    with pytest.raises(InputDataError, match="NaN") as info:
        FeatureSet("x", [[0.0], [np.nan]], times=[0, 1], provenance={"source": "f.tsv"})
    assert str(info.value).startswith("f.tsv:") and "row 2, column 1" in str(info.value)
    with pytest.raises(InputDataError, match="strictly increasing"):
        FeatureSet("x", np.zeros((3, 1)), times=[0, 2, 1])
    with pytest.raises(InputDataError, match="column names"):
        FeatureSet("x", np.zeros((2, 2)), times=[0, 1], columns=["a", "a"])
    with pytest.raises(InputDataError, match="not regular"):
        FeatureSet("x", np.zeros((3, 1)), times=[0, 1, 3], sampling_frequency=1.0)
    features = FeatureSet.regular("x", np.arange(6.0).reshape(3, 2), 4.0, start_time=1.0)
    assert features.values.dtype == np.float32 and features.n_features == 2
    assert features.times.tolist() == [1.0, 1.25, 1.5] and features.end_time == 1.75


# --------------------------------------------------------------------------- BIDS recordings


def test_stim_recording_round_trip_is_exact_and_deterministic(tmp_path, rng):
    values = (rng.normal(size=(50, 7)) * 10.0 ** rng.integers(-6, 6, 7)).astype(np.float32)
    features = FeatureSet.regular("alexnetfc7", values, 2.5, start_time=-1.5,
                                  columns=[f"unit{i}" for i in range(7)],
                                  provenance={"network": "alexnet"})
    path = tmp_path / "sub-01_task-movie_run-1_recording-alexnetfc7_stim.tsv.gz"
    write_stim_recording(features, path, metadata={"Description": "test"})
    sidecar = json.loads(path.with_name(path.name.replace(".tsv.gz", ".json")).read_text())
    assert sidecar["SamplingFrequency"] == 2.5 and sidecar["StartTime"] == -1.5
    assert sidecar["Columns"] == list(features.columns) and sidecar["Description"] == "test"
    with gzip.open(path, "rt") as stream:
        first = stream.readline()
    assert first.count("\t") == 6 and not first.startswith("unit")  # no header
    again = read_stim_recording(path)
    np.testing.assert_array_equal(again.values, values)
    np.testing.assert_array_equal(again.times, features.times)
    assert again.columns == features.columns and again.name == "alexnetfc7"
    assert again.sampling_frequency == 2.5
    first_bytes = path.read_bytes()
    write_stim_recording(features, path, metadata={"Description": "test"})
    assert path.read_bytes() == first_bytes
    assert not list(tmp_path.glob(".tmp-*"))


def test_writer_refuses_irregular_features_and_a_wrong_name(tmp_path):
    irregular = FeatureSet("x", np.zeros((3, 1)), times=[0, 1, 3])
    with pytest.raises(UsageError, match="resample"):
        write_stim_recording(irregular, tmp_path / "sub-01_task-a_recording-x_stim.tsv.gz")
    regular = FeatureSet.regular("x", np.zeros((3, 1)), 1.0)
    with pytest.raises(UsageError, match="recording-y"):
        write_stim_recording(regular, tmp_path / "sub-01_task-a_recording-y_stim.tsv.gz")
    assert not list(tmp_path.iterdir())


def _write_raw_recording(path: Path, text: str, sidecar: dict | None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt") as stream:
        stream.write(text)
    if sidecar is not None:
        path.with_name(path.name.replace(".tsv.gz", ".json")).write_text(json.dumps(sidecar))
    return path


GOOD_SIDECAR = {"SamplingFrequency": 1.0, "StartTime": 0.0, "Columns": ["a", "b"]}


@pytest.mark.parametrize("text, sidecar, cls, code, fragment", [
    ("1\t2\nn/a\t3\n", GOOD_SIDECAR, InputDataError, 65, "NaN"),
    ("1\t2\t3\n4\t5\t6\n", GOOD_SIDECAR, InputDataError, 65, "3 columns but Columns lists 2"),
    ("1\t2\n", {"StartTime": 0, "Columns": ["a", "b"]}, InputDataError, 65,
     "lacks SamplingFrequency"),
    ("1\t2\n", {**GOOD_SIDECAR, "SamplingFrequency": -2}, InputDataError, 65,
     "SamplingFrequency must be a positive number"),
    ("1\t2\n", {**GOOD_SIDECAR, "Columns": "a,b"}, InputDataError, 65, "Columns must be"),
    ("1\tx\n", GOOD_SIDECAR, InputDataError, 65, "non-numeric"),
    ("", GOOD_SIDECAR, InputDataError, 65, "no samples"),
    ("1\t2\n", None, InputMissingError, 66, "JSON sidecar not found"),
])
def test_bad_recordings_fail_with_one_line_naming_the_file(tmp_path, text, sidecar, cls, code,
                                                           fragment):
    path = _write_raw_recording(tmp_path / "sub-01_task-a_recording-x_stim.tsv.gz", text,
                                sidecar)
    with pytest.raises(cls) as info:
        read_stim_recording(path)
    _assert_one_line_error(info, cls, code, fragment, "recording-x_stim")


def test_corrupt_gzip_and_missing_recording(tmp_path):
    path = tmp_path / "sub-01_task-a_recording-x_stim.tsv.gz"
    path.write_bytes(b"\x1f\x8b\x08garbage")
    path.with_name("sub-01_task-a_recording-x_stim.json").write_text(json.dumps(GOOD_SIDECAR))
    with pytest.raises(InputDataError) as info:
        read_stim_recording(path)
    _assert_one_line_error(info, InputDataError, 65, str(path))
    with pytest.raises(InputMissingError) as info:
        read_stim_recording(tmp_path / "sub-02_task-a_recording-x_stim.tsv.gz")
    _assert_one_line_error(info, InputMissingError, 66, "sub-02")


def _bids_tree(root: Path) -> dict[str, Path]:
    """Raw BIDS with recordings at several levels, and a derivatives folder."""
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "t", "BIDSVersion": "1.10.0"}))
    func = root / "sub-01" / "func"
    func.mkdir(parents=True)
    for run in (1, 2):
        (func / f"sub-01_task-movie_run-{run}_bold.nii.gz").write_bytes(b"")
    (root / "sub-02" / "func").mkdir(parents=True)
    (root / "sub-02/func/sub-02_task-movie_run-1_bold.nii.gz").write_bytes(b"")
    # Inherited metadata: one JSON at the top applies to every lum recording.
    (root / "task-movie_recording-lum_stim.json").write_text(json.dumps(
        {"SamplingFrequency": 0.5, "StartTime": 0.0, "Columns": ["luminance"]}))
    paths = {
        "all_runs": _write_raw_recording(
            func / "sub-01_task-movie_recording-lum_stim.tsv.gz", "1\n2\n3\n", None),
        "run2": _write_raw_recording(
            func / "sub-01_task-movie_run-2_recording-lum_stim.tsv.gz", "7\n8\n9\n", None),
        "other_subject": _write_raw_recording(
            root / "sub-02/func/sub-02_task-movie_recording-lum_stim.tsv.gz", "5\n", None),
    }
    derivatives = root / "derivatives" / "features"
    derivatives.mkdir(parents=True)
    (derivatives / "dataset_description.json").write_text(json.dumps(
        {"Name": "f", "BIDSVersion": "1.10.0", "DatasetType": "derivative",
         "GeneratedBy": [{"Name": "bids_affect"}]}))
    paths["derivative"] = write_stim_recording(
        FeatureSet.regular("alexnetfc7", np.ones((4, 3)), 0.5),
        derivatives / "sub-01/func/sub-01_task-movie_run-1_recording-alexnetfc7_stim.tsv.gz")
    paths["derivatives"] = derivatives
    return paths


def test_finder_applies_the_inheritance_principle(tmp_path):
    from bids import BIDSLayout

    paths = _bids_tree(tmp_path)
    layout = BIDSLayout(tmp_path, derivatives=[str(paths["derivatives"])])
    run1 = {"subject": "01", "task": "movie", "run": 1, "session": None}
    run2 = {"subject": "01", "task": "movie", "run": 2}
    assert find_stim_recordings(layout, run1) == {"alexnetfc7": paths["derivative"],
                                                  "lum": paths["all_runs"]}
    assert find_stim_recordings(layout, run2) == {"lum": paths["run2"]}
    assert find_stim_recordings(layout, {"subject": "02", "task": "movie", "run": 1}) == {
        "lum": paths["other_subject"]}
    assert find_stim_recordings(layout, {"subject": "01", "task": "rest"}) == {}
    loaded = load_stim_recordings(layout, run2, names=["lum"])
    assert loaded["lum"].values.ravel().tolist() == [7.0, 8.0, 9.0]
    assert loaded["lum"].times.tolist() == [0.0, 2.0, 4.0]  # 0.5 Hz from the top-level JSON
    with pytest.raises(InputMissingError) as info:
        find_stim_recordings(layout, run2, names=["alexnetfc7"])
    _assert_one_line_error(info, InputMissingError, 66, "recording-alexnetfc7", "found: lum",
                           "run-2")


def test_finder_refuses_two_equally_specific_files(tmp_path):
    from bids import BIDSLayout

    paths = _bids_tree(tmp_path)
    write_stim_recording(
        FeatureSet.regular("alexnetfc7", np.ones((4, 3)), 0.5),
        tmp_path / "sub-01/func/sub-01_task-movie_run-1_recording-alexnetfc7_stim.tsv.gz")
    layout = BIDSLayout(tmp_path, derivatives=[str(paths["derivatives"])])
    with pytest.raises(InputDataError) as info:
        find_stim_recordings(layout, {"subject": "01", "task": "movie", "run": 1})
    _assert_one_line_error(info, InputDataError, 65, "two recordings named 'alexnetfc7'")


# --------------------------------------------------------------------------- users' files


def test_user_tsv_with_onsets_and_npy_with_sidecar(tmp_path, rng):
    tsv = tmp_path / "valence.tsv"
    tsv.write_text("onset\tvalence\tarousal\n0.0\t1\t2\n0.7\t3\t4\n2.0\t5\t6\n")
    features = read_feature_file(tsv, "valence")
    assert features.columns == ("valence", "arousal")
    assert features.times.tolist() == [0.0, 0.7, 2.0] and features.sampling_frequency is None
    values = rng.normal(size=(20, 3))
    npy = tmp_path / "sub-01_run-2.npy"
    np.save(npy, values)
    npy.with_suffix(".json").write_text(json.dumps(
        {"SamplingFrequency": 4.0, "StartTime": -0.5, "Columns": ["a", "b", "c"]}))
    loaded = read_feature_file(expand_feature_path(tmp_path / "sub-{subject}_run-{run}.npy",
                                                   {"subject": "01", "run": 2}), "emb")
    np.testing.assert_allclose(loaded.values, values.astype(np.float32))
    assert loaded.times[:3].tolist() == [-0.5, -0.25, 0.0] and loaded.columns == ("a", "b", "c")
    plain = tmp_path / "plain.tsv"
    plain.write_text("x\n1\n2\n")
    assert read_feature_file(plain, "x", sampling_frequency=2.0).times.tolist() == [0.0, 0.5]


@pytest.mark.parametrize("content, sidecar, kwargs, cls, fragment", [
    ("x\n1\n2\n", None, {}, UsageError, "sample times are unknown"),
    ("x\n1\nn/a\n", None, {"sampling_frequency": 1.0}, InputDataError, "NaN"),
    ("x\tname\n1\ta\n", None, {"sampling_frequency": 1.0}, InputDataError, "'name'"),
    ("onset\tx\n0\t1\n1\t2\n", {"SamplingFrequency": 1}, {}, UsageError, "twice"),
    ("x\n1\n2\n", {"SamplingFrequency": 1}, {"sampling_frequency": 2.0}, UsageError,
     "SamplingFrequency is 1"),
    ("onset\tx\n1\t1\n0\t2\n", None, {}, InputDataError, "strictly increasing"),
])
def test_bad_user_files(tmp_path, content, sidecar, kwargs, cls, fragment):
    path = tmp_path / "feat.tsv"
    path.write_text(content)
    if sidecar is not None:
        path.with_suffix(".json").write_text(json.dumps(sidecar))
    with pytest.raises(cls) as info:
        read_feature_file(path, "feat", **kwargs)
    assert fragment in str(info.value) and "\n" not in str(info.value)
    assert "feat" in str(info.value)


def test_feature_arguments(tmp_path):
    assert parse_feature_argument("lum=a=b.tsv") == ("lum", "a=b.tsv")
    with pytest.raises(UsageError, match="stimulus_features"):
        parse_feature_argument("lum.tsv")
    with pytest.raises(UsageError, match="letters and digits"):
        parse_feature_argument("lum-1=x.tsv")
    with pytest.raises(UsageError, match="placeholders"):
        expand_feature_path("{participant}.npy", {})
    with pytest.raises(InputMissingError):
        read_feature_file(tmp_path / "absent.npy", "x")
    with pytest.raises(UsageError, match=".tsv or .npy"):
        read_feature_file(tmp_path / "x.csv", "x")
    assert feature_set_name("emonet", "fc7") == "emonetfc7"


# --------------------------------------------------------------------------- movies


@pytest.mark.parametrize("name, n_frames", [("film.mp4", 60), ("second.mkv", 30)])
@pytest.mark.parametrize("step", [1, 5, 7])
def test_frame_count_times_and_step(movie_dir, name, n_frames, step):
    frames = list(iter_movie_frames(movie_dir / name, step))
    expected = np.arange(0, n_frames, step)
    assert [frame.index for frame in frames] == expected.tolist()
    np.testing.assert_allclose([frame.time for frame in frames], expected / FPS, atol=1e-9)
    assert frames[0].image.shape == (32, 48, 3) and frames[0].image.dtype == np.uint8
    info = probe_movie(movie_dir / name)
    assert (info.frame_rate, info.n_frames, info.width, info.height) == (FPS, n_frames, 48, 32)
    assert info.duration == pytest.approx(n_frames / FPS)


def test_decoded_frames_are_the_movie_frames(movie_dir, truth):
    frames = list(iter_movie_frames(movie_dir / "film.mp4", 1, until=3.0))
    assert len(frames) == 30
    means = np.array([frame.image.mean(axis=(0, 1)) / 255.0 for frame in frames])
    np.testing.assert_allclose(means, truth[["r", "g", "b"]].to_numpy()[:30], atol=0.02)


def test_movie_frames_are_streamed_in_batches(movie_dir, mean_rgb_network, monkeypatch):
    state = {"yielded": 0, "transformed": 0, "peak": 0}
    real = features_module.iter_movie_frames

    def counting_frames(*args, **kwargs):
        for frame in real(*args, **kwargs):
            state["yielded"] += 1
            state["peak"] = max(state["peak"], state["yielded"] - state["transformed"])
            yield frame

    class CountingFeatures(ImageFeatures):
        def transform(self, images):
            state["transformed"] += len(images)
            return super().transform(images)

    monkeypatch.setattr(features_module, "iter_movie_frames", counting_frames)
    extractor = CountingFeatures("meanrgb", "conv1", weights=mean_rgb_network, batch_size=3)
    features = extract_movie_features(movie_dir / "film.mp4", extractor, name="rgb",
                                      frame_step=1)
    assert state["yielded"] == state["transformed"] == features.n_samples == 60
    assert state["peak"] <= 3  # never more than one batch of frames held


def test_movie_features_follow_the_frames_and_the_onset(movie_dir, truth, mean_rgb_network):
    onset = -1.0  # the movie began a second before the run
    features = extract_movie_features(movie_dir / "film.mp4", _mean_rgb(mean_rgb_network),
                                      name="meanrgb", frame_step=5, onset=onset)
    sampled = truth[truth["frame"] % 5 == 0]
    np.testing.assert_allclose(features.times, sampled["time"].to_numpy() + onset, atol=1e-9)
    np.testing.assert_allclose(features.values, sampled[["r", "g", "b"]].to_numpy(),
                               atol=0.03)
    assert features.sampling_frequency == FPS / 5
    assert features.end_time == pytest.approx(DURATION + onset)
    assert features.provenance["extractor"]["network"] == "meanrgb"
    # Per volume (TR 1 s, 4 volumes): the sampled frames of each second, by hand.
    per_volume = features_per_volume(features, tr=1.0, n_volumes=4)
    run_time = sampled["time"].to_numpy() + onset
    expected = [sampled[["r", "g", "b"]].to_numpy()[(run_time >= i) & (run_time < i + 1)]
                .mean(axis=0) for i in range(4)]
    np.testing.assert_allclose(per_volume, np.array(expected), atol=0.03)
    shifted = features_per_volume(extract_movie_features(
        movie_dir / "film.mp4", _mean_rgb(mean_rgb_network), name="meanrgb", onset=0.0),
        tr=1.0, n_volumes=4)
    assert np.abs(shifted - per_volume).max() > 0.05  # the onset matters


def _events(path: Path, rows: list[str]) -> Path:
    path.write_text("onset\tduration\ttrial_type\tstim_file\n" + "\n".join(rows) + "\n")
    return path


def test_movie_features_for_run_from_events(tmp_path, movie_dir, mean_rgb_network):
    events = _events(tmp_path / "events.tsv", [
        "0\tn/a\tn/a\tfilm.mp4", "0\tn/a\tn/a\tfilm.mp4", "1.5\t2\tfear\tn/a",
        "0.2\t1\tn/a\tface.png"])
    found = find_movie_events(events, movie_dir)
    assert [(e.stim_file, e.onset, e.duration) for e in found] == [("film.mp4", 0.0, None)]
    features = movie_features_for_run(events, movie_dir, _mean_rgb(mean_rgb_network),
                                      name="meanrgb", tr=2.0, n_volumes=3)
    assert features.n_samples == 12 and features.provenance["events"] == str(events)
    # Two movies one after the other: the first is cut at its event's duration.
    events = _events(tmp_path / "two.tsv", ["0\t3\tn/a\tfilm.mp4", "3\tn/a\tn/a\tsecond.mkv"])
    both = movie_features_for_run(events, movie_dir, _mean_rgb(mean_rgb_network),
                                  name="meanrgb", tr=2.0, n_volumes=3)
    np.testing.assert_allclose(both.times, np.arange(12) * 0.5, atol=1e-9)
    assert both.end_time == pytest.approx(6.0) and len(both.provenance["movies"]) == 2
    assert features_per_volume(both, 2.0, 3).shape == (3, 3)


def test_movie_problems_are_named(tmp_path, movie_dir, mean_rgb_network, monkeypatch):
    extractor = _mean_rgb(mean_rgb_network)

    def run(rows, **kwargs):
        events = _events(tmp_path / "events.tsv", rows)
        return movie_features_for_run(events, movie_dir, extractor, name="meanrgb", **kwargs)

    with pytest.raises(InputMissingError) as info:
        run(["0\tn/a\tn/a\tabsent.mp4"])
    _assert_one_line_error(info, InputMissingError, 66, "absent.mp4", "stim_file",
                           str(movie_dir))
    (movie_dir / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(300))
    with pytest.raises(InputDataError) as info:
        run(["0\tn/a\tn/a\tbroken.mp4"])
    _assert_one_line_error(info, InputDataError, 65, "broken.mp4", "cannot decode")
    with pytest.raises(InputDataError) as info:
        run(["0\tn/a\tn/a\tfilm.mp4", "4\tn/a\tn/a\tsecond.mkv"])
    _assert_one_line_error(info, InputDataError, 65, "overlap", "events.tsv")
    with pytest.raises(InputMissingError) as info:
        run(["0\t2\tfear\tn/a"])
    _assert_one_line_error(info, InputMissingError, 66, "no event names a movie")
    with pytest.raises(InputDataError) as info:
        run(["x\tn/a\tn/a\tfilm.mp4"])
    _assert_one_line_error(info, InputDataError, 65, "line 2", "onset")

    # Coverage and frame rate are checked from the container, before any decoding.
    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although the run is not covered")

    monkeypatch.setattr(features_module, "extract_movie_features", no_decoding)
    with pytest.raises(InputDataError) as info:
        run(["0\tn/a\tn/a\tfilm.mp4"], tr=2.0, n_volumes=10)
    _assert_one_line_error(info, InputDataError, 65, "film.mp4", "0-6 s", "0-20 s")
    with pytest.raises(InputDataError) as info:
        run(["1\tn/a\tn/a\tfilm.mp4"], tr=2.0, n_volumes=2)
    _assert_one_line_error(info, InputDataError, 65, "1-7 s")
    with pytest.raises(InputDataError) as info:
        run(["0\tn/a\tn/a\tfilm.mp4"], tr=1.0, n_volumes=4, frame_step=15)
    _assert_one_line_error(info, InputDataError, 65, "frame_step", "TR 1 s")


# --------------------------------------------------------------------------- per volume


@pytest.mark.parametrize("start_time", [0.0, 0.7])
def test_per_volume_average_equals_a_hand_loop(rng, start_time):
    times = np.sort(rng.uniform(-1.0, 21.0, 400))
    features = FeatureSet("x", rng.normal(size=(400, 5)), times=times)
    tr, n_volumes = 2.0, 10
    result = features_per_volume(features, tr, n_volumes, start_time)
    expected = np.empty((n_volumes, 5))
    for volume in range(n_volumes):
        low = volume * tr + start_time
        inside = (times >= low) & (times < low + tr)
        expected[volume] = features.values[inside].astype(np.float64).mean(axis=0)
    assert result.dtype == np.float32
    np.testing.assert_allclose(result, expected, rtol=1e-6, atol=1e-6)


def test_per_volume_refuses_volumes_without_samples():
    source = {"source": "sub-01_task-movie_run-1_recording-x_stim.tsv.gz"}
    short = FeatureSet.regular("x", np.ones((290, 2)), 1.0, provenance=source)
    with pytest.raises(InputDataError) as info:
        features_per_volume(short, tr=2.0, n_volumes=150)
    _assert_one_line_error(info, InputDataError, 65, "recording-x_stim", "0-290 s", "0-300 s")
    late = FeatureSet.regular("x", np.ones((300, 2)), 1.0, start_time=3.0)
    with pytest.raises(InputDataError, match="3-303 s"):
        features_per_volume(late, tr=2.0, n_volumes=150)
    sparse = FeatureSet.regular("x", np.ones((40, 2)), 0.4)  # one sample per 2.5 s
    with pytest.raises(InputDataError) as info:
        features_per_volume(sparse, tr=2.0, n_volumes=40)
    _assert_one_line_error(info, InputDataError, 65, "2.5 s apart", "TR 2 s", "frame-step")
    with pytest.raises(UsageError, match="tr"):
        features_per_volume(sparse, tr=0, n_volumes=4)
    with pytest.raises(UsageError, match="n_volumes"):
        features_per_volume(sparse, tr=2.0, n_volumes=2.5)


def test_resampling_holds_samples_and_averages_over_time(rng):
    values = rng.normal(size=(30, 4))
    stream = FeatureSet.regular("x", values, 10.0)  # 0-3 s
    fine = resample_features(stream, 40.0, 120)
    np.testing.assert_allclose(fine.values, np.repeat(values, 4, axis=0), rtol=1e-6,
                               atol=1e-6)
    assert fine.sampling_frequency == 40.0 and fine.provenance["resampled"]["n_samples"] == 120
    coarse = resample_features(stream, 0.5, 1, start_time=0.5)
    np.testing.assert_allclose(coarse.values[0], values[5:25].mean(axis=0), rtol=1e-5)
    # Irregular samples: each is weighted by how long it holds (time integral kept).
    times = np.sort(rng.uniform(0.0, 10.0, 50))
    times[0] = 0.0
    irregular = FeatureSet("x", rng.normal(size=(50, 2)), times=times, end_time=10.0)
    durations = np.diff(np.append(times, 10.0))
    whole = resample_features(irregular, 0.1, 1)
    np.testing.assert_allclose(whole.values[0], (irregular.values * durations[:, None]).sum(0)
                               / 10.0, rtol=1e-5)
    chunked = resample_features(irregular, 3.0, 30, max_chunk_bytes=8)
    np.testing.assert_allclose(chunked.values, resample_features(irregular, 3.0, 30).values)
    with pytest.raises(InputDataError, match="0-10 s"):
        resample_features(irregular, 1.0, 11)


# --------------------------------------------------------------------------- synthetic movies


def test_synthetic_movie_is_seeded_and_varies_between_scenes(tmp_path, truth):
    again = write_synthetic_movie(tmp_path / "film.mp4", duration=DURATION, fps=FPS,
                                  size=(32, 48), scene_duration=(0.5, 1.5), seed=3)
    pd.testing.assert_frame_equal(again.reset_index(drop=True), truth, check_dtype=False,
                                  rtol=1e-9)
    other = write_synthetic_movie(tmp_path / "other.mp4", duration=DURATION, fps=FPS,
                                  size=(32, 48), scene_duration=(0.5, 1.5), seed=4)
    assert not np.allclose(other["luminance"], truth["luminance"])
    scenes = truth.groupby("scene")["luminance"].mean()
    assert truth["scene"].nunique() >= 4 and scenes.std() > 0.05
    # Within a scene the grating drifts, so frames differ but keep the scene's colour.
    within = truth.groupby("scene")[["r", "g", "b"]].std().max().max()
    assert within < 0.05


_WRITE_PINNED = """
import os, sys
from bids_affect.datasets.movie import write_synthetic_movie
os.sched_setaffinity(0, {int(sys.argv[2])})
write_synthetic_movie(sys.argv[1], duration=60.0, fps=25, seed=3)
"""


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs sched_setaffinity")
def test_synthetic_movie_bytes_are_the_same_on_any_core(tmp_path):
    """The same seed gives the same file (x264 did not, pinned to one core: measured)."""
    cores = sorted(os.sched_getaffinity(0))
    paths = []
    for k, core in enumerate([cores[0], cores[0], cores[-1]]):
        paths.append(tmp_path / f"movie{k}.mp4")
        subprocess.run([sys.executable, "-c", _WRITE_PINNED, str(paths[-1]), str(core)],
                       check=True)
    assert paths[0].read_bytes() == paths[1].read_bytes() == paths[2].read_bytes()


@pytest.mark.parametrize("kwargs, parameter", [
    ({"path": "m.avi"}, "path"), ({"codec": "vp9"}, "codec"), ({"fps": 0}, "fps"),
    ({"duration": 0.01}, "duration"), ({"size": (33, 48)}, "size"),
    ({"scene_duration": (2.0, 1.0)}, "scene_duration"),
])
def test_synthetic_movie_settings_are_checked(tmp_path, kwargs, parameter):
    path = tmp_path / kwargs.pop("path", "m.mp4")
    with pytest.raises(UsageError) as info:
        write_synthetic_movie(path, **kwargs)
    assert str(info.value).startswith(f"{parameter}:")
    assert not path.exists() and not list(tmp_path.iterdir())
