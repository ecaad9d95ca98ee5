"""Backend ``jax``: device selection, row blocks, padding, and no global float64 switch."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import random_system

import backends
from backends import reference

pytestmark = pytest.mark.skipif(
    backends.unavailable_reason("jax") is not None,
    reason=str(backends.unavailable_reason("jax")),
)

TOL = 1e-12


@pytest.fixture(scope="module")
def jb():
    from backends import jax_blocked

    return jax_blocked


@pytest.fixture(scope="module")
def system():
    m, x = random_system(37, seed=11)
    return m, x, reference.accel(m, x, 0.7, softening=0.01)


def test_device_cpu_by_name_object_and_index(jb, system):
    import jax

    m, x, ref = system
    cpu = jax.devices("cpu")[0]
    for device in (None, "cpu", "CPU:0", cpu):
        out = backends.accel(m, x, 0.7, softening=0.01, backend="jax", device=device)
        assert backends.relative_error(out, ref) <= TOL, device
    assert jb.resolve_device("cpu") == cpu
    assert jb.resolve_device(None) == jax.devices()[0]


def test_unknown_device_is_a_clear_error(jb, system):
    import jax

    m, x, _ = system
    with pytest.raises(ValueError, match=r"device='nope': no such JAX device here; JAX has cpu:0"):
        backends.accel(m, x, backend="jax", device="nope")
    with pytest.raises(ValueError, match=r"device='cpu:99': no such JAX device"):
        backends.accel(m, x, backend="jax", device="cpu:99")
    with pytest.raises(ValueError, match=r"device='cpu:x'"):
        backends.accel(m, x, backend="jax", device="cpu:x")
    with pytest.raises(TypeError, match=r"device must be None, a jax.Device or a string.*int"):
        backends.accel(m, x, backend="jax", device=0)
    if not any(d.platform == "gpu" for d in jax.devices()):
        with pytest.raises(ValueError, match=r"device='gpu': no such JAX device"):
            backends.accel(m, x, backend="jax", device="gpu")
    # a bad device is reported even where the kernel is not needed (N <= 1)
    with pytest.raises(ValueError, match="no such JAX device"):
        backends.accel([1.0], [[0.0, 0.0, 0.0]], backend="jax", device="nope")


@pytest.mark.parametrize("block", [1, 3, 8, 36, 37, 64])
def test_explicit_blocks_smaller_and_larger_than_n(system, block):
    m, x, ref = system
    out = backends.accel(m, x, 0.7, softening=0.01, backend="jax", block=block)
    assert backends.relative_error(out, ref) <= TOL


@pytest.mark.parametrize("block", [0, -2, 2.5, True, "8"])
def test_bad_block_is_rejected(system, block):
    m, x, _ = system
    with pytest.raises(ValueError, match="block must be a positive integer"):
        backends.accel(m, x, backend="jax", block=block)


@pytest.mark.parametrize("n", [1, 2, 7, 8, 9, 1000, 1024, 1025, 10_000, 100_000, 262_144])
def test_padding_and_default_blocks_bound_memory(jb, n):
    p = jb.padded_size(n)
    assert n <= p and (p == jb.padded_size(p))  # idempotent buckets
    for platform in ("cpu", "gpu"):
        b = jb.default_block(p, platform)
        assert 1 <= b <= p and p % b == 0 and (b & (b - 1)) == 0
    # on the CPU one (B, P) float64 temporary stays within 1 MiB: no N x N array at N = 100 000
    assert jb.default_block(p, "cpu") * p * 8 <= max(1 << 20, 8 * p)
    if n > 1024:
        assert p - n < 1024


def test_many_rows_blocks_and_masked_padding(system):
    # N not a power of two and several blocks: padding rows/sources must not leak in
    m, x = random_system(1500, seed=5)
    x[7] = x[3]  # a coincident pair at softening 0
    rows = np.array([0, 3, 7, 999, 1499])
    ref = reference.accel_rows(m, x, 2.0, 0.0, rows)
    out = backends.accel(m, x, 2.0, backend="jax")
    assert backends.relative_error(out[rows], ref) <= TOL


def test_float64_without_a_global_switch(system):
    import jax

    before = jax.config.jax_enable_x64
    m, x, ref = system
    out = backends.accel(m, x, 0.7, softening=0.01, backend="jax")
    assert backends.relative_error(out, ref) <= TOL  # float32 would give ~1e-7
    assert jax.config.jax_enable_x64 == before
    assert type(out) is np.ndarray and out.flags.writeable and out.flags.c_contiguous


def test_nearby_sizes_share_one_compiled_kernel(jb):
    cache_size = getattr(jb._accel_padded, "_cache_size", None)
    if cache_size is None:
        pytest.skip("this jax has no jit _cache_size() to count compilations")
    backends.accel(*random_system(1100), backend="jax")  # P = 2048
    before = cache_size()
    for n in (1500, 1777, 2048):  # the same bucket, different N
        backends.accel(*random_system(n), backend="jax")
    assert cache_size() == before
    backends.accel(*random_system(2049), backend="jax")  # the next bucket compiles once
    assert cache_size() == before + 1


# --- float32 mode -------------------------------------------------------------------------


def _plummer(n, seed=0):
    """Plummer sphere with log-uniform masses over five decades."""
    rng = np.random.default_rng(seed)
    u = rng.uniform(1e-10, 1.0, n)
    r = 1.0 / np.sqrt(u ** (-2.0 / 3.0) - 1.0)
    v = rng.standard_normal((n, 3))
    v /= np.linalg.norm(v, axis=1)[:, None]
    m = 10.0 ** rng.uniform(0.0, 5.0, n)
    return m / m.sum(), r[:, None] * v


@pytest.mark.parametrize("n", [2, 5, 37, 1500])
def test_float32_against_oracle(n):
    from backends._contract import FLOAT32_TOLERANCE

    systems = [random_system(n, seed=n), _plummer(n, seed=n)]
    for m, x in systems:
        x = x + 1e4  # far from the origin: the centred hi + lo split keeps close pairs exact
        ref = reference.accel(m, x, 0.7, softening=0.001)
        out = backends.accel(m, x, 0.7, softening=0.001, backend="jax", precision="float32")
        assert out.dtype == np.float64 and out.shape == (n, 3)
        assert backends.relative_error(out, ref) <= FLOAT32_TOLERANCE


def test_float32_coincident_and_out_of_range(system):
    from backends._contract import FLOAT32_TOLERANCE

    m, x = random_system(40, seed=3)
    x[5::7] = x[3]
    out = backends.accel(m, x, backend="jax", precision="float32")
    assert np.isfinite(out).all()
    assert backends.relative_error(out, reference.accel(m, x)) <= FLOAT32_TOLERANCE
    m[2] = 1e-40  # masses over more than 2**100: computed in float64 instead
    out = backends.accel(m, x, backend="jax", precision="float32")
    assert backends.relative_error(out, reference.accel(m, x)) <= TOL


def test_float32_precision_spelling(system):
    m, x, _ = system
    assert backends.precisions("jax") == ("float64", "float32")
    with pytest.raises(ValueError, match="float32"):
        backends.accel(m, x, backend="jax", precision="half")
    out = backends.accel(m, x, backend="jax", precision="float64")
    assert backends.relative_error(out, reference.accel(m, x)) <= TOL
