"""Host allocator settings that spare XLA's CPU runtime a page fault storm.

XLA's CPU runtime allocates each step's temporaries as one block (about
480 MB for the small stage-1 train step) and frees it when the step ends.
glibc serves a block that big with mmap and hands it back with munmap, so
every step page-faults the block in and the kernel zeroes it again: about
120k page faults per small stage-1 step on a 2-core machine. With one malloc
arena, no mmap and no trimming, glibc keeps the freed block and the next
step reuses it (no faults). That made the small stage-1 step about 13%
faster on CPU (bench/train_step.py, see README). GPU and TPU device memory
is not affected.
"""

from __future__ import annotations

import ctypes
import os
import sys

# Set to 0 to leave glibc's defaults in the main job and the CPU benchmark.
ENV_VAR = "DASHCLIP_KEEP_FREED_MEMORY"

# mallopt() parameters, from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
# Free memory at the top of the heap is given back to the OS only above
# this (the largest value mallopt's int takes).
_TRIM_THRESHOLD_BYTES = 2**31 - 1


def reuse_freed_memory() -> bool:
  """Makes glibc keep freed memory for reuse rather than unmap it.

  Sets one arena for all threads (XLA's threads would otherwise use arenas
  whose heaps are capped at 64 MB and so mmap big blocks anyway), no mmap,
  and trimming only above 2 GiB of free memory. Process-wide and one-way.
  Call it before numpy, jax or torch is imported: threads they start keep
  the arena they were given on their first malloc. The cost is that the
  heap does not shrink back after a peak.

  Returns:
    True if set; False where the C library is not glibc.
  """
  if not sys.platform.startswith("linux"):
    return False
  libc = ctypes.CDLL(None)
  if not hasattr(libc, "gnu_get_libc_version"):  # musl and others.
    return False
  mallopt = libc.mallopt
  mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
  return all(mallopt(param, value) == 1 for param, value in (
      (_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0),
      (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES)))


def reuse_freed_memory_unless_disabled() -> bool:
  """reuse_freed_memory() unless $DASHCLIP_KEEP_FREED_MEMORY is 0.

  For entry points: call it before numpy, jax or torch is imported, since
  threads those start keep malloc arenas of their own.
  """
  if os.environ.get(ENV_VAR, "1") == "0":
    return False
  return reuse_freed_memory()
