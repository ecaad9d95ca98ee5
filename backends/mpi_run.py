"""Distributed command line: ``mpiexec -n 4 python -m backends.mpi_run --check``.

Computes the accelerations of a random system (``--n``, ``--seed``: masses uniform on [0, 1),
Gaussian positions, the benchmark distribution) or of a system read from ``--input FILE.npz``
(arrays ``masses`` and ``positions``) with the ``mpi`` backend on all ranks of
``MPI.COMM_WORLD``, times ``--repeat`` evaluations after a warm-up one (``MPI.Wtime``, the
slowest rank's time, all ranks starting together after a barrier) and prints, on rank 0 only:
ranks, N, algorithm, seconds per evaluation (best and median), interactions per second and,
with ``--check``, the error against ``numba_parallel`` by the project's metric. Each rank
runs ``--threads-per-rank T`` Numba threads (default: the cores the rank may use, split evenly
among the ranks on its node, at least 1, see
:func:`backends.mpi_rows.default_threads_per_rank`; at most Numba's limit,
``NUMBA_NUM_THREADS``, the cores by default: set it in the environment to oversubscribe).
``--json``
prints exactly one JSON object on stdout instead (keys ``ranks``, ``n``, ``algorithm``,
``seconds``, ``seconds_median``, ``seconds_all``, ``interactions_per_second``, ``error``,
``G``, ``softening``, ``seed``, ``peak_rss_bytes``, ``threads_per_rank`` (rank 0's Numba
threads), ``threads_per_rank_all`` (one per rank), ``threads_per_rank_default`` (true without
``--threads-per-rank``), ``messages_per_rank`` and ``bytes_per_rank`` (sent in one
evaluation, max over ranks, see :data:`backends.mpi_rows.last_traffic`) and a few more, such
as ``cpu_seconds``:
the busiest rank's process CPU time per evaluation, best of the repeats, which on a machine
loaded by other work shows the split of the work better than wall time; time spent
busy-waiting in MPI counts as CPU time); ``--output FILE.npz``
writes ``masses``, ``positions`` and ``accelerations`` (a valid ``--input`` file too).

With ``--algorithm ring`` each rank holds only its own block of the particles: a generated
system is produced block by block (the same numbers as generating it whole), an ``--input``
file is read whole and cut to the rank's block.

With ``--algorithm tree`` (the distributed Barnes-Hut tree, :mod:`backends.mpi_tree`;
``--theta``, ``--quadrupole``) no rank ever holds all N particles: each rank generates its
block, or reads only its block of rows from the ``--input`` file, then the particles move to
their owners in the tree's domain decomposition (:func:`backends.mpi_tree.distribute`) and
stay there, as in a simulation; after the warm-up call they are redistributed once more by
the work it measured, and the timed calls are :func:`backends.mpi_tree.accel_local` on the
particles each rank owns. ``--check`` then compares ``--check-rows`` sampled rows (default
1000) with exact summation (each rank sums its own particles' share, ``Reduce``), and the
JSON object adds ``error_rms``, ``bound`` (``tree``'s declared rms bound), ``check_rows``,
``theta``, ``quadrupole``, the LET received per rank (``let_nodes``, ``let_particles``,
``let_bytes``, max over ranks), ``load_imbalance`` (max/mean of the interaction counts over
the ranks), ``particles_per_rank``, ``distribute_bytes_per_rank`` (the initial exchange),
``phase_seconds`` (the slowest rank's seconds per phase), ``refined`` (the targets
walked again where their pulls nearly cancel, all ranks) and ``refine_batches`` (the rounds
they travelled in). ``--output`` gathers the whole
result on rank 0. Memory is reported per rank (max over ranks):
``particle_bytes`` (the particle arrays the rank holds), ``array_peak_bytes`` (the peak of
the allocations traced by :mod:`tracemalloc`, NumPy arrays and Python objects, from loading the
data through the warm-up evaluation; the compiled kernel's own (T, 3) result block is not
traced) and ``peak_rss_bytes``.

Failure behaviour: a bad option (checked before any work: ``--threads-per-rank`` above
Numba's limit, a negative ``--seed``, an ``--output`` that cannot be written, an ``--n`` above
this machine's memory at ``compare``'s 1 KiB per particle, per rank's share for ``ring`` and
``tree``), or an unreadable or malformed input file, prints one line
``mpi_run: error: ...`` (rank 0) and every rank exits with status 2; the ranks agree on this
with one collective, so none is left waiting. Any other exception on any rank prints its
traceback and calls ``MPI.COMM_WORLD.Abort(1)``, which ends the whole job at once. The hidden
option ``--fail-rank R`` (for tests only) makes exactly rank R raise before the first
evaluation, while the others are already inside it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
import traceback
import tracemalloc
import zipfile

import numpy as np

from backends._contract import interactions, relative_error, validate

ALGORITHMS = ("allgather", "ring", "tree")

_CHUNK = 1024  # rows generated at a time for a block of a random system


class UsageError(Exception):
    """A bad option or input: one line on stderr and exit status 2 on every rank."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show ``(default: ...)`` after each option's help, except for flags and unset ones."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="mpiexec -n P python -m backends.mpi_run",
        description="N-body accelerations on MPI ranks; timing and check on rank 0.",
        add_help=False,
        formatter_class=_Formatter,
    )
    p.add_argument("-h", "--help", action="store_true", help="show this help and exit")
    p.add_argument(
        "--n", type=int, help="particles of a random system (default: 10000 unless --input)"
    )
    p.add_argument("--seed", type=int, default=42, help="seed of the random system")
    p.add_argument("--input", metavar="FILE.npz", help="read arrays masses and positions")
    p.add_argument("--output", metavar="FILE.npz", help="write masses, positions, accelerations")
    p.add_argument("--G", type=float, default=1.0, help="gravitational constant")
    p.add_argument("--softening", type=float, default=0.0, help="Plummer softening (>= 0)")
    p.add_argument(
        "--algorithm",
        choices=ALGORITHMS,
        default="allgather",
        help="allgather: every rank holds all particles and computes a balanced share of the "
        "pairs, partial forces summed with Reduce_scatter; ring: every rank holds only its "
        "N/P particles, blocks travel half way round the ring carrying their forces (O(N/P) "
        "memory per rank). Both compute each pair once. tree: the Barnes-Hut tree over the "
        "ranks (approximate; Morton domains balanced by work, locally essential trees)",
    )
    p.add_argument("--theta", type=float, help="opening angle of --algorithm tree (default 0.5)")
    p.add_argument(
        "--quadrupole", action="store_true", help="quadrupole moments (--algorithm tree)"
    )
    p.add_argument(
        "--check-rows",
        type=int,
        default=1000,
        metavar="K",
        help="rows sampled by --check for --algorithm tree (all rows if N <= K)",
    )
    p.add_argument(
        "--threads-per-rank",
        type=int,
        metavar="T",
        help="Numba threads per rank (default: the cores a rank may use, split evenly among "
        "the ranks on its node, at least 1: never oversubscribed unless asked for)",
    )
    p.add_argument("--repeat", type=int, default=5, help="timed evaluations after a warm-up")
    p.add_argument(
        "--check",
        action="store_true",
        help="error against numba_parallel (tree: --check-rows sampled rows against exact "
        "summation, with the rms error and the declared bound)",
    )
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.add_argument("--fail-rank", type=int, help=argparse.SUPPRESS)  # test hook
    return p


