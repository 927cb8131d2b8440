"""Shared parameter documentation: each parameter is described once per module.

Examples
--------
>>> fill_doc = doc_filler({"seed": "seed : int\\n        The seed."})
>>> @fill_doc
... def f(seed):
...     '''Parameters
...     ----------
...     %(seed)s
...     '''
>>> "The seed." in f.__doc__
True
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TypeVar

Documented = TypeVar("Documented", bound=Callable)


def doc_filler(docdict: Mapping[str, str]) -> Callable[[Documented], Documented]:
    """A decorator pasting ``docdict[key]`` wherever a docstring says ``%(key)s``."""
    def fill_doc(function: Documented) -> Documented:
        doc = function.__doc__ or ""
        for key, text in docdict.items():
            doc = doc.replace(f"%({key})s", text)
        function.__doc__ = doc
        return function
    return fill_doc
