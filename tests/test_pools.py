"""The process-pool backends: the pair decomposition, knobs, determinism, pool reuse and
release, worker failures (start-up, raise, kill), unguarded scripts, clean exit.

Real processes only: workers are killed with SIGKILL from the test, and made to raise through
the private test hook ``backends._pools.FAULT_ENV`` (a file whose existence makes every task
raise in the worker). Scripts are run in real subprocesses and their output is counted.
"""

from __future__ import annotations

import gc
import importlib
import os
import py_compile
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
# the joblib process pool in the slow run only, where a case restarts pools (seconds each)
MODES_QUICK = [
    MODES[0],
    pytest.param("joblib", {"prefer": "processes"}, id="joblib-processes", marks=pytest.mark.slow),
    MODES[2],
]
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
    mine = (
        f"nbody-mp-{pid}-",
        f"nbody-joblib-{pid}-",
        f"joblib_memmapping_folder_{pid}_",
        f"sem.loky-{pid}-",
    )
    return {e for e in os.listdir("/dev/shm") if e.startswith(mine)}


def left_behind(base: set[str], wait: float = 5.0) -> set[str]:
    """This process's entries not in ``base`` that outlast garbage collection for ``wait`` s.

    A closed loky executor's semaphores are unlinked when its objects are freed: at once
    when nothing else refers to them, else by the garbage collector, some time later (seen
    in the full slow run). A leak stays; garbage that the collector frees is none.
    """
    deadline = time.monotonic() + wait
    while True:
        gc.collect()
        extra = segments() - base
        if not extra or time.monotonic() > deadline:
            return extra
        time.sleep(0.05)


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
# the decomposition of the pair triangle


@pytest.mark.parametrize("n", [2, 3, 7, 16, 33, 200, 1001])
@pytest.mark.parametrize("chunks", [1, 2, 3, 8, 64])
def test_lanes_hold_every_pair_exactly_once(n, chunks):
    lanes = _pools.lane_count(n, chunks)
    seen = np.zeros((n, n), dtype=int)
    for lane in range(lanes):
        for a0, a1, b0, b1 in _pools.lane_tasks(n, lanes, lane):
            assert 0 <= a0 < a1 <= n and 0 <= b0 < b1 <= n
            if (a0, a1) == (b0, b1):  # a diagonal block: pairs i < j of the block
                seen[a0:a1, b0:b1] += np.triu(np.ones((a1 - a0, a1 - a0), dtype=int), 1)
            else:
                assert a1 <= b0  # a rectangle strictly above the diagonal
                seen[a0:a1, b0:b1] += 1
    np.testing.assert_array_equal(seen, np.triu(np.ones((n, n), dtype=int), 1))


@pytest.mark.parametrize("chunks", [2, 4, 8, 16])
def test_lanes_are_balanced(chunks):
    n = 20_000
    lanes = _pools.lane_count(n, chunks)
    pairs = []
    for lane in range(lanes):
        count = 0
        for a0, a1, b0, b1 in _pools.lane_tasks(n, lanes, lane):
            k = a1 - a0
            count += k * (k - 1) // 2 if (a0, a1) == (b0, b1) else k * (b1 - b0)
        pairs.append(count)
    assert sum(pairs) == n * (n - 1) // 2
    assert max(pairs) / min(pairs) < 1.001, pairs


