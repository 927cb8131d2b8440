"""The command line: every exit code, one-line errors, bids_dir never touched."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_affect.cli.parser import parse_args
from bids_affect.cli.run import main
from bids_affect.exceptions import UsageError
from tests.helpers import tree_digest


@pytest.fixture
def bids(synthetic_dataset, tmp_path):
    """A private copy of the synthetic dataset (tests may break it)."""
    return Path(shutil.copytree(synthetic_dataset, tmp_path / "bids"))


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.err


#: A log line (warnings, progress): ``251202-10:01:02 [bids_affect.x] WARNING: ...``.
LOG_LINE = re.compile(r"^\d{6}-\d\d:\d\d:\d\d \[[\w.]+\] (\w+): ")


def assert_one_line_error(err: str, *fragments: str) -> None:
    """``err`` holds exactly one error line with ``fragments``, and only log lines besides."""
    lines = err.splitlines()
    errors = [line for line in lines if line.startswith("bids_affect: error")]
    assert len(errors) == 1, err
    others = [line for line in lines if line not in errors]
    assert all(LOG_LINE.match(line) and LOG_LINE.match(line).group(1) != "ERROR"
               for line in others), err
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def test_analyses_none_writes_a_valid_derivatives_dataset(bids, tmp_path, capsys):
    before = tree_digest(bids)
    out = tmp_path / "out"
    code, err = run_cli(capsys, bids, out, "participant", "--analyses", "none", "--labels",
                        "studyforrest-5", "-w", tmp_path / "work", "--random-seed", "7")
    assert code == 0, err
    assert tree_digest(bids) == before
    labels = sorted((out / "sub-01" / "func").glob("*_desc-labels_events.tsv"))
    assert [p.name for p in labels] == [
        f"sub-01_task-movie_run-{r}_desc-labels_events.tsv" for r in (1, 2, 3)]
    sidecar = json.loads(labels[0].with_suffix(".json").read_text())
    assert sidecar["LabelSpec"]["name"] == "studyforrest-5"
    assert sidecar["Sources"][0].startswith("bids:raw:sub-01/func/")
    logs = list((out / "sub-01" / "log").glob("*/bids_affect.toml"))
    assert len(logs) == 1 and "master = 7" in logs[0].read_text()
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["GeneratedBy"][0]["Name"] == "bids_affect"
    from bids_affect.io.validation import validate_dataset

    assert validate_dataset(out, ["01", "02"], tmp_path / "validation") == []


def test_version_and_help(capsys):
    from bids_affect import __version__

    assert main(["--version"]) == 0
    assert __version__ in capsys.readouterr().out
    assert main(["--help"]) == 0
    help_text = capsys.readouterr().out
    for flag in ("--participant-label", "--bids-filter-file", "--mem-mb", "--analyses",
                 "cnn-neuro120fp", "studyforrest-5"):
        assert flag in help_text


def test_parse_args_precedence_and_normalisation(tmp_path):
    config_file = tmp_path / "c.toml"
    config_file.write_text("[labels]\nhrf_lag = 6.0\nmin_volumes = 5\n"
                           "[analysis]\nmodels = ['logreg']\n")
    bids = tmp_path / "bids"
    config = parse_args([str(bids), str(tmp_path / "out"), "participant", "--config-file",
                         str(config_file), "--hrf-lag", "3", "--participant_label", "sub-01",
                         "02", "--mem", "8G", "--analyses", "decoding,rsa", "-vv"])
    assert config.labels.hrf_lag == 3.0 and config.labels.min_volumes == 5
    assert config.analysis.models == ["logreg"]
    assert config.analysis.analyses == ["decoding", "rsa"]
    assert config.execution.participant_label == ["01", "02"]
    assert config.nipype.mem_mb == 8192 and config.execution.verbose == 2
    assert config.seeds.master is not None and config.execution.run_id
    assert config.execution.work_dir == Path("work").resolve()


def test_use_plugin_selects_the_nipype_plugin(tmp_path, monkeypatch):
    from bids_affect.workflows import base

    plugin_file = tmp_path / "plugin.yml"
    plugin_file.write_text("plugin: SLURM\nplugin_args:\n  sbatch_args: --time=1:00:00\n")
    config = parse_args([str(tmp_path / "bids"), str(tmp_path / "out"), "participant",
                         "--use-plugin", str(plugin_file), "-w", str(tmp_path / "work")])
    assert config.nipype.plugin == "SLURM"
    assert config.nipype.plugin_args == {"sbatch_args": "--time=1:00:00"}
    calls = []

    class Workflow:
        config = {"execution": {}}

        def run(self, plugin, plugin_args):
            calls.append((plugin, plugin_args))

    base.run_workflow(Workflow(), config)
    assert calls == [("SLURM", {"sbatch_args": "--time=1:00:00"})]
    config = parse_args([str(tmp_path / "bids"), str(tmp_path / "out"), "participant",
                         "--nprocs", "3", "--mem-mb", "2G", "-w", str(tmp_path / "work")])
    base.run_workflow(Workflow(), config)
    assert calls[-1][0] == "MultiProc"
    assert calls[-1][1] == {"n_procs": 3, "raise_insufficient": False, "memory_gb": 2.0}


@pytest.mark.parametrize("content, fragment", [
    ("plugin: [unclosed", "not valid YAML"),
    ("plugin_args: {n_procs: 2}", "must hold 'plugin'"),
])
def test_malformed_plugin_file_is_64(bids, tmp_path, capsys, content, fragment):
    plugin_file = tmp_path / "plugin.yml"
    plugin_file.write_text(content)
    code, err = run_cli(capsys, bids, tmp_path / "out", "participant", "--use-plugin",
                        plugin_file)
    assert code == 64
    assert_one_line_error(err, "plugin.yml", fragment)


def test_output_inside_bids_derivatives_is_allowed(tmp_path):
    bids = tmp_path / "bids"
    config = parse_args([str(bids), str(bids / "derivatives" / "bids_affect"), "group"])
    assert config.execution.output_dir == (bids / "derivatives" / "bids_affect").resolve()
    with pytest.raises(UsageError, match="only bids_dir/derivatives/<name>"):
        parse_args([str(bids), str(bids / "derivatives" / "a" / "b"), "group"])


@pytest.mark.parametrize("args, code, fragments", [
    (["{bids}", "{out}", "subject"], 17, ["'subject' is unknown"]),
    (["{bids}", "{out}", "participant", "--nonsense"], 64, ["unrecognized arguments"]),
    (["{bids}", "{bids}", "participant"], 64, ["output_dir is bids_dir or inside it"]),
    (["{bids}", "{bids}/results", "participant"], 64, ["inside it"]),
    (["{bids}", "{out}", "participant", "-w", "{bids}/work"], 64, ["work directory"]),
    (["{bids}", "{out}", "participant", "--analyses", "selectivity"], 64, ["group level only"]),
    (["{bids}", "{out}", "participant", "--analyses", "telepathy"], 64, ["unknown"]),
    (["{bids}", "{out}", "participant", "--analyses", "occlusion", "--models", "ridge"], 64,
     ["needs a CNN", "cnn-neuro120fp"]),
    (["{bids}", "{out}", "participant", "--models", "svn"], 64, ["'svn' is unknown", "ridge"]),
    (["{bids}", "{out}", "participant", "--device", "cuda"], 64, ["cuda"]),
    (["{bids}", "{out}", "participant", "--labels", "nope"], 64, ["studyforrest-5"]),
    (["{bids}", "{out}", "participant", "--reports-only"], 66,
     ["the derivatives folder to report on does not exist"]),
])
def test_usage_errors(bids, tmp_path, capsys, args, code, fragments):
    before = tree_digest(bids)
    args = [a.format(bids=bids, out=tmp_path / "out") for a in args]
    exit_code, err = run_cli(capsys, *args)
    assert exit_code == code, err
    assert_one_line_error(err, *fragments)
    assert tree_digest(bids) == before
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flag, content, fragment", [
    ("--bids-filter-file", "{not json", "not valid JSON"),
    ("--bids-filter-file", '["bold"]', "must hold a JSON object"),
    ("--bids-filter-file", '{"anat": {}}', "query 'anat' is unknown"),
    ("--bids-filter-file", None, "cannot be read"),  # a folder instead of a file
    ("--config-file", "[labels\n", "not valid TOML"),
    ("--config-file", "[labels]\nlag = 3\n", "'labels.lag' is unknown"),
    ("--config-file", "[seeds]\nmaster = 'abc'\n", "'seeds.master'"),
    ("--config-file", "[execution]\nwork_dir = 5\n", "'execution.work_dir' must be a path"),
    ("--config-file", "[nipype]\nmem_mb = 'lots'\n", "cannot read memory 'lots'"),
    ("--config-file", "[nipype]\nnprocs = 0\n", "'nipype.nprocs'"),
    ("--config-file", "[analysis]\nmodels = 3\n",
     "'analysis.models' must be a list of strings"),
    ("--config-file", "[execution]\nskip_bids_validation = 'yes'\n", "must be a bool"),
    ("--config-file", "[labels]\nhrf_lag = nan\n", "'labels.hrf_lag' must be a finite"),
    ("--config-file", None, "cannot be read"),
])
def test_malformed_settings_files_are_64(bids, tmp_path, capsys, flag, content, fragment):
    path = tmp_path / "settings.txt"
    if content is None:
        path.mkdir()
    else:
        path.write_text(content)
    before = tree_digest(bids)
    code, err = run_cli(capsys, bids, tmp_path / "out", "participant", flag, path)
    assert code == 64, err
    assert_one_line_error(err, fragment, str(path))
    assert tree_digest(bids) == before and not (tmp_path / "out").exists()


def test_config_file_values_are_read_like_flags_and_a_saved_config_reruns(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text("[execution]\nparticipant_label = 'sub-01'\nrun_id = 'old'\n"
                    "[nipype]\nmem_mb = '8G'\n[analysis]\nanalyses = 'decoding,rsa'\n"
                    "[cleaning]\nhigh_pass = 'none'\n")
    args = [str(tmp_path / "bids"), str(tmp_path / "out"), "participant"]
    config = parse_args([*args, "--config-file", str(path)])
    assert config.execution.participant_label == ["01"]
    assert config.nipype.mem_mb == 8192 and config.cleaning.high_pass is None
    assert config.analysis.analyses == ["decoding", "rsa"]
    assert config.execution.run_id != "old"  # every run has its own log folder
    # The saved TOML of a run gives the same settings, BIDS filters' nulls included.
    filters = tmp_path / "filter.json"
    filters.write_text('{"bold": {"run": null, "acquisition": "*"}}')
    first = parse_args([*args, "--bids-filter-file", str(filters), "--random-seed", "3"])
    saved = tmp_path / "saved.toml"
    saved.write_text(first.to_toml())
    again = parse_args([*args, "--config-file", str(saved)])
    assert again.execution.bids_filters == {"bold": {"run": None, "acquisition": "*"}}
    assert again.to_dict() | {"execution": {}} == first.to_dict() | {"execution": {}}
    assert {k: v for k, v in again.to_dict()["execution"].items() if k != "run_id"} == \
        {k: v for k, v in first.to_dict()["execution"].items() if k != "run_id"}


def _break_validation(bids):
    sidecar = bids / "task-movie_bold.json"
    content = json.loads(sidecar.read_text())
    del content["TaskName"]  # required by BIDS, not needed by bids_affect
    sidecar.write_text(json.dumps(content))


def _zero_bytes(bids):
    (bids / "sub-01/func/sub-01_task-movie_run-2_bold.nii.gz").write_bytes(b"")


def _corrupt(bids):
    path = bids / "sub-01/func/sub-01_task-movie_run-2_bold.nii.gz"
    path.write_bytes(b"\x1f\x8b\x08\x00" + bytes(range(256)) * 4)


def _nan_preproc(bids):
    path = next((bids / "derivatives/fmriprep/sub-01/func").glob(
        "*run-2*desc-preproc_bold.nii.gz"))
    image = nib.load(path)
    data = np.asarray(image.dataobj, np.float32)
    data[5, 6, 5, 10] = np.nan
    header = image.header.copy()
    header.set_data_dtype(np.float32)
    nib.Nifti1Image(data, image.affine, header).to_filename(path)


def _three_d(bids):
    path = bids / "sub-01/func/sub-01_task-movie_run-2_bold.nii.gz"
    image = nib.load(path)
    nib.Nifti1Image(np.asarray(image.dataobj)[..., 0], image.affine).to_filename(path)


def _truncated(bids):
    path = next((bids / "derivatives/fmriprep/sub-01/func").glob(
        "*run-2*desc-preproc_bold.nii.gz"))  # the file analysed
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _tr_mismatch(bids):
    path = bids / "sub-01/func/sub-01_task-movie_run-2_bold.json"
    path.write_text(json.dumps({"RepetitionTime": 2.5}))


def _null_run_filter(bids):
    (bids.parent / "filter.json").write_text('{"bold": {"run": null}}')


def _fmriprep_as_output(bids):
    return bids / "derivatives" / "fmriprep"


def _foreign_output(bids):
    out = bids.parent / "foreign"
    out.mkdir()
    (out / "dataset_description.json").write_text(json.dumps(
        {"Name": "x", "DatasetType": "derivative", "GeneratedBy": [{"Name": "fMRIPrep"}]}))
    return out


@pytest.mark.parametrize("breaker, extra, code, fragments", [
    (_break_validation, [], 16, ["not valid BIDS", "SIDECAR_KEY_REQUIRED"]),
    (None, ["--participant-label", "07"], 66, ["sub-07 not found", "mounted"]),
    (None, ["-t", "rest"], 18, ["no BOLD run matches"]),
    (None, ["--session-label", "1"], 18, ["no BOLD run matches"]),
    (_null_run_filter, ["--bids-filter-file", "{tmp}/filter.json"], 18,
     ["no BOLD run matches", "run=None"]),
    (_zero_bytes, [], 65, ["sub-01_task-movie_run-2_bold.nii.gz", "0 bytes"]),
    (_corrupt, [], 65, ["sub-01_task-movie_run-2_bold.nii.gz"]),
    (_three_d, ["--skip-bids-validation"], 65,
     ["sub-01_task-movie_run-2_bold.nii.gz", "not a time series"]),
    (_tr_mismatch, ["--skip-bids-validation"], 65,
     ["sub-01_task-movie_run-2_bold.nii.gz", "disagrees", "more than 1%"]),
    (_fmriprep_as_output, [], 64, ["holds a dataset made by fMRIPrep"]),
    (_foreign_output, [], 64, ["holds a dataset made by fMRIPrep"]),
])
def test_bad_inputs_leave_no_trace(bids, tmp_path, capsys, breaker, extra, code, fragments):
    """Each bad input: its code and line; bids_dir byte-identical, no output created."""
    out = (breaker(bids) if breaker else None) or bids / "derivatives" / "bids_affect"
    existed = out.exists()
    before, outside = tree_digest(bids), tree_digest(out) if existed else None
    extra = [arg.format(tmp=tmp_path) for arg in extra]
    exit_code, err = run_cli(capsys, bids, out, "participant", "-w", tmp_path / "work",
                             "--labels", "studyforrest-5", "--analyses", "none", *extra)
    assert exit_code == code, err
    assert_one_line_error(err, *fragments)
    assert tree_digest(bids) == before
    assert (tree_digest(out) == outside) if existed else not out.exists()


@pytest.mark.parametrize("breaker, fragments", [
    (_nan_preproc, ["run-2", "NaN"]),
    (_truncated, ["run-2_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz",
                  "truncated or corrupt"]),
])
@pytest.mark.parametrize("analyses", [["none"], ["decoding", "--n-permutations", "0"]])
def test_bad_bold_data_is_65_and_leaves_no_half_file(bids, tmp_path, capsys, breaker,
                                                      fragments, analyses):
    """Found while reading the data (with or without analyses): 65, no half-written file."""
    breaker(bids)
    before = tree_digest(bids)
    exit_code, err = run_cli(capsys, bids, tmp_path / "out", "participant", "-w",
                             tmp_path / "work", "--labels", "studyforrest-5",
                             "--skip-bids-validation", "--analyses", *analyses)
    assert exit_code == 65, err
    assert_one_line_error(err, *fragments)
    assert tree_digest(bids) == before
    assert not [p for p in (tmp_path / "out").rglob("*") if p.name.startswith(".tmp-")]


def test_not_a_bids_folder_is_66(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not BIDS")
    before = tree_digest(tmp_path / "empty")
    code, err = run_cli(capsys, tmp_path / "empty", tmp_path / "out", "participant")
    assert code == 66
    assert_one_line_error(err, "not a BIDS folder", "dataset_description.json", "mounted")
    assert tree_digest(tmp_path / "empty") == before and not (tmp_path / "out").exists()
    code, err = run_cli(capsys, tmp_path / "missing", tmp_path / "out", "participant")
    assert code == 66
    assert_one_line_error(err, "does not exist")


def test_uncreatable_output_dir_is_73(bids, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    before = tree_digest(bids)
    code, err = run_cli(capsys, bids, blocker / "out", "participant", "--analyses", "none")
    assert code == 73
    assert_one_line_error(err, "cannot create", "is not a folder")
    assert tree_digest(bids) == before


def test_unexpected_failure_is_1_and_debug_shows_the_traceback(bids, tmp_path, capsys,
                                                                monkeypatch):
    import bids_affect.workflows.base as base

    def explode(config):
        raise RuntimeError("boom")

    monkeypatch.setattr(base, "run_bids_app", explode)
    args = [bids, tmp_path / "out", "participant"]
    code, err = run_cli(capsys, *args)
    assert code == 1
    assert_one_line_error(err, "RuntimeError: boom", "--debug")
    code, err = run_cli(capsys, *args, "--debug")
    assert code == 1 and "Traceback" in err


def test_console_script_exits_with_the_code(tmp_path):
    result = subprocess.run([sys.executable, "-m", "bids_affect.cli.run", str(tmp_path),
                             str(tmp_path / "out"), "participant", "--bogus"],
                            capture_output=True, text=True)
    assert result.returncode == 64
    assert result.stderr.strip().splitlines()[-1].startswith("bids_affect: error:")


def test_usage_error_is_a_value_error():
    with pytest.raises(ValueError):
        raise UsageError("x")


def test_a_run_without_events_is_skipped_and_a_subject_without_any_is_66(bids, tmp_path,
                                                                         capsys):
    func = bids / "sub-01" / "func"
    (func / "sub-01_task-movie_run-2_events.tsv").unlink()
    out = tmp_path / "out"
    code, err = run_cli(capsys, bids, out, "participant", "--analyses", "none",
                        "--labels", "studyforrest-5", "--participant-label", "01",
                        "--skip-bids-validation", "-w", tmp_path / "work")
    assert code == 0, err
    assert "sub-01_task-movie_run-2_bold.nii.gz has no events.tsv; this run is skipped" in err
    labelled = sorted(p.name for p in (out / "sub-01" / "func").glob("*_desc-labels_events.tsv"))
    assert labelled == [f"sub-01_task-movie_run-{r}_desc-labels_events.tsv" for r in (1, 3)]

    for events in func.glob("*_events.tsv"):
        events.unlink()
    before = tree_digest(bids)
    code, err = run_cli(capsys, bids, tmp_path / "out2", "participant", "--analyses", "none",
                        "--labels", "studyforrest-5", "--participant-label", "01",
                        "--skip-bids-validation", "-w", tmp_path / "work2")
    assert code == 66
    assert_one_line_error(err, "no run of sub-01 task-movie has an events.tsv", "sub-01/func")
    assert tree_digest(bids) == before


@pytest.fixture(scope="module")
def sessions_dataset(tmp_path_factory):
    """One subject with two sessions of two runs each (and fMRIPrep derivatives)."""
    from bids_affect.datasets import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("sessions") / "bids", n_subjects=1,
                                  n_runs=2, n_volumes=30, shape=(8, 9, 8),
                                  sessions=("1", "2"), start_time=1.0, seed=3)


def test_selection_flags_are_honoured_and_labels_match_the_planted_timing(
        sessions_dataset, tmp_path, capsys, monkeypatch):
    import pandas as pd

    from bids_affect.io import validation

    monkeypatch.setattr(validation, "find_validator", lambda: None)
    work, out = tmp_path / "work", tmp_path / "out"
    (work / "keep.txt").parent.mkdir()
    (work / "keep.txt").write_text("another tool's file")
    code, err = run_cli(capsys, sessions_dataset, out, "participant", "--session-label", "2",
                        "-d", f"prep={sessions_dataset / 'derivatives' / 'fmriprep'}",
                        "--space", "MNI152NLin2009cAsym", "--n-cpus", "1", "-w", work,
                        "--clean-workdir", "--analyses", "none", "--labels", "trial-type")
    assert code == 0, err
    assert "bids-validator is not installed; skipping input validation" in err
    func = out / "sub-01" / "func"
    labels = sorted(func.glob("*_desc-labels_events.tsv"))
    assert [p.name for p in labels] == [
        f"sub-01_ses-2_task-movie_run-{r}_desc-labels_events.tsv" for r in (1, 2)]
    truth = sessions_dataset / "sourcedata" / "groundtruth"
    for run, path in zip((1, 2), labels):
        ours = pd.read_csv(path, sep="\t", keep_default_na=False)
        planted = pd.read_csv(truth / f"sub-01_ses-2_task-movie_run-{run}_labels.tsv",
                              sep="\t", keep_default_na=False)
        assert ours.volume.tolist() == planted.volume.tolist()
        assert np.allclose(ours.onset, planted.onset) and ours.onset[0] == 1.0  # StartTime
        assert ours.trial_type.tolist() == planted.trial_type.tolist()
        sidecar = json.loads(path.with_suffix(".json").read_text())
        assert sidecar["Sources"][1].startswith("bids:prep:sub-01/ses-2/func/")
        assert sidecar["Parameters"]["hrf_lag"] == 4.0 and "RandomSeed" in sidecar
    counts = pd.read_csv(func / "sub-01_task-movie_desc-labels_counts.tsv", sep="\t")
    planted_counts = pd.concat(
        pd.read_csv(truth / f"sub-01_ses-2_task-movie_run-{r}_labels.tsv", sep="\t")
        for r in (1, 2)).trial_type.value_counts()
    assert len(counts) and set(planted_counts.index) <= set(counts.columns) | set(
        counts.iloc[:, 0])
    # --clean-workdir removes this version's workflow folders only.
    assert (work / "keep.txt").exists()
    assert not [p for p in work.iterdir() if p.name.startswith("bids_affect_")]


def test_boilerplate_only_writes_the_dataset_files_and_nothing_else(bids, tmp_path, capsys):
    out = tmp_path / "out"
    code, err = run_cli(capsys, bids, out, "participant", "--boilerplate-only",
                        "-w", tmp_path / "work", "--models", "ridge,cnn-deepemotion")
    assert code == 0, err
    assert "cnn-deepemotion" in (out / "logs" / "CITATION.md").read_text()
    assert sorted(p.name for p in out.iterdir()) == [".bidsignore", "dataset_description.json",
                                                      "logs"]


def test_group_level_without_outputs_is_66_and_writes_nothing(bids, tmp_path, capsys):
    out = tmp_path / "out"
    code, err = run_cli(capsys, bids, out, "group", "-w", tmp_path / "work")
    assert code == 66
    assert_one_line_error(err, "no participant-level decoding outputs")
    assert not out.exists()


def test_roi_atlas_gives_one_brain_rdm_per_roi(tmp_path, capsys):
    import pandas as pd

    from bids_affect.datasets import make_synthetic_dataset

    bids = make_synthetic_dataset(tmp_path / "bids", n_subjects=1, n_runs=2, n_volumes=60,
                                  shape=(20, 24, 20), signal=1.5, seed=7)
    out = tmp_path / "out"
    code, err = run_cli(capsys, bids, out, "participant", "--analyses", "rsa", "--models",
                        "ridge", "--labels", "trial-type", "--roi-atlas",
                        "harvard_oxford:amygdala,thalamus", "--skip-bids-validation",
                        "-w", tmp_path / "work", "--min-volumes", "5")
    assert code == 0, err
    func = out / "sub-01" / "func"
    for name in ("brain", "brainamygdala", "brainthalamus"):
        assert (func / f"sub-01_task-movie_desc-{name}_rdm.tsv").exists()
    sidecar = json.loads((func / "sub-01_task-movie_desc-brainamygdala_rdm.json").read_text())
    assert sidecar["ROI"] == "amygdala" and "Harvard" in json.dumps(sidecar["Atlas"])
    statistics = pd.read_csv(func / "sub-01_task-movie_desc-rsa_statistics.tsv", sep="\t")
    assert ("brain", "brainthalamus") in set(zip(statistics.rdm_a, statistics.rdm_b))
