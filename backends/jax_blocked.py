"""Backend ``jax``: a jit-compiled float64 kernel, target rows in blocks with ``lax.map``.

Strategy: the N particles are padded to a bucketed size ``P`` (the next power of two up to
1024, then the next multiple of 1024) so that nearby N share one compiled kernel. ``lax.map``
walks over blocks of ``B`` target rows; each block forms its separations to all ``P`` sources
and reduces them in one jit-compiled XLA computation. Padded sources are masked out
(``j < N``), padded target rows are dropped. Memory is O(B x P): XLA materializes a few
(B, P) float64 temporaries per block, and the default ``B`` keeps each near 1 MiB on the CPU,
so they stay in cache (N = 100 000 needs a few MiB, never an N x N array), and near 128 MiB
on an accelerator (a guess, not yet tuned on a GPU). The kernel runs on JAX's default device
(a GPU when JAX has one) or on the one chosen with ``device=``.

``precision="float32"``: the pair arithmetic (separations, ``r**2``, ``r**-3``, products) is
float32 and each row's sum is accumulated in float64. Coordinates are centred on the
bounding box and scaled by a power of two, then each is split into a float32 pair
``hi + lo`` (``lo`` the float32 rounding of the remainder), and a separation is
``(hi_j - hi_i) + (lo_j - lo_i)``: accurate to float32 rounding of the separation itself,
even for a close pair far from the origin. Masses are scaled by a power of two so that the
largest is in ``[1, 2)``. Inputs float32 cannot hold (an extent above 2**179, a non-zero
mass below 2**-100 of the largest, or a softening above 2**60 half-extents) are computed in
float64 instead, and so are the rows of particles with a partner closer than 2**-26 of the
extent (:mod:`backends._float32_guard`) and a result that is not finite. Measured max / rms
per-particle relative error (CPU, 2026-12-01, against float64): 7.2e-7 / 3.3e-8 on the
benchmark system and 1.3e-6 / 3.8e-8 on a Plummer sphere with masses over five decades,
N = 10 000; the bound promised is :data:`backends._contract.FLOAT32_TOLERANCE` (1e-4).

Float64 without a global side effect: every call runs inside the scoped
``jax.enable_x64(True)`` context manager (JAX >= 0.8), which switches 64-bit types on for
that call only (it is part of JAX's jit cache key); ``jax_enable_x64`` is never changed
globally and the user needs to set nothing.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from backends import BackendUnavailableError, _float32_guard
from backends._contract import check_precision, column_range, evaluate, validate

_SMALL = 1024  # up to here P is a power of two (>= 8); above it a multiple of _SMALL
_TARGET_ELEMENTS = {"cpu": 1 << 17}  # elements per (B, P) temporary: 1 MiB of float64
_TARGET_ELEMENTS_ACCELERATOR = 1 << 24  # GPUs and others: 128 MiB (untuned: no GPU measured yet)


def padded_size(n: int) -> int:
    """Return the bucketed size ``P >= n`` to pad ``n`` particles to (one compile per P)."""
    if n <= _SMALL:
        return max(8, 1 << (n - 1).bit_length())
    return -(-n // _SMALL) * _SMALL


def default_block(p: int, platform: str = "cpu") -> int:
    """Rows per block for padded size ``p``: a power of two dividing ``p``."""
    target = _TARGET_ELEMENTS.get(platform, _TARGET_ELEMENTS_ACCELERATOR)
    rows = max(1, min(p, _SMALL, target // p))
    return 1 << (rows.bit_length() - 1)


@functools.partial(jax.jit, static_argnames=("block",))
def _accel_padded(m, x, n, eps2, G, *, block):
    """Accelerations of all P padded particles; sources ``j >= n`` are masked out."""
    p = m.shape[0]
    valid = jnp.arange(p) < n
    xs, ys, zs = x[:, 0], x[:, 1], x[:, 2]

    def rows(t):  # t: (B, 3) targets -> (B, 3) accelerations
        dx = xs[None, :] - t[:, 0:1]
        dy = ys[None, :] - t[:, 1:2]
        dz = zs[None, :] - t[:, 2:3]
        r2 = dx * dx + dy * dy + dz * dz + eps2
        # r2 == 0 (self-pair, coincident unsoftened pairs) and padding contribute nothing;
        # the masked-out lanes divide by 1.0, so no 0/0 or 0*inf is ever formed.
        ok = (r2 > 0.0) & valid[None, :]
        safe = jnp.where(ok, r2, 1.0)
        w = jnp.where(ok, m[None, :] / (safe * jnp.sqrt(safe)), 0.0)
        return jnp.stack([(w * dx).sum(axis=1), (w * dy).sum(axis=1), (w * dz).sum(axis=1)], 1)

    out = lax.map(rows, x.reshape(p // block, block, 3))
    return G * out.reshape(p, 3)


@functools.partial(jax.jit, static_argnames=("block",))
def _accel_padded32(hi, lo, m, n, eps2, *, block):
    """Float32 pair arithmetic, float64 row sums; ``hi``, ``lo`` (P, 3), ``m`` (P,) float32."""
    p = m.shape[0]
    valid = jnp.arange(p) < n
    src = [(hi[:, k], lo[:, k]) for k in range(3)]

    def rows(t):  # t: (B, 7) float32 targets (hi x y z, lo x y z, unused) -> (B, 3) float64
        d = [
            (sh[None, :] - t[:, k : k + 1]) + (sl[None, :] - t[:, 3 + k : 4 + k])
            for k, (sh, sl) in enumerate(src)
        ]
        r2 = d[0] * d[0] + d[1] * d[1] + d[2] * d[2] + eps2
        ok = (r2 > 0.0) & valid[None, :]
        safe = jnp.where(ok, r2, jnp.float32(1.0))
        w = jnp.where(ok, m[None, :] * lax.rsqrt(safe) ** 3, jnp.float32(0.0))
        return jnp.stack([(w * dk).sum(axis=1, dtype=jnp.float64) for dk in d], 1)

    t = jnp.concatenate([hi, lo, jnp.zeros((p, 1), jnp.float32)], axis=1)
    return lax.map(rows, t.reshape(p // block, block, 7)).reshape(p, 3)


def _split32(m, x, softening):
    """Split the inputs for the float32 kernel; None where float32 cannot hold them.

    Returns centred, scaled float32 ``hi``, ``lo`` (N, 3), scaled float32 masses, ``eps2``
    and the factor that turns the kernel's sums back into accelerations.
    """
    lo_b, hi_b = column_range(x)
    half = max(0.5 * softening, float((0.5 * hi_b - 0.5 * lo_b).max()))
    mmax = float(m.max())
    pos = m[m > 0.0]
    if half > 2.0**179 or (mmax > 0.0 and float(pos.min()) < mmax * 2.0**-100):
        return None
    s = 1.0 if half == 0.0 else 2.0 ** (-np.frexp(half)[1])  # half * s in [0.5, 1)
    sm = 1.0 if mmax == 0.0 else 2.0 ** (1 - np.frexp(mmax)[1])  # mmax * sm in [1, 2)
    c = (x - (0.5 * lo_b + 0.5 * hi_b)) * s
    hi = c.astype(np.float32)
    lo = (c - hi).astype(np.float32)
    eps2 = np.float32(softening * s) ** 2
    return hi, lo, (m * sm).astype(np.float32), eps2, s * s / sm


def _x64():
    enable_x64 = getattr(jax, "enable_x64", None)
    if enable_x64 is None:
        raise BackendUnavailableError(
            f"backend 'jax' needs jax >= 0.8 (the scoped jax.enable_x64 context manager); "
            f"found jax {jax.__version__}: pip install 'nbody-backends[jax]'"
        )
    return enable_x64(True)


def unavailable_reason() -> str | None:
    """Return why the installed JAX cannot run this backend (jax >= 0.8 needed), or None."""
    try:
        major, minor = (int(part) for part in jax.__version__.split(".")[:2])
    except ValueError:  # an unusual version string: rely on the feature check alone
        major, minor = 0, 8
    if (major, minor) < (0, 8) or getattr(jax, "enable_x64", None) is None:
        return (
            f"backend 'jax' needs jax >= 0.8 (the scoped jax.enable_x64 context manager); "
            f"found jax {jax.__version__}: pip install 'nbody-backends[jax]' (Python >= 3.11)"
        )
    return None


def resolve_device(device) -> jax.Device:
    """Return the JAX device meant by ``device``.

    Parameters
    ----------
    device : None, jax.Device or str
        None: JAX's default device (the first GPU when JAX has one, else the CPU). A string
        names a platform, optionally with an index: ``"cpu"``, ``"gpu"``, ``"cuda:1"``,
        ``"tpu:0"``.

    Raises
    ------
    ValueError
        No such device here (the message lists the devices JAX has).
    TypeError
        ``device`` is neither None, a string nor a JAX device.
    """
    if device is None:
        return jax.devices()[0]
    if isinstance(device, jax.Device):
        return device
    if not isinstance(device, str):
        raise TypeError(
            f"device must be None, a jax.Device or a string like 'cpu' or 'gpu:0'; "
            f"got {type(device).__name__}"
        )
    platform, _, index = device.strip().lower().partition(":")
    have = ", ".join(f"{d.platform}:{d.id}" for d in jax.devices())
    try:
        k = int(index) if index else 0
        if k < 0:  # a list index would count from the end: "cpu:-1" is no device name
            raise IndexError(k)
        return jax.devices(platform)[k]
    except (RuntimeError, ValueError, IndexError):
        raise ValueError(f"device={device!r}: no such JAX device here; JAX has {have}") from None


#: Float64 (B, P) temporaries XLA keeps alive at once in a block step (measured: 4096 x 4096
#: took 0.52 GB more peak memory than a small block, 2026-12-03, CPU).
_TEMPORARIES = 4


def block_plan(n: int, block: int | None, platform: str = "cpu") -> tuple[int, int]:
    """Return ``(P, B)``: the padded size and rows per block for ``n`` particles.

    ``block=None``: :func:`padded_size` and :func:`default_block`. An explicit ``block``
    is capped at what ``n`` needs (a block larger than the padded system would only add
    padded rows: ``block=4096`` at N = 10 cost 0.5 GB), and ``n`` is padded to a multiple
    of it.
    """
    if block is None:
        p = padded_size(n)
        return p, default_block(p, platform)
    block = min(block, padded_size(n))
    return -(-n // block) * block, block


def block_bytes(n: int, block: int | None, platform: str = "cpu") -> int:
    """Return the bytes of temporaries one block step takes: ``4 x B x P`` float64 values."""
    p, b = block_plan(n, block, platform)
    return _TEMPORARIES * 8 * b * p


def _check_block(n: int, block: int | None, platform: str) -> None:
    """Refuse an explicit block whose temporaries exceed half of this machine's memory."""
    if block is None:
        return
    need = block_bytes(n, block, platform)
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return
    if need > memory // 2:
        p, b = block_plan(n, block, platform)
        raise ValueError(
            f"block={block} at N = {n} needs about {need / 2**30:.1f} GiB of temporaries "
            f"({_TEMPORARIES} arrays of {b} x {p} float64), more than half of this machine's "
            f"{memory / 2**30:.1f} GiB: use a smaller block (the default takes about "
            f"{block_bytes(n, None, platform) / 2**20:.0f} MiB)"
        )


