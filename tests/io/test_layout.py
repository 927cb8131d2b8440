"""Dataset index: run records from raw BIDS and fMRIPrep derivatives."""

from __future__ import annotations

import json
import multiprocessing
import shutil

import nibabel as nib
import pytest

from bids_affect.datasets import make_synthetic_dataset
from bids_affect.exceptions import InputDataError, InputMissingError, NoDataSelected
from bids_affect.io.layout import (
    RunRecord,
    collect_runs,
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
