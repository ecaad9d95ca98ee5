"""``python -m backends frontier``: the fastest way to get forces this accurate, here.

Sweeps the settings of every approximate backend available (:data:`FAMILIES`: ``tree`` theta
with and without quadrupoles, ``fmm`` eps, the peers' own knobs) plus the exact rows
(:data:`EXACT`), at one N on one system, measures each point's time and its rms and max
per-particle relative error on sampled rows, and prints the Pareto front: for each required
rms error (1e-2 down to 1e-12), the fastest point that reached it.

Rules (printed with the results and in ``docs/frontier.md``):

* **Error**: on ``--sample-rows`` random rows (all rows when N is smaller), against direct
  summation of those rows by ``numba_parallel``'s non-symmetric kernel
  (:func:`backends.numba_parallel.accel_block`, float64, within ~1e-13 of the pure-Python
  oracle on the test systems) or, with ``--oracle python``, by the pure-Python oracle
  (:func:`backends.reference.accel_rows`, slow). The metric is the project's per-particle
  relative error; rms and max are over the sampled rows.
* **Time**: the first call (imports, compilation) is not counted; then up to ``--repeat``
  calls, stopping once they have taken ``--budget`` seconds (at least one); the best counts.
* **Exact rows first.** A family of settings runs from its cheapest setting to its most
  accurate one and stops after the first point slower than the fastest exact float64 row:
  every later point is more expensive still, so the exact row dominates it. An exact row
  predicted (from a call at N = 10 000, by N(N-1) scaling) to take more than ``--max-call``
  seconds is not run at N: its time is that prediction (marked ``~``) and its error the one
  measured at N = 10 000.
* **Pareto front**: a point is on it when no other point is at least as fast and at least as
  accurate (rms) and strictly better in one of the two.
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

import backends
from backends import systems
from backends.compare import _on_sigterm, _Terminated
from backends.compare.args import (
    _check_output,
    _non_negative_int,
    _particles,
    _positive_float,
    _positive_int,
    check_plot,
)
from backends.compare.report import (
    Progress,
    fmt_speedup,
    fmt_time,
    metadata,
    text_table,
    write_json,
)

__all__ = ["EXACT", "FAMILIES", "TARGETS", "Point", "front", "main", "pareto"]

#: Families of settings, each ordered from the cheapest to the most accurate:
#: ``(backend, family name, [options, ...])``. Backends not registered or not available
#: here are left out (and listed as such).
FAMILIES: list[tuple[str, str, list[dict]]] = [
    ("tree", "monopoles", [{"theta": t} for t in (1.0, 0.8, 0.6, 0.5, 0.4, 0.3, 0.2)]),
    (
        "tree",
        "quadrupoles",
        [
            {"theta": t, "quadrupole": True}
            for t in (1.0, 0.8, 0.6, 0.5, 0.4, 0.3, 0.25, 0.2, 0.15, 0.1)
        ],
    ),
    ("fmm", "eps", [{"eps": 10.0**-k} for k in range(2, 13)]),
    ("pytreegrav_tree", "monopoles", [{"theta": t} for t in (1.0, 0.7, 0.5, 0.3)]),
    (
        "pytreegrav_tree",
        "quadrupoles",
        [{"theta": t, "quadrupole": True} for t in (1.0, 0.7, 0.5, 0.3)],
    ),
    ("fmm3d", "eps", [{"eps": 10.0**-k} for k in (3, 6, 9, 12)]),
]
#: Exact rows: ``(backend, options)``; float32 direct summation is a point of its own.
EXACT: list[tuple[str, dict]] = [
    ("numba_parallel", {}),
    ("numba_parallel", {"precision": "float32"}),
]
#: The required rms errors of the front table.
TARGETS = tuple(10.0**-k for k in range(2, 13))
#: N at which an exact row's time is measured before it is predicted at a larger N.
PROBE_N = 10_000

_EPILOG = """\
rules: exact rows run first; each family of settings runs from cheap to accurate and stops
after the first point slower than the fastest exact float64 row (the rest are dominated). An
exact row predicted to need more than --max-call seconds at N is timed at N = 10000 and
scaled by N(N-1) (marked ~). Errors: rms and max per-particle relative error on sampled rows
against direct summation of those rows (numba_parallel's kernel; --oracle python: the
pure-Python oracle).

