"""``ace-uq info POT.yaml``: a summary of a potential file."""
from __future__ import annotations

from ..model.basis import load_basis


def run_info(args) -> int:
    """Elements, functions per rank, radial sizes and cut-off (A) of the potential."""
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
    p = sub.add_parser("info", help="summarise a potential file")
    p.add_argument("potential")
    p.set_defaults(func=run_info)
