"""``ace-uq evaluate`` (predictions and gamma of structures, written as extended XYZ) and ``ace-uq errors``
(MAE/RMSE tables of potentials on labelled data; ``ace-uq eval`` is its former name)."""
from __future__ import annotations

import sys

import numpy as np

from ..calculator import ACECalculator
from ..fitting.metrics import error_table, format_table
from ..io import write_frames
from ..model.ensemble_file import member_list
from .common import add_threads_option, read_structures

#: the former name of ``ace-uq errors``, still accepted
REPLACED_ERRORS_NAME = "eval"


def run_evaluate(args) -> int:
    """Energy (eV), forces (eV/A) and, with active sets, gamma of every structure; one line each."""
    calc = ACECalculator(args.potential, active_set=args.active_set, num_threads=args.num_threads,
                         local_active_set=args.local_active_set)
    frames = read_structures([args.structures])
    for atoms in frames:
        atoms.calc = calc
        energy = atoms.get_potential_energy()
        atoms.info["ace_energy"] = energy
        atoms.arrays["ace_forces"] = atoms.get_forces().copy()
        if calc.active_set is not None:
            atoms.arrays["gamma"] = calc.results["gamma"].copy()
            atoms.info["max_gamma"] = calc.results["max_gamma"]
        if calc.local_active_set is not None:
            atoms.arrays["gamma_local"] = calc.results["gamma_local"].copy()
            atoms.arrays["gamma_cluster"] = calc.results["gamma_cluster"].copy()
            atoms.info["max_gamma_local"] = calc.results["max_gamma_local"]
        line = f"{len(atoms):6d} atoms  E = {energy:.6f} eV"
        if calc.active_set is not None:
            line += f"  max gamma = {calc.results['max_gamma']:.3f}"
        if calc.local_active_set is not None:
            line += f"  max gamma_local = {calc.results['max_gamma_local']:.3f}"
        print(line)
    if args.output:
        for atoms in frames:
            atoms.calc = None
        write_frames(args.output, frames)
        print(f"wrote {len(frames)} frames to {args.output}")
    return 0


def ensemble_spread_lines(calc, frames) -> list:
    """Lines summarising an ensemble calculator's spread over ``frames``: mean and max forces_dev (eV/A),
    RMS forces_std (eV/A, per component) and RMS energy_std per atom (meV/atom)."""
    dev, fstd, estd = [], [], []
    for atoms in frames:
        work = atoms.copy()
        work.calc = calc
        work.get_forces()
        dev.append(calc.results["forces_dev"])
        fstd.append(calc.results["forces_std"].ravel())
        estd.append(calc.results["energy_std"] / max(len(work), 1))
    dev = np.concatenate(dev) if dev else np.zeros(0)
    fstd = np.concatenate(fstd) if fstd else np.zeros(0)
    estd = np.array(estd)
    if not dev.size:
        return ["ensemble spread: no atoms"]
    return [
        f"ensemble spread ({calc.ensemble.size} members, "
        f"{'one shared basis' if calc.ensemble.shared else 'several bases'}):",
        f"  forces_dev  mean {dev.mean():.4f}  max {dev.max():.4f} eV/A",
        f"  forces_std  RMS {np.sqrt(np.mean(fstd ** 2)):.4f} eV/A (per component)",
        f"  energy_std  RMS {1000 * np.sqrt(np.mean(estd ** 2)):.3f} meV/atom",
    ]


def run_errors(args) -> int:
    """Error table of each potential on ``args.data``; for an ensemble (several potentials or an ensemble
    file) the table of the ensemble mean and its spread."""
    if args.command == REPLACED_ERRORS_NAME:
        print(f"ace-uq: 'ace-uq {REPLACED_ERRORS_NAME}' was replaced by 'ace-uq errors' (same arguments); "
              "running that", file=sys.stderr)
    frames = read_structures([args.data])
    if len(member_list(args.potentials)) > 1:
        calc = ACECalculator(args.potentials)
        label = f"mean of an ensemble of {calc.ensemble.size} potentials"
        print(format_table(error_table([calc], frames), f"{label} on {args.data}"))
        print("\n".join(ensemble_spread_lines(calc, frames)))
        return 0
    calcs = [ACECalculator(path) for path in args.potentials]
    print(format_table(error_table(calcs, frames), f"{args.potentials[0]} on {args.data}"))
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser("evaluate", help="evaluate structures (any ASE-readable file)")
    p.add_argument("potential")
    p.add_argument("structures")
    p.add_argument("--active-set", default=None)
    p.add_argument("--local-active-set", default=None, help="local active set (ace-uq activeset --local): gamma_local")
    p.add_argument("-o", "--output", default=None, help="extended XYZ with results in arrays/info")
    add_threads_option(p)
    p.set_defaults(func=run_evaluate)

    p = sub.add_parser("errors", aliases=[REPLACED_ERRORS_NAME],
                       help="error table (MAE/RMSE of energy, forces, stress) of one potential, or of the mean "
                            "of several, on labelled data")
    p.add_argument("potentials", nargs="+")
    p.add_argument("data")
    p.set_defaults(func=run_errors)
