r"""Cartesian Taylor expansions of the (softened) Newtonian kernel, for ``fmm``.

The kernel is ``K(r) = 1 / sqrt(|r|**2 + eps**2)`` (``eps`` the Plummer softening, 0 allowed);
the potential of sources ``m_j`` at ``x_j`` is ``Phi(x) = sum_j m_j K(x - x_j)`` and the
acceleration is its gradient, ``a = grad Phi`` (``grad K(x - x_j) = (x_j - x) / r**3``).

Multi-indices ``n = (n_x, n_y, n_z)`` of total degree ``|n| <= p`` are numbered in graded
order (degree 0, then the three of degree 1, ...): ``C(p + 3, 3)`` coefficients, and the
coefficients of degree ``<= d`` are always the first ``C(d + 3, 3)`` (:func:`tables`). With
``x^n = x**n_x y**n_y z**n_z`` and ``n! = n_x! n_y! n_z!``:

* **Multipoles** of a cell about its centre ``z_B``: ``M_n = sum_j m_j b_j^n / n!`` with
  ``b_j = x_j - z_B`` (P2M); shifted to a parent centre by the binomial theorem (M2M).
* **Derivatives** ``D_k(R) = d^k K / dR^k`` for ``|k| <= p`` by the McMurchie-Davidson
  recursion ``R^(j)_{k + e_a} = R_a R^(j+1)_k + k_a R^(j+1)_{k - e_a}`` from
  ``R^(j)_0 = F_j(s) = (-1)**j (2j - 1)!! s**-(j + 1/2)``, ``s = |R|**2 + eps**2``: the
  softened kernel is a function of ``|R|**2`` alone, so the softening enters only through
  ``s`` and every derivative is exact (no expansion in ``eps``).
* **Locals** of a cell about its centre ``z_A`` due to cell ``B``
  (``R = z_A - z_B``): ``L_n = sum_m (-1)**|m| M^B_m D_{n+m}(R)``, ``|n| + |m| <= p``
  (M2L): the Taylor expansion of ``K(R + a - b)`` in the target offset ``a`` and the source
  offset ``b`` together, truncated at total degree ``p``. The same ``D`` serves the mutual
  term ``L^B_n = (-1)**|n| sum_m M^A_m D_{n+m}(R)`` (``D_k(-R) = (-1)**|k| D_k(R)``).
* ``L`` is shifted to a child centre by the Taylor series (L2L) and evaluated at a particle
  ``x = z_A + a`` as ``a_x = sum_n L_{n + e_x} a^n / n!`` (|n| <= p - 1), and likewise for y
  and z (L2P).

**Harmonic expansions** (no softening). ``1 / |R|`` is harmonic, so its derivatives are
traceless: ``D_k = -D_(k - 2e_z + 2e_x) - D_(k - 2e_z + 2e_y)`` wherever ``k_z >= 2``. Applied
to the ``m`` of the M2L sum ``h = m_z // 2`` times, it moves every multipole coefficient onto
the ``(p + 1)**2`` of ``m_z <= 1`` (*folding*, once per node: ``M~_(m_x + 2i, m_y + 2(h - i),
m_z - 2h) += (-1)**h C(h, i) M_m``) without changing any ``L_n``; and the locals obey the same
identity (``L_n = -L_(n - 2e_z + 2e_x) - L_(n - 2e_z + 2e_y)`` for ``n_z >= 2``, exactly, as
every ``L_n`` of one degree sums over the same ``m``), so only the ``(p + 1)**2`` of
``n_z <= 1`` are translated and the rest follow once per node (*expanding*). The M2L then
needs the derivatives of ``k_z <= 2`` only (the recursion in ``z`` refers to lower ``k_z``)
and ``sum_(d1 + d2 <= p) (2 d1 + 1)(2 d2 + 1)`` steps instead of ``C(p + 6, 6)``: 5 551
against 18 564 at order 12 (:func:`plan`). The softened kernel is not harmonic
(``laplacian K = -3 eps**2 s**-5/2``) and keeps every coefficient.

The kernels here are serial and trust their inputs; arrays of coefficients are float64 of
length ``C(p + 3, 3)``, those of the walk's M2L of a :class:`Plan`'s length.
"""

