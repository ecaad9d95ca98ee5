"""Test-only backends for tests/test_compare.py, registered by the test's child process.

Real functions that really misbehave (nothing here imitates the measuring code): one raises,
one returns a wrong answer, one is slow; ``close`` leaves a marker file so the tests can see
that ``python -m backends compare`` released the backend, on success and on Ctrl-C.
"""

from __future__ import annotations

import os
import time

from backends import numpy_blocked


def accel_raises(masses, positions, G=1.0, *, softening=0.0):
    raise RuntimeError("deliberate failure for the test")


def accel_wrong(masses, positions, G=1.0, *, softening=0.0):
    return 2.0 * numpy_blocked.accel(masses, positions, G, softening=softening)


def accel_slow(masses, positions, G=1.0, *, softening=0.0):
    time.sleep(0.3)
    return numpy_blocked.accel(masses, positions, G, softening=softening)


def close():
    marker = os.environ.get("COMPARE_TEST_CLOSED")
    if marker:
        with open(marker, "a", encoding="utf-8") as f:
            f.write("closed\n")
