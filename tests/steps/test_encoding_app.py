"""The encoding analysis as a user runs it: recordings, movies, native space, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_affect.cli.run import main
from bids_affect.datasets import make_synthetic_dataset
from bids_affect.encoding import EncodingModel
from tests.cli.test_cli import assert_one_line_error

FAST = ["--skip-bids-validation", "--nprocs", "1", "--omp-nthreads", "1", "--random-seed", "1",
        "--analyses", "encoding", "--encoding-permutations", "100"]
MOVIE = ["--feature-weights", "random", "--feature-layer", "conv1",
         "--feature-sets", "alexnetconv1"]


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Voxels of the right amygdala driven by the movie's luminance and contrast."""
    root = tmp_path_factory.mktemp("encoding")
    make_synthetic_dataset(root / "bids", n_subjects=1, n_runs=3, n_volumes=60,
                           shape=(12, 14, 12), signal=1.0, stimulus="both",
                           encoding_signal=2.0, seed=4)
    return root


def _statmap(out: Path, desc: str, stat: str) -> np.ndarray:
    (path,) = (out / "sub-01" / "func").glob(f"*_desc-{desc}_stat-{stat}_statmap.nii.gz")
    return np.asarray(nib.load(path).dataobj)


def _check_planted_found(root: Path, out: Path, desc: str) -> None:
    planted = np.asarray(nib.load(root / "bids/sourcedata/groundtruth/encoding_mask.nii.gz")
                         .dataobj) > 0
    r, pfwe = _statmap(out, desc, "r"), _statmap(out, desc, "pfwe")
    brain = r != 0
    assert r[planted].mean() > 0.3 > abs(r[brain & ~planted].mean())
    assert (pfwe[planted] < 0.05).mean() > 0.5
    assert (pfwe[brain & ~planted] < 0.05).mean() < 0.02


@pytest.mark.slow
def test_recorded_features_predict_the_planted_voxels(planted):
    out = planted / "out_recording"
    code = main([str(planted / "bids"), str(out), "participant", "-w", str(planted / "work"),
                 *FAST, "--feature-sets", "visual"])
    assert code == 0
    _check_planted_found(planted, out, "visual")
    func = out / "sub-01" / "func"
    table = pd.read_csv(func / "sub-01_task-movie_desc-visual_roi.tsv", sep="\t")
    assert {"roi", "n_voxels", "mean_r", "p", "null_low", "null_high",
            "random_split_r"} <= set(table.columns)
    metrics = json.loads((func / "sub-01_task-movie_desc-visual_encoding.json").read_text())
    assert metrics["cv"] == "loro" and metrics["n_folds"] == 3
    assert metrics["null"]["p_resolution"] == pytest.approx(1 / 101)
    assert "audit" in metrics and metrics["Parameters"]["n_permutations"] == 100
    model = EncodingModel.load(out / "sub-01/models/sub-01_task-movie_desc-visual_encoder.npz")
    assert model.feature_spec["feature_sets"] == ["visual"]
    assert "Voxelwise encoding models (ridge)" in (out / "logs/CITATION.md").read_text()
    report = (out / "sub-01.html").read_text()
    assert 'id="encoding-movie-visual"' in report and "FWE threshold of r" in report


@pytest.mark.slow
def test_movie_frames_through_a_cnn_predict_the_planted_voxels(planted):
    out = planted / "out_movie"
    code = main([str(planted / "bids"), str(out), "participant", "-w", str(planted / "work"),
                 *FAST, *MOVIE])
    assert code == 0
    _check_planted_found(planted, out, "alexnetconv1")
    # The computed features are BIDS stim recordings, and the work directory keeps them.
    recordings = sorted((out / "sub-01" / "func").glob("*_recording-alexnetconv1_stim.tsv.gz"))
    assert len(recordings) == 3
    for run, recording in enumerate(recordings, start=1):
        sidecar = json.loads(recording.with_name(recording.name.replace(".tsv.gz", ".json"))
                             .read_text())
        assert sidecar["SamplingFrequency"] == 2.0
        assert sidecar["Provenance"]["extractor"]["weights"] == "random"
        assert sidecar["Provenance"]["source"].endswith(f"movie_run-{run}.mp4")
        assert sidecar["Columns"][:2] == ["conv1_00", "conv1_01"]
        assert "alexnet conv1 (random weights)" in sidecar["Description"]
    assert len(list((planted / "work" / "feature_cache").glob("alexnetconv1_*.npz"))) == 3