from __future__ import annotations

import functools
from math import comb, factorial
from typing import NamedTuple

import numpy as np
from numba import njit

from backends._simd import vfma, vload, vmul, vscale, vstore, vzero

__all__ = [
    "MAX_ORDER",
    "Plan",
    "Tables",
    "derivatives",
    "fold",
    "l2l",
    "l2p",
    "m2l_lanes",
    "m2l_mutual",
    "m2m",
    "monomials",
    "plan",
    "tables",
    "unfold",
]

MAX_ORDER = 20  #: highest expansion order with tables (factorials and powers stay in range)
FM = {"reassoc", "contract", "afn", "arcp", "nsz"}  #: fast-math flags (no 'nnan'/'ninf')


class Tables(NamedTuple):
    """Index tables of the expansions of order ``p`` (graded numbering, module docstring).

    ``itab`` rows (int64, one column per coefficient ``n``): 0 total degree ``|n|``, 1 the
    axis ``a`` of the recursions (the first with ``n_a > 0``), 2 the index of ``n - e_a``,
    3 that of ``n - 2 e_a`` (0 where ``n_a < 2``), 4-6 those of ``n + e_x``, ``n + e_y``,
    ``n + e_z`` (for ``|n| < p``; else 0). ``ftab`` rows (float64): 0 ``n_a - 1`` (the
    McMurchie-Davidson factor), 1 ``1 / n_a`` (monomials ``b^n / n!``), 2 ``(-1)**|n|``.
    """

    p: int
    ncoef: np.ndarray  #: (p + 2,) int64: ``ncoef[d]`` coefficients of degree < d (0, 1, 4, ...)
    itab: np.ndarray  #: (7, nc) int64 (see above)
    ftab: np.ndarray  #: (3, nc) float64 (see above)
    off: np.ndarray  #: (nc + 1,) int64 offsets of each ``n``'s row in ``shift``
    shift: np.ndarray  #: int32 ``index(n + m)`` for ``m < ncoef[p - |n| + 1]``, row by row


def _graded(p: int) -> list[tuple[int, int, int]]:
    """Return the multi-indices of total degree ``<= p`` in graded order (module docstring)."""
    return [
        (i, j, d - i - j)
        for d in range(p + 1)
        for i in range(d, -1, -1)
        for j in range(d - i, -1, -1)
    ]


@functools.cache
def tables(p: int) -> Tables:
    """Return the index tables of expansions of order ``p`` (0 <= p <= MAX_ORDER)."""
    if not 0 <= p <= MAX_ORDER:
        raise ValueError(f"order must be in [0, {MAX_ORDER}]; got {p}")
    ijk = _graded(p)
    index = {n: c for c, n in enumerate(ijk)}
    nc = len(ijk)
    assert nc == comb(p + 3, 3)
    ncoef = np.array([comb(d + 2, 3) for d in range(p + 2)], dtype=np.int64)
    deg = np.array([sum(n) for n in ijk], dtype=np.int64)
    axis = np.zeros(nc, dtype=np.int64)
    prev = np.zeros(nc, dtype=np.int64)
    prev2 = np.zeros(nc, dtype=np.int64)
    fac = np.zeros(nc)
    rdiv = np.zeros(nc)
    for c, n in enumerate(ijk):
        if c == 0:
            continue
        a = next(k for k in range(3) if n[k] > 0)
        m1 = list(n)
        m1[a] -= 1
        axis[c] = a
        prev[c] = index[tuple(m1)]
        if n[a] >= 2:
            m1[a] -= 1
            prev2[c] = index[tuple(m1)]
        fac[c] = n[a] - 1
        rdiv[c] = 1.0 / n[a]
    sign = np.array([(-1.0) ** d for d in deg])
    rows = []
    for n in ijk:
        width = comb(p - sum(n) + 3, 3)
        rows.append([index[(n[0] + m[0], n[1] + m[1], n[2] + m[2])] for m in ijk[:width]])
    off = np.zeros(nc + 1, dtype=np.int64)
    off[1:] = np.cumsum([len(r) for r in rows])
    shift = np.array([c for r in rows for c in r], dtype=np.int32)
    up = np.zeros((3, nc), dtype=np.int64)
    for c, n in enumerate(ijk):
        if sum(n) < p:
            for a in range(3):
                m1 = list(n)
                m1[a] += 1
                up[a, c] = index[tuple(m1)]
    itab = np.vstack([deg, axis, prev, prev2, up]).astype(np.int64)
    ftab = np.vstack([fac, rdiv, sign])
    assert factorial(p) < 2.0**62
    return Tables(p, ncoef, itab, ftab, off, shift)


