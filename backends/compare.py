"""``python -m backends compare``: the whole ladder on this machine, in one table.

For every selected backend and every N: the first call (imports, compilation, pool start-up),
then up to ``--repeat`` steady-state calls (best and median), interactions per second,
speedups over the pure-Python oracle and over ``numpy``, and the error against the oracle.

Rules, all documented in the output and the README:

* Backends run one after another in registry order, each at every N in increasing order, and
  are closed (:meth:`backends.Backend.close`) when done, so pools never overlap.
* Budget: after the first call, steady-state calls stop at ``--repeat`` or once the backend has
  spent ``--budget`` seconds at this N (at least one call is always made). A backend whose time
  at the next N, predicted by N(N-1) scaling from the previous one, exceeds ``--max-call``
  seconds is skipped there, with a note.
* ``python`` (the oracle) is timed only at N <= ``--python-max-n``; above, its time is
  extrapolated by N(N-1) scaling from the largest N where it was timed in this run, else from
  the oracle rows timed at this N, and marked ``~``.
* The oracle runs in full at N <= ``--python-max-n``; above, on ``--sample-rows`` random rows
  computed exactly by :func:`backends.reference.accel_rows`.
* ``mpi`` is run as ``mpiexec -n P python -m backends.mpi_run --check --json`` (one row
  ``mpi (P ranks)`` per N; its error is rank 0's check against ``numba_parallel``); the
  in-process single-rank ``mpi`` backend is not timed, as it adds nothing to the serial rows.
* ``--threads T`` calls ``numba.set_num_threads(T)``: it bounds ``numba_parallel`` and every
  Numba-parallel kernel run in this process; process pools (joblib, multiprocessing), MPI ranks
  and JAX/XLA size themselves and are not affected.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import signal
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import backends
from backends import _mpi_launch
from backends._report import Row, metadata, render, to_json, write_csv, write_json, write_plot

DEFAULT_N = (1000, 10000)
MPI = "mpi"
_EPILOG = """\
budget: after the first call, steady-state calls stop at --repeat or after --budget seconds
(at least one); a backend predicted (N(N-1) scaling from its previous N) to need more than
--max-call seconds per call is skipped at that N. python is timed only at N <= --python-max-n
and extrapolated above (marked ~). --threads bounds Numba's parallel kernels in this process
only (not process pools, MPI ranks or JAX).

