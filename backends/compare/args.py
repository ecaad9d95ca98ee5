"""Arguments of ``python -m backends compare``: the parser and every check made before work.

Every error here is reported with ``compare``'s usage and exit status 2, before anything runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import backends
from backends import _mpi_launch, _pools
from backends._contract import PRECISIONS, check_precision

DEFAULT_N = (1000, 10000)
MPI = "mpi"
OUT_DIR = "compare-out"  # where --save writes (git-ignored in the repository)
_EPILOG = """\
budget: the first call (imports, compilation, pool start-up) is not counted; after it,
steady-state calls stop at --repeat or once they have taken --budget seconds (at least one);
a backend predicted (N(N-1) scaling from its previous N) to need more than --max-call seconds
per call is skipped at that N (N log N scaling for approximate backends). Checks: exact
backends at max error <= --rtol (float64) or the float32 bound; approximate backends at rms
error <= the bound they declare for their settings. python is timed only at N <= --python-max-n
and extrapolated above (marked ~). --threads bounds Numba's parallel kernels in this process
only (not process pools, MPI ranks or JAX).

exit status: 0 all ran and agree with the oracle; 1 a backend failed or disagreed; 2 bad
arguments (nothing run); 130 Ctrl-C, 143 SIGTERM (pools closed, MPI job ended, nothing written).
"""


#: Bytes of memory per particle assumed by the --n check (the largest backends' arrays: the
#: system, the result, the oracle's sample, a tree's nodes, the pools' shared copies).
BYTES_PER_PARTICLE = 1024


def max_n() -> int:
    """Return the largest ``--n`` accepted here: this machine's memory at 1 KiB per particle.

    Capped at ``2**31 - 1`` (the kernels index particles with 32-bit integers in places).
    """
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):  # not a POSIX system: no memory bound
        memory = 2**62
    return int(min(2**31 - 1, memory // BYTES_PER_PARTICLE))


def _particles(text: str) -> int:
    value = _positive_int(text)
    top = max_n()
    if value > top:
        raise argparse.ArgumentTypeError(
            f"{text!r} particles are more than this machine can hold: at most {top} "
            f"({BYTES_PER_PARTICLE} bytes per particle of its memory)"
        )
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        try:  # accept 1e4, not 1.5
            f = float(text)
        except ValueError:
            f = math.nan
        if not (math.isfinite(f) and f == int(f)):  # inf: no int() (OverflowError)
            raise argparse.ArgumentTypeError(f"must be a positive integer; got {text!r}") from None
        value = int(f)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {text!r}")
    return value


def _at_most(kind, top, what: str):
    """Return an argparse type: ``kind(text)``, refused above ``top`` (``what``: why)."""

    def convert(text: str):
        value = kind(text)
        if value > top:
            shown = f"{top:g}" if isinstance(top, float) else top
            raise argparse.ArgumentTypeError(f"must be at most {shown} ({what}); got {text!r}")
        return value

    return convert


def _non_negative_int(text: str) -> int:
    if text.strip() in ("0", "+0"):
        return 0
    try:
        return _positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"must be a non-negative integer (0 or more); got {text!r}"
        ) from None


def _precision(text: str) -> str:
    try:
        return check_precision(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number; got {text!r}")
    return value


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """The epilog as written, and ``(default: ...)`` after every option that has one."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if "%(default)" in text or default in (None, False, argparse.SUPPRESS):
            return text
        if not action.option_strings:
            return text
        shown = " ".join(map(str, default)) if isinstance(default, list | tuple) else default
        return f"{text} (default: {str(shown).replace('%', '%%')})"


