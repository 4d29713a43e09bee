"""Turn a parsed potential file into the flat arrays the Numba kernels evaluate.

Data flow: ``.yaml`` -> :class:`~ace_uq_calc.model.yaml_format.PotentialFile` ->
:class:`ACEBasis` (this module: function order, coupling coefficients, radial tables) -> kernels.

Index conventions used by the kernels (all 0-based):

* species index = position of the element in the sorted element list (spec 2.2);
* bond index of the ordered pair (central a, neighbour b) = a * n_elements + b;
* rank-1 A-basis A1[nu, k] at flat index nu * nradbase + k;
* A-basis A[nu, n, l, m] (complex, -l <= m <= l) at flat index
  (nu * nradmax + n) * (lmax + 1)**2 + l*l + l + m;
* stored harmonics and the half A-basis (m >= 0) at l(l+1)/2 + m;
* functions of all elements concatenated, element e owning [function_start[e], function_start[e+1]),
  each element's functions in pacemaker's order (spec 7), so projections come out in that order.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from ..kernels.harmonics import harmonic_normalisation
from .coupling import complete_lint, generalized_cg
from .elements import ATOMIC_NUMBERS
from .embedding import embedding_kind
from .radial import BondParameters, build_radial_table
from .yaml_format import PotentialFile, PotentialFormatError, read_potential_file

#: Refuse potentials whose radial lookup tables would exceed this (bytes). A five-element potential
#: with nradbase 20, nradmax 15, lmax 6, r_c 8 A and pacemaker's knot spacing 0.001 A needs 0.8 GB.
MAX_TABLE_BYTES = 2 * 2**30


@dataclass
class ACEBasis:
    """A potential ready for evaluation. Arrays are C-contiguous float64 / int64."""

    potential: PotentialFile
    elements: list
    nradbase: int
    nradmax: int
    lmax: int
    cutoff_matrix: np.ndarray        # (S, S) Angstrom, r_c(central, neighbour)
    # radial lookup tables (spec 3.5), one per ordered bond
    radial_tables: np.ndarray        # (S*S, rows, ncol, 4)
    radial_scale: np.ndarray         # (S*S,) knots per Angstrom
    radial_nlut: np.ndarray          # (S*S,) int64
    bond_r_in: np.ndarray            # (S*S,) Angstrom
    bond_delta_in: np.ndarray        # (S*S,) Angstrom
    zbl: bool
    harmonic_norm: np.ndarray        # (nlm,)
    # functions
    function_start: np.ndarray       # (S+1,)
    function_rank: np.ndarray        # (F,)
    function_a1_index: np.ndarray    # (F,)  rank-1 only, else -1
    function_ms_start: np.ndarray    # (F+1,)
    coefficients: np.ndarray         # (F, max ndensity)
    ms_coefficient: np.ndarray       # (Q,) generalized CG (half basis, doubled)
    ms_factor: np.ndarray            # (Q, max rank) flat A indices
    # embeddings
    ndensity: np.ndarray             # (S,)
    embedding_weight: np.ndarray     # (S, max ndensity)
    embedding_exponent: np.ndarray   # (S, max ndensity)
    embedding_kind: np.ndarray       # (S,)
    rho_core_cut: np.ndarray         # (S,) eV
    drho_core_cut: np.ndarray        # (S,) eV
    yaml_index: dict                 # element -> (nfunc,) file position of each function in pacemaker order
    ordered_functions: dict          # element -> list[FunctionSpec] in pacemaker order

    @property
    def n_elements(self) -> int:
        return len(self.elements)

    @property
    def nfunc(self) -> dict:
        return {el: int(self.function_start[e + 1] - self.function_start[e]) for e, el in enumerate(self.elements)}

    @property
    def cutoff_max(self) -> float:
        return float(self.cutoff_matrix.max())

    @property
    def n_radial_columns(self) -> int:
        return self.nradbase + self.nradmax * (self.lmax + 1) + 1

    @property
    def n_a_full(self) -> int:
        return self.n_elements * self.nradmax * (self.lmax + 1) ** 2

    @property
    def max_ndensity(self) -> int:
        return int(self.ndensity.max())

    @property
    def max_nfunc(self) -> int:
        return int(np.diff(self.function_start).max()) if len(self.function_start) > 1 else 0

    def species_of(self, symbols) -> np.ndarray:
        """Species indices of chemical symbols; ValueError naming unknown elements."""
        lookup = {el: i for i, el in enumerate(self.elements)}
        unknown = sorted({s for s in symbols if s not in lookup})
        if unknown:
            raise ValueError(
                f"elements {unknown} are not in the potential {self.potential.source} "
                f"(it knows {', '.join(self.elements)})"
            )
        return np.array([lookup[s] for s in symbols], dtype=np.int64)


def _global_sizes(pot: PotentialFile):
    nradbase = max(b.nradbase for b in pot.bonds.values())
    nradmax = max(b.nradmax for b in pot.bonds.values())
    lmax = max(b.lmax for b in pot.bonds.values())
    for funcs in pot.functions.values():
        for f in funcs:
            if f.rank == 1:
                nradbase = max(nradbase, f.nr[0])
            else:
                nradmax = max(nradmax, max(f.nr))
                lmax = max(lmax, max(f.nl))
    return nradbase, max(nradmax, 1), lmax


def function_order_key(spec, element_index: dict, half_ms: np.ndarray):
    """pacemaker's sort key of a function (spec 7)."""
    return (
        spec.rank,
        tuple(element_index[nu] for nu in spec.neighbours),
        tuple(spec.nr),
        tuple(spec.nl),
        len(half_ms),
        tuple(int(v) for v in half_ms.ravel()),
    )


