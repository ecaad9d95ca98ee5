r"""``mpi`` with ``algorithm="tree"``: the Barnes-Hut tree on MPI ranks (approximate).

A distributed tree, not a replicated one: each rank owns a contiguous range of the Morton
curve, builds the octree of its own particles with the builder ``tree`` uses
(:func:`backends._octree.prepare`), receives from every other rank a *locally essential
tree* (LET: the nodes and leaf particles its walk needs from there) and walks its own
targets over its tree plus the LET with ``tree``'s group walk
(:func:`backends.tree_barnes_hut._group_accel`), on its Numba threads. Per call, every
rank of ``comm`` (collective):

1. **Frame.** One ``Allreduce`` of 8 numbers gives the whole system's bounding box, its
   largest ``|m|`` and N. From them every rank takes the same power-of-two scales of
   positions (``s``, ``tree``'s rule) and masses (``ms``) and the same Morton grid, so keys,
   node centres and moments computed on different ranks are in one frame, exactly.
2. **Decomposition** (a parallel sample sort). Each rank sorts its particles by key and
   draws ``S`` samples at equal steps of its cumulative *work* (``S = 4096 / P`` between 16
   and 256, at most n/16); the samples (``allgather``) give ``P - 1`` splitter keys near
   equal shares of the total work, which a few rounds of refinement make accurate to 0.2 %
   of a share (each round one ``Allreduce`` of the work below the ``P - 1`` candidates, by
   interpolation and bisection on the keys), so rank ``r`` owns the keys in
   ``[split[r-1], split[r])``. The work of a particle is what the previous call
   measured for it (interactions of its group per target, see :data:`last_stats`: direct
   source particles plus ``c`` per accepted node, ``c`` = 0.5 for monopoles and 1 for
   quadrupoles, which cost about that much relative to a float64 pair, plus a constant for
   its share of the tree build), carried to the next call as a piecewise-constant density
   over the Morton curve (128 buckets per rank up to 64 ranks, ``8192 / P`` beyond,
   :func:`buckets_for`; exchanged with one ``allgather``); particle counts when there is no
   previous call of the same shape (ranks, N, options). The
   particles move with one ``Alltoallv`` (``x, y, z, m``: 32 bytes each, none for those
   already in place). Identical keys (coincident points) never straddle two ranks, so a rank
   can end up with no particles: it then has no targets and sends nothing.
3. **Local tree** of the owned particles (``prepare`` on the common grid and scales), its
   groups (``tree``'s rule) and its **domain boxes**: up to ``boxes`` (default 48 up to 128
   ranks, fewer beyond: :func:`default_boxes`) tight boxes of nodes of the local tree that
   together cover every target group (the root split greedily, the box of largest
   diagonal**2 x particles first, never below a group; see :func:`domain_boxes`). One
   ``allgather`` gives every rank every rank's boxes.
4. **LET selection**, by each sender for each receiver: a breadth-first walk of the
   sender's tree carrying the set of the receiver's boxes for which the node is still
   undecided (a bit mask). A node whose centre of mass passes ``tree``'s opening test
   ``d_min(c, box) * min(theta, 1) > b`` (and ``d_min > 1e-4`` of the extent) for every
   undecided box is sent as a *moment* (mass, centre, radius, quadrupole): any target group
   inside those boxes accepts it too, because the distance to a group's box is at least the
   distance to a box containing it. Otherwise a leaf is sent with its particles, and an
   internal node is sent with its moments (a group may still accept it) and opened, its
   children inheriting the boxes that did not accept it. The test is made with a relative
   margin of 1e-9, so a receiver's rounding can never reject a node its sender accepted.
   So a receiver gets every node and particle its walk would visit in the sender's tree at
   the same ``theta``, and only what some box of its domain needs (the walk of a group
   need not use all of it: the boxes are coarser than the groups; measured at most 21 % more
   records than the exact union of the groups' walks, :func:`virtual` ``needed=True``).
   All the LETs travel in one ``Alltoallv`` (node records of 8 doubles, 14 with
   quadrupoles; particles 4 doubles).
5. **Walk.** Each rank assembles one tree from its own and the received pieces under a
   virtual root (node 0, always opened; children: its own root, then one root per sender),
   so that ``tree``'s group walk runs over it unchanged, for the rank's own groups only:
   the same opening criterion, direct sums in float64 and multipole terms in float32, the
   same softening treatment. A pair too close for the float32 estimate makes its two rows
   non-finite: the groups holding them are walked again with ``sqrt`` and division
   (``last_stats["walked_again"]`` counts them), every other row stands. Targets whose
   pulls nearly cancel (``tree``'s step 7) are computed again: the flagged targets of all
   ranks (``allgather``, in rounds of at most about one rank's share; a few per 10**4
   particles) are walked (or summed directly) over every rank's *own* particles, and the
   sums over the ranks (``Reduce`` and ``Bcast``) are those over the whole system. Every
   rank sees the same bits and takes the same decisions, so the narrower walks and the
   direct sums of :func:`backends.tree_barnes_hut.refine` are collective too.
   ``last_stats["refined"]`` counts them, ``last_stats["refine_batches"]`` the rounds.
6. **Return.** The accelerations go back to the ranks that passed the particles with the
   reverse ``Alltoallv`` (24 bytes each), in the caller's order.

Accuracy: the opening test, leaves and moments are ``tree``'s; only the top of the tree
differs (cells that straddle two domains are split along the domain boundary), so the
error is that of ``tree`` at the same settings (measured within a few percent of it;
``docs/mpi.md``), and :func:`tolerance` is ``tree``'s bound.

Memory per rank: O(N/P + LET): its particles (plus the imbalance), its tree (``tree``'s
~150 bytes per particle), the received LET and the exchange buffers (32 bytes per particle
sent and received, 24 for the returned accelerations), the ``P x boxes`` domain boxes and
the work density (``P x`` :func:`buckets_for` buckets; in all about 6144 boxes and 8192
buckets, up to 768 and 1024 ranks, then 8 of each per rank). No rank holds all N particles
(:func:`accel_local`; :func:`accel` takes the full arrays, as ``mpi``'s other algorithms do,
and returns the full result on every rank).

After each call :data:`backends.mpi_rows.last_traffic` holds this rank's bulk
communication (the ``Alltoallv`` payloads it sent to other ranks, one message per non-empty
destination; the boxes, samples and work buckets as collectives; the few-number
``Allreduce``/``Alltoall`` of counts not counted) and :data:`last_stats` the LET sizes, the
work, the load imbalance and the seconds of each phase.

``mpi4py.MPI`` is imported lazily, inside the functions.
"""

from __future__ import annotations

import math
import numbers
import time
from contextlib import contextmanager

import numpy as np
from numba import get_num_threads, njit, prange

from backends import tree_barnes_hut as _tbh
from backends._contract import column_range, non_finite_rows, unscale
from backends._geometry import SAMPLE as _LINE_SAMPLE
from backends._geometry import centre_shift, is_linear
from backends._octree import FM, MAX_SIZE, NF, key_grid, morton_keys, prepare

__all__ = [
    "DEFAULT_BOXES",
    "accel",
    "accel_local",
    "buckets_for",
    "check_options",
    "default_boxes",
    "distribute",
    "domain_boxes",
    "last_stats",
    "splitters",
    "tolerance",
    "virtual",
]

DEFAULT_BOXES = 48  #: domain boxes per rank up to 128 ranks (at most 62: one bit each)
_MAX_BOXES = 62
_MARGIN = 1.0 + 1e-9  # the sender's acceptance test, stricter by this relative margin
_BUCKETS = 128  # work buckets per rank carried to the next call, up to 64 ranks
#: Per-particle work of sorting, building, decomposing and returning, in pair units
#: (measured about 0.35 us per particle against 5 ns per interaction of the walk).
_SETUP_WORK = 64.0
#: Cost of one accepted node relative to one float64 pair (monopole, quadrupole).
_NODE_COST = {False: 0.5, True: 1.0}

#: Statistics of this rank's last call (see the module docstring).
last_stats: dict = {}

_WORK: dict = {}  # the previous call's work density (see step 2 of the module docstring)