def _more_commands() -> str:
    """Return the commands with modules of their own, one line each, for the help."""
    from backends.__main__ import _COMMANDS, COMMAND_HELP

    lines = ["more commands (python -m backends COMMAND --help for each):"]
    lines += [f"  {name:<10}{COMMAND_HELP.get(name, '')}" for name in _COMMANDS]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """Build the ``python -m backends`` parser, with the ``compare`` and ``list`` commands."""
    parser = argparse.ArgumentParser(
        prog="python -m backends",
        description="Measure every N-body backend on this machine.",
        epilog=_more_commands(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
        formatter_class=_Formatter,
    )
    c.add_argument(
        "--n",
        nargs="+",
        type=_particles,
        default=list(DEFAULT_N),
        metavar="N",
        help="numbers of particles",
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
        help="steady-state calls after the first",
    )
    c.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        metavar="T",
        help="numba.set_num_threads(T), Numba-parallel kernels only (default: numba's)",
    )
    c.add_argument("--json", metavar="FILE", help="write every result and the metadata as JSON")
    c.add_argument("--csv", metavar="FILE", help="write one CSV line per backend and N")
    c.add_argument(
        "--plot",
        metavar="FILE.png",
        help="write a figure: time vs N and speedups (needs matplotlib)",
    )
    c.add_argument(
        "--save",
        nargs="?",
        const=OUT_DIR,
        metavar="DIR",
        help=f"write DIR/compare.json, .csv and .png (the figure if matplotlib is installed); "
        f"DIR defaults to {OUT_DIR}/, created if missing",
    )
    c.add_argument(
        "--precision",
        nargs="+",
        type=_precision,
        default=["float64"],
        metavar="P",
        help=f"arithmetic of the timed backends, from {', '.join(PRECISIONS)}; float32 runs the "
        "backends that have the mode and checks them against the float32 bound (the oracle "
        "stays float64); give both to see each backend in each precision it has",
    )
    c.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="NAME:KEY=VALUE[,...]",
        help="also run backend NAME with these keyword options, as a row of its own (repeatable; "
        "e.g. tree:theta=0.5,quadrupole=true)",
    )
    c.add_argument(
        "--mpi-ranks",
        type=_at_most(_non_negative_int, _mpi_launch.MAX_RANKS, "4 per core, at least 64"),
        default=2,
        metavar="P",
        help="ranks for the mpiexec row; 0: no MPI row",
    )
    c.add_argument(
        "--mpi-threads-per-rank",
        type=_positive_int,
        default=None,
        metavar="T",
        help="Numba threads of each MPI rank, passed as mpi_run --threads-per-rank (default: the "
        "usable cores divided evenly among the ranks, at least 1)",
    )
    c.add_argument(
        "--workers",
        type=_at_most(_positive_int, _pools.MAX_WORKERS, "4 per core, at least 64"),
        default=None,
        metavar="W",
        help="n_workers= of the process and thread pools (default: theirs, the usable cores)",
    )
    c.add_argument(
        "--budget",
        type=_positive_float,
        default=5,
        metavar="S",
        help="seconds per backend and N after which repeats stop",
    )
    c.add_argument(
        "--max-call",
        type=_positive_float,
        default=30,
        metavar="S",
        help="skip a backend at an N where one call is predicted to take longer",
    )
    c.add_argument(
        "--python-max-n",
        type=_non_negative_int,
        default=1000,
        metavar="N",
        help="largest N at which the pure-Python oracle is run in full",
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
        help="largest error that passes",
    )
    c.add_argument("--seed", type=_non_negative_int, default=42, help="random seed")
    c.add_argument(
        "--mpi-timeout",
        type=_positive_float,
        default=300,
        metavar="S",
        help="seconds before an MPI job is killed",
    )
    c.add_argument("--quiet", action="store_true", help="no progress display on stderr")
    c.set_defaults(parser=c)  # errors found after parsing are reported with compare's usage
    return parser


