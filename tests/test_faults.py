"""Faults found by a fuzzing pass, each kept as a regression test on every backend it touches.

* Read-only, memory-mapped, non-contiguous, byte-swapped and non-float64 inputs work on every
  backend (the contract converts once, at the door) and give the same answer as plain arrays.
"""

from __future__ import annotations

import numpy as np
import pytest

import backends

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
