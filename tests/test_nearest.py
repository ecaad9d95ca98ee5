"""backends.accel_nearest: k-nearest-neighbour accelerations by three strategies."""

from __future__ import annotations

import math
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
from conftest import random_system
from test_validation import BAD

import backends
from backends import reference

METHODS = ("batched", "objmode", "forceobj")
TOL_METHODS = 1e-13  # the three methods against each other
TOL_BRUTE = 1e-12  # against the brute force below (a different summation order)


def brute_force(m, x, k, G=1.0, softening=0.0):
    """Sum over the k nearest found by sorting all distances; math.fsum per component.

    Valid where the k-th and (k+1)-th nearest differ in distance (no tie at the cut) or are
    interchangeable (coincident, equal masses): asserted below.
    """
    m, x = np.asarray(m, float), np.asarray(x, float)
    out = np.zeros_like(x)
    for i in range(len(m)):
        d = np.linalg.norm(x - x[i], axis=1)
        d[i] = np.inf
        order = np.argsort(d, kind="stable")
        nearest = order[:k]
        last, first_out = order[k - 1], order[k]
        assert d[last] < d[first_out] or (
            (x[last] == x[first_out]).all() and m[last] == m[first_out]
        )
        for c in range(3):
            terms = []
            for j in nearest:
                dx = x[j] - x[i]
                r2 = float(dx @ dx) + softening**2
                if r2 > 0.0:
                    terms.append(m[j] * dx[c] / r2**1.5)
            out[i, c] = G * math.fsum(terms)
    return out


def clustered_system(n, seed):
    """Random system with 6 coincident particles and a coincident pair (equal masses in each)."""
    m, x = random_system(n, seed=seed)
    x[1:6], m[1:6] = x[0], m[0]
    x[10], m[10] = x[11], m[11]
    return m, x


SIZES = [(2, 1), (3, 1), (3, 2), (60, 1), (60, 7), (150, 16)]
AGREEMENT_CASES = [
    (kind, n, k) for kind in ("random", "clustered") for n, k in SIZES if kind == "random" or n > 12
]


@pytest.mark.parametrize(("kind", "n", "k"), AGREEMENT_CASES)
@pytest.mark.parametrize(("softening", "G"), [(0.0, 1.0), (0.05, 6.674e-11)])
def test_methods_agree_with_each_other_and_brute_force(kind, n, k, softening, G):
    m, x = random_system(n, seed=n + k) if kind == "random" else clustered_system(n, seed=n)
    m0, x0 = m.copy(), x.copy()
    ref = brute_force(m, x, k, G, softening)
    results = {
        method: backends.accel_nearest(m, x, k, G, softening=softening, method=method)
        for method in METHODS
    }
    for method, out in results.items():
        assert out.shape == (n, 3) and out.dtype == np.float64 and np.isfinite(out).all()
        assert backends.relative_error(out, results["batched"]) <= TOL_METHODS, method
        assert backends.relative_error(out, ref) <= TOL_BRUTE, method
        assert not np.shares_memory(out, x)
    np.testing.assert_array_equal(m, m0)
    np.testing.assert_array_equal(x, x0)


@pytest.mark.parametrize("method", METHODS)
def test_all_neighbours_is_the_direct_sum(method):
    m, x = random_system(40, seed=5)
    ref = reference.accel(m, x, 2.0, softening=0.1)
    out = backends.accel_nearest(m, x, 39, 2.0, softening=0.1, method=method)
    assert backends.relative_error(out, ref) <= TOL_BRUTE


@pytest.mark.parametrize("method", METHODS)
def test_two_bodies(method):
    x = [[0.0, 0.0, 0.0], [0.0, 2.0, 0.0]]
    out = backends.accel_nearest([3.0, 5.0], x, 1, 2.0, method=method)
    np.testing.assert_allclose(out, [[0.0, 2.0 * 5.0 / 4.0, 0.0], [0.0, -2.0 * 3.0 / 4.0, 0.0]])


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("softening", [0.0, 0.3])
def test_more_coincident_particles_than_k(method, softening):
    """A cluster of 5 coincident particles, k = 3: the tree may list the particle itself last or
    not at all; either way its neighbours are all in the cluster and contribute nothing. A probe
    at distance 2 takes 3 cluster members, whichever the tree returns (equal masses)."""
    x = np.zeros((9, 3))
    x[5] = [2.0, 0.0, 0.0]  # the probe
    x[6:] = [[50.0, 0, 0], [0, 60.0, 0], [0, 0, 70.0]]  # far away
    m = np.ones(9)
    out = backends.accel_nearest(m, x, 3, softening=softening, method=method)
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out[:5], 0.0)
    expected = -3.0 * 2.0 / (4.0 + softening**2) ** 1.5
    np.testing.assert_allclose(out[5], [expected, 0.0, 0.0], rtol=1e-15)


@pytest.mark.slow  # block=1: 1 000 single-point queries
def test_batched_blocks_give_identical_results():
    m, x = random_system(1000, seed=7)
    whole = backends.accel_nearest(m, x, 12, softening=0.01, block=1000)
    for block in (1, 7, 333, 999, 10**6, None, np.int64(64)):
        out = backends.accel_nearest(m, x, 12, softening=0.01, block=block)
        np.testing.assert_array_equal(out, whole)


