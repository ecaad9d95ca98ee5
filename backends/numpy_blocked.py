"""Backend ``numpy``: vectorized over sources, row-blocked over targets.

Strategy: for a block of B target rows, the separations to all N sources are formed as three
(B, N) arrays (structure of arrays), reduced with one weighted sum per component. Extra memory
is O(B x N) (about 6 arrays of B x N float64), never O(N^2): the default block keeps each
(B, N) array near 2 MiB, so N = 100 000 needs a few tens of MiB.
"""

from __future__ import annotations

import numpy as np

from backends._contract import evaluate, validate

_TARGET_ELEMENTS = 1 << 18  # elements per (B, N) temporary: 2 MiB of float64


def default_block(n: int) -> int:
    """Rows per block so that one (block, n) float64 temporary is about 2 MiB."""
    return max(1, min(n, _TARGET_ELEMENTS // max(n, 1)))


def _kernel(m, x, G, softening, block):
    n = m.shape[0]
    eps2 = softening * softening
    xs, ys, zs = (np.ascontiguousarray(x[:, k]) for k in range(3))
    out = np.empty((n, 3), dtype=np.float64)
    for i0 in range(0, n, block):
        i1 = min(n, i0 + block)
        dx = xs[None, :] - xs[i0:i1, None]
        dy = ys[None, :] - ys[i0:i1, None]
        dz = zs[None, :] - zs[i0:i1, None]
        r2 = dx * dx
        r2 += dy * dy
        r2 += dz * dz
        r2 += eps2
        # w = m_j / r^3 where r2 > 0; where r2 == 0 (self-pair, coincident unsoftened
        # pairs) the division is skipped and w keeps r2 * sqrt(r2) == 0.
        w = r2 * np.sqrt(r2)
        np.divide(m[None, :], w, out=w, where=r2 > 0.0)
        out[i0:i1, 0] = np.einsum("bn,bn->b", w, dx)
        out[i0:i1, 1] = np.einsum("bn,bn->b", w, dy)
        out[i0:i1, 2] = np.einsum("bn,bn->b", w, dz)
    out *= G
    return out


def accel(masses, positions, G=1.0, *, softening=0.0, block=None) -> np.ndarray:
    """Gravitational accelerations with NumPy, B target rows at a time.

    Parameters
    ----------
    masses : (N,) array_like of real
    positions : (N, 3) array_like of real
    G : float, optional
        Gravitational constant.
    softening : float, optional
        Plummer softening length (>= 0).
    block : int, optional
        Target rows per block; default :func:`default_block` (about 2 MiB per temporary).

    Returns
    -------
    (N, 3) ndarray of float64
    """
    inp = validate(masses, positions, G, softening)
    n = inp.masses.shape[0]
    if block is None:
        block = default_block(n)
    elif isinstance(block, bool) or not isinstance(block, (int, np.integer)) or block < 1:
        raise ValueError(f"block must be a positive integer; got {block!r}")
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported by evaluate
        return evaluate("numpy", inp, _kernel, int(block))