def _parse(argv) -> argparse.Namespace:
    args = _parser().parse_args(argv)
    if args.help:
        return args
    if args.n is not None and args.input is not None:
        raise UsageError("give --n or --input, not both")
    if args.n is None and args.input is None:
        args.n = 10_000
    if args.n is not None and args.n < 0:
        raise UsageError(f"--n must be >= 0; got {args.n}")
    if args.repeat < 1:
        raise UsageError(f"--repeat must be >= 1; got {args.repeat}")
    if args.seed < 0:
        raise UsageError(f"--seed must be >= 0; got {args.seed}")
    if args.threads_per_rank is not None and args.threads_per_rank < 1:
        raise UsageError(f"--threads-per-rank must be >= 1; got {args.threads_per_rank}")
    if args.threads_per_rank is not None:
        import numba  # the limit is numba's (NUMBA_NUM_THREADS, the cores by default)

        top = numba.config.NUMBA_NUM_THREADS
        if args.threads_per_rank > top:
            raise UsageError(
                f"--threads-per-rank {args.threads_per_rank} exceeds numba's limit of {top} "
                "threads (set NUMBA_NUM_THREADS for more)"
            )
    if args.algorithm != "tree" and (args.theta is not None or args.quadrupole):
        raise UsageError("--theta and --quadrupole apply to --algorithm tree only")
    if args.check_rows < 1:
        raise UsageError(f"--check-rows must be >= 1; got {args.check_rows}")
    if args.algorithm == "tree":
        from backends.tree_barnes_hut import DEFAULT_THETA, _check_options

        args.theta = DEFAULT_THETA if args.theta is None else args.theta
        try:
            _check_options(args.theta, False, 1)
        except (TypeError, ValueError) as exc:
            raise UsageError(f"--{exc}") from None
    try:
        validate(np.empty(0), np.empty((0, 3)), args.G, args.softening)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"--{exc}") from None  # "--G must be finite; ..."
    return args


