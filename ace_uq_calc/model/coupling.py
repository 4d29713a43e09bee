"""Angular coupling of ACE B-functions: Clebsch-Gordan and generalized Clebsch-Gordan coefficients.

Build-time only (pure Python + numpy); everything is cached with :func:`functools.lru_cache`
because a potential repeats the same ``(ls, lint)`` combinations many times.

Conventions (spec ``pacemaker-format.md`` sections 2.3, 6.2, 6.3, 7):

* ``<j1 m1 j2 m2 | J M>`` in the Condon-Shortley convention, evaluated with Racah's formula in
  exact rational arithmetic: the squared coefficient is an exact :class:`fractions.Fraction`, so
  exact zeros are decided without rounding, and the float is ``sign * sqrt(square)``.
* The generalized coefficient of a rank-N function is the product of ordinary coefficients along
  the binary coupling tree of spec 6.2 (leaves paired left to right, intermediates paired first in,
  first out, the last coupling to L = 0, an odd leaf coupled last). Its square is again computed
  exactly, so a product is either exactly zero (dropped) or correctly rounded up to the final sqrt.
* m-vectors are listed in pyace's enumeration order: m_1 varies fastest and m_N slowest, each from
  -l to +l, i.e. ascending lexicographic order of ``(m_N, ..., m_1)``.
* The half basis (spec 6.3) keeps the vectors whose first non-zero entry is positive plus the
  all-zero vector, with the coefficients of the former doubled. No compression is applied.
"""
from __future__ import annotations

from fractions import Fraction
from functools import lru_cache
from math import factorial, sqrt

import numpy as np

__all__ = [
    "clebsch_gordan",
    "clebsch_gordan_squared",
    "complete_lint",
    "coupling_tree",
    "generalized_cg",
]


def _as_int(value, name: str) -> int:
    """Accept Python/numpy integers and integer-valued floats; reject everything else."""
    try:
        iv = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an integer, got {value!r}") from None
    if iv != value:
        raise ValueError(f"{name} must be an integer (half-integer angular momenta are not supported), got {value!r}")
    return iv


# --------------------------------------------------------------------------------------------------
# Ordinary Clebsch-Gordan coefficients
# --------------------------------------------------------------------------------------------------

@lru_cache(maxsize=None)
def _cg_exact(j1: int, m1: int, j2: int, m2: int, J: int, M: int) -> tuple[int, Fraction]:
    """(sign, square) of <j1 m1 j2 m2 | J M>; sign 0 and square 0 when the coefficient vanishes."""
    if min(j1, j2, J) < 0:
        return 0, Fraction(0)
    if M != m1 + m2 or abs(m1) > j1 or abs(m2) > j2 or abs(M) > J:
        return 0, Fraction(0)
    if J < abs(j1 - j2) or J > j1 + j2:
        return 0, Fraction(0)
    # Racah's formula: <..|J M> = sqrt(P) * S
    f = factorial
    prefactor = Fraction(
        (2 * J + 1) * f(J + j1 - j2) * f(J - j1 + j2) * f(j1 + j2 - J)
        * f(J + M) * f(J - M) * f(j1 - m1) * f(j1 + m1) * f(j2 - m2) * f(j2 + m2),
        f(j1 + j2 + J + 1),
    )
    k_min = max(0, j2 - J - m1, j1 - J + m2)
    k_max = min(j1 + j2 - J, j1 - m1, j2 + m2)
    series = Fraction(0)
    for k in range(k_min, k_max + 1):
        denominator = (f(k) * f(j1 + j2 - J - k) * f(j1 - m1 - k) * f(j2 + m2 - k)
                       * f(J - j2 + m1 + k) * f(J - j1 - m2 + k))
        series += Fraction(-1 if k % 2 else 1, denominator)
    if series == 0:
        return 0, Fraction(0)
    return (1 if series > 0 else -1), prefactor * series * series


