#!/usr/bin/env python
"""Why the Zuo Ni force target (MAE <= 0.01 eV/A) is missed: basis variants and the floor test (by hand).

For each variant: fit ``zuo2020/Ni_train.xyz`` with the default weights and the given cut-off and per-rank
limits, print the test force MAE (``Ni_test.xyz``), the training force MAE (every third training
structure), the test energy MAE and the fit time. The floor test fits the default recipe on the training
*and* test structures and prints the error on the test structures: how well the model family can
represent them at all. About 8 minutes on 2 cores for everything::

    OPENBLAS_NUM_THREADS=1 python benchmarks/ni_force_floor.py [--only default,floor]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "zuo2020"

#: name -> (cut-off A, n limits per rank, l limits per rank)
VARIANTS = {
    "default": (6.0, (12, 8, 5, 3), (0, 4, 3, 2)),
    "pair20": (6.0, (20, 8, 5, 3), (0, 4, 3, 2)),
    "rank4_n4_5A": (5.0, (12, 8, 5, 4), (0, 4, 3, 2)),
    "rank3_n7_5A": (5.0, (12, 8, 7, 3), (0, 4, 3, 2)),
    "rank2_l6_6A": (6.0, (12, 12, 5, 3), (0, 6, 3, 2)),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(DATA), help="folder with Ni_train.xyz and Ni_test.xyz")
    parser.add_argument("--only", default=",".join(list(VARIANTS) + ["floor"]),
                        help="comma-separated variants (" + ", ".join(VARIANTS) + ", floor)")
    parser.add_argument("--workers", type=int, default=None, help="assembly processes (default: all CPUs)")
    args = parser.parse_args(argv)

    import ase.io

    from ace_uq_calc import ACECalculator
    from ace_uq_calc.fitting.basis_construction import BasisLimits
    from ace_uq_calc.fitting.metrics import error_table
    from ace_uq_calc.fitting.recipe import fit
    from ace_uq_calc.model.basis import build_basis

    data = Path(args.data)
    if not (data / "Ni_train.xyz").exists():
        sys.exit(f"missing {data / 'Ni_train.xyz'} (see ../shared/data/README.md; --data DIR to change)")
    train = ase.io.read(data / "Ni_train.xyz", index=":")
    test = ase.io.read(data / "Ni_test.xyz", index=":")
    print(f"{'variant':<20} {'functions':>9} {'cut-off':>7} {'fit s':>6} {'test E MAE':>10} {'test F MAE':>10} "
          f"{'AIMD F MAE':>10} {'train F MAE':>11}")
    for name in args.only.split(","):
        if name == "floor":
            frames, cutoff, limits = train + test, 6.0, None
        else:
            cutoff, nmax, lmax = VARIANTS[name]
            frames, limits = train, BasisLimits(nmax, lmax)
        t0 = time.perf_counter()
        result = fit(frames, cutoff=cutoff, limits=limits, workers=args.workers)
        wall = time.perf_counter() - t0
        basis = build_basis(result.potential)
        calc = ACECalculator(basis)
        on_test = error_table([calc], test)
        on_train = error_table([calc], train[::3])
        aimd = on_test.get("AIMD-NVT", {}).get("F_mae", float("nan"))
        label = "floor (train+test)" if name == "floor" else name
        print(f"{label:<20} {basis.nfunc['Ni']:>9} {cutoff:>7.1f} {wall:>6.0f} {on_test['all']['E_mae']:>10.3f} "
              f"{on_test['all']['F_mae']:>10.4f} {aimd:>10.4f} {on_train['all']['F_mae']:>11.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
