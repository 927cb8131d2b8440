"""Progress: a bar on a terminal, periodic log lines in batch jobs, never both."""

from __future__ import annotations

import logging

from bids_affect import progress as progress_module
from bids_affect.cli.run import _setup_logging
from bids_affect.progress import IMPORTANT, Progress, track


def test_batch_jobs_get_log_lines_and_no_bar(caplog, capsys, monkeypatch):
    monkeypatch.setattr(progress_module, "stderr_is_terminal", lambda: False)
    with (caplog.at_level(IMPORTANT, logger="bids_affect.progress"),
          Progress(4, desc="permutations", interval=0) as progress):
        for _ in range(4):
            progress.update(loss=0.25)
    messages = [record.getMessage() for record in caplog.records]
    assert messages[0] == "permutations: 0/4"
    assert any(message.startswith("permutations: 2/4") and "loss=0.25" in message
               for message in messages)
    assert messages[-1].startswith("permutations: 4/4 done in")
    assert {record.levelno for record in caplog.records} == {IMPORTANT}
    assert "permutations" not in capsys.readouterr().err


def test_log_lines_are_spaced_by_the_interval(caplog, monkeypatch):
    monkeypatch.setattr(progress_module, "stderr_is_terminal", lambda: False)
    with caplog.at_level(IMPORTANT, logger="bids_affect.progress"):
        assert list(track(range(50), desc="windows", interval=3600)) == list(range(50))
    assert [record.getMessage().split(" (")[0] for record in caplog.records][:1] == [
        "windows: 0/50"]
    assert len(caplog.records) == 2  # start and end only


def test_a_terminal_gets_a_bar_and_no_log_lines(caplog, capsys, monkeypatch):
    monkeypatch.setattr(progress_module, "stderr_is_terminal", lambda: True)
    with (caplog.at_level(logging.DEBUG, logger="bids_affect.progress"),
          Progress(3, desc="epochs", interval=0) as progress):
        for _ in range(3):
            progress.update()
    assert not caplog.records
    assert "epochs" in capsys.readouterr().err


def test_default_verbosity_shows_progress_but_not_info(monkeypatch):
    _setup_logging(verbose=0, debug=False)
    logger = logging.getLogger("bids_affect.progress")
    assert logger.isEnabledFor(IMPORTANT) and not logger.isEnabledFor(logging.INFO)
    _setup_logging(verbose=1, debug=False)
    assert logger.isEnabledFor(logging.INFO) and not logger.isEnabledFor(logging.DEBUG)
    _setup_logging(verbose=2, debug=False)
    assert logger.isEnabledFor(logging.DEBUG)
