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


def _rsqrt(precision: str, simulating: bool):
    """Return ``r**-0.5`` for the device: libdevice's ``rsqrt``, or plain Python (simulator).

    libdevice's double ``rsqrt`` replaced a square root and a division per pair and made the
    float64 kernel 1.5x faster on an H200; the accelerations moved by at most 3.3e-15
    (relative, N = 2**18).
    """
    if simulating:
        return lambda r2: 1.0 / math.sqrt(r2)
    from numba.cuda import libdevice

    return libdevice.rsqrt if precision == "float64" else libdevice.rsqrtf


def _make_kernel(tile: int, precision: str, simulating: bool):
    ftype = float64 if precision == "float64" else float32
    zero = np.dtype(precision).type(0)  # a constant of the working precision
    fastmath = precision == "float32" and not simulating  # approximate rsqrt and arithmetic
    rsqrt = _rsqrt(precision, simulating)

    @cuda.jit(fastmath=fastmath)
    def kernel(src, n, eps2, out):
        # src: (n, 4) rows (x, y, z, m) of the working precision; out: (n, 3).
        # Each thread has two targets, i0 and i0 + tile: every source loaded from shared
        # memory serves two pairs.
        shared = cuda.shared.array(shape=(tile, 4), dtype=ftype)
        tx = cuda.threadIdx.x
        i0 = cuda.blockIdx.x * 2 * tile + tx
        i1 = i0 + tile
        t0 = min(i0, n - 1)  # targets past N compute a dummy and write nothing
        t1 = min(i1, n - 1)
        x0 = src[t0, 0]
        y0 = src[t0, 1]
        z0 = src[t0, 2]
        x1 = src[t1, 0]
        y1 = src[t1, 1]
        z1 = src[t1, 2]
        ax0 = zero
        ay0 = zero
        az0 = zero
        ax1 = zero
        ay1 = zero
        az1 = zero
        for base in range(0, n, tile):
            j = base + tx
            if j < n:
                for c in range(4):
                    shared[tx, c] = src[j, c]
            else:  # past N: a massless copy of the last source, so every tile is whole
                for c in range(3):
                    shared[tx, c] = src[n - 1, c]
                shared[tx, 3] = zero
            cuda.syncthreads()
            for k in range(tile):
                sx = shared[k, 0]
                sy = shared[k, 1]
                sz = shared[k, 2]
                sm = shared[k, 3]
                dx = sx - x0
                dy = sy - y0
                dz = sz - z0
                r2 = dx * dx + dy * dy + dz * dz + eps2
                inv = rsqrt(r2) if r2 > zero else zero  # self-pair, coincident: nothing
                s = sm * inv * inv * inv
                ax0 += dx * s
                ay0 += dy * s
                az0 += dz * s
                dx = sx - x1
                dy = sy - y1
                dz = sz - z1
                r2 = dx * dx + dy * dy + dz * dz + eps2
                inv = rsqrt(r2) if r2 > zero else zero
                s = sm * inv * inv * inv
                ax1 += dx * s
                ay1 += dy * s
                az1 += dz * s
            cuda.syncthreads()  # the tile is read by all before it is overwritten
        if i0 < n:
            out[i0, 0] = ax0
            out[i0, 1] = ay0
            out[i0, 2] = az0
        if i1 < n:
            out[i1, 0] = ax1
            out[i1, 1] = ay1
            out[i1, 2] = az1

    return kernel


def get_kernel(tile: int, precision: str, simulating: bool):
    """Return the kernel for ``tile`` threads per block in ``precision``, built once.

    Launch as ``kernel[ceil(n / (2 * tile)), tile](src, n, eps2, out)`` (two targets per
    thread) with ``src`` an (n, 4) device array of rows (x, y, z, m), ``eps2`` the squared
    softening and ``out`` an (n, 3) device array, all of the working precision.
    """
    key = (tile, precision, simulating)
    if key not in _KERNELS:
        _KERNELS[key] = _make_kernel(tile, precision, simulating)
    return _KERNELS[key]
