"""``python -m backends drift``: initial conditions, exact energy, the run, its files, errors.

Small N and few steps throughout; the command itself runs in-process where its output is
all that is checked, and in real subprocesses for the exit statuses and Ctrl-C.
"""

from __future__ import annotations

import importlib.util
import io
import json
import math
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import backends
from backends.drift import energy, plummer
from backends.drift import main as drift_main
from backends.drift.report import Bar

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
HAVE_MPL = importlib.util.find_spec("matplotlib") is not None

# A child that registers compare's test-only backends ("slow" sleeps 0.3 s per call,
# "raises" raises, "wrong" returns twice the accelerations), then runs drift's command line.
CHILD = """
import signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)  # even if the parent ignores SIGINT
import compare_test_backends
compare_test_backends.register()
from backends.drift import main
sys.exit(main(sys.argv[1:]))
"""


def _env(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(TESTS), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


def child(*args, **kw):
    """Start drift in a fresh interpreter with the test backends registered."""
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, *map(str, args)],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


# --------------------------------------------------------------------------- initial state


def _plummer_cdf(r_henon):
    """Mass fraction of the Plummer sphere inside ``r`` (Henon units), truncated as sampled."""
    r = np.asarray(r_henon) / plummer.HENON_A
    return np.minimum(r**3 / (1.0 + r * r) ** 1.5 / plummer.MASS_CUT, 1.0)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_plummer_sphere_is_in_henon_units_and_virial_equilibrium(seed):
    from scipy import stats

    n = 1000
    (m, x, v), lam = plummer.sphere(n, seed)
    assert m.shape == (n,) and x.shape == v.shape == (n, 3)
    np.testing.assert_array_equal(m, np.full(n, 1.0 / n))
    # centre of mass at the origin and at rest, to rounding
    assert np.abs(m @ x).max() < 1e-16 and np.abs(m @ v).max() < 1e-16
    k, w = energy.kinetic(m, v), energy.potential(m, x)
    assert k + w == pytest.approx(-0.25, rel=1e-14)
    # the rescaling to E = -1/4 is a change of units of order N^-1/2 ...
    assert abs(lam - 1.0) < 0.15
    # ... that leaves the virial ratio as sampled: 1 within sampling noise (sd 0.027 here)
    assert abs(2.0 * k / abs(w) - 1.0) < 0.1
    # radii follow the Plummer mass profile (Kolmogorov-Smirnov) ...
    r = np.linalg.norm(x, axis=1) / lam
    assert stats.kstest(r, _plummer_cdf).pvalue > 1e-3
    # ... and the speeds stay below the local escape speed
    v_esc = np.sqrt(2.0 / plummer.HENON_A) * (1 + (r / plummer.HENON_A) ** 2) ** -0.25
    assert np.all(np.linalg.norm(v, axis=1) * math.sqrt(lam) < v_esc)


def test_plummer_virial_ratio_over_seeds():
    ratios = []
    for seed in range(10):
        (m, x, v), _ = plummer.sphere(800, 100 + seed)
        ratios.append(2.0 * energy.kinetic(m, v) / abs(energy.potential(m, x)))
    assert abs(np.mean(ratios) - 1.0) < 0.03  # sd of the mean: about 0.01
    assert np.std(ratios) > 0.002  # sampled, not forced to 1


def test_plummer_is_reproducible_and_seeded():
    a, _ = plummer.sphere(50, 7)
    b, _ = plummer.sphere(50, 7)
    c, _ = plummer.sphere(50, 8)
    for p, q in zip(a, b, strict=True):
        np.testing.assert_array_equal(p, q)
    assert not np.array_equal(a.positions, c.positions)


# --------------------------------------------------------------------------- exact energy


@pytest.mark.parametrize("n", [2, 3, 7, 201, 400])
@pytest.mark.parametrize("softening", [0.0, 0.05])
def test_potential_matches_math_fsum(n, softening):
    rng = np.random.default_rng(n)
    m = rng.random(n) + 0.1
    x = rng.standard_normal((n, 3)) * 10.0 ** rng.integers(-3, 3)
    exact = energy.potential_fsum(m, x, softening, G=1.7)
    got = energy.potential(m, x, softening, G=1.7)
    assert got == pytest.approx(exact, rel=4e-16, abs=0.0)
    v = rng.standard_normal((n, 3))
    assert energy.kinetic(m, v) == pytest.approx(energy.kinetic_fsum(m, v), rel=2e-16)


