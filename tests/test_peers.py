"""The peers (pytreegrav, fmm3dpy) under the suite's contract: oracle, validation, edges."""

from __future__ import annotations

import math
import subprocess
import sys
import warnings

import numpy as np
import pytest
from conftest import random_system
from test_validation import BAD

import backends
from backends import reference

PEERS = ["pytreegrav_bruteforce", "pytreegrav_tree", "fmm3d"]


@pytest.fixture(params=PEERS)
def peer(request):
    reason = backends.unavailable_reason(request.param)
    if reason is not None:
        pytest.skip(reason)
    return request.param


def _module(name):
    return backends.get(name).module


def _bound(name, **options):
    """Max per-particle error allowed: 1e-12 for exact peers, else rms from tolerance()."""
    if backends.is_exact(name):
        return 1e-12, 1e-12
    tol = _module(name).tolerance(**options)
    return tol, math.inf  # approximate: the rms is what is promised


def _rms(out, ref):
    err = np.linalg.norm(out - ref, axis=1) / np.linalg.norm(ref, axis=1)
    return float(np.sqrt(np.mean(err**2)))


def plummer(n, seed=0):
    """A Plummer sphere (clustered core, long tail), unit masses over n."""
    rng = np.random.default_rng(seed)
    r = 1.0 / np.sqrt(rng.random(n) ** (-2.0 / 3.0) - 1.0)
    v = rng.standard_normal((n, 3))
    return np.full(n, 1.0 / n), v / np.linalg.norm(v, axis=1)[:, None] * r[:, None]


def test_peers_are_registered_with_the_peers_extra():
    for name in PEERS:
        assert name in backends.names()
        assert backends._REGISTRY[name].extra == "peers"
    assert backends.is_exact("pytreegrav_bruteforce")
    assert not backends.is_exact("pytreegrav_tree") and not backends.is_exact("fmm3d")


def test_import_backends_does_not_import_the_peers():
    code = (
        "import sys, backends\nbackends.names(); backends.is_exact('fmm3d')\n"
        "bad = [m for m in ('pytreegrav', 'fmm3dpy', 'numba') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    ("system", "n"),
    [
        ("random", 2),
        ("random", 17),
        ("random", 300),
        ("plummer", 400),
        pytest.param("random", 2500, marks=pytest.mark.slow),
    ],
)
@pytest.mark.parametrize("G", [1.0, 6.674e-11])
def test_agrees_with_oracle_within_its_declared_bound(peer, system, n, G):
    m, x = random_system(n, seed=n) if system == "random" else plummer(n, seed=n)
    ref = reference.accel(m, x, G) if n <= 400 else backends.accel(m, x, G, backend="numpy")
    out = backends.accel(m, x, G, backend=peer)
    assert out.shape == (n, 3) and out.dtype == np.float64 and out.flags.c_contiguous
    rms_bound, max_bound = _bound(peer)
    assert _rms(out, ref) <= rms_bound
    assert backends.relative_error(out, ref) <= max_bound


@pytest.mark.slow  # N = 3 000 at eps 1e-12; fmm3d's default is also checked at small N
def test_fmm3d_at_its_default_agrees_to_1e_10():
    if backends.unavailable_reason("fmm3d") is not None:
        pytest.skip(backends.unavailable_reason("fmm3d"))
    for m, x in (random_system(3000, seed=1), plummer(3000, seed=2)):
        ref = backends.accel(m, x, backend="numpy")
        out = backends.accel(m, x, backend="fmm3d")
        assert backends.relative_error(out, ref) <= 1e-10  # the max, not only the rms
    # the declared bound is looser (1.5e-10): tight binaries reach 3e-11 (docs/peers.md)
    assert _module("fmm3d").tolerance() <= 1.5e-10


@pytest.mark.parametrize(
    ("peer_name", "options"),
    [
        ("pytreegrav_tree", {"theta": 0.3}),
        ("pytreegrav_tree", {"theta": 0.5, "quadrupole": True}),
        ("pytreegrav_tree", {"theta": 1.0}),
        # fmm3d at N = 3 000: seconds each; its eps is property-tested at N = 40 by default
        pytest.param("fmm3d", {"eps": 1e-6}, marks=pytest.mark.slow),
        pytest.param("fmm3d", {"eps": 1e-3}, marks=pytest.mark.slow),
    ],
)
def test_options_pass_through_and_meet_their_bound(peer_name, options):
    if backends.unavailable_reason(peer_name) is not None:
        pytest.skip(backends.unavailable_reason(peer_name))
    m, x = plummer(3000, seed=4)
    ref = backends.accel(m, x, backend="numpy")
    out = backends.accel(m, x, backend=peer_name, **options)
    tol = _module(peer_name).tolerance(**options)
    assert _rms(out, ref) <= tol
    default = backends.accel(m, x, backend=peer_name)
    assert not np.array_equal(out, default)  # the option reached the library


