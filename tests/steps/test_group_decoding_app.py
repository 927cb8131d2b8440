"""Cross-subject decoding through the BIDS-App's group level (``bids_affect.cli.run.main``).

Three subjects share one movie (:func:`tests.steps.group_helpers.shared_movie_dataset`);
the participant level runs once per module, and each test runs the group level
on a copy of its outputs (the work directory, and so the samples, is shared).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bids_affect.bold import SampleSet
from bids_affect.cli.parser import _build_parser
from bids_affect.cli.run import main
from bids_affect.decoding.cross_subject import (
    RESULT_COLUMNS,
    SubjectSamples,
    decode_across_subjects,
)
from bids_affect.reports.build import missing_files
from bids_affect.stats import TTEST_CAVEAT, accuracy_ttest, prevalence_inference
from tests.steps.group_helpers import shared_movie_dataset

FAST = ["--labels", "studyforrest-5", "--models", "ridge", "--n-permutations", "40",
        "--min-volumes", "5", "--skip-bids-validation", "--nprocs", "1"]


def _participant_level(folder: Path, **params) -> dict[str, Path]:
    bids = shared_movie_dataset(folder / "bids", n_runs=3, n_volumes=60, shape=(8, 9, 8),
                                signal=2.0, scene_duration=(8.0, 20.0), seed=11, **params)
    out, work = folder / "out", folder / "work"
    code = main([str(bids), str(out), "participant", "-w", str(work), "--random-seed", "4",
                 *FAST])
    assert code == 0
    return {"bids": bids, "out": out, "work": work}


@pytest.fixture(scope="module")
def three_subjects(tmp_path_factory):
    """Three subjects of one movie, their participant-level outputs and samples."""
    return _participant_level(tmp_path_factory.mktemp("crosssubject"))


def _group(run: dict[str, Path], tmp_path: Path, *flags: str) -> tuple[int, Path]:
    out = tmp_path / "out"
    shutil.copytree(run["out"], out)
    code = main([str(run["bids"]), str(out), "group", "-w", str(run["work"]),
                 "--random-seed", "4", *FAST, *flags])
    return code, out


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", keep_default_na=False, na_values=["n/a"],
                       dtype={"participant_id": str})


def _samples(work: Path) -> list[SubjectSamples]:
    folders = sorted(work.glob("*/sub_*_task_movie_wf/samples/result"))
    subjects = []
    for folder in folders:
        label = folder.parts[-3].split("_")[1]
        samples = SampleSet.load(folder)
        subjects.append(SubjectSamples.from_sample_set(
            label, samples, space=samples.manifest["runs"][0]["space"], min_volumes=5))
    return subjects


def test_cross_subject_decoding_end_to_end_equals_the_library(three_subjects, tmp_path,
                                                              capsys):
    samples = sorted(three_subjects["work"].glob("*/sub_*/samples/result/manifest.json"))
    stamps = [path.stat().st_mtime_ns for path in samples]
    code, out = _group(three_subjects, tmp_path, "--alignment", "none,srm",
                       "--srm-components", "5")
    assert code == 0, capsys.readouterr().err
    # The participant level's samples were reused, not rebuilt.
    assert [path.stat().st_mtime_ns for path in samples] == stamps
    tables = {method: _read(out / "group" / f"task-movie_desc-{desc}_decoding.tsv")
              for method, desc in (("none", "ridge"), ("srm", "ridgesrm"))}
    about = {method: json.loads((out / "group" / f"task-movie_desc-{desc}_decoding.json")
                                .read_text())
             for method, desc in (("none", "ridge"), ("srm", "ridgesrm"))}
    for method, table in tables.items():
        assert list(table.columns) == list(RESULT_COLUMNS)
        assert table["participant_id"].tolist() == ["sub-01", "sub-02", "sub-03"]
        assert (table["alignment"] == method).all()
        assert (table["n_permutations"] == 40).all()
        assert about[method]["alignment"] == method and about[method]["model"] == "ridge"
        assert about[method]["Parameters"]["n_components"] == 5
        assert about[method]["Sources"] and "group_p_permutation" in about[method]
    assert about["srm"]["RandomSeed"] == about["none"]["RandomSeed"]
    # The same samples through the library, with the seed the sidecar records.
    expected = decode_across_subjects(_samples(three_subjects["work"]), model="ridge",
                                      alignment="none,srm", n_components=5,
                                      n_permutations=40,
                                      random_state=about["none"]["RandomSeed"])
    for method, table in tables.items():
        library = expected.tables[method]
        for column in ("balanced_accuracy", "chance_balanced_accuracy", "null_low",
                       "null_high", "p_permutation", "random_split_balanced_accuracy"):
            np.testing.assert_allclose(table[column], library[column], rtol=1e-5,
                                       err_msg=f"{method} {column}")
    gain = about["srm"]["gain_over_none"]
    assert gain["mean"] == pytest.approx(expected.summary["srm"]["gain_over_none"]["mean"],
                                         abs=1e-5)
    assert about["none"]["group_p_permutation"] == pytest.approx(
        expected.summary["none"]["group_p_permutation"])
    # Predictions of each held-out subject, and the nulls of each and of their mean.
    for subject in ("01", "02", "03"):
        predictions = _read(out / "group" / f"sub-{subject}_task-movie_desc-ridgesrm_"
                                             "predictions.tsv")
        library = expected.predictions["srm"][subject]
        assert predictions["predicted"].tolist() == library["predicted"].tolist()
        assert {"onset", "run", "volume", "fold", "true", "prob_fear"} <= set(predictions)
    null = _read(out / "group" / "task-movie_desc-ridge_null.tsv")
    assert list(null.columns) == ["permutation", "sub-01", "sub-02", "sub-03", "mean"]
    np.testing.assert_allclose(null["sub-02"], expected.nulls["none"]["02"], rtol=1e-5)
    # The group report shows both alignments and the gain, with every figure it links.
    html = (out / "group.html").read_text()
    for section in ("crosssubject", "groupinference", "withinsubject"):
        assert f'<section id="{section}">' in html, section
    assert "gain over none" in html and "ridge, task-movie" in html
    assert missing_files(out / "group.html") == []
    assert (out / "group" / "figures" / "task-movie_desc-ridge_alignment.svg").is_file()


def test_without_alignment_no_cross_subject_model_runs(three_subjects, tmp_path, capsys):
    code, out = _group(three_subjects, tmp_path)
    assert code == 0, capsys.readouterr().err
    assert not list((out / "group").glob("*_decoding.tsv"))
    assert (out / "group" / "task-movie_desc-ridge_withinsubject.tsv").is_file()


def test_within_subject_scores_get_a_t_test_with_its_caveat_and_prevalence(three_subjects,
                                                                           tmp_path, capsys):
    code, out = _group(three_subjects, tmp_path)
    assert code == 0, capsys.readouterr().err
    about = json.loads((out / "group" / "task-movie_desc-ridge_withinsubject.json").read_text())
    inference = about["GroupInference"]
    func = [out / f"sub-{s}" / "func" / f"sub-{s}_task-movie_desc-ridge" for s in
            ("01", "02", "03")]
    nulls = [_read(Path(f"{stem}_null.tsv"))["balanced_accuracy"].to_numpy() for stem in func]
    table = pd.DataFrame([json.loads(Path(f"{stem}_decoding.json").read_text())
                          for stem in func])
    expected = prevalence_inference(table["balanced_accuracy"], nulls, alpha=0.05,
                                    n_second_level=100_000, random_state=about["RandomSeed"])
    for key, value in expected.to_dict().items():
        assert inference["prevalence"][key] == (pytest.approx(value) if isinstance(
            value, float) else value), key
    assert inference["prevalence"]["exact"]  # 41^3 combinations: all enumerated
    ttest = accuracy_ttest(table["balanced_accuracy"], table["chance_balanced_accuracy"])
    assert inference["ttest"] == pytest.approx(ttest)
    assert inference["ttest"]["caveat"] == TTEST_CAVEAT
    assert inference["participants"] == ["sub-01", "sub-02", "sub-03"]
    assert len(about["Sources"]) == 6  # three decoding.json, three null.tsv


def test_one_subject_skips_cross_subject_decoding_and_the_rest_runs(three_subjects, tmp_path,
                                                                    capsys):
    code, out = _group(three_subjects, tmp_path, "--participant-label", "02",
                       "--alignment", "none")
    err = capsys.readouterr().err
    assert code == 0, err
    assert "cross-subject decoding skipped (cross-subject decoding needs at least 2 subjects, " \
           "got 1 (02))" in err
    assert not list((out / "group").glob("*_decoding.tsv"))
    table = _read(out / "group" / "task-movie_desc-ridge_withinsubject.tsv")
    assert table["participant_id"].tolist() == ["sub-02"]


@pytest.fixture(scope="module")
def without_fear_in_one_subject(tmp_path_factory):
    """Three subjects of one movie, sub-02's fear scenes unannotated."""
    folder = tmp_path_factory.mktemp("classes")
    bids = shared_movie_dataset(folder / "bids", n_runs=3, n_volumes=60, shape=(8, 9, 8),
                                signal=2.0, scene_duration=(8.0, 20.0), seed=11)
    for events in sorted((bids / "sub-02" / "func").glob("*_events.tsv")):
        table = pd.read_csv(events, sep="\t", keep_default_na=False)
        fear = table["trial_type"] == "fear"
        table.loc[fear, "e_fear"] = 0.0
        table.loc[fear, "trial_type"] = "n/a"
        table.to_csv(events, sep="\t", index=False)
    out, work = folder / "out", folder / "work"
    assert main([str(bids), str(out), "participant", "-w", str(work), *FAST]) == 0
    return {"bids": bids, "out": out, "work": work}


