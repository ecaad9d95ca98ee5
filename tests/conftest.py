"""Shared fixtures: one parametrization over every registered backend (peers: test_peers.py)."""

from __future__ import annotations

import pytest

import backends

# The peers (pytreegrav, fmm3dpy) have no Plummer softening: tests/test_peers.py covers them.
SHARED = [name for name in backends.names() if backends._REGISTRY[name].extra != "peers"]


@pytest.fixture(params=SHARED)
def backend_name(request):
    """Each registered backend but the peers; skipped (with the reason) where it cannot run."""
    reason = backends.unavailable_reason(request.param)
    if reason is not None:
        pytest.skip(reason)
    return request.param


@pytest.fixture
def backend(backend_name):
    """The backend object for :func:`backend_name`."""
    return backends.get(backend_name)


def random_system(n, seed=0, spread=1.0, offset=0.0):
    """Random masses on [0, 1) and Gaussian positions: the benchmark distribution."""
    m, x = backends.benchmark_system(n, seed)
    return m, offset + spread * x