def _validated_lint(spec, where):
    if spec.rank == 1:
        if spec.nl[0] != 0:
            raise PotentialFormatError(f"{where}: rank-1 function needs nl = [0], found {list(spec.nl)}")
        return ()
    try:
        return tuple(complete_lint(tuple(spec.nl), tuple(spec.lint)))
    except ValueError as exc:
        raise PotentialFormatError(f"{where}: {exc}") from None


def _check_table_size(pot: PotentialFile, nradbase: int, nradmax: int, lmax: int) -> None:
    """PotentialFormatError before allocating radial tables larger than MAX_TABLE_BYTES."""
    ncol = nradbase + nradmax * (lmax + 1) + 1
    knots = max(math.floor(b.rcut / pot.delta_spline_bins) + 1 for b in pot.bonds.values())
    size = 32.0 * len(pot.elements) ** 2 * knots * ncol
    if size > MAX_TABLE_BYTES:
        raise PotentialFormatError(
            f"{pot.source}: the radial tables would need {size / 2**30:.3g} GiB (limit {MAX_TABLE_BYTES / 2**30:g}): "
            f"{knots} knots (max rcutij {max(b.rcut for b in pot.bonds.values())} / DeltaSplineBins "
            f"{pot.delta_spline_bins}) x {ncol} columns (nradbase {nradbase}, nradmax {nradmax}, lmax {lmax}, "
            "including the nr and nl of the functions)"
        )


