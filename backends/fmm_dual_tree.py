r"""Backend ``fmm``: a fast multipole method with a dual tree walk, in Numba (approximate).

``eps`` (default 1e-6, any value in [1e-12, 1e-2]) is the requested rms per-particle
relative error; the expansion order and the opening angle come from a calibration
(:func:`settings`), and :func:`tolerance` declares ``eps``. ``order=`` and ``theta=`` set them
by hand (the declared bound is then the calibrated error model's for those settings).

Strategy
--------
1. **Tree.** Positions are shifted (exactly, see :class:`_Tree`) and scaled by a power of two
   so the extent lies in ``[1, 2)``; particles are sorted along 63-bit Morton keys and the
   octree is built from the sorted keys, both shared with ``tree``
   (:mod:`backends._octree`): a node is a contiguous range of particles, split at the highest
   Morton level where its keys differ, at most ``leaf_size`` (default 128) per leaf except
   coincident points.
2. **Upward pass** (parallel over leaves, then over the nodes of each level): each node's
   expansion centre ``z`` (its ``|m|``-weighted centre, the centre of mass for positive
   masses), a radius ``r`` holding every particle, and its Cartesian multipoles
   ``M_n = sum_j m_j (x_j - z)^n / n!`` to total degree ``p`` (P2M at the leaves, M2M
   above; :mod:`backends._cartesian`).
3. **Dual tree walk** (Dehnen's mutual scheme). Interactions of node pairs ``(A, B)`` start
   from the root's interaction with itself. A pair is summed directly if ``n_A n_B`` is at
   most half the M2L's coefficient steps (cheaper than an expansion); else a **mutual M2L**
   if the **acceptance criterion**

       ``r_A + r_B < theta |z_A - z_B|``

   holds (one derivative tensor of the kernel at ``z_A - z_B`` gives both ``A``'s local
   expansion from ``B``'s multipoles and ``B``'s from ``A``'s); else summed directly if both
   are leaves; else the node with the larger radius is split. A node with itself: directly
   for a leaf, else its children with themselves and with each other. The walk is cut into
   a few thousand independent tasks (node pairs); a dry walk of each (decisions only)
   counts its direct pairs and M2L, and the tasks are dealt to Numba's threads before they
   start, the costliest first to the least loaded (:func:`_deal`). Each thread adds into its
   own accumulators (no locks, no races); the deal does not depend on timing, so the
   result is the same to the last bit for a given thread count.
4. **M2L, 8 at a time.** Accepted pairs are buffered and translated 8 at a time, one per
   lane of 512-bit vectors (:mod:`backends._simd`): the derivatives ``D_k(R)`` by the
   McMurchie-Davidson recursion and the contraction ``L_n += sum_m D_{n+m} M_m`` run as
   vector fused multiply-adds with no gathers. Without softening the kernel is harmonic and
   the walk keeps only the ``(p + 1)**2`` coefficients with ``n_z <= 1`` of each expansion
   (the multipoles folded onto them once per node, the other locals recovered once per
   node before the L2L; :mod:`backends._cartesian`): 3.3x fewer contraction steps at order
   12, an M2L 4.2x faster.
5. **Near field.** The direct node pairs of a task are grouped by the leaves of the pair's
   first node in Morton order, their source ranges sorted and adjacent ones merged, and
   summed by the symmetric SIMD pair kernel of ``numba_parallel``: each particle pair once,
   ``r**-3`` from the float32 estimate corrected in float64 (~2 ulp). A leaf with another
   range runs whole aligned vectors with the lanes outside the range masked
   (:func:`backends._pair_kernel.pair_block_lanes`; the sorted copy and the accumulators
   are padded to a multiple of 8 columns for it), a leaf with itself the diagonal
   :func:`backends._pair_kernel.pair_block`. A pair too close for that estimate
   makes its two rows non-finite, and those rows (only those) are summed again exactly over
   all particles, with ``sqrt`` and division.
6. **Downward pass**: the threads' locals are added up, shifted from parents to children
   (L2L, parallel over the nodes of each level) and evaluated at the particles (L2P, the
   gradient of the local expansion, parallel over leaves), plus the direct sums.
7. **Forces that cancel**: every M2L also adds ``|M_B| / R**2`` to a scale of ``A``'s far
   field (and ``|M_A| / R**2`` to ``B``'s), shifted down with the locals; the particles whose
   acceleration is below ``1 / CANCEL`` (1/30) of their leaf's scale are summed again
   directly (``numba_parallel``'s kernel, :func:`backends.numba_parallel.accel_rows`;
   rare: 0 to 21 of 10**5 on the test systems).

Softening
---------
Plummer softening is exact in the direct sums and enters the expansions through the kernel
itself: ``K(R) = (|R|**2 + eps**2)**-1/2`` depends on ``|R|**2`` only, so its derivatives
follow from the same recursion with ``s = |R|**2 + eps**2`` in place of ``|R|**2``, and the
M2L is the Taylor expansion of the *softened* kernel in the offsets of source and target
from their centres (the multipoles are plain mass moments, independent of the softening).
The softened kernel is smoother than ``1 / r``, so the series converges at least as fast:
the same calibration holds (tested with softening from 1e-2 to 10x the mean separation).

Accuracy
--------
The rms per-particle relative error of order ``p`` and angle ``theta`` is modelled as
``C_p theta**(p + 1) + 1e-14``, ``C_p`` (1.1 from order 3 on) above every ratio measured on
a battery of systems (discs, shells, clumps, a heavy binary, a dominant point mass,
softened systems; ``docs/fmm.md``, ``benchmarks/fmm_calibration.py``). The default path
takes the order from a table of ``eps`` and the widest angle in [0.25, 0.75] whose modelled
error is within ``eps``.
Systems whose particles all lie on one line (within 1e-6 of its length, :func:`_collinear`),
or most of them along a line or a curve (:func:`backends._geometry.is_linear`, as in
``tree``), are summed directly: there the forces cancel and no expansion keeps a relative
error. Elsewhere a particle whose pulls nearly cancel (the centre of a lattice, a light
cluster inside a heavy shell) would get the expansions' error, a fraction of its far
field's scale ``sum |M_B| / R**2``, amplified as much in its relative error: the walk keeps
that scale per node, and a particle whose acceleration is below ``1 / CANCEL`` of it is
summed again directly over all particles (step 7).

Memory: ``O(N)``. Per particle: the sorted copy (32 B), keys and order (24 B), one
``(3, N)`` accumulator per thread (24 B each) and the result's two copies (48 B); per node
(about ``N / 35`` nodes with leaves of 128) the multipoles and the locals, one set per
thread: ``C(p + 3, 3)`` doubles each (455 at order 12, ``eps = 1e-6``), or without
softening ``(p + 1)**2`` (169) in the walk and one full set of locals for the downward
pass (``docs/fmm.md``).

Honours ``numba.set_num_threads`` and ``NUMBA_NUM_THREADS``. No global side effects.
"""

