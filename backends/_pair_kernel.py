"""The symmetric pair kernel shared by every backend that computes each pair once.

One building block, :func:`pair_block`, computes the interactions of a block of rows ``A``
with a block of rows ``B`` exactly once each (Newton's third law): every pair adds to the
accumulator of ``A``'s particle and subtracts from that of ``B``'s. A *diagonal* block
(``A`` and ``B`` the same range of the same array) computes each unordered pair ``i < j`` of
the range once. Threads (:mod:`backends.numba_parallel`), process pools and MPI ranks differ
only in how they hand out block pairs and add up the accumulators, so they do the same
arithmetic. :func:`pair_block_lanes` is the same loop for the short, unaligned ranges of a
tree's near field (``fmm``): whole aligned vectors with the lanes outside the range masked.

Inputs are *prepared*: a ``(4, N)`` structure-of-arrays copy ``p`` (rows x, y, z, m) whose
coordinates are scaled by a power of two ``s`` so that the system's extent lies in
``[1, 2)`` (see :func:`backends.numba_parallel.prepare`); accumulators are ``(3, N)``
float64 arrays of the sum ``sum_j m_j (x_j - x_i) / r_ij**3`` in scaled units. The caller
multiplies by ``G * s**2`` and checks that the sum is finite: a pair closer than about
``2**-60`` of the extent makes the rows of its two particles, and only those, NaN or
infinite, and the caller must then sum those rows again on the exact path.

Inputs are trusted: validated by the public door of the calling backend.
"""

from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.extending import intrinsic

__all__ = [
    "ALIGN",
    "FLUSH",
    "FM",
    "R2_MIN32",
    "TILE",
    "TILE32",
    "W32",
    "empty32",
    "empty64",
    "finite",
    "inv_r3",
    "pair_block",
    "pair_block32",
    "pair_block_lanes",
    "pair_blocks",
    "wide_vectors",
]

FM = {"reassoc", "contract", "afn", "arcp", "nsz"}  #: fast-math flags, chosen one by one
TILE = 4096  #: sources per cache tile (7 * TILE doubles touched per tile)
ALIGN = 16  #: rows per whole vector block of the pair loops (8 float64 lanes, unrolled twice)
TILE32 = 512  #: sources per cache tile of the float32 kernel
FLUSH = 64  #: rows of float32 partial sums before they are added to the float64 accumulators
R2_MIN32 = 2.0**-80  #: float32 kernel: least eps2 (w = r2**-1.5 <= 2**120 stays finite)
_C53 = float(np.float32(5.0 / 3.0))  # float32 kernel's correction constant, rounded
#: float32 kernel: its sums are the true ones divided by this (the caller rescales). About
#: 1.5, exactly ``1 / (_C53 - 1)``: an exact estimate (``e = 0``) then gets weight 1 with no
#: bias from the rounding of 5/3
W32 = 1.0 / (_C53 - 1.0)


@intrinsic
def wide_vectors(typingctx):
    """Let LLVM vectorize the calling function with the widest registers (zmm on AVX-512).

    LLVM's tuning for Intel server cores with AVX-512 (Skylake-X to Sapphire Rapids) prefers
    256-bit vectors, so Numba's loops get ymm registers even where zmm exist. This sets the
    function attribute ``"prefer-vector-width"="512"`` (clang's ``-mprefer-vector-width=512``)
    on the LLVM function it is compiled into; a function inlined into a ``prange`` body marks
    the parallel region's function. Harmless without AVX-512: the width is capped by what the
    CPU has. No global side effect (other Numba code is untouched).
    """

    def codegen(context, builder, sig, args):
        # llvmlite's attribute set accepts only names it knows; the set itself takes any
        set.add(builder.function.attributes, '"prefer-vector-width"="512"')
        return context.get_dummy_value()

    return types.none(), codegen


