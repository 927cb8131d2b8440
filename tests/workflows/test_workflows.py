"""Participant and group workflows: wiring, resume after a crash, concurrency, determinism."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from bids_affect.analyses import ANALYSES
from bids_affect.cli.run import main
from bids_affect.config import Config
from bids_affect.datasets import make_synthetic_dataset
from bids_affect.workflows.participant import SharedSettings, init_participant_wf
from tests.helpers import file_hashes, result_hashes

FAST = ["--labels", "studyforrest-5", "--models", "ridge", "--n-permutations", "50",
        "--min-volumes", "5", "--skip-bids-validation", "--nprocs", "1"]


@pytest.fixture(scope="module")
def four_subjects(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("wf") / "bids", n_subjects=4,
                                  n_runs=3, n_volumes=60, shape=(8, 9, 8), signal=2.0,
                                  scene_duration=(8.0, 20.0), seed=11)


def _node_names(wf):
    return {node.name for node in wf._graph.nodes()}


@pytest.mark.parametrize("analyses, models, expected, absent", [
    ([], ["ridge"], {"labels", "ds_labels"}, {"samples"}),
    (["decoding"], ["ridge", "cnn-deepemotion"],
     {"samples", "decode_ridge", "decode_cnndeepemotion", "ds_decode_ridge"},
     {"occlusion_cnndeepemotion", "rsa"}),
    (["occlusion"], ["ridge", "cnn-neuro120fp"],
     {"decode_cnnneuro120fp", "occlusion_cnnneuro120fp", "ds_occlusion_cnnneuro120fp"},
     {"decode_ridge"}),
    (["rsa"], ["ridge", "cnn-neuro120fp"], {"rsa", "ds_rsa", "decode_cnnneuro120fp",
                                            "merge_cnn_decoders"}, {"decode_ridge"}),
])
def test_participant_workflow_wiring(tmp_path, analyses, models, expected, absent):
    options = {name: section for name, section in Config().sections().items()
               if name in ANALYSES}
    wf = init_participant_wf(
        subject="01", task="movie", runs=[], output_dir=tmp_path, label_spec={
            "min_volumes": 20}, cleaning={}, analyses=analyses, options=options,
        shared=SharedSettings(models=tuple(models)), master_seed=1, provenance={})
    names = _node_names(wf)
    assert expected <= names
    assert not absent & names


def test_a_rerun_after_a_crash_resumes_from_the_work_dir(four_subjects, tmp_path,
                                                          monkeypatch, capsys):
    from bids_affect import steps

    calls = []
    resolve = steps.resolve_step
    crashing = {"decode": True}

    def counting(path):
        function = resolve(path)
        name = path.rsplit(":", 1)[1].removesuffix("_step")
        if name not in ("labels", "samples", "decode"):
            return function

        def wrapper(*args, **kwargs):
            calls.append(name)
            if crashing.get(name):
                raise RuntimeError("simulated crash during decoding")
            return function(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(steps, "resolve_step", counting)
    args = [str(four_subjects), str(tmp_path / "out"), "participant", "--participant-label",
            "01", "-w", str(tmp_path / "work"), *FAST]
    assert main(args) == 1
    assert "a workflow step failed" in capsys.readouterr().err
    assert calls == ["labels", "samples", "decode"]
    assert not (tmp_path / "out/sub-01/func/sub-01_task-movie_desc-ridge_decoding.json").exists()

    calls.clear()
    crashing.clear()
    assert main(args) == 0
    assert calls == ["decode"]  # labels and samples came from the work directory
    assert (tmp_path / "out/sub-01/func/sub-01_task-movie_desc-ridge_decoding.json").exists()


def test_same_seed_gives_identical_outputs(four_subjects, tmp_path, capsys):
    outputs = []
    for attempt in ("a", "b"):
        out = tmp_path / attempt / "out"
        code = main([str(four_subjects), str(out), "participant", "group",
                     "--participant-label", "02", "-w", str(tmp_path / attempt / "work"),
                     "--random-seed", "123", "--omp-nthreads", "1",
                     *FAST, "--models", "ridge,logreg"])
        assert code == 0, capsys.readouterr().err
        outputs.append(result_hashes(out))
    assert outputs[0] == outputs[1]
    assert any(name.endswith("_desc-logreg_decoding.json") for name in outputs[0])


def test_four_concurrent_participant_jobs_share_one_output_dir(four_subjects, tmp_path):
    out, database = tmp_path / "out", tmp_path / "database"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    jobs = [subprocess.Popen([sys.executable, "-m", "bids_affect.cli.run", str(four_subjects),
                              str(out), "participant", "--participant-label", label, "-w",
                              str(tmp_path / f"work{label}"), "--bids-database-dir",
                              str(database), "--analyses", "none", "--labels",
                              "studyforrest-5", "--nprocs", "1"],
                             stderr=subprocess.PIPE, text=True, env=env)
            for label in ("01", "02", "03", "04")]
    errors = [job.communicate()[1] for job in jobs]
    assert [job.returncode for job in jobs] == [0, 0, 0, 0], errors
    assert not any("database is locked" in err for err in errors)
    assert json.loads((out / "dataset_description.json").read_text())["DatasetType"] == \
        "derivative"
    assert not list(out.rglob(".tmp-*"))
    for label in ("01", "02", "03", "04"):
        assert len(list((out / f"sub-{label}/func").glob("*_desc-labels_events.tsv"))) == 3
    from bids_affect.io.validation import validate_dataset

    assert validate_dataset(out, ["01", "02", "03", "04"], tmp_path / "validation") == []


def test_group_level_collects_within_subject_scores(four_subjects, tmp_path, capsys):
    out = tmp_path / "out"
    assert main([str(four_subjects), str(out), "group"]) == 66
    assert "run the participant level" in capsys.readouterr().err
    code = main([str(four_subjects), str(out), "participant", "group", "--participant-label",
                 "01", "03", "-w", str(tmp_path / "work"), *FAST])
    assert code == 0, capsys.readouterr().err
    table = pd.read_csv(out / "group/task-movie_desc-ridge_withinsubject.tsv", sep="\t")
    assert table.participant_id.tolist() == ["sub-01", "sub-03"]
    for column in ("balanced_accuracy", "chance_balanced_accuracy", "null_low", "null_high",
                   "p_permutation", "random_split_balanced_accuracy"):
        assert table[column].notna().all()
    assert (table.null_low <= table.chance_balanced_accuracy).all()
    assert json.loads((out / "group/task-movie_desc-ridge_withinsubject.json").read_text())[
        "Sources"]
    assert len(list((out / "group/log").glob("*/bids_affect.toml"))) == 1


def test_a_failed_start_leaves_no_trace(tmp_path, capsys):
    """A data problem found inside a node, before any result: the run removes what it made.

    The output dataset files, the run log and the labels go; the work directory
    stays, since a corrected rerun resumes from it.
    """
    root = make_synthetic_dataset(tmp_path / "bids", n_subjects=1, n_runs=2, n_volumes=30,
                                  shape=(6, 7, 6), with_derivatives=False, seed=5)
    for events in root.glob("sub-01/func/*_events.tsv"):
        table = pd.read_csv(events, sep="\t")
        table["trial_type"] = "n/a"  # every volume unlabelled: found by the labels node
        table.to_csv(events, sep="\t", index=False)
    before = file_hashes(root)
    out, work = tmp_path / "derivatives", tmp_path / "work"
    code = main([str(root), str(out), "participant", "-w", str(work), "--nprocs", "1",
                 "--skip-bids-validation"])
    err = capsys.readouterr().err
    assert code == 65
    assert "were removed" in err and "sub-01" in err
    assert not out.exists() or not [p for p in out.rglob("*") if p.is_file()]
    assert work.is_dir()  # kept for a rerun to resume from
    assert file_hashes(root) == before


def test_a_failed_start_before_the_workflow_leaves_no_work_dir(four_subjects, tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    assert main([str(four_subjects), str(out), "group", "-w", str(work)]) == 66
    assert not out.exists() and not work.exists()


def test_group_alone_describes_what_the_participant_level_ran(four_subjects, tmp_path,
                                                                capsys):
    """The SLURM pattern: one participant job per subject (logreg), then a plain group run."""
    import tomllib

    out = tmp_path / "out"
    fast = list(FAST)
    fast[fast.index("--models") + 1] = "logreg"
    for label in ("01", "02"):
        code = main([str(four_subjects), str(out), "participant", "--participant-label", label,
                     "-w", str(tmp_path / f"work{label}"), *fast, "--n-permutations", "5"])
        assert code == 0, capsys.readouterr().err
    citation = (out / "logs" / "CITATION.md").read_text()
    assert "logreg: 5 permutations" in citation and "ridge" not in citation
    code = main([str(four_subjects), str(out), "group", "-w", str(tmp_path / "work_group")])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "run with other" not in err
    assert (out / "logs" / "CITATION.md").read_text() == citation  # not rewritten
    (log,) = (out / "group" / "log").glob("*/bids_affect.toml")
    settings = tomllib.loads(log.read_text())
    assert settings["analysis"]["models"] == ["logreg"]
    assert settings["decoding"]["n_permutations"] == 5
    # A subject run with other settings is named in a warning.
    code = main([str(four_subjects), str(out), "participant", "--participant-label", "03",
                 "-w", str(tmp_path / "work03"), *FAST, "--n-permutations", "5"])
    assert code == 0
    capsys.readouterr()
    assert main([str(four_subjects), str(out), "group", "-w", str(tmp_path / "work_group")]) == 0
    assert "sub-03 was run with other analysis settings than sub-01" in \
        capsys.readouterr().err


@pytest.mark.slow
def test_a_killed_cnn_run_resumes_to_the_same_model_file(tmp_path):
    """kill -9 during the second fold, rerun with the same -w: model.pt equal byte for byte."""
    from tests.helpers import run_until_killed

    root = make_synthetic_dataset(tmp_path / "bids", n_subjects=1, n_runs=3, n_volumes=40,
                                  shape=(8, 9, 8), signal=2.0, seed=3)
    options = ["--labels", "studyforrest-5", "--min-volumes", "5", "--models",
               "cnn-deepemotion", "--epochs", "4", "--n-permutations-cnn", "0",
               "--random-seed", "1", "--nprocs", "1", "--omp-nthreads", "1",
               "--skip-bids-validation"]
    killed = [str(root), str(tmp_path / "resumed"), "participant", "-w",
              str(tmp_path / "work_resumed"), *options]
    run_until_killed(tmp_path, 6, """
        from bids_affect.cli.run import main
        main(sys.argv[1:])
    """, *killed)
    assert main(killed) == 0
    assert main([str(root), str(tmp_path / "uninterrupted"), "participant", "-w",
                 str(tmp_path / "work_uninterrupted"), *options]) == 0
    name = "sub-01/models/sub-01_task-movie_desc-cnndeepemotion_model.pt"
    assert (tmp_path / "resumed" / name).read_bytes() == \
        (tmp_path / "uninterrupted" / name).read_bytes()
