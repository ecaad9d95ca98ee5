"""``python -m backends compare`` and ``list``, end to end in real subprocesses at tiny N."""

from __future__ import annotations

import csv
import importlib.metadata
import importlib.util
import json
import os
import pty
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import backends
from backends.compare.report import fmt_time

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
ANSI = re.compile(r"\x1b\[")
HAVE_MPL = importlib.util.find_spec("matplotlib") is not None

# A child that registers the test-only backends of tests/compare_test_backends.py, then runs
# the command line exactly as `python -m backends` does.
REGISTER = """
import signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)  # even if the parent ignores SIGINT
import compare_test_backends
compare_test_backends.register()
from backends.compare import main
sys.exit(main(sys.argv[1:]))
"""


def _env(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(TESTS), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


def cli(*args, registered=False, env=None, **kw):
    """Run the command line in a fresh interpreter; stdout and stderr are pipes."""
    head = [sys.executable, "-c", REGISTER] if registered else [sys.executable, "-m", "backends"]
    return subprocess.run(
        [*head, *map(str, args)],
        cwd=kw.pop("cwd", ROOT),
        env=env or _env(),
        capture_output=True,
        text=True,
        timeout=240,
        **kw,
    )


def table_rows(stdout: str) -> dict[tuple[str, int], list[str]]:
    """The table's data rows by (label, N), split on runs of two or more spaces."""
    lines = stdout.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("backend "))
    rows = {}
    for ln in lines[start + 2 :]:
        if not ln.strip():
            break
        cells = re.split(r"\s{2,}", ln.strip())
        rows[(cells[0], int(cells[1].replace(",", "")))] = cells
    return rows


def test_end_to_end_table_json_csv_png_agree(tmp_path):
    out = {k: tmp_path / f"run.{k}" for k in ("json", "csv", "png")}
    names = ["python", "numpy", "numba"]
    plot = ["--plot", out["png"]] if HAVE_MPL else []
    r = cli("compare", "--n", 100, 50, "--repeat", 2, "--backends", *names, "--mpi-ranks", 0,
            "--json", out["json"], "--csv", out["csv"], *plot)  # fmt: skip
    assert r.returncode == 0, r.stderr
    # piped: a clean table on stdout; plain progress lines (no live line) on stderr
    for stream in (r.stdout, r.stderr):
        assert "\r" not in stream and not ANSI.search(stream)
    assert "numba N=100: first call" in r.stderr
    assert "agree with the oracle" in r.stdout
    table = table_rows(r.stdout)
    assert set(table) == {(b, n) for b in names for n in (50, 100)}

    doc = json.loads(out["json"].read_text())
    assert doc["failed"] is False
    assert doc["settings"]["n"] == [50, 100] and doc["settings"]["repeat"] == 2
    assert doc["libraries"]["numpy"] == importlib.metadata.version("numpy")
    assert doc["machine"]["logical_cpus"] == os.cpu_count() and doc["machine"]["cpu"]
    assert doc["python"]["version"] in r.stdout and doc["machine"]["cpu"] in r.stdout
    results = {(d["backend"], d["n"]): d for d in doc["results"]}
    assert set(results) == set(table)
    with open(out["csv"], newline="") as f:
        lines = list(csv.DictReader(f))
    assert {(d["backend"], int(d["n"])) for d in lines} == set(results)
    for d in lines:
        res = results[(d["backend"], int(d["n"]))]
        cells = table[(d["backend"], int(d["n"]))]
        assert res["status"] == d["status"] == "ok"
        assert float(d["best_s"]) == res["best_s"] == min(res["times_s"])
        assert int(d["repeats"]) == len(res["times_s"]) == int(cells[5]) >= 1
        other = results[(d["backend"], 150 - res["n"])]  # the same backend at the other N
        assert res["times_s"] != other["times_s"]  # every row has its own calls
        assert cells[3] == fmt_time(res["best_s"])  # the table shows the JSON's best time
        assert res["interactions_per_second"] == pytest.approx(
            backends.interactions(res["n"]) / res["best_s"]
        )
        assert res["error_rows"] == res["n"] and res["error_ok"] is True
        assert res["first_call_s"] > 0 and res["median_s"] >= res["best_s"]
        py = results[("python", res["n"])]["best_s"]
        assert res["speedup_vs_python"] == pytest.approx(py / res["best_s"])
    if HAVE_MPL:
        png = out["png"].read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