@njit(nogil=True, fastmath=False, error_model="numpy")
def finite(t):
    """``np.isfinite(t)`` that stays a real test inside fast-math code.

    Numba tests ``x - x`` for NaN, and a callee inherits its caller's fast-math flags unless
    it sets its own: under ``"reassoc"`` LLVM folds ``x - x`` to 0, so a plain
    ``np.isfinite`` in an ``FM`` function is always true. This function's own
    ``fastmath=False`` keeps its instructions free of the flags, wherever it is inlined.
    """
    return np.isfinite(t)


@njit(inline="always")
def empty64(rows, cols):
    """Uninitialised ``(rows, cols)`` float64 array on a 64-byte (cache line) boundary.

    Numba aligns new arrays to 32 bytes only; a 512-bit load from a row that is not on a
    cache-line boundary touches two lines, and such a split costs the pair loops up to a
    third of their speed (it varied from run to run with the allocator's luck). With
    ``cols`` a multiple of 8 every row is aligned too.
    """
    flat = np.empty(rows * cols + 8, dtype=np.float64)
    off = ((64 - flat.ctypes.data % 64) % 64) // 8
    return flat[off : off + rows * cols].reshape((rows, cols))


@njit(inline="always")
def empty32(rows, cols):
    """Float32 :func:`empty64` (rows aligned when ``cols`` is a multiple of 16)."""
    flat = np.empty(rows * cols + 16, dtype=np.float32)
    off = ((64 - flat.ctypes.data % 64) % 64) // 4
    return flat[off : off + rows * cols].reshape((rows, cols))


@intrinsic
def raw_rsqrt32(typingctx):
    """Let float32 ``1 / sqrt`` in the calling function be the bare hardware estimate.

    Sets the function attribute ``"reciprocal-estimates"="vec-sqrtf:0,sqrtf:0"``: LLVM then
    emits ``vrsqrt14ps`` (AVX-512, 14 bits) or ``vrsqrtps`` (12 bits) for a float32
    ``1 / sqrt`` under ``afn``/``arcp`` without its own Newton step; the caller refines.
    """

    def codegen(context, builder, sig, args):
        set.add(builder.function.attributes, '"reciprocal-estimates"="vec-sqrtf:0,sqrtf:0"')
        return context.get_dummy_value()

    return types.none(), codegen


@njit(inline="always", fastmath=FM, error_model="numpy")
def inv_r3(r2):
    """``r2 ** -1.5`` for ``r2 > 0`` from the float32 estimate, corrected in float64.

    ``y ~ 1 / sqrt(r2)`` is float32's reciprocal square root: the bare hardware estimate
    (``vrsqrtps``, relative error below ``1.5 * 2**-12``) in a function marked with
    :func:`raw_rsqrt32`, with LLVM's Newton step (about 23 bits) elsewhere. With
    ``e = 1 - r2 * y**2`` (``|e| < 7.4e-4``, exact by a fused multiply-add),
    ``r**-3 = y**3 (1 - e)**-1.5`` and the series to ``e**4``
    (``1 + 3/2 e + 15/8 e**2 + 35/16 e**3 + 315/128 e**4``) leaves ``2.71 e**5``: below
    6e-16 (2.5 ulp) for the worst estimate, below 1e-17 for a typical one. (The term in
    ``e**5`` would make it exact to rounding but cost 7 % of the loop's speed; the ulps are
    invisible against the 1e-13 contract.) Where ``r2`` is below float32's normal range
    (``2**-126``; a separation under ``2**-63`` of the scaled extent) the estimate is infinite
    (``vrsqrtps`` takes a subnormal input as zero) and so is the result: the caller's signal
    to take the exact path.
    """
    y = np.float64(np.float32(1.0) / np.sqrt(np.float32(r2)))
    y2 = y * y
    e = 1.0 - r2 * y2
    y3 = y * y2
    return y3 + (y3 * e) * (1.5 + e * (1.875 + e * (2.1875 + e * 2.4609375)))