def test_threaded_potential_is_the_serial_one_bit_for_bit():
    """Above SERIAL_BELOW the threaded kernel runs: the same sums per folded row pair."""
    n = energy.SERIAL_BELOW + 101  # odd: the middle row is taken once
    (m, x, _), _ = plummer.sphere(n, 3)
    px, py, pz = (np.ascontiguousarray(x[:, k]) for k in range(3))
    for eps2 in (0.0, 1e-4):
        a = energy._potential_rows(m, px, py, pz, eps2)
        b = energy._potential_rows_serial(m, px, py, pz, eps2)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])


@pytest.mark.slow
def test_threaded_potential_matches_math_fsum():
    (m, x, _), _ = plummer.sphere(energy.SERIAL_BELOW + 1, 4)
    exact = energy.potential_fsum(m, x, 0.01)
    assert energy.potential(m, x, 0.01) == pytest.approx(exact, rel=4e-16)


def test_potential_closed_forms_and_coincident_pairs():
    x = np.array([[0.0, 0.0, 0.0], [3.0, 4.0, 0.0]])
    assert energy.potential([2.0, 5.0], x) == -10.0 / 5.0
    assert energy.potential([2.0, 5.0], x, softening=12.0) == pytest.approx(-10.0 / 13.0)
    # coincident pair: no term without softening (as the forces skip it), -m m / eps with it
    y = np.array([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 3.0]])
    assert energy.potential([1.0, 1.0, 1.0], y) == pytest.approx(-1.0)
    assert energy.potential([1.0, 1.0, 1.0], y, softening=0.5) == pytest.approx(
        -(2.0 + 2.0 / math.sqrt(4.25))
    )
    assert energy.potential([1.0], [[0.0, 0.0, 0.0]]) == 0.0


def test_potential_is_compensated():
    """A sum that plain float64 summation gets wrong: tiny terms after a huge one."""
    n = 600
    x = np.zeros((n, 3))
    x[1:, 0] = 1e8 + np.arange(n - 1)  # far from particle 0, 1 apart from each other
    x[0, 0] = -1e-3
    m = np.ones(n)
    m[0] = 1e12
    exact = energy.potential_fsum(m, x)
    naive = 0.0
    for i in range(n):
        for j in range(i + 1, n):
            naive -= m[i] * m[j] / abs(x[j, 0] - x[i, 0])
    assert abs(naive / exact - 1.0) > 1e-15  # the plain sum is off ...
    assert energy.potential(m, x) == pytest.approx(exact, rel=4e-16)  # ... the compensated not