@pytest.mark.skipif(not HAVE_MPL, reason="matplotlib is not installed")
def test_plot_with_a_single_n_and_its_title(tmp_path):
    png = tmp_path / "one.png"
    r = cli("compare", "--n", 50, "--repeat", 2, "--backends", "python", "numpy", "slow",
            "approx", "--quiet", "--plot", png, registered=True)  # fmt: skip
    assert r.returncode == 0, r.stderr
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000

    from backends.compare import plots
    from backends.compare.report import metadata

    meta = metadata()
    text = plots.title(meta, {"threads": None, "numba_threads": 3})
    assert meta["machine"]["cpu"] in text and "3 Numba threads" in text
    assert meta["machine"]["simd"]["isa"] in text and meta["date"][:10] in text
    assert meta["machine"]["simd"]["isa"] in ("AVX-512", "AVX2", "AVX", "SSE2", "NEON", "unknown")


def test_plot_without_matplotlib_is_an_argument_error(tmp_path):
    # a None entry in sys.modules makes matplotlib unimportable in the child, installed or not
    hide = "import sys; sys.modules['matplotlib'] = None; from backends.compare import main; "
    code = hide + f"sys.exit(main(['compare', '--plot', {str(tmp_path / 'f.png')!r}]))"
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=_env(), capture_output=True, text=True,
        timeout=240,
    )  # fmt: skip
    assert r.returncode == 2 and "--plot needs matplotlib" in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_python_extrapolated_and_sampled_rows(tmp_path):
    js = tmp_path / "r.json"
    r = cli("compare", "--n", 30, 60, "--repeat", 1, "--backends", "python", "numpy",
            "--python-max-n", 30, "--sample-rows", 7, "--quiet", "--json", js)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""  # --quiet
    res = {(d["backend"], d["n"]): d for d in json.loads(js.read_text())["results"]}
    est, base = res[("python", 60)], res[("python", 30)]
    assert est["status"] == "extrapolated" and est["times_s"] == []
    assert est["best_s"] == pytest.approx(base["best_s"] * 60 * 59 / (30 * 29))
    assert res[("numpy", 60)]["error_rows"] == 7 and res[("numpy", 60)]["python_extrapolated"]
    assert res[("numpy", 30)]["error_rows"] == 30
    rows = table_rows(r.stdout)
    assert rows[("python", 60)][3].startswith("~") and "extrapolated" in r.stdout
    assert rows[("numpy", 60)][7].startswith("~") and rows[("numpy", 60)][9].endswith("*")


def test_python_alone_above_the_limit_is_extrapolated_from_oracle_rows(tmp_path):
    js = tmp_path / "r.json"
    r = cli("compare", "--n", 40, "--backends", "python", "--python-max-n", 20,
            "--sample-rows", 5, "--quiet", "--json", js)  # fmt: skip
    assert r.returncode == 0, r.stderr
    (row,) = json.loads(js.read_text())["results"]
    assert row["status"] == "extrapolated" and row["best_s"] > 0
    assert "extrapolated from 5 oracle rows timed at this N" in r.stdout