def _traced_peak(m, x, k, block):
    tracemalloc.start()
    try:
        backends.accel_nearest(m, x, k, block=block)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_batched_never_holds_an_n_by_k_array():
    """tracemalloc sees NumPy's allocations, so it sees the query's index and distance arrays.

    The control (one block of all N rows) shows the measurement catches an N x (k + 1) array;
    with small blocks the peak stays well below the size of one such index array.
    """
    n, k = 20_000, 32
    m, x = random_system(n, seed=8)
    backends.accel_nearest(m[:100], x[:100], 4)  # compile or load the kernels outside the trace
    index_bytes = n * (k + 1) * np.dtype(np.intp).itemsize
    assert _traced_peak(m, x, k, block=n) >= 2 * index_bytes  # indices and distances
    peak = _traced_peak(m, x, k, block=256)
    assert peak < index_bytes / 3, (peak, index_bytes)


@pytest.mark.parametrize(
    ("k", "exc", "msg"),
    [
        (0, ValueError, r"k must satisfy 1 <= k <= N - 1 = 4; got k = 0"),
        (5, ValueError, r"k must satisfy 1 <= k <= N - 1 = 4; got k = 5"),
        (-1, ValueError, r"got k = -1"),
        (3.0, TypeError, r"k must be an integer; got 3.0 \(float\)"),
        (np.float64(2.0), TypeError, r"k must be an integer"),
        (True, TypeError, r"k must be an integer; got a bool"),
        (np.bool_(True), TypeError, r"k must be an integer; got a bool"),
        (None, TypeError, r"k must be an integer; got None"),
        ("3", TypeError, r"k must be an integer; got '3'"),
        ([2], TypeError, r"k must be an integer"),
    ],
)
@pytest.mark.parametrize("method", METHODS)
def test_rejects_bad_k(method, k, exc, msg):
    m, x = random_system(5, seed=1)
    with pytest.raises(exc, match=msg):
        backends.accel_nearest(m, x, k, method=method)


def test_accepts_numpy_integer_k():
    m, x = random_system(5, seed=1)
    a = backends.accel_nearest(m, x, np.int32(2))
    np.testing.assert_array_equal(a, backends.accel_nearest(m, x, 2))


@pytest.mark.parametrize("n", [0, 1])
def test_fewer_than_two_particles_have_no_valid_k(n):
    with pytest.raises(ValueError, match=r"N < 2: no particle has a neighbour"):
        backends.accel_nearest(np.ones(n), np.zeros((n, 3)), 1)


@pytest.mark.parametrize("method", ["fast", "Batched", None, ["batched"], 1])
def test_rejects_unknown_method_listing_valid_ones(method):
    with pytest.raises(ValueError, match="method must be one of") as info:
        backends.accel_nearest([1.0, 2.0], [[0, 0, 0], [1, 0, 0]], 1, method=method)
    for name in METHODS:
        assert repr(name) in str(info.value)


@pytest.mark.parametrize(
    ("method", "block", "exc", "msg"),
    [
        ("batched", 0, ValueError, r"block must be a positive integer; got 0"),
        ("batched", -3, ValueError, r"block must be a positive integer"),
        ("batched", 2.5, TypeError, r"block must be an integer"),
        ("batched", True, TypeError, r"block must be an integer; got a bool"),
        ("objmode", 10, ValueError, r"block= applies to method='batched' only"),
        ("forceobj", 10, ValueError, r"block= applies to method='batched' only"),
    ],
)
def test_rejects_bad_block(method, block, exc, msg):
    with pytest.raises(exc, match=msg):
        backends.accel_nearest([1.0, 2.0], [[0, 0, 0], [1, 0, 0]], 1, method=method, block=block)


@pytest.mark.parametrize(("m", "x", "G", "eps", "exc", "msg"), BAD)
@pytest.mark.parametrize("method", METHODS)
def test_rejects_bad_input_like_accel(method, m, x, G, eps, exc, msg):
    with pytest.raises(exc, match=msg):
        backends.accel_nearest(m, x, 1, G, softening=eps, method=method)


@pytest.mark.parametrize("method", METHODS)
def test_accepts_array_likes(method):
    m, x = random_system(12, seed=2)
    x32 = np.asfortranarray(x).astype(np.float32)
    out = backends.accel_nearest(m.tolist(), x32, np.uint8(3), method=method)
    ref = backends.accel_nearest(m, x32.astype(np.float64), 3, method=method)
    np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize("method", METHODS)
def test_overflow_is_an_error_not_inf(method):
    with pytest.raises(FloatingPointError, match="overflow"):
        backends.accel_nearest([1e308, 1e308], [[0.0, 0, 0], [1e-3, 0, 0]], 1, method=method)


def test_objmode_releases_the_tree():
    from backends import scipy_nearest

    m, x = random_system(10, seed=3)
    backends.accel_nearest(m, x, 2, method="objmode")
    assert not hasattr(scipy_nearest._local, "tree")


def test_object_mode_compiles_without_numba_warnings():
    """A fresh interpreter: first compilation of both object-mode paths, warnings as errors."""
    code = (
        "import numpy as np, backends\n"
        "m, x = np.ones(6), np.arange(18.0).reshape(6, 3) ** 1.5\n"
        "for method in ('forceobj', 'objmode'):\n"
        "    backends.accel_nearest(m, x, 2, method=method)\n"
    )
    subprocess.run([sys.executable, "-W", "error", "-c", code], check=True)
