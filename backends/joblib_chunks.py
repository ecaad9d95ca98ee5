"""Backend ``joblib``: the pair triangle over a persistent :class:`joblib.Parallel` pool.

Strategy: each pair is computed once (Newton's third law). The parent makes the scaled
``(4, N)`` copy of the particles (:func:`backends.numba_parallel._prepare`) in a buffer the
workers share, and cuts the pair triangle into ``chunks`` *lanes* of equal pair counts
(:mod:`backends._pools`: lane ``c`` owns the rows of row blocks ``c`` and
``2 chunks - 1 - c``). A lane's block pairs run with
:func:`backends._pair_kernel.pair_blocks` into the lane's own ``(3, N)`` accumulator in the
buffer: one ``joblib.delayed`` task per worker takes lanes from a counter in the buffer
(:func:`_lanes`) until none is left, so lanes go to whichever worker is free. The
parent sums the lanes in lane order and multiplies by ``G s**2``. The result
is the same bit for bit for a given ``chunks`` (default ``n_workers``), whichever worker
ran which lane, with processes or threads. Rows whose sum is not finite (a pair closer
than about 1e-18 of the system's extent makes its two rows so) are summed again on the
exact path, and every row is if the extent is extreme: pieces of those rows (at most
``chunks``) on :func:`backends.numba_parallel.accel_block`, each returned as a small array.

``prefer="processes"`` (default): joblib's loky backend, ``n_workers`` spawned worker
processes. The shared buffer is a file in ``/dev/shm`` (where it exists, else the temporary
folder) mapped by :class:`numpy.memmap`; joblib hands a memory map to its workers by file
name, so only names, lane numbers and scalars are pickled. With ``n_workers=1`` joblib runs
the tasks in the calling process. ``prefer="threads"``: joblib's threading backend,
``n_workers`` threads of this process sharing an ordinary array; ``pair_blocks`` releases the
GIL, so the threads run in parallel. Memory: ``(4 + 3 chunks) W + 2`` doubles in the buffer
(``W >= N``: the blocked layout of :func:`backends._pools.lane_plan`, every row block
starting on a 128-byte boundary), reused across calls and grown (doubling) when too small;
the exact path also maps the inputs for the workers (arrays above :data:`MAX_NBYTES`). The
double after the accumulators is the lane counter, guarded by ``fcntl.flock`` on the
buffer's file (processes) or a lock (threads); the next counts the tasks that have ended.

joblib's own result collection looks for finished tasks every 10 ms and sleeps in between,
which made 10 ms the floor of a call. The lanes' call does not wait for it
(:meth:`_Runner.collect`): ``Parallel`` returns a generator once the tasks are dispatched
(``return_as="generator"``), the calling thread waits for the tasks' end itself (a countdown
for threads, the count of ended tasks in the shared buffer for processes), then consumes
the generator. The exact path still pays joblib's polling.

Lifetime: one ``Parallel`` object per ``prefer`` is kept open (entered as a context
manager) and reused across calls; a call with another ``n_workers`` replaces it, and so
does a call that finds a worker process gone. :func:`close`, :class:`Session`,
``Backend.close()`` and interpreter exit (``atexit``) leave the context, shut the loky
workers down (loky's executor is process-wide: any other joblib user gets a new one) and
delete the shared buffer and joblib's temporary memory maps. Calls are serialized by a
module lock. A parent killed outright (SIGKILL, the OOM killer) leaves nothing: every task
and warm-up runs in a worker that watches it (:func:`backends._pools.watch_parent`) and,
within about 0.2 s of its death (or the end of the lane it is computing), removes the
parent's buffer, joblib's memory-map folder and loky's semaphores and exits (loky's workers
otherwise linger for their 5-minute idle timeout); the next pool start removes any such
entry whose owner's pid is gone (:func:`backends._pools.remove_owned`).

Failures: inputs are validated in the parent. With processes, a script that would make its
workers re-run the call (no ``if __name__ == "__main__":`` guard) is refused before any
worker starts (:func:`backends._pools.check_main_guard`). A task that raises returns its
exception instead (:func:`_guarded`): the call's other tasks finish, then the call raises
``RuntimeError`` with the worker's exception and traceback chained, and the pool stays
usable. A worker that dies (killed, crashed) makes the call raise ``RuntimeError`` at once;
the pool is discarded and the next call starts a new one.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import itertools
import multiprocessing.connection
import os
import pickle
import tempfile
import threading
import time
import traceback

import numpy as np

from backends._contract import evaluate, non_finite_rows, validate
from backends._pools import (
    WorkerTraceback,
    aligned_empty,
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
    warm_parent,
    warm_worker,
    watch_parent,
)
from backends._pools import workers as _workers

__all__ = ["MAX_NBYTES", "PREFER", "Session", "accel", "close", "start", "workers"]

NAME = "joblib"
PREFER = {"processes": "loky", "threads": "threading"}  #: ``prefer=`` -> joblib backend
MAX_NBYTES = "64K"  #: arrays above this size are memory-mapped, not pickled (joblib syntax)
START_TIMEOUT = 300.0  #: seconds for all workers to start and load the kernel
#: Seconds between the end of the last task and the collection of the results, for joblib's
#: callback thread to record them (else joblib's 10 ms polling sleep follows); 0: only
#: yield the GIL.
CALLBACK_GRACE = {"threads": 0.0, "processes": 5e-4}
#: Processes: the seconds between looks at the count of ended tasks are ``POLL_SHARE`` of
#: the time waited so far, within ``POLL`` (few wake-ups of the parent while the workers
#: hold the cores; a call ends at most 5 % or 2 ms after its last task)
POLL = (2e-4, 2e-3)
POLL_SHARE = 0.05
HEALTH_EVERY = 0.01  #: processes: seconds between looks for a dead worker while waiting
BUFFER_PREFIX = "nbody-joblib-"  #: file names of the processes' shared buffers start with this

_lock = threading.RLock()
_runners: dict[str, _Runner] = {}  # prefer -> open pool: one of threads, one of processes
try:
    import fcntl  # noqa: F401 - POSIX: the lane counter of the process pool

    _HAVE_FLOCK = True
except ImportError:  # elsewhere each lane is one task
    _HAVE_FLOCK = False
_names = itertools.count()


class _WorkerRaised(Exception):
    """A task's exception, returned (not raised) by :func:`_guarded` and raised here."""

    def __init__(self, exc: BaseException, text: str):
        super().__init__(exc, text)
        self.exc = exc
        self.text = text


