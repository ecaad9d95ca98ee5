r"""The kernel's contract, written once: formula, input validation, error metric.

For N point masses ``m_i`` at positions ``x_i`` every backend computes

.. math::

    a_i = G \sum_{j \ne i} m_j \frac{x_j - x_i}{(|x_j - x_i|^2 + \epsilon^2)^{3/2}}

* ``epsilon`` is Plummer softening (default 0). With ``epsilon == 0`` a pair at zero
  separation contributes nothing: coincident particles are skipped, never a NaN or inf.
* ``masses`` has shape ``(N,)`` and ``positions`` shape ``(N, 3)``; anything array-like and
  real is accepted (read-only, memory-mapped, strided or byte-swapped arrays and nested
  lists too) and converted once to C-contiguous float64. The result is a new
  ``(N, 3)`` float64 NumPy array; the caller's arrays are never modified.
* N = 0 gives a ``(0, 3)`` array; N = 1 gives zeros.
* Any finite input in the float64 range is accepted. The kernel is homogeneous: scaling the
  positions (and softening) by ``2**k``, the masses by ``2**j`` and ``G`` by ``2**g`` scales
  the result by ``2**(g + j - 2k)``. :func:`evaluate` uses this to take powers of two out of
  inputs far from 1 before any backend's kernel runs and to put them back exactly afterwards
  (see :func:`rescale`), so every backend returns the exactly scaled result whenever it is a
  normal float64, and raises ``FloatingPointError`` where it is not (overflow, or a nonzero
  acceleration below the smallest normal float64, about 2.2e-308).
* Precision: every backend computes in float64 by default and accepts ``precision="float64"``;
  those whose registry entry lists it (:func:`backends.precisions`) also take
  ``precision="float32"`` (single-precision pair arithmetic; the result is still float64,
  within :data:`FLOAT32_TOLERANCE` of float64, or computed in float64 where float32 cannot
  hold the inputs). Any other value, ``None`` included, and ``"float32"`` on a float64-only
  backend, is a ``ValueError`` naming what is valid, on every backend (:func:`check_precision`,
  the one rule).
* Throughput is reported as N(N-1)/t interactions per second, whatever trick a kernel uses.
* The error of a result ``a`` against the oracle ``ref`` is
  ``max_i |a_i - ref_i| / |ref_i|`` (Euclidean norms per particle); particles with
  ``ref_i == 0`` are compared absolutely against the largest ``|ref|``
  (see :func:`relative_error`).
"""

from __future__ import annotations

import math
import operator
from typing import NamedTuple

import numpy as np

__all__ = [
    "FLOAT32_TOLERANCE",
    "PRECISIONS",
    "Inputs",
    "benchmark_system",
    "check_precision",
    "check_softening",
    "check_result",
    "evaluate",
    "interactions",
    "non_finite_rows",
    "relative_error",
    "rescale",
    "unscale",
    "validate",
]

PRECISIONS = ("float64", "float32")  #: the spellings of ``precision=``, default first
#: Bound on the max per-particle relative error of a ``precision="float32"`` result. (Not
#: for a particle whose force nearly cancels; rows float32 cannot resolve, with a partner
#: closer than ~1e-8 of the system's size, are computed in float64: backends._float32_guard.)
FLOAT32_TOLERANCE = 1e-4

_REAL_KINDS = "iuf"  # signed int, unsigned int, float; bool, complex, object, str rejected
#: Inputs whose largest magnitude lies in [2**-SAFE_EXPONENT, 2**SAFE_EXPONENT] are passed to the
#: kernels unscaled; beyond it :func:`rescale` takes a power of two out (see there).
SAFE_EXPONENT = 100
_TINY = float(np.finfo(np.float64).tiny)  # smallest normal float64, 2**-1022


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


def check_softening(softening) -> float:
    """Return ``softening`` as a float: a real scalar, finite and >= 0 (:func:`validate`'s rule).

    Raises ``TypeError`` or ``ValueError`` naming ``softening``, as :func:`validate` does.
    """
    softening = _as_real_scalar(softening, "softening")
    if softening < 0.0:
        raise ValueError(f"softening must be >= 0; got {softening!r}")
    return softening


