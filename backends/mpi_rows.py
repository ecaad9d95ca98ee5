"""Backend ``mpi``: the kernel shared among MPI ranks (mpi4py), each pair once, or a tree.

Both exact algorithms compute every pair of particles exactly once across all ranks (Newton's
third law), with the symmetric block kernel :func:`backends._pair_kernel.pair_block` that
``numba_parallel`` and the process pools use, so ranks, threads and processes do the same
arithmetic and differ only in how they hand out block pairs and add up partial forces.

Preparation (every rank): positions are copied into a ``(4, n)`` structure-of-arrays array
scaled by a power of two ``s`` chosen from the bounding box of the *whole* system and the
softening, so every rank uses the same ``s`` (the ring, whose ranks hold only their own
blocks, agrees on the box with one ``Allreduce`` of 6 numbers). Scaling by a power of two is
exact. ``s == 0`` (an extent above ~1e54) sends the whole evaluation, on every rank, to the
exact path: the non-symmetric row algorithm with ``sqrt`` and division
(:func:`backends.numba_parallel.accel_block`, which takes its own exact path when needed).
A pair closer than ~1e-18 of the system's extent (outside the float32 estimate's range)
makes its two rows, and only those, non-finite: the ranks sum just those rows again on the
exact path (``allgather``: shared out among the ranks; ``ring``: every rank its own, while
the source blocks travel the ring once) and keep every other row.

``"allgather"``
    Every rank holds all N particles. The triangle of pairs ``i < j`` is cut into ``2P``
    blocks of rows; rank ``r`` computes rows of blocks ``r`` and ``2P - 1 - r`` against all
    later rows (equal shares: a block near the top has long rows, its partner near the bottom
    short ones) into a ``(3, N)`` partial sum. ``Reduce_scatter`` sums the partial forces
    and leaves each rank its N/P rows; ``Allgatherv`` gives everybody the full result.
    Per rank and evaluation: compute N(N-1)/(2P) pairs; 2 collectives moving about
    ``2 * 24 N (P - 1) / P`` bytes. Memory: O(N) per rank (positions, one partial sum).
``"ring"`` (symmetric half-ring)
    Every rank keeps only its own block of about N/P particles. Step 0: the pairs inside the
    block. Then a *travelling* block (its positions and the forces accumulated on its
    particles so far) moves one rank to the right per step; at step ``k`` rank ``r`` holds the
    block of rank ``r - k`` and computes every pair between its own block and the visitor
    once, adding to both. After ``K = P // 2`` steps every pair of blocks has met once
    (blocks at ring distance ``d`` and ``P - d`` are the same pair), and the visitor's forces
    go straight back to their owner (one message). With even P the blocks at distance P/2 meet
    on both ranks of the pair: each computes half of that block pair (the lower-numbered rank
    its own first half of rows against the visitor, the other the visitor's second half
    against its own block), so no pair is done twice and the work stays even. The first hop
    carries positions only (the forces are still zero) and overlaps the step-0 block.
    Per rank and evaluation: compute about N^2/(2P) pairs; ``K + 1`` point-to-point
    messages of ``32 n``, ``56 n`` (K - 1 times) and ``24 n`` bytes with ``n = N/P``, about
    ``28 N`` bytes in all whatever P; memory: its own block plus two travelling blocks of
    ``7 n`` doubles, O(N/P). :func:`accel_local` is this algorithm on local slices only;
    :func:`accel` with ``algorithm="ring"`` takes the full arrays, lets each rank use its
    slice and assembles the full result with ``Allgatherv``.

Threads per rank (hybrid ranks x threads): ``threads_per_rank=T`` runs a rank's share on
T Numba threads. The share is cut into ``2T`` lanes of equal work (for T = 1: one lane, no
scratch), two per thread (``prange`` gives each thread one contiguous, equal share of the
lanes), each lane summing into its own accumulator; the lanes are then added in lane order.
Scratch: ``2T`` partial sums of the rank's accumulator (``2T * 3N`` doubles for allgather,
``2T * 6 n`` for a ring step). The default (``None``) is
:func:`default_threads_per_rank`: the cores this rank may run on, divided evenly among the
ranks of the communicator that share its node, at least 1, at most Numba's thread pool
(``NUMBA_NUM_THREADS``): never more threads than cores unless asked for. The calling
process's Numba thread count (``numba.set_num_threads``) is restored after every call.

Determinism: for a given number of ranks P, threads per rank T and N (and slices, for
:func:`accel_local`) the result is bitwise reproducible: the decomposition, the lane order
and MPI's reduction (MPICH's algorithm choice depends only on P and the message sizes) are
fixed. Different P or T change the order of summation, at the 1e-15 level.

Collective calls: every function here that takes ``comm`` is collective, so **every rank of
``comm`` must call it, with the same arguments** (for :func:`accel_local`: the same ``G``,
``softening`` and its own slice). Arguments are validated on every rank and the outcome is
agreed on with one small ``allgather`` before any data moves, so invalid input on some ranks
raises an error on all ranks (the faulty ones raise their own, precise error) instead of
leaving the others waiting in a collective forever. The ring's point-to-point messages use
tags 0 to P on ``comm``.

``"tree"`` (approximate)
    The Barnes-Hut tree distributed over the ranks: a work-balanced Morton decomposition
    (parallel sample sort), local trees and locally essential trees, ``tree``'s group walk;
    options ``theta=`` and ``quadrupole=`` as in ``tree``. See :mod:`backends.mpi_tree`.

After each call, :data:`last_traffic` holds this rank's bulk communication of that call:
``messages`` and ``bytes`` sent (point-to-point messages as sent; each collective counted as
a bandwidth-optimal algorithm moves it: P - 1 messages and (P - 1)/P of the vector; the
small agreement and bounding-box collectives are not counted).

``mpi4py.MPI`` is imported lazily inside the functions: importing it initializes MPI, which
``import backends`` and ``backends.available()`` must not do. Run without ``mpiexec``, MPI
starts as a single rank and the backend works on one process.
"""

