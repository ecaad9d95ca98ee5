"""Backend ``cuda``: the tiled kernel on a real GPU where there is one, else on Numba's simulator.

Without a GPU the cases run in ONE child process started with ``NUMBA_ENABLE_CUDASIM=1`` (this
file is its script), so the simulator never leaks into the other tests of this session. Where
``backends.unavailable_reason("cuda")`` is None in this process (an NVIDIA GPU with numba-cuda,
or a session started with the simulator on), the same cases run in-process against it.
N is small and never a multiple of the tile: the simulator runs each GPU thread as a Python
thread.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

try:  # the child process runs this file as a script: tests/ is then on sys.path anyway
    from conftest import random_system
except ImportError:  # pragma: no cover
    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import random_system

import backends
from backends import reference

TOL = {"float64": 1e-12, "float32": 1e-5}

# (kind, n, precision, softening, G, tile); tile None = the backend's default
CASES = [
    ("random", n, precision, 0.0, 1.0, None)
    for n in (1, 2, 31, 33, 70)
    for precision in ("float64", "float32")
] + [
    ("random", 33, "float64", 0.05, 4.3e-3, None),
    ("random", 33, "float32", 0.05, 4.3e-3, None),
    ("coincident", 31, "float64", 0.0, 6.674e-11, None),
    ("coincident", 31, "float32", 0.0, 6.674e-11, None),
    ("far", 20, "float64", 0.0, 1.0, None),
    ("random", 6, "float64", 0.0, 1.0, 1),
    ("random", 33, "float64", 0.0, 1.0, 32),
    ("random", 33, "float32", 0.01, 1.0, 5),
    # float32 at any scale: positions of 1e-13 raised a false FloatingPointError, of 1e13 or
    # a softening of 1e15 gave zeros (power-of-two scaling, or float64 where float32 fails)
    ("tiny", 20, "float32", 0.0, 1.0, None),
    ("huge", 20, "float32", 0.0, 1.0, None),
    ("random", 20, "float32", 1e15, 1.0, None),
    ("random", 20, "float32", 1e40, 1.0, None),
]


def _case_id(case) -> str:
    kind, n, precision, softening, G, tile = case
    return f"{kind}-n{n}-{precision}-eps{softening}-G{G}-tile{tile}"


def _system(kind, n):
    if kind == "random":
        return random_system(n, seed=n)
    if kind == "coincident":  # several particles on top of each other, plus zero masses
        m, x = random_system(n, seed=n + 1)
        x[1::3] = x[0]
        m[2::4] = 0.0
        return m, x
    if kind == "far":
        return random_system(n, seed=n + 2, offset=1e6)
    if kind in ("tiny", "huge"):
        return random_system(n, seed=n + 3, spread=1e-13 if kind == "tiny" else 1e20)
    raise AssertionError(kind)


def compute(cases) -> dict:
    """Run every case on the ``cuda`` backend; return ``{case id: result summary}``."""
    b = backends.get("cuda")
    out = {}
    for case in cases:
        kind, n, precision, softening, G, tile = case
        m, x = _system(kind, n)
        a = b.accel(m, x, G, softening=softening, precision=precision, tile=tile)
        ref = reference.accel(m, x, G, softening=softening)
        out[_case_id(case)] = {
            "error": backends.relative_error(a, ref),
            "shape": list(a.shape),
            "dtype": str(a.dtype),
            "finite": bool(np.isfinite(a).all()),
        }
    from backends.cuda_tiled import simulating

    return {"simulator": simulating(), "results": out}


def _repo_root() -> str:
    return str(Path(backends.__file__).resolve().parent.parent)


@pytest.fixture(scope="module")
def results():
    """Every case, on the device in-process if there is one, else in a simulator child."""
    if backends.unavailable_reason("cuda") is None:
        return compute(CASES)
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_repo_root(), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, __file__],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"simulator child failed:\n{proc.stdout}\n{proc.stderr}"
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["simulator"] is True
    return out


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_tiled_kernel_agrees_with_oracle(results, case):
    r = results["results"][_case_id(case)]
    n, precision = case[1], case[2]
    assert r["shape"] == [n, 3] and r["dtype"] == "float64" and r["finite"]
    assert r["error"] <= TOL[precision], r


def test_simulator_does_not_leak_into_this_process(results):
    assert "NUMBA_ENABLE_CUDASIM" not in os.environ or results["simulator"]
    from numba.core import config

    assert bool(config.ENABLE_CUDASIM) == (os.environ.get("NUMBA_ENABLE_CUDASIM") == "1")


def test_unavailable_here_says_what_is_needed():
    reason = backends.unavailable_reason("cuda")
    if reason is None:
        pytest.skip("a CUDA GPU (or the simulator) is usable in this process")
    assert "NVIDIA GPU" in reason and "pip install 'nbody-backends[cuda]'" in reason
    assert "cuda" not in backends.available()
    with pytest.raises(backends.BackendUnavailableError, match=r"nbody-backends\[cuda\]"):
        backends.get("cuda")
    from backends import cuda_tiled

    with pytest.raises(backends.BackendUnavailableError, match="NVIDIA GPU"):
        cuda_tiled.accel([1.0, 1.0], [[0, 0, 0], [1, 0, 0]])


_PROBE = """
import sys
import numpy as np
if sys.argv[1] == "break":  # as NumPy 2.5 is for numba-cuda 0.30.4: np.row_stack is gone
    del np.row_stack
