"""Backend ``numba_jitclass``: the particles held in a ``numba.experimental.jitclass``.

Strategy: :class:`ParticleSet` owns read-only ``masses`` and ``positions`` fields and an
:meth:`ParticleSet.accel` method running the same serial double loop as the ``numba`` backend
(no fastmath), reading every value through ``self``. It exists to measure what the
object-oriented style costs against plain arrays passed to an ``@njit`` function (compare with
``numba``; ``python benchmarks/nearest_methods.py jitclass``). Memory: O(N); the fields
reference the validated arrays (no copy when they already are C-contiguous float64) and the
read-only field types make writing them a compile error.

Compilation: a jitclass cannot be cached on disk (``numba.experimental.jitclass`` has no
``cache=`` option), so every new process compiles the class and its ``accel`` method on the
first call, about a second, where the ``numba`` backend loads its machine code from the cache.
"""

from __future__ import annotations

import numpy as np
from numba import float64, types
from numba.experimental import jitclass

from backends._contract import evaluate, validate

__all__ = ["ParticleSet", "accel"]

_SPEC = [
    ("masses", types.Array(float64, 1, "C", readonly=True)),
    ("positions", types.Array(float64, 2, "C", readonly=True)),
]


@jitclass(_SPEC)
class ParticleSet:
    """A set of point masses, compiled by Numba.

    Parameters
    ----------
    masses : (N,) C-contiguous ndarray of float64
        Trusted: validate first (:func:`backends.validate`).
    positions : (N, 3) C-contiguous ndarray of float64
        Trusted, as ``masses``.
    """

    def __init__(self, masses, positions):
        self.masses = masses
        self.positions = positions

    def accel(self, G, softening):
        """Accelerations of all particles, serial double loop; returns a new (N, 3) array."""
        n = self.masses.shape[0]
        eps2 = softening * softening
        out = np.empty((n, 3))
        for i in range(n):
            ax = 0.0
            ay = 0.0
            az = 0.0
            for j in range(n):
                dx = self.positions[j, 0] - self.positions[i, 0]
                dy = self.positions[j, 1] - self.positions[i, 1]
                dz = self.positions[j, 2] - self.positions[i, 2]
                r2 = dx * dx + dy * dy + dz * dz + eps2
                if r2 > 0.0:  # skips the self-pair and coincident unsoftened pairs
                    s = self.masses[j] / (r2 * np.sqrt(r2))
                    ax += dx * s
                    ay += dy * s
                    az += dz * s
            out[i, 0] = G * ax
            out[i, 1] = G * ay
            out[i, 2] = G * az
        return out


def _kernel(m, x, G, softening):
    return ParticleSet(m, x).accel(G, softening)


def accel(masses, positions, G=1.0, *, softening=0.0) -> np.ndarray:
    """Gravitational accelerations through a :class:`ParticleSet` jitclass (serial).

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
    return evaluate("numba_jitclass", inp, _kernel)