def _kernel(m, x, G, softening, device, block, precision="float64"):
    n = m.shape[0]
    p, block = block_plan(n, block, device.platform)
    split = None
    if precision == "float32" and not _float32_guard.needs_float64(x, softening):
        split = _split32(m, x, softening)  # None: out of float32's reach, float64 below
    if split is not None:
        rows = _float32_guard.close_rows(x, softening)
        hi, lo, ms, eps2, factor = split
        pad = [np.zeros((p, 3), np.float32), np.zeros((p, 3), np.float32), np.zeros(p, np.float32)]
        pad[0][:n], pad[1][:n], pad[2][:n] = hi, lo, ms
        with _x64():
            args = jax.device_put(tuple(pad), device)
            res = _accel_padded32(*args, n, eps2, block=block)
            res.block_until_ready()
            out = np.asarray(res)
        with np.errstate(over="ignore", invalid="ignore"):  # rows repaired or redone below
            out = (out[:n] * G) * factor  # a new float64 array
        _float32_guard.repair(out, rows, m, x, G, softening)
        if np.isfinite(out).all():
            return out
    mp = np.zeros(p)
    mp[:n] = m
    xp = np.zeros((p, 3))
    xp[:n] = x
    with _x64():
        mp, xp = jax.device_put((mp, xp), device)
        res = _accel_padded(mp, xp, n, softening * softening, G, block=block)
        res.block_until_ready()
        out = np.asarray(res)
    return np.array(out[:n], dtype=np.float64)  # a new, writable, finished array


