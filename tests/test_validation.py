"""Every rejection case of the contract, at every public door, for every backend."""

from __future__ import annotations

import numpy as np
import pytest

import backends

M = np.array([1.0, 2.0, 3.0])
X = np.arange(9.0).reshape(3, 3)

BAD = [
    # (masses, positions, G, softening, exception, message fragment)
    (M[:, None], X, 1.0, 0.0, ValueError, r"masses must have shape \(N,\); got shape \(3, 1\)"),
    (1.0, X, 1.0, 0.0, ValueError, r"masses must have shape \(N,\); got shape \(\)"),
    (M, X[:, :2], 1.0, 0.0, ValueError, r"positions must have shape \(N, 3\); got shape \(3, 2\)"),
    (M, X.ravel(), 1.0, 0.0, ValueError, r"positions must have shape \(N, 3\); got shape \(9,\)"),
    (M, X[None], 1.0, 0.0, ValueError, r"positions must have shape \(N, 3\)"),
    (M[:2], X, 1.0, 0.0, ValueError, r"same length N; got 2 masses and 3 positions"),
    (M.astype(complex), X, 1.0, 0.0, TypeError, r"masses must hold real numbers.*complex"),
    (M, X.astype(complex), 1.0, 0.0, TypeError, r"positions must hold real numbers"),
    (M.astype(object), X, 1.0, 0.0, TypeError, r"masses must hold real numbers.*object"),
    (["a", "b", "c"], X, 1.0, 0.0, TypeError, r"masses must hold real numbers"),
    ([1.0, None, 2.0], X, 1.0, 0.0, TypeError, r"masses must hold real numbers"),
    (M > 1, X, 1.0, 0.0, TypeError, r"masses must hold real numbers.*bool"),
    ([1.0, [2.0], 3.0], X, 1.0, 0.0, TypeError, r"masses must be a real array_like"),
    ([1.0, np.nan, 2.0], X, 1.0, 0.0, ValueError, r"masses must be finite; got nan at index \[1\]"),
    (M, np.where(X == 5, np.inf, X), 1.0, 0.0, ValueError, r"positions must be finite.*\[1, 2\]"),
    (M, np.where(X == 0, -np.inf, X), 1.0, 0.0, ValueError, r"positions must be finite"),
    (M, X, np.nan, 0.0, ValueError, r"G must be finite; got nan"),
    (M, X, np.inf, 0.0, ValueError, r"G must be finite; got inf"),
    (M, X, "1.0", 0.0, TypeError, r"G must hold real numbers"),
    (M, X, 1j, 0.0, TypeError, r"G must hold real numbers"),
    (M, X, [1.0], 0.0, TypeError, r"G must be a real scalar; got an array of shape \(1,\)"),
    (M, X, None, 0.0, TypeError, r"G must hold real numbers"),
    (M, X, 1.0, -0.1, ValueError, r"softening must be >= 0; got -0.1"),
    (M, X, 1.0, np.nan, ValueError, r"softening must be finite; got nan"),
    (M, X, 1.0, np.inf, ValueError, r"softening must be finite; got inf"),
    (M, X, 1.0, "0", TypeError, r"softening must hold real numbers"),
]


@pytest.mark.parametrize(("m", "x", "G", "eps", "exc", "msg"), BAD)
def test_rejects_bad_input(backend_name, m, x, G, eps, exc, msg):
    with pytest.raises(exc, match=msg):
        backends.get(backend_name).accel(m, x, G, softening=eps)
    with pytest.raises(exc, match=msg):
        backends.accel(m, x, G, softening=eps, backend=backend_name)


def test_rejection_leaves_input_untouched(backend):
    x = np.where(X == 5, np.nan, X)
    x0 = x.copy()
    with pytest.raises(ValueError):
        backend.accel(M, x)
    np.testing.assert_array_equal(x, x0)


# --- fuzzing faults: extreme dynamic range, the error metric, interactions, tolerance ---

FAST = ["python", "numpy", "numba", "numba_fastmath", "numba_jitclass", "numba_parallel"]


@pytest.mark.parametrize("name", FAST)
@pytest.mark.parametrize(
    ("m", "x", "eps"),
    [
        ([1.0, 1.0, 1.0], [[0, 0, 0], [1e-110, 0, 0], [1, 0, 0]], 0.0),  # r**3 underflows to 0
        ([1.0, 1.0, 1.0], [[0, 0, 0], [0, 0, 0], [1, 0, 0]], 1e-160),  # softened r**3 too
        ([1e-300, 1e-300, 1.0], [[0, 0, 0], [1e-170, 0, 0], [1, 0, 0]], 0.0),  # r**2 -> 0
    ],
)
def test_underflowing_pairs_raise_floating_point_error(name, m, x, eps):
    if name not in backends.available():
        pytest.skip(f"{name} unavailable")
    with pytest.raises(FloatingPointError, match="underflow"):
        backends.accel(m, x, softening=eps, backend=name)


