"""Backend ``fmm3d``: the Flatiron Institute's fast multipole method (fmm3dpy), as a peer.

Strategy: one call of ``fmm3dpy.lfmm3d`` (the Laplace FMM) with the masses as charges and
``pg=2`` (potential and gradient at the sources, each particle's own term excluded); the
acceleration is ``G * c * grad``, where ``c`` converts fmm3dpy's kernel into the contract's.
fmm3dpy 2.x uses the kernel ``1 / (4 pi r)`` (older releases ``1 / r``) and returns the gradient
of the potential ``phi_i = sum_j q_j K(|x_i - x_j|)``; since ``grad_i (1/r) = (x_j - x_i) / r**3``
the factor is ``c = 4 pi`` for 2.x (``1`` for ``1 / r``). ``c`` is not assumed: it is measured
once per process on two particles and checked to be one of the two conventions.

Accuracy: :func:`tolerance` declares ``max(3 eps, 1.5e-10)`` as the bound on the rms
per-particle relative error, and fmm3dpy is asked for the precision that keeps it,
``eps / 20`` (:func:`library_eps`; never below 1e-12 unless ``eps`` is). fmm3dpy's own
precision is in a global norm, not per particle, and it works in steps (0.5e-3, 0.5e-6,
...) within which the error stops falling: on a thin disc round a dominant central mass
every precision from 1e-5 down to 1e-6 gave about the same rms, 6.3e-6 to 6.7e-6, so 6.7
times the precision at 1e-6, 2.2 times the bound when ``eps`` was passed on as it is
(2026-12-04, ``docs/peers.md``). Measured on the hard systems of :mod:`backends.systems`
with ``eps`` passed on (2026-12-03): rms up to 1.08 ``eps`` (a clump of size 1e-3 among
particles spread over 20, eps 1e-6), and below eps 1e-10 a rounding floor: fmm3dpy
computes in coordinates relative to the boxes of its tree, so a particle whose force comes
from a neighbour at distance ``d`` loses about ``2**-53 extent / d`` (:func:`rounding_floor`
estimates the rms of that): 3e-10 to 4.5e-10 for two clumps 1e6 apart, 1.5e-9 to 6e-9 for
a binary of masses 5e7, 1e-6 apart, 100 from eight other particles, 2e-11 for the tight
binary of :mod:`backends.systems`, 2e-15 for a Gaussian blob. Systems whose estimated floor
is above ``MAX_FLOOR = 6e-11`` are summed directly by fmm3dpy's ``l3ddir`` (O(N^2), exact
to rounding; faster there than the FMM, whose adaptive tree grows as deep as the ratio of
scales).
Positions are moved next to the origin where that is exact
(:func:`backends._geometry.centred`): shifted by 1e8, a system kept its errors (before: 1e-7
at any eps, and order 1 when shifted by 1e15). Small systems are summed directly by fmm3dpy
(exact to rounding), and so are systems lying along a line or a curve
(:func:`backends._geometry.is_linear`), with fmm3dpy's own direct sum ``l3ddir``: there
forces cancel and no precision bounds the per-particle relative error (equal masses on a
uniform line: rms 2e-3 at eps 1e-6; summed directly 9e-11 against the oracle, where
float64 direct summation itself is off by 2e-11).

fmm3dpy's FMM drops or mis-sums pairs closer than about 1e-12 of the extent (errors of order
1) and crashed the interpreter on a tight cluster (1 000 particles within 1e-15 of the
extent). So systems with particles closer than ``MIN_SEPARATION = 1e-10`` times the extent
(found with a k-d tree, O(N log N)) never reach it: like systems of too many scales and
lines (:func:`direct_reason`), they are summed directly by fmm3dpy's ``l3ddir`` (O(N^2),
exact to rounding: 5e-15 against the oracle on that tight cluster). fmm3dpy's FMM is slow on
systems with a wide range of scales (35 s for two clumps 1e6 apart at N = 1 500, eps
1e-12): its adaptive tree is as deep as the ratio of scales.

No softening: the Laplace FMM has no Plummer softening, so ``softening > 0`` is a ``ValueError``.
Coincident particles contribute nothing to each other, as the contract says: they are merged
into one particle of their summed mass before the FMM runs (``numpy.unique``, O(N log N)) and
each gets the acceleration of its point. Memory: O(N) (fmm3dpy's tree and expansions, a few
hundred bytes per particle). Threads: whatever OpenMP build the fmm3dpy wheel has (the PyPI
wheel ran on one core when measured). ``fmm3dpy`` is imported on the first call only.
"""

