"""Conservation over a short leapfrog run: the figure ``python -m backends drift`` reports.

A Plummer sphere of ``DRIFT_N`` particles (Henon units, seed 1), kick-drift-kick leapfrog,
``dt = 1/128``, 64 steps, softening 0.01, the exact energy every 4 steps
(:mod:`backends.drift`). Tracked per backend: the largest relative energy error
``|E(t)/E(0) - 1|`` over the run, and the final momentum change ``|P - P0| / (M v_rms)``.
For ``numba_parallel`` both are set by the integrator and rounding (the energy error is the
time-step error, momentum ~1e-17); for ``tree`` they include its force error. A change that
breaks conservation (a kernel that loses its symmetry, a tree that opens too few nodes) moves
these numbers by orders of magnitude; asv plots lower as better, as for errors.
"""

from __future__ import annotations

import functools

from benchmarks import _common as c

DRIFT_N = 256 if c.TINY else 2_000
STEPS = 16 if c.TINY else 64
DT = 1.0 / 128.0
SOFTENING = 0.01
EVERY = 4
BACKENDS = ["numba_parallel", "tree"]


@functools.cache
def _run(name: str, n: int):
    """Integrate once per process and backend; both tracks read the same row."""
    from backends.compare.args import Job
    from backends.drift.leapfrog import Initial, integrate
    from backends.drift.plummer import sphere

    state, _ = sphere(n, 1)
    initial = Initial.of(state, SOFTENING)
    b = c.get(name)
    row, _, _ = integrate(
        b, Job(name), state, initial, dt=DT, steps=STEPS, softening=SOFTENING, energy_every=EVERY
    )
    if row.status != "ok":
        raise RuntimeError(f"{name}: {row.message}")
    return row


class Drift:
    """Energy and momentum errors of a 64-step leapfrog run of a Plummer sphere."""

    params = ([b for b in BACKENDS if b in c.registered()], [DRIFT_N])
    param_names = ["backend", "n"]
    rounds = 1
    timeout = 300

    def setup(self, name, n):
        c.require(name, n)

    def track_energy_error(self, name, n):
        return float(_run(name, n).energy_error_max)

    track_energy_error.unit = "max |E/E0 - 1|"

    def track_momentum_error(self, name, n):
        return float(_run(name, n).momentum_error)

    track_momentum_error.unit = "|P - P0| / (M v_rms)"
