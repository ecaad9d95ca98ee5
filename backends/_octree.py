r"""The octree shared by ``tree``, ``fmm`` and the distributed tree: keys, nodes, moments.

One builder for every hierarchical method of the suite, so they agree on the geometry:

1. **Keys** (:func:`morton_keys`): a 63-bit Morton key per particle, 21 bits per axis, on a
   ``2**21`` grid over the bounding box (computed in parallel). :func:`prepare` sorts the
   particles by key into a ``(4, N)`` structure-of-arrays copy ``x, y, z, m``
   (:func:`sorted_soa`), positions times a power of two ``s`` and masses times a power of two
   ``ms`` (both exact), so the kernels work near 1.
2. **Nodes** (:func:`build`, serial, ``O(nodes log N)``): a node is a contiguous range
   ``start:end`` of the sorted particles. A node with more than ``leaf_size`` particles is
   split at the highest Morton level where its first and last keys differ, so chains of
   one-child cells are skipped and every internal node has at least two children (fewer than
   ``2 N`` nodes). Particles with identical keys (coincident, or closer than ``2**-21`` of
   the extent) stay in one leaf of any size: the depth is capped at 21 levels. Nodes are
   numbered breadth-first: children are contiguous (``child .. child + nchild - 1``) and
   always numbered after their parent.
3. **Moments** (:func:`moments`): leaves from their particles in parallel, internal nodes from
   their children (children before parents): the ``NF`` float fields per node listed below.

Node float fields (``f[q, k]``): 0 mass, 1-3 centre of mass, 4 radius**2 about it (a bound
holding every particle of the node: exact for leaves, ``max(|c_child - c| + b_child)``
above; -1 for a node without mass, inf for one whose masses of both signs cancel), 5-10 the
second moments ``M_xx, M_yy, M_zz, M_xy, M_xz, M_yz`` about the centre of mass (with
``quadrupole=True``; shifted to the parent by the parallel-axis theorem), 11-13 the tight
box's minimum, 14-16 its maximum, 17 the sum of ``|m|``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import njit, prange

from backends._contract import column_range

__all__ = [
    "FM",
    "LEVELS",
    "NF",
    "Octree",
    "build",
    "key_grid",
    "moments",
    "morton_keys",
    "prepare",
]

FM = {"reassoc", "contract", "afn", "arcp", "nsz"}  #: fast-math flags of the tree kernels
LEVELS = 21  #: Morton levels: 21 bits per axis, 63-bit keys
#: Largest leaf or group size passed to the compiled code (a larger one acts the same: one
#: leaf or group); a Python integer beyond int64 would not convert for it.
MAX_SIZE = 2**31 - 1
NF = 18  #: node float fields (see the module docstring)


@njit(inline="always")
def spread_bits(v):
    """Spread the low 21 bits of ``v`` to every third bit."""
    v &= 0x1FFFFF
    v = (v | (v << 32)) & 0x1F00000000FFFF
    v = (v | (v << 16)) & 0x1F0000FF0000FF
    v = (v | (v << 8)) & 0x100F00F00F00F00F
    v = (v | (v << 4)) & 0x10C30C30C30C30C3
    v = (v | (v << 2)) & 0x1249249249249249
    return v


@njit(cache=True, parallel=True, nogil=True)
def morton_keys(x, lo, ks):
    """Morton keys (int64, 63 bits) of ``0.5 * (x - lo) * ks`` on a ``2**21`` grid."""
    n = x.shape[0]
    top = (1 << LEVELS) - 1
    keys = np.empty(n, dtype=np.int64)
    for i in prange(n):
        key = 0
        for k in range(3):
            v = (0.5 * x[i, k] - 0.5 * lo[k]) * ks  # halves: no overflow near 1e308
            q = int(v) if v < top else top
            key |= spread_bits(max(q, 0)) << (2 - k)
        keys[i] = key
    return keys


@njit(cache=True, parallel=True, nogil=True)
def sorted_soa(m, x, order, s, ms):
    n = m.shape[0]
    p = np.empty((4, n))
    for i in prange(n):
        j = order[i]
        p[0, i] = x[j, 0] * s
        p[1, i] = x[j, 1] * s
        p[2, i] = x[j, 2] * s
        p[3, i] = m[j] * ms
    return p


@njit(inline="always")
def _grow(a, need):
    if need <= a.shape[0]:
        return a
    b = np.empty(max(need, 2 * a.shape[0]), dtype=a.dtype)
    b[: a.shape[0]] = a
    return b


@njit(cache=True, nogil=True)
def build(keys, leaf_size):
    """Octree over sorted ``keys``: per node ``(start, end, first_child, n_children)``."""
    n = keys.shape[0]
    cap = 2 * (n // max(leaf_size, 1)) + 64
    start = np.empty(cap, dtype=np.int64)
    end = np.empty(cap, dtype=np.int64)
    child = np.empty(cap, dtype=np.int64)
    nchild = np.zeros(cap, dtype=np.int64)
    start[0] = 0
    end[0] = n
    nn = 1
    q = 0
    while q < nn:
        s = start[q]
        e = end[q]
        child[q] = 0
        nchild[q] = 0
        diff = keys[s] ^ keys[e - 1]
        if e - s <= leaf_size or diff == 0:
            q += 1
            continue
        hb = 0  # highest differing bit: the level at which this range splits
        while (diff >> (hb + 1)) != 0:
            hb += 1
        shift = hb - hb % 3
        prefix = (keys[s] >> (shift + 3)) << (shift + 3)
        if nn + 8 > start.shape[0]:
            start = _grow(start, nn + 8)
            end = _grow(end, nn + 8)
            child = _grow(child, nn + 8)
            nchild = _grow(nchild, nn + 8)
        child[q] = nn
        c = s
        for d in range(8):
            bound = prefix + ((d + 1) << shift)  # first key of the next octant
            lo = c if d < 7 else e  # (octant 7 ends at e; its bound may overflow)
            hi = e
            while lo < hi:  # first index in [c, e) with key >= bound
                mid = (lo + hi) >> 1
                if keys[mid] < bound:
                    lo = mid + 1
                else:
                    hi = mid
            if lo > c:
                start[nn] = c
                end[nn] = lo
                nn += 1
                c = lo
        nchild[q] = nn - child[q]
        q += 1
    return start[:nn].copy(), end[:nn].copy(), child[:nn].copy(), nchild[:nn].copy()


@njit(inline="always", fastmath=FM)
def leaf_moments(p, f, q, s, e, quadrupole):
    """Fields of node ``q`` from its particles ``s:e``."""
    mt = 0.0
    ma = 0.0
    sx = 0.0
    sy = 0.0
    sz = 0.0
    for k in range(3):
        f[q, 11 + k] = p[k, s]
        f[q, 14 + k] = p[k, s]
    for j in range(s, e):
        mj = p[3, j]
        mt += mj
        ma += abs(mj)
        sx += mj * p[0, j]
        sy += mj * p[1, j]
        sz += mj * p[2, j]
        for k in range(3):
            f[q, 11 + k] = min(f[q, 11 + k], p[k, j])
            f[q, 14 + k] = max(f[q, 14 + k], p[k, j])
    if mt != 0.0:
        cx = sx / mt
        cy = sy / mt
        cz = sz / mt
    else:
        cx = 0.5 * (f[q, 11] + f[q, 14])
        cy = 0.5 * (f[q, 12] + f[q, 15])
        cz = 0.5 * (f[q, 13] + f[q, 16])
    b2 = 0.0
    for j in range(s, e):
        dx = p[0, j] - cx
        dy = p[1, j] - cy
        dz = p[2, j] - cz
        b2 = max(b2, dx * dx + dy * dy + dz * dz)
        if quadrupole:
            mj = p[3, j]
            f[q, 5] += mj * dx * dx
            f[q, 6] += mj * dy * dy
            f[q, 7] += mj * dz * dz
            f[q, 8] += mj * dx * dy
            f[q, 9] += mj * dx * dz
            f[q, 10] += mj * dy * dz
    f[q, 0] = mt
    f[q, 1] = cx
    f[q, 2] = cy
    f[q, 3] = cz
    f[q, 4] = b2
    f[q, 17] = ma


@njit(inline="always", fastmath=FM)
def node_moments(f, q, c0, c1, quadrupole):
    """Fields of internal node ``q`` from those of its children ``c0:c1``."""
    mt = 0.0
    ma = 0.0
    sx = 0.0
    sy = 0.0
    sz = 0.0
    for k in range(3):
        f[q, 11 + k] = f[c0, 11 + k]
        f[q, 14 + k] = f[c0, 14 + k]
    for c in range(c0, c1):
        mt += f[c, 0]
        ma += f[c, 17]
        sx += f[c, 0] * f[c, 1]
        sy += f[c, 0] * f[c, 2]
        sz += f[c, 0] * f[c, 3]
        for k in range(3):
            f[q, 11 + k] = min(f[q, 11 + k], f[c, 11 + k])
            f[q, 14 + k] = max(f[q, 14 + k], f[c, 14 + k])
    if mt != 0.0:
        cx = sx / mt
        cy = sy / mt
        cz = sz / mt
    else:
        cx = 0.5 * (f[q, 11] + f[q, 14])
        cy = 0.5 * (f[q, 12] + f[q, 15])
        cz = 0.5 * (f[q, 13] + f[q, 16])
    b = 0.0  # a bound on the radius about the centre of mass: max |c_c - c| + b_c
    for c in range(c0, c1):
        if f[c, 4] < 0.0:  # massless child
            continue
        dx = f[c, 1] - cx
        dy = f[c, 2] - cy
        dz = f[c, 3] - cz
        b = max(b, np.sqrt(dx * dx + dy * dy + dz * dz) + np.sqrt(f[c, 4]))
        if quadrupole:  # parallel-axis shift of the children's second moments
            mc = f[c, 0]
            f[q, 5] += f[c, 5] + mc * dx * dx
            f[q, 6] += f[c, 6] + mc * dy * dy
            f[q, 7] += f[c, 7] + mc * dz * dz
            f[q, 8] += f[c, 8] + mc * dx * dy
            f[q, 9] += f[c, 9] + mc * dx * dz
            f[q, 10] += f[c, 10] + mc * dy * dz
    f[q, 0] = mt
    f[q, 1] = cx
    f[q, 2] = cy
    f[q, 3] = cz
    f[q, 4] = b * b
    f[q, 17] = ma


@njit(cache=True, parallel=True, nogil=True, fastmath=FM)
def moments(p, start, end, child, nchild, leaves, quadrupole):
    """Compute the node fields (module docstring, step 3).

    Leaves from their particles in parallel, then internal nodes from their children in
    reverse breadth-first order (children before parents).
    """
    nn = start.shape[0]
    f = np.zeros((nn, NF))
    for k in prange(leaves.shape[0]):
        q = leaves[k]
        leaf_moments(p, f, q, start[q], end[q], quadrupole)
    for q in range(nn - 1, -1, -1):
        if nchild[q] > 0:
            node_moments(f, q, child[q], child[q] + nchild[q], quadrupole)
    for q in prange(nn):
        if f[q, 17] == 0.0:
            f[q, 4] = -1.0  # no mass at all: skipped by the walk
        elif f[q, 0] == 0.0 or abs(f[q, 0]) < 1e-12 * f[q, 17]:
            f[q, 4] = np.inf  # masses of both signs cancelling: never a multipole
    return f


class Octree(NamedTuple):
    """A built octree (:func:`prepare`): sorted particles, nodes and their moments."""

    p: np.ndarray  #: (4, N) sorted x, y, z (times ``s``) and masses (times ``ms``)
    keys: np.ndarray  #: (N,) sorted Morton keys
    order: np.ndarray  #: (N,) ``p[:, i]`` is the caller's particle ``order[i]``
    start: np.ndarray  #: (nodes,) first sorted particle of each node
    end: np.ndarray  #: (nodes,) one past its last
    child: np.ndarray  #: (nodes,) first child (0 for a leaf)
    nchild: np.ndarray  #: (nodes,) number of children (0 for a leaf)
    f: np.ndarray  #: (nodes, NF) node fields (module docstring)
    s: float  #: positions were multiplied by this power of two
    ms: float  #: masses were multiplied by this power of two


def mass_scale(m: np.ndarray) -> float:
    """Power of two taking ``max |m|`` into ``[0.5, 1)`` (1 for all-zero masses): exact."""
    mmax = float(np.max(np.abs(m))) if m.size else 0.0
    return 2.0 ** -math.frexp(mmax)[1] if mmax > 0.0 else 1.0


def key_grid(lo, hi) -> tuple[np.ndarray, float]:
    """Return the Morton grid over the box ``[lo, hi]``: its corner and keys per unit length.

    ``morton_keys(x, *key_grid(lo, hi))`` are the keys :func:`prepare` gives with that box.
    """
    lo = np.ascontiguousarray(lo, dtype=np.float64)
    half = float(np.max(0.5 * np.asarray(hi, dtype=np.float64) - 0.5 * lo))
    return lo, (float(1 << LEVELS) / half if half > 0.0 else 0.0)


def prepare(m, x, s, leaf_size, quadrupole, lo=None, hi=None, ms=None) -> Octree:
    """Sort ``N >= 1`` particles by Morton key and build their octree with moments.

    Parameters
    ----------
    m : (N,) ndarray of float64
    x : (N, 3) ndarray of float64
    s : float
        Power of two the positions are multiplied by in the sorted copy (exact).
    leaf_size : int
        Maximum particles per leaf (coincident keys excepted).
    quadrupole : bool
        Whether to compute the second moments (fields 5-10).
    lo, hi : (3,) ndarray of float64, optional
        The box the keys are taken on (default: the particles' bounding box). A box shared
        by several processes gives them keys on one common grid.
    ms : float, optional
        Power of two the masses are multiplied by (default :func:`mass_scale` of ``m``); one
        value shared by several processes puts their moments on one scale.

    Returns
    -------
    Octree
    """
    if lo is None or hi is None:
        lo_x, hi_x = column_range(x)
        lo = lo_x if lo is None else lo
        hi = hi_x if hi is None else hi
    lo, ks = key_grid(lo, hi)
    keys = morton_keys(x, lo, ks)
    order = np.argsort(keys)
    keys = keys[order]
    ms = mass_scale(m) if ms is None else float(ms)
    p = sorted_soa(m, x, order, s, ms)
    start, end, child, nchild = build(keys, leaf_size)
    f = moments(p, start, end, child, nchild, np.flatnonzero(nchild == 0), quadrupole)
    return Octree(p, keys, order, start, end, child, nchild, f, s, ms)