class Plan(NamedTuple):
    """Index tables of the M2L in the walk at order ``p`` (:func:`plan`).

    The walk keeps ``nr`` coefficients of each multipole and local expansion, those of the
    multi-indices ``red`` (full numbering), and computes ``nk`` derivatives ``D_k``. Full:
    every coefficient (``nr = nk = C(p + 3, 3)``). Harmonic (no softening): only ``n_z <= 1``
    (``nr = (p + 1)**2``) and ``k_z <= 2`` (``nk = 1 + 3 p (p + 1) / 2``), module docstring.
    """

    p: int
    harmonic: bool
    steps: int  #: contraction steps (fused multiply-adds per lane and side) of one M2L
    red: np.ndarray  #: (nr,) int64 full index of each walk coefficient (graded order)
    dtab: np.ndarray  #: (4, nk) int64: degree, axis a, position of k - e_a, of k - 2 e_a
    rtab: np.ndarray  #: (3, W) int64: walk coefficients of degree < d; row offsets; degree
    ftab: np.ndarray  #: (2, W) float64: k_a - 1 per derivative; (-1)**|n| per coefficient
    rshift: np.ndarray  #: int32 derivative position of ``n + m``, row by row
    fold: np.ndarray  #: (2, F) int64: full ``m`` and walk coefficient it folds into
    fcoef: np.ndarray  #: (F,) float64 the factor
    expand: np.ndarray  #: (3, E) int64: ``n`` (``n_z >= 2``) and the two it follows from


def _add(n, m):
    return (n[0] + m[0], n[1] + m[1], n[2] + m[2])