def clebsch_gordan_squared(j1: int, m1: int, j2: int, m2: int, J: int, M: int) -> tuple[int, Fraction]:
    """Exact ``(sign, <j1 m1 j2 m2 | J M>**2)`` as ``(int, Fraction)``; ``(0, 0)`` when it vanishes."""
    args = [_as_int(v, n) for v, n in zip((j1, m1, j2, m2, J, M), ("j1", "m1", "j2", "m2", "J", "M"))]
    return _cg_exact(*args)


def clebsch_gordan(j1: int, m1: int, j2: int, m2: int, J: int, M: int) -> float:
    """<j1 m1 j2 m2 | J M>, Condon-Shortley convention (Racah formula); 0 when selection rules fail.

    Integer j only (a ``ValueError`` is raised for non-integer arguments).
    """
    sign, square = clebsch_gordan_squared(j1, m1, j2, m2, J, M)
    if sign == 0:
        return 0.0
    return sign * sqrt(square)  # float(Fraction) is correctly rounded, sqrt adds at most 1/2 ulp


# --------------------------------------------------------------------------------------------------
# Coupling tree and lint validation / completion
# --------------------------------------------------------------------------------------------------

@lru_cache(maxsize=None)
def coupling_tree(rank: int) -> tuple[tuple[int, int, int], ...]:
    """Binary coupling tree of spec 6.2 for ``rank >= 2`` factors.

    Nodes ``0 .. rank-1`` are the leaves (factors), node ``rank + i`` is the i-th intermediate, which
    carries ``lint[i]``; node ``-1`` is the root (L = 0). Returns the ``rank - 1`` couplings
    ``(left, right, out)`` in creation order (the last one has ``out == -1``). The argument order
    inside each Clebsch-Gordan bracket is ``<left right | out>``.
    """
    if rank < 2:
        raise ValueError(f"a coupling tree needs rank >= 2, got {rank}")
    n_intermediate = rank - 2
    couplings: list[tuple[int, int, int]] = []
    next_out = rank

    def new_out() -> int:
        nonlocal next_out
        if next_out - rank >= n_intermediate:
            return -1  # lint exhausted: this is the last coupling, to L = 0
        out = next_out
        next_out += 1
        return out

    queue: list[int] = []
    for a in range(0, rank - 1, 2):
        out = new_out()
        couplings.append((a, a + 1, out))
        queue.append(out)
    while len(queue) > 1 and queue[0] != -1:
        a, b = queue.pop(0), queue.pop(0)
        out = new_out()
        couplings.append((a, b, out))
        queue.append(out)
    if rank % 2 == 1:
        couplings.append((queue[0], rank - 1, new_out()))
    if len(couplings) != rank - 1 or couplings[-1][2] != -1 or any(c[2] == -1 for c in couplings[:-1]):
        raise AssertionError(f"inconsistent coupling tree for rank {rank}: {couplings}")  # pragma: no cover
    return tuple(couplings)


def _node_name(node: int, rank: int) -> str:
    if node == -1:
        return "0 (root)"
    if node < rank:
        return f"l_{node + 1}"
    return f"L_{node - rank + 1}"


