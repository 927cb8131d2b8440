"""A user's run of every analysis at both levels: the outputs of DESIGN.md, valid BIDS."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy.spatial.distance import pdist, squareform

from bids_affect.atlases import atlas_names
from bids_affect.cli.run import main
from bids_affect.datasets import make_synthetic_dataset
from bids_affect.exceptions import InputDataError, UsageError
from bids_affect.io.validation import validate_dataset
from bids_affect.occlusion import TOP_VOXEL_COLUMNS, UMAP_COLUMNS
from bids_affect.rsa import rdm_to_table
from tests.helpers import result_hashes


def run_everything(bids: Path, out: Path, work: Path) -> None:
    """Participant and group levels with decoding, occlusion and RSA, seed 3."""
    code = main([str(bids), str(out), "participant", "group", "-w", str(work),
                 "--labels", "studyforrest-5", "--min-volumes", "5",
                 "--analyses", "decoding,occlusion,rsa", "--models", "ridge,cnn-deepemotion",
                 "--n-permutations", "20", "--n-permutations-cnn", "2", "--epochs", "6",
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
            # Ridge has decision values, not probabilities (DESIGN.md, outputs).
            score = "decision" if model == "ridge" else "prob"
            assert {f"{score}_{c}" for c in classes} <= set(predictions.columns)
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
    first, second = result_hashes(out), result_hashes(tmp_path / "out")
    assert any(name.endswith(".pt") for name in first)
    assert any(name.endswith("_statmap.nii.gz") for name in first)
    assert first == second


def test_outputs_pass_the_bids_validator(finished_run, tmp_path):
    _, out = finished_run
    assert validate_dataset(out, ["01"], tmp_path / "validation") == []


# --------------------------------------------------------------------------- interpretation

PREFIX = "sub-01_task-movie"


def _sidecar(path: Path) -> dict:
    return json.loads(path.with_name(path.name.split(".")[0] + ".json").read_text())


def _step_dir(root: Path, node: str) -> Path:
    """The result folder of one node of the participant workflow in the work directory."""
    (found,) = (root / "work").glob(f"bids_affect_*_wf/sub_01_task_movie_wf/{node}/result")
    return found


def test_top_voxel_tables_and_atlas_labels(finished_run):
    root, out = finished_run
    func = out / "sub-01" / "func"
    tables = sorted(func.glob(f"{PREFIX}_desc-cnndeepemotion_contrast-*_stat-occlusion_topk.tsv"))
    assert len(tables) == 3  # every class has a map
    mask = next((root / "bids" / "derivatives").rglob("*desc-brain_mask.nii.gz"))
    for path in tables:
        table = pd.read_csv(path, sep="\t")
        assert tuple(table.columns) == TOP_VOXEL_COLUMNS
        assert table["rank"].tolist() == list(range(1, 11))
        assert table["value"].is_monotonic_decreasing
        contrast = path.name.split("contrast-")[1].split("_")[0]
        statmap = nib.load(func / f"{PREFIX}_space-MNI152NLin2009cAsym_desc-cnndeepemotion_"
                                  f"contrast-{contrast}_stat-occlusion_statmap.nii.gz")
        ijk = table[["i", "j", "k"]].to_numpy()
        assert np.allclose(np.asarray(statmap.dataobj)[tuple(ijk.T)], table["value"], atol=1e-6)
        assert np.asarray(nib.load(mask).dataobj)[tuple(ijk.T)].all()
        assert np.allclose(nib.affines.apply_affine(statmap.affine, ijk),
                           table[["x", "y", "z"]], atol=1e-3)
        assert set(table["atlas"]) == {"harvard_oxford"}
        assert set(table["region"]) <= set(atlas_names("harvard_oxford")) | {"unlabelled"}
        assert _sidecar(path)["Atlas"]["Key"] == "harvard_oxford"


def test_occlusion_samples_and_umap_outputs(finished_run):
    _, out = finished_run
    func = out / "sub-01" / "func"
    samples = pd.read_csv(func / f"{PREFIX}_desc-cnndeepemotion_stat-occlusion_samples.tsv",
                          sep="\t")
    assert list(samples.columns) == ["class", "sample", "fold", "run", "volume", "probability"]
    assert sorted(samples["class"].unique()) == ["fear", "happiness", "sadness"]
    assert (samples.groupby("class").size() <= 2).all()  # --occlusion-samples 2
    assert _sidecar(func / f"{PREFIX}_desc-cnndeepemotion_stat-occlusion_samples.tsv")[
        "ClassesWithoutSamples"] == {}
    umap = func / f"{PREFIX}_desc-cnndeepemotion_stat-occlusion_umap.tsv"
    table = pd.read_csv(umap, sep="\t")
    assert tuple(table.columns) == UMAP_COLUMNS and 10 <= len(table) <= 30
    settings = _sidecar(umap)["UMAP"]
    assert (settings["n_neighbors"], settings["min_dist"]) == (30, 0.1)
    assert settings["n_neighbors_used"] == len(table) - 1
    figure = out / "sub-01" / "figures" / f"{PREFIX}_desc-cnndeepemotion_umap.svg"
    assert figure.read_text().lstrip().startswith("<?xml")


def test_rsa_statistics_and_model_rdm_sidecar(finished_run):
    _, out = finished_run
    func = out / "sub-01" / "func"
    table = pd.read_csv(func / f"{PREFIX}_desc-rsa_statistics.tsv", sep="\t")
    assert tuple(table.columns) == ("rdm_a", "rdm_b", "method", "r", "p", "n_permutations",
                                    "exact")
    assert list(zip(table.rdm_a, table.rdm_b)) == [("brain", "cnndeepemotionpenultimate")]
    assert table.method.tolist() == ["spearman"] and table.exact.all()
    assert table.n_permutations.tolist() == [6]  # 3 classes: 3! relabellings
    assert -1 <= table.r.iloc[0] <= 1 and 1 / 6 <= table.p.iloc[0] <= 1
    model = _sidecar(func / f"{PREFIX}_desc-cnndeepemotionpenultimate_rdm.tsv")
    assert model["Distance"] == "correlation" and "per cross-validation fold" in model[
        "Description"]
    assert model["FoldsPerPair"]["counts"] == [[3, 3, 3]] * 3  # 3 runs: 3 folds per pair


def test_rsa_step_with_roi_atlas_references_and_distances(finished_run, tmp_path, caplog):
    """Brain ROI RDMs from a user dseg, a reference of other classes, cv distances."""
    from bids_affect.steps.rsa import rsa_step, write_rsa_step

    root, _ = finished_run
    dseg = root / "bids" / "sourcedata" / "groundtruth" / "regions_dseg.nii.gz"
    reference = tmp_path / "arousal.tsv"
    names = ["fear", "happiness", "love", "sadness"]  # love is not in the data
    rdm = pd.DataFrame(squareform(pdist(np.arange(4.0)[:, None] ** 2)), names, names)
    rdm_to_table(rdm).to_csv(reference, sep="\t", index=False)
    settings = {"distance": "cv_euclidean", "methods": ["spearman"], "n_permutations": 0,
                "references": {"arousal": str(reference)}, "roi_atlas": f"{dseg}:fear,sadness"}
    work, out = tmp_path / "rsa", tmp_path / "out"
    work.mkdir()
    rsa_step(work, samples_dir=_step_dir(root, "samples"), settings=settings, seed=1,
                 min_volumes=5, decoding_dirs=[_step_dir(root, "decode_cnndeepemotion")])
    assert "comparisons with it use the 3 shared classes" in caplog.text
    write_rsa_step(tmp_path, decoding_dirs=[work], output_dir=str(out), subject="01",
                       task="movie", runs=[], provenance={})
    func = out / "sub-01" / "func"
    fear = func / f"{PREFIX}_desc-brainfear_rdm.tsv"
    sidecar = _sidecar(fear)
    assert sidecar["ROI"] == "fear" and sidecar["NumberOfVoxels"] == 16
    assert sidecar["Atlas"]["Key"] == "user" and sidecar["Atlas"]["ROIs"] == {
        "fear": ["fear"], "sadness": ["sadness"]}
    assert sidecar["Distance"] == sidecar["RequestedDistance"] == "cv_euclidean"
    model = _sidecar(func / f"{PREFIX}_desc-cnndeepemotionpenultimate_rdm.tsv")
    assert model["Distance"] == "correlation" and "cv_euclidean" in model["DistanceNote"]
    assert _sidecar(func / f"{PREFIX}_desc-arousal_rdm.tsv")["SharedClasses"] == [
        "fear", "happiness", "sadness"]
    table = pd.read_csv(func / f"{PREFIX}_desc-rsa_statistics.tsv", sep="\t")
    rdms = ["brain", "brainfear", "brainsadness", "cnndeepemotionpenultimate", "arousal"]
    assert list(zip(table.rdm_a, table.rdm_b)) == list(itertools.combinations(rdms, 2))
    assert (table.n_permutations == 6).all()  # 3 classes each, the reference's shared ones
    roi = pd.read_csv(fear, sep="\t", index_col=0)
    assert list(roi.index) == ["fear", "happiness", "sadness"]


@pytest.mark.parametrize(("roi_atlas", "message"), [
    ("harvard_oxford:accumbens", "ROI 'accumbens' of --roi-atlas harvard_oxford:accumbens "
                                 "holds no voxel of the brain mask"),
])
def test_rsa_step_refuses_an_roi_outside_the_mask(finished_run, tmp_path, roi_atlas, message):
    from bids_affect.steps.rsa import rsa_step

    root, _ = finished_run
    settings = {"distance": "correlation", "methods": ["spearman"], "n_permutations": 0,
                "references": {}, "roi_atlas": roi_atlas}
    with pytest.raises(InputDataError, match=re.escape(message)) as error:
        rsa_step(tmp_path, samples_dir=_step_dir(root, "samples"), settings=settings,
                     seed=1, min_volumes=5)
    assert error.value.exit_code == 65


def test_classes_without_samples_get_no_map_and_say_why(finished_run, tmp_path, caplog):
    from bids_affect.steps.occlusion import occlusion_step, write_occlusion_step

    root, _ = finished_run
    settings = {"window": 2, "stride": 2, "threshold": 1.0, "n_per_class": 2,
                "precision": "float32", "top_k": 10}
    work, out = tmp_path / "occlusion", tmp_path / "out"
    work.mkdir()
    samples = _step_dir(root, "samples")
    occlusion_step(work, samples_dir=samples,
                       decoding_dirs=[_step_dir(root, "decode_cnndeepemotion")],
                       settings=settings, seed=1)
    assert "UMAP skipped" in caplog.text
    write_occlusion_step(tmp_path, decoding_dirs=[work], samples_dir=samples,
                             output_dir=str(out), subject="01", task="movie", runs=[],
                             provenance={})
    func = out / "sub-01" / "func"
    assert not list(func.glob("*_statmap.nii.gz")) and not list(func.glob("*_topk.tsv"))
    assert not list(func.glob("*_umap.tsv"))
    path = func / f"{PREFIX}_desc-cnndeepemotion_stat-occlusion_samples.tsv"
    assert pd.read_csv(path, sep="\t").empty
    sidecar = _sidecar(path)
    assert sorted(sidecar["ClassesWithoutSamples"]) == ["fear", "happiness", "sadness"]
    assert all("p >= 1" in reason for reason in sidecar["ClassesWithoutSamples"].values())
    assert sidecar["UMAP"]["skipped"].startswith("UMAP skipped")


def test_top_k_larger_than_the_mask_is_refused_before_occlusion(finished_run, tmp_path,
                                                                 monkeypatch):
    from bids_affect import occlusion
    from bids_affect.steps.occlusion import occlusion_step

    root, _ = finished_run

    def never(*args, **kwargs):
        raise AssertionError("occlusion ran before --top-k was checked")

    monkeypatch.setattr(occlusion, "class_occlusion_maps", never)
    settings = {"window": 2, "stride": 2, "threshold": 0.0, "n_per_class": 2,
                "precision": "float32", "top_k": 100_000}
    with pytest.raises(UsageError, match=r"top_k: asks for 100000 top voxels, more than the "
                                         r"brain mask holds \(\d+ voxels\)") as error:
        occlusion_step(tmp_path, samples_dir=_step_dir(root, "samples"),
                       decoding_dirs=[_step_dir(root, "decode_cnndeepemotion")],
                       settings=settings, seed=1)
    assert error.value.exit_code == 64 and "fix: use " in str(error.value)
    # The command line names the flag that sets the library's parameter.
    from bids_affect.cli.run import _error_line

    assert _error_line(error.value).startswith("bids_affect: error: --top-k: asks for 100000")


# --------------------------------------------------------------------------- raw data


@pytest.fixture(scope="module")
def raw_run(tmp_path_factory):
    """Every analysis on raw BIDS data (native space, no fMRIPrep), 2 runs, default cleaning.

    The options left at their defaults are all but those that set the run time
    (epochs, permutations, occluded samples): a new user's first run.
    """
    root = tmp_path_factory.mktemp("raw")
    make_synthetic_dataset(root / "bids", n_subjects=1, n_runs=2, n_volumes=60,
                           shape=(12, 14, 12), signal=2.0, with_derivatives=False,
                           classes=("happiness", "sadness", "fear"),
                           scene_duration=(8.0, 20.0), seed=5)
    code = main([str(root / "bids"), str(root / "out"), "participant", "-w", str(root / "work"),
                 "--labels", "studyforrest-5", "--min-volumes", "5", "--analyses",
                 "decoding,occlusion,rsa", "--models", "ridge,cnn-deepemotion",
                 "--n-permutations", "20", "--n-permutations-cnn", "0",
                 "--epochs", "6", "--occlusion-threshold", "0", "--occlusion-samples", "1",
                 "--top-k", "5", "--random-seed", "3", "--nprocs", "1", "--omp-nthreads", "1",
                 "--skip-bids-validation"])
    assert code == 0
    return root, root / "out"


@pytest.mark.parametrize("data", ["raw", "fmriprep"])
def test_default_confounds_follow_the_data(raw_run, finished_run, data):
    """``--confounds auto``: motion regressors with fMRIPrep's confounds, none on raw BIDS."""
    _, out = raw_run if data == "raw" else finished_run
    expected = "none" if data == "raw" else "motion"
    sidecars = sorted((out / "sub-01" / "func").glob("*_desc-ridge_decoding.json"))
    assert sidecars
    cleaning = json.loads(sidecars[0].read_text())["Parameters"]["cleaning"]
    assert cleaning["confounds"] == "auto"
    assert set(cleaning["confounds_applied"].values()) == {expected}
    assert len(cleaning["confounds_applied"]) == (2 if data == "raw" else 3)
    citation = (out / "logs" / "CITATION.md").read_text()
    assert "'motion' for runs with fMRIPrep's confounds file" in citation


