"""Shared helpers of the process-pool backends (``multiprocessing``, ``joblib``).

Knob validation, the default worker count, the decomposition of the pair triangle into
lanes and their blocked layout in the shared buffers (and the rows, for the exact
fallback), the fixed-order sum of the lanes, the worker start-up report, the check that
a script's workers will not re-run its call, and what a killed parent leaves behind
(nothing: :func:`watch_parent` in the workers, :func:`remove_owned` at every pool start).
Imports numpy only (Numba, with :mod:`backends._pool_kernels`, when a kernel runs).

The pair triangle
-----------------
The rows ``0..N`` are cut into ``2 L k`` near-equal blocks (:func:`block_count`: ``L`` lanes,
``k`` the least number keeping blocks at most :data:`MAX_BLOCK` rows); *fold* ``c`` is the
pair of row blocks ``c`` and ``2 L k - 1 - c``, and lane ``l`` owns the folds ``l, l + L,
...``. A row block ``r`` of a fold brings the pairs ``(i, j)``, ``j > i``, whose first row
``i`` lies in ``r``: its diagonal block ``(r, r)`` and the rectangles ``(r, b)`` for every
later block ``b``. A short block near the top of the triangle (many pairs per row) is thus
paired with one near the bottom (few pairs per row), every fold holds the same number of
pairs, and so does every lane (``N (N - 1) / (2 L)``), in the same shapes: square
rectangles of one block by one block and two diagonal blocks per fold. Every unordered pair
belongs to exactly one lane, and each lane adds into its own ``(3, N)`` accumulator, so
lanes may run on any worker in any order; the caller sums the lanes in lane order, so the
result depends on ``L`` only, never on the worker count or the schedule.

The blocked layout
------------------
In the buffers the workers share, the scaled particles ``(4, width)`` and every lane
accumulator ``(3, width)`` store block ``b`` from column ``starts[b]``, a multiple of
:data:`ALIGN` (:class:`LanePlan`), so that every block the pair kernel sweeps starts on a
cache-line boundary whatever N is (on the Ice Lake development VM a misaligned block start
cost the kernel 6-8 %); the gaps hold massless copies of a block's last particle. A lane
zeroes, and the parent's sum reads, only the blocks the lane writes (:func:`zero_lane`,
:func:`sum_lanes`); the parent copies the particles in with :func:`store_particles`.
"""

from __future__ import annotations

import ast
import functools
import multiprocessing
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import tokenize
from pathlib import Path
from typing import NamedTuple

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

#: Doubles (128 bytes): every row block starts at a multiple of this in the shared buffers
#: (64-byte aligned vector loads; misaligned block starts made the pair kernel 6-8 % slower).
ALIGN = 16

#: Most rows per row block (the pair kernel's cache tile, ``backends._pair_kernel.TILE``).
MAX_BLOCK = 4096


