"""Thread scaling of the primary backend ``numba_parallel`` (1 and 2 Numba threads).

``numba.set_num_threads`` limits the threads of the calling thread's parallel regions; thread
counts above ``NUMBA_NUM_THREADS`` (the machine's cores by default) are skipped.
"""

from __future__ import annotations

from benchmarks import _common as c

NAME = "numba_parallel"


class NumbaParallelThreads:
    """Wall time of one warm ``numba_parallel`` call with a given number of threads."""

    params = ([1, 2], [c.SIZES[-1]])
    param_names = ["threads", "n"]
    number = 1
    repeat = (2, 5, 2.0)
    rounds = 1
    warmup_time = 0.0
    timeout = 300

    def setup(self, threads, n):
        if NAME not in c.in_process():
            raise NotImplementedError(f"{NAME} is not registered")
        c.require(NAME, n)
        import numba

        if threads > numba.config.NUMBA_NUM_THREADS:
            raise NotImplementedError(
                f"{threads} threads > NUMBA_NUM_THREADS = {numba.config.NUMBA_NUM_THREADS}"
            )
        self.m, self.x = c.inputs(n)
        self.accel = c.get(NAME).accel
        c.warm(NAME, n)
        numba.set_num_threads(threads)

    def teardown(self, threads, n):
        import numba

        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)

    def time_accel(self, threads, n):
        self.accel(self.m, self.x)