def test_budget_and_max_call_limits_are_noted(tmp_path):
    js = tmp_path / "r.json"
    r = cli("compare", "--n", 20, 3000, "--backends", "numpy", "--repeat", 3, "--budget", "1e-9",
            "--max-call", "1e-4", "--quiet", "--json", js)  # fmt: skip
    assert r.returncode == 0, r.stderr  # skipping is not failing
    res = {d["n"]: d for d in json.loads(js.read_text())["results"]}
    assert len(res[20]["times_s"]) == 1 and "1 of 3 repeats: --budget" in res[20]["message"]
    assert res[3000]["status"] == "skipped" and "over --max-call" in res[3000]["message"]
    assert table_rows(r.stdout)[("numpy", 3000)][-1].startswith("skipped")


def test_threads_sets_numba_threads(tmp_path):
    js = tmp_path / "r.json"
    r = cli("compare", "--n", 30, "--backends", "numba_parallel", "--repeat", 1, "--threads", 1,
            "--quiet", "--json", js)  # fmt: skip
    assert r.returncode == 0, r.stderr
    settings = json.loads(js.read_text())["settings"]
    assert settings["threads"] == 1 and settings["numba_threads"] == 1
    assert "threads 1," in r.stdout


def test_failing_and_disagreeing_backends_are_reported(tmp_path):
    js, marker = tmp_path / "r.json", tmp_path / "closed"
    r = cli("compare", "--n", 40, 80, "--repeat", 1, "--backends", "numpy", "raises", "wrong",
            "--json", js, registered=True, env=_env(COMPARE_TEST_CLOSED=str(marker)))  # fmt: skip
    assert r.returncode == 1, r.stderr
    rows = table_rows(r.stdout)
    assert rows[("numpy", 40)][-1] == "ok" and rows[("numpy", 80)][-1] == "ok"
    assert rows[("raises", 40)][-1].startswith("FAILED") and rows[("wrong", 80)][-1] == "FAIL"
    assert "RuntimeError: deliberate failure for the test" in r.stdout
    assert "FAILED: raises (N=40), raises (N=80), wrong (N=40), wrong (N=80)" in r.stdout
    doc = json.loads(js.read_text())
    assert doc["failed"] is True
    res = {(d["backend"], d["n"]): d for d in doc["results"]}
    assert (
        res[("raises", 40)]["status"] == "failed" and "deliberate" in res[("raises", 40)]["message"]
    )
    assert res[("wrong", 40)]["error"] == pytest.approx(1.0) and not res[("wrong", 40)]["error_ok"]
    assert marker.read_text().count("closed") == 2  # raises and wrong share the module


def test_approximate_backends_are_checked_against_their_own_bound(tmp_path):
    js = tmp_path / "r.json"
    r = cli("compare", "--n", 40, 300, "--repeat", 1, "--python-max-n", 100, "--sample-rows", 9,
            "--backends", "numpy", "approx", "approx_bad", "--setting", "approx:theta=0.25",
            "--json", js, "--quiet", registered=True)  # fmt: skip
    assert r.returncode == 1, r.stderr  # approx_bad misses its own bound
    rows = table_rows(r.stdout)
    assert rows[("approx", 40)][-1] == "ok" and rows[("approx", 40)][-2] == "rms 0.001"
    assert rows[("approx (theta=0.25)", 300)][-1] == "ok"
    assert rows[("approx (theta=0.25)", 300)][-2] == "rms 0.0005"
    assert rows[("approx_bad", 40)][-1] == "FAIL" and rows[("numpy", 40)][-2] == "max 1e-12"
    assert "FAILED: approx_bad (N=40), approx_bad (N=300)" in r.stdout
    res = {(d["label"], d["n"]): d for d in json.loads(js.read_text())["results"]}
    a40, a300 = res[("approx", 40)], res[("approx (theta=0.25)", 300)]
    assert a40["exact"] is False and a40["tolerance_kind"] == "rms" and a40["error_ok"] is True
    assert a40["tolerance"] == pytest.approx(1e-3) and a40["error_rows"] == 40
    assert a40["error_rms"] == pytest.approx(5e-4, rel=1e-6)  # theta * 1e-3 on every particle
    assert a300["options"] == {"theta": 0.25} and a300["error_rows"] == 9  # sampled rows
    assert a300["error"] == pytest.approx(2.5e-4, rel=1e-6)
    assert a300["error_rms"] == pytest.approx(2.5e-4, rel=1e-6)
    assert res[("numpy", 300)]["tolerance_kind"] == "max" and res[("numpy", 300)]["exact"]
    assert re.search(r"fastest at N=300: exact: numpy \(.*\); rms error <= 0.001: ", r.stdout)


