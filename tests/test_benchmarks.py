"""The asv suite runs: every benchmark's setup and body once, at tiny sizes (slow cases).

``NBODY_BENCH_TINY=1`` (set before the suite is imported) shrinks every size. A benchmark
whose ``setup`` raises ``NotImplementedError`` is one asv skips (unavailable backend, too slow
a combination); the test skips it too, with asv's reason. Anything else that raises fails.
``timeraw_`` code runs in a fresh interpreter, as asv runs it; MPI runs under real mpiexec.
"""

from __future__ import annotations

import importlib
import inspect
import itertools
import math
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

os.environ["NBODY_BENCH_TINY"] = "1"
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import benchmarks  # noqa: E402
from benchmarks import _common  # noqa: E402

PREFIXES = ("time_", "timeraw_", "peakmem_", "mem_", "track_")
# Every benchmark's smoke run is a slow case (`python -m pytest -m slow`, run by .ci/run): cold
# starts compile from an empty cache in a fresh interpreter (pytreegrav_tree 55-98 s), MPI
# runs start mpiexec. The default run keeps the discovery checks and the core backends'
# TimeAccel below; every backend's correctness is tested by the other files.
SLOW = pytest.mark.slow
#: ColdStart's smoke run leaves out the backends whose cold start is a long compilation
#: through the same benchmark code every other backend runs here: the peer library
#: pytreegrav (2 minutes of CI for the two cache modes of pytreegrav_tree alone), fmm
#: (43 s from an empty cache) and tree (26 s for its two cache modes). Their other
#: benchmarks all run.
LONG_COMPILES = ("pytreegrav_bruteforce", "pytreegrav_tree", "fmm", "tree")
MODULES = sorted(m.name for m in pkgutil.iter_modules(benchmarks.__path__))


def _modules():
    return [importlib.import_module(f"benchmarks.{name}") for name in MODULES]


def _param_sets(params):
    """The parameter combinations asv runs (a list of lists is a product; else one list)."""
    if params is None:
        return [()]
    if params and all(isinstance(p, list | tuple) for p in params):
        return list(itertools.product(*params))
    return [(p,) for p in params]


def _cases():
    cases = []
    for module in _modules():
        for cname, cls in vars(module).items():
            if not inspect.isclass(cls) or cls.__module__ != module.__name__:
                continue
            methods = [m for m in vars(cls) if m.startswith(PREFIXES)]
            for method, params in itertools.product(
                methods, _param_sets(cls.__dict__.get("params"))
            ):
                if method == "timeraw_first_call" and str(params[0]) in LONG_COMPILES:
                    continue  # the same code path as every other backend's; see LONG_COMPILES
                label = "-".join(str(p) for p in params)
                case_id = f"{module.__name__.split('.')[-1]}.{cname}.{method}[{label}]"
                cases.append(pytest.param(cls, method, params, id=case_id, marks=SLOW))
        for fname, func in vars(module).items():
            if fname.startswith(PREFIXES) and inspect.isfunction(func):
                case_id = f"{module.__name__.split('.')[-1]}.{fname}"
                cases.append(pytest.param(module, fname, (), id=case_id, marks=SLOW))
    return cases


def _run_timeraw(code) -> float:
    stmt, setup = code if isinstance(code, tuple) else (code, "")
    runner = (
        f"from timeit import timeit\nprint(repr(timeit(stmt={stmt!r}, setup={setup!r}, number=1)))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", runner], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    return float(proc.stdout.strip())


def test_suite_is_tiny():
    assert _common.TINY
    assert max(_common.SIZES) <= 256


def test_every_module_imports():
    """asv imports every module in benchmarks/ during discovery; none may fail or run work."""
    assert "bench_accel" in MODULES
    assert len(_modules()) == len(MODULES)


def test_suite_covers_every_in_process_backend():
    from benchmarks.bench_accel import TimeAccel

    assert TimeAccel.params[0] == [n for n in _common.in_process()]
    assert "numba_parallel" in _common.compiled()


@pytest.mark.parametrize(("owner", "method", "params"), _cases())
def test_benchmark_runs_once(owner, method, params):
    """A class benchmark runs on a fresh instance; a module-level one on its module."""
    obj = owner() if inspect.isclass(owner) else owner
    setup = getattr(obj, "setup", lambda *params: None)
    teardown = getattr(obj, "teardown", lambda *params: None)
    skipped = None
    try:
        try:
            setup(*params)
        except NotImplementedError as exc:
            skipped = f"asv skips this combination: {exc}"
        else:
            result = getattr(obj, method)(*params)
            if method.startswith("timeraw_"):
                assert _run_timeraw(result) > 0.0
            elif method.startswith("track_"):
                assert isinstance(result, float | int)
                assert math.isfinite(result) and result >= 0.0
    finally:
        # asv calls teardown after every run, also after setup raised NotImplementedError.
        teardown(*params)
    if skipped is not None:
        pytest.skip(skipped)


@pytest.mark.parametrize("name", ["numpy", "numba_parallel"])
def test_core_backends_are_not_skipped(name):
    """The always-installed backends must really run in the suite, never be skipped."""
    from benchmarks.bench_accel import TimeAccel

    bench = TimeAccel()
    bench.setup(name, _common.SIZES[0])
    bench.time_accel(name, _common.SIZES[0])


def test_thread_scaling_script_runs_and_reports_each_thread_count(capsys):
    from benchmarks import thread_scaling

    assert (
        thread_scaling.main(
            [
                "--threads",
                "1",
                "2",
                "--direct-n",
                "300",
                "--repeat",
                "1",
                "--which",
                "numba_parallel",
                "tree",
                "--tree-n",
                "500",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    import numba

    counts = [t for t in (1, 2) if t <= numba.config.NUMBA_NUM_THREADS]
    for name in ("numba_parallel", "tree"):
        rows = [line for line in out.splitlines() if line.startswith(f"{name} ") and " T=" in line]
        assert [int(r.split("T=")[1].split()[0]) for r in rows] == counts
        for row in rows:  # same sums in another order: close to rounding
            assert float(row.rsplit("differs by ", 1)[1]) < 1e-12
    assert numba.get_num_threads() == numba.config.NUMBA_NUM_THREADS
