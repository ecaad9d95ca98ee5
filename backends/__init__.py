"""nbody-backends: one N-body acceleration kernel, many Python parallel backends.

The public face::

    import backends
    backends.names()        # every registered backend
    backends.available()    # those usable on this machine
    b = backends.get("numba_parallel")
    a = b.accel(masses, positions, G=1.0, softening=0.0)
    a = backends.accel(masses, positions, backend="numpy")
    a = backends.accel_nearest(masses, positions, k=16)  # k nearest neighbours only

Every backend computes the same contract (see :mod:`backends._contract`). Backends are
resolved lazily from a registry of module paths: ``import backends`` imports numpy only, never
numba, jax, mpi4py, joblib, numba-cuda or the peer libraries (pytreegrav, fmm3dpy).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

from backends._contract import (
    FLOAT32_TOLERANCE,
    PRECISIONS,
    benchmark_system,
    check_precision,
    interactions,
    relative_error,
    validate,
)

__all__ = [
    "Backend",
    "BackendUnavailableError",
    "accel",
    "accel_nearest",
    "available",
    "benchmark_system",
    "get",
    "interactions",
    "is_exact",
    "names",
    "precisions",
    "relative_error",
    "tolerance",
    "unavailable_reason",
    "validate",
]

DEFAULT_BACKEND = "numba_parallel"


class BackendUnavailableError(ImportError):
    """A registered backend cannot run here (a dependency or the hardware is missing)."""


@dataclass(frozen=True)
class _Spec:
    target: str  # "package.module:function" implementing the public accel
    description: str
    requires: tuple[str, ...] = ()  # top-level modules that must be importable
    extra: str | None = None  # the pyproject extra that installs them
    precisions: tuple[str, ...] = ("float64",)  # values its ``precision=`` option accepts
    exact: bool = True  # direct summation (to rounding); False: an approximate method
    python: tuple[int, int] = (3, 10)  # the oldest Python its dependencies have releases for
    # options that can select an approximate method of an exact backend (mpi's
    # algorithm="tree"): with one of them given, its module's tolerance(**options) decides
    approximate_with: tuple[str, ...] = ()


# The registry: name -> where the implementation lives. Nothing here is imported until used.
_REGISTRY: dict[str, _Spec] = {
    "python": _Spec(
        "backends.reference:accel", "pure-Python loops, math.fsum per component: the oracle"
    ),
    "numpy": _Spec("backends.numpy_blocked:accel", "NumPy, vectorized over sources, row-blocked"),
    "numba": _Spec(
        "backends.numba_loops:accel_plain",
        "@njit double loop (the plain compiled loop)",
        requires=("numba",),
    ),
    "numba_fastmath": _Spec(
        "backends.numba_loops:accel_fastmath",
        "@njit(fastmath=True) double loop",
        requires=("numba",),
    ),
    "numba_parallel": _Spec(
        "backends.numba_parallel:accel",
        "Numba threads, each pair once, SIMD float32-seeded rsqrt (primary)",
        requires=("numba",),
        precisions=PRECISIONS,
    ),
    "numba_jitclass": _Spec(
        "backends.numba_jitclass:accel",
        "particles in a numba jitclass with an accel method (the OO style, serial)",
        requires=("numba",),
    ),
    "jax": _Spec(
        "backends.jax_blocked:accel",
        "JAX jit, lax.map over row blocks, float64 or float32 (CPU or GPU)",
        requires=("jax",),
        extra="jax",
        python=(3, 11),  # jax >= 0.8 has no release for Python 3.10
        precisions=PRECISIONS,
    ),
    "cuda": _Spec(
        "backends.cuda_tiled:accel",
        "numba-cuda tiled shared-memory all-pairs kernel (NVIDIA GPU)",
        requires=("numba",),
        extra="cuda",
        precisions=PRECISIONS,
    ),
    "mpi": _Spec(
        "backends.mpi_rows:accel",
        "mpi4py: each pair once over MPI ranks x Numba threads; triangle shares + "
        "Reduce_scatter, or a symmetric half-ring with algorithm=ring",
        requires=("mpi4py", "numba"),  # the ranks run the compiled pair kernel
        extra="mpi",
        approximate_with=("algorithm",),  # algorithm="tree": the distributed tree
    ),
    "multiprocessing": _Spec(
        "backends.multiprocessing_shm:accel",
        "spawn process pool, each pair once: lanes of the pair triangle in shared memory",
        requires=("numba",),  # the workers run the compiled pair kernel
    ),
    "joblib": _Spec(
        "backends.joblib_chunks:accel",
        "joblib pool (loky processes or threads), each pair once: lanes of the pair triangle",
        requires=("joblib", "numba"),  # the workers run the compiled pair kernel
        extra="joblib",
    ),
    "tree": _Spec(
        "backends.tree_barnes_hut:accel",
        "Barnes-Hut octree in Numba, group walk, optional quadrupoles (approximate)",
        requires=("numba",),
        exact=False,
    ),
    "fmm": _Spec(
        "backends.fmm_dual_tree:accel",
        "fast multipole method in Numba: dual tree walk, Cartesian expansions, eps = rms error "
        "(approximate)",
        requires=("numba",),
        exact=False,
    ),
    # peers: the libraries users would pick instead, under the same contract
    "pytreegrav_bruteforce": _Spec(
        "backends.peer_pytreegrav:accel_bruteforce",
        "peer: pytreegrav 'bruteforce', parallel=True (exact; no softening)",
        requires=("pytreegrav", "numba"),
        extra="peers",
    ),
    "pytreegrav_tree": _Spec(
        "backends.peer_pytreegrav:accel_tree",
        "peer: pytreegrav Barnes-Hut tree, parallel=True, theta/quadrupole (approximate)",
        requires=("pytreegrav", "numba"),
        extra="peers",
        exact=False,
    ),
    "fmm3d": _Spec(
        "backends.peer_fmm3d:accel",
        "peer: fmm3dpy Laplace FMM (lfmm3d, pg=2), eps=1e-12 (approximate; no softening)",
        requires=("fmm3dpy",),
        extra="peers",
        exact=False,
    ),
}


@dataclass(frozen=True)
class Backend:
    """A usable backend: ``name``, one-line ``description`` and :meth:`accel`."""

    name: str
    description: str
    module: ModuleType
    _accel: Callable

    def accel(self, masses, positions, G=1.0, *, softening=0.0, **options):
        """Accelerations by this backend; see :func:`backends.accel`.

        Backend-specific keyword-only options (``block=``, ``n_workers=``, ``comm=``, ...)
        are passed through.
        """
        if "precision" in options:
            spec = _REGISTRY[self.name]
            _check_precision(options["precision"], self.name)
            if len(spec.precisions) < 2:
                del options["precision"]  # float64 is what every backend computes
        return self._accel(masses, positions, G, softening=softening, **options)

    def close(self) -> None:
        """Release the backend's resources (worker pools, shared memory), if it holds any."""
        closer = getattr(self.module, "close", None)
        if closer is not None:
            closer()

    def __repr__(self) -> str:
        return f"<Backend {self.name!r}: {self.description}>"


