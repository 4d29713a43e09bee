#!/usr/bin/env python
"""Number of clusters of the local active set versus novelty detection and false alarms (run by hand).

Reads the projections that benchmarks/uq_study.py cached for the heterogeneous regime (--work, default
$TMPDIR/ace_uq_study; run the study first) and, for each K, builds the local active set on the training
atoms (ace_uq_calc.uncertainty.local_build defaults otherwise) and prints the per-atom ROC-AUC of the sphere,
period-defect and non-elastic atoms against the held-out PRM2020 atoms and the false-alarm rate
(held-out atoms with gamma_local > 1):

    OPENBLAS_NUM_THREADS=1 python benchmarks/local_k_scan.py --functions 400 --clusters 15 30 60
"""
import argparse
import os
import time
import warnings

import numpy as np

from ace_uq_calc.report.metrics import flagged_fraction, roc_auc
from ace_uq_calc.uncertainty.local_build import build_local_active_set_from_projections

FAMILIES = ("sphere", "period-defect", "non-elastic")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--functions", type=int, default=400, help="the study's basis-size tag (150 or 400)")
    p.add_argument("--clusters", type=int, nargs="+", default=[15, 30, 60])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "ace_uq_study"))
    args = p.parse_args(argv)
    load = lambda name: np.load(os.path.join(args.work, f"het{args.functions}_{name}.npy"))  # noqa: E731
    train = load("train")
    sets = {name: load(name) for name in ("in-domain",) + FAMILIES}
    print(f"{len(train)} training atoms, {train.shape[1]} functions")
    for k in args.clusters:
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            local = build_local_active_set_from_projections({"W": train}, n_clusters=k, seed=args.seed)
        grades = {name: local.grades("W", x)[0] for name, x in sets.items()}
        neg = grades["in-domain"]
        aucs = "  ".join(f"{fam} {roc_auc(neg, grades[fam]):.3f}" for fam in FAMILIES)
        print(f"K = {k:3d}: AUC {aucs}; false alarms {100 * flagged_fraction(neg, 1.0):.1f} % of held-out atoms "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
