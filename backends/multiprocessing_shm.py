"""Backend ``multiprocessing``: the pair triangle over a persistent spawn-context process pool.

Strategy: each pair is computed once (Newton's third law). The parent makes the scaled
``(4, N)`` copy of the particles (:func:`backends.numba_parallel._prepare`) in one
:mod:`multiprocessing.shared_memory` segment; the pair triangle is cut into ``chunks``
*lanes* of equal pair counts (:mod:`backends._pools`: lane ``c`` owns the rows of row blocks
``c`` and ``2 chunks - 1 - c``). A :class:`concurrent.futures.ProcessPoolExecutor` of
``n_workers`` processes started with the ``spawn`` method (safe after Numba or JAX threads
exist in the parent) gets one task per worker; each task takes lane numbers from a shared
counter (:func:`_lanes`) until none is left and runs each lane's block pairs with
:func:`backends._pair_kernel.pair_blocks` into the lane's own ``(3, N)`` accumulator in the
segment. The parent sums the lanes in lane order and multiplies by ``G s**2``. Lanes go
to whichever worker is free (a worker slowed by another program takes fewer), and a call
costs one round trip per worker, not per lane; yet the sum does not depend on which worker
ran a lane: the result is the same bit for bit for a given ``chunks`` (default
``n_workers``). Rows whose sum is not finite (a pair closer than about 1e-18 of the
system's extent makes its two rows so) are summed again on the exact path, and every row
is if the extent is extreme: pieces of those rows (at most ``chunks``) on the
non-symmetric row kernel :func:`backends.numba_parallel.accel_block`, each returned as a
small array.

Data path: only the segment name, N, lane numbers and scalars travel through the task
queue. Memory: one segment of about ``4 N + (4 + 3 chunks) W`` doubles (``[m | x | p |
lanes]``, :func:`_layout`; the masses and positions only written for the exact path; ``W
>= N`` the width of the blocked layout of :func:`backends._pools.lane_plan`, in which every
row block starts on a 128-byte boundary), reused across calls and grown (doubling) when it
is too small; workers attach by name and keep the mapping. The parent copies the scaled
particles in and sums the lanes with serial compiled loops (:mod:`backends._pool_kernels`).

Lifetime: the pool and the segment are created on first use and reused; a call with a
different ``n_workers`` replaces the pool, and so does a call that finds a worker gone.
:func:`close`, :class:`Session` (a context manager), ``Backend.close()`` and interpreter
exit (``atexit``) shut the workers down and unlink the segment. Calls are serialized by a
module lock (one pool, one segment). A parent killed outright (SIGKILL, the OOM killer)
leaves nothing: each worker watches it (:func:`backends._pools.watch_parent`) and, within
about 0.2 s of its death (or the end of the lane it is computing), removes the segment and
exits; the resource tracker then removes the semaphores; and the next pool start removes any
segment whose owner's pid is gone (:func:`backends._pools.remove_owned`).

Failures: inputs are validated in the parent. A script that would make its workers re-run
the call (no ``if __name__ == "__main__":`` guard) is refused before any worker starts
(:func:`backends._pools.check_main_guard`). A worker whose start-up raises (say, Numba is
missing) makes the start fail with that exception's last traceback line. A worker that
raises during a call makes the call raise ``RuntimeError`` (the worker's exception and
traceback chained) once the lanes already running have finished; the pool stays usable. A
worker that dies (killed, crashed) breaks the pool at once: the call raises
``RuntimeError`` within moments, the pool is discarded and the next call builds a new one.
"""

from __future__ import annotations

import atexit
import itertools
import multiprocessing
import multiprocessing.connection
import os
import threading
import traceback
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import shared_memory

import numpy as np

from backends._contract import evaluate, non_finite_rows, validate
from backends._pools import (
    WorkerTraceback,
    aligned,
    check_knobs,
    check_main_guard,
    exact_parts,
    lane_count,
    lane_plan,
    maybe_inject_fault,
    prepare,
    remove_owned,
    run_lane,
    startup_failure,
    store_particles,
    sum_lanes,
    warm_kernel,
    warm_parent,
    watch_parent,
)
from backends._pools import workers as _workers

__all__ = ["Session", "accel", "close", "start", "workers"]

NAME = "multiprocessing"
SEGMENT_PREFIX = "nbody-mp-"  #: /dev/shm names of this backend's segments start with this
START_TIMEOUT = 300.0  #: seconds for all workers to start and load the kernel

_lock = threading.RLock()
_pool: _Pool | None = None
_names = itertools.count()

# ---------------------------------------------------------------------------------------------
# worker side (runs in the spawned children)

_barrier = None
_next_lane = None  # shared counter: the next lane of the current call a worker may take
_segment: shared_memory.SharedMemory | None = None
_startup_error: tuple[str, str] | None = None  # (last traceback line, traceback)


