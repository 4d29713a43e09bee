"""Active learning with ASE's EMT calculator as the reference method.

Iteration 0 fits a small linear Cu ACE on a few EMT-labelled, gently rattled fcc cells. Every
iteration then runs hot Langevin MD with the current model, watched by an UncertaintyMonitor that
flags frames whose extrapolation grade exceeds the flag threshold; the flagged frames are labelled
with EMT, added to the training set, the model is refitted and its active set rebuilt. Printed per
iteration: flagged frames, the largest gamma reached, and the force error on an EMT test set taken
from hot EMT MD (which the model never saw).

    python examples/active_learning_emt.py [--seed S] [--iterations N]
"""
import argparse
import math
import os
import tempfile
import time
import warnings

import numpy as np
from ase import units
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.md.langevin import Langevin

try:
    from ase.md.velocitydistribution import (
        thermalize_momenta as MaxwellBoltzmannDistribution,
    )
except ImportError:  # ASE < 3.29
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

from ace_uq_calc import (
    ACECalculator,
    BasisLimits,
    FitWeights,
    UncertaintyMonitor,
    build_active_set,
    fit,
    load_basis,
)

TEMPERATURE = 1400.0     # K, hot enough to leave the initial training data quickly
STEPS = 300              # MD steps of 2 fs per iteration
FLAG = 1.5               # gamma above which a frame is sent to the reference calculation
MIN_GAP = 10             # steps between flagged frames


def labelled(atoms):
    """A copy of ``atoms`` with EMT energy, forces and stress attached."""
    work = atoms.copy()
    work.calc = EMT()
    out = atoms.copy()
    out.calc = SinglePointCalculator(out, energy=work.get_potential_energy(), forces=work.get_forces(),
                                     stress=work.get_stress())
    return out


def initial_training(rng):
    frames = []
    for k in range(4):
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))
        atoms.rattle(0.03, seed=int(rng.integers(1 << 30)))
        frames.append(labelled(atoms))
    return frames


def emt_test_set(rng, count=6):
    """Snapshots of hot EMT MD (the reference method's own dynamics)."""
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))
    atoms.calc = EMT()
    MaxwellBoltzmannDistribution(atoms, temperature_K=TEMPERATURE, rng=rng)
    dyn = Langevin(atoms, 2 * units.fs, temperature_K=TEMPERATURE, friction=0.02, fixcm=False, rng=rng)
    frames = []
    for _ in range(count):
        dyn.run(50)
        frames.append(labelled(atoms))
    return frames


def fit_model(frames):
    """A small linear Cu ACE (cut-off 4.5 A) fitted to ``frames``, and its active set."""
    result = fit(frames, cutoff=4.5, limits=BasisLimits((6, 3, 2, 1), (0, 2, 2, 1)), weights=FitWeights(1.0, 0.1, 0.01))
    basis = load_basis(result.potential)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")        # small training sets give ill-conditioned sets: expected here
        active = build_active_set(basis, frames)
    return basis, active


def force_rmse(calc, frames):
    errors = []
    for ref in frames:
        atoms = ref.copy()
        atoms.calc = calc
        errors.append((atoms.get_forces() - ref.get_forces()).ravel())
    return float(np.sqrt(np.mean(np.concatenate(errors) ** 2)))


def run(seed: int, iterations: int) -> list:
    rng = np.random.default_rng(seed)
    training = initial_training(rng)
    test = emt_test_set(rng)
    rows = []
    print(f"seed {seed}: {len(test)} EMT test frames from {TEMPERATURE:.0f} K EMT MD")
    print(f"{'iter':>4} {'train':>6} {'flagged':>8} {'max gamma':>10} {'test F RMSE (eV/A)':>19}")
    with tempfile.TemporaryDirectory() as tmp:
        for it in range(iterations + 1):
            basis, active = fit_model(training)
            calc = ACECalculator(basis, active_set=active)
            atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))
            atoms.calc = calc
            MaxwellBoltzmannDistribution(atoms, temperature_K=TEMPERATURE, rng=rng)
            dyn = Langevin(atoms, 2 * units.fs, temperature_K=TEMPERATURE, friction=0.02, fixcm=False, rng=rng)
            flag_file = os.path.join(tmp, f"flagged_{it}.xyz")
            monitor = UncertaintyMonitor(atoms, flag_threshold=FLAG, halt_threshold=math.inf, flag_file=flag_file,
                                         min_flag_gap=MIN_GAP, halt_on_isolated=True)
            dyn.attach(monitor, interval=1)
            dyn.run(STEPS)
            rmse = force_rmse(calc, test)
            rows.append((it, len(training), monitor.n_flags, monitor.max_value, rmse))
            print(f"{it:4d} {len(training):6d} {monitor.n_flags:8d} {monitor.max_value:10.3f} {rmse:19.4f}"
                  + ("   (halted: " + monitor.reason + ")" if monitor.halted else ""))
            if it == iterations:
                break
            if os.path.exists(flag_file):
                import ase.io

                for frame in ase.io.read(flag_file, ":"):
                    frame.calc = None
                    training.append(labelled(frame))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, action="append", help="seed(s); default 0 1 2")
    parser.add_argument("--iterations", type=int, default=4)
    args = parser.parse_args()
    t0 = time.perf_counter()
    summary = []
    for seed in args.seed or [0, 1, 2]:
        rows = run(seed, args.iterations)
        first, last = rows[0], rows[-1]
        summary.append((seed, first[2], last[2], first[4], last[4]))
        print()
    print("seed  flagged first -> last   test F RMSE first -> last (eV/A)")
    for seed, f0, f1, e0, e1 in summary:
        print(f"{seed:4d}  {f0:7d} -> {f1:<7d}        {e0:.4f} -> {e1:.4f}")
    print(f"total time {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
