"""The optimized ``numba_parallel`` kernel and its serial ``accel_block``: edges of its tricks.

Vector widths and tile edges (N = 1..70, N not a multiple of the blocks or tiles), the
tournament schedule, determinism and agreement across thread counts (1 to 64 threads, in
subprocesses with ``NUMBA_NUM_THREADS``), the work spread over 16 threads, linearity of
``accel_block`` in the sources, the power-of-two rescaling at extreme scales, the exact
fallback for pairs too close for the float32 estimate, and the float32 mode. Speed is shown
by ``benchmarks/numba_ladder.py`` and ``benchmarks/c_reference.py``, never tested here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numba
import numpy as np
import pytest
from conftest import random_system

import backends
from backends import numba_parallel as npl
from backends import reference, relative_error
from backends._contract import FLOAT32_TOLERANCE
from backends._pair_kernel import ALIGN
from backends.numba_loops import accel_plain

TOL = 1e-13  # the bound the kernel's docstring promises (the project's error metric)
ROOT = Path(__file__).resolve().parent.parent


def plummer(n, seed=0, decades=5.0):
    """Plummer sphere (scale radius 1) with log-uniform masses spanning ``decades``."""
    rng = np.random.default_rng(seed)
    u = rng.uniform(1e-10, 1.0, n)
    r = 1.0 / np.sqrt(u ** (-2.0 / 3.0) - 1.0)
    v = rng.standard_normal((n, 3))
    v /= np.linalg.norm(v, axis=1)[:, None]
    m = 10.0 ** rng.uniform(0.0, decades, n)
    return m / m.sum(), r[:, None] * v


def _oracle_rows(m, x, G, softening, rows, sources=None):
    """Oracle rows; ``sources`` (indices) restricts the sum by zeroing the other masses."""
    if sources is not None:
        keep = np.zeros(m.shape[0], dtype=bool)
        keep[sources] = True
        m = np.where(keep, m, 0.0)
    return reference.accel_rows(m, x, G, softening, list(rows))


@pytest.mark.parametrize("n", list(range(2, 71)))
def test_small_sizes_against_oracle(n):
    m, x = random_system(n, seed=1000 + n)
    ref = reference.accel(m, x)
    assert relative_error(npl.accel(m, x), ref) <= TOL
    assert relative_error(npl.accel_block(x, m, x, 1.0, 0.0), ref) <= TOL


@pytest.mark.parametrize("n", [2 * npl.MIN_BLOCK + 5, 4 * npl.MIN_BLOCK + 3, npl.TILE + 37])
@pytest.mark.parametrize("softening", [0.0, 0.03])
def test_tile_edges(n, softening):
    """N not a multiple of the lane blocks, nor of the tile (the second size spans 2 tiles)."""
    m, x = random_system(n, seed=n)
    out = npl.accel(m, x, 0.5, softening=softening)
    assert relative_error(out, accel_plain(m, x, 0.5, softening=softening)) <= TOL
    rows = [0, 1, n // 2, npl.TILE - 1, npl.TILE, n - 2, n - 1]
    rows = sorted({r for r in rows if r < n})
    assert relative_error(out[rows], _oracle_rows(m, x, 0.5, softening, rows)) <= TOL


@pytest.mark.parametrize("nb", [2, 4, 6, 16, 128])
def test_schedule_is_a_tournament(nb):
    """Every unordered pair of distinct blocks once; no block twice within a round."""
    tasks, starts = npl.schedule(nb)
    assert starts.shape == (nb,) and starts[-1] == tasks.shape[0] == nb * (nb - 1) // 2
    seen = {tuple(t) for t in tasks.tolist()}
    assert seen == {(a, b) for a in range(nb) for b in range(a + 1, nb)}
    for r in range(nb - 1):
        blocks = tasks[starts[r] : starts[r + 1]].ravel()
        assert sorted(blocks.tolist()) == list(range(nb))


@pytest.mark.parametrize("threads", [1, 2, 3, 8, 16, 64, 128])
def test_block_count(threads):
    for n in (2, 3, 50, 1000, 10_000, 1_000_000):
        nb = npl.block_count(n, threads)
        assert nb >= 2 and nb % 2 == 0 and nb <= max(2, n)
        assert nb <= 2 * threads or nb == 2
    assert npl.block_count(1_000_000, 128) == 256


@pytest.mark.parametrize("n", [1, 15, 16, 17, 1000, 4099, 100_003])
@pytest.mark.parametrize("nb", [2, 4, 6, 32])
def test_block_edges_are_aligned_and_cover_the_rows(n, nb):
    edges = npl.block_edges(n, nb)
    assert edges[0] == 0 and n <= edges[-1] < n + ALIGN and len(edges) == nb + 1
    assert (edges % ALIGN == 0).all() and (np.diff(edges) >= 0).all()
    assert np.diff(edges).max() - np.diff(edges).min() <= ALIGN  # near-equal blocks


def test_scratch_arrays_start_on_cache_lines():
    m, x = random_system(1001, seed=1)
    for _ in range(5):  # the allocator's offset varies; every copy must be aligned
        p, _ = npl.prepare(m, x, 0.0, 1008)
        p32 = npl._prepare32(m, x, 0.0, 1008)[0]
        assert p.ctypes.data % 64 == 0 and p32.ctypes.data % 64 == 0
        assert p.shape == (4, 1008) and p32.shape == (7, 1008)
        assert (p[3, 1001:] == 0.0).all() and (p32[3, 1001:] == 0.0).all()  # massless pads


@pytest.mark.parametrize("precision", ["float64", "float32"])
@pytest.mark.parametrize(
    ("n", "softening"), [(300, 0.0), (1001, 0.01), pytest.param(2500, 0.0, marks=pytest.mark.slow)]
)
def test_lanes_and_tournament_agree(monkeypatch, n, softening, precision):
    """The small-N lanes and the tournament: same pairs, different order of the sums."""
    m, x = random_system(n, seed=n)
    lanes = npl.accel(m, x, softening=softening, precision=precision)
    monkeypatch.setattr(npl, "LANES_MAX_N", 0)
    tour = npl.accel(m, x, softening=softening, precision=precision)
    bound = TOL if precision == "float64" else 1e-6
    assert relative_error(lanes, tour) <= bound
    if precision == "float64":
        assert relative_error(lanes, reference.accel(m, x, softening=softening)) <= TOL


@pytest.mark.parametrize("precision", ["float64", "float32"])
def test_repeated_calls_bitwise_identical(precision):
    m, x = random_system(3001, seed=3)
    first = npl.accel(m, x, softening=0.01, precision=precision)
    for _ in range(3):
        np.testing.assert_array_equal(npl.accel(m, x, softening=0.01, precision=precision), first)


def test_set_num_threads_is_honoured():
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("Numba was started with a single thread (NUMBA_NUM_THREADS=1)")
    m, x = random_system(3001, seed=3)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = npl.accel(m, x, softening=0.01)
        work1 = npl.thread_work(m, x)
        numba.set_num_threads(2)
        two = npl.accel(m, x, softening=0.01)
        work2 = npl.thread_work(m, x)
    finally:
        numba.set_num_threads(before)
    assert relative_error(two, one) <= TOL
    pairs = 3001 * 3000 // 2
    assert work1[0] == pairs and work1[1:].sum() == 0
    assert work2.sum() == pairs and (work2[:2] > 0).all() and work2[2:].sum() == 0


_CHILD = """
import json, sys
import numpy as np
import numba
from backends import benchmark_system, numba_parallel as npl
npl.LANES_MAX_N = int(sys.argv[3])  # 0: the tournament at every N
m, x = benchmark_system(int(sys.argv[1]), seed=5)
a = npl.accel(m, x, softening=0.001)
b = npl.accel(m, x, softening=0.001)
f = npl.accel(m, x, softening=0.001, precision="float32")
np.save(sys.argv[2], np.stack([a, b, f]))
work = npl.thread_work(m, x, softening=0.001)
print(json.dumps({"threads": numba.get_num_threads(), "work": work.tolist()}))
"""


def _child(threads, n, path, lanes_max_n):
    env = dict(os.environ, NUMBA_NUM_THREADS=str(threads), PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(n), str(path), str(lanes_max_n)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout.strip().splitlines()[-1])
    return np.load(path), info


@pytest.fixture(scope="module", params=["tournament", "lanes"])
def across_threads(request, tmp_path_factory):
    """Results and work spread with NUMBA_NUM_THREADS = 1, 2, 3, 8, 16, 64 (N = 4 099).

    Once on each decomposition: the tournament (forced with ``LANES_MAX_N = 0``) and the
    small-N lanes (4 099 <= ``LANES_MAX_N``).
    """
    assert 4099 <= npl.LANES_MAX_N
    limit = 0 if request.param == "tournament" else npl.LANES_MAX_N
    tmp = tmp_path_factory.mktemp(request.param)
    return {t: _child(t, 4099, tmp / f"t{t}.npy", limit) for t in (1, 2, 3, 8, 16, 64)}


@pytest.mark.slow  # 12 child interpreters (6 thread counts x 2 decompositions)
def test_results_agree_across_thread_counts(across_threads):
    ref = across_threads[1][0][0]
    for t, (res, info) in across_threads.items():
        assert info["threads"] == t
        np.testing.assert_array_equal(res[0], res[1])  # same thread count: bitwise
        assert relative_error(res[0], ref) <= TOL, t
        assert relative_error(res[2], ref) <= FLOAT32_TOLERANCE, t


@pytest.mark.slow
def test_every_thread_does_a_share(across_threads):
    """With T threads each of the T threads computes pairs (16 and 64 oversubscribe here)."""
    pairs = 4099 * 4098 // 2
    for t, (_, info) in across_threads.items():
        work = np.array(info["work"])
        assert work.shape == (t,) and work.sum() == pairs, t
        if t <= 16:  # 4 099 rows: 64 blocks of >= 64 rows (32 pairs a round), or 32 lanes
            assert (work > 0).all(), (t, work)
    work16 = np.array(across_threads[16][1]["work"])
    assert work16.min() > 0.2 * pairs / 16  # a share each, not a token


def test_oversubscribed_64_threads_spread():
    """64 threads and enough rows for 128 blocks: every thread computes pairs."""
    n = 2 * 64 * npl.MIN_BLOCK + 17
    m, x = random_system(n, seed=12)
    env = dict(os.environ, NUMBA_NUM_THREADS="64", PYTHONPATH=str(ROOT))
    code = (
        "import json; from backends import numba_parallel as npl, benchmark_system as b;"
        f"m, x = b({n}, seed=12); print(json.dumps(npl.thread_work(m, x).tolist()))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    work = np.array(json.loads(done.stdout.strip().splitlines()[-1]))
    assert work.shape == (64,) and work.sum() == n * (n - 1) // 2 and (work > 0).all()


@pytest.mark.parametrize(
    ("t0", "t1", "s0", "s1"), [(0, 50, 0, 131), (10, 11, 40, 97), (60, 131, 0, 70)]
)
@pytest.mark.parametrize("softening", [0.0, 0.1])
def test_block_on_sub_sources_against_oracle(t0, t1, s0, s1, softening):
    m, x = random_system(131, seed=7)
    out = npl.accel_block(x[t0:t1], m[s0:s1], x[s0:s1], 2.0, softening)
    assert out.shape == (t1 - t0, 3)
    ref = _oracle_rows(m, x, 2.0, softening, range(t0, t1), sources=range(s0, s1))
    assert relative_error(out, ref) <= TOL


def test_block_splitting_sources_adds_up():
    m, x = random_system(301, seed=11)
    t = np.ascontiguousarray(x[::3])
    whole = npl.accel_block(t, m, x, 1.0, 0.0)
    parts = sum(
        npl.accel_block(t, m[a:b], x[a:b], 1.0, 0.0) for a, b in ((0, 7), (7, 160), (160, 301))
    )
    assert relative_error(parts, whole) <= TOL


def test_block_from_threads():
    m, x = random_system(800, seed=5)
    chunks = [(a, min(a + 100, 800)) for a in range(0, 800, 100)]
    with ThreadPoolExecutor(2) as pool:
        parts = list(pool.map(lambda c: npl.accel_block(x[c[0] : c[1]], m, x, 1.0, 0.0), chunks))
    assert relative_error(np.concatenate(parts), npl.accel_block(x, m, x, 1.0, 0.0)) <= 1e-15


def test_block_coincident_source_contributes_nothing():
    m, x = random_system(9, seed=2)
    target = np.ascontiguousarray(x[4:5])
    with_self = npl.accel_block(target, m, x, 1.0, 0.0)
    others = np.arange(9) != 4
    without = npl.accel_block(target, m[others], np.ascontiguousarray(x[others]), 1.0, 0.0)
    assert np.isfinite(with_self).all()
    assert relative_error(with_self, without) <= TOL


def test_block_empty():
    m, x = random_system(5, seed=1)
    assert npl.accel_block(x[:0], m, x, 1.0, 0.0).shape == (0, 3)
    np.testing.assert_array_equal(npl.accel_block(x, m[:0], x[:0], 1.0, 0.0), np.zeros((5, 3)))


@pytest.mark.parametrize("scale", [1e-100, 1e-30, 1e25, 1e100])
def test_extreme_scales(scale):
    """Rescaling by a power of two keeps every r**2 in the float32 estimate's range."""
    m, x = random_system(40, seed=9)
    G = 1.0 / scale  # keeps the accelerations finite
    ref = reference.accel(m, x * scale, G * scale**3)
    assert relative_error(npl.accel(m, x * scale, G * scale**3), ref) <= TOL
    block = npl.accel_block(x * scale, m, x * scale, G * scale**3, 0.0)
    assert relative_error(block, ref) <= TOL