def _guarded(fn, *args):
    """Run ``fn(*args)`` in a worker; return ``(result, None)`` or ``(None, (exc, traceback))``.

    An exception is returned, not raised: joblib answers a raised one by shutting the loky
    executor down with ``kill_workers=True`` while the call's other tasks are still queued,
    and loky's manager thread then looks up a queued task that shutdown already dropped and
    dies with an unhandled ``KeyError`` (a race in joblib's vendored loky). A returned
    failure lets every task finish; the parent raises it, and the pool stays usable.
    """
    try:
        return fn(*args), None
    except Exception as exc:  # noqa: BLE001 - handed to the parent
        text = traceback.format_exc()
        try:
            pickle.loads(pickle.dumps(exc))
        except Exception:  # noqa: BLE001 - an exception that cannot travel
            exc = RuntimeError(f"{type(exc).__name__}: {exc}")
        return None, (exc, text)


def _watched(parent: int, fn, *args):
    """:func:`_guarded` in a worker that exits soon after ``parent`` dies (``watch_parent``)."""
    watch_parent(parent)
    return _guarded(fn, *args)


def _warm_watched(parent: int, pause: float) -> int:
    """:func:`backends._pools.warm_worker` in a worker that watches ``parent``."""
    watch_parent(parent)
    return warm_worker(pause)


