"""Backend ``numba_parallel``: the primary backend, every thread, tuned to the vector units.

Strategy
--------
Every pair is computed once (Newton's third law) by a branch-free, division-free inner loop
(:func:`backends._pair_kernel.pair_block`) that LLVM vectorizes, and the pairs are spread
over every Numba thread by a round-robin tournament of row blocks:

1. **Structure of arrays.** ``x, y, z, m`` are copied once into the rows of a ``(4, N)``
   array, so the inner loop over sources ``j`` reads four unit-stride streams.
2. **Power-of-two rescaling.** Positions and softening are multiplied by ``s = 2**-k`` so that
   the extent of the system (or the softening, if larger) lies in ``[1, 2)``; the result is
   multiplied back by ``G * s * s``. Scaling by a power of two is exact, so it costs no
   accuracy; it keeps every ``r**2`` below the float32 overflow that step 3 must avoid.
   (Extents above ~1e54, where scaling down could flush an ``r**2`` to zero, take the exact
   path of step 4 instead.)
3. **Reciprocal square root without sqrt or division.** ``r**-3`` is computed from the bare
   float32 hardware estimate ``y ~ 1/sqrt(r2)`` (``vrsqrtps``, 12 bits, emitted by LLVM for
   ``float32(1) / sqrt(float32(r2))`` under ``afn``/``arcp`` with its Newton step switched
   off: :func:`backends._pair_kernel.raw_rsqrt32`) and then corrected in float64 in one
   step: with ``e = 1 - r2 * y**2`` (|e| < 7.4e-4, computed exactly by a fused
   multiply-add), ``r**-3 = y**3 * (1 - e)**(-3/2)``, summed as the series to ``e**4``
   (four fused multiply-adds; the neglected terms are below 6e-16 for the worst estimate,
   1e-17 for a typical one). The result is within a few ulps of ``1 / (r2 * sqrt(r2))``;
   the float64 divider and square-root unit (the bottleneck of the textbook loop) is never
   used. (LLVM's float32 Newton step plus a second-order correction cost 8-15 % more, a
   fifth-order term 4-7 %, on AVX-512 and on AVX2 code alike.)
4. **Selects, not branches.** A coincident pair (``r2 == 0`` with zero softening) gets
   ``r2 := 1`` and a weight 0 by a vector blend, so it contributes exactly nothing. A pair so
   close that ``r2 * s**2`` is below float32's normal range (``2**-126``: a separation below
   ~1e-19 of the system's extent) gets an infinite estimate (``vrsqrtps`` takes a subnormal
   input as zero) and poisons the sums of its two rows; the kernel then detects the
   non-finite rows and sums those rows again, over all particles, with the exact ``sqrt``
   and division loop (:func:`_exact_rows`), so no input gets a silently wrong answer from
   the fast path. (Until 2026-12-05 every row was summed again: on a cusp of 10^5
   particles with a few such pairs, 21.9 s against 2.8 s now, Zen 4, 2 threads. The test
   of finiteness is :func:`backends._pair_kernel.finite`, because Numba's own
   ``np.isfinite`` is folded to True under these fast-math flags; until that day the
   small-N path returned NaN rows for such a pair, and the call raised
   ``FloatingPointError`` on valid input.)
5. **Widest vectors.** LLVM's tuning for Intel server cores with AVX-512 (Skylake-X to
   Sapphire Rapids, e.g. Ice Lake Xeon) prefers 256-bit vectors, so a plain Numba loop gets
   ymm registers there even though zmm exist. The pair loop sets the LLVM function attribute
   ``"prefer-vector-width"="512"`` on its own function
   (:func:`backends._pair_kernel.wide_vectors`, the equivalent of clang's
   ``-mprefer-vector-width=512``; no global side effect), which made it 1.4-1.6x faster on
   an Ice Lake Xeon: 8 float64 lanes per instruction instead of 4. :func:`simd_report` reads
   the width back from the compiled assembly.
6. **Round-robin tournament of row blocks (any thread count).** With ``T =
   numba.get_num_threads()`` at call time, the rows are cut into ``nb = 2 T`` equal blocks
   (fewer if a block would have under :data:`MIN_BLOCK` rows; :func:`block_count`). The
   circle method (:func:`schedule`) orders the ``nb (nb - 1) / 2`` block pairs into
   ``nb - 1`` rounds of ``nb / 2`` pairs each, in which every block occurs exactly once.
   Each round is one ``prange`` over its block pairs: the pairs of a round touch disjoint
   rows of the single shared ``(3, N)`` accumulator, so they run concurrently with no
   locks, atomics or per-thread copies; the pairs within a block are done in round 0 by the
   task that holds the block. A round has ``T`` tasks of equal size, one per thread
   (``prange`` gives each thread one contiguous, equal share of a round's tasks), so every
   thread Numba starts does a share (:func:`thread_work` counts the pairs per thread, by
   ``numba.get_thread_id()``).
7. **Cache blocking.** Within a block pair the sources are swept in tiles of ``TILE``
   columns, so the ``7 * TILE`` doubles a tile touches stay in the L2 cache while all rows of
   the block pass over it: no cache cliff up to N = 1e5.
8. **Whole vectors, aligned.** The rows are padded to a multiple of ``ALIGN = 16`` with
   massless copies of particle 0 (they add exactly nothing) and every block edge is a
   multiple of 16 (:func:`block_edges`), so an inner loop never ends in a scalar remainder;
   a row of a diagonal block starts on a 16-row boundary with the few sources before it
   masked out. The scratch arrays start on a cache line
   (:func:`backends._pair_kernel.empty64`: Numba aligns to 32 bytes only, and 512-bit loads
   that straddle two lines cost the float32 loop up to a third of its speed, varying from
   run to run with the allocator).
9. **Small N: one parallel region.** Up to :data:`LANES_MAX_N` particles the tournament's
   ``2 T - 1`` rounds (each ending in a barrier) cost more than they save, so :func:`_lanes`
   runs ``L = T`` lanes in a single region (fewer if blocks would get under
   :data:`MIN_BLOCK` rows; :func:`lane_count`): lane ``c`` takes the rows of blocks ``c`` and
   ``2 L - 1 - c`` of ``2 L`` against themselves and every later row (equal pair counts, long
   rows), into its own ``(3, N)`` accumulator; a second, row-parallel pass sums the lanes in
   lane order. At N = 1 000 on 2 threads this took the kernel from 2.3-2.5 to 3.4-3.5 x
   10^9 interactions/s; at 3 000 it still gained 10-25 %, at 6 000-10 000 the two were
   level. Preparation, lanes and sum are one compiled call (no Python between them).
10. **Fast-math flags chosen one by one**: ``reassoc`` (vector partial sums), ``contract``
   (fused multiply-add), ``afn`` and ``arcp`` (the float32 estimate) and ``nsz``; never
   ``nnan``/``ninf``, which would let LLVM drop the NaN signalling of step 4.
   ``error_model="numpy"`` removes Python's division-by-zero check, the branch that otherwise
   stops the vectorizer.

Memory: scratch is the ``(4, N)`` SoA copy and one shared ``(3, N)`` float64 accumulator,
56 bytes per particle, independent of the thread count (float32 mode: a ``(7, N)`` float32
copy and the same accumulator, 52 bytes per particle, plus a 6 KiB buffer per running task).
At N = 1e6 and T = 128 that is 56 MB, the size of the inputs and output themselves; a
per-thread accumulator design would need 128 x 24 MB = 3 GB there. The small-N lanes use
per-thread accumulators, but only up to N = :data:`LANES_MAX_N` = 8 192: at most 192 KiB
per thread (24 MiB at T = 128), whatever N. The schedule has
``nb (nb - 1) / 2`` block pairs (32 640 at T = 128), built once per block count and cached.

Determinism: for a given thread count the blocks, the rounds (or lanes) and the order in
which each accumulator element receives its contributions are fixed (a block is touched by one task
per round, rounds run in order), whichever thread runs which task: two calls give bitwise
identical results. Another thread count changes the blocks, hence the summation order: the
results then agree to rounding (measured below 5e-14 between 1, 2, 3, 8, 16 and 64
threads; tested against 1e-13).

Accuracy (float64): each pair term carries a few ulps of rounding, as in the plain loop;
only the order of summation differs. Measured by the project's metric (2026-12-01): 3.7e-15
against the ``python`` oracle at N = 1000, ~3e-14 against ``numba`` at N = 10 000 (mostly
``numba``'s own sequential summation error). The bound tested is 1e-13.

Float32 mode (``precision="float32"``, :func:`backends._pair_kernel.pair_block32`): the
same tournament over a float32 copy. Coordinates are centred on the bounding box, scaled
by a power of two, and split into float32 pairs ``hi + lo``; a separation is computed as
``(hi_j - hi_i) + (lo_j - lo_i)``, accurate to float32 rounding of the separation itself
(float32 coordinates alone give errors of 1e-2 on a Plummer sphere at N = 3e4: close pairs
in the core lose their digits to the coordinates' magnitude). Masses are scaled by a power
of two into ``[1, 2)``. ``r**-3`` is the cube of the bare float32 hardware estimate
(``vrsqrt14ps``, 14 bits, or ``vrsqrtps``, 12 bits, on AVX2;
:func:`backends._pair_kernel.raw_rsqrt32`) with one first-order correction (3e-8 and 1e-6
relative), in four vector operations (see :func:`backends._pair_kernel.pair_block32`; the
constant :data:`backends._pair_kernel.W32` is multiplied back at the end). Each row's sum
over a tile of 512 sources and each source's sum over 64 rows are float32, then added to
the float64 accumulator. The
softening is at least 2**-40 of the scaled extent (``eps2 >= 2**-80``: ``r2 > 0``, so a
coincident pair contributes 0 with no test in the loop; this changes ``r**-3`` by less than
float32 rounding for every separation above ~4e-9 of the extent). Inputs float32 cannot hold
(extent above 2**179, a non-zero mass below 2**-100 of the largest, or a softening above
2**60 half-extents) and a non-finite result are computed in float64 instead, and so are the
rows of particles with a partner closer than 2**-26 of the extent (found by a sort before
the kernel runs: :mod:`backends._float32_guard`), so a system spanning 1e-8 to 1e8 gets
float64 forces where float32 would lose them. Measured max / rms per-particle relative error
against float64 (``benchmarks/float32_accuracy.py``, 2026-12-01, AVX-512): benchmark
system 1.2e-6 / 6.7e-8 (N = 2 000), 5.7e-7 / 3.9e-8 (N = 10 000), 8.5e-7 / 2.7e-8
(N = 100 000); Plummer sphere with masses log-uniform over five decades 1.0e-6 / 6.9e-8,
2.3e-6 / 5.1e-8 and 2.1e-6 / 2.9e-8. The bound promised and tested is
:data:`backends._contract.FLOAT32_TOLERANCE` = 1e-4. It does not hold for a particle whose
force is a near-cancellation of much larger pair forces (inside a lattice); use float64
there. Throughput and these limits, measured: see
``docs/numba_parallel.md``.

Honours ``numba.set_num_threads`` and ``NUMBA_NUM_THREADS``. Compiled kernels are cached on
disk (``cache=True``); note that Numba's cache is keyed to this file, so after editing
``backends/_pair_kernel.py`` the cache must be cleared (``__pycache__/*.nbi``, ``*.nbc``).

:func:`accel_block` is the serial, GIL-free kernel for one block of targets against a set of
sources (steps 1-5 and 7 without symmetry), used by the process and MPI backends to compute
their share of the rows.
"""

