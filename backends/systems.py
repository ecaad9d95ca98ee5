"""Test systems: the benchmark blob, a Plummer sphere, and the geometries that break bounds.

Approximate backends (trees, fast multipole methods) declare a bound on the rms per-particle
relative error (:func:`backends.tolerance`). A bound measured on round blobs only says little:
the systems here are the ones where such bounds were found to fail, and on which every
approximate backend's bound is checked (``tests/test_bounds.py``) and the time-accuracy
frontier can be measured (``python -m backends frontier --system NAME``).

=============  ===========================================================================
name           what it is
=============  ===========================================================================
``benchmark``  :func:`backends.benchmark_system`: masses on [0, 1), standard normal positions
``plummer``    a Plummer sphere of scale radius 1, equal masses (radii capped at ~20)
``disc``       a thin exponential disc, scale length 1, thickness 1e-3
``sheet``      points uniform on a square of side 2 with no thickness, tilted at random:
               a uniform surface density, whose in-plane forces largely cancel
``shell``      a thin spherical shell of radius 1 and thickness 1e-3
``line``       points uniform on a segment of length 10 along a random direction,
               jitter 1e-6 across it: forces from both sides cancel
``clumps``     two Plummer clumps of scale 1, 1e6 apart (a cubic box mostly empty)
``binary``     a Plummer cluster of total mass 1 and a tight binary of two masses 10,
               1e-4 apart, 1e3 from the cluster
``corner``     one particle at each corner of the unit cube, every other one crowded into
               the corner cube of side 1e-3 (power-law density towards its corner)
``masses``     Gaussian positions, masses log-uniform over 8 decades (1e-8 to 1)
``clustered``  five clumps of sizes 1e-3 to 3 and a uniform background in a box of 20
``point``      a dominant point mass: Gaussian positions with every third particle (about a
               third of the mass) moved onto the first one's position
=============  ===========================================================================

Every system is a function of ``(n, seed)`` only, deterministic, with positive masses and no
softening needed; positions are distinct except in ``point``, whose coincident particles
contribute nothing to each other (the contract) and form one source of zero extent: the
hardest case found for expansions, which are then evaluated at the full opening angle with
no averaging over the source.  :func:`make` adds an optional rigid ``shift`` of
every position (the same physics far from the origin, where float64 coordinates carry fewer
digits of the separations).
"""

from __future__ import annotations

import numbers

import numpy as np

from backends._contract import benchmark_system

__all__ = ["HARD", "SYSTEMS", "make"]


def _plummer_positions(rng, n: int) -> np.ndarray:
    u = rng.uniform(0.0, 0.998, n)  # radii capped at ~20 scale radii
    r = 1.0 / np.sqrt(u ** (-2.0 / 3.0) - 1.0)
    v = rng.standard_normal((n, 3))
    return r[:, None] * v / np.linalg.norm(v, axis=1)[:, None]


def _unit_vectors(rng, n: int) -> np.ndarray:
    v = rng.standard_normal((n, 3))
    return v / np.linalg.norm(v, axis=1)[:, None]


def _benchmark(rng, n, seed):
    return benchmark_system(n, seed)


def _plummer(rng, n, seed):
    return np.full(n, 1.0 / max(n, 1)), _plummer_positions(rng, n)


def _disc(rng, n, seed):
    r = rng.exponential(1.0, n)
    phi = rng.uniform(0.0, 2.0 * np.pi, n)
    x = np.stack([r * np.cos(phi), r * np.sin(phi), 1e-3 * rng.standard_normal(n)], axis=1)
    return rng.random(n) + 0.5, x


def _sheet(rng, n, seed):
    x = np.zeros((n, 3))
    x[:, :2] = rng.uniform(-1.0, 1.0, (n, 2))
    q, _ = np.linalg.qr(rng.standard_normal((3, 3)))  # a random rotation (or reflection)
    return rng.random(n) + 0.5, x @ q.T


def _shell(rng, n, seed):
    r = 1.0 + 1e-3 * (rng.random(n) - 0.5)
    return rng.random(n) + 0.5, r[:, None] * _unit_vectors(rng, n)


