"""The figure of ``python -m backends compare --plot``; matplotlib is imported only here.

Panels: time against N on log-log axes with an N^2 guide (or, with a single N, throughput
bars), speedups over ``python`` and ``numpy`` at the largest N, and the rms error against time
at the largest N (log-log, one point per backend and setting: the accuracy-speed frontier).
Every backend has its own marker and line style, and colours come from a map whose
lightness changes monotonically, so the figure reads in grey; the map is cut where its colours
would have less than :data:`MIN_CONTRAST` against the white background. The spread of the
repeats is drawn from the best to the median time. A backend not run at an N (skipped by
``--max-call``, failed) is named under the first panel; titles and legends mention only
what is drawn.
"""

from __future__ import annotations

import math

from backends.compare.report import RMS_GOAL, Row, fmt_rate

_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*", "h", "p")
#: Least contrast ratio (WCAG's, of relative luminances) of a backend's colour against white:
#: 3 is WCAG's minimum for graphical objects (viridis's yellow end has 1.1, its green 1.8).
MIN_CONTRAST = 3.0
_CMAP_END = 0.58  # viridis beyond this fraction is lighter than MIN_CONTRAST allows
_LINES = ("-", "--", "-.", ":")


def _styles(labels: list[str]) -> dict[str, dict]:
    """Give every label a distinct colour, marker and line style; colours readable in grey."""
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    k = max(len(labels) - 1, 1)
    return {
        label: {
            "color": cmap(_CMAP_END * i / k),
            "marker": _MARKERS[i % len(_MARKERS)],
            "linestyle": _LINES[i % len(_LINES)],
        }
        for i, label in enumerate(labels)
    }


def contrast(color) -> float:
    """Return the WCAG contrast ratio of an RGB(A) colour (components in [0, 1]) on white."""

    def channel(c: float) -> float:
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(c) for c in color[:3])
    return 1.05 / (0.2126 * r + 0.7152 * g + 0.0722 * b + 0.05)


def _time_vs_n(ax, timed: list[Row], styles: dict[str, dict]) -> None:
    """Best time against N, the repeats' spread (best to median), and an N^2 guide line."""
    for label, st in styles.items():
        pts = sorted((r.n, r.best_s, r.median_s, r.status) for r in timed if r.label == label)
        solid = [p for p in pts if p[3] == "ok"]
        guess = [p for p in pts if p[3] == "extrapolated"]
        if solid:
            ns, best = [p[0] for p in solid], [p[1] for p in solid]
            spread = [max((p[2] or p[1]) - p[1], 0.0) for p in solid]
            ax.errorbar(ns, best, yerr=[[0.0] * len(ns), spread], capsize=3, label=label, **st)
        if guess:
            link = solid[-1:] + guess
            ax.plot([p[0] for p in link], [p[1] for p in link], color=st["color"], ls=":",
                    label=None if solid else f"{label} (extrapolated)")  # fmt: skip
            ax.plot([p[0] for p in guess], [p[1] for p in guess], ls="none",
                    marker=st["marker"], color=st["color"], markerfacecolor="none")  # fmt: skip
    measured = [r for r in timed if r.status == "ok"]
    if measured:
        n0, n1 = min(r.n for r in timed), max(r.n for r in timed)
        at = sorted(r.best_s for r in measured if r.n == max(m.n for m in measured))
        t1 = at[len(at) // 2] * (n1 / max(m.n for m in measured)) ** 2
        ax.plot([n0, n1], [t1 * (n0 / n1) ** 2, t1], color="0.5", lw=1.0, ls=(0, (1, 3)),
                label="∝ N² (guide)")  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("N (particles)")
    ax.set_ylabel("time per evaluation (s): best, bar to median")
    guessed = sorted({r.label for r in timed if r.status == "extrapolated"})
    note = f" (hollow: {', '.join(guessed)} extrapolated)" if guessed else ""
    ax.set_title("time vs N" + note)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="x-small", ncols=2)


