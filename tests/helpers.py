"""Helpers shared by the tests (plain functions; fixtures live in conftest.py)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np


def file_hashes(root: Path, keep: Callable[[Path], bool] = lambda path: True
                ) -> dict[str, str]:
    """SHA-256 of every file under ``root`` that ``keep`` accepts, by relative path."""
    root = Path(root)
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file() and keep(path)}


def result_hashes(root: Path) -> dict[str, str]:
    """:func:`file_hashes` of the results of a run: what two runs with one seed share.

    Left out: run logs and configs (they hold the run id, the time and the
    folders), and the HTML reports, which show those logs and folders.
    """
    return file_hashes(root, lambda p: "log" not in p.relative_to(root).parts[:2]
                       and p.suffix not in (".toml", ".html"))


def tree_digest(root: Path) -> str:
    """One hash of every path (folders included) and file content under ``root``."""
    root = Path(root)
    folders = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_dir())
    return hashlib.sha256(repr((folders, file_hashes(root))).encode()).hexdigest()


_KILL_PRELUDE = """\
import os, signal, sys
import numpy as np
from bids_affect.models import training

_real_epoch, _epochs = training.train_one_epoch, []


def _train_then_die(*args, **kwargs):
    _epochs.append(1)
    if len(_epochs) == {die_at}:  # the earlier epochs are checkpointed: die in this one
        os.kill(os.getpid(), signal.SIGKILL)
    return _real_epoch(*args, **kwargs)


training.train_one_epoch = _train_then_die
"""


def run_until_killed(folder: Path, die_at_epoch: int, body: str, *args: object,
                     timeout: float = 600) -> None:
    """Run ``body`` in a fresh Python that SIGKILLs itself during training epoch ``die_at_epoch``.

    ``body`` (Python, dedented here) reads its inputs from ``sys.argv[1:]`` = ``args``;
    one thread, so that the resumed and uninterrupted runs agree bit for bit.
    """
    import os
    import signal
    import subprocess
    import sys
    import textwrap

    script = Path(folder) / "killed.py"
    script.write_text(_KILL_PRELUDE.format(die_at=int(die_at_epoch))
                      + textwrap.dedent(body))
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), *sys.path])}
    done = subprocess.run([sys.executable, str(script), *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == -signal.SIGKILL, done.stderr


def gabor(angle: float, frequency: float, size: int = 7, sigma: float = 2.5) -> np.ndarray:
    """A zero-mean, L1-normalised Gabor kernel (``frequency``: cycles per pixel)."""
    r = size // 2
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    along = xx * np.cos(angle) + yy * np.sin(angle)
    kernel = np.exp(-(xx ** 2 + yy ** 2) / (2 * sigma ** 2)) * np.cos(
        2 * np.pi * frequency * along)
    kernel -= kernel.mean()
    return kernel / np.abs(kernel).sum()
