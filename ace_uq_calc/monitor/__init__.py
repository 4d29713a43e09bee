"""Uncertainty-aware molecular dynamics and optimisation: flag extrapolative frames, halt runaway runs.

* :mod:`.measures`: the registry of per-atom uncertainty measures and per-structure reductions;
* :mod:`.observer`: :class:`UncertaintyMonitor`, the observer for ASE dynamics and optimizers;
* :mod:`.cutout`: cluster cut-outs of flagged frames.

Guide and default thresholds: docs/monitor.md.
"""
from .cutout import cut_out_cluster
from .measures import (
    ALIASES,
    MEASURES,
    REDUCTIONS,
    Measure,
    MeasureUnavailableError,
    get_measure,
    register_measure,
)
from .observer import (
    ExtrapolationHalt,
    IsolatedAtomsWarning,
    Observation,
    StepRecord,
    UncertaintyMonitor,
)

__all__ = [
    "ALIASES", "ExtrapolationHalt", "IsolatedAtomsWarning", "MEASURES", "Measure", "MeasureUnavailableError",
    "Observation", "REDUCTIONS", "StepRecord", "UncertaintyMonitor", "cut_out_cluster", "get_measure",
    "register_measure",
]