def column_range(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the per-column minimum and maximum of a 2-D array with at least one row.

    The same values as ``x.min(axis=0)`` and ``x.max(axis=0)``, one column at a time: NumPy
    reduces a C-ordered ``(N, 3)`` array along axis 0 with an inner loop over its 3 columns,
    about 12x slower (8.7 ms against 0.64 ms for both at N = 2**18, 31 against 2.6 ms at
    2**20), which every call of every backend paid several times over.
    """
    cols = range(x.shape[1])
    lo = np.array([x[:, k].min() for k in cols], dtype=x.dtype)
    hi = np.array([x[:, k].max() for k in cols], dtype=x.dtype)
    return lo, hi


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
        C-contiguous, writeable, native-endian float64 arrays (new arrays unless the input
        already was a writeable C-contiguous float64 array, which is then shared with the
        kernel and never written; read-only arrays and memory maps are copied once) and floats.

    Raises
    ------
    TypeError
        Non-real dtypes (complex, object, str, bool) or an array where a scalar belongs.
    ValueError
        Wrong ndim or shape, length mismatch, NaN or inf, negative softening.
    """
    G = _as_real_scalar(G, "G")
    softening = check_softening(softening)

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
    m = _kernel_array(m)
    x = _kernel_array(x)
    _require_finite(m, "masses")
    _require_finite(x, "positions")
    return Inputs(m, x, G, softening)


def _require_finite(arr: np.ndarray, name: str) -> None:
    """Raise ``ValueError`` naming ``name``, the first non-finite value and its index."""
    if not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(arr))[0]
        where = ", ".join(str(int(k)) for k in bad)
        got = float(arr[tuple(bad)])
        raise ValueError(f"{name} must be finite; got {got!r} at index [{where}]")


def _kernel_array(arr: np.ndarray) -> np.ndarray:
    """Return a C-contiguous, writeable, native-endian float64 ndarray of ``arr``'s values.

    ``arr`` itself when it already is one (shared with the kernel, never written), else one
    copy: read-only arrays and read-only memory maps are copied too, since compiled code
    (Numba, the peers' kernels) is typed on the flag and may refuse or recompile for it.
    """
    out = np.ascontiguousarray(arr, dtype=np.float64)
    if not out.flags.writeable or type(out) is not np.ndarray:
        out = np.array(out, dtype=np.float64, order="C", copy=True)
    return out


def check_precision(precision, supported=PRECISIONS, backend=None, others=()) -> str:
    """Return ``precision`` if backend ``backend`` computes in it, else raise ``ValueError``.

    The one rule for ``precision=``, the same on every backend and at every door
    (:func:`backends.accel`, :meth:`backends.Backend.accel`, :func:`backends.tolerance`, the
    modules' own ``accel``):

    * the value is one of the strings in :data:`PRECISIONS` (``"float64"``, ``"float32"``);
      anything else (``None``, ``"float16"``, ``np.float32``, ``32``) is a ``ValueError``
      naming the valid spellings;
    * ``"float64"`` (the default) is accepted by every backend;
    * ``"float32"`` by the backends whose registry entry lists it
      (:func:`backends.precisions`); on any other it is a ``ValueError`` naming the
      backends that have it.

    Parameters
    ----------
    precision : object
        The value passed as ``precision=``.
    supported : tuple of str, optional
        The precisions the backend has (its registry entry's; default: all).
    backend : str, optional
        The backend's name, for the message.
    others : sequence of str, optional
        The backends that have ``"float32"``, for the message.
    """
    where = f" (backend {backend!r})" if backend else ""
    if not isinstance(precision, str) or precision not in PRECISIONS:
        valid = ", ".join(repr(p) for p in PRECISIONS)
        raise ValueError(f"precision must be one of {valid}{where}; got {precision!r}")
    if precision not in supported:
        have = ", ".join(repr(p) for p in supported)
        extra = f"; the backends with precision={precision!r} are: {', '.join(others)}"
        raise ValueError(
            f"precision={precision!r} is not a mode of backend {backend!r}, which computes in "
            f"{have} only{extra if others else ''}"
        )
    return str(precision)


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


def non_finite_rows(acc: np.ndarray) -> np.ndarray:
    """Return the indices of the rows of the ``(N, 3)`` array ``acc`` holding NaN or inf.

    The kernels' fast paths take ``r**-3`` from a float32 estimate: a pair too close for its
    range makes the rows of its two particles, and only those, non-finite, and the backends
    sum just those rows again exactly.
    """
    return np.flatnonzero(~np.isfinite(acc).all(axis=1))


