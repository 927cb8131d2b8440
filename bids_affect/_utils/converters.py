"""Converters of option values given as text (command line, or a TOML string).

Each takes the text and returns the value, raising
:class:`argparse.ArgumentTypeError` (argparse reports it against the flag;
:mod:`bids_affect.config` against the TOML key).

Examples
--------
>>> comma_list("ridge, cnn-neuro120fp svm")
['ridge', 'cnn-neuro120fp', 'svm']
>>> mem_mb("8G")
8192
>>> high_pass("none") is None
True
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path


def comma_list(text: str) -> list[str]:
    """``"a,b c"`` -> ``["a", "b", "c"]`` (comma or space separated)."""
    return [item for item in re.split(r"[,\s]+", text.strip()) if item]


def mem_mb(text: str) -> int:
    """Memory in MB from ``8000``, ``8000M``, ``8G``, ``8GB``, ``1.5T``."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)B?\s*", text.upper())
    if not match:
        raise argparse.ArgumentTypeError(f"cannot read memory {text!r}; use e.g. 8G or 8000M")
    factor = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024**2}[match.group(2)]
    return max(1, round(float(match.group(1)) * factor))


def name_path(text: str) -> tuple[str, Path]:
    """``NAME=PATH`` (or a bare PATH, named after its folder)."""
    if "=" in text:
        name, path = text.split("=", 1)
    else:
        name, path = Path(text).name, text
    if not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    return name, Path(path)


def positive_int(text: str) -> int:
    """An integer of 1 or more."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    """An integer of 0 or more."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def high_pass(text: str) -> float | None:
    """A positive cutoff in Hz, or None for ``none``, ``off`` or ``0``."""
    if text.lower() in ("none", "off", "0"):
        return None
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be a positive frequency in Hz, or 'none'")
    return value


def probability(text: str) -> float:
    """A number between 0 and 1."""
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def positive_float(text: str) -> float:
    """A finite number above 0."""
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number of 0 or more."""
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def int_at_least(minimum: int):
    """A converter of integers of ``minimum`` or more.

    Examples
    --------
    >>> int_at_least(2)("5")
    5
    """
    def convert(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer of {minimum} or more, "
                                             f"got {text}")
        return value

    convert.__name__ = f"int_at_least_{minimum}"
    return convert
