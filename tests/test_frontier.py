"""``python -m backends frontier``: Pareto logic, arguments, and end-to-end runs at small N."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import backends
from backends.compare import frontier
from backends.compare.frontier import Point, front, pareto

ROOT = Path(__file__).resolve().parent.parent
HAVE_MPL = importlib.util.find_spec("matplotlib") is not None
TREE = backends.unavailable_reason("tree") is None


def cli(*args, timeout=300):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "backends", "frontier", *map(str, args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# --------------------------------------------------------------------------- Pareto logic


def test_pareto_flags_the_non_dominated_points():
    pts = [
        (1.0, 1e-3),  # front
        (2.0, 1e-3),  # dominated by the first (slower, as accurate)
        (0.5, 1e-2),  # front: fastest
        (3.0, 1e-9),  # front: most accurate
        (3.0, 1e-6),  # dominated by (3.0, 1e-9)
        (0.6, 1e-2),  # dominated by (0.5, 1e-2)
        (2.5, 1e-5),  # front
    ]
    assert pareto(pts) == [True, False, True, True, False, False, True]


def test_pareto_ties_nans_and_single_points():
    assert pareto([(1.0, 1e-3), (1.0, 1e-3)]) == [True, True]  # equal: neither dominates
    assert pareto([(1.0, 1e-3), (1.0, 1e-4)]) == [False, True]  # as fast, more accurate
    assert pareto([(math.nan, math.nan), (5.0, 1.0)]) == [False, True]
    assert pareto([(1.0, math.nan)]) == [False]
    assert pareto([(2.0, 0.0)]) == [True]
    assert pareto([]) == []


def _point(backend, seconds, rms, status="ok"):
    return Point(backend, {}, "f", False, seconds=seconds, rms=rms, max=rms, status=status)


def test_front_picks_the_fastest_point_reaching_each_target():
    a, b, c = _point("a", 0.1, 5e-3), _point("b", 1.0, 2e-7), _point("c", 10.0, 1e-15)
    skipped = _point("d", None, None, status="skipped")
    table = dict(front([a, b, c, skipped], targets=(1e-2, 1e-3, 1e-7, 1e-12, 1e-16)))
    assert table[1e-2] is a
    assert table[1e-3] is b
    assert table[1e-7] is c  # 2e-7 misses 1e-7
    assert table[1e-12] is c
    assert table[1e-16] is None


def test_sweep_table_is_data_driven_and_ordered_cheap_to_accurate():
    names = {b for b, _, _ in frontier.FAMILIES}
    assert {"tree", "fmm", "pytreegrav_tree", "fmm3d"} <= names
    for backend, _, settings in frontier.FAMILIES:
        for key in ("theta", "eps"):
            vals = [s[key] for s in settings if key in s]
            assert vals == sorted(vals, reverse=True), (backend, key)
    fmm = next(s for b, _, s in frontier.FAMILIES if b == "fmm")
    assert fmm[0]["eps"] == pytest.approx(1e-2) and fmm[-1]["eps"] == pytest.approx(1e-12)


# --------------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    ("args", "msg"),
    [
        (["--bogus"], "unrecognized arguments"),
        (["--n", "x"], "--n: must be a positive integer"),
        (["--n", "0"], "--n: must be a positive integer"),
        (["--n", "1.5"], "--n: must be a positive integer"),
        (["--n", "1e15"], "--n: '1e15' particles are more than this machine can hold"),
        (["--repeat", "-1"], "--repeat"),
        (["--budget", "nan"], "--budget: must be a positive number"),
        (["--system", "cube"], "invalid choice"),
        (["--backends", "nope"], "unknown backend 'nope'"),
        (["--backends", "numpy"], "not in the sweep"),
        (["--plot", "out.txt"], "must end in .png"),
        (["--json", f"{__file__}/f.json"], "is not a directory"),  # a file as folder
        (["--oracle", "exact"], "invalid choice"),
    ],
)
def test_bad_flags_exit_2_with_one_line(args, msg, capsys):
    with pytest.raises(SystemExit) as exc:
        frontier.main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and msg in err and err.startswith("python -m backends frontier")


def test_unavailable_backend_named_exits_2(monkeypatch, capsys):
    monkeypatch.setattr(backends, "unavailable_reason", lambda name: f"{name} is missing here")
    with pytest.raises(SystemExit) as exc:
        frontier.main(["--backends", "tree"])
    assert exc.value.code == 2 and "not available here: tree is missing" in capsys.readouterr().err


def test_dispatched_by_python_m_backends():
    from backends.__main__ import _COMMANDS

    assert _COMMANDS["frontier"] == "backends.compare.frontier:main"
    r = cli("--n", "0")
    assert r.returncode == 2 and r.stdout == "" and r.stderr.count("\n") == 1


# --------------------------------------------------------------------------- runs


@pytest.mark.skipif(not TREE, reason="tree backend unavailable")
def test_run_writes_the_json_schema_and_the_plot(tmp_path):
    out = tmp_path / "sub" / "f.json"
    png = tmp_path / "f.png"
    args = ["--n", "1500", "--backends", "numba_parallel", "tree", "--repeat", "1"]
    args += ["--budget", "0.01", "--sample-rows", "300", "--json", out]
    if HAVE_MPL:
        args += ["--plot", png]
    r = cli(*args)
    assert r.returncode == 0, r.stderr
    assert "frontier: " in r.stderr  # progress on stderr, one line per step (not a terminal)
    doc = json.loads(out.read_text())
    assert doc["command"] == "frontier" and doc["settings"]["n"] == 1500
    assert {"cpu", "simd", "logical_cpus"} <= set(doc["machine"]) and "date" in doc
    assert doc["settings"]["error_rows"] == 300 and doc["settings"]["oracle"] == "numba"
    pts = doc["points"]
    assert pts, doc
    for p in pts:
        assert {"backend", "settings", "seconds", "rms", "max", "pareto"} <= set(p)
        assert p["seconds"] > 0 and 0.0 <= p["rms"] <= p["max"]
    exact = [p for p in pts if p["backend"] == "numba_parallel" and not p["settings"]]
    assert len(exact) == 1 and exact[0]["rms"] < 1e-12 and exact[0]["pareto"]
    flags = pareto([(p["seconds"], p["rms"]) for p in pts])
    assert flags == [p["pareto"] for p in pts]
    trees = [p for p in pts if p["backend"] == "tree"]
    assert trees and all(p["rms"] <= p["bound"] for p in trees)
    # families stop once slower than the exact row: what was not run is listed, with why
    for q in doc["not_measured"]:
        assert q["status"] == "skipped" and "slower than exact" in q["note"]
    assert len(trees) + len(doc["not_measured"]) == sum(
        len(s) for b, _, s in frontier.FAMILIES if b == "tree"
    )
    assert [f["rms_target"] for f in doc["front"]] == list(frontier.TARGETS)
    assert "Fastest for a required rms error" in r.stdout
    assert "| 1e-12 | numba_parallel |" in r.stdout
    if HAVE_MPL:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.skipif(not TREE, reason="tree backend unavailable")
def test_without_exact_rows_a_family_runs_to_its_end(tmp_path, capsys):
    out = tmp_path / "f.json"
    args = ["--n", "600", "--backends", "tree", "--repeat", "1", "--budget", "0.01"]
    assert frontier.main([*args, "--quiet", "--json", str(out)]) == 0
    assert capsys.readouterr().err == ""  # --quiet: no progress
    doc = json.loads(out.read_text())
    n_tree = sum(len(s) for b, _, s in frontier.FAMILIES if b == "tree")
    assert len(doc["points"]) == n_tree and doc["not_measured"] == []
    assert any(p["pareto"] for p in doc["points"])


@pytest.mark.skipif(not TREE, reason="tree backend unavailable")
def test_other_systems_and_the_python_oracle(tmp_path):
    out = tmp_path / "f.json"
    r = cli("--n", "400", "--system", "plummer", "--backends", "tree", "--repeat", "1",
            "--budget", "0.01", "--oracle", "python", "--json", out)  # fmt: skip
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    assert doc["settings"]["system"] == "plummer" and doc["settings"]["error_rows"] == 400
    assert "pure-Python oracle" in doc["settings"]["oracle_description"]


def test_sigterm_exits_143_and_writes_nothing(tmp_path):
    out = tmp_path / "f.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    proc = subprocess.Popen(
        [sys.executable, "-m", "backends", "frontier", "--n", "200000", "--json", str(out),
         "--backends", "numba_parallel"],  # fmt: skip
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    line = ""
    while "frontier:" not in line and time.monotonic() < deadline:
        line = proc.stderr.readline()  # the first progress line: the run has started
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "interrupted" in err and not out.exists()


# --------------------------------------------------------------------------- test backends


def accel_refuses(masses, positions, G=1.0, *, softening=0.0):
    """A backend refusing every system with a ValueError, as fmm3d refuses some."""
    raise ValueError("positions: this test backend refuses every system")


def tolerance(**_options) -> float:
    """The bound of :func:`accel_refuses` (never reached)."""
    return 1e-3


def test_measured_errors_statuses_and_exit_status(monkeypatch, tmp_path, capsys):
    """Test backends with known errors: the perturbed 'approx' (rms = max = theta * 1e-3),
    one that raises (FAILED, exit status 1), one that refuses the system (not a failure),
    and a slow exact row (numpy's sum after 0.3 s).
    """
    import compare_test_backends

    spec = backends._Spec
    for name in ("approx", "raises", "slow"):
        monkeypatch.setitem(backends._REGISTRY, name, spec(
            f"compare_test_backends:accel_{name}", name, exact=name != "approx"))  # fmt: skip
    monkeypatch.setitem(backends._REGISTRY, "refuses",
                        spec("test_frontier:accel_refuses", "refuses", exact=False))  # fmt: skip
    assert compare_test_backends.tolerance(theta=1.0) == 2e-3
    families = [
        ("approx", "theta", [{"theta": 1.0}, {"theta": 0.25}]),
        ("raises", "boom", [{}]),
        ("refuses", "no", [{}]),
    ]
    monkeypatch.setattr(frontier, "FAMILIES", families)
    monkeypatch.setattr(frontier, "EXACT", [("slow", {})])  # 0.3 s: the families run on
    out = tmp_path / "f.json"
    args = ["--n", "300", "--repeat", "1", "--budget", "0.01", "--quiet", "--json", str(out)]
    assert frontier.main(args) == 1  # 'raises' failed
    text = capsys.readouterr().out
    assert "FAILED" in text and "refused" in text
    doc = json.loads(out.read_text())
    pts = {(p["backend"], p["settings"].get("theta")): p for p in doc["points"]}
    assert pts[("approx", 1.0)]["rms"] == pytest.approx(1e-3, rel=1e-9)
    assert pts[("approx", 1.0)]["max"] == pytest.approx(1e-3, rel=1e-9)
    assert pts[("approx", 0.25)]["rms"] == pytest.approx(2.5e-4, rel=1e-9)
    assert pts[("approx", 0.25)]["bound"] == pytest.approx(5e-4)
    assert pts[("slow", None)]["rms"] < 1e-14 and pts[("slow", None)]["exact"]
    assert [p["pareto"] for p in doc["points"]] == pareto(
        [(p["seconds"], p["rms"]) for p in doc["points"]]
    )
    bad = {q["backend"]: q["status"] for q in doc["not_measured"]}
    assert bad == {"raises": "failed", "refuses": "refused"}
    front = {f["rms_target"]: f.get("backend") for f in doc["front"]}
    assert front[1e-12] == "slow"  # only the exact row reaches it
    assert front[1e-3] == front[1e-2] == "approx"


def test_exact_rows_too_slow_at_n_are_predicted_from_a_probe(tmp_path, capsys):
    out = tmp_path / "f.json"
    args = ["--n", "12000", "--backends", "numba_parallel", "--repeat", "1", "--quiet"]
    assert frontier.main([*args, "--max-call", "1e-9", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert len(doc["points"]) == 2  # float64 and float32, both predicted
    scale = backends.interactions(12000) / backends.interactions(frontier.PROBE_N)
    for p in doc["points"]:
        assert p["status"] == "extrapolated" and p["times_s"] == []  # nothing timed at N
        probe = float(p["note"].split(" from ")[1].split(" s at N=10,000")[0])
        assert p["seconds"] == pytest.approx(probe * scale, rel=1e-2)  # the note's 3 digits
        assert p["rms"] < (1e-12 if not p["settings"] else 1e-4)
    assert "~" in text and "predicted" in text
