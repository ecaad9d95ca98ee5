"""Hypothesis property tests: agreement with the oracle and input rejection."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import backends
from backends import reference

SETTINGS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

# coordinates on a 1e-3 grid in [-1000, 1000]: coincident points happen, r**3 never underflows
coord = st.integers(-(10**6), 10**6).map(lambda k: k / 1000.0)
mass = st.one_of(st.just(0.0), st.floats(0.0, 1e3, allow_subnormal=False))


@st.composite
def systems(draw):
    n = draw(st.integers(0, 24))
    m = draw(hnp.arrays(np.float64, (n,), elements=mass))
    x = draw(hnp.arrays(np.float64, (n, 3), elements=coord))
    G = draw(st.sampled_from([1.0, 6.674e-11, -2.0, 1e5]))
    eps = draw(st.sampled_from([0.0, 0.0, 1e-3, 0.5]))
    return m, x, G, eps


def summation_scale(m, x, G, eps):
    """|G| sum_j m_j |d_ij| / (r_ij^2 + eps^2)^1.5: what rounding errors are relative to."""
    d = x[None, :, :] - x[:, None, :]
    r2 = (d * d).sum(-1) + eps * eps
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.where(r2 > 0, m[None, :] * np.sqrt((d * d).sum(-1)) / r2**1.5, 0.0)
    return abs(G) * w.sum(axis=1)


@SETTINGS
@given(systems())
def test_agrees_with_oracle(backend, system):
    m, x, G, eps = system
    try:
        ref = reference.accel(m, x, G, softening=eps)
    except FloatingPointError:  # tiny masses: accelerations below the normal float64 range
        with pytest.raises(FloatingPointError, match="underflow|overflow"):
            backend.accel(m, x, G, softening=eps)
        return
    out = backend.accel(m, x, G, softening=eps)
    assert out.shape == ref.shape
    # forward error bound of a sum: relative to the sum of the magnitudes of its terms
    bound = 1e-12 * summation_scale(m, x, G, eps)
    assert np.all(np.linalg.norm(out - ref, axis=-1) <= bound + 1e-300)


bad_shape = st.one_of(
    hnp.array_shapes(min_dims=0, max_dims=3, max_side=4).filter(
        lambda s: not (len(s) == 2 and s[1] == 3)
    )
)


@SETTINGS
@given(shape=bad_shape)
def test_rejects_any_wrong_positions_shape(backend, shape):
    x = np.zeros(shape)
    n = shape[0] if len(shape) else 1
    with pytest.raises(ValueError, match="positions must have shape"):
        backend.accel(np.ones(n), x)


@SETTINGS
@given(
    n=st.integers(1, 12),
    data=st.data(),
    bad=st.sampled_from([np.nan, np.inf, -np.inf]),
    which=st.sampled_from(["masses", "positions"]),
)
def test_rejects_non_finite_anywhere(backend, n, data, bad, which):
    m, x = np.ones(n), np.arange(3.0 * n).reshape(n, 3)
    target = m if which == "masses" else x
    idx = data.draw(st.tuples(*(st.integers(0, s - 1) for s in target.shape)))
    target[idx] = bad
    with pytest.raises(ValueError, match=f"{which} must be finite"):
        backend.accel(m, x)


@SETTINGS
@given(n=st.integers(0, 8), k=st.integers(0, 8).filter(lambda k: k))
def test_rejects_length_mismatch(backend, n, k):
    with pytest.raises(ValueError, match="same length N"):
        backend.accel(np.ones(n + k), np.zeros((n, 3)))


def test_property_suite_covers_every_available_backend():
    # guards against the fixture silently parametrizing over nothing
    assert len(backends.available()) >= 5


# --------------------------------------------------------------------------- float64 range
# The kernel is homogeneous: positions (and softening) times 2**k, masses times 2**j and G times
# 2**g scale the exact result by 2**(g + j - 2k). Whenever that result is a normal float64 every
# backend must return it (to 1e-12); where it is not representable, FloatingPointError.

TINY_EXP = -1022  # smallest normal float64: 2**-1022
RANGE_SYSTEM = backends.benchmark_system(12, seed=5)


def _expected_or_none(ref, shift):
    """``ref * 2**shift`` if every particle's acceleration stays a normal float64, else None.

    Returns "edge" when a particle lies within a factor 8 of either limit (not asserted).
    """
    peak = np.abs(ref).max(axis=1)
    exps = np.frexp(peak)[1] + shift  # peak * 2**shift lies in [2**(e-1), 2**e)
    if np.any((exps > TINY_EXP - 2) & (exps < TINY_EXP + 4)) or np.any(
        (exps > 1021) & (exps < 1027)
    ):
        return "edge"
    if np.all(exps > TINY_EXP + 1) and np.all(exps <= 1024):
        return np.ldexp(ref, shift)
    return None


def _reference_for(backend_name, m, x, G, eps):
    """The oracle for exact backends; the backend's own unscaled result for approximate ones."""
    if backends.is_exact(backend_name):
        return reference.accel(m, x, G, softening=eps)
    return backends.accel(m, x, G, softening=eps, backend=backend_name)