def test_nearest_underflowing_pair_raises_floating_point_error():
    with pytest.raises(FloatingPointError, match="underflow"):
        backends.accel_nearest(np.ones(3), [[0, 0, 0], [1e-110, 0, 0], [1, 0, 0]], k=2)


@pytest.mark.parametrize(("cluster", "far"), [(1e-60, 1e60), (1e-100, 1e100)])
def test_far_particle_with_overflowing_pairs_raises(cluster, far):
    rng = np.random.default_rng(1)
    x = np.vstack([cluster * (1 + rng.random((20, 3))), [[far, 0.0, 0.0]]])
    with pytest.raises(FloatingPointError, match="overflows"):
        backends.accel(np.ones(21), x, backend="numpy")


def test_tiny_but_safe_separations_still_computed():
    # coordinates below the exact check's threshold, separations fine after rescaling
    x = np.array([[0.0, 0.0, 0.0], [1e-120, 0.0, 0.0], [0.0, 2e-120, 0.0]])
    out = backends.accel(np.ones(3), x, backend="numpy")
    ref = backends.accel(np.ones(3), x * 2.0**400, backend="python") * 2.0**800
    assert backends.relative_error(out, ref) <= 1e-14


def test_relative_error_keeps_small_rows():
    out = [[1e200, 0, 0], [0, 0, 0]]
    ref = [[1e200, 0, 0], [1e-200, 0, 0]]
    assert backends.relative_error(out, ref) == 1.0
    assert backends.relative_error([[1e308, 0, 0]], [[-1e308, 0, 0]]) == 2.0


@pytest.mark.parametrize(
    ("a", "exc", "msg"),
    [
        ([[np.nan, 0, 0]], ValueError, r"a must be finite"),
        ([[np.inf, 0, 0]], ValueError, r"a must be finite"),
        ([[1j, 0, 0]], TypeError, r"a must hold real numbers"),
        ([1.0, 0, 0], ValueError, r"a must have shape \(N, 3\)"),
    ],
)
def test_relative_error_rejects_bad_input(a, exc, msg):
    with pytest.raises(exc, match=msg):
        backends.relative_error(a, [[1.0, 0, 0]])
    with pytest.raises(exc, match=msg.replace("a must", "ref must")):
        backends.relative_error([[1.0, 0, 0]], a)


@pytest.mark.parametrize(
    ("n", "exc"), [(-5, ValueError), (1.5, TypeError), (True, TypeError), ("3", TypeError)]
)
def test_interactions_rejects_bad_n(n, exc):
    with pytest.raises(exc, match="n must"):
        backends.interactions(n)
    assert backends.interactions(np.int64(4)) == 12


def test_tolerance_floor_and_unknown_options():
    if "pytreegrav_tree" in backends.available():
        assert backends.tolerance("pytreegrav_tree", theta=1e-300) >= 1e-12
    with pytest.raises(TypeError, match="unknown option 'nope'"):
        backends.tolerance("tree", nope=1)
    with pytest.raises(TypeError, match="unknown option 'nope'"):
        backends.tolerance("numpy", nope=1)
    assert backends.tolerance("numpy", block=64) == 1e-12


def test_jax_rejects_negative_device_index():
    if "jax" not in backends.available():
        pytest.skip("jax unavailable")
    from backends import jax_blocked

    with pytest.raises(ValueError, match="no such JAX device"):
        jax_blocked.resolve_device("cpu:-1")


@pytest.mark.parametrize("shape", [(1, 3), (7, 3), (1000, 3), (5, 1)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("order", ["C", "F"])
def test_column_range_is_the_axis_0_minimum_and_maximum(shape, dtype, order):
    from backends._contract import column_range

    x = np.asarray(np.random.default_rng(7).normal(size=shape) * 1e30, dtype=dtype, order=order)
    x[0, 0] = -np.inf if shape[0] > 1 else x[0, 0]  # extremes anywhere in a column
    lo, hi = column_range(x)
    assert lo.dtype == hi.dtype == x.dtype
    np.testing.assert_array_equal(lo, x.min(axis=0))
    np.testing.assert_array_equal(hi, x.max(axis=0))
