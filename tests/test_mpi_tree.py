"""The distributed tree, ``mpi`` with ``algorithm="tree"``: in-process, virtual ranks, mpiexec."""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import backends

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_tree import rms_error  # noqa: E402
from test_tree import system as tree_system  # noqa: E402

REASON = backends.unavailable_reason("mpi")
if REASON is None:
    from backends._mpi_launch import find_mpiexec, launch

    if find_mpiexec() is None:
        REASON = "mpiexec not found (it comes with the mpich wheel)"
pytestmark = pytest.mark.skipif(REASON is not None, reason=str(REASON))

#: Gaussian, Plummer, two clumps far apart, thin disc.
SYSTEMS = ["gauss", "plummer", "clumps", "disc"]


def system(kind, n, seed=0):
    """One of :data:`SYSTEMS`; ``clumps``: two Gaussian clumps 100 sigma apart, 1:3 in N."""
    if kind != "clumps":
        return tree_system(kind, n, seed)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3))
    x[: n // 4, 0] += 100.0
    return rng.random(n), x


@pytest.fixture(scope="module")
def mt():
    from backends import mpi_tree

    return mpi_tree


@pytest.fixture(scope="module")
def tree():
    from backends import tree_barnes_hut

    return tree_barnes_hut


def exact(m, x, *args, **kw):
    return backends.get("numba_parallel").accel(m, x, *args, **kw)


# ---------------------------------------------------------------- in-process


@pytest.mark.parametrize(
    "options", [{"theta": 0.6}, {"theta": 0.5, "quadrupole": True, "softening": 0.01, "G": 2.0}]
)
def test_one_rank_is_tree(mt, tree, options):
    # the same tree, walk and arithmetic: equal up to the rounding of the float32 multipole
    # sums (bitwise where both kernels were compiled alike; LLVM may vectorise the two
    # inlined copies of the walk differently, and fast-math lets it reorder those sums)
    from mpi4py import MPI

    m, x = system("plummer", 3000, seed=1)
    out = mt.accel(m, x, comm=MPI.COMM_SELF, **options)
    assert backends.relative_error(out, tree.accel(m, x, **options)) <= 1e-5
    local = backends.get("mpi").module.accel_local(
        m, x, comm=MPI.COMM_SELF, algorithm="tree", theta=options["theta"],
        quadrupole=options.get("quadrupole", False), softening=options.get("softening", 0.0),
        G=options.get("G", 1.0),
    )  # fmt: skip
    assert np.array_equal(local, out)


@pytest.mark.parametrize(
    ("kind", "ranks"),
    [(k, r) for r in (2, 3) for k in SYSTEMS]
    + [pytest.param(k, 8, marks=pytest.mark.slow) for k in SYSTEMS]
    + [("clumps", 64), ("disc", 64)],  # 64 ranks: 11 s a system, the two least even ones
)
def test_virtual_ranks_as_accurate_as_tree(mt, tree, kind, ranks):
    # the algorithm's own steps for P ranks in one process (the MPI plumbing is tested below)
    m, x = system(kind, 4000, seed=ranks)
    ref = exact(m, x)
    settings = [{"theta": 0.6}] + ([{"theta": 0.7, "quadrupole": True}] if ranks == 3 else [])
    for options in settings:
        out, stats = mt.virtual(m, x, ranks, **options)
        err, err1 = rms_error(out, ref), rms_error(tree.accel(m, x, **options), ref)
        assert err <= 2 * err1 and err <= tree.tolerance(**options), (err, err1)
        assert sum(stats["particles"]) == 4000 and all(stats["let_nodes"])


def test_virtual_ranks_walk_cancelling_targets_again(mt, tree):
    # the centre of a lattice: its pulls cancel; walked again over every rank's tree
    from benchmarks.fmm_systems import SYSTEMS as MORE

    m, x = MORE["lattice"](3000, 4)
    ref = exact(m, x)
    for options in ({}, {"theta": 0.7, "quadrupole": True}):
        out, _ = mt.virtual(m, x, 3, **options)
        assert rms_error(out, ref) <= 0.2 * tree.tolerance(**options), options


@pytest.mark.parametrize("ranks", [1, 3])
def test_only_the_group_of_a_too_close_pair_is_walked_again(mt, tree, ranks, monkeypatch):
    """A pair too close for the float32 estimate: its group's walk redone exactly, no other.

    (Walking every group again cost three times the call on a cusp with a few such pairs.)
    """
    from mpi4py import MPI

    m, x = system("gauss", 3000, seed=3)
    x[0] = 0.0  # at the origin, where float64 holds the gap
    x[-1] = 1e-40 * np.array([1.0, -0.5, 0.25])
    ref = exact(m, x)
    groups = []
    again = mt._walk_again

    def spy(*args):
        groups.append(again(*args))
        return groups[-1]

    monkeypatch.setattr(mt, "_walk_again", spy)
    if ranks == 1:
        out = mt.accel(m, x, comm=MPI.COMM_SELF)
        assert mt.last_stats["walked_again"] == 1
    else:
        out, _ = mt.virtual(m, x, ranks)
    assert groups == [1]  # on one rank: the pair shares a leaf, hence a group
    assert np.isfinite(out).all()
    err = np.linalg.norm(out - ref, axis=1) / np.linalg.norm(ref, axis=1)
    assert max(err[0], err[-1]) <= tree.tolerance()
    assert rms_error(out, ref) <= tree.tolerance()
    mt.accel(m[1:], x[1:], comm=MPI.COMM_SELF)
    assert mt.last_stats["walked_again"] == 0


@pytest.mark.parametrize("kind", SYSTEMS)
def test_theta_zero_ships_every_particle_exactly(mt, kind):
    # nothing is accepted: each LET must hold all the sender's particles, no node twice
    m, x = system(kind, 700, seed=3)
    out, stats = mt.virtual(m, x, 5, theta=0.0, softening=0.01)
    assert backends.relative_error(out, exact(m, x, softening=0.01)) <= 1e-12
    assert stats["let_particles"] == [700 - k for k in stats["particles"]]


def test_domain_boxes_cover_every_group(mt):
    from backends import _octree
    from backends import tree_barnes_hut as tbh

    m, x = system("clumps", 5000, seed=4)
    t = _octree.prepare(m, x, 1.0, 16, False)
    groups = tbh._groups(t.start, t.end, t.child, t.nchild, 64)
    for k in (1, 5, 48):
        boxes = mt.domain_boxes(t, 64, k)
        assert 1 <= boxes.shape[0] <= k
        inside = [
            any((b[:3] <= t.f[g, 11:14]).all() and (t.f[g, 14:17] <= b[3:]).all() for b in boxes)
            for g in groups
        ]
        assert all(inside)


def test_let_holds_what_the_walks_use_and_little_more(mt):
    # the exact union of what every target group's walk uses from the other ranks, against
    # what the domain boxes select: never less (else the walk would miss mass), little more
    m, x = system("gauss", 100_000, seed=6)
    _, st = mt.virtual(m, x, 4, evaluate=False, needed=True)
    for r in range(4):
        sent = st["let_nodes"][r] + st["let_particles"][r]
        need = st["let_needed_records"][r] + st["let_needed_particles"][r]
        assert st["let_nodes"][r] >= st["let_needed_records"][r]
        assert st["let_particles"][r] >= st["let_needed_particles"][r]
        assert sent <= 1.5 * need, (r, sent, need)


def test_work_weights_balance_the_next_call(mt):
    m, x = system("plummer", 6000, seed=5)
    _, first = mt.virtual(m, x, 4, theta=0.6)
    _, second = mt.virtual(m, x, 4, theta=0.6, weights=first["work_density"])
    imbalance = [max(s["work"]) / np.mean(s["work"]) for s in (first, second)]
    assert imbalance[1] < imbalance[0] and imbalance[1] < 1.05, imbalance


def test_splitters_cut_equal_weights_and_keep_equal_keys_together(mt):
    keys = np.array([5, 1, 3, 3, 3, 9, 7, 2], dtype=np.int64)
    split = mt.splitters(keys, np.ones(8), 4)
    owner = np.searchsorted(split, keys, side="right")
    assert np.bincount(owner, minlength=4).tolist() == [2, 0, 4, 2]  # 3, 3, 3 together
    assert len(set(owner[keys == 3])) == 1
    assert mt.splitters(keys, np.array([0, 0, 0, 0, 0, 0, 0, 8.0]), 2).tolist() == [3]


def test_options_are_validated_and_named(mt):
    m, x = system("gauss", 10)
    mpi = backends.get("mpi").module
    with pytest.raises(ValueError, match="theta must be finite and >= 0"):
        mt.accel(m, x, theta=-1.0)
    with pytest.raises(ValueError, match="boxes must be between 1 and 62"):
        mt.accel(m, x, boxes=63)
    with pytest.raises(TypeError, match="group_size must be an integer"):
        mt.accel_local(m, x, group_size=2.5)
    with pytest.raises(ValueError, match="theta and quadrupole apply to algorithm='tree' only"):
        mpi.accel(m, x, theta=0.5)
    with pytest.raises(ValueError, match="accel_local's algorithm must be 'ring' or 'tree'"):
        mpi.accel_local(m, x, algorithm="allgather")
    assert mpi.tolerance(algorithm="tree", theta=0.7) == backends.tolerance("tree", theta=0.7)
    assert mpi.tolerance(algorithm="ring") == 1e-12
    # the public door: the tree's bound for algorithm="tree", the exact one otherwise
    for options in ({"theta": 0.7}, {"theta": 0.3, "quadrupole": True}, {}):
        bound = backends.tolerance("mpi", algorithm="tree", **options)
        assert bound == backends.tolerance("tree", **options)
    assert backends.tolerance("mpi", algorithm="ring") == backends.tolerance("mpi") == 1e-12
    with pytest.raises(ValueError, match="algorithm must be one of"):
        backends.tolerance("mpi", algorithm="nope")


# ---------------------------------------------------------------- real mpiexec runs


def mpiexec(ranks, *args, timeout=300, module="backends.mpi_run"):
    """``mpiexec -n ranks python [-m module] args`` through the project's launcher."""
    target = ["-m", module] if module else []
    cmd = [find_mpiexec(), "-n", str(ranks), sys.executable, *target, *map(str, args)]
    return launch(cmd, timeout=timeout, cwd=ROOT)


def _ok(proc, ranks):
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = sorted(re.findall(rf"OK rank (\d+) of {ranks}", proc.stdout))
    assert found == [str(r) for r in range(ranks)], proc.stdout


def test_every_rank_checks_the_edge_cases():
    # N < P, coincident points (ranks left empty), zero and cancelling masses, uneven and
    # empty slices, distribute, traffic, the exact fallback, a line and a ring summed
    # directly, bad input on one rank, overflow
    _ok(mpiexec(3, "tests/mpi_tree_rank_checks.py", "edges", module=None), 3)


@pytest.mark.slow
@pytest.mark.parametrize("ranks", [1, 2, 3, 4, 8])
def test_accuracy_on_four_systems(ranks):
    # rms within 2x of one-process tree and within its bound (8 ranks oversubscribe 2 cores)
    proc = mpiexec(ranks, "tests/mpi_tree_rank_checks.py", "accuracy", module=None, timeout=900)
    _ok(proc, ranks)


def test_input_rows_are_read_without_the_rest_of_the_file(tmp_path):
    from backends import mpi_run

    m, x = system("gauss", 1000, seed=3)
    for kind, pos in (("c", x), ("fortran", np.asfortranarray(x)), ("f32", x.astype("f4"))):
        for savez in (np.savez, np.savez_compressed):
            path = tmp_path / f"{kind}.npz"
            savez(path, masses=m, positions=pos)
            header = mpi_run._npz_arrays(str(path))
            assert header["positions"][0] == (1000, 3)
            mb, xb = mpi_run._read_rows(str(path), header, 333, 667)
            np.testing.assert_array_equal(mb, m[333:667])
            np.testing.assert_array_equal(xb, np.asarray(pos, dtype=np.float64)[333:667])
    x[500, 1] = np.nan
    np.savez(tmp_path / "nan.npz", masses=m, positions=x)
    header = mpi_run._npz_arrays(str(tmp_path / "nan.npz"))
    with pytest.raises(mpi_run.UsageError, match=re.escape("got nan at index [500, 1]")):
        mpi_run._read_rows(str(tmp_path / "nan.npz"), header, 400, 600)
    for bad, message in (
        ({"masses": m, "positions": x[:, :2]}, "positions must have shape (N, 3)"),
        ({"masses": m[:10], "positions": x}, "must have the same length N"),
        ({"masses": m, "positions": x.astype(complex)}, "positions must hold real numbers"),
        ({"masses": m}, "no array positions (found: masses)"),
    ):
        np.savez(tmp_path / "bad.npz", **bad)
        with pytest.raises(mpi_run.UsageError, match=re.escape(message)):
            mpi_run._npz_arrays(str(tmp_path / "bad.npz"))


def test_mpi_run_tree_input_output_check(tmp_path, tree):
    m, x = system("disc", 2500, seed=7)
    src, dst = tmp_path / "in.npz", tmp_path / "out.npz"
    np.savez(src, masses=m, positions=x)
    proc = mpiexec(3, "--input", src, "--output", dst, "--algorithm", "tree", "--theta", 0.6,
                   "--quadrupole", "--softening", 0.001, "--G", 1.5, "--repeat", 2, "--check",
                   "--check-rows", 5000, "--json", "--threads-per-rank", 1)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    ref = exact(m, x, 1.5, softening=0.001)
    one = rms_error(tree.accel(m, x, 1.5, softening=0.001, theta=0.6, quadrupole=True), ref)
    assert (r["algorithm"], r["n"], r["check_rows"], r["theta"]) == ("tree", 2500, 2500, 0.6)
    assert r["bound"] == tree.tolerance(theta=0.6, quadrupole=True)
    assert r["error_rms"] <= min(2 * one, r["bound"]), (r["error_rms"], one)
    assert sum(r["particles_per_rank"]) == 2500 and r["let_particles"] > 0
    assert r["bytes_per_rank"] < 24 * 2500 and r["load_imbalance"] < 1.3
    for key in ("peak_rss_bytes", "distribute_bytes_per_rank", "let_bytes", "phase_seconds"):
        assert key in r
    assert isinstance(r["refined"], int) and 0 <= r["refined"] <= 2500
    assert r["refine_batches"] == (r["refined"] > 0)  # a few targets: one round
    with np.load(dst) as out:
        np.testing.assert_array_equal(out["positions"], x)
        assert rms_error(out["accelerations"], ref) == pytest.approx(r["error_rms"], rel=1e-6)


@pytest.mark.slow  # N < P is also in the edge cases above, under mpiexec
def test_mpi_run_tree_fewer_particles_than_ranks_and_text_report():
    proc = mpiexec(4, "--n", 3, "--algorithm", "tree", "--check", "--repeat", 1)
    assert proc.returncode == 0, proc.stderr
    assert "algorithm tree" in proc.stdout and "3 sampled rows" in proc.stdout
    err = float(proc.stdout.split("sampled rows: max ")[1].split(",")[0])
    assert err <= 1e-6  # one particle per rank: exact monopoles, summed in float32


def test_tree_failing_rank_ends_the_job_and_leaves_nothing():
    t0 = time.monotonic()
    proc = mpiexec(2, "--n", 4000, "--algorithm", "tree", "--fail-rank", 1, timeout=60)
    assert proc.returncode != 0 and time.monotonic() - t0 < 60
    assert "this rank fails on purpose" in proc.stderr
    assert any(p.startswith("/dev/shm/mpich_") for p in proc.runtime_files), proc
    assert [p for p in proc.runtime_files if os.path.exists(p)] == []


def test_tree_bad_options_exit_2_with_one_line():
    import subprocess

    for args, message in (
        (("--theta", "0.5"), "--theta and --quadrupole apply to --algorithm tree only"),
        (("--algorithm", "tree", "--theta", "-1"), "--theta must be finite and >= 0"),
        (("--algorithm", "tree", "--check-rows", "0"), "--check-rows must be >= 1"),
    ):  # one rank without mpiexec (the option parsing is the same on every rank)
        proc = subprocess.run([sys.executable, "-m", "backends.mpi_run", *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("mpi_run: error:")]
        assert len(errors) == 1 and message in errors[0], proc.stderr


@pytest.mark.slow  # two mpiexec jobs and the compare machinery: about 15 s
def test_compare_shows_the_mpi_tree_beside_tree(tmp_path):
    import subprocess

    js = tmp_path / "r.json"
    cmd = [sys.executable, "-m", "backends", "compare", "--n", "3000", "--repeat", "1",
           "--backends", "tree", "mpi", "--mpi-ranks", "2", "--mpi-threads-per-rank", "1",
           "--json", str(js), "--quiet"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = json.loads(js.read_text())["results"]
    labels = [r["label"] for r in rows]
    assert labels.index("mpi tree (2 ranks x 1 thread)") == labels.index("tree") + 1, labels
    row = rows[labels.index("mpi tree (2 ranks x 1 thread)")]
    assert row["status"] == "ok" and row["exact"] is False and row["error_ok"] is True
    assert row["tolerance"] == backends.tolerance("tree") and row["error_rms"] <= row["tolerance"]
    assert row["mpi_run"]["algorithm"] == "tree" and row["error_rows"] == 1000
