"""Freed memory kept for reuse (glibc malloc), so that every model pass does not fault its
buffers in again.

A forecast pass allocates and frees tens of megabytes of tensors. glibc's malloc hands blocks
above its mmap threshold back to the kernel when they are freed, and trims the top of the heap
once more than its trim threshold is free there, so the next pass page-faults the same amount in
again (zeroed pages: system time, on the model's thread). :func:`retain_freed_memory` raises both
thresholds: blocks up to 32 MB (glibc's largest mmap threshold) come from the heap, and the heap
is trimmed only past ``trim_threshold`` free bytes. The process then keeps its peak working set
(up to ``trim_threshold`` more) instead of returning it between passes.

Measured (docs/benchmarks.md "Freed memory kept"): `bench step --path batch` on the 2-core
machine, default config, batch 256: minor page faults 513-583 k -> 85-94 k per run, and 1.28-1.43x
the series refreshed per second. Elsewhere than glibc (musl, macOS) it does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import platform

__all__ = ["retain_freed_memory", "MMAP_THRESHOLD_MAX"]

_M_TRIM_THRESHOLD = -1      # glibc malloc.h
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 << 20
"""glibc's upper bound for M_MMAP_THRESHOLD on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX)."""

_applied: int | None = None


def retain_freed_memory(trim_threshold: int = 1 << 30) -> bool:
    """Keep freed blocks up to 32 MB and up to ``trim_threshold`` free bytes at the heap's top for
    reuse (glibc ``mallopt``). True where applied (or already applied with these settings);
    False where the C library is not glibc. Call it once, early, in a process that runs the model."""
    global _applied
    if not MMAP_THRESHOLD_MAX <= trim_threshold < 2**31:
        raise ValueError(f"trim_threshold must be in [{MMAP_THRESHOLD_MAX}, 2**31) bytes, got {trim_threshold}")
    if _applied == trim_threshold:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX) == 1 and mallopt(_M_TRIM_THRESHOLD, trim_threshold) == 1
    if ok:
        _applied = trim_threshold
    return ok