def _results(outcomes) -> list:
    """Return the results of :func:`_guarded` tasks; raise the first failure (in task order)."""
    for _, failure in outcomes:
        if failure is not None:
            raise _WorkerRaised(*failure)
    return [result for result, _ in outcomes]


def _lane(buf, n: int, lanes: int, lane: int, eps2: float) -> int:
    """Pairs of lane ``lane`` of ``lanes`` into its accumulator (a worker process or thread).

    ``buf`` is the flat shared buffer ``[p (4, W) | lanes x (3, W) | lane counter]`` in the
    blocked layout of :func:`backends._pools.lane_plan` (``W`` its ``width``).
    """
    maybe_inject_fault()
    plan = lane_plan(n, lanes)
    w = plan.width
    buf = np.asarray(buf)  # a joblib memmap becomes a plain (writable) ndarray view
    p = buf[: 4 * w].reshape(4, w)
    acc = buf[(4 + 3 * lane) * w : (7 + 3 * lane) * w].reshape(3, w)
    run_lane(plan, p, acc, lane, eps2)
    return lane


def _lanes(buf, path: str | None, n: int, lanes: int, eps2: float) -> list[int]:
    """Take lanes from the counter in ``buf`` until none is left (a worker process or thread).

    The counter is the double after the accumulators, guarded by ``fcntl.flock`` on the
    buffer's file ``path`` (processes) or by a lock of this process (threads: ``path`` is
    None). One such task per worker and call: lanes go to whichever worker is free, and a
    call does not wait for the parent to hand out each lane (on a busy machine the parent's
    dispatch threads may wait long for a core). The next double counts the tasks that have
    ended, however they ended: the parent waits on it (:meth:`_Runner.collect`).
    """
    slot = (4 + 3 * lanes) * lane_plan(n, lanes).width
    counter = np.asarray(buf)[slot : slot + 2]
    done = []
    with _counter_lock(path) as lock:
        try:
            while True:
                with lock:
                    lane = int(counter[0])
                    counter[0] = lane + 1
                if lane >= lanes:
                    return done
                done.append(_lane(buf, n, lanes, lane, eps2))
        finally:
            with lock:
                counter[1] += 1


_thread_lock = threading.Lock()  # the lane counter's lock in threads mode


class _Countdown:
    """Counts the tasks of a threads-mode call down to zero; :meth:`wait` blocks until then."""

    def __init__(self, count: int):
        self.count = count
        self.cond = threading.Condition()

    def release(self) -> None:
        with self.cond:
            self.count -= 1
            if self.count <= 0:
                self.cond.notify_all()

    def wait(self) -> None:
        with self.cond:
            while self.count > 0:
                self.cond.wait(0.5)


def _counted(countdown: _Countdown, fn, *args):
    """Run ``fn(*args)`` (a thread of the pool), then release ``countdown``, however it ends."""
    try:
        return fn(*args)
    finally:
        countdown.release()


class _FileLock:
    """An exclusive ``fcntl.flock`` on an open file, usable as ``with lock:`` many times."""

    def __init__(self, fd: int):
        self.fd = fd

    def __enter__(self):
        import fcntl

        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc_info):
        import fcntl

        fcntl.flock(self.fd, fcntl.LOCK_UN)


@contextlib.contextmanager
def _counter_lock(path: str | None):
    """Yield the lane counter's lock (see :func:`_lanes`)."""
    if path is None:
        yield _thread_lock
        return
    fd = os.open(path, os.O_RDWR)
    try:
        yield _FileLock(fd)
    finally:
        os.close(fd)


