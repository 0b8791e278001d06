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


def reuse_freed_memory():
    """Make glibc keep freed memory for reuse; returns whether it took effect (False off glibc or when disabled)."""
    if os.environ.get("FOCALNET_DET_MALLOC") == "default" or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def release_freed_memory():
    """Return the heap's free memory to the system now (``malloc_trim``), so that the resident set measures what is
    in use; returns whether it took effect (False off glibc)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return False
    malloc_trim(0)
    return True
