"""Generate the bundled example model ``ace_uq_calc/data/Cu_example.yaml`` and its ``.asi``.

A small linear ACE for Cu (cut-off 5 A, about 150 functions) fitted with this package's default
recipe (:func:`ace_uq_calc.fitting.recipe.fit`, only the basis is smaller) to the Cu training set of
Zuo et al., J. Phys. Chem. A 124, 731 (2020) (VASP PBE; BSD-3-Clause, see ../shared/data/README.md),
with the active set built from the same training structures. Small so that ``ace-uq demo`` stays quick
(Numba compilation included); the default recipe (docs/fitting.md) is more accurate.

Run from the project root:  python scripts/make_example_model.py [--data DIR]
(DIR defaults to ../shared/data next to the project).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import ase.io

from ace_uq_calc import ACECalculator
from ace_uq_calc.fitting.metrics import error_table
from ace_uq_calc.fitting.recipe import fit
from ace_uq_calc.model.basis import build_basis
from ace_uq_calc.model.yaml_format import write_potential_file
from ace_uq_calc.uncertainty.build import build_active_set

PROJECT = Path(__file__).resolve().parent.parent
OUT = PROJECT / "ace_uq_calc" / "data"
CUTOFF = 5.0          # Angstrom
FUNCTIONS = 160       # at most this many functions before pruning (ladder entry n <= 8/4/3/2, l <= 0/3/2/1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(PROJECT.parent / "shared" / "data"),
                        help="data folder holding zuo2020/Cu_train.xyz and Cu_test.xyz")
    args = parser.parse_args(argv)
    data = Path(args.data) / "zuo2020"
    train = ase.io.read(data / "Cu_train.xyz", index=":")
    test = ase.io.read(data / "Cu_test.xyz", index=":")

    result = fit(train, cutoff=CUTOFF, functions=FUNCTIONS)
    basis = build_basis(result.potential)
    calc = ACECalculator(basis)
    train_err = error_table([calc], train)["all"]
    test_err = error_table([calc], test)["all"]
    n = basis.nfunc["Cu"]
    print(f"{n} functions, cut-off {CUTOFF} A, fitted on {len(train)} structures in {result.fit_time:.1f} s "
          f"(ridge {result.regularisation:.1e})")
    for label, err in (("train", train_err), ("test", test_err)):
        print(f"  {label}: E MAE {err['E_mae']:.3f} meV/atom (RMSE {err['E_rmse']:.3f}), "
              f"F MAE {err['F_mae']:.4f} eV/A (RMSE {err['F_rmse']:.4f})")

    pot = result.potential
    pot.metadata = {
        "comment": (f"ace_uq_calc EXAMPLE model: linear ACE for Cu ({n} functions, cut-off {CUTOFF} A) fitted to "
                    f"the Zuo et al. 2020 Cu DFT training data (VASP PBE; mlearn/ACEData, BSD-3-Clause); "
                    f"test MAE {test_err['E_mae']:.2f} meV/atom, {test_err['F_mae']:.4f} eV/A "
                    f"(RMSE {test_err['E_rmse']:.2f} meV/atom, {test_err['F_rmse']:.4f} eV/A) on the Zuo Cu test set. "
                    f"Small, for demonstrations; trained on fcc bulk, AIMD, vacancies and surfaces only"),
        "generated_by": "scripts/make_example_model.py",
        **{k: v for k, v in pot.metadata.items() if k not in ("comment", "generated_by")},
    }
    OUT.mkdir(exist_ok=True)
    write_potential_file(pot, OUT / "Cu_example.yaml")
    active = build_active_set(build_basis(pot), train)
    active.save(OUT / "Cu_example.asi")
    print(f"wrote {OUT / 'Cu_example.yaml'} and Cu_example.asi "
          f"(active set condition number {active.condition_numbers['Cu']:.3g})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