def _chunk(masses, positions, rows, G: float, softening: float) -> np.ndarray:
    """Rows ``rows`` (a slice or indices) of the accelerations on the exact path.

    Runs in a worker process or thread.
    """
    from backends.numba_parallel import accel_block

    maybe_inject_fault()
    x = np.asarray(positions)  # a joblib memmap becomes a plain (read-only) ndarray view
    targets = x[rows]  # a writable copy for indices: made read-only like x, the kernel's
    targets.setflags(write=x.flags.writeable)  # signature the workers loaded at start-up
    return accel_block(targets, np.asarray(masses), x, G, softening)


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
            # the call hands back a generator once the tasks are dispatched, so that run()
            # can wait for them itself (see collect)
            return_as="generator",
        )
        self.parallel.__enter__()
        # every task runs in a worker that exits soon after this process dies
        self.guarded = functools.partial(_watched, os.getpid())
        self.buf: np.ndarray | None = None  # the shared buffer (processes: a np.memmap)
        self.path: str | None = None  # its file (processes only)

    def buffer(self, size: int) -> np.ndarray:
        """Return the shared buffer of at least ``size`` doubles (grown by doubling)."""
        if self.buf is None or self.buf.shape[0] < size:
            size = max(size, 2 * (0 if self.buf is None else self.buf.shape[0]), 1 << 13)
            self.release()
            if self.key[1] == "threads":
                self.buf = aligned_empty(size)
            else:
                folder = "/dev/shm" if os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()
                self.path = os.path.join(folder, f"{BUFFER_PREFIX}{os.getpid()}-{next(_names)}")
                self.buf = np.memmap(self.path, np.float64, mode="w+", shape=(size,))
        return self.buf

    def release(self) -> None:
        """Drop the shared buffer and delete its file."""
        self.buf = None
        path, self.path = self.path, None
        if path is not None:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def run(self, m, x, G, softening, chunks) -> np.ndarray:
        from joblib import delayed

        n = m.shape[0]
        lanes = lane_count(n, chunks)
        plan = lane_plan(n, lanes)
        w = plan.width
        p, s = prepare(m, x, softening)
        if s > 0.0:
            buf = self.buffer((4 + 3 * lanes) * w + 2)
            store_particles(plan, p, np.asarray(buf[: 4 * w]).reshape(4, w))
            eps = softening * s
            task = delayed(self.guarded)
            n_workers, prefer = self.key
            if n_workers > 1 and (prefer == "threads" or _HAVE_FLOCK):
                slot = (4 + 3 * lanes) * w
                buf[slot : slot + 2] = 0.0  # the lane counter, the tasks ended
                args = (_lanes, buf, self.path, n, lanes, eps * eps)
                done = self.collect(args, slot)
                if sorted(sum(done, [])) != list(range(lanes)):  # never: a broken counter
                    raise RuntimeError(f"lanes computed {done}, wanted {lanes}")
            else:  # one worker (joblib runs it here), or no flock: one task per lane
                tasks = (task(_lane, buf, n, lanes, c, eps * eps) for c in range(lanes))
                _results(list(self.parallel(tasks)))
            acc = np.asarray(buf[4 * w : (4 + 3 * lanes) * w]).reshape(lanes, 3, w)
            out, finite = sum_lanes(plan, acc, G, s)
            if finite:
                return out
            rows = non_finite_rows(out)  # a pair too close for the fast path: its rows
        else:
            out, rows = None, None  # an extreme extent: every row
        # those rows on the exact row kernel
        task = delayed(self.guarded)
        parts = exact_parts(n, chunks, rows)
        blocks = self.parallel(task(_chunk, m, x, part, G, softening) for part in parts)
        if out is None:
            return np.concatenate(_results(list(blocks)))
        out[rows] = np.concatenate(_results(list(blocks)))
        return out

    def collect(self, args: tuple, slot: int) -> list:
        """Run one ``_lanes`` task per worker; return the results without joblib's polling.

        joblib's ``Parallel`` looks for finished tasks every 10 ms and sleeps in between, so
        a call would end up to 10 ms after its last task. ``Parallel`` here returns a
        generator once the tasks are dispatched (``return_as="generator"``), and this thread
        waits for the tasks itself: threads release a countdown when they end (however they
        end); worker processes count the ended tasks in the shared buffer (the double at
        ``slot + 1``), which this thread looks at after sleeps of :data:`POLL_SHARE` of the
        time waited so far (a worker that dies ends the wait too, and joblib reports it).
        Then it gives joblib's callback thread :data:`CALLBACK_GRACE` seconds to record the
        results and collects them; were they not recorded yet, joblib would poll as usual:
        the same answer, later.
        """
        from joblib import delayed

        n_workers, prefer = self.key
        if prefer == "threads":
            countdown = _Countdown(n_workers)
            task = delayed(self.guarded)(_counted, countdown, *args)
            outputs = self.parallel(task for _ in range(n_workers))
            countdown.wait()
        else:
            outputs = self.parallel(delayed(self.guarded)(*args) for _ in range(n_workers))
            ended = np.asarray(self.buf)[slot + 1 : slot + 2]
            start = check = time.monotonic()
            while ended[0] < n_workers:
                now = time.monotonic()
                if now >= check:  # a dead worker ends no task: joblib reports it below
                    if not self.healthy():
                        break
                    check = now + HEALTH_EVERY
                time.sleep(min(POLL[1], max(POLL[0], POLL_SHARE * (now - start))))
        time.sleep(CALLBACK_GRACE[prefer])
        return _results(list(outputs))

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
            warm = delayed(functools.partial(_warm_watched, os.getpid()))(0.05)
            pids.update(list(self.parallel(warm for _ in range(n_workers))))
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
        self.release()