@njit(inline="always", fastmath=FM, error_model="numpy")
def _pair(xk, yk, zk, xi, yi, zi, eps2, valid):
    """Separation and ``r**-3`` of one pair, weight 0 unless ``valid`` and ``r2 > 0``."""
    dx = xk - xi
    dy = yk - yi
    dz = zk - zi
    r2 = dx * dx + dy * dy + dz * dz + eps2
    ok = r2 > 0.0
    w = inv_r3(r2 if ok else 1.0)
    return dx, dy, dz, (w if ok and valid else 0.0)


@njit(inline="always")
def _sources(pb, acc_b, j0, j1):
    """Return views of columns ``j0`` to ``j1`` of ``pb``'s x, y, z, m and ``acc_b``'s rows.

    Views starting at ``j0``: the loops over them index from 0, with no wraparound test,
    and vectorize.
    """
    return (
        pb[0, j0:j1],
        pb[1, j0:j1],
        pb[2, j0:j1],
        pb[3, j0:j1],
        acc_b[0, j0:j1],
        acc_b[1, j0:j1],
        acc_b[2, j0:j1],
    )


@njit(inline="always", fastmath=FM, error_model="numpy")
def _row(pa, acc_a, i, pb, acc_b, j0, j1, eps2, lo, hi, upper):
    """Row ``i`` of ``pa`` against the sources ``[j0, j1)`` of ``pb``, each pair once.

    ``a_i += m_j w d``, ``a_j -= m_i w d`` (``d = x_j - x_i``, ``w = r**-3``); the source
    ``k`` places after ``j0`` gets weight 0 if ``k < lo``, or ``k >= hi`` where ``upper``
    is true, as does a pair with ``r2 == 0``. Callers pass ``upper`` as a constant, so the
    loop of :func:`pair_block` (``upper`` false) keeps no test it does not need. The one loop
    body of :func:`pair_block` and :func:`pair_block_lanes`. Its pair arithmetic is written
    out rather than taken from :func:`_pair`: through ``_pair`` LLVM compiled the loop with
    masked moves instead of one blend (3 % slower, alternate runs of ``pair_block``).
    """
    xs, ys, zs, ms, bx, by, bz = _sources(pb, acc_b, j0, j1)
    xi = pa[0, i]
    yi = pa[1, i]
    zi = pa[2, i]
    mi = pa[3, i]
    ax = 0.0
    ay = 0.0
    az = 0.0
    for k in range(xs.shape[0]):
        dx = xs[k] - xi
        dy = ys[k] - yi
        dz = zs[k] - zi
        r2 = dx * dx + dy * dy + dz * dz + eps2
        ok = r2 > 0.0
        w = inv_r3(r2 if ok else 1.0)
        w = w if ok and k >= lo and (k < hi or not upper) else 0.0
        sj = ms[k] * w
        si = mi * w
        ax += dx * sj
        ay += dy * sj
        az += dz * sj
        bx[k] -= dx * si
        by[k] -= dy * si
        bz[k] -= dz * si
    acc_a[0, i] += ax
    acc_a[1, i] += ay
    acc_a[2, i] += az