def tolerance(
    *,
    theta=_tbh.DEFAULT_THETA,
    quadrupole=False,
    group_size=_tbh.DEFAULT_GROUP_SIZE,
    leaf_size=_tbh.DEFAULT_LEAF_SIZE,
    **_,
) -> float:
    """Return the declared rms error bound: ``tree``'s for the same settings.

    See :func:`backends.tree_barnes_hut.tolerance` (``group_size`` matters there: small
    groups loosen it).
    """
    return _tbh.tolerance(
        theta=theta, quadrupole=quadrupole, group_size=group_size, leaf_size=leaf_size
    )


def _mpi():
    from mpi4py import MPI

    return MPI


@contextmanager
def _threads(threads: int):
    import numba

    before = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        yield
    finally:
        numba.set_num_threads(before)


def default_boxes(ranks: int) -> int:
    """Domain boxes per rank by default: 48 up to 128 ranks, then fewer, at least 8.

    Every rank receives every rank's boxes (48 bytes each): ``6144 / P`` keeps that
    allgather at 6 kB x 48 per rank whatever P.
    """
    return max(8, min(DEFAULT_BOXES, 6144 // max(ranks, 1)))


def buckets_for(ranks: int) -> int:
    """Work buckets per rank: 128 up to 64 ranks, then ``8192 / P``, at least 8."""
    return max(8, min(_BUCKETS, 8192 // max(ranks, 1)))


def check_options(theta, quadrupole, leaf_size, group_size, boxes):
    """Validate the tree options; return ``(float, bool, int, int, int or None)``."""
    theta, quadrupole, leaf_size = _tbh._check_options(theta, quadrupole, leaf_size)
    for name, value, top in (("group_size", group_size, None), ("boxes", boxes, _MAX_BOXES)):
        if name == "boxes" and value is None:  # the default for the number of ranks
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{name} must be an integer >= 1; got {value!r}")
        if value < 1 or (top is not None and value > top):
            limit = f"between 1 and {top}" if top else ">= 1"
            raise ValueError(f"{name} must be {limit}; got {value!r}")
    return (
        theta,
        quadrupole,
        leaf_size,
        min(int(group_size), MAX_SIZE),
        None if boxes is None else int(boxes),
    )


# ---------------------------------------------------------------- compiled pieces


@njit(inline="always")
def _record_width(quadrupole):
    """Doubles per LET node record: counts, mass, centre, radius**2, (moments), sum |m|."""
    return 14 if quadrupole else 8


@njit(cache=True, nogil=True)
def _let_select(nodes, f, boxes, theta2, quadrupole):
    """Select the LET of this tree for a receiver with domain ``boxes`` (K, 6), K <= 62.

    Returns ``(records, ranges, n_particles)``: node records in breadth-first order
    (``nchild, nparticles, m, cx, cy, cz, b2``, with quadrupoles the six second moments,
    and the sum of ``|m|``) and the ``start, end`` ranges of the sorted particles of the leaves sent
    with their particles (module docstring, step 4).
    """
    nb = boxes.shape[0]
    width = _record_width(quadrupole)
    cap = 256
    qn = np.empty(cap, dtype=np.int64)
    qm = np.empty(cap, dtype=np.int64)
    recs = np.empty((cap, width))
    ranges = np.empty(cap, dtype=np.int64)
    nr = 0
    npart = 0
    qn[0] = 0
    qm[0] = (1 << nb) - 1
    head = 0
    tail = 1
    near2 = _tbh._NEAR2 * _MARGIN
    while head < tail:
        q = qn[head]
        mask = qm[head]
        head += 1
        b2 = nodes[q, 3]
        nc = int(nodes[q, 7])
        keep = 0
        if b2 >= 0.0:
            cx = nodes[q, 0]
            cy = nodes[q, 1]
            cz = nodes[q, 2]
            lim = b2 * _MARGIN
            for k in range(nb):
                if (mask >> k) & 1:
                    dx = max(boxes[k, 0] - cx, 0.0, cx - boxes[k, 3])
                    dy = max(boxes[k, 1] - cy, 0.0, cy - boxes[k, 4])
                    dz = max(boxes[k, 2] - cz, 0.0, cz - boxes[k, 5])
                    d2 = dx * dx + dy * dy + dz * dz
                    if not (d2 * theta2 > lim and d2 > near2):
                        keep |= 1 << k
        r = head - 1
        if r >= recs.shape[0]:
            grown = np.empty((2 * recs.shape[0], width))
            grown[: recs.shape[0]] = recs
            recs = grown
        recs[r, 0] = 0.0
        recs[r, 1] = 0.0
        if keep != 0 and nc > 0:
            recs[r, 0] = nc
            if tail + nc > qn.shape[0]:
                size = max(2 * qn.shape[0], tail + nc)
                g1 = np.empty(size, dtype=np.int64)
                g2 = np.empty(size, dtype=np.int64)
                g1[:tail] = qn[:tail]
                g2[:tail] = qm[:tail]
                qn = g1
                qm = g2
            c0 = int(nodes[q, 6])
            for c in range(c0, c0 + nc):
                qn[tail] = c
                qm[tail] = keep
                tail += 1
        elif keep != 0:
            s = int(nodes[q, 4])
            e = int(nodes[q, 5])
            recs[r, 1] = e - s
            if 2 * nr + 2 > ranges.shape[0]:
                grown_r = np.empty(2 * ranges.shape[0], dtype=np.int64)
                grown_r[: 2 * nr] = ranges[: 2 * nr]
                ranges = grown_r
            ranges[2 * nr] = s
            ranges[2 * nr + 1] = e
            nr += 1
            npart += e - s
        recs[r, 2] = f[q, 0]
        recs[r, 3] = f[q, 1]
        recs[r, 4] = f[q, 2]
        recs[r, 5] = f[q, 3]
        recs[r, 6] = b2
        if quadrupole:
            for c in range(6):
                recs[r, 7 + c] = f[q, 5 + c]
        recs[r, width - 1] = f[q, 17]
    return recs[:tail].copy(), ranges[: 2 * nr].copy(), npart


@njit(cache=True, nogil=True)
def _pack(recs, ranges, npart, p, out):
    """Write one LET message into ``out``: counts, node records, particles ``x, y, z, m``."""
    out[0] = recs.shape[0]
    out[1] = npart
    k = 2
    for i in range(recs.shape[0]):
        for j in range(recs.shape[1]):
            out[k] = recs[i, j]
            k += 1
    for r in range(ranges.shape[0] // 2):
        for i in range(ranges[2 * r], ranges[2 * r + 1]):
            for c in range(4):
                out[k] = p[c, i]
                k += 1
    return k


@njit(cache=True, nogil=True)
def _let_needed(nodes, boxes, theta2):
    """Mark what walks for each of ``boxes`` (one target group each) use of this tree.

    The exact union the LET must hold: per node 1 if some walk reaches it, 2 if some walk
    reaches it as a leaf it cannot accept (its particles are needed); same test and margin
    as :func:`_let_select`. For measuring how much the domain boxes add to it.
    """
    nn = nodes.shape[0]
    mark = np.zeros(nn, dtype=np.int8)
    stack = np.empty(nn + 1, dtype=np.int64)
    near2 = _tbh._NEAR2 * _MARGIN
    for k in range(boxes.shape[0]):
        top = 1
        stack[0] = 0
        while top > 0:
            top -= 1
            q = stack[top]
            if mark[q] == 0:
                mark[q] = 1
            b2 = nodes[q, 3]
            if b2 < 0.0:
                continue
            cx = nodes[q, 0]
            cy = nodes[q, 1]
            cz = nodes[q, 2]
            dx = max(boxes[k, 0] - cx, 0.0, cx - boxes[k, 3])
            dy = max(boxes[k, 1] - cy, 0.0, cy - boxes[k, 4])
            dz = max(boxes[k, 2] - cz, 0.0, cz - boxes[k, 5])
            d2 = dx * dx + dy * dy + dz * dz
            if d2 * theta2 > b2 * _MARGIN and d2 > near2:
                continue
            nc = int(nodes[q, 7])
            if nc == 0:
                mark[q] = 2
                continue
            c0 = int(nodes[q, 6])
            for c in range(c0, c0 + nc):
                stack[top] = c
                top += 1
    return mark


@njit(cache=True, nogil=True)
def _let_all(nodes, f, p, boxes, bstart, me, theta2, quadrupole):
    """Every receiver's LET message, packed back to back in one send buffer.

    Receiver ``r`` has the domain boxes ``boxes[bstart[r]:bstart[r + 1]]``; ``me`` and the
    receivers without boxes get no message. Returns the buffer and ``(P, 3)`` counts per
    receiver: buffer length, node records, particles.
    """
    nr = bstart.shape[0] - 1
    counts = np.zeros((nr, 3), dtype=np.int64)
    out = np.empty(1024)
    used = 0
    for r in range(nr):
        if r == me or bstart[r + 1] == bstart[r]:
            continue
        recs, ranges, npart = _let_select(nodes, f, boxes[bstart[r] : bstart[r + 1]], theta2,
                                          quadrupole)  # fmt: skip
        size = 2 + recs.size + 4 * npart
        if used + size > out.shape[0]:
            grown = np.empty(max(2 * out.shape[0], used + size))
            grown[:used] = out[:used]
            out = grown
        _pack(recs, ranges, npart, p, out[used : used + size])
        used += size
        counts[r, 0] = size
        counts[r, 1] = recs.shape[0]
        counts[r, 2] = npart
    return out[:used], counts


@njit(cache=True, nogil=True)
def _combine(lnodes, lf, lp, buf, offs, width):
    """One tree from this rank's tree and the received LETs, under a virtual root.

    ``lnodes`` (nl, 8) and ``lf`` (nl, NF) are the local walk rows and node fields,
    ``lp`` (4, n) its sorted particles, ``buf[offs[r]:offs[r + 1]]`` the message of rank
    ``r`` (empty: none). Returns the combined ``nodes``, ``f``, ``p`` and the index of the
    local root (local node ``q > 0`` is combined node ``base + q - 1``).
    """
    nl = lnodes.shape[0]
    nloc = lp.shape[1]
    nsrc = offs.shape[0] - 1
    roots = 1 if nl > 0 else 0
    nn = 1 + nl
    npt = nloc
    for r in range(nsrc):
        if offs[r + 1] > offs[r]:
            roots += 1
            nn += int(buf[offs[r]])
            npt += int(buf[offs[r] + 1])
    nodes = np.empty((nn, 8))
    f = np.zeros((nn, NF))
    p = np.empty((4, npt))
    nodes[0, 0] = 0.0
    nodes[0, 1] = 0.0
    nodes[0, 2] = 0.0
    nodes[0, 3] = np.inf  # never a multipole: always opened
    nodes[0, 4] = 0.0
    nodes[0, 5] = npt
    nodes[0, 6] = 1.0
    nodes[0, 7] = roots
    base = 1 + roots  # where the next piece's non-root nodes start
    root = 1
    lbase = base
    if nl > 0:
        for q in range(nl):
            t = root if q == 0 else base + q - 1
            for k in range(8):
                nodes[t, k] = lnodes[q, k]
            if lnodes[q, 7] > 0:
                nodes[t, 6] = base + lnodes[q, 6] - 1
            for k in range(NF):
                f[t, k] = lf[q, k]
        for k in range(4):
            for i in range(nloc):
                p[k, i] = lp[k, i]
        base += nl - 1
        root += 1
    pos = nloc
    for r in range(nsrc):
        a = offs[r]
        if offs[r + 1] == a:
            continue
        nrec = int(buf[a])
        npart = int(buf[a + 1])
        nxt = 1  # next free slot, in this piece's breadth-first numbering
        ppos = pos
        for i in range(nrec):
            t = root if i == 0 else base + i - 1
            o = a + 2 + i * width
            nc = int(buf[o])
            npr = int(buf[o + 1])
            nodes[t, 0] = buf[o + 3]
            nodes[t, 1] = buf[o + 4]
            nodes[t, 2] = buf[o + 5]
            nodes[t, 3] = buf[o + 6]
            nodes[t, 4] = -1.0  # not an ancestor of any local group; no particles
            nodes[t, 5] = -1.0
            nodes[t, 6] = 0.0
            nodes[t, 7] = 0.0
            if nc > 0:
                nodes[t, 6] = base + nxt - 1
                nodes[t, 7] = nc
                nxt += nc
            elif npr > 0:
                nodes[t, 4] = ppos
                nodes[t, 5] = ppos + npr
                ppos += npr
            for k in range(5):
                f[t, k] = buf[o + 2 + k]
            for k in range(width - 8):  # the second moments, if any
                f[t, 5 + k] = buf[o + 7 + k]
            f[t, 17] = buf[o + width - 1]  # sum |m|: the scale of its pulls (tree, step 7)
        o = a + 2 + nrec * width
        for i in range(npart):
            for k in range(4):
                p[k, pos + i] = buf[o + 4 * i + k]
        pos += npart
        base += nrec - 1
        root += 1
    return nodes, f, p, lbase


@njit(cache=True, parallel=True, nogil=True, fastmath=FM, error_model="numpy")
def _walk_groups(p, f, nodes, groups, nloc, theta, eps2, quadrupole, fast, threads):
    """Accelerations (3, nloc), per group (accepted, direct), far-field scales (nloc,).

    The scale of each target is ``tree``'s (its step 7). ``threads``: Numba's thread count,
    read outside (as for tree's walk).
    """
    out = np.zeros((3, nloc))
    sc = np.zeros(nloc)
    work = np.zeros((groups.shape[0], 2), dtype=np.int64)
    t = min(theta, 1.0)
    theta2 = t * t
    for th in prange(threads):  # blocks of groups dealt round-robin, as in tree's walk
        for li in _tbh.group_blocks(th, threads, groups.shape[0]):
            nm, src = _tbh._group_accel(p, f, nodes, groups[li], theta2, eps2, quadrupole, fast,
                                        out, sc)  # fmt: skip
            work[li, 0] = nm
            work[li, 1] = src
    return out, work, sc


def _walk_again(raw, sc, t, groups, combined, theta, eps2, quadrupole) -> int:
    """Walk again, with ``sqrt`` and division, the groups holding rows that are not finite.

    A pair too close for the float32 estimate makes its two rows of ``raw`` (3, n), in
    ``t``'s sorted order, non-finite and leaves every other row right: the groups (of
    ``groups``, this rank's tree's nodes) holding such rows are walked again over the
    ``combined`` tree ``(p, f, nodes, groups)`` with the exact kernel (``fast=False``), and
    their rows of ``raw`` and ``sc`` replaced in place. Returns the number of groups.
    """
    bad = non_finite_rows(raw.T)
    starts, ends = t.start[groups], t.end[groups]
    sel = np.flatnonzero(np.searchsorted(bad, ends) > np.searchsorted(bad, starts))
    if sel.shape[0] == 0:  # every row finite: only the scaling back overflowed (reported)
        return 0
    cp, cf, cnodes, cgroups = combined
    again, _, sc_again = _walk_groups(cp, cf, cnodes, cgroups[sel], raw.shape[1], theta, eps2,
                                      quadrupole, False, get_num_threads())  # fmt: skip
    rows = np.concatenate([np.arange(starts[g], ends[g]) for g in sel])
    raw[:, rows] = again[:, rows]
    sc[rows] = sc_again[rows]
    return int(sel.shape[0])


@njit(cache=True, parallel=True, nogil=True)
def _bounds(m, x):
    """``(-min x, max x, max |m|)`` of a non-empty system in one parallel pass (7,)."""
    n = m.shape[0]
    chunks = min(n, 64)
    part = np.empty((chunks, 7))
    for c in prange(chunks):
        a = c * n // chunks
        b = (c + 1) * n // chunks
        for k in range(3):
            part[c, k] = -x[a, k]
            part[c, 3 + k] = x[a, k]
        part[c, 6] = abs(m[a])
        for i in range(a, b):
            for k in range(3):
                part[c, k] = max(part[c, k], -x[i, k])
                part[c, 3 + k] = max(part[c, 3 + k], x[i, k])
            part[c, 6] = max(part[c, 6], abs(m[i]))
    out = part[0].copy()
    for c in range(1, chunks):
        for k in range(7):
            out[k] = max(out[k], part[c, k])
    return out


@njit(cache=True, parallel=True, nogil=True)
def _gather_rows(m, x, extra, order):
    """Rows ``x, y, z, m, extra...`` of the particles ``order`` (n, 4 + k), for sending."""
    n = order.shape[0]
    k = extra.shape[1]
    out = np.empty((n, 4 + k))
    for i in prange(n):
        j = order[i]
        out[i, 0] = x[j, 0]
        out[i, 1] = x[j, 1]
        out[i, 2] = x[j, 2]
        out[i, 3] = m[j]
        for c in range(k):
            out[i, 4 + c] = extra[j, c]
    return out


@njit(cache=True, parallel=True, nogil=True)
def _scatter_rows(back, order):
    """``out[order[i]] = back[i]``: the returned accelerations in the caller's order."""
    out = np.empty_like(back)
    for i in prange(order.shape[0]):
        j = order[i]
        out[j, 0] = back[i, 0]
        out[j, 1] = back[i, 1]
        out[j, 2] = back[i, 2]
    return out


# ---------------------------------------------------------------- pure steps (no MPI)


def _point_sums(t, lnodes, eps2, quadrupole, fast):
    """Return ``sums(pts, thetas)`` over one rank's own tree; zeros without particles.

    ``tree``'s point walks, direct rows at angle 0
    (:func:`backends.tree_barnes_hut.point_sums_over`). Built once per refinement, so the
    tree's copy for the direct rows is made once, not on every try or round.
    """
    if t is None:
        return lambda pts, thetas: (np.zeros((3, pts.shape[1])), np.zeros(pts.shape[1]))
    return _tbh.point_sums_over(t.p, t.f, lnodes, eps2, quadrupole, fast)


def frame(lo, hi, mmax, softening):
    """Return the common scales of a system with bounding box ``[lo, hi]`` and largest ``|m|``.

    Returns ``(s, fast, ms, key_lo, key_scale)``: positions times ``s`` and masses times
    ``ms`` (powers of two, as in ``tree``), ``fast`` False where the extent is beyond the
    rescaling (the exact kernel then), and the Morton grid.
    """
    from backends.numba_parallel import _scale

    s = float(_scale(np.asarray(lo, float), np.asarray(hi, float), float(softening)))
    fast = s > 0.0
    ms = 2.0 ** -math.frexp(mmax)[1] if mmax > 0.0 else 1.0
    klo, ks = key_grid(lo, hi)
    return (s if fast else 1.0), fast, ms, klo, ks


def splitters(keys, weights, parts: int) -> np.ndarray:
    """``parts - 1`` keys cutting the weighted ``keys`` into equal shares.

    Part ``r`` is the keys in ``[split[r - 1], split[r])``; equal keys stay together.
    """
    order = np.argsort(keys, kind="stable")
    k = np.asarray(keys)[order]
    c = np.cumsum(np.asarray(weights, dtype=np.float64)[order])
    total = c[-1] if c.size else 0.0
    if parts <= 1:
        return np.empty(0, dtype=np.int64)
    if c.size == 0 or total <= 0.0:
        return np.full(parts - 1, np.iinfo(np.int64).max, dtype=np.int64)
    targets = total * np.arange(1, parts) / parts
    # the key after the one where the cumulative weight reaches each target
    idx = np.searchsorted(c, targets, side="left") + 1
    out = np.full(parts - 1, np.iinfo(np.int64).max, dtype=np.int64)
    ok = idx < k.size
    out[ok] = k[idx[ok]]
    return out


def samples(sorted_keys, sorted_weights, count: int):
    """``count`` keys at equal steps of the cumulative weight, each carrying its step."""
    n = sorted_keys.shape[0]
    if n == 0:
        return np.empty(0, dtype=np.int64), np.empty(0)
    c = np.cumsum(sorted_weights)
    total = float(c[-1])
    count = min(count, n)
    steps = total * (np.arange(count) + 0.5) / count
    idx = np.minimum(np.searchsorted(c, steps, side="left"), n - 1)
    return sorted_keys[idx], np.full(count, total / count)


def domain_boxes(t, group_size: int, kmax: int) -> np.ndarray:
    """Up to ``kmax`` tight boxes (K, 6) of nodes of tree ``t`` covering all its groups.

    Starting from the root, the node of largest ``diagonal**2 x particles`` that is larger
    than a group, and whose children still fit in ``kmax``, is replaced by its children, as
    long as one is left. (Measured against the exact union of what the groups' walks use,
    :func:`virtual` with ``needed=True``, on the benchmark system for P = 4-64: this order
    sends at most 21 % more records than needed, where splitting the largest box first sent
    up to 90 % more, and merging the children that do not fit up to 340 % more.)
    """
    if t is None:
        return np.empty((0, 6))
    size = t.end - t.start
    front = [0]

    def weight(q):
        d = t.f[q, 14:17] - t.f[q, 11:14]
        return float(d @ d) * float(size[q])

    while True:
        room = kmax - len(front) + 1
        fits = [(weight(q), i) for i, q in enumerate(front)
                if 0 < t.nchild[q] <= room and size[q] > group_size]  # fmt: skip
        if not fits:
            break
        _, pick = max(fits)
        q = front[pick]
        c0 = int(t.child[q])
        front[pick : pick + 1] = list(range(c0, c0 + int(t.nchild[q])))
    return np.ascontiguousarray(t.f[front, 11:17])


def work_density(t, groups, work, quadrupole: bool, buckets: int = _BUCKETS):
    """``(first keys, work per particle)`` of up to ``buckets`` runs of the sorted particles."""
    if t is None:
        return np.empty(0, dtype=np.int64), np.empty(0)
    n = t.p.shape[1]
    size = (t.end[groups] - t.start[groups]).astype(np.float64)
    per = work[:, 1] + _NODE_COST[quadrupole] * work[:, 0] + _SETUP_WORK
    w = np.repeat(per, size.astype(np.int64))  # groups are in sorted order, contiguous
    cuts = np.unique(np.linspace(0, n, min(buckets, n) + 1).astype(np.int64)[:-1])
    sums = np.add.reduceat(w, cuts)
    counts = np.diff(np.append(cuts, n))
    return t.keys[cuts].copy(), sums / counts


def weights_from(keys, x, order, density, state_grid, grid) -> np.ndarray:
    """Work of the particles ``x[order]`` (keys ``keys`` on ``grid``) by a previous call's density.

    ``density`` is ``(first keys, work per particle)`` on ``state_grid``; ``None``: ones.
    """
    if density is None:
        return np.ones(keys.shape[0])
    first, per = density
    if first.size == 0:
        return np.ones(keys.shape[0])
    klo, ks = state_grid
    if not (np.array_equal(klo, grid[0]) and ks == grid[1]):
        keys = morton_keys(x, klo, ks)[order]  # the previous call's grid
    idx = np.clip(np.searchsorted(first, keys, side="right") - 1, 0, first.size - 1)
    return per[idx]


# ---------------------------------------------------------------- the distributed call


def _count(nbytes_to: np.ndarray, rank: int) -> None:
    from backends import mpi_rows

    others = np.delete(np.asarray(nbytes_to), rank)
    mpi_rows._count(int(np.count_nonzero(others)), int(others.sum()))


def _alltoallv(comm, send, sendcounts, width, dtype=np.float64):
    """Rows ``send`` (n, width) cut by ``sendcounts`` (rows) to the ranks; returns rows received."""
    MPI = _mpi()
    size, rank = comm.Get_size(), comm.Get_rank()
    sendcounts = np.asarray(sendcounts, dtype=np.int64)
    recvcounts = np.empty(size, dtype=np.int64)
    comm.Alltoall(sendcounts, recvcounts)
    sdispl = np.zeros(size, dtype=np.int64)
    rdispl = np.zeros(size, dtype=np.int64)
    np.cumsum(sendcounts[:-1], out=sdispl[1:])
    np.cumsum(recvcounts[:-1], out=rdispl[1:])
    recv = np.empty((int(recvcounts.sum()), width), dtype=dtype)
    mtype = MPI.DOUBLE if dtype == np.float64 else MPI.INT64_T
    comm.Alltoallv(
        [send, sendcounts * width, sdispl * width, mtype],
        [recv, recvcounts * width, rdispl * width, mtype],
    )
    _count(sendcounts * width * 8, rank)
    return recv, recvcounts


def _signature(comm, n, theta, quadrupole, leaf_size, group_size, boxes):
    return (comm.Get_size(), n, theta, quadrupole, leaf_size, group_size, boxes)


def _frame(comm, m, x, softening):
    """Global box, max |m| and N by one Allreduce; the common scales, grid and centring.

    Returns ``(N, frame, shift)``: ``shift`` (or None) is what :func:`_local` subtracts from
    the positions (:func:`backends._geometry.centre_shift`, exact), and the frame's box is
    the shifted one.
    """
    MPI = _mpi()
    b = _bounds(m, x) if m.shape[0] else np.full(7, -np.inf)
    tot = np.empty(8)
    comm.Allreduce(b, tot[:7], op=MPI.MAX)
    tot[7] = comm.allreduce(m.shape[0], op=MPI.SUM)
    n = int(tot[7])
    if n == 0:
        return n, None, None
    lo, hi = -tot[:3], tot[3:6]
    shift = centre_shift(lo, hi)  # tree's centring, decided on the common box
    if shift is not None:
        lo, hi = lo - shift, hi - shift  # exact, as for every coordinate in the box
    return n, (lo, hi, *frame(lo, hi, tot[6], softening)), shift


def _is_line(comm, x, n: int) -> bool:
    """``tree``'s line test on the whole system, from a strided sample of every rank (collective).

    Each rank contributes every ``ceil(N / SAMPLE)``-th of its particles; one ``allgather``
    gives every rank the same sample and so the same decision.
    """
    if n < _tbh.LINE_MIN_N:
        return False
    step = -(-n // _LINE_SAMPLE)
    sample = np.concatenate(comm.allgather(np.ascontiguousarray(x[::step])))
    return is_linear(sample.reshape(-1, 3), n)


def _refine(comm, skeys, cw, split, allk, allw, tol=2e-3, rounds=24):
    """Refine sampled splitters until each cut is within ``tol`` of a share of the work.

    Each round evaluates the global work below every unfinished splitter (``Allreduce`` of
    ``P - 1`` numbers) and narrows its bracket, by interpolation and bisection in turn. The
    brackets start at the samples around each target (every sample stands for at most
    ``W / S`` of the work of its rank: the estimate is off by at most ``W / S`` in all).
    """
    MPI = _mpi()
    parts = split.size + 1
    top = np.iinfo(np.int64).max

    def below(k):  # global work of the keys < k, for each k
        i = np.searchsorted(skeys, k, side="left")
        local = np.where(i > 0, cw[np.maximum(i - 1, 0)], 0.0) if cw.size else np.zeros(k.size)
        out = np.empty(k.size)
        comm.Allreduce(local, out, op=MPI.SUM)
        return out

    keys = np.concatenate(allk)
    order = np.argsort(keys, kind="stable")
    keys, c = keys[order], np.cumsum(np.concatenate(allw)[order])
    total = float(c[-1]) if c.size else 0.0
    if total <= 0.0:
        return split, 0
    targets = total * np.arange(1, parts) / parts
    slack = max(a.sum() / max(a.size, 1) for a in allw) * len(allw)  # W / S, about
    li = np.searchsorted(c, targets - slack, side="left") - 1
    hi_i = np.searchsorted(c, targets + slack, side="left") + 1
    lo = np.where(li >= 0, keys[np.clip(li, 0, keys.size - 1)], 0)
    hi = np.where(hi_i < keys.size, keys[np.clip(hi_i, 0, keys.size - 1)], top)
    w = below(np.concatenate([lo, hi]))
    wlo, whi = w[: lo.size], w[lo.size :]
    lo = np.where(wlo <= targets, lo, 0)  # a bracket the samples got wrong: the whole range
    wlo = np.where(wlo <= targets, wlo, 0.0)
    hi = np.where(whi >= targets, hi, top)
    whi = np.where(whi >= targets, whi, total)
    cur, wcur = split.copy(), below(split)
    done = 0
    for done in range(1, rounds + 1):
        todo = (np.abs(wcur - targets) > tol * total / parts) & (hi - lo > 1)
        if not todo.any():
            break
        frac = np.clip((targets - wlo) / np.maximum(whi - wlo, 1e-300), 0.05, 0.95)
        step = (hi - lo).astype(np.float64) * (frac if done % 2 else 0.5)
        mid = lo + np.maximum(step, 1.0).astype(np.int64)
        cur = np.where(todo, np.minimum(mid, hi - 1), cur)
        wcur = below(cur)
        up = todo & (wcur <= targets)
        down = todo & (wcur > targets)
        lo, wlo = np.where(up, cur, lo), np.where(up, wcur, wlo)
        hi, whi = np.where(down, cur, hi), np.where(down, wcur, whi)
    return np.maximum.accumulate(cur), done


def _decompose(comm, m, x, extra, grid, sig, stats):
    """Move the particles (and ``extra`` columns) to their owners by the work splitters.

    Returns the owned ``m, x, extra`` (in the order received), the sender-side sort
    ``order`` and the rows sent to each rank (for the way back), and the received counts.
    """
    size = comm.Get_size()
    klo, ks = grid
    keys = morton_keys(x, klo, ks)
    order = np.argsort(keys)
    skeys = keys[order]
    state = _WORK.get("state")
    density = state["density"] if state is not None and state["sig"] == sig else None
    w = weights_from(skeys, x, order, density, (state or {}).get("grid", grid), grid)
    stats["weights"] = "work" if density is not None else "count"
    count = min(max(16, 4096 // size), 256, max(16, skeys.size // 16))
    sk, sw = samples(skeys, w, count)
    allk, allw = zip(*comm.allgather((sk, sw)), strict=True)
    from backends import mpi_rows

    mpi_rows._count_collective(size, 16 * sum(a.size for a in allk))
    split = splitters(np.concatenate(allk), np.concatenate(allw), size)
    if size > 1:
        split, stats["refine_rounds"] = _refine(comm, skeys, np.cumsum(w), split, allk, allw)
    cuts = np.concatenate(([0], np.searchsorted(skeys, split, side="left"), [skeys.size]))
    sendcounts = np.diff(cuts)
    send = _gather_rows(m, x, np.empty((m.shape[0], 0)) if extra is None else extra, order)
    width = send.shape[1]
    recv, recvcounts = _alltoallv(comm, send, sendcounts, width)
    stats["moved"] = int(sendcounts.sum() - sendcounts[comm.Get_rank()])
    del send
    mo = np.ascontiguousarray(recv[:, 3])
    xo = np.ascontiguousarray(recv[:, :3])
    eo = None if extra is None else np.ascontiguousarray(recv[:, 4:])
    return mo, xo, eo, order, sendcounts, recvcounts


def _let_exchange(comm, t, lnodes, myboxes, theta, quadrupole, stats):
    """Domain boxes to everybody, LETs out and in with one Alltoallv; returns buf, offsets."""
    from backends import mpi_rows

    size, rank = comm.Get_size(), comm.Get_rank()
    allboxes = comm.allgather(myboxes)
    mpi_rows._count_collective(size, 48 * sum(b.shape[0] for b in allboxes))
    th = min(theta, 1.0)
    width = _record_width(quadrupole)
    sendcounts = np.zeros(size, dtype=np.int64)
    sent_nodes = sent_particles = 0
    send = np.empty(0)
    if t is not None:
        bstart = np.zeros(size + 1, dtype=np.int64)
        np.cumsum([b.shape[0] for b in allboxes], out=bstart[1:])
        boxes = np.concatenate(allboxes).reshape(-1, 6)
        send, counts = _let_all(lnodes, t.f, t.p, boxes, bstart, rank, th * th, quadrupole)
        sendcounts = counts[:, 0].copy()
        sent_nodes, sent_particles = int(counts[:, 1].sum()), int(counts[:, 2].sum())
    recv, recvcounts = _alltoallv(comm, send.reshape(-1, 1), sendcounts, 1)
    offs = np.zeros(size + 1, dtype=np.int64)
    np.cumsum(recvcounts, out=offs[1:])
    buf = recv.reshape(-1)
    got_nodes = got_particles = 0
    for r in range(size):
        if offs[r + 1] > offs[r]:
            got_nodes += int(buf[offs[r]])
            got_particles += int(buf[offs[r] + 1])
    stats.update(
        let_nodes_sent=sent_nodes,
        let_particles_sent=sent_particles,
        let_bytes_sent=int(8 * send.size),
        let_nodes=got_nodes,
        let_particles=got_particles,
        let_bytes=int(8 * buf.size),
        width=width,
    )
    return buf, offs


def _refine_cancelling(comm, n, t, lnodes, raw, sc, flagged, theta, eps2, quadrupole, fast,
                       stats):  # fmt: skip
    """``tree``'s step 7 across the ranks (collective).

    The targets whose far field nearly cancels, of every rank, are walked again (or summed
    directly) over every rank's own particles, and the sums over the ranks (``Reduce`` to
    rank 0 and ``Bcast``: every rank sees the same bits and takes the same decisions in
    :func:`backends.tree_barnes_hut.refine`) are those over the whole system of ``n``
    particles. The targets travel in rounds of at most :func:`_refine_round` per rank
    (``allgather``), so that no rank holds more than about one rank's share of the
    particles even where most of them qualify (masses of both signs on a lattice); a point's
    result does not depend on the round it is in. Returns this rank's refined targets
    ``(3, len(flagged))``, or None if no rank has any.
    """
    MPI = _mpi()
    size = comm.Get_size()
    k = 0 if t is None else int(flagged.shape[0])
    counts = np.array(comm.allgather(k), dtype=np.int64)
    total = int(counts.sum())
    stats["refined"] = total
    if total == 0:
        return None
    # every rank must agree on fast: a rank redone with sqrt asks all to use it
    fast = bool(comm.allreduce(int(fast), op=MPI.MIN))
    own = _point_sums(t, lnodes, eps2, quadrupole, fast)

    def sums(where, thetas):
        a, s = own(where, thetas)
        both = np.vstack((a, s[None, :]))
        summed = np.empty_like(both)
        comm.Reduce(both, summed, op=MPI.SUM, root=0)
        comm.Bcast(summed, root=0)
        return summed[:3], summed[3]

    walk = _tbh.walks_pay(n, total)  # decided on all the targets, whatever the rounds
    per = _refine_round(n, size)
    rounds = -(-int(counts.max()) // per)
    stats["refine_batches"] = rounds
    out = np.empty((3, k))
    for r in range(rounds):
        lo, hi = min(r * per, k), min((r + 1) * per, k)
        f = flagged[lo:hi]
        mine = np.empty((7, 0)) if t is None else np.vstack(
            (t.p[:3, f], raw[:, f], sc[None, f])
        )  # fmt: skip
        parts = comm.allgather(mine)
        got = np.concatenate(parts, axis=1)
        pts = np.ascontiguousarray(got[:3])
        better = _tbh.refine(sums, pts, got[3:6], got[6], theta, quadrupole, walk)
        start = sum(q.shape[1] for q in parts[: comm.Get_rank()])
        out[:, lo:hi] = better[:, start : start + hi - lo]
    return out


#: Fewest targets per rank in one round of :func:`_refine_cancelling`.
REFINE_ROUND = 256


def _refine_round(n: int, size: int) -> int:
    """Targets per rank and round of :func:`_refine_cancelling`.

    ``n / size**2``, at least :data:`REFINE_ROUND`: a round gathers about one rank's share
    of the particles, ``n / size``.
    """
    return max(REFINE_ROUND, -(-n // (size * size)))


def _local(comm, m, x, G, softening, opts, threads, extra=None, keep=False):
    """Run the distributed call on this rank's particles (module docstring, steps 1-6).

    Returns the accelerations of ``m, x`` in their order; with ``keep`` instead the owned
    particles after the decomposition ``(m, x, extra)`` (no evaluation).
    """
    theta, quadrupole, leaf_size, group_size, nboxes = opts
    size = comm.Get_size()
    nboxes = default_boxes(size) if nboxes is None else nboxes
    stats = {"ranks": size}
    tick = time.perf_counter()
    seconds = {}

    def lap(name):
        nonlocal tick
        now = time.perf_counter()
        seconds[name] = now - tick
        tick = now

    n, fr, shift = _frame(comm, m, x, softening)
    if keep and n == 0:
        return m, x, extra
    if n <= 1 and not keep:
        last_stats.clear()
        last_stats.update(stats, n=n)
        return np.zeros((m.shape[0], 3))
    if not keep and _is_line(comm, x, n):  # tree's rule: no bound holds on a line
        from backends import mpi_rows

        counts = np.array(comm.allgather(m.shape[0]), dtype=np.int64)
        out = mpi_rows._ring_local(m, x, G, softening, comm, counts, threads)
        last_stats.clear()
        last_stats.update(stats, n=n, particles=m.shape[0], direct="line")
        return out
    if shift is not None and not keep:
        x = x - shift  # exact (Sterbenz): the separations are unchanged, bit for bit
    lo, hi, s, fast, ms, klo, ks = fr
    sig = _signature(comm, n, theta, quadrupole, leaf_size, group_size, nboxes)
    # G * s**2 / ms, folded into the unsorting where it is safely normal, else exactly later
    exponent = 2 * (math.frexp(s)[1] - 1) - (math.frexp(ms)[1] - 1)
    gm, ge = math.frexp(G) if G != 0.0 else (0.0, 0)
    folded = math.ldexp(gm, exponent + ge) if abs(exponent + ge) < 900 else None
    scale = 1.0 if folded is None else folded
    with _threads(threads):
        mo, xo, eo, order, sendcounts, recvcounts = _decompose(
            comm, m, x, extra, (klo, ks), sig, stats
        )
        lap("decompose")
        if keep:
            return mo, xo, eo
        nown = mo.shape[0]
        t = lnodes = None
        groups = np.empty(0, dtype=np.int64)
        if nown:
            t = prepare(mo, xo, s, leaf_size, quadrupole, lo=lo, hi=hi, ms=ms)
            lnodes = _tbh._walk_nodes(t.f, t.start, t.end, t.child, t.nchild)
            groups = _tbh._groups(t.start, t.end, t.child, t.nchild, group_size)
        boxes = domain_boxes(t, group_size, nboxes)
        lap("build")
        buf, offs = _let_exchange(comm, t, lnodes, boxes, theta, quadrupole, stats)
        lap("let")
        acc = np.zeros((nown, 3))
        ok = True
        stats["walked_again"] = 0
        work = np.zeros((0, 2), dtype=np.int64)
        raw = sc = None
        eps2 = (softening * s) ** 2
        if nown:
            cnodes, cf, cp, base = _combine(lnodes, t.f, t.p, buf, offs, stats["width"])
            del buf
            cgroups = np.where(groups == 0, 1, base + groups - 1).astype(np.int64)
            raw, work, sc = _walk_groups(cp, cf, cnodes, cgroups, nown, theta, eps2,
                                         quadrupole, fast, get_num_threads())  # fmt: skip
            acc, ok = _tbh._unsort(raw, t.order, scale)
            if not ok and fast:  # a pair below the float32 estimate's range: its groups
                fast = False
                stats["walked_again"] = _walk_again(raw, sc, t, groups, (cp, cf, cnodes, cgroups),
                                                    theta, eps2, quadrupole)  # fmt: skip
                acc, ok = _tbh._unsort(raw, t.order, scale)
            del cnodes, cf, cp
        lap("walk")
        flagged = _tbh.cancelling(raw, sc, _tbh.CANCEL) if nown else np.empty(0, np.int64)
        better = _refine_cancelling(comm, n, t, lnodes, raw, sc, flagged, theta, eps2,
                                    quadrupole, fast, stats)  # fmt: skip
        if better is not None:
            acc[t.order[flagged]] = better.T * scale
        del raw
        lap("refine")
    # work for the next call, and the balance of this one
    sizes = (t.end[groups] - t.start[groups]) if nown else np.zeros(0, dtype=np.int64)
    pairs = float((sizes * (work[:, 1] + _NODE_COST[quadrupole] * work[:, 0])).sum())
    first, per = work_density(t, groups, work, quadrupole, buckets_for(size))
    allfirst, allper, allwork = zip(*comm.allgather((first, per, pairs)), strict=True)
    from backends import mpi_rows

    mpi_rows._count_collective(size, 16 * sum(a.size for a in allfirst))
    _WORK["state"] = {
        "sig": sig,
        "grid": (klo, ks),
        "density": (np.concatenate(allfirst), np.concatenate(allper)),
    }
    # the accelerations go home
    problem = None
    if folded is None:  # scaled back exactly, with the contract's range checks
        try:
            acc = unscale(acc * gm, exponent + ge, "mpi")
        except FloatingPointError as exc:
            problem = str(exc)
    elif not ok:
        problem = "backend 'mpi': the result overflowed float64 (inf or NaN); rescale the units"
    back, _ = _alltoallv(comm, acc, recvcounts, 3)
    with _threads(threads):
        out = _scatter_rows(back, order)
    lap("return")
    problems = [p for p in comm.allgather(problem) if p is not None]
    mean = sum(allwork) / size
    stats.update(
        n=n,
        particles=nown,
        groups=int(groups.size),
        work=pairs,
        work_all=list(allwork),
        imbalance=(max(allwork) / mean) if mean > 0 else 1.0,
        seconds=seconds,
    )
    last_stats.clear()
    last_stats.update(stats)
    if problems:
        raise FloatingPointError(problems[0])
    return out


# ---------------------------------------------------------------- public


def _check_extra(extra, n: int) -> np.ndarray:
    ex = np.asarray(extra, dtype=np.float64)
    ex = np.ascontiguousarray(ex[:, None] if ex.ndim == 1 else ex)
    if ex.ndim != 2 or ex.shape[0] != n or not np.isfinite(ex).all():
        raise ValueError(f"extra must be finite, of shape (N,) or (N, k) with N = {n}; got "
                         f"shape {ex.shape}")  # fmt: skip
    return ex


def _prepare_call(comm, masses, positions, G, softening, options, threads_per_rank, local,
                  extra=None):  # fmt: skip
    """Validate on every rank and agree (collective); return what the call needs."""
    from backends import mpi_rows
    from backends._contract import validate

    comm = mpi_rows._check_comm(comm)
    error = inp = opts = threads = None
    try:
        opts = check_options(*options)
        threads = mpi_rows._check_threads(threads_per_rank)
        inp = validate(masses, positions, G, softening)
        if extra is not None:
            extra = _check_extra(extra, inp.masses.shape[0])
    except Exception as exc:  # re-raised below, after every rank has heard of it
        error = exc
    key = None if inp is None else (inp.masses.shape[0], inp.G, inp.softening, opts)
    keys = mpi_rows._agree(comm, error, key)
    same = {k[1:] for k in keys} if local else set(keys)
    if len(same) > 1:
        what = "(G, softening, options)" if local else "(N, G, softening, options)"
        raise ValueError(
            f"ranks disagree on {what}: {sorted(same, key=str)}; every rank must pass the "
            "same arguments"
        )
    if threads is None:
        threads = mpi_rows.default_threads_per_rank(comm)
    mpi_rows.last_traffic.update(messages=0, bytes=0)
    return comm, inp, opts, threads, extra


def accel_local(
    masses,
    positions,
    G=1.0,
    *,
    softening=0.0,
    comm=None,
    theta=_tbh.DEFAULT_THETA,
    quadrupole=False,
    leaf_size=_tbh.DEFAULT_LEAF_SIZE,
    group_size=_tbh.DEFAULT_GROUP_SIZE,
    boxes=None,
    threads_per_rank=None,
) -> np.ndarray:
    """Distributed tree on local slices: each rank passes and gets only its own particles.

    The system is the union of every rank's slice (any sizes, empty ones too). Memory per
    rank is O(N/P + LET): no rank ever holds all N particles. Collective: every rank of
    ``comm`` must call it with the same ``G``, ``softening`` and tree options.

    Parameters
    ----------
    masses : (n_r,) array_like of real
        This rank's masses.
    positions : (n_r, 3) array_like of real
        This rank's positions.
    G : float, optional
        Gravitational constant.
    softening : float, optional
        Plummer softening length (>= 0), as in ``tree``.
    comm : mpi4py.MPI.Intracomm, optional
        Default ``MPI.COMM_WORLD``.
    theta, quadrupole, leaf_size, group_size : optional
        ``tree``'s options (:func:`backends.tree_barnes_hut.accel`).
    boxes : int, optional
        Domain boxes per rank (1 to 62) describing a rank's targets to the LET senders:
        more boxes, tighter LETs, more boxes to exchange. Default :func:`default_boxes`
        (48 up to 128 ranks, then ``6144 / P``, at least 8).
    threads_per_rank : int, optional
        Numba threads of this rank; default
        :func:`backends.mpi_rows.default_threads_per_rank`.

    Returns
    -------
    (n_r, 3) ndarray of float64
        Accelerations of this rank's particles due to all N, in the order given; the rms
        relative error is bounded by :func:`tolerance`.

    Raises
    ------
    TypeError, ValueError
        Invalid arguments, or ranks disagreeing, raised on every rank.
    FloatingPointError
        The result is not representable in float64 on some rank (raised on every rank).
    """
    options = (theta, quadrupole, leaf_size, group_size, boxes)
    comm, inp, opts, threads, _ = _prepare_call(
        comm, masses, positions, G, softening, options, threads_per_rank, True
    )
    return _local(comm, inp.masses, inp.positions, inp.G, inp.softening, opts, threads)


def distribute(
    masses,
    positions,
    extra=None,
    *,
    comm=None,
    theta=_tbh.DEFAULT_THETA,
    quadrupole=False,
    leaf_size=_tbh.DEFAULT_LEAF_SIZE,
    group_size=_tbh.DEFAULT_GROUP_SIZE,
    boxes=None,
    threads_per_rank=None,
):
    """Move the particles to the ranks that own them in the tree's decomposition.

    The decomposition of :func:`accel_local` with the same options (by the work of the
    previous call of the same shape, else by particle counts): a program that keeps the
    particles where this puts them makes later calls move only the particles whose owner
    changed. Collective.

    Parameters
    ----------
    masses : (n_r,) array_like of real
    positions : (n_r, 3) array_like of real
    extra : (n_r, k) array_like of float64, optional
        Columns that travel with the particles (ids, velocities; float64 holds integers
        below 2**53 exactly).

    Returns
    -------
    masses, positions, extra
        This rank's particles after the exchange (``extra`` None if not given).
    """
    options = (theta, quadrupole, leaf_size, group_size, boxes)
    comm, inp, opts, threads, ex = _prepare_call(
        comm, masses, positions, 1.0, 0.0, options, threads_per_rank, True, extra
    )
    return _local(comm, inp.masses, inp.positions, 1.0, 0.0, opts, threads, extra=ex,
                  keep=True)  # fmt: skip


def accel(
    masses,
    positions,
    G=1.0,
    *,
    softening=0.0,
    comm=None,
    theta=_tbh.DEFAULT_THETA,
    quadrupole=False,
    leaf_size=_tbh.DEFAULT_LEAF_SIZE,
    group_size=_tbh.DEFAULT_GROUP_SIZE,
    boxes=None,
    threads_per_rank=None,
) -> np.ndarray:
    """Distributed tree from full arrays on every rank; every rank gets the full result.

    Each rank starts from its block of rows (N/P), then runs :func:`accel_local`'s
    algorithm; ``Allgatherv`` assembles the result. Collective: every rank of ``comm`` must
    call it with the same arguments. Parameters as :func:`accel_local`, with the full
    ``(N,)`` and ``(N, 3)`` arrays.

    Returns
    -------
    (N, 3) ndarray of float64
    """
    from backends import mpi_rows
    from backends._contract import evaluate

    options = (theta, quadrupole, leaf_size, group_size, boxes)
    comm, inp, opts, threads, _ = _prepare_call(
        comm, masses, positions, G, softening, options, threads_per_rank, False
    )

    def kernel(m, x, G, softening):
        MPI = _mpi()
        counts, displs = mpi_rows.partition(m.shape[0], comm.Get_size())
        r = comm.Get_rank()
        lo, hi = displs[r], displs[r] + counts[r]
        mine = _local(comm, m[lo:hi], x[lo:hi], G, softening, opts, threads)
        out = np.empty((m.shape[0], 3))
        comm.Allgatherv(mine, [out, counts * 3, displs * 3, MPI.DOUBLE])
        mpi_rows._count_collective(comm.Get_size(), out.nbytes)
        return out

    return evaluate("mpi", inp, kernel)


# ---------------------------------------------------------------- virtual ranks (no MPI)


def virtual(
    masses,
    positions,
    ranks: int,
    G=1.0,
    *,
    softening=0.0,
    theta=_tbh.DEFAULT_THETA,
    quadrupole=False,
    leaf_size=_tbh.DEFAULT_LEAF_SIZE,
    group_size=_tbh.DEFAULT_GROUP_SIZE,
    boxes=None,
    weights=None,
    receivers=None,
    evaluate=True,
    needed=False,
):
    """Run the distributed algorithm for ``ranks`` virtual ranks in this process (no MPI).

    The same steps as :func:`accel_local` with the same code: the decomposition (here with
    exact weighted splitters, every key being a sample), local trees, domain boxes, LET
    selection, combined trees and the walk. For tests and for the scaling model
    (``benchmarks/mpi_tree_model.py``), which needs the LET volumes of thousands of ranks.

    Parameters
    ----------
    masses : (N,) array_like of real
    positions : (N, 3) array_like of real
    ranks : int
        Number of virtual ranks P.
    weights : (N,) array_like of float, optional
        Work per particle for the decomposition (default: particle counts).
    receivers : sequence of int, optional
        The ranks whose LETs are selected (from every other rank) and, with ``evaluate``,
        walked; default all.
    evaluate : bool, optional
        Walk the receivers' targets; else only decompose and select (sizes only).
    needed : bool, optional
        Also count, per receiver, the node records and particles that the walks of its
        target groups actually use from the other ranks (``let_needed_records``,
        ``let_needed_particles``): the exact LET, against the one the domain boxes select.

    Returns
    -------
    acc : (N, 3) ndarray of float64 or None
        With ``evaluate`` and all receivers: the accelerations (``G`` applied).
    stats : dict
        Per rank (lists over ranks, None where not a receiver): ``particles``,
        ``let_nodes``, ``let_particles``, ``let_bytes`` received, ``work`` (interactions of
        its walk, pair units), ``work_density`` per particle (caller's order) for a next
        call's ``weights``; and ``splitters``, ``select_seconds`` (selecting and packing
        the receivers' LETs) and ``messages`` (non-empty LET messages to the receivers).
    """
    from backends._contract import validate

    opts = check_options(theta, quadrupole, leaf_size, group_size, boxes)
    theta, quadrupole, leaf_size, group_size, nboxes = opts
    nboxes = default_boxes(ranks) if nboxes is None else nboxes
    inp = validate(masses, positions, G, softening)
    m, x = inp.masses, inp.positions
    n = m.shape[0]
    lo, hi = column_range(x)
    s, fast, ms, klo, ks = frame(lo, hi, float(np.abs(m).max()), inp.softening)
    keys = morton_keys(x, klo, ks)
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    split = splitters(keys, w, ranks)
    order = np.argsort(keys, kind="stable")
    cuts = np.concatenate(([0], np.searchsorted(keys[order], split, side="left"), [n]))
    trees, lnodes, groups, allboxes = [], [], [], []
    for r in range(ranks):
        own = order[cuts[r] : cuts[r + 1]]
        if own.size == 0:
            trees.append(None)
            lnodes.append(None)
            groups.append(np.empty(0, dtype=np.int64))
            allboxes.append(np.empty((0, 6)))
            continue
        t = prepare(m[own], x[own], s, leaf_size, quadrupole, lo=lo, hi=hi, ms=ms)
        trees.append(t)
        lnodes.append(_tbh._walk_nodes(t.f, t.start, t.end, t.child, t.nchild))
        groups.append(_tbh._groups(t.start, t.end, t.child, t.nchild, group_size))
        allboxes.append(domain_boxes(t, group_size, nboxes))
    th = min(theta, 1.0)
    width = _record_width(quadrupole)
    todo = range(ranks) if receivers is None else sorted(set(receivers))
    stats = {
        "particles": np.diff(cuts).tolist(),
        "let_nodes": [None] * ranks,
        "let_particles": [None] * ranks,
        "let_bytes": [None] * ranks,
        "work": [None] * ranks,
        "splitters": split,
        "select_seconds": 0.0,  # selecting and packing the receivers' LETs, all senders
        "messages": 0,  # non-empty LET messages to the receivers
        "let_needed_records": [None] * ranks,
        "let_needed_particles": [None] * ranks,
    }
    acc = np.zeros((n, 3)) if evaluate and receivers is None else None
    density = np.zeros(n)
    eps2 = (inp.softening * s) ** 2
    exponent = 2 * (math.frexp(s)[1] - 1) - (math.frexp(ms)[1] - 1)
    # sender-major, as the ranks do it: one pass of each sender over the receivers' boxes
    wanted = [allboxes[r] if r in set(todo) else np.empty((0, 6)) for r in range(ranks)]
    bstart = np.zeros(ranks + 1, dtype=np.int64)
    np.cumsum([b.shape[0] for b in wanted], out=bstart[1:])
    boxes_all = np.concatenate(wanted).reshape(-1, 6)
    inbox: dict = {r: [np.empty(0)] * ranks for r in todo}
    t0 = time.perf_counter()
    for q in range(ranks):
        if trees[q] is None:
            continue
        out, counts = _let_all(lnodes[q], trees[q].f, trees[q].p, boxes_all, bstart, q,
                               th * th, quadrupole)  # fmt: skip
        ends = np.cumsum(counts[:, 0])
        for r in todo:
            if counts[r, 0]:
                inbox[r][q] = out[ends[r] - counts[r, 0] : ends[r]]
                stats["messages"] += 1
    stats["select_seconds"] = time.perf_counter() - t0
    for r in todo:
        if allboxes[r].shape[0] == 0:
            stats["let_nodes"][r] = stats["let_particles"][r] = stats["let_bytes"][r] = 0
            stats["work"][r] = 0.0
            continue
        if needed:
            gboxes = np.ascontiguousarray(trees[r].f[groups[r], 11:17])
            records = particles = 0
            for q in range(ranks):
                if q == r or trees[q] is None:
                    continue
                mark = _let_needed(lnodes[q], gboxes, th * th)
                records += int(np.count_nonzero(mark))
                two = mark == 2
                particles += int((trees[q].end[two] - trees[q].start[two]).sum())
            stats["let_needed_records"][r] = records
            stats["let_needed_particles"][r] = particles
        msgs = inbox.pop(r)
        sizes = np.array([a.size for a in msgs], dtype=np.int64)
        buf = np.concatenate(msgs) if msgs else np.empty(0)
        offs = np.concatenate(([0], np.cumsum(sizes)))
        stats["let_nodes"][r] = int(sum(int(a[0]) for a in msgs if a.size))
        stats["let_particles"][r] = int(sum(int(a[1]) for a in msgs if a.size))
        stats["let_bytes"][r] = int(8 * buf.size)
        if not evaluate:
            continue
        t = trees[r]
        cn, cf, cp, base = _combine(lnodes[r], t.f, t.p, buf, offs, width)
        cg = np.where(groups[r] == 0, 1, base + groups[r] - 1).astype(np.int64)
        raw, work, sc = _walk_groups(cp, cf, cn, cg, t.p.shape[1], theta, eps2, quadrupole,
                                     fast, get_num_threads())  # fmt: skip
        a, ok = _tbh._unsort(raw, t.order, 1.0)
        mode = fast
        if not ok and fast:
            mode = False
            _walk_again(raw, sc, t, groups[r], (cp, cf, cn, cg), theta, eps2, quadrupole)
            a, ok = _tbh._unsort(raw, t.order, 1.0)
        flagged = _tbh.cancelling(raw, sc, _tbh.CANCEL)
        if flagged.shape[0]:  # tree's step 7, the point walks over every rank's own tree
            per_rank = [
                _point_sums(trees[q], lnodes[q], eps2, quadrupole, mode) for q in range(ranks)
            ]

            def sums(pts, thetas, per_rank=per_rank):
                got = [own(pts, thetas) for own in per_rank]
                return sum(g[0] for g in got), sum(g[1] for g in got)

            pts = np.ascontiguousarray(t.p[:3, flagged])
            walk = _tbh.walks_pay(n, flagged.shape[0])
            better = _tbh.refine(sums, pts, raw[:, flagged], sc[flagged], theta, quadrupole,
                                 walk)  # fmt: skip
            a[t.order[flagged]] = better.T
        gm, ge = math.frexp(inp.G) if inp.G != 0.0 else (0.0, 0)
        own = order[cuts[r] : cuts[r + 1]]
        if acc is not None:
            acc[own] = unscale(a * gm, exponent + ge, "mpi")
        size = t.end[groups[r]] - t.start[groups[r]]
        per = work[:, 1] + _NODE_COST[quadrupole] * work[:, 0]
        stats["work"][r] = float((size * per).sum())
        density[own[t.order]] = np.repeat(per + _SETUP_WORK, size)
    stats["work_density"] = density
    return acc, stats