def _generate_block(n: int, seed: int, lo: int, hi: int):
    """Rows ``lo:hi`` of ``rng.random(n), rng.standard_normal((n, 3))``, in O(chunk) memory."""
    rng = np.random.default_rng(seed)
    m, x = np.empty(hi - lo), np.empty((hi - lo, 3))
    for out, draw, width in ((m, rng.random, 1), (x, rng.standard_normal, 3)):
        flat = out.reshape(-1)
        # all n masses are drawn (the positions' draws follow them); positions only to hi
        for start in range(0, n if width == 1 else hi, _CHUNK):
            stop = min(n, start + _CHUNK)
            chunk = draw((stop - start) * width)
            a, b = max(start, lo), min(stop, hi)
            if a < b:
                flat[(a - lo) * width : (b - lo) * width] = chunk[
                    (a - start) * width : (b - start) * width
                ]
    return m, x


def _read_input(path: str, G: float, softening: float):
    """Read and validate the full arrays of an .npz file (UsageError: one-line reason)."""
    try:
        with open(path, "rb") as f:
            is_zip = zipfile.is_zipfile(f)
        if not is_zip:
            raise UsageError(f"--input {path}: not an .npz archive (a zip of .npy arrays)")
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in ("masses", "positions") if k not in data.files]
            if missing:
                raise UsageError(
                    f"--input {path}: no array {', '.join(missing)} (found: "
                    f"{', '.join(data.files) or 'none'})"
                )
            m, x = data["masses"], data["positions"]
    except UsageError:
        raise
    except Exception as exc:  # unreadable, truncated, corrupt, pickled objects, ...
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise UsageError(f"--input {path}: cannot read it: {reason}") from None
    try:
        inp = validate(m, x, G, softening)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"--input {path}: {exc}") from None
    return inp.masses, inp.positions


def _load(args, comm, full: bool):
    """Return ``n, masses, positions``: all rows, or (``full=False``) this rank's block."""
    from backends.mpi_rows import partition

    if args.input is not None:
        m, x = _read_input(args.input, args.G, args.softening)
        n = m.shape[0]
    else:
        n, m, x = args.n, None, None
    counts, displs = partition(n, comm.Get_size())
    lo, hi = (
        (0, n)
        if full
        else (displs[comm.Get_rank()], displs[comm.Get_rank()] + counts[comm.Get_rank()])
    )
    if m is None:
        m, x = _generate_block(n, args.seed, lo, hi)
    elif not full:
        m, x = m[lo:hi].copy(), x[lo:hi].copy()  # drop the rest of the file's arrays
    return n, m, x


def _agree(comm, message: str | None) -> None:
    """Raise the first rank's usage error on every rank, if any rank has one (collective)."""
    messages = [msg for msg in comm.allgather(message) if msg is not None]
    if messages:
        raise UsageError(messages[0])


def _check_output_path(path: str | None) -> str | None:
    if path is None:
        return None
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        return f"--output {path}: directory {parent} does not exist or is not writable"
    if os.path.isdir(path):
        return f"--output {path}: is a directory, not a file"
    existed = os.path.exists(path)
    try:  # os.access is not enough: root passes it for /proc, where nothing can be created
        with open(path, "ab"):
            pass
    except OSError as exc:
        return f"--output {path}: cannot be written: {exc.strerror or exc}"
    finally:
        if not existed and os.path.exists(path):
            os.unlink(path)
    return None


