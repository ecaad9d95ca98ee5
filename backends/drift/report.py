"""Reporting of ``python -m backends drift``: progress bar, table, JSON, CSV and the figure.

The machine header, the progress display and the file conventions are ``compare``'s
(:mod:`backends.compare.report`); matplotlib is imported only when the figure is drawn.
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import asdict

from backends.compare.report import Progress, fmt_time, text_table, write_json
from backends.drift.leapfrog import Initial, Row

__all__ = [
    "CSV_FIELDS",
    "Bar",
    "initial_json",
    "render",
    "title",
    "to_json",
    "write_csv",
    "write_json",
    "write_plot",
]


def _fmt_seconds(s: float) -> str:
    if s >= 3600:
        return f"{s / 3600:.1f} h"
    if s >= 60:
        return f"{s / 60:.1f} min"
    return f"{s:.0f} s" if s >= 10 else f"{s:.1f} s"


class Bar:
    """A progress bar for one row on stderr: steps done, steps per second, time left.

    On a terminal it is compare's live line, redrawn at most ten times a second; elsewhere a
    line when a row starts and then at most one every 15 seconds; nothing with ``--quiet``.
    """

    WIDTH = 24

    def __init__(self, quiet: bool, stream=None) -> None:
        self.progress = Progress(quiet, stream, name="drift")
        self.label = ""
        self.total = 1
        self.index = self.rows = 0
        self._shown = 0.0

    def start(self, label: str, total: int, index: int, rows: int) -> None:
        """Start a new row: ``label``, ``total`` steps, row ``index`` (1-based) of ``rows``."""
        self.label, self.total, self.index, self.rows = label, total, index, rows
        self._shown = time.monotonic()
        self.progress.step(f"[{index}/{rows}] {label}: {total} steps")

    def note(self, text: str) -> None:
        """Show a message (a line off a terminal too)."""
        self.progress.step(text)

    def update(self, done: int, elapsed: float) -> None:
        """``done`` steps after ``elapsed`` seconds of this row (checks included)."""
        now = time.monotonic()
        live = self.progress.mode == "live"
        if self.progress.mode == "off" or now - self._shown < (0.1 if live else 15.0):
            if done != self.total or not live:
                return
        self._shown = now
        rate = done / elapsed if elapsed > 0 else math.inf
        left = (self.total - done) / rate if rate > 0 else math.inf
        filled = round(self.WIDTH * done / self.total)
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        text = (
            f"[{self.index}/{self.rows}] {self.label} [{bar}] {done}/{self.total} steps, "
            f"{rate:.3g} steps/s, {_fmt_seconds(left) if math.isfinite(left) else '?'} left"
        )
        self.progress.step(text, detail=live)

    def done(self) -> None:
        """Clear the live line."""
        self.progress.done()


# --------------------------------------------------------------------------- table

_HEAD = (
    "backend",
    "s/step",
    "in backend",
    "|dE/E| end",
    "|dE/E| max",
    "|dP|/(M v)",
    "|dL|/(M r v)",
    "x rms vs ref",
)


def _e(x: float | None) -> str:
    return "-" if x is None else f"{x:.2e}"


def _cells(row: Row, note: str) -> list[str]:
    if row.status != "ok":
        return [row.label] + ["-"] * (len(_HEAD) - 2) + ["FAILED" + note]
    share = "-" if row.backend_share is None else f"{100 * row.backend_share:.0f} %"
    ref = "(ref)" if row.reference == row.label else _e(row.position_rms)
    return [
        row.label + note,
        fmt_time(row.seconds_per_step),
        share,
        _e(row.energy_error_final),
        _e(row.energy_error_max),
        _e(row.momentum_error),
        _e(row.angular_momentum_error),
        ref,
    ]


def _source(settings: dict, initial: Initial) -> str:
    if settings["input"]:
        return f"{settings['input']} (N={settings['n']:,})"
    return (
        f"Plummer sphere, N={settings['n']:,}, seed {settings['seed']}, Henon units "
        f"(scaled by {settings['plummer_scale']:.4f} to E=-1/4 unsoftened)"
    )


def render(meta: dict, settings: dict, initial: Initial, rows: list[Row], notes: dict) -> str:
    """Return the report printed on stdout: header, table, column notes, not run, verdict."""
    m = meta["machine"]
    libs = ", ".join(f"{k} {v}" for k, v in meta["libraries"].items())
    threads = settings.get("numba_threads") or "numba default"
    t_end = settings["dt"] * settings["steps"]
    lines = [
        f"nbody-backends drift: kick-drift-kick leapfrog, float64 state, G=1, "
        f"eps={settings['softening']:g}",
        f"machine : {m['cpu']}, {m['simd']['isa']}, {m['logical_cpus']} logical CPUs "
        f"({m['usable_cpus']} usable), {m['platform']}",
        f"python  : {meta['python']['version']} ({meta['python']['implementation']}); {libs}",
        f"initial : {_source(settings, initial)}; E0 = {initial.energy:.10g}, "
        f"2K/|W| = {initial.virial_ratio:.4f}",
        f"run     : dt = {settings['dt']:g}, {settings['steps']} steps, t = {t_end:.4g} "
        f"({t_end / settings['crossing_time']:.3g} crossing times of 2 sqrt(2)); energy every "
        f"{settings['energy_every']} step{'s' if settings['energy_every'] > 1 else ''} "
        f"({fmt_time(initial.seconds)} each); Numba threads {threads}; date {meta['date']}",
        "",
    ]
    table = [list(_HEAD)]
    footnotes = []
    for row in rows:
        note = ""
        if row.message:
            footnotes.append(f"[{len(footnotes) + 1}] {row.label}: {row.message}")
            note = f" [{len(footnotes)}]"
        table.append(_cells(row, note))
    lines += text_table(table)
    ref = next((r.reference for r in rows if r.reference), None)
    lines += [
        "",
        "s/step: wall time of a step (two kicks, a drift, one force evaluation), checks "
        "excluded; in backend: the share of it in the backend's accel call.",
        "|dE/E|: relative error of the exact total energy (float64, compensated sums, the "
        "forces' softening) at the end and its largest value over the checks.",
        "|dP|/(M v), |dL|/(M r v): total momentum and angular momentum changes at the end, in "
        "units of the total mass M, the initial rms speed v and rms radius r.",
        "x rms vs ref: rms distance of the final positions from those of "
        + (f"{ref} (ref)." if ref else "the first exact float64 row (none ran)."),
    ]
    lines += footnotes
    for name, reason in notes.get("not_run", {}).items():
        lines.append(f"not run: {name}: {reason}")
    if notes.get("interrupted"):
        lines.append(f"INTERRUPTED: {notes['interrupted']}; the rows above are complete")
    bad = [r.label for r in rows if r.status != "ok"]
    if bad:
        lines.append(f"FAILED: {', '.join(bad)}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- files


def initial_json(initial: Initial) -> dict:
    """Return the initial state's checked quantities as JSON."""
    return {
        "energy": initial.energy,
        "kinetic": initial.kinetic,
        "potential": initial.potential,
        "virial_ratio": initial.virial_ratio,
        "momentum": initial.momentum.tolist(),
        "angular_momentum": initial.angular_momentum.tolist(),
        "mass": initial.mass,
        "velocity_scale": initial.velocity_scale,
        "length_scale": initial.length_scale,
        "energy_seconds": initial.seconds,
    }


