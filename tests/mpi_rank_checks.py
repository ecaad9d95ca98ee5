"""Checks run on every rank under ``mpiexec -n P`` by tests/test_mpi.py (not collected itself).

Each rank asserts; an AssertionError on any rank aborts the job (non-zero exit). On success
every rank prints ``OK rank R of P``.
"""

from __future__ import annotations

import sys
import traceback

import numpy as np
from mpi4py import MPI

from backends import benchmark_system, mpi_rows, numba_parallel, reference, relative_error

TOL = 1e-12


def system(n, seed):
    m, x = benchmark_system(n, seed)
    if n:
        x[1::5] = x[0]  # coincident particles
    return m, x


def raises_everywhere(comm, func, expected_here, match):
    """Call the collective ``func`` on every rank; it must raise ``expected_here`` here."""
    try:
        func()
    except expected_here as exc:
        assert match in str(exc), (match, str(exc))
    else:
        raise AssertionError(f"rank {comm.rank}: no {expected_here.__name__} raised")


def main():
    comm = MPI.COMM_WORLD
    rank, size = comm.rank, comm.size
    assert size >= 2, "run under mpiexec -n P with P >= 2"
    for n in (0, 1, 2, size - 1, size + 1, 31):
        m, x = system(n, seed=n)
        ref = reference.accel(m, x, 1.5, softening=0.0)
        for algorithm in mpi_rows.EXACT_ALGORITHMS:
            out = mpi_rows.accel(m, x, 1.5, algorithm=algorithm)
            assert out.shape == (n, 3)
            assert relative_error(out, ref) <= TOL, (n, algorithm)
        # the ring on local slices: uneven, some empty (rank 0 gets none, the last most)
        cuts = np.linspace(0, n, size + 1).astype(int)
        cuts[1] = 0  # needs size >= 2
        lo, hi = cuts[rank], cuts[rank + 1]
        local = mpi_rows.accel_local(m[lo:hi], x[lo:hi], 1.5)
        assert local.shape == (hi - lo, 3)
        assert relative_error(local, ref[lo:hi]) <= TOL if hi > lo else True

    # each pair once, hybrid threads, fallback, determinism (N = 4 * 1024 + 7: uneven blocks)
    m, x = system(4 * 1024 + 7, seed=9)
    ref = numba_parallel.accel(m, x, 0.5, softening=0.003)
    for algorithm in mpi_rows.EXACT_ALGORITHMS:
        runs = [
            mpi_rows.accel(m, x, 0.5, softening=0.003, algorithm=algorithm, threads_per_rank=t)
            for t in (1, 2, 1)
        ]
        for out in runs:
            assert relative_error(out, ref) <= 1e-13, (algorithm, relative_error(out, ref))
        assert np.array_equal(runs[0], runs[2]), algorithm  # deterministic for given P, T
        # every rank holds the same result
        assert np.array_equal(comm.bcast(runs[1] if rank == 0 else None), runs[1])
    # ring traffic: about P/2 + 1 messages per rank (none for P = 1), O(N/P) bytes
    mpi_rows.accel_local(m[: 100 * (rank + 1)], x[: 100 * (rank + 1)], threads_per_rank=1)
    traffic = mpi_rows.last_traffic
    assert traffic["messages"] == size // 2 + 1, (traffic, size)
    # a pair far below the float32 estimate's range: exact path on every rank, still right
    xc = x.copy()
    xc[4] = 0.0  # at the origin, where float64 holds the gap (next to x ~ 1 it rounds away)
    xc[5] = 1e-21 * np.array([1.0, -0.5, 0.25])
    summed = []  # the rows each call of the exact row kernel sums, on this rank
    block = mpi_rows.accel_block
    mpi_rows.accel_block = lambda targets, *args: (
        summed.append(len(targets)) or block(targets, *args)
    )
    for algorithm in mpi_rows.EXACT_ALGORITHMS:
        summed.clear()
        out = mpi_rows.accel(m, xc, algorithm=algorithm)
        assert relative_error(out, numba_parallel.accel(m, xc)) <= 1e-13, algorithm
        # only the pair's two rows are summed again: shared out among the ranks (allgather),
        # or on their owner's rank against every travelling block (ring)
        mine = sum(summed) if algorithm == "allgather" else max(summed, default=0)
        assert comm.allreduce(mine) == 2, (algorithm, summed)
    mpi_rows.accel_block = block
    assert mpi_rows.default_threads_per_rank(comm) >= 1

    # a subcommunicator: the even ranks only
    sub = comm.Split(rank % 2, rank)
    m, x = system(23, seed=5)
    out = mpi_rows.accel(m, x, 2.0, softening=0.1, comm=sub, algorithm="ring")
    assert relative_error(out, reference.accel(m, x, 2.0, softening=0.1)) <= TOL
    sub.Free()

    # invalid input on rank 1 only: every rank raises, none waits forever
    m, x = system(10, seed=1)
    bad = x[:, :2] if rank == 1 else x
    match = "positions must have shape" if rank == 1 else "invalid arguments on rank(s) [1]"
    raises_everywhere(comm, lambda: mpi_rows.accel(m, bad, algorithm="ring"), ValueError, match)
    raises_everywhere(comm, lambda: mpi_rows.accel_local(m, bad), ValueError, match)
    # ranks disagreeing on G or N
    G = 1.0 + rank
    raises_everywhere(comm, lambda: mpi_rows.accel(m, x, G), ValueError, "ranks disagree")
    raises_everywhere(comm, lambda: mpi_rows.accel_local(m, x, G), ValueError, "ranks disagree")
    raises_everywhere(comm, lambda: mpi_rows.accel(m[rank:], x[rank:]), ValueError, "disagree")
    # an overflow on one rank's slice only is raised on every rank
    mo = np.array([1e308, 1e308]) if rank == 0 else np.ones(1)
    xo = np.array([[0.0, 0, 0], [1e-3, 0, 0]]) if rank == 0 else np.full((1, 3), 1e3)
    raises_everywhere(comm, lambda: mpi_rows.accel_local(mo, xo), FloatingPointError, "overflow")

    comm.Barrier()
    print(f"OK rank {rank} of {size}", flush=True)


if __name__ == "__main__":
    try:
        main()
    except BaseException:  # one failing rank must end the job, not leave the others waiting
        traceback.print_exc()
        sys.stderr.flush()
        MPI.COMM_WORLD.Abort(1)
