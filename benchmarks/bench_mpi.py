"""MPI: ``mpiexec -n P python -m backends.mpi_run --json``, P ranks x T threads.

Each measurement is a real MPI job in a subprocess; the number tracked is rank 0's
measured seconds per evaluation (``MPI.Wtime``, the ``"seconds"`` field of the JSON line that
``backends.mpi_run --json`` prints), so interpreter and MPI start-up are not included. Skipped
where the ``mpi`` extra (mpi4py, mpiexec) or :mod:`backends.mpi_run` is missing. More ranks
than cores oversubscribe the machine: that is measured too, not hidden.

``MpiRun`` runs one thread per rank (what every rank did before threads per rank existed, so
its history stays comparable); ``MpiHybrid`` compares the two layouts of a 2-core machine,
2 ranks x 1 thread and 1 rank x 2 threads, for both algorithms (skipped at commits whose
launcher has no ``threads_per_rank``). ``MpiTree`` tracks the distributed Barnes-Hut tree
(``--algorithm tree``, default theta) at N = 200 000 on 1 and 2 ranks x 1 thread (skipped at
commits whose ``mpi_run`` has no tree).
"""

from __future__ import annotations

import inspect

from benchmarks import _common as c

N = c.SIZES[-1]
REPEAT = 1 if c.TINY else 3
TIMEOUT = 240  # seconds: a hung job fails the benchmark instead of stalling the run
SEED = 42


def _launcher():
    """:mod:`backends._mpi_launch` (the compare command's launcher), or a skip reason."""
    try:
        from backends import _mpi_launch
    except ImportError:  # an older commit of the project
        raise NotImplementedError("backends._mpi_launch does not exist at this commit") from None
    reason = _mpi_launch.unavailable_reason()
    if reason is not None:
        raise NotImplementedError(reason)
    return _mpi_launch


def _has_threads(launch) -> bool:
    return "threads_per_rank" in inspect.signature(launch.run).parameters


TREE_N = 512 if c.TINY else 200_000


def _has_tree() -> bool:
    try:
        from backends import mpi_rows
    except ImportError:
        return False
    return "tree" in getattr(mpi_rows, "ALGORITHMS", ())


def run_job(ranks: int, n: int = N, repeat: int = REPEAT, **options) -> dict:
    """Run ``backends.mpi_run --json`` on ``ranks`` ranks; return its JSON record.

    ``options`` (``threads_per_rank``, ``algorithm``) are passed where the launcher has them.

    Raises
    ------
    backends._mpi_launch.MPIRunError
        The job failed, timed out (and was killed), or printed no valid JSON record.
    """
    launch = _launcher()
    if not _has_threads(launch):
        options = {}
    record, _wall = launch.run(ranks, n, SEED, repeat, TIMEOUT, **options)
    if record.get("ranks") != ranks or record.get("n") != n:
        raise launch.MPIRunError(f"unexpected record for {ranks} ranks, N = {n}: {record}")
    return record


class MpiRun:
    """Rank 0's seconds per evaluation at N = 10 000 on P ranks, one thread each."""

    params = ([1, 2, 4],)
    param_names = ["ranks"]
    rounds = 1
    timeout = TIMEOUT + 60

    def setup(self, ranks):
        _launcher()

    def track_seconds(self, ranks):
        return float(run_job(ranks, threads_per_rank=1)["seconds"])

    track_seconds.unit = "seconds"


class MpiHybrid:
    """Rank 0's seconds per evaluation at N = 10 000: ranks x threads layouts of 2 cores."""

    params = (["2x1", "1x2"], ["allgather", "ring"])
    param_names = ["ranks_x_threads", "algorithm"]
    rounds = 1
    timeout = TIMEOUT + 60

    def setup(self, layout, algorithm):
        if not _has_threads(_launcher()):
            raise NotImplementedError("no threads per rank at this commit")

    def track_seconds(self, layout, algorithm):
        ranks, threads = map(int, layout.split("x"))
        record = run_job(ranks, threads_per_rank=threads, algorithm=algorithm)
        return float(record["seconds"])

    track_seconds.unit = "seconds"


class MpiTree:
    """Rank 0's seconds per evaluation of the distributed tree at N = 200 000, P x 1 thread."""

    params = ([1, 2],)
    param_names = ["ranks"]
    rounds = 1
    timeout = TIMEOUT + 60

    def setup(self, ranks):
        _launcher()
        if not _has_tree():
            raise NotImplementedError("no --algorithm tree at this commit")

    def track_seconds(self, ranks):
        record = run_job(ranks, TREE_N, threads_per_rank=1, algorithm="tree", check=False)
        return float(record["seconds"])

    track_seconds.unit = "seconds"
