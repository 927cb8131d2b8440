"""Helpers shared by the tests (plain functions; fixtures live in conftest.py)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path


def file_hashes(root: Path, keep: Callable[[Path], bool] = lambda path: True
                ) -> dict[str, str]:
    """SHA-256 of every file under ``root`` that ``keep`` accepts, by relative path."""
    root = Path(root)
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file() and keep(path)}


def tree_digest(root: Path) -> str:
    """One hash of every path (folders included) and file content under ``root``."""
    root = Path(root)
    folders = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_dir())
    return hashlib.sha256(repr((folders, file_hashes(root))).encode()).hexdigest()
