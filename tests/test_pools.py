"""The process-pool backends: knobs, pool reuse and release, worker failures, clean exit.

Real processes only: workers are killed with SIGKILL from the test, and made to raise through
the private test hook ``backends._pools.FAULT_ENV`` (a file whose existence makes every chunk
raise in the worker).
"""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import random_system

import backends
from backends import _pools, reference

TOL = 1e-12
ROOT = Path(__file__).resolve().parents[1]
MODULES = {"multiprocessing": "backends.multiprocessing_shm", "joblib": "backends.joblib_chunks"}
MODES = [  # (backend, extra options)
    pytest.param("multiprocessing", {}, id="multiprocessing"),
    pytest.param("joblib", {"prefer": "processes"}, id="joblib-processes"),
    pytest.param("joblib", {"prefer": "threads"}, id="joblib-threads"),
]
PROCESS_MODES = MODES[:2]
pytestmark = pytest.mark.skipif(
    not (Path("/proc/self/stat").exists() and Path("/dev/shm").is_dir()),
    reason="these checks count processes in /proc and segments in /dev/shm (Linux)",
)


def _module(name):
    reason = backends.unavailable_reason(name)
    if reason is not None:
        pytest.skip(reason)
    return importlib.import_module(MODULES[name])


def children() -> set[int]:
    """Process ids whose parent is this process, zombies included (from /proc)."""
    me, out = os.getpid(), set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:  # exited meanwhile
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == me:
                out.add(int(entry))
    return out


def segments(pid=None) -> set[str]:
    """This process's shared-memory entries: our segments, joblib's folders, loky's semaphores."""
    pid = os.getpid() if pid is None else pid
    mine = (f"nbody-mp-{pid}-", f"joblib_memmapping_folder_{pid}_", f"sem.loky-{pid}-")
    return {e for e in os.listdir("/dev/shm") if e.startswith(mine)}


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def exited(pid: int) -> bool:
    """Whether every thread of ``pid`` has exited (a zombie leader can outlive its threads)."""
    try:
        return not alive(pid) and os.listdir(f"/proc/{pid}/task") == [str(pid)]
    except OSError:
        return True


# ---------------------------------------------------------------------------------------------
# knobs and validation


@pytest.mark.parametrize("name", MODULES)
@pytest.mark.parametrize("knob", ["n_workers", "chunks"])
@pytest.mark.parametrize("value", [0, -1, 1.5, True, "2"])
def test_knobs_must_be_positive_integers(name, knob, value):
    mod = _module(name)
    m, x = random_system(5)
    with pytest.raises(ValueError, match=f"{knob} must be a positive integer; got {value!r}"):
        mod.accel(m, x, **{knob: value})
    with pytest.raises(ValueError, match=f"{knob} must be a positive integer"):
        backends.accel(m, x, backend=name, **{knob: value})
    with pytest.raises(ValueError, match=f"{knob} must be a positive integer"):
        mod.Session(**{knob: value})


def test_joblib_prefer_is_checked():
    mod = _module("joblib")
    m, x = random_system(5)
    with pytest.raises(ValueError, match="prefer must be one of 'processes', 'threads'; got 'gpu'"):
        mod.accel(m, x, prefer="gpu")
    with pytest.raises(ValueError, match="prefer must be one of"):
        mod.Session(prefer=None)


@pytest.mark.parametrize("name", MODULES)
def test_bad_input_never_reaches_a_worker(name):
    mod = _module(name)
    mod.close()
    before = children()
    with pytest.raises(ValueError, match="positions must be finite"):
        mod.accel(np.ones(3), [[0, 0, 0], [1, 1, np.nan], [2, 2, 2]], n_workers=2)
    with pytest.raises(ValueError, match="n_workers must be a positive integer"):
        mod.accel(np.ones(3), np.zeros((3, 3)), n_workers=0)
    assert children() <= before  # no pool was started for a rejected call


# ---------------------------------------------------------------------------------------------
# results


@pytest.mark.parametrize(("name", "opts"), MODES)
def test_knobs_do_not_change_the_answer(name, opts):
    mod = _module(name)
    for n, chunks in [(257, None), (31, 1), (5, 64), (64, 7)]:
        m, x = random_system(n, seed=n)
        ref = reference.accel(m, x, 0.7, softening=0.01)
        out = mod.accel(m, x, 0.7, softening=0.01, n_workers=2, chunks=chunks, **opts)
        assert backends.relative_error(out, ref) <= TOL, (n, chunks)