def _init_worker(barrier, next_lane, parent: int) -> None:
    """Watch the parent, keep the start-up barrier and load (compile or read) the kernels.

    An exception is kept for :func:`_ready` to report: raised here, it would only break the
    pool, and the parent would never learn what it was.
    """
    global _barrier, _next_lane, _startup_error
    _barrier = barrier
    _next_lane = next_lane
    watch_parent(parent)  # a killed parent: this worker exits, its segment is removed
    try:
        warm_kernel()
    except BaseException as exc:  # noqa: BLE001 - reported to the parent by _ready
        _startup_error = (startup_failure(exc), traceback.format_exc())


def _ready(timeout: float) -> int:
    """Wait until every worker is up (one task per worker), return this worker's pid."""
    if _startup_error is not None:
        _barrier.abort()  # the other workers stop waiting for this one
        raise WorkerStartError(*_startup_error)
    _barrier.wait(timeout)
    return os.getpid()


class WorkerStartError(RuntimeError):
    """A worker's start-up raised: ``line`` is its traceback's last line."""

    def __init__(self, line: str, text: str = ""):
        super().__init__(line, text)
        self.line = line
        self.text = text

    def __str__(self) -> str:
        return self.line


def _attach(name: str) -> shared_memory.SharedMemory:
    global _segment
    if _segment is None or _segment.name != name:
        if _segment is not None:
            _segment.close()
            _segment = None
        _segment = shared_memory.SharedMemory(name=name)
    return _segment


def _layout(n: int, width: int) -> tuple[int, int, int]:
    """Offsets in doubles of ``x``, ``p`` and the lane accumulators in the segment.

    The segment is ``[m (N) | x (N, 3) | p (4, width) | lanes x (3, width)]``, each part
    starting on an :data:`backends._pools.ALIGN` boundary (the segment itself is page aligned).
    """
    off_x = aligned(n)
    off_p = off_x + aligned(3 * n)
    return off_x, off_p, off_p + 4 * width


def _lane(name: str, n: int, lanes: int, lane: int, eps2: float) -> int:
    """Pairs of lane ``lane`` of ``lanes`` into its accumulator in segment ``name``."""
    maybe_inject_fault()
    buf = _attach(name).buf
    plan = lane_plan(n, lanes)
    _, off_p, off_acc = _layout(n, plan.width)
    p = np.ndarray((4, plan.width), np.float64, buf, offset=8 * off_p)
    acc = np.ndarray((3, plan.width), np.float64, buf, offset=8 * (off_acc + 3 * plan.width * lane))
    run_lane(plan, p, acc, lane, eps2)
    return lane


def _lanes(name: str, n: int, lanes: int, eps2: float) -> list[int]:
    """Take lanes from the shared counter until none is left; return those computed.

    One such task per worker and call: a worker slowed by another program takes fewer lanes,
    and a call costs one round trip per worker, not one per lane.
    """
    done = []
    while True:
        with _next_lane.get_lock():
            lane = _next_lane.value
            _next_lane.value = lane + 1
        if lane >= lanes:
            return done
        done.append(_lane(name, n, lanes, lane, eps2))


def _chunk(name: str, n: int, rows, G: float, softening: float) -> np.ndarray:
    """Rows ``rows`` (a slice or indices) of the accelerations on the exact path.

    The segment ``name`` holds the masses and positions.
    """
    from backends.numba_parallel import accel_block

    maybe_inject_fault()
    buf = _attach(name).buf
    m = np.ndarray((n,), np.float64, buf)
    x = np.ndarray((n, 3), np.float64, buf, offset=8 * aligned(n))
    return accel_block(x[rows], m, x, G, softening)


# ---------------------------------------------------------------------------------------------
# parent side


class _Pool:
    """One executor of ``n_workers`` warm spawn-context processes and one shared segment."""

    def __init__(self, n_workers: int):
        ctx = multiprocessing.get_context("spawn")
        self.n_workers = n_workers
        self.segment: shared_memory.SharedMemory | None = None
        self.next_lane = ctx.Value("q", 0)
        self.executor = ProcessPoolExecutor(
            n_workers,
            mp_context=ctx,
            initializer=_init_worker,
            initargs=(ctx.Barrier(n_workers), self.next_lane, os.getpid()),
        )
        # spawn every worker now (one task each, held at a barrier) so that calls find them warm
        futures = []
        try:
            futures = [self.executor.submit(_ready, START_TIMEOUT) for _ in range(n_workers)]
            wait(futures, timeout=START_TIMEOUT + 10)
            self.pids = tuple(f.result(timeout=0) for f in futures)
        except Exception as exc:
            cause = _start_cause(futures, exc)
            self.shutdown(kill=True)
            message = f"backend {NAME!r}: a worker failed to start: {cause}"
            if isinstance(cause, BaseException):
                raise RuntimeError(message) from cause
            raise RuntimeError(message) from None  # the message says all the parent knows
        except BaseException:
            self.shutdown(kill=True)
            raise

    def reserve(self, n: int, width: int, lanes: int) -> str:
        """Make the segment hold ``[m | x | p | lanes accumulators]`` (:func:`_layout`)."""
        need = 8 * (_layout(n, width)[2] + 3 * lanes * width)
        if self.segment is None or self.segment.size < need:
            old = 0 if self.segment is None else self.segment.size
            self._unlink()
            name = f"{SEGMENT_PREFIX}{os.getpid()}-{next(_names)}"
            size = max(need, 2 * old, 1 << 16)
            self.segment = shared_memory.SharedMemory(name=name, create=True, size=size)
        return self.segment.name

    def view(self, shape: tuple[int, ...], offset: int) -> np.ndarray:
        """Return a float64 view of the segment (none may outlive the call: close would fail)."""
        return np.ndarray(shape, np.float64, self.segment.buf, offset=offset)

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
        remove_owned()  # segments of parents killed earlier (their pid is gone)
        _pool = _Pool(n_workers)
    return _pool