from __future__ import annotations

import importlib.metadata
import math

import numpy as np

from backends._contract import column_range, evaluate, validate
from backends._geometry import centred, is_linear

__all__ = [
    "DEFAULT_EPS",
    "MIN_SEPARATION",
    "accel",
    "direct_reason",
    "library_eps",
    "library_versions",
    "rounding_floor",
    "tolerance",
]

DEFAULT_EPS = 1e-12  #: the requested precision unless ``eps=`` says otherwise
#: Closest separation given to the FMM, relative to the system's extent (summed directly below).
MIN_SEPARATION = 1e-10
#: The declared bound is ``max(EPS_FACTOR * eps, FLOOR)`` (:func:`tolerance`).
EPS_FACTOR = 3.0
#: fmm3dpy is asked for ``ASKED * eps`` (:func:`library_eps`).
ASKED = 0.05
#: ... but not below this unless ``eps`` itself is (at the default the floor sets the bound).
ASKED_MIN = 1e-12
FLOOR = 1.5e-10
#: Largest estimated rounding floor (:func:`rounding_floor`) given to the FMM (summed
#: directly above): the measured rms was at most 1.46 times the estimate, so at most
#: 8.8e-11 here, 1.7x below ``FLOOR``.
MAX_FLOOR = 6e-11
#: Systems of at least this many particles are checked for lying along a line.
LINE_MIN_N = 32
_FACTOR: list[float] = []  # measured kernel convention, cached: [4 pi] for fmm3dpy 2.x


def library_versions() -> dict[str, str]:
    """Return the installed version of the peer library, ``{"fmm3dpy": "2.1.0"}``."""
    try:
        return {"fmm3dpy": importlib.metadata.version("fmm3dpy")}
    except importlib.metadata.PackageNotFoundError:
        return {"fmm3dpy": "not installed"}


def _check_eps(eps) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.integer, np.floating)):
        raise TypeError(f"eps must be a real number in (0, 1); got {type(eps).__name__}")
    eps = float(eps)
    if not (0.0 < eps < 1.0):
        raise ValueError(f"eps must be a real number in (0, 1) (fmm3dpy's precision); got {eps!r}")
    return eps


def tolerance(eps=DEFAULT_EPS, **_options) -> float:
    """Bound on the rms per-particle relative error at precision ``eps``.

    ``max(EPS_FACTOR * eps, FLOOR)``: 3 ``eps``, and never below 1.5e-10, the rounding floor
    of fmm3dpy's box-relative arithmetic on the systems given to it (an estimated floor of
    at most ``MAX_FLOOR``, measured at most 8.8e-11; others are summed directly). fmm3dpy
    is asked for :func:`library_eps`. Measured (``docs/peers.md``): rms up to 0.22 of the
    bound on a thin disc round a dominant central mass (eps 1e-2 to 1e-10), and up to 0.62
    of it on a jittered cubic lattice, whose central forces cancel (eps 1e-2; it was 7x
    the bound at eps 1e-3 when fmm3dpy was asked for ``eps`` itself).
    """
    return max(EPS_FACTOR * _check_eps(eps), FLOOR)


