"""Command line: ``python -m backends compare`` (a short demo until the full comparison lands)."""

from __future__ import annotations

import sys
import time

import numpy as np

import backends


def _demo(n: int = 1000) -> int:
    rng = np.random.default_rng(42)
    m, x = rng.random(n), rng.standard_normal((n, 3))
    ref = None
    print(f"N = {n}, best of 3 after a warm-up call, error vs the 'python' oracle")
    for name in backends.available():
        b = backends.get(name)
        out = b.accel(m, x)
        times = []
        for _ in range(1 if name == "python" else 3):
            t0 = time.perf_counter()
            b.accel(m, x)
            times.append(time.perf_counter() - t0)
        ref = out if ref is None else ref
        err = backends.relative_error(out, ref)
        t = min(times)
        rate = backends.interactions(n) / t
        print(f"{name:16s} {t * 1e3:10.3f} ms {rate / 1e9:8.3f} G/s  error {err:.1e}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in ([], ["compare"]):
        return _demo()
    print(f"usage: python -m backends compare (got {' '.join(argv)!r})", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