from backends import cuda_tiled
print(repr(cuda_tiled._compiler_reason()))
"""


@pytest.mark.parametrize("numpy_state", ["as installed", "break"])
def test_a_numpy_the_cuda_compiler_cannot_load_makes_cuda_unavailable_with_the_reason(
    numpy_state,
):
    # On a GPU machine whose NumPy (2.5) lacked np.row_stack, numba-cuda 0.30.4 raised
    # AttributeError from deep inside its compiler at the first launch. The probe that
    # unavailable_reason runs once a GPU is found must turn that into a reason instead.
    # With NumPy 2.5 installed (Python >= 3.12 without the cuda extra's pin) the NumPy as
    # installed is itself the broken case.
    pytest.importorskip("numba_cuda")
    has_row_stack = hasattr(np, "row_stack")
    if numpy_state == "break" and not has_row_stack:
        pytest.skip("this NumPy has no np.row_stack to remove: 'as installed' covers it")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, numpy_state],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).parents[1],
        timeout=300,
        check=True,
    ).stdout.strip()
    if numpy_state == "as installed" and has_row_stack:
        assert out == "None"
    else:
        assert "numba-cuda cannot compile kernels with NumPy" in out
        assert "row_stack" in out and "nbody-backends[cuda]" in out


@pytest.mark.parametrize(
    ("options", "msg"),
    [
        ({"precision": "float16"}, "precision must be one of 'float64', 'float32'; got 'float16'"),
        ({"precision": np.float32}, "precision must be"),
        ({"tile": 0}, "tile must be an integer from 1 to 1024; got 0"),
        ({"tile": 1025}, "tile must be an integer from 1 to 1024"),
        ({"tile": 8.0}, "tile must be an integer"),
        ({"tile": True}, "tile must be an integer"),
    ],
)
def test_bad_options_are_rejected_before_the_device(options, msg):
    from backends import cuda_tiled

    with pytest.raises(ValueError, match=msg):
        cuda_tiled.accel([1.0, 1.0], [[0, 0, 0], [1, 0, 0]], **options)


FLOAT32_RANGE = """
from backends import cuda_tiled
for m, x in (([1e300, 1.0], [[0, 0, 0], [1, 0, 0]]), ([1.0, 1.0], [[0, 0, 0], [1e100, 0, 0]])):
    print(cuda_tiled.accel(m, x, precision="float32")[1, 0], cuda_tiled.accel(m, x)[1, 0])
"""


def test_float32_takes_any_float64_input(results):
    """Masses of 1e300 and positions of 1e100 (beyond float32) are scaled, not refused."""
    if results["simulator"] and backends.unavailable_reason("cuda") is not None:
        env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_repo_root(), env.get("PYTHONPATH")]))
        proc = subprocess.run(
            [sys.executable, "-c", FLOAT32_RANGE],
            env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.split("\n")
    else:
        from contextlib import redirect_stdout
        from io import StringIO

        buf = StringIO()
        with redirect_stdout(buf):
            exec(FLOAT32_RANGE, {})
        lines = buf.getvalue().split("\n")
    pairs = [[float(v) for v in line.split()] for line in lines if line.strip()]
    assert pairs[0][1] == pytest.approx(-1e300) and pairs[1][1] == pytest.approx(-1e-200)
    for f32, f64 in pairs:
        assert f32 == pytest.approx(f64, rel=1e-6)


if __name__ == "__main__":  # the simulator child: print the results as one JSON line
    print(json.dumps(compute(CASES)))