def _check_output(parser, option: str, path: str | None, seen: dict[str, str]) -> None:
    """Check an output file; its missing folders are created at the end, when it is written.

    So the nearest existing ancestor of the file must be a writable folder now.
    """
    if path is None:
        return
    p = Path(path)
    if p.is_dir():
        parser.error(f"{option} {path!r} is a directory, not a file")
    parent = p.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        parser.error(f"{option} {path!r}: {str(parent)!r} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK) or (p.exists() and not os.access(p, os.W_OK)):
        parser.error(f"{option} {path!r} is not writable")
    if parent != p.absolute().parent:  # missing folders: they must be creatable in parent
        why = _make_folder_in(parent)
        if why is not None:
            parser.error(f"{option} {path!r}: cannot create a folder in {str(parent)!r}: {why}")
    if p.exists() or p.absolute().parent.is_dir():
        why = _open_for_writing(p)  # root passes os.access for files nobody can write
        if why is not None:
            parser.error(f"{option} {path!r} cannot be written: {why}")
    key = os.path.realpath(p)
    if key in seen:
        parser.error(f"{option} and {seen[key]} are the same file {path!r}")
    seen[key] = option


def check_plot(parser, path: str | None) -> None:
    """Check ``--plot``: a .png, .svg or .pdf name, and matplotlib installed."""
    if path is None:
        return
    if Path(path).suffix.lower() not in (".png", ".svg", ".pdf"):
        parser.error(f"--plot {path!r}: the file name must end in .png, .svg or .pdf")
    if importlib.util.find_spec("matplotlib") is None:
        parser.error("--plot needs matplotlib, not installed: pip install 'nbody-backends[plot]'")


def _make_folder_in(parent: Path) -> str | None:
    """Create and remove an empty folder in ``parent``; the error, or None.

    ``os.access`` is not enough: root passes it for ``/proc``, where nothing can be created.
    """
    try:
        probe = tempfile.mkdtemp(prefix=".compare-probe-", dir=parent)
    except OSError as exc:
        return exc.strerror or str(exc)
    os.rmdir(probe)
    return None


def check_save(parser, path: str | None) -> None:
    """Check ``--save DIR``: a folder, or one that can be created (before any work)."""
    if path is None:
        return
    p = Path(path)
    if p.exists() and not p.is_dir():
        parser.error(f"--save {path!r} is not a directory")
    if p.is_dir():
        if not os.access(p, os.W_OK | os.X_OK):
            parser.error(f"--save {path!r} is not writable")
        return
    parent = p.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        parser.error(f"--save {path!r}: {str(parent)!r} is not a directory")
    why = _make_folder_in(parent)
    if why is not None:
        parser.error(f"--save {path!r}: cannot create a folder in {str(parent)!r}: {why}")


def _open_for_writing(path: Path) -> str | None:
    """Open ``path`` for appending and close it (nothing written); the error, or None.

    A file that did not exist is removed again, so an argument error leaves nothing behind.
    """
    existed = path.exists()
    if existed and not path.is_file():
        return "not a regular file"
    try:
        with open(path, "ab"):
            pass
    except OSError as exc:
        return exc.strerror or str(exc)
    finally:
        if not existed and path.exists():
            path.unlink()
    return None


def _apply_save(args) -> None:
    """``--save DIR``: the files it stands for, unless given explicitly."""
    if args.save is None:
        return
    folder = Path(args.save)
    args.json = args.json or str(folder / "compare.json")
    args.csv = args.csv or str(folder / "compare.csv")
    if args.plot is None and importlib.util.find_spec("matplotlib") is not None:
        args.plot = str(folder / "compare.png")


def _probe(name: str) -> tuple[str | None, float]:
    """``(why backend name cannot run here or None, seconds the probe took)``.

    The probe is :func:`backends.unavailable_reason`: dependencies, then the module's own
    hardware check (a GPU for ``cuda``). It imports the backend's module; that time is added
    to the backend's first call, which is where it would otherwise have been spent.
    """
    t0 = time.perf_counter()
    try:
        reason = backends.unavailable_reason(name)
    except Exception as exc:  # a broken install: the backend cannot run, say why
        text = str(exc).strip().splitlines()
        reason = f"probe failed: {type(exc).__name__}: {text[0] if text else ''}"
    return reason, time.perf_counter() - t0


def mpi_threads_supported() -> bool:
    """Return True when the MPI launcher passes ``--threads-per-rank`` on to ``mpi_run``."""
    params = inspect.signature(_mpi_launch.run).parameters.values()
    return any(p.name == "threads_per_rank" or p.kind is p.VAR_KEYWORD for p in params)


def _mpi_threads(parser, args) -> None:
    """Resolve ``--mpi-threads-per-rank`` (None when ranks are serial in this installation)."""
    if not mpi_threads_supported():
        if args.mpi_threads_per_rank not in (None, 1):
            parser.error(
                "--mpi-threads-per-rank: this installation's mpi_run has no "
                "--threads-per-rank option (its ranks run one thread each)"
            )
        args.mpi_threads_per_rank = None
    elif args.mpi_threads_per_rank is not None:
        top = _numba_threads()  # the ranks inherit this environment: the same limit
        if args.mpi_threads_per_rank > top:
            parser.error(
                f"--mpi-threads-per-rank {args.mpi_threads_per_rank} exceeds numba's limit of "
                f"{top} threads"
            )
    elif args.mpi_ranks:
        args.mpi_threads_per_rank = max(1, _usable_cores() // args.mpi_ranks)


def _numba_threads() -> int:
    """Numba's thread limit: ``NUMBA_NUM_THREADS`` (the cores by default)."""
    import numba

    return numba.config.NUMBA_NUM_THREADS


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _mpi_reason(args) -> str | None:
    """Why the ``mpiexec`` row cannot run, or None."""
    if args.mpi_ranks == 0:
        return "disabled by --mpi-ranks 0"
    missing = (
        backends.unavailable_reason(MPI) if importlib.util.find_spec("mpi4py") is None else None
    )
    return missing or _mpi_launch.unavailable_reason()


@dataclass(frozen=True)
class Job:
    """One backend with one set of keyword options: a row per N in the table."""

    name: str
    options: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        """``name``, or ``name (key=value, ...)`` for a non-default setting."""
        return self.describe()

    def describe(self, *extra: str) -> str:
        """Return the label with ``extra`` facts (``2 workers``) after the options."""
        parts = [str(v) if k == "precision" else f"{k}={v}" for k, v in self.options.items()]
        parts += extra
        return f"{self.name} ({', '.join(parts)})" if parts else self.name


def _value(text: str):
    """Convert a ``--setting`` value: int, float, true/false/none, else the string itself."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text.strip()


def _settings(parser, texts: list[str]) -> list[Job]:
    """Parse every ``--setting NAME:KEY=VALUE[,KEY=VALUE...]``."""
    jobs = []
    for text in texts:
        name, sep, rest = text.partition(":")
        name = name.strip()
        if name not in backends.names():
            parser.error(
                f"--setting {text!r}: unknown backend {name!r}; valid names are: "
                f"{', '.join(backends.names())}"
            )
        if name == MPI:
            parser.error("--setting: the mpiexec row takes no options (see --mpi-ranks)")
        options = {}
        for item in filter(None, (p.strip() for p in rest.split(","))):
            key, eq, value = item.partition("=")
            if not eq or not key.strip().isidentifier():
                parser.error(f"--setting {text!r}: expected KEY=VALUE, got {item!r}")
            if key.strip() in options:
                parser.error(f"--setting {text!r}: option {key.strip()!r} is given twice")
            options[key.strip()] = _value(value)
        if not sep or not options:
            parser.error(f"--setting {text!r}: expected NAME:KEY=VALUE[,KEY=VALUE...]")
        try:
            check_options(name, options)
        except backends.BackendUnavailableError as exc:
            parser.error(f"--setting: backend {name!r} is not available here: {exc}")
        except (TypeError, ValueError) as exc:
            parser.error(f"--setting {text!r}: {exc}")
        jobs.append(Job(name, options))
    return jobs


#: Keyword arguments of ``accel`` that are the system's, not a backend's setting.
NOT_SETTINGS = ("softening",)


def backend_options(name: str) -> list[str]:
    """Return the keyword options of backend ``name``'s ``accel`` (``precision`` always).

    Raises ``BackendUnavailableError`` if the backend cannot be imported here.
    """
    params = inspect.signature(backends.get(name)._accel).parameters.values()
    keys = [p.name for p in params if p.kind is p.KEYWORD_ONLY and p.name not in NOT_SETTINGS]
    return keys if "precision" in keys else [*keys, "precision"]


def check_options(name: str, options: dict) -> None:
    """Raise the error backend ``name`` would raise for these keyword ``options``; else None.

    The backend's own checks, before any work: each key must be a keyword option of its
    ``accel`` (``precision`` follows the contract's one rule on every backend); then the
    backend is called on an empty system (N = 0), which validates every option value at
    its public door and returns before any kernel is compiled or any pool started; an
    approximate backend's ``tolerance(**options)`` must accept them too. For ``compare``'s
    ``--setting`` and the commands that reuse it.

    Parameters
    ----------
    name : str
        A registered backend.
    options : dict
        Keyword options, as :func:`parse_setting` returns them.

    Raises
    ------
    ValueError, TypeError
        An unknown backend, an option the backend does not have (the message lists those it
        has), or a value it rejects (its own message).
    backends.BackendUnavailableError
        The backend cannot run here.
    """
    known = backend_options(name)
    for key in options:
        if key in NOT_SETTINGS:
            raise ValueError(
                f"{key} is the system's, not a setting of backend {name!r} (compare runs the "
                "unsoftened benchmark system)"
            )
        if key not in known:
            raise TypeError(
                f"backend {name!r} has no option {key!r}; its options are: {', '.join(known)}"
            )
    b = backends.get(name)
    b.accel(np.zeros(0), np.zeros((0, 3)), **options)  # N = 0: options checked, nothing run
    if not backends.is_exact(name):
        backends.tolerance(name, **options)


def parse_setting(text: str) -> tuple[str, dict]:
    """Parse one ``NAME:KEY=VALUE[,KEY=VALUE...]`` into ``(name, options)``, checked.

    Values are converted as ``compare`` does (int, float, true/false/none, else the string)
    and checked by :func:`check_options`.

    Raises
    ------
    ValueError
        A malformed text, an unknown backend or option, a value the backend rejects, or a
        backend that cannot run here (the message says which, as ``compare`` reports it).
    """

    class _Raise:
        def error(self, message):
            raise ValueError(message)

    return next((j.name, j.options) for j in _settings(_Raise(), [text]))


def _jobs(parser, args) -> list[Job]:
    """Return the runs in order: each selected backend, then its ``--setting`` variants."""
    extra = _settings(parser, args.setting)
    jobs = []
    for name in args.selected:
        have = [p for p in args.precision if p == "float64" or p in backends.precisions(name)]
        if not have or (name == MPI and "float64" not in have):
            reason = "float64 only" if name != "python" else "float64 only; it is still the oracle"
            if args.backends is not None and name != "python":
                valid = [b for b in backends.names() if len(backends.precisions(b)) > 1]
                parser.error(
                    f"backend {name!r} has no {'/'.join(args.precision)} mode; "
                    f"the backends with float32 are: {', '.join(valid)}"
                )
            args.not_run[name] = reason
            continue
        for precision in have:
            jobs.append(
                Job(name) if precision == "float64" else Job(name, {"precision": precision})
            )
        jobs += [j for j in extra if j.name == name]
    if MPI in args.selected and any(j.name == "tree" and not j.options for j in jobs):
        # the distributed tree beside the one-process tree (mpi_run --algorithm tree)
        at = max(i for i, j in enumerate(jobs) if j.name == "tree") + 1
        jobs.insert(at, Job(MPI, {"algorithm": "tree"}))
    for job in extra:
        if job.name not in args.selected:
            reason = args.not_run.get(job.name) or _probe(job.name)[0]
            if reason is not None:
                parser.error(f"--setting: backend {job.name!r} is not available here: {reason}")
            if job.name not in args.probe_s:
                args.probe_s[job.name] = 0.0
            jobs.append(job)
    return jobs


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
    args.probe_s = {}
    for name in wanted:
        if name == MPI:
            reason = _mpi_reason(args)
        else:
            reason, args.probe_s[name] = _probe(name)
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
    args.precision = [p for p in PRECISIONS if p in args.precision]  # float64 first
    check_save(parser, args.save)
    _apply_save(args)
    seen: dict[str, str] = {}
    for option in ("json", "csv", "plot"):
        _check_output(parser, f"--{option}", getattr(args, option), seen)
    check_plot(parser, args.plot)
    if args.threads is not None:
        top = _numba_threads()
        if args.threads > top:
            parser.error(f"--threads {args.threads} exceeds numba's limit of {top} threads")
    _mpi_threads(parser, args)
    args.selected, args.not_run = _select(parser, args)
    args.jobs = _jobs(parser, args)
    if not args.jobs:
        parser.error(
            "no backend to run: " + "; ".join(f"{k}: {v}" for k, v in args.not_run.items())
        )
    return args