def test_native_space_top_voxels_have_no_atlas(raw_run):
    _, out = raw_run
    tables = sorted((out / "sub-01" / "func").glob("*_stat-occlusion_topk.tsv"))
    assert tables
    for path in tables:
        table = pd.read_csv(path, sep="\t")
        assert tuple(table.columns) == TOP_VOXEL_COLUMNS
        assert set(table["atlas"]) == {"none"}
        assert set(table["region"]) == {"native space: no atlas"}
        assert _sidecar(path)["Atlas"] is None
    maps = list((out / "sub-01" / "func").glob("*_stat-occlusion_statmap.nii.gz"))
    assert maps and all("_space-" not in path.name for path in maps)


def test_offline_atlas_on_native_data_is_refused_naming_the_space(raw_run, tmp_path):
    from bids_affect.steps.rsa import rsa_step

    root, _ = raw_run
    settings = {"distance": "correlation", "methods": ["spearman"], "n_permutations": 0,
                "references": {}, "roi_atlas": "juelich:amygdala_cm"}
    with pytest.raises(InputDataError, match="the data are in space native") as error:
        rsa_step(tmp_path, samples_dir=_step_dir(root, "samples"), settings=settings,
                     seed=1, min_volumes=5)
    assert error.value.exit_code == 65 and "MNI152" in str(error.value)


