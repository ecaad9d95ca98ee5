r"""Initial conditions of ``python -m backends drift``: a Plummer sphere, or a saved state.

The Plummer sphere is sampled from its distribution function by the method of Aarseth,
Henon & Wielen (1974, A&A 37, 183), in Henon units (G = 1, total mass M = 1, total energy
E = -1/4 without softening):

* radii from the cumulative mass ``M(r) = r^3 / (1 + r^2)^(3/2)`` (scale length 1), inverted
  at a uniform deviate ``X`` in (0, 0.999]: ``r = (X^(-2/3) - 1)^(-1/2)``. The 0.1 % of the
  mass beyond ``r = 38.7`` scale lengths (22.8 in Henon units) is left out, as is usual, so
  that no particle lies absurdly far out;
* speeds ``v = q v_esc(r)``, ``v_esc = sqrt(2) (1 + r^2)^(-1/4)``, with ``q`` drawn by
  rejection from ``g(q) = q^2 (1 - q^2)^(7/2)`` (bounded by 0.1);
* isotropic directions for both;
* the scale length ``a = 3 pi / 16`` of Henon units: ``x -> a x``, ``v -> v / sqrt(a)``;
* equal masses ``1/N``; then the centre of mass is moved to the origin and set at rest.

A finite sample's energy differs from -1/4 by sampling noise (a few per cent at N = 1000).
So, last, the sample is rescaled ``x -> lam x``, ``v -> v / sqrt(lam)`` with the ``lam`` that
makes its exact unsoftened energy -1/4 (:func:`sphere` returns ``lam``, 1 + O(N^-1/2)).
This changes units only: the kinetic and potential energies both scale by ``1/lam``, so the
virial ratio ``2K/|W|`` is the sampled one, 1 within sampling noise.

Saved states (``--input``, ``--save``) are ``.npz`` files holding ``masses`` (N,),
``positions`` (N, 3) and ``velocities`` (N, 3), float64.
"""

from __future__ import annotations

import math
import zipfile
from typing import NamedTuple

import numpy as np

__all__ = ["HENON_A", "MASS_CUT", "State", "load_state", "sample", "save_state", "sphere"]

#: Fraction of the Plummer mass sampled (the rest, beyond r = 22.8 Henon units, is left out).
MASS_CUT = 0.999
#: Plummer scale length in Henon units (virial radius 1): 3 pi / 16.
HENON_A = 3.0 * math.pi / 16.0


class State(NamedTuple):
    """An N-body state: masses (N,), positions (N, 3), velocities (N, 3), float64."""

    masses: np.ndarray
    positions: np.ndarray
    velocities: np.ndarray


def _directions(rng: np.random.Generator, n: int) -> np.ndarray:
    """Return ``n`` isotropic unit vectors, shape (n, 3)."""
    z = rng.uniform(-1.0, 1.0, n)
    phi = rng.uniform(0.0, 2.0 * math.pi, n)
    s = np.sqrt(1.0 - z * z)
    return np.column_stack((s * np.cos(phi), s * np.sin(phi), z))


def _speed_fractions(rng: np.random.Generator, n: int) -> np.ndarray:
    """Draw ``n`` values of ``q = v / v_esc`` from ``q^2 (1 - q^2)^(7/2)`` by rejection."""
    out = np.empty(n)
    filled = 0
    while filled < n:
        want = n - filled
        q = rng.random(2 * want + 16)
        y = 0.1 * rng.random(q.size)
        keep = q[y < q * q * (1.0 - q * q) ** 3.5][:want]  # acceptance about 0.5
        out[filled : filled + keep.size] = keep
        filled += keep.size
    return out


def sample(n: int, seed: int) -> State:
    """Sample a Plummer sphere (Aarseth, Henon & Wielen 1974), centred, before rescaling.

    Parameters
    ----------
    n : int
        Number of particles, ``n >= 2``.
    seed : int
        Seed of :func:`numpy.random.default_rng`.

    Returns
    -------
    State
        Equal masses ``1/n``, Henon-unit scale length ``3 pi / 16``; the centre of mass at
        the origin and at rest. Its energy is -1/4 within sampling noise.
    """
    rng = np.random.default_rng(seed)
    mass_fraction = MASS_CUT * (1.0 - rng.random(n))  # in (0, MASS_CUT]
    r = 1.0 / np.sqrt(mass_fraction ** (-2.0 / 3.0) - 1.0)
    x = r[:, None] * _directions(rng, n)
    speed = _speed_fractions(rng, n) * math.sqrt(2.0) * (1.0 + r * r) ** -0.25
    v = speed[:, None] * _directions(rng, n)
    x *= HENON_A
    v /= math.sqrt(HENON_A)
    m = np.full(n, 1.0 / n)
    x -= _centre(m, x)
    v -= _centre(m, v)
    return State(m, np.ascontiguousarray(x), np.ascontiguousarray(v))


