"""Physics checks that do not use the oracle."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import random_system

import backends


def test_two_bodies_closed_form(backend):
    G, m1, m2, d, eps = 2.5, 3.0, 7.0, 4.0, 0.3
    x = np.array([[1.0, -2.0, 0.5], [1.0, -2.0, 0.5]])
    x[1] += d * np.array([2.0, 3.0, 6.0]) / 7.0  # |(2, 3, 6)| = 7
    u = (x[1] - x[0]) / d
    for softening in (0.0, eps):
        out = backend.accel([m1, m2], x, G, softening=softening)
        mag = G / (d * d + softening**2) ** 1.5 * d
        np.testing.assert_allclose(out[0], m2 * mag * u, rtol=1e-14, atol=0)
        np.testing.assert_allclose(out[1], -m1 * mag * u, rtol=1e-14, atol=0)


@pytest.mark.parametrize("softening", [0.0, 0.1])
def test_total_force_vanishes(backend, softening):
    """Newton's third law: sum_i m_i a_i = 0 up to rounding (an approximate method: to
    the relative error bound it declares for its default settings)."""
    m, x = random_system(200, seed=11)
    out = backend.accel(m, x, softening=softening)
    total = (m[:, None] * out).sum(axis=0)
    scale = (m[:, None] * np.abs(out)).sum(axis=0)
    bound = 1e-12 if backends.is_exact(backend.name) else backend.module.tolerance()
    assert np.all(np.abs(total) <= bound * scale), (total, scale)


def test_symmetric_configuration_has_no_force_at_centre(backend):
    # a cube's 8 vertices and 6 face centres, equal masses, plus a particle at the centre
    verts = np.array([[i, j, k] for i in (-1, 1) for j in (-1, 1) for k in (-1, 1)], float)
    faces = np.vstack([np.eye(3), -np.eye(3)]) * 2.0
    x = np.vstack([[0.0, 0.0, 0.0], verts, faces]) + np.array([5.0, -3.0, 0.25])
    m = np.ones(len(x))
    out = backend.accel(m, x, softening=0.0)
    assert np.abs(out[0]).max() <= 1e-15 * np.abs(out[1:]).max()
    # and the outer particles feel a force pointing inward
    inward = np.einsum("ij,ij->i", out[1:], x[0] - x[1:])
    assert np.all(inward > 0)