@pytest.mark.parametrize("n", [2, 5, 33, 1001, 9000])
@pytest.mark.parametrize("lanes", [1, 2, 3, 8])
def test_blocked_layout_reads_only_what_the_lanes_write(n, lanes):
    """Block starts are aligned; gaps and blocks a lane does not write are never read.

    The accumulators start full of NaN (as stale data in a reused buffer could be): a lane
    must zero what it writes, and the sum must skip the rest, or the result is not finite.
    """
    lanes = _pools.lane_count(n, lanes)
    plan = _pools.lane_plan(n, lanes)
    assert all(s % _pools.ALIGN == 0 for s in plan.starts) and plan.width % _pools.ALIGN == 0
    assert np.diff(plan.edges).max() <= max(_pools.MAX_BLOCK, -(-n // (2 * lanes)))
    for lane in range(lanes):  # the stored tasks are lane_tasks moved to the block starts
        stored = plan.tasks[lane]
        moved = _pools.lane_tasks(n, lanes, lane)
        np.testing.assert_array_equal(stored[:, 1] - stored[:, 0], moved[:, 1] - moved[:, 0])
        np.testing.assert_array_equal(stored[:, 3] - stored[:, 2], moved[:, 3] - moved[:, 2])
    m, x = random_system(n, seed=n)
    p, s = _pools.prepare(m, x, 0.01)
    stored = np.full((4, plan.width), np.nan)
    _pools.store_particles(plan, p, stored)
    assert np.isfinite(stored).all()  # gaps hold massless copies of a block's last particle
    for b in range(len(plan.starts)):
        lo, hi = plan.edges[b], plan.edges[b + 1]
        np.testing.assert_array_equal(
            stored[:, plan.starts[b] : plan.starts[b] + hi - lo], p[:, lo:hi]
        )
    acc = np.full((lanes, 3, plan.width), np.nan)
    for lane in range(lanes):
        _pools.run_lane(plan, stored, acc[lane], lane, (0.01 * s) ** 2)
    out, finite = _pools.sum_lanes(plan, acc, 0.7, s)
    assert finite and np.isfinite(out).all()
    rows = np.arange(0, n, max(1, n // 40))
    ref = reference.accel_rows(m, x, 0.7, 0.01, rows)
    assert backends.relative_error(out[rows], ref) <= TOL


def test_aligned_empty_is_aligned():
    for size in (1, 17, 1000):
        a = _pools.aligned_empty(size)
        assert a.shape == (size,) and a.ctypes.data % (8 * _pools.ALIGN) == 0


def test_workers_reports_the_effective_count():
    for name in MODULES:
        mod = _module(name)
        assert mod.workers() == _pools.usable_cores()
        assert mod.workers(3) == 3
        with pytest.raises(ValueError, match="n_workers must be a positive integer"):
            mod.workers(0)
    assert _module("joblib").workers(2, prefer="threads") == 2


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


@pytest.mark.slow  # nine pools of 1-3 workers; test_knobs_do_not_change_the_answer runs by default
def test_results_depend_on_chunks_only_and_match_numba_parallel():
    """Bitwise the same for any worker count and pool kind; within 1e-13 of the threads."""
    from backends import numba_parallel

    m, x = random_system(3001, seed=11)
    ref = numba_parallel.accel(m, x, 0.5, softening=0.003)
    outs = []
    for name, opts in [("multiprocessing", {}), ("joblib", {}), ("joblib", {"prefer": "threads"})]:
        mod = _module(name)
        for n_workers in (1, 2, 3):
            out = mod.accel(m, x, 0.5, softening=0.003, n_workers=n_workers, chunks=8, **opts)
            outs.append((name, opts, n_workers, out))
    for name, opts, n_workers, out in outs:
        np.testing.assert_array_equal(out, outs[0][3], err_msg=f"{name} {opts} {n_workers}")
    assert backends.relative_error(outs[0][3], ref) <= 1e-13


@pytest.mark.parametrize(("name", "opts"), MODES)
@pytest.mark.parametrize("case", ["close pair", "huge extent"])
def test_the_exact_path_takes_over(name, opts, case, monkeypatch):
    """A pair too close for the fast path, or an extent too large for the scaling.

    The close pair's two rows, and only those, go to the exact path (the lanes' sums of
    every other row are right: redoing every row cost ten times the call on a cusp); with
    the extent out of reach every row does. The workers really compute them.
    """
    mod = _module(name)
    n = 300
    m, x = random_system(n, seed=12)
    if case == "close pair":
        x[0] = 0.0  # at the origin, where float64 holds the gap
        x[-1] = [3e-19, 0.0, 0.0]  # separated, but r2 below the fast path's range
    else:  # one particle 2**190 away: the inputs' rescaling keeps the others' scale (their
        x[0] = [2.0**190, 0.0, 0.0]  # spread) and the half-extent, above 2**179, has no scale
    asked = []
    parts = mod.exact_parts

    def spy(n, chunks, rows=None):
        asked.append(parts(n, chunks, rows))
        return asked[-1]

    monkeypatch.setattr(mod, "exact_parts", spy)
    ref = reference.accel(m, x, 1.0, softening=0.0)
    out = mod.accel(m, x, n_workers=2, chunks=3, **opts)
    assert backends.relative_error(out, ref) <= TOL
    assert len(asked) == 1 and 1 <= len(asked[0]) <= 3
    summed = np.concatenate([np.arange(n)[part] for part in asked[0]])
    want = [0, n - 1] if case == "close pair" else np.arange(n)
    np.testing.assert_array_equal(summed, want)


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


@pytest.mark.parametrize(("name", "opts"), MODES_QUICK)
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
        assert left_behind(base_segments) == set()
        mod.close()  # idempotent


@pytest.mark.parametrize(("name", "opts"), MODES_QUICK)
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


@pytest.mark.slow  # real scripts and pools started anew: seconds each
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


@pytest.mark.slow  # real scripts and pools started anew: seconds each
def test_a_raising_worker_leaves_no_thread_exception_behind(tmp_path, monkeypatch):
    """joblib/loky: a failing call must not make loky's manager thread die of a KeyError.

    Raising in a task made joblib shut the executor down with ``kill_workers=True`` while
    other tasks were queued, and loky's manager thread then raised ``KeyError`` on a task
    that shutdown had dropped (an unhandled thread exception, about one call in eight).
    Repeated here with every thread exception recorded.
    """
    mod = _module("joblib")
    fault = tmp_path / "fault"
    hits = []
    monkeypatch.setattr(threading, "excepthook", lambda args: hits.append(args.exc_value))
    monkeypatch.setenv(_pools.FAULT_ENV, str(fault))
    m, x = random_system(100, seed=6)
    try:
        for _ in range(6):
            mod.start(n_workers=2)
            fault.touch()
            with pytest.raises(RuntimeError, match="worker raised"):
                mod.accel(m, x, n_workers=2, chunks=16)
            fault.unlink()
            mod.accel(m, x, n_workers=2, chunks=16)
            mod.close()
    finally:
        mod.close()
    assert not hits, hits


@pytest.mark.parametrize(("name", "opts"), PROCESS_MODES)
def test_worker_start_up_failure_reports_the_real_exception(name, opts, tmp_path, monkeypatch):
    """A worker whose start-up raises: the error names that exception, not a guess."""
    mod = _module(name)
    mod.close()
    import numba  # noqa: F401 - this process keeps the real Numba

    fake = tmp_path / "numba"
    fake.mkdir()
    (fake / "__init__.py").write_text('raise ImportError("numba is broken in this test")\n')
    monkeypatch.syspath_prepend(str(tmp_path))  # the workers start with this sys.path
    base = children()
    try:
        with pytest.raises(RuntimeError, match="failed to start") as info:
            mod.start(n_workers=2, **opts)
        assert "ImportError: numba is broken in this test" in str(info.value)
        assert "__main__" not in str(info.value)
    finally:
        mod.close()
    deadline = time.monotonic() + 10.0
    while children() - base and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not children() - base


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


@pytest.mark.slow  # real scripts and pools started anew: seconds each
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


# ---------------------------------------------------------------------------------------------
# scripts without the ``if __name__ == "__main__":`` guard

UNGUARDED = textwrap.dedent(
    """
    import sys

    import numpy as np
    import backends

    print("the script's own output")
    rng = np.random.default_rng(0)
    m, x = rng.random(200), rng.standard_normal((200, 3))
    a = backends.accel(m, x, backend=sys.argv[1], n_workers=2)
    print("finished", a.shape)
    """
)


def _run_script(path, *args):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(path), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    return proc, (proc.stdout + proc.stderr).splitlines()


@pytest.mark.parametrize("name", MODULES)
def test_unguarded_script_gets_one_clear_error(name, tmp_path):
    _module(name)
    script = tmp_path / "unguarded.py"
    script.write_text(UNGUARDED)
    proc, lines = _run_script(script, name)
    assert proc.returncode == 1, lines
    assert proc.stdout.splitlines() == ["the script's own output"], lines  # not re-run
    assert proc.stderr.count('outside `if __name__ == "__main__":`') == 1, lines
    assert "unguarded.py (line 10)" in proc.stderr, lines
    assert len(lines) <= 20, "\n".join(lines)  # one traceback, not one per worker


@pytest.mark.slow  # real scripts and pools started anew: seconds each
def test_guarded_script_runs(tmp_path):
    body = UNGUARDED.split('print("the script')
    guarded = (
        body[0]
        + 'if __name__ == "__main__":\n'
        + textwrap.indent('print("the script' + body[1], "    ")
    )
    script = tmp_path / "guarded.py"
    script.write_text(guarded)
    for name in MODULES:
        _module(name)
        proc, out = _run_script(script, name)
        assert proc.returncode == 0, out
        assert out == ["the script's own output", "finished (200, 3)"], out


@pytest.mark.slow  # real scripts and pools started anew: seconds each
def test_unguarded_compiled_script_is_stopped_in_the_workers(tmp_path):
    """No source for the parent to read (a .pyc): each worker stops with one line."""
    _module("multiprocessing")
    source = tmp_path / "unguarded.py"
    source.write_text(UNGUARDED)
    compiled = tmp_path / "unguarded.pyc"
    py_compile.compile(str(source), cfile=str(compiled), doraise=True)
    source.unlink()
    proc, lines = _run_script(compiled, "multiprocessing")
    assert proc.returncode == 1, lines
    assert "called while a worker process imported the main module" in proc.stderr, lines
    assert "failed to start" in proc.stderr, lines
    assert "finished" not in proc.stdout, lines
    assert len(lines) <= 40, "\n".join(lines)


@pytest.mark.parametrize(
    ("source", "guarded"),
    [
        ('if __name__ == "__main__":\n    call()\n', True),
        ("if '__main__' == __name__:\n    call()\n", True),
        ('if __name__ != "__main__":\n    pass\nelse:\n    call()\n', False),
        ('if __name__ == "__main__" or True:\n    call()\n', False),
        ("call()\n", False),
    ],
)
def test_guard_detection(source, guarded, tmp_path):
    path = tmp_path / "script.py"
    path.write_text(source)
    ranges = _pools._guarded_lines(str(path))
    line = source.splitlines().index("    call()" if guarded else source.splitlines()[-1]) + 1
    assert any(lo <= line <= hi for lo, hi in ranges) == guarded


# ---------------------------------------------------------------------------------------------
# a parent killed with SIGKILL (the OOM killer, a closed terminal): nothing may outlive it

KILLED_SCRIPT = textwrap.dedent(
    """
    import os, sys

    import numpy as np
    import backends

    if __name__ == "__main__":
        name, prefer, busy = sys.argv[1], sys.argv[2], sys.argv[3] == "busy"
        opts = {"n_workers": 2} if name == "multiprocessing" else {"n_workers": 2, "prefer": prefer}
        rng = np.random.default_rng(0)
        m, x = rng.random(20000), rng.standard_normal((20000, 3))
        mod = backends.get(name).module
        pids = mod.start(**{k: v for k, v in opts.items() if k != "chunks"})
        backends.accel(m[:300], x[:300], backend=name, **opts)
        if name == "joblib":  # the exact path maps large inputs through joblib's folder
            backends.accel(m[:3000], 1e60 * x[:3000], backend=name, **opts)
        print(os.getpid(), *pids, flush=True)
        while busy:
            backends.accel(m, x, backend=name, **opts)
        sys.stdin.read()  # idle until killed
    """
)


def _descendants(pid: int) -> set[int]:
    """Every living descendant of ``pid`` (from /proc)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier} - found
        found |= frontier
    return {p for p in found if alive(p)}


def _shm_in_use(pids) -> set[str]:
    """The /dev/shm files and folders mapped or held open by these processes."""
    out = set()
    for pid in pids:
        try:
            maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
            fds = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:
            continue
        for path in [line.split(maxsplit=5)[-1] for line in maps if "/dev/shm/" in line] + fds:
            if path.startswith("/dev/shm/"):
                out.add(path.split(" (deleted)")[0])
    return {"/dev/shm/" + p.split("/")[3] for p in out}  # a joblib folder, not its files


@pytest.mark.parametrize("when", ["busy", pytest.param("idle", marks=pytest.mark.slow)])
@pytest.mark.parametrize(("name", "prefer"), [("multiprocessing", "-"), ("joblib", "processes")])
def test_killed_parent_leaves_no_process_and_no_segment(name, prefer, when, tmp_path):
    _module(name)
    script = tmp_path / "killed.py"
    script.write_text(KILLED_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, str(script), name, prefer, when],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    family: set[int] = set()
    try:
        parent, *workers = (int(p) for p in proc.stdout.readline().split())
        assert parent == proc.pid and len(workers) == 2, proc.stderr.read()
        time.sleep(0.5)  # busy: inside a call of about a second
        family = _descendants(parent)
        assert set(workers) <= family
        held = _shm_in_use({parent, *family}) | {f"/dev/shm/{e}" for e in segments(parent)}
        assert any("nbody-" in h for h in held), held
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            left = {p for p in family if alive(p)}
            files = {h for h in held if os.path.exists(h)} | set(segments(parent))
            if not left and not files:
                break
            time.sleep(0.1)
        assert not left, f"processes of the killed parent still alive after 10 s: {left}"
        assert not files, f"left behind in /dev/shm after 10 s: {sorted(files)}"
    finally:  # whatever failed, leave nothing of this test running
        proc.kill()
        proc.wait()
        for pid in family | _descendants(proc.pid):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("name", ["multiprocessing", "joblib"])
def test_absurd_worker_counts_are_refused_before_any_pool_starts(name):
    m, x = random_system(4)
    for bad in (_pools.MAX_WORKERS + 1, 10**6, 2**63):
        with pytest.raises(ValueError, match=f"n_workers must be at most {_pools.MAX_WORKERS}"):
            backends.accel(m, x, backend=name, n_workers=bad)
    assert _pools.MAX_WORKERS >= 64  # oversubscription tests (16 workers on 2 cores) still run
