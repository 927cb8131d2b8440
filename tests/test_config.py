"""Configuration: sections, precedence, TOML round trip, seeds."""

from __future__ import annotations

from pathlib import Path

import pytest

from bids_affect.config import Config, derive_seed, draw_seed
from bids_affect.exceptions import UsageError


def test_toml_round_trip(tmp_path):
    config = Config.from_dict({"labels": {"hrf_lag": 5.0, "labels": "studyforrest-5"},
                               "execution": {"work_dir": "/tmp/w",
                                             "derivatives": {"fmriprep": "/d"}},
                               "analysis": {"models": ["ridge", "logreg"]}})
    path = tmp_path / "run.toml"
    path.write_text(config.to_toml())
    again = Config.from_toml(path)
    assert again.labels.hrf_lag == 5.0
    assert again.execution.work_dir == Path("/tmp/w")
    assert again.execution.derivatives == {"fmriprep": Path("/d")}
    assert again.analysis.models == ["ridge", "logreg"]
    assert again.to_dict() == config.to_dict()


@pytest.mark.parametrize("content, message", [
    ("[labels]\nhrf_lagg = 3\n", "labels.hrf_lagg' is unknown"),
    ("[label]\nhrf_lag = 3\n", "section 'label' is unknown"),
    ("[labels\nhrf_lag = 3\n", "not valid TOML"),
])
def test_bad_config_files_are_usage_errors(tmp_path, content, message):
    path = tmp_path / "bad.toml"
    path.write_text(content)
    with pytest.raises(UsageError, match=message) as info:
        Config.from_toml(path)
    assert info.value.exit_code == 64
    assert str(path) in str(info.value)


def test_later_sources_override_earlier_ones():
    base = Config.from_dict({"labels": {"hrf_lag": 5.0, "min_volumes": 3}})
    flags = Config.from_dict({"labels": {"hrf_lag": 6.0}}, base=base)
    assert (flags.labels.hrf_lag, flags.labels.min_volumes) == (6.0, 3)
    assert base.labels.hrf_lag == 5.0


def test_seeds_are_derived_reproducibly(rng):
    master = draw_seed(rng)
    assert 0 <= master < 2**31
    assert derive_seed(master, "sub-01", "ridge") == derive_seed(master, "sub-01", "ridge")
    seeds = {derive_seed(master, f"sub-{i:02d}", "ridge") for i in range(50)}
    assert len(seeds) == 50
