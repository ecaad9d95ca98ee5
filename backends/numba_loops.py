"""Backends ``numba`` and ``numba_fastmath``: the tutorial's Numba ladder.

Strategy: the straightforward double loop over targets i and sources j, compiled with
``@njit`` (``numba``) and with ``@njit(fastmath=True)`` (``numba_fastmath``, which lets LLVM
reassociate the sums and so vectorize the inner loop; results differ from the plain loop
in the last bits). :func:`accel_tutorial_parallel` is the tutorial's third step
(``parallel=True``, ``prange`` over rows), kept as the yardstick the optimized
``numba_parallel`` backend is measured against.

Compilation happens once per process on first call and is cached on disk (``cache=True``);
each cached dispatcher is built from its own Python function, so the cache entries of the
plain, fastmath and parallel variants never collide. Memory: O(N).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from backends._contract import evaluate, validate


@njit(inline="always")
def _row(i, m, x, eps2):
    """Unscaled acceleration of target i from all sources (inlined into each caller)."""
    ax = 0.0
    ay = 0.0
    az = 0.0
    xi = x[i, 0]
    yi = x[i, 1]
    zi = x[i, 2]
    for j in range(m.shape[0]):
        dx = x[j, 0] - xi
        dy = x[j, 1] - yi
        dz = x[j, 2] - zi
        r2 = dx * dx + dy * dy + dz * dz + eps2
        if r2 > 0.0:  # skips the self-pair and coincident unsoftened pairs
            s = m[j] / (r2 * np.sqrt(r2))
            ax += dx * s
            ay += dy * s
            az += dz * s
    return ax, ay, az


@njit(cache=True)
def _loop_plain(m, x, G, softening):
    out = np.empty_like(x)
    for i in range(m.shape[0]):
        ax, ay, az = _row(i, m, x, softening * softening)
        out[i, 0], out[i, 1], out[i, 2] = G * ax, G * ay, G * az
    return out


@njit(cache=True, fastmath=True)
def _loop_fastmath(m, x, G, softening):
    out = np.empty_like(x)
    for i in range(m.shape[0]):
        ax, ay, az = _row(i, m, x, softening * softening)
        out[i, 0], out[i, 1], out[i, 2] = G * ax, G * ay, G * az
    return out


@njit(cache=True, fastmath=True, parallel=True)
def _loop_parallel(m, x, G, softening):
    out = np.empty_like(x)
    for i in prange(m.shape[0]):
        ax, ay, az = _row(i, m, x, softening * softening)
        out[i, 0], out[i, 1], out[i, 2] = G * ax, G * ay, G * az
    return out


def _door(kernel, backend, what):
    def accel(masses, positions, G=1.0, *, softening=0.0) -> np.ndarray:
        inp = validate(masses, positions, G, softening)
        return evaluate(backend, inp, kernel)

    accel.__name__ = accel.__qualname__ = f"accel_{backend}"
    accel.__doc__ = f"""Gravitational accelerations: {what}.

    Parameters
    ----------
    masses : (N,) array_like of real
    positions : (N, 3) array_like of real
    G : float, optional
        Gravitational constant.
    softening : float, optional
        Plummer softening length (>= 0).

    Returns
    -------
    (N, 3) ndarray of float64
    """
    return accel


accel_plain = _door(_loop_plain, "numba", "plain @njit double loop")
accel_fastmath = _door(_loop_fastmath, "numba_fastmath", "@njit(fastmath=True) double loop")
accel_tutorial_parallel = _door(
    _loop_parallel, "tutorial_parallel", "tutorial-style fastmath prange double loop"
)
