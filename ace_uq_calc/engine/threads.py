"""How many Numba threads the kernels of one call use."""
from __future__ import annotations

import numba

#: Structures with fewer atoms than this are evaluated by one thread whatever the thread setting: a
#: parallel region costs tens of microseconds on an idle machine and, when another process holds a
#: core, a wait for a scheduler time slice (milliseconds), against about 3 ms of work for 32 atoms.
PARALLEL_MIN_ATOMS = 64


class KernelThreads:
    """Context manager: run the Numba kernels with ``count`` threads (None: leave the setting), and
    restore the previous setting. ``numba.set_num_threads`` is per Python thread."""

    __slots__ = ("count", "previous")

    def __init__(self, count):
        self.count = count
        self.previous = None

    def __enter__(self):
        if self.count is not None:
            self.previous = numba.get_num_threads()
            if self.count != self.previous:
                numba.set_num_threads(self.count)
        return self

    def __exit__(self, *exc):
        if self.previous is not None and self.previous != self.count:
            numba.set_num_threads(self.previous)
        return False


def kernel_threads(n_atoms: int, num_threads=None) -> int:
    """Threads used for a structure of n_atoms: ``num_threads`` (None: Numba's current setting), but
    one thread below :data:`PARALLEL_MIN_ATOMS` atoms."""
    if n_atoms < PARALLEL_MIN_ATOMS:
        return 1
    return max(1, numba.get_num_threads() if num_threads is None else int(num_threads))


def checked_thread_count(num_threads):
    """``num_threads`` as an int from 1 to ``NUMBA_NUM_THREADS`` (None stays None); ValueError otherwise."""
    if num_threads is None:
        return None
    if isinstance(num_threads, bool) or int(num_threads) != num_threads or not (
            1 <= int(num_threads) <= numba.config.NUMBA_NUM_THREADS):
        raise ValueError(f"num_threads must be an integer from 1 to {numba.config.NUMBA_NUM_THREADS} "
                         f"(NUMBA_NUM_THREADS), got {num_threads!r}")
    return int(num_threads)
