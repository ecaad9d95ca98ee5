"""Backend ``cuda``: a numba-cuda all-pairs kernel in the tiled shared-memory style.

Strategy: two target particles per GPU thread, ``tile`` threads per block (a block serves
``2 * tile`` targets). The sources are walked tile by tile: each thread of a block loads one
source (x, y, z, m) into shared memory, the block synchronizes, then every thread
accumulates the whole tile into its two targets' accelerations, each source read once for
both, with ``r**-3`` from libdevice's ``rsqrt`` cubed (no square root and division). Uneven
N: the last tile is filled up with massless copies of the last source (each adds exactly
zero, at a separation a real pair already has), and targets past N compute a dummy and
write nothing. Float64 by default; ``precision="float32"`` computes in float32 (accumulating in
float32) on positions centred and scaled by a power of two and masses scaled by one
(:func:`_scaled32`), falling back to float64 where float32 cannot hold the system; either
way the result comes back as a new float64 NumPy array, multiplied by G on the host. The
float32 coordinates are plain (no ``hi + lo`` split as in ``numba_parallel``): a pair closer
than about 1e-3 of the extent has its separation to float32 rounding of the extent, so a
particle dominated by such a partner can miss the 1e-4 bound. Memory on the device: O(N).

Availability: needs an NVIDIA GPU with a CUDA driver and the ``numba-cuda`` package
(``pip install 'nbody-backends[cuda]'``). With the environment variable
``NUMBA_ENABLE_CUDASIM=1`` set before Numba is imported, Numba's CUDA simulator counts as
available instead: the same kernel runs (very slowly, in Python threads) on the CPU, which is
how the tests check it on machines without a GPU. ``numba.cuda`` is imported only when this
backend is used or probed, never at ``import backends``.
"""

from __future__ import annotations

import importlib.util

import numpy as np

from backends import BackendUnavailableError, _float32_guard
from backends._contract import check_precision, column_range, evaluate, validate

_NEEDS = (
    "backend 'cuda' needs an NVIDIA GPU with a CUDA driver and numba-cuda: "
    "pip install 'nbody-backends[cuda]'"
)
DEFAULT_TILE = 128  # threads per block = sources per shared-memory tile, on a GPU
SIMULATOR_TILE = 8  # the simulator runs every thread as a Python thread: keep blocks small


def simulating() -> bool:
    """Return True when Numba's CUDA simulator is on (``NUMBA_ENABLE_CUDASIM=1``)."""
    from numba.core import config

    return bool(config.ENABLE_CUDASIM)


def unavailable_reason() -> str | None:
    """Return why this backend cannot run here, or None (a GPU, or the simulator, is there)."""
    if simulating():
        return None
    if importlib.util.find_spec("numba_cuda") is None:
        return f"{_NEEDS} (numba-cuda is not installed)"
    try:
        from numba import cuda

        if cuda.is_available():
            return _compiler_reason()
    except Exception as exc:  # a broken driver or toolkit: say what it said
        return f"{_NEEDS} (numba.cuda failed: {exc})"
    return f"{_NEEDS} (no CUDA GPU or driver found)"


def _compiler_reason() -> str | None:
    """Why numba-cuda's kernel compiler cannot load here, or None.

    numba-cuda loads its NumPy support when it compiles the first kernel; a NumPy newer
    than it supports breaks that import deep inside the compiler (numba-cuda 0.30.4 with
    NumPy 2.5: ``np.row_stack`` is gone, an ``AttributeError`` at the first launch, seen on
    a GPU machine). Importing the module here turns that into the backend's unavailability,
    with the reason.
    """
    try:
        importlib.import_module("numba.cuda.np.arrayobj")
    except ModuleNotFoundError:  # another numba-cuda layout: nothing to check
        return None
    except Exception as exc:
        return (
            f"{_NEEDS} (numba-cuda cannot compile kernels with NumPy {np.__version__}: "
            f"{type(exc).__name__}: {exc}; install a NumPy release that numba-cuda supports "
            "or a numba-cuda that supports this NumPy)"
        )
    return None


def device_inputs(m, x, precision):
    """Copy the inputs to the device as ``(n, 4)`` rows (x, y, z, m) of ``precision``.

    Returns the device source rows and an ``(n, 3)`` device array for the kernel's output
    (what :func:`backends._cuda_kernel.get_kernel`'s kernels take).
    """
    from numba import cuda

    n = m.shape[0]
    dtype = np.dtype(precision)
    src = np.empty((n, 4), dtype=dtype)
    src[:, :3] = x
    src[:, 3] = m
    return cuda.to_device(src), cuda.device_array((n, 3), dtype=dtype)


