"""``python -m backends drift``: a leapfrog run with every backend, side by side.

Force errors per call (1e-15 exact, 1e-6 float32, 1e-3 a tree) are not what a simulation
user asks about; conservation over an integration is. This command integrates the same
initial conditions with each selected backend and each ``--setting`` row and reports, per
row, the time per step and how well energy, momentum and angular momentum are conserved.

The package: :mod:`~backends.drift.args` (parser and every check before work),
:mod:`~backends.drift.plummer` (initial conditions, saved states), :mod:`~backends.drift.energy`
(exact energies and momenta), :mod:`~backends.drift.leapfrog` (the integrator and its
checks), :mod:`~backends.drift.report` (progress, table, JSON, CSV, figure).

Rules, all documented in the output and in ``docs/drift.md``:

* Every row starts from the same float64 state (a Plummer sphere in Henon units, or
  ``--input``), integrates it with kick-drift-kick leapfrog and a fixed ``--dt`` for
  ``--steps`` steps; only the accelerations come from the backend (with its options).
* The energy is exact (:func:`backends.drift.energy.potential`): float64, compensated sums,
  the forces' softening; checked with the momenta at the start, every ``--energy-every``
  steps and at the end.
* Each backend is called once on two particles during argument checking (imports,
  compilation, option and softening checks) and closed; then one row at a time, each closed
  when done, so pools never overlap.
* Ctrl-C (or SIGTERM) abandons the row being integrated, closes its backend, and reports the
  rows finished so far (table and files), with exit status 130 (143).
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
from pathlib import Path

import backends
from backends.compare import _on_sigterm, _Terminated
from backends.compare.report import metadata
from backends.compare.runner import first_line
from backends.drift import report
from backends.drift.args import CROSSING_TIME, parse
from backends.drift.leapfrog import Initial, Interrupted, TooSlow, integrate
from backends.drift.plummer import State, save_state, sphere

__all__ = ["main", "drift"]


def _slug(label: str) -> str:
    keep = "".join(c if c.isalnum() or c in "._=-" else "_" for c in label)
    return "_".join(filter(None, keep.split("_")))


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"


class _Run:
    """The rows of one run, in order, and what stopped it early."""

    def __init__(self, args, state: State, initial: Initial, bar: report.Bar) -> None:
        self.args, self.state, self.initial, self.bar = args, state, initial, bar
        self.rows = []
        self.finals = []  # final positions per row, for the rms distance from the reference
        self.interrupted: str | None = None
        self.signal: KeyboardInterrupt | None = None

    def run(self) -> None:
        """Integrate every job in turn; a Ctrl-C (or SIGTERM) ends the loop where it is."""
        for index, job in enumerate(self.args.jobs, 1):
            try:
                self._row(index, job)
            except Interrupted as exc:
                self.interrupted = (
                    f"{job.label} was at step {exc.step} of {self.args.steps} and is left out"
                )
                self.signal = exc.cause
                return
            except KeyboardInterrupt as exc:  # opening, closing or saving: not integrating
                self.interrupted = f"{job.label} is left out (interrupted outside its steps)"
                self.signal = exc
                return

    def _row(self, index: int, job) -> None:
        """Integrate one job, close its backend, save its state, keep its row."""
        self.bar.start(job.label, self.args.steps, index, len(self.args.jobs))
        b = None
        try:
            b = backends.get(job.name)
            row, x, v = integrate(
                b,
                job,
                self.state,
                self.initial,
                dt=self.args.dt,
                steps=self.args.steps,
                softening=self.args.softening,
                energy_every=self.args.energy_every,
                max_step=math.inf if job.label in self.args.named else self.args.max_step,
                progress=self.bar,
            )
        except TooSlow as exc:
            self.args.not_run[job.label] = (
                f"{exc}, over --max-step {self.args.max_step:g} s: {self.args.steps} steps would "
                f"take about {_duration(exc.seconds * self.args.steps)}"
            )
            return
        finally:
            if b is not None:
                try:
                    b.close()
                except Exception as exc:  # the row stands; say that closing failed
                    print(f"drift: {job.label}: close(): {first_line(exc)}", file=sys.stderr)
        row.load_s = self.args.load_s.get(job.label)
        if self.args.save and row.status == "ok":
            path = Path(self.args.save) / f"{index:02d}-{_slug(job.label)}.npz"
            save_state(path, State(self.state.masses, x, v))
            row.state_file = str(path.absolute())
        self.rows.append(row)
        self.finals.append(x if row.status == "ok" else None)

    def positions(self) -> None:
        """Fill in ``position_rms`` against the first exact float64 row that ran."""
        import numpy as np

        ref = next(
            (k for k, r in enumerate(self.rows) if r.status == "ok" and r.reference_candidate),
            None,
        )
        if ref is None:
            return
        xr = self.finals[ref]
        for row, x in zip(self.rows, self.finals, strict=True):
            if x is None:
                continue
            row.reference = self.rows[ref].label
            row.position_rms = float(np.sqrt(np.mean(np.sum((x - xr) ** 2, axis=1))))


def drift(args) -> int:
    """Run the integrations; print the table, write the files; the exit status."""
    bar = report.Bar(args.quiet)
    meta = metadata()
    scale = None
    if args.state is None:
        bar.note(f"Plummer sphere, N={args.n:,}: sampling and exact energy")
        state, scale = sphere(args.n, args.seed)
    else:
        state = args.state
    initial = Initial.of(state, args.softening)
    settings = {
        "n": args.n,
        "input": args.input,
        "seed": None if args.input else args.seed,
        "plummer_scale": scale,
        "dt": args.dt,
        "steps": args.steps,
        "time": args.dt * args.steps,
        "crossing_time": CROSSING_TIME,
        "softening": args.softening,
        "G": 1.0,
        "energy_every": args.energy_every,
        "backends": list(dict.fromkeys(j.name for j in args.jobs)),
        "setting": args.setting,
        "threads": args.threads,
        "max_step_s": args.max_step,
    }
    if "numba" in sys.modules:
        settings["numba_threads"] = sys.modules["numba"].get_num_threads()
    initial_state = None
    if args.save:
        Path(args.save).mkdir(parents=True, exist_ok=True)
        path = Path(args.save) / "initial.npz"
        save_state(path, state)
        initial_state = str(path.absolute())
    run = _Run(args, state, initial, bar)
    try:
        run.run()
    finally:
        bar.done()
    run.positions()
    notes = {"not_run": args.not_run, "interrupted": run.interrupted}
    try:
        sys.stdout.write(report.render(meta, settings, initial, run.rows, notes))
        sys.stdout.flush()
    except BrokenPipeError:  # `drift | head`: the reader left; still write the files
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    status = 1 if any(r.status != "ok" for r in run.rows) else 0
    for path in (args.json, args.csv, args.plot):
        if path:  # argument checking made sure the folders can be created
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    if args.json:
        doc = report.to_json(meta, settings, initial, run.rows, notes, initial_state)
        report.write_json(args.json, doc)
    if args.csv:
        report.write_csv(args.csv, run.rows)
    if args.plot:
        try:
            report.write_plot(args.plot, run.rows, report.title(meta, settings))
        except Exception as exc:
            print(f"drift: could not write --plot {args.plot}: {first_line(exc)}", file=sys.stderr)
            status = 1
    if run.signal is not None:
        print(f"drift: interrupted: {run.interrupted}", file=sys.stderr)
        return 143 if isinstance(run.signal, _Terminated) else 130
    return status


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m backends drift``; returns the exit status.

    0: every row ran; 1: a backend failed; 2: bad arguments (nothing run); 130 (Ctrl-C) or
    143 (SIGTERM): interrupted; the rows finished before it are reported and written.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        args = parse(argv)
        return drift(args)
    except KeyboardInterrupt as exc:  # before the first row, or while writing the report
        print("\ndrift: interrupted; backends closed, nothing more written", file=sys.stderr)
        return 143 if isinstance(exc, _Terminated) else 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
