"""Test-only backends for tests/test_compare.py, registered by the test's child process.

Real functions that really misbehave or really differ (nothing here imitates the measuring
code): one raises, one returns a wrong answer, one is slow, one is slow only on its first call,
one has a pool-style ``n_workers=`` knob, two are approximate (one within its declared bound,
one not), one has a float32 mode. ``close`` leaves a marker file so the tests can see that
``python -m backends compare`` released the backend, on success and on Ctrl-C. Setting
``COMPARE_TEST_NO_HARDWARE`` makes :func:`unavailable_reason` report missing hardware, as the
``cuda`` backend does without a GPU.
"""

from __future__ import annotations

import os
import time

import numpy as np

import backends
from backends import numpy_blocked
from backends._contract import PRECISIONS, check_precision

_called: set[str] = set()


def register() -> None:
    """Add every test-only backend to the registry of this process."""
    spec = backends._Spec
    for name in ("raises", "wrong", "slow", "cold", "pool"):
        backends._REGISTRY[name] = spec(f"compare_test_backends:accel_{name}", f"test: {name}")
    for name in ("approx", "approx_bad"):
        backends._REGISTRY[name] = spec(
            f"compare_test_backends:accel_{name}", f"test: {name}", exact=False
        )
    backends._REGISTRY["f32"] = spec(
        "compare_test_backends:accel_f32", "test: float32 mode", precisions=PRECISIONS
    )


def unavailable_reason() -> str | None:
    """The hardware probe: missing when ``COMPARE_TEST_NO_HARDWARE`` is set."""
    if os.environ.get("COMPARE_TEST_NO_HARDWARE"):
        return "no test accelerator on this machine"
    return None


def accel_raises(masses, positions, G=1.0, *, softening=0.0):
    raise RuntimeError("deliberate failure for the test")


def accel_wrong(masses, positions, G=1.0, *, softening=0.0):
    return 2.0 * numpy_blocked.accel(masses, positions, G, softening=softening)


def accel_slow(masses, positions, G=1.0, *, softening=0.0):
    time.sleep(0.3)
    return numpy_blocked.accel(masses, positions, G, softening=softening)


def accel_cold(masses, positions, G=1.0, *, softening=0.0):
    """Slow (1 s, like a compilation) on the first call in the process only."""
    if "cold" not in _called:
        _called.add("cold")
        time.sleep(1.0)
    return numpy_blocked.accel(masses, positions, G, softening=softening)


def accel_pool(masses, positions, G=1.0, *, softening=0.0, n_workers=None):
    """A pool-style knob (the work is done here)."""
    return numpy_blocked.accel(masses, positions, G, softening=softening)


def tolerance(*, theta=0.5) -> float:
    """The rms relative error the approximate test backends promise."""
    return 2e-3 * theta


def _perturbed(masses, positions, G, softening, rel: float) -> np.ndarray:
    """The exact result with a deterministic relative perturbation of size ``rel``."""
    a = numpy_blocked.accel(masses, positions, G, softening=softening)
    signs = np.where(np.arange(a.shape[0]) % 2 == 0, 1.0, -1.0)
    return a * (1.0 + rel * signs)[:, None]


def accel_approx(masses, positions, G=1.0, *, softening=0.0, theta=0.5):
    """Relative error ``theta * 1e-3`` per particle: within :func:`tolerance`."""
    return _perturbed(masses, positions, G, softening, theta * 1e-3)


def accel_approx_bad(masses, positions, G=1.0, *, softening=0.0, theta=0.5):
    """Relative error ``0.1``: misses its own bound."""
    return _perturbed(masses, positions, G, softening, 0.1)


def accel_f32(masses, positions, G=1.0, *, softening=0.0, precision="float64"):
    """float32 mode: the float64 result rounded to float32 (relative error about 6e-8)."""
    a = numpy_blocked.accel(masses, positions, G, softening=softening)
    if check_precision(precision) == "float32":
        a = a.astype(np.float32).astype(np.float64)
    return a


def close():
    marker = os.environ.get("COMPARE_TEST_CLOSED")
    if marker:
        with open(marker, "a", encoding="utf-8") as f:
            f.write("closed\n")