def _centre(m: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Mass-weighted mean of the rows of ``x``, each component an exact sum (math.fsum)."""
    total = math.fsum(m)
    return np.array([math.fsum(m * x[:, k]) / total for k in range(3)])


def sphere(n: int, seed: int = 0) -> tuple[State, float]:
    """Sample a Plummer sphere in Henon units with an exact unsoftened energy of -1/4.

    Parameters
    ----------
    n : int
        Number of particles, ``n >= 2``.
    seed : int, optional
        Seed of :func:`numpy.random.default_rng` (the same seed gives the same state).

    Returns
    -------
    state : State
        Equal masses ``1/n``; centre of mass at rest at the origin.
    lam : float
        The length scale applied after sampling (``x -> lam x``, ``v -> v / sqrt(lam)``) so
        that the energy is -1/4; 1 + O(n^-1/2). 1.0 when the sample's energy was not negative
        (possible for a handful of particles), which is then left as sampled.

    Notes
    -----
    Costs two exact O(N^2) potential evaluations (see :mod:`backends.drift.energy`).
    """
    from backends.drift import energy

    if n < 2:
        raise ValueError(f"n must be >= 2; got {n}")
    m, x, v = sample(n, seed)
    e = energy.kinetic(m, v) + energy.potential(m, x)
    if not e < 0.0:
        return State(m, x, v), 1.0
    lam = -4.0 * e  # E scales as 1 / lam
    return State(m, x * lam, v / math.sqrt(lam)), lam


def save_state(path, state: State) -> None:
    """Write ``state`` to ``path`` (``.npz``: ``masses``, ``positions``, ``velocities``)."""
    with open(path, "wb") as f:
        np.savez(f, masses=state.masses, positions=state.positions, velocities=state.velocities)


def load_state(path) -> State:
    """Read and check a state written by :func:`save_state` (or by hand).

    Raises
    ------
    ValueError
        Unreadable file, a missing key, wrong shapes, non-finite values, negative masses, a
        zero total mass or fewer than 2 particles; the message says which.
    """
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        text = str(exc).strip().splitlines()
        raise ValueError(f"not a readable .npz file ({text[0] if text else exc!r})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError("not an .npz archive (np.load read a single array)")
    with archive as f:
        missing = [k for k in ("masses", "positions", "velocities") if k not in f.files]
        if missing:
            have = ", ".join(f.files) or "nothing"
            raise ValueError(
                f"missing key{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                f"(it has {have}; needed: masses, positions, velocities)"
            )
        try:
            raw = {k: f[k] for k in ("masses", "positions", "velocities")}
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
            raise ValueError(f"unreadable array in the archive: {exc}") from None
    for key, arr in raw.items():
        if arr.dtype.kind not in "iuf":
            raise ValueError(f"{key} must hold real numbers; got dtype {arr.dtype}")
    m, x, v = (np.ascontiguousarray(raw[k], dtype=np.float64) for k in raw)
    if m.ndim != 1:
        raise ValueError(f"masses must have shape (N,); got {m.shape}")
    n = m.shape[0]
    for key, arr in (("positions", x), ("velocities", v)):
        if arr.shape != (n, 3):
            raise ValueError(f"{key} must have shape (N, 3) = ({n}, 3); got {arr.shape}")
    if n < 2:
        raise ValueError(f"needs N >= 2 particles; got {n}")
    for key, arr in (("masses", m), ("positions", x), ("velocities", v)):
        if not np.isfinite(arr).all():
            raise ValueError(f"{key} must be finite")
    if (m < 0.0).any() or not m.sum() > 0.0:
        raise ValueError("masses must be >= 0 with a positive total")
    return State(m, x, v)
