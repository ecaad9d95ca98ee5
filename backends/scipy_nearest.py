r"""Nearest-neighbour acceleration: each particle pulled by its ``k`` nearest neighbours only.

.. math::

    a_i = G \sum_{j \in \mathrm{NN}_k(i)} m_j \frac{x_j - x_i}{(|x_j - x_i|^2 + \epsilon^2)^{3/2}}

where ``NN_k(i)`` are the ``k`` particles nearest to ``i``, ``i`` itself excluded, found with
:class:`scipy.spatial.KDTree` (the tree is built once per call). This is the tutorial's
"limits of Numba" case: a compiled loop that needs a library Numba cannot compile. Three
strategies, all computing the same sums in the same order (they agree to rounding):

``"forceobj"``
    One tree query per particle inside a function compiled with
    ``numba.jit(forceobj=True, looplift=False)``: Numba's object mode, every value a Python
    object. The slow way, kept to measure it.
``"objmode"``
    A ``@njit`` loop over particles that drops into object mode (``with numba.objmode(...)``)
    for each particle's tree query, then sums that particle's neighbours in nopython code.
``"batched"`` (default)
    The tree is queried for a block of particles at once on all threads (``workers=``
    :func:`numba.get_num_threads`), then a ``parallel=True`` kernel (``prange`` over the
    block's rows) sums the neighbours. Blocks follow the tree's order of the particles
    (spatially compact blocks: cache-friendly queries). Only one block's neighbour lists
    exist at a time, so the memory for them is O(block x k) (at most about 8 MiB with the
    default block), never O(N x k): N = 10^6, k = 32 needs no 264 MB index array.

Neighbour selection and ties: the tree is asked for ``k + 1`` neighbours of each particle and
the particle's own index is dropped from that list; if the list does not contain it (more than
``k`` particles coincide with it, so the tree may list others first), the last entry is dropped
instead. Ties at equal distance are broken as the tree returns them. With ``softening == 0`` a
coincident neighbour counts as one of the ``k`` but contributes nothing (never a NaN).

Compilation: the batched and row kernels are cached on disk; the object-mode functions cannot
be (Numba refuses to cache functions with ``objmode`` blocks), so ``"forceobj"`` and
``"objmode"`` compile once per process on first use.
"""

from __future__ import annotations

import operator
import threading

import numba
import numpy as np
from numba import njit, prange
from scipy.spatial import KDTree

from backends._contract import evaluate, validate

__all__ = ["METHODS", "accel_nearest"]

METHODS = ("batched", "objmode", "forceobj")
_BLOCK_ENTRIES = 2**19  # default block: at most this many (row, neighbour) entries, 8 MiB


@njit(cache=True, nogil=True)
def _row(i, nbrs, k, m, x, eps2):
    """Unscaled acceleration of particle i from the first k entries of ``nbrs`` that are not i."""
    ax = 0.0
    ay = 0.0
    az = 0.0
    used = 0
    for c in range(nbrs.shape[0]):
        if used == k:
            break
        j = nbrs[c]
        if j == i:
            continue
        used += 1
        dx = x[j, 0] - x[i, 0]
        dy = x[j, 1] - x[i, 1]
        dz = x[j, 2] - x[i, 2]
        r2 = dx * dx + dy * dy + dz * dz + eps2
        if r2 > 0.0:  # a coincident neighbour contributes nothing when eps == 0
            s = m[j] / (r2 * np.sqrt(r2))
            ax += dx * s
            ay += dy * s
            az += dz * s
    return ax, ay, az


@njit(cache=True, parallel=True)
def _block_kernel(rows, idx, k, m, x, G, eps2, out):
    """Rows ``rows`` of ``out`` from their neighbour lists ``idx`` (one list per row)."""
    for r in prange(rows.shape[0]):
        i = rows[r]
        ax, ay, az = _row(i, idx[r], k, m, x, eps2)
        out[i, 0] = G * ax
        out[i, 1] = G * ay
        out[i, 2] = G * az


def _batched(m, x, G, softening, k, block):
    tree = KDTree(x)
    n = m.shape[0]
    out = np.empty((n, 3))
    workers = numba.get_num_threads()
    # Particles are taken in the tree's own order (its leaves, left to right): consecutive
    # queries then walk the same branches and neighbours, which keeps the tree and the
    # positions in cache (about 2.5 x faster than input order at N = 10^6).
    order = tree.indices
    for start in range(0, n, block):
        rows = order[start : start + block]
        idx = tree.query(x[rows], k + 1, workers=workers)[1]  # distances dropped at once
        _block_kernel(rows, idx, k, m, x, G, softening * softening, out)
        del idx  # freed before the next block's query: one block's lists alive at a time
    return out