def _max_n(ranks: int, algorithm: str) -> int:
    """Largest ``--n`` of a generated system: ``compare``'s memory bound, per rank's share.

    ``allgather`` holds all N particles on every rank: this machine's memory at
    :data:`backends.compare.args.BYTES_PER_PARTICLE` per particle. ``ring`` and ``tree`` hold
    N/P per rank: P times that. Capped at ``2**31 - 1`` either way (32-bit indices).
    """
    from backends.compare.args import max_n

    return max_n() if algorithm == "allgather" else min(2**31 - 1, max_n() * ranks)


def _preflight(args, comm) -> None:
    """Check what needs the communicator (``--output`` on rank 0, ``--n``), before any work."""
    problem = None
    if comm.Get_rank() == 0:
        problem = _check_output_path(args.output)
        if problem is None and args.n is not None:
            top = _max_n(comm.Get_size(), args.algorithm)
            if args.n > top:
                problem = (
                    f"--n {args.n} particles are more than this machine can hold: at most {top} "
                    f"with {comm.Get_size()} rank(s) and --algorithm {args.algorithm}"
                )
    _agree(comm, problem)


def _peak_rss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def _run(args, comm) -> dict:
    """Load, warm up, time and check, collectively; return the report (meaningful on rank 0)."""
    from mpi4py import MPI

    from backends import mpi_rows
    from backends.numba_parallel import accel_block

    rank, ring = comm.Get_rank(), args.algorithm == "ring"
    default_threads = args.threads_per_rank is None
    threads = mpi_rows.default_threads_per_rank(comm) if default_threads else args.threads_per_rank
    if args.algorithm == "tree":
        return _run_tree(args, comm, threads, default_threads)
    # compile (or load from the cache) before tracing: the row kernel of the exact path and
    # the task runner of this thread count
    accel_block(np.zeros((1, 3)), np.ones(2), np.eye(2, 3), 1.0, 0.0)
    tiny_m, tiny_x = np.ones(8), np.arange(24.0).reshape(8, 3)
    mpi_rows.accel(tiny_m, tiny_x, comm=MPI.COMM_SELF, algorithm="ring", threads_per_rank=threads)

    tracemalloc.start()
    problem = None  # --output was checked by _preflight
    try:
        n, m, x = _load(args, comm, full=not ring)
    except UsageError as exc:
        problem = problem or str(exc)
    _agree(comm, problem)
    particle_bytes = m.nbytes + x.nbytes

    def evaluate():
        if ring:
            return mpi_rows.accel_local(
                m, x, args.G, softening=args.softening, comm=comm, threads_per_rank=threads
            )
        return mpi_rows.accel(
            m, x, args.G, softening=args.softening, comm=comm, threads_per_rank=threads
        )

    if args.fail_rank == rank:
        raise RuntimeError(f"--fail-rank {rank}: this rank fails on purpose (test hook)")
    try:
        result = evaluate()  # warm-up; an overflow is raised on every rank alike
    except FloatingPointError as exc:
        raise UsageError(str(exc)) from None
    array_peak_bytes = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()

    result, times, cpu_times = _time(evaluate, comm, args.repeat)

    if ring and (args.check or args.output):  # assemble the full result on rank 0
        counts, displs = mpi_rows.partition(n, comm.Get_size())
        full = np.empty((n, 3)) if rank == 0 else None
        comm.Gatherv(result, [full, counts * 3, displs * 3, MPI.DOUBLE], root=0)
        result = full
    traffic = mpi_rows.last_traffic  # of the last timed evaluation
    gathered = comm.gather(
        (
            _peak_rss_bytes(),
            particle_bytes,
            array_peak_bytes,
            traffic["messages"],
            traffic["bytes"],
            threads,
        ),
        root=0,
    )
    if rank != 0:
        return {}
    peaks = [max(column) for column in zip(*gathered, strict=True)]
    threads_all = [row[5] for row in gathered]

    error = None
    if args.check or args.output:
        if ring:
            n, m, x = _load(args, MPI.COMM_SELF, full=True)
        if args.check:
            from backends import numba_parallel

            ref = numba_parallel.accel(m, x, args.G, softening=args.softening)
            error = relative_error(result, ref)
        if args.output:
            np.savez(args.output, masses=m, positions=x, accelerations=result)
    return {
        "ranks": comm.Get_size(),
        "n": n,
        "algorithm": args.algorithm,
        **_timings(n, times, cpu_times),
        "error": error,
        "G": args.G,
        "softening": args.softening,
        "seed": None if args.input is not None else args.seed,
        "peak_rss_bytes": peaks[0],
        "particle_bytes": peaks[1],
        "array_peak_bytes": peaks[2],
        "threads_per_rank": threads_all[0],
        "threads_per_rank_all": threads_all,
        "threads_per_rank_default": default_threads,
        "messages_per_rank": peaks[3],
        "bytes_per_rank": peaks[4],
        "repeat": args.repeat,
        "input": args.input,
    }


