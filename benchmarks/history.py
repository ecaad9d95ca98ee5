"""Record and publish the asv performance history kept in the repository.

asv's results live in ``benchmarks/results/<machine>/`` (tracked by git), one folder per
machine name, and one machine name per CPU: figures of different CPUs never share a graph.
This script is the one command a session runs before landing a commit::

    python -m benchmarks.history record                 # HEAD, on this machine
    python -m benchmarks.history record C1 C2 ...       # named commits (any git revision)
    python -m benchmarks.history publish                # asv publish, then check the graphs
    asv preview                                         # serve .asv/html (git-ignored)
    asv run --config $(python -m benchmarks.history scratch-config) --python=same --quick ...

``record`` names the machine from the CPU: it reuses the committed machine whose CPU
description matches this one, and refuses to guess when none matches (pass
``--machine NEW-NAME`` to start a new machine). It then runs, per commit,
``asv run --machine NAME --bench 'TimeAccel|Throughput' COMMIT^!`` in asv's own virtualenv
(asv builds and installs that commit's wheel), and checks that a result file for the commit
was written, so a run that saved nothing fails loudly instead of leaving an empty history.
``publish`` fails if the site it built has no ``TimeAccel``/``Throughput`` graph data.

Every ``asv run`` writes into the results folder, ``--dry-run`` included (it rewrites
``benchmarks.json``). ``scratch-config`` writes ``.asv/scratch.conf.json``, a copy of
``asv.conf.json`` whose results and site go to ``.asv/`` (git-ignored), and prints its path:
smoke tests and CI pass it to ``asv --config`` and leave the tracked history untouched.

Side effects: ``record`` writes the machine's entry into ``~/.asv-machine.json``; asv's
environments and wheels go to ``.asv/`` (git-ignored). Only the standard library is imported
here, so asv's benchmark discovery can import this module harmlessly.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BENCH = "TimeAccel|Throughput"
#: The benchmarks whose graphs ``publish`` insists on.
REQUIRED_GRAPHS = ("TimeAccel.time_accel", "Throughput.track_seconds_per_1e9_interactions")


def asv_config(root: Path = ROOT) -> dict:
    """Return ``asv.conf.json`` as a dict (asv allows ``//`` comment lines; they are dropped)."""
    text = (root / "asv.conf.json").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("//")]
    return json.loads("\n".join(lines))


def results_dir(root: Path = ROOT) -> Path:
    """Return the tracked asv results folder named by ``asv.conf.json``."""
    return root / asv_config(root)["results_dir"]


def cpu_description() -> str:
    """Describe this CPU precisely enough to tell machines apart.

    Returns
    -------
    str
        ``"<model name> (family F model M, <widest SIMD>)"`` on Linux, e.g.
        ``"Intel(R) Xeon(R) Processor @ 2.60GHz (family 6 model 106, AVX-512)"``; the model
        number separates CPUs that share a marketing name (a generic "Xeon Processor").
    """
    fields: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key and key not in fields:
                fields[key] = value.strip()
            if not line.strip() and fields:
                break
    name = fields.get("model name") or platform.processor() or platform.machine()
    flags = set(fields.get("flags", "").split())
    simd = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else None
    detail = []
    if "cpu family" in fields and "model" in fields:
        detail.append(f"family {fields['cpu family']} model {fields['model']}")
    if simd:
        detail.append(simd)
    return f"{name} ({', '.join(detail)})" if detail else name


def known_machines(folder: Path) -> dict[str, dict]:
    """Return ``{machine name: machine.json contents}`` for the machines recorded in ``folder``."""
    machines = {}
    for path in sorted(folder.glob("*/machine.json")):
        with contextlib.suppress(OSError, ValueError):
            machines[path.parent.name] = json.loads(path.read_text())
    return machines


