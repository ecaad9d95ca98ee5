"""Geometry checks shared by the approximate backends: is a system (nearly) a line or a curve.

On particles along a line the forces from the two sides cancel: the net acceleration of a
particle is a small difference of large sums, and a multipole method's truncation error, a
fraction of those sums, is not a fraction of the net force. The rms per-particle relative
error then grows with N (measured: ``tree`` at its defaults 7e-2 at N = 3 000, 0.25 at
20 000; with one target per walk and theta 0.5, 0.8 and 1.15) and no opening angle bounds
it. Trees cannot keep a bound there, so they detect the geometry and sum directly
(:func:`is_linear`). A system whose particles are spread across the line by more than a few
spacings along it is not a line for this purpose: there the errors were measured to be no
worse than on a thin disc (``docs/tree.md``).

A curve (a ring, a helix) is a line at every particle's scale, and the same cancellation
breaks the bounds there (a ring of 20 000 particles: ``tree`` at theta 0.7 rms 0.40 against
its bound 0.16, with quadrupoles 0.20 against 0.043; ``pytreegrav_tree`` 0.10 against
0.074), so :func:`is_linear` also says yes when the particles lie along a curve: when the
neighbourhood of most particles is a short straight segment (:func:`_along_a_curve`).
"""

from __future__ import annotations

import numpy as np

from backends._contract import column_range

__all__ = ["CURVE_SPREAD", "LINE_SPREAD", "centre_shift", "centred", "is_linear"]

#: A system is a line when the median distance of its particles from their principal axis
#: is at most this many median spacings along the axis.
LINE_SPREAD = 4.0
#: Particles looked at (a strided sample of larger systems): the check costs O(SAMPLE log).
SAMPLE = 4096
#: A neighbourhood of :data:`NEIGHBOURS` sampled particles is a straight segment when their
#: median distance from its own principal axis is at most this many of their median gaps
#: along it. A curve's neighbourhoods measure near 0 (their sagitta), a surface's or a
#: volume's near 1 or more.
CURVE_SPREAD = 0.25
NEIGHBOURS = 8
#: Sampled particles the curve check looks at (a strided sample of the line check's): under
#: a millisecond, a few per cent of ``tree``'s time from N = 10 000 on.
CURVE_SAMPLE = 256


