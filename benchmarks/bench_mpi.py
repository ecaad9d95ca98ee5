"""MPI: ``mpiexec -n P python -m backends.mpi_run --json`` for P in {1, 2, 4}.

Each measurement is a real MPI job in a subprocess; the number tracked is rank 0's
measured seconds per evaluation (``MPI.Wtime``, the ``"seconds"`` field of the JSON line that
``backends.mpi_run --json`` prints), so interpreter and MPI start-up are not included. Skipped
where the ``mpi`` extra (mpi4py, mpiexec) or :mod:`backends.mpi_run` is missing. More ranks
than cores oversubscribe the machine: that is measured too, not hidden.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys

from benchmarks import _common as c

N = c.SIZES[-1]
REPEAT = 1 if c.TINY else 3
TIMEOUT = 240  # seconds: a hung job fails the benchmark instead of stalling the run


def mpiexec() -> str | None:
    """``mpiexec`` next to this interpreter (the mpich wheel), else on ``PATH``, else None."""
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    if os.access(here, os.X_OK):
        return here
    return shutil.which("mpiexec")


def unavailable_reason() -> str | None:
    """Why the MPI benchmark cannot run here, or None."""
    if importlib.util.find_spec("mpi4py") is None:
        return "mpi4py is not installed: pip install 'nbody-backends[mpi]'"
    if importlib.util.find_spec("backends.mpi_run") is None:
        return "backends.mpi_run does not exist in this version of the project"
    if mpiexec() is None:
        return "no mpiexec next to the interpreter or on PATH"
    return None


def run_job(ranks: int, n: int = N, repeat: int = REPEAT) -> dict:
    """Run ``backends.mpi_run --json`` on ``ranks`` ranks; return its JSON record.

    Raises
    ------
    RuntimeError
        The job failed, or printed no JSON record on stdout.
    """
    cmd = [mpiexec(), "-n", str(ranks), sys.executable, "-m", "backends.mpi_run"]
    cmd += ["--n", str(n), "--repeat", str(repeat), "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} exited with {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
        )
    for line in reversed(proc.stdout.splitlines()):
        if line.strip().startswith("{"):
            record = json.loads(line)
            if record.get("ranks") != ranks or record.get("n") != n:
                raise RuntimeError(f"unexpected record for {ranks} ranks, N = {n}: {record}")
            return record
    raise RuntimeError(f"{' '.join(cmd)} printed no JSON record:\n{proc.stdout}\n{proc.stderr}")


class MpiRun:
    """Rank 0's seconds per evaluation at N = 10 000 on P ranks."""

    params = ([1, 2, 4],)
    param_names = ["ranks"]
    rounds = 1
    timeout = TIMEOUT + 60

    def setup(self, ranks):
        reason = unavailable_reason()
        if reason is not None:
            raise NotImplementedError(reason)

    def track_seconds(self, ranks):
        return float(run_job(ranks)["seconds"])

    track_seconds.unit = "seconds"