from __future__ import annotations

import os

import numpy as np
from numba import njit, prange

from backends._contract import (
    check_result,
    column_range,
    evaluate,
    non_finite_rows,
    validate,
)
from backends._pair_kernel import ALIGN, FM, pair_block
from backends.numba_parallel import accel_block

__all__ = [
    "ALGORITHMS",
    "EXACT_ALGORITHMS",
    "accel",
    "accel_local",
    "default_threads_per_rank",
    "last_traffic",
    "partition",
    "tolerance",
]

ALGORITHMS = ("allgather", "ring", "tree")
EXACT_ALGORITHMS = ("allgather", "ring")  #: direct summation, each pair once

#: This rank's bulk communication in the last call: ``{"messages": int, "bytes": int}``.
last_traffic = {"messages": 0, "bytes": 0}

_DEFAULT_THREADS: dict[str, int] = {}  # cached for the predefined COMM_WORLD and COMM_SELF


def _mpi():
    from mpi4py import MPI  # initializes MPI on first import

    return MPI


def partition(n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Split ``n`` rows into ``size`` contiguous blocks as evenly as possible.

    The first ``n % size`` blocks get one row more; with ``n < size`` the last blocks are
    empty.

    Parameters
    ----------
    n : int
        Number of rows (>= 0).
    size : int
        Number of blocks (>= 1), e.g. the number of ranks.

    Returns
    -------
    counts, displs : (size,) ndarray of int64
        Rows in each block, and the index of each block's first row.
    """
    if size < 1 or n < 0:
        raise ValueError(f"partition needs n >= 0 and size >= 1; got n={n}, size={size}")
    counts = np.full(size, n // size, dtype=np.int64)
    counts[: n % size] += 1
    displs = np.zeros(size, dtype=np.int64)
    np.cumsum(counts[:-1], out=displs[1:])
    return counts, displs


def _usable_cores() -> list[int]:
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def default_threads_per_rank(comm=None) -> int:
    """Threads per rank that use this rank's cores without oversubscribing them.

    Collective over ``comm``: the ranks sharing a node (``Split_type(COMM_TYPE_SHARED)``)
    exchange the sets of cores they may run on (``os.sched_getaffinity``). Ranks bound to
    disjoint cores get their own count; ranks sharing cores split their union evenly:
    ``max(1, min(len(mine), len(union) // ranks_on_node))``, capped by Numba's thread pool
    (``NUMBA_NUM_THREADS``). Cached for ``COMM_WORLD`` and ``COMM_SELF``.

    Parameters
    ----------
    comm : mpi4py.MPI.Intracomm, optional
        Default ``MPI.COMM_WORLD``.

    Returns
    -------
    int
        At least 1.
    """
    import numba

    MPI = _mpi()
    comm = _check_comm(comm)
    key = "WORLD" if comm == MPI.COMM_WORLD else "SELF" if comm == MPI.COMM_SELF else None
    if key in _DEFAULT_THREADS:
        return _DEFAULT_THREADS[key]
    mine = _usable_cores()
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        sets = node.allgather(mine)
    finally:
        node.Free()
    union = set().union(*map(set, sets))
    threads = max(1, min(len(mine), len(union) // len(sets), numba.config.NUMBA_NUM_THREADS))
    if key is not None:
        _DEFAULT_THREADS[key] = threads
    return threads


def _check_comm(comm):
    MPI = _mpi()
    if comm is None:
        return MPI.COMM_WORLD
    if isinstance(comm, MPI.Comm) and comm == MPI.COMM_NULL:
        raise TypeError("comm must be a valid intracommunicator; got MPI.COMM_NULL")
    if not isinstance(comm, MPI.Intracomm):
        raise TypeError(
            "comm must be an mpi4py intracommunicator such as MPI.COMM_WORLD or "
            f"MPI.COMM_SELF; got {comm!r}"
        )
    return comm


def _check_algorithm(algorithm) -> str:
    if not isinstance(algorithm, str) or algorithm not in ALGORITHMS:
        raise ValueError(
            f"algorithm must be one of {', '.join(map(repr, ALGORITHMS))}; got {algorithm!r}"
        )
    return algorithm


def _check_threads(threads_per_rank) -> int | None:
    if threads_per_rank is None:
        return None
    import numba

    if isinstance(threads_per_rank, bool) or not isinstance(threads_per_rank, int | np.integer):
        raise TypeError(f"threads_per_rank must be None or an int >= 1; got {threads_per_rank!r}")
    limit = numba.config.NUMBA_NUM_THREADS
    if not 1 <= threads_per_rank <= limit:
        raise ValueError(
            f"threads_per_rank must be between 1 and Numba's thread pool, NUMBA_NUM_THREADS = "
            f"{limit} (set that environment variable before the first import of numba for "
            f"more); got {threads_per_rank}"
        )
    return int(threads_per_rank)


def _agree(comm, error: BaseException | None, key) -> list:
    """Raise on every rank if validation failed on any, else return every rank's key.

    Collective. ``key`` is what this rank validated (None when ``error`` is set). The faulty
    ranks re-raise their own error; the others raise a ValueError naming the faulty ranks.
    """
    keys = comm.allgather(None if error is not None else key)
    if error is not None:
        raise error
    bad = [rank for rank, k in enumerate(keys) if k is None]
    if bad:
        raise ValueError(
            f"invalid arguments on rank(s) {bad} of this communicator (see the error there); "
            "every rank must pass the same arguments"
        )
    return keys


# ---------------------------------------------------------------- compiled task runners


@njit(cache=True, nogil=True, fastmath=FM, error_model="numpy")
def _run_serial(pa, acc_a, pb, acc_b, tasks, t0, t1, eps2, same):
    """Run block-pair tasks ``t0 .. t1 - 1`` of ``tasks`` ``(K, 4)`` in order, one thread.

    A task is ``(a0, a1, b0, b1)``. With ``same`` (``pa is pb``, ``acc_a is acc_b``) a task
    with equal ranges is a diagonal block; without it the two blocks are different arrays
    even when their ranges are equal.
    """
    for t in range(t0, t1):
        a0, a1, b0, b1 = tasks[t, 0], tasks[t, 1], tasks[t, 2], tasks[t, 3]
        if same and a0 == b0 and a1 == b1:  # two inlined copies, each specialised: with a
            pair_block(pa, acc_a, a0, a1, pb, acc_b, b0, b1, eps2, True)  # runtime flag the
        else:  # rectangle's loop ran up to 40 % slower
            pair_block(pa, acc_a, a0, a1, pb, acc_b, b0, b1, eps2, False)


@njit(cache=True, parallel=True, nogil=True, fastmath=FM, error_model="numpy")
def _run_lanes(pa, sa, pb, sb, tasks, starts, eps2, same):
    """Lane ``l`` (tasks ``starts[l]:starts[l + 1]``) into ``sa[l]``/``sb[l]``, on threads.

    The private accumulators are allocated and added up by the caller: allocating them here
    measurably slowed the lanes' loops (about 20 %, Numba 0.68).
    """
    for lane in prange(starts.shape[0] - 1):
        _run_serial(pa, sa[lane], pb, sb[lane], tasks, starts[lane], starts[lane + 1], eps2, same)


def _lanes_for(threads: int) -> int:
    return 1 if threads == 1 else 2 * threads


def _run(pa, acc_a, pb, acc_b, lanes: list[list[tuple]], eps2: float, same: bool, threads):
    """Run ``lanes`` (lists of ``(a0, a1, b0, b1)``) on ``threads`` Numba threads."""
    flat = [t for lane in lanes for t in lane]
    if not flat:
        return
    tasks = np.array(flat, dtype=np.int64).reshape(-1, 4)
    if threads == 1 or len(lanes) == 1:
        _run_serial(pa, acc_a, pb, acc_b, tasks, 0, tasks.shape[0], eps2, same)
        return
    import numba

    starts = np.zeros(len(lanes) + 1, dtype=np.int64)
    np.cumsum([len(lane) for lane in lanes], out=starts[1:])
    sa = np.zeros((len(lanes), *acc_a.shape))
    sb = sa if same else np.zeros((len(lanes), *acc_b.shape))
    before = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        _run_lanes(pa, sa, pa if same else pb, sb, tasks, starts, eps2, same)
    finally:
        numba.set_num_threads(before)
    with np.errstate(invalid="ignore", over="ignore"):  # a pair too close: the caller checks
        for lane in range(len(lanes)):  # a fixed order: the result does not depend on threads
            acc_a += sa[lane]
            if not same:
                acc_b += sb[lane]


def _edge(k: int, n: int) -> int:
    """``k`` rounded down to a multiple of ``ALIGN`` (``n`` stays ``n``): whole-vector rows."""
    return n if k >= n else k - k % ALIGN


def _triangle_lanes(n: int, size: int, rank: int, nlanes: int) -> list[list[tuple]]:
    """Rank ``rank``'s equal share of the pairs ``i < j < n``, cut into ``nlanes`` lanes.

    Rows are cut into ``2 * size`` blocks; the rank takes blocks ``rank`` and
    ``2 * size - 1 - rank``, each cut into ``nlanes`` sub-blocks; lane ``l`` takes sub-block
    ``l`` of the first and ``nlanes - 1 - l`` of the second (equal work: their rows' mean
    length adds up to N). A sub-block ``[a0, a1)`` is its diagonal block plus the strip
    ``[a1, n)``.
    """
    nb = 2 * size
    lanes: list[list[tuple]] = [[] for _ in range(nlanes)]
    for which, b in enumerate((rank, nb - 1 - rank)):
        lo, hi = _edge(b * n // nb, n), _edge((b + 1) * n // nb, n)
        for lane in range(nlanes):
            sub = lane if which == 0 else nlanes - 1 - lane
            a0 = _edge(lo + sub * (hi - lo) // nlanes, n)
            a1 = _edge(lo + (sub + 1) * (hi - lo) // nlanes, n)
            if a1 - a0 > 0:
                lanes[lane].append((a0, a1, a0, a1))
                if a1 < n:
                    lanes[lane].append((a0, a1, a1, n))
    return lanes


def _rect_lanes(a0: int, a1: int, b0: int, b1: int, nlanes: int) -> list[list[tuple]]:
    """Rows ``[a0, a1)`` against ``[b0, b1)`` cut by rows into ``nlanes`` equal lanes."""
    lanes: list[list[tuple]] = [[] for _ in range(nlanes)]
    if b1 <= b0:
        return lanes
    for lane in range(nlanes):
        r0 = a0 + lane * (a1 - a0) // nlanes
        r1 = a0 + (lane + 1) * (a1 - a0) // nlanes
        if r1 > r0:
            lanes[lane].append((r0, r1, b0, b1))
    return lanes


# ---------------------------------------------------------------- scaling


def _scale(lo, hi, softening: float) -> float:
    """Power of two ``s`` putting ``max(extent, softening) * s`` in ``[1, 2)``; 0: exact path.

    ``numba_parallel``'s own rule, applied to bounds that every rank agrees on.
    """
    from backends.numba_parallel import _scale as scale

    lo = np.ascontiguousarray(lo, dtype=np.float64)
    hi = np.ascontiguousarray(hi, dtype=np.float64)
    return float(scale(lo, hi, float(softening)))


def _soa(m: np.ndarray, x: np.ndarray, s: float) -> np.ndarray:
    """``(4, n)`` C-contiguous array of the scaled x, y, z and the masses.

    ``numba_parallel``'s copy: it starts on a 64-byte cache line (a 512-bit load that
    straddles two lines costs the pair loop; NumPy aligns to 16 bytes only).
    """
    from backends.numba_parallel import _soa as soa

    return soa(m, x, s, 0)


def _empty64(count: int) -> np.ndarray:
    """Uninitialised float64 vector starting on a 64-byte cache line (see :func:`_soa`)."""
    buf = np.empty(count + 8)
    off = (-buf.ctypes.data % 64) // 8
    return buf[off : off + count]


def _count(messages: int, nbytes: int) -> None:
    last_traffic["messages"] += int(messages)
    last_traffic["bytes"] += int(nbytes)


def _count_collective(size: int, vector_bytes: int) -> None:
    """Count a collective on a ``vector_bytes`` vector as a bandwidth-optimal one moves it."""
    if size > 1:
        _count(size - 1, vector_bytes * (size - 1) // size)


# ---------------------------------------------------------------- allgather


def _allgather_rows(m, x, G, softening, comm, rows=None):
    """Exact path: a share of the rows per rank against all sources (sqrt and division).

    All N rows, or the rows ``rows`` (the same on every rank); returns them, in that order,
    on every rank.
    """
    MPI = _mpi()
    size, rank = comm.Get_size(), comm.Get_rank()
    targets = x if rows is None else x[rows]
    counts, displs = partition(targets.shape[0], size)
    lo, hi = displs[rank], displs[rank] + counts[rank]
    local = accel_block(targets[lo:hi], m, x, G, softening) if hi > lo else np.empty((0, 3))
    out = np.empty((targets.shape[0], 3))
    comm.Allgatherv(local, [out, counts * 3, displs * 3, MPI.DOUBLE])
    _count_collective(size, out.nbytes)
    return out


def _allgather(m, x, G, softening, comm, threads):
    """Each pair once: a balanced share of the triangle per rank, ``Reduce_scatter``."""
    MPI = _mpi()
    size, rank = comm.Get_size(), comm.Get_rank()
    n = m.shape[0]
    s = _scale(*column_range(x), softening)  # the same data, so the same s
    if s > 0.0:
        p = _soa(m, x, s)
        acc = np.zeros((3, n))
        eps = softening * s
        _run(p, acc, p, acc, _triangle_lanes(n, size, rank, _lanes_for(threads)), eps * eps,
             True, threads)  # fmt: skip
        partial = np.ascontiguousarray(acc.T)  # (n, 3): a rank's rows are contiguous
        counts, displs = partition(n, size)
        if size > 1:
            local = np.empty((int(counts[rank]), 3))
            comm.Reduce_scatter(partial, [local, MPI.DOUBLE], recvcounts=(counts * 3).tolist(),
                                op=MPI.SUM)  # fmt: skip
            _count_collective(size, partial.nbytes)
        else:
            local = partial
        with np.errstate(over="ignore", invalid="ignore"):  # overflow: checked below
            local = (local * (G * s)) * s
        out = np.empty((n, 3))
        comm.Allgatherv(local, [out, counts * 3, displs * 3, MPI.DOUBLE])
        _count_collective(size, out.nbytes)
        # the same full array on every rank: the same decision, the same rows
        rows = non_finite_rows(out)
        if rows.shape[0]:  # a pair too close for the fast path: its rows, exactly
            out[rows] = _allgather_rows(m, x, G, softening, comm, rows)
        return out
    return _allgather_rows(m, x, G, softening, comm)


# ---------------------------------------------------------------- ring


def _ring_rows(m, x, G, softening, comm, counts, rows=None):
    """Exact path of the ring: all P source blocks travel; rows against each (no symmetry).

    The rows are all of this rank's block, or the local rows ``rows`` (each rank its own,
    maybe none: the blocks travel all the same); returns them in that order.
    """
    MPI = _mpi()
    size, rank = comm.Get_size(), comm.Get_rank()
    n_r = m.shape[0]
    targets = x if rows is None else np.ascontiguousarray(x[rows])
    acc = np.zeros((targets.shape[0], 3))
    cap = 4 * int(max(counts))
    cur, nxt = np.empty(cap), np.empty(cap)
    cur[:n_r] = m
    cur[n_r : 4 * n_r] = x.reshape(-1)
    right, left = (rank + 1) % size, (rank - 1) % size
    for step in range(size):
        c = int(counts[(rank - step) % size])  # the block in hand came from rank - step
        requests = []
        if step < size - 1:
            c_in = int(counts[(rank - step - 1) % size])
            requests = [
                comm.Irecv([nxt[: 4 * c_in], MPI.DOUBLE], source=left, tag=step),
                comm.Isend([cur[: 4 * c], MPI.DOUBLE], dest=right, tag=step),
            ]
            _count(1, 32 * c)
        if c and targets.shape[0]:
            acc += accel_block(targets, cur[:c], cur[c : 4 * c].reshape(c, 3), G, softening)
        MPI.Request.Waitall(requests)
        cur, nxt = nxt, cur
    return acc


def _half_ring(p, acc, counts, eps2, comm, threads):
    """Symmetric half-ring on the prepared own block ``p`` (4, n_r); adds into ``acc``."""
    MPI = _mpi()
    size, rank = comm.Get_size(), comm.Get_rank()
    n_r = p.shape[1]
    nl = _lanes_for(threads)
    half = size // 2  # steps after the own block; the last one split when size is even
    right, left = (rank + 1) % size, (rank - 1) % size
    cap = 7 * int(max(counts))
    cur, nxt = _empty64(cap), _empty64(cap)
    requests = []
    if half:  # first hop: positions only (the forces are zero), overlapping step 0
        c_in = int(counts[left])
        requests = [
            comm.Irecv([cur[: 4 * c_in], MPI.DOUBLE], source=left, tag=0),
            comm.Isend([p, MPI.DOUBLE], dest=right, tag=0),
        ]
        _count(1, p.nbytes)
    if n_r > 1:
        _run(p, acc, p, acc, _triangle_lanes(n_r, 1, 0, nl), eps2, True, threads)
    MPI.Request.Waitall(requests)
    for step in range(1, half + 1):
        c = int(counts[(rank - step) % size])  # the visitor started on rank - step
        visitor = cur[: 7 * c].reshape(7, c)  # rows x, y, z, m, then its forces ax, ay, az
        if step == 1:
            visitor[4:] = 0.0
        if 2 * half == size and step == half:  # even P: this block pair is shared, halve it
            lanes = (
                _rect_lanes(0, n_r // 2, 0, c, nl)
                if rank < half
                else _rect_lanes(0, n_r, c // 2, c, nl)
            )
        else:
            lanes = _rect_lanes(0, n_r, 0, c, nl)
        if n_r and c:
            _run(p, acc, visitor[:4], visitor[4:], lanes, eps2, False, threads)
        if step < half:
            c_next = int(counts[(rank - step - 1) % size])
            comm.Sendrecv(
                [cur[: 7 * c], MPI.DOUBLE], dest=right, sendtag=step,
                recvbuf=[nxt[: 7 * c_next], MPI.DOUBLE], source=left, recvtag=step,
            )  # fmt: skip
            _count(1, 56 * c)
            cur, nxt = nxt, cur
    if half:  # the visitor's forces go home; ours come back from rank + half
        c = int(counts[(rank - half) % size])
        back = np.empty((3, n_r))
        comm.Sendrecv(
            [cur[4 * c : 7 * c], MPI.DOUBLE], dest=(rank - half) % size, sendtag=size,
            recvbuf=[back, MPI.DOUBLE], source=(rank + half) % size, recvtag=size,
        )  # fmt: skip
        _count(1, 24 * c)
        acc += back


def _ring_local(m, x, G, softening, comm, counts, threads):
    """Ring on this rank's block: symmetric fast path, else (collectively) the exact one."""
    MPI = _mpi()
    bounds = np.full(6, -np.inf)
    if m.shape[0]:
        lo, hi = column_range(x)
        bounds[:3] = -lo
        bounds[3:] = hi
    comm.Allreduce(MPI.IN_PLACE, bounds, op=MPI.MAX)  # the whole system's box, on every rank
    s = _scale(-bounds[:3], bounds[3:], softening)
    if s > 0.0:
        p = _soa(m, x, s)
        acc = np.zeros((3, m.shape[0]))
        eps = softening * s
        _half_ring(p, acc, counts, eps * eps, comm, threads)
        with np.errstate(over="ignore", invalid="ignore"):  # overflow: checked below
            out = (acc.T * (G * s)) * s
        out = np.ascontiguousarray(out)
        rows = non_finite_rows(out)
        if comm.allreduce(rows.shape[0] > 0, op=MPI.LOR):  # a pair too close somewhere:
            out[rows] = _ring_rows(m, x, G, softening, comm, counts, rows)  # its rows, exactly
        return out
    return _ring_rows(m, x, G, softening, comm, counts)


def _ring_full(m, x, G, softening, comm, threads):
    """Ring algorithm from full arrays: each rank takes its slice; result on every rank."""
    MPI = _mpi()
    size, rank = comm.Get_size(), comm.Get_rank()
    counts, displs = partition(m.shape[0], size)
    lo, hi = displs[rank], displs[rank] + counts[rank]
    local = _ring_local(m[lo:hi], x[lo:hi], G, softening, comm, counts, threads)
    out = np.empty((m.shape[0], 3))
    comm.Allgatherv(local, [out, counts * 3, displs * 3, MPI.DOUBLE])
    _count_collective(size, out.nbytes)
    return out


def _tree_options(algorithm, theta, quadrupole) -> dict:
    """``theta``/``quadrupole`` for the tree (None: its defaults); an error for the others."""
    if algorithm != "tree":
        if theta is not None or quadrupole is not None:
            raise ValueError(
                f"theta and quadrupole apply to algorithm='tree' only; got algorithm={algorithm!r}"
            )
        return {}
    options = {}
    if theta is not None:
        options["theta"] = theta
    if quadrupole is not None:
        options["quadrupole"] = quadrupole
    return options


def tolerance(*, algorithm="allgather", theta=None, quadrupole=None, **_) -> float:
    """Return the declared rms error bound of ``accel`` with these options.

    ``1e-12`` for the exact algorithms (direct summation, exact to rounding); for
    ``"tree"``, ``tree``'s bound at the same ``theta`` and ``quadrupole``
    (:func:`backends.tree_barnes_hut.tolerance`).
    """
    options = _tree_options(_check_algorithm(algorithm), theta, quadrupole)
    if algorithm != "tree":
        return 1e-12
    from backends import mpi_tree

    return mpi_tree.tolerance(**options)


def _kernel(m, x, G, softening, comm, algorithm, threads):
    if algorithm == "allgather":
        return _allgather(m, x, G, softening, comm, threads)
    return _ring_full(m, x, G, softening, comm, threads)


# ---------------------------------------------------------------- public


def accel(
    masses,
    positions,
    G=1.0,
    *,
    softening=0.0,
    comm=None,
    algorithm="allgather",
    threads_per_rank=None,
    theta=None,
    quadrupole=None,
):
    """Gravitational accelerations computed by all ranks of ``comm``; every rank gets all.

    Each pair is computed once across the ranks (see the module docstring). Collective:
    every rank of ``comm`` must call it with the same arguments (``threads_per_rank`` may
    differ between ranks).

    Parameters
    ----------
    masses : (N,) array_like of real
    positions : (N, 3) array_like of real
    G : float, optional
        Gravitational constant.
    softening : float, optional
        Plummer softening length (>= 0).
    comm : mpi4py.MPI.Intracomm, optional
        The ranks that share the work; default ``MPI.COMM_WORLD`` (a single rank when run
        without ``mpiexec``).
    algorithm : {"allgather", "ring", "tree"}, optional
        ``"allgather"``: each rank computes a balanced share of the triangle of pairs from
        all N particles, partial forces summed by ``Reduce_scatter``. ``"ring"``: each rank
        uses only its N/P particles and blocks travel half way round with their forces (see
        the module docstring); with full arrays given here this saves no memory, see
        :func:`accel_local` for that. ``"tree"``: the distributed Barnes-Hut tree
        (approximate, :func:`backends.mpi_tree.accel`).
    threads_per_rank : int, optional
        Numba threads each rank uses for its share; default
        :func:`default_threads_per_rank` (the rank's cores split evenly among the ranks on
        its node, never oversubscribing).
    theta, quadrupole : optional
        ``tree``'s options, for ``algorithm="tree"`` only (default: ``tree``'s defaults).

    Returns
    -------
    (N, 3) ndarray of float64
        The same full result on every rank (for ``"tree"`` within :func:`tolerance`).

    Raises
    ------
    TypeError, ValueError
        Invalid arguments, raised on every rank (after one collective agreement).
    """
    if algorithm == "tree":
        from backends import mpi_tree

        return mpi_tree.accel(masses, positions, G, softening=softening, comm=comm,
                              threads_per_rank=threads_per_rank,
                              **_tree_options(algorithm, theta, quadrupole))  # fmt: skip
    comm = _check_comm(comm)
    error = inp = None
    try:
        algorithm = _check_algorithm(algorithm)
        _tree_options(algorithm, theta, quadrupole)
        threads = _check_threads(threads_per_rank)
        inp = validate(masses, positions, G, softening)
    except Exception as exc:  # re-raised below, after every rank has heard of it
        error = exc
    key = None if inp is None else (inp.masses.shape[0], inp.G, inp.softening, algorithm)
    keys = _agree(comm, error, key)
    if len(set(keys)) > 1:
        raise ValueError(
            "ranks disagree on (N, G, softening, algorithm): "
            f"{sorted(set(keys))}; every rank must pass the same arguments"
        )
    if threads is None:
        threads = default_threads_per_rank(comm)
    last_traffic.update(messages=0, bytes=0)
    return evaluate("mpi", inp, _kernel, comm, algorithm, threads)


def accel_local(
    masses,
    positions,
    G=1.0,
    *,
    softening=0.0,
    comm=None,
    threads_per_rank=None,
    algorithm="ring",
    theta=None,
    quadrupole=None,
) -> np.ndarray:
    """Ring (or tree) algorithm on local slices: each rank passes and gets only its own particles.

    The system is the concatenation of every rank's slice in rank order. Each rank's memory
    stays O(N/P) (its own block plus two travelling blocks of the largest slice), so systems
    larger than one machine's memory can be spread over many. Slices may be uneven or empty.
    Collective: every rank of ``comm`` must call it, with the same ``G`` and ``softening``.

    Parameters
    ----------
    masses : (n_r,) array_like of real
        This rank's masses.
    positions : (n_r, 3) array_like of real
        This rank's positions.
    G : float, optional
        Gravitational constant.
    softening : float, optional
        Plummer softening length (>= 0).
    comm : mpi4py.MPI.Intracomm, optional
        Default ``MPI.COMM_WORLD``.
    threads_per_rank : int, optional
        Numba threads for this rank's share; default :func:`default_threads_per_rank`.
    algorithm : {"ring", "tree"}, optional
        ``"tree"``: the distributed Barnes-Hut tree on local slices
        (:func:`backends.mpi_tree.accel_local`, approximate, O(N/P + LET) memory per rank).
    theta, quadrupole : optional
        ``tree``'s options, for ``algorithm="tree"`` only.

    Returns
    -------
    (n_r, 3) ndarray of float64
        Accelerations of this rank's particles due to all N particles.

    Raises
    ------
    TypeError, ValueError
        Invalid arguments, or ranks disagreeing on ``G``/``softening``, raised on every rank.
    FloatingPointError
        The result overflowed float64 on any rank (raised on every rank).
    """
    if algorithm == "tree":
        from backends import mpi_tree

        return mpi_tree.accel_local(masses, positions, G, softening=softening, comm=comm,
                                    threads_per_rank=threads_per_rank,
                                    **_tree_options(algorithm, theta, quadrupole))  # fmt: skip
    comm = _check_comm(comm)
    error = inp = None
    try:
        if algorithm != "ring":
            raise ValueError(f"accel_local's algorithm must be 'ring' or 'tree'; got {algorithm!r}")
        _tree_options(algorithm, theta, quadrupole)
        threads = _check_threads(threads_per_rank)
        inp = validate(masses, positions, G, softening)
    except Exception as exc:  # re-raised below, after every rank has heard of it
        error = exc
    key = None if inp is None else (inp.masses.shape[0], inp.G, inp.softening)
    keys = _agree(comm, error, key)
    if len({k[1:] for k in keys}) > 1:
        raise ValueError(
            f"ranks disagree on (G, softening): {sorted({k[1:] for k in keys})}; every rank "
            "must pass the same G and softening"
        )
    counts = np.array([k[0] for k in keys], dtype=np.int64)
    last_traffic.update(messages=0, bytes=0)
    if counts.sum() <= 1:  # no pairs anywhere: same answer on every rank, no messages
        return np.zeros((inp.masses.shape[0], 3))
    if threads is None:
        threads = default_threads_per_rank(comm)
    acc = _ring_local(inp.masses, inp.positions, inp.G, inp.softening, comm, counts, threads)
    finite = bool(np.isfinite(acc).all())
    if comm.allreduce(not finite, op=_mpi().LOR):  # overflow anywhere: raise everywhere
        check_result(acc, "mpi")
        raise FloatingPointError(
            "backend 'mpi': the result overflowed float64 (inf or NaN) on another rank; "
            "rescale the units"
        )
    return acc