exit status: 0 all ran and agree with the oracle; 1 a backend failed or disagreed; 2 bad
arguments (nothing run); 130 Ctrl-C, 143 SIGTERM (pools closed, MPI job ended, nothing written).
"""

# --------------------------------------------------------------------------- arguments


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        try:  # accept 1e4, not 1.5
            f = float(text)
        except ValueError:
            f = math.nan
        if not (math.isfinite(f) and f == int(f)):
            raise argparse.ArgumentTypeError(f"must be a positive integer; got {text!r}") from None
        value = int(f)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    if text.strip() in ("0", "+0"):
        return 0
    return _positive_int(text)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number; got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """Build the ``python -m backends`` parser, with the ``compare`` and ``list`` commands."""
    parser = argparse.ArgumentParser(
        prog="python -m backends",
        description="Measure every N-body backend on this machine.",
    )
    sub = parser.add_subparsers(dest="command", metavar="{compare,list}")
    sub.required = True
    sub.add_parser("list", help="every registered backend, whether it runs here, and why not")
    c = sub.add_parser(
        "compare",
        help="time every available backend and check it against the oracle",
        description="Time every available backend and check it against the pure-Python oracle. "
        "Defaults: every available backend at N = 1000 and 10000.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    c.add_argument(
        "--n",
        nargs="+",
        type=_positive_int,
        default=list(DEFAULT_N),
        metavar="N",
        help="numbers of particles (default: 1000 10000)",
    )
    c.add_argument(
        "--backends",
        nargs="+",
        default=None,
        metavar="NAME",
        help="backends to run (default: every available one; see `list`)",
    )
    c.add_argument(
        "--repeat",
        type=_positive_int,
        default=5,
        metavar="R",
        help="steady-state calls after the first (default: 5)",
    )
    c.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        metavar="T",
        help="numba.set_num_threads(T) (Numba-parallel kernels only)",
    )
    c.add_argument("--json", metavar="FILE", help="write every result and the metadata as JSON")
    c.add_argument("--csv", metavar="FILE", help="write one CSV line per backend and N")
    c.add_argument(
        "--plot",
        metavar="FILE.png",
        help="write a figure: time vs N and speedups (needs matplotlib)",
    )
    c.add_argument(
        "--mpi-ranks",
        type=_non_negative_int,
        default=2,
        metavar="P",
        help="ranks for the mpiexec row (default: 2; 0: no MPI row)",
    )
    c.add_argument(
        "--budget",
        type=_positive_float,
        default=5.0,
        metavar="S",
        help="seconds per backend and N after which repeats stop (default: 5)",
    )
    c.add_argument(
        "--max-call",
        type=_positive_float,
        default=30.0,
        metavar="S",
        help="skip a backend at an N where one call is predicted to take longer (default: 30)",
    )
    c.add_argument(
        "--python-max-n",
        type=_non_negative_int,
        default=1000,
        metavar="N",
        help="largest N at which the pure-Python oracle is run in full (default: 1000)",
    )
    c.add_argument(
        "--sample-rows",
        type=_positive_int,
        default=None,
        metavar="K",
        help="oracle rows checked above --python-max-n (default: 1e6/N, in [16, 100])",
    )
    c.add_argument(
        "--rtol",
        type=_positive_float,
        default=1e-12,
        help="largest error that passes (default: 1e-12)",
    )
    c.add_argument("--seed", type=_non_negative_int, default=42, help="random seed (default: 42)")
    c.add_argument(
        "--mpi-timeout",
        type=_positive_float,
        default=300.0,
        metavar="S",
        help="seconds before an MPI job is killed (default: 300)",
    )
    c.add_argument("--quiet", action="store_true", help="no progress display on stderr")
    c.set_defaults(parser=c)  # errors found after parsing are reported with compare's usage
    return parser


def _check_output(parser, option: str, path: str | None, seen: dict[str, str]) -> None:
    if path is None:
        return
    p = Path(path)
    if p.is_dir():
        parser.error(f"{option} {path!r} is a directory, not a file")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        parser.error(f"{option} {path!r}: directory {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK) or (p.exists() and not os.access(p, os.W_OK)):
        parser.error(f"{option} {path!r} is not writable")
    key = os.path.realpath(p)
    if key in seen:
        parser.error(f"{option} and {seen[key]} are the same file {path!r}")
    seen[key] = option


def _select(parser, args) -> tuple[list[str], dict[str, str]]:
    """Backends to run (registry order) and those left out with the reason."""
    known = backends.names()
    not_run: dict[str, str] = {}
    if args.backends is None:
        wanted = known
    else:
        unknown = [b for b in args.backends if b not in known]
        if unknown:
            parser.error(f"unknown backend {unknown[0]!r}; valid names are: {', '.join(known)}")
        wanted = [b for b in known if b in args.backends]
    chosen = []
    for name in wanted:
        spec = backends._REGISTRY[name]
        reason = None
        if any(importlib.util.find_spec(mod) is None for mod in spec.requires):
            reason = backends.unavailable_reason(name)  # dependency check only: no import
        elif name == MPI:
            reason = (
                "disabled by --mpi-ranks 0"
                if args.mpi_ranks == 0
                else _mpi_launch.unavailable_reason()
            )
        if reason is None:
            chosen.append(name)
        elif args.backends is not None:  # asked for by name: refuse before any work
            parser.error(f"backend {name!r} is not available here: {reason}")
        else:
            not_run[name] = reason
    return chosen, not_run


def parse(argv: list[str]) -> argparse.Namespace:
    """Parse and check everything; argument errors exit with status 2 before any work."""
    args = build_parser().parse_args(argv)
    if args.command != "compare":
        return args
    parser = args.parser
    args.n = sorted(set(args.n))
    seen: dict[str, str] = {}
    for option in ("json", "csv", "plot"):
        _check_output(parser, f"--{option}", getattr(args, option), seen)
    if args.plot is not None:
        if Path(args.plot).suffix.lower() not in (".png", ".svg", ".pdf"):
            parser.error(f"--plot {args.plot!r}: the file name must end in .png, .svg or .pdf")
        if importlib.util.find_spec("matplotlib") is None:
            parser.error(
                "--plot needs matplotlib, not installed: pip install 'nbody-backends[plot]'"
            )
    if args.threads is not None:
        import numba  # the limit is numba's (NUMBA_NUM_THREADS, the cores by default)

        top = numba.config.NUMBA_NUM_THREADS
        if args.threads > top:
            parser.error(f"--threads {args.threads} exceeds numba's limit of {top} threads")
    args.selected, args.not_run = _select(parser, args)
    if not args.selected:
        parser.error(
            "no backend to run: " + "; ".join(f"{k}: {v}" for k, v in args.not_run.items())
        )
    return args


# --------------------------------------------------------------------------- progress


class Progress:
    """Progress on stderr: one live line on a terminal, a line per step otherwise, or nothing."""

    def __init__(self, quiet: bool, stream=None) -> None:
        self.stream = sys.stderr if stream is None else stream
        isatty = getattr(self.stream, "isatty", lambda: False)()
        self.mode = "off" if quiet else ("live" if isatty else "lines")

    def step(self, text: str, detail: bool = False) -> None:
        """Show what is being done now (``detail`` steps only on the live line)."""
        if self.mode == "live":  # cut to the terminal's width: a wrapped line cannot be redrawn
            try:
                width = os.get_terminal_size(self.stream.fileno()).columns or 80
            except (AttributeError, OSError, ValueError):
                width = 80  # a size of 0 means unknown (a bare pty)
            self.stream.write("\r\x1b[K" + text[: max(width - 1, 20)])
        elif self.mode == "lines" and not detail:
            self.stream.write(f"compare: {text}\n")
        else:
            return
        self.stream.flush()

    def done(self) -> None:
        """Clear the live line."""
        if self.mode == "live":
            self.stream.write("\r\x1b[K")
            self.stream.flush()


# --------------------------------------------------------------------------- measuring


def system(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Return the benchmark system: masses on [0, 1), standard normal positions."""
    rng = np.random.default_rng(seed)
    return rng.random(n), rng.standard_normal((n, 3))