from __future__ import annotations

import numbers

import numba
import numpy as np
from numba import njit, prange

from backends._cartesian import FM as _FM
from backends._cartesian import (
    LANES,
    MAX_ORDER,
    fold,
    l2l,
    l2p,
    m2l_lanes,
    m2m,
    monomials,
    plan,
    tables,
    unfold,
)
from backends._contract import check_softening, column_range, evaluate, validate
from backends._geometry import is_linear
from backends._octree import LEVELS as _LEVELS
from backends._octree import MAX_SIZE, build, mass_scale, morton_keys
from backends._pair_kernel import empty64, pair_block, pair_block_lanes
from backends.numba_parallel import _kernel as _direct
from backends.numba_parallel import _scale, _zeros64, accel_rows, resum_non_finite

__all__ = ["DEFAULT_EPS", "EPS_RANGE", "THETA_RANGE", "accel", "settings", "tolerance"]

DEFAULT_EPS = 1e-6  #: default requested rms per-particle relative error
EPS_RANGE = (1e-12, 1e-2)  #: the requested errors the calibration covers
THETA_RANGE = (0.25, 0.75)  #: opening angles the default path chooses from
#: The error model: rms <= _C[p] * theta**(p + 1) + _FLOOR. ``_C[p]`` is the larger of
#: 3.5 times the largest rms / theta**(p + 1) measured on the calibration battery (12
#: systems, 4 of them softened; theta 0.3 to 0.75, N = 20 000, leaves of 16) and 1.5 times
#: the largest on its hardest member, a Gaussian with a third of its mass at one point (0.74,
#: theta 0.25 to 0.75 in steps of 0.025, N = 3000 and 10 000, leaves of 16 and 128): see
#: benchmarks/fmm_calibration.py and docs/fmm.md (2026-12-03; orders 2 and 3 raised from
#: 1.47 and 1.1 on 2026-12-04, when the battery's "clump" system measured 0.475 and 0.346).
_C = {
    1: 3.18, 2: 1.66, 3: 1.21, 4: 1.1, 5: 1.1, 6: 1.1, 7: 1.1, 8: 1.1, 9: 1.1, 10: 1.1,
    11: 1.1, 12: 1.1, 13: 1.1, 14: 1.1, 15: 1.1, 16: 1.1, 17: 1.1, 18: 1.1, 19: 1.1,
    20: 1.1,
}  # fmt: skip
_FLOOR = 1e-14  #: float64 rounding of the sums (measured rms at most 4e-15)
#: (smallest eps, order) rows of the default path: the order for eps in [row, row above).
#: At a given bound a higher order allows a wider angle and fewer direct pairs, until the
#: M2L's C(p + 6, 6) steps outweigh them. Measured at each order's angle for the bound
#: (N = 2e5, benchmark system / Plummer sphere, 2 threads, best of 2, 2026-12-03, Zen 5):
#: eps 1e-3: order 7 1.61/1.80 s, 8 1.55/1.68, 9 1.60/1.68, 10 1.70/1.74; eps 1e-4: order
#: 9 2.42/2.62, 10 2.35/2.63, 11 2.38/2.77, 12 2.84/2.86; eps 1e-5: order 10 3.47/4.17, 12
#: 3.47/4.07; eps 1e-6: order 10 5.48/5.22, 12 4.67/4.97, 14 4.95/5.18; eps 1e-2: order 6
#: and 8 level (0.85/0.83 and 0.85/0.81 s). Above 1e-6, order 16 at theta 0.42 took 5.5 s
#: against order 12 at theta 0.34 4.0 s (eps 1e-6, N = 1e5, 1 thread).
_ORDER_TABLE = (
    (3e-4, 8), (3e-5, 10), (3e-7, 12), (3e-8, 14), (3e-9, 16), (3e-10, 18), (0.0, 20),
)  # fmt: skip
_LEAF_SIZE = 128

#: Node pairs on a walk's stack: a self-interaction pushes at most 36 (8 children and their
#: 28 pairs) and a split at most 8, at most 2 x 21 of each on the way down (21 levels).
_STACK = 2048


# --------------------------------------------------------------------------------------
# geometry and multipoles
# --------------------------------------------------------------------------------------


@njit(cache=True, nogil=True)
def _levels(child, nchild):
    """Parents and the node ranges of each depth (nodes are numbered breadth-first)."""
    nn = child.shape[0]
    parent = np.zeros(nn, dtype=np.int64)
    depth = np.zeros(nn, dtype=np.int64)
    for q in range(nn):
        for c in range(child[q], child[q] + nchild[q]):
            parent[c] = q
            depth[c] = depth[q] + 1
    nl = depth[nn - 1] + 1
    bounds = np.zeros(nl + 1, dtype=np.int64)
    for q in range(nn):
        bounds[depth[q] + 1] = q + 1
    return parent, bounds


