"""The command line: every exit code, one-line errors, bids_dir never touched."""

from __future__ import annotations

import hashlib
import json
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


def tree_digest(root: Path) -> str:
    """Hash of every file's path, size and content under ``root``."""
    digest = hashlib.sha256()
    for path in sorted(Path(root).rglob("*")):
        digest.update(str(path.relative_to(root)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture
def bids(synthetic_dataset, tmp_path):
    """A private copy of the synthetic dataset (tests may break it)."""
    return Path(shutil.copytree(synthetic_dataset, tmp_path / "bids"))


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.err


def assert_one_line_error(err: str, *fragments: str) -> None:
    lines = [line for line in err.splitlines() if line.startswith("bids_affect: error")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


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


@pytest.mark.parametrize("args, code, fragments", [
    (["{bids}", "{out}", "subject"], 17, ["'subject' is unknown"]),
    (["{bids}", "{out}", "participant", "--nonsense"], 64, ["unrecognized arguments"]),
    (["{bids}", "{bids}", "participant"], 64, ["output_dir is bids_dir or inside it"]),
    (["{bids}", "{bids}/results", "participant"], 64, ["inside it"]),
    (["{bids}", "{out}", "participant", "-w", "{bids}/work"], 64, ["work directory"]),
    (["{bids}", "{out}", "participant", "--analyses", "encoding"], 64, ["not available"]),
    (["{bids}", "{out}", "participant", "--analyses", "telepathy"], 64, ["unknown"]),
    (["{bids}", "{out}", "participant", "--analyses", "occlusion", "--models", "ridge"], 64,
     ["needs a CNN", "cnn-neuro120fp"]),
    (["{bids}", "{out}", "participant", "--models", "svn"], 64, ["'svn' is unknown", "ridge"]),
    (["{bids}", "{out}", "participant", "--device", "cuda"], 64, ["cuda"]),
    (["{bids}", "{out}", "participant", "--labels", "nope"], 64, ["studyforrest-5"]),
    (["{bids}", "{out}", "participant", "--reports-only"], 64, ["not available yet"]),
])
def test_usage_errors(bids, tmp_path, capsys, args, code, fragments):
    before = tree_digest(bids)
    args = [a.format(bids=bids, out=tmp_path / "out") for a in args]
    exit_code, err = run_cli(capsys, *args)
    assert exit_code == code, err
    assert_one_line_error(err, *fragments)
    assert tree_digest(bids) == before
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content, fragment", [
    ("{not json", "not valid JSON"),
    ('["bold"]', "must hold a JSON object"),
])
def test_malformed_filter_file_is_64(bids, tmp_path, capsys, content, fragment):
    path = tmp_path / "filter.json"
    path.write_text(content)
    code, err = run_cli(capsys, bids, tmp_path / "out", "participant", "--bids-filter-file",
                        path)
    assert code == 64
    assert_one_line_error(err, fragment, str(path))


@pytest.mark.parametrize("content, fragment", [
    ("[labels\n", "not valid TOML"),
    ("[labels]\nlag = 3\n", "'labels.lag' is unknown"),
])
def test_malformed_config_file_is_64(bids, tmp_path, capsys, content, fragment):
    path = tmp_path / "config.toml"
    path.write_text(content)
    code, err = run_cli(capsys, bids, tmp_path / "out", "participant", "--config-file", path)
    assert code == 64
    assert_one_line_error(err, fragment)


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


@pytest.mark.parametrize("breaker, extra, code, fragments", [
    (_break_validation, [], 16, ["not valid BIDS", "SIDECAR_KEY_REQUIRED"]),
    (None, ["--participant-label", "07"], 66, ["sub-07 not found", "mounted"]),
    (None, ["-t", "rest"], 18, ["no BOLD run matches"]),
    (_zero_bytes, [], 65, ["sub-01_task-movie_run-2_bold.nii.gz", "0 bytes"]),
    (_corrupt, [], 65, ["sub-01_task-movie_run-2_bold.nii.gz"]),
    (_nan_preproc, ["--skip-bids-validation", "--analyses", "decoding", "--n-permutations",
                    "0"], 65, ["run-2", "NaN"]),
])
def test_bad_inputs(bids, tmp_path, capsys, breaker, extra, code, fragments):
    if breaker:
        breaker(bids)
    before = tree_digest(bids)
    exit_code, err = run_cli(capsys, bids, tmp_path / "out", "participant", "-w",
                             tmp_path / "work", "--labels", "studyforrest-5",
                             "--analyses", "none", *extra)
    assert exit_code == code, err
    assert_one_line_error(err, *fragments)
    assert tree_digest(bids) == before
    assert not [p for p in (tmp_path / "out").rglob("*") if p.name.startswith(".tmp-")]


def test_not_a_bids_folder_is_66(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, err = run_cli(capsys, tmp_path / "empty", tmp_path / "out", "participant")
    assert code == 66
    assert_one_line_error(err, "not a BIDS folder", "dataset_description.json")
    code, err = run_cli(capsys, tmp_path / "missing", tmp_path / "out", "participant")
    assert code == 66
    assert_one_line_error(err, "does not exist")


def test_uncreatable_output_dir_is_73(bids, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, err = run_cli(capsys, bids, blocker / "out", "participant", "--analyses", "none")
    assert code == 73
    assert_one_line_error(err, "cannot create")


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