exit status: 0 done (a backend refusing the system with a ValueError is "refused", not a
failure); 1 a point failed (raised otherwise, or returned non-finite values); 2 bad arguments
(nothing run); 130 Ctrl-C, 143 SIGTERM (nothing written).
"""


@dataclass
class Point:
    """One backend at one setting: time and error, or why it was not measured."""

    backend: str
    settings: dict
    family: str
    exact: bool
    seconds: float | None = None
    rms: float | None = None
    max: float | None = None
    pareto: bool = False
    status: str = "ok"  # "ok", "extrapolated", "failed", "refused", "skipped"
    first_call_s: float | None = None
    median_s: float | None = None
    times_s: list[float] = field(default_factory=list)
    bound: float | None = None  # the rms bound the backend declares for these settings
    note: str = ""

    @property
    def label(self) -> str:
        """``tree (theta=0.5, quadrupole=True)``, ``numba_parallel (float32)``."""
        parts = [
            str(v) if k == "precision" else f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in self.settings.items()
        ]
        return f"{self.backend} ({', '.join(parts)})" if parts else self.backend

    @property
    def measured(self) -> bool:
        """True when the point has a time and an error (measured or extrapolated)."""
        return self.status in ("ok", "extrapolated") and self.seconds is not None


# --------------------------------------------------------------------------- Pareto logic


def pareto(points: list[tuple[float, float]]) -> list[bool]:
    """Flag the Pareto-optimal ``(seconds, rms)`` pairs (lower is better in both).

    A pair is optimal when no other pair is ``<=`` in both and ``<`` in at least one. Equal
    pairs are all optimal (none is strictly better than the other). NaN values are never
    optimal and never dominate.
    """
    flags = []
    for i, (t, e) in enumerate(points):
        if not (math.isfinite(t) and math.isfinite(e)):
            flags.append(False)
            continue
        dominated = any(
            j != i
            and math.isfinite(t2)
            and math.isfinite(e2)
            and t2 <= t
            and e2 <= e
            and (t2 < t or e2 < e)
            for j, (t2, e2) in enumerate(points)
        )
        flags.append(not dominated)
    return flags


def front(points: list[Point], targets=TARGETS) -> list[tuple[float, Point | None]]:
    """For each required rms, the fastest measured point whose rms is at most that."""
    done = [p for p in points if p.measured and p.rms is not None]
    out = []
    for target in targets:
        ok = [p for p in done if p.rms <= target]
        out.append((target, min(ok, key=lambda p: p.seconds) if ok else None))
    return out


# --------------------------------------------------------------------------- arguments


class _Parser(argparse.ArgumentParser):
    """Errors are one line on stderr and exit status 2."""

    def error(self, message):  # noqa: D102 - argparse's hook
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """Build the ``python -m backends frontier`` parser."""
    p = _Parser(
        prog="python -m backends frontier",
        description="Sweep every approximate backend's settings and the exact rows at one N; "
        "print the time-accuracy Pareto front.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--n", type=_particles, default=100_000, metavar="N",
                   help="number of particles (default: 100000)")  # fmt: skip
    p.add_argument("--system", choices=systems.SYSTEMS, default="benchmark",
                   help="the system (backends.systems; default: benchmark)")  # fmt: skip
    p.add_argument("--seed", type=_non_negative_int, default=42,
                   help="seed of the system (default: 42, compare's benchmark system)")  # fmt: skip
    p.add_argument("--backends", nargs="+", default=None, metavar="NAME",
                   help="only these backends (default: every available one swept)")  # fmt: skip
    p.add_argument("--repeat", type=_positive_int, default=3, metavar="R",
                   help="timed calls per point after the first (default: 3)")  # fmt: skip
    p.add_argument("--budget", type=_positive_float, default=3.0, metavar="S",
                   help="seconds of timed calls per point after which repeats stop "
                   "(default: 3)")  # fmt: skip
    p.add_argument("--max-call", type=_positive_float, default=60.0, metavar="S",
                   help="exact rows predicted slower are extrapolated (default: 60)")  # fmt: skip
    p.add_argument("--sample-rows", type=_positive_int, default=1000, metavar="K",
                   help="rows whose error is measured (default: 1000)")  # fmt: skip
    p.add_argument("--oracle", choices=("numba", "python"), default="numba",
                   help="direct summation of the sampled rows: numba_parallel's kernel "
                   "(default) or the pure-Python oracle")  # fmt: skip
    p.add_argument("--threads", type=_positive_int, default=None, metavar="T",
                   help="numba.set_num_threads(T) (default: numba's)")  # fmt: skip
    p.add_argument(
        "--json",
        metavar="FILE",
        help="write every point and the metadata as JSON (missing folders are created)",
    )
    p.add_argument(
        "--plot",
        metavar="FILE.png",
        help="time against rms, log-log (matplotlib; missing folders are created)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return p


def parse(argv: list[str]) -> argparse.Namespace:
    """Parse and check everything; errors exit with status 2 before any work."""
    parser = build_parser()
    args = parser.parse_args(argv)
    seen: dict[str, str] = {}
    _check_output(parser, "--json", args.json, seen)
    _check_output(parser, "--plot", args.plot, seen)
    check_plot(parser, args.plot)
    if args.threads is not None:
        import numba

        if args.threads > numba.config.NUMBA_NUM_THREADS:
            parser.error(
                f"--threads {args.threads} exceeds numba's limit of "
                f"{numba.config.NUMBA_NUM_THREADS} threads"
            )
    known = backends.names()
    swept = {b for b, _, _ in FAMILIES} | {b for b, _ in EXACT}
    if args.backends is not None:
        for name in args.backends:
            if name not in known:
                parser.error(f"unknown backend {name!r}; valid names are: {', '.join(known)}")
            if name not in swept:
                parser.error(
                    f"backend {name!r} is not in the sweep; swept: {', '.join(sorted(swept))}"
                )
            reason = backends.unavailable_reason(name)
            if reason is not None:
                parser.error(f"backend {name!r} is not available here: {reason}")
    args.not_run = {}
    for name in sorted(swept):
        if args.backends is not None and name not in args.backends:
            continue
        if name not in known:
            args.not_run[name] = "not registered in this installation"
        else:
            reason = backends.unavailable_reason(name)
            if reason is not None:
                args.not_run[name] = reason
    wanted = set(args.backends) if args.backends is not None else swept
    args.exact_rows = [(b, o) for b, o in EXACT if b in wanted and b not in args.not_run]
    args.families = [f for f in FAMILIES if f[0] in wanted and f[0] not in args.not_run]
    if not args.exact_rows and not args.families:
        parser.error("nothing to run: " + "; ".join(f"{k}: {v}" for k, v in args.not_run.items()))
    return args


# --------------------------------------------------------------------------- measuring


class _Progress(Progress):
    """compare's progress display, with this command's name on each line."""

    def step(self, text: str, detail: bool = False) -> None:
        if self.mode == "lines" and not detail:
            self.stream.write(f"frontier: {text}\n")
            self.stream.flush()
        elif self.mode == "live":
            super().step(text, detail)


class Sweep:
    """Measures the points of one frontier run."""

    def __init__(self, args, progress: Progress) -> None:
        self.args = args
        self.progress = progress
        self.m, self.x = systems.make(args.system, args.n, seed=args.seed)
        k = min(args.sample_rows, args.n)
        rng = np.random.default_rng(args.seed + 1)
        self.rows = np.sort(rng.choice(args.n, k, replace=False)) if k < args.n else None
        self.ref = self._reference(self.m, self.x, self.rows)
        self.points: list[Point] = []
        self.opened: dict[str, backends.Backend] = {}

    def _reference(self, m, x, rows) -> np.ndarray:
        idx = np.arange(x.shape[0]) if rows is None else rows
        self.progress.step(f"direct summation of {idx.size} rows ({self.args.oracle})")
        if self.args.oracle == "python":
            from backends import reference

            return reference.accel_rows(m, x, 1.0, 0.0, idx.tolist())
        from backends.numba_parallel import accel_block

        return accel_block(np.ascontiguousarray(x[idx]), m, x, 1.0, 0.0)

    def errors(self, out: np.ndarray, rows, ref) -> tuple[float, float]:
        """Return the rms and max per-particle relative error of ``out`` on the sampled rows."""
        from backends.compare.runner import particle_errors

        e = particle_errors(out, rows, ref)
        return float(np.sqrt(np.mean(e**2))), float(e.max())

    def backend(self, name: str):
        if name not in self.opened:
            self.opened[name] = backends.get(name)
        return self.opened[name]

    def close(self) -> None:
        for b in self.opened.values():
            try:
                b.close()
            except Exception:  # closing is best effort; the results are already measured
                pass
        self.opened.clear()

    def time_point(self, point: Point, m, x) -> np.ndarray:
        """First call, then timed calls; fills the point's times; returns the last result."""
        b = self.backend(point.backend)
        self.progress.step(f"{point.label}: first call")
        t0 = time.perf_counter()
        out = b.accel(m, x, **point.settings)
        point.first_call_s = time.perf_counter() - t0
        spent = 0.0
        while len(point.times_s) < self.args.repeat and (not point.times_s or
                                                         spent < self.args.budget):  # fmt: skip
            self.progress.step(f"{point.label}: call {len(point.times_s) + 1}", detail=True)
            t0 = time.perf_counter()
            out = b.accel(m, x, **point.settings)
            dt = time.perf_counter() - t0
            point.times_s.append(dt)
            spent += dt
        point.seconds = min(point.times_s)
        point.median_s = float(np.median(point.times_s))
        if not (isinstance(out, np.ndarray) and out.shape == x.shape and np.isfinite(out).all()):
            raise FloatingPointError("returned a bad array (wrong shape or non-finite values)")
        return out

    def measure(self, point: Point) -> None:
        """Time ``point`` at N and measure its error; record a failure as such."""
        try:
            out = self.time_point(point, self.m, self.x)
            point.rms, point.max = self.errors(out, self.rows, self.ref)
            point.bound = backends.tolerance(point.backend, **point.settings)
        except (KeyboardInterrupt, MemoryError):
            raise
        except Exception as exc:
            text = str(exc).strip().splitlines()
            # a ValueError on a valid system is the backend refusing it (documented, e.g.
            # fmm3d on a system spanning too many scales); anything else is a failure
            point.status = "refused" if isinstance(exc, ValueError) else "failed"
            point.note = f"{type(exc).__name__}: {text[0] if text else ''}"

    def exact_point(self, name: str, options: dict) -> Point:
        """Measure an exact row at N, or time it at PROBE_N and predict it when too slow."""
        point = Point(name, dict(options), "exact", True)
        n = self.args.n
        if n <= PROBE_N:
            self.measure(point)
            return point
        probe = Point(name, dict(options), "exact", True)
        m, x = systems.make(self.args.system, PROBE_N, seed=self.args.seed)
        try:
            self.progress.step(f"{point.label}: N={PROBE_N:,} probe")
            out = self.time_point(probe, m, x)
        except Exception as exc:  # the probe failing: the row at N would fail too
            point.status, point.note = "failed", f"probe: {type(exc).__name__}: {exc}"
            return point
        scale = backends.interactions(n) / backends.interactions(PROBE_N)
        guess = probe.seconds * scale
        if guess <= self.args.max_call:
            self.measure(point)
            return point
        rows = np.arange(0, PROBE_N, max(1, PROBE_N // self.args.sample_rows))
        ref = self._reference(m, x, rows)
        point.rms, point.max = self.errors(out, rows, ref)
        point.bound = backends.tolerance(name, **options)
        point.seconds, point.status = guess, "extrapolated"
        point.note = (
            f"predicted {guess:.3g} s > --max-call {self.args.max_call:g} s: time scaled by "
            f"N(N-1) from {probe.seconds:.3g} s at N={PROBE_N:,}, error measured there"
        )
        return point

    def run(self) -> list[Point]:
        """Exact rows, then every family from cheap to accurate; then the Pareto flags."""
        for name, options in self.args.exact_rows:
            self.points.append(self.exact_point(name, options))
        exact64 = [
            p.seconds
            for p in self.points
            if p.measured and p.settings.get("precision", "float64") == "float64"
        ]
        limit = min(exact64) if exact64 else math.inf
        for name, family, settings in self.args.families:
            stop = None
            for options in settings:
                point = Point(name, dict(options), family, False)
                self.points.append(point)
                if stop is not None:
                    point.status, point.note = "skipped", stop
                    continue
                self.measure(point)
                if point.measured and point.seconds > limit:
                    stop = (
                        f"{point.label} was already slower than exact float64 summation "
                        "(more accurate settings cost more)"
                    )
        flags = pareto(
            [(p.seconds, p.rms) if p.measured else (math.nan, math.nan) for p in self.points]
        )
        for p, flag in zip(self.points, flags, strict=True):
            p.pareto = flag
        return self.points


# --------------------------------------------------------------------------- report


def _fmt_err(x: float | None) -> str:
    return "-" if x is None else f"{x:.1e}"


def render(meta: dict, settings: dict, points: list[Point], not_run: dict[str, str]) -> str:
    """Return the report: header, every point, the front table, notes."""
    mach = meta["machine"]
    libs = ", ".join(f"{k} {v}" for k, v in meta["libraries"].items())
    lines = [
        f"nbody-backends frontier: N={settings['n']:,}, system {settings['system']} "
        f"(seed {settings['seed']}), G=1, eps=0",
        f"machine : {mach['cpu']}, {mach['simd']['isa']}, {mach['logical_cpus']} logical CPUs "
        f"({mach['usable_cpus']} usable), {mach['platform']}",
        f"python  : {meta['python']['version']}; {libs}",
        f"settings: threads {settings['numba_threads']}, repeat {settings['repeat']}, budget "
        f"{settings['budget_s']:g} s per point, errors on {settings['error_rows']} rows against "
        f"{settings['oracle_description']}, date {meta['date']}",
        "",
    ]
    exact = [p for p in points if p.exact and p.measured and "precision" not in p.settings]
    base = min((p.seconds for p in exact), default=None)
    head = ["backend (settings)", "best", "vs exact", "rms", "max", "bound", "front"]
    table = [head]
    notes = []
    skipped: dict[tuple[str, str], list[Point]] = {}
    for p in points:
        if p.status == "skipped":  # listed per family below the table
            skipped.setdefault((p.backend, p.family), []).append(p)
            continue
        mark = ""
        if p.note:
            notes.append(f"[{len(notes) + 1}] {p.label}: {p.note}")
            mark = f" [{len(notes)}]"
        if not p.measured:
            word = "refused" if p.status == "refused" else "FAILED"
            table.append([p.label, "-", "-", "-", "-", "-", word + mark])
            continue
        tilde = "~" if p.status == "extrapolated" else ""
        table.append(
            [
                p.label,
                tilde + fmt_time(p.seconds),
                tilde + fmt_speedup(base / p.seconds) if base else "-",
                _fmt_err(p.rms),
                _fmt_err(p.max),
                "-" if p.bound is None else f"{p.bound:.1e}",
                ("*" if p.pareto else "") + mark,
            ]
        )
    lines += text_table(table)
    lines += ["", "Fastest for a required rms error (the Pareto front):", ""]
    lines.append("| rms <= | fastest | time | vs exact | measured rms | max |")
    lines.append("|---|---|---|---|---|---|")
    for target, p in front(points):
        if p is None:
            lines.append(f"| {target:.0e} | none reached it | - | - | - | - |")
            continue
        tilde = "~" if p.status == "extrapolated" else ""
        speed = tilde + fmt_speedup(base / p.seconds) if base else "-"
        lines.append(
            f"| {target:.0e} | {p.label} | {tilde}{fmt_time(p.seconds)} | {speed} | "
            f"{p.rms:.1e} | {p.max:.1e} |"
        )
    lines += [
        "",
        "best: fastest of the timed calls after the first (imports and compilation not "
        "counted); vs exact: the fastest exact float64 row's time / this time.",
        "rms, max: per-particle relative error on the sampled rows; bound: the rms bound the "
        "backend declares for these settings (backends.tolerance); front: * = Pareto-optimal "
        "(no other point both as fast and as accurate).",
        "~: predicted by N(N-1) scaling (see the note).",
        *notes,
    ]
    for (name, family), ps in skipped.items():
        which = "; ".join(p.label.partition(" (")[2].rstrip(")") for p in ps)
        lines.append(
            f"not run ({name} {family}, a cheaper setting was already slower than exact "
            f"float64 summation): {which}"
        )
    for name, reason in not_run.items():
        lines.append(f"not run: {name}: {reason}")
    return "\n".join(lines) + "\n"


_FIRST = ("backend", "settings", "seconds", "rms", "max", "pareto")


def _brief(p: Point) -> dict:
    return {"backend": p.backend, "settings": p.settings, "seconds": p.seconds, "rms": p.rms}


def to_json(meta: dict, settings: dict, points: list[Point], not_run: dict[str, str]) -> dict:
    """Return the run as one JSON object: compare's header, settings, points, the front."""
    measured = [p for p in points if p.measured]
    return {
        "schema": 1,
        "command": "frontier",
        **meta,
        "settings": settings,
        "points": [
            {
                "backend": p.backend,
                "settings": p.settings,
                "seconds": p.seconds,
                "rms": p.rms,
                "max": p.max,
                "pareto": p.pareto,
                **{k: v for k, v in asdict(p).items() if k not in _FIRST},
                "label": p.label,
            }
            for p in measured
        ],
        "not_measured": [
            {"backend": p.backend, "settings": p.settings, "status": p.status, "note": p.note}
            for p in points
            if not p.measured
        ],
        "front": [{"rms_target": t, **(_brief(p) if p else {})} for t, p in front(points)],
        "not_run": not_run,
    }


def write_plot(path: str, points: list[Point], title: str) -> None:
    """Time against rms error, log-log: a marker per family, the front as a step line.

    A family's points are joined in the order of its settings (cheap to accurate); hollow
    markers are predicted times; the front's points are circled, and its step line reads:
    for a required rms on the x axis, the fastest time is the line's height there.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import colormaps
    from matplotlib import pyplot as plt

    pts = [p for p in points if p.measured and p.rms is not None]
    floor = 1e-17  # exact rows may measure an rms of 0 on the sampled rows
    groups: dict[str, list[Point]] = {}
    for p in pts:
        key = p.backend if not p.exact else p.label
        key = f"{p.backend} {p.family}" if not p.exact else key
        groups.setdefault(key, []).append(p)
    markers = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*", "h", "p")
    cmap = colormaps["viridis"]
    fig, ax = plt.subplots(figsize=(8.5, 6), constrained_layout=True)
    k = max(len(groups) - 1, 1)
    for i, (key, ps) in enumerate(groups.items()):  # a family's points in its sweep order
        ax.plot([max(p.rms, floor) for p in ps], [p.seconds for p in ps],
                marker=markers[i % len(markers)], color=cmap(0.9 * i / k),
                ls="-" if len(ps) > 1 else "none", lw=0.8, ms=7,
                mfc="none" if any(p.status == "extrapolated" for p in ps) else None,
                label=key)  # fmt: skip
    best = sorted((p for p in pts if p.pareto), key=lambda p: p.rms)
    if best:
        xs, ys = [], []
        for p in best:
            xs.append(max(p.rms, floor))
            ys.append(p.seconds)
        ax.step(xs, ys, where="post", color="crimson", lw=2.2, alpha=0.6, zorder=0,
                label="Pareto front")  # fmt: skip
        ax.scatter(xs, ys, s=160, facecolors="none", edgecolors="crimson", lw=1.5, zorder=3)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("rms per-particle relative error (sampled rows)")
    ax.set_ylabel("time per evaluation (s, best)")
    ax.set_title(title, fontsize="small")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="x-small", ncols=2, loc="lower left")
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------- entry point


def frontier(args) -> int:
    """Run the sweep; print the report; write the files; 0, or 1 if a point failed."""
    progress = _Progress(args.quiet)
    if args.threads is not None:
        import numba

        numba.set_num_threads(args.threads)
    meta = metadata()
    sweep = Sweep(args, progress)
    try:
        points = sweep.run()
    finally:
        sweep.close()
        progress.done()
    import numba

    settings = {
        "n": args.n,
        "system": args.system,
        "seed": args.seed,
        "numba_threads": numba.get_num_threads(),
        "repeat": args.repeat,
        "budget_s": args.budget,
        "max_call_s": args.max_call,
        "error_rows": args.n if sweep.rows is None else int(sweep.rows.size),
        "oracle": args.oracle,
        "oracle_description": (
            "the pure-Python oracle (math.fsum per component)"
            if args.oracle == "python"
            else "numba_parallel's direct summation of those rows (float64)"
        ),
        "targets": list(TARGETS),
        "G": 1.0,
        "softening": 0.0,
    }
    try:
        sys.stdout.write(render(meta, settings, points, args.not_run))
        sys.stdout.flush()
    except BrokenPipeError:
        pass
    status = 1 if any(p.status == "failed" for p in points) else 0
    for path in (args.json, args.plot):
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    if args.json:
        write_json(args.json, to_json(meta, settings, points, args.not_run))
    if args.plot:
        title = (
            f"N={args.n:,} {args.system}, {meta['machine']['cpu']} "
            f"({meta['machine']['simd']['isa']}), {settings['numba_threads']} threads, "
            f"{meta['date'][:10]}"
        )
        try:
            write_plot(args.plot, points, title)
        except Exception as exc:
            print(f"frontier: could not write --plot {args.plot}: {exc}", file=sys.stderr)
            status = 1
    return status


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m backends frontier``; returns the exit status."""
    args = parse(sys.argv[1:] if argv is None else list(argv))
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return frontier(args)
    except KeyboardInterrupt as exc:
        print("\nfrontier: interrupted; backends closed, nothing written", file=sys.stderr)
        return 143 if isinstance(exc, _Terminated) else 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