# --------------------------------------------------------------------------- options


def _reference(path: Path, names: list[str], asymmetric: bool = False) -> Path:
    """A reference RDM file: distances of points on a line (one entry off when asked)."""
    values = squareform(pdist(np.arange(len(names), dtype=float)[:, None]))
    if asymmetric:
        values[0, 1] += 1.0
    table = pd.DataFrame(values, columns=names)
    table.insert(0, "class", names)
    table.to_csv(path, sep="\t", index=False)
    return path


@pytest.mark.parametrize(("options", "message"), [
    (["--rsa-reference", "brain={good}"], "--rsa-reference brain: desc-brain_rdm.tsv is the "
                                          "whole-mask brain RDM"),
    (["--rsa-reference", "Brain={good}"], "is the whole-mask brain RDM"),
    (["--models", "cnn-deepemotion", "--rsa-reference", "cnndeepemotionpenultimate={good}"],
     "is the model RDM of cnn-deepemotion"),
    (["--roi-atlas", "juelich:CM", "--rsa-reference", "brainamygdalacm={good}"],
     "is the brain RDM of ROI amygdala_cm"),
    (["--rsa-reference", "va-l={good}", "val={good}"], "would both write desc-val_rdm.tsv"),
    (["--rsa-reference", "bad={bad}"], "--rsa-reference bad: the RDM is not symmetric"),
    (["--rsa-reference", "small={small}"], "the RDM holds 2 classes"),
    (["--rsa-reference", "gone={missing}"], "--rsa-reference gone: RDM file not found"),
    (["--roi-atlas", "juelich:amygdala"], "defined on the harvard_oxford atlas"),
    (["--roi-atlas", "harvard_oxford", "--space", "T1w"], "--space is T1w"),
    (["--roi-atlas", "harvard_oxford", "--analyses", "decoding"], "and none is asked"),
    (["--roi-atlas", "{missing}.nii.gz"], "does not exist"),
])
def test_rsa_and_roi_options_are_checked_at_parse_time(tmp_path, capsys, options, message):
    files = {"good": _reference(tmp_path / "good.tsv", ["a", "b", "c"]),
             "bad": _reference(tmp_path / "bad.tsv", ["a", "b", "c"], asymmetric=True),
             "small": _reference(tmp_path / "small.tsv", ["a", "b"]),
             "missing": tmp_path / "missing"}
    options = [option.format(**files) for option in options]
    if "--analyses" not in options:
        options += ["--analyses", "rsa"]
    code = main([str(tmp_path / "bids"), str(tmp_path / "out"), "participant",
                 "-w", str(tmp_path / "work"), *options])
    error = capsys.readouterr().err
    assert code == 64, error
    assert message in error and len(error.strip().splitlines()) == 1


