"""Backend ``numba_parallel``: the primary backend, ``prange`` over target rows.

Strategy (foundation version): rows are shared among Numba's threads with ``prange``; each
row is a fastmath double loop over the sources. Honours ``numba.set_num_threads`` and
``NUMBA_NUM_THREADS``. Memory: O(N).

:func:`accel_block` is the serial, GIL-free kernel for one block of targets against a set of
sources, used by the process and MPI backends to compute their share of the rows.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from backends._contract import evaluate, validate


@njit(cache=True, fastmath=True, parallel=True)
def _kernel(m, x, G, softening):
    n = m.shape[0]
    eps2 = softening * softening
    out = np.empty((n, 3))
    for i in prange(n):
        ax = 0.0
        ay = 0.0
        az = 0.0
        for j in range(n):
            dx = x[j, 0] - x[i, 0]
            dy = x[j, 1] - x[i, 1]
            dz = x[j, 2] - x[i, 2]
            r2 = dx * dx + dy * dy + dz * dz + eps2
            if r2 > 0.0:
                s = m[j] / (r2 * np.sqrt(r2))
                ax += dx * s
                ay += dy * s
                az += dz * s
        out[i, 0] = G * ax
        out[i, 1] = G * ay
        out[i, 2] = G * az
    return out


@njit(cache=True, fastmath=True, nogil=True)
def _block(targets, m, sources, G, softening):
    eps2 = softening * softening
    out = np.empty((targets.shape[0], 3))
    for i in range(targets.shape[0]):
        ax = 0.0
        ay = 0.0
        az = 0.0
        for j in range(m.shape[0]):
            dx = sources[j, 0] - targets[i, 0]
            dy = sources[j, 1] - targets[i, 1]
            dz = sources[j, 2] - targets[i, 2]
            r2 = dx * dx + dy * dy + dz * dz + eps2
            if r2 > 0.0:
                s = m[j] / (r2 * np.sqrt(r2))
                ax += dx * s
                ay += dy * s
                az += dz * s
        out[i, 0] = G * ax
        out[i, 1] = G * ay
        out[i, 2] = G * az
    return out


def accel_block(targets, masses, sources, G, softening) -> np.ndarray:
    """Accelerations of ``targets`` due to ``(masses, sources)``, serial and GIL-free.

    Inputs are trusted (validated by the caller). A source at zero separation from a target
    contributes nothing when ``softening == 0``, so a target may be among the sources (the
    self-pair is skipped by the same rule). Sums over sources may be split across calls and
    added: the result is linear in the source set.

    Parameters
    ----------
    targets : (T, 3) C-contiguous ndarray of float64
    masses : (S,) C-contiguous ndarray of float64
    sources : (S, 3) C-contiguous ndarray of float64
    G, softening : float

    Returns
    -------
    (T, 3) ndarray of float64
    """
    return _block(targets, masses, sources, G, softening)


def accel(masses, positions, G=1.0, *, softening=0.0) -> np.ndarray:
    """Gravitational accelerations on all Numba threads (``prange`` over rows).

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
    inp = validate(masses, positions, G, softening)
    return evaluate("numba_parallel", inp, _kernel)