def test_tree_tolerance_follows_the_settings():
    if backends.unavailable_reason("pytreegrav_tree") is not None:
        pytest.skip(backends.unavailable_reason("pytreegrav_tree"))
    tol = _module("pytreegrav_tree").tolerance
    assert tol(theta=0.5) < tol(theta=0.7) < tol(theta=1.0)
    assert tol(theta=0.5, quadrupole=True) < tol(theta=0.5)
    assert tol() == tol(theta=0.7, quadrupole=False)


@pytest.mark.parametrize(("m", "x", "G", "eps", "exc", "msg"), BAD)
def test_rejects_bad_input(peer, m, x, G, eps, exc, msg):
    with pytest.raises(exc, match=msg):
        backends.accel(m, x, G, softening=eps, backend=peer)


@pytest.mark.parametrize("eps", [1e-3, 0.5, 2.0])
def test_softening_is_a_clear_error(peer, eps):
    m, x = random_system(5, seed=1)
    with pytest.raises(ValueError, match=r"softening must be 0 for backend"):
        backends.accel(m, x, softening=eps, backend=peer)
    backends.accel(m, x, softening=0.0, backend=peer)  # zero is fine


@pytest.mark.parametrize(
    ("peer_name", "options", "exc", "msg"),
    [
        ("pytreegrav_tree", {"theta": 0.0}, ValueError, "theta must be in"),
        ("pytreegrav_tree", {"theta": -0.5}, ValueError, "theta must be in"),
        ("pytreegrav_tree", {"theta": 1.5}, ValueError, "theta must be in"),
        ("pytreegrav_tree", {"theta": float("nan")}, ValueError, "theta must be in"),
        ("pytreegrav_tree", {"theta": "0.7"}, TypeError, "theta must be a real"),
        ("pytreegrav_tree", {"quadrupole": 1}, TypeError, "quadrupole must be True or False"),
        ("fmm3d", {"eps": 0.0}, ValueError, "eps must be"),
        ("fmm3d", {"eps": 1.0}, ValueError, "eps must be"),
        ("fmm3d", {"eps": float("inf")}, ValueError, "eps must be"),
        ("fmm3d", {"eps": None}, TypeError, "eps must be"),
        ("pytreegrav_bruteforce", {"theta": 0.5}, TypeError, "theta"),
    ],
)
def test_bad_options_are_rejected(peer_name, options, exc, msg):
    if backends.unavailable_reason(peer_name) is not None:
        pytest.skip(backends.unavailable_reason(peer_name))
    m, x = random_system(5, seed=2)
    with pytest.raises(exc, match=msg):
        backends.accel(m, x, backend=peer_name, **options)


def test_tree_rejects_negative_masses():
    if backends.unavailable_reason("pytreegrav_tree") is not None:
        pytest.skip(backends.unavailable_reason("pytreegrav_tree"))
    m, x = random_system(6, seed=2)
    m[3] = -1.0
    with pytest.raises(ValueError, match=r"masses must be >= 0.*\[3\]"):
        backends.accel(m, x, backend="pytreegrav_tree")


def test_n_0_1_2(peer):
    assert backends.accel(np.zeros(0), np.zeros((0, 3)), backend=peer).shape == (0, 3)
    out = backends.accel([2.0], [[1.0, 2.0, 3.0]], backend=peer)
    np.testing.assert_array_equal(out, np.zeros((1, 3)))
    m, x = np.array([1.0, 3.0]), np.array([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0]])
    out = backends.accel(m, x, 2.0, backend=peer)
    np.testing.assert_allclose(out, [[1.5, 0.0, 0.0], [-0.5, 0.0, 0.0]], rtol=1e-12, atol=0)


@pytest.mark.parametrize("n", [7, 400, 3000])
def test_coincident_particles_contribute_nothing(peer, n):
    m, x = random_system(n, seed=n + 1)
    x[1::3] = x[0]  # a third of the particles on one point
    m[2::4] = 0.0
    ref = reference.accel(m, x) if n <= 400 else backends.accel(m, x, backend="numpy")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no library warning reaches the user
        out = backends.accel(m, x, backend=peer)
    rms_bound, max_bound = _bound(peer)
    assert _rms(out, ref) <= rms_bound
    assert backends.relative_error(out, ref) <= max_bound


def test_all_particles_on_one_point_and_zero_masses(peer):
    x = np.zeros((50, 3))
    np.testing.assert_array_equal(backends.accel(np.ones(50), x, backend=peer), 0.0)
    m, x = random_system(50, seed=3)
    np.testing.assert_array_equal(backends.accel(np.zeros(50), x, backend=peer), 0.0)


def test_inputs_are_not_modified_and_array_likes_work(peer):
    m, x = random_system(30, seed=5)
    m0, x0 = m.copy(), x.copy()
    out = backends.accel(m.tolist(), x.tolist(), backend=peer)
    np.testing.assert_array_equal(m, m0)
    np.testing.assert_array_equal(x, x0)
    rms_bound, _ = _bound(peer)
    assert _rms(out, reference.accel(m, x)) <= rms_bound
    x_f = np.asfortranarray(x)
    assert _rms(backends.accel(m.astype(np.float32), x_f, backend=peer), out) <= 1e-6


