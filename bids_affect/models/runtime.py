"""Where and how torch runs: the device, CPU threads, memory reuse, compilation.

Kept apart from the training loop (:mod:`bids_affect.models.training`) so that
every torch user (training, occlusion, feature extraction) shares one rule for
``--device`` and for threads.

Examples
--------
>>> resolve_device("cpu")
device(type='cpu')
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import threading
from collections.abc import Iterator

import torch
from torch import nn

from bids_affect._utils.validation import check_choice
from bids_affect.exceptions import UsageError

__all__ = ["DEVICES", "is_compile_error", "prepare_model", "resolve_device",
           "reuse_freed_memory", "torch_threads"]

#: Values of the ``device`` option.
DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device: str) -> torch.device:
    """The torch device of the ``device`` option.

    Parameters
    ----------
    device : {"auto", "cpu", "cuda"}
        "auto" takes the first CUDA GPU when torch sees one, else the CPU.

    Raises
    ------
    UsageError
        (exit 64) for "cuda" without a usable GPU, or any other value.

    Examples
    --------
    >>> resolve_device("cpu")
    device(type='cpu')
    """
    check_choice(device, "device", DEVICES)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("'cuda' was asked for, but torch sees no CUDA GPU on this machine",
                         path="device", fix="use 'auto' or 'cpu', or install a CUDA build "
                                            "of torch on a machine with a GPU")
    return torch.device(device)


@contextlib.contextmanager
def torch_threads(num_threads: int | None) -> Iterator[None]:
    """Run the block with ``num_threads`` CPU threads in torch, then restore the setting.

    Examples
    --------
    >>> before = torch.get_num_threads()
    >>> with torch_threads(1):
    ...     torch.get_num_threads()
    1
    >>> torch.get_num_threads() == before
    True
    """
    if num_threads is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(int(num_threads))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# glibc's mallopt parameters (malloc.h) and defaults.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_MALLOC_DEFAULTS = {_M_TRIM_THRESHOLD: ("MALLOC_TRIM_THRESHOLD_", 128 * 1024),
                    _M_MMAP_MAX: ("MALLOC_MMAP_MAX_", 65536)}
_MEMORY_LOCK = threading.Lock()
_memory_users = 0


def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


@contextlib.contextmanager
def reuse_freed_memory(enabled: bool = True) -> Iterator[bool]:
    """Keep freed memory in the process while the block runs (Linux with glibc).

    glibc serves blocks of more than 32 MB from ``mmap`` and unmaps them when
    they are freed, and it returns the top of its heap to the kernel; a CNN
    step allocates activations of hundreds of MB each, so every step
    page-faults gigabytes in again (half of the CPU time on 80x80x35 volumes).
    Inside the block, large blocks come from the heap and the heap is never
    trimmed; on exit the defaults are restored (or ``MALLOC_MMAP_MAX_`` and
    ``MALLOC_TRIM_THRESHOLD_`` when set) and free memory is returned to the
    kernel. Results do not change. Nested and concurrent uses are counted: the
    last one out restores. Elsewhere (other C libraries) it does nothing.

    Yields
    ------
    bool
        Whether the setting is in effect.

    Examples
    --------
    >>> with reuse_freed_memory() as active:
    ...     _ = torch.ones(1000).sum()
    """
    global _memory_users
    libc = _glibc() if enabled else None
    if libc is None:
        yield False
        return
    with _MEMORY_LOCK:
        _memory_users += 1
        if _memory_users == 1:
            libc.mallopt(_M_MMAP_MAX, 0)
            libc.mallopt(_M_TRIM_THRESHOLD, -1)  # -1 becomes SIZE_MAX: never trim
    try:
        yield True
    finally:
        with _MEMORY_LOCK:
            _memory_users -= 1
            if _memory_users == 0:
                for parameter, (variable, default) in _MALLOC_DEFAULTS.items():
                    value = os.environ.get(variable, "")
                    libc.mallopt(parameter, int(value) if value.isdigit() else default)
                libc.malloc_trim(0)


def prepare_model(model: nn.Module, device: torch.device, *, channels_last: bool = False,
                  compile: bool = False) -> nn.Module:
    """Move ``model`` to ``device`` (and memory format); return the module to train with.

    With ``compile`` the returned module is ``torch.compile(model)``, which
    shares ``model``'s parameters; evaluate and save ``model`` itself.

    Examples
    --------
    >>> net = nn.Linear(3, 2)
    >>> prepare_model(net, torch.device("cpu")) is net
    True
    """
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last_3d)
    if compile:
        # fallback_random: dropout draws from torch's generator, as in eager mode,
        # so the checkpointed generator state covers it (and the masks are eager's).
        # dynamic=False: one static graph per batch size (the full batches and
        # the last, smaller one), instead of a slower dynamic graph for both.
        return torch.compile(model, dynamic=False, options={"fallback_random": True})
    return model


def is_compile_error(error: BaseException) -> bool:
    """Whether ``error`` comes from torch.compile (dynamo or inductor), not from the model."""
    return type(error).__module__.startswith(("torch._dynamo", "torch._inductor"))
