"""One query's independent matching work (photo pairs, descriptor searches) spread over the process's threads.

OpenCV and numpy's BLAS release the GIL, so a query's pairs and its LNBNN search run on every core the
process was given; each part's results are computed exactly as alone and returned in order.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import cv2
import numpy as np

Item = TypeVar("Item")
Result = TypeVar("Result")
_controller = None  # threadpoolctl's view of the loaded BLAS, made once (its scan costs ~0.4 ms)
# BLAS's thread count is one per process: the catalogue matches concurrent queries, so the limit is held
# while any query needs it and lifted by the last (a limit each would restore out of order and leave
# BLAS at one thread for good)
_limit_lock = threading.Lock()
_limit_holders = 0
_limiter = None


def in_parts(
    function: Callable[[Sequence[Item]], list[Result]], items: Sequence[Item], parts: int
) -> list[Result]:
    """function over `parts` consecutive slices of `items`, one thread each, its results joined in order."""
    parts = max(1, min(parts, len(items)))
    if parts == 1:
        return function(items)
    bounds = np.linspace(0, len(items), parts + 1).round().astype(int)
    with ThreadPoolExecutor(parts) as pool:
        found = pool.map(function, [items[a:b] for a, b in itertools.pairwise(bounds)])
        return [result for part in found for result in part]


def opencv_threads() -> int:
    """The threads OpenCV may use (cv2.setNumThreads; every core by default)."""
    return max(1, cv2.getNumThreads())


def blas_threads() -> int:
    """The threads numpy's BLAS may use (OPENBLAS_NUM_THREADS; every core by default)."""
    return max([1, *(pool["num_threads"] for pool in _blas().info() if pool["user_api"] == "blas")])


@contextlib.contextmanager
def one_blas_thread_each(parts: int) -> Iterator[None]:
    """While `parts` threads each multiply (parts > 1), BLAS runs each product on its caller's thread:
    its own threads would wait on each other's cores (measured: several times slower on a loaded machine)."""
    if parts <= 1:
        yield
        return
    global _limit_holders, _limiter
    with _limit_lock:
        if _limit_holders == 0:
            _limiter = _blas().limit(limits=1, user_api="blas")
        _limit_holders += 1
    try:
        yield
    finally:
        with _limit_lock:
            _limit_holders -= 1
            if _limit_holders == 0:
                _limiter.restore_original_limits()
                _limiter = None


def _blas():
    global _controller
    if _controller is None:
        from threadpoolctl import ThreadpoolController

        _controller = ThreadpoolController()
    return _controller