# --- objmode: the tree cannot enter nopython code, so the object-mode block finds it here ---
_local = threading.local()


def _query_one(point, kp1):
    """Return the ``kp1`` nearest neighbours of one point in this thread's current tree."""
    return np.ascontiguousarray(_local.tree.query(point, kp1)[1], dtype=np.intp)


@njit
def _objmode_loop(m, x, G, eps2, k):
    n = m.shape[0]
    out = np.empty((n, 3))
    for i in range(n):
        with numba.objmode(nbrs="intp[::1]"):
            nbrs = _query_one(x[i], k + 1)
        ax, ay, az = _row(i, nbrs, k, m, x, eps2)
        out[i, 0] = G * ax
        out[i, 1] = G * ay
        out[i, 2] = G * az
    return out


def _objmode(m, x, G, softening, k):
    _local.tree = KDTree(x)
    try:
        return _objmode_loop(m, x, G, softening * softening, k)
    finally:
        del _local.tree


# --- forceobj: the whole function in object mode (looplift=False: nothing is lifted, and
# Numba emits no "falling back to object mode" warning) ---
@numba.jit(forceobj=True, looplift=False)
def _forceobj_loop(tree, m, x, G, eps2, k):
    n = m.shape[0]
    out = np.empty((n, 3))
    for i in range(n):
        nbrs = tree.query(x[i], k + 1)[1]
        ax = 0.0
        ay = 0.0
        az = 0.0
        used = 0
        for j in nbrs:
            if used == k:
                break
            if j == i:
                continue
            used += 1
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


def _forceobj(m, x, G, softening, k):
    tree = KDTree(x)
    # NumPy scalar arithmetic warns on overflow where compiled code does not; the caller
    # (evaluate) turns a non-finite result into a FloatingPointError either way.
    with np.errstate(over="ignore", invalid="ignore"):
        return _forceobj_loop(tree, m, x, G, softening * softening, k)


def _check_int(value, name: str) -> int:
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an integer; got a bool ({value!r})")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(
            f"{name} must be an integer; got {value!r} ({type(value).__name__})"
        ) from None


def accel_nearest(
    masses, positions, k, G=1.0, *, softening=0.0, method="batched", block=None
) -> np.ndarray:
    """Accelerations of each particle due to its ``k`` nearest neighbours only.

    Parameters
    ----------
    masses : (N,) array_like of real
        Point masses.
    positions : (N, 3) array_like of real
        Cartesian positions.
    k : int
        Neighbours per particle, itself excluded: ``1 <= k <= N - 1`` (so N >= 2). Python or
        NumPy integers; bools and floats (even ``3.0``) are rejected.
    G : float, optional
        Gravitational constant (finite).
    softening : float, optional
        Plummer softening length (finite, >= 0).
    method : {"batched", "objmode", "forceobj"}, optional
        How the tree is queried (see the module docstring); the results agree to rounding.
    block : int, optional
        ``"batched"`` only: particles per tree query. Default: as many as keep
        ``block * (k + 1) <= 2**19`` (at most 16384, at least 1).

    Returns
    -------
    (N, 3) ndarray of float64
        A new array; the inputs are never modified.

    Raises
    ------
    ValueError
        Unknown ``method``; ``k`` or ``block`` out of range; the errors of
        :func:`backends.validate`.
    TypeError
        ``k`` or ``block`` not an integer; the errors of :func:`backends.validate`.
    """
    if not isinstance(method, str) or method not in METHODS:
        valid = ", ".join(repr(name) for name in METHODS)
        raise ValueError(f"method must be one of {valid}; got {method!r}")
    inp = validate(masses, positions, G, softening)
    n = inp.masses.shape[0]
    k = _check_int(k, "k")
    if not 1 <= k <= n - 1:
        why = " (N < 2: no particle has a neighbour)" if n < 2 else ""
        raise ValueError(f"k must satisfy 1 <= k <= N - 1 = {n - 1}{why}; got k = {k}")
    if method == "batched":
        if block is None:
            block = max(1, min(16384, _BLOCK_ENTRIES // (k + 1)))
        block = _check_int(block, "block")
        if block < 1:
            raise ValueError(f"block must be a positive integer; got {block}")
        return evaluate("nearest:batched", inp, _batched, k, block)
    if block is not None:
        raise ValueError(f"block= applies to method='batched' only; got method={method!r}")
    kernel = _objmode if method == "objmode" else _forceobj
    return evaluate(f"nearest:{method}", inp, kernel, k)
