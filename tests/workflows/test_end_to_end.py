"""A user's run of every analysis at both levels: the outputs of DESIGN.md, valid BIDS."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_affect.cli.run import main
from bids_affect.datasets import make_synthetic_dataset
from bids_affect.io.validation import validate_dataset


def run_everything(bids: Path, out: Path, work: Path) -> None:
    """Participant and group levels with decoding, occlusion and RSA, seed 3."""
    code = main([str(bids), str(out), "participant", "group", "-w", str(work),
                 "--labels", "studyforrest-5", "--min-volumes", "5",
                 "--analyses", "decoding,occlusion,rsa", "--models", "ridge,cnn-deepemotion",
                 "--n-permutations", "20", "--n-permutations-cnn", "2", "--epochs", "3",
                 "--occlusion-threshold", "0", "--occlusion-samples", "2", "--top-k", "10",
                 "--random-seed", "3", "--nprocs", "1", "--omp-nthreads", "1"])
    assert code == 0


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """Every analysis at both levels on planted signal."""
    root = tmp_path_factory.mktemp("e2e")
    make_synthetic_dataset(root / "bids", n_subjects=1, n_runs=3, n_volumes=60,
                           shape=(12, 14, 12), signal=2.0,
                           classes=("happiness", "sadness", "fear"),
                           scene_duration=(8.0, 20.0), seed=5)
    run_everything(root / "bids", root / "out", root / "work")
    return root, root / "out"


def test_every_contracted_output_is_written(finished_run):
    root, out = finished_run
    func = out / "sub-01" / "func"
    prefix = "sub-01_task-movie"
    for model in ("ridge", "cnndeepemotion"):
        metrics = json.loads((func / f"{prefix}_desc-{model}_decoding.json").read_text())
        for field in ("model", "classes", "cv", "n_samples", "accuracy", "balanced_accuracy",
                      "chance_balanced_accuracy", "p_permutation", "n_permutations",
                      "per_class", "macro_auc", "fold_scores", "null_band",
                      "random_split_balanced_accuracy"):
            assert field in metrics, (model, field)
        classes = metrics["classes"]
        confusion = pd.read_csv(func / f"{prefix}_desc-{model}_confusion.tsv", sep="\t",
                                index_col=0)
        assert list(confusion.index) == classes and list(confusion.columns) == classes
        assert confusion.to_numpy().sum() == sum(metrics["n_samples"].values())
        for run in (1, 2, 3):
            predictions = pd.read_csv(func / f"{prefix}_run-{run}_desc-{model}_predictions.tsv",
                                      sep="\t")
            assert list(predictions.columns[:4]) == ["onset", "volume", "true", "predicted"]
            assert {f"prob_{c}" for c in classes} <= set(predictions.columns)
        extension = "pt" if model.startswith("cnn") else "joblib"
        models = sorted((out / "sub-01" / "models").glob(f"*desc-{model}*_model.{extension}"))
        assert models and all(m.with_suffix(".json").exists() for m in models)

    maps = sorted(func.glob(f"{prefix}_space-*_desc-cnndeepemotion_contrast-*"
                            "_stat-occlusion_statmap.nii.gz"))
    assert maps, "no occlusion map"
    bold = next((root / "bids" / "derivatives").rglob("*desc-preproc_bold.nii.gz"))
    for path in maps:
        image = nib.load(path)
        assert image.shape == nib.load(bold).shape[:3]
        assert np.allclose(image.affine, nib.load(bold).affine)
    rdms = sorted(func.glob(f"{prefix}_desc-*_rdm.tsv"))
    assert len(rdms) >= 2
    rdm = pd.read_csv(rdms[0], sep="\t", index_col=0)
    assert list(rdm.index) == list(rdm.columns)
    assert np.allclose(rdm.to_numpy(), rdm.to_numpy().T) and np.allclose(np.diag(rdm), 0)

    table = pd.read_csv(out / "group" / "task-movie_desc-ridge_withinsubject.tsv", sep="\t")
    assert table["participant_id"].tolist() == ["sub-01"]
    ridge = json.loads((func / f"{prefix}_desc-ridge_decoding.json").read_text())
    assert table["balanced_accuracy"].iloc[0] == pytest.approx(ridge["balanced_accuracy"])


def test_every_data_file_has_a_sidecar_and_no_temp_file_is_left(finished_run):
    _, out = finished_run
    data = [p for p in (out / "sub-01").rglob("*") if p.is_file() and p.suffix != ".json"
            and "log" not in p.relative_to(out).parts]
    assert data
    for path in data:
        sidecar = path.parent / (path.name.split(".")[0] + ".json")
        assert sidecar.exists(), path
        meta = json.loads(sidecar.read_text())
        assert meta["Sources"] and "bids_affect" in json.dumps(meta), path
    assert not list(out.rglob(".tmp-*"))


def test_the_same_seed_gives_the_same_files_bit_for_bit(finished_run, tmp_path):
    root, out = finished_run
    run_everything(root / "bids", tmp_path / "out", tmp_path / "work")

    def hashes(folder: Path) -> dict[str, str]:
        return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(folder.rglob("*")) if p.is_file()
                and "log" not in p.relative_to(folder).parts[:2]}

    first, second = hashes(out), hashes(tmp_path / "out")
    assert any(name.endswith(".pt") for name in first)
    assert any(name.endswith("_statmap.nii.gz") for name in first)
    assert first == second


def test_outputs_pass_the_bids_validator(finished_run, tmp_path):
    _, out = finished_run
    assert validate_dataset(out, ["01"], tmp_path / "validation") == []
