"""Run MPI jobs (``mpiexec -n P python -m backends.mpi_run ...``) and clean up after them.

Used by ``compare`` (its ``mpi (P ranks)`` row), the benchmarks and the MPI tests.
:func:`run` runs ``mpi_run --check --json`` and returns rank 0's JSON object (the row's
data); :func:`launch` runs any ``mpiexec`` command line.

Process ownership: the job runs in its own session (``start_new_session``), so a Ctrl-C in
the terminal reaches only the calling process. MPICH's hydra puts its proxy and every rank
in sessions of their own, so killing mpiexec's process group is not enough: while the job
runs, :class:`Job` records the job's process tree (mpiexec's descendants, from
``/proc/PID/task/*/children``) and the runtime's files that those processes hold open,
MPICH's shared-memory segments (``/dev/shm/mpich_*``) and hydra's topology file
(``/tmp/hydra_*``). When the job ends, normally or not (a rank calling ``MPI_Abort``, a
timeout, a ``KeyboardInterrupt``), every recorded process still alive is ended (SIGTERM, then
SIGKILL after 5 s) and every recorded file still present (same inode) is removed: only what
this job created, never another job's files. A job that aborts within the first polling
interval (50 ms) after ``MPI_Init`` could escape the record; the ranks of this project import
NumPy and Numba first, which takes far longer. Linux only (``/proc``); elsewhere nothing is
recorded and nothing removed.
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
from dataclasses import dataclass, field
from pathlib import Path

from backends._pools import MAX_WORKERS

_KEYS = ("ranks", "n", "seconds", "seconds_median", "seconds_all", "error")
_ROOT = str(Path(__file__).resolve().parent.parent)  # the ranks import this same package
#: Most ranks :func:`run` starts on this machine: 4 per core, at least 64 (the pools'
#: ``MAX_WORKERS``, the same rule for the same reasons). Every rank is a full Python process
#: with NumPy and Numba (~100 MB); past a few per core oversubscription only adds start-up
#: time and memory, and a mistyped count (10**6) would start processes until the machine
#: stalls. The floor of 64 keeps oversubscription tests (8 or 16 ranks on 2 cores) possible.
MAX_RANKS = MAX_WORKERS
#: Directories and name prefixes of the MPI runtime's files that a job may leave behind.
RUNTIME_FILES = (("/dev/shm/", "mpich_"), ("/tmp/", "hydra_"))


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


def runtime_files() -> set[str]:
    """Paths of the MPI runtime's files present now (any job's): for tests and diagnosis."""
    found = set()
    for folder, prefix in RUNTIME_FILES:
        try:
            found.update(folder + name for name in os.listdir(folder) if name.startswith(prefix))
        except OSError:
            pass
    return found


def _start_time(pid: int) -> str | None:
    """Field 22 of ``/proc/PID/stat`` (start time): tells a process from a reused pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rindex(b")") + 2 :].split()[19].decode()


def _children(pid: int) -> list[int]:
    kids = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return kids
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids.extend(int(k) for k in f.read().split())
        except OSError:
            pass
    return kids


def _held_files(pid: int) -> set[tuple[str, int]]:
    """Return the runtime's files that process ``pid`` holds open, as ``(path, inode)``."""
    held = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return held
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if any(target.startswith(d + p) for d, p in RUNTIME_FILES):
            try:
                held.add((target, os.stat(target).st_ino))
            except OSError:
                pass
    return held


@dataclass
class JobResult:
    """What :func:`launch` returns: like ``subprocess.CompletedProcess``, plus the files."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    wall: float  #: seconds from start to the end of the job
    runtime_files: list[str] = field(default_factory=list)  #: runtime files the job held
    removed: list[str] = field(default_factory=list)  #: those left behind, and removed


class Job:
    """One ``mpiexec`` process tree, watched so that it can be ended and cleaned up."""

    def __init__(self, args: list[str], env=None, cwd=None):
        self.args = list(map(str, args))
        self.pids: dict[int, str] = {}  # pid -> start time, every process seen in the tree
        self.files: set[tuple[str, int]] = set()
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            self.args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )

    def _alive(self) -> list[int]:
        return [pid for pid, start in self.pids.items() if _start_time(pid) == start]

    def scan(self) -> None:
        """Record the job's processes (mpiexec's descendants) and the files they hold."""
        todo = [self.proc.pid, *self._alive()]
        seen = set()
        while todo:
            pid = todo.pop()
            if pid in seen:
                continue
            seen.add(pid)
            start = _start_time(pid)
            if start is None or self.pids.setdefault(pid, start) != start:
                continue  # gone, or a reused pid
            self.files |= _held_files(pid)
            todo.extend(_children(pid))

    def wait(self, timeout: float) -> tuple[str, str]:
        """Wait for mpiexec, scanning the tree meanwhile; TimeoutExpired after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            elapsed = time.perf_counter() - self.t0
            step = 0.05 if elapsed < 3.0 else 0.5
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise subprocess.TimeoutExpired(self.args, timeout)
            try:
                return self.proc.communicate(timeout=min(step, remaining))
            except subprocess.TimeoutExpired:
                self.scan()

    def end(self) -> None:
        """End every process of the tree still alive: SIGTERM, then SIGKILL after 5 s."""
        self.scan()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if self.proc.poll() is None:
                try:
                    os.killpg(self.proc.pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass
            for pid in self._alive():
                try:
                    os.kill(pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline:
                if self.proc.poll() is None:
                    try:
                        self.proc.wait(0.05)
                    except subprocess.TimeoutExpired:
                        pass
                elif not self._alive():
                    return
                else:
                    time.sleep(0.05)

    def cleanup(self) -> list[str]:
        """End what is left of the tree and remove the files it left; return those paths."""
        self.end()
        removed = []
        for path, inode in sorted(self.files):
            try:
                if os.stat(path).st_ino == inode:
                    os.unlink(path)
                    removed.append(path)
            except OSError:
                pass
        return removed


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_ROOT, env.get("PYTHONPATH")) if p)
    return env


