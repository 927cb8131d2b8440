"""Dataset index: run records from raw BIDS and fMRIPrep derivatives."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
from pathlib import Path

import nibabel as nib
import pytest

from bids_affect.datasets import make_synthetic_dataset
from bids_affect.exceptions import (
    InputDataError,
    InputMissingError,
    NoDataSelected,
    OutputError,
    UsageError,
)
from bids_affect.io.layout import (
    RunRecord,
    bids_entities,
    build_queries,
    collect_runs,
    dataset_fingerprint,
    find_fmriprep_derivatives,
    load_filter_file,
    load_layout,
    strip_subject_prefix,
)


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("layout") / "bids", n_subjects=2,
                                  n_runs=2, n_volumes=12, shape=(6, 7, 6), start_time=0.5,
                                  seed=1)


@pytest.fixture
def dataset_copy(small_dataset, tmp_path):
    return shutil.copytree(small_dataset, tmp_path / "bids", symlinks=True)


def test_raw_bids_alone_gives_run_records(small_dataset):
    layout = load_layout(small_dataset)
    runs = collect_runs(layout, ["sub-01"])
    assert [(r.subject, r.task, r.run) for r in runs] == [("01", "movie", 1), ("01", "movie", 2)]
    run = runs[0]
    assert run.bold == run.raw_bold and run.space is None and run.mask is None
    assert (run.tr, run.n_volumes, run.start_time) == (2.0, 12, 0.5)
    assert run.events.name == "sub-01_task-movie_run-1_events.tsv"
    assert run.key == "task-movie_run-1"
    assert RunRecord.from_dict(json.loads(json.dumps(run.to_dict()))) == run


def test_events_follow_the_inheritance_principle(dataset_copy):
    func = dataset_copy / "sub-01" / "func"
    own = (func / "sub-01_task-movie_run-2_events.tsv").read_text()
    (func / "sub-01_task-movie_run-2_events.tsv").unlink()
    runs = collect_runs(load_layout(dataset_copy, derivatives={}), ["01"])
    # Another run's events never apply (pybids' non-strict get_nearest would pick run-1's).
    assert [r.events and r.events.name for r in runs] == [
        "sub-01_task-movie_run-1_events.tsv", None]

    (dataset_copy / "task-movie_events.tsv").write_text(own)
    (dataset_copy / "sub-01" / "sub-01_task-movie_events.tsv").write_text(own)
    runs = collect_runs(load_layout(dataset_copy, derivatives={}), ["01", "02"])
    assert {(r.subject, r.run): r.events.relative_to(dataset_copy).as_posix() for r in runs} == {
        ("01", 1): "sub-01/func/sub-01_task-movie_run-1_events.tsv",
        ("01", 2): "sub-01/sub-01_task-movie_events.tsv",
        ("02", 1): "sub-02/func/sub-02_task-movie_run-1_events.tsv",
        ("02", 2): "sub-02/func/sub-02_task-movie_run-2_events.tsv"}
    for events in (dataset_copy / "sub-02" / "func").glob("*_events.tsv"):
        events.unlink()
    runs = collect_runs(load_layout(dataset_copy, derivatives={}), ["02"])
    assert {r.events.name for r in runs} == {"task-movie_events.tsv"}


def test_fmriprep_derivatives_are_found_and_used(small_dataset):
    found = find_fmriprep_derivatives(small_dataset)
    assert list(found) == ["fmriprep"]
    layout = load_layout(small_dataset, found)
    run = collect_runs(layout, ["01"], space="MNI152NLin2009cAsym")[0]
    assert "desc-preproc_bold" in run.bold.name and run.space == "MNI152NLin2009cAsym"
    assert run.mask.name.endswith("desc-brain_mask.nii.gz")
    assert run.confounds.name.endswith("desc-confounds_timeseries.tsv")
    with pytest.raises(InputMissingError, match="spaces found: MNI152NLin2009cAsym"):
        collect_runs(layout, ["01"], space="MNI152NLin6Asym")


def test_our_own_outputs_are_never_indexed(small_dataset, tmp_path):
    ours = small_dataset / "derivatives" / "bids_affect"
    ours.mkdir(exist_ok=True)
    (ours / "dataset_description.json").write_text(json.dumps(
        {"Name": "x", "BIDSVersion": "1.10.0", "DatasetType": "derivative",
         "GeneratedBy": [{"Name": "fMRIPrep"}]}))
    try:
        assert "bids_affect" not in find_fmriprep_derivatives(small_dataset, exclude=[ours])
    finally:
        shutil.rmtree(ours)


def test_participant_selection_and_errors(small_dataset):
    layout = load_layout(small_dataset)
    assert {r.subject for r in collect_runs(layout)} == {"01", "02"}
    assert strip_subject_prefix(["sub-01", "02"]) == ["01", "02"]
    with pytest.raises(InputMissingError, match="sub-05 not found") as info:
        collect_runs(layout, ["05"])
    assert info.value.exit_code == 66 and "mounted" in str(info.value)
    with pytest.raises(NoDataSelected) as info:
        collect_runs(layout, ["01"], task="rest")
    assert info.value.exit_code == 18


def test_bids_filter_file_semantics(small_dataset, tmp_path):
    layout = load_layout(small_dataset)
    runs = collect_runs(layout, bids_filters={"bold": {"run": 2}})
    assert {r.run for r in runs} == {2}
    assert len(collect_runs(layout, bids_filters={"bold": {"session": None}})) == 4
    with pytest.raises(NoDataSelected):
        collect_runs(layout, bids_filters={"bold": {"session": "*"}})
    bad = tmp_path / "filter.json"
    bad.write_text("{not json")
    with pytest.raises(Exception, match="not valid JSON") as info:
        load_filter_file(bad)
    assert info.value.exit_code == 64
    bad.write_text(json.dumps({"t1w": {}}))
    with pytest.raises(Exception, match="query 't1w' is unknown"):
        load_filter_file(bad)


@pytest.mark.parametrize("tr, ok", [(2.0199, True), (1.981, True), (2.021, False),
                                     (1.979, False)])
def test_repetition_time_tolerance_is_one_percent(dataset_copy, tr, ok):
    sidecar = dataset_copy / "task-movie_bold.json"
    sidecar.write_text(json.dumps({"TaskName": "movie", "RepetitionTime": tr}))
    if ok:
        assert collect_runs(load_layout(dataset_copy), ["01"])[0].tr == tr
    else:
        with pytest.raises(InputDataError, match="more than 1%"):
            collect_runs(load_layout(dataset_copy), ["01"])


def test_a_bold_that_is_not_a_series_is_exit_65(dataset_copy):
    import numpy as np

    bold = dataset_copy / "sub-01/func/sub-01_task-movie_run-2_bold.nii.gz"
    image = nib.load(bold)
    for data in (np.asarray(image.dataobj)[..., 0], np.asarray(image.dataobj)[..., :1]):
        nib.Nifti1Image(data, image.affine, image.header).to_filename(bold)
        with pytest.raises(InputDataError, match="not a time series") as info:
            collect_runs(load_layout(dataset_copy), ["01"])
        assert info.value.exit_code == 65 and bold.name in str(info.value)


def test_start_time_of_the_preprocessed_bold_wins(dataset_copy):
    # fMRIPrep's slice-timing correction records the time its volumes now represent.
    func = dataset_copy / "derivatives/fmriprep/sub-01/func"
    sidecar = next(func.glob("*run-1*desc-preproc_bold.json"))
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "StartTime": 0.9}))
    layout = load_layout(dataset_copy, derivatives={"fmriprep": dataset_copy /
                                                    "derivatives/fmriprep"})
    first, second = collect_runs(layout, ["01"])
    assert (first.start_time, second.start_time) == (0.9, 0.5)  # raw sidecar: 0.5


def test_repetition_time_problems_are_exit_65(dataset_copy):
    sidecar = dataset_copy / "task-movie_bold.json"
    sidecar.write_text(json.dumps({"TaskName": "movie", "RepetitionTime": 2.5}))
    with pytest.raises(InputDataError, match="disagrees") as info:
        collect_runs(load_layout(dataset_copy), ["01"])
    assert info.value.exit_code == 65
    sidecar.write_text(json.dumps({"TaskName": "movie"}))
    with pytest.raises(InputDataError, match="RepetitionTime is missing"):
        collect_runs(load_layout(dataset_copy), ["01"])


@pytest.mark.parametrize("content", [b"", b"\x1f\x8b garbage that is not gzip data"])
def test_empty_or_corrupt_bold_is_exit_65_naming_the_file(dataset_copy, content):
    bold = dataset_copy / "sub-01/func/sub-01_task-movie_run-1_bold.nii.gz"
    bold.write_bytes(content)
    with pytest.raises(InputDataError) as info:
        collect_runs(load_layout(dataset_copy), ["01"])
    assert info.value.exit_code == 65 and bold.name in str(info.value)


def _load_in_process(args):
    root, database = args
    layout = load_layout(root, database_dir=database)
    return len(collect_runs(layout))


def test_database_is_reused_and_safe_for_concurrent_jobs(small_dataset, tmp_path,
                                                         monkeypatch):
    database = tmp_path / "db"
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        counts = pool.map(_load_in_process, [(small_dataset, database)] * 4)
    assert counts == [4, 4, 4, 4]
    from bids.layout import BIDSLayoutIndexer

    calls = []
    original = BIDSLayoutIndexer.__call__
    monkeypatch.setattr(BIDSLayoutIndexer, "__call__",
                        lambda self, layout: calls.append(1) or original(self, layout))
    assert len(collect_runs(load_layout(small_dataset, database_dir=database))) == 4
    assert calls == []


def test_run_records_read_slice_timing(dataset_copy):
    sidecar = dataset_copy / "task-movie_bold.json"
    content = json.loads(sidecar.read_text())
    content["SliceTiming"] = [0.0, 1.0, 0.5, 1.5, 0.25, 1.25]
    sidecar.write_text(json.dumps(content))
    run = collect_runs(load_layout(dataset_copy), ["01"])[0]
    assert run.slice_timing == (0.0, 1.0, 0.5, 1.5, 0.25, 1.25)
    assert nib.load(run.bold).shape[:3] == run.shape[:3]


# ----------------------------------------------------------------- bad input, clean failures


def _write_json(path, content):
    path.write_text(content if isinstance(content, str) else json.dumps(content))


@pytest.mark.parametrize("where", ["run", "top"])
@pytest.mark.parametrize("tr, fragment", [
    ("two", 'must be a number of seconds, got "two" (text)'),
    ([2.0], "must be a number of seconds, got [2.0] (a list)"),
    ({"value": 2}, "(an object)"),
    (True, "(a boolean)"),
    (0, "RepetitionTime 0 is invalid: it must be a positive number"),
    (-2.0, "RepetitionTime -2.0 is invalid: it must be a positive number"),
    (float("nan"), "RepetitionTime NaN is invalid"),
])
def test_bad_repetition_time_is_65_naming_the_sidecar_that_sets_it(dataset_copy, where, tr,
                                                                   fragment):
    top = dataset_copy / "task-movie_bold.json"
    run = dataset_copy / "sub-01/func/sub-01_task-movie_run-2_bold.json"
    if where == "run":  # a run's own sidecar overrides the top-level one
        _write_json(run, {"RepetitionTime": tr})
    else:
        _write_json(top, {**json.loads(top.read_text()), "RepetitionTime": tr})
    with pytest.raises(InputDataError) as info:
        collect_runs(load_layout(dataset_copy), ["01"])
    message = str(info.value)
    assert info.value.exit_code == 65
    assert message.startswith(f"{run if where == 'run' else top}: RepetitionTime"), message
    assert fragment in message and "fix: " in message
    assert "disagrees" not in message


def test_zero_repetition_time_in_sidecar_and_header_names_the_sidecar(dataset_copy):
    bold = dataset_copy / "sub-01/func/sub-01_task-movie_run-1_bold.nii.gz"
    image = nib.load(bold)
    header = image.header.copy()
    header.set_zooms((*header.get_zooms()[:3], 0.0))
    nib.Nifti1Image(image.dataobj, image.affine, header).to_filename(bold)
    assert nib.load(bold).header.get_zooms()[3] == 0
    top = dataset_copy / "task-movie_bold.json"
    _write_json(top, {**json.loads(top.read_text()), "RepetitionTime": 0})
    with pytest.raises(InputDataError) as info:
        collect_runs(load_layout(dataset_copy), ["01"])
    assert str(info.value).startswith(f"{top}: RepetitionTime 0 is invalid")
    assert "events" not in str(info.value)


def test_a_disagreeing_repetition_time_names_the_sidecar_and_the_nifti(dataset_copy):
    run = dataset_copy / "sub-01/func/sub-01_task-movie_run-2_bold.json"
    _write_json(run, {"RepetitionTime": 2.5})
    with pytest.raises(InputDataError, match="disagrees with 2.0 s in the NIfTI header of "
                                             "sub-01_task-movie_run-2_bold.nii.gz") as info:
        collect_runs(load_layout(dataset_copy), ["01"])
    assert str(info.value).startswith(str(run))


@pytest.mark.parametrize("key, value, fragment", [
    ("StartTime", "soon", 'StartTime must be a number of seconds, got "soon"'),
    ("StartTime", [0.5], "StartTime must be a number of seconds, got [0.5] (a list)"),
    ("SliceTiming", "interleaved", "SliceTiming must be a list of times"),
    ("SliceTiming", [0.0, "one"], "SliceTiming must be a list of times"),
    ("SliceTiming", [0.0, -1.0], "SliceTiming must be a list of times"),
])
def test_bad_start_or_slice_timing_is_65_naming_the_sidecar(dataset_copy, key, value,
                                                            fragment):
    run = dataset_copy / "sub-01/func/sub-01_task-movie_run-1_bold.json"
    _write_json(run, {key: value})
    with pytest.raises(InputDataError) as info:
        collect_runs(load_layout(dataset_copy), ["01"])
    assert str(info.value).startswith(f"{run}: {key}") and fragment in str(info.value)


@pytest.mark.parametrize("content, fragment", [
    ("{bad", "is not valid JSON"),
    ("[1, 2]", "must hold a JSON object of metadata, not a list"),
])
def test_a_sidecar_pybids_cannot_parse_is_65_naming_it(dataset_copy, content, fragment):
    run = dataset_copy / "sub-02/func/sub-02_task-movie_run-2_bold.json"
    run.write_text(content)
    with pytest.raises(InputDataError) as info:
        load_layout(dataset_copy)
    assert str(info.value).startswith(f"{run}: JSON file {fragment}")


def test_filter_file_entities_and_values_are_checked(small_dataset, tmp_path):
    path = tmp_path / "filter.json"
    for content, fragment in [
        ({"bold": {"flavour": "vanilla"}}, "entity 'flavour' is unknown"),
        ({"bold": {"run": {"gt": 1}}}, 'entity \'run\' has the value {"gt": 1}'),
        ({"bold": {"run": [1, [2]]}}, "entity 'run' has the value [1, [2]]"),
        ({"bold": {"session": True}}, "entity 'session' has the value true"),
    ]:
        path.write_text(json.dumps(content))
        with pytest.raises(UsageError) as info:
            load_filter_file(path)
        message = str(info.value)
        assert info.value.exit_code == 64 and message.startswith(f"{path}: ")
        assert fragment in message, message
    assert "fix: use pybids entities: subject, session" in str(
        pytest.raises(UsageError, build_queries, {"bold": {"flavour": "x"}}).value)
    # Every listed entity is accepted by pybids' query (the list is pybids' own).
    layout = load_layout(small_dataset)
    for entity in bids_entities():
        layout.get(scope="raw", **{entity: "x"})
    path.write_text(json.dumps({"bold": {"run": [1, None], "acquisition": "*",
                                         "echo": None}}))
    assert load_filter_file(path)["bold"]["acquisition"] == "*"


def test_empty_selection_labels_are_refused(small_dataset):
    layout = load_layout(small_dataset)
    for labels in ([], [""], ["01", "sub-"], [" "]):
        with pytest.raises(UsageError, match="^participant_label: ") as info:
            collect_runs(layout, labels)
        assert info.value.exit_code == 64
    with pytest.raises(UsageError, match="^session_label: was given without a label"):
        collect_runs(layout, ["01"], session_label=[])
    with pytest.raises(UsageError, match="^task_id: was given without a label"):
        collect_runs(layout, ["01"], task="")
    assert len(collect_runs(layout, None)) == 4  # not given: everyone


# ------------------------------------------------------------------- the pybids database


def _count_indexing(monkeypatch):
    from bids.layout import BIDSLayoutIndexer

    calls = []
    original = BIDSLayoutIndexer.__call__
    monkeypatch.setattr(BIDSLayoutIndexer, "__call__",
                        lambda self, layout: calls.append(1) or original(self, layout))
    return calls


def test_database_dir_that_cannot_be_created_or_written_is_73(small_dataset, tmp_path,
                                                              monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="cannot create the BIDS database directory") as info:
        load_layout(small_dataset, database_dir=blocker / "db")
    assert info.value.exit_code == 73 and str(info.value).startswith(str(blocker / "db"))
    assert "fix: " in str(info.value)
    # A folder without write permission (simulated: the tests may run as root).
    database = tmp_path / "readonly"
    database.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if Path(path) == database
                        else real_access(path, mode))
    with pytest.raises(OutputError, match="is not writable") as info:
        load_layout(small_dataset, database_dir=database)
    assert info.value.exit_code == 73 and list(database.iterdir()) == []


@pytest.mark.parametrize("damage", ["garbage", "empty", "truncated"])
def test_a_corrupt_database_is_rebuilt_with_one_warning(small_dataset, tmp_path, caplog,
                                                        damage):
    database = tmp_path / "db"
    load_layout(small_dataset, database_dir=database)
    index = database / "layout_index.sqlite"
    content = index.read_bytes()
    index.write_bytes({"garbage": b"not a database " * 200, "empty": b"",
                       "truncated": content[: len(content) // 3]}[damage])
    with caplog.at_level(logging.WARNING, logger="bids_affect.layout"):
        runs = collect_runs(load_layout(small_dataset, database_dir=database))
    assert len(runs) == 4
    [record] = caplog.records
    assert "cannot be read" in record.getMessage() and str(database) in record.getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="bids_affect.layout"):
        load_layout(small_dataset, database_dir=database)  # the rebuilt one is current
    assert not caplog.records


def test_a_stale_database_is_detected_and_rebuilt(dataset_copy, tmp_path, caplog,
                                                  monkeypatch):
    database = tmp_path / "db"
    derivatives = {"fmriprep": dataset_copy / "derivatives" / "fmriprep"}
    assert len(collect_runs(load_layout(dataset_copy, derivatives, database))) == 4
    calls = _count_indexing(monkeypatch)
    load_layout(dataset_copy, derivatives, database)
    assert calls == []  # current: reused
    (dataset_copy / "sub-02/func/sub-02_task-movie_run-2_bold.nii.gz").unlink()
    with caplog.at_level(logging.WARNING, logger="bids_affect.layout"):
        runs = collect_runs(load_layout(dataset_copy, derivatives, database))
    assert [(r.subject, r.run) for r in runs] == [("01", 1), ("01", 2), ("02", 1)]
    assert calls  # indexed again
    [record] = caplog.records
    assert ("the dataset changed since it was indexed (sub-02/func/"
            "sub-02_task-movie_run-2_bold.nii.gz removed)") in record.getMessage()
    # A sidecar edited since indexing: the new metadata are read, not the cached ones.
    top = dataset_copy / "task-movie_bold.json"
    _write_json(top, {**json.loads(top.read_text()), "SliceTiming": [0.0, 1.0]})
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="bids_affect.layout"):
        runs = collect_runs(load_layout(dataset_copy, derivatives, database), ["01"])
    assert runs[0].slice_timing == (0.0, 1.0)
    assert "task-movie_bold.json modified" in caplog.text
    # A subject added since indexing is found.
    shutil.copytree(dataset_copy / "sub-02", dataset_copy / "sub-03")
    for path in sorted((dataset_copy / "sub-03").rglob("sub-02_*")):
        path.rename(path.with_name(path.name.replace("sub-02", "sub-03")))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="bids_affect.layout"):
        layout = load_layout(dataset_copy, derivatives, database)
    assert layout.get_subjects() == ["01", "02", "03"]
    assert "sub-03/func/sub-03_task-movie_run-1_bold.nii.gz added" in caplog.text
    # Other derivatives than those indexed: indexed again.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="bids_affect.layout"):
        assert not load_layout(dataset_copy, {}, database).derivatives
    assert "another dataset or other derivatives" in caplog.text


def test_a_database_without_fingerprint_is_rebuilt(small_dataset, tmp_path, caplog):
    database = tmp_path / "db"
    load_layout(small_dataset, database_dir=database)
    (database / "bids_affect_index.json").unlink()  # e.g. indexing was interrupted
    with caplog.at_level(logging.WARNING, logger="bids_affect.layout"):
        load_layout(small_dataset, database_dir=database)
    assert "has no bids_affect fingerprint" in caplog.text
    assert (database / "bids_affect_index.json").is_file()


def test_fingerprint_ignores_what_pybids_does_not_index(small_dataset):
    listing = dataset_fingerprint([small_dataset])["roots"][str(small_dataset)]
    assert "task-movie_bold.json" in listing
    assert "sub-01/func/sub-01_task-movie_run-1_bold.nii.gz" in listing
    assert not [name for name in listing
                if name.split("/")[0] in ("derivatives", "sourcedata") or "/." in name]
