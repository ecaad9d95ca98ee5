"""The public face: names, availability, lookup errors, lazy imports."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import backends
from backends import _Spec


def test_names_lists_the_ladder():
    names = backends.names()
    for expected in ("python", "numpy", "numba", "numba_fastmath", "numba_parallel"):
        assert expected in names
    assert len(set(names)) == len(names)


def test_available_is_a_subset_and_has_the_core():
    avail = backends.available()
    assert set(avail) <= set(backends.names())
    # the required dependencies (numpy, numba) make these usable everywhere
    for core in ("python", "numpy", "numba", "numba_fastmath", "numba_parallel"):
        assert core in avail


def test_get_returns_named_described_backend(backend_name):
    b = backends.get(backend_name)
    assert b.name == backend_name
    assert isinstance(b.description, str) and b.description and "\n" not in b.description
    out = b.accel([1.0, 2.0], [[0, 0, 0], [1, 0, 0]])
    assert out.shape == (2, 3)


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="unknown backend 'nope'") as info:
        backends.get("nope")
    for name in backends.names():
        assert name in str(info.value)
    with pytest.raises(ValueError, match="valid names"):
        backends.accel([1.0], [[0, 0, 0]], backend="nope")


def test_unhashable_name_is_a_clear_value_error():
    with pytest.raises(ValueError, match="unknown backend"):
        backends.get(["numpy"])


def test_unavailable_backend_says_what_to_install(monkeypatch):
    spec = _Spec("backends.reference:accel", "needs a missing module", ("no_such_mod_xyz",), "xyz")
    monkeypatch.setitem(backends._REGISTRY, "fake", spec)
    assert "fake" in backends.names()
    assert "fake" not in backends.available()
    reason = backends.unavailable_reason("fake")
    assert "no_such_mod_xyz" in reason and "pip install 'nbody-backends[xyz]'" in reason
    with pytest.raises(backends.BackendUnavailableError, match=r"nbody-backends\[xyz\]"):
        backends.get("fake")
    with pytest.raises(ImportError):  # the error is an ImportError, as users expect
        backends.accel([1.0], [[0, 0, 0]], backend="fake")


def test_default_backend_is_numba_parallel():
    m, x = np.array([1.0, 1.0]), np.array([[0.0, 0, 0], [2.0, 0, 0]])
    np.testing.assert_array_equal(backends.accel(m, x), backends.get("numba_parallel").accel(m, x))


def test_backend_options_pass_through():
    m, x = np.ones(10), np.arange(30.0).reshape(10, 3)
    ref = backends.accel(m, x, backend="python")
    out = backends.accel(m, x, backend="numpy", block=3)
    assert backends.relative_error(out, ref) < 1e-13
    with pytest.raises(ValueError, match="block must be a positive integer"):
        backends.accel(m, x, backend="numpy", block=0)
    with pytest.raises(TypeError):
        backends.accel(m, x, backend="numba", no_such_option=1)


def test_import_is_lazy():
    heavy = ["numba", "jax", "mpi4py", "joblib", "numba.cuda", "scipy", "matplotlib"]
    heavy += ["pytreegrav", "fmm3dpy"]
    code = (
        "import sys, backends\n"
        "backends.names()\n"
        f"bad = [m for m in {heavy!r} if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_benchmark_system_is_the_documented_distribution():
    m, x = backends.benchmark_system(5, seed=7)
    rng = np.random.default_rng(7)
    np.testing.assert_array_equal(m, rng.random(5))
    np.testing.assert_array_equal(x, rng.standard_normal((5, 3)))
    m42, _ = backends.benchmark_system(5)  # seed 42 by default
    np.testing.assert_array_equal(m42, np.random.default_rng(42).random(5))


def test_precision_float32_on_a_backend_without_it_is_a_value_error_naming_those_with_it():
    m, x = backends.benchmark_system(4)
    with pytest.raises(ValueError, match="not a mode of backend .numpy.*cuda"):
        backends.accel(m, x, backend="numpy", precision="float32")
    ref = backends.accel(m, x, backend="numpy")
    assert np.array_equal(backends.accel(m, x, backend="numpy", precision="float64"), ref)


def test_registry_declares_exactness_and_precisions():
    for name in backends.names():
        assert isinstance(backends.is_exact(name), bool)
        assert backends.precisions(name)[0] == "float64"
    assert "float32" in backends.precisions("cuda")


# A meta-path finder that hides one top-level module, as if it were not installed: a real
# interpreter with a real import failure, no mock of the registry.
_HIDE = """
import sys
from pathlib import Path
class _Hide:
    def find_spec(self, name, path=None, target=None):
        if name == {mod!r} or name.startswith({mod!r} + "."):
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None
sys.meta_path.insert(0, _Hide())
"""

# every backend whose kernel is numba (directly or through numba_parallel.accel_block)
NUMBA_BUILT = [
    "numba",
    "numba_fastmath",
    "numba_parallel",
    "numba_jitclass",
    "multiprocessing",
    "joblib",
    "mpi",
]


def test_without_numba_every_numba_built_backend_is_unavailable_and_says_so():
    code = _HIDE.format(mod="numba") + (
        "import json, backends\n"
        "print(json.dumps({n: backends.unavailable_reason(n) for n in backends.names()}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    reasons = __import__("json").loads(proc.stdout)
    for name in NUMBA_BUILT:
        assert reasons[name] is not None, name
        assert "numba" in reasons[name] and "required dependency" in reasons[name], reasons[name]
    assert reasons["python"] is None and reasons["numpy"] is None


def test_list_command_without_numba_marks_the_pool_backends_unusable():
    code = _HIDE.format(mod="numba") + (
        "import runpy\nsys.argv = ['backends', 'list']\n"
        "try:\n    runpy.run_module('backends', run_name='__main__')\n"
        "except SystemExit as exc:\n    assert not exc.code, exc.code\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    rows = {line.split()[0]: line.split()[1] for line in proc.stdout.splitlines()[1:] if line}
    for name in NUMBA_BUILT:
        assert rows[name] == "no", proc.stdout
    assert rows["numpy"] == "yes"
    assert "needs numba" in proc.stdout


def test_a_backend_that_fails_to_import_is_reported_not_raised(monkeypatch):
    spec = _Spec("backends._no_such_module_xyz:accel", "cannot import")
    monkeypatch.setitem(backends._REGISTRY, "broken", spec)
    reason = backends.unavailable_reason("broken")
    assert "cannot be imported" in reason and "_no_such_module_xyz" in reason
    assert "broken" not in backends.available()


def test_a_backend_needing_a_newer_python_says_which(monkeypatch):
    spec = _Spec("backends.reference:accel", "x", ("no_such_mod_xyz",), "xyz", python=(99, 0))
    monkeypatch.setitem(backends._REGISTRY, "future", spec)
    reason = backends.unavailable_reason("future")
    assert "Python >= 99.0" in reason and "nbody-backends[xyz]" in reason


def test_jax_older_than_0_8_is_unavailable_up_front(monkeypatch):
    if importlib.util.find_spec("jax") is None:
        pytest.skip("jax is not installed here")
    import jax

    if backends.unavailable_reason("jax") is not None:
        assert "jax >= 0.8" in backends.unavailable_reason("jax")
        return
    monkeypatch.setattr(jax, "__version__", "0.6.2")
    reason = backends.unavailable_reason("jax")
    assert reason is not None and "jax >= 0.8" in reason and "found jax 0.6.2" in reason
    assert "jax" not in backends.available()
    with pytest.raises(backends.BackendUnavailableError, match="jax >= 0.8"):
        backends.get("jax")
    monkeypatch.setattr(jax, "__version__", "0.10.2")
    monkeypatch.delattr(jax, "enable_x64")  # the feature the backend needs, whatever the version
    assert "enable_x64" in backends.unavailable_reason("jax")


PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


@pytest.fixture
def pyproject_text():
    if not PYPROJECT.is_file():
        pytest.skip("not run from a source tree")
    return PYPROJECT.read_text()


def test_license_is_an_spdx_expression_not_a_table(pyproject_text):
    # the TOML-table form makes setuptools print a deprecation box on every build
    assert re.search(r'^license\s*=\s*"BSD-3-Clause"\s*$', pyproject_text, re.M)
    assert not re.search(r"^license\s*=\s*\{", pyproject_text, re.M)
    assert re.search(r'"setuptools>=(7[7-9]|[89]\d|\d{3})', pyproject_text)  # 77: SPDX support


def test_declared_pythons_and_the_jax_marker_agree_with_the_registry(pyproject_text):
    floor = int(re.search(r'requires-python\s*=\s*">=\s*3\.(\d+)"', pyproject_text).group(1))
    minors = sorted(int(m) for m in re.findall(r'Python :: 3\.(\d+)"', pyproject_text))
    assert minors == list(range(floor, minors[-1] + 1)), "one classifier per supported Python"
    jax_line = re.search(r"^jax\s*=\s*\[(.*)\]", pyproject_text, re.M).group(1)
    need = backends._REGISTRY["jax"].python
    if need > (3, floor):  # jax cannot install on the oldest Python: the pin must say so
        assert f"python_version >= '{need[0]}.{need[1]}'" in jax_line
    all_line = re.search(r"^all\s*=\s*\[(.*)\]", pyproject_text, re.M).group(1)
    assert "peers" in all_line


def test_peers_extra_lists_the_peer_libraries(pyproject_text):
    peers = re.search(r"^peers\s*=\s*\[(.*)\]", pyproject_text, re.M).group(1)
    assert "pytreegrav" in peers and "fmm3dpy" in peers
    for name in ("pytreegrav_bruteforce", "pytreegrav_tree", "fmm3d"):
        assert backends._REGISTRY[name].extra == "peers"