def names() -> list[str]:
    """Return every registered backend name, usable here or not."""
    return list(_REGISTRY)


def precisions(name: str) -> tuple[str, ...]:
    """Return the values backend ``name`` accepts for ``precision=`` (``("float64",)``: none)."""
    return _spec(name).precisions


def is_exact(name: str) -> bool:
    """Return True for direct summation (exact to rounding), False for approximate methods.

    An approximate backend's module declares the error its settings promise with
    ``tolerance(**options) -> float``, a bound on the rms per-particle relative error.
    """
    return _spec(name).exact


#: The declared error of an exact backend in float64: direct summation, exact to rounding.
EXACT_TOLERANCE = 1e-12


def tolerance(name: str, **options) -> float:
    """Return the rms per-particle relative error that backend ``name`` declares for ``options``.

    Exact backends declare ``1e-12`` in float64 (direct summation, exact to rounding) and
    ``FLOAT32_TOLERANCE`` (1e-4) with ``precision="float32"``; an approximate backend's
    bound comes from its module's ``tolerance(**options)`` (its settings, e.g. ``theta=`` or
    ``eps=``; ``tree`` and ``fmm`` also validate ``leaf_size``, which does not change the
    bound, so that no bound is declared for a call that would raise), and so
    does that of an exact backend given an option that can select an approximate method
    (``mpi`` with ``algorithm=``: ``"tree"`` declares the tree's bound). For the exact
    backends the option names and ``precision`` are checked; their other options (threads,
    workers, block sizes) cannot change the bound and are not validated here. The error
    metric is the project's per-particle relative error (:func:`relative_error` is its max);
    the bound is on its root mean square over the particles.

    Parameters
    ----------
    name : str
        A registered backend (it need not be usable here for an exact one).
    **options
        The keyword options the backend would be called with.

    Returns
    -------
    float

    Raises
    ------
    ValueError, TypeError
        Unknown backend, or an option value the backend rejects (``precision=`` follows the
        contract's one rule: :func:`backends._contract.check_precision`).
    BackendUnavailableError
        An approximate backend whose module cannot be imported here.
    """
    spec = _spec(name)
    precision = _check_precision(options.get("precision", "float64"), name)
    _check_option_names(name, options)
    if spec.exact and not any(key in options for key in spec.approximate_with):
        return EXACT_TOLERANCE if precision == "float64" else FLOAT32_TOLERANCE
    if len(spec.precisions) < 2:
        options.pop("precision", None)
    module = get(name).module
    return float(module.tolerance(**options))