@functools.cache
def plan(p: int, harmonic: bool) -> Plan:
    """Return the walk's M2L tables at order ``p``: harmonic (unsoftened kernel) or full."""
    t = tables(p)
    ijk = _graded(p)
    index = {n: c for c, n in enumerate(ijk)}
    red = [c for c, n in enumerate(ijk) if not harmonic or n[2] <= 1]
    ks = [c for c, n in enumerate(ijk) if not harmonic or n[2] <= 2]
    rpos = {c: r for r, c in enumerate(red)}
    kpos = {c: k for k, c in enumerate(ks)}
    nr = len(red)
    nk = len(ks)
    # the recursion of a derivative refers to k - e_a and k - 2 e_a: same k_z or lower
    dtab = np.array(
        [[t.itab[0, c], t.itab[1, c], kpos[t.itab[2, c]], kpos[t.itab[3, c]]] for c in ks],
        dtype=np.int64,
    ).T.copy()
    rdeg = [sum(ijk[c]) for c in red]
    rcnt = [sum(1 for d in rdeg if d < e) for e in range(p + 2)]
    rows = []
    for c in red:
        n = ijk[c]
        width = rcnt[p - sum(n) + 1]
        rows.append([kpos[index[_add(n, ijk[red[s]])]] for s in range(width)])
    roff = np.zeros(nr + 1, dtype=np.int64)
    roff[1:] = np.cumsum([len(r) for r in rows])
    width = max(p + 2, nr + 1, nk)
    rtab = np.zeros((3, width), dtype=np.int64)
    rtab[0, : p + 2] = rcnt
    rtab[1, : nr + 1] = roff
    rtab[2, :nr] = rdeg
    ftab = np.zeros((2, width))
    ftab[0, :nk] = [t.ftab[0, c] for c in ks]
    ftab[1, :nr] = [(-1.0) ** d for d in rdeg]
    fold = []
    for c, (a, b, z) in enumerate(ijk):
        h = z // 2 if harmonic else 0
        for i in range(h + 1):  # D_k = -D_(k - 2e_z + 2e_x) - D_(k - 2e_z + 2e_y), h times
            target = index[(a + 2 * i, b + 2 * (h - i), z - 2 * h)]
            fold.append((c, rpos[target], (-1.0) ** h * comb(h, i)))
    expand = [
        (c, index[(a + 2, b, z - 2)], index[(a, b + 2, z - 2)])
        for c, (a, b, z) in sorted(enumerate(ijk), key=lambda e: e[1][2])
        if z >= 2 and harmonic
    ]
    return Plan(
        p,
        harmonic,
        int(roff[-1]),
        np.array(red, dtype=np.int64),
        dtab,
        rtab,
        ftab,
        np.array([k for r in rows for k in r], dtype=np.int32),
        np.array([f[:2] for f in fold], dtype=np.int64).reshape(-1, 2).T.copy(),
        np.array([f[2] for f in fold]),
        np.array(expand, dtype=np.int64).reshape(-1, 3).T.copy(),
    )


@njit(inline="always", fastmath=FM)
def fold(mq, out, how, coef):
    """``out`` (zeroed, walk coefficients) ``+=`` the multipoles ``mq`` folded (:class:`Plan`).

    ``how`` and ``coef`` are the plan's ``fold`` and ``fcoef``.
    """
    for f in range(coef.shape[0]):
        out[how[1, f]] += coef[f] * mq[how[0, f]]


@njit(inline="always", fastmath=FM)
def unfold(lq, expand):
    """Fill the local coefficients with ``n_z >= 2`` from the others (harmonic :class:`Plan`)."""
    for e in range(expand.shape[1]):
        lq[expand[0, e]] = -lq[expand[1, e]] - lq[expand[2, e]]


@njit(inline="always", fastmath=FM)
def monomials(bx, by, bz, nc, itab, ftab, w):
    """``w[c] = b^n / n!`` for the first ``nc`` coefficients."""
    w[0] = 1.0
    for c in range(1, nc):
        a = itab[1, c]
        ba = bx if a == 0 else (by if a == 1 else bz)
        w[c] = w[itab[2, c]] * ba * ftab[1, c]


@njit(inline="always", fastmath=FM)
def derivatives(rx, ry, rz, eps2, p, itab, ftab, work, d):
    """``d[c] = D_c(R)`` for every coefficient (McMurchie-Davidson; ``work`` (nc, p + 1))."""
    nc = d.shape[0]
    inv = 1.0 / (rx * rx + ry * ry + rz * rz + eps2)
    f = np.sqrt(inv)
    for j in range(p + 1):
        work[0, j] = f
        f *= -(2 * j + 1) * inv
    for c in range(1, nc):
        a = itab[1, c]
        ra = rx if a == 0 else (ry if a == 1 else rz)
        c1 = itab[2, c]
        c2 = itab[3, c]
        fc = ftab[0, c]
        for j in range(p - itab[0, c] + 1):
            work[c, j] = ra * work[c1, j + 1] + fc * work[c2, j + 1]
    for c in range(nc):
        d[c] = work[c, 0]


