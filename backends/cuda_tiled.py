"""Backend ``cuda``: a numba-cuda all-pairs kernel in the tiled shared-memory style.

Strategy: one GPU thread per target particle, ``tile`` threads per block. The sources are
walked tile by tile: each thread of a block loads one source (x, y, z, m) into shared
memory, the block synchronizes, then every thread accumulates the whole tile into its own
target's acceleration. Uneven N is handled by guards (the last tile is only partly loaded and
only its valid part is summed; threads past N load and synchronize but write nothing), never
by padding. Float64 by default; ``precision="float32"`` computes in float32 (accumulating in
float32), and either way the result comes back as a new float64 NumPy array, multiplied by G
on the host. Memory on the device: O(N).

Availability: needs an NVIDIA GPU with a CUDA driver and the ``numba-cuda`` package
(``pip install 'nbody-backends[cuda]'``). With the environment variable
``NUMBA_ENABLE_CUDASIM=1`` set before Numba is imported, Numba's CUDA simulator counts as
available instead: the same kernel runs (very slowly, in Python threads) on the CPU, which is
how the tests check it on machines without a GPU. ``numba.cuda`` is imported only when this
backend is used or probed, never at ``import backends``.
"""

from __future__ import annotations

import importlib.util
import math

import numpy as np

from backends import BackendUnavailableError
from backends._contract import check_precision, evaluate, validate

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
            return None
    except Exception as exc:  # a broken driver or toolkit: say what it said
        return f"{_NEEDS} (numba.cuda failed: {exc})"
    return f"{_NEEDS} (no CUDA GPU or driver found)"


def _kernel(m, x, G, softening, tile, precision):
    from numba import cuda

    from backends._cuda_kernel import get_kernel

    n = m.shape[0]
    dtype = np.dtype(precision)
    src = np.empty((n, 4), dtype=dtype)
    src[:, :3] = x
    src[:, 3] = m
    d_src = cuda.to_device(src)
    d_out = cuda.device_array((n, 3), dtype=dtype)
    blocks = -(-n // tile)
    get_kernel(tile, precision, simulating())[blocks, tile](
        d_src, n, dtype.type(softening * softening), d_out
    )
    out = d_out.copy_to_host().astype(np.float64)  # copy_to_host waits for the kernel
    out *= G
    return out


def _check_float32_range(inp) -> None:
    big = float(np.finfo(np.float32).max)
    for arr, name in ((inp.masses, "masses"), (inp.positions, "positions")):
        if arr.size and np.abs(arr).max() > big:
            raise ValueError(f"{name} exceed the float32 range; use precision='float64'")
    if inp.softening > math.sqrt(big):
        raise ValueError("softening**2 exceeds the float32 range; use precision='float64'")


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
    if precision == "float32":
        _check_float32_range(inp)
    return evaluate("cuda", inp, _kernel, int(tile), precision)