def launch(args: list, *, timeout: float, env=None, cwd=None) -> JobResult:
    """Run an ``mpiexec`` command line to its end, then clean up (see the module docstring).

    Parameters
    ----------
    args : list of str
        The command, starting with the ``mpiexec`` executable.
    timeout : float
        Seconds before the job is ended.
    env : dict, optional
        Environment; default this one with the package's root first on ``PYTHONPATH``.
    cwd : path, optional
        Working directory.

    Raises
    ------
    MPIRunError
        The job ran past ``timeout`` (it has been ended and cleaned up).
    KeyboardInterrupt
        Re-raised after the job has been ended and cleaned up.
    """
    job = Job(args, env=_env() if env is None else env, cwd=cwd)
    try:
        out, err = job.wait(timeout)
    except subprocess.TimeoutExpired:
        job.cleanup()
        job.proc.communicate()
        raise MPIRunError(f"timed out after {timeout:g} s; the MPI job was killed") from None
    except BaseException:  # KeyboardInterrupt: end the job, then let it propagate
        job.cleanup()
        job.proc.communicate()
        raise
    wall = time.perf_counter() - job.t0
    removed = job.cleanup()
    return JobResult(
        job.args,
        job.proc.returncode,
        out,
        err,
        wall,
        sorted(path for path, _ in job.files),
        removed,
    )


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


def run(
    ranks: int,
    n: int,
    seed: int,
    repeat: int,
    timeout: float,
    *,
    threads_per_rank: int | None = None,
    algorithm: str | None = None,
    check: bool = True,
) -> tuple[dict, float]:
    """Run ``mpi_run --json`` on ``ranks`` ranks once; return (its JSON, wall seconds).

    The JSON object has ``threads_per_rank`` (rank 0's Numba threads; without
    ``threads_per_rank`` here, ``mpi_run``'s default: the cores a rank may use split evenly
    among the ranks on its node, at least 1) and ``algorithm`` (default ``allgather``).

    Raises
    ------
    ValueError
        ``ranks`` not between 1 and :data:`MAX_RANKS` (checked before anything starts).
    MPIRunError
        Non-zero exit (with the tail of its stderr), timeout (the job is killed) or bad output.
    KeyboardInterrupt
        Re-raised after the job's processes have been ended.
    """
    if isinstance(ranks, bool) or not isinstance(ranks, int) or not 1 <= ranks <= MAX_RANKS:
        raise ValueError(
            f"ranks must be an integer between 1 and {MAX_RANKS} (MAX_RANKS: 4 per core, at "
            f"least 64); got {ranks!r}"
        )
    mpiexec = find_mpiexec()
    if mpiexec is None:
        raise MPIRunError("mpiexec not found")
    cmd = [mpiexec, "-n", str(ranks), sys.executable, "-m", "backends.mpi_run"]
    cmd += ["--n", str(n), "--seed", str(seed), "--repeat", str(repeat), "--json"]
    if check:
        cmd.append("--check")
    if threads_per_rank is not None:
        cmd += ["--threads-per-rank", str(threads_per_rank)]
    if algorithm is not None:
        cmd += ["--algorithm", algorithm]
    result = launch(cmd, timeout=timeout)
    if result.returncode != 0:
        tail = " | ".join(ln for ln in result.stderr.strip().splitlines()[-3:]) or "(no stderr)"
        raise MPIRunError(f"{' '.join(cmd[:3])} ... exited with status {result.returncode}: {tail}")
    return _parse(result.stdout), result.wall