@njit(inline="always", fastmath=FM, error_model="numpy")
def _rows4(pa, acc_a, i, pb, acc_b, j0, j1, eps2, lo, hi):
    """Rows ``i`` to ``i + 3`` of ``pa`` against the sources ``[j0, j1)`` of ``pb``, once each.

    :func:`_row` for four rows in one pass over the sources (lanes before ``lo`` or from
    ``hi`` on weigh 0): each source and its accumulators are loaded and stored once for
    four rows instead of once per row.
    """
    xs, ys, zs, ms, bx, by, bz = _sources(pb, acc_b, j0, j1)
    x0, y0, z0, m0 = pa[0, i], pa[1, i], pa[2, i], pa[3, i]
    x1, y1, z1, m1 = pa[0, i + 1], pa[1, i + 1], pa[2, i + 1], pa[3, i + 1]
    x2, y2, z2, m2 = pa[0, i + 2], pa[1, i + 2], pa[2, i + 2], pa[3, i + 2]
    x3, y3, z3, m3 = pa[0, i + 3], pa[1, i + 3], pa[2, i + 3], pa[3, i + 3]
    ax0 = ay0 = az0 = ax1 = ay1 = az1 = 0.0
    ax2 = ay2 = az2 = ax3 = ay3 = az3 = 0.0
    for k in range(xs.shape[0]):
        valid = k >= lo and k < hi
        xk = xs[k]
        yk = ys[k]
        zk = zs[k]
        mk = ms[k]
        dx0, dy0, dz0, w0 = _pair(xk, yk, zk, x0, y0, z0, eps2, valid)
        dx1, dy1, dz1, w1 = _pair(xk, yk, zk, x1, y1, z1, eps2, valid)
        dx2, dy2, dz2, w2 = _pair(xk, yk, zk, x2, y2, z2, eps2, valid)
        dx3, dy3, dz3, w3 = _pair(xk, yk, zk, x3, y3, z3, eps2, valid)
        s0 = mk * w0
        s1 = mk * w1
        s2 = mk * w2
        s3 = mk * w3
        ax0 += dx0 * s0
        ay0 += dy0 * s0
        az0 += dz0 * s0
        ax1 += dx1 * s1
        ay1 += dy1 * s1
        az1 += dz1 * s1
        ax2 += dx2 * s2
        ay2 += dy2 * s2
        az2 += dz2 * s2
        ax3 += dx3 * s3
        ay3 += dy3 * s3
        az3 += dz3 * s3
        t0 = m0 * w0
        t1 = m1 * w1
        t2 = m2 * w2
        t3 = m3 * w3
        bx[k] -= (dx0 * t0 + dx1 * t1) + (dx2 * t2 + dx3 * t3)
        by[k] -= (dy0 * t0 + dy1 * t1) + (dy2 * t2 + dy3 * t3)
        bz[k] -= (dz0 * t0 + dz1 * t1) + (dz2 * t2 + dz3 * t3)
    acc_a[0, i] += ax0
    acc_a[1, i] += ay0
    acc_a[2, i] += az0
    acc_a[0, i + 1] += ax1
    acc_a[1, i + 1] += ay1
    acc_a[2, i + 1] += az1
    acc_a[0, i + 2] += ax2
    acc_a[1, i + 2] += ay2
    acc_a[2, i + 2] += az2
    acc_a[0, i + 3] += ax3
    acc_a[1, i + 3] += ay3
    acc_a[2, i + 3] += az3


