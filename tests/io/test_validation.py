"""The bids-validator wrapper: selected participants only, exit 16, missing validator."""

from __future__ import annotations

import shutil

import pytest

from bids_affect.exceptions import BIDSValidationFailed
from bids_affect.io import validation


@pytest.fixture
def dataset(synthetic_dataset, tmp_path):
    return shutil.copytree(synthetic_dataset, tmp_path / "bids")


def test_valid_dataset_has_no_errors(dataset, tmp_path):
    assert validation.validate_dataset(dataset, ["01", "02"], tmp_path / "work") == []
    assert not list((tmp_path / "work").iterdir())  # the link tree is removed


def test_invalid_dataset_exits_16_with_the_first_errors(dataset, tmp_path):
    (dataset / "task-movie_bold.json").unlink()
    with pytest.raises(BIDSValidationFailed) as info:
        validation.check_dataset(dataset, ["01"], tmp_path)
    assert info.value.exit_code == 16
    assert "SIDECAR_KEY_REQUIRED" in str(info.value)
    assert "--skip-bids-validation" in str(info.value)


def test_only_the_selected_participants_are_validated(dataset, tmp_path):
    (dataset / "sub-02" / "func" / "sub-02_task-movie_run-1_bold.json").write_text("{bad")
    assert validation.validate_dataset(dataset, ["01"], tmp_path) == []
    assert validation.validate_dataset(dataset, ["02"], tmp_path)


def test_missing_validator_warns_and_goes_on(dataset, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(validation, "find_validator", lambda: None)
    assert validation.validate_dataset(dataset, ["01"], tmp_path) == []
    assert "not installed" in caplog.text
    monkeypatch.setattr(shutil, "which", lambda name, path=None: None)
    assert validation.find_validator() is None


def test_the_validator_beside_the_interpreter_is_found_without_path(tmp_path, monkeypatch):
    """``/venv/bin/bids_affect`` run by its full path: the venv's bin is not on PATH."""
    import sys

    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    validator = bin_dir / "bids-validator-deno"
    validator.write_text("#!/bin/sh\necho '{}'\n")
    validator.chmod(0o755)
    elsewhere = tmp_path / "usr" / "bin"
    elsewhere.mkdir(parents=True)
    monkeypatch.setenv("PATH", str(elsewhere))
    monkeypatch.setattr(sys, "executable", str(bin_dir / "python"))
    assert validation.find_validator() == str(validator)
    # Beside the interpreter wins over PATH: it is the one installed with bids_affect.
    other = elsewhere / "bids-validator-deno"
    other.write_text("#!/bin/sh\n")
    other.chmod(0o755)
    assert validation.find_validator() == str(validator)
    validator.unlink()
    assert validation.find_validator() == str(other)
    other.unlink()
    assert validation.find_validator() is None