@lru_cache(maxsize=None)
def _complete_lint_cached(ls: tuple[int, ...], lint: tuple[int, ...]) -> tuple[int, ...]:
    rank = len(ls)
    if rank == 0:
        raise ValueError("nl is empty (rank 0)")
    if any(l < 0 for l in ls):
        raise ValueError(f"nl = {list(ls)} contains a negative angular momentum")
    if any(L < 0 for L in lint):
        raise ValueError(f"lint = {list(lint)} contains a negative value")
    if rank == 1:
        if ls[0] != 0:
            raise ValueError(f"rank-1 function needs nl = [0], found nl = {list(ls)}")
        if lint:
            raise ValueError(f"rank-1 function takes no lint, found lint = {list(lint)}")
        return ()
    if sum(ls) % 2:
        raise ValueError(f"sum of nl = {list(ls)} is odd (must be even)")
    n_full = rank - 2
    if rank == 2:
        if ls[0] != ls[1]:
            raise ValueError(f"rank-2 function needs l_1 = l_2, found nl = {list(ls)}")
        if lint:
            raise ValueError(f"rank-2 function takes no lint, found lint = {list(lint)}")
        return ()
    tree = coupling_tree(rank)
    left, right, _ = tree[-1]  # root coupling; one of its children is the last intermediate
    last = rank + n_full - 1
    partner = left if right == last else right

    def value(node: int, values: tuple[int, ...]) -> int:
        return ls[node] if node < rank else values[node - rank]

    if len(lint) == n_full - 1:
        if partner >= rank and partner - rank >= len(lint):  # pragma: no cover - impossible for this tree
            raise ValueError(f"cannot complete lint = {list(lint)} for nl = {list(ls)}")
        lint = lint + (value(partner, lint),)
    elif len(lint) != n_full:
        raise ValueError(
            f"rank-{rank} function needs lint of length {n_full} (or {n_full - 1}, completed), "
            f"found lint = {list(lint)} for nl = {list(ls)}")
    # final coupling to L = 0: both children equal (rank 3: L1 = l3, 4: L1 = L2, 5: L3 = l5, 6: L4 = L3)
    if value(left, lint) != value(right, lint):
        raise ValueError(
            f"lint = {list(lint)} for nl = {list(ls)} violates {_node_name(left, rank)} = {_node_name(right, rank)} "
            f"({value(left, lint)} != {value(right, lint)}) required by the final coupling to L = 0")
    for a, b, out in tree[:-1]:
        la, lb, lo = value(a, lint), value(b, lint), value(out, lint)
        if not abs(la - lb) <= lo <= la + lb:
            raise ValueError(
                f"lint = {list(lint)} for nl = {list(ls)} violates the triangle condition "
                f"|{_node_name(a, rank)} - {_node_name(b, rank)}| <= {_node_name(out, rank)} <= "
                f"{_node_name(a, rank)} + {_node_name(b, rank)} ({la}, {lb} -> {lo})")
    return lint


def _as_tuple(values, name: str) -> tuple[int, ...]:
    if values is None:
        return ()
    if isinstance(values, (int, np.integer)):
        values = (values,)
    return tuple(_as_int(v, name) for v in values)


def complete_lint(ls: tuple[int, ...], lint: tuple[int, ...]) -> tuple[int, ...]:
    """Validate ``(ls, lint)`` and complete a short ``lint`` as pyace does (spec 2.3).

    Rules: rank 1 needs l = 0; rank 2 needs l_1 = l_2; the sum of l is even; rank 3: L_1 = l_3;
    rank 4: L_1 = L_2; rank 5: L_3 = l_5; rank 6: L_4 = L_3 (in general: the two children of the
    final coupling of the tree are equal); triangle conditions at every coupling of the tree.
    ``lint`` may be one entry short (length N-3); the missing last entry is then the value its
    partner in the final coupling requires (rank 3: ``[l_3]``; rank 4: ``[L] -> [L, L]``;
    rank 5: append ``l_5``; rank 6: repeat the last). Returns the full lint (length N-2, empty for
    N <= 2); raises ``ValueError`` naming the problem otherwise.
    """
    return _complete_lint_cached(_as_tuple(ls, "nl"), _as_tuple(lint, "lint"))


# --------------------------------------------------------------------------------------------------
# Generalized Clebsch-Gordan coefficients
# --------------------------------------------------------------------------------------------------