def test_momenta_are_exact_sums():
    m = np.array([1.0, 1e-20, 1.0])
    v = np.array([[1.0, 0, 0], [1.0, 0, 0], [-1.0, 0, 0]])
    assert energy.momentum(m, v)[0] == 1e-20  # naive summation gives 0
    x = np.array([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    np.testing.assert_array_equal(energy.angular_momentum(m, x, v), [0.0, 0.0, -1.0 - 1e-20])


# --------------------------------------------------------------------------- the run


def _run(capsys, *args):
    status = drift_main([str(a) for a in args])
    out = capsys.readouterr()
    return status, out.out, out.err


def test_exact_backends_agree_conserve_momentum_and_files_are_complete(tmp_path, capsys):
    js, csv_path, png, states = (tmp_path / f for f in ("r.json", "r.csv", "r.png", "states"))
    plot = ["--plot", png] if HAVE_MPL else []
    status, out, _ = _run(
        capsys, "--n", 150, "--steps", 12, "--dt", 0.01, "--softening", 0.02, "--seed", 5,
        "--backends", "numpy", "numba", "numba_parallel", "tree",
        "--setting", "tree:theta=0.9", "--setting", "numba_parallel:precision=float32",
        "--json", js, "--csv", csv_path, "--save", states, "--quiet", *plot,
    )  # fmt: skip
    assert status == 0
    doc = json.loads(js.read_text())
    labels = [r["label"] for r in doc["rows"]]
    assert labels == [
        "numpy", "numba", "numba_parallel", "numba_parallel (float32)", "tree",
        "tree (theta=0.9)",
    ]  # fmt: skip
    for key in ("date", "machine", "python", "libraries", "settings", "not_run"):
        assert key in doc  # compare's machine header and the run's settings
    assert doc["settings"]["softening"] == 0.02 and doc["settings"]["steps"] == 12
    schema = {
        "backend", "label", "settings", "seconds_per_step", "energy_error_final",
        "energy_error_max", "momentum_error", "angular_momentum_error", "position_rms",
        "state_file",
    }  # fmt: skip
    rows = {r["label"]: r for r in doc["rows"]}
    for r in doc["rows"]:
        assert schema <= set(r) and r["status"] == "ok"
        assert r["seconds_per_step"] > 0 and 0 < r["backend_share"] <= 1
        assert r["energy_error_max"] >= r["energy_error_final"] >= 0
    assert rows["tree (theta=0.9)"]["settings"] == {"theta": 0.9}
    assert rows["numba_parallel (float32)"]["settings"] == {"precision": "float32"}
    # exact rows: momentum to rounding, the same trajectory and energy as the reference
    for label in ("numpy", "numba", "numba_parallel"):
        r = rows[label]
        assert r["momentum_error"] < 1e-14 and r["angular_momentum_error"] < 1e-14
        assert r["position_rms"] < 1e-13 and r["reference"] == "numpy"
        assert r["energy_final"] == pytest.approx(rows["numpy"]["energy_final"], rel=1e-13)
    assert rows["numpy"]["position_rms"] == 0.0
    # approximate and float32 rows are measurably off the exact trajectory, and the tree
    # does not conserve momentum to rounding
    assert rows["tree (theta=0.9)"]["position_rms"] > 1e-8
    assert rows["tree (theta=0.9)"]["momentum_error"] > 1e-10
    assert 1e-13 < rows["numba_parallel (float32)"]["position_rms"] < 1e-4
    # the saved states: the initial one, each row's final one, energies recomputed apart
    init = np.load(doc["initial_state"])
    e0 = energy.kinetic_fsum(init["masses"], init["velocities"]) + energy.potential_fsum(
        init["masses"], init["positions"], 0.02
    )
    assert e0 == pytest.approx(doc["initial"]["energy"], rel=1e-15)
    for r in doc["rows"]:
        with np.load(r["state_file"]) as f:
            assert set(f.files) == {"masses", "positions", "velocities"}
            m, x, v = f["masses"], f["positions"], f["velocities"]
        assert x.shape == v.shape == (150, 3)
        e = energy.kinetic_fsum(m, v) + energy.potential_fsum(m, x, 0.02)
        assert e == pytest.approx(r["energy_final"], rel=1e-15)
        assert abs(e / e0 - 1.0) == pytest.approx(r["energy_error_final"], rel=1e-9, abs=1e-16)
    assert len(list(states.iterdir())) == 7
    # the table shows every row; the CSV has one line per row
    for label in labels:
        assert label in out
    lines = csv_path.read_text().splitlines()
    assert len(lines) == 7 and lines[0].startswith("backend,label,settings")
    if HAVE_MPL:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_input_state_round_trip(tmp_path, capsys):
    state = plummer.State(
        np.array([0.5, 0.3, 0.2]),
        np.array([[1.0, 0.0, 0.0], [-1.0, 0.2, 0.0], [0.0, 1.0, 0.5]]),
        np.array([[0.0, 0.3, 0.0], [0.0, -0.4, 0.1], [0.1, 0.0, 0.0]]),
    )
    src = tmp_path / "in.npz"
    plummer.save_state(src, state)
    js = tmp_path / "r.json"
    status, out, _ = _run(
        capsys, "--input", src, "--steps", 3, "--dt", 1e-3, "--backends", "numpy",
        "--json", js, "--quiet",
    )  # fmt: skip
    assert status == 0 and str(src) in out
    doc = json.loads(js.read_text())
    e0 = energy.kinetic_fsum(state.masses, state.velocities) + energy.potential_fsum(
        state.masses, state.positions
    )
    assert doc["initial"]["energy"] == pytest.approx(e0, rel=1e-15)
    assert doc["settings"]["input"] == str(src) and doc["initial_state"] is None


def test_failing_and_wrong_backends_are_reported_and_the_others_stand(tmp_path):
    js = tmp_path / "r.json"
    proc = child("--n", 60, "--steps", 20, "--dt", 0.01, "--softening", 0.05,
                 "--backends", "numpy", "raises", "wrong", "--json", js)  # fmt: skip
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    doc = json.loads(js.read_text())
    rows = {r["label"]: r for r in doc["rows"]}
    assert rows["numpy"]["status"] == "ok" and rows["raises"]["status"] == "failed"
    assert "deliberate failure" in rows["raises"]["message"]
    assert "FAILED: raises" in out and "Traceback" not in err
    # a backend whose forces are twice too strong: energy is not conserved, and it shows
    assert rows["wrong"]["status"] == "ok"
    assert rows["wrong"]["energy_error_max"] > 100 * rows["numpy"]["energy_error_max"]
    assert rows["wrong"]["position_rms"] > 1e-5


def test_max_step_leaves_out_slow_backends_unless_named(tmp_path, capsys, monkeypatch):
    # a registry of two: numpy and compare's test backend "slow" (0.3 s a call)
    spec = backends._Spec("compare_test_backends:accel_slow", "test: slow")
    monkeypatch.setattr(backends, "_REGISTRY", {"numpy": backends._REGISTRY["numpy"], "slow": spec})
    js = tmp_path / "r.json"
    common = ["--n", 20, "--steps", 2, "--max-step", 0.1, "--json", js, "--quiet"]
    status, out, _ = _run(capsys, *common)  # the default selection: every backend
    doc = json.loads(js.read_text())
    assert status == 0 and [r["label"] for r in doc["rows"]] == ["numpy"]
    assert "over --max-step 0.1 s" in doc["not_run"]["slow"]
    assert "not run: slow: one force evaluation takes 0.3" in out
    status, out, _ = _run(capsys, *common, "--backends", "numpy", "slow")  # named: it runs
    doc = json.loads(js.read_text())
    assert status == 0 and [r["label"] for r in doc["rows"]] == ["numpy", "slow"]


@pytest.mark.parametrize(
    ("sig", "status"),
    [(signal.SIGINT, 130), pytest.param(signal.SIGTERM, 143, marks=pytest.mark.slow)],
)
def test_interrupt_reports_the_rows_finished_so_far(tmp_path, sig, status):
    js, states = tmp_path / "r.json", tmp_path / "s"
    proc = child("--n", 40, "--steps", 200, "--backends", "numpy", "slow", "--json", js,
                 "--save", states)  # fmt: skip
    try:
        for line in proc.stderr:  # progress lines off a terminal: wait for the second row
            if "[2/2] slow" in line:
                break
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == status, err
    assert "Traceback" not in err and "interrupted" in err
    doc = json.loads(js.read_text())
    assert [r["label"] for r in doc["rows"]] == ["numpy"]
    assert doc["interrupted"].startswith("slow ") and "left out" in doc["interrupted"]
    assert "INTERRUPTED" in out and "numpy" in out
    assert sorted(p.name for p in states.iterdir()) == ["01-numpy.npz", "initial.npz"]


# --------------------------------------------------------------------------- bad input


def _npz(path, **arrays):
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


BAD = [
    (["--dt", "0"], "--dt: must be a positive number; got '0'"),
    (["--dt", "-0.1"], "--dt: must be a positive number"),
    (["--dt", "nan"], "--dt: must be a positive number; got 'nan'"),
    (["--dt", "inf"], "--dt: must be a positive number; got 'inf'"),
    (["--steps", "0"], "--steps: must be a positive integer; got '0'"),
    (["--dt", "1e-310"], "one crossing time would take inf steps; give --steps"),
    (["--n", "1e15"], "particles are more than this machine can hold"),
    (["--n", "1"], "--n: must be at least 2"),
    (["--softening", "-1"], "--softening: must be a finite number >= 0"),
    (["--energy-every", "0"], "--energy-every: must be a positive integer"),
    (["--backends", "nope"], "unknown backend 'nope'; valid names are: python, numpy"),
    (["--setting", "nope:x=1"], "--setting 'nope:x=1': unknown backend 'nope'"),
    (["--setting", "tree:theta=-1"], "theta must be finite and >= 0"),
    (["--setting", "tree:nope=1"], "backend 'tree' has no option 'nope'"),
    (["--input", "{tmp}/missing.npz"], "--input '{tmp}/missing.npz': no such file"),
    (["--input", "{nokey}"], "missing key velocities"),
    (["--input", "{shape}"], "velocities must have shape (N, 3) = (3, 3); got (3, 2)"),
    (["--input", "{one}"], "needs N >= 2 particles; got 1"),
    (["--input", "{shape}", "--n", "5"], "give --n or --input, not both"),
    (["--plot", "{tmp}/figure.txt"], "must end in .png, .svg or .pdf"),
    (["--csv", "{tmp}/r.json"], "--csv and --json are the same file"),
]


@pytest.mark.parametrize(("args", "message"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_exits_2_before_any_work(tmp_path, capsys, args, message):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    m, x = np.ones(3), np.zeros((3, 3))
    subst = {
        "{tmp}": str(tmp_path / "out"),
        "{nokey}": str(_npz(inputs / "nokey.npz", masses=m, positions=x)),
        "{shape}": str(_npz(inputs / "s.npz", masses=m, positions=x, velocities=x[:, :2])),
        "{one}": str(_npz(inputs / "one.npz", masses=m[:1], positions=x[:1], velocities=x[:1])),
    }
    (tmp_path / "out").mkdir()

    def fill(text):
        for k, val in subst.items():
            text = text.replace(k, val)
        return text

    argv = ["--backends", "numpy", "--json", str(tmp_path / "out" / "r.json"), *map(fill, args)]
    with pytest.raises(SystemExit) as exc:
        drift_main(argv)
    err = capsys.readouterr()
    assert exc.value.code == 2
    assert err.err.startswith("usage: python -m backends drift")
    assert fill(message) in err.err.splitlines()[-1]
    assert err.out == ""
    assert list((tmp_path / "out").iterdir()) == []  # nothing written, nothing run


@pytest.mark.skipif(
    backends.unavailable_reason("fmm3d") is not None, reason="fmm3dpy is not installed"
)
def test_a_peer_without_softening(capsys):
    with pytest.raises(SystemExit) as exc:
        drift_main(["--backends", "fmm3d", "--softening", "0.1", "--n", "10"])
    assert exc.value.code == 2
    assert "softening must be 0 for backend 'fmm3d'" in capsys.readouterr().err


def test_the_command_line_dispatches_and_exits_2():
    r = subprocess.run(
        [sys.executable, "-m", "backends", "drift", "--dt", "0"],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.splitlines()[-1].endswith("--dt: must be a positive number; got '0'")
    from backends.compare.args import build_parser

    text = build_parser().format_help()
    assert "python -m backends COMMAND --help" in text
    assert re.search(r"^  drift +a leapfrog run", text, re.M)
    assert re.search(r"^  frontier +the fastest backend", text, re.M)


# --------------------------------------------------------------------------- progress


def test_progress_bar_shows_steps_rate_and_time_left():
    stream = io.StringIO()  # not a terminal: a line at the start, then at most every 15 s
    bar = Bar(False, stream)
    bar.start("tree (theta=0.8)", 100, 2, 3)
    bar._shown -= 20.0
    bar.update(25, 5.0)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "drift: [2/3] tree (theta=0.8): 100 steps"
    assert "25/100 steps, 5 steps/s, 15 s left" in lines[1]
    quiet = io.StringIO()
    bar = Bar(True, quiet)
    bar.start("numpy", 10, 1, 1)
    bar.update(10, 1.0)
    assert quiet.getvalue() == ""


def test_load_state_names_what_is_wrong(tmp_path):
    bad = _npz(tmp_path / "b.npz", masses=-np.ones(2), positions=np.zeros((2, 3)),
               velocities=np.zeros((2, 3)))  # fmt: skip
    with pytest.raises(ValueError, match="masses must be >= 0"):
        plummer.load_state(bad)
    nan = _npz(tmp_path / "n.npz", masses=np.ones(2), positions=np.full((2, 3), np.nan),
               velocities=np.zeros((2, 3)))  # fmt: skip
    with pytest.raises(ValueError, match="positions must be finite"):
        plummer.load_state(nan)
    junk = tmp_path / "junk.npz"
    junk.write_text("not a zip")
    with pytest.raises(ValueError, match="not a readable .npz"):
        plummer.load_state(junk)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--steps", "1e300"], "--steps: must be at most 10000000"),
        (["--dt", "1e308"], "--dt: must be at most 1e+150"),
    ],
)
def test_absurd_steps_and_dt_are_refused_up_front(args, message):
    r = subprocess.run(
        [sys.executable, "-m", "backends", "drift", "--n", "100", "--backends", "numpy", *args],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr
    assert "RuntimeWarning" not in r.stderr
