"""The optimized ``numba_parallel`` kernel and its serial ``accel_block``: edges of its tricks.

Vector widths and tile edges (N = 1..70, N not a multiple of the lanes or tiles), the
per-lane accumulators at 1 and 2 threads, linearity of ``accel_block`` in the sources, the
power-of-two rescaling at extreme scales and the exact fallback for pairs too close for the
float32 estimate. Speed is shown by ``benchmarks/numba_ladder.py``, never tested here.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
import pytest
from conftest import random_system

from backends import numba_parallel as npl
from backends import reference, relative_error
from backends.numba_loops import accel_plain

TOL = 1e-13  # the bound the kernel's docstring promises (DESIGN.md metric)


def _oracle_rows(m, x, G, softening, rows, sources=None):
    """Oracle rows; ``sources`` (indices) restricts the sum by zeroing the other masses."""
    if sources is not None:
        keep = np.zeros(m.shape[0], dtype=bool)
        keep[sources] = True
        m = np.where(keep, m, 0.0)
    return reference.accel_rows(m, x, G, softening, list(rows))


@pytest.mark.parametrize("n", list(range(2, 71)))
def test_small_sizes_against_oracle(n):
    m, x = random_system(n, seed=1000 + n)
    ref = reference.accel(m, x)
    assert relative_error(npl.accel(m, x), ref) <= TOL
    assert relative_error(npl.accel_block(x, m, x, 1.0, 0.0), ref) <= TOL


@pytest.mark.parametrize("n", [2 * npl.LANES + 5, npl.TILE + 2 * npl.LANES + 3])
@pytest.mark.parametrize("softening", [0.0, 0.03])
def test_tile_edges(n, softening):
    """N not a multiple of the lane blocks, nor of the tile (the second size spans 2 tiles)."""
    m, x = random_system(n, seed=n)
    out = npl.accel(m, x, 0.5, softening=softening)
    assert relative_error(out, accel_plain(m, x, 0.5, softening=softening)) <= TOL
    rows = [0, 1, n // 2, npl.TILE - 1, npl.TILE, n - 2, n - 1]
    rows = sorted({r for r in rows if r < n})
    assert relative_error(out[rows], _oracle_rows(m, x, 0.5, softening, rows)) <= TOL


def test_same_result_with_one_and_two_threads():
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("Numba was started with a single thread (NUMBA_NUM_THREADS=1)")
    m, x = random_system(3001, seed=3)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = npl.accel(m, x, softening=0.01)
        numba.set_num_threads(2)
        two = npl.accel(m, x, softening=0.01)
    finally:
        numba.set_num_threads(before)
    assert relative_error(two, one) <= TOL
    # the lanes, hence the summation order, do not depend on the thread count
    np.testing.assert_array_equal(one, two)


@pytest.mark.parametrize(
    ("t0", "t1", "s0", "s1"), [(0, 50, 0, 131), (10, 11, 40, 97), (60, 131, 0, 70)]
)
@pytest.mark.parametrize("softening", [0.0, 0.1])
def test_block_on_sub_sources_against_oracle(t0, t1, s0, s1, softening):
    m, x = random_system(131, seed=7)
    out = npl.accel_block(x[t0:t1], m[s0:s1], x[s0:s1], 2.0, softening)
    assert out.shape == (t1 - t0, 3)
    ref = _oracle_rows(m, x, 2.0, softening, range(t0, t1), sources=range(s0, s1))
    assert relative_error(out, ref) <= TOL


def test_block_splitting_sources_adds_up():
    m, x = random_system(301, seed=11)
    t = np.ascontiguousarray(x[::3])
    whole = npl.accel_block(t, m, x, 1.0, 0.0)
    parts = sum(
        npl.accel_block(t, m[a:b], x[a:b], 1.0, 0.0) for a, b in ((0, 7), (7, 160), (160, 301))
    )
    assert relative_error(parts, whole) <= TOL


def test_block_from_threads():
    m, x = random_system(800, seed=5)
    chunks = [(a, min(a + 100, 800)) for a in range(0, 800, 100)]
    with ThreadPoolExecutor(2) as pool:
        parts = list(pool.map(lambda c: npl.accel_block(x[c[0] : c[1]], m, x, 1.0, 0.0), chunks))
    assert relative_error(np.concatenate(parts), npl.accel_block(x, m, x, 1.0, 0.0)) <= 1e-15


def test_block_coincident_source_contributes_nothing():
    m, x = random_system(9, seed=2)
    target = np.ascontiguousarray(x[4:5])
    with_self = npl.accel_block(target, m, x, 1.0, 0.0)
    others = np.arange(9) != 4
    without = npl.accel_block(target, m[others], np.ascontiguousarray(x[others]), 1.0, 0.0)
    assert np.isfinite(with_self).all()
    assert relative_error(with_self, without) <= TOL


def test_block_empty():
    m, x = random_system(5, seed=1)
    assert npl.accel_block(x[:0], m, x, 1.0, 0.0).shape == (0, 3)
    np.testing.assert_array_equal(npl.accel_block(x, m[:0], x[:0], 1.0, 0.0), np.zeros((5, 3)))


@pytest.mark.parametrize("scale", [1e-100, 1e-30, 1e25, 1e100])
def test_extreme_scales(scale):
    """Rescaling by a power of two keeps every r**2 in the float32 estimate's range."""
    m, x = random_system(40, seed=9)
    G = 1.0 / scale  # keeps the accelerations finite
    ref = reference.accel(m, x * scale, G * scale**3)
    assert relative_error(npl.accel(m, x * scale, G * scale**3), ref) <= TOL
    block = npl.accel_block(x * scale, m, x * scale, G * scale**3, 0.0)
    assert relative_error(block, ref) <= TOL


def test_extreme_extent_and_offset():
    """Huge extent (exact path) and tiny extent far from the origin (capped rescaling)."""
    m, x = random_system(25, seed=6)
    x[0, 0], x[1, 0] = 1e200, -1e200  # pairs with them overflow r**2: they contribute 0
    ref = reference.accel(m, x)
    assert relative_error(npl.accel(m, x), ref) <= TOL
    assert relative_error(npl.accel_block(x, m, x, 1.0, 0.0), ref) <= TOL
    m, x = random_system(25, seed=6, spread=1e-10)
    x[:, 0] = 1e300  # one coordinate shared: the extent is 1e-10, |x| is 1e300
    ref = reference.accel(m, x, 1e-30)
    assert relative_error(npl.accel(m, x, 1e-30), ref) <= TOL
    assert relative_error(npl.accel_block(x, m, x, 1e-30, 0.0), ref) <= TOL


@pytest.mark.parametrize("gap", [1e-20, 1e-40, 1e-100])
def test_too_close_for_float32_falls_back_to_exact(gap):
    """A pair far closer than the system's extent: the exact sqrt/division path is used."""
    m, x = random_system(30, seed=4)
    x[1] = x[0] + gap * np.array([1.0, -0.5, 0.25])
    ref = reference.accel(m, x)
    assert relative_error(npl.accel(m, x), ref) <= TOL
    assert relative_error(npl.accel_block(x, m, x, 1.0, 0.0), ref) <= TOL


def test_coincident_and_softening_against_oracle():
    m, x = random_system(97, seed=8)
    x[5::7] = x[3]
    for softening in (0.0, 1e-3, 0.5, 1e3):
        ref = reference.accel(m, x, softening=softening)
        out = npl.accel(m, x, softening=softening)
        assert np.isfinite(out).all()
        assert relative_error(out, ref) <= TOL
