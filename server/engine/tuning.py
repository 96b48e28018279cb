"""Process settings for inference on the CPU: thread pools and the memory allocator.

Measured on 2 cores (benchmarks/README.md): numpy/scipy's BLAS threads competing with torch's nearly double a
run's time, and glibc returning freed blocks to the kernel after every forward pass costs millions of page faults
(SevenNet-0, 16 structures one by one: 4.7 s with glibc's defaults, 3.6 s with the settings below).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

import torch
from threadpoolctl import threadpool_limits

log = logging.getLogger(__name__)

# mallopt parameters, from glibc's malloc.h
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


def configure_threads(torch_threads: int | None = None) -> None:
    """Give torch the cores and keep numpy/scipy's BLAS to one thread, so the two pools do not compete."""
    torch.set_num_threads(torch_threads or len(os.sched_getaffinity(0)))
    threadpool_limits(limits=1, user_api="blas")


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory for reuse instead of unmapping it; False where glibc is not in use.

    Forward and backward passes allocate and free the same large tensors every batch; by default glibc serves
    blocks over 128 KiB-32 MiB with fresh mmaps and trims the heap, so each batch faults its memory in again.
    """
    path = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(path)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, 1 << 30) and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) and mallopt(_M_TOP_PAD, 1 << 28)
    if not ok:
        log.warning("mallopt refused the allocator settings; running with glibc's defaults")
    return bool(ok)


def tune_process(torch_threads: int | None = None) -> None:
    """Apply the thread and allocator settings above; call once in every inference process or thread."""
    configure_threads(torch_threads)
    keep_freed_memory()
