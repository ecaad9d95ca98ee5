"""The asv suite of nbody-backends (``bench_*.py``) and stand-alone benchmark scripts.

asv imports every module here; the asv benchmarks live in the ``bench_*`` modules and are
generic over :func:`backends.names`, so a newly registered backend joins them automatically.
Set ``NBODY_BENCH_TINY=1`` before importing to shrink every size (used by the tests).
"""
