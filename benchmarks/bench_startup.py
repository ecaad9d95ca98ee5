"""Start-up costs, kept apart from the steady state.

* Cold start of each compiled backend: a fresh interpreter imports :mod:`backends`, resolves
  the backend (importing numba, jax, ...), compiles and makes the first call at
  N = 1 000 (``timeraw_``: each sample is a new process; creating the inputs is untimed).
  ``cache="empty"`` points ``NUMBA_CACHE_DIR`` at a new empty directory, so Numba really
  compiles: the first run after installing. ``cache="disk"`` uses a directory the benchmark
  filled beforehand, so Numba loads the compiled code from its on-disk cache (``cache=True``):
  every later run. Backends without an on-disk cache (JAX) show the same time for both.
* Pool start-up of the process backends (``joblib``, ``multiprocessing``, when registered):
  the first call at N = 1 000 right after the backend's ``close()``, so every sample starts
  fresh workers (spawn, import, loading the cached kernel) and then computes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
import timeit

from benchmarks import _common as c

_FIRST_CALL = """
import backends
b = backends.get({name!r})
b.accel(m, x)
"""

_INPUTS = """
import numpy as np
rng = np.random.default_rng(0)
m, x = rng.random({n}), rng.standard_normal(({n}, 3))
"""

_EMPTY_CACHE = """
import atexit, os, shutil, tempfile
os.environ["NUMBA_CACHE_DIR"] = tempfile.mkdtemp(prefix="nbody-asv-cold-")
atexit.register(shutil.rmtree, os.environ["NUMBA_CACHE_DIR"], True)
"""

_DISK_CACHE = """
import os
os.environ["NUMBA_CACHE_DIR"] = {cache_dir!r}
"""


def _disk_cache_dir(name: str) -> str:
    """Return a per-user, per-backend Numba cache directory that outlives the process.

    Numba keys its index on the source file's path and timestamp, so entries of other
    commits are never loaded by mistake.
    """
    user = os.environ.get("USER") or str(os.getuid())
    return os.path.join(tempfile.gettempdir(), f"nbody-asv-numba-cache-{user}", name)


class ColdStart:
    """Fresh interpreter: import, compile, first call (seconds)."""

    params = (c.compiled(), ["empty", "disk"])
    param_names = ["backend", "cache"]
    repeat = (2, 3, 20.0)
    rounds = 1
    warmup_time = 0.0
    timeout = 300

    _filled: set[str] = set()

    def setup(self, name, cache):
        c.require(name)
        if cache == "disk" and name not in self._filled:
            # Fill the on-disk cache once per process: one untimed cold start.
            code = _DISK_CACHE.format(cache_dir=_disk_cache_dir(name))
            code += _INPUTS.format(n=c.FIRST_CALL_N) + _FIRST_CALL.format(name=name)
            subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
            self._filled.add(name)

    def timeraw_first_call(self, name, cache):
        if cache == "empty":
            prelude = _EMPTY_CACHE
        else:
            prelude = _DISK_CACHE.format(cache_dir=_disk_cache_dir(name))
        setup = textwrap.dedent(prelude) + _INPUTS.format(n=c.FIRST_CALL_N)
        return _FIRST_CALL.format(name=name), setup


class PoolStartup:
    """First call right after ``close()``: worker start-up plus one call (seconds)."""

    params = c.pools() or ["none"]  # asv needs a non-empty list; "none" is skipped
    param_names = ["backend"]
    number = 1
    repeat = (2, 3, 10.0)
    warmup_time = 0.0
    timer = timeit.default_timer  # wall clock: the work happens in child processes
    timeout = 300

    def setup(self, name):
        if name == "none":
            raise NotImplementedError("no process-pool backend is registered")
        c.require(name)
        self.m, self.x = c.inputs(c.FIRST_CALL_N)
        self.backend = c.get(name)
        self.backend.close()

    def teardown(self, name):
        # asv calls teardown even after setup raised NotImplementedError.
        if hasattr(self, "backend"):
            self.backend.close()

    def time_first_call_after_close(self, name):
        self.backend.accel(self.m, self.x)
