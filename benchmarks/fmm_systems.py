"""Test systems for the ``fmm`` calibration, its tests and its benchmarks.

Each generator takes ``(n, seed)`` and returns ``(masses, positions)``; :data:`SYSTEMS` names
them. The battery mixes the easy (a Gaussian blob, a Plummer sphere) with the geometries that
break hierarchical methods: thin discs and shells, a line, clumps far apart, a heavy tight
binary far from a cluster, particles crowded into one corner of their box, masses over 8
decades, a uniform cube (whose centre particles feel almost no net force) and a lattice
(where the forces near the centre cancel by symmetry).
"""

from __future__ import annotations

import numpy as np

import backends

__all__ = ["SOFTENED", "SYSTEMS", "alternating_lattice", "planar_grid", "plummer"]


def gaussian(n: int, seed: int = 0):
    """Return the benchmark system: masses on [0, 1), standard normal positions."""
    return backends.benchmark_system(n, seed)


def plummer(n: int, seed: int = 0):
    """Plummer sphere of unit mass and scale radius (radii capped at ~20)."""
    rng = np.random.default_rng(seed)
    u = rng.uniform(0.0, 0.998, n)
    r = 1.0 / np.sqrt(u ** (-2.0 / 3.0) - 1.0)
    v = rng.standard_normal((n, 3))
    return np.full(n, 1.0 / n), r[:, None] * v / np.linalg.norm(v, axis=1)[:, None]


def disc(n: int, seed: int = 0):
    """Thin exponential disc: scale length 1, thickness 1e-3, random masses."""
    rng = np.random.default_rng(seed)
    r = rng.exponential(1.0, n)
    phi = rng.uniform(0.0, 2.0 * np.pi, n)
    x = np.stack([r * np.cos(phi), r * np.sin(phi), 1e-3 * rng.standard_normal(n)], 1)
    return rng.random(n), x


def shell(n: int, seed: int = 0):
    """Thin spherical shell: radius 1, thickness 1e-3."""
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, 3))
    r = 1.0 + 1e-3 * rng.random(n)
    return rng.random(n) + 0.5, r[:, None] * v / np.linalg.norm(v, axis=1)[:, None]


def line(n: int, seed: int = 0):
    """Particles on a straight line (exactly collinear), random spacing and masses."""
    rng = np.random.default_rng(seed)
    t = rng.random(n)
    direction = np.array([1.0, 2.0, -0.5]) / np.linalg.norm([1.0, 2.0, -0.5])
    return rng.random(n) + 0.1, t[:, None] * direction[None, :]


def clumps(n: int, seed: int = 0):
    """Four tight clumps (radius 1e-2) about 100 apart."""
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0, 0.0], [100.0, 0.0, 0.0], [0.0, 130.0, 0.0], [0.0, 0.0, -90.0]])
    k = rng.integers(0, 4, n)
    return rng.random(n), centres[k] + 1e-2 * rng.standard_normal((n, 3))


def binary(n: int, seed: int = 0):
    """Plummer cluster and a heavy tight binary (each 1e3 x its mass, 1e-4 apart) 50 away."""
    m, x = plummer(n - 2, seed)
    mb = np.array([1e3, 1e3])
    xb = np.array([[50.0, 0.0, 0.0], [50.0, 1e-4, 0.0]])
    return np.concatenate([m, mb]), np.concatenate([x, xb])


def corner(n: int, seed: int = 0):
    """90 % of the particles in one corner (side 1e-2) of a unit box, the rest uniform."""
    rng = np.random.default_rng(seed)
    x = rng.random((n, 3))
    k = int(0.9 * n)
    x[:k] *= 1e-2
    return rng.random(n), x


def decades(n: int, seed: int = 0):
    """Gaussian positions, masses log-uniform over 8 decades (1e-4 to 1e4)."""
    rng = np.random.default_rng(seed)
    return 10.0 ** rng.uniform(-4.0, 4.0, n), rng.standard_normal((n, 3))


def point(n: int, seed: int = 0):
    """Gaussian blob with a third of its particles (and mass) at one point: a dominant mass."""
    m, x = gaussian(n, seed)
    x[1::3] = x[0]
    return m, x


def clump(n: int, seed: int = 0):
    """Gaussian blob with a third of its particles in a tight clump (radius 1e-3).

    A dominant mass that, unlike ``point``'s, the tree splits over several nodes.
    """
    m, x = gaussian(n, seed)
    rng = np.random.default_rng(seed + 1)
    x[1::3] = np.array([1.3, -0.4, 0.2]) + 1e-3 * rng.standard_normal(x[1::3].shape)
    return m, x


def cube(n: int, seed: int = 0):
    """Uniform random cube: the forces near its centre nearly cancel."""
    rng = np.random.default_rng(seed)
    return rng.random(n), rng.random((n, 3))


def lattice(n: int, seed: int = 0):
    """Cubic lattice of odd side with a particle at its centre, jittered by 1e-4.

    The largest such lattice of at most ``n`` points, unit masses, every point displaced by
    1e-4 of the spacing; the other particles are massless, uniform in the lattice's cube.
    The forces near the centre cancel by symmetry (the centre particle's is about 1e-4 of a
    typical one), so the expansions' error there is amplified as much in the relative error.
    """
    rng = np.random.default_rng(seed)
    s = int(round(n ** (1.0 / 3.0)))
    s = s if s**3 <= n else s - 1
    s = max(s - (s + 1) % 2, 1)  # odd: a lattice point at the centre
    g = np.arange(s, dtype=float) - s // 2
    x = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
    x = x + 1e-4 * rng.standard_normal(x.shape)
    rest = rng.uniform(-s / 2, s / 2, (n - s**3, 3))
    return np.concatenate([np.ones(s**3), np.zeros(n - s**3)]), np.concatenate([x, rest])


def planar_grid(n: int, seed: int = 0):
    """Return unit masses on an odd square grid in a plane, jittered by 1e-4 of the spacing.

    Not in :data:`SYSTEMS`: ``tree``'s tests and ``benchmarks/tree_cancel.py`` use it (the
    forces in a plane cancel near its centre).
    """
    rng = np.random.default_rng(seed)
    s = int(np.sqrt(n))
    s -= (s + 1) % 2
    g = np.arange(s, dtype=float) - s // 2
    x = np.stack(np.meshgrid(g, g, [0.0], indexing="ij"), -1).reshape(-1, 3)
    return np.ones(s * s), x + 1e-4 * rng.standard_normal(x.shape)


def alternating_lattice(n: int, seed: int = 0):
    """Return :func:`lattice` with masses +1 and -1 alternating (a rock-salt crystal).

    Not in :data:`SYSTEMS`, as :func:`planar_grid`.
    """
    m, x = lattice(n, seed)
    m[::2] *= -1.0
    return m, x


SYSTEMS = {
    "gaussian": gaussian,
    "plummer": plummer,
    "disc": disc,
    "shell": shell,
    "line": line,
    "clumps": clumps,
    "binary": binary,
    "corner": corner,
    "decades": decades,
    "cube": cube,
    "point": point,
    "clump": clump,
    "lattice": lattice,
}

#: (system, softening) pairs with Plummer softening: about the mean separation and 10x more.
SOFTENED = [("plummer", 0.01), ("plummer", 0.1), ("gaussian", 0.05), ("disc", 0.01)]