def _throughput_bars(ax, timed: list[Row], styles: dict[str, dict]) -> None:
    """With a single N: interactions per second per backend, best, bar down to the median."""
    rows = sorted(timed, key=lambda r: r.interactions_per_second or 0.0)
    ys = range(len(rows))
    best = [r.interactions_per_second or 0.0 for r in rows]
    med = [r.interactions_per_second * r.best_s / r.median_s if r.median_s else b
           for r, b in zip(rows, best, strict=True)]  # fmt: skip
    for y, r, b, m in zip(ys, rows, best, med, strict=True):
        st = styles[r.label]
        hollow = r.status == "extrapolated"
        ax.barh(y, b, color="none" if hollow else st["color"], edgecolor=st["color"],
                hatch="//" if hollow else None)  # fmt: skip
        ax.errorbar([b], [y], xerr=[[b - m], [0.0]], color="k", capsize=3, lw=1)
        ax.annotate(f" {fmt_rate(b)}", (b, y), va="center", fontsize="small")
    ax.set_yticks(list(ys), [r.label for r in rows], fontsize="small")
    ax.set_xscale("log")
    ax.margins(x=0.15)
    ax.set_xlabel("interactions per second, N(N-1)/t: best, bar to median")
    n = rows[0].n if rows else 0
    guessed = sorted({r.label for r in rows if r.status == "extrapolated"})
    note = f" (hatched: {', '.join(guessed)} extrapolated)" if guessed else ""
    ax.set_title(f"throughput at N = {n:,}" + note)
    ax.grid(True, axis="x", which="both", alpha=0.3)


def _speedups(ax, measured: list[Row]) -> None:
    """Speedup bars over python and numpy at the largest N (hatched differently for grey)."""
    n_max = max(r.n for r in measured)
    at = [r for r in measured if r.n == n_max]
    xs = range(len(at))
    vs_py = [r.speedup_vs_python or 0.0 for r in at]
    vs_np = [r.speedup_vs_numpy or 0.0 for r in at]
    both = any(vs_py) and any(vs_np)  # side by side only when both series have bars
    if any(vs_py):
        ax.bar([x - 0.2 * both for x in xs], vs_py, width=0.4 if both else 0.6,
               label="vs python", color="0.25")  # fmt: skip
    if any(vs_np):
        ax.bar([x + 0.2 * both for x in xs], vs_np, width=0.4 if both else 0.6,
               label="vs numpy", color="0.75", edgecolor="0.2", hatch="..")  # fmt: skip
    ax.set_xticks(list(xs), [r.label for r in at], rotation=35, ha="right", fontsize="small")
    ax.set_yscale("log")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_ylabel("speedup (x)")
    guessed = any(r.python_extrapolated for r in at)
    ax.set_title(f"speedup at N = {n_max:,}" + (" (vs python: extrapolated)" if guessed else ""))
    if any(vs_py) or any(vs_np):
        ax.legend(fontsize="small")
    ax.grid(True, axis="y", which="both", alpha=0.3)