def test_extreme_extent_and_offset():
    """Huge extent (refused) and tiny extent far from the origin (capped rescaling)."""
    m, x = random_system(25, seed=6)
    # pairs with them overflow r**3 and would contribute 0: the two far particles' whole
    # accelerations (1e-300 to 1e-400) would be lost, so the contract refuses the system
    x[0, 0], x[1, 0] = 1e200, -1e200
    for accel in (npl.accel, reference.accel):
        with pytest.raises(FloatingPointError, match="2\\*\\*300"):
            accel(m, x)
    m, x = random_system(25, seed=6, spread=1e-10)
    x[:, 0] = 1e300  # one coordinate shared: the extent is 1e-10, |x| is 1e300
    ref = reference.accel(m, x, 1e-30)
    assert relative_error(npl.accel(m, x, 1e-30), ref) <= TOL
    assert relative_error(npl.accel_block(x, m, x, 1e-30, 0.0), ref) <= TOL


@pytest.mark.parametrize("n", [30, 3000, 9000])  # one lane, several lanes, the tournament
@pytest.mark.parametrize("gap", [1e-20, 1e-40])
def test_too_close_for_float32_falls_back_to_exact(gap, n):
    """A pair far closer than the system's extent: the exact sqrt/division path is used.

    The pair (rows 0 and N - 1, in different blocks) sits at the origin, where float64
    holds its separation (next to a coordinate of order 1 the gap would round away and the
    pair would merely be coincident). Its ``r**2`` is below float32's range, the fast
    estimate is not finite, and the kernels must notice: Numba's ``np.isfinite`` inside
    fast-math code is folded to True (``backends._pair_kernel.finite``). Without that, the
    lanes path (N = 3 000) returned NaN rows: ``FloatingPointError`` on valid input.
    """
    m, x = random_system(n, seed=4)
    x[0] = 0.0
    x[-1] = gap * np.array([1.0, -0.5, 0.25])  # first and last rows: in different blocks
    ref = reference.accel(m, x) if n <= 30 else backends.accel(m, x, backend="numba")
    out = npl.accel(m, x)
    assert np.isfinite(out).all()
    assert relative_error(out, ref) <= TOL
    assert relative_error(npl.accel(m, x, precision="float32"), ref) <= FLOAT32_TOLERANCE
    if n <= 3000:
        assert relative_error(npl.accel_block(x, m, x, 1.0, 0.0), ref) <= TOL


