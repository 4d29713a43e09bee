"""Numba embedding functions F(rho; m) of spec 8.2 (rho and F in eV-like density units)."""
import math

from numba import njit

FINNIS_SINCLAIR = 0
FINNIS_SINCLAIR_SHIFTED_SCALED = 1
#: pacemaker's embedding names (``npoti``) -> the kind codes of :func:`embedding_value`
EMBEDDING_KINDS = {"FinnisSinclair": FINNIS_SINCLAIR, "FinnisSinclairShiftedScaled": FINNIS_SINCLAIR_SHIFTED_SCALED}


@njit(cache=True)
def _finnis_sinclair(rho, m):
    """Regularised power law: F = sign(rho) [(1 - G) a^m + lam G a], G = exp(-(W a)^3), W = 1e6."""
    w = 1.0e6
    lam = w ** (1.0 - m)
    if abs(rho) <= 1.0e-10:
        return lam * rho, lam
    a = abs(rho)
    wa3 = (w * a) ** 3
    if wa3 > 30.0:
        g = 0.0
    else:
        g = math.exp(-wa3)
    dg = -3.0 * w * w * w * a * a * g
    am = a ** m
    f = math.copysign(1.0, rho) * ((1.0 - g) * am + lam * g * a)
    df = m * a ** (m - 1.0) * (1.0 - g) - am * dg + lam * dg * a + lam * g
    return f, df


@njit(cache=True)
def _finnis_sinclair_shifted_scaled(rho, m):
    """F = sign(rho) ((x0 + a)^m - y0), a = |rho|; exactly F = rho when |m - 1| < 1e-10."""
    if abs(m - 1.0) < 1.0e-10:
        return rho, 1.0
    a = abs(rho)
    nu = 1.0 / m
    ea = math.exp(-a)
    x0 = nu ** (nu / (1.0 - nu)) * ea
    y0 = nu ** (1.0 / (1.0 - nu)) * ea
    f = math.copysign(1.0, rho) * ((x0 + a) ** m - y0)
    df = y0 + m * (1.0 - x0) * (x0 + a) ** (m - 1.0)
    return f, df


@njit(cache=True)
def embedding_value(rho, m, kind):
    """Embedding F(rho; m) and dF/drho. kind 0 = FinnisSinclair, 1 = FinnisSinclairShiftedScaled."""
    if kind == FINNIS_SINCLAIR:
        return _finnis_sinclair(rho, m)
    if kind == FINNIS_SINCLAIR_SHIFTED_SCALED:
        return _finnis_sinclair_shifted_scaled(rho, m)
    raise ValueError("unknown embedding kind")
