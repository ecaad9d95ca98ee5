"""Backend ``joblib``: row chunks over a persistent :class:`joblib.Parallel` worker pool.

Strategy: the rows ``0..N`` are split into ``chunks`` contiguous ranges; each range is one
``joblib.delayed`` task computing its rows against all N sources with the compiled serial row
kernel :func:`backends.numba_parallel.accel_block`, which returns its ``(rows, 3)`` block.

``prefer="processes"`` (default): joblib's loky backend, ``n_workers`` spawned worker
processes; arrays larger than :data:`MAX_NBYTES` reach the workers as read-only memory maps
in joblib's temporary folder (``/dev/shm`` where possible) instead of being pickled into
every task. With ``n_workers=1`` joblib runs the chunks in the calling process.
``prefer="threads"``: joblib's threading backend, ``n_workers`` threads of this process
sharing the arrays; ``accel_block`` is compiled with ``nogil=True``, so the threads run in
parallel. Memory: O(N) per worker for its block (processes: plus one mapped copy of the
inputs per call).

Lifetime: one ``Parallel`` object per ``prefer`` is kept open (entered as a context
manager) and reused across calls; a call with another ``n_workers`` replaces it, and so
does a call that finds a worker process gone. :func:`close`,
:class:`Session`, ``Backend.close()`` and interpreter exit (``atexit``) leave the context,
shut the loky workers down (loky's executor is process-wide: any other joblib user gets a
new one) and delete joblib's temporary memory maps. Calls are serialized by a module lock.

Failures: inputs are validated in the parent. A worker that raises, or dies, makes the call
raise ``RuntimeError`` (the cause chained); the pool is discarded and the next call starts a
new one.
"""

from __future__ import annotations

import atexit
import multiprocessing.connection
import threading
import time

import numpy as np

from backends._contract import evaluate, validate
from backends._pools import check_knobs, maybe_inject_fault, row_bounds, warm_worker

__all__ = ["MAX_NBYTES", "PREFER", "Session", "accel", "close", "start"]

NAME = "joblib"
PREFER = {"processes": "loky", "threads": "threading"}  #: ``prefer=`` -> joblib backend
MAX_NBYTES = "64K"  #: arrays above this size are memory-mapped, not pickled (joblib syntax)
START_TIMEOUT = 300.0  #: seconds for all workers to start and load the kernel

_lock = threading.RLock()
_runners: dict[str, _Runner] = {}  # prefer -> open pool: one of threads, one of processes


def _chunk(masses, positions, lo: int, hi: int, G: float, softening: float) -> np.ndarray:
    """Rows ``lo:hi`` of the accelerations (runs in a worker process or thread)."""
    from backends.numba_parallel import accel_block

    maybe_inject_fault()
    x = np.asarray(positions)  # a joblib memmap becomes a plain (read-only) ndarray view
    return accel_block(x[lo:hi], np.asarray(masses), x, G, softening)


class _Runner:
    """An entered ``joblib.Parallel`` for one ``(n_workers, prefer)``."""

    def __init__(self, n_workers: int, prefer: str):
        from joblib import Parallel

        self.key = (n_workers, prefer)
        self.parallel = Parallel(
            n_jobs=n_workers,
            backend=PREFER[prefer],
            batch_size=1,  # one task per chunk: the chunking is ours
            pre_dispatch="all",
            max_nbytes=MAX_NBYTES,
            mmap_mode="r",
        )
        self.parallel.__enter__()

    def run(self, m, x, G, softening, chunks) -> np.ndarray:
        from joblib import delayed

        bounds = row_bounds(m.shape[0], chunks)
        task = delayed(_chunk)
        blocks = self.parallel(task(m, x, lo, hi, G, softening) for lo, hi in bounds)
        return np.concatenate(blocks)

    def warm(self) -> tuple[int, ...]:
        """Run short warm-up tasks until every worker has answered (or a deadline passes)."""
        from joblib import delayed

        n_workers, prefer = self.key
        want = 1 if prefer == "threads" or n_workers == 1 else n_workers
        pids: set[int] = set()
        deadline = time.monotonic() + START_TIMEOUT
        while len(pids) < want:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(pids)} of {want} workers started")
            pids.update(self.parallel(delayed(warm_worker)(0.05) for _ in range(n_workers)))
        return tuple(sorted(pids))

    def healthy(self) -> bool:
        """Return False if the loky executor is broken or a worker has exited since."""
        executor = getattr(self.parallel._backend, "_workers", None)  # loky only
        if executor is None:
            return True
        if getattr(getattr(executor, "_flags", None), "broken", None) is not None:
            return False
        procs = list((getattr(executor, "_processes", None) or {}).values())
        # a worker's sentinel is ready once it has exited (loky restarts idle-timed-out
        # workers itself, but only a fresh executor recovers from a killed one)
        return not multiprocessing.connection.wait([p.sentinel for p in procs], 0)

    def shutdown(self) -> None:
        """Leave the ``Parallel`` context; stop the loky workers, delete temporary maps."""
        executor = getattr(self.parallel._backend, "_workers", None)  # loky only
        self.parallel.__exit__(None, None, None)
        if executor is not None:
            executor.terminate(kill_workers=True)