@njit(cache=True, parallel=True, nogil=True, fastmath=_FM)
def _upward(p, nodes, bounds, leaves, order, ncoef, itab, ftab, off, shift):
    """Centres, radii, ``|m|`` sums and multipoles of every node (P2M, then M2M by levels).

    Returns ``geo`` (nodes, 5): centre ``z``, radius, ``sum |m|``; and the multipoles
    ``(nodes, nc)``. The centre of a node is its ``|m|``-weighted centre (the centre of mass
    for positive masses; the tight box's centre for a node without mass); its radius bounds
    the distance from the centre to each of its particles (exact for leaves; above, the
    smaller of ``max(|z_c - z| + r_c)`` and the distance to the farthest corner of the
    node's tight box).
    """
    start = nodes[0]
    end = nodes[1]
    child = nodes[2]
    nchild = nodes[3]
    nn = start.shape[0]
    nc = ncoef[order + 1]
    geo = np.zeros((nn, 5))
    box = np.zeros((nn, 6))
    mp = np.zeros((nn, nc))
    for k in prange(leaves.shape[0]):
        q = leaves[k]
        s = start[q]
        e = end[q]
        ma = 0.0
        sx = 0.0
        sy = 0.0
        sz = 0.0
        for c in range(3):
            box[q, c] = p[c, s]
            box[q, 3 + c] = p[c, s]
        for j in range(s, e):
            w = abs(p[3, j])
            ma += w
            sx += w * p[0, j]
            sy += w * p[1, j]
            sz += w * p[2, j]
            for c in range(3):
                box[q, c] = min(box[q, c], p[c, j])
                box[q, 3 + c] = max(box[q, 3 + c], p[c, j])
        if ma > 0.0:
            cx = sx / ma
            cy = sy / ma
            cz = sz / ma
        else:
            cx = 0.5 * (box[q, 0] + box[q, 3])
            cy = 0.5 * (box[q, 1] + box[q, 4])
            cz = 0.5 * (box[q, 2] + box[q, 5])
        w = np.empty(nc)
        r2 = 0.0
        mq = mp[q]
        for j in range(s, e):
            bx = p[0, j] - cx
            by = p[1, j] - cy
            bz = p[2, j] - cz
            r2 = max(r2, bx * bx + by * by + bz * bz)
            monomials(bx, by, bz, nc, itab, ftab, w)
            mj = p[3, j]
            for c in range(nc):
                mq[c] += mj * w[c]
        geo[q, 0] = cx
        geo[q, 1] = cy
        geo[q, 2] = cz
        geo[q, 3] = np.sqrt(r2)
        geo[q, 4] = ma
    for lev in range(bounds.shape[0] - 2, -1, -1):
        for q in prange(bounds[lev], bounds[lev + 1]):
            if nchild[q] == 0:
                continue
            c0 = child[q]
            c1 = c0 + nchild[q]
            ma = 0.0
            sx = 0.0
            sy = 0.0
            sz = 0.0
            for c in range(3):
                box[q, c] = box[c0, c]
                box[q, 3 + c] = box[c0, 3 + c]
            for ch in range(c0, c1):
                w = geo[ch, 4]
                ma += w
                sx += w * geo[ch, 0]
                sy += w * geo[ch, 1]
                sz += w * geo[ch, 2]
                for c in range(3):
                    box[q, c] = min(box[q, c], box[ch, c])
                    box[q, 3 + c] = max(box[q, 3 + c], box[ch, 3 + c])
            if ma > 0.0:
                cx = sx / ma
                cy = sy / ma
                cz = sz / ma
            else:
                cx = 0.5 * (box[q, 0] + box[q, 3])
                cy = 0.5 * (box[q, 1] + box[q, 4])
                cz = 0.5 * (box[q, 2] + box[q, 5])
            dx = max(cx - box[q, 0], box[q, 3] - cx)
            dy = max(cy - box[q, 1], box[q, 4] - cy)
            dz = max(cz - box[q, 2], box[q, 5] - cz)
            rb = np.sqrt(dx * dx + dy * dy + dz * dz)
            rc = 0.0
            w = np.empty(nc)
            mq = mp[q]
            for ch in range(c0, c1):
                bx = geo[ch, 0] - cx
                by = geo[ch, 1] - cy
                bz = geo[ch, 2] - cz
                rc = max(rc, np.sqrt(bx * bx + by * by + bz * bz) + geo[ch, 3])
                if geo[ch, 4] > 0.0:
                    monomials(bx, by, bz, nc, itab, ftab, w)
                    m2m(mp[ch], mq, w, order, ncoef, itab, off, shift)
            geo[q, 0] = cx
            geo[q, 1] = cy
            geo[q, 2] = cz
            geo[q, 3] = min(rb, rc)
            geo[q, 4] = ma
    return geo, mp


# --------------------------------------------------------------------------------------
# the dual tree walk
# --------------------------------------------------------------------------------------


@njit(inline="always", fastmath=_FM, error_model="numpy")
def _pair_exact(p, acc, a0, a1, b0, b1, eps2, diagonal):
    """Mutual pairs with ``sqrt`` and division (the safe path for pairs too close)."""
    for i in range(a0, a1):
        xi = p[0, i]
        yi = p[1, i]
        zi = p[2, i]
        mi = p[3, i]
        ax = 0.0
        ay = 0.0
        az = 0.0
        for j in range(i + 1 if diagonal else b0, b1):
            dx = p[0, j] - xi
            dy = p[1, j] - yi
            dz = p[2, j] - zi
            r2 = dx * dx + dy * dy + dz * dz + eps2
            if r2 > 0.0:
                w = 1.0 / (r2 * np.sqrt(r2))
                ax += p[3, j] * w * dx
                ay += p[3, j] * w * dy
                az += p[3, j] * w * dz
                acc[0, j] -= mi * w * dx
                acc[1, j] -= mi * w * dy
                acc[2, j] -= mi * w * dz
        acc[0, i] += ax
        acc[1, i] += ay
        acc[2, i] += az


@njit(inline="always", fastmath=_FM, error_model="numpy")
def _accept(a, b, geo, prm):
    """Return whether ``r_A + r_B < theta |z_A - z_B|`` (the acceptance criterion)."""
    dx = geo[a, 0] - geo[b, 0]
    dy = geo[a, 1] - geo[b, 1]
    dz = geo[a, 2] - geo[b, 2]
    rr = geo[a, 3] + geo[b, 3]
    return rr * rr < prm[0] * (dx * dx + dy * dy + dz * dz)


@njit(inline="always")
def _push(stack, top, a, b):
    if 2 * top + 2 > stack.shape[0]:
        bigger = np.empty(2 * stack.shape[0], dtype=np.int64)
        bigger[: stack.shape[0]] = stack
        stack = bigger
    stack[2 * top] = a
    stack[2 * top + 1] = b
    return stack, top + 1


@njit(inline="always")
def _put(stack, top, a, b):
    stack[2 * top] = a
    stack[2 * top + 1] = b
    return top + 1


@njit(inline="always")
def _split(stack, top, a, b, nodes, geo):
    """Push the children of the larger of ``a``, ``b`` (never a leaf) paired with the other."""
    child = nodes[2]
    nchild = nodes[3]
    if nchild[b] == 0 or (nchild[a] > 0 and geo[a, 3] >= geo[b, 3]):
        for i in range(child[a], child[a] + nchild[a]):
            top = _put(stack, top, i, b)
    else:
        for i in range(child[b], child[b] + nchild[b]):
            top = _put(stack, top, a, i)
    return top


@njit(inline="always")
def _split_self(stack, top, a, nodes):
    """Push the self-interactions of ``a``'s children and every pair of them."""
    c0 = nodes[2, a]
    c1 = c0 + nodes[3, a]
    for i in range(c0, c1):
        top = _put(stack, top, i, i)
        for j in range(i + 1, c1):
            top = _put(stack, top, i, j)
    return top


