"""From DFT data to an uncertainty report, with the Python API (about 2-4 minutes on 2 cores).

    python examples/uq_workflow_cu.py [OUTDIR]

Data: the Zuo et al. (2020) Cu set in ../shared/data/zuo2020 (VASP PBE, BSD-3-Clause). The surface
structures are held back as a "novel" family: the model, its bootstrap ensemble, its global and
local active sets are built from the bulk, AIMD and vacancy structures of Cu_train only; the bulk,
AIMD and vacancy structures of Cu_test are the in-domain test set. The report (OUTDIR/report.md,
metrics.json, PNG plots) says how well gamma, gamma_local and the ensemble's forces_dev rank the
force errors and pick out the surface atoms; an error calibration fitted on the in-domain test set
maps gamma to an expected force error.
"""
import os
import sys
import time
import warnings

import ase.io

from ace_uq_calc import (
    ACECalculator,
    build_active_set,
    build_local_active_set,
    collect,
    ensemble_potentials,
    fit,
    fit_error_calibration,
    load_basis,
    write_report,
)

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "zuo2020")
NOVEL = "Surface"


def main(outdir="uq_workflow_cu"):
    if not os.path.isdir(DATA):
        sys.exit(f"needs the Zuo et al. Cu data in {os.path.normpath(DATA)}")
    os.makedirs(outdir, exist_ok=True)
    t0 = time.perf_counter()
    train_all = ase.io.read(os.path.join(DATA, "Cu_train.xyz"), ":")
    test_all = ase.io.read(os.path.join(DATA, "Cu_test.xyz"), ":")
    train = [a for a in train_all if a.info.get("config_type") != NOVEL]
    test = [a for a in test_all if a.info.get("config_type") != NOVEL]
    novel = [a for a in train_all + test_all if a.info.get("config_type") == NOVEL]
    print(f"training {len(train)} structures, in-domain test {len(test)}, novel ({NOVEL}) {len(novel)}")

    result = fit(train, cutoff=5.0, functions=500)               # a mid-sized basis, quick to fit
    basis = load_basis(result.potential)
    members = ensemble_potentials(basis, result, "bootstrap", 4, frames=train)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                          # condition-number warnings: see docs
        active = build_active_set(basis, train)
        local = build_local_active_set(result.potential, train, seed=0)
    print(f"fitted {basis.nfunc['Cu']} functions, 4 bootstrap members, global and local active sets "
          f"({local.clusters['Cu'].n_clusters} clusters) in {time.perf_counter() - t0:.0f} s")

    calc = ACECalculator(members, active_set=active, local_active_set=local)
    test_table = collect(calc, test)
    novel_table = collect(calc, novel)
    calibration = fit_error_calibration(test_table.measures["gamma"], test_table.force_error, "gamma")
    calibration.save(os.path.join(outdir, "error_calibration.json"))
    result = write_report(outdir, test_table, {NOVEL: novel_table}, title="Zuo Cu: surfaces as a novel family")
    for measure, entry in result["novel"][NOVEL]["measures"].items():
        print(f"{measure:12s} ROC-AUC of surface atoms vs in-domain atoms {entry['auc_atom']:.3f}; "
              f"Spearman with the force error (in-domain atoms) {result['test']['measures'][measure]['spearman_atom']:.3f}")
    print(f"wrote {os.path.join(outdir, 'report.md')} in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main(*sys.argv[1:2])
