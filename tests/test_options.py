"""Every backend's keyword options, property-tested: any value works to the bound or is refused.

One table, :data:`OPTIONS`, lists each backend's options with a strategy for valid values and
one for invalid values; ``precision=`` is added to every backend from the registry (the
contract's one rule). For each backend, hypothesis draws option sets: all valid (the call
must agree with the oracle within ``backends.tolerance(name, **options)``), or with one
invalid value (the call must raise ``TypeError`` or ``ValueError`` naming that option, on an
empty system too: the check is at the door, before any work). A backend added to the
registry (or an option added to one) adds a row here; an option valid only with another
(``theta`` with ``algorithm="tree"``) says so with ``requires``;
:func:`test_the_table_lists_every_option_of_every_backend` fails until it does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import backends
from backends import reference
from backends._contract import PRECISIONS


@dataclass(frozen=True)
class Option:
    """Strategies for the valid and the invalid values of one keyword option.

    ``requires``: options this one needs alongside, set whenever it is passed (for example
    ``{"algorithm": "tree"}`` for an option of one algorithm only).
    """

    valid: st.SearchStrategy
    invalid: st.SearchStrategy
    requires: dict = field(default_factory=dict)


def positive_int(lo=1, hi=64, *, none=True) -> Option:
    """An option taking a positive integer (``lo..hi`` drawn), or None when ``none``."""
    valid = st.integers(lo, hi)
    bad = st.one_of(
        st.integers(-(10**6), 0),
        st.floats(allow_nan=True).filter(lambda v: not (math.isfinite(v) and v == int(v))),
        st.booleans(),
        st.text(max_size=3),
    )
    return Option(st.one_of(st.none(), valid) if none else valid, bad)


def choice(valid, invalid) -> Option:
    """An option taking one of ``valid`` (anything else in ``invalid`` is refused)."""
    return Option(st.sampled_from(valid), st.sampled_from(invalid))


NOT_REAL = st.one_of(st.text(max_size=3), st.booleans(), st.none(), st.just([0.5]))
NOT_BOOL = st.one_of(st.integers(0, 2), st.text(max_size=3), st.none(), st.floats(0, 1))


def _mpi_comms():
    from mpi4py import MPI

    return Option(
        st.sampled_from([None, MPI.COMM_SELF]), st.sampled_from([1, "world", MPI.COMM_NULL])
    )


#: backend -> option -> Option (``precision`` is added to every backend below). Strategies
#: are drawn lazily, so a row of an unavailable backend costs nothing.
OPTIONS: dict[str, dict[str, Option]] = {
    "python": {},
    "numpy": {"block": positive_int(1, 300)},
    "numba": {},
    "numba_fastmath": {},
    "numba_parallel": {},
    "numba_jitclass": {},
    "jax": {
        "block": Option(st.sampled_from([None, 1, 8, 64, 4096]), positive_int().invalid),
        "device": Option(
            st.sampled_from([None, "cpu", "cpu:0"]),
            st.sampled_from(["nowhere", "cpu:99", "gpu:77", 3, 2.5]),
        ),
    },
    "cuda": {"tile": Option(st.sampled_from([None, 32, 64, 128]), positive_int().invalid)},
    "mpi": {
        "comm": None,  # filled in lazily (imports mpi4py): see _table
        "algorithm": choice(["allgather", "ring", "tree"], ["fast", "Ring", "", None, 1]),
        # the tree's options (None: its defaults), with algorithm="tree" only
        "theta": Option(
            st.floats(0.0, 1.0),
            st.one_of(st.floats(max_value=-1e-12), st.just(math.nan), st.text(max_size=3)),
            requires={"algorithm": "tree"},
        ),
        "quadrupole": Option(
            st.booleans(),
            st.one_of(st.integers(0, 2), st.text(max_size=3)),
            requires={"algorithm": "tree"},
        ),
        "threads_per_rank": Option(
            st.one_of(st.none(), st.just(1)),
            st.one_of(st.integers(-5, 0), st.integers(10**5, 10**6), st.booleans(), st.just(1.5)),
        ),
    },
    "multiprocessing": {"n_workers": positive_int(1, 2), "chunks": positive_int(1, 6)},
    "joblib": {
        "n_workers": positive_int(1, 2),
        "chunks": positive_int(1, 6),
        "prefer": choice(["processes", "threads"], ["loky", "thread", "", None, 2]),
    },
    "tree": {
        "theta": Option(
            st.floats(0.0, 1.0),
            st.one_of(st.floats(max_value=-1e-12), st.sampled_from([math.nan, math.inf]), NOT_REAL),
        ),
        "quadrupole": Option(st.booleans(), NOT_BOOL),
        "leaf_size": positive_int(1, 64, none=False),
        "group_size": positive_int(1, 128, none=False),
    },
    "fmm": {
        "eps": Option(
            st.floats(1e-12, 1e-2),
            st.one_of(
                st.floats(max_value=9.9e-13),
                st.floats(min_value=0.0101),
                st.sampled_from([math.nan, math.inf]),
                NOT_REAL.filter(lambda v: v is not None),
            ),
        ),
        "order": Option(
            st.one_of(st.none(), st.integers(1, 20)),
            st.one_of(st.integers(-5, 0), st.integers(21, 99), st.just(2.5), st.booleans()),
        ),
        "theta": Option(
            st.one_of(st.none(), st.floats(0.05, 0.95)),
            st.one_of(
                st.floats(max_value=0.0),
                st.floats(min_value=1.0),
                st.just(math.nan),
                st.text(max_size=3),
            ),
        ),
        "leaf_size": positive_int(1, 256),
    },
    "pytreegrav_bruteforce": {},
    "pytreegrav_tree": {
        "theta": Option(
            st.floats(0.05, 1.0),
            st.one_of(
                st.floats(max_value=0.0),
                st.floats(min_value=1.0, exclude_min=True),
                st.just(math.nan),
                NOT_REAL,
            ),
        ),
        "quadrupole": Option(st.booleans(), NOT_BOOL),
    },
    "fmm3d": {
        "eps": Option(
            st.floats(1e-13, 0.5),
            st.one_of(
                st.floats(max_value=0.0), st.floats(min_value=1.0), st.just(math.nan), NOT_REAL
            ),
        )
    },
}
#: Examples per backend: pools restart when ``n_workers`` changes, jax compiles per block size.
EXAMPLES = {"multiprocessing": 6, "joblib": 8, "jax": 8, "mpi": 8}
DEFAULT_EXAMPLES = 12
BAD_PRECISIONS = [None, "float16", "FLOAT64", "double", 32, np.float32]
SYSTEM = backends.benchmark_system(40, seed=11)
ORACLE = reference.accel(*SYSTEM)


def _table(name: str) -> dict[str, Option]:
    options = dict(OPTIONS[name])
    if "comm" in options:
        options["comm"] = _mpi_comms()
    have = backends.precisions(name)
    bad = BAD_PRECISIONS + [p for p in PRECISIONS if p not in have]
    options["precision"] = choice(list(have), bad)
    return options


def _usable(name):
    reason = backends.unavailable_reason(name)
    if reason is not None:
        pytest.skip(reason)
    return backends.get(name)


def _rms(a, ref) -> float:
    diff = np.linalg.norm(a - ref, axis=-1)
    norm = np.linalg.norm(ref, axis=-1)
    return float(np.sqrt(np.mean((diff / norm) ** 2)))


def test_the_table_lists_every_option_of_every_backend():
    from backends.compare.args import backend_options

    assert set(OPTIONS) == set(backends.names()), "add the new backend's row to OPTIONS"
    for name in backends.available():
        assert set(backend_options(name)) == set(_table(name)), name


def _check(name, b, options, bad):
    m, x = SYSTEM
    if bad is not None:
        for system in (SYSTEM, (np.zeros(0), np.zeros((0, 3)))):
            with pytest.raises((TypeError, ValueError)) as info:
                b.accel(*system, **options)
            assert bad in str(info.value), f"{name}: the error does not name {bad!r}: {info.value}"
        return
    out = b.accel(m, x, **options)
    assert out.shape == x.shape and out.dtype == np.float64 and np.isfinite(out).all()
    bound = backends.tolerance(name, **options)
    if backends.is_exact(name):
        err = backends.relative_error(out, ORACLE)
    else:
        err = _rms(out, ORACLE)
    assert err <= bound, f"{name} {options}: error {err:.2e} above its bound {bound:.1e}"


@pytest.mark.parametrize("name", list(OPTIONS))
def test_any_option_value_works_to_the_bound_or_is_refused_by_name(name):
    b = _usable(name)
    table = _table(name)
    examples = EXAMPLES.get(name, DEFAULT_EXAMPLES)

    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def run(data):
        bad = data.draw(st.sampled_from([None, *table]), label="invalid option")
        options = {}
        required = {}
        for key, option in table.items():
            if key == bad:
                options[key] = data.draw(option.invalid, label=key)
            elif data.draw(st.booleans(), label=f"pass {key}"):
                options[key] = data.draw(option.valid, label=key)
            else:
                continue
            required.update(option.requires)
        if bad in required:  # the bad value stands; what needs it is left out
            options = {k: v for k, v in options.items() if table[k].requires.get(bad) is None}
            required = {k: v for k, v in required.items() if k != bad}
        _check(name, b, {**options, **required}, bad)

    try:
        run()
    finally:
        b.close()  # pools started with other n_workers: leave none running
