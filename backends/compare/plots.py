"""The figure of ``python -m backends compare --plot``; matplotlib is imported only here."""

from __future__ import annotations

from backends.compare.report import Row


def write_plot(path: str, rows: list[Row], title: str) -> None:
    """Time vs N (log-log) for every backend, and speedup bars at the largest N.

    Measured points are solid; the extrapolated pure-Python times are hollow and dashed.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 5), layout="constrained")
    FigureCanvasAgg(fig)
    ax_t, ax_s = fig.subplots(1, 2, width_ratios=(1.1, 1))
    timed = [r for r in rows if r.best_s and r.status in ("ok", "extrapolated")]
    labels = list(dict.fromkeys(r.label for r in timed))
    for k, label in enumerate(labels):
        color = f"C{k % 10}"
        pts = sorted((r.n, r.best_s, r.status) for r in timed if r.label == label)
        solid = [p for p in pts if p[2] == "ok"]
        guess = [p for p in pts if p[2] == "extrapolated"]
        if solid:
            ax_t.plot([p[0] for p in solid], [p[1] for p in solid], "o-", color=color, label=label)
        if guess:
            link = solid[-1:] + guess
            ax_t.plot([p[0] for p in link], [p[1] for p in link], "--", color=color,
                      label=None if solid else label)  # fmt: skip
            ax_t.plot([p[0] for p in guess], [p[1] for p in guess], "o", color=color,
                      markerfacecolor="none")  # fmt: skip
    ax_t.set_xscale("log")
    ax_t.set_yscale("log")
    ax_t.set_xlabel("N (particles)")
    ax_t.set_ylabel("best time per evaluation (s)")
    ax_t.set_title("time vs N (dashed, hollow: python extrapolated)")
    ax_t.grid(True, which="both", alpha=0.3)
    if labels:
        ax_t.legend(fontsize="small")

    measured = [r for r in timed if r.status == "ok"]
    if measured:
        n_max = max(r.n for r in measured)
        at = [r for r in measured if r.n == n_max]
        xs = range(len(at))
        vs_py = [r.speedup_vs_python or 0.0 for r in at]
        vs_np = [r.speedup_vs_numpy or 0.0 for r in at]
        ax_s.bar([x - 0.2 for x in xs], vs_py, width=0.4, label="vs python")
        ax_s.bar([x + 0.2 for x in xs], vs_np, width=0.4, label="vs numpy")
        ax_s.set_xticks(list(xs), [r.label for r in at], rotation=30, ha="right")
        ax_s.set_yscale("log")
        ax_s.axhline(1.0, color="k", lw=0.8)
        ax_s.set_ylabel("speedup (x)")
        guessed = any(r.python_extrapolated for r in at)
        ax_s.set_title(
            f"speedup at N = {n_max:,}" + (" (vs python: extrapolated)" if guessed else "")
        )
        ax_s.legend(fontsize="small")
        ax_s.grid(True, axis="y", which="both", alpha=0.3)
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
