"""build-tfrecords image worker processes: a spawn pool whose workers exit when the build process dies."""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor

# Imported by every spawned worker (the pool's initializer lives here): no TensorFlow, nothing heavy.

PARENT_POLL_S = 0.5  # how often a worker checks that the build process is still there
# glibc mallopt parameters, and the values a worker sets (see keep_freed_memory)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_TRIM_THRESHOLD, _MMAP_THRESHOLD = 256 << 20, 32 << 20

logger = logging.getLogger(__name__)


def _parent_gone(parent_pid: int) -> bool:
    """The worker was re-parented (to init or a subreaper): the process that spawned it has died."""
    return os.getppid() != parent_pid


def _watch_parent(parent_pid: int, poll_s: float) -> None:
    while not _parent_gone(parent_pid):
        time.sleep(poll_s)
    # Nothing the worker holds needs cleaning up (results only go back through the dead parent's queue);
    # os._exit, because the main thread may be busy decoding a photo or blocked on that queue.
    os._exit(1)


def start_watchdog(parent_pid: int, poll_s: float = PARENT_POLL_S) -> None:
    """Pool initializer: a daemon thread that ends this worker soon after a kill -9 of its parent.

    ProcessPoolExecutor's workers otherwise wait on their call queue forever: each holds both ends of
    that pipe, so the parent's death never reaches them as end-of-file.
    """
    threading.Thread(target=_watch_parent, args=(parent_pid, poll_s), daemon=True).start()


def keep_freed_memory() -> bool:
    """glibc only: keep freed heap memory for the next photo instead of handing it back to the kernel.

    Each photo allocates and frees some 10 MB (file bytes, decoded window, resize buffers). With glibc's
    defaults, freed memory at the top of the heap (and large blocks, which get their own mappings) goes
    back to the kernel, and the next photo faults the same pages back in, zeroed, at about 2 us a page:
    measured on the build benchmark's photos, 160-300 page faults a photo in a build worker (1,300 in a
    plain loop over them) against 70 with this. Above 32 MB (a huge photo) allocations are still mapped
    and unmapped on their own. False where mallopt is not there (not glibc).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    settings = ((_M_MMAP_THRESHOLD, _MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
    done = all(mallopt(option, value) == 1 for option, value in settings)
    if not done:
        logger.debug("mallopt refused: freed memory goes back to the kernel after each photo")
    return done


def init_worker(parent_pid: int) -> None:
    """Pool initializer: the parent watchdog, and the allocator told to keep memory between photos."""
    start_watchdog(parent_pid)
    keep_freed_memory()


def spawn_pool(workers: int) -> ProcessPoolExecutor:
    """Worker processes that never fork TensorFlow (the parent has it loaded) and never outlive it."""
    return ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=init_worker,
        initargs=(os.getpid(),),
    )
