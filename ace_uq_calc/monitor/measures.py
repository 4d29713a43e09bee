"""The per-atom uncertainty measures the monitor can watch, and the per-structure reductions.

:data:`MEASURES` is the registry: the monitor, the CLI's ``--measure`` choices and docs/monitor.md read
from it, and a new measure is one :func:`register_measure` call. Default thresholds and their
justification: docs/monitor.md ("Default thresholds").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

__all__ = [
    "ALIASES", "MEASURES", "REDUCTIONS", "Measure", "MeasureUnavailableError", "get_measure",
    "register_measure",
]


class MeasureUnavailableError(ValueError):
    """The calculator does not provide the requested per-atom measure."""


@dataclass(frozen=True)
class Measure:
    """A per-atom uncertainty measure the monitor can watch.

    ``key`` is the entry of ``calc.results`` holding an (N,) array; ``flag_threshold`` and
    ``halt_threshold`` are the defaults (in ``unit``) used when the monitor is given none.
    """

    name: str
    key: str
    unit: str
    flag_threshold: float
    halt_threshold: float
    description: str
    provided_by: str


MEASURES: dict[str, Measure] = {}
ALIASES: dict[str, str] = {"error": "forces_error_estimate"}


def register_measure(measure: Measure, replace: bool = False) -> Measure:
    """Add a measure to :data:`MEASURES` (the monitor, the CLI choices and the docs read from it)."""
    if measure.name in MEASURES and not replace:
        raise ValueError(f"measure {measure.name!r} is already registered (pass replace=True)")
    MEASURES[measure.name] = measure
    return measure


def get_measure(name) -> Measure:
    """The :class:`Measure` called ``name`` (or an alias such as ``"error"``); a Measure passes through."""
    if isinstance(name, Measure):
        return name
    key = ALIASES.get(name, name)
    if key not in MEASURES:
        known = ", ".join(sorted(MEASURES) + sorted(ALIASES))
        raise ValueError(f"unknown uncertainty measure {name!r}; known measures: {known}")
    return MEASURES[key]


register_measure(Measure(
    "gamma", "gamma", "", 2.0, 10.0,
    "D-optimality extrapolation grade of each atom's environment against the active set",
    "ACECalculator(potential, active_set='potential.asi')",
))
register_measure(Measure(
    "gamma_local", "gamma_local", "", 2.0, 10.0,
    "local (per-environment) variant of the extrapolation grade, same scale as gamma",
    "ACECalculator(potential, local_active_set='potential.lasi')",
))
register_measure(Measure(
    "forces_dev", "forces_dev", "eV/Å", 0.1, 0.5,
    "per-atom deviation of the forces over an ensemble of models, "
    "max_k |F_i^k - <F_i>_k|",
    "an ensemble calculator: ACECalculator([pot1, pot2, ...]) or ace-uq md/relax --ensemble POT2.yaml ...",
))
register_measure(Measure(
    "forces_error_estimate", "forces_error_estimate", "eV/Å", 0.1, 0.5,
    "calibrated per-atom estimate of the force error",
    "ACECalculator(potential, active_set=..., error_calibration='error_calibration.json') "
    "(the file is written by ace-uq uq-report --calibrate)",
))


def percentile95(values: np.ndarray) -> float:
    """The 95th percentile of the per-atom values (in the measure's unit)."""
    return float(np.percentile(values, 95.0))


#: per-structure reductions of the per-atom values, by name (the monitor's ``reduce=``)
REDUCTIONS: dict[str, Callable[[np.ndarray], float]] = {
    "max": lambda v: float(np.max(v)),
    "mean": lambda v: float(np.mean(v)),
    "percentile95": percentile95,
}