def _line(rng, n, seed):
    axis = _unit_vectors(rng, 1)[0]
    t = rng.uniform(-5.0, 5.0, n)
    x = t[:, None] * axis + 1e-6 * rng.standard_normal((n, 3))
    return rng.random(n) + 0.5, x


def _clumps(rng, n, seed):
    x = _plummer_positions(rng, n)
    x[n // 2 :, 0] += 1e6
    return np.full(n, 1.0 / max(n, 1)), x


def _binary(rng, n, seed):
    k = max(n - 2, 0)
    x = np.empty((n, 3))
    m = np.empty(n)
    x[:k] = _plummer_positions(rng, k)
    m[:k] = 1.0 / max(k, 1)
    centre = 1e3 * _unit_vectors(rng, 1)[0]
    half = 0.5e-4 * _unit_vectors(rng, 1)[0]
    pair = np.array([centre + half, centre - half])
    x[k:] = pair[: n - k]
    m[k:] = 10.0
    return m, x


def _corner(rng, n, seed):
    corners = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], float)
    c = min(n, 8)
    x = np.empty((n, 3))
    x[:c] = corners[:c]
    x[c:] = 1e-3 * rng.random((n - c, 3)) ** 3  # density rising towards (0, 0, 0)
    return rng.random(n) + 0.5, x


def _masses(rng, n, seed):
    return 10.0 ** rng.uniform(-8.0, 0.0, n), rng.standard_normal((n, 3))


def _clustered(rng, n, seed):
    centres = rng.uniform(-10.0, 10.0, (5, 3))
    sizes = np.array([1e-3, 1e-2, 0.1, 1.0, 3.0])
    which = rng.integers(0, 6, n)
    x = rng.uniform(-10.0, 10.0, (n, 3))
    clump = which < 5
    x[clump] = centres[which[clump]] + sizes[which[clump], None] * rng.standard_normal(
        (int(clump.sum()), 3)
    )
    return rng.random(n), x


def _point(rng, n, seed):
    m, x = rng.random(n), rng.standard_normal((n, 3))
    x[1::3] = x[:1]
    return m, x


_MAKERS = {
    "benchmark": _benchmark,
    "plummer": _plummer,
    "disc": _disc,
    "sheet": _sheet,
    "shell": _shell,
    "line": _line,
    "clumps": _clumps,
    "binary": _binary,
    "corner": _corner,
    "masses": _masses,
    "clustered": _clustered,
    "point": _point,
}

#: Every system's name, in the order of the table above.
SYSTEMS: tuple[str, ...] = tuple(_MAKERS)
#: The systems on which bounds fail first (all but the round blobs).
HARD: tuple[str, ...] = tuple(s for s in SYSTEMS if s not in ("benchmark", "plummer"))


def make(name: str, n: int, seed: int = 0, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Return the system called ``name`` with ``n`` particles.

    Parameters
    ----------
    name : str
        One of :data:`SYSTEMS` (see the module docstring).
    n : int
        Number of particles (>= 0).
    seed : int, optional
        Seed of ``numpy.random.default_rng``; ``benchmark`` with ``seed=42`` is the
        project's benchmark system.
    shift : float, optional
        Added to every coordinate (finite): the same system, far from the origin.

    Returns
    -------
    masses : (n,) ndarray of float64
        Positive.
    positions : (n, 3) ndarray of float64

    Raises
    ------
    ValueError
        Unknown ``name``, negative ``n`` or a non-finite ``shift``.
    """
    if name not in _MAKERS:
        raise ValueError(f"unknown system {name!r}; valid names are: {', '.join(SYSTEMS)}")
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
        raise ValueError(f"n must be an integer >= 0; got {n!r}")
    if not np.isfinite(shift):
        raise ValueError(f"shift must be finite; got {shift!r}")
    m, x = _MAKERS[name](np.random.default_rng(seed), int(n), seed)
    m = np.ascontiguousarray(m, dtype=np.float64)
    x = np.ascontiguousarray(x, dtype=np.float64)
    if shift:
        x = x + float(shift)
    return m, x