def _check_scaled(backend_name, k, j, g, eps):
    m, x = RANGE_SYSTEM
    ref = _reference_for(backend_name, m, x, 1.0, eps)
    expected = _expected_or_none(ref, g + j - 2 * k)
    if isinstance(expected, str):
        return
    args = (np.ldexp(m, j), np.ldexp(x, k), math.ldexp(1.0, g))
    kwargs = {"softening": math.ldexp(eps, k), "backend": backend_name}
    if expected is None:
        with pytest.raises(FloatingPointError, match="overflow|underflow"):
            backends.accel(*args, **kwargs)
    else:
        out = backends.accel(*args, **kwargs)
        assert backends.relative_error(out, expected) <= 1e-12, (k, j, g)


@pytest.mark.parametrize(
    ("k", "j", "g"),
    [
        (-500, 0, 0),  # positions ~3e-151: r**3 underflows without rescaling
        (500, 0, 0),  # positions ~3e150: r**3 overflows, accelerations ~1e-301
        (500, 500, 0),
        (-500, -1000, 0),
        (1000, 1000, 0),  # accelerations ~2**-1000 ~ 1e-301
        (-1000, -1000, -900),
        (0, 0, 1000),  # G = 2**1000
        (0, 0, -1000),  # G = 2**-1000
        (300, -400, 0),
        (40, -1000, 0),  # masses ~1e-301 at ordinary-ish positions
    ],
)
@pytest.mark.parametrize("eps", [0.0, 0.25])
def test_scaled_system_gives_the_scaled_result(backend_name, k, j, g, eps):
    _check_scaled(backend_name, k, j, g, eps)


@pytest.mark.parametrize(
    ("k", "j", "g", "kind"),
    [
        (500, -100, 0, "underflow"),  # exact result ~2**-1100: below float64
        (-500, 100, 0, "overflow"),  # exact result ~2**1100
        (0, 1000, 100, "overflow"),
        (0, -1000, -100, "underflow"),
    ],
)
def test_unrepresentable_result_is_a_floating_point_error(backend_name, k, j, g, kind):
    m, x = RANGE_SYSTEM
    with pytest.raises(FloatingPointError, match=kind):
        backends.accel(np.ldexp(m, j), np.ldexp(x, k), math.ldexp(1.0, g), backend=backend_name)


RANGE_SETTINGS = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@RANGE_SETTINGS
@given(
    k=st.integers(-1000, 1000),
    j=st.integers(-1000, 1000),
    g=st.integers(-1000, 1000),
    eps=st.sampled_from([0.0, 0.25]),
)
def test_scaling_property_over_k_and_j(backend_name, k, j, g, eps):
    _check_scaled(backend_name, k, j, g, eps)


@settings(max_examples=60, deadline=None)
@given(k=st.integers(-1000, 1000), j=st.integers(-1000, 1000), g=st.integers(-1000, 1000))
def test_oracle_rows_follow_the_same_scaling(k, j, g):
    """The sampled-rows oracle that checks large N takes the same exact rescaling."""
    m, x = RANGE_SYSTEM
    ref = reference.accel_rows(m, x, 1.0, 0.0, [0, 7])
    expected = _expected_or_none(ref, g + j - 2 * k)
    if isinstance(expected, str):
        return
    args = (np.ldexp(m, j), np.ldexp(x, k), math.ldexp(1.0, g), 0.0, [0, 7])
    if expected is None:
        with pytest.raises(FloatingPointError):
            reference.accel_rows(*args)
    else:
        np.testing.assert_array_equal(reference.accel_rows(*args), expected)


def test_relative_error_is_scale_free():
    m, x = RANGE_SYSTEM
    a = reference.accel(m, x)
    b = a * (1 + 1e-9)
    want = backends.relative_error(b, a)
    for shift in (-1000, -600, 600, 1000):
        assert backends.relative_error(np.ldexp(b, shift), np.ldexp(a, shift)) == pytest.approx(
            want, rel=1e-6
        )
