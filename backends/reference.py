"""Backend ``python``: the oracle.

Strategy: plain nested loops over Python floats, each acceleration component summed with
:func:`math.fsum` (correctly rounded). Slow on purpose (about 3 s at N = 1 000) and
obviously right; every other backend is tested against it. Memory: O(N) Python floats.
"""

from __future__ import annotations

import math

import numpy as np

from backends._contract import Inputs, evaluate, rescale, unscale, validate


def accel_rows(masses, positions, G, softening, rows) -> np.ndarray:
    """Oracle accelerations of the particles ``rows`` only, from all N sources.

    Inputs are trusted (already validated). Used to check large-N results on a sample of
    rows. Like every backend, it takes powers of two out of inputs far from 1 and puts them
    back exactly (:func:`backends._contract.rescale`), so it covers float64's whole range and
    raises ``FloatingPointError`` where the result is not representable.

    Parameters
    ----------
    masses : (N,) ndarray of float64
    positions : (N, 3) ndarray of float64
    G, softening : float
    rows : iterable of int
        Target indices.

    Returns
    -------
    (len(rows), 3) ndarray of float64
    """
    rows = list(rows)
    if masses.shape[0] <= 1:  # no pairs: nothing to rescale
        return _rows(masses, positions, G, softening, rows)
    scaled, exponent = rescale(Inputs(masses, positions, float(G), float(softening)))
    return unscale(_rows(*scaled, rows), exponent, "python")


def _rows(masses, positions, G, softening, rows):
    m = masses.tolist()
    x = positions.tolist()
    eps2 = softening * softening
    out = []
    for i in rows:
        xi, yi, zi = x[i]
        tx, ty, tz = [], [], []
        for j, (xj, yj, zj) in enumerate(x):
            if j == i:
                continue
            dx, dy, dz = xj - xi, yj - yi, zj - zi
            r2 = dx * dx + dy * dy + dz * dz + eps2
            if r2 == 0.0:  # coincident and unsoftened: contributes nothing
                continue
            s = m[j] / (r2 * math.sqrt(r2))
            tx.append(dx * s)
            ty.append(dy * s)
            tz.append(dz * s)
        out.append((G * math.fsum(tx), G * math.fsum(ty), G * math.fsum(tz)))
    return np.array(out, dtype=np.float64).reshape(len(out), 3)


def accel(masses, positions, G=1.0, *, softening=0.0) -> np.ndarray:
    """Gravitational accelerations by direct summation in pure Python.

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
    return evaluate("python", inp, _all_rows)


def _all_rows(masses, positions, G, softening):
    return _rows(masses, positions, G, softening, range(masses.shape[0]))