def test_help_describes_bfloat16_and_the_roi_atlases(capsys):
    assert main(["--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    precision = text.rsplit("--occlusion-precision", 1)[1].split("--top-k")[0]
    assert "slower than float32 on CPUs" in precision and "faster" not in precision
    roi_atlas = text.rsplit("--roi-atlas", 1)[1]
    for atlas in ("harvard_oxford", "juelich"):
        assert f"{atlas} (default ROIs" in roi_atlas


# --------------------------------------------------------------------------- provenance


def test_sidecars_record_only_what_applied(finished_run):
    _, out = finished_run
    func = out / "sub-01" / "func"
    ridge = json.loads((func / "sub-01_task-movie_desc-ridge_decoding.json").read_text())
    cnn = json.loads((func / "sub-01_task-movie_desc-cnndeepemotion_decoding.json").read_text())
    assert ridge["cv"] == "loro"
    assert ridge["Parameters"]["cv_applied"] == "loro"
    for absent in ("n_splits", "gap", "epochs", "batch_size", "n_permutations_cnn"):
        assert absent not in ridge["Parameters"], absent
    assert ridge["Parameters"]["n_permutations"] == 20
    assert cnn["Parameters"]["n_permutations"] == 2 and cnn["Parameters"]["epochs"] == 6
    # One fold numbering: occlusion sidecars count folds from 1, as samples.tsv does.
    samples = pd.read_csv(func / "sub-01_task-movie_desc-cnndeepemotion_stat-occlusion_samples"
                                 ".tsv", sep="\t")
    statmap = next(func.glob("*_stat-occlusion_statmap.nii.gz"))
    folds = {run["fold"] for run in _sidecar(statmap)["Occlusion"]}
    assert folds <= set(range(1, 4)) and folds <= set(samples["fold"])


def test_tables_state_their_columns_and_round_floats(finished_run):
    _, out = finished_run
    predictions = next((out / "sub-01" / "func").glob("*_run-1_desc-ridge_predictions.tsv"))
    sidecar = _sidecar(predictions)
    header = predictions.read_text().splitlines()[0].split("\t")
    assert header[:4] == ["onset", "volume", "true", "predicted"]
    # Ridge has no class probabilities: the contracted prob_CLASS columns hold the
    # softmax of its decision values (the sidecar says so), then come the values.
    n_classes = (len(header) - 4) // 2
    assert all(column.startswith("prob_") for column in header[4:4 + n_classes])
    assert all(column.startswith("decision_") for column in header[4 + n_classes:])
    assert sidecar["onset"]["Units"] == "s"
    assert sidecar[header[-1]]["Description"].startswith("Decision value of class")
    assert "not calibrated" in sidecar["Scores"]
    cnn = next((out / "sub-01" / "func").glob("*_run-1_desc-cnndeepemotion_predictions.tsv"))
    assert all(c.startswith("prob_") for c in cnn.read_text().splitlines()[0].split("\t")[4:])
    for line in predictions.read_text().splitlines()[1:]:
        for value in line.split("\t")[4:]:
            digits = value.lstrip("-").replace(".", "").split("e")[0].lstrip("0")
            assert len(digits) <= 6, value


def test_dataset_files_describe_this_run(finished_run, monkeypatch):
    _, out = finished_run
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["Name"] == "bids_affect outputs: labels, decoding, occlusion, rsa"
    assert "Container" not in description["GeneratedBy"][0]  # not run in our image
    files = [path.relative_to(out).as_posix() for path in out.rglob("*") if path.is_file()]
    for pattern in (out / ".bidsignore").read_text().split():
        regex = re.compile(pattern.replace(".", r"\.").replace("*", "[^/]*") + "(/|$)")
        assert any(regex.match(name) or regex.search("/" + name) for name in files), pattern
    citation = (out / "logs" / "CITATION.md").read_text()
    assert "cnn-deepemotion: 2 permutations, so p >= 1/3" in citation
    assert "ridge: 20 permutations, so p >= 1/21" in citation
    assert "=True" not in citation and "=False" not in citation
