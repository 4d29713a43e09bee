"""``ace-uq fit``: fit a linear ACE potential (optionally its active set and an ensemble) and print its
error tables."""
from __future__ import annotations

import os

from ..calculator import ACECalculator
from ..fitting.basis_construction import BasisLimits
from ..fitting.ensemble_fit import ensemble_potentials, write_ensemble
from ..fitting.metrics import error_table, format_table
from ..fitting.recipe import (
    DEFAULT_CUTOFF,
    DEFAULT_FUNCTIONS,
    DEFAULT_MAX_BODY_ORDER,
    DEFAULT_RADIAL_BASIS,
    DEFAULT_WEIGHTS,
    fit,
)
from ..fitting.weights import FitWeights
from ..model.basis import build_basis
from ..model.yaml_format import RADIAL_BASES, write_potential_file
from ..uncertainty.active_set import companion_path
from ..uncertainty.build import build_active_set
from .activeset import active_set_lines
from .common import read_structures
from .evaluate import ensemble_spread_lines


def _int_list(text: str, option: str) -> tuple:
    """``"12,8,5"`` -> ``(12, 8, 5)``; exits naming ``option`` when ``text`` is not such a list."""
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise SystemExit(f"ace-uq fit: {option} takes comma-separated integers (one per rank), found {text!r}")


def run_fit(args) -> int:
    """Fit, write the potential (energies eV, forces eV/A) and print its training and test error tables;
    optionally build its active set and an ensemble."""
    train = read_structures(args.training)
    weights = FitWeights(energy=args.energy_weight, forces=args.force_weight, stress=args.stress_weight)
    limits = None
    if (args.nmax is None) != (args.lmax is None):
        raise SystemExit("ace-uq fit: --nmax and --lmax go together (one value per rank, e.g. --nmax 12,8,5,3 "
                         "--lmax 0,4,3,2)")
    if args.nmax is not None:
        limits = BasisLimits(_int_list(args.nmax, "--nmax"), _int_list(args.lmax, "--lmax"))
    result = fit(train, cutoff=args.cutoff, functions=args.functions, weights=weights, seed=args.seed,
                 core_repulsion=args.core_repulsion, progress=not args.quiet, limits=limits,
                 max_body_order=args.max_body_order, radial_basis=args.radial_basis)
    write_potential_file(result.potential, args.output)
    basis = build_basis(result.potential)
    print(f"fitted {', '.join(f'{el}: {n}' for el, n in basis.nfunc.items())} functions on {len(train)} structures "
          f"in {result.fit_time:.1f} s (ridge {result.regularisation:g}); wrote {args.output}")
    print("reference energies (eV/atom, stored in the .yaml metadata; pacemaker/LAMMPS exclude them): "
          + ", ".join(f"{el} {e0:.6f}" for el, e0 in result.reference_energies.items()))
    calc = ACECalculator(basis)
    print(format_table(error_table([calc], train), "\ntraining set"))
    if args.test:
        print(format_table(error_table([calc], read_structures(args.test)), "\ntest set"))
    if args.active_set:
        active = build_active_set(basis, train, progress=not args.quiet)
        active.save(args.active_set)
        print("\n".join(active_set_lines(active)))
        print(f"wrote active set {args.active_set} (and {companion_path(args.active_set)})")
    if args.ensemble:
        print_ensemble_fit(args, basis, result, train, weights)
    return 0


def print_ensemble_fit(args, basis, result, train, weights) -> None:
    """``ace-uq fit --ensemble K``: build, write and evaluate the members (training and test tables of the
    ensemble mean, and its spread)."""
    members = ensemble_potentials(basis, result, args.ensemble_method, args.ensemble, frames=train,
                                  weights=weights, seed=args.seed, progress=not args.quiet)
    paths, ensemble_file = write_ensemble(members, args.output)
    print(f"\nwrote {len(paths)} ensemble members ({args.ensemble_method}) to {os.path.dirname(ensemble_file)}/, "
          f"ensemble file {ensemble_file}")
    if args.ensemble_method == "posterior" and result.n_validation:
        print(f"posterior spread widened by {result.posterior_scale:.3g}: the factor that makes it match the "
              "validation split's error (the posterior alone is the coefficients' statistical uncertainty)")
    elif args.ensemble_method == "posterior":
        print("posterior spread NOT calibrated: fewer than 10 training structures, so no validation split; "
              "the spread is the coefficients' statistical uncertainty only and underestimates the error")
    calc = ACECalculator(ensemble_file)
    print(format_table(error_table([calc], train), "\ntraining set, ensemble mean"))
    print("\n".join(ensemble_spread_lines(calc, train)))
    if args.test:
        test = read_structures(args.test)
        print(format_table(error_table([calc], test), "\ntest set, ensemble mean"))
        print("\n".join(ensemble_spread_lines(calc, test)))


def add_parsers(sub) -> None:
    p = sub.add_parser("fit", help="fit a linear ACE potential to labelled structures (extended XYZ)")
    p.add_argument("training", nargs="+", help="training structures with energies (and forces, stress)")
    p.add_argument("-o", "--output", required=True, help="output pacemaker B-basis .yaml")
    p.add_argument("--test", nargs="*", default=None, help="test structures: error table printed")
    p.add_argument("--cutoff", type=float, default=DEFAULT_CUTOFF, help="cut-off radius, Angstrom")
    p.add_argument("--functions", type=int, default=DEFAULT_FUNCTIONS, help="target number of functions per element")
    p.add_argument("--radial-basis", choices=RADIAL_BASES, default=DEFAULT_RADIAL_BASIS,
                   help=f"radial basis functions (default {DEFAULT_RADIAL_BASIS})")
    p.add_argument("--max-body-order", type=int, default=DEFAULT_MAX_BODY_ORDER,
                   help=f"maximal body order, 2 to 5 (rank + 1; default {DEFAULT_MAX_BODY_ORDER})")
    p.add_argument("--nmax", default=None, help="per-rank maximal radial index, e.g. 12,8,5,3 (with --lmax; "
                                                "replaces --functions)")
    p.add_argument("--lmax", default=None, help="per-rank maximal l, e.g. 0,4,3,2 (with --nmax)")
    p.add_argument("--energy-weight", type=float, default=DEFAULT_WEIGHTS.energy)
    p.add_argument("--force-weight", type=float, default=DEFAULT_WEIGHTS.forces)
    p.add_argument("--stress-weight", type=float, default=DEFAULT_WEIGHTS.stress)
    p.add_argument("--core-repulsion", action="store_true", help="exponential core repulsion below 1.5 A")
    p.add_argument("--active-set", default=None, help="also build the .asi active set from the training data")
    p.add_argument("--seed", type=int, default=0, help="seed of the validation split")
    p.add_argument("--ensemble", type=int, default=None, metavar="K",
                   help="also write K ensemble members: OUT.ensemble/member_NN.yaml and the ensemble file "
                        "OUT.ensemble/ensemble.yaml (docs/ensembles.md)")
    p.add_argument("--ensemble-method", choices=("posterior", "bootstrap"), default="posterior",
                   help="posterior: samples of the ridge fit's coefficient posterior, widened to match the "
                        "validation error (default, nearly free); bootstrap: refits on resampled structures")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run_fit)
