"""Keep large freed CPU buffers for reuse (glibc malloc), so a forward pass does not page-fault them anew.

glibc serves allocations above its mmap threshold (at most 32 MB) with fresh ``mmap`` pages and unmaps them on
free, so every large activation of every forward pass is page-faulted and zeroed by the kernel again. For
FocalNet-T on 2 cores this made time per megapixel grow with the input (820 ms/MP at 512x512, 1500 at
2048x2048); served from a heap that is never trimmed, it stays flat (820 / 840 / 900). The price: the process
keeps its peak memory. The tools call ``reuse_freed_memory()`` at start; set ``FOCALNET_DET_MALLOC=default``
to keep glibc's policy.
"""
import ctypes
import os
import sys

__all__ = ["reuse_freed_memory", "release_freed_memory"]

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # mallopt parameters (malloc.h)


def _glibc(function):
    """A glibc malloc function, or None off glibc (not Linux, or another C library such as musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return getattr(ctypes.CDLL("libc.so.6"), function)
    except (OSError, AttributeError):
        return None


def reuse_freed_memory():
    """Make glibc keep freed memory for reuse; returns whether it took effect (False off glibc or when disabled)."""
    mallopt = _glibc("mallopt")
    if mallopt is None or os.environ.get("FOCALNET_DET_MALLOC") == "default":
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def release_freed_memory():
    """Return the heap's free memory to the system now (``malloc_trim``), so that the resident set measures what is
    in use; returns whether it took effect (False off glibc)."""
    malloc_trim = _glibc("malloc_trim")
    if malloc_trim is not None:
        malloc_trim(0)
    return malloc_trim is not None