from __future__ import annotations

import functools

import numba
import numpy as np
from numba import njit, prange

from backends import _float32_guard
from backends._contract import check_precision, evaluate, non_finite_rows, validate
from backends._pair_kernel import (
    ALIGN,
    R2_MIN32,
    TILE,
    TILE32,
    W32,
    empty32,
    empty64,
    finite,
    inv_r3,
    pair_block,
    pair_block32,
    raw_rsqrt32,
    wide_vectors,
)
from backends._pair_kernel import FM as _FM

__all__ = [
    "LANES_MAX_N",
    "MIN_BLOCK",
    "TILE",
    "accel",
    "accel_block",
    "accel_rows",
    "block_count",
    "block_edges",
    "lane_count",
    "prepare",
    "resum_non_finite",
    "schedule",
    "simd_report",
    "thread_work",
]

MIN_BLOCK = 64  #: fewest rows per block (smaller N gets fewer blocks than 2 per thread)
BLOCKS_PER_THREAD = 2  #: row blocks per thread (at least 2: a round has nb / 2 block pairs)
#: Largest N for the small-N lanes path (per-thread accumulators, one parallel region); the
#: tournament above it. Its scratch is 24 B x 8192 = 192 KiB per thread (24 MiB at T = 128).
LANES_MAX_N = 8192
_ROWS = 256  # rows per parallel block of the exact path
_MASS_RANGE = 2.0**-100  # float32 mode: smaller masses relative to the largest use float64
_inv_r3 = inv_r3


