"""Errors of bids_affect, each carrying the BIDS-App exit code it maps to.

Library code raises these (or standard exceptions); only :mod:`bids_affect.cli`
turns them into exit codes. Every message is one line: the file or parameter,
the problem, and the fix.

Examples
--------
>>> err = InputDataError("contains NaN values", path="sub-01_bold.nii.gz",
...                      fix="re-run preprocessing")
>>> str(err)
'sub-01_bold.nii.gz: contains NaN values; fix: re-run preprocessing'
>>> err.exit_code
65
"""

from __future__ import annotations

import os
import re

#: Exit codes of the BIDS-App (DESIGN.md, "Command line").
EXIT_SUCCESS = 0
EXIT_FAILURE = 1
EXIT_VALIDATION = 16
EXIT_UNKNOWN_LEVEL = 17
EXIT_NO_DATA = 18
EXIT_USAGE = 64
EXIT_DATA_INVALID = 65
EXIT_INPUT_MISSING = 66
EXIT_CANNOT_CREATE = 73


class BidsAffectError(Exception):
    """Base class: a problem with a one-line message and an exit code.

    Parameters
    ----------
    problem : str
        What is wrong.
    path : str or os.PathLike, optional
        The file or parameter concerned; it starts the message.
    fix : str, optional
        What the user can do about it.
    """

    exit_code = EXIT_FAILURE

    def __init__(self, problem: str, path: str | os.PathLike | None = None,
                 fix: str | None = None):
        self.problem = problem
        self.path = None if path is None else os.fspath(path)
        self.fix = fix
        super().__init__(self._format())

    def _format(self) -> str:
        message = f"{self.path}: {self.problem}" if self.path else self.problem
        if self.fix:
            message = f"{message}; fix: {self.fix}"
        return " ".join(message.split())

    def __reduce__(self):
        # Keep the keyword arguments when the error crosses process boundaries
        # (nipype MultiProc workers pickle exceptions).
        return (_rebuild_error, (type(self), self.problem, self.path, self.fix))


def _rebuild_error(cls, problem, path, fix):
    return cls(problem, path=path, fix=fix)


class BIDSValidationFailed(BidsAffectError):
    """The input dataset does not pass the bids-validator."""

    exit_code = EXIT_VALIDATION


class UnknownAnalysisLevel(BidsAffectError):
    """An analysis level other than ``participant`` or ``group``."""

    exit_code = EXIT_UNKNOWN_LEVEL


class NoDataSelected(BidsAffectError):
    """Participant labels or filters select no data."""

    exit_code = EXIT_NO_DATA


class UsageError(BidsAffectError, ValueError):
    """A command-line option, config key or parameter is invalid."""

    exit_code = EXIT_USAGE


class InputDataError(BidsAffectError, ValueError):
    """Input data exist but are invalid (shapes, NaNs, empty labels...)."""

    exit_code = EXIT_DATA_INVALID


class InputMissingError(BidsAffectError, FileNotFoundError):
    """An input file, folder or participant is missing."""

    exit_code = EXIT_INPUT_MISSING


class OutputError(BidsAffectError, OSError):
    """An output or work directory cannot be created or written."""

    exit_code = EXIT_CANNOT_CREATE


#: Every error class by name, so a traceback from a worker process can be mapped back.
ERRORS_BY_NAME = {
    cls.__name__: cls
    for cls in (BidsAffectError, BIDSValidationFailed, UnknownAnalysisLevel, NoDataSelected,
                UsageError, InputDataError, InputMissingError, OutputError)
}


_TRACEBACK_ERROR = re.compile(r"bids_affect\.exceptions\.(\w+): (.+)")


def error_from_traceback(text: str) -> BidsAffectError | None:
    """Rebuild the last bids_affect error named in a traceback's text, if any.

    Workflow steps run in worker processes and nipype keeps only their
    tracebacks; this recovers the error (and so its exit code) from them.

    Examples
    --------
    >>> error_from_traceback("...\\nbids_affect.exceptions.UsageError: bad flag").exit_code
    64
    """
    matches = [m for m in _TRACEBACK_ERROR.finditer(text) if m.group(1) in ERRORS_BY_NAME]
    if not matches:
        return None
    return ERRORS_BY_NAME[matches[-1].group(1)](matches[-1].group(2).strip())