def is_linear(x: np.ndarray, n: int | None = None) -> bool:
    """Return True when the particles lie along a line (to within a few spacings) or a curve.

    The principal axis is the leading eigenvector of the positions' covariance (about the
    mean, computed from centred coordinates, so a system far from the origin is judged by
    the same numbers as near it). The system is a line when the median distance from that
    axis is at most ``LINE_SPREAD`` times the median gap between consecutive projections on
    it. Medians keep a few outliers, or clumps far apart along the axis, from deciding:
    two round clusters far apart are not a line (their gaps along the axis are far smaller
    than their width). Systems of more than ``SAMPLE`` particles are judged on a strided
    sample, its median gap scaled by the sampling step. Cost: O(N) for the sample, one sort
    of at most ``SAMPLE`` projections.

    Parameters
    ----------
    x : (N, 3) ndarray of float64
        Positions (trusted: finite, validated by the caller).
    n : int, optional
        The number of particles ``x`` stands for, when ``x`` is already a sample of a larger
        system (the distributed tree gathers strided samples of every rank's particles):
        its median gap is scaled by ``len(x) / n``. Default: ``x`` is the whole system.

    A system that is not a line is then checked for a curve (:func:`_along_a_curve`, on the
    same sample).

    Returns
    -------
    bool
        False for N < 3.
    """
    if n is None:
        n = x.shape[0]
        step = -(-n // SAMPLE)  # a strided sample of at most SAMPLE particles decides
        x = x[::step]
    if n < 3 or x.shape[0] < 3:
        return False
    y = x - x.mean(axis=0)
    scale = float(np.abs(y).max())
    if scale == 0.0:
        return False  # every particle at one point
    y = y / scale  # no overflow in the products below
    _, vectors = np.linalg.eigh(y.T @ y)
    axis = vectors[:, 2]
    t = y @ axis
    perp = np.linalg.norm(y - t[:, None] * axis, axis=1)
    gaps = np.diff(np.sort(t))
    spacing = float(np.median(gaps)) * x.shape[0] / n  # the spacing of all n particles
    if float(np.median(perp)) <= LINE_SPREAD * spacing:
        return True
    return _along_a_curve(y)


def _along_a_curve(y: np.ndarray) -> bool:
    """Whether most particles of the sample ``y`` have a neighbourhood that is a segment.

    ``y`` is first thinned to at most :data:`CURVE_SAMPLE` particles (strided). For every
    sampled particle, its :data:`NEIGHBOURS` nearest sampled neighbours (itself
    included; scipy's KD-tree) are fitted with their principal axis; the neighbourhood is a
    segment when their median distance from that axis is at most :data:`CURVE_SPREAD` times
    their median gap along it. A surface or a volume has neighbourhoods as wide as they are
    long (ratios near 1 or more), a curve ratios near 0 (its sagitta over a few spacings).
    The system is a curve when more than half of the neighbourhoods are segments. Judged
    on the sample, so a filament thinner than a quarter of the *sample's* spacing counts
    as a curve even where the full system is a few particles thick: it is then summed
    exactly, which is slower, never less accurate.
    """
    from scipy.spatial import cKDTree

    y = y[:: -(-y.shape[0] // CURVE_SAMPLE)]
    if y.shape[0] < 2 * NEIGHBOURS:
        return False
    _, near = cKDTree(y).query(y, k=NEIGHBOURS)
    nb = y[near]  # (m, k, 3)
    nb = nb - nb.mean(axis=1, keepdims=True)
    _, vectors = np.linalg.eigh(np.einsum("mki,mkj->mij", nb, nb))
    axis = vectors[:, :, 2]  # each neighbourhood's principal axis
    t = np.einsum("mki,mi->mk", nb, axis)
    perp = np.linalg.norm(nb - t[:, :, None] * axis[:, None, :], axis=2)
    gap = np.median(np.diff(np.sort(t, axis=1), axis=1), axis=1)
    segment = np.median(perp, axis=1) <= CURVE_SPREAD * gap
    return bool(np.count_nonzero(segment & (gap > 0.0)) > 0.5 * y.shape[0])


def centred(x: np.ndarray) -> np.ndarray:
    """Return ``x`` moved next to the origin where that is exact, else ``x`` itself.

    On each axis where every coordinate lies within a factor 2 of the centre ``c`` of the
    bounding box (the system is farther from the origin than its size), ``c`` is subtracted:
    by Sterbenz's lemma each difference is exact, so the separations are unchanged, bit for
    bit. Trees' centres of mass and multipole arithmetic, and fmm3dpy's box-relative
    coordinates, then see small coordinates: uncentred, the crowded corner of
    :mod:`backends.systems` shifted by 1e8 measured twice its unshifted rms in ``tree`` (1.5e-5
    against 7.9e-6, theta 0.1 with quadrupoles) and ``pytreegrav_tree`` (4.9e-4 against
    2.4e-4, theta 0.3 with quadrupoles), and fmm3dpy lost 1e-7 at any precision. Other axes
    are left alone: there some
    coordinates are near the origin, and subtracting would round them (two clumps at 0 and
    1e6 would lose 6e-11 of their positions).
    """
    if x.shape[0] == 0:
        return x
    shift = centre_shift(*column_range(x))
    return x if shift is None else x - shift


def centre_shift(lo: np.ndarray, hi: np.ndarray) -> np.ndarray | None:
    """Return the shift :func:`centred` subtracts for the bounding box ``[lo, hi]``, or None.

    The box's centre on the axes where subtracting it is exact for every coordinate in the
    box, 0 on the others; None when there is no such axis. Ranks that agree on the box of
    the whole system agree on the shift.
    """
    lo = np.asarray(lo, dtype=np.float64)
    hi = np.asarray(hi, dtype=np.float64)
    c = 0.5 * lo + 0.5 * hi
    exact = ((c > 0.0) & (lo >= 0.5 * c) & (hi <= 2.0 * c)) | (
        (c < 0.0) & (hi <= 0.5 * c) & (lo >= 2.0 * c)
    )
    if not exact.any():
        return None
    return np.where(exact, c, 0.0)
