"""``ace-uq activeset``: a pacemaker ``.asi`` active set (MaxVol) from training structures, or with
``--local`` a local active set (one per cluster of environments; docs/local-d-optimality.md)."""
from __future__ import annotations

import time

import numpy as np

from ..uncertainty.active_set import companion_path
from ..uncertainty.build import HELD_OUT_FRACTION, build_active_set_from_files
from ..uncertainty.local_build import build_local_active_set
from .common import read_structures


def run_activeset(args) -> int:
    """Build, save and summarise the active set (rows and condition number per element)."""
    if args.local or args.clusters is not None or args.cluster_by is not None:
        return run_local_activeset(args)
    t0 = time.perf_counter()
    active_set = build_active_set_from_files(
        args.potential, args.training, nonlinear=args.nonlinear, batch_size=args.batch_size,
        tolerance=args.tolerance, progress=not args.quiet, held_out_fraction=args.held_out, seed=args.seed,
    )
    active_set.save(args.output)
    print("\n".join(active_set_lines(active_set)))
    print(f"wrote {args.output} (and {companion_path(args.output)}) in {time.perf_counter() - t0:.1f} s")
    return 0


#: structure sizes (atoms) for which the default thresholds are listed
THRESHOLD_SIZES = (1, 10, 100, 1000, 10000)


def active_set_lines(active_set) -> list:
    """Per element the rank, selection and conditioning, then the default thresholds by structure size."""
    lines = []
    for el, asi in active_set.inverse.items():
        m, rank = asi.shape[0], active_set.ranks[el]
        built = active_set.info.get(el, {})
        line = f"{el}: {m} functions, the training data span {rank}"
        line += "" if rank == m else " (grade in that subspace plus the distance from it)"
        if built:
            line += (f"; {built['rows']} environments, MaxVol passes {built['maxvol_passes']}"
                     f"{'' if built['converged'] else ' (not converged)'}")
        lines.append(line + f"; condition number {active_set.condition_numbers[el]:.3g}")
    distribution = active_set.grade_distribution
    if distribution is None:
        lines.append("no in-domain grade distribution: the monitor uses the fixed thresholds (gamma flag 2, halt 10)")
        return lines
    lines.append(f"in-domain grades of {distribution.n_atoms} atoms in {distribution.n_structures} held-out "
                 f"structures: median {np.median(distribution.grades):.3g}, 99 % {np.quantile(distribution.grades, 0.99):.3g}"
                 f", largest {distribution.grades[-1]:.3g}")
    lines.append("default thresholds of max gamma (about 1 % of in-domain structures flagged, 0.1 % halted):")
    for n in THRESHOLD_SIZES:
        flag, halt = active_set.thresholds(n)
        lines.append(f"  {n:6d} atoms: flag > {flag:.3g}, halt > {halt:.3g}")
    return lines


def run_local_activeset(args) -> int:
    """``ace-uq activeset POT TRAIN... --local [--clusters K | --cluster-by KEY] [--seed S] -o FILE``."""
    t0 = time.perf_counter()
    if args.cluster_by is not None and args.clusters is not None:
        raise ValueError("give either --clusters K or --cluster-by KEY, not both")
    n_clusters = None
    if args.clusters is not None and args.clusters != "auto":
        try:
            n_clusters = int(args.clusters)
        except ValueError:
            raise ValueError(f"--clusters must be an integer or 'auto', got {args.clusters!r}") from None
    frames = read_structures(args.training)
    local = build_local_active_set(args.potential, frames, cluster_by=args.cluster_by, n_clusters=n_clusters,
                                   seed=args.seed, nonlinear=args.nonlinear, tolerance=args.tolerance)
    local.save(args.output)
    for el, cs in local.clusters.items():
        reduced = int(np.count_nonzero(cs.distance_scale > 0))
        print(f"{el}: {cs.n_clusters} clusters ({local.method}), width {cs.width}, atoms per cluster "
              f"{cs.n_train.min()}..{cs.n_train.max()}, {reduced} reduced (rank < width)")
    print(f"wrote {args.output} in {time.perf_counter() - t0:.1f} s")
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser("activeset", help="build a pacemaker .asi active set (MaxVol) from training data")
    p.add_argument("potential")
    p.add_argument("training", nargs="+", help="training structures (extended XYZ or any ASE format)")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--nonlinear", action="store_true", help="non-linear projections (one block per density)")
    p.add_argument("--batch-size", type=int, default=20000, help="atoms per projection batch")
    p.add_argument("--tolerance", type=float, default=1.001, help="MaxVol tolerance (pacemaker: 1.001)")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--local", action="store_true",
                   help="build a local active set (one per cluster of environments; docs/local-d-optimality.md)")
    p.add_argument("--clusters", default=None, metavar="K",
                   help="--local: number of k-means clusters, or 'auto' (the default)")
    p.add_argument("--cluster-by", default=None, metavar="KEY",
                   help="--local: partition by the label atoms.info[KEY] (e.g. config_type) instead of k-means")
    p.add_argument("--seed", type=int, default=0, help="seed of the held-out structures (--local: of k-means)")
    p.add_argument("--held-out", type=float, default=HELD_OUT_FRACTION, metavar="FRACTION",
                   help="fraction of the training structures graded against an active set built without them, "
                        f"for the default thresholds (default {HELD_OUT_FRACTION}; 0: none)")
    p.set_defaults(func=run_activeset)
