"""Run ``mpiexec -n P python -m backends.mpi_run ... --check --json`` for ``compare``.

``--check`` makes rank 0 report the error of the MPI result against ``numba_parallel`` (by the
project's metric); the JSON object printed by rank 0 is the row's data.

The job runs in its own session (process group), so a Ctrl-C in the terminal reaches only the
compare process, which then ends the whole group (mpiexec and every rank): no orphans.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

_KEYS = ("ranks", "n", "seconds", "seconds_median", "seconds_all", "error")


class MPIRunError(RuntimeError):
    """The MPI job failed, timed out, or printed no valid JSON result."""


def find_mpiexec() -> str | None:
    """``mpiexec`` next to this Python (the ``mpich`` wheel puts it there), else on PATH."""
    local = Path(sys.executable).parent / "mpiexec"
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    return shutil.which("mpiexec")


def unavailable_reason() -> str | None:
    """Why the MPI row cannot be produced here, or None (checked without importing mpi4py)."""
    if importlib.util.find_spec("mpi4py") is None:
        return "mpi4py is not installed: pip install 'nbody-backends[mpi]'"
    if importlib.util.find_spec("backends.mpi_run") is None:
        return "backends.mpi_run is missing from this installation"
    if find_mpiexec() is None:
        return "no mpiexec next to this Python or on PATH: pip install 'nbody-backends[mpi]'"
    return None


def _kill_group(proc: subprocess.Popen) -> None:
    """End mpiexec and its ranks: SIGTERM to the group, SIGKILL after 5 s."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _parse(stdout: str) -> dict:
    text = stdout.strip()
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        candidates = [ln for ln in text.splitlines() if ln.lstrip().startswith("{")]
        if not candidates:
            raise MPIRunError(
                f"mpi_run printed no JSON object on stdout: {text[-300:]!r}"
            ) from None
        try:
            doc = json.loads(candidates[-1])
        except json.JSONDecodeError as exc:
            raise MPIRunError(f"mpi_run printed invalid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise MPIRunError(f"mpi_run printed {type(doc).__name__}, not a JSON object")
    missing = [k for k in _KEYS if k not in doc]
    if missing:
        raise MPIRunError(f"mpi_run's JSON lacks {', '.join(missing)}")
    return doc


def run(ranks: int, n: int, seed: int, repeat: int, timeout: float) -> tuple[dict, float]:
    """Run the MPI job once and return (its JSON result, wall seconds of the whole job).

    Raises
    ------
    MPIRunError
        Non-zero exit (with the tail of its stderr), timeout (the job is killed) or bad output.
    KeyboardInterrupt
        Re-raised after the job's process group has been ended.
    """
    mpiexec = find_mpiexec()
    if mpiexec is None:
        raise MPIRunError("mpiexec not found")
    cmd = [mpiexec, "-n", str(ranks), sys.executable, "-m", "backends.mpi_run"]
    cmd += ["--n", str(n), "--seed", str(seed), "--repeat", str(repeat), "--check", "--json"]
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)  # the ranks import this same package
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        proc.communicate()
        raise MPIRunError(f"timed out after {timeout:g} s; the MPI job was killed") from None
    except BaseException:  # KeyboardInterrupt: end the job, then let it propagate
        _kill_group(proc)
        proc.communicate()
        raise
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = " | ".join(ln for ln in err.strip().splitlines()[-3:]) or "(no stderr)"
        raise MPIRunError(f"{' '.join(cmd[:3])} ... exited with status {proc.returncode}: {tail}")
    return _parse(out), wall
