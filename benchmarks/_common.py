"""Shared state of the asv suite: sizes, backend groups, cached inputs and warm-up.

asv_runner re-runs ``setup`` before every timed sample, so everything expensive (inputs,
compilation, pool start, oracle rows) is done once per benchmark process and cached here at
module level; ``setup`` methods stay cheap and idempotent. Nothing here defines a worker or a
jitted function: those live in :mod:`backends` (spawned children cannot import this package).

``NBODY_BENCH_TINY=1`` in the environment (read at import) shrinks every size so the whole
suite runs in seconds; ``tests/test_benchmarks.py`` uses it.
"""

from __future__ import annotations

import ast
import functools
import os
from pathlib import Path

import numpy as np

import backends

TINY = os.environ.get("NBODY_BENCH_TINY", "") not in ("", "0")

#: Steady-state sizes: time, throughput.
SIZES = [64, 256] if TINY else [1_000, 10_000]
#: "Large N" for peak memory and accuracy: big enough that an O(N^2) temporary
#: (N^2 * 24 bytes = 9.6 GB at 20 000) could not hide; small enough for every compiled backend.
LARGE_N = 512 if TINY else 20_000
#: Size of the first call in the cold-start and pool start-up benchmarks.
FIRST_CALL_N = 64 if TINY else 1_000
#: Warm-up size where the measured call must not be the warm-up itself (peak memory).
WARM_N = 64
#: Backends skipped above this N in every benchmark (too slow to be worth the machine time).
MAX_N = {"python": 1_000}
#: Benchmarked out of process (under mpiexec, in ``bench_mpi``), never in-process.
OUT_OF_PROCESS = frozenset({"mpi"})
#: Backends with a persistent worker pool (module-level ``close()``), if registered.
POOL_BACKENDS = ("joblib", "multiprocessing")
#: In-process backends with nothing to compile.
INTERPRETED = frozenset({"python", "numpy"})


@functools.cache
def registered() -> list[str]:
    """Return the backend names of this checkout's registry, in its order.

    asv evaluates ``params`` at discovery and again in every benchmark process, where the
    installed package may be an older commit's, and it finds a parameter combination by its
    index. So the names come from the registry's source next to this suite (the checkout asv
    runs), not from the installed package: both lists are then identical and a result is never
    filed under another backend's name. :func:`require` skips names an older commit lacks.
    Outside a checkout, the installed package's :func:`backends.names` is used.
    """
    source = Path(__file__).resolve().parents[1] / "backends" / "__init__.py"
    try:
        tree = ast.parse(source.read_text())
    except (OSError, SyntaxError):
        return backends.names()
    for node in ast.walk(tree):
        target = getattr(node, "target", None) or (getattr(node, "targets", None) or [None])[0]
        if getattr(target, "id", None) == "_REGISTRY" and isinstance(node.value, ast.Dict):
            return [key.value for key in node.value.keys if isinstance(key, ast.Constant)]
    return backends.names()


def in_process() -> list[str]:
    """Return the registered backends benchmarked in this process (all but MPI)."""
    return [name for name in registered() if name not in OUT_OF_PROCESS]


def compiled() -> list[str]:
    """Return the registered in-process backends that compile on their first call."""
    return [n for n in in_process() if n not in INTERPRETED and n not in POOL_BACKENDS]


def pools() -> list[str]:
    """Return the registered process-pool backends."""
    return [name for name in POOL_BACKENDS if name in registered()]


def require(name: str, n: int | None = None) -> None:
    """Raise ``NotImplementedError`` (asv: skipped) if ``name`` cannot or should not run at ``n``.

    Parameters
    ----------
    name : str
        Backend name.
    n : int, optional
        Problem size; combinations above ``MAX_N[name]`` are skipped as too slow.
    """
    reason = _unavailable(name)
    if reason is not None:
        raise NotImplementedError(reason)
    if n is not None and n > MAX_N.get(name, n):
        raise NotImplementedError(f"{name} above N = {MAX_N[name]} is too slow to benchmark")


@functools.cache
def _unavailable(name: str) -> str | None:
    # A history run measures older commits with today's suite: a backend those commits did
    # not register yet is skipped, not failed.
    if name not in backends.names():
        return f"backend {name!r} is not registered in this version of the package"
    return backends.unavailable_reason(name)


@functools.cache
def get(name: str) -> backends.Backend:
    """Return the backend object, resolved once per process."""
    return backends.get(name)


@functools.cache
def inputs(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Masses ``(n,)`` on [0, 1) and Gaussian positions ``(n, 3)``: the benchmark system.

    The same distribution as the tests' ``random_system``. Cached: do not modify the arrays.
    """
    rng = np.random.default_rng(seed)
    return rng.random(n), rng.standard_normal((n, 3))


_warm: set[tuple[str, int]] = set()


def warm(name: str, n: int) -> None:
    """Call backend ``name`` once at size ``n`` (compile, start pools), once per process.

    Warm-up is at the measured size because some backends (JAX) compile per shape. The
    pure-Python oracle has nothing to warm and is skipped.
    """
    if name in INTERPRETED or (name, n) in _warm:
        return
    m, x = inputs(n)
    get(name).accel(m, x)
    _warm.add((name, n))


@functools.cache
def oracle_rows(n: int, count: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Return sampled row indices and their exact oracle accelerations for ``inputs(n)``.

    Returns
    -------
    rows : (count,) ndarray of int
    ref : (count, 3) ndarray of float64
    """
    from backends.reference import accel_rows

    m, x = inputs(n)
    rows = np.unique(np.linspace(0, n - 1, count).astype(np.intp))
    return rows, accel_rows(m, x, 1.0, 0.0, rows.tolist())
