"""Memory reuse for MLX's CPU backend where the C library is glibc (Linux): freed buffers of any size
are handed out again instead of coming back from the kernel as fresh pages.

Why: MLX's CPU allocator keeps freed buffers in a cache of 32 MB that hands a buffer out again only for
(nearly) the same size, and never evicts one to make room (mlx/backend/no_gpu/allocator.cpp,
mlx/backend/common/buffer_cache.h). Once it is full of the warm-up's sizes, every buffer of a new clip
length comes from glibc's malloc; glibc serves blocks of a few hundred kB and up with mmap, and
returns freed memory at the top of its heap to the kernel, so each call touches new pages (a page
fault each, zero-filled). Turning MLX's cache off and asking glibc to keep what it frees leaves one
pool that reuses any size: `benchmarks/memory_reuse.py` measures both (BENCHMARKS.md, "Memory reuse on
the CPU": a third less time on a mix of clip lengths, and a lower peak RSS).

Only glibc has mallopt; elsewhere (macOS, musl) nothing changes, and MLX keeps its cache. It is
applied only where MLX has no GPU: with Metal or CUDA, MLX allocates even the CPU's arrays through the
GPU's allocator, whose cache this must not turn off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import platform

# glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# Blocks up to this size come from the heap, where freed ones are reused: above the largest buffer of
# one graph (a 60 s clip's v2 spectrum is 25 MB), and glibc's own ceiling for it (HEAP_MAX_SIZE / 2).
MMAP_THRESHOLD_BYTES = 32 << 20
# Freed memory at the top of the heap is kept up to this much, not returned to the kernel after a call.
TRIM_THRESHOLD_BYTES = 256 << 20

log = logging.getLogger(__name__)


@functools.cache
def keep_freed_memory() -> bool:
    """Set glibc's thresholds above and MLX's CPU buffer cache to 0 (once per process). Returns whether
    they are set: False where the C library is not glibc, where MLX has a GPU, or where glibc refuses a value."""
    import mlx.core as mx

    if platform.libc_ver()[0] != "glibc" or mx.is_available(mx.gpu):
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
    accepted = (libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
                and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1)
    if not accepted:
        log.warning("glibc refused the malloc thresholds; MLX's CPU buffer cache stays as it is")
        return False
    mx.set_cache_limit(0)
    return True
