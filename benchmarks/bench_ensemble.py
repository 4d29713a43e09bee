#!/usr/bin/env python
"""Cost of an ensemble calculator against one model (run by hand; not part of the test suite).

Structure: rattled fcc Cu, conventional cell repeated 5 x 5 x 5 (500 atoms, a = 3.61 A, Gaussian rattle
0.05 A, seed 42), as in bench_evaluator.py. One timed call = ``atoms.get_forces()`` +
``atoms.get_potential_energy()`` (+ for the ensemble ``forces_dev``, ``forces_std``, ``energy_std``,
all computed by the same calculate call) after atom 0 moved by 1e-4 A, neighbour list rebuilt every call
(``skin=0``). Printed: median wall time per call of one model and of the K-member ensemble, and their
ratio, for 1 and 2 Numba threads.

Cases:

(a) ``random``: K members on the basis of Cu_fs500 (Finnis-Sinclair embedding, 2 densities), each with
    the fixture's coefficients multiplied by (1 + 0.05 N(0, 1)) (seed 0); the single model is the fixture.
(b) ``fitted``: a fitted linear model and its ensemble, from ``--potential OUT.yaml`` (members read from
    ``OUT.ensemble/ensemble.yaml``, as written by ``ace-uq fit ... --ensemble K -o OUT.yaml``), e.g.::

        ace-uq fit ../shared/data/zuo2020/Cu_train.xyz --ensemble 8 -o /tmp/Cu.yaml
        python benchmarks/bench_ensemble.py --potential /tmp/Cu.yaml

``--slow`` also times the one-by-one path (members evaluated separately). Timings on a shared machine
are noisy: medians of ``--calls`` calls; OpenBLAS threads are not used by the timed kernels.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent
FIXTURE = PROJECT.parent / "shared" / "fixtures" / "pacemaker" / "Cu_fs500.yaml"
LOCAL_FIXTURE = PROJECT / "tests" / "data" / "Cu_fs500.yaml"


def make_structure():
    from ase.build import bulk

    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(5)
    atoms.rattle(stdev=0.05, seed=42)
    return atoms


def time_calls(atoms, calc, calls: int, ensemble: bool) -> float:
    """Median seconds of one full ASE calculation (forces + energy, + spreads for an ensemble)."""
    atoms = atoms.copy()
    atoms.calc = calc
    times = []
    for k in range(calls + 1):
        atoms.positions[0, 0] += 1e-4 if k % 2 == 0 else -1e-4
        t0 = time.perf_counter()
        atoms.get_forces()
        atoms.get_potential_energy()
        if ensemble:
            calc.get_property("forces_dev", atoms)
            calc.get_property("forces_std", atoms)
            calc.get_property("energy_std", atoms)
        if k:                     # the first call compiles / warms up
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def random_members(count: int):
    import numpy as np

    from ace_uq_calc.model.basis import load_basis

    path = FIXTURE if FIXTURE.exists() else LOCAL_FIXTURE
    basis = load_basis(str(path))
    rng = np.random.default_rng(0)
    members = []
    for _ in range(count):
        coef = basis.coefficients * (1.0 + 0.05 * rng.standard_normal(basis.coefficients.shape))
        members.append(dataclasses.replace(basis, coefficients=np.ascontiguousarray(coef)))
    return basis, members


def fitted_members(potential: str):
    from ace_uq_calc.fitting.ensemble_fit import ensemble_paths

    directory, ensemble_file = ensemble_paths(potential)
    if not os.path.exists(ensemble_file):
        sys.exit(f"{ensemble_file} not found: fit with 'ace-uq fit TRAIN.xyz --ensemble 8 -o {potential}'")
    return potential, ensemble_file


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=8, help="members of the random ensemble (default 8)")
    parser.add_argument("--potential", default=None, help="fitted OUT.yaml with OUT.ensemble/ensemble.yaml")
    parser.add_argument("--calls", type=int, default=15, help="timed calls per case (median)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--slow", action="store_true", help="also time members evaluated one by one")
    args = parser.parse_args(argv)

    import numba

    from ace_uq_calc import ACECalculator
    from ace_uq_calc.engine.model import Model

    atoms = make_structure()
    cases = []
    single, members = random_members(args.members)
    cases.append((f"random {args.members} on Cu_fs500", single, members))
    if args.potential:
        single_path, ensemble_file = fitted_members(args.potential)
        cases.append((f"fitted {args.potential}", single_path, ensemble_file))
    print(f"{len(atoms)} atoms; load average {os.getloadavg()[0]:.2f} (1 min)")
    print(f"{'case':<40} {'threads':>7} {'1 model ms':>10} {'ensemble ms':>11} {'ratio':>6}"
          + (f" {'one-by-one ms':>13}" if args.slow else ""))
    for label, one, ens in cases:
        for threads in args.threads:
            numba.set_num_threads(threads)
            t1 = time_calls(atoms, ACECalculator(one, skin=0.0), args.calls, False)
            calc = ACECalculator(ens, skin=0.0)
            tk = time_calls(atoms, calc, args.calls, True)
            line = (f"{label[:40]:<40} {threads:7d} {1e3 * t1:10.1f} {1e3 * tk:11.1f} {tk / t1:6.2f}")
            if args.slow:
                calc.model = Model(calc.model.bases, fast=False)
                ts = time_calls(atoms, calc, max(3, args.calls // 3), True)
                line += f" {1e3 * ts:13.1f}"
            print(line, f"(K = {calc.ensemble.size}, shared basis: {calc.ensemble.shared})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