@njit(inline="always", fastmath=_FM, error_model="numpy")
def _scale(lo, hi, softening):
    """Power of two ``s`` putting ``max(extent, softening) * s`` in ``[1, 2)``; 0: use exact.

    ``s`` is capped so that the scaled coordinates stay below 2**1000. A half-extent above
    2**179 gets 0 (the exact path): scaling it down could flush an ``r**2`` that float64
    still resolves to zero.
    """
    half = 0.5 * softening  # half-extents and halves of coordinates cannot overflow
    amax = 0.0
    for k in range(3):
        half = max(half, 0.5 * hi[k] - 0.5 * lo[k])
        amax = max(amax, max(abs(lo[k]), abs(hi[k])))
    if half > 2.0**179:
        return 0.0
    s = 1.0
    if half > 0.0:
        while half * s >= 1.0:
            s *= 0.5
        while half * s < 0.5 and amax * s < 2.0**999:
            s *= 2.0
    return s


@njit(inline="always", fastmath=_FM, error_model="numpy")
def _bounds(x, lo, hi):
    for i in range(x.shape[0]):
        for k in range(3):
            lo[k] = min(lo[k], x[i, k])
            hi[k] = max(hi[k], x[i, k])


@njit(inline="always", fastmath=_FM, error_model="numpy")
def _soa(m, x, s, width=0):
    """``(4, max(N, width))`` array of scaled x, y, z and the masses.

    Columns past ``N`` are padding: massless copies of particle 0, which add exactly nothing
    to any sum (their weight ``m = 0``; a pad meets particle 0 and every other pad at
    ``r2 == 0`` or ``r2 == eps2`` with ``d == 0``).
    """
    n = m.shape[0]
    p = empty64(4, max(n, width))
    for i in range(n):
        p[0, i] = x[i, 0] * s
        p[1, i] = x[i, 1] * s
        p[2, i] = x[i, 2] * s
        p[3, i] = m[i]
    for i in range(n, p.shape[1]):
        p[0, i] = p[0, 0]
        p[1, i] = p[1, 0]
        p[2, i] = p[2, 0]
        p[3, i] = 0.0
    return p


