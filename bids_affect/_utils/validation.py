"""Shared checks of parameter values; each message names the parameter.

Library functions call these at their top (scikit-learn's ``check_*`` habit).
A failed check raises :class:`~bids_affect.exceptions.UsageError` (exit 64)
whose message starts with the parameter's name, the allowed values and the
value received; the command line maps parameter names to its flags
(:func:`bids_affect.cli.parser.flag_of_parameter`), so users read
``--cv-folds`` where a notebook user reads ``n_splits``.

Examples
--------
>>> check_choice("loro", "cv", ("auto", "loro", "blocked"))
'loro'
>>> check_choice("random", "cv", ("auto", "loro", "blocked"))
Traceback (most recent call last):
...
bids_affect.exceptions.UsageError: cv: must be one of 'auto', 'loro', 'blocked', got 'random'
>>> check_int(0, "n_splits", minimum=2)
Traceback (most recent call last):
...
bids_affect.exceptions.UsageError: n_splits: must be an integer >= 2, got 0
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from bids_affect.exceptions import InputMissingError, UsageError

Choice = TypeVar("Choice")


def check_choice(value: Choice, name: str, choices: Iterable[Any], fix: str | None = None
                 ) -> Choice:
    """``value`` if it is one of ``choices`` (compared by identity for non-strings).

    ``True``/``False``/``None`` choices match only themselves, so ``1`` is not
    taken for ``True``.
    """
    choices = list(choices)
    if not any(value is choice or (isinstance(value, str) and value == choice)
               for choice in choices):
        raise UsageError(f"must be one of {', '.join(map(repr, choices))}, got {value!r}",
                         path=name, fix=fix)
    return value


def check_int(value: Any, name: str, minimum: int | None = None, fix: str | None = None
              ) -> int:
    """``value`` as an int if it is an integer (not a bool) ``>= minimum``."""
    if (isinstance(value, bool) or not isinstance(value, int | np.integer)
            or (minimum is not None and value < minimum)):
        bound = f" >= {minimum}" if minimum is not None else ""
        raise UsageError(f"must be an integer{bound}, got {value!r}", path=name, fix=fix)
    return int(value)


def check_number(value: Any, name: str, *, positive: bool = False, minimum: float | None = None,
                 fix: str | None = None) -> float:
    """``value`` as a float if it is a finite number (``> 0`` when ``positive``)."""
    ok = (isinstance(value, int | float | np.integer | np.floating)
          and not isinstance(value, bool) and math.isfinite(value)
          and (not positive or value > 0) and (minimum is None or value >= minimum))
    if not ok:
        bound = " > 0" if positive else f" >= {minimum}" if minimum is not None else ""
        raise UsageError(f"must be a finite number{bound}, got {value!r}", path=name, fix=fix)
    return float(value)


def check_probability(value: Any, name: str) -> float:
    """``value`` as a float if it lies in ``[0, 1]``."""
    value = check_number(value, name)
    if not 0.0 <= value <= 1.0:
        raise UsageError(f"must be between 0 and 1, got {value!r}", path=name)
    return value


def check_file(path: str | os.PathLike, name: str, what: str = "file") -> Path:
    """``path`` if it is an existing file; :class:`InputMissingError` (66) otherwise."""
    path = Path(path)
    if not path.is_file():
        problem = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise InputMissingError(f"{name}: the {what} {problem}", path=path,
                                fix=f"give the path of an existing {what}")
    return path