def build_basis(pot: PotentialFile) -> ACEBasis:
    """Compile a parsed potential into kernel arrays (function order, CG lists, radial tables)."""
    elements = pot.elements
    S = len(elements)
    element_index = {el: i for i, el in enumerate(elements)}
    nradbase, nradmax, lmax = _global_sizes(pot)
    lm_full = (lmax + 1) ** 2

    # ---- bonds and radial tables
    _check_table_size(pot, nradbase, nradmax, lmax)
    cutoff = np.zeros((S, S))
    tables = []
    r_in = np.zeros(S * S)
    delta_in = np.zeros(S * S)
    for a, ea in enumerate(elements):
        for b, eb in enumerate(elements):
            bond = pot.bonds[(ea, eb)]
            crad = np.zeros((nradmax, lmax + 1, nradbase))
            c = bond.radcoefficients
            crad[: c.shape[0], : c.shape[1], : c.shape[2]] = c
            params = BondParameters(
                radbase=bond.radbase,
                radparameters=tuple(bond.radparameters),
                rcut=bond.rcut,
                dcut=bond.dcut,
                r_in=bond.r_in,
                delta_in=bond.delta_in,
                inner_cutoff_type=bond.inner_cutoff_type,
                core_repulsion=tuple(bond.core_repulsion),
                radcoefficients=crad,
                z_central=ATOMIC_NUMBERS[ea],
                z_neighbour=ATOMIC_NUMBERS[eb],
            )
            try:
                table = build_radial_table(params, nradbase, nradmax, lmax, pot.delta_spline_bins)
            except ValueError as exc:
                raise PotentialFormatError(f"{pot.source}: bond {ea}-{eb}: {exc}") from None
            if not np.all(np.isfinite(table.coefficients)):
                raise PotentialFormatError(
                    f"{pot.source}: bond {ea}-{eb}: the radial functions are not finite on [0, rcutij] "
                    f"(check radbase {bond.radbase}, radparameters {list(bond.radparameters)}, "
                    "radcoefficients, core-repulsion)"
                )
            tables.append(table)
            cutoff[a, b] = bond.rcut
            r_in[a * S + b] = bond.r_in
            delta_in[a * S + b] = bond.delta_in
    rows = max(t.coefficients.shape[0] for t in tables)
    ncol = nradbase + nradmax * (lmax + 1) + 1
    radial_tables = np.zeros((S * S, rows, ncol, 4))
    for k, t in enumerate(tables):
        radial_tables[k, : t.coefficients.shape[0]] = t.coefficients
    radial_scale = np.array([t.scale for t in tables], dtype=np.float64)
    radial_nlut = np.array([t.nlut for t in tables], dtype=np.int64)
    zbl = next(iter(pot.bonds.values())).inner_cutoff_type == "zbl"

    # ---- functions in pacemaker order
    max_nd = max(e.ndensity for e in pot.embeddings.values())
    max_rank = max([f.rank for fs in pot.functions.values() for f in fs] + [1])
    function_start = [0]
    ranks, a1_index, ms_start, coeffs = [], [], [0], []
    ms_coef, ms_factor = [], []
    yaml_index, ordered = {}, {}
    for e, el in enumerate(elements):
        nd = pot.embeddings[el].ndensity
        entries = []
        for spec in pot.functions[el]:
            where = f"{pot.source}: function {spec.file_index} of {el} (type {' '.join((el,) + spec.neighbours)})"
            lint = _validated_lint(spec, where)
            if spec.rank == 1:
                half_ms, half_c = np.zeros((1, 1), dtype=np.int64), np.ones(1)
            else:
                half_ms, half_c = generalized_cg(tuple(spec.nl), lint, True)
            entries.append((function_order_key(spec, element_index, half_ms), spec, half_ms, half_c))
        entries.sort(key=lambda item: item[0])
        yaml_index[el] = np.array([spec.file_index for _, spec, _, _ in entries], dtype=np.int64)
        ordered[el] = [spec for _, spec, _, _ in entries]
        for _, spec, half_ms, half_c in entries:
            ranks.append(spec.rank)
            row = np.zeros(max_nd)
            row[:nd] = spec.coefficients
            coeffs.append(row)
            nus = [element_index[nu] for nu in spec.neighbours]
            if spec.rank == 1:
                a1_index.append(nus[0] * nradbase + spec.nr[0] - 1)
            else:
                a1_index.append(-1)
                for mvec, cg in zip(half_ms, half_c):
                    if cg == 0.0:
                        continue
                    fac = np.full(max_rank, -1, dtype=np.int64)
                    for t in range(spec.rank):
                        n, l, m = spec.nr[t] - 1, spec.nl[t], int(mvec[t])
                        fac[t] = (nus[t] * nradmax + n) * lm_full + l * l + l + m
                    ms_coef.append(cg)
                    ms_factor.append(fac)
            ms_start.append(len(ms_coef))
        function_start.append(len(ranks))

    emb_w = np.zeros((S, max_nd))
    emb_m = np.ones((S, max_nd))
    for e, el in enumerate(elements):
        emb = pot.embeddings[el]
        emb_w[e, : emb.ndensity] = emb.weights
        emb_m[e, : emb.ndensity] = emb.exponents

    def i64(x):
        return np.ascontiguousarray(np.asarray(x, dtype=np.int64))

    def f64(x):
        return np.ascontiguousarray(np.asarray(x, dtype=np.float64))

    return ACEBasis(
        potential=pot,
        elements=list(elements),
        nradbase=nradbase,
        nradmax=nradmax,
        lmax=lmax,
        cutoff_matrix=f64(cutoff),
        radial_tables=radial_tables,
        radial_scale=radial_scale,
        radial_nlut=radial_nlut,
        bond_r_in=f64(r_in),
        bond_delta_in=f64(delta_in),
        zbl=zbl,
        harmonic_norm=harmonic_normalisation(lmax),
        function_start=i64(function_start),
        function_rank=i64(ranks),
        function_a1_index=i64(a1_index),
        function_ms_start=i64(ms_start),
        coefficients=f64(np.array(coeffs).reshape(len(ranks), max_nd)),
        ms_coefficient=f64(ms_coef),
        ms_factor=i64(np.array(ms_factor, dtype=np.int64).reshape(len(ms_coef), max_rank)),
        ndensity=i64([pot.embeddings[el].ndensity for el in elements]),
        embedding_weight=emb_w,
        embedding_exponent=emb_m,
        embedding_kind=i64([embedding_kind(pot.embeddings[el].npoti) for el in elements]),
        rho_core_cut=f64([pot.embeddings[el].rho_core_cut for el in elements]),
        drho_core_cut=f64([pot.embeddings[el].drho_core_cut for el in elements]),
        yaml_index=yaml_index,
        ordered_functions=ordered,
    )


def load_basis(potential) -> ACEBasis:
    """Accept a path, a :class:`PotentialFile` or an :class:`ACEBasis`."""
    if isinstance(potential, ACEBasis):
        return potential
    if isinstance(potential, PotentialFile):
        return build_basis(potential)
    if isinstance(potential, (str, os.PathLike)):
        return build_basis(read_potential_file(potential))
    raise TypeError(f"expected a potential file path, PotentialFile or ACEBasis, got {type(potential).__name__}")
