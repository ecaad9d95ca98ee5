"""Reporting for ``python -m backends compare``: progress, metadata, table, JSON and CSV.

Nothing here measures; the figure is drawn by :mod:`backends.compare.plots`.
"""

from __future__ import annotations

import csv
import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass, field

# Distributions whose versions go into the header (looked up without importing them).
_LIBRARIES = (
    "numpy",
    "numba",
    "llvmlite",
    "scipy",
    "jax",
    "jaxlib",
    "joblib",
    "mpi4py",
    "mpich",
    "numba-cuda",
    "matplotlib",
    "pytreegrav",
    "fmm3dpy",
    "nbody-backends",
)


@dataclass
class Row:
    """One backend at one N: what was measured, or why nothing was.

    ``status`` is ``"ok"`` (measured), ``"failed"`` (raised, or returned a bad array),
    ``"skipped"`` (not run at this N, see ``message``) or ``"extrapolated"`` (the pure-Python
    time estimated from N(N-1) scaling). Times are in seconds; ``error_rows`` is the number of
    rows checked against the oracle (N when the oracle ran in full, None when the backend
    checked itself, as ``mpi_run`` does). ``error`` is the max and ``error_rms`` the rms of the
    per-particle relative errors over those rows; ``tolerance`` is the bound that applied, to
    the max for exact backends (``--rtol``) and to the rms for approximate ones (their
    module's ``tolerance(**options)``). ``options`` are the keyword options of the calls.
    """

    backend: str
    label: str
    n: int
    status: str
    first_call_s: float | None = None
    best_s: float | None = None
    median_s: float | None = None
    times_s: list[float] = field(default_factory=list)
    interactions_per_second: float | None = None
    speedup_vs_python: float | None = None
    speedup_vs_numpy: float | None = None
    python_extrapolated: bool = False
    error: float | None = None
    error_rms: float | None = None
    error_rows: int | None = None
    error_ok: bool | None = None
    exact: bool = True
    tolerance: float | None = None
    tolerance_kind: str | None = None  # "max" or "rms": which error the bound applies to
    options: dict = field(default_factory=dict)
    workers: int | None = None  # pool backends: processes or threads of the pool
    ranks: int | None = None  # the mpiexec row: MPI ranks ...
    threads_per_rank: int | None = None  # ... and Numba threads per rank
    message: str = ""
    mpi_run: dict | None = None  # the mpiexec row: mpi_run's own JSON object, verbatim

    @property
    def bad(self) -> bool:
        """True when this row makes the command fail: an error, or a disagreement."""
        return self.status == "failed" or self.error_ok is False


# --------------------------------------------------------------------------- progress


class Progress:
    """Progress on stderr: one live line on a terminal, a line per step otherwise, or nothing."""

    def __init__(self, quiet: bool, stream=None, name: str = "compare") -> None:
        self.name = name  # the prefix of the lines written off a terminal
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
            self.stream.write(f"{self.name}: {text}\n")
        else:
            return
        self.stream.flush()

    def done(self) -> None:
        """Clear the live line."""
        if self.mode == "live":
            self.stream.write("\r\x1b[K")
            self.stream.flush()


# --------------------------------------------------------------------------- metadata


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if sys.platform == "darwin":
        try:
            out = subprocess.run(
                ["sysctl", "-n", "machdep.cpu.brand_string"],
                capture_output=True,
                text=True,
                timeout=5,
            )
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine() or "unknown CPU"


_SIMD = (  # (feature flag, name, vector width in bits), widest first
    ("avx512f", "AVX-512", 512),
    ("avx2", "AVX2", 256),
    ("avx", "AVX", 256),
    ("sse2", "SSE2", 128),
    ("neon", "NEON", 128),
    ("asimd", "NEON", 128),
)