@lru_cache(maxsize=None)
def _generalized_exact(ls: tuple[int, ...], lint: tuple[int, ...]) -> tuple[tuple[tuple[int, ...], int, Fraction], ...]:
    """All non-zero terms ``(m-vector, sign, exact square)`` of the full sum, in pyace's order."""
    rank = len(ls)
    tree = coupling_tree(rank)

    def lvalue(node: int) -> int:
        if node == -1:
            return 0
        return ls[node] if node < rank else lint[node - rank]

    # per node: {M: [(leaf indices are implicit, m-tuple over the node's leaves, sign, square)]}
    partial: dict[int, dict[int, list[tuple[tuple[int, ...], int, Fraction]]]] = {}
    leaves: dict[int, tuple[int, ...]] = {}
    for t in range(rank):
        partial[t] = {m: [((m,), 1, Fraction(1))] for m in range(-ls[t], ls[t] + 1)}
        leaves[t] = (t,)
    for a, b, out in tree:
        la, lb, lo = lvalue(a), lvalue(b), lvalue(out)
        result: dict[int, list] = {}
        for Ma, terms_a in partial.pop(a).items():
            for Mb, terms_b in partial[b].items():
                Mo = Ma + Mb
                if abs(Mo) > lo:
                    continue
                sign, square = _cg_exact(la, Ma, lb, Mb, lo, Mo)
                if sign == 0:
                    continue
                bucket = result.setdefault(Mo, [])
                for ms_a, s_a, q_a in terms_a:
                    for ms_b, s_b, q_b in terms_b:
                        bucket.append((ms_a + ms_b, sign * s_a * s_b, square * q_a * q_b))
        del partial[b]
        partial[out] = result
        leaves[out] = leaves.pop(a) + leaves.pop(b)
    order = leaves[-1]
    terms = []
    for ms_sub, sign, square in partial[-1].get(0, []):
        ms = [0] * rank
        for position, m in zip(order, ms_sub):
            ms[position] = m
        terms.append((tuple(ms), sign, square))
    terms.sort(key=lambda term: term[0][::-1])  # m_1 fastest, m_N slowest
    return tuple(terms)


def _leading_sign(ms: tuple[int, ...]) -> int:
    for m in ms:
        if m:
            return 1 if m > 0 else -1
    return 0


@lru_cache(maxsize=None)
def _generalized_arrays(ls: tuple[int, ...], lint: tuple[int, ...], half: bool) -> tuple[np.ndarray, np.ndarray]:
    rank = len(ls)
    if rank == 1:
        ms, coefficients = np.zeros((1, 1), dtype=np.int64), np.ones(1)
    else:
        rows, values = [], []
        for vector, sign, square in _generalized_exact(ls, lint):
            if half:
                lead = _leading_sign(vector)
                if lead < 0:
                    continue
                if lead > 0:
                    square = 4 * square  # doubled coefficient
            rows.append(vector)
            values.append(sign * sqrt(square))
        ms = np.array(rows, dtype=np.int64).reshape(len(rows), rank)
        coefficients = np.array(values, dtype=np.float64)
    ms.flags.writeable = False
    coefficients.flags.writeable = False
    return ms, coefficients


def generalized_cg(ls: tuple[int, ...], lint: tuple[int, ...], half: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """m-vectors ``(K, N)`` int64 and coefficients ``(K,)`` float64 of the generalized CG (spec 6.2).

    ``lint`` is validated and, if one entry short, completed with :func:`complete_lint`.
    ``half=True``: pyace's half basis (spec 6.3): enumeration with m_1 fastest and m_N slowest, only
    vectors with sum 0 whose first non-zero entry is positive (plus the all-zero vector), the
    coefficients of the vectors with a positive leading entry doubled; exactly-zero coefficients
    dropped (decided in exact rational arithmetic), no compression. ``K_f = len(coefficients)``.
    ``half=False``: all m-vectors with sum 0 and non-zero coefficient, same order.
    Rank 1 returns ``([[0]], [1.0])``. The returned arrays are fresh, writable copies.
    """
    ls_t = _as_tuple(ls, "nl")
    lint_t = complete_lint(ls_t, _as_tuple(lint, "lint"))
    ms, coefficients = _generalized_arrays(ls_t, lint_t, bool(half))
    return ms.copy(), coefficients.copy()