def test_verdict_names_the_fastest_exact_and_approximate_backends():
    from backends.compare.report import Row, fastest, verdict

    def row(label, t, rms, exact=True, ok=True, n=1000):
        return Row(label, label, n, "ok", best_s=t, error=rms, error_rms=rms, error_ok=ok,
                   exact=exact)  # fmt: skip

    rows = [
        row("slow exact", 2.0, 1e-15),
        row("fast exact", 1.0, 1e-15),
        row("tree", 0.1, 2e-3, exact=False),
        row("fine tree", 0.3, 2e-4, exact=False),
        row("broken", 0.01, 1e-5, exact=False, ok=False),
        row("small N", 1e-4, 1e-15, n=10),
    ]
    best = fastest(rows)
    assert best["n"] == 1000 and best["exact"].label == "fast exact"
    assert best["rms<=0.001"].label == "fine tree"
    (line,) = verdict(rows)
    assert line.startswith("fastest at N=1,000: exact: fast exact (1 s, rms 1.0e-15); ")
    assert "rms error <= 0.001: fine tree (300 ms, rms 2.0e-04)" in line


def test_verdict_of_a_float32_run_says_no_exact_backend_ran():
    from backends.compare.report import Row, verdict

    f32 = Row(
        "numba_parallel", "numba_parallel (float32)", 1000, "ok", best_s=1e-3, error=2e-7,
        error_rms=5e-8, error_ok=True, options={"precision": "float32"},
    )  # fmt: skip
    (line,) = verdict([f32])
    assert line.startswith("fastest at N=1,000: exact: none run (exact means float64); ")
    assert line.endswith("rms error <= 0.001: numba_parallel (float32) (1 ms, rms 5.0e-08)")
    failed = Row("numpy", "numpy", 1000, "ok", best_s=1e-2, error=1e-3, error_ok=False)
    (line,) = verdict([f32, failed])
    assert "exact: none passed; " in line


def test_approximate_backends_are_predicted_by_n_log_n():
    from backends.compare.report import Row
    from backends.compare.runner import _predict

    exact = Row("e", "e", 1000, "ok", best_s=1.0)
    approx = Row("a", "a", 1000, "ok", best_s=1.0, exact=False)
    assert _predict(exact, 100_000) == pytest.approx(100_000 * 99_999 / (1000 * 999))
    assert _predict(approx, 100_000) == pytest.approx(100 * 5 / 3)  # N log N


def test_library_versions_of_the_peers_are_reported():
    from backends.compare.report import library_versions

    found = library_versions()
    for dist in ("pytreegrav", "fmm3dpy"):
        try:
            assert found[dist] == importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            assert dist not in found