def accel(
    masses, positions, G=1.0, *, softening=0.0, device=None, block=None, precision="float64"
) -> np.ndarray:
    """Gravitational accelerations with a jit-compiled JAX kernel, in float64 or float32.

    Parameters
    ----------
    masses : (N,) array_like of real
    positions : (N, 3) array_like of real
    G : float, optional
        Gravitational constant.
    softening : float, optional
        Plummer softening length (>= 0).
    device : None, jax.Device or str, optional
        Where to run: None for JAX's default device (a GPU when JAX has one), a
        ``jax.Device``, or a string such as ``"cpu"``, ``"gpu"``, ``"cuda:0"``
        (see :func:`resolve_device`).
    block : int, optional
        Target rows per ``lax.map`` step; default :func:`default_block`. An explicit block
        is capped at the padded N (:func:`block_plan`) and N padded to a multiple of it (one
        compile per padded size); one whose temporaries (:func:`block_bytes`, ``4 x B x P``
        float64) exceed half the machine's memory is a ``ValueError`` saying what it costs.
    precision : {"float64", "float32"}, optional
        ``"float32"``: float32 pair arithmetic, float64 row sums (module docstring; max
        relative error ~1e-6, bound :data:`backends._contract.FLOAT32_TOLERANCE`).

    Returns
    -------
    (N, 3) ndarray of float64
        Computed on the device (float64, or as said for ``precision="float32"``), finished
        (``block_until_ready``), copied to NumPy.

    Notes
    -----
    Float64 is switched on with the scoped ``jax.enable_x64(True)`` context manager for the
    duration of the call only; JAX's global ``jax_enable_x64`` setting is left untouched.
    """
    precision = check_precision(precision)
    inp = validate(masses, positions, G, softening)
    dev = resolve_device(device)
    if block is not None and (
        isinstance(block, bool) or not isinstance(block, (int, np.integer)) or block < 1
    ):
        raise ValueError(f"block must be a positive integer; got {block!r}")
    block = None if block is None else int(block)
    _check_block(inp.masses.shape[0], block, dev.platform)
    return evaluate("jax", inp, _kernel, dev, block, precision)
