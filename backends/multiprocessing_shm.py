"""Backend ``multiprocessing``: row chunks over a persistent spawn-context process pool.

Strategy: the rows ``0..N`` are split into ``chunks`` contiguous ranges; each range is one
task for a :class:`concurrent.futures.ProcessPoolExecutor` of ``n_workers`` processes started
with the ``spawn`` method (safe after Numba or JAX threads exist in the parent). A task
computes its rows against all N sources with the compiled serial row kernel
:func:`backends.numba_parallel.accel_block` and returns its ``(rows, 3)`` block.

Data path: the parent copies ``masses`` and ``positions`` into one
:mod:`multiprocessing.shared_memory` segment (``[m (N) | x (N, 3)]`` float64), reused across
calls and grown (doubling) when N outgrows it; workers attach to it by name and keep the
mapping. Only the segment name, row range and scalars travel through the task queue; results
come back as small arrays. Memory: 32 N bytes shared, plus O(N) per worker for its block.

Lifetime: the pool and the segment are created on first use and reused; a call with a
different ``n_workers`` replaces the pool, and so does a call that finds a worker gone.
:func:`close`, :class:`Session` (a context manager), ``Backend.close()`` and interpreter
exit (``atexit``) shut the workers down and unlink the segment. Calls are serialized by a
module lock (one pool, one segment).

Failures: inputs are validated in the parent. A worker that raises makes the call raise
``RuntimeError`` (the worker's exception and traceback chained) once the chunks already
running have finished; the pool stays usable. A worker that dies (killed, crashed) breaks
the pool at once: the call raises ``RuntimeError`` within moments, the pool is discarded and
the next call builds a new one.
"""

from __future__ import annotations

import atexit
import itertools
import multiprocessing
import multiprocessing.connection
import os
import threading
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import shared_memory

import numpy as np

from backends._contract import evaluate, validate
from backends._pools import check_knobs, maybe_inject_fault, row_bounds, warm_kernel

__all__ = ["Session", "accel", "close", "start"]

NAME = "multiprocessing"
SEGMENT_PREFIX = "nbody-mp-"  #: /dev/shm names of this backend's segments start with this
START_TIMEOUT = 300.0  #: seconds for all workers to start and load the kernel

_lock = threading.RLock()
_pool: _Pool | None = None
_names = itertools.count()

# ---------------------------------------------------------------------------------------------
# worker side (runs in the spawned children)

_barrier = None
_segment: shared_memory.SharedMemory | None = None


def _init_worker(barrier) -> None:
    """Keep the start-up barrier and load (compile or read from cache) the row kernel."""
    global _barrier
    _barrier = barrier
    warm_kernel()


def _ready(timeout: float) -> int:
    """Wait until every worker is up (one task per worker), return this worker's pid."""
    _barrier.wait(timeout)
    return os.getpid()


def _attach(name: str) -> shared_memory.SharedMemory:
    global _segment
    if _segment is None or _segment.name != name:
        if _segment is not None:
            _segment.close()
            _segment = None
        _segment = shared_memory.SharedMemory(name=name)
    return _segment


def _chunk(name: str, n: int, lo: int, hi: int, G: float, softening: float) -> np.ndarray:
    """Rows ``lo:hi`` of the accelerations of the N particles held in segment ``name``."""
    from backends.numba_parallel import accel_block

    maybe_inject_fault()
    buf = _attach(name).buf
    m = np.ndarray((n,), np.float64, buf)
    x = np.ndarray((n, 3), np.float64, buf, offset=8 * n)
    return accel_block(x[lo:hi], m, x, G, softening)


# ---------------------------------------------------------------------------------------------
# parent side


class _Pool:
    """One executor of ``n_workers`` warm spawn-context processes and one shared segment."""

    def __init__(self, n_workers: int):
        ctx = multiprocessing.get_context("spawn")
        self.n_workers = n_workers
        self.segment: shared_memory.SharedMemory | None = None
        self.executor = ProcessPoolExecutor(
            n_workers, mp_context=ctx, initializer=_init_worker, initargs=(ctx.Barrier(n_workers),)
        )
        # spawn every worker now (one task each, held at a barrier) so that calls find them warm
        try:
            futures = [self.executor.submit(_ready, START_TIMEOUT) for _ in range(n_workers)]
            self.pids = tuple(f.result(timeout=START_TIMEOUT + 10) for f in futures)
        except Exception as exc:
            self.shutdown(kill=True)
            raise RuntimeError(
                f"backend {NAME!r}: the worker pool failed to start ({exc}); spawned workers "
                "import the main module, so scripts need the `if __name__ == '__main__':` guard"
            ) from exc
        except BaseException:
            self.shutdown(kill=True)
            raise

    def load(self, m: np.ndarray, x: np.ndarray) -> str:
        """Copy the particles into the shared segment (grown if needed); return its name."""
        n = m.shape[0]
        need = 32 * n
        if self.segment is None or self.segment.size < need:
            old = 0 if self.segment is None else self.segment.size
            self._unlink()
            name = f"{SEGMENT_PREFIX}{os.getpid()}-{next(_names)}"
            size = max(need, 2 * old, 1 << 16)
            self.segment = shared_memory.SharedMemory(name=name, create=True, size=size)
        flat = np.ndarray((4 * n,), np.float64, self.segment.buf)
        flat[:n] = m
        flat[n:] = x.reshape(-1)
        del flat  # no view may outlive the call, or the segment could not be closed
        return self.segment.name

    def _unlink(self) -> None:
        if self.segment is not None:
            self.segment.close()
            self.segment.unlink()
            self.segment = None

    def healthy(self) -> bool:
        """Return False if a worker has exited since the last call (killed while idle, say)."""
        procs = getattr(self.executor, "_processes", None) or {}
        if getattr(self.executor, "_broken", False) or len(procs) != self.n_workers:
            return False
        # a worker's sentinel is ready once it has exited, reaped or not
        return not multiprocessing.connection.wait([p.sentinel for p in procs.values()], 0)

    def shutdown(self, kill: bool = False) -> None:
        """Stop the workers (``kill``: terminate them first) and unlink the segment."""
        if kill:
            for proc in list((getattr(self.executor, "_processes", None) or {}).values()):
                proc.kill()
        self.executor.shutdown(wait=True, cancel_futures=True)
        self._unlink()


