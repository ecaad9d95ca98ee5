"""The ``mpi`` backend: in-process (one rank) and under real ``mpiexec -n 2`` / ``-n 4``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import random_system
from test_crossval import CASES, TOL, _case, _oracle

import backends
from backends import reference
from backends._mpi_launch import find_mpiexec

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
    with pytest.raises(ValueError, match="algorithm must be one of 'allgather', 'ring'; got 'x'"):
        mpi.accel(m, x, algorithm="x")
    for comm in (3, "world", MPI.COMM_NULL):
        with pytest.raises(TypeError, match="comm must be"):
            mpi.accel(m, x, comm=comm)
        with pytest.raises(TypeError, match="comm must be"):
            mpi.accel_local(m, x, comm=comm)


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
    """Run ``mpiexec -n ranks python -m module args`` from the repository root."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    target = ["-m", module] if module else []
    cmd = [MPIEXEC, "-n", str(ranks), sys.executable, *target, *map(str, args)]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_every_rank_checks_the_collective_api():
    # tests/mpi_rank_checks.py: both algorithms, accel_local on uneven and empty slices, a
    # subcommunicator, invalid input or disagreeing G/N on some ranks (raised everywhere)
    proc = mpiexec(3, "tests/mpi_rank_checks.py", module=None)
    assert proc.returncode == 0, proc.stderr
    # ranks' lines reach mpiexec's stdout independently: count them, not their layout
    assert sorted(re.findall(r"OK rank (\d+) of 3", proc.stdout)) == ["0", "1", "2"], proc.stdout


@pytest.mark.parametrize(
    ("ranks", "algorithm", "n"),
    [(2, "allgather", 37), (2, "ring", 37), (4, "allgather", 3), (4, "ring", 3), (4, "ring", 41)],
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
    proc = mpiexec(2, "--n", 300, "--repeat", 2, "--check", "--algorithm", "ring")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("mpi_run: 2 rank(s), N = 300, algorithm ring")
    assert sum(line.startswith("mpi_run:") for line in lines) == 1  # printed once
    for part in ("seconds per evaluation: best", "interactions per second", "peak RSS"):
        assert part in proc.stdout
    assert "error vs numba_parallel:" in lines[-1]
    assert float(lines[-1].split(":")[1].split()[0]) <= TOL


def test_one_failing_rank_ends_the_job_fast():
    t0 = time.monotonic()
    proc = mpiexec(4, "--n", 4000, "--fail-rank", 1, timeout=30)  # TimeoutExpired = a hang
    assert proc.returncode != 0
    assert time.monotonic() - t0 < 30
    assert "RuntimeError: --fail-rank 1: this rank fails on purpose" in proc.stderr
    assert "mpi_run: rank 1 of 4 failed; aborting the job" in proc.stderr


@pytest.mark.parametrize(
    ("content", "args", "message"),
    [
        (b"not a zip archive", (), "not an .npz archive"),
        ("no positions", (), "no array positions (found: masses)"),
        ("bad shape", (), "positions must have shape (N, 3); got shape (3, 2)"),
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