def library_eps(eps=DEFAULT_EPS) -> float:
    """Return the precision fmm3dpy is asked for: ``ASKED * eps``, not below ``min(eps, 1e-12)``.

    fmm3dpy picks its expansions in steps of precision (0.5e-3, 0.5e-6, 0.5e-9, ...), and
    per particle it missed the precision asked for by 6.7 times at 1e-6, near the bottom of
    a step (a thin disc round a dominant central mass; 2.8 times at 1e-9, 1.7 at 1e-3).
    Asking for a twentieth of ``eps`` keeps the declared ``3 eps`` (at most 0.22 of it
    measured there); it costs fmm3dpy 1.3 to 1.9 times the time of ``eps`` itself
    (N = 2 x 10**5, ``docs/peers.md``).
    """
    eps = _check_eps(eps)
    return max(ASKED * eps, min(eps, ASKED_MIN))


def _factor() -> float:
    """Return ``factor`` in ``a = G * factor * grad``, measured once (4 pi for fmm3dpy 2.x)."""
    if not _FACTOR:
        import fmm3dpy

        src = np.array([[0.0, 1.0], [0.0, 0.0], [0.0, 0.0]])  # (3, 2): at x = 0 and x = 1
        grad = fmm3dpy.lfmm3d(eps=1e-12, sources=src, charges=np.array([1.0, 0.0]), pg=2).grad
        factor = -1.0 / float(grad[0, 1])  # exact: a_x of particle 1 = -1 (unit mass at r = 1)
        if not any(math.isclose(factor, c, rel_tol=1e-9) for c in (4.0 * math.pi, 1.0)):
            raise RuntimeError(
                f"fmm3dpy {library_versions()['fmm3dpy']}: unknown kernel convention "
                f"(gradient {float(grad[0, 1])!r} for unit charges at unit distance)"
            )
        _FACTOR.append(4.0 * math.pi if factor > 2.0 else 1.0)
    return _FACTOR[0]


def _scales(x: np.ndarray) -> tuple[float, np.ndarray]:
    """Return the extent and every particle's nearest-neighbour distance (distinct points)."""
    from scipy.spatial import cKDTree

    lo, hi = column_range(x)
    extent = float((hi - lo).max())
    return extent, cKDTree(x).query(x, k=2)[0][:, 1]


def rounding_floor(extent: float, dist: np.ndarray) -> float:
    """Estimated rms error of fmm3dpy's box-relative arithmetic on a system.

    fmm3dpy computes in coordinates relative to boxes of its tree, each rounded to about
    ``2**-53`` of the extent, so a particle whose force is set by a neighbour at distance
    ``d`` sees a relative error of about ``2**-53 extent / d``; the estimate is the rms of
    that over the particles. Measured against it (fmm3dpy at eps 1e-12 on 38 systems: the
    hard systems of :mod:`backends.systems`, also shifted by 1e8, tight heavy binaries of
    10-200 particles, close pairs, a crowded corner shifted by 1e4 and 1e8): 0.02 to 1.46
    times the estimate.
    """
    if dist.shape[0] == 0:
        return 0.0
    return float(2.0**-53 * extent * np.sqrt(np.mean(dist**-2.0)))


def direct_reason(m: np.ndarray, x: np.ndarray) -> str | None:
    """Why fmm3dpy's FMM cannot keep the bound on this system (it is summed directly), or None.

    Particles closer than ``MIN_SEPARATION`` times the extent (the FMM drops or mis-sums such
    pairs, and crashed on tighter clusters), an estimated rounding floor above
    ``MAX_FLOOR`` (:func:`rounding_floor`: too many scales, such as clumps far apart or a
    tight binary far from the rest), or a system along a line (forces cancel;
    :func:`backends._geometry.is_linear`). ``x``: distinct points.
    """
    return _direct_reason(m, x, *_scales(x))


