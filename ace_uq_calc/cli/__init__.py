"""Command line interface ``ace-uq``: a thin layer over the Python API, one module per command group.

Sub-commands:
  demo        evaluate the bundled example model with its active set along a short MD run (:mod:`.demo`)
  info        summary of a potential file (:mod:`.info`)
  evaluate    energies, forces and gamma of structures in a file, written as extended XYZ (:mod:`.evaluate`)
  errors      MAE/RMSE tables of potentials on labelled data; formerly ``eval`` (:mod:`.evaluate`)
  fit         fit a linear ACE potential, optionally its active set and an ensemble (:mod:`.fit`)
  activeset   build a pacemaker ``.asi`` active set, or a local one, from training structures (:mod:`.activeset`)
  md          molecular dynamics watched by an UncertaintyMonitor (flag extrapolative frames, halt) (:mod:`.dynamics`)
  relax       structure (and cell) relaxation watched by an UncertaintyMonitor (:mod:`.dynamics`)
  uq-report   ranking, calibration and novelty detection of the uncertainties on labelled data (:mod:`.report`)

:mod:`.main` assembles the parser and handles errors; :mod:`.common` holds what several commands share.
Nothing outside this package imports it.
"""
from .dynamics import EXIT_HALTED
from .main import EXIT_ERROR, build_parser, main

__all__ = ["EXIT_ERROR", "EXIT_HALTED", "build_parser", "main"]