@njit(inline="always", fastmath=FM, error_model="numpy")
def pair_block(pa, acc_a, a0, a1, pb, acc_b, b0, b1, eps2, diagonal):
    """Pairs (i, j), i in ``[a0, a1)`` of ``pa``, j in ``[b0, b1)`` of ``pb``, each once.

    ``a_i += m_j w d``, ``a_j -= m_i w d`` with ``d = x_j - x_i`` and ``w = r**-3``. With
    ``diagonal`` true, ``pa is pb`` and the two ranges are the same: only ``j > i`` is
    computed. A pair with ``r2 == 0`` contributes nothing.

    Loop shapes: the vectorized inner loop pays a scalar remainder when its length is not a
    multiple of the vector block, so a row of a diagonal block starts at the last multiple
    of :data:`ALIGN` (counted from ``b0``) at or below ``i + 1`` and gives the few sources
    ``j <= i`` before it weight 0: every row then runs whole vectors when the block's length
    is a multiple of :data:`ALIGN` (as the padded blocks of ``numba_parallel`` are).
    """
    wide_vectors()
    raw_rsqrt32()  # inv_r3 refines the bare estimate itself
    for jt in range(b0, b1, TILE):
        je = min(jt + TILE, b1)
        for i in range(a0, min(a1, je) if diagonal else a1):
            js = max(jt, b0 + ((i + 1 - b0) // ALIGN) * ALIGN) if diagonal else jt
            # sources before row i (k <= i - js) weigh 0. Every caller passes ``diagonal``
            # as a constant, so a rectangle's loop gets lo = 0 and LLVM drops the test there
            _row(pa, acc_a, i, pb, acc_b, js, je, eps2, i - js + 1 if diagonal else 0, 0, False)


@njit(inline="always", fastmath=FM, error_model="numpy")
def pair_block_lanes(pa, acc_a, a0, a1, pb, acc_b, b0, b1, eps2):
    """:func:`pair_block` of two different ranges, over whole aligned vectors of sources.

    The source loop runs from ``b0`` rounded down to a multiple of 8 to ``b1`` rounded up,
    and the lanes outside ``[b0, b1)`` get weight 0: they add exactly nothing and write
    their accumulators back unchanged. A short range (the leaves of a tree hold a few dozen
    particles) then runs as whole 512-bit vectors from a cache-line boundary instead of a
    misaligned head and a scalar remainder loop, which cost as much as the vectors. The
    caller's ``pb`` and ``acc_b`` must have columns up to ``b1`` rounded up to 8, start on
    a 64-byte boundary and have a row length that is a multiple of 8 (:func:`empty64`), and
    no other thread may write ``acc_b`` meanwhile (the masked lanes are written too). Rows
    go four at a time (:func:`_rows4`): on a leaf-sized block (40 rows against 240 or 96
    sources, hot caches, one thread) 0.68-0.71 ns per pair against 0.77-0.88 one row at a
    time, and 0.80-0.87 against 1.03-1.07.
    """
    wide_vectors()
    raw_rsqrt32()  # inv_r3 refines the bare estimate itself
    c0 = b0 - b0 % 8
    c1 = b1 + (-b1) % 8
    for jt in range(c0, c1, TILE):
        je = min(jt + TILE, c1)
        i = a0
        while i + 4 <= a1:  # lanes before b0 or from b1 on are outside the range
            _rows4(pa, acc_a, i, pb, acc_b, jt, je, eps2, b0 - jt, b1 - jt)
            i += 4
        for r in range(i, a1):
            _row(pa, acc_a, r, pb, acc_b, jt, je, eps2, b0 - jt, b1 - jt, True)


@njit(inline="always", fastmath=FM, error_model="numpy")
def _flush(buf, acc_b, j0, width):
    """``acc_b[:, j0 + k] += buf[:, k]`` (float32 into float64) and ``buf := 0``, k < width."""
    for c in range(3):
        row = acc_b[c, j0 : j0 + width]
        part = buf[c, :width]
        for k in range(width):
            row[k] += np.float64(part[k])
            part[k] = np.float32(0.0)


@njit(inline="always", fastmath=FM, error_model="numpy")
def pair_block32(pa, acc_a, a0, a1, pb, acc_b, b0, b1, eps2, diagonal, buf):
    """Float32 :func:`pair_block`: ``pa``, ``pb`` ``(7, N)`` float32, accumulators float64.

    Rows of ``pa``/``pb``: x, y, z, m, then the residuals of x, y, z (each coordinate is
    the float32 pair ``hi + lo`` of a float64 value), and ``eps2`` float32, at least
    :data:`R2_MIN32` (the caller's ``max(eps**2, R2_MIN32)``). The separation
    ``(x_j - x_i) + (lo_j - lo_i)`` is then accurate to float32 rounding *of the
    separation*, even for a close pair far from the origin. The floor on ``eps2`` keeps
    ``r2 > 0``, so a coincident pair (``d == 0``) contributes exactly 0 with no test in the
    loop; it is a Plummer softening of ``2**-40`` of the scaled extent, which changes
    ``r**-3`` by under ``2**-24`` (float32 rounding) for every separation above ``2**-28``
    of the extent (measured: 1e-7 at most on the test systems). ``r**-3`` comes from the
    bare float32 ``rsqrt`` estimate ``y`` with one first-order correction,
    ``y**3 (1 + 3/2 e)`` with ``e = 1 - r2 y**2`` (leaving ``15/8 e**2``: 3e-8 for the 14-bit
    AVX-512 estimate, 1e-6 for the 12-bit AVX2 one), computed as
    ``y**3 (5/3 - r2 y**2) ~ r**-3 /`` :data:`W32` in four vector operations: the
    accumulated sums are the true ones divided by ``W32``, and the caller multiplies the
    constant back in float64 with its other scale factors. Partial sums
    stay float32 only briefly: a row's sum over one tile of at most :data:`TILE32` sources
    (in vector lanes) and a source's sum over :data:`FLUSH` rows (in ``buf``, a
    ``(3, TILE32)`` float32 scratch) are then added to the float64 accumulators.
    """
    wide_vectors()
    raw_rsqrt32()
    one = np.float32(1.0)
    zero = np.float32(0.0)
    c53 = np.float32(_C53)
    for jt in range(b0, b1, TILE32):
        je = min(jt + TILE32, b1)
        i1 = min(a1, je) if diagonal else a1
        buf[:, : je - jt] = zero
        for i in range(a0, i1):
            # as in pair_block: a diagonal row starts on an ALIGN boundary, earlier sources masked
            js = max(jt, b0 + ((i + 1 - b0) // ALIGN) * ALIGN) if diagonal else jt
            lim = i - js if diagonal else -1
            xs = pb[0, js:je]
            ys = pb[1, js:je]
            zs = pb[2, js:je]
            ms = pb[3, js:je]
            xl = pb[4, js:je]
            yl = pb[5, js:je]
            zl = pb[6, js:je]
            bx = buf[0, js - jt : je - jt]
            by = buf[1, js - jt : je - jt]
            bz = buf[2, js - jt : je - jt]
            xi = pa[0, i]
            yi = pa[1, i]
            zi = pa[2, i]
            mi = pa[3, i]
            xil = pa[4, i]
            yil = pa[5, i]
            zil = pa[6, i]
            ax = zero
            ay = zero
            az = zero
            for k in range(xs.shape[0]):
                dx = (xs[k] - xi) + (xl[k] - xil)
                dy = (ys[k] - yi) + (yl[k] - yil)
                dz = (zs[k] - zi) + (zl[k] - zil)
                r2 = dx * dx + dy * dy + dz * dz + eps2  # eps2 >= R2_MIN32: r2 > 0
                y = one / np.sqrt(r2)  # the bare rsqrt estimate (raw_rsqrt32)
                y2 = y * y
                y3 = y2 * y
                w = y3 * (c53 - r2 * y2)  # y**3 (1 + 3/2 e) / W32, e = 1 - r2 y**2
                if diagonal:  # an int32 compare: one vector of 16 lanes, not two of 8
                    w = w if np.int32(k) > np.int32(lim) else zero
                sj = ms[k] * w
                si = mi * w
                ax += dx * sj
                ay += dy * sj
                az += dz * sj
                bx[k] -= dx * si
                by[k] -= dy * si
                bz[k] -= dz * si
            acc_a[0, i] += np.float64(ax)
            acc_a[1, i] += np.float64(ay)
            acc_a[2, i] += np.float64(az)
            if (i - a0) % FLUSH == FLUSH - 1:
                _flush(buf, acc_b, jt, je - jt)
        _flush(buf, acc_b, jt, je - jt)


@njit(cache=True, nogil=True, fastmath=FM, error_model="numpy")
def pair_blocks(pa, acc_a, pb, acc_b, tasks, eps2):
    """Run the block pairs ``tasks`` one after the other (serial, GIL-free).

    ``tasks`` is a ``(K, 4)`` int64 array of ``(a0, a1, b0, b1)``; a task with
    ``a0 == b0 and a1 == b1`` is a diagonal block (then ``pa``/``acc_a`` must be
    ``pb``/``acc_b``). Use it from worker processes and MPI ranks.
    """
    for t in range(tasks.shape[0]):
        a0, a1, b0, b1 = tasks[t, 0], tasks[t, 1], tasks[t, 2], tasks[t, 3]
        if a0 == b0 and a1 == b1:  # two inlined copies, each specialised to its shape
            pair_block(pa, acc_a, a0, a1, pb, acc_b, b0, b1, eps2, True)
        else:
            pair_block(pa, acc_a, a0, a1, pb, acc_b, b0, b1, eps2, False)
