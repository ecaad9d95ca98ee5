"""``python -m backends compare``: the whole ladder on this machine, in one table.

The package: :mod:`~backends.compare.args` (parser and every check before work),
:mod:`~backends.compare.runner` (measuring), :mod:`~backends.compare.report` (table, JSON,
CSV) and :mod:`~backends.compare.plots` (the figure).

For every selected backend and every N: the first call (imports, compilation, pool start-up),
then up to ``--repeat`` steady-state calls (best and median), interactions per second,
speedups over the pure-Python oracle and over ``numpy``, and the error against the oracle.

Rules, all documented in the output and in ``docs/compare.md``:

* Backends run one after another in registry order, each at every N in increasing order, and
  are closed (:meth:`backends.Backend.close`) when done, so pools never overlap.
* Budget: the first call (imports, compilation, pool start-up) is not counted; after it,
  steady-state calls stop at ``--repeat`` or once they have taken ``--budget`` seconds at this
  N (at least one call is always made). A backend whose time
  at the next N, predicted by N(N-1) scaling from the previous one, exceeds ``--max-call``
  seconds is skipped there, with a note.
* ``python`` (the oracle) is timed only at N <= ``--python-max-n``; above, its time is
  extrapolated by N(N-1) scaling from the largest N where it was timed in this run, else from
  the oracle rows timed at this N, and marked ``~``.
* The oracle runs in full at N <= ``--python-max-n``; above, on ``--sample-rows`` random rows
  computed exactly by :func:`backends.reference.accel_rows`.
* ``mpi`` is run as ``mpiexec -n P python -m backends.mpi_run --check --json`` (one row
  per N; its error is rank 0's check against ``numba_parallel``); the
  in-process single-rank ``mpi`` backend is not timed, as it adds nothing to the serial rows.
  With ``tree`` selected too, ``mpi_run --algorithm tree`` gives an ``mpi tree`` row after
  ``tree``'s (approximate: its sampled rms error against ``tree``'s bound).
* Checks: exact backends in float64 pass at max error <= ``--rtol``; in float32
  (``--precision``) at max error <= ``FLOAT32_TOLERANCE``; approximate backends
  (``backends.is_exact`` False) at rms error <= their module's ``tolerance(**options)``.
  Approximate backends' times are predicted by N log N scaling for the ``--max-call`` rule.
* Availability is checked before any work with :func:`backends.unavailable_reason` (the
  hardware probe included); a backend named in ``--backends`` that cannot run exits 2.
* Labels say what ran: ``multiprocessing (2 workers)``, ``mpi ring (2 ranks x 1 thread)``,
  ``tree (theta=0.5)`` (a ``--setting`` row), ``numba_parallel (float32)``.
* ``--threads T`` calls ``numba.set_num_threads(T)``: it bounds ``numba_parallel`` and every
  Numba-parallel kernel run in this process; process pools (joblib, multiprocessing), MPI ranks
  and JAX/XLA size themselves and are not affected.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

import backends
from backends import _mpi_launch
from backends._contract import FLOAT32_TOLERANCE
from backends.compare.args import MPI, parse
from backends.compare.report import Progress, metadata, render, to_json, write_csv, write_json
from backends.compare.runner import Runner, first_line

__all__ = ["main", "compare", "list_backends"]


# --------------------------------------------------------------------------- commands


def list_backends(out=None) -> int:
    """Print every registered backend, whether it runs here, and why not."""
    out = sys.stdout if out is None else out
    table = [("backend", "available", "kind", "description / why not")]
    for name in backends.names():
        try:
            reason = backends.unavailable_reason(name)
        except Exception as exc:  # a broken install: say so, keep listing
            reason = f"probe failed: {first_line(exc)}"
        if name == MPI and reason is None:
            launcher = _mpi_launch.unavailable_reason()
            reason = None if launcher is None else f"in-process only; compare's mpi row: {launcher}"
        desc = backends._REGISTRY[name].description
        kind = "exact" if backends.is_exact(name) else "approximate"
        kind += "".join(f"+{p}" for p in backends.precisions(name) if p != "float64")
        ok = reason is None
        table.append((name, "yes" if ok else "no", kind, desc if ok else reason))
    widths = [max(len(r[k]) for r in table) for k in range(3)]
    for r in table:
        cells = [c.ljust(w) for c, w in zip(r[:3], widths, strict=True)]
        out.write("  ".join([*cells, r[3]]) + "\n")
    mpiexec = _mpi_launch.find_mpiexec()
    out.write(f"mpiexec: {mpiexec or 'not found'}\n")
    return 0


def compare(args) -> int:
    """Run the comparison; print the table, write the files; 0, or 1 if anything failed."""
    progress = Progress(args.quiet)
    if args.threads is not None:
        import numba

        numba.set_num_threads(args.threads)
    meta = metadata()
    settings = {
        "n": args.n,
        "backends": list(dict.fromkeys(j.name for j in args.jobs)),
        "precision": args.precision,
        "float32_tolerance": FLOAT32_TOLERANCE if "float32" in args.precision else None,
        "setting": args.setting,
        "repeat": args.repeat,
        "budget_s": args.budget,
        "max_call_s": args.max_call,
        "threads": args.threads,
        "python_max_n": args.python_max_n,
        "sample_rows": args.sample_rows,
        "rtol": args.rtol,
        "seed": args.seed,
        "mpi_ranks": args.mpi_ranks,
        "mpi_threads_per_rank": args.mpi_threads_per_rank,
        "workers": args.workers,
        "G": 1.0,
        "softening": 0.0,
    }
    runner = Runner(args, progress)
    try:
        rows = runner.run()
    finally:
        progress.done()
    if "numba" in sys.modules:
        settings["numba_threads"] = sys.modules["numba"].get_num_threads()
    not_run = runner.not_run
    try:
        sys.stdout.write(render(meta, settings, rows, not_run))
        sys.stdout.flush()
    except BrokenPipeError:  # `compare | head`: the reader left; still write the files
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    status = 1 if any(r.bad for r in rows) else 0
    for path in (args.json, args.csv, args.plot):
        if path:  # argument checking made sure the folders can be created
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    if args.json:
        write_json(args.json, to_json(meta, settings, rows, not_run))
    if args.csv:
        write_csv(args.csv, rows)
    if args.plot:
        try:
            from backends.compare import plots

            plots.write_plot(args.plot, rows, plots.title(meta, settings))
        except Exception as exc:
            print(
                f"compare: could not write --plot {args.plot}: {first_line(exc)}", file=sys.stderr
            )
            status = 1
    return status


class _Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C so that pools are closed and the MPI job is ended."""


def _on_sigterm(signum, frame):
    raise _Terminated


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m backends``; returns the exit status.

    0: success; 1: a backend failed or disagreed with the oracle; 2: bad arguments (nothing
    run); 130 (Ctrl-C) or 143 (SIGTERM): interrupted, after closing the backends' pools and
    ending the MPI job; nothing is written.
    """
    args = parse(sys.argv[1:] if argv is None else argv)
    if args.command == "list":
        return list_backends()
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return compare(args)
    except KeyboardInterrupt as exc:
        print("\ncompare: interrupted; backends closed, nothing written", file=sys.stderr)
        return 143 if isinstance(exc, _Terminated) else 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
