"""Shared helpers of the process-pool backends (``multiprocessing``, ``joblib``).

Knob validation, the default worker count, the decomposition of the pair triangle into
lanes (and of the rows, for the exact fallback), the fixed-order sum of the lanes, the
worker start-up report and the check that a script's workers will not re-run its call.
Imports numpy only (Numba when a kernel is warmed).

The pair triangle
-----------------
The rows ``0..N`` are cut into ``2 L`` near-equal blocks; *lane* ``c`` (``0 <= c < L``) owns
the pairs ``(i, j)``, ``j > i``, whose first row ``i`` lies in block ``c`` or in block
``2 L - 1 - c``. A short block near the top of the triangle (many pairs per row) is thus
paired with one near the bottom (few pairs per row), so every lane holds about
``N (N - 1) / (2 L)`` pairs. Each lane's rows are a list of block pairs for
:func:`backends._pair_kernel.pair_blocks`: the diagonal block ``(b, b)`` and the rectangle
``(b, rows after b)``. Every unordered pair belongs to exactly one lane, and each lane adds
into its own ``(3, N)`` accumulator, so lanes may run on any worker in any order; the caller
sums the lanes in lane order, so the result depends on ``L`` only, never on the worker count
or the schedule.
"""

from __future__ import annotations

import ast
import functools
import multiprocessing
import os
import sys
import time
import tokenize

import numpy as np

#: A private test hook, never set by the package itself: when this environment variable (as
#: the worker process inherited it) names a file that exists, every chunk computed by a pool
#: worker raises ``ValueError``. The tests use it to raise a real exception in a real worker
#: process, and delete the file to let the same pool work again.
FAULT_ENV = "NBODY_BACKENDS_TEST_FAULT_FILE"

#: Default number of chunks (lanes) per worker. The lanes hold equal numbers of pairs, so one
#: per worker balances the work on dedicated cores; more lanes (``chunks=``) let a worker slowed
#: by another program take fewer, at 24 N bytes and one more pass of the sum per lane. Measured
#: at N = 20 000 with 2 workers (Xeon Ice Lake, 2 cores, 2026-12-01, interleaved): 2 lanes gave
#: 0.96-1.06x numba_parallel for multiprocessing, 8 lanes 0.84-0.86x.
CHUNKS_PER_WORKER = 1


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


def workers(n_workers=None) -> int:
    """Return the number of workers a call with this ``n_workers=`` uses.

    ``None`` resolves to :func:`usable_cores`; anything else must be a positive integer.
    Row labels of reports use it to say how many workers were compared.
    """
    return check_knobs(n_workers, None)[0]


