"""``ace-uq uq-report``: how well the uncertainties rank, calibrate and detect novel structures
(docs/uq-study.md)."""
from __future__ import annotations

import os
import sys

from ..calculator import ACECalculator
from ..progress import progress_bar
from ..report.collect import collect
from ..uncertainty.calibration import fit_error_calibration
from .common import add_threads_option, read_structures


def collect_with_progress(calc, frames, label: str, enabled: bool):
    """:func:`ace_uq_calc.report.collect.collect` of ``frames`` with a progress bar over the structures."""
    with progress_bar(len(frames), label, enabled, unit="structure") as bar:
        return collect(calc, frames, lambda done, total: bar.update(done - bar.n))


def run_uq_report(args) -> int:
    """Collect errors and uncertainties on the test (and novel) data, optionally fit an error calibration,
    and write report.md, metrics.json and the plots."""
    from ..report.uq_report import (
        write_report,  # matplotlib: see the note in cli/main.py
    )

    options = {"num_threads": args.num_threads}
    if args.active_set:
        options["active_set"] = args.active_set
    if args.local_active_set:
        options["local_active_set"] = args.local_active_set
    potential = args.potential if len(args.potential) > 1 else args.potential[0]
    calc = ACECalculator(potential, **options)
    show = not args.quiet

    test = collect_with_progress(calc, read_structures(args.test), "test", show)
    if not test.measures:
        print("ace-uq uq-report: note: no uncertainty measure available (give --active-set, --local-active-set "
              "or several potentials for an ensemble); only errors are reported", file=sys.stderr)
    novel = {}
    for path in args.novel or []:
        label = os.path.splitext(os.path.basename(path))[0]
        novel[label] = collect_with_progress(calc, read_structures([path]), label, show)
    os.makedirs(args.output, exist_ok=True)
    setup = {"potential": args.potential, "active_set": args.active_set, "local_active_set": args.local_active_set,
             "test": args.test, "novel": args.novel}
    if args.calibrate:
        source = (collect_with_progress(calc, read_structures(args.validation), "validation", show)
                  if args.validation else test)
        if args.calibrate not in source.measures:
            raise ValueError(f"--calibrate {args.calibrate}: the calculator does not provide this measure")
        calibration = fit_error_calibration(source.measures[args.calibrate], source.force_error, args.calibrate,
                                            info={"fitted_on": args.validation or args.test})
        path = os.path.join(args.output, "error_calibration.json")
        calibration.save(path)
        setup["error_calibration"] = path
        if not args.validation:
            print("ace-uq uq-report: note: the error calibration was fitted on the test set itself (give "
                  "--validation for an independent fit)", file=sys.stderr)
    result = write_report(args.output, test, novel, extra=setup)
    for label, nv in result["novel"].items():
        aucs = ", ".join(f"{k} {v['auc_atom']:.3f}" for k, v in nv["measures"].items())
        print(f"{label}: per-atom ROC-AUC {aucs or '-'}")
    print(f"wrote {os.path.join(args.output, 'report.md')}")
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser("uq-report", help="how well the uncertainties rank, calibrate and detect novel structures")
    p.add_argument("--potential", nargs="+", required=True,
                   help="potential .yaml (several: an ensemble, mean and spread)")
    p.add_argument("--active-set", default=None, help="pacemaker .asi (gamma)")
    p.add_argument("--local-active-set", default=None, help="local active-set file (gamma_local)")
    p.add_argument("--test", nargs="+", required=True, help="in-domain labelled test structures")
    p.add_argument("--novel", nargs="*", default=None, help="labelled structures of families absent from training")
    p.add_argument("--calibrate", choices=["gamma", "gamma_local", "forces_dev"], default=None,
                   help="fit a map from this measure to the expected force error (error_calibration.json)")
    p.add_argument("--validation", nargs="*", default=None, help="labelled structures to fit the calibration on")
    p.add_argument("-o", "--output", required=True, help="output directory (report.md, metrics.json, PNG plots)")
    p.add_argument("--quiet", action="store_true")
    add_threads_option(p)
    p.set_defaults(func=run_uq_report)
