"""Hypothesis property tests: agreement with the oracle and input rejection."""

from __future__ import annotations

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
    ref = reference.accel(m, x, G, softening=eps)
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