def test_float32_runs_the_backends_with_the_mode_against_the_float32_bound(tmp_path):
    js = tmp_path / "r.json"
    r = cli("compare", "--n", 60, "--repeat", 1, "--precision", "float32", "--backends",
            "python", "numpy", "f32", "--json", js, "--quiet", registered=True)  # fmt: skip
    assert r.returncode == 2  # numpy, named, has no float32 mode
    assert "backend 'numpy' has no float32 mode; the backends with float32 are:" in r.stderr
    assert "f32" in r.stderr.splitlines()[-1]

    r = cli("compare", "--n", 60, "--repeat", 1, "--precision", "float32", "--backends",
            "python", "f32", "--json", js, "--quiet", registered=True)  # fmt: skip
    assert r.returncode == 0, r.stderr
    from backends._contract import FLOAT32_TOLERANCE

    assert f"float32 passes at max error <= {FLOAT32_TOLERANCE:g}; oracle float64" in r.stdout
    rows = table_rows(r.stdout)
    assert set(rows) == {("f32 (float32)", 60)}  # the oracle still checks, untimed
    assert rows[("f32 (float32)", 60)][-2] == f"max {FLOAT32_TOLERANCE:g}"
    assert rows[("f32 (float32)", 60)][-1] == "ok"
    doc = json.loads(js.read_text())
    (row,) = doc["results"]
    assert row["options"] == {"precision": "float32"} and row["tolerance"] == FLOAT32_TOLERANCE
    assert 1e-9 < row["error"] < FLOAT32_TOLERANCE  # float32 rounding, really applied
    assert doc["settings"]["precision"] == ["float32"]
    assert doc["settings"]["float32_tolerance"] == FLOAT32_TOLERANCE
    assert "not run: python: float64 only; it is still the oracle" in r.stdout

    # both precisions: each backend in each precision it has, float64 first
    r = cli("compare", "--n", 60, "--repeat", 1, "--precision", "float32", "float64",
            "--backends", "numpy", "f32", "--quiet", registered=True)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert list(table_rows(r.stdout)) == [("numpy", 60), ("f32", 60), ("f32 (float32)", 60)]


BAD_ARGS = [
    (["--n", "0"], "--n: must be a positive integer; got '0'"),
    (["--n", "100", "ten"], "--n: must be a positive integer; got 'ten'"),
    (["--n", "1.5"], "--n: must be a positive integer"),
    (["--n"], "--n: expected at least one argument"),
    (["--backends", "numpy", "nope"], "unknown backend 'nope'; valid names are: python, numpy"),
    (["--repeat", "0"], "--repeat: must be a positive integer"),
    (["--repeat", "x"], "--repeat: must be a positive integer"),
    (["--threads", "-1"], "--threads: must be a positive integer"),
    (["--threads", "100000"], "--threads 100000 exceeds numba's limit"),
    (["--csv", "/dev/null/r.csv"], "'/dev/null' is not a directory"),
    (["--mpi-ranks", "-1"], "--mpi-ranks: must be a non-negative integer (0 or more); got '-1'"),
    (["--seed", "x"], "--seed: must be a non-negative integer"),
    (["--csv", "{tmp}"], "is a directory, not a file"),
    (["--plot", "{tmp}/figure.txt"], "must end in .png, .svg or .pdf"),
    (["--csv", "{tmp}/r.json"], "--csv and --json are the same file"),
    (["--precision", "float16"], "--precision: precision must be one of"),
    (["--setting", "nope:x=1"], "--setting 'nope:x=1': unknown backend 'nope'"),
    (["--setting", "numpy"], "expected NAME:KEY=VALUE[,KEY=VALUE...]"),
    (["--setting", "numpy:block"], "expected KEY=VALUE, got 'block'"),
]


@pytest.mark.parametrize(("args", "message"), BAD_ARGS, ids=[" ".join(a) for a, _ in BAD_ARGS])
def test_argument_errors_exit_2_before_any_work(tmp_path, args, message, capsys):
    # In this process (the checks run before any work; a fresh interpreter per case cost
    # seconds each): test_argument_error_in_a_fresh_interpreter runs one the way users do.
    from backends.compare import main

    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    with pytest.raises(SystemExit) as exit_:
        main(["compare", "--json", str(tmp_path / "r.json"), *args])
    out, err = capsys.readouterr()
    assert exit_.value.code == 2
    assert message.replace("{tmp}", str(tmp_path)) in err
    assert err.startswith("usage: python -m backends compare")
    assert out == ""
    assert list(tmp_path.iterdir()) == []  # no output file, nothing run


