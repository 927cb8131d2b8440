"""Small helpers the sections share: grouping outputs by task and naming them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from bids_affect.io.derivatives import FoundOutput

#: Entities that identify one acquisition (a block of a report).
BLOCK_ENTITIES = ("session", "task")


def block_key(entities: Mapping[str, str]) -> tuple[str, str]:
    """``(session, task)`` of an output ("" when absent), for grouping and sorting.

    Examples
    --------
    >>> block_key({"subject": "01", "task": "movie"})
    ('', 'movie')
    """
    return entities.get("session", ""), entities.get("task", "")


def block_entities(key: tuple[str, str]) -> dict[str, str | None]:
    """Entities of a block key, ``None`` for an absent session (for output_path).

    Examples
    --------
    >>> block_entities(("", "movie"))
    {'session': None, 'task': 'movie'}
    """
    return {name: value or None for name, value in zip(BLOCK_ENTITIES, key)}


def block_title(key: tuple[str, str]) -> str:
    """How a block is named in headings: ``task-movie`` or ``ses-1 task-movie``.

    Examples
    --------
    >>> block_title(("1", "movie"))
    'ses-1 task-movie'
    """
    session, task = key
    return " ".join(part for part in (f"ses-{session}" if session else "",
                                      f"task-{task}" if task else "") if part)


def anchor(*parts: str) -> str:
    """An HTML id from name parts (alphanumerics and dashes).

    Examples
    --------
    >>> anchor("decoding", "movie", "cnn-deepemotion")
    'decoding-movie-cnn-deepemotion'
    """
    return "-".join("".join(ch if ch.isalnum() else "-" for ch in part) for part in parts
                    if part)


def run_sort_key(item: FoundOutput) -> tuple[int, str]:
    """Order runs numerically (run-2 before run-10)."""
    run = item.entities.get("run", "")
    return (int(run), run) if run.isdigit() else (10**9, run)


def by_block(items: Iterable[FoundOutput]) -> dict[tuple[str, str], list[FoundOutput]]:
    """Outputs grouped by :func:`block_key`, blocks in sorted order."""
    grouped: dict[tuple[str, str], list[FoundOutput]] = {}
    for item in items:
        grouped.setdefault(block_key(item.entities), []).append(item)
    return dict(sorted(grouped.items()))