def _get_runner(n_workers: int, prefer: str) -> _Runner:
    runner = _runners.get(prefer)
    if runner is not None and (runner.key != (n_workers, prefer) or not runner.healthy()):
        _discard(prefer)
        runner = None
    if runner is None:
        runner = _runners[prefer] = _Runner(n_workers, prefer)
        # atexit runs handlers last-in first-out: re-registering now puts our clean-up before
        # the handlers joblib registered for this pool's temporary folder
        atexit.unregister(_close_at_exit)
        atexit.register(_close_at_exit)
    return runner


def _discard(prefer: str | None = None) -> None:
    """Shut down the pool for ``prefer`` (None: every pool)."""
    for key in list(_runners) if prefer is None else [prefer]:
        runner = _runners.pop(key, None)
        if runner is not None:
            runner.shutdown()


def _check_prefer(prefer) -> str:
    if prefer not in PREFER:
        raise ValueError(f"prefer must be one of {', '.join(map(repr, PREFER))}; got {prefer!r}")
    return prefer


def _run(m, x, G, softening, n_workers, chunks, prefer) -> np.ndarray:
    with _lock:
        runner = _get_runner(n_workers, prefer)
        try:
            return runner.run(m, x, G, softening, chunks)
        except Exception as exc:
            _discard(prefer)
            what = "died" if "Terminated" in type(exc).__name__ else "raised"
            raise RuntimeError(
                f"backend {NAME!r}: a worker {what} during the call ({type(exc).__name__}: "
                f"{exc}); the pool was shut down and the next call starts a new one"
            ) from exc
        except BaseException:  # KeyboardInterrupt and the like: leave nothing running
            _discard(prefer)
            raise


def start(*, n_workers=None, prefer="processes") -> tuple[int, ...]:
    """Open the pool now (if not open) and return once every worker has loaded the kernel.

    Returns the process ids of the workers that answered (threads: this process's id).
    """
    n_workers, _ = check_knobs(n_workers, None)
    prefer = _check_prefer(prefer)
    with _lock:
        runner = _get_runner(n_workers, prefer)
        try:
            return runner.warm()
        except Exception as exc:
            _discard(prefer)
            raise RuntimeError(f"backend {NAME!r}: the worker pool failed to start: {exc}") from exc


def close() -> None:
    """Close the pools, of processes and of threads (a no-op if none is open)."""
    with _lock:
        _discard()


def _close_at_exit() -> None:
    if _lock.acquire(timeout=10.0):  # a call stuck in another thread must not block exit
        try:
            _discard()
        finally:
            _lock.release()


def accel(
    masses, positions, G=1.0, *, softening=0.0, n_workers=None, chunks=None, prefer="processes"
) -> np.ndarray:
    """Gravitational accelerations, row chunks over a persistent joblib pool.

    Parameters
    ----------
    masses : (N,) array_like of real
    positions : (N, 3) array_like of real
    G : float, optional
        Gravitational constant.
    softening : float, optional
        Plummer softening length (>= 0).
    n_workers : int, optional
        Worker processes or threads; default the number of usable cores.
    chunks : int, optional
        Row chunks per call (tasks); default ``4 * n_workers``, at most N.
    prefer : {"processes", "threads"}, optional
        joblib's loky process backend (default) or its threading backend.

    Returns
    -------
    (N, 3) ndarray of float64

    Raises
    ------
    RuntimeError
        A worker raised or died during the call.
    """
    n_workers, chunks = check_knobs(n_workers, chunks)
    prefer = _check_prefer(prefer)
    inp = validate(masses, positions, G, softening)
    return evaluate(NAME, inp, _run, n_workers, chunks, prefer)


class Session:
    """Context manager owning the pool: opened on entry, closed on exit.

    >>> with Session(n_workers=2, prefer="threads") as s:  # doctest: +SKIP
    ...     a = s.accel(m, x)

    Parameters
    ----------
    n_workers, chunks, prefer : optional
        As in :func:`accel`, used by :meth:`accel`.
    """

    def __init__(self, *, n_workers=None, chunks=None, prefer="processes"):
        self.n_workers, self.chunks = check_knobs(n_workers, chunks)
        self.prefer = _check_prefer(prefer)

    def accel(self, masses, positions, G=1.0, *, softening=0.0) -> np.ndarray:
        """Accelerations with this session's knobs; see :func:`accel`."""
        return accel(
            masses,
            positions,
            G,
            softening=softening,
            n_workers=self.n_workers,
            chunks=self.chunks,
            prefer=self.prefer,
        )

    def __enter__(self) -> Session:
        start(n_workers=self.n_workers, prefer=self.prefer)
        return self

    def __exit__(self, *exc_info) -> None:
        close()
