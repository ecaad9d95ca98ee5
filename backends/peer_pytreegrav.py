"""Backends ``pytreegrav_bruteforce`` and ``pytreegrav_tree``: pytreegrav as a peer.

Strategy: one call of ``pytreegrav.Accel`` with ``parallel=True`` (Numba threads; honours
``numba.set_num_threads``), ``method="bruteforce"`` or ``method="tree"`` (a Barnes-Hut octree,
``theta`` the opening angle, ``quadrupole`` adding quadrupole moments), ``G`` passed through.
pytreegrav returns the acceleration ``G sum_j m_j (x_j - x_i) / r**3``, the contract's sign:
no conversion is needed (checked against the oracle by the tests).

Softening: pytreegrav softens with the compact M4 cubic-spline kernel of support radius ``h``
(Newtonian beyond ``h``), not with Plummer's ``eps``; the two differ at every separation below
``h`` and no choice of ``h`` reproduces Plummer softening. So ``softening > 0`` is a
``ValueError`` here, never a silent change of the force law.

Coincident particles contribute nothing to each other (the contract). The brute-force kernel
skips zero separations itself. The tree cannot split coincident points and returns garbage for
them (pytreegrav warns); when its build reports coincident points, coincident particles are
merged into one of their summed mass, the tree is run on the distinct points, and every
particle gets the acceleration of its point: exactly the contract's answer, at the cost of a
second build and walk on such inputs only. The tree's multipole expansions need ``masses >= 0``.

Accuracy: ``pytreegrav_bruteforce`` sums every pair in float64 (exact to rounding, ~1e-15 at
N = 300). ``pytreegrav_tree`` is approximate; :func:`tolerance` declares a bound on the rms
per-particle relative error, ``0.15 theta**2`` (monopole) or ``0.04 theta**3`` (quadrupole),
calibrated on the hard systems of :mod:`backends.systems` (the thin shell is the worst:
3.3e-2 at the default theta 0.7, where a Gaussian blob gives 4.8e-3). Two things the wrapper
does for it: positions are centred on their bounding box first
(:func:`backends._geometry.centred`; uncentred, a crowded cluster shifted to 1e8 measured
twice its unshifted error, its centres of mass rounded), and a system lying along a line or
a curve (:func:`backends._geometry.is_linear`) is summed by pytreegrav's brute force instead,
exact: there forces cancel and no opening angle bounds the relative error (rms 0.13 at theta
0.7, N = 3 000, growing with N).
Memory: O(N) (pytreegrav's octree). ``pytreegrav`` (and with it numba) is imported on the first
call only.
"""

from __future__ import annotations

import importlib.metadata
import warnings

import numpy as np

from backends._contract import evaluate, validate
from backends._geometry import centred, is_linear

__all__ = ["DEFAULT_THETA", "accel_bruteforce", "accel_tree", "library_versions", "tolerance"]

DEFAULT_THETA = 0.7  #: pytreegrav's default opening angle
#: Systems of at least this many particles are checked for lying along a line.
LINE_MIN_N = 32


def library_versions() -> dict[str, str]:
    """Return the installed version of the peer library, ``{"pytreegrav": "1.5.0"}``."""
    try:
        return {"pytreegrav": importlib.metadata.version("pytreegrav")}
    except importlib.metadata.PackageNotFoundError:
        return {"pytreegrav": "not installed"}


def _check_theta(theta) -> float:
    if isinstance(theta, bool) or not isinstance(theta, (int, float, np.integer, np.floating)):
        raise TypeError(f"theta must be a real number in (0, 1]; got {type(theta).__name__}")
    theta = float(theta)
    if not (0.0 < theta <= 1.0):
        raise ValueError(
            f"theta must be in (0, 1] (the opening angle; its error bound is calibrated "
            f"there); got {theta!r}"
        )
    return theta


def _check_quadrupole(quadrupole) -> bool:
    if not isinstance(quadrupole, (bool, np.bool_)):
        raise TypeError(f"quadrupole must be True or False; got {quadrupole!r}")
    return bool(quadrupole)


def tolerance(theta=DEFAULT_THETA, quadrupole=False, **_options) -> float:
    """Bound on the rms per-particle relative error of ``pytreegrav_tree`` at these settings.

    ``0.2 * theta**2`` with monopoles, ``0.065 * theta**3`` with quadrupoles: 1.5x-5x the
    largest rms measured on the systems of :mod:`backends.systems` (N = 2 000 and 20 000,
    theta 0.3 to 1; the uniform sheet also at 100 000, where it is the worst: 5.5e-2 at the
    default theta 0.7, the thin shell 3.3e-2; ``docs/peers.md``). Systems along a line or a
    curve are summed directly (exact). Regular lattices, whose central forces cancel, are
    outside it (77x-120x at the default; ``docs/peers.md``). Never below ``1e-12``, float64
    rounding (a tiny theta is direct summation).
    """
    theta = _check_theta(theta)
    if _check_quadrupole(quadrupole):
        return max(0.065 * theta**3, _ROUNDING)
    return max(0.2 * theta**2, _ROUNDING)