def _timings(n: int, times: list[float], cpu_times: list[float]) -> dict:
    """Return the report's timing fields: best, median and all wall times, best CPU time, rate."""
    best = min(times)
    return {
        "seconds": best,
        "seconds_median": statistics.median(times),
        "seconds_all": times,
        "cpu_seconds": min(cpu_times),
        "interactions_per_second": interactions(n) / best if best > 0 else 0.0,
    }


def _time(evaluate, comm, repeat: int):
    """``repeat`` timed calls, all ranks starting together: (last result, seconds, CPU s)."""
    from mpi4py import MPI

    times, cpu_times = [], []
    result = None
    for _ in range(repeat):
        comm.Barrier()
        t0, c0 = MPI.Wtime(), time.process_time()
        result = evaluate()
        spent = (MPI.Wtime() - t0, time.process_time() - c0)
        times.append(comm.allreduce(spent[0], op=MPI.MAX))
        cpu_times.append(comm.allreduce(spent[1], op=MPI.MAX))
    return result, times, cpu_times


# ---------------------------------------------------------------- --algorithm tree


def _npz_arrays(path: str) -> dict:
    """``{name: (shape, fortran_order, dtype, data offset)}`` of ``masses`` and ``positions``.

    Reads only the archive's directory and the two arrays' headers (UsageError: one line).
    """
    try:
        with open(path, "rb") as f:
            is_zip = zipfile.is_zipfile(f)
        if not is_zip:
            raise UsageError(f"--input {path}: not an .npz archive (a zip of .npy arrays)")
        with zipfile.ZipFile(path) as zf:
            names = [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
            missing = [k for k in ("masses", "positions") if k not in names]
            if missing:
                raise UsageError(
                    f"--input {path}: no array {', '.join(missing)} (found: "
                    f"{', '.join(names) or 'none'})"
                )
            out = {}
            for name in ("masses", "positions"):
                with zf.open(name + ".npy") as f:
                    version = np.lib.format.read_magic(f)
                    read = (
                        np.lib.format.read_array_header_1_0
                        if version == (1, 0)
                        else np.lib.format.read_array_header_2_0
                    )
                    shape, fortran, dtype = read(f)
                    out[name] = (shape, fortran, dtype, f.tell())
    except UsageError:
        raise
    except Exception as exc:  # unreadable, truncated, corrupt, ...
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise UsageError(f"--input {path}: cannot read it: {reason}") from None
    for name, (_, _, dtype, _) in out.items():
        if dtype.hasobject:
            raise UsageError(
                f"--input {path}: cannot read it: {name} holds Python objects (pickled), which "
                "cannot be loaded with allow_pickle=False"
            )
    shapes = [np.broadcast_to(np.zeros((), out[k][2]), out[k][0]) for k in out]
    try:  # the contract's messages for dtype and shape, without reading any data
        if len(out["positions"][0]) != 2 or out["positions"][0][1:] != (3,):
            validate(*shapes)
        if len(out["masses"][0]) != 1 or out["masses"][0][0] != out["positions"][0][0]:
            validate(*shapes)
        validate(shapes[0][:0], shapes[1][:0])
    except (TypeError, ValueError) as exc:
        raise UsageError(f"--input {path}: {exc}") from None
    return out


def _read_rows(path: str, header: dict, lo: int, hi: int):
    """Rows ``lo:hi`` of ``masses`` and ``positions`` of an .npz, reading only those rows."""
    arrays = []
    try:
        with zipfile.ZipFile(path) as zf:
            for name in ("masses", "positions"):
                shape, fortran, dtype, offset = header[name]
                width = 1 if len(shape) == 1 else 3
                cols = []
                # C order: rows are contiguous; Fortran order: read each column's rows
                for k in range(width if fortran and width > 1 else 1):
                    with zf.open(name + ".npy") as f:
                        step = dtype.itemsize * (1 if fortran and width > 1 else width)
                        start = offset + (k * shape[0] * dtype.itemsize if fortran else 0)
                        f.seek(start + lo * step)
                        data = f.read((hi - lo) * step)
                    if len(data) != (hi - lo) * step:
                        raise ValueError(f"{name}: the file ends early")
                    cols.append(np.frombuffer(data, dtype=dtype))
                block = np.stack(cols, axis=1) if len(cols) > 1 else cols[0]
                arrays.append(block.reshape(hi - lo, width) if width > 1 else block)
    except Exception as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise UsageError(f"--input {path}: cannot read it: {reason}") from None
    m, x = arrays
    for arr, name in ((m, "masses"), (x, "positions")):
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            bad = np.argwhere(~np.isfinite(arr))[0]
            got = float(arr[tuple(bad)])
            where = ", ".join(str(int(k) + (lo if i == 0 else 0)) for i, k in enumerate(bad))
            raise UsageError(
                f"--input {path}: {name} must be finite; got {got!r} at index [{where}]"
            )
    inp = validate(m, x)
    return inp.masses, inp.positions


def _load_block(args, comm):
    """``n, masses, positions, ids`` of this rank's block of rows (generated or read)."""
    from backends.mpi_rows import partition

    header = None
    if args.input is not None:
        header = _npz_arrays(args.input)
        n = int(header["masses"][0][0])
    else:
        n = args.n
    counts, displs = partition(n, comm.Get_size())
    lo = int(displs[comm.Get_rank()])
    hi = lo + int(counts[comm.Get_rank()])
    if header is None:
        m, x = _generate_block(n, args.seed, lo, hi)
    else:
        m, x = _read_rows(args.input, header, lo, hi)
    return n, m, x, np.arange(lo, hi, dtype=np.float64).reshape(-1, 1)


def _sample_rows(n: int, k: int, seed: int) -> np.ndarray:
    """``min(n, k)`` distinct sorted row indices, the same on every rank.

    The rows ``compare`` samples with the same seed and count (O(k) memory for k << n).
    """
    if k >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, k, replace=False))