#: Most workers a pool may start (``n_workers=``): 4 per core, at least 64. Each worker is a
#: process (or thread) with its own interpreter and lane accumulator; past a few per core
#: oversubscription only adds start-up time and memory, and a mistyped count (10**6) would
#: otherwise spawn processes until the machine stalls. The floor of 64 keeps oversubscription
#: tests and small-machine experiments (16 workers on 2 cores) possible.
MAX_WORKERS = max(64, 4 * (os.cpu_count() or 1))


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
        A knob that is not a positive integer (the message names it), or ``n_workers`` above
        :data:`MAX_WORKERS`.
    """
    n_workers = usable_cores() if n_workers is None else _positive_int(n_workers, "n_workers")
    if n_workers > MAX_WORKERS:
        raise ValueError(
            f"n_workers must be at most {MAX_WORKERS} (MAX_WORKERS: 4 per core, at least 64); "
            f"got {n_workers}"
        )
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


def block_count(n: int, lanes: int) -> int:
    """Return the number of row blocks of the pair triangle: ``2 lanes k``.

    ``k`` is the least with blocks of at most :data:`MAX_BLOCK` rows (1 if a block would be
    left empty), so every lane gets ``k`` folds.
    """
    k = max(1, -(-n // (2 * lanes * MAX_BLOCK)))
    return 2 * lanes * (k if 2 * lanes * k <= n else 1)


def _lane_block_pairs(nb: int, lanes: int, lane: int) -> list[tuple[int, int]]:
    """Block pairs ``(a, b)``, ``a <= b``, of lane ``lane``: folds ``lane, lane + lanes, ...``.

    Fold ``c`` is the row blocks ``c`` and ``nb - 1 - c``; a row block ``r`` contributes its
    diagonal block ``(r, r)`` and the rectangles ``(r, b)`` for every later block ``b``.
    """
    pairs = []
    for c in range(lane, nb // 2, lanes):
        for r in (c, nb - 1 - c):
            pairs += [(r, b) for b in range(r, nb)]
    return pairs


class LanePlan(NamedTuple):
    """The blocked layout and the work of every lane for ``n`` particles and ``lanes`` lanes.

    Row block ``b`` (particles ``edges[b]:edges[b + 1]``) is stored in the columns
    ``starts[b]:starts[b] + edges[b + 1] - edges[b]`` of every row of the shared
    ``(4, width)`` particle array and of each ``(3, width)`` lane accumulator; every start
    is a multiple of :data:`ALIGN`, the columns between blocks are never touched by the
    kernel. ``tasks[l]`` are lane ``l``'s block pairs in those stored columns (rows
    ``(a0, a1, b0, b1)`` for :func:`backends._pair_kernel.pair_blocks`); ``touched[l, b]``
    says whether lane ``l`` writes block ``b`` (it zeroes and the sum reads only those).
    """

    n: int
    lanes: int
    edges: np.ndarray
    starts: np.ndarray
    width: int
    tasks: tuple
    touched: np.ndarray


@functools.lru_cache(maxsize=32)
def lane_plan(n: int, lanes: int) -> LanePlan:
    """Return the :class:`LanePlan` of ``n`` particles in ``lanes`` lanes (cached, read-only)."""
    nb = block_count(n, lanes)
    edges = np.arange(nb + 1, dtype=np.int64) * n // nb
    sizes = np.diff(edges)
    starts = np.zeros(nb, dtype=np.int64)
    starts[1:] = np.cumsum(-(-sizes // ALIGN) * ALIGN)[:-1]
    width = int(starts[-1] + -(-sizes[-1] // ALIGN) * ALIGN)
    tasks, touched = [], np.zeros((lanes, nb), dtype=np.bool_)
    for lane in range(lanes):
        rows = []
        for a, b in _lane_block_pairs(nb, lanes, lane):
            if a == b and sizes[a] < 2:
                continue  # a diagonal block of one row has no pair
            rows.append((starts[a], starts[a] + sizes[a], starts[b], starts[b] + sizes[b]))
            touched[lane, a] = touched[lane, b] = True
        arr = np.array(rows, dtype=np.int64).reshape(-1, 4)
        arr.flags.writeable = False
        tasks.append(arr)
    for arr in (edges, starts, touched):
        arr.flags.writeable = False
    return LanePlan(n, lanes, edges, starts, width, tuple(tasks), touched)


def lane_tasks(n: int, lanes: int, lane: int) -> np.ndarray:
    """Return the block pairs of lane ``lane`` of ``lanes`` in particle indices (module docstring).

    Returns
    -------
    (K, 4) ndarray of int64
        Rows ``(a0, a1, b0, b1)``: a diagonal block (``a0 == b0``, ``a1 == b1``) or the
        rectangle of a row block against a later block. Blocks without a pair are left out.
    """
    plan = lane_plan(n, lanes)
    edges, starts = plan.edges, plan.starts
    index = {int(s): int(e) for s, e in zip(starts, edges[:-1], strict=True)}
    rows = [
        (index[a0], index[a0] + a1 - a0, index[b0], index[b0] + b1 - b0)
        for a0, a1, b0, b1 in plan.tasks[lane].tolist()
    ]
    return np.array(rows, dtype=np.int64).reshape(-1, 4)


def zero_lane(plan: LanePlan, acc: np.ndarray, lane: int) -> None:
    """Zero the blocks of lane ``lane``'s ``(3, width)`` accumulator ``acc`` that it writes."""
    sizes = np.diff(plan.edges)
    for b in np.flatnonzero(plan.touched[lane]):
        acc[:, plan.starts[b] : plan.starts[b] + sizes[b]] = 0.0


def run_lane(plan: LanePlan, p: np.ndarray, acc: np.ndarray, lane: int, eps2: float) -> None:
    """Zero lane ``lane``'s blocks of ``acc`` (``(3, width)``) and add its pairs (GIL-free).

    ``p`` is the ``(4, width)`` scaled particles in the blocked layout.
    """
    from backends._pair_kernel import pair_blocks

    zero_lane(plan, acc, lane)
    pair_blocks(p, acc, p, acc, plan.tasks[lane], eps2)


def store_particles(plan: LanePlan, p: np.ndarray, dst: np.ndarray) -> None:
    """Copy the ``(4, N)`` scaled particles ``p`` into the blocked ``(4, width)`` array ``dst``."""
    from backends._pool_kernels import scatter

    scatter(p, dst, plan.edges, plan.starts)