def interactions(n: int) -> int:
    """Ordered pairs per evaluation, N(N-1): the throughput convention.

    Raises
    ------
    TypeError
        ``n`` is not an integer (bools and floats, even ``3.0``, included).
    ValueError
        ``n`` is negative.
    """
    if isinstance(n, (bool, np.bool_)):
        raise TypeError(f"n must be an integer; got a bool ({n!r})")
    try:
        n = operator.index(n)
    except TypeError:
        raise TypeError(f"n must be an integer; got {n!r} ({type(n).__name__})") from None
    if n < 0:
        raise ValueError(f"n must be >= 0; got {n}")
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

    Raises
    ------
    TypeError
        ``a`` or ``ref`` does not hold real numbers (complex, object, str, bool).
    ValueError
        ``a`` or ``ref`` not of shape (N, 3), shapes that differ, or NaN or inf in either.
    """
    a = _error_operand(a, "a")
    ref = _error_operand(ref, "ref")
    if a.shape != ref.shape:
        raise ValueError(f"shapes differ: result {a.shape} vs reference {ref.shape}")
    if a.size == 0:
        return 0.0
    # Each row is scaled by its own power of two (exact), so that neither tiny rows next to
    # huge ones underflow nor huge differences overflow; the scales are put back in the ratio.
    peak = np.maximum(np.abs(a).max(axis=1), np.abs(ref).max(axis=1))
    shift = np.frexp(peak)[1]  # 0 for all-zero rows
    a, ref = np.ldexp(a, -shift[:, None]), np.ldexp(ref, -shift[:, None])
    diff = np.linalg.norm(a - ref, axis=-1)  # each times 2**shift
    norm = np.linalg.norm(ref, axis=-1)
    ratio = np.divide(diff, norm, out=np.zeros_like(diff), where=norm > 0.0)
    zero = norm == 0.0
    if zero.any():
        if norm.any():  # against the largest |ref_i|, its scale put back exactly
            mant, expo = np.frexp(norm)
            expo = np.where(zero, np.iinfo(np.int32).min, expo + shift)
            tied = np.flatnonzero(expo == expo.max())
            top = int(tied[np.argmax(mant[tied])])  # the largest norm * 2**shift
            with np.errstate(over="ignore", under="ignore"):
                ratio[zero] = np.ldexp(diff[zero] / norm[top], shift[zero] - shift[top])
        else:  # every ref_i is zero: the absolute difference
            with np.errstate(over="ignore", under="ignore"):
                ratio[zero] = np.ldexp(diff[zero], shift[zero])
    return float(ratio.max())


def _error_operand(value, name: str) -> np.ndarray:
    arr = _as_real_array(value, name)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise ValueError(f"{name} must have shape (N, 3); got shape {arr.shape}")
    arr = np.asarray(arr, dtype=np.float64)
    _require_finite(arr, name)
    return arr


def _exponent(value: float) -> int:
    """Return ``e`` with ``value = f * 2**e``, ``0.5 <= f < 1`` (0 for 0)."""
    return math.frexp(value)[1] if value > 0.0 else 0


def _in_safe_range(value: float) -> bool:
    return value == 0.0 or -SAFE_EXPONENT <= _exponent(value) <= SAFE_EXPONENT


def _spread(x: np.ndarray) -> float:
    """Return a scale of the separations: max over axes of the median of ``|x - median(x)|``.

    Robust to a few outliers, blind to an offset of the whole system, and exactly
    equivariant under scaling by powers of two (medians and differences of scaled values are
    the scaled medians and differences).
    """
    med = np.median(x, axis=0)
    spread = float(np.median(np.abs(x - med), axis=0).max())
    if spread == 0.0:  # more than half the particles share a coordinate on every axis
        lo, hi = column_range(x)
        spread = float((hi - lo).max())
    return spread


def rescale(inp: Inputs) -> tuple[Inputs, int]:
    """Take exact powers of two out of inputs far from 1; return them and the result's exponent.

    The kernel is homogeneous: with ``x' = x * 2**-p`` (positions and softening),
    ``m' = m * 2**-q`` and ``G' = G * 2**-g``, ``a(G, m, x, eps) = 2**(g + q - 2p) *
    a(G', m', x', eps')``. Multiplying by a power of two is exact, so a kernel run on the
    primed inputs and scaled back by :func:`unscale` gives the same bits as one run on the
    original inputs wherever that run stays inside float64's range, and the right answer
    where it does not (positions near 1e-150, where ``r**3`` underflows, or near 1e150, where
    it overflows).

    Each of the three is left alone while its largest magnitude lies in
    ``[2**-SAFE_EXPONENT, 2**SAFE_EXPONENT]`` (``SAFE_EXPONENT = 100``); the kernels' own
    intermediates (``r**2``, ``r**3``, ``m / r**3``) cannot leave float64's range there. Beyond
    it, masses and ``G`` are scaled so their largest magnitude lies in ``[0.5, 1)``, and the
    positions so that the larger of their spread (see :func:`_spread`: robust to outliers,
    blind to an offset) and the softening lies in ``[0.5, 1)``, capped so that no coordinate
    exceeds ``2**1020`` (differences of coordinates must not overflow).

    Parameters
    ----------
    inp : Inputs
        Validated inputs, N >= 1.

    Returns
    -------
    scaled : Inputs
        The inputs with the powers of two taken out (``inp`` itself if none were).
    exponent : int
        The result of the kernel on ``scaled`` times ``2**exponent`` is the result on ``inp``.
    """
    m, x, G, eps = inp
    mass_max = max(float(m.max()), -float(m.min()))  # max |m| without a temporary
    pos_max = max(float(x.max()), -float(x.min()), eps)
    q = 0 if _in_safe_range(mass_max) else _exponent(mass_max)
    g = 0 if _in_safe_range(abs(G)) else _exponent(abs(G))
    p = 0
    if not _in_safe_range(pos_max):
        size = max(_spread(x), eps) or pos_max  # pos_max: every particle at one point
        p = max(_exponent(size), _exponent(pos_max) - 1020)
    if p == q == g == 0:
        return inp, 0
    scaled = Inputs(
        np.ldexp(m, -q) if q else m,
        np.ldexp(x, -p) if p else x,
        math.ldexp(G, -g),
        math.ldexp(eps, -p),
    )
    return scaled, g + q - 2 * p


def unscale(acc: np.ndarray, exponent: int, backend: str) -> np.ndarray:
    """Multiply a kernel's result by ``2**exponent`` (from :func:`rescale`), checking the range.

    Raises
    ------
    FloatingPointError
        The kernel's result is not finite, or the scaled result overflows float64, or a
        particle's nonzero acceleration falls below the smallest normal float64 (its largest
        component under ``2**-1022``, about 2.2e-308), where float64 cannot hold it to the
        contract's accuracy.
    """
    check_result(acc, backend)
    if exponent == 0:
        return acc
    with np.errstate(over="ignore", under="ignore"):  # both are checked and reported below
        out = np.ldexp(acc, exponent)
    if exponent > 0:
        return check_result(out, backend)
    peak = np.abs(acc).max(axis=1) if acc.size else np.zeros(0)
    with np.errstate(under="ignore"):
        lost = (peak > 0.0) & (np.ldexp(peak, exponent) < _TINY)
    if lost.any():
        raise FloatingPointError(
            f"backend {backend!r}: the result underflows float64: {int(lost.sum())} of "
            f"{acc.shape[0]} accelerations are nonzero but below the smallest normal float64 "
            f"({_TINY:.3g}) in magnitude. The inputs are finite but too extreme in scale (tiny "
            "masses or G, huge separations); rescale the units."
        )
    return out


def evaluate(backend: str, inp: Inputs, kernel, *args) -> np.ndarray:
    """Run ``kernel(masses, positions, G, softening, *args)`` on validated inputs.

    The shared tail of every public ``accel``: N <= 1 is answered without touching compiled
    code (a ``(0, 3)`` array, or zeros); inputs far from 1 are rescaled by exact powers of two
    before the kernel runs and its result is scaled back (:func:`rescale`,
    :func:`unscale`), so every backend covers float64's whole range; a result that is not
    representable (overflow, or nonzero accelerations below the normal range) raises
    ``FloatingPointError``.
    """
    n = inp.masses.shape[0]
    if n <= 1:
        return np.zeros((n, 3), dtype=np.float64)
    scaled, exponent = rescale(inp)
    _check_separations(scaled, backend)
    try:
        acc = kernel(*scaled, *args)
    except ZeroDivisionError as exc:  # r**3 underflowed in a pure-Python or Numba kernel
        raise FloatingPointError(
            f"backend {backend!r}: a pair's r**3 underflowed float64 (division by zero). The "
            "inputs are finite but too extreme in scale (separations or softening too small "
            "for the system's extent); rescale the units."
        ) from exc
    _check_far_pairs(scaled, acc, backend)
    return unscale(acc, exponent, backend)


#: Pairs (of the kernels' rescaled inputs) closer than this, softening included, have an
#: ``r**3`` near or below the smallest normal float64 (2**-990 here): refused, never skipped.
_NEAR = 2.0**-330
#: Two distinct floats differ by at least 2**-54 of the larger magnitude, so a pair closer
#: than ``_NEAR`` has, on an axis where it differs, both coordinates below this.
_NEAR_COORD = _NEAR * 2.0**54
#: Pairs farther apart than about 2**300 have ``r**3`` near or above float64's largest value:
#: their contribution (below ``|G| m 2**-600``) is lost to overflow or to subnormal rounding.
_FAR_EXTENT = 2.0**300
_FAR_FORCE = 2.0**-560  # rows below |G| sum|m| times this may be made of lost contributions


def _check_separations(inp: Inputs, backend: str) -> None:
    """Raise ``FloatingPointError`` where a pair's ``r**2 + eps**2`` is below ``_NEAR**2``.

    Its ``r**3`` underflows in the kernels: a distinct pair would be skipped as coincident
    (a silently wrong result) or divide by zero. O(N) unless some coordinate is tiny: then
    the particles that are tiny on that axis are checked exactly with a k-d tree.
    """
    _, x, _, eps = inp
    if eps >= _NEAR:
        return
    n = x.shape[0]
    if eps > 0.0 and np.unique(x, axis=0).shape[0] < n:
        raise FloatingPointError(
            f"backend {backend!r}: positions has coincident particles and softening "
            f"{eps:.3g} is below {_NEAR:.3g} of the system's scale: their softened r**3 "
            "underflows float64; use a larger softening or rescale the units."
        )
    ax = np.abs(x)
    small = ax < _NEAR_COORD
    if not (small & (ax > 0.0)).any():  # no distinct pair can be that close
        return
    from scipy.spatial import KDTree  # imported only here: `import backends` stays light

    for k in range(3):
        if not (small[:, k] & (ax[:, k] > 0.0)).any():
            continue
        pts = np.unique(x[small[:, k]], axis=0)
        if pts.shape[0] < 2:
            continue
        dist, _ = KDTree(pts).query(pts, k=2)
        closest = float(dist[:, 1].min())  # distinct points; 0.0 where d**2 underflows
        if closest < _NEAR:
            lo, hi = column_range(x)
            extent = float((hi - lo).max())
            raise FloatingPointError(
                f"backend {backend!r}: positions has distinct particles closer than "
                f"{_NEAR:.3g} ({closest:.3g}; 0 where its square underflows) in a system of "
                f"extent {extent:.3g} (after rescaling): separations span more "
                "than float64 can hold; float64 squared distances underflow (r**3 below "
                "2**-990), so the pair cannot be summed. Rescale the units or split the system."
            )


def _check_far_pairs(inp: Inputs, acc: np.ndarray, backend: str) -> None:
    """Raise ``FloatingPointError`` for rows that may consist of contributions lost to overflow.

    Only where the rescaled extent exceeds ``_FAR_EXTENT`` (pairs whose ``r**3`` overflows
    contribute 0): a row whose acceleration is below ``|G| sum|m| _FAR_FORCE`` cannot be told
    apart from one whose far contributions were all dropped.
    """
    m, x, G, _ = inp
    lo, hi = column_range(x)
    if not (hi - lo > _FAR_EXTENT).any():
        return
    if not np.isfinite(acc).all():
        return  # unscale reports it
    floor = abs(G) * float(np.abs(m).sum()) * _FAR_FORCE
    lost = np.abs(acc).max(axis=1) <= floor
    if lost.any():
        raise FloatingPointError(
            f"backend {backend!r}: positions span more than 2**300 times the system's "
            f"spread: {int(lost.sum())} of {acc.shape[0]} particles get their acceleration "
            "from pairs whose r**3 overflows float64, which cannot be summed. Rescale the "
            "units or split the system."
        )