@njit(inline="always", fastmath=FM)
def m2l_mutual(d, ma, sb, la, lb, p, ncoef, itab, ftab, off, shift):
    """``la += (signed M_B) * D`` and ``lb += sign * (M_A * D)`` (module docstring).

    ``sb`` holds ``(-1)**|m| M^B_m``, ``ma`` holds ``M^A_m``.
    """
    nc = d.shape[0]
    for n in range(nc):
        o = off[n]
        width = ncoef[p - itab[0, n] + 1]
        s1 = 0.0
        s2 = 0.0
        for m in range(width):
            dk = d[shift[o + m]]
            s1 += dk * sb[m]
            s2 += dk * ma[m]
        la[n] += s1
        lb[n] += ftab[2, n] * s2


@njit(inline="always", fastmath=FM)
def m2m(mc, mp, w, p, ncoef, itab, off, shift):
    """``mp += M_child shifted``: ``w[j] = d^j / j!`` with ``d = z_child - z_parent``."""
    nc = mc.shape[0]
    for k in range(nc):
        mk = mc[k]
        o = off[k]
        width = ncoef[p - itab[0, k] + 1]
        for j in range(width):
            mp[shift[o + j]] += mk * w[j]


@njit(inline="always", fastmath=FM)
def l2l(lp, lc, w, p, ncoef, itab, off, shift):
    """``lc += L_parent shifted``: ``w[k] = d^k / k!`` with ``d = z_child - z_parent``."""
    nc = lc.shape[0]
    for n in range(nc):
        o = off[n]
        width = ncoef[p - itab[0, n] + 1]
        s = 0.0
        for k in range(width):
            s += lp[shift[o + k]] * w[k]
        lc[n] += s


@njit(inline="always", fastmath=FM)
def l2p(lq, w, nc1, itab):
    """Gradient of the local expansion ``lq`` at offset monomials ``w`` (``nc1`` of them)."""
    ax = 0.0
    ay = 0.0
    az = 0.0
    for c in range(nc1):
        wc = w[c]
        ax += wc * lq[itab[4, c]]
        ay += wc * lq[itab[5, c]]
        az += wc * lq[itab[6, c]]
    return ax, ay, az


LANES = 8  #: M2L interactions computed together, one per SIMD lane (8 float64 in 512 bits)


