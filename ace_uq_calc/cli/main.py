"""``ace-uq``: the parser assembled from the sub-command modules, dispatch and error handling."""
from __future__ import annotations

import argparse
import sys

# Imports are at the tops of the sub-command modules, with one exception: matplotlib (through
# ace_uq_calc.report.uq_report, ~0.9 s) is imported inside ``uq-report``'s command function, so that
# building the parser (``ace-uq --help``) does not load it. The other heavy modules (ase.io, Numba and the
# kernels) are loaded by the parser anyway -- the monitor's measure choices and the fit's defaults need
# them -- so deferring their imports would only hide the structure.
from . import activeset, demo, dynamics, evaluate, fit, info, report

#: the modules contributing sub-commands, in the order ``ace-uq --help`` lists them
COMMAND_MODULES = (demo, info, evaluate, fit, activeset, dynamics, report)

#: exit status on errors (bad input, unreadable or inconsistent files); 0 on success and
#: ``dynamics.EXIT_HALTED`` when the uncertainty monitor halted an md/relax run
EXIT_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ace-uq", description="ACE potentials with uncertainty for ASE")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMAND_MODULES:
        module.add_parsers(sub)
    return parser


def main(argv=None) -> int:
    """Run ``ace-uq`` with ``argv`` (default: the command line); returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError) as exc:
        print(f"ace-uq {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
