"""Every backend against the pure-Python oracle, on the shared cases of the contract.

Exact backends (direct summation) must agree to ``TOL`` by the project's max metric. An
approximate backend (``backends.is_exact(name) is False``) must keep the rms per-particle
relative error within the bound its module declares for its settings,
``module.tolerance(**options)``; if the module also names ``EXACT_OPTIONS`` (settings under
which it is direct summation, e.g. ``{"theta": 0.0}`` for a tree), those must agree to ``TOL``.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from conftest import random_system

import backends
from backends import reference

TOL = 1e-12  # float64 backends, by backends.relative_error


def _case(kind, n):
    if kind == "random":
        return random_system(n, seed=n)
    if kind == "coincident":  # several particles on top of each other, plus zero masses
        m, x = random_system(n, seed=n + 1)
        x[1::3] = x[0]
        m[2::4] = 0.0
        return m, x
    if kind == "far":  # far from the origin: differences must not lose what the oracle keeps
        return random_system(n, seed=n + 2, spread=1.0, offset=1e6)
    raise AssertionError(kind)


CASES = [
    (kind, n, softening, G)
    for kind in ("random", "coincident", "far")
    for n in (0, 1, 2, 3, 17, 100, 257)
    for softening, G in ((0.0, 1.0), (0.05, 1.0), (0.0, 6.674e-11), (0.05, 4.3e-3))
    if not (kind != "random" and n < 3)
]


@functools.cache
def _oracle(kind, n, softening, G):
    m, x = _case(kind, n)
    return reference.accel(m, x, G, softening=softening)


def rms_relative_error(a, ref) -> float:
    """rms over particles of ``|a_i - ref_i| / |ref_i|`` (``ref_i == 0``: over max |ref|)."""
    if len(ref) == 0:
        return 0.0
    diff = np.linalg.norm(np.asarray(a) - ref, axis=-1)
    norm = np.linalg.norm(ref, axis=-1)
    scale = norm.max() if norm.max() > 0.0 else 1.0
    return float(np.sqrt(np.mean((diff / np.where(norm > 0.0, norm, scale)) ** 2)))


def check_against(backend, out, ref, options=None):
    """Assert ``out`` agrees with ``ref`` within what ``backend`` promises for ``options``."""
    options = options or {}
    if backends.is_exact(backend.name):
        err = backends.relative_error(out, ref)
        assert err <= TOL, f"{backend.name}: error {err:.3e} > {TOL:.0e}"
        return
    bound = backend.module.tolerance(**options)
    err = rms_relative_error(out, ref)
    assert err <= bound, f"{backend.name} {options}: rms error {err:.3e} > its bound {bound:.1e}"


def _exact_options(backend):
    return getattr(backend.module, "EXACT_OPTIONS", None)


@pytest.mark.parametrize(("kind", "n", "softening", "G"), CASES)
def test_agrees_with_oracle(backend, kind, n, softening, G):
    m, x = _case(kind, n)
    m0, x0 = m.copy(), x.copy()
    out = backend.accel(m, x, G, softening=softening)
    ref = _oracle(kind, n, softening, G)
    assert isinstance(out, np.ndarray)
    assert out.shape == (n, 3) and out.dtype == np.float64
    assert np.isfinite(out).all()
    check_against(backend, out, ref)
    exact = _exact_options(backend)
    if not backends.is_exact(backend.name) and exact is not None:
        err = backends.relative_error(backend.accel(m, x, G, softening=softening, **exact), ref)
        assert err <= TOL, f"{backend.name} {exact}: error {err:.3e} > {TOL:.0e}"
    # the caller's arrays are untouched and the result is not one of them
    np.testing.assert_array_equal(m, m0)
    np.testing.assert_array_equal(x, x0)
    assert not np.shares_memory(out, x) and not np.shares_memory(out, m)


def test_shapes_of_tiny_inputs(backend):
    assert backend.accel([], np.empty((0, 3))).shape == (0, 3)
    np.testing.assert_array_equal(backend.accel([2.0], [[1.0, 2.0, 3.0]]), np.zeros((1, 3)))


def test_coincident_pair_gives_zero_not_nan(backend):
    out = backend.accel([1.0, 3.0], [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    np.testing.assert_array_equal(out, np.zeros((2, 3)))


@pytest.mark.parametrize(
    "convert",
    [
        pytest.param(lambda m, x: (m.tolist(), x.tolist()), id="lists"),
        pytest.param(lambda m, x: (m.astype(np.float32), x.astype(np.float32)), id="float32"),
        pytest.param(lambda m, x: ((m * 8).astype(np.int64), (x * 8).astype(np.int32)), id="int"),
        pytest.param(lambda m, x: (np.repeat(m, 2)[::2], np.repeat(x, 2, 0)[::2]), id="strided"),
        pytest.param(lambda m, x: (m, np.asfortranarray(x)), id="fortran"),
        pytest.param(lambda m, x: (m, np.ascontiguousarray(x.T).T), id="transposed"),
    ],
)
def test_accepts_array_likes(backend, convert):
    m, x = random_system(20, seed=3)
    m, x = convert(m, x)
    m_copy, x_copy = np.array(m, copy=True), np.array(x, copy=True)
    ref = reference.accel(m, x, 1.5, softening=0.01)
    out = backend.accel(m, x, 1.5, softening=0.01)
    check_against(backend, out, ref)
    np.testing.assert_array_equal(np.asarray(m), m_copy)
    np.testing.assert_array_equal(np.asarray(x), x_copy)


def test_scalar_types_for_G_and_softening(backend):
    m, x = random_system(10, seed=4)
    ref = reference.accel(m, x, 2.0, softening=0.5)
    for G, eps in ((2, 0.5), (np.float32(2.0), np.float64(0.5)), (np.int64(2), 0.5)):
        check_against(backend, backend.accel(m, x, G, softening=eps), ref)


def test_overflow_is_an_error_not_inf(backend):
    with pytest.raises(FloatingPointError, match="overflow"):
        backend.accel([1e308, 1e308], [[0.0, 0.0, 0.0], [1e-3, 0.0, 0.0]])
