"""Faults found by a fuzzing pass, each kept as a regression test on every backend it touches.

* Read-only, memory-mapped, non-contiguous, byte-swapped and non-float64 inputs work on every
  backend (the contract converts once, at the door) and give the same answer as plain arrays.
* ``precision=`` follows one rule on every backend and door (the contract's
  ``check_precision``).
* ``compare`` checks every ``--setting`` with the backend's own checks, ``--n`` against the
  machine's memory and every output file by opening it, before any work (exit 2, one line).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import backends

ROOT = Path(__file__).resolve().parents[1]
ALL = backends.names()


def _usable(name):
    reason = backends.unavailable_reason(name)
    if reason is not None:
        pytest.skip(reason)
    return backends.get(name)


def _system(n=50, seed=3):
    rng = np.random.default_rng(seed)
    return rng.random(n) + 0.1, rng.random((n, 3))


def _layouts(m, x, tmp_path):
    """``(label, masses, positions)``: the same system in the layouts a user may hand over."""
    ro_m, ro_x = m.copy(), x.copy()
    ro_m.flags.writeable = False
    ro_x.flags.writeable = False
    yield "read-only", ro_m, ro_x
    for mode in ("r", "c", "r+"):
        paths = tmp_path / f"m-{mode}.npy", tmp_path / f"x-{mode}.npy"
        np.save(paths[0], m)
        np.save(paths[1], x)
        yield f"memmap {mode}", np.load(paths[0], mmap_mode=mode), np.load(paths[1], mmap_mode=mode)
    raw = tmp_path / "x.raw"
    x.tofile(raw)
    yield "np.memmap r", m, np.memmap(raw, dtype=np.float64, mode="r", shape=x.shape)
    yield "Fortran order", m, np.asfortranarray(x)
    wide = np.zeros((2 * len(m), 6))
    wide[::2, 1::2] = x
    wide_m = np.zeros(3 * len(m))
    wide_m[::3] = m
    yield "strided", wide_m[::3], wide[::2, 1::2]
    yield "reversed view", m[::-1][::-1], x[:, ::-1][:, ::-1]
    yield "big-endian", m.astype(">f8"), x.astype(">f8")
    ro_sw = x.astype(">f8")
    ro_sw.flags.writeable = False
    yield "read-only big-endian", m, ro_sw
    yield "lists", m.tolist(), x.tolist()


@pytest.mark.parametrize("name", ALL)
def test_every_input_layout_gives_the_plain_answer(name, tmp_path):
    b = _usable(name)
    m, x = _system()
    expected = b.accel(m, x)
    for label, mm, xx in _layouts(m, x, tmp_path):
        before = np.array(xx, copy=True), np.array(mm, copy=True)
        got = b.accel(mm, xx)
        assert isinstance(got, np.ndarray) and got.dtype == np.float64 and got.shape == x.shape
        assert got.flags.writeable and got.flags.c_contiguous, label
        err = backends.relative_error(got, expected)
        assert err <= 1e-13, f"{name}, {label}: differs from the plain arrays' result by {err:.2e}"
        np.testing.assert_array_equal(np.asarray(xx), before[0], err_msg=label)
        np.testing.assert_array_equal(np.asarray(mm), before[1], err_msg=label)


def test_nearest_takes_every_input_layout(tmp_path):
    m, x = _system()
    expected = backends.accel_nearest(m, x, k=8)
    for label, mm, xx in _layouts(m, x, tmp_path):
        got = backends.accel_nearest(mm, xx, k=8)
        assert backends.relative_error(got, expected) <= 1e-13, label


# --- precision=: one rule on every backend (backends._contract.check_precision) -----------

BAD_PRECISIONS = [None, "float16", "FLOAT32", " float32", "double", np.float32, 32, b"float32"]


@pytest.mark.parametrize("name", ALL)
def test_precision_follows_one_rule_on_every_backend(name):
    b = _usable(name)
    m, x = _system(20)
    has32 = "float32" in backends.precisions(name)
    for bad in BAD_PRECISIONS:
        for call in (
            lambda p: b.accel(m, x, precision=p),
            lambda p: backends.accel(m, x, backend=name, precision=p),
            lambda p: backends.tolerance(name, precision=p),
        ):
            with pytest.raises(ValueError, match=r"precision must be one of 'float64', 'float32'"):
                call(bad)
    np.testing.assert_array_equal(b.accel(m, x, precision="float64"), b.accel(m, x))
    assert backends.tolerance(name, precision="float64") == backends.tolerance(name)
    if has32:
        assert b.accel(m, x, precision="float32").dtype == np.float64
        assert backends.tolerance(name, precision="float32") >= backends.tolerance(name)
    else:
        for call in (
            lambda: b.accel(m, x, precision="float32"),
            lambda: backends.tolerance(name, precision="float32"),
        ):
            with pytest.raises(ValueError, match=r"not a mode of backend .*numba_parallel"):
                call()


# --- compare: every --setting is checked by the backend's own checks before any work -------

BAD_SETTINGS = [
    ("tree:theta=-1", "theta must be finite and >= 0; got -1"),
    ("tree:theta=abc", "theta must be a real number"),
    ("tree:nope=1", "backend 'tree' has no option 'nope'; its options are: theta"),
    ("tree:quadrupole=2", "quadrupole must be True or False"),
    ("tree:leaf_size=0", "leaf_size must be >= 1"),
    ("tree:precision=float32", "precision='float32' is not a mode of backend 'tree'"),
    ("tree:softening=0.1", "softening is the system's, not a setting"),
    ("numpy:block=0", "block must be a positive integer"),
    ("numpy:precision=none", "precision must be one of 'float64', 'float32'"),
    ("numba:block=4", "backend 'numba' has no option 'block'; its options are: precision"),
    ("numba_parallel:precision=float16", "precision must be one of"),
    ("jax:block=-3", "block must be a positive integer"),
    ("jax:device=nowhere", "no such JAX device here"),
    ("multiprocessing:n_workers=0", "n_workers must be"),
    ("multiprocessing:n_workers=1000000", "n_workers must be at most"),
    ("joblib:n_workers=9223372036854775808", "n_workers must be at most"),
    ("tree:theta=0.5,theta=0.7", "option 'theta' is given twice"),
    ("joblib:prefer=nope", "prefer"),
    ("joblib:chunks=1.5", "chunks must be"),
    ("pytreegrav_tree:theta=2", "theta must be in (0, 1]"),
    ("fmm3d:eps=0", "eps"),
]


@pytest.mark.parametrize(("text", "message"), BAD_SETTINGS)
def test_check_options_rejects_what_the_backend_rejects(text, message):
    from backends.compare import args

    name = text.partition(":")[0]
    _usable(name)
    with pytest.raises(ValueError, match=re.escape(message)):
        args.parse_setting(text)


def test_check_options_accepts_good_settings_without_running_anything():
    from backends.compare import args

    for text in (
        "numpy:block=64",
        "tree:theta=0.5,quadrupole=true",
        "numba_parallel:precision=float32",
    ):
        name, options = args.parse_setting(text)
        assert name == text.partition(":")[0] and options
        args.check_options(name, options)


def _compare(*argv, tmp_path):
    """``python -m backends compare ARGV`` in a fresh interpreter, in ``tmp_path``."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "backends", "compare", *argv],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--setting", "tree:theta=-1"], "theta must be finite and >= 0"),
        (["--setting", "tree:nope=1"], "has no option 'nope'"),
        (["--setting", "numpy:block=0"], "block must be a positive integer"),
        (["--n", "1e20"], "more than this machine can hold"),
        (["--n", "1e400"], "must be a positive integer"),
        (["--json", "/proc/version"], "cannot be written"),
    ],
)
def test_compare_refuses_bad_arguments_before_any_work(
    argv, message, tmp_path, capsys, monkeypatch
):
    from backends.compare import main

    monkeypatch.chdir(tmp_path)  # compare-out/ or any stray file would land here
    with pytest.raises(SystemExit) as exit_:
        main(["compare", "--n", "50", "--backends", "numpy", "tree", *argv])
    out, err = capsys.readouterr()
    assert exit_.value.code == 2 and out == "" and list(tmp_path.iterdir()) == []
    errors = [line for line in err.splitlines() if line.startswith("python -m backends")]
    assert len(errors) == 1 and message in errors[0], err