def _cpu_flags() -> set[str]:
    """Return the host CPU's features: LLVM's view (what Numba compiles for), else cpuinfo."""
    try:
        from llvmlite import binding

        return {k for k, v in binding.get_host_cpu_features().items() if v}
    except Exception:  # llvmlite missing or too old: the kernel's own list
        pass
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith(("flags", "features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def simd() -> dict:
    """Return the widest SIMD instruction set here, e.g. ``{"isa": "AVX2", "bits": 256}``."""
    flags = _cpu_flags()
    for flag, isa, bits in _SIMD:
        if flag in flags:
            return {"isa": isa, "bits": bits}
    return {"isa": "unknown", "bits": None}


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries that matter here (by metadata, never imported)."""
    found = {}
    for dist in _LIBRARIES:
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def metadata() -> dict:
    """Machine, Python and library versions, and the date, for the header and the JSON."""
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "cpu": _cpu_model(),
            "simd": simd(),
            "logical_cpus": os.cpu_count(),
            "usable_cpus": usable,
            "platform": platform.platform(),
            "arch": platform.machine(),
        },
        "python": {
            "version": platform.python_version(),
            "implementation": platform.python_implementation(),
            "executable": sys.executable,
        },
        "libraries": library_versions(),
    }


# --------------------------------------------------------------------------- formatting


def fmt_time(t: float | None) -> str:
    """Seconds with a unit chosen for 3 significant digits (``us``, ``ms``, ``s``)."""
    if t is None:
        return "-"
    for scale, unit in ((1.0, "s"), (1e-3, "ms"), (1e-6, "us")):
        if t >= scale:
            return f"{t / scale:.3g} {unit}"
    return f"{t * 1e9:.3g} ns"


def fmt_rate(r: float | None) -> str:
    """Interactions per second with an SI prefix."""
    if r is None:
        return "-"
    for scale, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if r >= scale:
            return f"{r / scale:.3g} {unit}/s"
    return f"{r:.3g} /s"


def fmt_speedup(s: float | None) -> str:
    """Format a speedup factor: ``1,234x``, ``12.3x``, ``0.456x``."""
    if s is None:
        return "-"
    return f"{s:,.0f}x" if s >= 1000 else f"{s:.3g}x"


_HEAD = (
    "backend",
    "N",
    "first call",
    "best",
    "median",
    "reps",
    "interactions",
    "vs python",
    "vs numpy",
    "error",
    "rms",
    "bound",
    "check",
)
_LEFT = {0, 11, 12}  # left-aligned columns: backend, bound, check


def _bound(row: Row) -> str:
    """Format the tolerance that applied: ``max 1e-12`` (exact), ``rms 0.002`` (approximate)."""
    if row.tolerance is None:
        return "-"
    return f"{row.tolerance_kind} {row.tolerance:.3g}"


def _cells(row: Row, note: str, rtol: float) -> list[str]:
    tilde = "~" if row.python_extrapolated else ""
    if row.status == "extrapolated":
        vs_np = ("~" + fmt_speedup(row.speedup_vs_numpy)) if row.speedup_vs_numpy else "-"
        rate = "~" + fmt_rate(row.interactions_per_second)
        best = "~" + fmt_time(row.best_s)
        head = [row.label, f"{row.n:,}", "-", best, "-", "-", rate, "1x", vs_np]
        return head + ["-", "-", "-", "est." + note]
    if row.status in ("failed", "skipped"):
        word = "FAILED" if row.status == "failed" else "skipped"
        return [row.label, f"{row.n:,}"] + ["-"] * 10 + [word + note]
    rms, bound = "-", _bound(row)
    if row.backend == "python" and row.error_rows is not None and row.error == 0.0:
        err, check, bound = "(oracle)", "", "-"
    elif row.error is None:
        err, check = "-", "n/a"
    else:
        star = "*" if row.error_rows is not None and row.error_rows < row.n else ""
        err = f"{row.error:.1e}{star}"
        rms = "-" if row.error_rms is None else f"{row.error_rms:.1e}{star}"
        check = "ok" if row.error_ok else "FAIL"
    vs_py = (tilde + fmt_speedup(row.speedup_vs_python)) if row.speedup_vs_python else "-"
    return [
        row.label,
        f"{row.n:,}",
        fmt_time(row.first_call_s),
        fmt_time(row.best_s),
        fmt_time(row.median_s),
        str(len(row.times_s)),
        fmt_rate(row.interactions_per_second),
        vs_py,
        fmt_speedup(row.speedup_vs_numpy),
        err,
        rms,
        bound,
        check + note,
    ]


def text_table(table: list[list[str]], left=(0,)) -> list[str]:
    """Lines of a plain-text table, a rule under its first (header) row.

    Columns are as wide as their widest cell, two spaces apart; those numbered in ``left``
    are left-aligned, the others right-aligned; trailing spaces are stripped.
    """
    widths = [max(len(r[k]) for r in table) for k in range(len(table[0]))]
    lines = []
    for k, r in enumerate(table):
        cells = [
            c.ljust(w) if j in left else c.rjust(w)
            for j, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


def render(meta: dict, settings: dict, rows: list[Row], not_run: dict[str, str]) -> str:
    """Return the report printed on stdout: header, table, footnotes, verdict."""
    m = meta["machine"]
    libs = ", ".join(f"{k} {v}" for k, v in meta["libraries"].items())
    threads = settings["threads"] if settings["threads"] else "numba default"
    lines = [
        f"nbody-backends compare: N-body accelerations, {_precision(settings)}, G=1, eps=0",
        f"machine : {m['cpu']}, {m['simd']['isa']}, {m['logical_cpus']} logical CPUs "
        f"({m['usable_cpus']} usable), {m['platform']}",
        f"python  : {meta['python']['version']} ({meta['python']['implementation']}); {libs}",
        f"settings: repeat {settings['repeat']}, budget {settings['budget_s']:g} s per backend "
        f"and N, threads {threads}, seed {settings['seed']}, rtol {settings['rtol']:g}, "
        f"date {meta['date']}",
        "",
    ]
    notes: list[str] = []
    table = [list(_HEAD)]
    for row in rows:
        note = ""
        if row.message:
            notes.append(f"[{len(notes) + 1}] {row.label} at N={row.n:,}: {row.message}")
            note = f" [{len(notes)}]"
        table.append(_cells(row, note, settings["rtol"]))
    lines += text_table(table, _LEFT)
    lines += [
        "",
        "first call: the first call in this process (imports not done by an earlier row, "
        "compilation or cache load, pool start-up; not counted in --budget); best/median of "
        "the 'reps' calls after it.",
        "interactions: N(N-1)/best per second.  vs python/numpy: their best time / this best time "
        "at the same N.",
        "error, rms: max and rms of the per-particle relative errors against the pure-Python "
        "oracle; * = on a random sample of rows, computed exactly by the oracle.",
        f"bound: the tolerance that applied: max error <= --rtol ({settings['rtol']:g}) for "
        "exact backends in float64, max error <= the float32 bound in float32, rms error <= "
        "the bound an approximate backend declares for its "
        "settings (its module's tolerance(**options)).",
        "~: pure-Python time extrapolated from N(N-1) scaling (not measured at this N).",
    ]
    lines += notes
    for name, reason in not_run.items():
        lines.append(f"not run: {name}: {reason}")
    bad = [r for r in rows if r.bad]
    if bad:
        which = ", ".join(f"{r.label} (N={r.n:,})" for r in bad)
        lines.append(f"FAILED: {which}")
    else:
        lines.append("all measured backends agree with the oracle (each within its bound)")
    lines += verdict(rows)
    return "\n".join(lines) + "\n"


def _precision(settings: dict) -> str:
    """Return ``float64``, or the precisions and the float32 bound that applies."""
    wanted = settings.get("precision") or ["float64"]
    if wanted == ["float64"]:
        return "float64"
    bound = settings.get("float32_tolerance")
    return f"{' and '.join(wanted)} (float32 passes at max error <= {bound:g}; oracle float64)"


RMS_GOAL = 1e-3  # the accuracy a collisionless simulation typically accepts


def fastest(rows: list[Row]) -> dict:
    """Find the fastest passing backend at the largest measured N: exact, and rms <= 1e-3.

    "Exact" means direct summation in float64; float32 rows qualify for the rms goal only.

    Returns ``{"n": N, "exact": row or None, "rms<=1e-3": row or None}`` (``{}`` when nothing
    was measured). A backend qualifies only with a passing check.
    """
    ok = [r for r in rows if r.status == "ok" and r.best_s and r.error_ok]
    if not ok:
        return {}
    n = max(r.n for r in ok)
    at = sorted((r for r in ok if r.n == n), key=lambda r: r.best_s)

    def rms(r: Row) -> float:
        return r.error_rms if r.error_rms is not None else r.error

    return {
        "n": n,
        "exact": next((r for r in at if r.exact and _float64(r)), None),
        f"rms<={RMS_GOAL:g}": next((r for r in at if rms(r) <= RMS_GOAL), None),
    }


def _float64(row: Row) -> bool:
    return row.options.get("precision", "float64") == "float64"


def verdict(rows: list[Row]) -> list[str]:
    """One line naming the fastest exact backend and the fastest with rms error <= 1e-3."""
    best = fastest(rows)
    if not best:
        return []

    # "exact" is float64 direct summation: a float32 run (--precision float32) has none
    exact_ran = any(r.exact and _float64(r) and r.n == best["n"] for r in rows)

    def name(r: Row | None, ran: bool = True) -> str:
        if r is None:
            return "none passed" if ran else "none run (exact means float64)"
        rms = "" if r.error_rms is None else f", rms {r.error_rms:.1e}"
        return f"{r.label} ({fmt_time(r.best_s)}{rms})"

    return [
        f"fastest at N={best['n']:,}: exact: {name(best['exact'], exact_ran)}; "
        f"rms error <= {RMS_GOAL:g}: {name(best[f'rms<={RMS_GOAL:g}'])}"
    ]


# --------------------------------------------------------------------------- files


def to_json(meta: dict, settings: dict, rows: list[Row], not_run: dict[str, str]) -> dict:
    """Return the whole run as one JSON-serializable object."""
    return {
        "schema": 2,  # 2: labels with workers/ranks x threads; error_rms, tolerance, options
        **meta,
        "settings": settings,
        "results": [asdict(r) for r in rows],
        "not_run": not_run,
        "failed": any(r.bad for r in rows),
        "fastest": {
            k: (v if k == "n" or v is None else {"label": v.label, "best_s": v.best_s})
            for k, v in fastest(rows).items()
        },
    }


def write_json(path: str, document: dict) -> None:
    """Write the JSON document, indented."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(document, f, indent=2)
        f.write("\n")


CSV_FIELDS = [
    "backend",
    "label",
    "n",
    "status",
    "first_call_s",
    "best_s",
    "median_s",
    "repeats",
    "times_s",
    "interactions_per_second",
    "speedup_vs_python",
    "speedup_vs_numpy",
    "python_extrapolated",
    "error",
    "error_rms",
    "error_rows",
    "error_ok",
    "exact",
    "tolerance",
    "tolerance_kind",
    "options",
    "workers",
    "ranks",
    "threads_per_rank",
    "message",
]


def write_csv(path: str, rows: list[Row]) -> None:
    """One CSV line per row; ``times_s`` space-separated, missing values empty."""
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        for r in rows:
            d = asdict(r)
            d["repeats"] = len(r.times_s)
            d["times_s"] = " ".join(repr(t) for t in r.times_s)
            d["options"] = json.dumps(r.options, sort_keys=True) if r.options else ""
            w.writerow({k: ("" if d[k] is None else d[k]) for k in CSV_FIELDS})