def _particle_errors(a: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per-particle relative errors by the project's metric (its max is relative_error)."""
    diff = np.linalg.norm(a - ref, axis=-1)
    norm = np.linalg.norm(ref, axis=-1)
    scale = norm.max() if norm.size else 0.0
    return diff / np.where(norm > 0.0, norm, scale if scale > 0.0 else 1.0)


def _check_tree(args, comm, n, m, x, ids, result):
    """Compare sampled rows with exact summation over every rank's particles (rank 0)."""
    from mpi4py import MPI

    from backends.numba_parallel import accel_block

    rows = _sample_rows(n, args.check_rows, args.seed + 1)
    gid = ids[:, 0].astype(np.int64)
    mine = np.isin(gid, rows)
    parts = comm.gather((gid[mine], x[mine], result[mine]), root=0)
    xs = a = None
    if comm.Get_rank() == 0:
        g = np.concatenate([p[0] for p in parts])
        order = np.argsort(g)
        xs = np.ascontiguousarray(np.concatenate([p[1] for p in parts])[order])
        a = np.concatenate([p[2] for p in parts])[order]
    xs = comm.bcast(xs, root=0)
    part = np.zeros((xs.shape[0], 3))
    if m.shape[0]:
        part = accel_block(xs, m, np.ascontiguousarray(x), args.G, args.softening)
    exact = np.empty_like(part) if comm.Get_rank() == 0 else None
    comm.Reduce(part, exact, op=MPI.SUM, root=0)
    if comm.Get_rank() != 0:
        return None, None, rows.size
    errors = _particle_errors(a, exact)
    rms = float(np.sqrt(np.mean(errors**2))) if errors.size else 0.0
    return (float(errors.max()) if errors.size else 0.0), rms, int(rows.size)


def _run_tree(args, comm, threads: int, default_threads: bool) -> dict:
    """``--algorithm tree``: load blocks, distribute, warm up, redistribute, time, check."""
    from mpi4py import MPI

    from backends import mpi_rows, mpi_tree, tree_barnes_hut

    rank = comm.Get_rank()
    opts = {"theta": args.theta, "quadrupole": args.quadrupole, "threads_per_rank": threads}
    tiny_m, tiny_x = np.ones(40), np.random.default_rng(0).standard_normal((40, 3))
    mpi_tree.accel_local(tiny_m, tiny_x, comm=MPI.COMM_SELF, **opts)  # compile before tracing

    tracemalloc.start()
    problem = None  # --output was checked by _preflight
    n = 0
    try:
        n, m, x, ids = _load_block(args, comm)
    except UsageError as exc:
        problem = problem or str(exc)
    _agree(comm, problem)
    if args.fail_rank == rank:
        raise RuntimeError(f"--fail-rank {rank}: this rank fails on purpose (test hook)")
    m, x, ids = mpi_tree.distribute(m, x, ids, comm=comm, **opts)
    distribute_bytes = mpi_rows.last_traffic["bytes"]
    held = {"m": m, "x": x, "ids": ids}

    def evaluate():
        return mpi_tree.accel_local(held["m"], held["x"], args.G, softening=args.softening,
                                    comm=comm, **opts)  # fmt: skip

    try:
        evaluate()  # warm-up; an overflow is raised on every rank alike
    except FloatingPointError as exc:
        raise UsageError(str(exc)) from None
    # the owners by the work the warm-up measured: where a simulation keeps its particles
    held["m"], held["x"], held["ids"] = mpi_tree.distribute(
        held["m"], held["x"], held["ids"], comm=comm, **opts
    )
    particle_bytes = held["m"].nbytes + held["x"].nbytes
    array_peak_bytes = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()

    result, times, cpu_times = _time(evaluate, comm, args.repeat)
    st = mpi_tree.last_stats
    traffic = mpi_rows.last_traffic
    mine = {
        "rss": _peak_rss_bytes(),
        "particle_bytes": particle_bytes,
        "array_peak_bytes": array_peak_bytes,
        "messages": traffic["messages"],
        "bytes": traffic["bytes"],
        "distribute_bytes": distribute_bytes,
        "threads": threads,
        "particles": int(held["m"].shape[0]),
        "let_nodes": st.get("let_nodes", 0),
        "let_particles": st.get("let_particles", 0),
        "let_bytes": st.get("let_bytes", 0),
        "seconds": st.get("seconds", {}),
    }
    error = error_rms = rows = None
    if args.check:
        error, error_rms, rows = _check_tree(args, comm, n, held["m"], held["x"], held["ids"],
                                             result)  # fmt: skip
    if args.output:
        parts = comm.gather((held["ids"][:, 0], held["m"], held["x"], result), root=0)
        if rank == 0:
            order = np.argsort(np.concatenate([p[0] for p in parts]))
            np.savez(
                args.output,
                masses=np.concatenate([p[1] for p in parts])[order],
                positions=np.concatenate([p[2] for p in parts])[order],
                accelerations=np.concatenate([p[3] for p in parts])[order],
            )
    gathered = comm.gather(mine, root=0)
    if rank != 0:
        return {}
    phases = sorted({k for g in gathered for k in g["seconds"]})
    return {
        "ranks": comm.Get_size(),
        "n": n,
        "algorithm": "tree",
        "theta": args.theta,
        "quadrupole": args.quadrupole,
        **_timings(n, times, cpu_times),
        "error": error,
        "error_rms": error_rms,
        "bound": tree_barnes_hut.tolerance(theta=args.theta, quadrupole=args.quadrupole),
        "check_rows": rows,
        "G": args.G,
        "softening": args.softening,
        "seed": None if args.input is not None else args.seed,
        "peak_rss_bytes": max(g["rss"] for g in gathered),
        "peak_rss_bytes_all": [g["rss"] for g in gathered],
        "particle_bytes": max(g["particle_bytes"] for g in gathered),
        "array_peak_bytes": max(g["array_peak_bytes"] for g in gathered),
        "threads_per_rank": gathered[0]["threads"],
        "threads_per_rank_all": [g["threads"] for g in gathered],
        "threads_per_rank_default": default_threads,
        "messages_per_rank": max(g["messages"] for g in gathered),
        "bytes_per_rank": max(g["bytes"] for g in gathered),
        "bytes_per_rank_all": [g["bytes"] for g in gathered],
        "distribute_bytes_per_rank": max(g["distribute_bytes"] for g in gathered),
        "particles_per_rank": [g["particles"] for g in gathered],
        "let_nodes": max(g["let_nodes"] for g in gathered),
        "let_particles": max(g["let_particles"] for g in gathered),
        "let_bytes": max(g["let_bytes"] for g in gathered),
        "load_imbalance": st.get("imbalance", 1.0),
        "work_per_rank": st.get("work_all", []),
        "phase_seconds": {k: max(g["seconds"].get(k, 0.0) for g in gathered) for k in phases},
        "refined": st.get("refined", 0),
        "refine_batches": st.get("refine_batches", 0),
        "repeat": args.repeat,
        "input": args.input,
    }


def _print_report(r: dict) -> None:
    mib = 2.0**20
    print(
        f"mpi_run: {r['ranks']} rank(s) x {r['threads_per_rank']} thread(s), N = {r['n']}, "
        f"algorithm {r['algorithm']}, G = {r['G']:g}, softening = {r['softening']:g}"
    )
    print(
        f"seconds per evaluation: best {r['seconds']:.6f}, median {r['seconds_median']:.6f} "
        f"({r['repeat']} timed after a warm-up; MPI.Wtime of the slowest rank)"
    )
    print(f"interactions per second: {r['interactions_per_second']:.4g} (N(N-1) / best)")
    print(
        f"per rank (max over ranks): particle arrays {r['particle_bytes'] / mib:.3f} MiB, "
        f"traced allocation peak {r['array_peak_bytes'] / mib:.3f} MiB, "
        f"peak RSS {r['peak_rss_bytes'] / mib:.1f} MiB"
    )
    print(
        f"communication per rank and evaluation (max over ranks): {r['messages_per_rank']} "
        f"messages, {r['bytes_per_rank'] / mib:.3f} MiB"
    )
    if r["algorithm"] == "tree":
        print(
            f"tree: theta {r['theta']:g}{', quadrupoles' if r['quadrupole'] else ''}; LET "
            f"received per rank (max): {r['let_nodes']} nodes, {r['let_particles']} particles, "
            f"{r['let_bytes'] / mib:.3f} MiB; load imbalance (max/mean work) "
            f"{r['load_imbalance']:.3f}; particles per rank {r['particles_per_rank']}"
        )
        if r["error"] is not None:
            print(
                f"error vs exact summation on {r['check_rows']} sampled rows: max "
                f"{r['error']:.3e}, rms {r['error_rms']:.3e} (declared rms bound {r['bound']:.3g})"
            )
    elif r["error"] is not None:
        print(f"error vs numba_parallel: {r['error']:.3e} (max_i |a_i - ref_i| / |ref_i|)")


def _unlink_shared_memory() -> None:
    """Unlink the MPI runtime's shared-memory files this rank holds open (Linux only).

    Called just before ``MPI_Abort``, which leaves MPICH's segment (``/dev/shm/mpich_shm_*``)
    behind when the job was started by a bare ``mpiexec``. Unlinking only removes the name:
    the ranks keep their mappings until they end. The project's launcher
    (``backends._mpi_launch``) removes what is still left, hydra's files included.
    """
    from backends._mpi_launch import _held_files

    for path, inode in _held_files(os.getpid()):
        if path.startswith("/dev/shm/"):
            try:
                if os.stat(path).st_ino == inode:
                    os.unlink(path)
            except OSError:
                pass


def main(argv: list[str] | None = None) -> int:
    """Entry point for every rank; returns the exit status (or aborts the job)."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    try:
        args = _parse(sys.argv[1:] if argv is None else argv)
        if args.help:
            if comm.Get_rank() == 0:
                _parser().print_help()
            return 0
        _preflight(args, comm)
        report = _run(args, comm)
    except UsageError as exc:
        if comm.Get_rank() == 0:
            print(f"mpi_run: error: {exc}", file=sys.stderr, flush=True)
        return 2
    except Exception:
        traceback.print_exc()
        print(
            f"mpi_run: rank {comm.Get_rank()} of {comm.Get_size()} failed; aborting the job",
            file=sys.stderr,
            flush=True,
        )
        _unlink_shared_memory()
        comm.Abort(1)
        return 1  # not reached
    if comm.Get_rank() == 0:
        if args.json:
            print(json.dumps(report), flush=True)
        else:
            _print_report(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