@dataclass
class Oracle:
    """Oracle results per N: full below the limit, else a timed random sample of rows."""

    seed: int
    full_max_n: int
    sample_rows: int | None
    full: dict[int, tuple[np.ndarray, float]] = field(default_factory=dict)
    rows: dict[int, tuple[np.ndarray, np.ndarray, float]] = field(default_factory=dict)

    def sample(self, n: int) -> int:
        """How many rows are checked at this N."""
        k = self.sample_rows or min(100, max(16, 1_000_000 // n))
        return min(n, k)

    def reference(self, n, m, x, progress) -> tuple[np.ndarray | None, np.ndarray]:
        """``(rows or None for all, exact accelerations of those rows)``."""
        from backends import reference

        if n <= self.full_max_n:
            if n not in self.full:
                progress.step(f"oracle N={n:,} (all rows)")
                t0 = time.perf_counter()
                self.full[n] = (reference.accel(m, x), time.perf_counter() - t0)
            return None, self.full[n][0]
        if n not in self.rows:
            k = self.sample(n)
            progress.step(f"oracle N={n:,} ({k} sampled rows)")
            idx = np.sort(np.random.default_rng(self.seed + 1).choice(n, k, replace=False))
            inp = backends.validate(m, x)
            t0 = time.perf_counter()
            ref = reference.accel_rows(inp.masses, inp.positions, 1.0, 0.0, idx.tolist())
            self.rows[n] = (idx, ref, time.perf_counter() - t0)
        idx, ref, _ = self.rows[n]
        return idx, ref


def _check(out, n: int) -> None:
    if not isinstance(out, np.ndarray) or out.shape != (n, 3) or out.dtype != np.float64:
        got = f"{type(out).__name__} {getattr(out, 'shape', '')} {getattr(out, 'dtype', '')}"
        raise TypeError(f"returned {got.strip()}, not an ({n}, 3) float64 array")
    if not np.isfinite(out).all():
        raise FloatingPointError("returned non-finite values (inf or NaN)")


def _predict(previous: Row | None, n: int) -> float | None:
    """Seconds per call at ``n`` by N(N-1) scaling from the backend's previous N, if any."""
    if previous is None or not previous.best_s or previous.n < 2:
        return None
    return previous.best_s * backends.interactions(n) / backends.interactions(previous.n)


def _error(out: np.ndarray, rows, ref: np.ndarray) -> float:
    return backends.relative_error(out if rows is None else out[rows], ref)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


class Runner:
    """Runs the selected backends and collects :class:`Row` records."""

    def __init__(self, args, progress: Progress) -> None:
        self.args = args
        self.progress = progress
        self.oracle = Oracle(args.seed, args.python_max_n, args.sample_rows)
        self.rows: list[Row] = []
        self.not_run: dict[str, str] = dict(args.not_run)
        self.systems = {n: system(n, args.seed) for n in args.n}

    def run(self) -> list[Row]:
        """Every selected backend at every N, then the speedups."""
        for name in self.args.selected:
            if name == MPI:
                self._run_mpi()
            else:
                self._run_backend(name)
        self._speedups()
        return self.rows

    # -- one in-process backend at every N
    def _run_backend(self, name: str) -> None:
        b = None
        load_s = 0.0
        previous: Row | None = None
        try:
            for n in self.args.n:
                if name == "python" and n > self.args.python_max_n:
                    # extrapolated in _speedups; the timed oracle rows are the fallback base
                    try:
                        self.oracle.reference(n, *self.systems[n], self.progress)
                    except Exception as exc:
                        self.rows.append(Row(name, name, n, "failed", message=_first_line(exc)))
                    continue
                row = Row(name, name, n, "ok")
                self.rows.append(row)
                guess = _predict(previous, n)
                if guess is not None and guess > self.args.max_call:
                    row.status = "skipped"
                    row.message = (
                        f"about {guess:.3g} s per call predicted by N(N-1) scaling from "
                        f"N={previous.n:,}, over --max-call {self.args.max_call:g} s"
                    )
                    continue
                if b is None:
                    self.progress.step(f"{name}: import", detail=True)
                    t0 = time.perf_counter()
                    try:
                        b = backends.get(name)
                    except backends.BackendUnavailableError as exc:
                        self.rows.remove(row)
                        self.not_run[name] = str(exc)
                        return
                    except Exception as exc:
                        row.status, row.message = "failed", f"import: {_first_line(exc)}"
                        return
                    load_s = time.perf_counter() - t0
                self._measure(b, row, load_s)
                load_s = 0.0
                previous = row if row.status == "ok" else previous
        finally:
            if b is not None:
                self.progress.step(f"{name}: close", detail=True)
                try:
                    b.close()
                except Exception as exc:
                    self.rows.append(
                        Row(name, name, 0, "failed", message=f"close(): {_first_line(exc)}")
                    )

    def _measure(self, b, row: Row, load_s: float) -> None:
        n, args = row.n, self.args
        m, x = self.systems[n]
        try:
            self.progress.step(f"{b.name} N={n:,}: first call")
            t0 = time.perf_counter()
            first = b.accel(m, x)
            row.first_call_s = load_s + (time.perf_counter() - t0)
            _check(first, n)
            if b.name == "python" and n <= args.python_max_n and n not in self.oracle.full:
                self.oracle.full[n] = (first, row.first_call_s - load_s)  # the oracle itself
            spent, last = row.first_call_s, first
            while len(row.times_s) < args.repeat and (not row.times_s or spent < args.budget):
                self.progress.step(
                    f"{b.name} N={n:,}: call {len(row.times_s) + 1}/{args.repeat}", detail=True
                )
                t0 = time.perf_counter()
                last = b.accel(m, x)
                dt = time.perf_counter() - t0
                row.times_s.append(dt)
                spent += dt
            _check(last, n)
        except Exception as exc:
            row.status, row.message = "failed", _first_line(exc)
            return
        row.best_s = min(row.times_s)
        row.median_s = statistics.median(row.times_s)
        if len(row.times_s) < args.repeat:
            row.message = (
                f"{len(row.times_s)} of {args.repeat} repeats: --budget {args.budget:g} s reached"
            )
        try:
            rows, ref = self.oracle.reference(n, m, x, self.progress)
        except Exception as exc:  # the oracle itself failed: no verdict is possible
            row.status, row.message = "failed", f"oracle: {_first_line(exc)}"
            return
        row.error_rows = n if rows is None else len(rows)
        row.error = max(_error(first, rows, ref), _error(last, rows, ref))
        row.error_ok = bool(row.error <= args.rtol)

    # -- the mpiexec row
    def _run_mpi(self) -> None:
        ranks, args = self.args.mpi_ranks, self.args
        label = f"mpi ({ranks} ranks)"
        previous: Row | None = None
        for n in args.n:
            row = Row(MPI, label, n, "ok")
            self.rows.append(row)
            guess = _predict(previous, n)
            if guess is not None and guess > args.max_call:
                row.status = "skipped"
                row.message = (
                    f"about {guess:.3g} s per call predicted by N(N-1) scaling from "
                    f"N={previous.n:,}, over --max-call {args.max_call:g} s"
                )
                continue
            # the same budget as in-process backends: fewer calls where they are predicted slow
            reps = args.repeat if guess is None else int(min(args.repeat, args.budget // guess))
            reps = max(reps, 1)
            self.progress.step(f"{label} N={n:,}: mpiexec")
            try:
                doc, wall = _mpi_launch.run(ranks, n, args.seed, reps, args.mpi_timeout)
                row.times_s = [float(t) for t in doc["seconds_all"]]
                row.best_s = float(doc["seconds"])
                row.median_s = float(doc["seconds_median"])
            except (_mpi_launch.MPIRunError, TypeError, ValueError) as exc:
                row.status, row.message = "failed", _first_line(exc)
                continue
            row.first_call_s = wall
            row.mpi_run = doc
            row.message = (
                f"algorithm {doc.get('algorithm', '?')}; first call = wall time of the whole "
                "mpiexec job (launch, imports, compilation, all calls); error: mpi_run --check, "
                "against numba_parallel"
                + (f"; {reps} of {args.repeat} repeats (--budget)" if reps < args.repeat else "")
            )
            if doc.get("error") is not None:
                row.error = float(doc["error"])
                row.error_ok = bool(row.error <= args.rtol)
            previous = row

    # -- derived columns
    def _speedups(self) -> None:
        py = {r.n: r.best_s for r in self.rows if r.backend == "python" and r.status == "ok"}
        np_ = {r.n: r.best_s for r in self.rows if r.backend == "numpy" and r.status == "ok"}
        base = {n: t for n, (_, t) in self.oracle.full.items()}
        base.update(py)
        estimated: dict[int, tuple[float, str]] = {}
        for n in self.args.n:
            if n in base:
                continue
            below = [k for k in base if k < n and k > 1]
            if below:
                k = max(below)
                t = base[k] * backends.interactions(n) / backends.interactions(k)
                estimated[n] = (t, f"extrapolated from N={k:,} by N(N-1) scaling")
            elif n in self.oracle.rows:
                idx, _, t_rows = self.oracle.rows[n]
                t = t_rows * n / len(idx)
                estimated[n] = (t, f"extrapolated from {len(idx)} oracle rows timed at this N")
        if "python" in self.args.selected:
            extra = [
                Row(
                    "python",
                    "python",
                    n,
                    "extrapolated",
                    best_s=t,
                    python_extrapolated=True,
                    message=how,
                )
                for n, (t, how) in sorted(estimated.items())
            ]
            at = max((i + 1 for i, r in enumerate(self.rows) if r.backend == "python"), default=0)
            self.rows[at:at] = extra
        for r in self.rows:
            if not r.best_s:
                continue
            r.interactions_per_second = backends.interactions(r.n) / r.best_s
            if r.n in base:
                r.speedup_vs_python = base[r.n] / r.best_s
            elif r.n in estimated:
                r.speedup_vs_python = estimated[r.n][0] / r.best_s
                r.python_extrapolated = True
            if r.n in np_:
                r.speedup_vs_numpy = np_[r.n] / r.best_s


# --------------------------------------------------------------------------- commands


def list_backends(out=None) -> int:
    """Print every registered backend, whether it runs here, and why not."""
    out = sys.stdout if out is None else out
    table = [("backend", "available", "description / why not")]
    for name in backends.names():
        try:
            reason = backends.unavailable_reason(name)
        except Exception as exc:  # a broken install: say so, keep listing
            reason = f"probe failed: {_first_line(exc)}"
        if name == MPI and reason is None:
            launcher = _mpi_launch.unavailable_reason()
            reason = None if launcher is None else f"in-process only; compare's mpi row: {launcher}"
        desc = backends._REGISTRY[name].description
        table.append((name, "yes" if reason is None else "no", desc if reason is None else reason))
    w0 = max(len(r[0]) for r in table)
    w1 = max(len(r[1]) for r in table)
    for r in table:
        out.write(f"{r[0]:<{w0}}  {r[1]:<{w1}}  {r[2]}\n")
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
        "backends": args.selected,
        "repeat": args.repeat,
        "budget_s": args.budget,
        "max_call_s": args.max_call,
        "threads": args.threads,
        "python_max_n": args.python_max_n,
        "sample_rows": args.sample_rows,
        "rtol": args.rtol,
        "seed": args.seed,
        "mpi_ranks": args.mpi_ranks,
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
    sys.stdout.write(render(meta, settings, rows, not_run))
    sys.stdout.flush()
    status = 1 if any(r.bad for r in rows) else 0
    if args.json:
        write_json(args.json, to_json(meta, settings, rows, not_run))
    if args.csv:
        write_csv(args.csv, rows)
    if args.plot:
        cpu = meta["machine"]["cpu"]
        try:
            write_plot(args.plot, rows, f"nbody-backends compare on {cpu}, {meta['date'][:10]}")
        except Exception as exc:
            print(
                f"compare: could not write --plot {args.plot}: {_first_line(exc)}", file=sys.stderr
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
