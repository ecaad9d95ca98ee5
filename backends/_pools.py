"""Shared helpers of the process-pool backends (``multiprocessing``, ``joblib``).

Knob validation, the default worker count and the row decomposition. Imports numpy only.
"""

from __future__ import annotations

import os
import time

import numpy as np

#: A private test hook, never set by the package itself: when this environment variable (as
#: the worker process inherited it) names a file that exists, every chunk computed by a pool
#: worker raises ``ValueError``. The tests use it to raise a real exception in a real worker
#: process, and delete the file to let the same pool work again.
FAULT_ENV = "NBODY_BACKENDS_TEST_FAULT_FILE"

#: Default number of chunks per worker: a little dynamic load balancing on a shared machine.
CHUNKS_PER_WORKER = 4


def usable_cores() -> int:
    """Return the number of CPU cores this process may run on (its affinity mask)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}")
    return int(value)


def check_knobs(n_workers, chunks) -> tuple[int, int]:
    """Validate and resolve the ``n_workers=`` and ``chunks=`` knobs.

    Parameters
    ----------
    n_workers : int or None
        Worker processes (or threads); None: :func:`usable_cores`.
    chunks : int or None
        Row chunks per call; None: ``CHUNKS_PER_WORKER * n_workers``.

    Returns
    -------
    (int, int)
        ``(n_workers, chunks)``.

    Raises
    ------
    ValueError
        A knob that is not a positive integer (the message names it).
    """
    n_workers = usable_cores() if n_workers is None else _positive_int(n_workers, "n_workers")
    chunks = CHUNKS_PER_WORKER * n_workers if chunks is None else _positive_int(chunks, "chunks")
    return n_workers, chunks


def row_bounds(n: int, chunks: int) -> list[tuple[int, int]]:
    """Split rows ``0..n`` into ``min(chunks, n)`` contiguous, non-empty, near-equal ranges.

    Returns
    -------
    list of (int, int)
        ``(lo, hi)`` half-open row ranges covering ``0..n`` in order.
    """
    k = max(1, min(chunks, n))
    edges = [i * n // k for i in range(k + 1)]
    return list(zip(edges[:-1], edges[1:], strict=True))


def maybe_inject_fault() -> None:
    """Raise in a worker if the private test hook :data:`FAULT_ENV` asks for it."""
    path = os.environ.get(FAULT_ENV)
    if path and os.path.exists(path):
        raise ValueError(f"fault injected in worker pid {os.getpid()} by the test hook {FAULT_ENV}")


def warm_kernel(readonly: bool = False) -> None:
    """Load the row kernel in this process: compile it, or read it from Numba's disk cache.

    With ``readonly``, the signature for read-only arrays is loaded too (joblib hands its
    workers read-only memory maps).
    """
    from backends.numba_parallel import accel_block

    m = np.ones(2)
    x = np.zeros((2, 3))
    x[1, 0] = 1.0
    accel_block(x, m, x, 1.0, 0.0)
    if readonly:
        m.setflags(write=False)
        x.setflags(write=False)
        accel_block(x, m, x, 1.0, 0.0)


def warm_worker(pause: float) -> int:
    """Warm the kernel (both signatures), hold this worker ``pause`` seconds, return its pid."""
    warm_kernel(readonly=True)
    time.sleep(pause)
    return os.getpid()
