"""Image sets: layouts, seed 002's categories, bad files, streaming, low-level covariates."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from bids_affect.exceptions import InputDataError, InputMissingError, UsageError
from bids_affect.image_sets import (
    ImageStream,
    Preprocess,
    TensorImages,
    check_category_counts,
    load_image_set,
    low_level_features,
    valence_categories,
)
from bids_affect.models.image import Preprocessing

#: 16x16 input, pixel values kept in [0, 1].
RAW16 = Preprocessing(resize=(16, 16), crop=None, scale=255.0, mean=(0, 0, 0), std=(1, 1, 1))


def _write_ratings(root: Path, rows: list[tuple]) -> None:
    lines = ["file\tvalence\tarousal" + ("\tcategory" if len(rows[0]) == 4 else "")]
    lines += ["\t".join(str(v) for v in row) for row in rows]
    (root / "ratings.tsv").write_text("\n".join(lines) + "\n")


def _ratings_set(root: Path, valences, rng, size=(20, 16)) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, valence in enumerate(valences):
        pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"img{i:03d}.png")
        rows.append((f"img{i:03d}.png", valence, 5.0))
    _write_ratings(root, rows)
    return root


# --------------------------------------------------------------------------- categories


def test_valence_categories_follow_seed_002_thresholds_and_margin():
    valence = [1.0, 3.79, 3.8, 4.3, 4.79, 4.8, 5.0, 5.5, 5.51, 6.0, 6.5, 6.51, 9.0, np.nan]
    expected = ["unpleasant", "unpleasant", "unknown", "unknown", "unknown", "neutral",
                "neutral", "neutral", "unknown", "unknown", "unknown", "pleasant", "pleasant",
                "unknown"]
    assert valence_categories(valence).tolist() == expected
    # Hard thresholds: a rating equal to a threshold is neutral.
    assert valence_categories([4.29, 4.3, 6.0, 6.01], margin=0).tolist() == [
        "unpleasant", "neutral", "neutral", "pleasant"]


def test_valence_categories_reject_thresholds_without_room():
    with pytest.raises(UsageError, match="valence_thresholds"):
        valence_categories([5.0], thresholds=(5.0, 5.5), margin=0.5)


def test_ratings_layout_drops_unknown_and_keeps_order(tmp_path, rng):
    valences = [2.0, 5.0, 8.0, 4.5, 6.2] + [2.0, 5.0, 8.0] * 3
    image_set = load_image_set(_ratings_set(tmp_path / "iaps", valences, rng), name="IAPS")
    assert image_set.name == "IAPS"
    assert image_set.n_unknown == 2
    assert image_set.files[:3] == ["img000.png", "img001.png", "img002.png"]
    assert "img003.png" not in image_set.files and "img004.png" not in image_set.files
    assert image_set.category_counts() == {"pleasant": 4, "neutral": 4, "unpleasant": 4}
    assert image_set.categories[:3].tolist() == ["unpleasant", "neutral", "pleasant"]


def test_keep_unknown_keeps_every_rated_image(tmp_path, rng):
    root = _ratings_set(tmp_path / "s", [2.0, 4.5, 6.2, 8.0], rng)
    with pytest.raises(InputDataError, match="fewer than the 4"):
        load_image_set(root)
    image_set = load_image_set(root, keep_unknown=True)
    assert image_set.categories.tolist() == ["unpleasant", "unknown", "unknown", "pleasant"]
    assert image_set.n_unknown == 0 and len(image_set) == 4


def test_category_column_is_used_as_given(tmp_path, rng):
    root = _ratings_set(tmp_path / "s", [1.0] * 8, rng)
    rows = [(f"img{i:03d}.png", 1.0, 2.0, "calm" if i % 2 else "scary") for i in range(8)]
    rows[0] = ("img000.png", 1.0, 2.0, "unknown")
    _write_ratings(root, rows)
    with pytest.raises(InputDataError, match="'scary' has 3 images"):
        load_image_set(root)
    image_set = load_image_set(root, min_per_category=3)
    assert image_set.category_counts() == {"calm": 4, "scary": 3}


def test_folder_per_category_layout(tmp_path):
    for category in ("pleasant", "unpleasant"):
        (tmp_path / category).mkdir()
        for i in range(4):
            Image.new("RGB", (10, 10), (i, 0, 0)).save(tmp_path / category / f"{i}.jpg")
    (tmp_path / "pleasant" / ".DS_Store").write_bytes(b"\x00\x01")  # hidden: ignored
    (tmp_path / "README.txt").write_text("top-level files are not images of the set")
    image_set = load_image_set(tmp_path)
    assert image_set.category_counts() == {"pleasant": 4, "unpleasant": 4}
    assert image_set.table["valence"].isna().all()
    assert image_set.files[0] == "pleasant/0.jpg"


# --------------------------------------------------------------------------- bad input


def test_ratings_naming_a_missing_file_is_an_error_naming_it(tmp_path, rng):
    root = _ratings_set(tmp_path / "s", [2.0, 5.0, 8.0] * 4, rng)
    (root / "img004.png").unlink()
    with pytest.raises(InputMissingError) as error:
        load_image_set(root)
    message = str(error.value)
    assert "\n" not in message and "img004.png" in message and error.value.exit_code == 66


def test_unreadable_file_is_refused_by_default_and_skipped_on_request(tmp_path, rng):
    root = _ratings_set(tmp_path / "s", [2.0, 5.0, 8.0] * 5, rng)
    (root / "img007.png").write_text("this is not a PNG")
    with pytest.raises(InputDataError) as error:
        load_image_set(root)
    message = str(error.value)
    assert "\n" not in message and "img007.png" in message and error.value.exit_code == 65
    with pytest.warns(UserWarning, match="img007.png"):
        image_set = load_image_set(root, on_unreadable="skip")
    assert image_set.skipped == ("img007.png",)
    assert "img007.png" not in image_set.files and len(image_set) == 14


def test_non_image_file_in_category_folder_is_named(tmp_path):
    for category in ("a", "b"):
        (tmp_path / category).mkdir()
        for i in range(4):
            Image.new("L", (6, 6)).save(tmp_path / category / f"{i}.png")
    (tmp_path / "b" / "notes.txt").write_text("hello")
    with pytest.raises(InputDataError, match=r"b/notes\.txt"):
        load_image_set(tmp_path)


def test_truncated_image_fails_when_streamed_naming_it(tmp_path, rng):
    root = _ratings_set(tmp_path / "s", [2.0, 5.0, 8.0] * 4, rng, size=(64, 64))
    data = (root / "img010.png").read_bytes()
    (root / "img010.png").write_bytes(data[: len(data) // 2])  # header intact, pixels cut
    image_set = load_image_set(root)
    stream = ImageStream(image_set, Preprocess(RAW16), batch_size=4)
    batches = stream.batches()
    # Streaming: the first batches come before the broken file is ever decoded.
    assert next(batches).shape == (4, 3, 16, 16)
    assert next(batches).shape == (4, 3, 16, 16)
    with pytest.raises(InputDataError) as error:
        next(batches)
    assert "img010.png" in str(error.value) and "\n" not in str(error.value)


def test_too_few_images_for_the_split(tmp_path, rng):
    root = _ratings_set(tmp_path / "s", [2.0, 5.0, 8.0] * 3 + [2.0, 8.0], rng)
    with pytest.raises(InputDataError) as error:
        load_image_set(root)
    assert "'neutral' has 3 images" in str(error.value)
    with pytest.raises(InputDataError, match="'b' has 1 image,"):
        check_category_counts(["a", "a", "b"], 2)


def test_bad_ratings_tables(tmp_path, rng):
    root = _ratings_set(tmp_path / "s", [2.0, 5.0, 8.0] * 4, rng)
    (root / "ratings.tsv").write_text("name\tvalence\nimg000.png\t2\n")
    with pytest.raises(InputDataError, match="no 'file' column"):
        load_image_set(root)
    (root / "ratings.tsv").write_text("file\tvalence\nimg000.png\thigh\n")
    with pytest.raises(InputDataError, match="'valence' is not a number for img000.png"):
        load_image_set(root)
    with pytest.raises(InputMissingError, match="does not exist"):
        load_image_set(tmp_path / "nowhere")
    with pytest.raises(UsageError, match="on_unreadable"):
        load_image_set(root, on_unreadable="ignore")


# --------------------------------------------------------------------------- streaming


def test_grayscale_is_luma_in_three_channels_as_seed_002():
    image = Image.new("RGB", (16, 16), (200, 100, 50))
    colour = Preprocess(RAW16)(image)
    gray = Preprocess(RAW16, grayscale=True)(image)
    assert torch.allclose(colour[:, 0, 0], torch.tensor([200, 100, 50]) / 255.0)
    luma = (0.299 * 200 + 0.587 * 100 + 0.114 * 50) / 255.0  # ITU-R 601-2
    assert torch.allclose(gray, torch.full_like(gray, luma), atol=1 / 255)


def test_stream_batches_follow_indices_and_network_preprocessing(tmp_path, rng):
    image_set = load_image_set(_ratings_set(tmp_path / "s", [2.0, 5.0, 8.0] * 4, rng))
    stream = ImageStream(image_set, Preprocess(RAW16), batch_size=5, n_threads=2)
    whole = torch.cat(list(stream.batches()))
    assert whole.shape == (12, 3, 16, 16) and whole.dtype == torch.float32
    picked = torch.cat(list(stream.batches([11, 3])))
    assert torch.equal(picked, whole[[11, 3]])
    first = np.asarray(Image.open(image_set.paths[0]).convert("RGB").resize(
        (16, 16), Image.Resampling.BILINEAR), dtype=np.float32) / 255
    # The network's (antialiased torch) resize, not Pillow's: close, not equal.
    assert np.abs(whole[0].numpy().transpose(1, 2, 0) - first).mean() < 0.1
    assert [len(b) for b in TensorImages(whole, batch_size=7).batches()] == [7, 5]


# --------------------------------------------------------------------------- covariates


def test_low_level_features_measure_colour_and_frequency_bands(tmp_path):
    folder = tmp_path / "set" / "all"
    folder.mkdir(parents=True)
    Image.new("RGB", (64, 48), (255, 0, 0)).save(folder / "red.png")
    yy, xx = np.mgrid[:128, :128]
    for name, cycles in (("coarse", 3), ("fine", 40)):
        grating = 127.5 + 100 * np.sin(2 * np.pi * cycles * xx / 128)
        Image.fromarray(grating.astype(np.uint8)).convert("RGB").save(folder / f"{name}.png")
    image_set = load_image_set(tmp_path / "set", min_per_category=1)
    table = low_level_features(image_set, size=128, sf_edges=(1, 8, 64))
    assert table.columns.tolist() == ["red", "green", "blue", "sf_1_8", "sf_8_64"]
    assert table.loc["all/red.png", ["red", "green", "blue"]].tolist() == [1.0, 0.0, 0.0]
    coarse, fine = table.loc["all/coarse.png"], table.loc["all/fine.png"]
    assert coarse["sf_1_8"] > fine["sf_1_8"] + 2  # log10 power: 100x more
    assert fine["sf_8_64"] > coarse["sf_8_64"] + 2
    luminance = low_level_features(image_set, colour="luminance", size=128,
                                   sf_edges=(1, 8, 64))
    assert luminance.columns[0] == "luminance"
    assert luminance.loc["all/red.png", "luminance"] == pytest.approx(0.299, abs=0.01)


def test_low_level_features_reject_bad_bands(tmp_path):
    (tmp_path / "a").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "a" / "x.png")
    image_set = load_image_set(tmp_path, min_per_category=1)
    with pytest.raises(UsageError, match="sf_edges"):
        low_level_features(image_set, size=32, sf_edges=(4, 2))
    with pytest.raises(UsageError, match="sf_edges"):
        low_level_features(image_set, size=32, sf_edges=(1, 40))


def test_table_is_a_plain_dataframe(tmp_path, rng):
    image_set = load_image_set(_ratings_set(tmp_path / "s", [2.0, 5.0, 8.0] * 4, rng))
    assert isinstance(image_set.table, pd.DataFrame)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sub = image_set.subset([2, 0])
    assert sub.files == ["img002.png", "img000.png"]