def _discard(kill: bool = False) -> None:
    global _pool
    pool, _pool = _pool, None
    if pool is not None:
        pool.shutdown(kill=kill)


def _start_cause(futures, exc: BaseException) -> BaseException | str:
    """Return the most telling start-up failure: a worker's own exception comes first."""
    errors = [f.exception(timeout=0) for f in futures if f.done() and not f.cancelled()]
    for err in errors:
        if isinstance(err, WorkerStartError):
            err.__cause__ = WorkerTraceback(err.text)
            return err
    if isinstance(exc, BrokenProcessPool):
        return (
            "a worker process exited before it was ready (its own error, if any, was printed "
            "on standard error above)"
        )
    return exc


def _submit_all(pool: _Pool, fn, args_list: list[tuple]) -> list:
    """Run ``fn(*args)`` for each args on the pool; return the results in order.

    A worker that raises: the call raises ``RuntimeError`` after the running tasks ended.
    A worker that dies: the pool is discarded and the call raises ``RuntimeError``.
    """
    futures = []
    try:
        futures = [pool.executor.submit(fn, *args) for args in args_list]
        wait(futures, return_when=FIRST_EXCEPTION)
        return [fut.result() for fut in futures]
    except BrokenProcessPool as exc:
        _discard(kill=True)
        raise RuntimeError(
            f"backend {NAME!r}: a worker process died during the call (killed or crashed); "
            "the pool was shut down and the next call starts a new one"
        ) from exc
    except Exception as exc:
        for fut in futures:
            fut.cancel()
        wait(futures)  # tasks already running finish; none may outlive the call
        raise RuntimeError(
            f"backend {NAME!r}: a worker raised {type(exc).__name__}: {exc}"
        ) from exc
    except BaseException:  # KeyboardInterrupt and the like: stop everything now
        _discard(kill=True)
        raise


def _run(m, x, G, softening, n_workers, chunks) -> np.ndarray:
    n = m.shape[0]
    lanes = lane_count(n, chunks)
    plan = lane_plan(n, lanes)
    off_x, off_p, off_acc = _layout(n, plan.width)
    p, s = prepare(m, x, softening)
    with _lock:
        pool = _get_pool(n_workers)
        name = pool.reserve(n, plan.width, lanes)
        if s > 0.0:
            store_particles(plan, p, pool.view((4, plan.width), 8 * off_p))
            eps = softening * s
            pool.next_lane.value = 0
            done = _submit_all(pool, _lanes, [(name, n, lanes, eps * eps)] * pool.n_workers)
            if sorted(sum(done, [])) != list(range(lanes)):  # never: a broken counter
                raise RuntimeError(f"backend {NAME!r}: lanes computed {done}, wanted {lanes}")
            out, finite = sum_lanes(plan, pool.view((lanes, 3, plan.width), 8 * off_acc), G, s)
            if finite:
                return out
            rows = non_finite_rows(out)  # a pair too close for the fast path: its rows
        else:
            out, rows = None, None  # an extreme extent: every row
        # those rows on the exact row kernel
        pool.view((n,), 0)[...] = m
        pool.view((n, 3), 8 * off_x)[...] = x
        parts = exact_parts(n, chunks, rows)
        blocks = _submit_all(pool, _chunk, [(name, n, part, G, softening) for part in parts])
        if out is None:
            return np.concatenate(blocks)
        out[rows] = np.concatenate(blocks)
        return out


def start(*, n_workers=None) -> tuple[int, ...]:
    """Start the worker pool now (if not running) and return the workers' process ids.

    Every worker has loaded the row kernel when this returns, so the next call pays no
    start-up cost. ``n_workers`` as in :func:`accel`.
    """
    n_workers, _ = check_knobs(n_workers, None)
    check_main_guard(NAME)
    warm_parent()
    with _lock:
        return _get_pool(n_workers).pids


def workers(n_workers=None) -> int:
    """Return the number of worker processes a call with this ``n_workers=`` uses."""
    return _workers(n_workers)


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
    """Gravitational accelerations, each pair once, lanes over a persistent process pool.

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
        Lanes of the pair triangle per call (tasks; each has an accumulator of about ``3 N``
        doubles); default ``n_workers``, at most ``N // 2``. The result depends
        on ``chunks`` (the order of summation), never on ``n_workers``.

    Returns
    -------
    (N, 3) ndarray of float64

    Raises
    ------
    RuntimeError
        A worker raised or died during the call, or failed to start; or the call comes from
        a script's top level outside ``if __name__ == "__main__":``.
    """
    n_workers, chunks = check_knobs(n_workers, chunks)
    check_main_guard(NAME)
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