def pick_machine(requested: str | None, folder: Path, cpu: str, num_cpu: int) -> str:
    """Return the machine name for this CPU; raise ``SystemExit`` rather than mix two CPUs.

    Parameters
    ----------
    requested : str or None
        ``--machine`` from the command line.
    folder : Path
        The results folder.
    cpu : str
        :func:`cpu_description` of this machine.
    num_cpu : int
        Its number of CPUs.
    """
    machines = known_machines(folder)
    same = [
        name
        for name, info in machines.items()
        if info.get("cpu") == cpu and str(info.get("num_cpu")) == str(num_cpu)
    ]
    if requested is None:
        if same:
            return same[0]
        listed = "".join(
            f"\n  {name}: {info.get('cpu')}, {info.get('num_cpu')} CPUs"
            for name, info in machines.items()
        )
        raise SystemExit(
            f"no recorded machine has this CPU ({cpu}, {num_cpu} CPUs); recorded:"
            f"{listed or ' none'}\npass --machine NEW-NAME (one name per CPU model, e.g. "
            f"dev-<cpu family>-{num_cpu}c) to start a new machine's history"
        )
    info = machines.get(requested)
    if info is not None and requested not in same:
        raise SystemExit(
            f"machine {requested!r} was recorded on another CPU ({info.get('cpu')}, "
            f"{info.get('num_cpu')} CPUs), not this one ({cpu}, {num_cpu} CPUs): "
            "use a new machine name so the two histories stay apart"
        )
    return requested


def register_machine(
    name: str, cpu: str, num_cpu: int, recorded: dict | None = None, path: Path | None = None
) -> dict:
    """Write machine ``name`` into ``~/.asv-machine.json``, which ``asv run --machine`` reads.

    asv files every result under all the machine's fields, so they must not drift between
    sessions: a machine already recorded (``recorded``, its committed ``machine.json``) is
    written back as it was; a new one gets every field (``asv machine --yes`` would leave out
    those equal to its defaults), with the OS as its name only (a kernel update is no new CPU).

    Returns
    -------
    dict
        The entry written.
    """
    path = Path.home() / ".asv-machine.json" if path is None else path
    machines = {"version": 1}
    with contextlib.suppress(OSError, ValueError):
        machines = json.loads(path.read_text())
    if recorded is not None:
        machines[name] = {k: v for k, v in recorded.items() if k != "version"}
        path.write_text(json.dumps(machines, indent=4, sort_keys=True) + "\n")
        return machines[name]
    ram = ""
    with contextlib.suppress(OSError, ValueError, IndexError):
        ram = str(int(Path("/proc/meminfo").read_text().split()[1]) * 1024)
    entry = {
        "arch": platform.machine(),
        "cpu": cpu,
        "machine": name,
        "num_cpu": str(num_cpu),
        "os": platform.system(),
        "ram": ram,
    }
    machines[name] = entry
    path.write_text(json.dumps(machines, indent=4, sort_keys=True) + "\n")
    return entry


