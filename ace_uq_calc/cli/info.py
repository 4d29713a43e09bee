"""``ace-uq info FILE``: a summary of a potential file (``.yaml``) or of an active set (``.asi``: ranks and
default thresholds)."""
from __future__ import annotations

from ..model.basis import load_basis
from ..uncertainty.active_set import ActiveSet
from .activeset import active_set_lines


def _is_zip_archive(path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(4) == b"PK\x03\x04"


def run_info(args) -> int:
    """Potential: elements, functions per rank, radial sizes and cut-off (A). Active set: per element the
    rank, and the default flag and halt thresholds by structure size."""
    if _is_zip_archive(args.potential):
        active_set = ActiveSet.load(args.potential)
        print(f"active set     {args.potential} ({'non-linear' if active_set.nonlinear else 'linear'} projections)")
        print("\n".join(active_set_lines(active_set)))
        return 0
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


def add_parsers(sub) -> None:
    p = sub.add_parser("info", help="summarise a potential (.yaml) or an active set (.asi)")
    p.add_argument("potential", metavar="FILE")
    p.set_defaults(func=run_info)