@njit(cache=True, nogil=True)
def _tasks(nodes, geo, prm, cut, nmax):
    """Split the root's self-interaction into independent tasks (pairs of nodes).

    The walk's own rules (:func:`_walk`), stopped where both nodes hold at most ``nmax``
    particles. Returns ``(K, 2)`` node pairs (``a == b``: a self-interaction).
    """
    start = nodes[0]
    end = nodes[1]
    nchild = nodes[3]
    out = np.empty((64, 2), dtype=np.int64)
    nt = 0
    stack = np.empty(2 * _STACK, dtype=np.int64)
    stack[0] = 0
    stack[1] = 0
    top = 1
    while top > 0:
        top -= 1
        a = stack[2 * top]
        b = stack[2 * top + 1]
        na = end[a] - start[a]
        nb = end[b] - start[b]
        if a == b:
            if nchild[a] > 0 and na > nmax and na * (na - 1) // 2 > cut:
                top = _split_self(stack, top, a, nodes)
                continue
        elif geo[a, 4] == 0.0 and geo[b, 4] == 0.0:
            continue
        elif max(na, nb) > nmax and na * nb > cut and not _accept(a, b, geo, prm):
            if nchild[a] > 0 or nchild[b] > 0:
                top = _split(stack, top, a, b, nodes, geo)
                continue
        if nt == out.shape[0]:
            out2 = np.empty((2 * nt, 2), dtype=np.int64)
            out2[:nt] = out
            out = out2
        out[nt, 0] = a
        out[nt, 1] = b
        nt += 1
    return out[:nt].copy()


#: Cost of one M2L in direct particle pairs, per coefficient step of its plan: full, 4.5 us
#: for the 18 564 steps at order 12 against 0.8 ns per pair (one thread, Zen 5, 2026-12-03);
#: harmonic, 1.29 us for 5 551 (2026-12-04)
_M2L_PAIRS_PER_STEP = 0.3


def _m2l_cost(order: int, harmonic: bool) -> float:
    """One M2L of the walk at this order, in direct particle pairs (for the deal)."""
    return _M2L_PAIRS_PER_STEP * plan(order, harmonic).steps


@njit(cache=True, parallel=True, nogil=True, fastmath=_FM, error_model="numpy")
def _task_costs(tasks, p, nodes, lnode, geo, mp, prm, dtab, rtab, ftab, rshift, m2l_cost):
    """Estimated cost of each task, in particle pairs: a dry walk's direct pairs and M2L."""
    k = tasks.shape[0]
    cost = np.empty(k)
    dry = prm.copy()
    dry[5] = 1.0
    for i in prange(k):
        cnt = np.zeros(4, dtype=np.int64)
        _walk(
            tasks[i, 0],
            tasks[i, 1],
            p,
            p[:3],
            mp,
            np.empty(1),
            cnt,
            nodes,
            lnode,
            geo,
            mp,
            dry,
            dtab,
            rtab,
            ftab,
            rshift,
            np.empty((1, 1, LANES)),
            np.empty((1, 1, LANES)),
            np.empty(LANES, dtype=np.int64),
            np.empty(LANES, dtype=np.int64),
        )
        cost[i] = cnt[2] + cnt[0] * m2l_cost + 1.0
    return cost


@njit(cache=True, nogil=True)
def _deal(cost, bins):
    """Deal the tasks to ``bins`` threads: the costliest first, each to the least loaded.

    Returns ``run`` and ``starts``: bin ``b`` runs the tasks ``run[starts[b]:starts[b+1]]``.
    The greedy rule keeps the bins' estimated loads within about one task's cost of each
    other; the tasks are small (a node pair of at most ``N / (8 threads)`` particles) and
    many. A fixed deal, not a queue: which thread adds which sums, and so the result to the
    last bit, does not depend on timing.
    """
    k = cost.shape[0]
    load = np.zeros(bins)
    which = np.empty(k, dtype=np.int64)
    count = np.zeros(bins + 1, dtype=np.int64)
    for i in np.argsort(-cost):
        b = 0
        for c in range(1, bins):
            if load[c] < load[b]:
                b = c
        which[i] = b
        load[b] += cost[i]
        count[b + 1] += 1
    starts = np.cumsum(count)
    fill = starts[:-1].copy()
    run = np.empty(k, dtype=np.int64)
    for i in range(k):
        run[fill[which[i]]] = i
        fill[which[i]] += 1
    return run, starts


@njit(fastmath=_FM, error_model="numpy")
def _near(near, nd, p, acc, nodes, lnode, eps2, fast):
    """Sum the direct node pairs of one task, each particle pair once (Newton's third law).

    A pair ``(A, B)`` (``A`` the one earlier in Morton order) becomes, for every leaf ``L``
    of ``A``, the block ``L x B`` of the symmetric pair kernel; a self pair ``(A, A)``
    becomes, for every leaf ``L`` of ``A``, the diagonal block ``L x L`` and the block of
    ``L`` with the rest of ``A`` after it. A leaf's source ranges are sorted and adjacent
    ones merged, so its rows run a few long vector loops.
    """
    start = nodes[0]
    end = nodes[1]
    lf0 = nodes[4]
    lf1 = nodes[5]
    k = 0
    for e in range(nd):
        a = near[2 * e]
        b = near[2 * e + 1]
        if start[b] < start[a]:
            a = b
        k += lf1[a] - lf0[a]
    tg = np.empty(k, dtype=np.int64)
    s0 = np.empty(k, dtype=np.int64)
    s1 = np.empty(k, dtype=np.int64)
    k = 0
    for e in range(nd):
        a = near[2 * e]
        b = near[2 * e + 1]
        if start[b] < start[a]:
            a, b = b, a
        for lf in range(lf0[a], lf1[a]):
            tg[k] = lf
            if a == b:
                s0[k] = start[lnode[lf]]  # the diagonal block, then the rest of A
                s1[k] = end[a]
            else:
                s0[k] = start[b]
                s1[k] = end[b]
            k += 1
    span = np.int64(end[0]) + 1  # the root's end: past every slot
    key = np.empty(k, dtype=np.int64)
    for e in range(k):
        key[e] = tg[e] * span + s0[e]
    order = np.argsort(key)
    ranges = np.empty(2 * k, dtype=np.int64)
    e = 0
    blocks = 0
    while e < k:
        t = tg[order[e]]
        nr = 0
        while e < k and tg[order[e]] == t:
            o = order[e]
            if nr > 0 and ranges[2 * nr - 1] == s0[o]:
                ranges[2 * nr - 1] = s1[o]
            else:
                ranges[2 * nr] = s0[o]
                ranges[2 * nr + 1] = s1[o]
                nr += 1
            e += 1
        q = lnode[t]
        t0 = start[q]
        t1 = end[q]
        blocks += nr
        for r in range(nr):
            b0 = ranges[2 * r]
            b1 = ranges[2 * r + 1]
            if b0 == t0:  # this leaf's own block first, then what follows it
                if fast:
                    pair_block(p, acc, t0, t1, p, acc, t0, t1, eps2, True)
                else:
                    _pair_exact(p, acc, t0, t1, t0, t1, eps2, True)
                b0 = t1
            if b1 > b0:
                if fast:
                    pair_block_lanes(p, acc, t0, t1, p, acc, b0, b1, eps2)
                else:
                    _pair_exact(p, acc, t0, t1, b0, b1, eps2, False)
    return blocks


