"""Plug-ins from entry points: what the architecture and image-network registries share."""

from __future__ import annotations

import importlib.metadata
import logging
import types
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from bids_affect.exceptions import UsageError


def iter_plugins(group: str, what: str, logger: logging.Logger
                 ) -> Iterator[tuple[importlib.metadata.EntryPoint, Any]]:
    """The loaded objects of an entry-point group, except modules.

    A module registered its entries when imported; a plug-in that fails to
    import is skipped with a warning (a broken plug-in must not break the app).

    Examples
    --------
    >>> list(iter_plugins("bids_affect.no_such_group", "thing", logging.getLogger()))
    []
    """
    for entry_point in importlib.metadata.entry_points(group=group):
        try:
            loaded = entry_point.load()
        except Exception as err:
            logger.warning("%s plug-in %r (%s) failed to load and is skipped: %s: %s", what,
                           entry_point.name, entry_point.value, type(err).__name__, err)
            continue
        if not isinstance(loaded, types.ModuleType):
            yield entry_point, loaded


def name_is_free(registry: Mapping[str, Any], entry_point: importlib.metadata.EntryPoint,
                 factory: Callable, what: str) -> bool:
    """Whether ``entry_point.name`` can be registered for ``factory``.

    False when ``factory`` holds it already (registered twice); a name held by
    another factory raises :class:`UsageError`.
    """
    registered = registry.get(entry_point.name)
    if registered is None:
        return True
    if registered.factory is factory:
        return False
    raise UsageError(f"{what} plug-in {entry_point.name!r} ({entry_point.value}) takes a name "
                     "that is already registered",
                     fix="rename the entry point, or uninstall one of the packages")