@pytest.mark.parametrize(("k", "j"), [(-500, 0), (500, 0), (500, 1000), (-300, -600)])
def test_float64_range_scaling(peer, k, j):
    """Positions times 2**k and masses times 2**j: the result times 2**(j - 2k)."""
    m, x = random_system(40, seed=8)
    base = backends.accel(m, x, backend=peer)
    out = backends.accel(np.ldexp(m, j), np.ldexp(x, k), backend=peer)
    assert backends.relative_error(out, np.ldexp(base, j - 2 * k)) <= 1e-12


def test_overflow_is_an_error_not_inf(peer):
    with pytest.raises(FloatingPointError, match="overflow"):
        backends.accel([1e308, 1e308], [[0.0, 0.0, 0.0], [1e-3, 0.0, 0.0]], backend=peer)


def test_library_versions_are_exposed(peer):
    versions = _module(peer).library_versions()
    assert isinstance(versions, dict) and versions
    for lib, version in versions.items():
        assert lib in ("pytreegrav", "fmm3dpy") and version[0].isdigit()


def _disc_round_a_mass(n, seed):
    """A thin disc (radii 0.1 to 1, thickness 1e-3, tilted) round a mass 1e6 times its own."""
    rng = np.random.default_rng(seed)
    r = rng.uniform(0.1, 1.0, n)
    phi = rng.uniform(0.0, 2.0 * np.pi, n)
    x = np.stack([r * np.cos(phi), r * np.sin(phi), 1e-3 * rng.standard_normal(n)], 1)
    x = x @ np.linalg.qr(rng.standard_normal((3, 3)))[0]
    m = rng.random(n)
    m[0] = 1e6 * m.sum()
    x[0] = 0.0
    return m, x


def test_fmm3d_asks_fmm3dpy_for_a_twentieth_of_eps():
    from backends import peer_fmm3d

    assert peer_fmm3d.library_eps(1e-6) == pytest.approx(5e-8, rel=1e-12)
    assert peer_fmm3d.library_eps(1e-3) == pytest.approx(5e-5, rel=1e-12)
    assert peer_fmm3d.library_eps() == 1e-12  # the default is asked for as it is
    assert peer_fmm3d.library_eps(1e-11) == 1e-12
    assert peer_fmm3d.library_eps(1e-13) == 1e-13
    with pytest.raises(ValueError, match="eps must be"):
        peer_fmm3d.library_eps(0.0)


def test_fmm3d_keeps_its_bound_on_a_disc_round_a_dominant_mass():
    # fmm3dpy's precision comes in steps, and per particle it can miss the precision asked
    # for many times over at the bottom of one: here, asked for eps = 1e-6 itself, rms
    # 6.7e-6, 2.2x the declared 3 eps (docs/peers.md); asked for eps / 20 it keeps it
    if backends.unavailable_reason("fmm3d") is not None:
        pytest.skip(backends.unavailable_reason("fmm3d"))
    m, x = _disc_round_a_mass(10_000, seed=2)
    ref = backends.accel(m, x, backend="numba_parallel")
    for eps in (1e-3, 1e-6):
        out = backends.accel(m, x, backend="fmm3d", eps=eps)
        assert _rms(out, ref) <= backends.tolerance("fmm3d", eps=eps), eps


def test_fmm3d_sums_near_coincident_clusters_directly_instead_of_crashing():
    if backends.unavailable_reason("fmm3d") is not None:
        pytest.skip(backends.unavailable_reason("fmm3d"))
    m, x = random_system(3000, seed=4)
    x[1:1001] = x[0] + 1e-15 * np.random.default_rng(1).standard_normal((1000, 3))
    assert "below 1e-10 of the extent" in _module("fmm3d").direct_reason(m, x)
    rows = list(range(0, 3000, 100))
    ref = reference.accel_rows(m, x, 1.0, 0.0, rows)
    out = backends.accel(m, x, backend="fmm3d", eps=1e-3)  # the FMM would crash or mis-sum
    assert backends.relative_error(out[rows], ref) <= 1e-12


def test_fmm3d_direct_sum_keeps_a_cluster_far_smaller_than_the_system():
    """A cluster 1e-100 across and one particle 1e100 away, summed directly (too many
    scales): the direct sum's pair threshold was a fixed 1e-100 of the extent and dropped
    every pair of the cluster (all its accelerations 0). Through ``accel`` such a system is
    refused (the far particle's result is beyond float64's reach); the wrapper's own sum is
    checked on the cluster's rows, whose forces the far particle changes by 1e-200."""
    if backends.unavailable_reason("fmm3d") is not None:
        pytest.skip(backends.unavailable_reason("fmm3d"))
    from backends import peer_fmm3d

    rng = np.random.default_rng(3)
    x = np.vstack([1e-100 * rng.random((20, 3)), [[1e100, 0.0, 0.0]]])
    m = np.ones(21)
    assert peer_fmm3d.direct_reason(m, x) is not None  # the premise: the direct sum
    out = peer_fmm3d._fmm(m, x, 1.0, 1e-12)[:20]
    ref = backends.accel(m[:20], x[:20], backend="numpy")
    assert backends.relative_error(out, ref) <= 1e-12
    with pytest.raises(FloatingPointError):
        backends.accel(m, x, backend="fmm3d")