def _get_runner(n_workers: int, prefer: str) -> _Runner:
    runner = _runners.get(prefer)
    if runner is not None and (runner.key != (n_workers, prefer) or not runner.healthy()):
        _discard(prefer)
        runner = None
    if runner is None:
        remove_owned()  # buffers and joblib folders of parents killed earlier (pid gone)
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
        except _WorkerRaised as raised:  # every task has ended: the pool stays usable
            exc = raised.exc
            exc.__cause__ = WorkerTraceback(raised.text)
            raise RuntimeError(
                f"backend {NAME!r}: a worker raised {type(exc).__name__}: {exc}"
            ) from exc
        except Exception as exc:
            _discard(prefer)
            what = "died" if "Terminated" in type(exc).__name__ else "failed"
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
    if prefer == "processes" and n_workers > 1:
        check_main_guard(NAME)
    warm_parent()
    with _lock:
        runner = _get_runner(n_workers, prefer)
        try:
            return runner.warm()
        except Exception as exc:
            _discard(prefer)
            raise RuntimeError(
                f"backend {NAME!r}: a worker failed to start: {startup_failure(exc)}"
            ) from exc


def workers(n_workers=None, prefer="processes") -> int:
    """Return the number of workers (processes or threads) a call with these knobs uses.

    ``n_workers=None`` means the usable cores. With ``n_workers=1`` joblib runs the tasks
    in the calling process, which is still one worker.
    """
    _check_prefer(prefer)
    return _workers(n_workers)


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
    """Gravitational accelerations, each pair once, lanes over a persistent joblib pool.

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
        Lanes of the pair triangle per call (tasks; each has an accumulator of about ``3 N``
        doubles); default ``n_workers``, at most ``N // 2``. The result depends
        on ``chunks`` (the order of summation), never on ``n_workers`` or ``prefer``.
    prefer : {"processes", "threads"}, optional
        joblib's loky process backend (default) or its threading backend.

    Returns
    -------
    (N, 3) ndarray of float64

    Raises
    ------
    RuntimeError
        A worker raised or died during the call; or, with processes, the call comes from a
        script's top level outside ``if __name__ == "__main__":``.
    """
    n_workers, chunks = check_knobs(n_workers, chunks)
    prefer = _check_prefer(prefer)
    if prefer == "processes" and n_workers > 1:
        check_main_guard(NAME)
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
