#!/usr/bin/env python
"""Active sets and their default thresholds on tungsten (run by hand; prints numbers).

Data (``../shared/data/W_uq``): training = W_elastic + 90 % of W_non-elastic (the split rule of
benchmarks/protocol.py: ``numpy.random.default_rng(2025).permutation``, the first 10 % held out), test =
the other 10 % of W_non-elastic (in domain) and W_sphere (spherical clusters with free surfaces, a family
absent from training). The potential's basis: ``--potential POT.yaml`` (a fitted model), or by default the
basis of the default fitting recipe for W at ``--cutoff`` (5 A) without fitting (an active set depends on
the basis only, not on the coefficients).

Printed: the time of ``build_active_set`` (projections, the held-out selection and the final selection)
and its parts, the rank, MaxVol passes and conditioning; the default thresholds by structure size; and
the fraction of test structures flagged / halted with those thresholds (each structure against the
thresholds for its own number of atoms), per family. A second run ``--compare-unstreamed`` also runs
MaxVol on all projections at once (in the same whitened coordinates) and reports how the two selections
compare (common rows; largest coefficient of each selection's rows in the other's; log |det|).

    OPENBLAS_NUM_THREADS=2 python benchmarks/bench_active_set.py [--cutoff 5] [--potential POT.yaml] [--compare-unstreamed]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
DATA = HERE.parent.parent / "shared" / "data" / "W_uq"


def default_basis(cutoff: float):
    from ace_uq_calc.fitting.basis_construction import (
        basis_for_size, count_functions, new_potential, prune_dependent_functions,
    )
    from ace_uq_calc.fitting.recipe import DEFAULT_FUNCTIONS, PRUNE_SAMPLES_PER_FUNCTION

    limits = basis_for_size(["W"], DEFAULT_FUNCTIONS, max_rank=4)
    pot = new_potential(["W"], limits, rcut=cutoff)
    return prune_dependent_functions(pot, count=max(400, PRUNE_SAMPLES_PER_FUNCTION * count_functions(["W"], limits)))


def family_rates(calc, active_set, frames):
    """(fraction flagged, fraction halted, median max gamma) of ``frames`` with the default thresholds."""
    flagged = halted = 0
    maxima = []
    for atoms in frames:
        atoms = atoms.copy()
        atoms.calc = calc
        atoms.get_potential_energy()
        value = calc.results["max_gamma"]
        flag, halt = active_set.thresholds(len(atoms))
        flagged += value > flag
        halted += value > halt
        maxima.append(value)
    return flagged / len(frames), halted / len(frames), float(np.median(maxima))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cutoff", type=float, default=5.0, help="A (default 5)")
    parser.add_argument("--potential", default=None, help="a fitted W potential instead of the default basis")
    parser.add_argument("--compare-unstreamed", action="store_true")
    args = parser.parse_args(argv)

    import ase.io

    from ace_uq_calc import ACECalculator, build_active_set, load_basis
    from protocol import split_by_structure

    elastic = ase.io.read(DATA / "W_elastic.xyz", ":")
    non_elastic = ase.io.read(DATA / "W_non-elastic.xyz", ":")
    ne_train, ne_test = split_by_structure(non_elastic)
    sphere = ase.io.read(DATA / "W_sphere.xyz", ":")
    train = elastic + ne_train
    basis = load_basis(args.potential if args.potential else default_basis(args.cutoff))
    print(f"W: {len(train)} training structures ({sum(len(a) for a in train)} atoms), basis {basis.nfunc['W']} "
          f"functions, cut-off {basis.cutoff_max} A; load average {os.getloadavg()[0]:.2f}")
    t0 = time.perf_counter()
    active_set = build_active_set(basis, train)
    elapsed = time.perf_counter() - t0
    built = active_set.info["W"]
    print(f"build_active_set: {elapsed:.1f} s (projections, held-out selection, final selection); rank "
          f"{active_set.ranks['W']} of {built['functions']}, MaxVol passes {built['maxvol_passes']} (final), "
          f"converged {built['converged']}, source reads {built['source_reads']}, condition number "
          f"{active_set.condition_numbers['W']:.3g}; load average {os.getloadavg()[0]:.2f}")
    d = active_set.grade_distribution
    print(f"held-out in-domain grades: {d.n_atoms} atoms of {d.n_structures} structures; tail from {d.tail_start:.3g} "
          f"(P = {d.tail_probability:.3g}), index {d.tail_index:.3g}")
    for n in (2, 54, 100, 250, 1000):
        print(f"  thresholds for {n:5d} atoms: flag > {active_set.thresholds(n)[0]:.3g}, halt > "
              f"{active_set.thresholds(n)[1]:.3g}")
    calc = ACECalculator(basis, active_set=active_set)
    print("| test family | structures | atoms (median) | flagged | halted | median max gamma |")
    print("|---|---|---|---|---|---|")
    for label, frames in (("W non-elastic, held-out 10 % (in domain)", ne_test), ("W_sphere (novel)", sphere)):
        flagged, halted, median = family_rates(calc, active_set, frames)
        print(f"| {label} | {len(frames)} | {int(np.median([len(a) for a in frames]))} | {100 * flagged:.1f} % | "
              f"{100 * halted:.1f} % | {median:.3g} |")
    if args.compare_unstreamed:
        compare_unstreamed(basis, train)
    return 0


def compare_unstreamed(basis, train) -> None:
    """Streamed selection against one MaxVol on all (whitened) projections in memory."""
    from ace_uq_calc.uncertainty.maxvol import maxvol
    from ace_uq_calc.uncertainty.projections import structure_projections
    from ace_uq_calc.uncertainty.subspace_selection import select_subspace_active_set

    x = np.concatenate([structure_projections(basis, a)[1] for a in train])
    t0 = time.perf_counter()
    streamed = select_subspace_active_set(lambda: (x[k:k + 20000] for k in range(0, len(x), 20000)))
    t1 = time.perf_counter()
    scale = np.linalg.norm(x, axis=0)
    scale[scale == 0] = 1.0
    eigenvalues, vectors = np.linalg.eigh((x / scale).T @ (x / scale))
    order = np.argsort(eigenvalues)[::-1][:streamed.rank]
    white = (x / scale) @ vectors[:, order] / np.sqrt(eigenvalues[order])
    t2 = time.perf_counter()
    selected, _ = maxvol(white, 1.001)
    t3 = time.perf_counter()
    index = {row.tobytes(): k for k, row in enumerate(x)}
    mine = np.array(sorted(index[row.tobytes()] for row in streamed.rows))
    a, b = white[mine], white[np.sort(selected)]
    print(f"streamed selection {t1 - t0:.1f} s; unstreamed MaxVol {t3 - t2:.1f} s (+ {t2 - t1:.1f} s whitening); "
          f"common rows {len(np.intersect1d(mine, selected))} of {streamed.rank}; largest coefficient of the "
          f"unstreamed rows in the streamed set {np.abs(b @ np.linalg.inv(a)).max():.6f}, of the streamed rows in "
          f"the unstreamed set {np.abs(a @ np.linalg.inv(b)).max():.6f}; log|det| streamed "
          f"{np.linalg.slogdet(a)[1]:.3f}, unstreamed {np.linalg.slogdet(b)[1]:.3f}")


if __name__ == "__main__":
    sys.exit(main())
