"""Bad input from outside: each case exits with its code and one line, touching nothing.

Every case runs the command line in-process on a private copy of a tiny synthetic
dataset (1 subject, 2 runs, 30 volumes) and checks the exit code, the single error
line naming the file or flag, that bids_dir is byte-identical afterwards, and that
output_dir (absent before the run) was not created. The warnings that replaced
silent cases, and the repair of a corrupt or stale ``--bids-database-dir``, end
the file.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import pytest

from tests.cli.test_cli import LOG_LINE, assert_one_line_error, run_cli
from tests.helpers import tree_digest

RUN2_SIDECAR = "sub-01/func/sub-01_task-movie_run-2_bold.json"
RUN1_BOLD = "sub-01/func/sub-01_task-movie_run-1_bold.nii.gz"


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    """1 subject, 2 runs of 30 volumes of (6, 7, 6) voxels, with fMRIPrep derivatives."""
    from bids_affect.datasets import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("tiny") / "bids", n_subjects=1,
                                  n_runs=2, n_volumes=30, shape=(6, 7, 6), seed=5)


@pytest.fixture
def bids(tiny_dataset, tmp_path):
    """A private copy that a case may break."""
    return Path(shutil.copytree(tiny_dataset, tmp_path / "bids"))


def _sidecar(**content) -> Callable[[Path, Path], None]:
    def write(bids: Path, tmp: Path) -> None:
        (bids / RUN2_SIDECAR).write_text(json.dumps(content))
    return write


def _zero_tr_everywhere(bids: Path, tmp: Path) -> None:
    """RepetitionTime 0 in the top-level sidecar and 0 in the NIfTI header of run 1."""
    top = bids / "task-movie_bold.json"
    top.write_text(json.dumps({**json.loads(top.read_text()), "RepetitionTime": 0}))
    image = nib.load(bids / RUN1_BOLD)
    header = image.header.copy()
    header.set_zooms((*header.get_zooms()[:3], 0.0))
    nib.Nifti1Image(image.dataobj, image.affine, header).to_filename(bids / RUN1_BOLD)


def _text(relative: str, content: str) -> Callable[[Path, Path], None]:
    def write(bids: Path, tmp: Path) -> None:
        (bids / relative).write_text(content)
    return write


def _filter_file(content: dict) -> Callable[[Path, Path], None]:
    def write(bids: Path, tmp: Path) -> None:
        (tmp / "filter.json").write_text(json.dumps(content))
    return write


def _blocked_database(bids: Path, tmp: Path) -> None:
    (tmp / "blocker").write_text("a file where the database folder should be")


#: id, breaker(bids, tmp), extra arguments, exit code, fragments of the error line.
#: ``{bids}`` and ``{tmp}`` in arguments and fragments stand for the two folders.
CASES = [
    # Refused by the command line's converters (the lead's part; checked here too).
    ("random-seed", None, ["--random-seed", "-1"], 64, ["--random-seed", "-1"]),
    ("cv-folds", None, ["--cv-folds", "1"], 64, ["--cv-folds", "got 1"]),
    ("cv-gap", None, ["--cv-gap", "-10"], 64, ["--cv-gap", "-10"]),
    ("smoothing", None, ["--smoothing-fwhm", "-3"], 64, ["--smoothing-fwhm", "-3"]),
    ("confounds", None, ["--confounds", "everything"], 64, ["--confounds", "everything"]),
    # Empty selections must not select everything.
    ("participant-label-empty", None, ["--participant-label", ""], 64,
     ["--participant-label: ", "without a label"]),
    ("session-label-empty", None, ["--session-label", ""], 64,
     ["--session-label: ", "without a label"]),
    # Sidecar timing: the JSON file that sets the value is named.
    ("tr-text", _sidecar(RepetitionTime="two"), [], 65,
     [f"{{bids}}/{RUN2_SIDECAR}: RepetitionTime must be a number of seconds, "
      'got "two" (text)',
      "fix: "]),
    ("tr-list", _sidecar(RepetitionTime=[2.0]), ["--skip-bids-validation"], 65,
     [f"{{bids}}/{RUN2_SIDECAR}: RepetitionTime must be a number", "(a list)"]),
    ("tr-zero", _sidecar(RepetitionTime=0), ["--skip-bids-validation"], 65,
     [f"{{bids}}/{RUN2_SIDECAR}: RepetitionTime 0 is invalid", "positive number"]),
    ("tr-negative", _sidecar(RepetitionTime=-2.0), ["--skip-bids-validation"], 65,
     [f"{{bids}}/{RUN2_SIDECAR}: RepetitionTime -2.0 is invalid"]),
    ("tr-zero-in-header-too", _zero_tr_everywhere, ["--skip-bids-validation"], 65,
     ["{bids}/task-movie_bold.json: RepetitionTime 0 is invalid"]),
    ("start-time-text", _sidecar(RepetitionTime=2.0, StartTime="soon"),
     ["--skip-bids-validation"], 65, [f"{{bids}}/{RUN2_SIDECAR}: StartTime must be"]),
    ("sidecar-not-json", _text(RUN2_SIDECAR, "{bad"), ["--skip-bids-validation"], 65,
     [f"{{bids}}/{RUN2_SIDECAR}: JSON file is not valid JSON"]),
    # BIDS filter file: the file and the entity are named, the valid entities listed.
    ("filter-unknown-entity", _filter_file({"bold": {"flavour": "vanilla"}}),
     ["--bids-filter-file", "{tmp}/filter.json"], 64,
     ["{tmp}/filter.json: ", "entity 'flavour' is unknown", "subject, session"]),
    ("filter-object-value", _filter_file({"bold": {"run": {"gt": 1}}}),
     ["--bids-filter-file", "{tmp}/filter.json"], 64,
     ["{tmp}/filter.json: ", "entity 'run' has the value"]),
    # --bids-database-dir that cannot be created.
    ("database-dir-blocked", _blocked_database,
     ["--bids-database-dir", "{tmp}/blocker/db"], 73,
     ["{tmp}/blocker/db: cannot create the BIDS database directory", "fix: "]),
]


@pytest.mark.parametrize("breaker, extra, code, fragments",
                         [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input_exits_with_its_code_and_leaves_no_trace(bids, tmp_path, capsys, breaker,
                                                           extra, code, fragments):
    if breaker is not None:
        breaker(bids, tmp_path)
    before = tree_digest(bids)
    out = tmp_path / "out"
    values = {"bids": bids, "tmp": tmp_path}
    exit_code, err = run_cli(capsys, bids, out, "participant", "-w", tmp_path / "work",
                             "--labels", "studyforrest-5", "--analyses", "none",
                             *[arg.format(**values) for arg in extra])
    assert exit_code == code, err
    assert_one_line_error(err, *[fragment.format(**values) for fragment in fragments])
    assert tree_digest(bids) == before
    assert not out.exists()


def _warnings(err: str) -> list[str]:
    return [line for line in err.splitlines()
            if LOG_LINE.match(line) and LOG_LINE.match(line).group(1) == "WARNING"]


def test_silent_cases_now_warn_naming_the_subject_run_and_file(bids, tmp_path, capsys):
    """A header-only events file, and a class that labels no volume, are said."""
    import pandas as pd

    func = bids / "sub-01" / "func"
    run2 = func / "sub-01_task-movie_run-2_events.tsv"
    header = run2.read_text().splitlines()[0]
    run2.write_text(header + "\n")
    run1 = func / "sub-01_task-movie_run-1_events.tsv"
    events = pd.read_csv(run1, sep="\t", keep_default_na=False)
    for column in ("e_love", "e_pity/compassion", "e_admiration"):  # studyforrest-5 "love"
        events[column] = 0.0
    events.to_csv(run1, sep="\t", index=False)
    out = tmp_path / "out"
    # One process: the labelling node's warnings reach this process's captured stderr.
    code, err = run_cli(capsys, bids, out, "participant", "-w", tmp_path / "work",
                        "--labels", "studyforrest-5", "--analyses", "none",
                        "--skip-bids-validation", "--nprocs", "1")
    assert code == 0, err
    warnings = _warnings(err)
    header_only = [line for line in warnings if "holds a header but no event" in line]
    assert len(header_only) == 1 and str(run2) in header_only[0], err
    assert "sub-01" in header_only[0] and "run-2" in header_only[0]
    empty_class = [line for line in warnings if "no labelled volume" in line]
    assert len(empty_class) == 1 and "sub-01: " in empty_class[0], err
    assert "love" in empty_class[0].split("left out of the analyses: ")[1]
    labels = pd.read_csv(out / "sub-01" / "func" /
                         "sub-01_task-movie_run-2_desc-labels_events.tsv", sep="\t",
                         keep_default_na=False)
    assert (labels.trial_type == "n/a").all() and len(labels) == 30


def test_corrupt_and_stale_databases_are_rebuilt_with_one_warning(bids, tmp_path, capsys):
    from bids_affect.io.layout import load_layout

    database = tmp_path / "db"
    load_layout(bids, {"fmriprep": bids / "derivatives" / "fmriprep"}, database)
    (database / "layout_index.sqlite").write_bytes(b"not a database " * 100)
    (bids / "sub-01/func/sub-01_task-movie_run-2_bold.nii.gz").unlink()  # and stale
    before = tree_digest(bids)
    out = tmp_path / "out"
    code, err = run_cli(capsys, bids, out, "participant", "-w", tmp_path / "work",
                        "--labels", "studyforrest-5", "--analyses", "none",
                        "--skip-bids-validation", "--bids-database-dir", database,
                        "--nprocs", "1")
    assert code == 0, err
    [warning] = [line for line in _warnings(err) if "BIDS database" in line]
    assert f"The BIDS database in {database} is not used: the dataset changed since it " \
           "was indexed (sub-01/func/sub-01_task-movie_run-2_bold.nii.gz removed)" in warning
    labelled = sorted(p.name for p in (out / "sub-01" / "func").glob("*_desc-labels_events.tsv"))
    assert labelled == ["sub-01_task-movie_run-1_desc-labels_events.tsv"]
    assert tree_digest(bids) == before
    # The rebuilt database is current: reused without a word. Then corrupt: rebuilt, said.
    quick = ["participant", "--labels", "studyforrest-5", "--analyses", "none",
             "--skip-bids-validation", "--bids-database-dir", database,
             "-t", "rest"]  # stops right after indexing: no BOLD of task rest
    code, err = run_cli(capsys, bids, tmp_path / "out2", *quick, "-w", tmp_path / "work2")
    assert code == 18 and not _warnings(err), err
    (database / "layout_index.sqlite").write_bytes(b"")
    code, err = run_cli(capsys, bids, tmp_path / "out2", *quick, "-w", tmp_path / "work2")
    assert code == 18, err
    [warning] = _warnings(err)
    assert f"The BIDS database in {database} is not used: it cannot be read" in warning
    assert tree_digest(bids) == before