@njit(cache=True, nogil=True, fastmath=FM)
def m2l_lanes(pa, pb, count, geo, mp, lo, eps2, p, dtab, rtab, ftab, rshift, work, buf):
    """``count <= LANES`` mutual M2L interactions ``(pa[k], pb[k])``, one per SIMD lane.

    ``geo[:, :3]`` are the node centres, ``mp`` the multipoles and ``lo`` the locals they
    add into, both in the walk's coefficients of a :class:`Plan` whose tables are ``dtab``,
    ``rtab``, ``ftab`` and ``rshift``. Scratch: ``work`` ``(p + 1, nk, LANES)`` and ``buf``
    ``(5, max(nr, 5), LANES)``. Lanes past ``count`` repeat the first interaction, not
    stored. The derivatives and the contraction run on :data:`backends._simd.vec8` values,
    one interaction per lane: every coefficient step is a few 512-bit loads and fused
    multiply-adds, with no gather. The contraction takes the coefficients ``n`` of one
    degree four at a time (they share their range of ``m``), so each pair of multipole
    loads serves eight fused multiply-adds, not two: 1.12-1.3x faster at orders 8-12
    (the kernel waits on its loads), and every sum is added in the same order as one ``n``
    at a time, so the results are the same to the last bit.
    """
    nr = mp.shape[1]
    nk = dtab.shape[1]
    rcnt = rtab[0]
    roff = rtab[1]
    rdeg = rtab[2]
    p1 = p + 1
    rr = buf[0]  # rows 0-2: R, row 3: 1 / (R**2 + eps**2), row 4: F_0
    for k in range(LANES):
        a = pa[k] if k < count else pa[0]
        b = pb[k] if k < count else pb[0]
        x = geo[a, 0] - geo[b, 0]
        y = geo[a, 1] - geo[b, 1]
        z = geo[a, 2] - geo[b, 2]
        inv = 1.0 / (x * x + y * y + z * z + eps2)
        rr[0, k] = x
        rr[1, k] = y
        rr[2, k] = z
        rr[3, k] = inv
        rr[4, k] = np.sqrt(inv)
    inv = vload(rr, 3 * LANES)
    f = vload(rr, 4 * LANES)
    cstride = nk * LANES  # work[j, c, lane]: the derivatives D_c = work[0, c] are contiguous
    for j in range(p1):
        vstore(work, j * cstride, f)
        f = vmul(vscale(f, -(2.0 * j + 1.0)), inv)
    for c in range(1, nk):
        ra = vload(rr, dtab[1, c] * LANES)
        o1 = cstride + dtab[2, c] * LANES
        o2 = cstride + dtab[3, c] * LANES
        oc = c * LANES
        fc = ftab[0, c]
        for j in range(p - dtab[0, c] + 1):
            w2 = vscale(vload(work, o2 + j * cstride), fc)
            vstore(work, oc + j * cstride, vfma(ra, vload(work, o1 + j * cstride), w2))
    ma = buf[1]
    sb = buf[2]
    la = buf[3]
    lb = buf[4]
    for k in range(LANES):
        a = pa[k] if k < count else pa[0]
        b = pb[k] if k < count else pb[0]
        for m in range(nr):
            ma[m, k] = mp[a, m]
            sb[m, k] = ftab[1, m] * mp[b, m]
    n = 0
    while n < nr:
        width = rcnt[p - rdeg[n] + 1]
        if n + 4 <= rcnt[rdeg[n] + 1]:
            # four coefficients of one degree (the same m range): each M load serves 8 FMAs
            o0 = roff[n]
            o1 = roff[n + 1]
            o2 = roff[n + 2]
            o3 = roff[n + 3]
            a0 = vzero()
            a1 = vzero()
            a2 = vzero()
            a3 = vzero()
            b0 = vzero()
            b1 = vzero()
            b2 = vzero()
            b3 = vzero()
            for m in range(width):
                s = vload(sb, m * LANES)
                t = vload(ma, m * LANES)
                d = vload(work, rshift[o0 + m] * LANES)
                a0 = vfma(d, s, a0)
                b0 = vfma(d, t, b0)
                d = vload(work, rshift[o1 + m] * LANES)
                a1 = vfma(d, s, a1)
                b1 = vfma(d, t, b1)
                d = vload(work, rshift[o2 + m] * LANES)
                a2 = vfma(d, s, a2)
                b2 = vfma(d, t, b2)
                d = vload(work, rshift[o3 + m] * LANES)
                a3 = vfma(d, s, a3)
                b3 = vfma(d, t, b3)
            vstore(la, n * LANES, a0)
            vstore(la, (n + 1) * LANES, a1)
            vstore(la, (n + 2) * LANES, a2)
            vstore(la, (n + 3) * LANES, a3)
            vstore(lb, n * LANES, vscale(b0, ftab[1, n]))
            vstore(lb, (n + 1) * LANES, vscale(b1, ftab[1, n + 1]))
            vstore(lb, (n + 2) * LANES, vscale(b2, ftab[1, n + 2]))
            vstore(lb, (n + 3) * LANES, vscale(b3, ftab[1, n + 3]))
            n += 4
        else:
            o = roff[n]
            s1 = vzero()
            s2 = vzero()
            for m in range(width):
                d = vload(work, rshift[o + m] * LANES)
                s1 = vfma(d, vload(sb, m * LANES), s1)
                s2 = vfma(d, vload(ma, m * LANES), s2)
            vstore(la, n * LANES, s1)
            vstore(lb, n * LANES, vscale(s2, ftab[1, n]))
            n += 1
    for k in range(count):
        a = pa[k]
        b = pb[k]
        for n in range(nr):
            lo[a, n] += la[n, k]
            lo[b, n] += lb[n, k]