def test_classes_some_subjects_lack_are_left_out_and_said(without_fear_in_one_subject,
                                                          tmp_path, capsys):
    code, out = _group(without_fear_in_one_subject, tmp_path, "--alignment", "none")
    assert code == 0, capsys.readouterr().err
    about = json.loads((out / "group" / "task-movie_desc-ridge_decoding.json").read_text())
    assert about["classes"] == ["anger", "happiness", "love", "sadness"]
    assert about["harmonisation"]["dropped_classes"] == {"fear": ["02"]}
    assert any("fear (missing in 02)" in note for note in about["harmonisation"]["notes"])
    predictions = _read(out / "group" / "sub-01_task-movie_desc-ridge_predictions.tsv")
    assert "fear" not in set(predictions["true"])


def test_native_space_samples_are_refused_with_one_line(tmp_path, capsys):
    run = _participant_level(tmp_path / "native", n_subjects=2, with_derivatives=False)
    code, _ = _group(run, tmp_path, "--alignment", "none")
    err = capsys.readouterr().err
    assert code == 65
    line = next(line for line in err.splitlines() if "standard space" in line)
    assert "sub-01 (native: raw BOLD)" in line and "sub-02" in line
    assert "--space MNI152NLin2009cAsym" in line


@pytest.mark.parametrize("flags, message", [
    (["--space", "T1w", "--alignment", "srm"], "--space is T1w (native"),
    (["--alignment", "hyper"], "--alignment: 'hyper' is unknown"),
    (["--alignment", "srm", "--analyses", "rsa"], "decoding analysis, which is not asked"),
])
def test_bad_group_options_exit_64_with_one_line(flags, message, tmp_path, capsys):
    code = main([str(tmp_path / "bids"), str(tmp_path / "out"), "group", *flags])
    err = capsys.readouterr().err
    assert code == 64
    assert message in err and len(err.strip().splitlines()) == 1


