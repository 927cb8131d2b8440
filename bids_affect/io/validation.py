"""Run the bids-validator on the input, limited to the selected participants.

The validator is the Deno build shipped by the pip package
``bids-validator-deno`` (it runs offline). Only the selected participants are
validated: a temporary tree of symbolic links (the dataset's top-level files
plus the selected ``sub-*`` folders) is built in the work directory, as
fMRIPrep does, so one broken subject does not stop the others' jobs.

Examples
--------
>>> from bids_affect.datasets import make_synthetic_dataset
>>> import tempfile
>>> root = make_synthetic_dataset(tempfile.mkdtemp(), n_subjects=1, n_runs=1,
...                               n_volumes=10, shape=(6, 7, 6))
>>> validate_dataset(root, ["01"], tempfile.mkdtemp())
[]
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bids_affect.exceptions import BIDSValidationFailed

LOGGER = logging.getLogger("bids_affect.validation")

VALIDATOR_COMMANDS = ("bids-validator-deno", "bids-validator")
#: Errors shown in the exit message; the rest go to the log.
N_ERRORS_SHOWN = 3


@dataclass(frozen=True)
class ValidatorIssue:
    """One error reported by the validator."""

    code: str
    location: str
    message: str

    def __str__(self) -> str:
        return f"{self.code} at {self.location or 'dataset'}"


def find_validator() -> str | None:
    """Path of the bids-validator executable, or None when it is not installed.

    The folder of the running Python comes first, then ``PATH``: the pip package
    ``bids-validator-deno`` installs its command beside the interpreter of its
    environment, which is not on ``PATH`` when ``bids_affect`` is called by its
    full path (e.g. ``/opt/venv/bin/bids_affect``) without activating it. The
    interpreter's path is not resolved: a virtual environment's ``python`` is a
    link to the system's, whose folder holds another environment.

    Examples
    --------
    >>> find_validator() is None or Path(find_validator()).name in VALIDATOR_COMMANDS
    True
    """
    beside_python = str(Path(sys.executable).parent) if sys.executable else None
    for folder in (beside_python, None):  # None: shutil.which searches PATH
        for command in VALIDATOR_COMMANDS:
            path = shutil.which(command, path=folder)
            if path:
                return path
    return None


def _subset_tree(bids_dir: Path, participants: Sequence[str], work_dir: Path) -> Path:
    """Symbolic-link tree of ``bids_dir`` holding only the selected participants."""
    tree = Path(tempfile.mkdtemp(prefix="bids_validation_", dir=work_dir))
    selected = {f"sub-{label}" for label in participants}
    for entry in bids_dir.iterdir():
        if entry.name.startswith("sub-") and entry.name not in selected:
            continue
        hidden = entry.name.startswith(".") and entry.name != ".bidsignore"
        if entry.name in ("derivatives", "sourcedata", "code") or hidden:
            continue
        (tree / entry.name).symlink_to(entry.absolute())
    return tree


def validate_dataset(bids_dir: Path, participants: Sequence[str], work_dir: Path,
                     timeout: float = 3600.0) -> list[ValidatorIssue]:
    """Validate the selected participants of ``bids_dir``; return the errors found.

    A validator that is not installed, or that fails to run, gives a warning
    and an empty list (the run goes on). Warnings of the validator are logged
    at debug level only.
    """
    executable = find_validator()
    if executable is None:
        LOGGER.warning("bids-validator is not installed; skipping input validation "
                       "(pip install bids-validator-deno to enable it).")
        return []
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    tree = _subset_tree(Path(bids_dir), participants, work_dir)
    try:
        result = subprocess.run([executable, "--format", "json", str(tree)],
                                capture_output=True, text=True, timeout=timeout, check=False)
        report = json.loads(result.stdout)
    except (OSError, subprocess.SubprocessError, json.JSONDecodeError) as err:
        LOGGER.warning("bids-validator could not run (%s); skipping input validation.", err)
        return []
    finally:
        shutil.rmtree(tree, ignore_errors=True)
    issues = report.get("issues", {}).get("issues", [])
    errors = [ValidatorIssue(issue.get("code", "UNKNOWN"), issue.get("location", ""),
                             " ".join(str(issue.get("issueMessage", "")).split()))
              for issue in issues if issue.get("severity") == "error"]
    n_warnings = sum(issue.get("severity") == "warning" for issue in issues)
    LOGGER.debug("bids-validator: %d errors, %d warnings", len(errors), n_warnings)
    return errors


def check_dataset(bids_dir: Path, participants: Sequence[str], work_dir: Path) -> None:
    """Raise :class:`BIDSValidationFailed` (exit 16) when the validator finds errors."""
    errors = validate_dataset(bids_dir, participants, work_dir)
    if not errors:
        return
    for error in errors:  # the details go to the debug log; the user sees one line
        LOGGER.debug("bids-validator: %s: %s", error, error.message[:300])
    shown = "; ".join(str(error) for error in errors[:N_ERRORS_SHOWN])
    more = f" (+{len(errors) - N_ERRORS_SHOWN} more)" if len(errors) > N_ERRORS_SHOWN else ""
    raise BIDSValidationFailed(
        f"the dataset is not valid BIDS: {len(errors)} error(s): {shown}{more}",
        path=bids_dir,
        fix="correct the dataset (run bids-validator-deno on it for details) or, at your own "
            "risk, pass --skip-bids-validation")