@njit(cache=True, nogil=True)
def _leaf_ranges(nodes, lnode):
    """Rows 4, 5 of the nodes: each node's leaves ``lnode[lf0:lf1]`` (in Morton order)."""
    nn = nodes.shape[1]
    out = np.empty((6, nn), dtype=np.int64)
    out[:4] = nodes[:4]
    for k in range(lnode.shape[0]):
        out[4, lnode[k]] = k
        out[5, lnode[k]] = k + 1
    for q in range(nn - 1, -1, -1):
        if nodes[3, q] > 0:
            c0 = nodes[2, q]
            c1 = c0 + nodes[3, q]
            out[4, q] = out[4, c0]
            out[5, q] = out[5, c0]
            for c in range(c0, c1):
                out[4, q] = min(out[4, q], out[4, c])
                out[5, q] = max(out[5, q], out[5, c])
    return out


@njit(nogil=True, fastmath=_FM, error_model="numpy")
def _walk(
    a0,
    b0,
    p,
    acc,
    lo,
    sc,
    cnt,
    nodes,
    lnode,
    geo,
    mp,
    prm,
    dtab,
    rtab,
    ftab,
    rshift,
    work,
    buf,
    pa,
    pb,
):
    """Walk the node pairs of one task into one thread's accumulators ``acc``, ``lo``, ``sc``.

    ``sc`` gets each node's share of the far field's scale, ``sum |M_B| / R**2`` over its
    M2L partners ``B`` (:data:`CANCEL`).

    A pair of nodes ``(A, B)`` is, in this order: skipped if neither has mass; summed
    directly (mutual pairs on the SIMD pair kernel) if ``n_A n_B <= cut``; a mutual M2L if
    the acceptance criterion holds; summed directly if both are leaves; otherwise the node
    with the larger radius (a leaf never) is split and its children paired with the other.
    A node with itself: directly if a leaf or ``n (n - 1) / 2 <= cut``, else the children's
    self-interactions and every pair of children. With ``prm[5]`` nonzero (*dry*) only the
    counters ``cnt`` change: M2L interactions, direct node pairs, direct particle pairs.
    """
    eps2 = prm[1]
    cut = int(prm[2])
    fast = prm[3] != 0.0
    dry = prm[5] != 0.0
    order = int(prm[4])
    start = nodes[0]
    end = nodes[1]
    nchild = nodes[3]
    stack = np.empty(2 * _STACK, dtype=np.int64)
    stack[0] = a0
    stack[1] = b0
    top = 1
    nm = 0  # M2L interactions waiting in pa, pb
    near = np.empty(2 * 256, dtype=np.int64)  # direct pairs of nodes (one-sided near field)
    nd = 0
    while top > 0:
        top -= 1
        a = stack[2 * top]
        b = stack[2 * top + 1]
        sa = start[a]
        ea = end[a]
        if a == b:
            na = ea - sa
            if nchild[a] == 0 or na * (na - 1) // 2 <= cut:
                cnt[1] += 1
                cnt[2] += na * (na - 1) // 2
                near, nd = _push(near, nd, a, a)
            else:
                top = _split_self(stack, top, a, nodes)
            continue
        if geo[a, 4] == 0.0 and geo[b, 4] == 0.0:
            continue
        sb = start[b]
        eb = end[b]
        if (ea - sa) * (eb - sb) <= cut or (
            nchild[a] == 0 and nchild[b] == 0 and not _accept(a, b, geo, prm)
        ):
            cnt[1] += 1
            cnt[2] += (ea - sa) * (eb - sb)
            near, nd = _push(near, nd, a, b)
        elif _accept(a, b, geo, prm):
            cnt[0] += 1
            if not dry:  # the far field's scale, sum |M| / R**2
                dx = geo[a, 0] - geo[b, 0]
                dy = geo[a, 1] - geo[b, 1]
                dz = geo[a, 2] - geo[b, 2]
                inv = 1.0 / (dx * dx + dy * dy + dz * dz + eps2)
                sc[a] += geo[b, 4] * inv
                sc[b] += geo[a, 4] * inv
            pa[nm] = a
            pb[nm] = b
            nm += 1
            if nm == LANES:
                if not dry:
                    m2l_lanes(
                        pa,
                        pb,
                        nm,
                        geo,
                        mp,
                        lo,
                        eps2,
                        order,
                        dtab,
                        rtab,
                        ftab,
                        rshift,
                        work,
                        buf,
                    )
                nm = 0
        else:
            top = _split(stack, top, a, b, nodes, geo)
    if dry:
        return
    if nm > 0:
        m2l_lanes(pa, pb, nm, geo, mp, lo, eps2, order, dtab, rtab, ftab, rshift, work, buf)
    if nd > 0:
        cnt[3] += _near(near, nd, p, acc, nodes, lnode, eps2, fast)


@njit(cache=True, parallel=True, nogil=True, fastmath=_FM, error_model="numpy")
def _interact(
    tasks, p, accs, los, scs, cnts, nodes, lnode, geo, mp, prm, dtab, rtab, ftab, rshift, m2l_cost
):
    """Run every task, in parallel; thread ``t`` adds into its own accumulators only.

    Its direct sums into ``accs[t]``, its locals into ``los[t]`` and the far field's scale
    per node into ``scs[t]`` (:func:`_walk`).

    The tasks are dealt to the threads (one per entry of ``accs``) by their estimated cost
    (:func:`_task_costs`, :func:`_deal`) before any runs.

    ``prm``: theta**2, eps**2, cut, fast (0/1), order, dry (0/1). ``dtab``, ``rtab``,
    ``ftab``, ``rshift``: the M2L's :class:`backends._cartesian.Plan`; ``m2l_cost``: one M2L
    in direct particle pairs.
    """
    nr = mp.shape[1]
    nk = dtab.shape[1]
    order = int(prm[4])
    nt = accs.shape[0]
    cost = _task_costs(tasks, p, nodes, lnode, geo, mp, prm, dtab, rtab, ftab, rshift, m2l_cost)
    run, starts = _deal(cost, nt)
    works = np.empty((nt, order + 1, nk, LANES))  # per thread, allocated once
    bufs = np.empty((nt, 5, max(nr, 5), LANES))
    pas = np.empty((nt, LANES), dtype=np.int64)
    pbs = np.empty((nt, LANES), dtype=np.int64)
    for t in prange(nt):  # one share of the deal per thread
        for i in range(starts[t], starts[t + 1]):
            k = run[i]
            _walk(
                tasks[k, 0],
                tasks[k, 1],
                p,
                accs[t],
                los[t],
                scs[t],
                cnts[t],
                nodes,
                lnode,
                geo,
                mp,
                prm,
                dtab,
                rtab,
                ftab,
                rshift,
                works[t],
                bufs[t],
                pas[t],
                pbs[t],
            )