def _get_pool(n_workers: int) -> _Pool:
    global _pool
    if _pool is not None and (_pool.n_workers != n_workers or not _pool.healthy()):
        _discard(kill=True)
    if _pool is None:
        _pool = _Pool(n_workers)
    return _pool


def _discard(kill: bool = False) -> None:
    global _pool
    pool, _pool = _pool, None
    if pool is not None:
        pool.shutdown(kill=kill)


def _run(m, x, G, softening, n_workers, chunks) -> np.ndarray:
    n = m.shape[0]
    with _lock:
        pool = _get_pool(n_workers)
        name = pool.load(m, x)
        bounds = row_bounds(n, chunks)
        futures = []
        try:
            futures = [
                pool.executor.submit(_chunk, name, n, lo, hi, G, softening) for lo, hi in bounds
            ]
            wait(futures, return_when=FIRST_EXCEPTION)
            out = np.empty((n, 3))
            for (lo, hi), fut in zip(bounds, futures, strict=True):
                out[lo:hi] = fut.result()
            return out
        except BrokenProcessPool as exc:
            _discard(kill=True)
            raise RuntimeError(
                f"backend {NAME!r}: a worker process died during the call (killed or crashed); "
                "the pool was shut down and the next call starts a new one"
            ) from exc
        except Exception as exc:
            for fut in futures:
                fut.cancel()
            wait(futures)  # chunks already running finish; none may outlive the call
            raise RuntimeError(
                f"backend {NAME!r}: a worker raised {type(exc).__name__}: {exc}"
            ) from exc
        except BaseException:  # KeyboardInterrupt and the like: stop everything now
            _discard(kill=True)
            raise


def start(*, n_workers=None) -> tuple[int, ...]:
    """Start the worker pool now (if not running) and return the workers' process ids.

    Every worker has loaded the row kernel when this returns, so the next call pays no
    start-up cost. ``n_workers`` as in :func:`accel`.
    """
    n_workers, _ = check_knobs(n_workers, None)
    with _lock:
        return _get_pool(n_workers).pids


def close() -> None:
    """Shut the worker pool down and unlink the shared segment (a no-op if none is open)."""
    with _lock:
        _discard()


@atexit.register
def _close_at_exit() -> None:
    if _lock.acquire(timeout=10.0):  # a call stuck in another thread must not block exit
        try:
            _discard(kill=True)
        finally:
            _lock.release()


def accel(masses, positions, G=1.0, *, softening=0.0, n_workers=None, chunks=None) -> np.ndarray:
    """Gravitational accelerations, row chunks over a persistent pool of worker processes.

    Parameters
    ----------
    masses : (N,) array_like of real
    positions : (N, 3) array_like of real
    G : float, optional
        Gravitational constant.
    softening : float, optional
        Plummer softening length (>= 0).
    n_workers : int, optional
        Worker processes; default the number of usable cores. A value different from the
        running pool's replaces the pool.
    chunks : int, optional
        Row chunks per call (tasks); default ``4 * n_workers``, at most N.

    Returns
    -------
    (N, 3) ndarray of float64

    Raises
    ------
    RuntimeError
        A worker raised or died during the call.
    """
    n_workers, chunks = check_knobs(n_workers, chunks)
    inp = validate(masses, positions, G, softening)
    return evaluate(NAME, inp, _run, n_workers, chunks)


class Session:
    """Context manager owning the pool: started on entry, closed on exit.

    >>> with Session(n_workers=2) as s:  # doctest: +SKIP
    ...     a = s.accel(m, x)

    Parameters
    ----------
    n_workers, chunks : int, optional
        As in :func:`accel`, used by :meth:`accel`.
    """

    def __init__(self, *, n_workers=None, chunks=None):
        self.n_workers, self.chunks = check_knobs(n_workers, chunks)

    def accel(self, masses, positions, G=1.0, *, softening=0.0) -> np.ndarray:
        """Accelerations with this session's knobs; see :func:`accel`."""
        return accel(
            masses, positions, G, softening=softening, n_workers=self.n_workers, chunks=self.chunks
        )

    def __enter__(self) -> Session:
        self.pids = start(n_workers=self.n_workers)
        return self

    def __exit__(self, *exc_info) -> None:
        close()