@pytest.mark.parametrize("n", [3000, 9000])  # the lanes, the tournament
def test_only_the_rows_of_a_too_close_pair_are_summed_again(monkeypatch, n):
    """The fast sums of every other row are right: only the two rows go to the exact loop.

    (Redoing every row cost ten times the fast path's time on a cusp with a few such pairs.)
    """
    m, x = random_system(n, seed=5)
    x[0] = 0.0
    x[-1] = 1e-40 * np.array([1.0, -0.5, 0.25])
    seen = []
    exact = npl._exact

    def spy(out, targets, *args):
        seen.append(targets.shape[0])
        return exact(out, targets, *args)

    monkeypatch.setattr(npl, "_exact", spy)
    out = npl.accel(m, x)
    assert seen == [2]
    assert relative_error(out, backends.accel(m, x, backend="numba")) <= TOL


def test_finite_is_a_real_test_inside_fast_math_code():
    """``_pair_kernel.finite`` counts NaN and inf in an ``FM`` prange reduction.

    There a plain ``np.isfinite`` was folded to True (numba 0.68.1, LLVM 22: it counted 0).
    """
    from backends._pair_kernel import FM, finite

    @numba.njit(parallel=True, fastmath=FM, error_model="numpy")
    def count(a):
        bad = 0
        for i in numba.prange(a.shape[1]):
            for k in range(a.shape[0]):
                t = a[k, i] * 2.0
                bad += 0 if finite(t) else 1
        return bad

    a = np.ones((3, 1000))
    a[0, 7] = np.nan
    a[2, 500] = np.inf
    a[1, 999] = -np.inf
    assert count(a) == 3
    assert count(np.ones((3, 1000))) == 0