@njit(cache=True, nogil=True, fastmath=_FM, error_model="numpy")
def _prepare(m, x, softening, width=0):
    """Scale ``s`` (0: use the exact path) and the scaled SoA copy, padded to ``width``."""
    lo = np.full(3, np.inf)
    hi = np.full(3, -np.inf)
    _bounds(x, lo, hi)
    s = _scale(lo, hi, softening)
    return _soa(m, x, s if s > 0.0 else 1.0, width), s


prepare = _prepare  #: ``prepare(m, x, softening[, width]) -> (p, s)``: the float64 kernel inputs


@njit(cache=True, nogil=True, fastmath=_FM, error_model="numpy")
def _prepare32(m, x, softening, width=0):
    """Float32 ``(7, N)`` SoA of centred, scaled coordinates and scaled masses.

    Returns ``(p, s, sm)``: rows x, y, z, m, and the float32 residuals of x, y, z
    (``hi + lo`` holds each coordinate to about 2**-48 of the extent). Coordinates are
    ``(x - c) * s`` with ``c`` the centre of the bounding box and ``s`` a power of two
    putting ``max(extent, softening) * s`` in ``[1, 2)``; masses ``m * sm`` with ``sm`` a
    power of two putting the largest mass in ``[1, 2)``. ``s == 0``: the inputs are out
    of float32's reach (extent above 2**179, or a non-zero mass below 2**-100 of the
    largest); the caller uses float64. Columns past ``N`` (up to ``width``) are massless
    copies of particle 0 (see :func:`_soa`).
    """
    n = m.shape[0]
    p = empty32(7, max(n, width))
    lo = np.full(3, np.inf)
    hi = np.full(3, -np.inf)
    _bounds(x, lo, hi)
    half = 0.5 * softening
    for k in range(3):
        half = max(half, 0.5 * hi[k] - 0.5 * lo[k])
    mmax = 0.0
    mmin = np.inf
    for i in range(n):
        mmax = max(mmax, m[i])
        if m[i] > 0.0:
            mmin = min(mmin, m[i])
    if half > 2.0**179 or (mmax > 0.0 and mmin < mmax * _MASS_RANGE):
        return p, 0.0, 0.0
    s = 1.0
    if half > 0.0:
        while half * s >= 1.0:
            s *= 0.5
        while half * s < 0.5:
            s *= 2.0
    sm = 1.0
    if mmax > 0.0:
        while mmax * sm >= 2.0:
            sm *= 0.5
        while mmax * sm < 1.0:
            sm *= 2.0
    for i in range(n):
        for k in range(3):
            c = (x[i, k] - (0.5 * lo[k] + 0.5 * hi[k])) * s
            h = np.float32(c)
            p[k, i] = h
            p[4 + k, i] = np.float32(c - np.float64(h))
        p[3, i] = np.float32(m[i] * sm)
    for i in range(n, p.shape[1]):
        for k in range(7):
            p[k, i] = p[k, 0] if k != 3 else np.float32(0.0)
    return p, s, sm