def sum_lanes(plan: LanePlan, acc: np.ndarray, G: float, s: float) -> tuple[np.ndarray, bool]:
    """Sum the ``(L, 3, width)`` lane accumulators in lane order and scale by ``G * s * s``.

    Returns
    -------
    out : (N, 3) ndarray of float64
        The accelerations in the caller's order.
    finite : bool
        False if some rows of ``out`` are not finite: a pair too close for the fast path
        makes its two rows, and only those, non-finite; the caller sums them again on the
        exact path (:func:`backends._contract.non_finite_rows`, :func:`exact_parts` with
        ``rows=``) and keeps every other row.
    """
    from backends._pool_kernels import sum_blocks

    out = np.empty((plan.n, 3))
    with np.errstate(over="ignore"):  # an overflow is the contract's check_result's to report
        ok = sum_blocks(acc, plan.touched, plan.edges, plan.starts, G * s, s, out)
    return out, bool(ok)


def aligned(count: int) -> int:
    """``count`` rounded up to a multiple of :data:`ALIGN`."""
    return -(-count // ALIGN) * ALIGN


def aligned_empty(size: int) -> np.ndarray:
    """Return an uninitialised float64 array of ``size`` starting on an :data:`ALIGN` boundary."""
    raw = np.empty(size + ALIGN)
    skip = (-raw.ctypes.data // 8) % ALIGN
    return raw[skip : skip + size]


def exact_parts(n: int, chunks: int, rows: np.ndarray | None = None) -> list:
    """Cut the rows the exact path sums into at most ``chunks`` near-equal parts (its tasks).

    ``rows=None``: all ``n`` rows, as contiguous ``slice`` objects covering ``0..n`` in
    order. Else the row indices ``rows`` (those ``non_finite_rows`` found), as
    consecutive pieces of that array. Each part indexes the positions directly (``x[part]``).
    """
    if rows is None:
        k = max(1, min(chunks, n))
        edges = [i * n // k for i in range(k + 1)]
        return [slice(lo, hi) for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
    k = max(1, min(chunks, rows.shape[0]))
    return np.array_split(rows, k)


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
    """Load the parent's share of the kernels (scaling copy, copy-in, sum) before the first call."""
    m = np.ones(2)
    x = np.zeros((2, 3))
    p, s = prepare(m, x, 0.0)
    plan = lane_plan(2, 1)
    store_particles(plan, p, np.zeros((4, plan.width)))
    sum_lanes(plan, np.zeros((1, 3, plan.width)), 1.0, 1.0)


# ---------------------------------------------------------------------------------------------
# a killed parent: workers follow it, and what it owned is removed

#: Seconds between a worker's looks at its parent: a worker whose parent died (SIGKILL, the
#: OOM killer, a closed terminal) exits within about this long (or once the lane it is
#: computing ends: a lane of the default layout takes well under a second at N = 1e5).
PARENT_POLL = 0.2
SHM = "/dev/shm"
#: /dev/shm (and temporary-folder) entries named after the pid of the process that owns
#: them: this package's segments and buffers, joblib's memory-map folders, loky's semaphores.
OWNED = re.compile(r"(?:nbody-mp-|nbody-joblib-|joblib_memmapping_folder_|sem\.loky-)(\d+)[-_]")
_watching = False


def pid_alive(pid: int) -> bool:
    """Return True if process ``pid`` exists and is not a zombie (from /proc where it exists)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def remove_owned(owner: int | None = None) -> list[str]:
    """Remove what a dead process left in /dev/shm (and the temporary folder); return it.

    ``owner=None``: every entry of :data:`OWNED` whose owning process is gone (called when a
    pool starts: a parent killed earlier left them). ``owner``: that process's entries (called
    by a worker once its parent ``owner`` died). An entry whose pid is alive is never touched.
    """
    removed = []
    for folder in dict.fromkeys((SHM, tempfile.gettempdir())):
        try:
            entries = os.listdir(folder)
        except OSError:
            continue
        for entry in entries:
            match = OWNED.match(entry)
            if match is None:
                continue
            pid = int(match.group(1))
            if (owner is not None and pid != owner) or pid_alive(pid):
                continue
            path = os.path.join(folder, entry)
            try:
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    os.unlink(path)
                removed.append(path)
            except OSError:  # another worker removed it first, or not ours to remove
                pass
    return removed


def watch_parent(parent: int) -> None:
    """In a pool worker: exit this process soon after process ``parent`` dies.

    Starts (once per process) a daemon thread that looks every :data:`PARENT_POLL` seconds
    whether this process was re-parented or ``parent`` is gone; then it removes what
    ``parent`` left in /dev/shm (:func:`remove_owned`) and ends this process with
    ``os._exit``. Without it, ``multiprocessing``'s workers waited on their task queue for
    ever, and loky's for its idle timeout (5 minutes), each keeping the shared segments and
    semaphores. A no-op in ``parent`` itself (joblib runs one-worker calls and threads there).
    """
    global _watching
    if _watching or os.getpid() == parent:
        return
    _watching = True
    ppid = os.getppid()

    def watch() -> None:
        while os.getppid() == ppid and pid_alive(parent):
            time.sleep(PARENT_POLL)
        remove_owned(parent)
        os._exit(0)

    threading.Thread(target=watch, name="nbody-parent-watch", daemon=True).start()


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
