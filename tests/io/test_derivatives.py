"""The derivatives writer: names, atomic writes, sidecars, dataset files."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_affect.exceptions import OutputError, UsageError
from bids_affect.io import derivatives as deriv


@pytest.mark.parametrize("kind, entities, expected", [
    ("labels", dict(subject="01", session="2", task="movie", run=3),
     "sub-01/func/sub-01_ses-2_task-movie_run-3_desc-labels_events.tsv"),
    ("decoding", dict(subject="01", task="movie", desc="cnnneuro120fp"),
     "sub-01/func/sub-01_task-movie_desc-cnnneuro120fp_decoding.json"),
    ("predictions", dict(subject="01", task="movie", run=1, desc="ridge"),
     "sub-01/func/sub-01_task-movie_run-1_desc-ridge_predictions.tsv"),
    ("confusion", dict(subject="01", task="movie", desc="ridge"),
     "sub-01/func/sub-01_task-movie_desc-ridge_confusion.tsv"),
    ("occlusion_map", dict(subject="01", task="movie", space="MNI152NLin2009cAsym",
                           desc="cnnneuro120fp", contrast="fear"),
     "sub-01/func/sub-01_task-movie_space-MNI152NLin2009cAsym_desc-cnnneuro120fp_"
     "contrast-fear_stat-occlusion_statmap.nii.gz"),
    ("occlusion_topk", dict(subject="01", task="movie", desc="cnnneuro120fp",
                            contrast="fear"),
     "sub-01/func/sub-01_task-movie_desc-cnnneuro120fp_contrast-fear_stat-occlusion_topk.tsv"),
    ("rdm", dict(subject="01", task="movie", desc="brain"),
     "sub-01/func/sub-01_task-movie_desc-brain_rdm.tsv"),
    ("rsa_statistics", dict(subject="01", task="movie"),
     "sub-01/func/sub-01_task-movie_desc-rsa_statistics.tsv"),
    ("group_withinsubject", dict(task="movie", desc="ridge"),
     "group/task-movie_desc-ridge_withinsubject.tsv"),
    ("labels", dict(subject="01", task="movie", acquisition="mb4", run=2),
     "sub-01/func/sub-01_task-movie_acq-mb4_run-2_desc-labels_events.tsv"),
    ("encoding_map", dict(subject="01", task="movie", space="MNI152NLin6Asym",
                          desc="emonetfc7", stat="r"),
     "sub-01/func/sub-01_task-movie_space-MNI152NLin6Asym_desc-emonetfc7_stat-r_statmap.nii.gz"),
    ("encoding_map", dict(subject="01", task="movie", desc="emonetfc7", stat="pfwe"),
     "sub-01/func/sub-01_task-movie_desc-emonetfc7_stat-pfwe_statmap.nii.gz"),
    ("encoding", dict(subject="01", task="movie", desc="emonetfc7pls"),
     "sub-01/func/sub-01_task-movie_desc-emonetfc7pls_encoding.json"),
    ("encoding_model", dict(subject="01", task="movie", desc="emonetfc7"),
     "sub-01/models/sub-01_task-movie_desc-emonetfc7_encoder.npz"),
    ("stim_recording", dict(subject="01", task="movie", run=1, recording="alexnetfc7"),
     "sub-01/func/sub-01_task-movie_run-1_recording-alexnetfc7_stim.tsv.gz"),
    ("encoding_roi", dict(subject="01", task="movie", desc="emonetfc7"),
     "sub-01/func/sub-01_task-movie_desc-emonetfc7_roi.tsv"),
    ("report", dict(subject="01"), "sub-01.html"),
    ("group_report", {}, "group.html"),
    ("group_statmap", dict(task="movie", space="MNI152NLin6Asym", desc="emonetfc7"),
     "group/task-movie_space-MNI152NLin6Asym_desc-emonetfc7_stat-t_statmap.nii.gz"),
])
def test_output_paths_follow_the_contract(tmp_path, kind, entities, expected):
    assert deriv.output_path(tmp_path, kind, **entities) == tmp_path / expected
    assert deriv.parse_entities(expected.split("/")[-1]).items() >= {
        k: str(v) for k, v in entities.items()}.items()


def test_model_path_needs_an_extension_and_labels_must_be_alphanumeric(tmp_path):
    path = deriv.output_path(tmp_path, "model", subject="01", task="movie", desc="ridge",
                             extension=".joblib")
    assert path == tmp_path / "sub-01/models/sub-01_task-movie_desc-ridge_model.joblib"
    with pytest.raises(UsageError, match="extension"):
        deriv.output_path(tmp_path, "model", subject="01", task="movie", desc="ridge")
    with pytest.raises(UsageError, match="not alphanumeric"):
        deriv.output_path(tmp_path, "decoding", subject="01", task="movie", desc="cnn-x")
    with pytest.raises(UsageError, match="needs the entities"):
        deriv.output_path(tmp_path, "decoding", subject="01", task="movie")
    assert deriv.desc_label("cnn-neuro120fp") == "cnnneuro120fp"


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "a" / "table.tsv"
    with pytest.raises(RuntimeError), deriv.atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_write_with_sidecar_writes_both(tmp_path):
    path = tmp_path / "sub-01/func/sub-01_task-movie_desc-ridge_confusion.tsv"
    deriv.write_with_sidecar(path, pd.DataFrame({"true": ["a"], "a": [1]}),
                             deriv.sidecar(parameters={"x": 1}, seed=3, sources=["bids:raw:x"]))
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["RandomSeed"] == 3 and sidecar["Parameters"] == {"x": 1}
    assert {"bids_affect", "numpy", "scikit-learn", "nilearn", "torch"} <= set(
        sidecar["SoftwareVersions"])
    assert sidecar["Sources"] == ["bids:raw:x"]
    image = nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4))
    nifti = tmp_path / "map_statmap.nii.gz"
    deriv.write_with_sidecar(nifti, image, {"a": 1})
    assert nib.load(nifti).shape == (2, 2, 2)
    assert (tmp_path / "map_statmap.json").exists()


def _slow_writer(path, ready):
    with deriv.atomic_path(path) as tmp, open(tmp, "w") as handle:
        handle.write("x" * 1000)
        handle.flush()
        ready.set()
        time.sleep(60)


def test_a_killed_writer_leaves_no_half_file_and_is_cleaned(tmp_path):
    target = tmp_path / "out.tsv"
    ready = multiprocessing.get_context("fork").Event()
    process = multiprocessing.get_context("fork").Process(target=_slow_writer,
                                                           args=(target, ready))
    process.start()
    assert ready.wait(30)
    os.kill(process.pid, signal.SIGKILL)
    process.join()
    assert not target.exists()
    leftovers = list(tmp_path.glob(".tmp-*"))
    assert leftovers
    assert deriv.remove_stale_temporaries(tmp_path) == leftovers
    assert not list(tmp_path.glob(".tmp-*"))


def test_dataset_description_and_top_level_files(tmp_path, monkeypatch):
    monkeypatch.setenv("BIDS_AFFECT_CONTAINER", "docker")
    source = tmp_path / "bids"
    source.mkdir()
    (source / "dataset_description.json").write_text(json.dumps({"DatasetDOI": "10.1/x"}))
    out = tmp_path / "out"
    deriv.init_derivatives(out, source, {"raw": source}, analyses=["decoding"],
                           kinds=["decoding", "model"])
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["Name"] == "bids_affect outputs: labels, decoding"
    assert description["DatasetType"] == "derivative"
    generated = description["GeneratedBy"][0]
    assert generated["Name"] == "bids_affect" and generated["Version"]
    assert generated["CodeURL"].startswith("https://")
    assert generated["Container"]["Type"] == "docker"
    assert description["SourceDatasets"][0]["DOI"] == "10.1/x"
    assert (out / ".bidsignore").read_text().split() == [
        "*_decoding.*", "*_desc-labels_events.*", "logs", "sub-*/log", "sub-*/models"]
    assert "bids_affect" in (out / "logs" / "CITATION.md").read_text()
    # A later run into the same folder adds its analyses and files; None keeps the methods.
    (out / "logs" / "CITATION.md").write_text("participant methods")
    deriv.init_derivatives(out, source, {"raw": source}, methods=None, analyses=["rsa"],
                           kinds=["rdm"])
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["Name"] == "bids_affect outputs: labels, decoding, rsa"
    assert {"*_decoding.*", "*_rdm.*"} <= set((out / ".bidsignore").read_text().split())
    assert (out / "logs" / "CITATION.md").read_text() == "participant methods"


def test_container_is_declared_only_by_our_images(monkeypatch):
    monkeypatch.delenv("BIDS_AFFECT_CONTAINER", raising=False)
    assert deriv.container_info() is None  # whatever /.dockerenv says
    monkeypatch.setenv("BIDS_AFFECT_CONTAINER", "singularity")
    assert deriv.container_info()["Type"] == "singularity"


def test_uncreatable_output_dir_is_exit_73(tmp_path):
    # A path below a regular file cannot be created, even by root (CI runs as root,
    # so permission bits alone would not stop it).
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OutputError) as info:
        deriv.init_derivatives(blocker / "out")
    assert info.value.exit_code == 73
    assert str(blocker / "out") in str(info.value)


def test_find_outputs_reads_entities_back(tmp_path):
    for subject in ("01", "02"):
        deriv.write_json(deriv.output_path(tmp_path, "decoding", subject=subject,
                                           task="movie", desc="ridge"), {"x": 1})
    found = deriv.find_outputs(tmp_path, "decoding")
    assert [f.entities["subject"] for f in found] == ["01", "02"]
    assert found[0].entities["desc"] == "ridge"


def test_sources_name_the_deepest_dataset(tmp_path):
    resolver = deriv.SourceResolver({"raw": tmp_path, "fmriprep": tmp_path / "derivatives/fp"})
    assert resolver.uri(tmp_path / "derivatives/fp/sub-01/x.nii.gz") == \
        "bids:fmriprep:sub-01/x.nii.gz"
    assert resolver.uri(tmp_path / "sub-01/func/y.tsv") == "bids:raw:sub-01/func/y.tsv"
    assert resolver.uri("/elsewhere/z.tsv") == "/elsewhere/z.tsv"