def test_joblib_threads_give_the_same_results_as_processes():
    mod = _module("joblib")
    m, x = random_system(300, seed=7)
    workers = set(mod.start(n_workers=2, prefer="processes"))
    for chunks in (1, 7):
        procs = mod.accel(m, x, softening=0.02, n_workers=2, chunks=chunks, prefer="processes")
        threads = mod.accel(m, x, softening=0.02, n_workers=2, chunks=chunks, prefer="threads")
        np.testing.assert_array_equal(threads, procs)  # same kernel on the same row blocks
    assert workers <= children()  # the thread pool did not replace the process pool


def test_joblib_large_inputs_travel_as_memory_maps():
    mod = _module("joblib")
    n = 4000  # positions 96 kB > MAX_NBYTES: memory-mapped, read-only in the workers
    m, x = random_system(n, seed=5)
    out = mod.accel(m, x, n_workers=2, chunks=4)
    threads = mod.accel(m, x, n_workers=2, chunks=4, prefer="threads")
    assert backends.relative_error(out, threads) <= TOL
    rows = np.arange(0, n, 397)
    ref = reference.accel_rows(m, x, 1.0, 0.0, rows)
    assert backends.relative_error(out[rows], ref) <= TOL


# ---------------------------------------------------------------------------------------------
# lifetime: reuse, close, context manager, no growth


@pytest.mark.parametrize(("name", "opts"), MODES)
def test_repeated_calls_and_close_leave_nothing_behind(name, opts):
    mod = _module(name)
    threads = opts.get("prefer") == "threads"
    # one full cycle first: resource trackers are started once per process and stay
    mod.accel(*random_system(10), n_workers=2, **opts)
    mod.close()
    base_children, base_segments = children(), segments()
    for cycle in range(2):
        workers = None
        for n in (50, 3000, 200, 4000, 20):  # 3000 and 4000 grow the shared segment
            m, x = random_system(n, seed=n + cycle)
            out = mod.accel(m, x, n_workers=2, **opts)
            assert (
                backends.relative_error(out[:3], reference.accel_rows(m, x, 1.0, 0.0, [0, 1, 2]))
                <= TOL
            )
            now = children() - base_children
            if workers is None:
                workers = now
            assert now == workers, "the pool must be reused, not rebuilt, across calls"
        assert len(workers) == (0 if threads else 2)
        if name == "multiprocessing":  # one segment, reused and grown
            assert len({s for s in segments() - base_segments if s.startswith("nbody-mp-")}) == 1
        mod.close()
        assert children() == base_children
        assert segments() == base_segments
        mod.close()  # idempotent


@pytest.mark.parametrize(("name", "opts"), MODES)
def test_session_and_backend_close(name, opts):
    mod = _module(name)
    base = children()
    m, x = random_system(40, seed=1)
    ref = reference.accel(m, x)
    with mod.Session(n_workers=2, chunks=3, **opts) as session:
        assert backends.relative_error(session.accel(m, x), ref) <= TOL
        started = children() - base
    assert children() == base
    assert len(started) == (0 if opts.get("prefer") == "threads" else 2)
    b = backends.get(name)
    assert backends.relative_error(b.accel(m, x, n_workers=2, **opts), ref) <= TOL
    b.close()
    assert children() == base


def test_changing_n_workers_replaces_the_pool():
    mod = _module("multiprocessing")
    mod.close()
    base = children()
    first = mod.start(n_workers=2)
    assert set(first) == children() - base
    m, x = random_system(50, seed=2)
    out = mod.accel(m, x, n_workers=3, chunks=5)
    assert backends.relative_error(out, reference.accel(m, x)) <= TOL
    second = mod.start(n_workers=3)
    assert len(second) == 3 and not set(first) & set(second)
    assert set(second) == children() - base
    mod.close()


# ---------------------------------------------------------------------------------------------
# failures


