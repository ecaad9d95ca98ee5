"""The integration of ``python -m backends drift``: kick-drift-kick leapfrog and its checks.

Every row starts from the same float64 state and integrates its own copy with the same
fixed time step; only the accelerations come from the row's backend::

    v += a dt/2;  x += v dt;  a = accel(x);  v += a dt/2

(one force evaluation per step, plus one for the initial state). Positions and velocities
are synchronous at the end of every step, where the checks are made: the exact energy
(:mod:`backends.drift.energy`), the total momentum and the angular momentum, at the start,
every ``energy_every`` steps and at the end.

Timing: ``seconds_per_step`` is the wall time of the steps (kicks, drift, the force call)
divided by their number; the checks are timed apart (``check_seconds``) and the initial
force evaluation too (``first_call_s``: the first call at this N, so it holds JAX's tracing
for the new shape or a pool's start-up).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

import backends
from backends.compare.args import Job
from backends.compare.runner import first_line
from backends.drift import energy
from backends.drift.plummer import State


@dataclass
class Initial:
    """The checked quantities of the initial state, shared by every row."""

    energy: float
    kinetic: float
    potential: float
    momentum: np.ndarray  # (3,)
    angular_momentum: np.ndarray  # (3,)
    mass: float
    velocity_scale: float  # sqrt(2K / M): the rms velocity (or sqrt(|W| / M) when K = 0)
    length_scale: float  # the rms distance from the centre of mass
    seconds: float  # time of the exact energy

    @classmethod
    def of(cls, state: State, softening: float) -> Initial:
        """Check ``state`` (with the forces' ``softening``)."""
        m, x, v = state
        t0 = time.perf_counter()
        w = energy.potential(m, x, softening)
        seconds = time.perf_counter() - t0
        k = energy.kinetic(m, v)
        mass = math.fsum(m)
        centre = np.array([math.fsum(m * x[:, c]) for c in range(3)]) / mass
        r2 = math.fsum(m * ((x - centre) ** 2).sum(axis=1)) / mass
        vscale = math.sqrt(2.0 * k / mass) if k > 0 else math.sqrt(abs(w) / mass)
        return cls(
            energy=k + w,
            kinetic=k,
            potential=w,
            momentum=energy.momentum(m, v),
            angular_momentum=energy.angular_momentum(m, x, v),
            mass=mass,
            velocity_scale=vscale or 1.0,
            length_scale=math.sqrt(r2) or 1.0,
            seconds=seconds,
        )

    @property
    def virial_ratio(self) -> float:
        """``2K / |W|`` (1 for a system in virial equilibrium)."""
        return 2.0 * self.kinetic / abs(self.potential) if self.potential else math.inf


@dataclass
class Row:
    """One backend with one set of options, integrated: what was measured, or why not.

    ``status`` is ``"ok"`` or ``"failed"`` (``message`` says why). Errors are relative to
    the initial state: ``energy_error_*`` = ``|E(t)/E(0) - 1|`` (``|E(t)|`` if ``E(0) = 0``),
    ``momentum_error*`` = ``|P(t) - P(0)| / (M v_rms)``, ``angular_momentum_error*`` =
    ``|L(t) - L(0)| / (M r_rms v_rms)`` (``v_rms``, ``r_rms``: the initial rms speed and rms
    distance from the centre of mass); ``*_final`` (or no suffix) at the end, ``*_max`` the
    largest over the checks.
    ``position_rms`` is the rms over particles of ``|x_i - x_i^ref|`` at the end, ``ref`` the
    first exact float64 row (``reference``).
    """

    backend: str
    label: str
    settings: dict
    exact: bool
    status: str = "ok"
    message: str = ""
    steps: int = 0
    first_call_s: float | None = None
    load_s: float | None = None
    seconds_per_step: float | None = None
    backend_seconds_per_step: float | None = None
    backend_share: float | None = None
    check_seconds: float = 0.0
    checks: int = 0
    energy_initial: float | None = None
    energy_final: float | None = None
    energy_error_final: float | None = None
    energy_error_max: float | None = None
    momentum_error: float | None = None
    momentum_error_max: float | None = None
    angular_momentum_error: float | None = None
    angular_momentum_error_max: float | None = None
    position_rms: float | None = None
    reference: str | None = None
    state_file: str | None = None
    times: list[float] = field(default_factory=list)
    energy_errors: list[float] = field(default_factory=list)

    @property
    def reference_candidate(self) -> bool:
        """Exact direct summation in float64: fit to be the trajectory others are held to."""
        return self.exact and self.settings.get("precision", "float64") in (None, "float64")


def _check(a, n: int) -> np.ndarray:
    """Return the backend's result, or raise an error saying what was wrong with it."""
    if not isinstance(a, np.ndarray) or a.shape != (n, 3):
        shape = getattr(a, "shape", type(a).__name__)
        raise ValueError(f"the backend returned {shape}, not an ({n}, 3) array")
    if not np.isfinite(a).all():
        raise FloatingPointError("the backend returned non-finite accelerations")
    return a


class TooSlow(Exception):
    """One force evaluation of this row takes longer than the run allows (``max_step``)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"one force evaluation takes {seconds:.3g} s")
        self.seconds = seconds


class Interrupted(Exception):
    """Raised in place of a KeyboardInterrupt inside a row: where it happened."""

    def __init__(self, step: int, cause: KeyboardInterrupt) -> None:
        super().__init__(f"interrupted at step {step}")
        self.step = step
        self.cause = cause


def integrate(
    b,
    job: Job,
    state: State,
    initial: Initial,
    *,
    dt: float,
    steps: int,
    softening: float,
    energy_every: int,
    max_step: float = math.inf,
    progress=None,
) -> tuple[Row, np.ndarray, np.ndarray]:
    """Integrate ``state`` with backend ``b`` and the options of ``job``.

    Returns
    -------
    row : Row
        Timings and conservation errors (``position_rms`` is filled in by the caller).
    positions, velocities : (N, 3) ndarray
        The final state.

    Raises
    ------
    TooSlow
        The initial force evaluation took more than ``max_step`` seconds, twice (the first
        call may include compilation): nothing is integrated.
    Interrupted
        On Ctrl-C (or SIGTERM): the row is abandoned.
    """
    m = state.masses
    x = state.positions.copy()
    v = state.velocities.copy()
    n = m.shape[0]
    row = Row(job.name, job.label, dict(job.options), backends.is_exact(job.name))
    row.energy_initial = initial.energy
    row.times.append(0.0)
    row.energy_errors.append(0.0)
    p_scale = initial.mass * initial.velocity_scale
    l_scale = p_scale * initial.length_scale
    row.momentum_error_max = row.angular_momentum_error_max = row.energy_error_max = 0.0
    half = 0.5 * dt
    step = 0
    try:
        t0 = time.perf_counter()
        a = _check(b.accel(m, x, 1.0, softening=softening, **job.options), n)
        row.first_call_s = time.perf_counter() - t0
        if row.first_call_s > max_step:
            t0 = time.perf_counter()
            _check(b.accel(m, x, 1.0, softening=softening, **job.options), n)
            if time.perf_counter() - t0 > max_step:
                raise TooSlow(min(row.first_call_s, time.perf_counter() - t0))
        spent = in_backend = 0.0
        for step in range(1, steps + 1):
            t0 = time.perf_counter()
            with np.errstate(over="ignore", invalid="ignore"):  # checked just below
                v += half * a
                x += dt * v
            if not np.isfinite(x).all():
                raise FloatingPointError(
                    f"the positions overflowed (not finite) with --dt {dt:g}; take a smaller --dt"
                )
            t1 = time.perf_counter()
            a = _check(b.accel(m, x, 1.0, softening=softening, **job.options), n)
            t2 = time.perf_counter()
            v += half * a
            t3 = time.perf_counter()
            spent += t3 - t0
            in_backend += t2 - t1
            row.steps = step
            if step % energy_every == 0 or step == steps:
                _measure(row, m, x, v, step * dt, softening, initial, p_scale, l_scale)
            if progress is not None:
                progress.update(step, spent + row.check_seconds)
    except KeyboardInterrupt as exc:
        raise Interrupted(step, exc) from None
    except TooSlow:
        raise
    except Exception as exc:
        row.status = "failed"
        row.message = f"step {step}: {first_line(exc)}" if step else first_line(exc)
        return row, x, v
    row.seconds_per_step = spent / steps
    row.backend_seconds_per_step = in_backend / steps
    row.backend_share = in_backend / spent if spent > 0 else None
    return row, x, v


def _measure(row, m, x, v, t, softening, initial, p_scale, l_scale) -> None:
    """Check energy, momentum and angular momentum now; keep the errors and their maxima."""
    t0 = time.perf_counter()
    e = energy.kinetic(m, v) + energy.potential(m, x, softening)
    dp = float(np.linalg.norm(energy.momentum(m, v) - initial.momentum)) / p_scale
    dl = float(np.linalg.norm(energy.angular_momentum(m, x, v) - initial.angular_momentum))
    dl /= l_scale
    row.check_seconds += time.perf_counter() - t0
    row.checks += 1
    de = abs(e / initial.energy - 1.0) if initial.energy else abs(e)
    row.energy_final = e
    row.energy_error_final = de
    row.energy_error_max = max(row.energy_error_max, de)
    row.momentum_error = dp
    row.momentum_error_max = max(row.momentum_error_max, dp)
    row.angular_momentum_error = dl
    row.angular_momentum_error_max = max(row.angular_momentum_error_max, dl)
    row.times.append(t)
    row.energy_errors.append(de)
