r"""The kernel's contract, written once: formula, input validation, error metric.

For N point masses ``m_i`` at positions ``x_i`` every backend computes

.. math::

    a_i = G \sum_{j \ne i} m_j \frac{x_j - x_i}{(|x_j - x_i|^2 + \epsilon^2)^{3/2}}

* ``epsilon`` is Plummer softening (default 0). With ``epsilon == 0`` a pair at zero
  separation contributes nothing: coincident particles are skipped, never a NaN or inf.
* ``masses`` has shape ``(N,)`` and ``positions`` shape ``(N, 3)``; anything array-like and
  real is accepted and converted once to C-contiguous float64. The result is a new
  ``(N, 3)`` float64 NumPy array; the caller's arrays are never modified.
* N = 0 gives a ``(0, 3)`` array; N = 1 gives zeros.
* Throughput is reported as N(N-1)/t interactions per second, whatever trick a kernel uses.
* The error of a result ``a`` against the oracle ``ref`` is
  ``max_i |a_i - ref_i| / |ref_i|`` (Euclidean norms per particle); particles with
  ``ref_i == 0`` are compared absolutely against the largest ``|ref|``
  (see :func:`relative_error`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

__all__ = [
    "FLOAT32_TOLERANCE",
    "PRECISIONS",
    "Inputs",
    "benchmark_system",
    "check_precision",
    "check_result",
    "evaluate",
    "interactions",
    "relative_error",
    "validate",
]

PRECISIONS = ("float64", "float32")  #: the spellings of ``precision=``, default first
#: Bound on the max per-particle relative error of a ``precision="float32"`` result.
FLOAT32_TOLERANCE = 1e-4

_REAL_KINDS = "iuf"  # signed int, unsigned int, float; bool, complex, object, str rejected


class Inputs(NamedTuple):
    """Validated kernel inputs: what every kernel may trust."""

    masses: np.ndarray  #: (N,) C-contiguous float64, finite
    positions: np.ndarray  #: (N, 3) C-contiguous float64, finite
    G: float  #: finite
    softening: float  #: finite, >= 0


def _as_real_array(value, name: str) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError) as exc:  # ragged nested lists, unconvertible objects
        raise TypeError(f"{name} must be a real array_like; could not convert it: {exc}") from exc
    if arr.dtype.kind not in _REAL_KINDS:
        raise TypeError(
            f"{name} must hold real numbers (integer or float); got dtype {arr.dtype} "
            f"({type(value).__name__})"
        )
    return arr


def _as_real_scalar(value, name: str) -> float:
    arr = _as_real_array(value, name)
    if arr.ndim != 0:
        raise TypeError(f"{name} must be a real scalar; got an array of shape {arr.shape}")
    out = float(arr)
    if not math.isfinite(out):
        raise ValueError(f"{name} must be finite; got {out!r}")
    return out


def validate(masses, positions, G=1.0, softening=0.0) -> Inputs:
    """Check and convert the kernel inputs, naming the argument at fault.

    Parameters
    ----------
    masses : (N,) array_like of real
        Point masses.
    positions : (N, 3) array_like of real
        Cartesian positions.
    G : real scalar, optional
        Gravitational constant; must be finite.
    softening : real scalar, optional
        Plummer softening length; must be finite and >= 0.

    Returns
    -------
    Inputs
        C-contiguous float64 arrays (new arrays unless the input already was C-contiguous
        float64, which is then shared read-only with the kernel, never written) and floats.

    Raises
    ------
    TypeError
        Non-real dtypes (complex, object, str, bool) or an array where a scalar belongs.
    ValueError
        Wrong ndim or shape, length mismatch, NaN or inf, negative softening.
    """
    G = _as_real_scalar(G, "G")
    softening = _as_real_scalar(softening, "softening")
    if softening < 0.0:
        raise ValueError(f"softening must be >= 0; got {softening!r}")

    m = _as_real_array(masses, "masses")
    x = _as_real_array(positions, "positions")
    if m.ndim != 1:
        raise ValueError(f"masses must have shape (N,); got shape {m.shape}")
    if x.ndim != 2 or x.shape[1] != 3:
        raise ValueError(f"positions must have shape (N, 3); got shape {x.shape}")
    if m.shape[0] != x.shape[0]:
        raise ValueError(
            f"masses and positions must have the same length N; got {m.shape[0]} masses "
            f"and {x.shape[0]} positions"
        )
    m = np.ascontiguousarray(m, dtype=np.float64)
    x = np.ascontiguousarray(x, dtype=np.float64)
    for arr, name in ((m, "masses"), (x, "positions")):
        if not np.isfinite(arr).all():
            bad = np.argwhere(~np.isfinite(arr))[0]
            where = ", ".join(str(int(k)) for k in bad)
            got = float(arr[tuple(bad)])
            raise ValueError(f"{name} must be finite; got {got!r} at index [{where}]")
    return Inputs(m, x, G, softening)


def check_precision(precision) -> str:
    """Return ``precision`` if it is one of :data:`PRECISIONS`, else raise ``ValueError``."""
    if not isinstance(precision, str) or precision not in PRECISIONS:
        valid = ", ".join(repr(p) for p in PRECISIONS)
        raise ValueError(f"precision must be one of {valid}; got {precision!r}")
    return precision


def check_result(acc: np.ndarray, backend: str) -> np.ndarray:
    """Raise if a kernel produced non-finite values (float64 overflow), else return ``acc``.

    Valid inputs can still overflow float64 (positions near 1e308, or G * m near the limit,
    or two particles so close that ``r**3`` underflows). We refuse to hand out an inf/NaN.
    """
    if not np.isfinite(acc).all():
        raise FloatingPointError(
            f"backend {backend!r}: the result overflowed float64 (inf or NaN). The inputs are "
            "finite but too extreme in scale (huge coordinates, masses or G, or separations "
            "so small that r**3 underflows); rescale the units."
        )
    return acc


def interactions(n: int) -> int:
    """Ordered pairs per evaluation, N(N-1): the throughput convention."""
    return n * (n - 1)


def benchmark_system(n: int, seed: int = 42) -> tuple[np.ndarray, np.ndarray]:
    """Return the benchmark system: masses on [0, 1) and standard normal positions.

    ``rng = np.random.default_rng(seed); rng.random(n), rng.standard_normal((n, 3))``, the
    distribution every figure of the project is measured on (seed 42 by default).

    Returns
    -------
    masses : (n,) ndarray of float64
    positions : (n, 3) ndarray of float64
    """
    rng = np.random.default_rng(seed)
    return rng.random(n), rng.standard_normal((n, 3))


def relative_error(a, ref) -> float:
    """Error of ``a`` against ``ref`` by the project's metric.

    ``max_i |a_i - ref_i| / |ref_i|`` with Euclidean norms per particle; where
    ``|ref_i| == 0`` the difference is divided by ``max_i |ref_i|`` instead (and if every
    ``ref_i`` is zero, the absolute difference is returned).

    Parameters
    ----------
    a, ref : (N, 3) array_like of float
        Result and reference.

    Returns
    -------
    float
        0.0 for N = 0.
    """
    a = np.asarray(a, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if a.shape != ref.shape:
        raise ValueError(f"shapes differ: result {a.shape} vs reference {ref.shape}")
    if a.size == 0:
        return 0.0
    diff = np.linalg.norm(a - ref, axis=-1)
    norm = np.linalg.norm(ref, axis=-1)
    scale = norm.max()
    denom = np.where(norm > 0.0, norm, scale if scale > 0.0 else 1.0)
    return float((diff / denom).max())


def evaluate(backend: str, inp: Inputs, kernel, *args) -> np.ndarray:
    """Run ``kernel(masses, positions, G, softening, *args)`` on validated inputs.

    The shared tail of every public ``accel``: N <= 1 is answered without touching compiled
    code (a ``(0, 3)`` array, or zeros), and the kernel's result is checked for overflow.
    """
    n = inp.masses.shape[0]
    if n <= 1:
        return np.zeros((n, 3), dtype=np.float64)
    return check_result(kernel(inp.masses, inp.positions, inp.G, inp.softening, *args), backend)
