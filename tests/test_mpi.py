"""The ``mpi`` backend: in-process (one rank) and under real ``mpiexec -n 2`` / ``-n 4``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import random_system
from test_crossval import CASES, TOL, _case, _oracle

import backends
from backends import reference
from backends._mpi_launch import find_mpiexec, launch

ROOT = Path(__file__).resolve().parent.parent
REASON = backends.unavailable_reason("mpi")
MPIEXEC = find_mpiexec()  # next to this Python (the mpich wheel), else on PATH
if REASON is None and MPIEXEC is None:
    REASON = "mpiexec not found (it comes with the mpich wheel): pip install 'nbody-backends[mpi]'"
pytestmark = pytest.mark.skipif(REASON is not None, reason=str(REASON))

JSON_KEYS = {
    "ranks",
    "n",
    "algorithm",
    "seconds",
    "seconds_median",
    "seconds_all",
    "interactions_per_second",
    "error",
    "G",
    "softening",
    "seed",
    "peak_rss_bytes",
    "threads_per_rank",
    "threads_per_rank_all",
    "threads_per_rank_default",
    "messages_per_rank",
    "bytes_per_rank",
}


@pytest.fixture(scope="module")
def mpi():
    from backends import mpi_rows

    return mpi_rows


@pytest.fixture(scope="module")
def MPI():
    from mpi4py import MPI

    return MPI


# ---------------------------------------------------------------- in-process, one rank


@pytest.mark.parametrize(
    ("comm_name", "algorithm"), [("SELF", "allgather"), ("SELF", "ring"), ("WORLD", "ring")]
)
@pytest.mark.parametrize(("kind", "n", "softening", "G"), CASES)
def test_one_rank_agrees_with_oracle(mpi, MPI, comm_name, algorithm, kind, n, softening, G):
    # COMM_WORLD with "allgather" (the default) runs in test_crossval.py via the registry
    m, x = _case(kind, n)
    comm = getattr(MPI, f"COMM_{comm_name}")
    out = mpi.accel(m, x, G, softening=softening, comm=comm, algorithm=algorithm)
    assert out.shape == (n, 3) and out.dtype == np.float64
    assert backends.relative_error(out, _oracle(kind, n, softening, G)) <= TOL


@pytest.mark.parametrize("n", [0, 1, 2, 17])
def test_accel_local_on_one_rank_is_the_whole_system(mpi, MPI, n):
    m, x = random_system(n, seed=n)
    for comm in (None, MPI.COMM_SELF):
        out = mpi.accel_local(m, x, 0.7, softening=0.01, comm=comm)
        assert backends.relative_error(out, reference.accel(m, x, 0.7, softening=0.01)) <= TOL


def test_partition_is_contiguous_and_even(mpi):
    counts, displs = mpi.partition(10, 4)
    assert counts.tolist() == [3, 3, 2, 2] and displs.tolist() == [0, 3, 6, 8]
    counts, displs = mpi.partition(2, 4)
    assert counts.tolist() == [1, 1, 0, 0] and displs.tolist() == [0, 1, 2, 2]
    assert mpi.partition(0, 3)[0].tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="size >= 1"):
        mpi.partition(5, 0)


def test_bad_algorithm_and_comm_are_named(mpi, MPI):
    m, x = random_system(4)
    with pytest.raises(ValueError, match="must be one of 'allgather', 'ring', 'tree'; got 'x'"):
        mpi.accel(m, x, algorithm="x")
    for comm in (3, "world", MPI.COMM_NULL):
        with pytest.raises(TypeError, match="comm must be"):
            mpi.accel(m, x, comm=comm)
        with pytest.raises(TypeError, match="comm must be"):
            mpi.accel_local(m, x, comm=comm)


@pytest.mark.parametrize("algorithm", ["allgather", "ring"])
def test_threads_per_rank_agree_with_numba_parallel_and_repeat_bitwise(mpi, algorithm):
    from backends import numba_parallel

    m, x = random_system(3001, seed=4)
    x[7] = x[3]  # coincident pair
    ref = numba_parallel.accel(m, x, 0.8, softening=0.001)
    for threads in (1, 2):
        runs = [
            mpi.accel(m, x, 0.8, softening=0.001, algorithm=algorithm, threads_per_rank=threads)
            for _ in range(2)
        ]
        assert backends.relative_error(runs[0], ref) <= 1e-13
        assert np.array_equal(runs[0], runs[1])


def test_exact_path_for_pairs_below_the_estimate_range(mpi, MPI, monkeypatch):
    """Only the rows of too-close pairs are summed again exactly (every row for a far outlier).

    Redoing every row cost ten to twenty times the call on a cusp with a few such pairs.
    """
    from backends import numba_parallel

    m, x = random_system(3000, seed=8)
    # at the origin, where float64 holds the gaps (next to x ~ 1 they would round away): the
    # last row has a partner on each side, 1e-21 away (r2 * s**2 below float32's range), in
    # pairs that different threads sum, so their sums are +inf and -inf before the exact path
    gap = 1e-21 * np.array([1.0, -0.5, 0.25])
    x[-1] = 0.0
    x[8] = gap
    x[1500] = -gap
    summed = []
    block = mpi.accel_block

    def spy(targets, *args):
        summed.append(targets.copy())
        return block(targets, *args)

    monkeypatch.setattr(mpi, "accel_block", spy)
    ref = numba_parallel.accel(m, x)
    for algorithm in mpi.EXACT_ALGORITHMS:
        for threads in (1, 2):  # 2: the threads' sums are added in NumPy, quietly
            summed.clear()
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # no RuntimeWarning from the NaN fast sum
                out = mpi.accel(
                    m, x, algorithm=algorithm, comm=MPI.COMM_SELF, threads_per_rank=threads
                )
            assert backends.relative_error(out, ref) <= 1e-13
            assert len(summed) == 1, (algorithm, threads)  # one rank: one block of rows
            np.testing.assert_array_equal(summed[0], x[[8, 1500, 2999]])
    # one particle 2**190 away: the inputs' rescaling keeps the scale of the others (their
    # spread), and the half-extent, beyond 2**179, has no scale: every row, exactly
    far = x.copy()
    far[0] = [2.0**190, 0.0, 0.0]
    for algorithm in mpi.EXACT_ALGORITHMS:
        summed.clear()
        out = mpi.accel(m, far, algorithm=algorithm, comm=MPI.COMM_SELF)
        rows = [0, 1, 8, 1500, 2999]
        assert (
            backends.relative_error(out[rows], reference.accel_rows(m, far, 1.0, 0.0, rows)) <= TOL
        )
        assert sum(t.shape[0] for t in summed) == 3000, algorithm


def test_bad_threads_per_rank_is_named(mpi):
    m, x = random_system(4)
    for bad, err in ((0, ValueError), (10**6, ValueError), (1.5, TypeError), (True, TypeError)):
        with pytest.raises(err, match="threads_per_rank must be"):
            mpi.accel(m, x, threads_per_rank=bad)
        with pytest.raises(err, match="threads_per_rank must be"):
            mpi.accel_local(m, x, threads_per_rank=bad)


def test_default_threads_never_oversubscribe(mpi, MPI):
    threads = mpi.default_threads_per_rank(MPI.COMM_SELF)
    assert 1 <= threads <= len(os.sched_getaffinity(0))


def test_accel_local_validates_its_slice(mpi):
    with pytest.raises(ValueError, match="positions must have shape"):
        mpi.accel_local([1.0, 2.0], [[0.0, 0.0], [1.0, 0.0]])
    with pytest.raises(ValueError, match="softening must be >= 0"):
        mpi.accel_local([1.0], [[0.0, 0.0, 0.0]], softening=-1.0)
    with pytest.raises(FloatingPointError, match="overflow"):
        mpi.accel_local([1e308, 1e308], [[0.0, 0.0, 0.0], [1e-3, 0.0, 0.0]])


def test_import_backends_does_not_start_mpi():
    code = (
        "import sys, backends; backends.available(); backends.get('mpi'); "
        "assert 'mpi4py' not in sys.modules, 'mpi4py imported'"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)


def test_generated_block_equals_the_whole_system():
    from backends import mpi_run

    n, seed = 3 * mpi_run._CHUNK + 5, 11
    m, x = random_system(n, seed=seed)
    for lo, hi in ((0, n), (0, 0), (1000, 1030), (mpi_run._CHUNK - 1, 2 * mpi_run._CHUNK + 3)):
        mb, xb = mpi_run._generate_block(n, seed, lo, hi)
        np.testing.assert_array_equal(mb, m[lo:hi])
        np.testing.assert_array_equal(xb, x[lo:hi])


# ---------------------------------------------------------------- real mpiexec runs


def mpiexec(ranks, *args, timeout=180, module="backends.mpi_run"):
    """Run ``mpiexec -n ranks python -m module args`` from the repository root.

    Through the project's launcher: it ends the job's whole process tree and removes the MPI
    runtime's files the job leaves behind (a rank calling ``MPI_Abort``, a timeout).
    """
    target = ["-m", module] if module else []
    cmd = [MPIEXEC, "-n", str(ranks), sys.executable, *target, *map(str, args)]
    return launch(cmd, timeout=timeout, cwd=ROOT)


@pytest.mark.parametrize("ranks", [2, *(pytest.param(r, marks=pytest.mark.slow) for r in (3, 4))])
def test_every_rank_checks_the_collective_api(ranks):
    # tests/mpi_rank_checks.py: both algorithms, accel_local on uneven and empty slices, a
    # subcommunicator, invalid input or disagreeing G/N on some ranks (raised everywhere),
    # threads per rank, determinism, the exact path, the half-ring's message count
    proc = mpiexec(ranks, "tests/mpi_rank_checks.py", module=None, timeout=300)
    assert proc.returncode == 0, proc.stderr
    # ranks' lines reach mpiexec's stdout independently: count them, not their layout
    found = sorted(re.findall(rf"OK rank (\d+) of {ranks}", proc.stdout))
    assert found == [str(r) for r in range(ranks)], proc.stdout


@pytest.mark.slow  # mpiexec jobs; the 2-rank round trip below runs by default
@pytest.mark.parametrize(("ranks", "threads"), [(1, 2), (2, 1)])
@pytest.mark.parametrize("algorithm", ["allgather", "ring"])
def test_hybrid_layouts_report_threads_and_agree(ranks, threads, algorithm):
    proc = mpiexec(ranks, "--n", 2501, "--algorithm", algorithm, "--threads-per-rank", threads,
                   "--softening", 0.01, "--G", 2.0, "--repeat", 1, "--check", "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["threads_per_rank"] == threads and report["threads_per_rank_default"] is False
    assert report["threads_per_rank_all"] == [threads] * ranks
    assert report["error"] <= 1e-13
    if algorithm == "ring" and ranks == 2:  # first hop, return: 2 messages of 32n and 24n bytes
        assert report["messages_per_rank"] == 2
        assert report["bytes_per_rank"] == 32 * 1251 + 24 * 1250  # max over the ranks


def test_default_threads_split_the_cores_among_the_ranks():
    proc = mpiexec(2, "--n", 300, "--repeat", 1, "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["threads_per_rank_default"] is True
    cores = len(os.sched_getaffinity(0))
    assert report["threads_per_rank_all"] == [max(1, min(cores // 2, cores))] * 2


def test_help_shows_defaults():
    proc = subprocess.run(
        [sys.executable, "-m", "backends.mpi_run", "--help"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    assert "(default: allgather)" in text and "(default: 42)" in text
    assert "--threads-per-rank T" in text and "each pair once" in text


@pytest.mark.parametrize(
    ("ranks", "algorithm", "n"),
    [
        (2, "allgather", 37),
        (2, "ring", 37),
        *(
            pytest.param(*case, marks=pytest.mark.slow)
            for case in ((4, "allgather", 3), (4, "ring", 3), (4, "ring", 41))
        ),
    ],
)
def test_input_output_round_trip(tmp_path, ranks, algorithm, n):
    m, x = random_system(n, seed=n)
    x[2] = x[0]  # coincident particles
    src, dst = tmp_path / "in.npz", tmp_path / "out.npz"
    np.savez(src, masses=m, positions=x)
    proc = mpiexec(
        ranks, "--input", src, "--output", dst, "--algorithm", algorithm, "--softening", 0.0,
        "--G", 1.5, "--repeat", 2, "--check", "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)  # exactly one JSON object on stdout
    assert JSON_KEYS <= set(report)
    assert (report["ranks"], report["n"], report["algorithm"]) == (ranks, n, algorithm)
    assert len(report["seconds_all"]) == 2 and report["seconds"] == min(report["seconds_all"])
    assert report["error"] <= TOL and report["seed"] is None and report["G"] == 1.5
    with np.load(dst) as out:
        np.testing.assert_array_equal(out["masses"], m)
        np.testing.assert_array_equal(out["positions"], x)
        ref = reference.accel(m, x, 1.5)
        assert backends.relative_error(out["accelerations"], ref) <= TOL


@pytest.mark.slow  # four ranks; two ranks run by default (test_input_output_round_trip)
@pytest.mark.parametrize("algorithm", ["allgather", "ring"])
def test_generated_system_on_four_ranks(tmp_path, algorithm):
    n, seed = 2 * 1024 + 39, 3  # several generation chunks, uneven blocks
    dst = tmp_path / "out.npz"
    proc = mpiexec(4, "--n", n, "--seed", seed, "--softening", 0.02, "--algorithm", algorithm,
                   "--repeat", 1, "--output", dst, "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["error"] is None and report["seed"] == seed and report["softening"] == 0.02
    m, x = random_system(n, seed=seed)
    full = m.nbytes + x.nbytes
    assert report["particle_bytes"] == (full if algorithm == "allgather" else -(-n // 4) * 32)
    with np.load(dst) as out:
        np.testing.assert_array_equal(out["positions"], x)
        ref = backends.accel(m, x, softening=0.02, backend="numpy")
        assert backends.relative_error(out["accelerations"], ref) <= TOL


def test_text_report_from_rank_zero_only():
    proc = mpiexec(2, "--n", 300, "--repeat", 2, "--check", "--algorithm", "ring",
                   "--threads-per-rank", 1)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("mpi_run: 2 rank(s) x 1 thread(s), N = 300, algorithm ring")
    assert sum(line.startswith("mpi_run:") for line in lines) == 1  # printed once
    for part in ("seconds per evaluation: best", "interactions per second", "peak RSS"):
        assert part in proc.stdout
    assert "error vs numba_parallel:" in lines[-1]
    assert float(lines[-1].split(":")[1].split()[0]) <= TOL


def _alive(pattern):
    out = subprocess.run(["ps", "-ww", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if pattern in line]


@pytest.mark.parametrize("ranks", [2, pytest.param(4, marks=pytest.mark.slow)])
def test_one_failing_rank_ends_the_job_fast_and_leaves_nothing(ranks):
    t0 = time.monotonic()
    proc = mpiexec(ranks, "--n", 4000, "--fail-rank", 1, timeout=30)  # MPIRunError = a hang
    seen = (proc.returncode, proc.wall, proc.stdout[-400:], proc.stderr[-800:])
    assert proc.returncode != 0, seen
    assert time.monotonic() - t0 < 30
    assert "RuntimeError: --fail-rank 1: this rank fails on purpose" in proc.stderr, seen
    assert f"mpi_run: rank 1 of {ranks} failed; aborting the job" in proc.stderr, seen
    # MPICH's shared memory and hydra's topology file were seen, and none is left; the
    # failing rank unlinked the shared memory itself (a bare mpiexec leaves none either)
    assert any(p.startswith("/dev/shm/mpich_") for p in proc.runtime_files), proc
    assert [p for p in proc.runtime_files if os.path.exists(p)] == []
    assert not [p for p in proc.removed if p.startswith("/dev/shm/")], proc.removed


def test_killed_job_leaves_no_process_and_no_file():
    # what the launcher does on a timeout or Ctrl-C: end the tree, remove the job's files
    from backends._mpi_launch import Job

    marker = f"sleeping-job-{os.getpid()}-{time.monotonic_ns()}"
    code = "from mpi4py import MPI; import time; MPI.COMM_WORLD.Barrier(); time.sleep(600)"
    job = Job([MPIEXEC, "-n", 2, sys.executable, "-c", code, marker], cwd=ROOT)
    with pytest.raises(subprocess.TimeoutExpired):
        job.wait(8)
    assert len(_alive(marker)) >= 2  # both ranks were running
    job.cleanup()
    job.proc.communicate()
    assert _alive(marker) == []
    assert any(path.startswith("/dev/shm/mpich_") for path, _ in job.files), job.files
    assert [path for path, _ in job.files if os.path.exists(path)] == []


@pytest.mark.parametrize(
    ("content", "args", "message"),
    [
        (b"not a zip archive", (), "not an .npz archive"),
        pytest.param(
            "no positions", (), "no array positions (found: masses)", marks=pytest.mark.slow
        ),
        pytest.param(
            "bad shape",
            (),
            "positions must have shape (N, 3); got shape (3, 2)",
            marks=pytest.mark.slow,
        ),
        (None, ("--algorithm", "fast"), "argument --algorithm: invalid choice: 'fast'"),
        (None, ("--softening", "-1"), "--softening must be >= 0"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, content, args, message):
    path = tmp_path / "in.npz"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "no positions":
        np.savez(path, masses=np.ones(3))
    elif content == "bad shape":
        np.savez(path, masses=np.ones(3), positions=np.ones((3, 2)))
    input_args = ("--input", path) if content is not None else ()
    proc = mpiexec(4, *input_args, *args, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    errors = [line for line in proc.stderr.splitlines() if line.startswith("mpi_run: error:")]
    assert len(errors) == 1 and message in errors[0], proc.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--threads-per-rank", "1000000"], "exceeds numba's limit of"),
        (["--output", "/proc/nbody-x.npz"], "--output /proc/nbody-x.npz: cannot be written"),
        (["--seed", "-1"], "--seed must be >= 0; got -1"),
        (["--n", "10000000000000"], "more than this machine can hold"),
    ],
)
def test_bad_options_exit_2_with_one_line_before_any_work(args, message):
    proc = subprocess.run(
        [sys.executable, "-m", "backends.mpi_run", "--repeat", "1", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]  # one line, no traceback
    assert proc.stderr.startswith("mpi_run: error: ") and message in proc.stderr


def test_launcher_refuses_absurd_rank_counts():
    from backends import _mpi_launch

    assert _mpi_launch.MAX_RANKS >= 64  # oversubscription tests (8-16 ranks on 2 cores)
    for bad in (0, _mpi_launch.MAX_RANKS + 1, 10**6):
        with pytest.raises(ValueError, match="ranks must be an integer between 1 and"):
            _mpi_launch.run(bad, 10, 1, 1, 10.0)