def test_argument_error_in_a_fresh_interpreter(tmp_path):
    r = cli("compare", "--json", tmp_path / "r.json", "--setting", "numpy:block")
    assert r.returncode == 2 and "expected KEY=VALUE, got 'block'" in r.stderr
    assert r.stderr.startswith("usage: python -m backends compare") and r.stdout == ""
    assert list(tmp_path.iterdir()) == []


def test_help_shows_the_defaults():
    r = cli("compare", "--help")
    assert r.returncode == 0
    text = " ".join(r.stdout.split())
    for shown in ("(default: 1000 10000)", "(default: 5)", "(default: 2)", "(default: 1e-12)"):
        assert shown in text


def test_unavailable_hardware_backend_is_an_argument_error(tmp_path):
    r = cli("compare", "--backends", "numpy", "cold", "--json", tmp_path / "r.json",
            registered=True, env=_env(COMPARE_TEST_NO_HARDWARE="1"))  # fmt: skip
    assert r.returncode == 2 and r.stdout == ""
    assert "backend 'cold' is not available here: no test accelerator" in r.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(
    "cuda" not in backends.names() or backends.unavailable_reason("cuda") is None,
    reason="this machine can run cuda",
)
def test_cuda_without_a_gpu_exits_2():
    r = cli("compare", "--backends", "cuda", "--n", 10)
    assert r.returncode == 2 and r.stdout == ""
    assert "backend 'cuda' is not available here:" in r.stderr


def test_first_call_does_not_count_against_the_budget(tmp_path):
    js = tmp_path / "r.json"
    r = cli("compare", "--n", 20, "--backends", "cold", "--repeat", 3, "--budget", 0.5,
            "--quiet", "--json", js, registered=True)  # fmt: skip
    assert r.returncode == 0, r.stderr
    (row,) = json.loads(js.read_text())["results"]
    assert row["first_call_s"] >= 1.0  # the 1 s "compilation" is reported where it belongs
    assert len(row["times_s"]) == 3 and "--budget" not in row["message"]


def test_missing_output_folders_are_created(tmp_path):
    js = tmp_path / "a" / "b" / "r.json"
    r = cli("compare", "--n", 20, "--backends", "numpy", "--repeat", 1, "--quiet", "--json", js)
    assert r.returncode == 0, r.stderr
    assert json.loads(js.read_text())["failed"] is False


