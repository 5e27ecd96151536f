"""build-tfrecords image worker processes: a spawn pool whose workers exit when the build process dies."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor

# Imported by every spawned worker (the pool's initializer lives here): no TensorFlow, nothing heavy.

PARENT_POLL_S = 0.5  # how often a worker checks that the build process is still there


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


def spawn_pool(workers: int) -> ProcessPoolExecutor:
    """Worker processes that never fork TensorFlow (the parent has it loaded) and never outlive it."""
    return ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=start_watchdog,
        initargs=(os.getpid(),),
    )