def _launch(m, x, softening, tile, precision):
    """Run the device kernel; return its sums ``sum_j m_j d_ij / r_ij**3`` as float64."""
    from backends._cuda_kernel import get_kernel

    n = m.shape[0]
    d_src, d_out = device_inputs(m, x, precision)
    blocks = -(-n // (2 * tile))  # two targets per thread
    get_kernel(tile, precision, simulating())[blocks, tile](
        d_src, n, np.dtype(precision).type(softening * softening), d_out
    )
    return d_out.copy_to_host().astype(np.float64)  # copy_to_host waits for the kernel


def _scaled32(m, x, softening):
    """Centred, power-of-two-scaled float32 inputs and the factor back; None: use float64.

    Positions are centred on the bounding box and scaled so that the larger of the
    half-extent and the softening lies in ``[0.5, 1)``, masses so that the largest lies in
    ``[1, 2)``: float32's range then holds every ``r**3`` of a pair not closer than about
    ``2**-40`` of the extent, whatever the units (positions of 1e-13 overflowed float32 and
    raised a false ``FloatingPointError``; positions of 1e13 or a softening of 1e15 gave
    zeros). A softening above 2**60 half-extents or masses spanning more than 2**100 are out
    of float32's reach (:mod:`backends._float32_guard`): None.
    """
    if _float32_guard.needs_float64(x, softening):
        return None
    lo, hi = column_range(x)
    half = max(0.5 * softening, float((0.5 * hi - 0.5 * lo).max()))
    mmax = float(m.max())
    positive = m[m > 0.0]
    if mmax > 0.0 and float(positive.min()) < mmax * 2.0**-100:
        return None
    s = 1.0 if half == 0.0 else 2.0 ** (-np.frexp(half)[1])
    sm = 1.0 if mmax <= 0.0 else 2.0 ** (1 - np.frexp(mmax)[1])
    return (x - (0.5 * lo + 0.5 * hi)) * s, m * sm, softening * s, s * s / sm


def _kernel(m, x, G, softening, tile, precision):
    if precision == "float32":
        prep = _scaled32(m, x, softening)
        if prep is not None:
            xs, ms, eps, factor = prep
            with np.errstate(over="ignore", invalid="ignore"):
                out = _launch(ms, xs, eps, tile, "float32") * (G * factor)
            if np.isfinite(out).all():  # else a pair too close for float32: float64 below
                return out
    out = _launch(m, x, softening, tile, "float64")
    out *= G
    return out


def accel(masses, positions, G=1.0, *, softening=0.0, precision="float64", tile=None) -> np.ndarray:
    """Gravitational accelerations with a tiled numba-cuda kernel on an NVIDIA GPU.

    Parameters
    ----------
    masses : (N,) array_like of real
    positions : (N, 3) array_like of real
    G : float, optional
        Gravitational constant (applied in float64 on the host).
    softening : float, optional
        Plummer softening length (>= 0).
    precision : {"float64", "float32"}, optional
        Working precision on the device (positions, masses, sums). float32 gives about
        1e-6 relative error at small N, growing slowly with N; float64 agrees with the
        oracle to ~1e-15.
    tile : int, optional
        Threads per block, equal to the sources per shared-memory tile (1 to 1024). Default
        :data:`DEFAULT_TILE` on a GPU, :data:`SIMULATOR_TILE` under the simulator.

    Returns
    -------
    (N, 3) ndarray of float64
        A new array, copied back from the device after the kernel finished.

    Raises
    ------
    BackendUnavailableError
        No CUDA GPU / numba-cuda here (and the simulator is not switched on).
    """
    inp = validate(masses, positions, G, softening)
    precision = check_precision(precision)
    if tile is not None and (
        isinstance(tile, bool) or not isinstance(tile, (int, np.integer)) or not 1 <= tile <= 1024
    ):
        raise ValueError(f"tile must be an integer from 1 to 1024; got {tile!r}")
    reason = unavailable_reason()
    if reason is not None:
        raise BackendUnavailableError(reason)
    if tile is None:
        tile = SIMULATOR_TILE if simulating() else DEFAULT_TILE
    return evaluate("cuda", inp, _kernel, int(tile), precision)