def _check_option_names(name: str, options: dict) -> None:
    """Raise ``TypeError`` for an option backend ``name``'s ``accel`` does not take.

    The names are read from the signature of the function the registry points at, as
    :func:`accel` would meet them; a backend that cannot be imported here is not checked.
    """
    if not options or unavailable_reason(name) is not None:
        return
    module_name, _, func = _REGISTRY[name].target.partition(":")
    params = inspect.signature(getattr(importlib.import_module(module_name), func)).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    known = [key for key, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    known = [key for key in known if key != "softening"]
    if len(_REGISTRY[name].precisions) < 2:
        known.append("precision")  # accepted (float64) by every backend, see Backend.accel
    unknown = [key for key in options if key not in known]
    if unknown:
        have = ", ".join(repr(key) for key in known) or "none"
        raise TypeError(
            f"unknown option {unknown[0]!r} for backend {name!r}; its options are: {have}"
        )


def _check_precision(precision, name: str) -> str:
    """Apply the contract's one rule for ``precision=`` to backend ``name``."""
    others = [n for n, sp in _REGISTRY.items() if len(sp.precisions) > 1]
    return check_precision(precision, _spec(name).precisions, name, others)


def _spec(name: str) -> _Spec:
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        valid = ", ".join(_REGISTRY)
        raise ValueError(f"unknown backend {name!r}; valid names are: {valid}") from None


def unavailable_reason(name: str) -> str | None:
    """Return why backend ``name`` cannot run here, or None if it can.

    Dependencies are looked up without importing them; a backend module may add a hardware
    check of its own (a module-level ``unavailable_reason()``), which is imported and called
    only here.
    """
    spec = _spec(name)
    missing = [mod for mod in spec.requires if not _importable(mod)]
    if missing and sys.version_info[:2] < spec.python:
        need = ", ".join(missing)
        return (
            f"backend {name!r} needs {need}, which has no suitable release for Python "
            f"{sys.version_info[0]}.{sys.version_info[1]}: it needs Python >= "
            f"{spec.python[0]}.{spec.python[1]} with pip install 'nbody-backends[{spec.extra}]'"
        )
    if missing:
        return f"backend {name!r} needs {', '.join(missing)}, not installed here: " + _hint(
            spec, missing
        )
    module_name = spec.target.partition(":")[0]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:  # a broken or partial install: say what failed, do not guess
        return f"backend {name!r} cannot be imported here ({module_name}): {exc}"
    probe = getattr(module, "unavailable_reason", None)
    return probe() if probe is not None else None


def _importable(module: str) -> bool:
    """Whether ``module`` can be found, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a broken sys.modules entry
        return False


# Required dependencies of the distribution (pyproject's ``dependencies``): a missing one is a
# broken install, not a missing extra.
_REQUIRED = ("numpy", "scipy", "numba")


def _hint(spec: _Spec, missing: list[str]) -> str:
    if spec.extra and any(mod not in _REQUIRED for mod in missing):
        hint = f"pip install 'nbody-backends[{spec.extra}]'"
    else:
        hint = "pip install nbody-backends (or pip install -e . in a clone)"
    required = [mod for mod in missing if mod in _REQUIRED]
    if required:
        hint += f"; {', '.join(required)} is a required dependency of nbody-backends"
    return hint


def available() -> list[str]:
    """Return the backend names usable here (dependencies importable, hardware present)."""
    return [name for name in _REGISTRY if unavailable_reason(name) is None]


def get(name: str) -> Backend:
    """Return the backend called ``name``.

    Raises
    ------
    ValueError
        ``name`` is not registered (the message lists the valid names).
    BackendUnavailableError
        ``name`` is registered but cannot run here (the message says what to install).
    """
    reason = unavailable_reason(name)
    if reason is not None:
        raise BackendUnavailableError(reason)
    spec = _REGISTRY[name]
    module_name, _, func = spec.target.partition(":")
    module = importlib.import_module(module_name)
    return Backend(name, spec.description, module, getattr(module, func))


def accel(masses, positions, G=1.0, *, softening=0.0, backend=DEFAULT_BACKEND, **options):
    r"""Gravitational accelerations by direct summation.

    .. math:: a_i = G \sum_{j \ne i} m_j (x_j - x_i) / (|x_j - x_i|^2 + \epsilon^2)^{3/2}

    Parameters
    ----------
    masses : (N,) array_like of real
        Point masses.
    positions : (N, 3) array_like of real
        Cartesian positions.
    G : float, optional
        Gravitational constant (finite).
    softening : float, optional
        Plummer softening length ``epsilon`` (finite, >= 0). With 0, coincident particles
        exert no force on each other.
    backend : str, optional
        A name from :func:`names`; default ``"numba_parallel"``.
    **options
        Keyword-only options of that backend (e.g. ``block=`` for ``numpy``).

    Returns
    -------
    (N, 3) ndarray of float64
        A new array; the inputs are never modified.
    """
    return get(backend).accel(masses, positions, G, softening=softening, **options)


def accel_nearest(masses, positions, k, G=1.0, *, softening=0.0, method="batched", block=None):
    r"""Accelerations of each particle due to its ``k`` nearest neighbours only.

    .. math:: a_i = G \sum_{j \in NN_k(i)} m_j (x_j - x_i) / (|x_j - x_i|^2 + \epsilon^2)^{3/2}

    Neighbours (the particle itself excluded) come from ``scipy.spatial.KDTree``; ties are
    broken as the tree returns them. Imports scipy and numba on first call only. See
    :func:`backends.scipy_nearest.accel_nearest` for the details.

    Parameters
    ----------
    masses : (N,) array_like of real
        Point masses.
    positions : (N, 3) array_like of real
        Cartesian positions.
    k : int
        Neighbours per particle, ``1 <= k <= N - 1``.
    G : float, optional
        Gravitational constant (finite).
    softening : float, optional
        Plummer softening length (finite, >= 0).
    method : {"batched", "objmode", "forceobj"}, optional
        Block tree queries and a parallel kernel (default), or one query per particle from
        a nopython loop via ``numba.objmode``, or from a ``forceobj=True`` function.
    block : int, optional
        ``"batched"`` only: particles per tree query (memory O(block x k)).

    Returns
    -------
    (N, 3) ndarray of float64
        A new array; the inputs are never modified.
    """
    from backends.scipy_nearest import accel_nearest as impl

    return impl(masses, positions, k, G, softening=softening, method=method, block=block)