@njit(cache=True, parallel=True, nogil=True, fastmath=_FM, error_model="numpy")
def _downward(
    los,
    scs,
    accs,
    p,
    geo,
    nodes,
    parent,
    bounds,
    leaves,
    order,
    ncoef,
    itab,
    ftab,
    off,
    shift,
    red,
    expand,
):
    """Add up the threads' locals, shift them down (L2L by levels), evaluate at the particles.

    ``los`` holds the walk's coefficients ``red`` of the locals (a
    :class:`backends._cartesian.Plan`), completed by ``expand`` before the L2L, and ``scs``
    each node's share of the far field's scale ``sum |M_B| / R**2`` (added down the tree
    like the locals). Returns the sorted ``(3, N)`` accelerations (scaled units):
    the threads' direct sums plus the local expansions' gradients (L2P); and which
    particles' accelerations are below ``1 / CANCEL`` of their far field's scale (the
    candidates for :func:`backends.numba_parallel.accel_rows`).
    """
    nt = los.shape[0]
    nr = los.shape[2]
    nc = ncoef[order + 1]
    if nr == nc:  # every coefficient: the first thread's locals serve
        lo = los[0]
        t0 = 1
    else:
        lo = np.zeros((los.shape[1], nc))
        t0 = 0
    scale = np.zeros(los.shape[1])
    for lev in range(bounds.shape[0] - 1):
        for q in prange(bounds[lev], bounds[lev + 1]):
            for t in range(t0, nt):
                for r in range(nr):
                    lo[q, red[r]] += los[t, q, r]
            for t in range(nt):
                scale[q] += scs[t, q]
            unfold(lo[q], expand)
            if q > 0:
                a = parent[q]
                scale[q] += scale[a]
                w = np.empty(nc)
                monomials(
                    geo[q, 0] - geo[a, 0],
                    geo[q, 1] - geo[a, 1],
                    geo[q, 2] - geo[a, 2],
                    nc,
                    itab,
                    ftab,
                    w,
                )
                l2l(lo[a], lo[q], w, order, ncoef, itab, off, shift)
    out = np.empty((3, nodes[1, 0]))  # the root's end: N
    cancel = np.zeros(nodes[1, 0], dtype=np.bool_)
    nc1 = ncoef[order]
    for k in prange(leaves.shape[0]):
        q = leaves[k]
        w = np.empty(max(nc1, 1))
        lq = lo[q]
        small = (scale[q] / CANCEL) ** 2
        for i in range(nodes[0, q], nodes[1, q]):
            monomials(
                p[0, i] - geo[q, 0], p[1, i] - geo[q, 1], p[2, i] - geo[q, 2], nc1, itab, ftab, w
            )
            ax, ay, az = l2p(lq, w, nc1, itab)
            for t in range(nt):
                ax += accs[t, 0, i]
                ay += accs[t, 1, i]
                az += accs[t, 2, i]
            out[0, i] = ax
            out[1, i] = ay
            out[2, i] = az
            cancel[i] = ax * ax + ay * ay + az * az < small
    return out, cancel


#: A particle whose acceleration is below ``1 / CANCEL`` of its far field's scale (the sum of
#: ``|M_B| / R**2`` over the expansions that reach it) is summed again exactly: its far field
#: nearly cancels, and the expansions' error, a fraction of that scale, would be amplified as
#: much in its relative error (the centre of a uniform cube or of a lattice, where forces
#: cancel by symmetry). In a uniform cube about ``14 / CANCEL**3`` of the particles qualify.
CANCEL = 30.0


@njit(cache=True, nogil=True)
def _width(n):
    """Columns of the sorted copy and the accumulators: ``N`` rounded up to 8, plus 8."""
    return n + (-n) % 8 + 8


@njit(cache=True, parallel=True, nogil=True)
def _sorted_soa(m, x, perm, shift, s, ms):
    """``(4, W)`` copy in Morton order: ``(x - shift) * s`` and ``m * ms`` (both exact).

    ``W`` is ``N`` rounded up to a multiple of 8, plus 8: the columns past ``N`` are massless
    copies of particle 0, so :func:`backends._pair_kernel.pair_block_lanes` may read whole
    vectors past any range; the array starts on a cache line.
    """
    n = m.shape[0]
    p = empty64(4, _width(n))
    for i in range(n, p.shape[1]):
        for k in range(3):
            p[k, i] = (x[0, k] - shift[k]) * s if n > 0 else 0.0
        p[3, i] = 0.0
    for i in prange(n):
        j = perm[i]
        for k in range(3):
            p[k, i] = (x[j, k] - shift[k]) * s
        p[3, i] = m[j] * ms
    return p


@njit(cache=True, parallel=True, nogil=True)
def _unsort(acc, perm, scale):
    """Return the result in the caller's order times ``scale``, and whether it is finite."""
    n = perm.shape[0]
    out = np.empty((n, 3))
    bad = 0
    for i in prange(n):
        j = perm[i]
        for k in range(3):
            v = acc[k, i] * scale
            out[j, k] = v
            if not np.isfinite(v):
                bad += 1
    return out, bad == 0


# --------------------------------------------------------------------------------------
# driver
# --------------------------------------------------------------------------------------


@njit(cache=True, parallel=True, nogil=True, fastmath=_FM)
def _folded(mp, how, coef, nr):
    """Return the multipoles in a harmonic plan's ``nr`` walk coefficients (``how``, ``coef``)."""
    out = np.zeros((mp.shape[0], nr))
    for q in prange(mp.shape[0]):
        fold(mp[q], out[q], how, coef)
    return out


