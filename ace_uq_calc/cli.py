"""Command line interface ``ace-uq``: a thin layer over the Python API.

Sub-commands:
  demo        evaluate the bundled example model with its active set along a short MD run
  info        summary of a potential file
  evaluate    energies, forces and gamma of structures in a file, written as extended XYZ
  activeset   build a pacemaker ``.asi`` active set from training structures
"""
from __future__ import annotations

import argparse
import sys
import time


def _cmd_info(args):
    from .potential.basis import load_basis

    basis = load_basis(args.potential)
    pot = basis.potential
    print(f"potential      {pot.source}")
    print(f"elements       {' '.join(basis.elements)}")
    for e, el in enumerate(basis.elements):
        ranks = basis.function_rank[basis.function_start[e]: basis.function_start[e + 1]]
        per_rank = "/".join(str(int((ranks == r).sum())) for r in range(1, int(ranks.max(initial=0)) + 1))
        emb = pot.embeddings[el]
        print(f"  {el:3s} functions {basis.nfunc[el]} (rank 1.. = {per_rank}), ndensity {emb.ndensity}, {emb.npoti}")
    print(f"radial sizes   nradbase {basis.nradbase}, nradmax {basis.nradmax}, lmax {basis.lmax}")
    print(f"cut-off        {basis.cutoff_max} A; inner cut-off type "
          f"{next(iter(pot.bonds.values())).inner_cutoff_type}")
    return 0


def _cmd_evaluate(args):
    import ase.io
    import numpy as np

    from .calculator import ACECalculator
    from .io import write_frames

    calc = ACECalculator(args.potential, active_set=args.active_set)
    frames = ase.io.read(args.structures, index=":")
    out = []
    for atoms in frames:
        atoms.calc = calc
        energy = atoms.get_potential_energy()
        atoms.info["ace_energy"] = energy
        atoms.arrays["ace_forces"] = atoms.get_forces().copy()
        if calc.active_set is not None:
            atoms.arrays["gamma"] = calc.results["gamma"].copy()
            atoms.info["max_gamma"] = calc.results["max_gamma"]
        out.append(atoms)
        line = f"{len(atoms):6d} atoms  E = {energy:.6f} eV"
        if calc.active_set is not None:
            line += f"  max gamma = {calc.results['max_gamma']:.3f}"
        print(line)
    if args.output:
        for atoms in out:
            atoms.calc = None
        write_frames(args.output, out)
        print(f"wrote {len(out)} frames to {args.output}")
    del np
    return 0


def _cmd_activeset(args):
    from .uncertainty.build import build_active_set_from_files

    t0 = time.perf_counter()
    active_set = build_active_set_from_files(
        args.potential, args.training, nonlinear=args.nonlinear, batch_size=args.batch_size,
        tolerance=args.tolerance, progress=not args.quiet,
    )
    active_set.save(args.output)
    for el, cond in active_set.condition_numbers.items():
        print(f"{el}: active set {active_set.inverse[el].shape[0]} rows, condition number {cond:.3g}")
    print(f"wrote {args.output} in {time.perf_counter() - t0:.1f} s")
    return 0


def _cmd_demo(args):
    from .demo import run_demo

    return run_demo(steps=args.steps, temperature=args.temperature, seed=args.seed)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ace-uq", description="ACE potentials with uncertainty for ASE")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="run the bundled example (model, active set, short MD with gamma)")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--temperature", type=float, default=600.0, help="K")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("info", help="summarise a potential file")
    p.add_argument("potential")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("evaluate", help="evaluate structures (any ASE-readable file)")
    p.add_argument("potential")
    p.add_argument("structures")
    p.add_argument("--active-set", default=None)
    p.add_argument("-o", "--output", default=None, help="extended XYZ with results in arrays/info")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("activeset", help="build a pacemaker .asi active set (MaxVol) from training data")
    p.add_argument("potential")
    p.add_argument("training", nargs="+", help="training structures (extended XYZ or any ASE format)")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--nonlinear", action="store_true", help="non-linear projections (one block per density)")
    p.add_argument("--batch-size", type=int, default=20000, help="atoms per projection batch")
    p.add_argument("--tolerance", type=float, default=1.001, help="MaxVol tolerance (pacemaker: 1.001)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_activeset)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError) as exc:
        print(f"ace-uq {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