def block_count(n: int, threads: int) -> int:
    """Row blocks for ``n`` particles on ``threads`` threads: even, >= 2.

    ``BLOCKS_PER_THREAD * threads`` blocks (a round of the tournament then has one block pair
    per thread or more), fewer if blocks would have under :data:`MIN_BLOCK` rows.
    """
    nb = BLOCKS_PER_THREAD * max(1, threads)
    nb = min(nb, max(2, n // MIN_BLOCK))
    return max(2, nb - nb % 2)


def lane_count(n: int, threads: int) -> int:
    """Lanes of the small-N path: one per thread, fewer below MIN_BLOCK rows a block."""
    return max(1, min(threads, n // (2 * MIN_BLOCK)))


@functools.lru_cache(maxsize=64)
def block_edges(n: int, nb: int) -> np.ndarray:
    """Edges of ``nb`` row blocks of near-equal size, each a multiple of ``ALIGN`` rows.

    The rows are padded up to the next multiple of :data:`backends._pair_kernel.ALIGN`
    (the last edge; at most ``ALIGN - 1`` massless pad rows), so every inner loop of the
    pair kernel runs whole vector blocks with no scalar remainder.
    """
    units = -(-n // ALIGN)
    edges = (np.arange(nb + 1, dtype=np.int64) * units // nb) * ALIGN
    edges.flags.writeable = False
    return edges


@functools.lru_cache(maxsize=64)
def schedule(nb: int) -> tuple[np.ndarray, np.ndarray]:
    """Round-robin tournament of ``nb`` (even) row blocks.

    Returns ``(tasks, starts)``: ``tasks`` is a ``(K, 2)`` int64 array of block pairs
    ``(a, b)``, ``a < b``; round ``r`` is ``tasks[starts[r]:starts[r + 1]]``. There are
    ``nb - 1`` rounds (the circle method: block ``nb - 1`` stays, the others rotate), each
    of ``nb / 2`` pairs that touch every block exactly once, and every unordered pair of
    distinct blocks occurs in exactly one round. The pairs within a block are computed in
    round 0, by the task that holds the block. Within a round no two tasks share a block, so
    they run concurrently on shared accumulators without locks or copies.
    """
    tasks = []
    starts = [0]
    for r in range(nb - 1):
        tasks.append((r, nb - 1))
        for k in range(1, nb // 2):
            a, b = (r + k) % (nb - 1), (r - k) % (nb - 1)
            tasks.append((min(a, b), max(a, b)))
        starts.append(len(tasks))
    out = np.array(tasks, dtype=np.int64).reshape(-1, 2), np.array(starts, dtype=np.int64)
    for arr in out:
        arr.flags.writeable = False
    return out


@njit(inline="always", fastmath=_FM, error_model="numpy")
def _finish(acc, out, scale):
    """``out[i, k] = acc[k, i] * scale[0] * ... * scale[3]``; False if not finite."""
    n = out.shape[0]
    bad = 0
    for i in range(n):
        for k in range(3):
            t = acc[k, i]
            out[i, k] = (((t * scale[0]) * scale[1]) * scale[2]) * scale[3]
            bad += 0 if finite(t) else 1
    return bad == 0


@njit(inline="always")
def _count(work, a0, a1, b0, b1, first, n):
    """Add the pairs of one task (padding excluded) to the running thread's entry of ``work``."""
    na = min(a1, n) - min(a0, n)
    nb = min(b1, n) - min(b0, n)
    extra = (na * (na - 1) + nb * (nb - 1)) // 2 if first else 0
    work[numba.get_thread_id()] += na * nb + extra


@njit(cache=True, parallel=True, nogil=True, fastmath=_FM, error_model="numpy")
def _pairs(p, acc, out, edges, tasks, starts, eps2, scale, work):
    """Float64 tournament (see :func:`schedule`); False if the result is not finite."""
    for r in range(starts.shape[0] - 1):
        for t in prange(starts[r], starts[r + 1]):
            a = tasks[t, 0]
            b = tasks[t, 1]
            a0, a1, b0, b1 = edges[a], edges[a + 1], edges[b], edges[b + 1]
            if r == 0:  # the pairs within blocks a and b
                pair_block(p, acc, a0, a1, p, acc, a0, a1, eps2, True)
                pair_block(p, acc, b0, b1, p, acc, b0, b1, eps2, True)
            pair_block(p, acc, a0, a1, p, acc, b0, b1, eps2, False)
            _count(work, a0, a1, b0, b1, r == 0, out.shape[0])
    return _finish(acc, out, scale)


@njit(cache=True, parallel=True, nogil=True, fastmath=_FM, error_model="numpy")
def _pairs32(p, acc, out, edges, tasks, starts, eps2, scale, work):
    """Float32 tournament: :func:`pair_block32` on the same schedule as :func:`_pairs`."""
    for r in range(starts.shape[0] - 1):
        for t in prange(starts[r], starts[r + 1]):
            a = tasks[t, 0]
            b = tasks[t, 1]
            a0, a1, b0, b1 = edges[a], edges[a + 1], edges[b], edges[b + 1]
            buf = empty32(3, TILE32)  # private to the task
            if r == 0:
                pair_block32(p, acc, a0, a1, p, acc, a0, a1, eps2, True, buf)
                pair_block32(p, acc, b0, b1, p, acc, b0, b1, eps2, True, buf)
            pair_block32(p, acc, a0, a1, p, acc, b0, b1, eps2, False, buf)
            _count(work, a0, a1, b0, b1, r == 0, out.shape[0])
    return _finish(acc, out, scale)


@njit(inline="always", fastmath=_FM, error_model="numpy")
def _finish_lanes(accs, out, scale):
    """``out = (sum of the lane accumulators, in lane order) * scale``, rows in parallel."""
    n = out.shape[0]
    bad = 0
    for i in prange(n):
        for k in range(3):
            t = accs[k, i]
            for c in range(1, accs.shape[0] // 3):
                t += accs[3 * c + k, i]
            out[i, k] = (((t * scale[0]) * scale[1]) * scale[2]) * scale[3]
            bad += 0 if finite(t) else 1
    return bad == 0


@njit(inline="always")
def _count_lane(work, b0, b1, n):
    """Add the pairs of rows ``b0..b1`` with every later row (padding excluded) to ``work``."""
    na = min(b1, n) - min(b0, n)
    work[numba.get_thread_id()] += na * (n - min(b1, n)) + na * (na - 1) // 2


@njit(cache=True, parallel=True, nogil=True, fastmath=_FM, error_model="numpy")
def _lanes(m, x, G, softening, edges, out, work):
    """Small-N float64 path (:func:`lane_count`): prepare, ``L`` lanes, sum, in one call.

    ``edges`` cuts the padded rows into ``2 L`` blocks; lane ``c`` owns the pairs whose first
    row lies in block ``c`` or ``2 L - 1 - c`` (its rows against themselves and every later
    row: equal pair counts, long inner loops) and adds them into its own ``(3, W)``
    accumulator. One parallel region of ``L`` lanes, statically one per thread, then the
    lanes are summed in lane order, rows in parallel. Returns 0 if the result is finite, 1
    if some rows are not (``out`` holds them all: the caller sums those rows again exactly)
    and 2 if the extent is out of reach (``s == 0``; ``out`` untouched: the exact path).
    """
    nl = (edges.shape[0] - 1) // 2
    w = edges[-1]
    n = out.shape[0]
    p, s = _prepare(m, x, softening, w)
    if s == 0.0:
        return 2
    eps = softening * s
    eps2 = eps * eps
    accs = empty64(3 * nl, w)  # lane c: rows 3 c .. 3 c + 2
    for lane in prange(nl):
        c = np.int64(lane)  # prange's index is unsigned: mixed with int64 it would be a float
        acc = accs[3 * c : 3 * c + 3]
        acc[:, :] = 0.0
        for h in range(2):
            b = c if h == 0 else 2 * nl - 1 - c
            b0, b1 = edges[b], edges[b + 1]
            pair_block(p, acc, b0, b1, p, acc, b0, b1, eps2, True)
            pair_block(p, acc, b0, b1, p, acc, b1, w, eps2, False)
            _count_lane(work, b0, b1, n)
    return 0 if _finish_lanes(accs, out, np.array([G, s, s, 1.0])) else 1


@njit(cache=True, parallel=True, nogil=True, fastmath=_FM, error_model="numpy")
def _lanes32(m, x, G, softening, edges, out, work):
    """Float32 :func:`_lanes` (:func:`pair_block32` on :func:`_prepare32`'s copy)."""
    nl = (edges.shape[0] - 1) // 2
    w = edges[-1]
    n = out.shape[0]
    p, s, sm = _prepare32(m, x, softening, w)
    if s == 0.0:
        return False
    eps2 = max(np.float32(softening * s) ** 2, np.float32(R2_MIN32))  # see pair_block32
    accs = empty64(3 * nl, w)
    for lane in prange(nl):
        c = np.int64(lane)
        acc = accs[3 * c : 3 * c + 3]
        acc[:, :] = 0.0
        buf = empty32(3, TILE32)  # private to the lane
        for h in range(2):
            b = c if h == 0 else 2 * nl - 1 - c
            b0, b1 = edges[b], edges[b + 1]
            pair_block32(p, acc, b0, b1, p, acc, b0, b1, eps2, True, buf)
            pair_block32(p, acc, b0, b1, p, acc, b1, w, eps2, False, buf)
            _count_lane(work, b0, b1, n)
    return _finish_lanes(accs, out, np.array([G, s, s, W32 / sm]))


@njit(inline="always", fastmath=_FM, error_model="numpy")
def _exact_rows(out, targets, m, sources, G, softening, t0, t1):
    """Rows t0..t1 of ``out`` with ``sqrt`` and a division: the safe path (no rescaling)."""
    eps2 = softening * softening
    xs = sources[:, 0]
    ys = sources[:, 1]
    zs = sources[:, 2]
    for i in range(t0, t1):
        xi = targets[i, 0]
        yi = targets[i, 1]
        zi = targets[i, 2]
        ax = 0.0
        ay = 0.0
        az = 0.0
        for j in range(m.shape[0]):
            dx = xs[j] - xi
            dy = ys[j] - yi
            dz = zs[j] - zi
            r2 = dx * dx + dy * dy + dz * dz + eps2
            ok = r2 > 0.0
            r2s = r2 if ok else 1.0
            w = (m[j] if ok else 0.0) / (r2s * np.sqrt(r2s))
            ax += dx * w
            ay += dy * w
            az += dz * w
        out[i, 0] = G * ax
        out[i, 1] = G * ay
        out[i, 2] = G * az


@njit(cache=True, parallel=True, nogil=True, fastmath=_FM, error_model="numpy")
def _exact(out, targets, m, x, G, softening):
    """Rows of ``targets`` with ``sqrt`` and division, in parallel blocks: the safe path."""
    n = targets.shape[0]
    for blk in prange((n + _ROWS - 1) // _ROWS):
        _exact_rows(out, targets, m, x, G, softening, blk * _ROWS, min(n, (blk + 1) * _ROWS))


def _symmetric(m, x, G, softening, precision, work):
    """Run the lanes or the tournament on trusted inputs.

    Returns ``(out, finite)``: ``out`` is None where the extent is out of reach (the exact
    path for every row); ``finite`` is False where some rows of ``out`` are not finite (a
    pair too close for the float32 estimate: those rows, and only those, must be summed
    again exactly; every other row is right).
    """
    n = m.shape[0]
    threads = numba.get_num_threads()
    if n <= LANES_MAX_N:
        edges = block_edges(n, 2 * lane_count(n, threads))
        out = np.empty((n, 3))
        if precision == "float32":
            if _lanes32(m, x, G, softening, edges, out, work):
                return out, True
            work[:] = 0
        status = _lanes(m, x, G, softening, edges, out, work)
        return (None, False) if status == 2 else (out, status == 0)
    nb = block_count(n, threads)
    tasks, starts = schedule(nb)
    edges = block_edges(n, nb)
    width = int(edges[-1])
    out = np.empty((n, 3))
    acc = _zeros64(3, width)
    if precision == "float32":
        p, s, sm = _prepare32(m, x, softening, width)
        if s > 0.0:
            eps2 = max(np.float32(softening * s) ** 2, np.float32(R2_MIN32))  # see pair_block32
            scale = np.array([G, s, s, W32 / sm])
            if _pairs32(p, acc, out, edges, tasks, starts, eps2, scale, work):
                return out, True
            acc[:] = 0.0
            work[:] = 0
    p, s = _prepare(m, x, softening, width)
    if s > 0.0:
        eps = softening * s
        scale = np.array([G, s, s, 1.0])
        return out, _pairs(p, acc, out, edges, tasks, starts, eps * eps, scale, work)
    return None, False


@njit(cache=True, nogil=True)
def _zeros64(rows, cols):
    """Zeroed :func:`backends._pair_kernel.empty64`."""
    a = empty64(rows, cols)
    a[:, :] = 0.0
    return a


def resum_non_finite(out, m, x, G, softening) -> np.ndarray:
    """Sum again exactly, in place, the rows of ``out`` that are not finite; return them.

    A pair too close for the float32 estimate makes its two rows, and only those, non-finite
    in the fast kernels (this module's, ``tree``'s and ``fmm``'s direct sums): those rows
    are summed over all particles with ``sqrt`` and division (:func:`_exact`); every other
    row stands. Inputs are trusted, in the frame ``out`` was computed for.
    """
    bad = non_finite_rows(out)
    if bad.shape[0] > 0:
        again = np.empty((bad.shape[0], 3))
        _exact(again, np.ascontiguousarray(x[bad]), m, x, G, softening)
        out[bad] = again
    return bad


def _kernel(m, x, G, softening, precision="float64", work=None):
    """Evaluate on trusted inputs, in parallel (see the module docstring)."""
    if work is None:
        work = np.zeros(numba.config.NUMBA_NUM_THREADS, dtype=np.int64)
    rows = None
    if precision == "float32":  # what float32 cannot hold: see backends._float32_guard
        if _float32_guard.needs_float64(x, softening):
            precision = "float64"
        else:
            rows = _float32_guard.close_rows(x, softening)
    out, all_finite = _symmetric(m, x, G, softening, precision, work)
    if out is None:  # extreme extent: every row by the exact path
        out = np.empty((m.shape[0], 3))
        _exact(out, x, m, x, G, softening)
    elif not all_finite:  # pairs too close for the float32 estimate: their rows, exactly
        resum_non_finite(out, m, x, G, softening)
    elif rows is not None:
        _float32_guard.repair(out, rows, m, x, G, softening)
    return out


@njit(cache=True, nogil=True, fastmath=_FM, error_model="numpy")
def _block(targets, m, sources, G, softening):
    nt = targets.shape[0]
    out = np.zeros((nt, 3))
    if nt == 0 or m.shape[0] == 0:
        return out
    lo = np.full(3, np.inf)
    hi = np.full(3, -np.inf)
    _bounds(targets, lo, hi)
    _bounds(sources, lo, hi)
    s = _scale(lo, hi, softening)
    if s == 0.0:  # extreme extent: exact path only
        _exact_rows(out, targets, m, sources, G, softening, 0, nt)
        return out
    wide_vectors()
    raw_rsqrt32()  # _inv_r3 refines the bare estimate itself
    p = _soa(m, sources, s)
    eps = softening * s
    eps2 = eps * eps
    ns = m.shape[0]
    for jt in range(0, ns, TILE):
        je = min(jt + TILE, ns)
        xs = p[0, jt:je]
        ys = p[1, jt:je]
        zs = p[2, jt:je]
        ms = p[3, jt:je]
        for i in range(nt):
            xi = targets[i, 0] * s
            yi = targets[i, 1] * s
            zi = targets[i, 2] * s
            ax = 0.0
            ay = 0.0
            az = 0.0
            for k in range(xs.shape[0]):
                dx = xs[k] - xi
                dy = ys[k] - yi
                dz = zs[k] - zi
                r2 = dx * dx + dy * dy + dz * dz + eps2
                ok = r2 > 0.0
                w = _inv_r3(r2 if ok else 1.0)
                w = ms[k] * w if ok else 0.0
                ax += dx * w
                ay += dy * w
                az += dz * w
            out[i, 0] += ax
            out[i, 1] += ay
            out[i, 2] += az
    gs = G * s
    all_finite = True
    for i in range(nt):
        for k in range(3):
            out[i, k] = (out[i, k] * gs) * s
            all_finite = all_finite and finite(out[i, k])
    if not all_finite:  # a pair outside the float32 estimate's range: redo with sqrt and division
        _exact_rows(out, targets, m, sources, G, softening, 0, nt)
    return out


def accel_block(targets, masses, sources, G, softening) -> np.ndarray:
    """Accelerations of ``targets`` due to ``(masses, sources)``, serial and GIL-free.

    The fast non-symmetric kernel (module docstring, steps 1-4 and 6); the compiled
    function releases the GIL, so threads may call it concurrently. Inputs are trusted
    (validated by the caller). A source at zero separation from a target contributes nothing
    when ``softening == 0``, so a target may be among the sources (the self-pair is skipped by
    the same rule). Sums over sources may be split across calls and added: the result is
    linear in the source set (to rounding).

    Parameters
    ----------
    targets : (T, 3) C-contiguous ndarray of float64
    masses : (S,) C-contiguous ndarray of float64
    sources : (S, 3) C-contiguous ndarray of float64
    G, softening : float

    Returns
    -------
    (T, 3) ndarray of float64
    """
    return _block(targets, masses, sources, float(G), float(softening))


@njit(cache=True, parallel=True, nogil=True)
def _rows(targets, m, x, G, softening, chunks):
    nt = targets.shape[0]
    out = np.empty((nt, 3))
    step = (nt + chunks - 1) // chunks
    for c in prange(chunks):
        t0 = min(c * step, nt)
        t1 = min(t0 + step, nt)
        out[t0:t1] = _block(targets[t0:t1], m, x, G, softening)
    return out


def accel_rows(targets, masses, sources, G, softening) -> np.ndarray:
    """:func:`accel_block` on all Numba threads, one share of the targets per thread.

    For the few rows an approximate backend sums again exactly (``tree`` and ``fmm``:
    particles whose pulls nearly cancel). Inputs are trusted, as for :func:`accel_block`.

    Returns
    -------
    (T, 3) ndarray of float64
    """
    chunks = max(1, min(numba.get_num_threads(), targets.shape[0]))
    return _rows(targets, masses, sources, float(G), float(softening), chunks)


def accel(masses, positions, G=1.0, *, softening=0.0, precision="float64") -> np.ndarray:
    """Gravitational accelerations on all Numba threads, each pair computed once.

    See the module docstring for the decomposition, the tricks and their accuracy cost.
    The number of threads is Numba's at call time (``numba.set_num_threads``,
    ``NUMBA_NUM_THREADS``).

    Parameters
    ----------
    masses : (N,) array_like of real
    positions : (N, 3) array_like of real
    G : float, optional
        Gravitational constant.
    softening : float, optional
        Plummer softening length (>= 0).
    precision : {"float64", "float32"}, optional
        ``"float64"`` (default): error ~1e-14 relative. ``"float32"``: pair arithmetic in
        float32, sums in float64, about twice as fast; max per-particle relative error
        below :data:`backends._contract.FLOAT32_TOLERANCE` (module docstring).

    Returns
    -------
    (N, 3) ndarray of float64
    """
    precision = check_precision(precision)
    inp = validate(masses, positions, G, softening)
    return evaluate("numba_parallel", inp, _kernel, precision)


def thread_work(masses, positions, G=1.0, *, softening=0.0, precision="float64") -> np.ndarray:
    """Pairs computed by each Numba thread in one :func:`accel` call: the work spread.

    Returns
    -------
    (NUMBA_NUM_THREADS,) ndarray of int64
        Entry ``t`` counts the unordered pairs thread ``t`` (``numba.get_thread_id()``)
        computed; they add up to N(N-1)/2 (0 everywhere if the exact path was taken). Threads
        beyond ``numba.get_num_threads()`` stay at 0.
    """
    precision = check_precision(precision)
    inp = validate(masses, positions, G, softening)
    work = np.zeros(numba.config.NUMBA_NUM_THREADS, dtype=np.int64)
    if inp.masses.shape[0] > 1:
        _kernel(inp.masses, inp.positions, inp.G, inp.softening, precision, work)
    return work


@njit(nogil=True, fastmath=_FM, error_model="numpy")
def _probe(p, acc, eps2):
    """Run the float64 pair loop once: a stand-alone copy, compiled to read its assembly."""
    pair_block(p, acc, 0, p.shape[1], p, acc, 0, p.shape[1], eps2, True)


@functools.lru_cache(maxsize=1)
def simd_report() -> str:
    """Describe what the float64 pair loop compiles to here: vector registers, lanes, CPU.

    Compiles :func:`_probe` (the loop of :func:`backends._pair_kernel.pair_block`, uncached,
    about a second) and counts the vector registers used by its packed multiply-adds.
    """
    import re

    import llvmlite.binding as ll

    p = np.ones((4, 8))
    _probe(p, np.zeros((3, 8)), 0.0)
    asm = next(iter(_probe.inspect_asm().values()))
    fma = re.findall(r"vfn?m(?:add|sub)\d+pd\s+%([xyz])mm", asm)
    widths = {"x": 128, "y": 256, "z": 512}
    bits = max((widths[r] for r in fma), default=64)
    # the target Numba compiles for: the host, unless NUMBA_CPU_NAME/NUMBA_CPU_FEATURES say
    feats = (numba.config.CPU_FEATURES or ll.get_host_cpu_features().flatten()).split(",")
    isa = "AVX-512" if "+avx512f" in feats else ("AVX2" if "+avx2" in feats else "SSE")
    return (
        f"{bits}-bit vectors ({bits // 64} float64 lanes) in the pair loop; "
        f"LLVM CPU {numba.config.CPU_NAME or ll.get_host_cpu_name()} ({isa})"
    )