class _Expansions:
    """Multipoles of every node of a tree at one order, with the order's tables.

    ``mp`` holds the walk's coefficients of the multipoles (:func:`backends._cartesian.plan`):
    all of them, or for the unsoftened kernel (``harmonic``) the ``(p + 1)**2`` of
    ``n_z <= 1`` that the others fold into.
    """

    def __init__(self, tree, order, harmonic):
        self.order = order
        tb = self.tb = tables(order)
        self.plan = pl = plan(order, harmonic)
        self.geo, self.mp = _upward(
            tree.p,
            tree.nodes,
            tree.bounds,
            tree.leaves,
            order,
            tb.ncoef,
            tb.itab,
            tb.ftab,
            tb.off,
            tb.shift,
        )
        if harmonic:
            self.mp = _folded(self.mp, pl.fold, pl.fcoef, pl.red.shape[0])


class _Tree:
    """The sorted particles and the octree: what every evaluation shares (scaled units)."""

    def __init__(self, m, x, softening, leaf_size):
        lo, hi = column_range(x)
        # an axis whose coordinates all lie within a factor 2 of each other (a system far
        # from the origin) is shifted to start at 0: exact (Sterbenz), so separations keep
        # every digit while the expansions work on coordinates of the system's own size
        self.shift = np.where((lo > 0.0) & (hi <= 2.0 * lo), lo, 0.0)
        self.shift = np.where((hi < 0.0) & (lo >= 2.0 * hi), hi, self.shift)
        s = float(_scale(lo - self.shift, hi - self.shift, softening))
        self.fast = s > 0.0  # else: extent beyond 2**179, unscaled, sqrt and division only
        self.s = s if self.fast else 1.0
        self.eps2 = (softening * self.s) ** 2
        half = float(np.max(0.5 * hi - 0.5 * lo))
        ks = float(1 << _LEVELS) / half if half > 0.0 else 0.0
        keys = morton_keys(x, np.ascontiguousarray(lo), ks)
        self.perm = np.argsort(keys, kind="stable")
        keys = keys[self.perm]
        self.ms = mass_scale(m)
        nodes = np.vstack(build(keys, leaf_size))
        del keys
        self.leaves = np.flatnonzero(nodes[3] == 0)
        self.p = _sorted_soa(m, x, self.perm, self.shift, self.s, self.ms)
        self.parent, self.bounds = _levels(nodes[2], nodes[3])
        self.lnode = self.leaves[np.argsort(nodes[0, self.leaves], kind="stable")]
        self.nodes = _leaf_ranges(nodes, self.lnode)

    def evaluate(self, ex, theta, cut, fast, threads, counts=None):
        """Sorted accelerations ``(3, N)`` in scaled units, G = 1, from expansions ``ex``.

        ``self.cancel`` lists (sorted positions) the particles whose far field nearly
        cancels (:data:`CANCEL`): the caller sums them again exactly.
        """
        n = self.perm.shape[0]
        tb = ex.tb
        pl = ex.plan
        prm = np.array([theta * theta, self.eps2, cut, float(fast), ex.order, 0.0])  # not dry
        tasks = _tasks(self.nodes, ex.geo, prm, cut, max(n // (8 * threads), 1))
        accs = _zeros64(threads * 3, self.p.shape[1]).reshape((threads, 3, self.p.shape[1]))
        los = np.zeros((threads, self.nodes.shape[1], ex.mp.shape[1]))
        scs = np.zeros((threads, self.nodes.shape[1]))
        cnts = np.zeros((threads, 4), dtype=np.int64) if counts is None else counts
        _interact(
            tasks,
            self.p,
            accs,
            los,
            scs,
            cnts,
            self.nodes,
            self.lnode,
            ex.geo,
            ex.mp,
            prm,
            pl.dtab,
            pl.rtab,
            pl.ftab,
            pl.rshift,
            _m2l_cost(ex.order, pl.harmonic),
        )
        out, cancel = _downward(
            los,
            scs,
            accs,
            self.p,
            ex.geo,
            self.nodes,
            self.parent,
            self.bounds,
            self.leaves,
            ex.order,
            tb.ncoef,
            tb.itab,
            tb.ftab,
            tb.off,
            tb.shift,
            pl.red,
            pl.expand,
        )
        self.cancel = np.flatnonzero(cancel)  # sorted positions
        return out


#: A system whose particles all lie within this fraction of its length from one straight
#: line is summed directly (see :func:`_collinear`).
LINE_TOLERANCE = 1e-6


def _collinear(x) -> bool:
    """Whether every particle lies within ``LINE_TOLERANCE`` of the system's length of a line.

    On a line the forces from both sides cancel, down to 1e-5 of the typical force for
    some particles of a random line; their per-particle relative error is the expansion's
    error over that small net force, unbounded by any order or angle. Such systems take the
    exact path (direct summation, ``numba_parallel``'s kernel): O(N**2), exact to rounding.
    """
    c = x.mean(axis=0)
    d = x - c
    w, v = np.linalg.eigh(d.T @ d)
    u = v[:, 2]  # the principal axis
    along = d @ u
    length = float(along.max() - along.min())
    perp = d - along[:, None] * u[None, :]
    return float(np.sqrt((perp * perp).sum(axis=1).max())) <= LINE_TOLERANCE * length


def _kernel(m, x, G, softening, st):
    """Evaluate on trusted inputs with the settings ``st`` (:func:`settings`)."""
    if _collinear(x) or is_linear(x):
        return _direct(m, x, G, softening)
    tree = _Tree(m, x, softening, st["leaf_size"])
    threads = numba.get_num_threads()
    scale = G * tree.s * tree.s / tree.ms
    ex = _Expansions(tree, st["order"], st["harmonic"])
    acc = tree.evaluate(ex, st["theta"], st["cut"], tree.fast, threads)
    out, ok = _unsort(acc, tree.perm, scale)
    rows = tree.perm[tree.cancel]
    if rows.shape[0] > 0:  # far fields that nearly cancel: summed again exactly
        out[rows] = accel_rows(x[rows], m, x, G, softening)
    if not ok and tree.fast:  # pairs too close for the float32 estimate (never in `rows`)
        resum_non_finite(out, m, x, G, softening)
    return out


def _check_eps(eps) -> float:
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"eps must be a real number in [1e-12, 1e-2]; got {eps!r}")
    eps = float(eps)
    if not EPS_RANGE[0] <= eps <= EPS_RANGE[1]:
        raise ValueError(f"eps must be in [1e-12, 1e-2] (the calibrated range); got {eps!r}")
    return eps


def _check_options(eps, order, theta, leaf_size):
    eps = _check_eps(eps)
    if order is not None:
        if isinstance(order, bool) or not isinstance(order, numbers.Integral):
            raise TypeError(f"order must be an integer in [1, {MAX_ORDER}] or None; got {order!r}")
        if not 1 <= order <= MAX_ORDER:
            raise ValueError(f"order must be in [1, {MAX_ORDER}]; got {order!r}")
        order = int(order)
    if theta is not None:
        if isinstance(theta, bool) or not isinstance(theta, numbers.Real):
            raise TypeError(f"theta must be a real number in (0, 1) or None; got {theta!r}")
        theta = float(theta)
        if not 0.0 < theta < 1.0:  # (also rejects NaN)
            raise ValueError(f"theta must be in (0, 1) (the opening angle); got {theta!r}")
    if leaf_size is not None:
        if isinstance(leaf_size, bool) or not isinstance(leaf_size, numbers.Integral):
            raise TypeError(f"leaf_size must be an integer >= 1 or None; got {leaf_size!r}")
        if leaf_size < 1:
            raise ValueError(f"leaf_size must be >= 1; got {leaf_size!r}")
        leaf_size = min(int(leaf_size), MAX_SIZE)  # any value >= N means one leaf
    return eps, order, theta, leaf_size


def _bound(order: int, theta: float) -> float:
    """Return the error model's bound ``_C[order] * theta**(order + 1) + _FLOOR``."""
    return min(1.0, _C[min(order, max(_C))] * theta ** (order + 1) + _FLOOR)


def _cut(order: int, harmonic: bool) -> int:
    """Largest ``n_A n_B`` summed directly rather than by a mutual M2L at this order.

    Half the M2L's coefficient steps (``C(p + 6, 6)`` for the full expansions, about a
    third or less of that for the harmonic ones, :class:`backends._cartesian.Plan`): about
    where one M2L inside the walk (0.2-0.3 ns per step on 8 lanes, plus its loads of
    multipoles and stores of locals) costs as much as the direct pairs. Measured, full at
    order 12 (N = 2e5): a cut of 4000 was level with 9282, 2000 and below slower; harmonic
    at orders 8, 12 and 18: half and a quarter of the steps level at 8 and 12, half 1.4x
    faster at 18 (docs/fmm.md).
    """
    return plan(order, harmonic).steps // 2


def _order_for(eps: float) -> int:
    """Return the calibrated order for a requested rms ``eps`` (first row with eps >= e)."""
    for e, p in _ORDER_TABLE:
        if eps >= e:
            return p
    return _ORDER_TABLE[-1][1]


def settings(*, eps=DEFAULT_EPS, order=None, theta=None, leaf_size=None, softening=0.0) -> dict:
    """Return the settings ``accel`` runs with for these options and the rms bound they keep.

    Parameters
    ----------
    eps, order, theta, leaf_size, softening
        As for :func:`accel`. Without softening the kernel is harmonic and the walk keeps
        ``(p + 1)**2`` coefficients per expansion instead of ``C(p + 3, 3)``, so its M2L is
        cheaper and its direct-sum cut lower; the order, the angle and the bound are the
        same.

    Returns
    -------
    dict
        ``order``, ``theta``, ``leaf_size``, ``cut`` (the largest number of particle pairs
        summed directly rather than by an expansion), ``harmonic`` (no softening: the
        harmonic expansions) and ``bound`` (:func:`tolerance`).
    """
    eps, order, theta, leaf_size = _check_options(eps, order, theta, leaf_size)
    harmonic = check_softening(softening) == 0.0
    expert = order is not None or theta is not None
    if order is None and theta is None:
        order = _order_for(eps)
    elif order is None:  # the lowest order whose bound at this theta is within eps
        order = next((p for p in range(1, MAX_ORDER + 1) if _bound(p, theta) <= eps), MAX_ORDER)
    if theta is None:  # the widest angle whose bound at this order is within eps
        c = _C[min(order, max(_C))]
        t = ((eps - _FLOOR) / c) ** (1.0 / (order + 1)) if eps > _FLOOR else 0.0
        theta = min(THETA_RANGE[1], max(THETA_RANGE[0], t))
    if leaf_size is None:
        leaf_size = _LEAF_SIZE
    bound = _bound(order, theta) if expert else eps
    return {
        "order": order,
        "theta": theta,
        "leaf_size": leaf_size,
        "cut": _cut(order, harmonic),
        "harmonic": harmonic,
        "bound": bound,
    }


def tolerance(*, eps=DEFAULT_EPS, order=None, theta=None, leaf_size=None, **_) -> float:
    """Bound on the rms per-particle relative error promised by these options.

    ``eps`` itself on the default path (the calibration picks an order and an opening angle
    whose modelled error ``_C[p] theta**(p + 1)`` is within it). With ``order=`` or
    ``theta=`` given, the model's bound for the settings actually used, which may be above
    or below ``eps``. ``leaf_size`` does not loosen it (it is validated as :func:`accel`
    does, so that a bound is never declared for a call that would raise).

    Parameters
    ----------
    eps : float, optional
        Requested rms per-particle relative error, in [1e-12, 1e-2].
    order : int, optional
    theta : float, optional
    leaf_size : int, optional

    Returns
    -------
    float
    """
    return float(settings(eps=eps, order=order, theta=theta, leaf_size=leaf_size)["bound"])


def accel(
    masses,
    positions,
    G=1.0,
    *,
    softening=0.0,
    eps=DEFAULT_EPS,
    order=None,
    theta=None,
    leaf_size=None,
) -> np.ndarray:
    """Gravitational accelerations by a fast multipole method (approximate, O(N)).

    Parameters
    ----------
    masses : (N,) array_like of real
    positions : (N, 3) array_like of real
    G : float, optional
        Gravitational constant.
    softening : float, optional
        Plummer softening length (>= 0), in the direct sums and the expansions alike
        (the expansions are those of the softened kernel; module docstring).
    eps : float, optional
        Requested rms per-particle relative error, in [1e-12, 1e-2] (default 1e-6): the
        order and the opening angle come from the calibration (:func:`settings`).
    order : int, optional
        Expansion order, 1 to 20 (experts; default from ``eps``).
    theta : float, optional
        Opening angle in (0, 1) of the acceptance criterion
        ``r_A + r_B < theta |z_A - z_B|`` (experts; default from ``eps`` and the order).
    leaf_size : int, optional
        Most particles per leaf (>= 1); coincident points share one leaf whatever its size.

    Returns
    -------
    (N, 3) ndarray of float64
        A new array. Its rms per-particle relative error is bounded by :func:`tolerance`
        of the same options (``eps`` unless ``order``/``theta`` are given).
    """
    st = settings(eps=eps, order=order, theta=theta, leaf_size=leaf_size)
    inp = validate(masses, positions, G, softening)
    if inp.softening != 0.0:  # the softened kernel's expansions
        st = settings(
            eps=eps, order=order, theta=theta, leaf_size=leaf_size, softening=inp.softening
        )
    return evaluate("fmm", inp, _kernel, st)