@contextlib.contextmanager
def locked(path: str | None):
    """Hold an exclusive ``flock`` on ``path`` (none if ``path`` is None) while running."""
    if path is None:
        yield
        return
    import fcntl

    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def full_hash(revision: str) -> str:
    """Return the full commit hash of a git revision."""
    out = subprocess.run(
        ["git", "rev-parse", "--verify", f"{revision}^{{commit}}"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()


def saved_results(folder: Path, machine: str, commit: str) -> list[Path]:
    """Return the result files asv saved for ``commit`` on ``machine``."""
    return sorted((folder / machine).glob(f"{commit[:8]}-*.json"))


def record(args: argparse.Namespace) -> int:
    """Run the selected benchmarks on each commit and check that the results were saved."""
    folder = results_dir()
    cpu, num_cpu = cpu_description(), os.cpu_count() or 1
    machine = pick_machine(args.machine, folder, cpu, num_cpu)
    register_machine(machine, cpu, num_cpu, known_machines(folder).get(machine))
    nice = ["nice", "-n", str(args.nice)] if args.nice and shutil.which("nice") else []
    status = 0
    for revision in args.commits or ["HEAD"]:
        commit = full_hash(revision)
        command = nice + ["asv", "run", "--machine", machine, "--bench", args.bench]
        command += ["--show-stderr", *args.asv_args, f"{commit}^!"]
        print(f"[history] {machine} {commit[:8]}: {' '.join(command)}", flush=True)
        with locked(args.lock):
            code = subprocess.run(command, cwd=ROOT).returncode
        saved = saved_results(folder, machine, commit)
        if not saved:
            print(f"[history] nothing was saved for {commit[:8]}", file=sys.stderr)
            status = 1
        elif code != 0:
            print(f"[history] asv exited {code} for {commit[:8]} (some benchmark failed)")
            status = status or code
    print(f"[history] results under {folder.relative_to(ROOT)}/{machine}/: commit them")
    return status


def graph_points(html: Path, suffix: str) -> int:
    """Return how many commits the published graphs show a value for, for one benchmark.

    asv writes one JSON file per benchmark and machine/environment: a list of
    ``[revision, value]`` with ``value`` a number, ``null``, or a list over parameter
    combinations; a commit counts when it has at least one number.
    """

    def has_value(value) -> bool:
        if isinstance(value, list):
            return any(has_value(v) for v in value)
        return isinstance(value, (int, float))

    points = 0
    for path in glob.glob(str(html / "graphs" / "**" / f"*{suffix}.json"), recursive=True):
        with contextlib.suppress(OSError, ValueError):
            data = json.loads(Path(path).read_text())
            points = max(points, sum(1 for _, value in data if has_value(value)))
    return points


def publish(args: argparse.Namespace) -> int:
    """Run ``asv publish`` and fail if the site has no history for the required benchmarks."""
    subprocess.run(["asv", "publish"], cwd=ROOT, check=True)
    html = ROOT / asv_config()["html_dir"]
    missing = []
    for suffix in REQUIRED_GRAPHS:
        points = graph_points(html, suffix)
        print(f"[history] {suffix}: {points} commits in the published graphs")
        if points == 0:
            missing.append(suffix)
    if missing:
        print(
            f"[history] the site under {html} has no data for {', '.join(missing)}. Were results "
            "saved? (`asv run --python=same` saves nothing without --set-commit-hash.) Does "
            "benchmarks.json still match them? (Every `asv run`, --dry-run included, rewrites "
            "it; one with NBODY_BENCH_TINY=1 lists other sizes: git checkout it.)",
            file=sys.stderr,
        )
        return 1
    print(f"[history] site in {html}: `asv preview` serves it")
    return 0


def scratch_config(root: Path = ROOT) -> Path:
    """Write ``.asv/scratch.conf.json``: asv.conf.json with results and site under ``.asv/``.

    asv resolves relative paths from the configuration file's folder, so every path in the
    copy is absolute.

    Returns
    -------
    Path
        The configuration file written.
    """
    conf = asv_config(root)
    scratch = root / ".asv"
    conf.update(
        repo=str(root),
        benchmark_dir=str(root / conf["benchmark_dir"]),
        env_dir=str(root / conf["env_dir"]),
        results_dir=str(scratch / "scratch-results"),
        html_dir=str(scratch / "scratch-html"),
    )
    scratch.mkdir(exist_ok=True)
    path = scratch / "scratch.conf.json"
    path.write_text(json.dumps(conf, indent=4) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.history",
        description=__doc__.split("\n\n", 1)[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser(
        "record",
        help="benchmark commits and save their results for this machine",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    rec.add_argument("commits", nargs="*", help="git revisions (none: HEAD)")
    rec.add_argument("--machine", help="machine name (none: the recorded machine with this CPU)")
    rec.add_argument("--bench", default=DEFAULT_BENCH, help="asv --bench regular expression")
    rec.add_argument("--lock", help="hold an flock on this file during each asv run")
    rec.add_argument("--nice", type=int, default=10, help="niceness of asv (0: none)")
    sub.add_parser("publish", help="asv publish, then check the graphs have data")
    sub.add_parser(
        "scratch-config",
        help="write an asv config whose results stay out of the tracked folder; print its path",
    )
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = parser.parse_args(argv[: len(argv) - len(extra) - 1] if "--" in argv else argv)
    args.asv_args = extra  # more `asv run` options, after `--`
    if args.command == "record":
        if any(re.match(r"--python(=|$)", a) for a in extra):
            parser.error("--python=same benchmarks the working tree and saves nothing here")
        return record(args)
    if args.command == "scratch-config":
        print(scratch_config())
        return 0
    return publish(args)


if __name__ == "__main__":
    sys.exit(main())
