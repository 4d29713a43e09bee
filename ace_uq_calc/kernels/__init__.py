"""Numba kernels (no ASE): neighbour list, radial tables, harmonics, embedding, A/B basis, reverse pass.

Threading: the kernels use ``prange`` over atoms. Numba's default ``workqueue`` layer is not
thread-safe (two Python threads calling parallel kernels at once can crash), so unless the user
chose a layer with ``NUMBA_THREADING_LAYER`` we ask for a thread-safe one (``threadsafe``: TBB if
installed, else OpenMP).
"""
import os

import numba

if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "threadsafe"
