"""Measuring for ``python -m backends compare``: the oracle cache and the runner.

See :mod:`backends.compare` for the rules (budget, extrapolation, sampling, MPI row). The
runner is a sequence of small steps: for each backend, open it once, then at each N decide
whether to skip, time the calls, check against the oracle; finally derive the columns that
compare rows with each other (interactions per second, speedups, the python estimates).
"""

from __future__ import annotations

import inspect
import math
import os
import statistics
import time
from dataclasses import dataclass, field, replace

import numpy as np

import backends
from backends import _mpi_launch
from backends._contract import FLOAT32_TOLERANCE, benchmark_system
from backends.compare.args import MPI, Job
from backends.compare.report import Progress, Row


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


def _cost(n: int, exact: bool) -> float:
    """Work at ``n``: N(N-1) pairs for direct summation, N log N for approximate methods."""
    return float(backends.interactions(n)) if exact else n * math.log(n)


def _predict(previous: Row | None, n: int) -> float | None:
    """Seconds per call at ``n`` scaled from the backend's previous N, if any (see _cost)."""
    if previous is None or not previous.best_s or previous.n < 2:
        return None
    return previous.best_s * _cost(n, previous.exact) / _cost(previous.n, previous.exact)


def particle_errors(out: np.ndarray, rows, ref: np.ndarray) -> np.ndarray:
    """Per-particle relative errors ``|a_i - ref_i| / |ref_i|`` of the checked rows.

    The project's metric (:func:`backends.relative_error` is their max): where ``|ref_i|`` is
    zero the difference is divided by the largest ``|ref|`` instead.
    """
    a = out if rows is None else out[rows]
    diff = np.linalg.norm(a - ref, axis=-1)
    norm = np.linalg.norm(ref, axis=-1)
    scale = norm.max() if norm.size else 0.0
    return diff / np.where(norm > 0.0, norm, scale if scale > 0.0 else 1.0)


def _rms(errors: np.ndarray) -> float:
    return float(np.sqrt(np.mean(errors**2))) if errors.size else 0.0