def test_save_writes_into_the_ignored_output_folder(tmp_path):
    r = cli("compare", "--n", 20, "--backends", "numpy", "--repeat", 1, "--quiet", "--save",
            cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    names = {"compare.json", "compare.csv"} | ({"compare.png"} if HAVE_MPL else set())
    assert {p.name for p in (tmp_path / "compare-out").iterdir()} == names
    # in the repository that folder is ignored: following the docs leaves `git status` clean
    if (ROOT / ".git").exists():
        ignored = subprocess.run(
            ["git", "check-ignore", "-q", "compare-out/compare.json"], cwd=ROOT, timeout=30
        )
        assert ignored.returncode == 0


def test_docs_examples_write_only_into_the_ignored_folder():
    doc = ROOT / "docs" / "compare.md"
    if not doc.exists():
        pytest.skip("docs/compare.md is not in this checkout")
    commands = [ln for ln in doc.read_text().splitlines() if "python -m backends compare" in ln]
    paths = [p for ln in commands for p in re.findall(r"--(?:json|csv|plot) +(\S+)", ln)]
    assert paths
    for p in paths:
        assert p.startswith("compare-out/"), p


def test_unknown_command_exits_2():
    """One line naming every command (argparse's own message named only compare and list)."""
    r = cli("frobnicate")
    assert r.returncode == 2 and r.stdout == ""
    assert "unknown command 'frobnicate'" in r.stderr
    assert all(f"'{c}'" in r.stderr for c in ("compare", "list", "frontier", "drift"))


def test_list_shows_every_backend_and_why_not():
    code = (
        "import sys, backends\n"
        "backends._REGISTRY['ghost'] = backends._Spec('backends.reference:accel', 'x',"
        " ('no_such_module_xyz',), 'ghostly')\n"
        "from backends.compare import main\nsys.exit(main(['list']))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(), capture_output=True,
                       text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    lines = {ln.split()[0]: ln for ln in r.stdout.splitlines() if ln.strip()}
    for name in backends.names():
        avail = backends.unavailable_reason(name) is None
        assert lines[name].split()[1] == ("yes" if avail else "no")
        kind = lines[name].split()[2]
        assert kind.startswith("exact" if backends.is_exact(name) else "approximate")
        assert ("+float32" in kind) == ("float32" in backends.precisions(name))
    assert lines["ghost"].split()[1] == "no"
    assert "no_such_module_xyz" in lines["ghost"] and "nbody-backends[ghostly]" in lines["ghost"]
    assert "mpiexec:" in r.stdout


def test_live_progress_only_on_a_terminal_and_never_on_stdout(tmp_path):
    master, slave = pty.openpty()
    captured = bytearray()

    def drain():
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                return
            if not chunk:
                return
            captured.extend(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    proc = subprocess.Popen(
        [sys.executable, "-m", "backends", "compare", "--n", "30", "--repeat", "2",
         "--backends", "python", "numpy", "--mpi-ranks", "0"],
        cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=slave, text=True,
    )  # fmt: skip
    os.close(slave)
    stdout, _ = proc.communicate(timeout=120)
    reader.join(10)
    os.close(master)
    assert proc.returncode == 0
    assert "\r" not in stdout and not ANSI.search(stdout) and "call 2/2" not in stdout
    assert set(table_rows(stdout)) == {("python", 30), ("numpy", 30)}
    live = captured.decode()
    assert "\r\x1b[K" in live and "numpy N=30: call 2/2" in live
    assert "\n" not in live.replace("\r\n", "")  # a single live line, cleared at the end


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_closes_backends_and_writes_nothing(tmp_path, sig, status):
    js, marker = tmp_path / "r.json", tmp_path / "closed"
    proc = subprocess.Popen(
        [sys.executable, "-c", REGISTER, "compare", "--n", "20", "--repeat", "50",
         "--budget", "60", "--backends", "slow", "--json", str(js)],
        cwd=ROOT, env=_env(COMPARE_TEST_CLOSED=str(marker)), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        for line in proc.stderr:  # wait until it is measuring
            if "slow N=20: first call" in line:
                break
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == status, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert stdout == "" and not js.exists()
    assert marker.read_text() == "closed\n"


@pytest.mark.skipif(
    importlib.util.find_spec("backends.mpi_run") is None or "mpi" not in backends.names(),
    reason="backends.mpi_run or the 'mpi' backend is not in this checkout",
)
def test_mpi_row_from_mpiexec(tmp_path):
    from backends import _mpi_launch

    reason = _mpi_launch.unavailable_reason() or backends.unavailable_reason("mpi")
    if reason is not None:
        pytest.skip(reason)
    from backends.compare.args import mpi_threads_supported

    js = tmp_path / "r.json"
    threads = ["--mpi-threads-per-rank", 1] if mpi_threads_supported() else []
    r = cli("compare", "--n", 64, "--repeat", 1, "--backends", "numpy", "mpi", "--mpi-ranks", 2,
            *threads, "--json", js)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    res = {(d["label"], d["n"]): d for d in json.loads(js.read_text())["results"]}
    (mpi,) = [d for d in res.values() if d["backend"] == "mpi"]
    algorithm = mpi["mpi_run"].get("algorithm", "allgather")
    label = f"mpi {algorithm} (2 ranks x 1 thread)"
    assert mpi["label"] == label and (label, 64) in table_rows(r.stdout)
    assert mpi["ranks"] == 2 and mpi["threads_per_rank"] == 1
    assert mpi["status"] == "ok" and mpi["best_s"] == min(mpi["times_s"])
    assert mpi["speedup_vs_numpy"] == pytest.approx(res[("numpy", 64)]["best_s"] / mpi["best_s"])


def test_mpi_threads_per_rank_needs_an_mpi_run_that_has_it(tmp_path):
    from backends.compare.args import mpi_threads_supported

    if mpi_threads_supported():
        pytest.skip("this mpi_run has --threads-per-rank")
    r = cli("compare", "--backends", "mpi", "--mpi-threads-per-rank", 2, "--n", 10)
    assert r.returncode == 2 and "has no --threads-per-rank option" in r.stderr


def test_pool_rows_show_their_worker_count(tmp_path):
    from backends._pools import usable_cores

    js = tmp_path / "r.json"
    r = cli("compare", "--n", 30, "--repeat", 1, "--backends", "numpy", "pool", "--setting",
            "pool:n_workers=1", "--json", js, "--quiet", registered=True)  # fmt: skip
    assert r.returncode == 0, r.stderr
    k = usable_cores()
    label = f"pool ({k} worker{'s' if k != 1 else ''})"
    assert set(table_rows(r.stdout)) == {("numpy", 30), (label, 30), ("pool (n_workers=1)", 30)}
    res = {d["label"]: d for d in json.loads(js.read_text())["results"]}
    assert res[label]["workers"] == k and res["numpy"]["workers"] is None
    assert res["pool (n_workers=1)"]["workers"] == 1

    r = cli("compare", "--n", 30, "--repeat", 1, "--backends", "pool", "--workers", 3,
            "--json", js, "--quiet", registered=True)  # fmt: skip
    assert r.returncode == 0, r.stderr
    (row,) = json.loads(js.read_text())["results"]
    assert row["label"] == "pool (3 workers)" and row["workers"] == 3
    assert row["options"] == {"n_workers": 3}


def _mpi_ranks_alive(seed: int) -> list[int]:
    """Pids of live processes of our MPI job (found by its unique --seed), zombies excluded."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if b"backends.mpi_run" in args and str(seed).encode() in args and state != "Z":
            pids.append(int(proc.name))
    return pids


@pytest.mark.skipif(
    importlib.util.find_spec("backends.mpi_run") is None
    or "mpi" not in backends.names()
    or not Path("/proc").is_dir(),
    reason="backends.mpi_run or the 'mpi' backend is not in this checkout (or no /proc)",
)
def test_interrupt_ends_the_mpi_job(tmp_path):
    from backends import _mpi_launch

    reason = _mpi_launch.unavailable_reason() or backends.unavailable_reason("mpi")
    if reason is not None:
        pytest.skip(reason)
    seed = 700_000 + os.getpid() % 100_000
    proc = subprocess.Popen(
        [sys.executable, "-c", REGISTER, "compare", "--n", "200000", "--repeat", "20",
         "--backends", "mpi", "--seed", str(seed)],
        cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        for line in proc.stderr:
            if "mpiexec" in line:
                break
        deadline = time.monotonic() + 60
        while len(_mpi_ranks_alive(seed)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(_mpi_ranks_alive(seed)) >= 2, "the MPI ranks never started"
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130
    deadline = time.monotonic() + 10
    while _mpi_ranks_alive(seed) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _mpi_ranks_alive(seed) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--save", "/proc/nbody-no-such-dir"], "cannot create a folder in '/proc'"),
        (["--setting", "tree:theta=1,theta=2"], "option 'theta' is given twice"),
        (["--workers", "1e6"], "--workers: must be at most"),
        (["--mpi-ranks", "1e6"], "--mpi-ranks: must be at most"),
        (["--setting", "multiprocessing:n_workers=1000000"], "n_workers must be at most"),
        (["--mpi-threads-per-rank", "1000000000"], "exceeds numba's limit of"),
    ],
)
def test_absurd_arguments_are_refused_before_any_work(args, message):
    r = cli("compare", "--n", 100, "--backends", "numpy", *args)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr
    assert len([ln for ln in r.stderr.splitlines() if "error:" in ln]) == 1