def test_help_shows_the_group_flags_with_their_defaults():
    text = " ".join(_build_parser().format_help().split())
    assert "Group level:" in text
    assert "--alignment LIST" in text and "(default: none given: cross-subject decoding does " \
                                         "not run)" in text
    assert "Known: none, srm, procrustes, ridge" in text
    assert "--srm-components K shared components of --alignment srm (default: 50)" in text
    assert "--group-inference {parametric,nonparametric,both}" in text
    assert "--group-alpha Q" in text and "(default: 0.05)" in text
    assert "--group-permutations N" in text and "--consensus-min-subjects N" in text


def test_a_participant_run_ignores_group_options(tmp_path):
    """One configuration file may serve both levels: --alignment is the group level's."""
    from bids_affect.cli.parser import parse_args
    from bids_affect.config import Config

    config = parse_args([str(tmp_path / "bids"), str(tmp_path / "out"), "participant",
                         "--space", "T1w", "--alignment", "none,srm"])
    assert config.section("group").alignment == ["none", "srm"]
    saved = tmp_path / "run.toml"
    saved.write_text(config.to_toml())
    assert Config.from_toml(saved).section("group").alignment == ["none", "srm"]


def test_samples_of_another_version_are_warned_about_with_both_versions(three_subjects,
                                                                       tmp_path, caplog):
    from bids_affect.__about__ import __version__
    from bids_affect.bold import MANIFEST_FILE
    from bids_affect.steps.group_decoding import load_subjects

    folders = sorted(three_subjects["work"].glob("*/sub_*_task_movie_wf/samples/result"))
    copies = []
    for k, folder in enumerate(folders[:2]):
        copy = tmp_path / f"samples{k}"
        shutil.copytree(folder, copy)
        copies.append(copy)
    manifest = json.loads((copies[1] / MANIFEST_FILE).read_text())
    manifest["software"]["bids_affect"] = "0.0.1"
    (copies[1] / MANIFEST_FILE).write_text(json.dumps(manifest))
    with caplog.at_level("WARNING", logger="bids_affect.group"):
        loaded = load_subjects(copies, ["01", "02"], 5)
    assert len(loaded) == 2
    warned = [record.getMessage() for record in caplog.records]
    assert len(warned) == 1
    assert "participant-level samples were written by bids_affect 0.0.1" in warned[0]
    assert f"this group level is bids_affect {__version__}" in warned[0]
    assert "sub-02 samples" in warned[0]