def to_json(meta, settings, initial, rows, notes, initial_state) -> dict:
    """Return the whole run as one JSON-serializable object."""
    return {
        "schema": 1,
        "command": "drift",
        **meta,
        "settings": settings,
        "initial_state": initial_state,
        "initial": initial_json(initial),
        "rows": [asdict(r) for r in rows],
        "not_run": notes.get("not_run", {}),
        "interrupted": notes.get("interrupted"),
        "failed": any(r.status != "ok" for r in rows),
    }


CSV_FIELDS = [
    "backend",
    "label",
    "settings",
    "status",
    "steps",
    "seconds_per_step",
    "backend_seconds_per_step",
    "backend_share",
    "first_call_s",
    "load_s",
    "check_seconds",
    "checks",
    "energy_initial",
    "energy_final",
    "energy_error_final",
    "energy_error_max",
    "momentum_error",
    "momentum_error_max",
    "angular_momentum_error",
    "angular_momentum_error_max",
    "position_rms",
    "reference",
    "state_file",
    "message",
]


def write_csv(path: str, rows: list[Row]) -> None:
    """One CSV line per row (the energy series are in the JSON only); missing values empty."""
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        for r in rows:
            d = asdict(r)
            d["settings"] = json.dumps(r.settings, sort_keys=True) if r.settings else ""
            w.writerow({k: ("" if d[k] is None else d[k]) for k in CSV_FIELDS})


# --------------------------------------------------------------------------- figure


def write_plot(path: str, rows: list[Row], title: str) -> None:
    """Energy error against time, log scale, one line per row with its own style."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from backends.compare.plots import _styles

    shown = [r for r in rows if r.status == "ok" and len(r.times) > 1]
    styles = _styles([r.label for r in shown])
    fig = Figure(figsize=(9, 5.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    floor = 1e-17  # an error of exactly 0 (the start) cannot be drawn on a log scale
    for k, r in enumerate(shown):
        st = dict(styles[r.label])
        pts = [(t, e) for t, e in zip(r.times, r.energy_errors, strict=True) if t > 0]
        every = max(len(pts) // 12, 1)
        ax.plot(
            [p[0] for p in pts],
            [max(p[1], floor) for p in pts],
            label=r.label,
            markevery=(k * every // max(len(shown), 1), every),  # rows that overlap stay apart
            markersize=5,
            lw=1.4,
            **st,
        )
    ax.set_yscale("log")
    ax.set_xlabel("time (N-body units)")
    ax.set_ylabel("|E(t) / E(0) - 1|")
    ax.grid(True, which="both", alpha=0.3)
    if shown:
        ax.legend(fontsize="small", ncols=2 if len(shown) > 6 else 1)
    ax.set_title("energy error of the leapfrog run, per backend and setting", fontsize="medium")
    fig.suptitle(title, fontsize="small")
    fig.savefig(path, dpi=110)


def title(meta: dict, settings: dict) -> str:
    """Return the figure's title: the run, the CPU, SIMD width, threads and date."""
    m = meta["machine"]
    simd = m["simd"]
    threads = settings.get("numba_threads")
    return (
        f"drift: N={settings['n']:,}, dt={settings['dt']:g}, {settings['steps']} steps, "
        f"eps={settings['softening']:g}; {m['cpu']}, {simd['isa']}, "
        f"{m.get('usable_cpus')} CPUs, {threads} Numba threads, {meta['date'][:10]}"
    )
