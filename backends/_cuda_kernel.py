"""The tiled CUDA kernel of backend ``cuda`` (imported only when that backend runs).

It lives in its own module because it imports ``numba.cuda`` at the top: Numba's CUDA simulator
swaps a kernel's module-level ``cuda`` global for its fake module, and that module must never
be imported by ``import backends``.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda, float32, float64

_KERNELS: dict = {}  # (tile, precision, simulating) -> kernel


def _make_kernel(tile: int, precision: str, simulating: bool):
    ftype = float64 if precision == "float64" else float32
    zero = np.dtype(precision).type(0)  # a constant of the working precision
    fastmath = precision == "float32" and not simulating  # approximate sqrt and division

    @cuda.jit(fastmath=fastmath)
    def kernel(src, n, eps2, out):
        # src: (n, 4) rows (x, y, z, m) of the working precision; out: (n, 3)
        shared = cuda.shared.array(shape=(tile, 4), dtype=ftype)
        tx = cuda.threadIdx.x
        i = cuda.blockIdx.x * tile + tx
        ti = min(i, n - 1)  # threads past N compute a dummy target and write nothing
        xi = src[ti, 0]
        yi = src[ti, 1]
        zi = src[ti, 2]
        ax = zero
        ay = zero
        az = zero
        for base in range(0, n, tile):
            j = base + tx
            if j < n:  # the last tile is only partly loaded
                for c in range(4):
                    shared[tx, c] = src[j, c]
            cuda.syncthreads()
            for k in range(min(tile, n - base)):  # ... and only its loaded part is summed
                dx = shared[k, 0] - xi
                dy = shared[k, 1] - yi
                dz = shared[k, 2] - zi
                r2 = dx * dx + dy * dy + dz * dz + eps2
                if r2 > zero:  # self-pair and coincident unsoftened pairs add nothing
                    s = shared[k, 3] / (r2 * math.sqrt(r2))
                    ax += dx * s
                    ay += dy * s
                    az += dz * s
            cuda.syncthreads()  # the tile is read by all before it is overwritten
        if i < n:
            out[i, 0] = ax
            out[i, 1] = ay
            out[i, 2] = az

    return kernel


def get_kernel(tile: int, precision: str, simulating: bool):
    """Return the kernel for ``tile`` threads per block in ``precision``, built once.

    Launch as ``kernel[ceil(n / tile), tile](src, n, eps2, out)`` with ``src`` an (n, 4)
    device array of rows (x, y, z, m), ``eps2`` the squared softening and ``out`` an (n, 3)
    device array, all of the working precision.
    """
    key = (tile, precision, simulating)
    if key not in _KERNELS:
        _KERNELS[key] = _make_kernel(tile, precision, simulating)
    return _KERNELS[key]