def _direct_reason(m, x, extent: float, dist: np.ndarray) -> str | None:
    """:func:`direct_reason` with the system's scales (:func:`_scales`) already measured."""
    closest = float(dist.min()) if dist.shape[0] else 0.0
    if closest < MIN_SEPARATION * extent:
        return f"particles {closest:.3g} apart, below {MIN_SEPARATION:g} of the extent"
    floor = rounding_floor(extent, dist)
    if floor > MAX_FLOOR:
        return f"estimated rounding floor {floor:.3g}, above {MAX_FLOOR:g}"
    if m.shape[0] >= LINE_MIN_N and is_linear(x):
        return "the particles lie along a line or a curve"
    return None


def _fmm(m, x, G, eps):
    import fmm3dpy

    factor = _factor()
    # moved next to the origin where that is exact: fmm3dpy works in coordinates relative to
    # its root box, and a system far from the origin lost digits there (shifted by 1e8: rms
    # 1e-7 at any eps)
    src = np.ascontiguousarray(centred(x).T)
    extent, dist = _scales(x)
    if _direct_reason(m, x, extent, dist) is not None:
        # fmm3dpy's own direct sum. It drops pairs with r**2 < thresh**2: the self-pair
        # (coincident particles were merged by the caller) and nothing else, so the
        # threshold stays below the closest pair (a fixed 1e-100 of the extent dropped every
        # pair of a cluster 1e-200 across: zeros). A threshold whose square underflows
        # would keep r = 0 (NaN): such separations are refused.
        thresh = min(1e-100 * extent, 0.5 * float(dist.min()))
        if not thresh * thresh > 0.0:
            raise FloatingPointError(
                f"positions: particles {float(dist.min()):.3g} apart in a system of extent "
                f"{extent:.3g}: their squared separation underflows float64 in fmm3dpy"
            )
        out = fmm3dpy.l3ddir(sources=src, targets=src, charges=m, pgt=2, thresh=thresh)
        acc = np.ascontiguousarray(np.asarray(out.gradtarg, dtype=np.float64).T)
    else:
        out = fmm3dpy.lfmm3d(eps=library_eps(eps), sources=src, charges=m, pg=2)
        acc = np.ascontiguousarray(np.asarray(out.grad, dtype=np.float64).T)  # (N, 3), new
    acc *= G * factor
    return acc


def _kernel(m, x, G, softening, eps):
    # Coincident particles contribute nothing to each other: merge them into one of their
    # summed mass (fmm3dpy crashed on many coincident points when tried), sum on the distinct
    # points, and give every particle the acceleration of its point.
    points, inverse = np.unique(x, axis=0, return_inverse=True)
    if points.shape[0] == x.shape[0]:
        return _fmm(m, x, G, eps)
    if points.shape[0] == 1:
        return np.zeros(x.shape)
    inverse = inverse.ravel()
    mass = np.bincount(inverse, weights=m, minlength=points.shape[0])
    return _fmm(mass, points, G, eps)[inverse]


def accel(masses, positions, G=1.0, *, softening=0.0, eps=DEFAULT_EPS) -> np.ndarray:
    """Gravitational accelerations by fmm3dpy's Laplace fast multipole method.

    Parameters
    ----------
    masses : (N,) array_like of real
    positions : (N, 3) array_like of real
    G : float, optional
        Gravitational constant.
    softening : float, optional
        Must be 0: the FMM has no softening (``ValueError`` otherwise).
    eps : float, optional
        The requested precision, in (0, 1); default 1e-12. fmm3dpy is asked for
        :func:`library_eps` (a twentieth of it) so that the rms per-particle relative error
        keeps :func:`tolerance`, ``max(3 eps, 1.5e-10)``.

    Returns
    -------
    (N, 3) ndarray of float64
    """
    inp = validate(masses, positions, G, softening)
    eps = _check_eps(eps)
    if inp.softening > 0.0:
        raise ValueError(
            f"softening must be 0 for backend 'fmm3d' (fmm3dpy's Laplace FMM has no softening); "
            f"got softening={inp.softening!r}: use an exact backend for softened forces"
        )
    return evaluate("fmm3d", inp, _kernel, eps)