def _error_vs_time(ax, measured: list[Row], styles: dict[str, dict]) -> None:
    """Plot the rms error against the best time at the largest N: the accuracy-speed frontier."""
    from matplotlib.ticker import NullFormatter

    n_max = max(r.n for r in measured)
    shown = [r for r in measured if r.n == n_max and (r.error_rms or r.error)]
    for r in shown:
        st = styles[r.label]
        hollow = not r.exact
        err = r.error_rms or r.error  # the mpiexec row reports its max error only
        ax.plot([r.best_s], [err], ls="none", marker=st["marker"], ms=9,
                color=st["color"], markerfacecolor="white" if hollow else st["color"],
                markeredgewidth=1.8, label=r.label)  # fmt: skip
    ax.axhline(RMS_GOAL, color="0.5", lw=1.0, ls="--", label=f"rms {RMS_GOAL:g}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    if shown:  # at least a decade wide, so that the major ticks are labelled
        lo, hi = min(r.best_s for r in shown), max(r.best_s for r in shown)
        mid, half = math.sqrt(lo * hi), max(math.sqrt(hi / lo) * 1.5, math.sqrt(10.0))
        ax.set_xlim(mid / half, mid * half)
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("best time per evaluation (s)")
    mpi_max = any(r.error_rms is None for r in shown)  # the mpiexec row reports its max only
    ax.set_ylabel("rms relative error per particle" + (" (mpi: max)" if mpi_max else ""))
    sampled = any(r.error_rows and r.error_rows < r.n for r in measured if r.n == n_max)
    ax.set_title(f"error vs time at N = {n_max:,}" + (" (sampled rows)" if sampled else ""))
    ax.grid(True, which="both", alpha=0.3)
    hollow = "hollow: approximate" if any(not r.exact for r in shown) else None
    ax.legend(fontsize="x-small", title=hollow, title_fontsize="x-small")


def _not_run(rows: list[Row]) -> str:
    """Return a note naming each backend not timed at some N (skipped or failed), or ''."""
    missing: dict[tuple[str, str], list[int]] = {}
    for r in rows:
        if r.status in ("skipped", "failed") and r.backend != "python":
            missing.setdefault((r.label, r.status), []).append(r.n)
    parts = [
        f"{label} {status} at N = {', '.join(f'{n:,}' for n in sorted(ns))}"
        for (label, status), ns in missing.items()
    ]
    return "not timed: " + "; ".join(parts) if parts else ""


def write_plot(path: str, rows: list[Row], title: str) -> None:
    """Write the figure to ``path`` (PNG, SVG or PDF, by its suffix)."""
    build_figure(rows, title).savefig(path, dpi=110)


def build_figure(rows: list[Row], title: str):
    """Return the compare figure (a ``matplotlib.figure.Figure``) of these rows."""
    import textwrap

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    timed = [r for r in rows if r.best_s and r.status in ("ok", "extrapolated")]
    measured = [r for r in timed if r.status == "ok"]
    styles = _styles(list(dict.fromkeys(r.label for r in timed)))
    n_max = max((r.n for r in measured), default=0)
    with_error = any(r.error_rms for r in measured if r.n == n_max)
    fig = Figure(figsize=(19 if with_error else 13, 5.5), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3 if with_error else 2, width_ratios=(1.2, 1, 1)[: 2 + with_error])
    ax_t, ax_s = axes[0], axes[1]
    if with_error:
        _error_vs_time(axes[2], measured, styles)
    if len({r.n for r in timed}) > 1:
        _time_vs_n(ax_t, timed, styles)
    elif timed:
        _throughput_bars(ax_t, timed, styles)
    if measured:
        _speedups(ax_s, measured)
    note = _not_run(rows)
    if note:  # under the first panel, in the figure's own space
        ax_t.annotate("\n".join(textwrap.wrap(note, 90)), (0, 0), xycoords="figure fraction",
                      xytext=(6, 4), textcoords="offset points", fontsize="x-small",
                      va="bottom", annotation_clip=False)  # fmt: skip
        fig.get_layout_engine().set(rect=(0, 0.06, 1, 0.94))
    fig.suptitle(title)
    return fig


def title(meta: dict, settings: dict) -> str:
    """Return the figure's title: CPU model, SIMD width, threads and date."""
    m = meta["machine"]
    simd = m["simd"]
    width = f" ({simd['bits']}-bit)" if simd.get("bits") else ""
    threads = settings.get("numba_threads") or settings.get("threads")
    t = f"{threads} Numba threads" if threads else "threads: numba default"
    cpus = m.get("usable_cpus") or m.get("logical_cpus")
    return (
        f"nbody-backends compare: {m['cpu']}, {simd['isa']}{width}, {cpus} CPUs, {t}, "
        f"{meta['date'][:10]}"
    )