def test_compare_refuses_a_bad_setting_in_a_fresh_interpreter(tmp_path):
    r = _compare("--n", "50", "--setting", "tree:theta=-1", tmp_path=tmp_path)
    assert r.returncode == 2 and r.stdout == "" and list(tmp_path.iterdir()) == []
    assert "theta must be finite and >= 0" in r.stderr.splitlines()[-1]


# --- jax: an explicit block is capped at what N needs, or refused with its cost -------------

JAX_PEAK = """
import resource, sys
import backends
m, x = backends.benchmark_system(int(sys.argv[1]))
b = backends.get("jax")
b.accel(m, x)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
b.accel(m, x, block=int(sys.argv[2]))
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
"""


@pytest.mark.parametrize(
    ("n", "block"), [(10, 4096), pytest.param(3, 100_000, marks=pytest.mark.slow)]
)
def test_jax_large_block_costs_no_more_than_n_needs(n, block):
    _usable("jax")
    r = subprocess.run(
        [sys.executable, "-c", JAX_PEAK, str(n), str(block)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    grown_mb = float(r.stdout.split()[-1])
    assert grown_mb < 50, f"block={block} at N = {n} raised peak memory by {grown_mb:.0f} MB"


def test_jax_block_is_refused_with_its_cost_when_it_cannot_fit():
    b = _usable("jax")
    m, x = backends.benchmark_system(200_000)
    with pytest.raises(ValueError, match=r"block=65536 at N = 200000 needs about .* GiB"):
        b.accel(m, x, block=65536)
    small_m, small_x = backends.benchmark_system(10)
    np.testing.assert_allclose(b.accel(small_m, small_x, block=4096), b.accel(small_m, small_x))


# --- float32: the float64 answer to FLOAT32_TOLERANCE, or float64's own error; never NaN -----

FLOAT32 = [name for name in ALL if "float32" in backends.precisions(name)]
# float32 with hi + lo coordinates and the float64 repair of close rows (cuda keeps plain float32
# coordinates: a partner closer than ~1e-3 of the extent is beyond it, as docs/jax_cuda.md says)
FLOAT32_SPLIT = [name for name in FLOAT32 if name != "cuda"]


def _float32_matches_float64(b, m, x, softening=0.0, label=""):
    try:
        ref = b.accel(m, x, softening=softening)
    except FloatingPointError:
        with pytest.raises(FloatingPointError):
            b.accel(m, x, softening=softening, precision="float32")
        return
    got = b.accel(m, x, softening=softening, precision="float32")
    assert np.isfinite(got).all(), f"{b.name} {label}: non-finite float32 result"
    err = backends.relative_error(got, ref)
    assert err <= backends.FLOAT32_TOLERANCE, f"{b.name} {label}: float32 error {err:.2e}"


@pytest.mark.parametrize("name", FLOAT32)
@pytest.mark.parametrize("size", [1e-150, 1e-5, 1.0, 1e7, 1e150])
def test_float32_with_softening_far_above_the_system(name, size):
    b = _usable(name)
    m, x = _system(40, seed=7)
    x = x * size
    for ratio in (1e-3, 1.0, 1e6, 1e15, 1e19, 1e25, 1e38, 1e60, 1e120, 1e250):
        softening = ratio * size
        if not np.isfinite(softening) or softening > 1e300:
            continue
        _float32_matches_float64(b, m, x, softening, f"size {size:g}, softening {softening:g}")


def _wide(n, decades, seed):
    rng = np.random.default_rng(seed)
    sign = np.sign(rng.standard_normal((n, 3)))
    return rng.random(n) + 0.01, sign * 10.0 ** rng.uniform(-decades, decades, (n, 3))


@pytest.mark.parametrize("name", FLOAT32_SPLIT)
@pytest.mark.parametrize("decades", [4, 8, 12, 20, 40, 140])
def test_float32_on_a_system_spanning_many_decades(name, decades):
    b = _usable(name)
    for seed in range(3):
        m, x = _wide(40, decades, seed)
        _float32_matches_float64(b, m, x, 0.0, f"1e-{decades} to 1e{decades}, seed {seed}")


@pytest.mark.parametrize("name", FLOAT32_SPLIT)
def test_float32_tight_binaries_in_a_cluster(name):
    b = _usable(name)
    m, x = backends.benchmark_system(300, seed=5)
    for k, gap in enumerate((1e-6, 1e-9, 1e-12, 1e-15)):  # 1e-15: a few ulp of x ~ 1
        x[2 * k + 1] = x[2 * k] + gap * np.array([0.6, -0.8, 0.0])
    x[8] = 0.0  # at the origin, where float64 holds a gap of 1e-30 (next to x ~ 1 it rounds
    x[9] = 1e-30 * np.array([0.6, -0.8, 0.0])  # away: the pair would merely coincide)
    _float32_matches_float64(b, m, x, 0.0, "binaries")
    _float32_matches_float64(b, m, x + 1e6, 0.0, "binaries far from the origin")


# --- text that went stale -------------------------------------------------------------------


@pytest.mark.parametrize(("exact", "scaling"), [(True, "N(N-1) scaling"), (False, "N log N")])
def test_skip_footnote_names_the_scaling_that_predicted_it(exact, scaling):
    from types import SimpleNamespace

    from backends.compare.report import Row
    from backends.compare.runner import Runner

    previous = Row("b", "b", 1000, "ok", best_s=1.0, exact=exact)
    row = Row("b", "b", 100_000, "ok", exact=exact)
    stub = SimpleNamespace(args=SimpleNamespace(max_call=0.5))
    assert Runner._skip(stub, row, previous)
    assert row.status == "skipped" and f"predicted by {scaling}" in row.message, row.message


def test_history_table_lists_the_recorded_commits():
    import json

    text = (ROOT / "docs" / "history.md").read_text()
    table = text.split("Recorded so far:", 1)[1].split("\n\n", 2)[1]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    listed = {}
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        machine, commits = cells[0].strip("`"), cells[2]
        listed[machine] = (int(commits.split()[0]), set(re.findall(r"`([0-9a-f]{7})`", commits)))
    results = ROOT / "benchmarks" / "results"
    for folder in sorted(p for p in results.iterdir() if (p / "machine.json").is_file()):
        recorded = {
            json.loads(f.read_text())["commit_hash"][:7]
            for f in folder.glob("*.json")
            if f.name != "machine.json"
        }
        if not recorded:
            continue
        count, hashes = listed[folder.name]
        assert hashes == recorded and count == len(recorded), (
            f"docs/history.md lists {count} commits {sorted(hashes)} for {folder.name}; "
            f"benchmarks/results holds {len(recorded)}: {sorted(recorded)}"
        )


def test_history_page_lists_every_asv_module():
    text = (ROOT / "docs" / "history.md").read_text()
    modules = sorted(p.stem for p in (ROOT / "benchmarks").glob("bench_*.py"))
    missing = [m for m in modules if f"| `{m}` |" not in text]
    assert not missing, f"docs/history.md's table of what is measured lacks {missing}"


def test_compare_page_list_example_matches_the_registry():
    import io

    from backends.compare import list_backends

    text = (ROOT / "docs" / "compare.md").read_text()
    block = text.split("$ python -m backends list\n", 1)[1].split("```", 1)[0]
    shown = [line.split(None, 3) for line in block.splitlines()[1:] if line.split()]
    shown = [row for row in shown if not row[0].startswith("mpiexec")]
    assert [row[0] for row in shown] == backends.names(), "rerun `python -m backends list`"
    live = io.StringIO()
    list_backends(live)
    current = {row.split(None, 1)[0]: row.split(None, 3) for row in live.getvalue().splitlines()}
    for name, available, kind, text_ in shown:
        assert kind == current[name][2], f"{name}: kind {kind!r}, now {current[name][2]!r}"
        if available == "yes":
            assert text_ == backends._REGISTRY[name].description, name


# --- the compare figure: what is drawn, and only that, readable on white -------------------


def _rows():
    from backends.compare.report import Row

    def row(name, n, status="ok", t=None, exact=True, **kw):
        return Row(name, name, n, status, best_s=t, median_s=t, exact=exact, **kw)

    return [
        row("python", 100, t=0.5, speedup_vs_python=1.0, error=0.0, error_rms=1e-16),
        row("python", 1000, t=50.0, speedup_vs_python=1.0, error=0.0, error_rms=1e-16),
        row("numpy", 100, t=0.01, speedup_vs_python=50.0, speedup_vs_numpy=1.0, error_rms=1e-16),
        row("numpy", 1000, "skipped", message="predicted over --max-call"),
        row("jax", 100, t=0.001, speedup_vs_python=500.0, speedup_vs_numpy=10.0, error_rms=2e-16),
        row("jax", 1000, t=0.1, speedup_vs_python=500.0, error_rms=2e-16),
        row("tree", 100, t=0.002, exact=False, speedup_vs_python=250.0, error_rms=1e-3),
        row("tree", 1000, t=0.02, exact=False, speedup_vs_python=2500.0, error_rms=1e-3),
    ]


def _texts(fig):
    out = [fig._suptitle.get_text()] if fig._suptitle else []
    for ax in fig.axes:
        out += [ax.get_title(), *(t.get_text() for t in ax.texts)]
        legend = ax.get_legend()
        if legend is not None:
            out += [t.get_text() for t in legend.get_texts()] + [legend.get_title().get_text()]
    return out


def test_compare_figure_mentions_only_what_it_draws_and_names_what_it_skipped():
    pytest.importorskip("matplotlib")
    from backends.compare import plots

    rows = _rows()
    fig = plots.build_figure(rows, "title")
    texts = _texts(fig)
    assert not any("hollow: python" in t for t in texts), "no python point is extrapolated"
    assert "vs numpy" not in texts, "no bar compares with numpy at N = 1,000"
    assert "vs python" in texts
    assert any("numpy skipped at N = 1,000" in t for t in texts), texts
    rows[1].status = "extrapolated"  # now python's point at 1000 is hollow: say so
    assert any("hollow: python extrapolated" in t for t in _texts(plots.build_figure(rows, "t")))


def test_compare_figure_colours_are_readable_on_white():
    pytest.importorskip("matplotlib")
    from backends.compare import plots

    for count in (2, 5, len(backends.names()), 30):
        styles = plots._styles([f"b{i}" for i in range(count)])
        worst = min(plots.contrast(st["color"]) for st in styles.values())
        assert worst >= plots.MIN_CONTRAST, f"{count} backends: contrast {worst:.2f} on white"


def test_readme_says_the_asv_site_needs_the_internet_where_it_does():
    import importlib.util

    spec = importlib.util.find_spec("asv")
    if spec is None:
        pytest.skip("asv is not installed")
    page = Path(spec.origin).parent / "www" / "index.html"
    remote = re.findall(r'src="(https?://[^"]+)"', page.read_text())
    readme = (ROOT / "README.md").read_text()
    if remote:  # asv's site loads scripts from the internet: the README must say so
        assert "asv preview" in readme and "internet" in readme.split("asv preview", 1)[1][:600]