def test_coincident_and_softening_against_oracle():
    m, x = random_system(97, seed=8)
    x[5::7] = x[3]
    for softening in (0.0, 1e-3, 0.5, 1e3):
        ref = reference.accel(m, x, softening=softening)
        out = npl.accel(m, x, softening=softening)
        assert np.isfinite(out).all()
        assert relative_error(out, ref) <= TOL


# --- float32 mode -------------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 3, 5, 17, 33, 70, 300])
def test_float32_small_sizes(n):
    m, x = random_system(n, seed=2000 + n)
    out = npl.accel(m, x, precision="float32")
    assert out.dtype == np.float64 and out.shape == (n, 3)
    assert relative_error(out, reference.accel(m, x)) <= FLOAT32_TOLERANCE


@pytest.mark.parametrize("n", [2000, pytest.param(20_000, marks=pytest.mark.slow)])
def test_float32_benchmark_system_and_plummer(n):
    for m, x in (backends.benchmark_system(n), plummer(n, seed=n)):
        ref = npl.accel(m, x)
        if n <= 2000:
            assert relative_error(ref, reference.accel(m, x)) <= TOL
        assert relative_error(npl.accel(m, x, precision="float32"), ref) <= FLOAT32_TOLERANCE


def _clumps(n, seed):
    """Two dense Plummer clumps (scale 1e-3) 1e4 apart: close pairs far from the centre."""
    m, x = plummer(n, seed=seed)
    x = 1e-3 * x
    x[n // 2 :, 0] += 1e4
    return m, x


def _disk(n, seed):
    """A flat disk: every z equal, so each z separation is exactly zero."""
    m, x = plummer(n, seed=seed)
    x[:, 2] = 0.25
    return m, x


def _clusters(n, seed):
    """Clusters of scale 0.01 at the points of a Plummer sphere of scale 10."""
    rng = np.random.default_rng(seed)
    k = n // 40
    m, centres = plummer(k, seed=seed)
    x = np.concatenate(
        [plummer(40, seed=seed + 1 + c)[1] * 0.01 + 10.0 * centres[c] for c in range(k)]
    )
    return 10.0 ** rng.uniform(-5.0, 0.0, len(x)), x


@pytest.mark.parametrize("make", [_clumps, _disk, _clusters], ids=["clumps", "disk", "clusters"])
def test_float32_clustered_systems(make):
    """Systems unlike the benchmark ones keep the float32 bound too."""
    m, x = make(6000, 31)
    ref = npl.accel(m, x)
    assert relative_error(npl.accel(m, x, precision="float32"), ref) <= FLOAT32_TOLERANCE


def test_float32_far_from_origin_and_softening():
    """Centring and the hi + lo split keep close pairs of an offset cluster accurate."""
    m, x = plummer(3000, seed=9)
    x = x + np.array([1e6, -3e5, 7.5e4])
    for softening in (0.0, 0.01, 10.0):
        ref = npl.accel(m, x, 2.0, softening=softening)
        out = npl.accel(m, x, 2.0, softening=softening, precision="float32")
        assert relative_error(out, ref) <= FLOAT32_TOLERANCE


def test_float32_coincident_points():
    m, x = random_system(97, seed=8)
    x[5::7] = x[3]
    for softening in (0.0, 1e-3):
        out = npl.accel(m, x, softening=softening, precision="float32")
        assert np.isfinite(out).all()
        ref = reference.accel(m, x, softening=softening)
        assert relative_error(out, ref) <= FLOAT32_TOLERANCE


@pytest.mark.parametrize("scale", [1e-100, 1e-30, 1e25, 1e100])
def test_float32_extreme_scales(scale):
    """Powers of two rescale coordinates and masses into float32's range."""
    m, x = random_system(40, seed=9)
    G = 1.0 / scale
    ref = reference.accel(m * 1e-3, x * scale, G * scale**3 * 1e3)
    out = npl.accel(m * 1e-3, x * scale, G * scale**3 * 1e3, precision="float32")
    assert relative_error(out, ref) <= FLOAT32_TOLERANCE


def test_float32_out_of_range_falls_back_to_float64():
    """Masses over more than 2**100 are computed in float64 instead. (A uniformly huge
    system is rescaled into float32's range; one spanning beyond 2**300 is refused by the
    contract: test_extreme_extent_and_offset.)"""
    m, x = random_system(30, seed=4)
    m[3] = 1e-40
    ref = reference.accel(m, x)
    assert relative_error(npl.accel(m, x, precision="float32"), ref) <= TOL


def test_float32_inputs_untouched_and_new_array():
    m, x = random_system(50, seed=1)
    m0, x0 = m.copy(), x.copy()
    out = npl.accel(m, x, precision="float32")
    np.testing.assert_array_equal(m, m0)
    np.testing.assert_array_equal(x, x0)
    assert out.flags.owndata and out.flags.writeable


@pytest.mark.parametrize("bad", ["float16", "Float32", "fp32", None, 32])
def test_unknown_precision_is_a_value_error(bad):
    m, x = random_system(5, seed=1)
    with pytest.raises(ValueError, match="float64"):
        npl.accel(m, x, precision=bad)


def test_precision_through_the_registry():
    assert backends.precisions("numba_parallel") == ("float64", "float32")
    m, x = random_system(200, seed=3)
    out = backends.accel(m, x, backend="numba_parallel", precision="float32")
    assert relative_error(out, reference.accel(m, x)) <= FLOAT32_TOLERANCE
