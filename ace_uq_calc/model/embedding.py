"""Embedding functions F(rho; m) of spec 8.2 for Python callers (build time, tests, reports).

The formulas live once, in the Numba kernel :func:`ace_uq_calc.kernels.embedding.embedding_value`;
this module maps pacemaker's ``npoti`` names to the kernel's integer kinds and vectorises it.
(The kernel uses libm ``pow``; numpy's ``**`` takes sqrt / square shortcuts for m = 0.5 / 2, which
changes F by ~1e-9 relative at |rho| ~ 1e-7 where (x0 + a)^m - y0 cancels.)
"""
from __future__ import annotations

import numpy as np

from ..kernels.embedding import EMBEDDING_KINDS, embedding_value


def embedding_kind(npoti: str) -> int:
    """Integer code of an ``npoti`` name for the Numba kernel; ValueError for unknown names."""
    try:
        return EMBEDDING_KINDS[npoti]
    except KeyError:
        raise ValueError(
            f"unknown embedding npoti {npoti!r}; expected one of {sorted(EMBEDDING_KINDS)}"
        ) from None


def embedding(rho, m: float, npoti: str):
    """F(rho; m) and dF/drho for ``npoti`` 'FinnisSinclair' or 'FinnisSinclairShiftedScaled'.

    rho: scalar or array of densities; m: exponent. Floats for scalar input, arrays otherwise.
    """
    kind = embedding_kind(npoti)
    if np.ndim(rho) == 0:
        f, df = embedding_value(float(rho), float(m), kind)
        return float(f), float(df)
    r = np.asarray(rho, dtype=np.float64)
    f = np.empty(r.shape)
    df = np.empty(r.shape)
    for idx in np.ndindex(r.shape):
        f[idx], df[idx] = embedding_value(float(r[idx]), float(m), kind)
    return f, df
