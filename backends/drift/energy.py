r"""Exact energies and momenta of an N-body state, for ``python -m backends drift``.

The potential energy of a Plummer-softened system, the same softening as the forces::

    W = -G sum_{i<j} m_i m_j / sqrt(|x_i - x_j|^2 + eps^2)

is computed in float64 over every pair once (with ``eps = 0`` a coincident pair is skipped,
as the forces skip it), each term correctly rounded from the same operations as the
pure-Python :func:`potential_fsum`, and summed with compensation (Neumaier's variant of
Kahan summation within each row, then an exact :func:`math.fsum` over the rows' sums and
their compensations). So its error is a few units in the last place of ``W``, whatever N:
far below any drift that the measurement is meant to show. The kinetic energy, momentum and
angular momentum are exact sums (:func:`math.fsum`) of correctly rounded terms.

Cost: ``potential`` is O(N^2) (N(N-1)/2 pairs, a square root and a division each, Numba
threads over folded pairs of rows so every thread gets the same work, one thread below
``SERIAL_BELOW`` particles); it costs 2 to 10 ``numba_parallel`` force evaluations.
``python -m backends drift --energy-every K`` evaluates it every K steps only.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from backends._contract import validate

__all__ = [
    "angular_momentum",
    "kinetic",
    "kinetic_fsum",
    "momentum",
    "potential",
    "potential_fsum",
]


@numba.njit(cache=True, fastmath=False, error_model="numpy")
def _row_sum(i, m, px, py, pz, eps2, s, c):
    """Add ``m_i m_j / r_ij`` for every ``j > i`` to the compensated sum ``(s, c)``."""
    n = m.shape[0]
    xi = px[i]
    yi = py[i]
    zi = pz[i]
    mi = m[i]
    for j in range(i + 1, n):
        dx = px[j] - xi
        dy = py[j] - yi
        dz = pz[j] - zi
        r2 = dx * dx + dy * dy + dz * dz + eps2
        if r2 > 0.0:  # eps = 0 and coincident: no term, as the forces skip the pair
            t = mi * m[j] / math.sqrt(r2)
            u = s + t
            if abs(s) >= abs(t):  # Neumaier: the rounding error of s + t, exactly
                c += (s - u) + t
            else:
                c += (t - u) + s
            s = u
    return s, c


@numba.njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def _potential_rows(m, px, py, pz, eps2):
    """Per folded pair of rows, the compensated sum of ``m_i m_j / r_ij`` over ``j > i``.

    Iteration ``k`` takes rows ``k`` and ``n - 1 - k``: N - 1 pairs together, so every
    iteration costs the same. Returns ``(sums, compensations)``, each of shape
    ``((n + 1) // 2,)``; the total is the exact sum of both arrays.
    """
    n = m.shape[0]
    folds = (n + 1) // 2
    hi = np.zeros(folds)
    lo = np.zeros(folds)
    for k in numba.prange(folds):
        s, c = _row_sum(k, m, px, py, pz, eps2, 0.0, 0.0)
        if n - 1 - k != k:  # the middle row of an odd n is taken once
            s, c = _row_sum(n - 1 - k, m, px, py, pz, eps2, s, c)
        hi[k] = s
        lo[k] = c
    return hi, lo


@numba.njit(cache=True, fastmath=False, error_model="numpy")
def _potential_rows_serial(m, px, py, pz, eps2):
    """:func:`_potential_rows` on one thread, for small N (no thread start-up per call)."""
    n = m.shape[0]
    folds = (n + 1) // 2
    hi = np.zeros(folds)
    lo = np.zeros(folds)
    for k in range(folds):
        s, c = _row_sum(k, m, px, py, pz, eps2, 0.0, 0.0)
        if n - 1 - k != k:
            s, c = _row_sum(n - 1 - k, m, px, py, pz, eps2, s, c)
        hi[k] = s
        lo[k] = c
    return hi, lo


#: Below this N the potential runs on one thread: a parallel region costs more than the sum.
SERIAL_BELOW = 2048


def potential(masses, positions, softening=0.0, G=1.0) -> float:
    """Exact potential energy ``-G sum_{i<j} m_i m_j / sqrt(r_ij^2 + softening^2)``.

    Parameters
    ----------
    masses : (N,) array_like of real
    positions : (N, 3) array_like of real
    softening : float, optional
        Plummer softening length (>= 0), the one the forces used.
    G : float, optional

    Returns
    -------
    float
        Compensated float64 sum over every pair once (a few ulp of the result); 0.0 for
        N < 2. Compiled (Numba; threaded from N = ``SERIAL_BELOW``); O(N^2) time, O(N)
        memory.
    """
    m, x, G, eps = validate(masses, positions, G, softening)
    if m.shape[0] < 2:
        return 0.0
    px, py, pz = (np.ascontiguousarray(x[:, k]) for k in range(3))
    kernel = _potential_rows_serial if m.shape[0] < SERIAL_BELOW else _potential_rows
    hi, lo = kernel(m, px, py, pz, eps * eps)
    return -G * math.fsum(np.concatenate((hi, lo)))


def potential_fsum(masses, positions, softening=0.0, G=1.0) -> float:
    """Return the same potential energy from Python floats and one :func:`math.fsum`.

    O(N^2) in pure Python (about a second at N = 1000); the terms are computed with the same
    operations in the same order as :func:`potential`'s, so the two differ only by the
    summation (exact here).
    """
    m, x, G, eps = validate(masses, positions, G, softening)
    eps2 = eps * eps
    ms = m.tolist()
    xs = x.tolist()
    terms = []
    for i in range(len(ms)):
        xi, yi, zi = xs[i]
        mi = ms[i]
        for j in range(i + 1, len(ms)):
            dx = xs[j][0] - xi
            dy = xs[j][1] - yi
            dz = xs[j][2] - zi
            r2 = dx * dx + dy * dy + dz * dz + eps2
            if r2 > 0.0:
                terms.append(mi * ms[j] / math.sqrt(r2))
    return -G * math.fsum(terms)


def kinetic(masses, velocities) -> float:
    """Kinetic energy ``sum_i m_i |v_i|^2 / 2``, an exact sum of the rounded terms."""
    m = np.asarray(masses, dtype=np.float64)
    v = np.asarray(velocities, dtype=np.float64)
    return 0.5 * math.fsum(m * (v[:, 0] * v[:, 0] + v[:, 1] * v[:, 1] + v[:, 2] * v[:, 2]))


def kinetic_fsum(masses, velocities) -> float:
    """Kinetic energy with Python floats and one :func:`math.fsum`: the check."""
    m = np.asarray(masses, dtype=np.float64).tolist()
    v = np.asarray(velocities, dtype=np.float64).tolist()
    return 0.5 * math.fsum(mi * (a * a + b * b + c * c) for mi, (a, b, c) in zip(m, v, strict=True))


def momentum(masses, velocities) -> np.ndarray:
    """Total momentum ``sum_i m_i v_i``, shape (3,); each component an exact sum."""
    m = np.asarray(masses, dtype=np.float64)
    v = np.asarray(velocities, dtype=np.float64)
    return np.array([math.fsum(m * v[:, k]) for k in range(3)])


def angular_momentum(masses, positions, velocities) -> np.ndarray:
    """Total angular momentum ``sum_i m_i x_i cross v_i`` about the origin, shape (3,).

    Each component is an exact sum of the two rounded products of every particle.
    """
    m = np.asarray(masses, dtype=np.float64)
    x = np.asarray(positions, dtype=np.float64)
    v = np.asarray(velocities, dtype=np.float64)
    out = np.empty(3)
    for k in range(3):
        a, b = (k + 1) % 3, (k + 2) % 3
        out[k] = math.fsum(np.concatenate((m * (x[:, a] * v[:, b]), -(m * (x[:, b] * v[:, a])))))
    return out