def test_cached_movie_features_keep_columns_and_name_the_run_that_reads_them(planted,
                                                                           tmp_path):
    """A second subject who saw the same movie reads the first one's features from the
    cache: the same values, columns and extractor, with its own events file."""
    import shutil
    from types import SimpleNamespace

    from bids_affect.steps.encoding import _extractor, run_features

    bids = planted / "bids"
    events = bids / "sub-01/func/sub-01_task-movie_run-1_events.tsv"
    other = tmp_path / "sub-02_task-movie_run-1_events.tsv"
    shutil.copy(events, other)
    settings = {"feature_network": "alexnet", "feature_layer": "conv1",
                "feature_weights": "random", "frame_step": 5, "stimulus_features": {},
                "feature_sets": ["alexnetconv1"]}
    computed = []

    def factory():
        computed.append(True)
        return _extractor(settings, 1, "cpu", 1)

    found = []
    for path in (events, other):
        run = SimpleNamespace(events=path, tr=2.0, n_volumes=60, start_time=0.0,
                              stim_recordings={}, subject="01", key="run-1")
        found.append(run_features(run, settings, bids / "stimuli", factory,
                                  tmp_path / "cache")["alexnetconv1"])
    first, second = found
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1
    np.testing.assert_array_equal(second.values, first.values)
    assert second.columns == first.columns and first.columns[0] == "conv1_00"
    assert second.end_time == first.end_time
    assert second.provenance["source"] == first.provenance["source"]
    assert second.provenance["source"].endswith("movie_run-1.mp4")
    assert second.provenance["extractor"] == first.provenance["extractor"]
    assert (first.provenance["events"], second.provenance["events"]) == (str(events),
                                                                         str(other))


def test_native_space_has_no_atlas_rois(tmp_path):
    make_synthetic_dataset(tmp_path / "bids", n_subjects=1, n_runs=2, n_volumes=40,
                           shape=(8, 9, 8), stimulus="recording", encoding_signal=1.0,
                           with_derivatives=False, seed=2)
    out = tmp_path / "out"
    assert main([str(tmp_path / "bids"), str(out), "participant", "-w", str(tmp_path / "work"),
                 *FAST]) == 0
    table = pd.read_csv(out / "sub-01/func/sub-01_task-movie_desc-visual_roi.tsv", sep="\t")
    assert table["roi"].tolist() == ["mask"]
    maps = list((out / "sub-01" / "func").glob("*_stat-r_statmap.nii.gz"))
    assert maps and all("_space-" not in path.name for path in maps)
    sidecar = json.loads(maps[0].with_name(maps[0].name.replace(".nii.gz", ".json")).read_text())
    assert "native space" in sidecar["ROIs"]


@pytest.mark.parametrize(("options", "code", "fragments"), [
    (["--feature-layer", "fc9"], 64, ["--feature-layer", "fc7"]),
    (["--feature-weights", "/no/such/weights.pth"], 64, ["--feature-weights", "no such file"]),
    (["--feature-sets", "bad-name"], 64, ["bad-name"]),
    (["--encoding-models", "lasso"], 64, ["lasso"]),
])
def test_bad_encoding_options_are_refused_at_parse_time(tmp_path, capsys, options, code,
                                                        fragments):
    assert main([str(tmp_path / "bids"), str(tmp_path / "out"), "participant",
                 "--analyses", "encoding", *options]) == code
    assert_one_line_error(capsys.readouterr().err, *fragments)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("options", "code", "fragments"), [
    ([], 64, ["--feature-weights", "movies"]),  # a movie, and no weights to see it with
    (["--feature-sets", "nothere"], 66, ["sub-01", "no stimulus features nothere"]),
])
def test_missing_features_fail_cleanly(tmp_path, capsys, options, code, fragments):
    make_synthetic_dataset(tmp_path / "bids", n_subjects=1, n_runs=2, n_volumes=30,
                           shape=(6, 7, 6), stimulus="movie", with_derivatives=False, seed=2)
    out = tmp_path / "out"
    assert main([str(tmp_path / "bids"), str(out), "participant", "-w", str(tmp_path / "work"),
                 *FAST, *options]) == code
    assert_one_line_error(capsys.readouterr().err, *fragments)
    assert not out.exists() or not [p for p in out.rglob("*") if p.is_file()]