def first_line(exc: BaseException) -> str:
    """``TypeName: first line of the message``, for a row's note."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _default_workers(module) -> int:
    """Return the pool size a pool backend uses without ``n_workers``: the usable cores."""
    own = getattr(module, "default_workers", None)
    if callable(own):
        return int(own())
    try:
        from backends._pools import usable_cores

        return usable_cores()
    except ImportError:
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


class Runner:
    """Runs the selected backends and collects :class:`Row` records."""

    def __init__(self, args, progress: Progress) -> None:
        self.args = args
        self.progress = progress
        self.oracle = Oracle(args.seed, args.python_max_n, args.sample_rows)
        self.rows: list[Row] = []
        self.not_run: dict[str, str] = dict(args.not_run)
        self.systems = {n: benchmark_system(n, args.seed) for n in args.n}

    def run(self) -> list[Row]:
        """Every selected backend at every N, then the derived columns."""
        for job in self.args.jobs:
            if job.name == MPI:
                self._run_mpi(job.options.get("algorithm"))
            else:
                self._run_backend(job)
        python = any(j.name == "python" and not j.options for j in self.args.jobs)
        derive_columns(self.rows, self.oracle, self.args.n, python)
        return self.rows

    # -- one in-process backend at every N

    def _run_backend(self, job: Job) -> None:
        """Open the job's backend on first need, measure it at every N, close it."""
        name, b, load_s, previous = job.name, None, 0.0, None
        template = Row(name, job.label, 0, "ok", exact=backends.is_exact(name))
        template.options = dict(job.options)
        try:
            for n in self.args.n:
                if name == "python" and n > self.args.python_max_n and not job.options:
                    self._oracle_only(n)  # python's time there is extrapolated
                    continue
                row = replace(template, n=n, options=dict(template.options), times_s=[])
                self.rows.append(row)
                if self._skip(row, previous):
                    continue
                if b is None:
                    b, load_s = self._open(name, row)
                    if b is None:
                        return
                    self._describe(job, b, template)
                    row.label, row.options = template.label, dict(template.options)
                    row.workers = template.workers
                self._measure(b, row, load_s)
                load_s = 0.0
                previous = row if row.status == "ok" else previous
        finally:
            self._close(name, b)

    def _describe(self, job: Job, b, template: Row) -> None:
        """Pool backends: pass ``--workers`` on and put the worker count in the label."""
        try:
            params = inspect.signature(b._accel).parameters
        except (TypeError, ValueError):  # a callable without a Python signature: no pool knob
            return
        if "n_workers" not in params:
            return
        if self.args.workers is not None and "n_workers" not in job.options:
            template.options["n_workers"] = self.args.workers
        workers = template.options.get("n_workers") or _default_workers(b.module)
        template.workers = workers
        if "n_workers" not in job.options:
            template.label = job.describe(f"{workers} worker{'s' if workers != 1 else ''}")

    def _oracle_only(self, n: int) -> None:
        """Time the sampled oracle rows at ``n``: the fallback base for python's estimate."""
        try:
            self.oracle.reference(n, *self.systems[n], self.progress)
        except Exception as exc:
            self.rows.append(Row("python", "python", n, "failed", message=first_line(exc)))

    def _skip(self, row: Row, previous: Row | None) -> bool:
        """Mark ``row`` skipped if its call is predicted to exceed ``--max-call``."""
        guess = _predict(previous, row.n)
        if guess is None or guess <= self.args.max_call:
            return False
        row.status = "skipped"
        scaling = "N(N-1)" if previous.exact else "N log N"  # as _cost predicted it
        row.message = (
            f"about {guess:.3g} s per call predicted by {scaling} scaling from "
            f"N={previous.n:,}, over --max-call {self.args.max_call:g} s"
        )
        return True

    def _open(self, name: str, row: Row):
        """``(backend, seconds to import it)``, or ``(None, 0)`` with the reason recorded."""
        self.progress.step(f"{name}: import", detail=True)
        t0 = time.perf_counter()
        try:
            b = backends.get(name)
        except backends.BackendUnavailableError as exc:
            self.rows.remove(row)
            self.not_run[name] = str(exc)
            return None, 0.0
        except Exception as exc:
            row.status, row.message = "failed", f"import: {first_line(exc)}"
            return None, 0.0
        # the hardware probe in argument checking imported the module: that time belongs here
        return b, time.perf_counter() - t0 + self.args.probe_s.get(name, 0.0)

    def _close(self, name: str, b) -> None:
        if b is None:
            return
        self.progress.step(f"{name}: close", detail=True)
        try:
            b.close()
        except Exception as exc:
            self.rows.append(Row(name, name, 0, "failed", message=f"close(): {first_line(exc)}"))

    def _measure(self, b, row: Row, load_s: float) -> None:
        """Time the calls at ``row.n``, then check the first and last result."""
        try:
            first, last = self._time_calls(b, row, load_s)
        except Exception as exc:
            row.status, row.message = "failed", first_line(exc)
            return
        row.best_s = min(row.times_s)
        row.median_s = statistics.median(row.times_s)
        if len(row.times_s) < self.args.repeat:
            row.message = (
                f"{len(row.times_s)} of {self.args.repeat} repeats: "
                f"--budget {self.args.budget:g} s reached"
            )
        self._check_error(b, row, first, last)

    def _time_calls(self, b, row: Row, load_s: float):
        """Make the first call, then steady-state calls until ``--repeat`` or ``--budget``."""
        n, args = row.n, self.args
        m, x = self.systems[n]
        self.progress.step(f"{b.name} N={n:,}: first call")
        t0 = time.perf_counter()
        first = b.accel(m, x, **row.options)
        row.first_call_s = load_s + (time.perf_counter() - t0)
        _check(first, n)
        if b.name == "python" and not row.options and n <= args.python_max_n:
            self.oracle.full.setdefault(n, (first, row.first_call_s - load_s))  # the oracle
        spent, last = 0.0, first  # the budget is for steady-state calls: the first is free
        while len(row.times_s) < args.repeat and (not row.times_s or spent < args.budget):
            self.progress.step(
                f"{b.name} N={n:,}: call {len(row.times_s) + 1}/{args.repeat}", detail=True
            )
            t0 = time.perf_counter()
            last = b.accel(m, x, **row.options)
            dt = time.perf_counter() - t0
            row.times_s.append(dt)
            spent += dt
        _check(last, n)
        return first, last

    def _check_error(self, b, row: Row, first: np.ndarray, last: np.ndarray) -> None:
        """Set the errors of the first and last result against the oracle, and the verdict."""
        try:
            rows, ref = self.oracle.reference(row.n, *self.systems[row.n], self.progress)
        except Exception as exc:  # the oracle itself failed: no verdict is possible
            row.status, row.message = "failed", f"oracle: {first_line(exc)}"
            return
        errors = [particle_errors(out, rows, ref) for out in (first, last)]
        row.error_rows = row.n if rows is None else len(rows)
        row.error = max(float(e.max()) if e.size else 0.0 for e in errors)
        row.error_rms = max(_rms(e) for e in errors)
        try:
            row.tolerance_kind, row.tolerance = self._bound(b, row)
        except Exception as exc:
            row.status, row.message = "failed", f"tolerance: {first_line(exc)}"
            return
        measured = row.error if row.tolerance_kind == "max" else row.error_rms
        row.error_ok = bool(measured <= row.tolerance)

    def _bound(self, b, row: Row) -> tuple[str, float]:
        """``("max", --rtol)`` for exact backends; ``("rms", tolerance(**options))`` else."""
        if row.exact:
            if row.options.get("precision", "float64") != "float64":
                return "max", FLOAT32_TOLERANCE
            return "max", self.args.rtol
        declare = getattr(b.module, "tolerance", None)
        if declare is None:
            raise TypeError(f"approximate backend {b.name!r} declares no tolerance(**options)")
        params = inspect.signature(declare).parameters.values()
        if any(p.kind is p.VAR_KEYWORD for p in params):
            options = row.options
        else:  # options that do not change the bound (n_workers=, ...) are not its business
            names = {p.name for p in params}
            options = {k: v for k, v in row.options.items() if k in names}
        return "rms", float(declare(**options))

    # -- the mpiexec row

    def _run_mpi(self, algorithm: str | None = None) -> None:
        """One ``mpiexec`` job per N (each job is its own first call)."""
        ranks, threads = self.args.mpi_ranks, self.args.mpi_threads_per_rank
        previous: Row | None = None
        mine: list[Row] = []
        for n in self.args.n:
            row = Row(MPI, mpi_label(ranks, threads, algorithm), n, "ok", ranks=ranks)
            row.exact = algorithm != "tree"
            if algorithm:
                row.options = {"algorithm": algorithm}
            row.threads_per_rank = threads or 1  # None: this mpi_run's ranks are serial
            mine.append(row)
            self.rows.append(row)
            if self._skip(row, previous):
                continue
            self._mpi_job(row, _predict(previous, n), algorithm)
            previous = row if row.status == "ok" else previous
        docs = [r.mpi_run for r in mine if r.mpi_run]
        if docs:  # what the job reports it ran, the same for every N
            for r in mine:
                r.threads_per_rank = _reported_threads(docs[-1]) or r.threads_per_rank
                r.label = mpi_label(ranks, r.threads_per_rank, docs[-1].get("algorithm"))

    def _mpi_job(self, row: Row, guess: float | None, algorithm: str | None = None) -> None:
        """Run the job for ``row`` and fill it from mpi_run's JSON."""
        args = self.args
        # the same budget as in-process backends: fewer calls where they are predicted slow
        reps = args.repeat if guess is None else int(min(args.repeat, args.budget // guess))
        reps = max(reps, 1)
        self.progress.step(f"{row.label} N={row.n:,}: mpiexec")
        try:
            extra = {}
            if args.mpi_threads_per_rank is not None:  # only where mpi_run has the option
                extra["threads_per_rank"] = args.mpi_threads_per_rank
            if algorithm is not None:
                extra["algorithm"] = algorithm
            doc, wall = _mpi_launch.run(
                args.mpi_ranks, row.n, args.seed, reps, args.mpi_timeout, **extra
            )
            row.times_s = [float(t) for t in doc["seconds_all"]]
            row.best_s = float(doc["seconds"])
            row.median_s = float(doc["seconds_median"])
        except (_mpi_launch.MPIRunError, TypeError, ValueError) as exc:
            row.status, row.message = "failed", first_line(exc)
            return
        row.first_call_s = wall
        row.mpi_run = doc
        row.message = (
            f"algorithm {doc.get('algorithm', '?')}; first call = wall time of the whole "
            "mpiexec job (launch, imports, compilation, all calls); error: mpi_run --check, "
            "against numba_parallel"
            + (f"; {reps} of {args.repeat} repeats (--budget)" if reps < args.repeat else "")
        )
        if doc.get("error") is not None and doc.get("error_rms") is not None:  # approximate
            row.message = row.message.replace(
                "against numba_parallel",
                f"{doc.get('check_rows')} sampled rows against exact summation",
            )
            row.error, row.error_rms = float(doc["error"]), float(doc["error_rms"])
            row.error_rows = doc.get("check_rows")
            row.tolerance_kind, row.tolerance = "rms", float(doc["bound"])
            row.error_ok = bool(row.error_rms <= row.tolerance)
        elif doc.get("error") is not None:
            row.error = float(doc["error"])
            row.tolerance_kind, row.tolerance = "max", args.rtol
            row.error_ok = bool(row.error <= args.rtol)


def mpi_label(ranks: int, threads: int | None, algorithm: str | None = None) -> str:
    """``mpi ring (2 ranks x 1 thread)``: what the mpiexec row ran."""
    t = threads or 1
    head = f"mpi {algorithm}" if algorithm else "mpi"
    return f"{head} ({ranks} rank{'s' if ranks != 1 else ''} x {t} thread{'s' if t != 1 else ''})"


def _reported_threads(doc: dict) -> int | None:
    """Threads per rank as mpi_run's JSON reports them, if it does."""
    for key in ("threads_per_rank", "threads"):
        value = doc.get(key)
        if isinstance(value, int) and value > 0:
            return value
    return None


# --------------------------------------------------------------------------- derived columns


def python_estimates(rows: list[Row], oracle: Oracle, ns) -> tuple[dict, dict]:
    """``(measured python seconds per N, {N: (estimated seconds, how)})``.

    Where python was not timed, its time is extrapolated by N(N-1) scaling from the largest
    smaller N where it was, else from the oracle rows timed at this N.
    """
    base = {n: t for n, (_, t) in oracle.full.items()}
    base.update({r.n: r.best_s for r in rows if r.backend == "python" and r.status == "ok"})
    estimated: dict[int, tuple[float, str]] = {}
    for n in ns:
        if n in base:
            continue
        below = [k for k in base if 1 < k < n]
        if below:
            k = max(below)
            t = base[k] * backends.interactions(n) / backends.interactions(k)
            estimated[n] = (t, f"extrapolated from N={k:,} by N(N-1) scaling")
        elif n in oracle.rows:
            idx, _, t_rows = oracle.rows[n]
            t = t_rows * n / len(idx)
            estimated[n] = (t, f"extrapolated from {len(idx)} oracle rows timed at this N")
    return base, estimated


def derive_columns(rows: list[Row], oracle: Oracle, ns, with_python: bool) -> None:
    """Add the estimated python rows, then interactions/s and the speedups, in place."""
    base, estimated = python_estimates(rows, oracle, ns)
    if with_python:
        extra = [
            Row(
                "python",
                "python",
                n,
                "extrapolated",
                best_s=t,
                python_extrapolated=True,
                message=how,
            )  # fmt: skip
            for n, (t, how) in sorted(estimated.items())
        ]
        at = max((i + 1 for i, r in enumerate(rows) if r.backend == "python"), default=0)
        rows[at:at] = extra
    np_ = {r.n: r.best_s for r in rows if r.backend == "numpy" and r.status == "ok"}
    for r in rows:
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
