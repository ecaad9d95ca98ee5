"""Throughput of the accelerator backends: ``python benchmarks/accelerators.py [--n N]``.

Measures, in one run and on one machine:

* the CPU goal of issue 6: ``jax`` (on the CPU) against ``numpy`` at ``--n`` (default 10 000),
  their calls alternating so that both see the same machine load;
* ``jax`` on a GPU, when JAX has one, at ``--gpu-n`` (default 2**18);
* ``cuda`` in float64 and float32 at ``--gpu-n``, when a CUDA GPU and numba-cuda are present
  (never on Numba's simulator, which is far too slow for a benchmark): through
  ``backends.accel`` (host copies, checks and scalings included), then its kernel alone,
  timed with CUDA events on inputs already on the device (:func:`kernel_alone`).

Each figure is the best of ``--repeat`` calls after one warm-up call (compilation excluded);
throughput is N(N-1)/t interactions per second. Results are checked against the pure-Python
oracle on a few rows. This is a script, not an asv benchmark: it defines no
``time_*``/``track_*`` names, and asv's discovery may import it harmlessly.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import platform
import time

import numpy as np

import backends
from backends import benchmark_system, reference


def _best_of(fns, repeat: int) -> list[float]:
    """Best time of each callable over ``repeat`` rounds; calls alternate, so load is shared."""
    for fn in fns:
        fn()  # warm-up: compilation, device start
    best = [float("inf")] * len(fns)
    for _ in range(repeat):
        for k, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t0)
    return best


def _sample_error(out, m, x, rows=8) -> float:
    """Error on ``rows`` evenly spread particles against the oracle (cheap at large N)."""
    idx = np.linspace(0, len(m) - 1, rows).astype(int)
    return backends.relative_error(out[idx], reference.accel_rows(m, x, 1.0, 0.0, idx))


def _measure(runs, n: int, repeat: int) -> list[dict]:
    """Time ``runs`` (label, backend name, options) side by side at ``n``; print one line each."""
    m, x = benchmark_system(n)
    calls = [functools.partial(backends.get(name).accel, m, x, **opts) for _, name, opts in runs]
    seconds = _best_of(calls, repeat)
    figures = []
    for (label, name, _), call, t in zip(runs, calls, seconds, strict=True):
        rate = backends.interactions(n) / t
        err = _sample_error(call(), m, x)
        print(f"{label:28s} N={n:>7d} {t * 1e3:11.2f} ms {rate / 1e9:9.3f} G/s  error {err:.1e}")
        figures.append(
            {"label": label, "backend": name, "n": n, "seconds": t, "rate": rate, "error": err}
        )
    return figures


def kernel_alone(n: int, precision: str, repeat: int) -> dict:
    """Time the ``cuda`` backend's kernel alone with CUDA events (best of ``repeat``).

    The benchmark system at ``n``, prepared as the backend prepares it (float32: centred and
    scaled), copied to the device once; one warm-up launch, then ``repeat`` timed launches at
    the default tile. Returns the seconds and N(N-1)/t.
    """
    from numba import cuda

    from backends import cuda_tiled
    from backends._cuda_kernel import get_kernel

    m, x = benchmark_system(n)
    if precision == "float32":
        x, m, _, _ = cuda_tiled._scaled32(m, x, 0.0)
    dtype = np.dtype(precision)
    d_src, d_out = cuda_tiled.device_inputs(m, x, precision)
    tile = cuda_tiled.DEFAULT_TILE
    kernel = get_kernel(tile, precision, cuda_tiled.simulating())
    blocks = -(-n // (2 * tile))
    kernel[blocks, tile](d_src, n, dtype.type(0), d_out)  # compilation
    cuda.synchronize()
    best = float("inf")
    for _ in range(repeat):
        start, stop = cuda.event(), cuda.event()
        start.record()
        kernel[blocks, tile](d_src, n, dtype.type(0), d_out)
        stop.record()
        stop.synchronize()
        best = min(best, start.elapsed_time(stop) / 1e3)
    return {"seconds": best, "rate": backends.interactions(n) / best}


def _jax_gpu():
    if backends.unavailable_reason("jax") is not None:
        return None
    import jax

    gpus = [d for d in jax.devices() if d.platform in ("gpu", "cuda", "rocm")]
    return gpus[0] if gpus else None


def _cuda_ready() -> str | None:
    reason = backends.unavailable_reason("cuda")
    if reason is None:
        from backends.cuda_tiled import simulating

        if simulating():
            return "NUMBA_ENABLE_CUDASIM=1 is set: the simulator is not benchmarked"
    return reason


def main(argv=None) -> int:
    """Run the measurements and print one line per figure (and JSON with ``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="N for jax vs numpy on the CPU")
    parser.add_argument("--gpu-n", type=int, default=1 << 18, help="N for the GPU figures")
    parser.add_argument("--repeat", type=int, default=3, help="timed calls per figure")
    parser.add_argument("--json", metavar="PATH", help="also write the figures to PATH")
    args = parser.parse_args(argv)

    load = tuple(round(v, 1) for v in os.getloadavg()) if hasattr(os, "getloadavg") else None
    print(
        f"{datetime.date.today()}  {platform.machine()}, {os.cpu_count()} CPUs, "
        f"load average {load}; best of {args.repeat} after a warm-up"
    )

    print(f"-- CPU at N = {args.n}: jax vs numpy, calls alternating (goal: jax faster)")
    cpu_runs = [("numpy", "numpy", {})]
    if backends.unavailable_reason("jax") is None:
        cpu_runs.append(("jax (cpu)", "jax", {"device": "cpu"}))
    else:
        print(f"jax: skipped, {backends.unavailable_reason('jax')}")
    figures = _measure(cpu_runs, args.n, args.repeat)
    if len(figures) == 2:
        ratio = figures[0]["seconds"] / figures[1]["seconds"]
        print(f"jax is {ratio:.2f}x as fast as numpy at N = {args.n}")

    print(f"-- GPU at N = {args.gpu_n} (H100 goals: cuda float64 >= 500 G/s, float32 >= 1500)")
    gpu_runs = []
    gpu = _jax_gpu()
    if gpu is None:
        print("jax (gpu): skipped, JAX has no GPU here")
    else:
        gpu_runs.append((f"jax ({gpu.device_kind})", "jax", {"device": gpu}))
    reason = _cuda_ready()
    if reason is not None:
        print(f"cuda: skipped, {reason}")
    else:
        for precision in ("float64", "float32"):
            gpu_runs.append((f"cuda {precision}", "cuda", {"precision": precision}))
    if gpu_runs:
        figures += _measure(gpu_runs, args.gpu_n, args.repeat)
    if reason is None:
        for precision in ("float64", "float32"):
            alone = kernel_alone(args.gpu_n, precision, args.repeat)
            label = f"cuda {precision}, kernel alone"
            print(
                f"{label:28s} N={args.gpu_n:>7d} {alone['seconds'] * 1e3:11.2f} ms "
                f"{alone['rate'] / 1e9:9.3f} G/s  (CUDA events)"
            )
            figures.append({"label": label, "backend": "cuda", "n": args.gpu_n, **alone})

    if args.json:
        with open(args.json, "w") as fh:
            json.dump(figures, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
