"""Arguments of ``python -m backends drift``: the parser and every check made before work.

The option syntax, the ``--setting`` parser, the output-file checks and the availability
probe are ``compare``'s (:mod:`backends.compare.args`). Every error here is reported with
drift's usage and exit status 2, before anything runs.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

import numpy as np

import backends
from backends.compare.args import (
    MPI,
    Job,
    _at_most,
    _check_output,
    _Formatter,
    _non_negative_int,
    _particles,
    _positive_float,
    _positive_int,
    _probe,
    _settings,
    check_plot,
)
from backends.compare.runner import first_line
from backends.drift.plummer import load_state

__all__ = ["build_parser", "parse"]

DEFAULT_N = 1000
DEFAULT_DT = 1.0 / 128.0
#: The crossing time of a system in Henon units, 2 sqrt(2) (G M^(5/2) / (-2E)^(3/2)).
CROSSING_TIME = 2.0 * math.sqrt(2.0)
#: The most steps ``--steps`` defaults to (a smaller --dt needs --steps given).
MAX_DEFAULT_STEPS = 10**7
#: The most steps ``--steps`` accepts: 10**7 force evaluations, days of a fast backend at
#: N = 1000; a larger count is a typo (1e300 would run without end), refused before any work.
MAX_STEPS = 10**7
#: The largest ``--dt``: above it ``dt**2`` (the first drift adds ``a dt^2 / 2``) is within
#: ~1e8 of float64's overflow, so the positions leave the finite range on the first step for
#: any sizeable force. Henon-unit runs use dt ~ 1e-2.
MAX_DT = 1e150
OUT_DIR = "drift-out"  # where --save writes by default (git-ignored in the repository)
#: Left out of the default selection (run when named in --backends), with the reason.
NOT_BY_DEFAULT = {
    "python": "the pure-Python oracle takes seconds per step at N = 1000; name it in "
    "--backends (with a small --n) to run it",
    MPI: "in one process the mpi backend is a single rank (numba_parallel's kernel); name it "
    "in --backends to run it",
}

_DESCRIPTION = """\
Integrate the same initial conditions with every selected backend (kick-drift-kick leapfrog,
fixed time step, float64 state; only the accelerations come from the backend) and report how
well each conserves energy, momentum and angular momentum, and how far its trajectory leaves
the first exact row's. Defaults: a Plummer sphere of 1000 particles in Henon units, every
available backend but python and mpi, one crossing time."""

_EPILOG = """\
initial conditions: a Plummer sphere sampled from its distribution function (Aarseth, Henon &
Wielen 1974), equal masses, centred on its centre of mass at rest, rescaled to an exact
unsoftened energy of -1/4 (Henon units: G = 1, M = 1); or --input F.npz (masses (N,),
positions (N, 3), velocities (N, 3)). The energy is computed exactly (float64, compensated
sums over every pair, the forces' softening) at the start, every --energy-every steps and at
the end: O(N^2), a few force evaluations of numba_parallel each.

exit status: 0 every row ran; 1 a backend failed (raised, or returned a non-finite or
misshapen array); 2 bad arguments (nothing run); 130 Ctrl-C, 143 SIGTERM: the table and the
files hold the rows finished so far.
"""


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0; got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """Build the ``python -m backends drift`` parser."""
    p = argparse.ArgumentParser(
        prog="python -m backends drift",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=_Formatter,
    )
    p.add_argument(
        "--backends",
        nargs="+",
        default=None,
        metavar="NAME",
        help="backends to run, in registry order (default: every available one but python and "
        "mpi; see `python -m backends list`)",
    )
    p.add_argument(
        "--setting",
        action="append",
        default=None,
        metavar="NAME:KEY=VALUE[,...]",
        help="also run backend NAME with these keyword options, as a row of its own "
        "(repeatable; e.g. tree:theta=0.8 or numba_parallel:precision=float32)",
    )
    p.add_argument(
        "--n",
        type=_particles,
        default=None,
        metavar="N",
        help=f"particles of the Plummer sphere, at least 2 (default: {DEFAULT_N})",
    )
    p.add_argument(
        "--input",
        metavar="F.npz",
        help="start from this state instead (masses, positions, velocities; as --save writes)",
    )
    p.add_argument("--seed", type=_non_negative_int, default=42, help="Plummer sphere's seed")
    p.add_argument(
        "--dt",
        type=_at_most(_positive_float, MAX_DT, "larger steps overflow the positions"),
        default=DEFAULT_DT,
        metavar="DT",
        help="time step",
    )
    p.add_argument(
        "--steps",
        type=_at_most(_positive_int, MAX_STEPS, "a larger count would run for months"),
        default=None,
        metavar="K",
        help="leapfrog steps (default: one crossing time, 2 sqrt(2) in Henon units: "
        "ceil(2.83 / DT), 363 with the default DT)",
    )
    p.add_argument(
        "--softening",
        type=_non_negative_float,
        default=0.0,
        metavar="EPS",
        help="Plummer softening of the forces and of the potential energy (default: 0, none; "
        "a fixed-step run needs one, see docs/drift.md)",
    )
    p.add_argument(
        "--energy-every",
        type=_positive_int,
        default=1,
        metavar="K",
        help="exact energy every K steps (and at the end); momenta are checked at the same times",
    )
    p.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        metavar="T",
        help="numba.set_num_threads(T): Numba-parallel kernels of this process, the energy's "
        "included (default: numba's)",
    )
    p.add_argument(
        "--max-step",
        type=_positive_float,
        default=2.0,
        metavar="S",
        help="leave out (with a note) a backend you did not name in --backends or --setting "
        "whose force evaluation at this N takes longer than S seconds (timed on its first "
        "call, and again if that was over); named ones always run",
    )
    p.add_argument("--json", metavar="FILE", help="write every row and the metadata as JSON")
    p.add_argument("--csv", metavar="FILE", help="write one CSV line per row")
    p.add_argument(
        "--plot",
        metavar="FILE.png",
        help="write a figure: energy error against time, one line per row (needs matplotlib)",
    )
    p.add_argument(
        "--save",
        nargs="?",
        const=OUT_DIR,
        metavar="DIR",
        help=f"write the initial state and each row's final state as .npz into DIR (created if "
        f"missing; DIR defaults to {OUT_DIR}/); their paths go into the JSON",
    )
    p.add_argument("--quiet", action="store_true", help="no progress display on stderr")
    return p


def _select(parser, args) -> tuple[list[str], dict[str, str]]:
    """Backends to run (registry order) and those left out with the reason."""
    known = backends.names()
    not_run: dict[str, str] = {}
    if args.backends is None:
        wanted = [b for b in known if b not in NOT_BY_DEFAULT]
        not_run.update(NOT_BY_DEFAULT)
    else:
        unknown = [b for b in args.backends if b not in known]
        if unknown:
            parser.error(f"unknown backend {unknown[0]!r}; valid names are: {', '.join(known)}")
        wanted = [b for b in known if b in args.backends]
    chosen = []
    for name in wanted:
        reason = _probe(name)[0]
        if reason is None:
            chosen.append(name)
        elif args.backends is not None:
            parser.error(f"backend {name!r} is not available here: {reason}")
        else:
            not_run[name] = reason
    return chosen, not_run


def _jobs(parser, args) -> list[Job]:
    """Each selected backend with its default options, then its ``--setting`` rows."""
    extra = _settings(parser, args.setting)
    jobs = []
    for name in args.selected:
        jobs.append(Job(name))
        jobs += [j for j in extra if j.name == name]
    for job in extra:
        if job.name in args.selected:
            continue
        reason = _probe(job.name)[0]
        if reason is not None:
            parser.error(f"--setting: backend {job.name!r} is not available here: {reason}")
        jobs.append(job)
    return jobs


def _try(parser, args, jobs: list[Job]) -> list[Job]:
    """Call each job's backend once on two particles with the run's softening and options.

    A ``TypeError`` or ``ValueError`` (a bad option value, or a softening the backend cannot
    do: the peers have none) is an argument error for a backend named in ``--backends`` or
    ``--setting``; a default-selected backend that refuses is left out, with the reason. Any
    other failure is the row's own, reported when it runs. This is where imports and
    compilation happen (their time is the row's ``load_s``); the backends are closed again so
    that no pool outlives its own row.
    """
    m = np.ones(2)
    x = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    kept = []
    args.load_s = {}
    for job in jobs:
        t0 = time.perf_counter()
        try:
            b = backends.get(job.name)
        except Exception as exc:
            parser.error(f"backend {job.name!r} cannot be loaded: {first_line(exc)}")
        try:
            b.accel(m, x, 1.0, softening=args.softening, **job.options)
        except (TypeError, ValueError) as exc:  # an option or the softening refused
            text = str(exc).strip().splitlines()
            text = text[0] if text else type(exc).__name__
            if job.options or args.backends is not None:
                parser.error(f"{job.label}: {text}")
            args.not_run[job.name] = text
            continue
        except Exception:  # a failing backend: its row says so when it runs
            pass
        finally:
            b.close()
        args.load_s[job.label] = time.perf_counter() - t0
        kept.append(job)
    return kept


def _initial(parser, args) -> None:
    """Load ``--input`` or set ``--n``; ``args.state`` is the loaded state or None."""
    args.state = None
    if args.input is not None:
        if args.n is not None:
            parser.error("give --n or --input, not both")
        if not Path(args.input).is_file():
            parser.error(f"--input {args.input!r}: no such file")
        try:
            args.state = load_state(args.input)
        except ValueError as exc:
            parser.error(f"--input {args.input!r}: {exc}")
        args.n = args.state.masses.shape[0]
        return
    if args.n is None:
        args.n = DEFAULT_N
    if args.n < 2:
        parser.error(f"--n: must be at least 2 (a system of {args.n} particle has no dynamics)")


def _check_save(parser, args, seen: dict[str, str]) -> None:
    """``--save DIR``: DIR must be (or be creatable as) a writable folder."""
    if args.save is None:
        return
    folder = Path(args.save)
    if folder.exists() and not folder.is_dir():
        parser.error(f"--save {args.save!r} is not a directory")
    _check_output(parser, "--save", str(folder / "initial.npz"), seen)
    if args.input is not None and os.path.realpath(args.input) in {
        os.path.realpath(p) for p in folder.glob("*.npz")
    }:
        parser.error(f"--save {args.save!r} would overwrite --input {args.input!r}")


def parse(argv: list[str]) -> argparse.Namespace:
    """Parse and check everything; argument errors exit with status 2 before any work."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.parser = parser
    args.setting = args.setting or []
    _initial(parser, args)
    seen: dict[str, str] = {}
    for option in ("json", "csv", "plot"):
        _check_output(parser, f"--{option}", getattr(args, option), seen)
    check_plot(parser, args.plot)
    _check_save(parser, args, seen)
    if args.steps is None:
        steps = CROSSING_TIME / args.dt
        if not steps <= MAX_DEFAULT_STEPS:
            parser.error(
                f"--dt {args.dt:g}: one crossing time would take {steps:.3g} steps; "
                "give --steps (or a larger --dt)"
            )
        args.steps = math.ceil(steps - 1e-9)
    if args.energy_every > args.steps:
        args.energy_every = args.steps
    if args.threads is not None:
        import numba

        top = numba.config.NUMBA_NUM_THREADS
        if args.threads > top:
            parser.error(f"--threads {args.threads} exceeds numba's limit of {top} threads")
    args.selected, args.not_run = _select(parser, args)
    jobs = _jobs(parser, args)
    if args.threads is not None:  # before the first compiled call
        import numba

        numba.set_num_threads(args.threads)
    args.jobs = _try(parser, args, jobs)
    # what the user asked for by name runs however slow; --max-step is for the rest
    args.named = {j.label for j in args.jobs if args.backends is not None or j.options}
    if not args.jobs:
        parser.error(
            "no backend to run: " + "; ".join(f"{k}: {v}" for k, v in args.not_run.items())
        )
    return args