def lane_count(n: int, chunks: int) -> int:
    """Lanes used for ``n`` particles: ``chunks``, but at most ``n // 2`` (at least 1)."""
    return max(1, min(chunks, n // 2))


def lane_tasks(n: int, lanes: int, lane: int) -> np.ndarray:
    """Return the block pairs of lane ``lane`` of ``lanes`` (module docstring).

    Returns
    -------
    (K, 4) ndarray of int64
        Rows ``(a0, a1, b0, b1)``: a diagonal block (``a0 == b0``, ``a1 == b1``) or the
        rectangle of the block's rows against all later rows. Empty tasks are left out.
    """
    nb = 2 * lanes
    tasks = []
    for b in (lane, nb - 1 - lane):
        lo, hi = b * n // nb, (b + 1) * n // nb
        if hi - lo > 1:
            tasks.append((lo, hi, lo, hi))
        if hi > lo and hi < n:
            tasks.append((lo, hi, hi, n))
    return np.array(tasks, dtype=np.int64).reshape(-1, 4)


def sum_lanes(acc: np.ndarray, G: float, s: float) -> np.ndarray | None:
    """Sum the ``(L, 3, N)`` lane accumulators in lane order and scale by ``G * s * s``.

    Returns
    -------
    (N, 3) ndarray of float64, or None
        None if the sum is not finite (a pair too close for the fast path: the caller
        redoes the evaluation on the exact path).
    """
    total = acc[0].copy()
    for c in range(1, acc.shape[0]):
        total += acc[c]
    if not np.isfinite(total).all():
        return None
    out = np.empty((acc.shape[2], 3))
    with np.errstate(over="ignore"):  # an overflow is the contract's check_result's to report
        np.multiply(total.T, G * s, out=out)
        out *= s
    return out


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


def prepare(m: np.ndarray, x: np.ndarray, softening: float) -> tuple[np.ndarray, float]:
    """Return the scaled ``(4, N)`` copy and its scale ``s`` (0: use the exact path)."""
    from backends.numba_parallel import _prepare

    p, s = _prepare(m, x, float(softening))
    return p, float(s)


def warm_kernel(readonly: bool = False) -> None:
    """Load the kernels in this process: compile them, or read them from Numba's disk cache.

    The pair kernel (:func:`backends._pair_kernel.pair_blocks`) of the lanes and the row
    kernel (:func:`backends.numba_parallel.accel_block`) of the exact fallback. With
    ``readonly``, the row kernel's signature for read-only arrays is loaded too (joblib
    hands its workers read-only memory maps).
    """
    from backends._pair_kernel import pair_blocks
    from backends.numba_parallel import accel_block

    m = np.ones(2)
    x = np.zeros((2, 3))
    x[1, 0] = 1.0
    p = np.ones((4, 2))
    p[0, 1] = 2.0
    acc = np.zeros((3, 2))
    pair_blocks(p, acc, p, acc, lane_tasks(2, 1, 0), 0.0)
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


def warm_parent() -> None:
    """Load the parent's share of the kernels (the scaling copy) before the first call."""
    m = np.ones(2)
    x = np.zeros((2, 3))
    prepare(m, x, 0.0)


# ---------------------------------------------------------------------------------------------
# failures


class WorkerTraceback(Exception):
    """The traceback text of an exception raised in a worker, chained as that one's cause."""

    def __str__(self) -> str:
        return "\n" + str(self.args[0]) if self.args else ""


def startup_failure(exc: BaseException) -> str:
    """One line naming a worker's start-up exception, as its traceback's last line reads."""
    text = f"{type(exc).__module__}.{type(exc).__qualname__}".removeprefix("builtins.")
    return f"{text}: {exc}" if str(exc) else text


def bootstrapping() -> bool:
    """Whether this process is a spawned worker still importing its parent's main module.

    Both :mod:`multiprocessing`'s spawn and loky set ``current_process()._inheriting``
    while a new worker runs the parent's main module as ``__mp_main__``.
    """
    return bool(getattr(multiprocessing.current_process(), "_inheriting", False))


def _main_reimported_by_spawn(main) -> str | None:
    """Return the main module's file if spawned workers re-run it (as spawn decides)."""
    path = getattr(main, "__file__", None)
    spec_name = getattr(getattr(main, "__spec__", None), "name", None)
    if path is None:
        return None  # interactive session, ``python -c``: nothing to re-run
    if spec_name is not None:  # ``python -m pkg.mod``; a package's __main__ is never re-run
        return None if spec_name == "__main__" or spec_name.endswith(".__main__") else path
    if os.path.splitext(os.path.basename(path))[0] == "ipython":
        return None
    return path


def _is_eq(ops: list) -> bool:
    return len(ops) == 1 and isinstance(ops[0], ast.Eq)


def _guarded_lines(path: str) -> list[tuple[int, int]]:
    """Line ranges of the bodies of ``if __name__ == "__main__":`` blocks in ``path``."""
    return _guarded_lines_cached(path, os.stat(path).st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _guarded_lines_cached(path: str, mtime_ns: int) -> list[tuple[int, int]]:
    with tokenize.open(path) as f:
        tree = ast.parse(f.read(), path)
    ranges = []
    for node in ast.walk(tree):
        test = getattr(node, "test", None)
        if isinstance(node, ast.If) and isinstance(test, ast.Compare) and _is_eq(test.ops):
            names = [test.left, *test.comparators]
            has_name = any(isinstance(e, ast.Name) and e.id == "__name__" for e in names)
            has_main = any(isinstance(e, ast.Constant) and e.value == "__main__" for e in names)
            if has_name and has_main and node.body:
                ranges.append((node.body[0].lineno, node.body[-1].end_lineno or 0))
    return ranges


def check_main_guard(name: str) -> None:
    """Refuse to start workers that would re-run this call when they import the main module.

    Workers started with the ``spawn`` method (``multiprocessing``) or by loky (``joblib``)
    import the parent's main script before they run anything, so a script that calls a
    process pool at its top level, outside an ``if __name__ == "__main__":`` block, would
    run the call again in every worker. Checked in the parent before any worker starts: the
    frame of the main module's top-level code that leads to this call is looked up, and its
    line must lie inside such a block. Inside a worker that is still importing the main
    module (a case the parent could not see), the worker exits at once with one line.

    Raises
    ------
    RuntimeError
        The call comes from the main script's top level outside the guard.
    SystemExit
        This process is a worker importing its parent's main module.
    """
    if bootstrapping():
        raise SystemExit(
            f"backend {name!r} was called while a worker process imported the main module: "
            'put the script\'s code under `if __name__ == "__main__":`'
        )
    main = sys.modules.get("__main__")
    path = _main_reimported_by_spawn(main)
    if path is None:
        return
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "<module>" and frame.f_globals is vars(main):
            break
        frame = frame.f_back
    if frame is None:  # not called from the main script's top-level code
        return
    try:
        ranges = _guarded_lines(path)
    except (OSError, SyntaxError, ValueError):  # no source to read: let spawn speak
        return
    line = frame.f_lineno
    if any(lo <= line <= hi for lo, hi in ranges):
        return
    raise RuntimeError(
        f"backend {name!r} called at the top level of {os.path.basename(path)} (line {line}), "
        'outside `if __name__ == "__main__":`. Its worker processes import that script and '
        "would run the call again: move the script's code under the guard."
    )
