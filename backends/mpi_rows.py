"""Backend ``mpi``: rows of the kernel shared among MPI ranks (mpi4py).

Two algorithms, both built on :func:`backends.numba_parallel.accel_block`, the compiled
serial row kernel (one core per rank):

``"allgather"``
    Every rank holds all N particles, computes a contiguous block of about N/P rows and the
    blocks are assembled on every rank with ``Allgatherv``. Memory per rank: O(N).
``"ring"``
    Every rank keeps only its own block of about N/P particles. Blocks of sources travel
    around the ring of ranks (``Isend``/``Irecv`` of the next block posted before the
    computation on the current one), so after P steps every rank has summed the forces of all
    N sources on its own particles (how much of a transfer really overlaps depends on the MPI
    library's progress engine: without a progress thread a large block may move only when the
    ranks reach ``Waitall``; it is tiny next to the block's O((N/P)^2) computation anyway).
    Memory per rank: its own block plus two travelling blocks, O(N/P): the path that scales
    past one machine's memory. :func:`accel_local` is this algorithm on local slices only;
    :func:`accel` with ``algorithm="ring"`` takes the full arrays, lets each rank use its
    slice and assembles the full result with ``Allgatherv``.

Collective calls: every function here that takes ``comm`` is collective, so **every rank of
``comm`` must call it, with the same arguments** (for :func:`accel_local`: the same ``G``,
``softening`` and its own slice). Arguments are validated on every rank and the outcome is
agreed on with one small ``allgather`` before any data moves, so invalid input on some ranks
raises an error on all ranks (the faulty ones raise their own, precise error) instead of
leaving the others waiting in a collective forever.

``mpi4py.MPI`` is imported lazily inside the functions: importing it initializes MPI, which
``import backends`` and ``backends.available()`` must not do. Run without ``mpiexec``, MPI
starts as a single rank and the backend works on one core.
"""

from __future__ import annotations

import numpy as np

from backends._contract import check_result, evaluate, validate
from backends.numba_parallel import accel_block

__all__ = ["ALGORITHMS", "accel", "accel_local", "partition"]

ALGORITHMS = ("allgather", "ring")


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


def _ring(m, x, G, softening, comm, counts):
    """Accelerations of this rank's particles; source blocks travel around the ring.

    ``m``, ``x``: this rank's (n_r,) and (n_r, 3) particles; ``counts``: every rank's n_r.
    Step k computes against the block that started on rank ``rank - k`` while the next one
    is already in flight, so communication may overlap computation. A travelling block is
    packed as ``[masses (c), positions (3c)]`` in one float64 buffer.
    """
    MPI = _mpi()
    size, rank = comm.Get_size(), comm.Get_rank()
    n_r = m.shape[0]
    acc = np.zeros((n_r, 3))
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
        if c and n_r:
            acc += accel_block(x, cur[:c], cur[c : 4 * c].reshape(c, 3), G, softening)
        MPI.Request.Waitall(requests)
        cur, nxt = nxt, cur
    return acc


def _ring_full(m, x, G, softening, comm):
    """Ring algorithm from full arrays: each rank takes its slice; result on every rank."""
    MPI = _mpi()
    counts, displs = partition(m.shape[0], comm.Get_size())
    lo, hi = displs[comm.Get_rank()], displs[comm.Get_rank()] + counts[comm.Get_rank()]
    local = _ring(m[lo:hi], x[lo:hi], G, softening, comm, counts)
    out = np.empty((m.shape[0], 3))
    comm.Allgatherv(local, [out, counts * 3, displs * 3, MPI.DOUBLE])
    return out


def _allgather(m, x, G, softening, comm):
    """Compute a block of rows per rank; assemble them on every rank with ``Allgatherv``."""
    MPI = _mpi()
    counts, displs = partition(m.shape[0], comm.Get_size())
    lo, hi = displs[comm.Get_rank()], displs[comm.Get_rank()] + counts[comm.Get_rank()]
    local = accel_block(x[lo:hi], m, x, G, softening) if hi > lo else np.empty((0, 3))
    out = np.empty((m.shape[0], 3))
    comm.Allgatherv(local, [out, counts * 3, displs * 3, MPI.DOUBLE])
    return out


def accel(masses, positions, G=1.0, *, softening=0.0, comm=None, algorithm="allgather"):
    """Gravitational accelerations computed by all ranks of ``comm``; every rank gets all.

    Collective: every rank of ``comm`` must call it with the same arguments.

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
    algorithm : {"allgather", "ring"}, optional
        ``"allgather"``: each rank computes N/P rows against all N sources. ``"ring"``: each
        rank uses only its N/P particles and source blocks circulate (see the module
        docstring); with full arrays given here this saves no memory, see
        :func:`accel_local` for that.

    Returns
    -------
    (N, 3) ndarray of float64
        The same full result on every rank.

    Raises
    ------
    TypeError, ValueError
        Invalid arguments, raised on every rank (after one collective agreement).
    """
    comm = _check_comm(comm)
    error = inp = None
    try:
        algorithm = _check_algorithm(algorithm)
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
    kernel = _allgather if algorithm == "allgather" else _ring_full
    return evaluate("mpi", inp, kernel, comm)


def accel_local(masses, positions, G=1.0, *, softening=0.0, comm=None) -> np.ndarray:
    """Ring algorithm on local slices: each rank passes and gets only its own particles.

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
    comm = _check_comm(comm)
    error = inp = None
    try:
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
    if counts.sum() <= 1:  # no pairs anywhere: same answer on every rank, no messages
        return np.zeros((inp.masses.shape[0], 3))
    acc = _ring(inp.masses, inp.positions, inp.G, inp.softening, comm, counts)
    finite = bool(np.isfinite(acc).all())
    if comm.allreduce(not finite, op=_mpi().LOR):  # overflow anywhere: raise everywhere
        check_result(acc, "mpi")
        raise FloatingPointError(
            "backend 'mpi': the result overflowed float64 (inf or NaN) on another rank; "
            "rescale the units"
        )
    return acc
