"""Checks of the distributed tree run on every rank under ``mpiexec -n P`` (not collected).

``python tests/mpi_tree_rank_checks.py edges``: N < P, coincident points, zero and
cancelling masses, ranks left without particles, uneven and empty slices, invalid input on
one rank, the exact fallback, ``distribute``, a lattice whose central forces cancel.
``... accuracy``: the rms error on Gaussian, Plummer, two far clumps and a thin disc against
exact summation, within 2x of one-process ``tree`` and within its declared bound. Each rank
asserts; a failure on any rank aborts the job (non-zero exit). On success every rank
prints ``OK rank R of P``.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

import numpy as np
from mpi4py import MPI

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # benchmarks.fmm_systems

from mpi_rank_checks import raises_everywhere  # noqa: E402
from test_mpi_tree import SYSTEMS, rms_error, system  # noqa: E402

from backends import (  # noqa: E402
    mpi_rows,
    mpi_tree,
    numba_parallel,
    reference,
    relative_error,
    systems,
)
from backends import tree_barnes_hut as tree  # noqa: E402


def edges(comm):
    rank, size = comm.rank, comm.size
    rng = np.random.default_rng(5)
    # tiny systems, N < P included: theta = 0 is direct summation, exact to rounding
    for n in (0, 1, 2, size - 1, size + 1, 37):
        m, x = rng.random(n), rng.standard_normal((n, 3))
        ref = reference.accel(m, x, 1.5, softening=0.01)
        for theta in (0.0, 0.7):
            out = mpi_rows.accel(m, x, 1.5, softening=0.01, algorithm="tree", theta=theta)
            assert out.shape == (n, 3)
            err = relative_error(out, ref)
            assert err <= (1e-12 if theta == 0.0 else tree.tolerance(theta=theta)), (n, err)
    # all particles at one point (every rank but one left without particles): zeros
    m, x = np.ones(50), np.full((50, 3), 2.5)
    assert np.array_equal(mpi_tree.accel(m, x), np.zeros((50, 3)))
    # zero total mass: all zero, or of both signs cancelling (tree opens such nodes)
    m0, x0 = np.zeros(40), rng.standard_normal((40, 3))
    assert np.array_equal(mpi_tree.accel(m0, x0), np.zeros((40, 3)))
    mc = np.tile([1.0, -1.0], 30)
    xc = rng.standard_normal((60, 3))
    ref = reference.accel(mc, xc)
    out = mpi_tree.accel(mc, xc, theta=0.5)
    # forces of cancelling masses nearly cancel too: compared against the largest one
    scale = np.linalg.norm(ref, axis=1).max()
    assert np.sqrt(np.mean(np.sum((out - ref) ** 2, axis=1))) / scale <= tree.tolerance()
    # half the particles coincident, the rest spread: a rank gets only the coincident ones
    m, x = rng.random(400), rng.standard_normal((400, 3))
    x[:200] = x[0]
    ref = numba_parallel.accel(m, x)
    out = mpi_tree.accel(m, x, theta=0.5)
    assert rms_error(out, ref) <= 2 * rms_error(tree.accel(m, x, theta=0.5), ref) + 1e-12
    # accel_local on uneven slices, rank 0 passing none: the caller's order comes back
    m, x = system("gauss", 3001, seed=2)
    ref = numba_parallel.accel(m, x, 0.5, softening=0.002)
    cuts = np.linspace(0, 3001, size + 1).astype(int)
    cuts[1] = 0
    lo, hi = cuts[rank], cuts[rank + 1]
    for local in (
        mpi_tree.accel_local(m[lo:hi], x[lo:hi], 0.5, softening=0.002, threads_per_rank=1),
        mpi_rows.accel_local(m[lo:hi], x[lo:hi], 0.5, softening=0.002, algorithm="tree"),
    ):
        assert local.shape == (hi - lo, 3)
        err = rms_error(local, ref[lo:hi]) if hi > lo else 0.0
        assert err <= tree.tolerance(), err
    # the work of the previous call balances the next one
    assert mpi_tree.last_stats["imbalance"] < 1.2, mpi_tree.last_stats
    # distribute: every particle lands on exactly one rank, ids travel with it
    ids = np.arange(lo, hi, dtype=np.float64)
    md, xd, idd = mpi_tree.distribute(m[lo:hi], x[lo:hi], ids)
    got = np.concatenate(comm.allgather(idd[:, 0])).astype(int)
    assert np.array_equal(np.sort(got), np.arange(3001))
    assert np.array_equal(md, m[idd[:, 0].astype(int)])
    assert np.array_equal(xd, x[idd[:, 0].astype(int)])
    # particles already with their owners stay there (but for the few that the splitters,
    # drawn from samples of different local sets, now put on the other side)
    mpi_tree.accel_local(md, xd, threads_per_rank=1)
    assert mpi_tree.last_stats["moved"] <= 0.02 * md.shape[0], mpi_tree.last_stats
    # a pair far below the float32 estimate's range: the exact path, still right
    xe = x.copy()
    xe[4] = 0.0  # at the origin, where float64 holds the gap (next to x ~ 1 it rounds away)
    xe[5] = 1e-21 * np.array([1.0, -0.5, 0.25])
    out = mpi_tree.accel(m, xe, theta=0.0)
    assert relative_error(out, numba_parallel.accel(m, xe)) <= 1e-12
    # only the group holding the pair (on one rank) was walked again
    assert comm.allreduce(mpi_tree.last_stats["walked_again"]) == 1, mpi_tree.last_stats
    # particles along a line (forces cancel: no tree bound holds) are summed directly,
    # with the full arrays and on local slices alike, whatever each rank holds
    ml, xl = systems.make("line", 2000, seed=3)
    ref = numba_parallel.accel(ml, xl)
    assert relative_error(mpi_tree.accel(ml, xl), ref) <= 1e-9
    lo, hi = rank * 2000 // size, (rank + 1) * 2000 // size
    local = mpi_tree.accel_local(ml[lo:hi], xl[lo:hi])
    assert mpi_tree.last_stats.get("direct") == "line", mpi_tree.last_stats
    assert relative_error(local, ref[lo:hi]) <= 1e-9 if hi > lo else local.shape == (0, 3)
    # so are particles along a curve (a ring: a line at each particle's scale), judged from
    # the samples of every rank's slice
    t = np.random.default_rng(8).random(2000) * 2.0 * np.pi
    xr = np.stack([np.cos(t), np.sin(t), 0.5 * np.cos(t)], 1)
    ref = numba_parallel.accel(ml, xr)
    local = mpi_tree.accel_local(ml[lo:hi], xr[lo:hi], theta=1.0, quadrupole=True)
    assert mpi_tree.last_stats.get("direct") == "line", mpi_tree.last_stats
    assert relative_error(local, ref[lo:hi]) <= 1e-9 if hi > lo else local.shape == (0, 3)
    # far from the origin the system is centred (as tree does): the error is the unshifted one
    mk, xk = systems.make("corner", 3000, seed=4)
    for shift in (0.0, 1e8):
        out = mpi_tree.accel(mk, xk + shift, theta=0.3, quadrupole=True)
        err = rms_error(out, numba_parallel.accel(mk, xk + shift))
        assert err <= tree.tolerance(theta=0.3, quadrupole=True), (shift, err)
        if shift == 0.0:
            err0 = err
    assert err <= 1.5 * err0, (err, err0)
    # where forces cancel (the centre of a lattice) the targets of every rank whose pulls
    # nearly cancel are walked again over every rank's tree, as tree does (step 7)
    from benchmarks.fmm_systems import SYSTEMS as MORE

    ml3, xl3 = MORE["lattice"](3000, 4)
    ref = numba_parallel.accel(ml3, xl3)
    for options in ({}, {"theta": 0.3, "quadrupole": True}):
        err = rms_error(mpi_tree.accel(ml3, xl3, **options), ref)
        assert err <= 0.2 * tree.tolerance(**options), (options, err)
        assert mpi_tree.last_stats["refined"] >= 1, mpi_tree.last_stats
    # masses of alternating signs: the received nodes carry their sum of |m| (without it,
    # 12x the bound at theta 0.7 with quadrupoles on 4 ranks)
    ml3[::2] *= -1.0
    ref = numba_parallel.accel(ml3, xl3)
    mpi_tree._WORK.clear()  # both calls below from the same decomposition (by count)
    rounds = mpi_tree.accel(ml3, xl3, theta=0.7, quadrupole=True)
    err = rms_error(rounds, ref)
    assert err <= 0.5 * tree.tolerance(theta=0.7, quadrupole=True), err
    # there most particles qualify: they travel in rounds of about one rank's share (no
    # rank holds them all), with the results of one round up to the sums' rounding order
    stats = dict(mpi_tree.last_stats)
    assert stats["refined"] > stats["n"] // 3 and stats["refine_batches"] >= 2, stats
    before = mpi_tree.REFINE_ROUND
    try:
        mpi_tree.REFINE_ROUND = 10**9
        mpi_tree._WORK.clear()
        once = mpi_tree.accel(ml3, xl3, theta=0.7, quadrupole=True)
        assert mpi_tree.last_stats["refine_batches"] == 1, mpi_tree.last_stats
    finally:
        mpi_tree.REFINE_ROUND = before
    assert relative_error(rounds, once) <= 1e-13
    # invalid input on rank 1 only, or ranks disagreeing: raised on every rank
    mb, xb = system("gauss", 10, seed=1)
    bad = xb[:, :2] if rank == 1 else xb
    match = "positions must have shape" if rank == 1 else "invalid arguments on rank(s) [1]"
    raises_everywhere(comm, lambda: mpi_tree.accel(mb, bad), ValueError, match)
    raises_everywhere(comm, lambda: mpi_tree.accel_local(mb, bad), ValueError, match)
    theta = 0.5 + 0.1 * rank
    raises_everywhere(comm, lambda: mpi_tree.accel(mb, xb, theta=theta), ValueError, "disagree")
    # an overflow on one rank's slice only is raised on every rank
    mo = np.array([1e308, 1e308]) if rank == 0 else np.ones(1)
    xo = np.array([[0.0, 0, 0], [1e-3, 0, 0]]) if rank == 0 else np.full((1, 3), 1e3)
    raises_everywhere(comm, lambda: mpi_tree.accel_local(mo, xo), FloatingPointError, "overflow")


def accuracy(comm):
    for kind in SYSTEMS:
        m, x = system(kind, 3000, seed=11)
        ref = numba_parallel.accel(m, x)
        for options in ({"theta": 0.6}, {"theta": 0.7, "quadrupole": True}):
            out = mpi_tree.accel(m, x, **options)
            one = tree.accel(m, x, **options)
            err, err1 = rms_error(out, ref), rms_error(one, ref)
            assert err <= 2 * err1, (kind, options, err, err1)
            assert err <= tree.tolerance(**options), (kind, options, err)
            if comm.rank == 0:
                print(f"{comm.size} {kind} {options} rms {err:.3e} tree {err1:.3e}", flush=True)


def main():
    comm = MPI.COMM_WORLD
    {"edges": edges, "accuracy": accuracy}[sys.argv[1]](comm)
    comm.Barrier()
    print(f"OK rank {comm.rank} of {comm.size}", flush=True)


if __name__ == "__main__":
    try:
        main()
    except BaseException:  # one failing rank must end the job, not leave the others waiting
        traceback.print_exc()
        sys.stderr.flush()
        MPI.COMM_WORLD.Abort(1)