#: The floor of :func:`tolerance`: float64 rounding of the sums, what an exact backend declares
#: (``backends.EXACT_TOLERANCE``); a tiny theta opens every node and is direct summation.
_ROUNDING = 1e-12


def _no_softening(softening: float, backend: str) -> None:
    if softening > 0.0:
        raise ValueError(
            f"softening must be 0 for backend {backend!r}: pytreegrav softens with a cubic "
            f"spline of support radius h, not Plummer's eps, and no h reproduces it; got "
            f"softening={softening!r}: use an exact backend for Plummer-softened forces"
        )


def _bruteforce(m, x, G, softening):
    import pytreegrav

    g = pytreegrav.Accel(x, m, G=G, method="bruteforce", parallel=True)
    return np.array(g, dtype=np.float64, order="C")


def _tree_once(pytreegrav, m, x, G, theta, quadrupole):
    with warnings.catch_warnings():  # coincident points are handled by the caller
        warnings.filterwarnings("ignore", message=".*non-unique.*")
        return pytreegrav.Accel(
            x,
            m,
            G=G,
            theta=theta,
            quadrupole=quadrupole,
            method="tree",
            parallel=True,
            return_tree=True,
        )


def _tree(m, x, G, softening, theta, quadrupole):
    import pytreegrav

    if not m.any():  # no mass anywhere: the tree's centres of mass would be 0/0
        return np.zeros(x.shape)
    if m.shape[0] >= LINE_MIN_N and is_linear(x):  # no bound holds on a line: sum directly
        return _bruteforce(m, x, G, softening)
    x = centred(x)  # far from the origin its centres of mass lose digits (module docstring)
    g, tree = _tree_once(pytreegrav, m, x, G, theta, quadrupole)
    coincident = getattr(tree, "HasCoincidentPoints", None)
    if coincident is None:  # a pytreegrav without the flag: look for repeated rows
        coincident = np.unique(x, axis=0).shape[0] < x.shape[0]
    if coincident:
        points, inverse = np.unique(x, axis=0, return_inverse=True)
        inverse = inverse.ravel()
        if points.shape[0] == 1:  # everything at one point: no force at all
            return np.zeros(x.shape)
        mass = np.bincount(inverse, weights=m, minlength=points.shape[0])
        g_points, _ = _tree_once(pytreegrav, mass, points, G, theta, quadrupole)
        g = np.asarray(g_points)[inverse]
    return np.array(g, dtype=np.float64, order="C")


def accel_bruteforce(masses, positions, G=1.0, *, softening=0.0) -> np.ndarray:
    """Gravitational accelerations by pytreegrav's parallel brute-force sum (exact).

    Parameters
    ----------
    masses : (N,) array_like of real
    positions : (N, 3) array_like of real
    G : float, optional
        Gravitational constant.
    softening : float, optional
        Must be 0 (pytreegrav's spline softening is not Plummer's; ``ValueError`` otherwise).

    Returns
    -------
    (N, 3) ndarray of float64
    """
    inp = validate(masses, positions, G, softening)
    _no_softening(inp.softening, "pytreegrav_bruteforce")
    return evaluate("pytreegrav_bruteforce", inp, _bruteforce)


def accel_tree(
    masses, positions, G=1.0, *, softening=0.0, theta=DEFAULT_THETA, quadrupole=False
) -> np.ndarray:
    """Gravitational accelerations by pytreegrav's parallel Barnes-Hut tree (approximate).

    Parameters
    ----------
    masses : (N,) array_like of real
        Non-negative (the multipole expansions need it).
    positions : (N, 3) array_like of real
    G : float, optional
        Gravitational constant.
    softening : float, optional
        Must be 0 (pytreegrav's spline softening is not Plummer's; ``ValueError`` otherwise).
    theta : float, optional
        Opening angle in (0, 1], pytreegrav's criterion; default 0.7. Smaller is slower and
        more accurate (see :func:`tolerance`).
    quadrupole : bool, optional
        Add quadrupole moments to the cells' expansions.

    Returns
    -------
    (N, 3) ndarray of float64
    """
    inp = validate(masses, positions, G, softening)
    theta = _check_theta(theta)
    quadrupole = _check_quadrupole(quadrupole)
    _no_softening(inp.softening, "pytreegrav_tree")
    if inp.masses.size and inp.masses.min() < 0.0:
        i = int(np.argmin(inp.masses))
        raise ValueError(
            f"masses must be >= 0 for backend 'pytreegrav_tree' (its multipole expansions "
            f"need it); got {inp.masses[i]!r} at index [{i}]"
        )
    return evaluate("pytreegrav_tree", inp, _tree, theta, quadrupole)
