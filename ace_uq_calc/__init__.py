"""ace_uq_calc: ACE potentials (pacemaker B-basis .yaml) for ASE with uncertainty estimates.

The names a user needs, importable from here::

    from ace_uq_calc import ACECalculator, fit, build_active_set, UncertaintyMonitor

* evaluation: :class:`ACECalculator`; models: :func:`load_basis`, :func:`read_potential_file`,
  :func:`write_potential_file`, :class:`PotentialFormatError`, :func:`example_files`;
* uncertainty: :class:`ActiveSet` (``ActiveSet.load``), :func:`build_active_set`,
  :class:`LocalActiveSet`, :func:`build_local_active_set`, :class:`ErrorCalibration`,
  :func:`fit_error_calibration`;
* fitting: :func:`fit`, :class:`FitWeights`, :class:`BasisLimits`, :func:`ensemble_potentials`;
* dynamics: :class:`UncertaintyMonitor`, :class:`ExtrapolationHalt`;
* report: :func:`collect` (per-atom errors and uncertainties of labelled data), :func:`write_report`.

The names are imported lazily, so that ``import ace_uq_calc.kernels...`` stays light.
"""

__version__ = "0.1.0"

_PUBLIC = {
    "ACECalculator": "ace_uq_calc.calculator",
    "ACEBasis": "ace_uq_calc.model.basis",
    "load_basis": "ace_uq_calc.model.basis",
    "PotentialFormatError": "ace_uq_calc.model.yaml_format",
    "read_potential_file": "ace_uq_calc.model.yaml_format",
    "write_potential_file": "ace_uq_calc.model.yaml_format",
    "example_files": "ace_uq_calc.demo",
    "ActiveSet": "ace_uq_calc.uncertainty.active_set",
    "build_active_set": "ace_uq_calc.uncertainty.build",
    "LocalActiveSet": "ace_uq_calc.uncertainty.local_active_set",
    "build_local_active_set": "ace_uq_calc.uncertainty.local_build",
    "ErrorCalibration": "ace_uq_calc.uncertainty.calibration",
    "fit_error_calibration": "ace_uq_calc.uncertainty.calibration",
    "fit": "ace_uq_calc.fitting.recipe",
    "FitWeights": "ace_uq_calc.fitting.weights",
    "BasisLimits": "ace_uq_calc.fitting.basis_construction",
    "ensemble_potentials": "ace_uq_calc.fitting.ensemble_fit",
    "UncertaintyMonitor": "ace_uq_calc.monitor",
    "ExtrapolationHalt": "ace_uq_calc.monitor",
    "collect": "ace_uq_calc.report.collect",
    "write_report": "ace_uq_calc.report.uq_report",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name):
    if name in _PUBLIC:
        import importlib

        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ace_uq_calc' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_PUBLIC))