def _call_in_thread(mod, m, x, **opts):
    box = {}

    def target():
        try:
            box["out"] = mod.accel(m, x, **opts)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["exc"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, box


@pytest.mark.parametrize(("name", "opts"), PROCESS_MODES)
def test_killed_worker_fails_the_call_fast_and_the_next_call_works(name, opts):
    mod = _module(name)
    pids = mod.start(n_workers=2, **opts)
    assert len(pids) == 2
    m, x = random_system(150_000, seed=3)  # minutes of work for 2 workers: surely mid-call
    thread, box = _call_in_thread(mod, m, x, n_workers=2, chunks=2, **opts)
    time.sleep(1.0)
    assert thread.is_alive(), "the large call ended before the kill; the test needs a larger N"
    os.kill(pids[0], signal.SIGKILL)
    thread.join(60.0)  # a hang guard, not a timing: the failure arrives within moments
    assert not thread.is_alive(), "the call hung after a worker was killed"
    exc = box.get("exc")
    assert isinstance(exc, RuntimeError), box
    assert "died" in str(exc), str(exc)
    # the failed pool is gone, and the next call builds a new one that works
    assert not any(alive(p) for p in pids)
    m, x = random_system(100, seed=4)
    out = mod.accel(m, x, n_workers=2, **opts)
    assert backends.relative_error(out, reference.accel(m, x)) <= TOL
    assert not set(mod.start(n_workers=2, **opts)) & set(pids)


@pytest.mark.parametrize(("name", "opts"), PROCESS_MODES)
def test_worker_killed_between_calls_is_replaced(name, opts):
    mod = _module(name)
    pids = mod.start(n_workers=2, **opts)
    os.kill(pids[1], signal.SIGKILL)
    while not exited(pids[1]):
        time.sleep(0.01)
    m, x = random_system(60, seed=8)
    out = mod.accel(m, x, n_workers=2, **opts)  # the health check rebuilds the pool first
    assert backends.relative_error(out, reference.accel(m, x)) <= TOL
    assert not set(mod.start(n_workers=2, **opts)) & set(pids)


@pytest.mark.parametrize(("name", "opts"), PROCESS_MODES)
def test_worker_that_raises_fails_the_call_and_the_next_call_works(
    name, opts, tmp_path, monkeypatch
):
    mod = _module(name)
    fault = tmp_path / "fault"
    mod.close()
    monkeypatch.setenv(_pools.FAULT_ENV, str(fault))  # inherited by the workers started now
    try:
        mod.start(n_workers=2, **opts)
        m, x = random_system(100, seed=6)
        fault.touch()
        with pytest.raises(RuntimeError, match="worker raised.*ValueError.*fault injected") as info:
            mod.accel(m, x, n_workers=2, **opts)
        assert isinstance(info.value.__cause__, ValueError)
        fault.unlink()
        out = mod.accel(m, x, n_workers=2, **opts)
        assert backends.relative_error(out, reference.accel(m, x)) <= TOL
    finally:
        mod.close()  # its workers carry the hook's environment variable


def test_fault_hook_in_threads_mode(tmp_path, monkeypatch):
    mod = _module("joblib")
    fault = tmp_path / "fault"
    monkeypatch.setenv(_pools.FAULT_ENV, str(fault))
    fault.touch()
    m, x = random_system(20)
    with pytest.raises(RuntimeError, match="worker raised.*ValueError"):
        mod.accel(m, x, n_workers=2, prefer="threads")
    fault.unlink()
    out = mod.accel(m, x, n_workers=2, prefer="threads")
    assert backends.relative_error(out, reference.accel(m, x)) <= TOL


# ---------------------------------------------------------------------------------------------
# interpreter exit

EXIT_SCRIPT = textwrap.dedent(
    """
    import os

    import numpy as np
    import backends

    if __name__ == "__main__":
        rng = np.random.default_rng(0)
        m, x = rng.random(3000), rng.standard_normal((3000, 3))
        names = [n for n in ("multiprocessing", "joblib") if n in backends.available()]
        pids = []
        for name in names:
            mod = backends.get(name).module
            pids += mod.start(n_workers=2)
            backends.accel(m, x, backend=name, n_workers=2)
        print(os.getpid())
        print(*pids)
        # no close(): the pools must be released at interpreter exit
    """
)


def test_interpreter_exit_leaves_nothing_behind(tmp_path):
    script = tmp_path / "use_pools.py"
    script.write_text(EXIT_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", proc.stderr  # no resource_tracker or leak warnings
    parent, *pids = (int(p) for p in proc.stdout.split())
    assert len(pids) >= 2
    deadline = time.monotonic() + 10.0
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in pids if alive(p)], "orphan worker processes"
    leftovers = [e for e in os.listdir("/dev/shm") if f"-{parent}-" in e or f"_{parent}_" in e]
    assert not leftovers, leftovers
